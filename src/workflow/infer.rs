//! A trained model run forward over a data file: `eval` (the reconstruction MSE), `encode` (the code of every
//! row, or every encoder layer's activations, written to CSV beside the ignored columns) and `reconstruct` (every row rebuilt in the data's own
//! units, optionally ranked by its error). The data file's columns are matched to the model's by name
//! ([`load_csv_for_model`]) and normalized as in training; every path is checked before any work
//! (`paths.rs`); output files are written atomically, or to standard output for `-`. A result that is not a
//! finite number (an MSE, a code, a reconstruction) is an error, never a value.

use super::paths::{self, Claim, PathPlan};
use super::{resolve_device, DeviceChoice};
use crate::backend::{Backend, Real};
use crate::data::{load_csv_for_model, Dataset};
use crate::error::{Error, Result};
use crate::io::{self, Integrity, ModelFile};
use crate::memory::{self, Estimate};
use crate::train::{DataOptions, DataSet, DataType, Network, Placement};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A model and a data file to run it on.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub model: PathBuf,
    pub data: PathBuf,
    pub device: DeviceChoice,
}

/// Loads a data set for a trained model: its features found by name (or by position in a file without a
/// header), the model's normalization applied.
pub fn load_for_model(path: &Path, model: &ModelFile) -> Result<Dataset> {
    let mut data = load_csv_for_model(path, &model.feature_names, &model.ignore)?;
    model.normalization.apply(&mut data);
    Ok(data)
}

/// What one forward pass over a data set produced.
pub struct Evaluation {
    pub mse: f64,
    /// (rows, d_L) when asked for; (rows, d_1 + … + d_L), every encoder layer's activations, from
    /// [`encode_all_layers`].
    pub codes: Vec<f32>,
    /// (rows, d_0), in the normalized space, when asked for.
    pub reconstructions: Vec<f32>,
    pub device: String,
}

/// Batch size for inference: large enough to keep a GPU busy, small enough for any card.
pub const EVAL_BATCH: usize = 4096;

/// What a forward pass keeps of each row besides the MSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keep {
    codes: bool,
    /// Every encoder layer's activations instead of the code alone.
    all_layers: bool,
    recon: bool,
}

fn inference_need(model: &ModelFile, rows: usize, keep: Keep) -> Estimate {
    let code_width: usize = if keep.all_layers {
        model.spec.widths[1..].iter().sum()
    } else {
        model.spec.code_width()
    };
    let kept = ((keep.codes || keep.all_layers) as u128 * code_width as u128
        + keep.recon as u128 * model.spec.input_width() as u128)
        * rows as u128;
    memory::inference_estimate(&model.spec.widths, EVAL_BATCH.min(rows.max(1)), rows, kept)
}

/// The network of `model` on `backend` with `data` in place, after checking a GPU's free memory.
fn network_for<B: Backend>(
    backend: B,
    model: &ModelFile,
    data: &Dataset,
    keep: Keep,
) -> Result<Network<B>> {
    if let Some(free) = backend.free_memory() {
        let need = inference_need(model, data.rows, keep);
        Estimate {
            host: Vec::new(),
            device: need.device,
        }
        .check("running the model", Some(free as u64))?;
    }
    let batch = EVAL_BATCH.min(data.rows.max(1));
    let mut net = Network::new(backend, &model.spec, &model.params, batch, None)?;
    // A data set larger than the GPU's free memory stays on the host, a batch copied up at a time.
    let options = DataOptions::new(DataType::F32, Placement::Auto);
    net.set_data(DataSet::Train, &data.values, data.rows, options)?;
    Ok(net)
}

/// Runs `model` forward over every row of `data` (already normalized) on `backend`.
pub fn evaluate<B: Backend>(
    backend: B,
    model: &ModelFile,
    data: &Dataset,
    want_codes: bool,
    want_recon: bool,
) -> Result<Evaluation> {
    let device = backend.name();
    let keep = Keep {
        codes: want_codes,
        all_layers: false,
        recon: want_recon,
    };
    let mut net = network_for(backend, model, data, keep)?;
    let mut codes = Vec::with_capacity(if want_codes {
        data.rows * model.spec.code_width()
    } else {
        0
    });
    let mut recon = Vec::with_capacity(if want_recon { data.values.len() } else { 0 });
    let mse = net.evaluate(
        |_, _, c, r| {
            codes.extend(c.iter().map(|x| x.to_f32()));
            recon.extend(r.iter().map(|x| x.to_f32()));
        },
        want_codes,
        want_recon,
    )?;
    Ok(Evaluation {
        mse,
        codes,
        reconstructions: recon,
        device,
    })
}

/// Runs `model` forward over every row of `data` (already normalized) on `backend`, keeping every encoder
/// layer's activations: `codes` is (rows, d_1 + … + d_L), each row h_1, then h_2, …, then the code.
pub fn encode_all_layers<B: Backend>(
    backend: B,
    model: &ModelFile,
    data: &Dataset,
) -> Result<Evaluation> {
    let device = backend.name();
    let keep = Keep {
        codes: false,
        all_layers: true,
        recon: false,
    };
    let mut net = network_for(backend, model, data, keep)?;
    let width: usize = model.spec.widths[1..].iter().sum();
    let mut codes = vec![0.0f32; data.rows * width];
    let mse = net.encode_layers(|first, n, layers| {
        for r in 0..n {
            let row = &mut codes[(first + r) * width..(first + r + 1) * width];
            let mut at = 0;
            for layer in layers {
                let d = layer.len() / n;
                for (f, x) in row[at..at + d].iter_mut().zip(&layer[r * d..(r + 1) * d]) {
                    *f = x.to_f32();
                }
                at += d;
            }
        }
    })?;
    Ok(Evaluation {
        mse,
        codes,
        reconstructions: Vec::new(),
        device,
    })
}

/// A model run over a data file, with what the caller should be told.
struct Run {
    model: ModelFile,
    data: Dataset,
    result: Evaluation,
    notes: Vec<String>,
}

/// Checks the paths (`plan` holds the outputs), loads the model and the data file of `request`, checks the
/// memory it takes, and runs the model forward over every row.
fn run_model(request: &ModelRequest, plan: PathPlan, keep: Keep) -> Result<(Run, Claim)> {
    let claim = plan
        .input("--model", &request.model)
        .input("--data", &request.data)
        .check()?;
    let (model, integrity) = io::load_model_verified(&request.model)?;
    let mut notes = Vec::new();
    if integrity == Integrity::NoChecksum {
        notes.push(format!(
            "{} has no checksum (written by an older tiedae): a damaged file cannot be told from a good one",
            request.model.display()
        ));
    }
    let data = load_for_model(&request.data, &model)?;
    let device = resolve_device(request.device)?;
    let need = inference_need(&model, data.rows, keep);
    if device == super::Device::Cpu {
        need.check("running the model", None)?;
    } else {
        Estimate {
            host: need.host,
            device: Vec::new(),
        }
        .check("running the model", None)?;
    }
    let result = if keep.all_layers {
        crate::with_backend!(device, |backend| encode_all_layers(backend, &model, &data)?)
    } else {
        crate::with_backend!(device, |backend| evaluate(
            backend, &model, &data, keep.codes, keep.recon
        )?)
    };
    let run = Run {
        model,
        data,
        result,
        notes,
    };
    Ok((run, claim))
}

/// An error for a result that is not a finite number.
fn not_finite(request: &ModelRequest, what: String) -> Error {
    Error::file(
        &request.model,
        format!(
            "gives {what} on {}: its outputs overflow, so the data is far outside what the model was trained on (check its units and columns), or the model is damaged",
            request.data.display()
        ),
    )
}

/// What `eval` measured.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// In the model's normalized units.
    pub mse: f64,
    pub samples: usize,
    pub features: usize,
    /// The backend's name.
    pub device: String,
    /// What the caller should be told besides (a model file without a checksum).
    pub notes: Vec<String>,
}

/// The reconstruction MSE of a model on a data file.
pub fn eval(request: &ModelRequest) -> Result<EvalReport> {
    let keep = Keep {
        codes: false,
        all_layers: false,
        recon: false,
    };
    let (run, _claim) = run_model(request, PathPlan::new(), keep)?;
    let mse = run.result.mse;
    if !mse.is_finite() {
        return Err(not_finite(
            request,
            format!("a reconstruction MSE of {mse}"),
        ));
    }
    Ok(EvalReport {
        mse,
        samples: run.data.rows,
        features: run.data.cols,
        device: run.result.device,
        notes: run.notes,
    })
}

/// What `encode` or `reconstruct` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub rows: usize,
    /// The codes' width (`encode`), or the features' (`reconstruct`).
    pub width: usize,
    /// `reconstruct`: the mean of the rows' errors, in the model's normalized units.
    pub mse: f64,
    pub notes: Vec<String>,
}

/// Writes a CSV output: to `out` atomically, or to standard output for `-`.
fn write_csv(
    out: &Path,
    write: impl FnOnce(&mut csv::Writer<&mut dyn Write>) -> std::result::Result<(), csv::Error>,
) -> Result<()> {
    let stdout = paths::is_stdout(out);
    let shown = if stdout {
        Path::new("standard output")
    } else {
        out
    };
    let fill = |w: &mut dyn Write| -> Result<()> {
        let mut csv = csv::Writer::from_writer(w);
        write(&mut csv).map_err(|e| Error::file(shown, e.to_string()))?;
        csv.flush().map_err(|e| Error::io(shown, e))
    };
    if stdout {
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        fill(&mut w)?;
        w.flush().map_err(|e| Error::io(shown, e))
    } else {
        io::write_atomic(out, |w| fill(w))
    }
}

/// Writes the code of every row to `out` (CSV: the columns other than the model's features as they were,
/// then `code_0 … code_{k-1}`), a file or `-` for standard output; with `all_layers`, every encoder layer's
/// activations instead, concatenated (`l0_0 … l0_{d1-1}, l1_0 …`, the code last: the features of the Porto
/// Seguro recipe). `width` is the columns written after the others.
pub fn encode(request: &ModelRequest, out: &Path, all_layers: bool) -> Result<Written> {
    let plan = PathPlan::new().output_or_stdout("--out", out);
    let keep = Keep {
        codes: !all_layers,
        all_layers,
        recon: false,
    };
    let (run, _claim) = run_model(request, plan, keep)?;
    let Run {
        model,
        data,
        result,
        notes,
    } = run;
    let names: Vec<String> = if all_layers {
        model.spec.widths[1..]
            .iter()
            .enumerate()
            .flat_map(|(i, &d)| (0..d).map(move |j| format!("l{i}_{j}")))
            .collect()
    } else {
        (0..model.spec.code_width())
            .map(|j| format!("code_{j}"))
            .collect()
    };
    let k = names.len();
    if let Some(i) = result.codes.iter().position(|c| !c.is_finite()) {
        return Err(not_finite(
            request,
            format!(
                "a code of {} ({} of data row {})",
                result.codes[i],
                names[i % k],
                i / k + 1
            ),
        ));
    }
    let n_ignored = data.ignored_names.len();
    write_csv(out, |csv| {
        let mut header: Vec<String> = data.ignored_names.clone();
        header.extend(names.iter().cloned());
        csv.write_record(&header)?;
        let mut record: Vec<String> = Vec::with_capacity(n_ignored + k);
        for r in 0..data.rows {
            record.clear();
            record.extend_from_slice(&data.ignored_values[r * n_ignored..(r + 1) * n_ignored]);
            record.extend(
                result.codes[r * k..(r + 1) * k]
                    .iter()
                    .map(|x| x.to_string()),
            );
            csv.write_record(&record)?;
        }
        Ok(())
    })?;
    Ok(Written {
        rows: data.rows,
        width: k,
        mse: result.mse,
        notes,
    })
}

/// Writes every row's reconstruction, in the data's own units, to `out` (CSV: the columns other than the
/// model's features as they were, then the features); with `per_row_error`, each row's error (MSE in the
/// model's normalized units) and number too, worst first. `out` is a file or `-` for standard output.
pub fn reconstruct(request: &ModelRequest, out: &Path, per_row_error: bool) -> Result<Written> {
    let plan = PathPlan::new().output_or_stdout("--out", out);
    let keep = Keep {
        codes: false,
        all_layers: false,
        recon: true,
    };
    let (run, _claim) = run_model(request, plan, keep)?;
    let Run {
        model,
        data,
        mut result,
        notes,
    } = run;
    let d = data.cols;
    let errors: Vec<f64> = data
        .values
        .chunks_exact(d)
        .zip(result.reconstructions.chunks_exact(d))
        .map(|(x, r)| {
            x.iter()
                .zip(r)
                .map(|(&x, &r)| ((r - x) as f64).powi(2))
                .sum::<f64>()
                / d as f64
        })
        .collect();
    if let Some(r) = errors.iter().position(|e| !e.is_finite()) {
        return Err(not_finite(
            request,
            format!(
                "a reconstruction error of {} for data row {}",
                errors[r],
                r + 1
            ),
        ));
    }
    // Back to the data's own units, checked: the inverse normalization can overflow too.
    for (r, row) in result.reconstructions.chunks_exact_mut(d).enumerate() {
        model.normalization.invert_row(row);
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Err(not_finite(
                request,
                format!(
                    "a reconstruction of {} ('{}' of data row {})",
                    row[j],
                    model.feature_names[j],
                    r + 1
                ),
            ));
        }
    }
    let mut rows: Vec<usize> = (0..data.rows).collect();
    if per_row_error {
        rows.sort_by(|&i, &j| errors[j].total_cmp(&errors[i]));
    }
    let n_ignored = data.ignored_names.len();
    write_csv(out, |csv| {
        let mut header: Vec<String> = data.ignored_names.clone();
        if per_row_error {
            header.extend(["row".to_string(), "error".to_string()]);
        }
        header.extend(model.feature_names.iter().cloned());
        csv.write_record(&header)?;
        let mut record: Vec<String> = Vec::with_capacity(header.len());
        for &r in &rows {
            record.clear();
            record.extend_from_slice(&data.ignored_values[r * n_ignored..(r + 1) * n_ignored]);
            if per_row_error {
                record.push(r.to_string());
                record.push(errors[r].to_string());
            }
            record.extend(
                result.reconstructions[r * d..(r + 1) * d]
                    .iter()
                    .map(|v| v.to_string()),
            );
            csv.write_record(&record)?;
        }
        Ok(())
    })?;
    let mse = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
    Ok(Written {
        rows: data.rows,
        width: d,
        mse,
        notes,
    })
}
