//! The `tiedae` command line: flags in, library calls, output out.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tiedae::activation::Activation;
use tiedae::app::{self, DeviceChoice};
use tiedae::backend::{cuda, Backend, CpuBackend};
use tiedae::data::{load_csv, ColumnSelector, Dataset, Normalization, NormalizeKind};
use tiedae::error::Error;
use tiedae::io::{self, Checkpoint, ModelFile, RunSettings};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{
    epoch_order, DataOptions, DataSet, DataType, FitEnd, FitOptions, FitState, Network,
    OptimizerState, Placement, Stop, TrainConfig, GRAPH_STEPS,
};
use tiedae::with_backend;

#[derive(Parser)]
#[command(
    name = "tiedae",
    version,
    args_override_self = true,
    about = "Tied-weight autoencoders done right: one kernel W, used as W by the encoder and as Wᵀ by the decoder"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a tied autoencoder on a CSV file and write the model (safetensors).
    Train(Box<TrainArgs>),
    /// Reconstruction MSE of a model on a CSV file.
    Eval(EvalArgs),
    /// Write the codes (the encoder's output) of every row to a CSV file.
    Encode(EncodeArgs),
    /// Reconstruct every row (in the data's own units); with --per-row-error, rank rows by their error.
    Reconstruct(ReconstructArgs),
    /// A Keras-like table of a model's layers; the tied kernel is counted once.
    Summary {
        #[arg(long)]
        model: PathBuf,
    },
    /// The classic 51→1 scenario: one SGD epoch, showing that the decoder's kernel IS the encoder's, moved.
    Demo {
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The GPUs this machine has and how this binary was built.
    Info,
    /// Time training epochs (seed, digits, mnist workloads) on the CPU and the GPU.
    Bench(tiedae::bench::BenchArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Training data: CSV, header detected. With --resume, defaults to the checkpoint's data file.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Where to write the model (safetensors): after every epoch and at the end, atomically. With --resume,
    /// defaults to the file resumed from.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue a run from the model file it wrote, to --epochs epochs in all; its settings (model,
    /// optimizer, batch size, seed, validation split, constraints) come from the file.
    #[arg(long, conflicts_with = "init")]
    resume: Option<PathBuf>,
    /// Widths of the encoder's layers after the input, the last being the code size: e.g. 32,8.
    #[arg(long, default_value = "32,8")]
    layers: String,
    /// Activation of every hidden layer (encoder and decoder): linear|relu|tanh|sigmoid.
    #[arg(long, default_value = "relu")]
    activation: Activation,
    /// Activation of the encoder's last layer (the code).
    #[arg(long, default_value = "linear")]
    code_activation: Activation,
    /// Activation of the decoder's last layer (the reconstruction).
    #[arg(long, default_value = "linear")]
    output_activation: Activation,
    /// sgd|adam.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate (default 0.01 for sgd, 0.001 for adam, as in Keras).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// SGD momentum: v = momentum·v − lr·g; w += v.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    momentum: f32,
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    batch_size: i64,
    /// Epochs in all (with --resume: including those already done).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    epochs: i64,
    /// Seed for the initial weights, the validation split and the shuffling: runs are reproducible.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Batches in file order (no shuffling).
    #[arg(long)]
    no_shuffle: bool,
    /// Start from the weights in this safetensors file (names and shapes must fit the model).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Columns to leave out, by name or 0-based index: e.g. Id,Cover_Type.
    #[arg(long)]
    ignore_columns: Option<String>,
    /// none|standard|minmax; the statistics are stored in the model and applied again by eval and encode.
    #[arg(long, default_value = "none")]
    normalize: NormalizeKind,
    /// Hold out this fraction of the rows (seeded) and report the validation loss every epoch.
    #[arg(long, allow_negative_numbers = true)]
    val_split: Option<f64>,
    /// Stop when the validation loss (or the training loss, without --val-split) has not improved for N
    /// epochs, and keep the best epoch's weights.
    #[arg(long, allow_negative_numbers = true)]
    patience: Option<i64>,
    /// Add λ·‖WᵀW − I‖_F per kernel (orthogonal kernel columns, as PCA's).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    orthogonality: f32,
    /// Add λ·Σ_{i≠j} Cov(codes)_ij² over each batch (uncorrelated codes, as PCA's).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    uncorrelated: f32,
    /// Project every kernel column to norm 1 after each step.
    #[arg(long)]
    unit_norm: bool,
    /// Append one JSON line per epoch: epoch, loss, val_loss, seconds, samples_per_s.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Keep the data set on the device as f32, or as f16/bf16 (half the memory; each batch is converted to
    /// f32 as it is gathered).
    #[arg(long, default_value = "f32")]
    data_dtype: DataType,
    /// Draw the loss curves to this PNG at the end (and when stopped).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// cpu|cuda|auto.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// On a GPU: record each run of 32 training steps once as a CUDA graph and replay it, one launch
    /// instead of one per kernel (small models spend most of a step launching). The same bits as without.
    /// Off by default until measured on a GPU; the CPU ignores it.
    #[arg(long)]
    cuda_graphs: bool,
    /// Where the data set lives: `device`, `host` (each batch gathered on the host and copied to the GPU: for
    /// a data set larger than the GPU's memory), or `auto` (the device when the set fits in its free memory).
    #[arg(long, default_value = "auto")]
    data_on: Placement,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct EncodeArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Output CSV: the ignored columns (Id, label…) as they were, then code_0 … code_{k-1}.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
struct ReconstructArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Output CSV: the ignored columns as they were, then the reconstructed features.
    #[arg(long)]
    out: PathBuf,
    /// Add each row's reconstruction error (MSE in the model's normalized units) and its row number, and
    /// sort the rows from the worst reconstructed: the usual way to find anomalies.
    #[arg(long)]
    per_row_error: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

fn main() {
    // The CPU GEMM (matrixmultiply) reads its thread count from the environment: use every core unless the
    // user said otherwise.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("MATMUL_NUM_THREADS", cores.to_string());
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train(*args),
        Command::Eval(args) => eval(args),
        Command::Encode(args) => encode(args),
        Command::Reconstruct(args) => reconstruct(args),
        Command::Summary { model } => summary(&model),
        Command::Demo { device, seed } => demo(device, seed),
        Command::Info => info(),
        Command::Bench(args) => Ok(tiedae::bench::run(&args)?),
    }
}

fn positive(flag: &str, value: i64) -> Result<usize, Error> {
    if value <= 0 {
        Err(Error::flag(
            flag,
            format!("must be a positive integer, got {value}"),
        ))
    } else {
        Ok(value as usize)
    }
}

fn parse_layers(s: &str) -> Result<Vec<usize>, Error> {
    s.split(',')
        .map(|w| {
            let w = w.trim();
            match w.parse::<i64>() {
                Ok(v) if v > 0 => Ok(v as usize),
                Ok(v) => Err(Error::flag(
                    "--layers",
                    format!("width {v} is not positive; every width must be a positive integer"),
                )),
                Err(_) => Err(Error::flag(
                    "--layers",
                    format!("'{w}' is not a width; expected positive integers like 32,8"),
                )),
            }
        })
        .collect()
}

/// Fails early, before any work, when `--out` cannot be written: its folder must exist.
fn check_out_path(flag: &str, path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::flag(
            flag,
            format!("folder '{}' does not exist", dir.display()),
        ));
    }
    if path.is_dir() {
        return Err(Error::flag(
            flag,
            format!("'{}' is a folder", path.display()),
        ));
    }
    Ok(())
}

/// Everything a run needs, from fresh flags or from a checkpoint.
struct Run {
    spec: ModelSpec,
    params: Vec<f32>,
    normalization: Normalization,
    settings: RunSettings,
    ignore: Vec<ColumnSelector>,
    feature_names: Vec<String>,
    state: FitState,
    optimizer_state: Option<OptimizerState>,
    history: Vec<(usize, f64, Option<f64>)>,
    out: PathBuf,
}

fn fresh_run(a: &TrainArgs, epochs: usize) -> Result<(Run, Dataset)> {
    let batch_size = positive("--batch-size", a.batch_size)?;
    let optimizer = Optimizer::from_flags(&a.optimizer, a.lr, a.momentum)?;
    let code_widths = parse_layers(&a.layers)?;
    let patience = a.patience.map(|p| positive("--patience", p)).transpose()?;
    let val_split = match a.val_split {
        Some(f) if !(f > 0.0 && f < 1.0) => {
            return Err(Error::flag(
                "--val-split",
                format!("must be a fraction between 0 and 1, got {f}"),
            )
            .into())
        }
        other => other,
    };
    for (flag, v) in [
        ("--orthogonality", a.orthogonality),
        ("--uncorrelated", a.uncorrelated),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::flag(flag, format!("must be a number ≥ 0, got {v}")).into());
        }
    }
    let data_path = a
        .data
        .clone()
        .expect("clap requires --data without --resume");
    let out = a.out.clone().expect("clap requires --out without --resume");
    check_out_path("--out", &out)?;
    let ignore = app::ignore_list(a.ignore_columns.as_deref());
    let data = load_csv(&data_path, &ignore)?;
    let normalization = Normalization::fit(a.normalize, &data);
    let mut widths = vec![data.cols];
    widths.extend(code_widths);
    let spec = ModelSpec::new(widths, a.activation, a.code_activation, a.output_activation)?;
    let params = match &a.init {
        Some(path) => io::load_weights(path, &spec)?,
        None => spec.glorot_init(a.seed),
    };
    let (name, lr, momentum) = match optimizer {
        Optimizer::Sgd { lr, momentum } => ("sgd", lr, momentum),
        Optimizer::Adam { lr, .. } => ("adam", lr, 0.0),
    };
    let settings = RunSettings {
        data: data_path,
        optimizer: name.into(),
        lr,
        momentum,
        batch_size,
        epochs,
        seed: a.seed,
        shuffle: !a.no_shuffle,
        val_split,
        patience,
        orthogonality: a.orthogonality,
        uncorrelated: a.uncorrelated,
        unit_norm: a.unit_norm,
        data_dtype: a.data_dtype,
    };
    let run = Run {
        spec,
        params,
        normalization,
        settings,
        ignore,
        feature_names: data.feature_names.clone(),
        state: FitState::default(),
        optimizer_state: None,
        history: Vec::new(),
        out,
    };
    Ok((run, data))
}

fn resumed_run(a: &TrainArgs, from: &Path, epochs: usize) -> Result<(Run, Dataset)> {
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
        )
        .into());
    }
    let mut settings = ck.settings;
    settings.epochs = epochs;
    if let Some(data) = &a.data {
        settings.data = data.clone();
    }
    let out = a.out.clone().unwrap_or_else(|| from.to_path_buf());
    check_out_path("--out", &out)?;
    let data = load_csv(&settings.data, &model.ignore)?;
    if data.cols != model.spec.input_width() {
        return Err(Error::file(
            &settings.data,
            format!(
                "has {} feature columns, but the model resumed takes {}",
                data.cols,
                model.spec.input_width()
            ),
        )
        .into());
    }
    let run = Run {
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
    };
    Ok((run, data))
}

/// Splits off the validation rows: a seeded choice of `fraction` of the rows; both parts keep file order.
fn split_validation(
    data: &Dataset,
    fraction: Option<f64>,
    seed: u64,
) -> Result<(Vec<f32>, usize, Vec<f32>, usize)> {
    let cols = data.cols;
    let Some(f) = fraction else {
        return Ok((data.values.clone(), data.rows, Vec::new(), 0));
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
        )
        .into());
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
    Ok((train, data.rows - n_val, val, n_val))
}

/// Set by Ctrl-C: training stops after the step in flight, saves and says how to resume.
static STOP: AtomicBool = AtomicBool::new(false);

fn train(a: TrainArgs) -> Result<()> {
    let epochs = positive("--epochs", a.epochs)?;
    let (run, mut data) = match &a.resume {
        Some(from) => resumed_run(&a, from, epochs)?,
        None => fresh_run(&a, epochs)?,
    };
    let Run {
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
    } = run;
    normalization.apply(&mut data);
    let optimizer = settings.optimizer()?;
    let (train_values, train_rows, val_values, val_rows) =
        split_validation(&data, settings.val_split, settings.seed)?;
    let device = app::resolve_device(a.device)?;
    let cfg = TrainConfig {
        batch_size: settings.batch_size,
        epochs,
        optimizer,
        shuffle: settings.shuffle,
        seed: settings.seed,
        constraints: settings.constraints(),
    };
    let mut metrics = match &a.metrics {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(a.resume.is_some())
                .write(true)
                .truncate(a.resume.is_none())
                .open(path)
                .map_err(|e| Error::io(path, e))?,
        ),
        None => None,
    };
    // First Ctrl-C: stop after the step in flight and save. A second one: leave at once.
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    let rows_note = if val_rows > 0 {
        format!("{train_rows} rows (+{val_rows} for validation)")
    } else {
        format!("{train_rows} rows")
    };
    let progress = Progress::new((epochs - state.epochs_done) as u64);
    let start_state = state.clone();
    let device_name = std::cell::RefCell::new(String::new());
    let save = |net_params: Vec<f32>,
                opt: OptimizerState,
                st: &FitState,
                history: &[(usize, f64, Option<f64>)],
                device: &str|
     -> Result<(), Error> {
        let mut training = BTreeMap::new();
        training.insert("optimizer".into(), optimizer.describe());
        training.insert("epochs".into(), st.epochs_done.to_string());
        training.insert("batch_size".into(), settings.batch_size.to_string());
        if let Some(&(_, loss, val)) = history.last() {
            training.insert("final_loss".into(), format!("{loss}"));
            if let Some(v) = val {
                training.insert("final_val_loss".into(), format!("{v}"));
            }
        }
        training.insert("device".into(), device.to_string());
        training.insert("data".into(), settings.data.display().to_string());
        training.insert("rows".into(), data.rows.to_string());
        let model = ModelFile {
            spec: spec.clone(),
            params: net_params,
            normalization: normalization.clone(),
            feature_names: feature_names.clone(),
            ignore: ignore.clone(),
            training,
            checkpoint: Some(Checkpoint {
                settings: settings.clone(),
                state: st.clone(),
                optimizer_state: opt,
                history: history.to_vec(),
            }),
        };
        io::save_model(&out, &model)
    };
    let outcome = with_backend!(device, |backend| {
        *device_name.borrow_mut() = backend.name();
        progress.start(&format!(
            "training {} on {rows_note} × {} features, {}, {}{}",
            spec.widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("→"),
            data.cols,
            optimizer.describe(),
            backend.name(),
            if start_state.epochs_done > 0 || start_state.step_in_epoch > 0 {
                format!(
                    ", resuming after epoch {} step {}",
                    start_state.epochs_done, start_state.step_in_epoch
                )
            } else {
                String::new()
            }
        ));
        let mut net = Network::new(
            backend,
            &spec,
            &params,
            settings.batch_size,
            Some(optimizer),
        )?;
        if let Some(opt) = &optimizer_state {
            net.restore_optimizer_state(opt)?;
        }
        let graphs = a.cuda_graphs && net.set_graphs(true);
        let placed = net.set_data(
            DataSet::Train,
            &train_values,
            train_rows,
            DataOptions::new(settings.data_dtype, a.data_on),
        )?;
        if val_rows > 0 {
            net.set_data(
                DataSet::Validation,
                &val_values,
                val_rows,
                DataOptions::new(settings.data_dtype, a.data_on),
            )?;
        }
        if placed == Placement::Host && net.backend.free_memory().is_some() {
            progress.start(&format!(
                "the data set stays in host memory{}: each batch is gathered there and copied to the GPU",
                if a.data_on == Placement::Auto {
                    " (it does not fit in the GPU's free memory)"
                } else {
                    ""
                }
            ));
        }
        if graphs {
            progress.start(&if placed == Placement::Host {
                "CUDA graphs: not used, since each step copies its batch from the host".to_string()
            } else {
                format!("CUDA graphs: each run of {GRAPH_STEPS} steps recorded once, then replayed")
            });
        }
        let opts = FitOptions {
            state: start_state.clone(),
            patience: settings.patience,
            stop: Stop {
                flag: Some(&STOP),
                at_step: None,
            },
        };
        let outcome = net.fit_with(&cfg, opts, |r, st, net| {
            progress.epoch(r, epochs);
            history.push((r.epoch, r.loss, r.val_loss));
            if let Some(file) = metrics.as_mut() {
                let line = serde_json::json!({
                    "epoch": r.epoch,
                    "loss": r.loss,
                    "val_loss": r.val_loss,
                    "seconds": r.seconds,
                    "samples_per_s": r.samples as f64 / r.seconds.max(1e-9),
                });
                writeln!(file, "{line}")
                    .map_err(|e| Error::io(a.metrics.as_deref().unwrap_or(Path::new("-")), e))?;
            }
            // A checkpoint after every epoch: weights, optimizer state and where the run stands.
            let params = net.read_params()?;
            let opt = net.optimizer_state()?;
            save(params, opt, st, &history, &device_name.borrow())
        });
        if let Some(first) = net.graph_failures().first() {
            progress.start(&format!(
                "note: {} CUDA graph recordings failed and their steps ran kernel by kernel; the first: {first}",
                net.graph_failures().len()
            ));
        }
        match outcome {
            Ok(o) => {
                // The final save: after early stopping or --patience the best weights are in `net` now.
                let params = net.read_params()?;
                let opt = net.optimizer_state()?;
                save(params, opt, &o.state, &history, &device_name.borrow())?;
                Ok(o)
            }
            Err(e) => Err(e),
        }
    });
    progress.finish();
    let plot = |history: &[(usize, f64, Option<f64>)]| -> Result<()> {
        if let Some(p) = &a.plot {
            tiedae::plot::plot_losses(p, history)?;
        }
        Ok(())
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            if matches!(e, Error::Diverged(_)) {
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
                return Err(anyhow::anyhow!("{e}; {kept}"));
            }
            return Err(e.into());
        }
    };
    plot(&history)?;
    let last = history.last().map(|h| h.1).unwrap_or(f64::NAN);
    match outcome.end {
        FitEnd::Completed => println!("final loss {last:.6}; model written to {}", out.display()),
        FitEnd::EarlyStopped { best_epoch, best_loss } => println!(
            "early stop after epoch {}: no improvement for {} epoch(s); kept epoch {best_epoch} (loss {best_loss:.6}); model written to {}",
            outcome.state.epochs_done,
            settings.patience.unwrap_or(0),
            out.display()
        ),
        FitEnd::Interrupted => {
            let st = &outcome.state;
            anyhow::bail!(
                "interrupted in epoch {} after step {}; saved to {}; resume with: tiedae train --resume {} --epochs {epochs}",
                st.epochs_done + 1,
                st.step_in_epoch,
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// A progress bar on a terminal; plain per-epoch lines otherwise (logs, CI, pipes).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(epochs: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(epochs);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} epoch {pos}/{len}  {msg}  [{elapsed} < {eta}]",
                )
                .expect("valid template"),
            );
            bar
        });
        Progress { bar }
    }
    fn start(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.println(what),
            None => println!("{what}"),
        }
    }
    fn epoch(&self, r: &tiedae::train::EpochReport, epochs: usize) {
        let rate = r.samples as f64 / r.seconds.max(1e-9);
        match &self.bar {
            Some(bar) => {
                let val = r
                    .val_loss
                    .map(|v| format!("  val_loss {v:.6}"))
                    .unwrap_or_default();
                bar.set_message(format!("loss {:.6}{val}  {:.0} samples/s", r.loss, rate));
                bar.inc(1);
            }
            None => {
                let val = r
                    .val_loss
                    .map(|v| format!("  val_loss {v:.6}"))
                    .unwrap_or_default();
                println!(
                    "epoch {}/{epochs}  loss {:.6}{val}  {:.3} s  {:.0} samples/s",
                    r.epoch, r.loss, r.seconds, rate
                );
                let _ = std::io::stdout().flush();
            }
        }
    }
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    let (_, data, result) = run_model(&a.model, &a.data, a.device, false, false)?;
    if a.json {
        let obj = serde_json::json!({
            "mse": result.mse,
            "samples": data.rows,
            "features": data.cols,
            "model": a.model.display().to_string(),
            "data": a.data.display().to_string(),
            "device": result.device,
        });
        println!("{obj}");
    } else {
        println!(
            "mse {:.6} over {} samples × {} features ({})",
            result.mse, data.rows, data.cols, result.device
        );
    }
    Ok(())
}

/// Loads a model and a data set for it, and runs the model forward over every row on `device`.
fn run_model(
    model: &Path,
    data: &Path,
    device: DeviceChoice,
    want_codes: bool,
    want_recon: bool,
) -> Result<(ModelFile, Dataset, app::Evaluation)> {
    let model = io::load_model(model)?;
    let data = app::load_for_model(data, &model)?;
    let device = app::resolve_device(device)?;
    let result = with_backend!(device, |backend| app::evaluate(
        backend, &model, &data, want_codes, want_recon
    )?);
    Ok((model, data, result))
}

fn encode(a: EncodeArgs) -> Result<()> {
    check_out_path("--out", &a.out)?;
    let (model, data, result) = run_model(&a.model, &a.data, a.device, true, false)?;
    let k = model.spec.code_width();
    let n_ignored = data.ignored_names.len();
    io::write_atomic(&a.out, |w| {
        let mut csv = csv::Writer::from_writer(w);
        let bad = |e: csv::Error| Error::file(&a.out, e.to_string());
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
        csv.flush().map_err(|e| Error::io(&a.out, e))
    })?;
    println!(
        "{} codes of width {k} written to {}",
        data.rows,
        a.out.display()
    );
    Ok(())
}

fn reconstruct(a: ReconstructArgs) -> Result<()> {
    check_out_path("--out", &a.out)?;
    let (model, data, result) = run_model(&a.model, &a.data, a.device, false, true)?;
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
    if a.per_row_error {
        rows.sort_by(|&i, &j| errors[j].total_cmp(&errors[i]));
    }
    let n_ignored = data.ignored_names.len();
    io::write_atomic(&a.out, |w| {
        let mut csv = csv::Writer::from_writer(w);
        let bad = |e: csv::Error| Error::file(&a.out, e.to_string());
        let mut header: Vec<String> = data.ignored_names.clone();
        if a.per_row_error {
            header.extend(["row".to_string(), "error".to_string()]);
        }
        header.extend(model.feature_names.iter().cloned());
        csv.write_record(&header).map_err(bad)?;
        let mut values = vec![0.0f32; d];
        let mut record: Vec<String> = Vec::with_capacity(header.len());
        for &r in &rows {
            record.clear();
            record.extend_from_slice(&data.ignored_values[r * n_ignored..(r + 1) * n_ignored]);
            if a.per_row_error {
                record.push(r.to_string());
                record.push(errors[r].to_string());
            }
            values.copy_from_slice(&result.reconstructions[r * d..(r + 1) * d]);
            model.normalization.invert_row(&mut values);
            record.extend(values.iter().map(|v| v.to_string()));
            csv.write_record(&record).map_err(bad)?;
        }
        csv.flush().map_err(|e| Error::io(&a.out, e))
    })?;
    let mse = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
    println!(
        "{} reconstructions written to {} (mse {mse:.6}{})",
        data.rows,
        a.out.display(),
        if a.per_row_error {
            ", rows ranked by error, worst first"
        } else {
            ""
        }
    );
    Ok(())
}

fn summary(path: &Path) -> Result<()> {
    let model = io::load_model(path)?;
    let spec = &model.spec;
    let depth = spec.depth();
    println!("Model: tied autoencoder ({})", path.display());
    let rule = "─".repeat(86);
    let row = |cells: [String; 5]| {
        println!(
            "{:<26}{:<16}{:<12}{:<10}{}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        )
    };
    println!("{rule}");
    row([
        "Layer (type)",
        "Output Shape",
        "Activation",
        "Param #",
        "Kernel",
    ]
    .map(String::from));
    println!("{rule}");
    for i in 0..depth {
        let (din, dout) = (spec.widths[i], spec.widths[i + 1]);
        row([
            format!("encoder.{i} (Dense)"),
            format!("(None, {dout})"),
            spec.encoder_activation(i).to_string(),
            (din * dout + dout).to_string(),
            format!("encoder.{i}.kernel ({din}×{dout})"),
        ]);
    }
    for i in (0..depth).rev() {
        let (din, dout) = (spec.widths[i], spec.widths[i + 1]);
        row([
            format!("decoder.{i} (DenseTied)"),
            format!("(None, {din})"),
            spec.decoder_activation(i).to_string(),
            din.to_string(),
            format!("encoder.{i}.kernel, transposed ({dout}×{din}): tied, not counted again"),
        ]);
    }
    println!("{rule}");
    let kernels: usize = spec.widths.windows(2).map(|w| w[0] * w[1]).sum();
    println!(
        "Total params: {} ({} in {} tied kernel(s), {} in biases)",
        spec.param_count(),
        kernels,
        depth,
        spec.param_count() - kernels
    );
    println!(
        "Input: {} features, normalization {}",
        spec.input_width(),
        model.normalization.kind.as_str()
    );
    for (k, v) in &model.training {
        println!("  {k}: {v}");
    }
    Ok(())
}

fn demo(choice: DeviceChoice, seed: u64) -> Result<()> {
    use rand::{RngExt, SeedableRng};
    let device = app::resolve_device(choice)?;
    let (rows, cols) = (16, 51);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..rows * cols).map(|_| rng.random::<f32>()).collect();
    let spec = ModelSpec::new(
        vec![cols, 1],
        Activation::Linear,
        Activation::Linear,
        Activation::Linear,
    )?;
    let params = spec.glorot_init(seed);
    let kernel_at = spec.slots()[0].kernel.start;
    let optimizer = Optimizer::Sgd {
        lr: 0.01,
        momentum: 0.0,
    };
    println!("51 features → 1 linear unit, 16 random samples, SGD lr 0.01, batch 16, one epoch");
    // The encoder's kernel W is (51×1): its row 0 is [W[0,0]], read from the parameters. The decoder's kernel
    // is read back THROUGH THE DECODER: decode(code 1) − decode(code 0) = 1·Wᵀ + c − c = Wᵀ (1×51), whose
    // [0][0] comes from the decoder's own GEMM reading the shared buffer transposed.
    let (before, after) = with_backend!(device, |backend| {
        println!("device: {}", backend.name());
        let mut net = Network::new(backend, &spec, &params, rows, Some(optimizer))?;
        net.set_data(DataSet::Train, &values, rows, DataOptions::default())?;
        let look = |net: &mut Network<_>| -> Result<(f32, f32)> {
            let encoder = net.read_params()?[kernel_at];
            let g = net.decode_codes(&[1.0, 0.0])?;
            Ok((encoder, g[0] - g[cols]))
        };
        let before = look(&mut net)?;
        let loss = net.train_epoch(&(0..rows as u32).collect::<Vec<_>>(), rows)?;
        println!("loss during the epoch: {loss:.6}");
        (before, look(&mut net)?)
    });
    let show = |label: &str, (enc, dec): (f32, f32)| {
        println!("{label}: encoder kernel[0] = [{enc:+.8}]   decoder kernel[0][0] = {dec:+.8}");
    };
    show("before", before);
    show("after ", after);
    println!(
        "tied: the decoder's kernel is the encoder's, so both moved by {:+.3e} together.",
        after.0 - before.0
    );
    println!(
        "A DenseTied layer that copies transpose(kernel) in build() would still show {:+.8} for the decoder: frozen.",
        before.1
    );
    anyhow::ensure!(
        after.0 != before.0,
        "the kernel did not move: training did nothing"
    );
    anyhow::ensure!(
        (after.1 - after.0).abs() <= 1e-6 * after.0.abs().max(1.0),
        "the decoder's kernel ({}) is not the encoder's ({})",
        after.1,
        after.0
    );
    Ok(())
}

fn info() -> Result<()> {
    println!("tiedae {}", env!("CARGO_PKG_VERSION"));
    println!(
        "built with GPU kernels: {} (PTX {}, {})",
        if cuda::is_built_with_kernels() {
            "yes"
        } else {
            "no"
        },
        cuda::ptx_arch(),
        cuda::nvcc_version()
    );
    println!("cpu: {}", CpuBackend::<f32>::new().name());
    match cuda::list_devices() {
        Ok(devices) if devices.is_empty() => println!("cuda: no device"),
        Ok(devices) => {
            for d in devices {
                // What `--device cuda:N` would say, checked the same way (kernels, driver, architecture).
                let usable = match cuda::check_device(d.ordinal) {
                    Ok(_) => "usable".to_string(),
                    Err(e) => format!("not usable: {e}"),
                };
                println!(
                    "cuda:{} {} (compute {}.{}, {:.1} GiB, driver for CUDA {}): {usable}",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.total_memory_bytes as f64 / (1u64 << 30) as f64,
                    d.driver_version
                );
            }
        }
        Err(e) => println!("cuda: unavailable ({e})"),
    }
    Ok(())
}
