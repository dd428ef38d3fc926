//! `tiedae bench`: training throughput of built-in workloads on synthetic data, per device, and the raw GEMM.
//!
//! A workload trains a tied autoencoder on `rows` rows of uniform [0, 1) data (seeded, so every run and every
//! device sees the same numbers). One warm-up epoch runs first (it also pays for first-use costs: thread pools,
//! GPU module loading, page faults); then whole epochs are timed, one clock reading per epoch, until at least
//! `--min-seconds` have passed and at least `--min-epochs` epochs were timed. Each epoch gets a new row order,
//! as in `tiedae train` (on a GPU a kernel writes it), and its time includes that. Each epoch ends with the download
//! of its per-step losses, which waits for the device, so the clock never stops before the work does. The
//! numbers reported are those of the MEDIAN epoch.
//!
//! FLOPs per sample: a forward pass of layer i costs 2·d_i·d_{i+1} in the encoder and the same in the decoder;
//! a training step is counted, by the usual convention, as 3× the forward pass (forward, then two GEMMs per
//! forward GEMM backward), i.e. `12·Σ d_i·d_{i+1}` per sample. The element-wise work is not counted. (The
//! encoder's first layer needs no input gradient, so the true GEMM count is a little lower: the GFLOP/s shown
//! are slightly generous, the same way for every device and for the reference scripts in `bench/`.)
//!
//! `--gemm N` times `C = A·B` at N×N×N through the backend's GEMM instead (the figure compared with numpy's
//! sgemm and cuBLAS); its FLOP count is 2·N³.

use crate::activation::Activation;
use crate::app::{self, Device};
use crate::backend::{Backend, Gemm, Region, Trans};
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{DataOptions, DataSet, DataType, Network, Placement, Stop};
use rand::{RngExt, SeedableRng};
use std::time::Instant;

/// `tiedae bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// seed|digits|mnist|all. seed: 51→1 linear, SGD, batch 16, 4096 rows; digits: 64→32→8 tanh, Adam,
    /// batch 256, 50 000 rows; mnist: 784→256→64 tanh, Adam, batch 256, 60 000 rows.
    #[arg(long, default_value = "all")]
    pub workload: String,
    /// cpu|cuda|all; all (the default) is every device this machine has.
    #[arg(long, default_value = "all")]
    pub device: String,
    /// A custom workload instead: every width, the input first (e.g. 784,256,64); tanh hidden layers, linear
    /// code and output, Adam (lr 0.001).
    #[arg(long)]
    pub layers: Option<String>,
    /// Batch size (overrides the workload's).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Rows of synthetic data (overrides the workload's).
    #[arg(long)]
    pub rows: Option<usize>,
    /// Time epochs until at least this many seconds have passed…
    #[arg(long, default_value_t = 1.0)]
    pub min_seconds: f64,
    /// …and at least this many epochs were timed.
    #[arg(long, default_value_t = 3)]
    pub min_epochs: usize,
    /// Time the backend's GEMM instead of training: comma-separated N (N×N×N) or `MxNxK[:NT]` (op(A), op(B):
    /// N as stored, T transposed), e.g. 1024,256x256x784:NN.
    #[arg(long)]
    pub gemm: Option<String>,
    /// Time only the GEMMs of one training step of each workload (the same products, in the same order,
    /// back to back): the samples/s no implementation of the step with this GEMM can pass, to tell how much
    /// of a step is GEMM and whether a goal is within reach at all. Reported as workload `<name>-gemms`.
    #[arg(long)]
    pub step_gemms: bool,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where the synthetic data set lives: `device` (the default), or `host` (each batch copied up while
    /// the step before it runs, as `train --data-on host` does for a set larger than the GPU).
    #[arg(long, default_value = "device")]
    pub data_on: Placement,
}

/// One training workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    /// d_0 … d_L.
    pub widths: Vec<usize>,
    pub activation: Activation,
    pub optimizer: Optimizer,
    pub batch_size: usize,
    pub rows: usize,
}

impl Workload {
    /// The built-in workloads, in order.
    pub fn builtin() -> Vec<Workload> {
        let adam = Optimizer::from_flags("adam", None, 0.0).expect("adam");
        vec![
            Workload {
                name: "seed".into(),
                widths: vec![51, 1],
                activation: Activation::Linear,
                optimizer: Optimizer::Sgd {
                    lr: 0.01,
                    momentum: 0.0,
                },
                batch_size: 16,
                rows: 4096,
            },
            Workload {
                name: "digits".into(),
                widths: vec![64, 32, 8],
                activation: Activation::Tanh,
                optimizer: adam,
                batch_size: 256,
                rows: 50_000,
            },
            Workload {
                name: "mnist".into(),
                widths: vec![784, 256, 64],
                activation: Activation::Tanh,
                optimizer: adam,
                batch_size: 256,
                rows: 60_000,
            },
        ]
    }

    /// FLOPs of one training step per sample: 3 × (encoder + decoder GEMMs of the forward pass).
    pub fn flops_per_sample(&self) -> f64 {
        12.0 * self
            .widths
            .windows(2)
            .map(|w| (w[0] * w[1]) as f64)
            .sum::<f64>()
    }

    /// The GEMMs of one training step, in the order the step runs them: recorded from the step itself
    /// ([`crate::train::step_products`]).
    pub fn step_gemms(&self) -> Result<Vec<Gemm>> {
        crate::train::step_products(&self.spec()?, self.batch_size, self.optimizer)
    }

    pub fn spec(&self) -> Result<ModelSpec> {
        ModelSpec::new(
            self.widths.clone(),
            self.activation,
            Activation::Linear,
            Activation::Linear,
        )
    }

    fn shape(&self) -> String {
        self.widths
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join("→")
    }
}

/// What one workload measured on one device.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub workload: Workload,
    /// "cpu" or "cuda".
    pub device: &'static str,
    /// The backend's own name ("cpu (2 GEMM threads, f32)", "cuda:0 …").
    pub device_name: String,
    /// Seconds of every timed epoch, in order.
    pub epoch_seconds: Vec<f64>,
    /// The mean loss of the last timed epoch (a sanity check: it must be finite and falling).
    pub final_loss: f64,
    /// With CUDA graphs: why recordings failed (their steps then ran kernel by kernel); empty otherwise.
    pub graph_failures: Vec<String>,
}

impl Measurement {
    pub fn median_epoch_s(&self) -> f64 {
        median(&self.epoch_seconds)
    }
    pub fn samples_per_s(&self) -> f64 {
        self.workload.rows as f64 / self.median_epoch_s()
    }
    pub fn steps_per_epoch(&self) -> usize {
        self.workload.rows.div_ceil(self.workload.batch_size)
    }
    pub fn step_us(&self) -> f64 {
        self.median_epoch_s() / self.steps_per_epoch() as f64 * 1e6
    }
    pub fn gflops(&self) -> f64 {
        self.workload.flops_per_sample() * self.samples_per_s() / 1e9
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Uniform [0, 1) data, (rows, cols), the same for every device and run.
pub fn synthetic_data(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rows * cols).map(|_| rng.random::<f32>()).collect()
}

/// Trains `w` on `backend`: one warm-up epoch (it records the graphs when `graphs` is on), then timed epochs
/// (see the module doc), with the data set kept where `data_on` says.
#[allow(clippy::too_many_arguments)]
pub fn measure_workload<B: Backend>(
    backend: B,
    device: &'static str,
    graphs: bool,
    data_on: Placement,
    w: &Workload,
    min_seconds: f64,
    min_epochs: usize,
) -> Result<Measurement> {
    let mut device_name = backend.name();
    let spec = w.spec()?;
    let params = spec.glorot_init(42);
    let mut net = Network::new(backend, &spec, &params, w.batch_size, Some(w.optimizer))?;
    if graphs {
        if !net.set_graphs(true) {
            return Err(Error::Device(format!("{device_name} cannot record graphs")));
        }
        device_name.push_str(", graphs");
    }
    let data = synthetic_data(w.rows, w.widths[0], 7);
    if net.set_data(
        DataSet::Train,
        &data,
        w.rows,
        DataOptions::new(DataType::F32, data_on),
    )? == Placement::Host
    {
        device_name.push_str(", data on the host");
    }
    drop(data);
    // Each epoch shuffled as `tiedae train` shuffles it (on a GPU, by a kernel), and timed with its shuffle.
    let mut epoch = 0;
    let mut train_epoch = |net: &mut Network<B>| -> Result<f64> {
        epoch += 1;
        net.order_epoch(1, epoch, true)?;
        Ok(net
            .train_steps_in_order(w.batch_size, 0, Stop::default())?
            .loss)
    };
    train_epoch(&mut net)?; // warm-up
    let mut epoch_seconds = Vec::new();
    let mut final_loss = f64::NAN;
    let started = Instant::now();
    while epoch_seconds.len() < min_epochs.max(1) || started.elapsed().as_secs_f64() < min_seconds {
        let t0 = Instant::now();
        final_loss = train_epoch(&mut net)?;
        epoch_seconds.push(t0.elapsed().as_secs_f64());
    }
    Ok(Measurement {
        workload: w.clone(),
        device,
        device_name,
        epoch_seconds,
        final_loss,
        graph_failures: net.graph_failures().to_vec(),
    })
}

/// One GEMM to time: `C = op(A)·op(B)`, op(A) m×k, op(B) k×n, β = 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: Trans,
    pub trans_b: Trans,
}

impl GemmShape {
    /// `N` (N×N×N), or `MxNxK` with an optional `:NT`-style suffix (op(A), op(B): N as stored, T transposed).
    pub fn parse(s: &str) -> Result<GemmShape> {
        let bad = || {
            Error::flag(
                "--gemm",
                format!(
                    "'{s}' is not a size: expected N, MxNxK or MxNxK:NT (N or T for each operand)"
                ),
            )
        };
        let (dims, trans) = match s.trim().split_once(':') {
            Some((d, t)) => (d, t),
            None => (s.trim(), "NN"),
        };
        let dims = dims
            .split('x')
            .map(|d| d.trim().parse::<usize>().ok().filter(|&v| v > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        let (m, n, k) = match dims[..] {
            [n] => (n, n, n),
            [m, n, k] => (m, n, k),
            _ => return Err(bad()),
        };
        let t = |c: char| match c {
            'N' | 'n' => Ok(Trans::N),
            'T' | 't' => Ok(Trans::T),
            _ => Err(bad()),
        };
        let tc: Vec<char> = trans.trim().chars().collect();
        if tc.len() != 2 {
            return Err(bad());
        }
        Ok(GemmShape {
            m,
            n,
            k,
            trans_a: t(tc[0])?,
            trans_b: t(tc[1])?,
        })
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// `gemm-1024` for a square NN product, else `gemm-MxNxK:NT`.
    pub fn label(&self) -> String {
        let (m, n, k) = (self.m, self.n, self.k);
        let t = format!("{:?}{:?}", self.trans_a, self.trans_b);
        if m == n && n == k && t == "NN" {
            format!("gemm-{n}")
        } else {
            format!("gemm-{m}x{n}x{k}:{t}")
        }
    }
}

/// What one GEMM shape measured on one device.
#[derive(Debug, Clone)]
pub struct GemmMeasurement {
    pub shape: GemmShape,
    pub device: &'static str,
    pub device_name: String,
    /// Seconds of every timed call.
    pub call_seconds: Vec<f64>,
}

impl GemmMeasurement {
    pub fn gflops(&self) -> f64 {
        self.shape.flops() / median(&self.call_seconds) / 1e9
    }
}

/// Times `C = op(A)·op(B)` (row-major, β = 0) through `backend.gemm`, synchronizing after every call.
pub fn measure_gemm<B: Backend>(
    mut backend: B,
    device: &'static str,
    shape: GemmShape,
    min_seconds: f64,
    min_calls: usize,
) -> Result<GemmMeasurement> {
    let GemmShape { m, n, k, .. } = shape;
    let a = Region::whole(backend.alloc(m * k)?, m * k);
    let b = Region::whole(backend.alloc(k * n)?, k * n);
    let c = Region::whole(backend.alloc(m * n)?, m * n);
    let host: Vec<B::Scalar> = synthetic_data(m.max(n), k, 3)
        .into_iter()
        .map(<B::Scalar as crate::backend::Real>::from_f32)
        .collect();
    backend.upload(a, &host[..m * k])?;
    backend.upload(b, &host[..k * n])?;
    let g = Gemm {
        trans_a: shape.trans_a,
        trans_b: shape.trans_b,
        m,
        n,
        k,
        alpha: 1.0,
        beta: 0.0,
    };
    backend.gemm(g, a, b, c)?; // warm-up
    backend.synchronize()?;
    let mut call_seconds = Vec::new();
    let started = Instant::now();
    while call_seconds.len() < min_calls.max(1) || started.elapsed().as_secs_f64() < min_seconds {
        let t0 = Instant::now();
        backend.gemm(g, a, b, c)?;
        backend.synchronize()?;
        call_seconds.push(t0.elapsed().as_secs_f64());
    }
    Ok(GemmMeasurement {
        shape,
        device,
        device_name: backend.name(),
        call_seconds,
    })
}

/// Times the GEMMs of one training step of `w` ([`Workload::step_gemms`]) back to back, each on its own
/// buffers of synthetic data, synchronizing once per step; seconds of every timed step.
pub fn measure_step_gemms<B: Backend>(
    mut backend: B,
    w: &Workload,
    min_seconds: f64,
    min_steps: usize,
) -> Result<(String, Vec<f64>)> {
    let gemms = w.step_gemms()?;
    let mut operands = Vec::new();
    for g in &gemms {
        let (m, n, k) = (g.m, g.n, g.k);
        let host: Vec<B::Scalar> = synthetic_data((m * k).max(k * n).max(m * n), 1, 5)
            .into_iter()
            .map(<B::Scalar as crate::backend::Real>::from_f32)
            .collect();
        let a = Region::whole(backend.alloc(m * k)?, m * k);
        let b = Region::whole(backend.alloc(k * n)?, k * n);
        let c = Region::whole(backend.alloc(m * n)?, m * n);
        backend.upload(a, &host[..m * k])?;
        backend.upload(b, &host[..k * n])?;
        backend.upload(c, &host[..m * n])?;
        operands.push((a, b, c));
    }
    let step = |backend: &mut B| -> Result<()> {
        for (g, &(a, b, c)) in gemms.iter().zip(&operands) {
            backend.gemm(*g, a, b, c)?;
        }
        backend.synchronize()
    };
    for _ in 0..3 {
        step(&mut backend)?; // warm-up: thread pools, packing buffers, module loading
    }
    let mut seconds = Vec::new();
    let started = Instant::now();
    while seconds.len() < min_steps.max(1) || started.elapsed().as_secs_f64() < min_seconds {
        let t0 = Instant::now();
        step(&mut backend)?;
        seconds.push(t0.elapsed().as_secs_f64());
    }
    Ok((backend.name(), seconds))
}

/// The CPU model (from /proc/cpuinfo) and the number of cores this process may use.
pub fn machine() -> (String, usize) {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (model, cores)
}

/// Today's date (UTC), YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn parse_list(flag: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|w| match w.trim().parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(Error::flag(
                flag,
                format!("'{}' is not a positive integer", w.trim()),
            )),
        })
        .collect()
}

/// The workloads the flags select.
pub fn selected_workloads(args: &BenchArgs) -> Result<Vec<Workload>> {
    let mut list = match &args.layers {
        Some(layers) => {
            let widths = parse_list("--layers", layers)?;
            if widths.len() < 2 {
                return Err(Error::flag(
                    "--layers",
                    "needs the input width and at least one more, e.g. 784,256,64",
                ));
            }
            vec![Workload {
                name: "custom".into(),
                widths,
                activation: Activation::Tanh,
                optimizer: Optimizer::from_flags("adam", None, 0.0)?,
                batch_size: 256,
                rows: 50_000,
            }]
        }
        None => {
            let all = Workload::builtin();
            match args.workload.trim().to_ascii_lowercase().as_str() {
                "all" => all,
                name => match all.into_iter().find(|w| w.name == name) {
                    Some(w) => vec![w],
                    None => {
                        return Err(Error::flag(
                            "--workload",
                            format!(
                                "unknown workload '{name}' (expected seed, digits, mnist or all)"
                            ),
                        ))
                    }
                },
            }
        }
    };
    for w in &mut list {
        if let Some(b) = args.batch_size {
            if b == 0 {
                return Err(Error::flag("--batch-size", "must be a positive integer"));
            }
            w.batch_size = b;
        }
        if let Some(r) = args.rows {
            if r == 0 {
                return Err(Error::flag("--rows", "must be a positive integer"));
            }
            w.rows = r;
        }
    }
    Ok(list)
}

/// The devices the flags select: `all` is the CPU plus the GPU when one works; `cuda` fails without one.
pub fn selected_devices(choice: &str) -> Result<Vec<Device>> {
    match choice.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(vec![Device::Cpu]),
        "cuda" | "gpu" => {
            app::check_cuda(0)?;
            Ok(vec![Device::Cuda(0)])
        }
        "all" => {
            let mut v = vec![Device::Cpu];
            match app::check_cuda(0) {
                Ok(()) => v.push(Device::Cuda(0)),
                Err(e) => eprintln!("bench: no GPU ({e}); CPU only"),
            }
            Ok(v)
        }
        other => Err(Error::flag(
            "--device",
            format!("unknown device '{other}' (expected cpu, cuda or all)"),
        )),
    }
}

fn device_label(d: Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
    }
}

/// Runs what the flags ask for and prints a table (or JSON lines) to stdout.
pub fn run(args: &BenchArgs) -> Result<()> {
    if !(args.min_seconds >= 0.0 && args.min_seconds.is_finite()) {
        return Err(Error::flag("--min-seconds", "must be a number ≥ 0"));
    }
    let devices = selected_devices(&args.device)?;
    let (cpu_model, cores) = machine();
    let date = today();
    let machine_line = format!("{cpu_model}, {cores} cores");
    if let Some(sizes) = &args.gemm {
        let shapes = sizes
            .split(',')
            .map(GemmShape::parse)
            .collect::<Result<Vec<_>>>()?;
        let mut results = Vec::new();
        for &shape in &shapes {
            for &d in &devices {
                let label = device_label(d);
                let m = crate::with_backend!(d, |backend| measure_gemm(
                    backend,
                    label,
                    shape,
                    args.min_seconds,
                    args.min_epochs
                )?);
                if args.json {
                    let obj = serde_json::json!({
                        "workload": shape.label(),
                        "device": m.device,
                        "device_name": m.device_name,
                        "m": shape.m, "n": shape.n, "k": shape.k,
                        "trans": format!("{:?}{:?}", shape.trans_a, shape.trans_b),
                        "gflops": m.gflops(),
                        "call_us": median(&m.call_seconds) * 1e6,
                        "calls_timed": m.call_seconds.len(),
                        "machine": cpu_model,
                        "cores": cores,
                        "date": date,
                    });
                    println!("{obj}");
                }
                results.push(m);
            }
        }
        if !args.json {
            println!(
                "GEMM C = op(A)·op(B) (f32, row-major), median of timed calls; {machine_line}; {date}"
            );
            println!(
                "{:<24} {:<44} {:>12} {:>10} {:>6}",
                "shape", "device", "ms/call", "GFLOP/s", "calls"
            );
            for m in &results {
                println!(
                    "{:<24} {:<44} {:>12.3} {:>10.1} {:>6}",
                    m.shape.label(),
                    m.device_name,
                    median(&m.call_seconds) * 1e3,
                    m.gflops(),
                    m.call_seconds.len()
                );
            }
        }
        return Ok(());
    }

    let workloads = selected_workloads(args)?;
    if args.step_gemms {
        if !args.json {
            println!("the GEMMs of one training step alone, back to back (median step); {machine_line}; {date}");
            println!(
                "{:<14} {:<44} {:>14} {:>10} {:>9} {:>7}",
                "workload", "device", "samples/s max", "µs/step", "GFLOP/s", "steps"
            );
        }
        for w in &workloads {
            let flops: f64 = w
                .step_gemms()?
                .iter()
                .map(|g| 2.0 * (g.m * g.n * g.k) as f64)
                .sum();
            for &d in &devices {
                let (name, seconds) = crate::with_backend!(d, |backend| measure_step_gemms(
                    backend,
                    w,
                    args.min_seconds,
                    50
                )?);
                let step_s = median(&seconds);
                let label = format!("{}-gemms", w.name);
                if args.json {
                    let obj = serde_json::json!({
                        "workload": label,
                        "device": device_label(d),
                        "device_name": name,
                        "layers": w.widths,
                        "batch_size": w.batch_size,
                        "samples_per_s": w.batch_size as f64 / step_s,
                        "step_us": step_s * 1e6,
                        "gflops": flops / step_s / 1e9,
                        "gemm_flops_per_step": flops,
                        "steps_timed": seconds.len(),
                        "machine": cpu_model,
                        "cores": cores,
                        "date": date,
                    });
                    println!("{obj}");
                } else {
                    println!(
                        "{:<14} {:<44} {:>14.0} {:>10.1} {:>9.1} {:>7}",
                        label,
                        name,
                        w.batch_size as f64 / step_s,
                        step_s * 1e6,
                        flops / step_s / 1e9,
                        seconds.len()
                    );
                }
            }
        }
        return Ok(());
    }
    let mut results: Vec<Measurement> = Vec::new();
    // A GPU runs each workload twice: kernel by kernel ("cuda"), and with its steps recorded as CUDA graphs
    // and replayed ("cuda-graphs").
    let runs: Vec<(Device, &'static str, bool)> = devices
        .iter()
        .flat_map(|&d| match d {
            // (No graphs for a set on the host: each step copies a batch up.)
            Device::Cuda(_) if args.data_on != Placement::Host => {
                vec![(d, "cuda", false), (d, "cuda-graphs", true)]
            }
            _ => vec![(d, device_label(d), false)],
        })
        .collect();
    for w in &workloads {
        for &(d, label, graphs) in &runs {
            let m = crate::with_backend!(d, |backend| measure_workload(
                backend,
                label,
                graphs,
                args.data_on,
                w,
                args.min_seconds,
                args.min_epochs
            )?);
            if args.json {
                let obj = serde_json::json!({
                    "workload": w.name,
                    "device": m.device,
                    "device_name": m.device_name,
                    "layers": w.widths,
                    "batch_size": w.batch_size,
                    "rows": w.rows,
                    "samples_per_s": m.samples_per_s(),
                    "step_us": m.step_us(),
                    "epoch_s": m.median_epoch_s(),
                    "gflops": m.gflops(),
                    "flops_per_sample": w.flops_per_sample(),
                    "epochs_timed": m.epoch_seconds.len(),
                    "final_loss": m.final_loss,
                    "graph_failures": m.graph_failures,
                    "machine": cpu_model,
                    "cores": cores,
                    "date": date,
                });
                println!("{obj}");
            }
            results.push(m);
        }
    }
    if !args.json {
        print_table(&results, &machine_line, &date);
    }
    Ok(())
}

fn print_table(results: &[Measurement], machine_line: &str, date: &str) {
    println!(
        "synthetic uniform [0,1) data; one warm-up epoch, then the median of the timed epochs; {machine_line}; {date}"
    );
    println!(
        "{:<8} {:<12} {:>6} {:>7} {:<44} {:>12} {:>10} {:>9} {:>7}",
        "workload", "shape", "batch", "rows", "device", "samples/s", "µs/step", "GFLOP/s", "epochs"
    );
    for m in results {
        let w = &m.workload;
        println!(
            "{:<8} {:<12} {:>6} {:>7} {:<44} {:>12.0} {:>10.1} {:>9.2} {:>7}",
            w.name,
            w.shape(),
            w.batch_size,
            w.rows,
            m.device_name,
            m.samples_per_s(),
            m.step_us(),
            m.gflops(),
            m.epoch_seconds.len()
        );
    }
    for m in results.iter().filter(|m| m.device.starts_with("cuda")) {
        if let Some(cpu) = results
            .iter()
            .find(|c| c.device == "cpu" && c.workload == m.workload)
        {
            println!(
                "GPU/CPU speedup, {} ({}): {:.2}×",
                m.workload.name,
                m.device,
                m.samples_per_s() / cpu.samples_per_s()
            );
        }
        if let Some(first) = m.graph_failures.first() {
            println!(
                "{} ({}): {} graph recordings FAILED, those steps ran kernel by kernel; the first: {first}",
                m.workload.name,
                m.device,
                m.graph_failures.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_gemms_are_the_counted_flops_less_the_first_input_gradient() {
        for w in Workload::builtin() {
            let counted: f64 = w
                .step_gemms()
                .unwrap()
                .iter()
                .map(|g| 2.0 * (g.m * g.n * g.k) as f64)
                .sum();
            let first_input_gradient = 2.0 * (w.batch_size * w.widths[0] * w.widths[1]) as f64;
            let per_step = w.flops_per_sample() * w.batch_size as f64;
            assert_eq!(counted, per_step - first_input_gradient, "{}", w.name);
            // Per layer: two forward products, the decoder's input gradient, the tied gradient (one product
            // for both uses) and the encoder's input gradient, which the first layer does not need.
            let depth = w.widths.len() - 1;
            assert_eq!(w.step_gemms().unwrap().len(), 5 * depth - 1, "{}", w.name);
        }
    }

    #[test]
    fn flops_and_dates() {
        let w = &Workload::builtin()[2];
        assert_eq!(w.flops_per_sample(), 12.0 * (784.0 * 256.0 + 256.0 * 64.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }

    #[test]
    fn workload_selection() {
        let mut args = BenchArgs {
            workload: "digits".into(),
            device: "cpu".into(),
            layers: None,
            batch_size: Some(32),
            rows: None,
            min_seconds: 0.0,
            min_epochs: 1,
            gemm: None,
            step_gemms: false,
            json: true,
            data_on: Placement::Device,
        };
        let w = selected_workloads(&args).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].batch_size, w[0].rows), (32, 50_000));
        args.workload = "nope".into();
        assert!(selected_workloads(&args).is_err());
        args.layers = Some("10,3".into());
        args.rows = Some(100);
        let w = selected_workloads(&args).unwrap();
        assert_eq!(w[0].widths, vec![10, 3]);
        let m = measure_workload(
            crate::backend::CpuBackend::<f32>::new(),
            "cpu",
            false,
            Placement::Device,
            &w[0],
            0.0,
            2,
        )
        .unwrap();
        assert_eq!(m.epoch_seconds.len(), 2);
        assert!(m.final_loss.is_finite());
    }
}
