//! Keras runs reproduced: the same initial weights, the same data, no shuffling, and the final weights must
//! agree with Keras's to 1e-5 (SGD) or 1e-4 (Adam); the per-epoch losses too. The cases are tf-keras 2.21 runs
//! of a tied autoencoder done right (one kernel variable used by both layers), copied from
//! shared/reference/keras. Each case runs through the library on every backend, and through the real binary.

mod common;

use std::path::{Path, PathBuf};
use tiedae::activation::Activation;
use tiedae::backend::{Backend, CpuBackend};
use tiedae::data::load_csv;
use tiedae::io;
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{DataOptions, DataSet, Network, TrainConfig};

struct Case {
    dir: PathBuf,
    spec: ModelSpec,
    optimizer: Optimizer,
    cli_optimizer: Vec<String>,
    batch_size: usize,
    epochs: usize,
    epoch_losses: Vec<f64>,
    final_mse: f64,
    /// Allowed |ours − Keras| on every final weight.
    tolerance: f32,
}

fn case(name: &str) -> Case {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras")
        .join(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let act = |k: &str| json[k].as_str().unwrap().parse::<Activation>().unwrap();
    let widths: Vec<usize> = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let spec = ModelSpec::new(
        widths,
        act("activation"),
        act("code_activation"),
        act("output_activation"),
    )
    .unwrap();
    let opt = &json["optimizer"];
    let lr: f32 = opt["learning_rate"].as_str().map_or_else(
        || opt["learning_rate"].as_f64().unwrap() as f32,
        |s| s.parse().unwrap(),
    );
    let (optimizer, cli_optimizer, tolerance) = match opt["name"].as_str().unwrap() {
        "SGD" => {
            let momentum = opt["momentum"].as_f64().unwrap() as f32;
            (
                Optimizer::Sgd { lr, momentum },
                vec![
                    "--optimizer".into(),
                    "sgd".into(),
                    "--lr".into(),
                    lr.to_string(),
                    "--momentum".into(),
                    momentum.to_string(),
                ],
                1e-5,
            )
        }
        "Adam" => {
            assert_eq!(opt["beta_1"].as_f64().unwrap(), 0.9);
            assert_eq!(opt["beta_2"].as_f64().unwrap(), 0.999);
            assert_eq!(opt["epsilon"].as_f64().unwrap(), 1e-7);
            (
                Optimizer::from_flags("adam", Some(lr), 0.0).unwrap(),
                vec![
                    "--optimizer".into(),
                    "adam".into(),
                    "--lr".into(),
                    lr.to_string(),
                ],
                1e-4,
            )
        }
        other => panic!("unknown optimizer {other}"),
    };
    Case {
        dir,
        spec,
        optimizer,
        cli_optimizer,
        batch_size: json["batch_size"].as_u64().unwrap() as usize,
        epochs: json["epochs"].as_u64().unwrap() as usize,
        epoch_losses: json["epoch_losses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect(),
        final_mse: json["final_mse"].as_f64().unwrap(),
        tolerance,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0.0, 0), |m, d| if d.0 > m.0 { d } else { m })
}

fn check_weights(case: &Case, got: &[f32], how: &str) {
    let expected = io::load_weights(&case.dir.join("expected.safetensors"), &case.spec).unwrap();
    let init = io::load_weights(&case.dir.join("init.safetensors"), &case.spec).unwrap();
    let (diff, at) = max_abs_diff(got, &expected);
    assert!(
        diff <= case.tolerance,
        "{how} {}: parameter {at} is {} but Keras has {} (|diff| {diff:e} > {:e})",
        case.dir.display(),
        got[at],
        expected[at],
        case.tolerance
    );
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{how} {}: max |ours − Keras| over {} weights = {diff:e} (tolerance {:e})",
            case.dir.file_name().unwrap().to_string_lossy(),
            got.len(),
            case.tolerance
        );
    }
    // The weights moved far more than the tolerance, so agreement is not an accident of tiny updates.
    let (moved, _) = max_abs_diff(&expected, &init);
    assert!(
        moved > 100.0 * case.tolerance,
        "reference barely moved: {moved}"
    );
}

fn run_library<B: Backend>(backend: B, case: &Case) {
    let data = load_csv(&case.dir.join("data.csv"), &[]).unwrap();
    let init = io::load_weights(&case.dir.join("init.safetensors"), &case.spec).unwrap();
    let mut net = Network::new(
        backend,
        &case.spec,
        &init,
        case.batch_size,
        Some(case.optimizer),
    )
    .unwrap();
    net.set_data(
        DataSet::Train,
        &data.values,
        data.rows,
        DataOptions::default(),
    )
    .unwrap();
    let cfg = TrainConfig {
        batch_size: case.batch_size,
        epochs: case.epochs,
        optimizer: case.optimizer,
        shuffle: false,
        constraints: Default::default(),
        seed: 0,
    };
    let reports = net.fit(&cfg, |_| Ok(())).unwrap();
    for (r, want) in reports.iter().zip(&case.epoch_losses) {
        assert!(
            (r.loss - want).abs() <= 1e-5 + 1e-4 * want.abs(),
            "epoch {} loss {} vs Keras {want}",
            r.epoch,
            r.loss
        );
    }
    let got = net.read_params().unwrap();
    check_weights(case, &got, "library");
    // Keras's final_mse is evaluated on the whole set with the trained weights.
    let mse = net.evaluate(|_, _, _, _| {}, false, false).unwrap();
    assert!(
        (mse - case.final_mse).abs() <= 1e-5 + 1e-4 * case.final_mse,
        "final mse {mse} vs Keras {}",
        case.final_mse
    );
}

/// Trains `case` through the binary, with `TIEDAE_CPU_ISA` set to `isa` when given (the GEMM and loops of a
/// narrower instruction set), and checks the weights against Keras's.
fn run_cli(case: &Case, name: &str, isa: Option<&str>) {
    let out = std::env::temp_dir().join(format!(
        "tiedae-keras-{name}-{}-{}.safetensors",
        isa.unwrap_or("best"),
        std::process::id()
    ));
    let layers: Vec<String> = case.spec.widths[1..]
        .iter()
        .map(|w| w.to_string())
        .collect();
    let mut args: Vec<String> = vec![
        "train".into(),
        "--data".into(),
        case.dir.join("data.csv").display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--init".into(),
        case.dir.join("init.safetensors").display().to_string(),
        "--layers".into(),
        layers.join(","),
        "--activation".into(),
        case.spec.activation.to_string(),
        "--code-activation".into(),
        case.spec.code_activation.to_string(),
        "--output-activation".into(),
        case.spec.output_activation.to_string(),
        "--batch-size".into(),
        case.batch_size.to_string(),
        "--epochs".into(),
        case.epochs.to_string(),
        "--no-shuffle".into(),
        "--normalize".into(),
        "none".into(),
        "--device".into(),
        "cpu".into(),
    ];
    args.extend(case.cli_optimizer.iter().cloned());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tiedae"));
    command.args(&args);
    if let Some(isa) = isa {
        command.env("TIEDAE_CPU_ISA", isa);
    }
    let status = command.output().unwrap();
    assert!(
        status.status.success(),
        "tiedae failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let model = io::load_model(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(model.spec, case.spec);
    let device = &model.training["device"];
    match isa {
        // The cap took effect: the run says which GEMM it used (see `CpuBackend::name`).
        Some("baseline") => assert!(device.contains("matrixmultiply GEMM"), "{device}"),
        Some("avx2") if std::arch::is_x86_feature_detected!("avx2") => {
            assert!(device.contains("AVX2 GEMM"), "{device}")
        }
        _ => {}
    }
    check_weights(case, &model.params, &format!("cli {}", isa.unwrap_or("")));
}

macro_rules! keras_case {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn cpu() {
                run_library(CpuBackend::<f32>::new(), &case(stringify!($name)));
            }
            #[test]
            fn cuda() {
                if let Some(gpu) =
                    common::gpu_backend(concat!("keras_reference::", stringify!($name), "::cuda"))
                {
                    run_library(gpu, &case(stringify!($name)));
                }
            }
            #[test]
            fn cli() {
                run_cli(&case(stringify!($name)), stringify!($name), None);
            }
            /// The AVX2 GEMM (most laptops') and the baseline path (matrixmultiply) against Keras too.
            #[test]
            fn cli_avx2_and_baseline() {
                for isa in ["avx2", "baseline"] {
                    run_cli(&case(stringify!($name)), stringify!($name), Some(isa));
                }
            }
        }
    };
}

keras_case!(linear_sgd);
keras_case!(relu_momentum);
keras_case!(tanh_adam);
