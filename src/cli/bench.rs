//! `tiedae bench`: its flags, and the table or JSON lines of what the library's timing measured
//! (`tiedae::bench`: the workloads of bench/workloads.json, the timing rule, the GEMM timings).

use tiedae::bench::{
    machine, measure_gemm, measure_step_gemms, measure_workload, median, today, GemmShape,
    Measurement, Workload,
};
use tiedae::error::{Error, Result};
use tiedae::train::Placement;
use tiedae::with_backend;
use tiedae::workflow::{self, Device};

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
fn selected_workloads(args: &BenchArgs) -> Result<Vec<Workload>> {
    let mut list = match &args.layers {
        Some(layers) => {
            let widths = parse_list("--layers", layers)?;
            if widths.len() < 2 {
                return Err(Error::flag(
                    "--layers",
                    "needs the input width and at least one more, e.g. 784,256,64",
                ));
            }
            vec![Workload::custom(widths)?]
        }
        None => Workload::named(&args.workload)?,
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
fn selected_devices(choice: &str) -> Result<Vec<Device>> {
    match choice.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(vec![Device::Cpu]),
        "cuda" | "gpu" => {
            workflow::check_cuda(0)?;
            Ok(vec![Device::Cuda(0)])
        }
        "all" => {
            let mut v = vec![Device::Cpu];
            match workflow::check_cuda(0) {
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
                let m = with_backend!(d, |backend| measure_gemm(
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
                let (name, seconds) = with_backend!(d, |backend| measure_step_gemms(
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
            let m = with_backend!(d, |backend| measure_workload(
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
            tiedae::backend::CpuBackend::<f32>::new(),
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
