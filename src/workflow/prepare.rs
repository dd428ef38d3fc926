//! What a training run starts from: a new model and its data file, or a checkpoint and the data file it names.
//! Everything here happens before a backend exists: the request is checked, every path checked and the
//! outputs locked (`paths.rs`), the data loaded (and, by `train.rs`, normalized and split), the model file's
//! header and the memory the run takes estimated, and only then the model built or read back.

use super::paths::{self, Claim, PathPlan};
use super::train::{GivenSettings, NewRun, Notice, ResumeRun, TrainRequest};
use super::{resolve_device, Device};
use crate::data::{
    column_names, load_csv, load_csv_for_model, ColumnSelector, Dataset, Normalization,
};
use crate::error::{Error, Result};
use crate::io::{self, DataIdentity, Integrity, ModelFile, RunSettings};
use crate::memory::{self, Estimate, Need, TrainingShape};
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{epoch_order, FitState, OptimizerState, Placement};
use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Everything a run needs, from a new model or from a checkpoint, and its data set (not normalized yet).
pub(super) struct PreparedRun {
    pub(super) spec: ModelSpec,
    pub(super) params: Vec<f32>,
    pub(super) normalization: Normalization,
    pub(super) settings: RunSettings,
    pub(super) ignore: Vec<ColumnSelector>,
    pub(super) feature_names: Vec<String>,
    pub(super) state: FitState,
    pub(super) optimizer_state: Option<OptimizerState>,
    pub(super) history: Vec<(usize, f64, Option<f64>)>,
    pub(super) out: PathBuf,
    pub(super) data: Dataset,
    /// The data set's identity, recorded in every checkpoint.
    pub(super) data_identity: Option<DataIdentity>,
    pub(super) device: Device,
    /// What the run takes in a GPU's own memory (checked once the GPU is up).
    pub(super) device_need: Vec<Need>,
    pub(super) notices: Vec<Notice>,
    /// The locks on the outputs, held for the run's length.
    pub(super) _claim: Claim,
}

fn positive(flag: &str, value: usize) -> Result<usize> {
    if value == 0 {
        Err(Error::flag(flag, "must be a positive integer, got 0"))
    } else {
        Ok(value)
    }
}

/// How a run is named in messages: "training 64→32→8".
pub(super) fn task(widths: &[usize]) -> String {
    let w: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
    format!("training {}", w.join("→"))
}

/// Checks and locks every path of a run: the inputs, `--out` (which may be the `--resume` file itself),
/// `--metrics` and `--plot`.
fn claim_paths(
    request: &TrainRequest,
    inputs: &[(&'static str, &Path)],
    out: &Path,
    resume: Option<&Path>,
) -> Result<Claim> {
    let mut plan = PathPlan::new();
    for (flag, path) in inputs {
        plan = plan.input(flag, path);
    }
    plan = match resume {
        Some(from) => plan
            .input("--resume", from)
            .output_replacing("--out", out, "--resume"),
        None => plan.output("--out", out),
    };
    if let Some(m) = &request.metrics {
        plan = plan.output("--metrics", m);
    }
    if let Some(p) = &request.plot {
        plan = plan.output("--plot", p);
    }
    plan.check()
}

/// The memory of the run, checked before the weights are allocated; returns the device and what the run
/// will take in a GPU's own memory.
fn check_sizes(
    request: &TrainRequest,
    settings: &RunSettings,
    widths: &[usize],
    data: &Dataset,
) -> Result<(Device, Vec<Need>)> {
    let device = resolve_device(request.device)?;
    let on_cpu = device == Device::Cpu;
    let mut estimate = memory::training_estimate(&TrainingShape {
        widths,
        state_buffers: settings.optimizer()?.state_buffers(),
        batch: settings.batch_size,
        rows: data.rows,
        data_bytes: if settings.data_dtype == crate::train::DataType::F32 {
            4
        } else {
            2
        },
        // `auto` puts a set that does not fit on the host, so only `device` counts it against the GPU.
        data_on_device: on_cpu || request.data_on == Placement::Device,
        keeps_best: settings.patience.is_some(),
    });
    if !settings.noise.is_off() {
        // train/noise.rs: the batch's input moves into a buffer of 3·batch rows (clean rows, corrupted rows,
        // their gradient), beside one mask value per column and the key.
        let d0 = widths.first().copied().unwrap_or(0) as u128;
        estimate.device.push(Need {
            what: "denoising batch",
            bytes: 4 * (3 * settings.batch_size as u128 * d0 + d0 + 3),
            flag: "--batch-size",
            advice: "use a smaller --batch-size",
        });
    }
    let task = task(widths);
    if on_cpu {
        estimate.check(&task, None)?;
        Ok((device, Vec::new()))
    } else {
        let host = Estimate {
            host: estimate.host,
            device: Vec::new(),
        };
        host.check(&task, None)?;
        Ok((device, estimate.device))
    }
}

/// A new model: its settings checked, its paths checked and locked, its data file loaded, its size checked,
/// its weights initialized (or read from `init`).
pub(super) fn new_run(a: &NewRun, request: &TrainRequest) -> Result<PreparedRun> {
    let epochs = request.epochs;
    let batch_size = positive("--batch-size", a.batch_size)?;
    let patience = a.patience.map(|p| positive("--patience", p)).transpose()?;
    let val_split = match a.val_split {
        Some(f) if !(f > 0.0 && f < 1.0) => {
            return Err(Error::flag(
                "--val-split",
                format!("must be a fraction between 0 and 1, got {f}"),
            ))
        }
        other => other,
    };
    for (flag, v) in [
        ("--orthogonality", a.constraints.orthogonality),
        ("--uncorrelated", a.constraints.uncorrelated),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::flag(flag, format!("must be a number ≥ 0, got {v}")));
        }
    }
    a.noise.check()?;
    let mut inputs: Vec<(&'static str, &Path)> = vec![("--data", &a.data)];
    if let Some(init) = &a.init {
        inputs.push(("--init", init));
    }
    let claim = claim_paths(request, &inputs, &a.out, None)?;
    // The model file's header holds the columns' names: judged from the first row, before the data is read.
    let mut names = io::NamesSize::default();
    column_names(&a.data, &mut |name| names.add(name))?;
    io::check_header_fits(&a.data, &names, a.layers.len(), epochs)?;
    let data = load_csv(&a.data, &a.ignore)?;
    let normalization = Normalization::fit(a.normalize, &data);
    let mut widths = vec![data.cols];
    widths.extend(a.layers.iter().copied());
    let spec = ModelSpec::new(widths, a.activation, a.code_activation, a.output_activation)?;
    let (name, lr, momentum) = match a.optimizer {
        Optimizer::Sgd { lr, momentum } => ("sgd", lr, momentum),
        Optimizer::Adam { lr, .. } => ("adam", lr, 0.0),
    };
    let settings = RunSettings {
        data: a.data.clone(),
        optimizer: name.into(),
        lr,
        momentum,
        batch_size,
        epochs,
        seed: a.seed,
        shuffle: a.shuffle,
        val_split,
        patience,
        orthogonality: a.constraints.orthogonality,
        uncorrelated: a.constraints.uncorrelated,
        unit_norm: a.constraints.unit_norm,
        data_dtype: a.data_dtype,
        noise: a.noise,
    };
    let (device, device_need) = check_sizes(request, &settings, &spec.widths, &data)?;
    let mut notices = Vec::new();
    let params = match &a.init {
        Some(path) => {
            let (params, integrity) = io::load_weights_verified(path, &spec)?;
            if integrity == Integrity::NoChecksum {
                notices.push(Notice::NoChecksum {
                    flag: "--init",
                    path: path.clone(),
                });
            }
            params
        }
        None => spec.glorot_init(a.seed),
    };
    if claim.stale_removed > 0 {
        notices.push(Notice::StaleTempsRemoved {
            count: claim.stale_removed,
        });
    }
    Ok(PreparedRun {
        spec,
        params,
        normalization,
        settings,
        ignore: a.ignore.clone(),
        feature_names: data.feature_names.clone(),
        state: FitState::default(),
        optimizer_state: None,
        history: Vec::new(),
        out: a.out.clone(),
        data_identity: Some(DataIdentity::of(&data)),
        data,
        device,
        device_need,
        notices,
        _claim: claim,
    })
}

/// Refuses a setting given to a resumed run with a value other than the one its checkpoint records.
fn same<T: Display>(flag: &str, given: Option<T>, recorded: T, from: &Path) -> Result<()> {
    let Some(given) = given else { return Ok(()) };
    let (given, recorded) = (given.to_string(), recorded.to_string());
    if given == recorded {
        return Ok(());
    }
    Err(Error::flag(
        flag,
        format!(
            "{given} differs from {recorded}, which {} records; a resumed run continues with the settings it started with (leave {flag} out, or start a new run)",
            from.display()
        ),
    ))
}

fn list<T: Display>(xs: &[T]) -> String {
    let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(",")
    }
}

fn optional<T: Display>(x: Option<T>) -> String {
    x.map_or("none".to_string(), |x| x.to_string())
}

/// Every setting given to a resumed run against what its checkpoint records.
fn check_given(g: &GivenSettings, m: &ModelFile, s: &RunSettings, from: &Path) -> Result<()> {
    let spec = &m.spec;
    let on_off = |b: bool| if b { "on" } else { "off" };
    same(
        "--layers",
        g.layers.as_deref().map(list),
        list(&spec.widths[1..]),
        from,
    )?;
    same("--activation", g.activation, spec.activation, from)?;
    same(
        "--code-activation",
        g.code_activation,
        spec.code_activation,
        from,
    )?;
    same(
        "--output-activation",
        g.output_activation,
        spec.output_activation,
        from,
    )?;
    same(
        "--optimizer",
        g.optimizer
            .as_deref()
            .map(|o| o.trim().to_ascii_lowercase()),
        s.optimizer.clone(),
        from,
    )?;
    same("--lr", g.lr, s.lr, from)?;
    same("--momentum", g.momentum, s.momentum, from)?;
    same("--batch-size", g.batch_size, s.batch_size, from)?;
    same("--seed", g.seed, s.seed, from)?;
    same(
        "--no-shuffle",
        g.shuffle
            .map(|b| if b { "shuffling" } else { "no shuffling" }),
        if s.shuffle {
            "shuffling"
        } else {
            "no shuffling"
        },
        from,
    )?;
    same(
        "--ignore-columns",
        g.ignore.as_deref().map(list),
        list(&m.ignore),
        from,
    )?;
    same("--normalize", g.normalize, m.normalization.kind, from)?;
    same(
        "--val-split",
        g.val_split.map(Some).map(optional),
        optional(s.val_split),
        from,
    )?;
    same(
        "--patience",
        g.patience.map(Some).map(optional),
        optional(s.patience),
        from,
    )?;
    same("--orthogonality", g.orthogonality, s.orthogonality, from)?;
    same("--uncorrelated", g.uncorrelated, s.uncorrelated, from)?;
    same(
        "--unit-norm",
        g.unit_norm.map(on_off),
        on_off(s.unit_norm),
        from,
    )?;
    same(
        "--data-dtype",
        g.data_dtype.map(|d| d.as_str()),
        s.data_dtype.as_str(),
        from,
    )?;
    same("--noise", g.noise, s.noise, from)
}

/// A run continued from the checkpoint in `a.from`, to `request.epochs` epochs in all; its settings come
/// from the checkpoint, its data from the file the checkpoint names unless `a.data` says otherwise, matched
/// to the model's columns by name and checked to be the data set the run started on.
pub(super) fn resumed_run(a: &ResumeRun, request: &TrainRequest) -> Result<PreparedRun> {
    let epochs = request.epochs;
    let from = &a.from;
    paths::check_input("--resume", from)?;
    let (model, integrity) = io::load_model_verified(from)?;
    let ck = model.checkpoint.clone().ok_or_else(|| {
        Error::file(
            from,
            "holds no training state to resume from (use --init to start from its weights)",
        )
    })?;
    check_given(&a.given, &model, &ck.settings, from)?;
    if epochs <= ck.state.epochs_done {
        return Err(Error::flag(
            "--epochs",
            format!(
                "{} already did {} epoch(s); ask for more to continue (--epochs counts every epoch of the run)",
                from.display(),
                ck.state.epochs_done
            ),
        ));
    }
    let mut settings = ck.settings;
    settings.epochs = epochs;
    if let Some(data) = &a.data {
        settings.data = data.clone();
    }
    let out = a.out.clone().unwrap_or_else(|| from.to_path_buf());
    let data_flag = if a.data.is_some() {
        "--data"
    } else {
        "the data file the checkpoint names (--data)"
    };
    let claim = claim_paths(request, &[(data_flag, &settings.data)], &out, Some(from))?;
    let data = load_csv_for_model(&settings.data, &model.feature_names, &model.ignore)?;
    let identity = DataIdentity::of(&data);
    let mut notices = Vec::new();
    if integrity == Integrity::NoChecksum {
        notices.push(Notice::NoChecksum {
            flag: "--resume",
            path: from.clone(),
        });
    }
    match &ck.data_identity {
        None => notices.push(Notice::DataUnrecorded { from: from.clone() }),
        Some(recorded) if *recorded != identity => {
            if !a.other_data {
                let what = if recorded.rows != identity.rows {
                    format!(
                        "has {} rows, but {} was trained on {} rows",
                        identity.rows,
                        from.display(),
                        recorded.rows
                    )
                } else {
                    format!(
                        "has the columns and the {} rows {} was trained on, but other values",
                        identity.rows,
                        from.display()
                    )
                };
                return Err(Error::file(
                    &settings.data,
                    format!("{what}: it is not the data set the run started on; to continue on it, add --resume-with-other-data"),
                ));
            }
            notices.push(Notice::OtherData {
                data: settings.data.clone(),
                from: from.clone(),
            });
        }
        Some(_) => {}
    }
    io::check_header_fits(
        &settings.data,
        &io::NamesSize::of(&model.feature_names),
        model.spec.depth(),
        epochs,
    )?;
    let (device, device_need) = check_sizes(request, &settings, &model.spec.widths, &data)?;
    if claim.stale_removed > 0 {
        notices.push(Notice::StaleTempsRemoved {
            count: claim.stale_removed,
        });
    }
    Ok(PreparedRun {
        spec: model.spec,
        params: model.params,
        normalization: model.normalization,
        settings,
        ignore: model.ignore,
        feature_names: model.feature_names,
        state: ck.state,
        optimizer_state: Some(ck.optimizer_state),
        history: ck.history,
        out,
        data,
        data_identity: Some(identity),
        device,
        device_need,
        notices,
        _claim: claim,
    })
}

/// The training rows and the validation rows of a data set, each (rows, cols) row-major in file order.
pub(super) struct Split {
    pub(super) train: Vec<f32>,
    pub(super) train_rows: usize,
    pub(super) val: Vec<f32>,
    pub(super) val_rows: usize,
}

/// Splits off the validation rows: a seeded choice of `fraction` of the rows; both parts keep file order.
pub(super) fn split_validation(data: &Dataset, fraction: Option<f64>, seed: u64) -> Result<Split> {
    let cols = data.cols;
    let Some(f) = fraction else {
        return Ok(Split {
            train: data.values.clone(),
            train_rows: data.rows,
            val: Vec::new(),
            val_rows: 0,
        });
    };
    let n_val = ((data.rows as f64) * f).round() as usize;
    if n_val == 0 || n_val >= data.rows {
        return Err(Error::flag(
            "--val-split",
            format!(
                "{f} of {} rows leaves {n_val} for validation and {} for training",
                data.rows,
                data.rows - n_val.min(data.rows)
            ),
        ));
    }
    // A stream of its own (u64::MAX), so the split does not depend on the shuffling of any epoch.
    let mut is_val = vec![false; data.rows];
    for &r in &epoch_order(data.rows, seed, usize::MAX, true)[..n_val] {
        is_val[r as usize] = true;
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (r, row) in data.values.chunks_exact(cols).enumerate() {
        if is_val[r] { &mut val } else { &mut train }.extend_from_slice(row);
    }
    Ok(Split {
        train,
        train_rows: data.rows - n_val,
        val,
        val_rows: n_val,
    })
}
