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
use crate::backend::{Backend, Gemm, Region, Trans};
use crate::error::{Error, Result};
use crate::memory::{self, Estimate, Need, TrainingShape};
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{DataOptions, DataSet, DataType, Network, Placement, Stop};
use rand::{RngExt, SeedableRng};
use std::time::Instant;

/// `bench/workloads.json`: see [`Workload::builtin`].
const WORKLOADS_JSON: &str = include_str!("../../bench/workloads.json");

/// The shape of `bench/workloads.json`.
#[derive(serde::Deserialize)]
struct WorkloadTable {
    workloads: Vec<WorkloadEntry>,
}

#[derive(serde::Deserialize)]
struct WorkloadEntry {
    name: String,
    layers: Vec<usize>,
    activation: String,
    optimizer: String,
    lr: f32,
    batch: usize,
    rows: usize,
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
    /// The built-in workloads, in order: `bench/workloads.json`, the one table that the reference scripts
    /// (`bench/keras_reference.py`, `bench/torch_reference.py`) read too.
    pub fn builtin() -> Vec<Workload> {
        let table: WorkloadTable = serde_json::from_str(WORKLOADS_JSON)
            .expect("bench/workloads.json (a unit test reads it)");
        table
            .workloads
            .into_iter()
            .map(|e| Workload {
                activation: e.activation.parse().expect("an activation's name"),
                optimizer: Optimizer::from_flags(&e.optimizer, Some(e.lr), 0.0)
                    .expect("sgd or adam with a positive lr"),
                name: e.name,
                widths: e.layers,
                batch_size: e.batch,
                rows: e.rows,
            })
            .collect()
    }

    /// The built-in workload `name`, or all of them for `all`.
    pub fn named(name: &str) -> Result<Vec<Workload>> {
        let all = Workload::builtin();
        let name = name.trim().to_ascii_lowercase();
        if name == "all" {
            return Ok(all);
        }
        let names = all
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match all.iter().find(|w| w.name == name) {
            Some(w) => Ok(vec![w.clone()]),
            None => Err(Error::flag(
                "--workload",
                format!("unknown workload '{name}' (expected {names} or all)"),
            )),
        }
    }

    /// A workload of the given widths (the input first): tanh hidden layers, linear code and output, Adam
    /// (lr 0.001), batch 256, 50 000 rows.
    pub fn custom(widths: Vec<usize>) -> Result<Workload> {
        Ok(Workload {
            name: "custom".into(),
            widths,
            activation: Activation::Tanh,
            optimizer: Optimizer::from_flags("adam", None, 0.0)?,
            batch_size: 256,
            rows: 50_000,
        })
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

    /// "784→256→64".
    pub fn shape(&self) -> String {
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

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
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

/// What training workload `w` takes, refused (naming --layers, --batch-size or --rows) before anything is
/// allocated when it does not fit: on a GPU against its free memory, else against the host's.
fn check_workload_fits<B: Backend>(backend: &B, w: &Workload, data_on: Placement) -> Result<()> {
    let mut estimate = memory::training_estimate(&TrainingShape {
        widths: &w.widths,
        state_buffers: w.optimizer.state_buffers(),
        batch: w.batch_size,
        rows: w.rows,
        data_bytes: 4,
        data_on_device: data_on != Placement::Host,
        keeps_best: false,
    });
    for need in &mut estimate.device {
        if need.flag == "--data-dtype" {
            need.flag = "--rows";
            need.advice = "use fewer --rows";
        }
    }
    let values = (w.rows as u128).saturating_mul(w.widths[0] as u128);
    let rows = |what| Need {
        what,
        bytes: values.saturating_mul(4),
        flag: "--rows",
        advice: "use fewer --rows",
    };
    estimate.host = vec![
        rows("synthetic data"),
        Need {
            what: "initial weights",
            bytes: memory::param_count(&w.widths).saturating_mul(4),
            flag: "--layers",
            advice: "use smaller --layers",
        },
    ];
    if data_on == Placement::Host {
        estimate.host.push(rows("data set kept on the host"));
    }
    let task = format!("the {} workload ({})", w.name, w.shape());
    estimate.check(&task, backend.free_memory().map(|f| f as u64))
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
    check_workload_fits(&backend, w, data_on)?;
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
    let (m_, n_, k_) = (m as u128, n as u128, k as u128);
    let gemm = |what, bytes: u128| Need {
        what,
        bytes,
        flag: "--gemm",
        advice: "time a smaller --gemm",
    };
    Estimate {
        device: vec![gemm("A, B and C", 4 * (m_ * k_ + k_ * n_ + m_ * n_))],
        host: vec![gemm("synthetic operands", 8 * m_.max(n_) * k_)],
    }
    .check(
        &format!("timing {}", shape.label()),
        backend.free_memory().map(|f| f as u64),
    )?;
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
    // A step's products take about what its training takes on the device.
    check_workload_fits(&backend, w, Placement::Device)?;
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
    fn the_workload_table_reads() {
        let names: Vec<String> = Workload::builtin().into_iter().map(|w| w.name).collect();
        assert_eq!(names, ["seed", "digits", "mnist"]);
        assert_eq!(Workload::named("all").unwrap().len(), 3);
        assert_eq!(Workload::named("digits").unwrap()[0].widths, [64, 32, 8]);
        let err = Workload::named("nope").unwrap_err().to_string();
        assert!(
            err.contains("--workload") && err.contains("seed, digits, mnist"),
            "{err}"
        );
    }
}
