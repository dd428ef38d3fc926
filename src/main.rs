//! The `tiedae` command line: flags in, library calls, output out.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use tiedae::activation::Activation;
use tiedae::app::{self, DeviceChoice};
use tiedae::backend::{cuda, Backend, CpuBackend};
use tiedae::data::{load_csv, Normalization, NormalizeKind};
use tiedae::error::Error;
use tiedae::io::{self, ModelFile};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{Network, TrainConfig};
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
    Train(TrainArgs),
    /// Reconstruction MSE of a model on a CSV file.
    Eval(EvalArgs),
    /// Write the codes (the encoder's output) of every row to a CSV file.
    Encode(EncodeArgs),
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
}

#[derive(Args)]
struct TrainArgs {
    /// Training data: CSV, header detected.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the model (safetensors); written only when training succeeds.
    #[arg(long)]
    out: PathBuf,
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
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    epochs: i64,
    /// Seed for the initial weights and the shuffling: runs are reproducible.
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
    /// cpu|cuda|auto.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
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
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Encode(args) => encode(args),
        Command::Summary { model } => summary(&model),
        Command::Demo { device, seed } => demo(device, seed),
        Command::Info => info(),
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

fn train(a: TrainArgs) -> Result<()> {
    let batch_size = positive("--batch-size", a.batch_size)?;
    let epochs = positive("--epochs", a.epochs)?;
    let optimizer = Optimizer::from_flags(&a.optimizer, a.lr, a.momentum)?;
    let code_widths = parse_layers(&a.layers)?;
    check_out_path("--out", &a.out)?;
    let ignore = app::ignore_list(a.ignore_columns.as_deref());
    let mut data = load_csv(&a.data, &ignore)?;
    let normalization = Normalization::fit(a.normalize, &data);
    normalization.apply(&mut data);
    let mut widths = vec![data.cols];
    widths.extend(code_widths);
    let spec = ModelSpec::new(widths, a.activation, a.code_activation, a.output_activation)?;
    let params = match &a.init {
        Some(path) => io::load_weights(path, &spec)?,
        None => spec.glorot_init(a.seed),
    };
    let device = app::resolve_device(a.device)?;
    let cfg = TrainConfig {
        batch_size,
        epochs,
        optimizer,
        shuffle: !a.no_shuffle,
        constraints: Default::default(),
        seed: a.seed,
    };
    let progress = Progress::new(epochs as u64);
    let (trained, reports, device_name) = with_backend!(device, |backend| {
        progress.start(&format!(
            "training {} on {} rows × {} features, {}, {}",
            spec.widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("→"),
            data.rows,
            data.cols,
            optimizer.describe(),
            backend.name()
        ));
        app::fit(backend, &spec, &params, &data, &cfg, |r| {
            progress.epoch(r, epochs);
            Ok(())
        })?
    });
    progress.finish();
    let last = reports.last().map(|r| r.loss).unwrap_or(f64::NAN);
    let mut training = BTreeMap::new();
    training.insert("optimizer".into(), optimizer.describe());
    training.insert("epochs".into(), epochs.to_string());
    training.insert("batch_size".into(), batch_size.to_string());
    training.insert("final_loss".into(), format!("{last}"));
    training.insert("device".into(), device_name);
    training.insert("data".into(), a.data.display().to_string());
    training.insert("rows".into(), data.rows.to_string());
    let model = ModelFile {
        spec,
        params: trained,
        normalization,
        feature_names: data.feature_names.clone(),
        ignore,
        training,
    };
    io::save_model(&a.out, &model)?;
    println!("final loss {last:.6}; model written to {}", a.out.display());
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
                bar.set_message(format!("loss {:.6}  {:.0} samples/s", r.loss, rate));
                bar.inc(1);
            }
            None => {
                println!(
                    "epoch {}/{epochs}  loss {:.6}  {:.3} s  {:.0} samples/s",
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
    let model = io::load_model(&a.model)?;
    let data = app::load_for_model(&a.data, &model)?;
    let device = app::resolve_device(a.device)?;
    let result = with_backend!(device, |backend| app::evaluate(
        backend, &model, &data, false, false
    )?);
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

fn encode(a: EncodeArgs) -> Result<()> {
    check_out_path("--out", &a.out)?;
    let model = io::load_model(&a.model)?;
    let data = app::load_for_model(&a.data, &model)?;
    let device = app::resolve_device(a.device)?;
    let result = with_backend!(device, |backend| app::evaluate(
        backend, &model, &data, true, false
    )?);
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
    let slots = &spec.slots()[0];
    let optimizer = Optimizer::Sgd {
        lr: 0.01,
        momentum: 0.0,
    };
    let show = |label: &str, p: &[f32]| {
        let w = &p[slots.kernel.clone()];
        // encoder kernel is W (51×1): row 0 is [W[0,0]]. The decoder's kernel is Wᵀ (1×51), read from the same
        // buffer: its [0][0] is W[0,0] as well. There is nothing else to read it from.
        println!(
            "{label}: encoder kernel[0] = [{:+.8}]   decoder kernel[0][0] = {:+.8}",
            w[0], w[0]
        );
    };
    println!("51 features → 1 linear unit, 16 random samples, SGD lr 0.01, batch 16, one epoch");
    show("before", &params);
    let trained = with_backend!(device, |backend| {
        println!("device: {}", backend.name());
        let mut net = Network::new(backend, &spec, &params, rows, Some(optimizer))?;
        net.set_data(&values, rows)?;
        let loss = net.train_epoch(&(0..rows as u32).collect::<Vec<_>>(), rows)?;
        println!("loss during the epoch: {loss:.6}");
        net.read_params()?
    });
    show("after ", &trained);
    let before = params[slots.kernel.start];
    let after = trained[slots.kernel.start];
    println!(
        "tied: the decoder's kernel is the encoder's, so both moved by {:+.3e} together.",
        after - before
    );
    println!(
        "A DenseTied layer that copies transpose(kernel) in build() would still show {:+.8} for the decoder: frozen.",
        before
    );
    anyhow::ensure!(
        after != before,
        "the kernel did not move: training did nothing"
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
                println!(
                    "cuda:{} {} (compute {}.{}, {:.1} GiB, driver {})",
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
