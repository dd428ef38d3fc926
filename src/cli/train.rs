//! `tiedae train`: its flags turned into a [`TrainRequest`], and the run's progress and end printed.

use super::{parse_layers, positive};
use anyhow::{Context, Result};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use tiedae::activation::Activation;
use tiedae::data::{parse_selectors, NormalizeKind};
use tiedae::optim::Optimizer;
use tiedae::train::{Constraints, DataType, EpochReport, FitEnd, Noise, Placement, GRAPH_STEPS};
use tiedae::workflow::train::{
    train as train_run, GivenSettings, NewRun, Notice, ResumeRun, RunSource, TrainObserver,
    TrainPlan, TrainRequest,
};
use tiedae::workflow::DeviceChoice;

#[derive(Args)]
pub struct TrainArgs {
    /// Training data: CSV, header detected. With --resume, defaults to the checkpoint's data file.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Where to write the model (safetensors): after every epoch and at the end, atomically. With --resume,
    /// defaults to the file resumed from.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue a run from the model file it wrote, to --epochs epochs in all; its settings (model,
    /// optimizer, batch size, seed, validation split, constraints) come from the file, and one given again
    /// with another value is an error. The data must be the data set the run started on (checked).
    #[arg(long, conflicts_with = "init")]
    resume: Option<PathBuf>,
    /// With --resume: continue on a data set other than the one the run started on (same columns).
    #[arg(long, requires = "resume")]
    resume_with_other_data: bool,
    /// Widths of the encoder's layers after the input, the last being the code size (default 32,8).
    #[arg(long)]
    layers: Option<String>,
    /// Activation of every hidden layer (encoder and decoder): linear|relu|tanh|sigmoid (default relu).
    #[arg(long)]
    activation: Option<Activation>,
    /// Activation of the encoder's last layer, the code (default linear).
    #[arg(long)]
    code_activation: Option<Activation>,
    /// Activation of the decoder's last layer, the reconstruction (default linear).
    #[arg(long)]
    output_activation: Option<Activation>,
    /// sgd|adam (default adam).
    #[arg(long)]
    optimizer: Option<String>,
    /// Learning rate (default 0.01 for sgd, 0.001 for adam, as in Keras).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// SGD momentum: v = momentum·v − lr·g; w += v (default 0).
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    /// Rows per step (default 32).
    #[arg(long, allow_negative_numbers = true)]
    batch_size: Option<i64>,
    /// Epochs in all (with --resume: including those already done).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    epochs: i64,
    /// Seed for the initial weights, the validation split and the shuffling: runs are reproducible
    /// (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// Batches in file order (no shuffling).
    #[arg(long)]
    no_shuffle: bool,
    /// Start from the weights in this safetensors file (names and shapes must fit the model).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Columns to leave out, by name or 0-based index: e.g. Id,Cover_Type.
    #[arg(long)]
    ignore_columns: Option<String>,
    /// none|standard|minmax; the statistics are stored in the model and applied again by eval and encode
    /// (default none).
    #[arg(long)]
    normalize: Option<NormalizeKind>,
    /// Hold out this fraction of the rows (seeded) and report the validation loss every epoch.
    #[arg(long, allow_negative_numbers = true)]
    val_split: Option<f64>,
    /// Stop when the validation loss (or the training loss, without --val-split) has not improved for N
    /// epochs, and keep the best epoch's weights.
    #[arg(long, allow_negative_numbers = true)]
    patience: Option<i64>,
    /// Add λ·‖WᵀW − I‖_F per kernel (orthogonal kernel columns, as PCA's; default 0).
    #[arg(long, allow_negative_numbers = true)]
    orthogonality: Option<f32>,
    /// Add λ·Σ_{i≠j} Cov(codes)_ij² over each batch (uncorrelated codes, as PCA's; default 0).
    #[arg(long, allow_negative_numbers = true)]
    uncorrelated: Option<f32>,
    /// Project every kernel column to norm 1 after each step.
    #[arg(long)]
    unit_norm: bool,
    /// A denoising autoencoder: corrupt each training batch's inputs (the loss compares with the clean rows)
    /// with swap:P (a cell takes the same column's value from another random row, with probability P),
    /// mask:P (a cell becomes 0, in normalized units) or gaussian:SIGMA (added to every cell); repeat the
    /// flag to combine them, applied as swap, then mask, then gaussian.
    #[arg(long, action = clap::ArgAction::Append)]
    noise: Vec<String>,
    /// Append one JSON line per epoch: epoch, loss, val_loss, seconds, samples_per_s.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Keep the data set on the device as f32 (the default), or as f16/bf16 (half the memory; each batch
    /// is converted to f32 as it is gathered).
    #[arg(long)]
    data_dtype: Option<DataType>,
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

/// The request the flags make. The flags of a new run are checked here in the order they always were; the
/// library checks the rest. A resumed run passes on the flags given, which the library checks against the
/// checkpoint.
fn request(a: TrainArgs) -> Result<TrainRequest> {
    let epochs = positive("--epochs", a.epochs)?;
    let batch_size = a
        .batch_size
        .map(|b| positive("--batch-size", b))
        .transpose()?;
    let patience = a.patience.map(|p| positive("--patience", p)).transpose()?;
    let layers = a.layers.as_deref().map(parse_layers).transpose()?;
    let ignore = a.ignore_columns.as_deref().map(parse_selectors);
    let noise = (!a.noise.is_empty())
        .then(|| Noise::from_flags(&a.noise))
        .transpose()?;
    let run = match a.resume {
        Some(from) => RunSource::Resume(Box::new(ResumeRun {
            from,
            data: a.data,
            out: a.out,
            given: GivenSettings {
                layers,
                activation: a.activation,
                code_activation: a.code_activation,
                output_activation: a.output_activation,
                optimizer: a.optimizer,
                lr: a.lr,
                momentum: a.momentum,
                batch_size,
                seed: a.seed,
                shuffle: a.no_shuffle.then_some(false),
                ignore,
                normalize: a.normalize,
                val_split: a.val_split,
                patience,
                orthogonality: a.orthogonality,
                uncorrelated: a.uncorrelated,
                unit_norm: a.unit_norm.then_some(true),
                data_dtype: a.data_dtype,
                noise,
            },
            other_data: a.resume_with_other_data,
        })),
        None => {
            let batch_size = batch_size.unwrap_or(32);
            let optimizer = Optimizer::from_flags(
                a.optimizer.as_deref().unwrap_or("adam"),
                a.lr,
                a.momentum.unwrap_or(0.0),
            )?;
            let layers = layers.unwrap_or_else(|| vec![32, 8]);
            RunSource::New(Box::new(NewRun {
                data: a.data.expect("clap requires --data without --resume"),
                out: a.out.expect("clap requires --out without --resume"),
                ignore: ignore.unwrap_or_default(),
                normalize: a.normalize.unwrap_or(NormalizeKind::None),
                layers,
                activation: a.activation.unwrap_or(Activation::Relu),
                code_activation: a.code_activation.unwrap_or(Activation::Linear),
                output_activation: a.output_activation.unwrap_or(Activation::Linear),
                optimizer,
                batch_size,
                seed: a.seed.unwrap_or(42),
                shuffle: !a.no_shuffle,
                init: a.init,
                val_split: a.val_split,
                patience,
                constraints: Constraints {
                    orthogonality: a.orthogonality.unwrap_or(0.0),
                    uncorrelated: a.uncorrelated.unwrap_or(0.0),
                    unit_norm: a.unit_norm,
                },
                data_dtype: a.data_dtype.unwrap_or(DataType::F32),
                noise: noise.unwrap_or_default(),
            }))
        }
    };
    Ok(TrainRequest {
        run,
        epochs,
        device: a.device,
        data_on: a.data_on,
        cuda_graphs: a.cuda_graphs,
        metrics: a.metrics,
        plot: a.plot,
    })
}

/// Set by Ctrl-C: training stops after the step in flight, saves and says how to resume.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(a: TrainArgs) -> Result<()> {
    let request = request(a)?;
    let mut printer = Printer {
        progress: None,
        epochs: request.epochs,
    };
    let outcome = train_run(&request, &STOP, &mut printer)?;
    let out = &outcome.out;
    let last = outcome.history.last().map(|h| h.1).unwrap_or(f64::NAN);
    match outcome.end {
        FitEnd::Completed => println!("final loss {last:.6}; model written to {}", out.display()),
        FitEnd::EarlyStopped { best_epoch, best_loss } => println!(
            "early stop after epoch {}: no improvement for {} epoch(s); kept epoch {best_epoch} (loss {best_loss:.6}); model written to {}",
            outcome.state.epochs_done,
            outcome.patience.unwrap_or(0),
            out.display()
        ),
        FitEnd::Interrupted => {
            let st = &outcome.state;
            anyhow::bail!(
                "interrupted in epoch {} after step {}; saved to {}; resume with: tiedae train --resume {} --epochs {}",
                st.epochs_done + 1,
                st.step_in_epoch,
                out.display(),
                out.display(),
                outcome.epochs
            );
        }
    }
    Ok(())
}

/// Prints a run's progress: a bar on a terminal, plain lines otherwise.
struct Printer {
    progress: Option<Progress>,
    epochs: usize,
}

impl Printer {
    fn say(&self, what: &str) {
        match &self.progress {
            Some(p) => p.start(what),
            None => println!("{what}"),
        }
    }
}

impl TrainObserver for Printer {
    fn prepared(&mut self, plan: &TrainPlan) -> tiedae::Result<()> {
        // First Ctrl-C: stop after the step in flight and save. A second one: leave at once.
        ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        })
        .context("cannot install the Ctrl-C handler")
        .map_err(|e| tiedae::Error::Caller(format!("{e:#}")))?;
        self.progress = Some(Progress::new((plan.epochs - plan.start.epochs_done) as u64));
        Ok(())
    }

    fn started(&mut self, plan: &TrainPlan, backend: &str) {
        let rows_note = if plan.val_rows > 0 {
            format!(
                "{} rows (+{} for validation)",
                plan.train_rows, plan.val_rows
            )
        } else {
            format!("{} rows", plan.train_rows)
        };
        let start = &plan.start;
        let noise = if plan.noise.is_off() {
            String::new()
        } else {
            format!(", denoising ({})", plan.noise)
        };
        self.say(&format!(
            "training {} on {rows_note} × {} features{noise}, {}, {}{}",
            plan.widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("→"),
            plan.features,
            plan.optimizer.describe(),
            backend,
            if start.epochs_done > 0 || start.step_in_epoch > 0 {
                format!(
                    ", resuming after epoch {} step {}",
                    start.epochs_done, start.step_in_epoch
                )
            } else {
                String::new()
            }
        ));
    }

    fn notice(&mut self, notice: &Notice) {
        let text = match notice {
            Notice::DataOnHost { auto } => format!(
                "the data set stays in host memory{}: each batch is gathered there and copied to the GPU",
                if *auto {
                    " (it does not fit in the GPU's free memory)"
                } else {
                    ""
                }
            ),
            Notice::Graphs { used: false } => {
                "CUDA graphs: not used, since each step copies its batch from the host".to_string()
            }
            Notice::Graphs { used: true } => {
                format!("CUDA graphs: each run of {GRAPH_STEPS} steps recorded once, then replayed")
            }
            Notice::GraphFailures { count, first } => format!(
                "note: {count} CUDA graph recordings failed and their steps ran kernel by kernel; the first: {first}"
            ),
            Notice::NoChecksum { flag, path } => format!(
                "note: {flag} {} has no checksum (weights written elsewhere, or by an older tiedae): it is used as it is, unchecked",
                path.display()
            ),
            Notice::DataUnrecorded { from } => format!(
                "note: {} does not record its data set (written by an older tiedae): the data cannot be checked against it",
                from.display()
            ),
            Notice::OtherData { data, from } => format!(
                "note: {} is not the data set {} started on; continuing on it (--resume-with-other-data)",
                data.display(),
                from.display()
            ),
            Notice::StaleTempsRemoved { count } => format!(
                "note: removed {count} temporary file(s) a killed run left beside the outputs"
            ),
        };
        self.say(&text);
    }

    fn epoch(&mut self, report: &EpochReport) -> tiedae::Result<()> {
        if let Some(p) = &self.progress {
            p.epoch(report, self.epochs);
        }
        Ok(())
    }

    fn finished(&mut self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }
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
    fn epoch(&self, r: &EpochReport, epochs: usize) {
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
