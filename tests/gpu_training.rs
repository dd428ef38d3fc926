//! Whole training runs: the GPU against the CPU reference (every step runs our kernels), and the memory a
//! model takes against the formula with ONE kernel per tied layer.

mod common;

use common::{assert_close, gpu_backend};
use std::path::Path;
use tiedae::activation::Activation;
use tiedae::backend::{Backend, CpuBackend};
use tiedae::data::{load_csv, ColumnSelector};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{DataOptions, DataSet, EpochReport, Network, TrainConfig};

fn digits() -> (Vec<f32>, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let mut d = load_csv(&path, &[ColumnSelector::Name("digit".into())]).unwrap();
    d.values.iter_mut().for_each(|x| *x /= 16.0);
    (d.values, d.rows)
}

fn train<B: Backend>(
    backend: B,
    spec: &ModelSpec,
    cfg: &TrainConfig,
) -> (Vec<f32>, Vec<EpochReport>, f64) {
    let (values, rows) = digits();
    let mut net = Network::new(
        backend,
        spec,
        &spec.glorot_init(3),
        cfg.batch_size,
        Some(cfg.optimizer),
    )
    .unwrap();
    net.set_data(DataSet::Train, &values, rows, DataOptions::default())
        .unwrap();
    let reports = net.fit(cfg, |_| Ok(())).unwrap();
    let mse = net.evaluate(|_, _, _, _| {}, false, false).unwrap();
    (net.read_params().unwrap(), reports, mse)
}

fn gpu_matches_cpu(test: &str, spec: ModelSpec, optimizer: Optimizer, batch_size: usize) {
    let Some(gpu) = gpu_backend(test) else {
        return;
    };
    let cfg = TrainConfig {
        batch_size,
        epochs: 3,
        optimizer,
        shuffle: true,
        constraints: Default::default(),
        seed: 11,
    };
    let (cpu_params, cpu_reports, cpu_mse) = train(CpuBackend::<f32>::new(), &spec, &cfg);
    let (gpu_params, gpu_reports, gpu_mse) = train(gpu, &spec, &cfg);
    // Float sums in another order drift by rounding only; three epochs of training keep that near 1e-5.
    assert_close(
        &format!("{test}: parameters"),
        &gpu_params,
        &cpu_params,
        1e-4,
        1e-3,
    );
    for (g, c) in gpu_reports.iter().zip(&cpu_reports) {
        assert!(
            (g.loss - c.loss).abs() <= 1e-6 + 1e-4 * c.loss,
            "{test}: epoch {} loss gpu {} cpu {}",
            g.epoch,
            g.loss,
            c.loss
        );
    }
    assert!(
        (gpu_mse - cpu_mse).abs() <= 1e-6 + 1e-4 * cpu_mse,
        "{test}: mse gpu {gpu_mse} cpu {cpu_mse}"
    );
}

#[test]
fn digits_tanh_adam_gpu_matches_cpu() {
    let spec = ModelSpec::new(
        vec![64, 32, 8],
        Activation::Tanh,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    gpu_matches_cpu(
        "digits_tanh_adam_gpu_matches_cpu",
        spec,
        Optimizer::from_flags("adam", Some(3e-3), 0.0).unwrap(),
        64,
    );
}

#[test]
fn digits_relu_momentum_gpu_matches_cpu() {
    let spec = ModelSpec::new(
        vec![64, 48, 16, 4],
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Sigmoid,
    )
    .unwrap();
    gpu_matches_cpu(
        "digits_relu_momentum_gpu_matches_cpu",
        spec,
        Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
        },
        100, // 1797 = 17·100 + 97: the last, smaller batch is exercised
    );
}

/// Bytes a training model takes, by the formula: P parameters (one kernel per tied layer), the gradient (P),
/// the optimizer state (1 or 2 × P), the batch activations and their gradients, the data set and its order,
/// and one loss slot and one Adam alpha slot per step.
fn formula_bytes(spec: &ModelSpec, optimizer: &Optimizer, batch: usize, rows: usize) -> usize {
    let w = &spec.widths;
    let p: usize = w.windows(2).map(|l| l[0] * l[1] + l[0] + l[1]).sum();
    let activations: usize =
        batch * (w[0] + w.windows(2).map(|l| 2 * (l[0] + l[1])).sum::<usize>());
    let floats =
        p * (2 + optimizer.state_buffers()) + activations + rows * w[0] + 2 * rows.div_ceil(batch);
    4 * floats + 4 * rows
}

fn memory_matches_formula<B: Backend>(backend: B) {
    let spec = ModelSpec::new(
        vec![64, 32, 8],
        Activation::Tanh,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    let optimizer = Optimizer::from_flags("adam", None, 0.0).unwrap();
    let (values, rows) = digits();
    let fixed = backend.allocated_bytes();
    let mut net = Network::new(backend, &spec, &spec.glorot_init(0), 256, Some(optimizer)).unwrap();
    net.set_data(DataSet::Train, &values, rows, DataOptions::default())
        .unwrap();
    let used = net.backend.allocated_bytes() - fixed;
    assert_eq!(used, formula_bytes(&spec, &optimizer, 256, rows));
}

#[test]
fn cpu_memory_matches_the_one_kernel_formula() {
    memory_matches_formula(CpuBackend::<f32>::new());
}

#[test]
fn gpu_memory_matches_the_one_kernel_formula() {
    if let Some(gpu) = gpu_backend("gpu_memory_matches_the_one_kernel_formula") {
        memory_matches_formula(gpu);
    }
}
