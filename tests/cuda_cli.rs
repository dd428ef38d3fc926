//! The release binary with `--device cuda`, end to end on the bundled digits, against the same runs with
//! `--device cpu`: training (Adam, SGD with momentum, CUDA graphs, data kept on the host, f16 data, the
//! three constraints, a validation split with early stopping), then `eval`, `encode` and `reconstruct`;
//! model files read by the other device; Ctrl-C and `--resume`; `bench --device all`.
//!
//! On a machine without a GPU these run on the emulated CUDA driver (tests/emulated_cuda), which runs the
//! same kernels on the CPU; with a GPU they run on it. Without either they say SKIPPED.
//!
//! Tolerances, and why (as tests/gpu_training.rs): the GPU's GEMM sums in another order than the CPU's
//! (tiles and FMAs), which moves the last bits of every product; a few epochs of training keep that near
//! 1e-5. So: each epoch's loss within 1e-6 + 1e-4·|cpu|; parameters within 1e-4 + 1e-3·|cpu|; an `eval` of
//! one model file on both devices within 1e-6 + 1e-5·|cpu| (the same weights, one forward pass); codes and
//! reconstructions of one model within 1e-5 + 1e-4·|cpu|. Runs that must give the same bits on the GPU
//! (with and without graphs, data on the host or on the device, resumed or straight) are compared bit for
//! bit.

mod common;

use common::assert_close;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tiedae::io;

/// A scratch folder, and the environment that puts `--device cuda` on a GPU (real or emulated).
struct Case {
    dir: PathBuf,
    gpu_env: Vec<(String, String)>,
}

impl Case {
    /// None (having said why) when there is no GPU, real or emulated.
    fn new(test: &str) -> Option<Case> {
        let gpu_env = common::gpu_env(test)?;
        let dir =
            std::env::temp_dir().join(format!("tiedae-cuda-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Some(Case { dir, gpu_env })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `tiedae args…`, on the GPU's environment when `args` name `--device cuda`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tiedae"));
        c.args(args);
        if args.windows(2).any(|w| w == ["--device", "cuda"]) {
            c.envs(self.gpu_env.iter().map(|(k, v)| (k, v)));
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running tiedae")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tiedae {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Trains on the digits on `device` with `extra` flags; returns the model file and each epoch's
    /// (loss, val_loss) from `--metrics`.
    fn train(&self, device: &str, tag: &str, extra: &[&str]) -> (String, Vec<(f64, Option<f64>)>) {
        let model = self.path(&format!("{tag}-{device}.safetensors"));
        let metrics = self.path(&format!("{tag}-{device}.jsonl"));
        let data = digits();
        let mut args = vec![
            "train",
            "--data",
            &data,
            "--ignore-columns",
            "digit",
            "--normalize",
            "minmax",
            "--layers",
            "16,4",
            "--activation",
            "tanh",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--seed",
            "7",
            "--metrics",
            &metrics,
            "--out",
            &model,
            "--device",
            device,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
        let ran_on = &io::load_model(Path::new(&model)).unwrap().training["device"];
        assert!(
            ran_on.starts_with(device),
            "--device {device} trained on {ran_on}"
        );
        (model, read_metrics(&metrics))
    }

    /// The same training on the CPU and on the GPU: losses and parameters within the stated tolerances.
    /// Returns the two model files (cpu, cuda).
    fn cuda_matches_cpu(&self, tag: &str, extra: &[&str]) -> (String, String) {
        let (cpu_model, cpu_losses) = self.train("cpu", tag, extra);
        let (cuda_model, cuda_losses) = self.train("cuda", tag, extra);
        assert_eq!(cuda_losses.len(), cpu_losses.len(), "{tag}: epochs run");
        for (e, (g, c)) in cuda_losses.iter().zip(&cpu_losses).enumerate() {
            let close = |g: f64, c: f64| (g - c).abs() <= 1e-6 + 1e-4 * c.abs();
            assert!(
                close(g.0, c.0),
                "{tag}: epoch {} loss cuda {} cpu {}",
                e + 1,
                g.0,
                c.0
            );
            match (g.1, c.1) {
                (Some(gv), Some(cv)) => assert!(
                    close(gv, cv),
                    "{tag}: epoch {} val_loss cuda {gv} cpu {cv}",
                    e + 1
                ),
                (None, None) => {}
                other => panic!("{tag}: epoch {}: val_loss {other:?}", e + 1),
            }
        }
        let (cpu, cuda) = (params(&cpu_model), params(&cuda_model));
        assert_close(&format!("{tag}: parameters"), &cuda, &cpu, 1e-4, 1e-3);
        (cpu_model, cuda_model)
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits.csv")
        .display()
        .to_string()
}

fn read_metrics(path: &str) -> Vec<(f64, Option<f64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["loss"].as_f64().unwrap(), v["val_loss"].as_f64())
        })
        .collect()
}

fn params(model: &str) -> Vec<f32> {
    io::load_model(Path::new(model)).unwrap().params
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every number of a CSV file after its header, row by row.
fn csv_numbers(path: &str) -> Vec<f32> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .map(|x| x.trim().parse::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn eval_mse(case: &Case, model: &str, device: &str) -> f64 {
    let data = digits();
    let out = case.ok(&[
        "eval", "--model", model, "--data", &data, "--json", "--device", device,
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["device"].as_str().unwrap().starts_with(device),
        "eval ran on {} for --device {device}",
        v["device"]
    );
    v["mse"].as_f64().unwrap()
}

/// `eval`, `encode` and `reconstruct` of one model file on both devices.
fn inference_matches(case: &Case, model: &str, tag: &str) {
    let cpu = eval_mse(case, model, "cpu");
    let cuda = eval_mse(case, model, "cuda");
    assert!(
        (cpu - cuda).abs() <= 1e-6 + 1e-5 * cpu,
        "{tag}: eval of {model}: cuda {cuda} cpu {cpu}"
    );
    let data = digits();
    for command in ["encode", "reconstruct"] {
        let mut outs = Vec::new();
        for device in ["cpu", "cuda"] {
            let out = case.path(&format!("{tag}-{command}-{device}.csv"));
            case.ok(&[
                command, "--model", model, "--data", &data, "--out", &out, "--device", device,
            ]);
            outs.push(csv_numbers(&out));
        }
        assert_close(&format!("{tag}: {command}"), &outs[1], &outs[0], 1e-5, 1e-4);
    }
}

#[test]
fn adam_on_cuda_matches_the_cpu_and_each_device_reads_the_others_model() {
    let Some(case) =
        Case::new("adam_on_cuda_matches_the_cpu_and_each_device_reads_the_others_model")
    else {
        return;
    };
    let (cpu_model, cuda_model) = case.cuda_matches_cpu("adam", &[]);
    inference_matches(&case, &cuda_model, "adam, the cuda model");
    inference_matches(&case, &cpu_model, "adam, the cpu model");
}

#[test]
fn sgd_with_momentum_on_cuda_matches_the_cpu() {
    let Some(case) = Case::new("sgd_with_momentum_on_cuda_matches_the_cpu") else {
        return;
    };
    let sgd = ["--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9"];
    case.cuda_matches_cpu("sgd", &sgd);
}

/// Batches of 16: 113 steps an epoch, so most steps run as replays of graphs of 32 steps.
#[test]
fn cuda_graphs_give_the_bits_of_launches() {
    let Some(mut case) = Case::new("cuda_graphs_give_the_bits_of_launches") else {
        return;
    };
    // On the emulated driver, its trace shows the graphs' launches.
    let trace = case.path("trace");
    if matches!(common::emulated::gpu(), common::emulated::Gpu::Emulated(_)) {
        case.gpu_env
            .push(("TIEDAE_EMU_TRACE".into(), trace.clone()));
    }
    let small = ["--batch-size", "16"];
    let (_, launched) = case.cuda_matches_cpu("launched", &small);
    let (graphs, _) = case.train("cuda", "graphs", &["--batch-size", "16", "--cuda-graphs"]);
    assert_eq!(
        bits(&params(&graphs)),
        bits(&params(&launched)),
        "--cuda-graphs changed the bits"
    );
    if Path::new(&trace).exists() {
        let replays = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("graph launch"))
            .count();
        assert!(
            replays >= 4,
            "{replays} graph launches: the steps were not replayed"
        );
    }
}

#[test]
fn data_on_the_host_gives_the_bits_of_data_on_the_device() {
    let Some(case) = Case::new("data_on_the_host_gives_the_bits_of_data_on_the_device") else {
        return;
    };
    let (device, _) = case.train(
        "cuda",
        "device",
        &["--data-on", "device", "--val-split", "0.2"],
    );
    let (host, _) = case.train("cuda", "host", &["--data-on", "host", "--val-split", "0.2"]);
    assert_eq!(
        bits(&params(&host)),
        bits(&params(&device)),
        "--data-on host changed the bits"
    );
}

#[test]
fn f16_data_on_cuda_matches_the_cpu() {
    let Some(case) = Case::new("f16_data_on_cuda_matches_the_cpu") else {
        return;
    };
    case.cuda_matches_cpu("f16", &["--data-dtype", "f16"]);
}

#[test]
fn the_three_constraints_on_cuda_match_the_cpu() {
    let Some(case) = Case::new("the_three_constraints_on_cuda_match_the_cpu") else {
        return;
    };
    let constraints = [
        "--orthogonality",
        "0.01",
        "--uncorrelated",
        "0.01",
        "--unit-norm",
    ];
    let (_, cuda_model) = case.cuda_matches_cpu("constraints", &constraints);
    inference_matches(&case, &cuda_model, "constraints");
}

/// A validation split and early stopping: the same validation losses, the same stopping epoch, the same
/// best weights kept.
#[test]
fn validation_and_patience_on_cuda_match_the_cpu() {
    let Some(case) = Case::new("validation_and_patience_on_cuda_match_the_cpu") else {
        return;
    };
    // A learning rate that overshoots soon, so that patience stops the run before its last epoch.
    let flags = [
        "--val-split",
        "0.25",
        "--patience",
        "1",
        "--epochs",
        "12",
        "--optimizer",
        "sgd",
        "--lr",
        "0.9",
        "--momentum",
        "0.9",
    ];
    let (cpu_model, _) = case.cuda_matches_cpu("patience", &flags);
    let epochs = io::load_model(Path::new(&cpu_model))
        .unwrap()
        .checkpoint
        .unwrap()
        .state
        .epochs_done;
    assert!(
        epochs < 12,
        "patience did not stop the run ({epochs} epochs): the case checks nothing"
    );
}

/// Ctrl-C on the GPU saves a model that resumes on the GPU, and the resumed run ends bit for bit where a
/// straight run of as many epochs ends.
#[test]
fn ctrl_c_and_resume_on_cuda() {
    let Some(case) = Case::new("ctrl_c_and_resume_on_cuda") else {
        return;
    };
    let out = case.path("interrupted.safetensors");
    let data = digits();
    let common_args = [
        "--ignore-columns",
        "digit",
        "--normalize",
        "minmax",
        "--layers",
        "16,4",
        "--batch-size",
        "32",
        "--seed",
        "3",
        "--device",
        "cuda",
    ];
    let mut args = vec![
        "train", "--data", &data, "--out", &out, "--epochs", "1000000",
    ];
    args.extend_from_slice(&common_args);
    let mut child = case
        .command(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !Path::new(&out).exists() {
        if child.try_wait().unwrap().is_some() {
            let failed = child.wait_with_output().unwrap();
            panic!(
                "training ended before its first checkpoint: {}",
                String::from_utf8_lossy(&failed.stderr)
            );
        }
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success(),
        "an interrupted run must exit non-zero"
    );
    assert!(
        stderr.contains("interrupted in epoch")
            && stderr.contains("--resume")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    let ck = io::load_model(Path::new(&out)).unwrap().checkpoint.unwrap();
    let total = (ck.state.epochs_done + 1).to_string();
    case.ok(&[
        "train", "--resume", &out, "--epochs", &total, "--device", "cuda",
    ]);
    let straight = case.path("straight.safetensors");
    let mut args = vec![
        "train", "--data", &data, "--out", &straight, "--epochs", &total,
    ];
    args.extend_from_slice(&common_args);
    case.ok(&args);
    assert_eq!(
        bits(&params(&out)),
        bits(&params(&straight)),
        "interrupted in epoch {} after step {} and resumed: not the bits of the straight run",
        ck.state.epochs_done + 1,
        ck.state.step_in_epoch
    );
}

/// `bench --device all` times the CPU and the GPU (both ways: launches and graphs); on the emulated
/// driver the GPU's rows say so (its timings are the CPU's, running the kernels one thread at a time).
#[test]
fn bench_times_every_device() {
    let Some(case) = Case::new("bench_times_every_device") else {
        return;
    };
    let mut bench = case.command(&[
        "bench",
        "--device",
        "all",
        "--workload",
        "seed",
        "--rows",
        "512",
        "--min-seconds",
        "0",
        "--min-epochs",
        "1",
        "--json",
    ]);
    bench.envs(case.gpu_env.iter().map(|(k, v)| (k, v)));
    let out = bench.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["device_name"].as_str())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("cpu")), "{names:?}");
    let gpu: Vec<&&str> = names.iter().filter(|n| n.starts_with("cuda:0")).collect();
    assert_eq!(gpu.len(), 2, "launches and graphs: {names:?}");
    if matches!(common::emulated::gpu(), common::emulated::Gpu::Emulated(_)) {
        assert!(
            gpu.iter().all(|n| n.contains("emulated CUDA device (CPU)")),
            "{names:?}"
        );
    }
}
