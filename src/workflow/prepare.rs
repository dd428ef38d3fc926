//! What a training run starts from: a new model and its data file, or a checkpoint and the data file it names.
//! Everything here happens before a backend exists: the request is checked, the data loaded (and, by
//! `train.rs`, normalized and split), the model built or read back.

use super::train::{NewRun, ResumeRun};
use crate::data::{load_csv, ColumnSelector, Dataset, Normalization};
use crate::error::{Error, Result};
use crate::io::{self, RunSettings};
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{epoch_order, FitState, OptimizerState};
use std::path::PathBuf;

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
}

fn positive(flag: &str, value: usize) -> Result<usize> {
    if value == 0 {
        Err(Error::flag(flag, "must be a positive integer, got 0"))
    } else {
        Ok(value)
    }
}

/// A new model: its settings checked, its data file loaded, its weights initialized (or read from `init`).
pub(super) fn new_run(a: &NewRun, epochs: usize) -> Result<PreparedRun> {
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
    io::check_out_path("--out", &a.out)?;
    let data = load_csv(&a.data, &a.ignore)?;
    let normalization = Normalization::fit(a.normalize, &data);
    let mut widths = vec![data.cols];
    widths.extend(a.layers.iter().copied());
    let spec = ModelSpec::new(widths, a.activation, a.code_activation, a.output_activation)?;
    let params = match &a.init {
        Some(path) => io::load_weights(path, &spec)?,
        None => spec.glorot_init(a.seed),
    };
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
    };
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
        data,
    })
}

/// A run continued from the checkpoint in `a.from`, to `epochs` epochs in all; its settings come from the
/// checkpoint, its data from the file the checkpoint names unless `a.data` says otherwise.
pub(super) fn resumed_run(a: &ResumeRun, epochs: usize) -> Result<PreparedRun> {
    let from = &a.from;
    let model = io::load_model(from)?;
    let ck = model.checkpoint.ok_or_else(|| {
        Error::file(
            from,
            "holds no training state to resume from (use --init to start from its weights)",
        )
    })?;
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
    io::check_out_path("--out", &out)?;
    let data = load_csv(&settings.data, &model.ignore)?;
    if data.cols != model.spec.input_width() {
        return Err(Error::file(
            &settings.data,
            format!(
                "has {} feature columns, but the model resumed takes {}",
                data.cols,
                model.spec.input_width()
            ),
        ));
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
