//! Training a model from a data file, as `tiedae train` does: a new run or one resumed from its checkpoint,
//! an optional validation split, a checkpoint written after every epoch, a stop flag the caller owns (Ctrl-C
//! in the CLI), metrics and a plot. Progress is reported to a [`TrainObserver`]; nothing here prints.
//!
//! The order of events: the request is checked, every path checked and the outputs locked, the data loaded
//! (`prepare.rs`: a resumed run's settings and data checked against its checkpoint), the model file's header
//! and the run's memory estimated, the device chosen, and only then the weights allocated; [`Notice`]s of
//! what was found; the data normalized and split; the metrics file opened; [`TrainObserver::prepared`]; the
//! backend created (a GPU's free memory checked), [`TrainObserver::started`]; the data placed ([`Notice`]s
//! say where); the epochs, each followed by [`TrainObserver::epoch`] and a checkpoint; a final save;
//! [`TrainObserver::finished`]; the plot; the outputs unlocked.

use super::prepare::{self, PreparedRun, Split};
use super::DeviceChoice;
use crate::activation::Activation;
use crate::backend::Backend;
use crate::data::{ColumnSelector, Normalization, NormalizeKind};
use crate::error::{Error, Result};
use crate::io::{self, Checkpoint, DataIdentity, ModelFile, RunSettings};
use crate::memory::{Estimate, Need};
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{
    Constraints, DataOptions, DataSet, DataType, EpochReport, FitEnd, FitOptions, FitOutcome,
    FitState, Network, Noise, OptimizerState, Placement, Stop, TrainConfig,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// A training run to do.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub run: RunSource,
    /// Epochs in all, counting those a resumed run already did.
    pub epochs: usize,
    pub device: DeviceChoice,
    /// Where the data set lives (`--data-on`).
    pub data_on: Placement,
    /// On a GPU, each run of [`crate::train::GRAPH_STEPS`] steps recorded once as a CUDA graph and replayed
    /// (`--cuda-graphs`); the CPU ignores it.
    pub cuda_graphs: bool,
    /// One JSON line per epoch (`--metrics`): appended to when resuming, else written anew.
    pub metrics: Option<PathBuf>,
    /// The loss curves as PNG (`--plot`), drawn at the end and when the run stops early.
    pub plot: Option<PathBuf>,
}

/// Where a run starts.
#[derive(Debug, Clone)]
pub enum RunSource {
    /// A new model, trained on a data file.
    New(Box<NewRun>),
    /// A run continued from the checkpoint in the model file it wrote.
    Resume(Box<ResumeRun>),
}

/// A new model and how to train it (`tiedae train --data … --out …`).
#[derive(Debug, Clone)]
pub struct NewRun {
    pub data: PathBuf,
    /// The model file, rewritten (atomically) after every epoch.
    pub out: PathBuf,
    /// Columns left out of the features.
    pub ignore: Vec<ColumnSelector>,
    pub normalize: NormalizeKind,
    /// The widths after the input, the last being the code size (the input width is the data's).
    pub layers: Vec<usize>,
    pub activation: Activation,
    pub code_activation: Activation,
    pub output_activation: Activation,
    pub optimizer: Optimizer,
    pub batch_size: usize,
    /// Initial weights, the validation split and the shuffling.
    pub seed: u64,
    pub shuffle: bool,
    /// Start from this file's weights instead of Glorot-uniform ones.
    pub init: Option<PathBuf>,
    /// Hold out this fraction of the rows for validation.
    pub val_split: Option<f64>,
    /// Stop when the monitored loss has not improved for this many epochs; keep the best epoch's weights.
    pub patience: Option<usize>,
    pub constraints: Constraints,
    pub data_dtype: DataType,
    /// The noise of the training inputs (a denoising autoencoder; off: a plain one). The loss, the
    /// validation loss and `eval` compare with the clean rows.
    pub noise: Noise,
}

/// A run to continue (`tiedae train --resume …`): its settings come from the checkpoint.
#[derive(Debug, Clone)]
pub struct ResumeRun {
    pub from: PathBuf,
    /// The data file, when not the one the checkpoint names.
    pub data: Option<PathBuf>,
    /// Where to write, when not `from`.
    pub out: Option<PathBuf>,
    /// Settings given again: each must equal what the checkpoint records.
    pub given: GivenSettings,
    /// Continue on a data set other than the one the checkpoint records (`--resume-with-other-data`);
    /// without it, another data set (other rows, other values) is refused.
    pub other_data: bool,
}

/// The settings of a run that a checkpoint records, as given to a resumed run (None: not given). A resumed
/// run continues with the recorded ones; one given with another value is an error naming both, since it
/// would otherwise be ignored. What may change on resume is not here: the epochs in all, the device, where
/// the data lives, CUDA graphs, the metrics and plot files, `--out`, and the data file's path (its content
/// is checked against the checkpoint's record).
#[derive(Debug, Clone, Default)]
pub struct GivenSettings {
    pub layers: Option<Vec<usize>>,
    pub activation: Option<Activation>,
    pub code_activation: Option<Activation>,
    pub output_activation: Option<Activation>,
    pub optimizer: Option<String>,
    pub lr: Option<f32>,
    pub momentum: Option<f32>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    pub shuffle: Option<bool>,
    pub ignore: Option<Vec<ColumnSelector>>,
    pub normalize: Option<NormalizeKind>,
    pub val_split: Option<f64>,
    pub patience: Option<usize>,
    pub orthogonality: Option<f32>,
    pub uncorrelated: Option<f32>,
    pub unit_norm: Option<bool>,
    pub data_dtype: Option<DataType>,
    pub noise: Option<Noise>,
}

/// What a run will do, known once its data is loaded (see [`TrainObserver::prepared`]).
#[derive(Debug, Clone)]
pub struct TrainPlan {
    /// d_0 … d_L.
    pub widths: Vec<usize>,
    pub train_rows: usize,
    /// 0 without a validation split.
    pub val_rows: usize,
    pub features: usize,
    pub optimizer: Optimizer,
    /// Epochs in all.
    pub epochs: usize,
    /// Where the run starts (after the epochs and steps a resumed run already did).
    pub start: FitState,
    pub out: PathBuf,
    /// The noise of the training inputs (off for a plain autoencoder).
    pub noise: Noise,
}

/// Something worth telling about how a run goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A file read without a checksum to check it against (`flag`'s file: weights written elsewhere for
    /// `--init`, or a file of an older tiedae).
    NoChecksum { flag: &'static str, path: PathBuf },
    /// The checkpoint resumed from does not record its data set (an older tiedae's), so the data given could
    /// not be checked against it.
    DataUnrecorded { from: PathBuf },
    /// `--resume-with-other-data`: the run continues on a data set other than the one it started on.
    OtherData { data: PathBuf, from: PathBuf },
    /// Temporary files of a killed run on the same outputs were removed.
    StaleTempsRemoved { count: usize },
    /// The data set stays in host memory (a batch copied up at a time) on a device with memory of its own;
    /// `auto` when placement was automatic (the set does not fit in the device's free memory).
    DataOnHost { auto: bool },
    /// CUDA graphs were asked for: `used` unless each step copies its batch from the host.
    Graphs { used: bool },
    /// Recordings of CUDA graphs failed `count` times, and their steps ran kernel by kernel.
    GraphFailures { count: usize, first: String },
}

/// Receives a run's progress. Every method has a default that does nothing.
pub trait TrainObserver {
    /// The data is loaded and split and the device chosen; the backend is not created yet. An error stops the
    /// run here (the CLI installs its Ctrl-C handler here).
    fn prepared(&mut self, _plan: &TrainPlan) -> Result<()> {
        Ok(())
    }
    /// The backend is up; `backend` is its name.
    fn started(&mut self, _plan: &TrainPlan, _backend: &str) {}
    fn notice(&mut self, _notice: &Notice) {}
    /// After every epoch, before its checkpoint is written. An error stops the run.
    fn epoch(&mut self, _report: &EpochReport) -> Result<()> {
        Ok(())
    }
    /// The epochs are over (done, stopped or failed); the plot is drawn after this.
    fn finished(&mut self) {}
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// How a run ended (a run that failed returns the error instead).
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub end: FitEnd,
    pub state: FitState,
    /// (epoch, loss, val_loss) of every epoch of the run, resumed ones included.
    pub history: Vec<(usize, f64, Option<f64>)>,
    /// The model file written.
    pub out: PathBuf,
    pub epochs: usize,
    pub patience: Option<usize>,
}

/// Trains as `request` says; `stop` ends the run after the step in flight once it is set (then the outcome
/// is [`FitEnd::Interrupted`] and the checkpoint says where to resume). A loss that stops being finite ends
/// the run with [`Error::Diverged`], naming what `out` still holds.
pub fn train(
    request: &TrainRequest,
    stop: &AtomicBool,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let epochs = request.epochs;
    if epochs == 0 {
        return Err(Error::flag("--epochs", "must be a positive integer, got 0"));
    }
    let resuming = matches!(request.run, RunSource::Resume(_));
    let run = match &request.run {
        RunSource::New(new) => prepare::new_run(new, request)?,
        RunSource::Resume(resume) => prepare::resumed_run(resume, request)?,
    };
    let PreparedRun {
        spec,
        params,
        normalization,
        settings,
        ignore,
        feature_names,
        state,
        optimizer_state,
        mut history,
        out,
        mut data,
        data_identity,
        device,
        device_need,
        notices,
        _claim,
    } = run;
    for notice in &notices {
        observer.notice(notice);
    }
    normalization.apply(&mut data);
    let optimizer = settings.optimizer()?;
    let split = prepare::split_validation(&data, settings.val_split, settings.seed)?;
    let cfg = TrainConfig {
        batch_size: settings.batch_size,
        epochs,
        optimizer,
        shuffle: settings.shuffle,
        seed: settings.seed,
        constraints: settings.constraints(),
    };
    let metrics = match &request.metrics {
        Some(path) => Some((
            std::fs::OpenOptions::new()
                .create(true)
                .append(resuming)
                .write(true)
                .truncate(!resuming)
                .open(path)
                .map_err(|e| Error::io(path, e))?,
            path.clone(),
        )),
        None => None,
    };
    let plan = TrainPlan {
        widths: spec.widths.clone(),
        train_rows: split.train_rows,
        val_rows: split.val_rows,
        features: data.cols,
        optimizer,
        epochs,
        start: state.clone(),
        out: out.clone(),
        noise: settings.noise,
    };
    observer.prepared(&plan)?;
    let saver = Saver {
        spec: &spec,
        normalization: &normalization,
        feature_names: &feature_names,
        ignore: &ignore,
        settings: &settings,
        optimizer,
        rows: data.rows,
        out: &out,
        data_identity: &data_identity,
    };
    let mut run = Run {
        request,
        plan: &plan,
        cfg: &cfg,
        split: &split,
        saver: &saver,
        params: &params,
        optimizer_state: optimizer_state.as_ref(),
        patience: settings.patience,
        stop,
        metrics,
        history: &mut history,
        observer: &mut *observer,
        device_need: &device_need,
    };
    let outcome = crate::with_backend!(device, |backend| run.on(backend));
    observer.finished();
    let plot = |history: &[(usize, f64, Option<f64>)]| -> Result<()> {
        if let Some(p) = &request.plot {
            crate::plot::plot_losses(p, history)?;
        }
        Ok(())
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(Error::Diverged(e)) => {
            let kept = if history.is_empty() {
                format!("{} was not written", out.display())
            } else {
                format!(
                    "{} holds the last good epoch ({})",
                    out.display(),
                    history.len()
                )
            };
            plot(&history)?;
            return Err(Error::Diverged(format!("{e}; {kept}")));
        }
        Err(e) => return Err(e),
    };
    plot(&history)?;
    Ok(TrainOutcome {
        end: outcome.end,
        state: outcome.state,
        history,
        out,
        epochs,
        patience: settings.patience,
    })
}

/// Writes the model file with its checkpoint: after every epoch, and at the end.
struct Saver<'a> {
    spec: &'a ModelSpec,
    normalization: &'a Normalization,
    feature_names: &'a [String],
    ignore: &'a [ColumnSelector],
    settings: &'a RunSettings,
    optimizer: Optimizer,
    /// Rows of the data file, validation rows included.
    rows: usize,
    out: &'a Path,
    data_identity: &'a Option<DataIdentity>,
}

impl Saver<'_> {
    fn save(
        &self,
        params: Vec<f32>,
        opt: OptimizerState,
        st: &FitState,
        history: &[(usize, f64, Option<f64>)],
        device: &str,
    ) -> Result<()> {
        let mut training = BTreeMap::new();
        training.insert("optimizer".into(), self.optimizer.describe());
        training.insert("epochs".into(), st.epochs_done.to_string());
        training.insert("batch_size".into(), self.settings.batch_size.to_string());
        if let Some(&(_, loss, val)) = history.last() {
            training.insert("final_loss".into(), format!("{loss}"));
            if let Some(v) = val {
                training.insert("final_val_loss".into(), format!("{v}"));
            }
        }
        training.insert("device".into(), device.to_string());
        training.insert("data".into(), self.settings.data.display().to_string());
        training.insert("rows".into(), self.rows.to_string());
        let model = ModelFile {
            spec: self.spec.clone(),
            params,
            normalization: self.normalization.clone(),
            feature_names: self.feature_names.to_vec(),
            ignore: self.ignore.to_vec(),
            training,
            noise: self.settings.noise,
            checkpoint: Some(Checkpoint {
                settings: self.settings.clone(),
                state: st.clone(),
                optimizer_state: opt,
                history: history.to_vec(),
                data_identity: self.data_identity.clone(),
            }),
        };
        io::save_model(self.out, &model)
    }
}

/// A prepared run, to be trained on a backend.
struct Run<'a> {
    request: &'a TrainRequest,
    plan: &'a TrainPlan,
    cfg: &'a TrainConfig,
    split: &'a Split,
    saver: &'a Saver<'a>,
    params: &'a [f32],
    optimizer_state: Option<&'a OptimizerState>,
    patience: Option<usize>,
    stop: &'a AtomicBool,
    metrics: Option<(std::fs::File, PathBuf)>,
    history: &'a mut Vec<(usize, f64, Option<f64>)>,
    observer: &'a mut dyn TrainObserver,
    /// What the run takes in a GPU's own memory, checked against its free memory once it is up.
    device_need: &'a [Need],
}

impl Run<'_> {
    fn on<B: Backend>(&mut self, backend: B) -> Result<FitOutcome> {
        if let Some(free) = backend.free_memory() {
            let need = Estimate {
                host: Vec::new(),
                device: self.device_need.to_vec(),
            };
            need.check(&prepare::task(&self.plan.widths), Some(free as u64))?;
        }
        let device_name = backend.name();
        self.observer.started(self.plan, &device_name);
        let (request, cfg, split) = (self.request, self.cfg, self.split);
        let mut net = Network::new(
            backend,
            self.saver.spec,
            self.params,
            cfg.batch_size,
            Some(cfg.optimizer),
        )?;
        if let Some(opt) = self.optimizer_state {
            net.restore_optimizer_state(opt)?;
        }
        // Before the data: a set kept on the host is staged with room for the clean rows.
        net.set_noise(self.saver.settings.noise)?;
        let graphs = request.cuda_graphs && net.set_graphs(true);
        let options = DataOptions::new(self.saver.settings.data_dtype, request.data_on);
        let placed = net.set_data(DataSet::Train, &split.train, split.train_rows, options)?;
        if split.val_rows > 0 {
            net.set_data(DataSet::Validation, &split.val, split.val_rows, options)?;
        }
        if placed == Placement::Host && net.backend.free_memory().is_some() {
            self.observer.notice(&Notice::DataOnHost {
                auto: request.data_on == Placement::Auto,
            });
        }
        if graphs {
            self.observer.notice(&Notice::Graphs {
                used: placed != Placement::Host,
            });
        }
        let opts = FitOptions {
            state: self.plan.start.clone(),
            patience: self.patience,
            stop: Stop {
                flag: Some(self.stop),
                at_step: None,
            },
        };
        let (observer, history, metrics, saver) = (
            &mut *self.observer,
            &mut *self.history,
            &mut self.metrics,
            self.saver,
        );
        let outcome = net.fit_with(cfg, opts, |r, st, net| {
            observer.epoch(r)?;
            history.push((r.epoch, r.loss, r.val_loss));
            if let Some((file, path)) = metrics.as_mut() {
                let line = serde_json::json!({
                    "epoch": r.epoch,
                    "loss": r.loss,
                    "val_loss": r.val_loss,
                    "seconds": r.seconds,
                    "samples_per_s": r.samples as f64 / r.seconds.max(1e-9),
                });
                writeln!(file, "{line}").map_err(|e| Error::io(path, e))?;
            }
            // A checkpoint after every epoch: weights, optimizer state and where the run stands.
            let params = net.read_params()?;
            let opt = net.optimizer_state()?;
            saver.save(params, opt, st, history, &device_name)
        });
        if let Some(first) = net.graph_failures().first() {
            self.observer.notice(&Notice::GraphFailures {
                count: net.graph_failures().len(),
                first: first.clone(),
            });
        }
        let outcome = outcome?;
        // The final save: after early stopping or --patience the best weights are in `net` now.
        let params = net.read_params()?;
        let opt = net.optimizer_state()?;
        self.saver
            .save(params, opt, &outcome.state, self.history, &device_name)?;
        Ok(outcome)
    }
}
