//! A trained model run forward over a data file: `eval` (the reconstruction MSE), `encode` (the code of every
//! row, written to CSV beside the ignored columns) and `reconstruct` (every row rebuilt in the data's own
//! units, optionally ranked by its error). The data file is read with the model's ignored columns and
//! normalization; output files are written atomically.

use super::{resolve_device, DeviceChoice};
use crate::backend::{Backend, Real};
use crate::data::{load_csv, Dataset};
use crate::error::{Error, Result};
use crate::io::{self, ModelFile};
use crate::train::{DataOptions, DataSet, DataType, Network, Placement};
use std::path::{Path, PathBuf};

/// A model and a data file to run it on.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub model: PathBuf,
    pub data: PathBuf,
    pub device: DeviceChoice,
}

/// Loads a data set for a trained model: the same ignored columns, the same width, the same normalization.
pub fn load_for_model(path: &Path, model: &ModelFile) -> Result<Dataset> {
    let mut data = load_csv(path, &model.ignore)?;
    let d0 = model.spec.input_width();
    if data.cols != d0 {
        return Err(Error::file(
            path,
            format!(
                "has {} feature columns after ignoring [{}], but the model takes {d0}",
                data.cols,
                model
                    .ignore
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    model.normalization.apply(&mut data);
    Ok(data)
}

/// What one forward pass over a data set produced.
pub struct Evaluation {
    pub mse: f64,
    /// (rows, d_L) when asked for.
    pub codes: Vec<f32>,
    /// (rows, d_0), in the normalized space, when asked for.
    pub reconstructions: Vec<f32>,
    pub device: String,
}

/// Batch size for inference: large enough to keep a GPU busy, small enough for any card.
pub const EVAL_BATCH: usize = 4096;

/// Runs `model` forward over every row of `data` (already normalized) on `backend`.
pub fn evaluate<B: Backend>(
    backend: B,
    model: &ModelFile,
    data: &Dataset,
    want_codes: bool,
    want_recon: bool,
) -> Result<Evaluation> {
    let device = backend.name();
    let batch = EVAL_BATCH.min(data.rows.max(1));
    let mut net = Network::new(backend, &model.spec, &model.params, batch, None)?;
    // A data set larger than the GPU's free memory stays on the host, a batch copied up at a time.
    let options = DataOptions::new(DataType::F32, Placement::Auto);
    net.set_data(DataSet::Train, &data.values, data.rows, options)?;
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

/// Loads the model and the data file of `request`, and runs the model forward over every row.
fn run_model(
    request: &ModelRequest,
    want_codes: bool,
    want_recon: bool,
) -> Result<(ModelFile, Dataset, Evaluation)> {
    let model = io::load_model(&request.model)?;
    let data = load_for_model(&request.data, &model)?;
    let device = resolve_device(request.device)?;
    let result = crate::with_backend!(device, |backend| evaluate(
        backend, &model, &data, want_codes, want_recon
    )?);
    Ok((model, data, result))
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
}

/// The reconstruction MSE of a model on a data file.
pub fn eval(request: &ModelRequest) -> Result<EvalReport> {
    let (_, data, result) = run_model(request, false, false)?;
    Ok(EvalReport {
        mse: result.mse,
        samples: data.rows,
        features: data.cols,
        device: result.device,
    })
}

/// Writes the code of every row to `out` (CSV: the ignored columns as they were, then `code_0 …
/// code_{k-1}`); returns (rows, k).
pub fn encode(request: &ModelRequest, out: &Path) -> Result<(usize, usize)> {
    io::check_out_path("--out", out)?;
    let (model, data, result) = run_model(request, true, false)?;
    let k = model.spec.code_width();
    let n_ignored = data.ignored_names.len();
    io::write_atomic(out, |w| {
        let mut csv = csv::Writer::from_writer(w);
        let bad = |e: csv::Error| Error::file(out, e.to_string());
        let mut header: Vec<String> = data.ignored_names.clone();
        header.extend((0..k).map(|j| format!("code_{j}")));
        csv.write_record(&header).map_err(bad)?;
        let mut record: Vec<String> = Vec::with_capacity(n_ignored + k);
        for r in 0..data.rows {
            record.clear();
            record.extend_from_slice(&data.ignored_values[r * n_ignored..(r + 1) * n_ignored]);
            record.extend(
                result.codes[r * k..(r + 1) * k]
                    .iter()
                    .map(|x| x.to_string()),
            );
            csv.write_record(&record).map_err(bad)?;
        }
        csv.flush().map_err(|e| Error::io(out, e))
    })?;
    Ok((data.rows, k))
}

/// Writes every row's reconstruction, in the data's own units, to `out` (CSV: the ignored columns as they
/// were, then the features); with `per_row_error`, each row's error (MSE in the model's normalized units) and
/// number too, worst first. Returns (rows, the mean of the rows' errors).
pub fn reconstruct(
    request: &ModelRequest,
    out: &Path,
    per_row_error: bool,
) -> Result<(usize, f64)> {
    io::check_out_path("--out", out)?;
    let (model, data, result) = run_model(request, false, true)?;
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
    let mut rows: Vec<usize> = (0..data.rows).collect();
    if per_row_error {
        rows.sort_by(|&i, &j| errors[j].total_cmp(&errors[i]));
    }
    let n_ignored = data.ignored_names.len();
    io::write_atomic(out, |w| {
        let mut csv = csv::Writer::from_writer(w);
        let bad = |e: csv::Error| Error::file(out, e.to_string());
        let mut header: Vec<String> = data.ignored_names.clone();
        if per_row_error {
            header.extend(["row".to_string(), "error".to_string()]);
        }
        header.extend(model.feature_names.iter().cloned());
        csv.write_record(&header).map_err(bad)?;
        let mut values = vec![0.0f32; d];
        let mut record: Vec<String> = Vec::with_capacity(header.len());
        for &r in &rows {
            record.clear();
            record.extend_from_slice(&data.ignored_values[r * n_ignored..(r + 1) * n_ignored]);
            if per_row_error {
                record.push(r.to_string());
                record.push(errors[r].to_string());
            }
            values.copy_from_slice(&result.reconstructions[r * d..(r + 1) * d]);
            model.normalization.invert_row(&mut values);
            record.extend(values.iter().map(|v| v.to_string()));
            csv.write_record(&record).map_err(bad)?;
        }
        csv.flush().map_err(|e| Error::io(out, e))
    })?;
    let mse = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
    Ok((data.rows, mse))
}
