//! The three constraints of "Build the right Autoencoder — Tune and Optimize using PCA principles":
//! `--orthogonality λ` (λ·‖WᵀW − I‖_F per kernel), `--uncorrelated λ` (λ·Σ_{i≠j} Cov(codes)_ij² over the batch)
//! and `--unit-norm` (every kernel column projected to norm 1 after each step).
//!
//! - Their gradients against central finite differences of MSE + penalty, in f64 on the CPU backend (the
//!   training code path instantiated with f64), as tests/gradient_check.rs does for the MSE alone.
//! - One SGD step against the update written out on the host from the formulas.
//! - Training with each constraint changes what its formula says it changes, and without it does not.
//! - The CPU twins of the new backend ops on small hand-checked cases (their GPU twins are compared with them
//!   in tests/gpu_kernels.rs), and a whole GPU training run with all three against the CPU (SKIPPED here
//!   without a GPU).

mod common;

use common::finite_difference::check_gradient;
use common::{assert_close, gpu_backend};
use rand::{RngExt, SeedableRng};
use std::path::Path;
use tiedae::activation::Activation;
use tiedae::backend::{Backend, CpuBackend, Real, Region};
use tiedae::data::{load_csv, ColumnSelector};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{Constraints, DataOptions, DataSet, Network, TrainConfig};

/// Rows of the gradient checks: n − 1 = 4 is a power of two, so 4λ/(n − 1) and 1/(n − 1) are exact in the
/// f32 GEMM factors and the f64 check sees no rounding but its own.
const ROWS: usize = 5;

const SGD: Optimizer = Optimizer::Sgd {
    lr: 0.1,
    momentum: 0.0,
};

fn constraints(orthogonality: f32, uncorrelated: f32, unit_norm: bool) -> Constraints {
    Constraints {
        orthogonality,
        uncorrelated,
        unit_norm,
    }
}

fn spec(widths: &[usize], hidden: Activation, code: Activation, output: Activation) -> ModelSpec {
    ModelSpec::new(widths.to_vec(), hidden, code, output).unwrap()
}

// ------------------------------------------------------------------------------------ host formulas (f64)

/// WᵀW − I of a (d, k) row-major kernel, (k, k).
fn gram_minus_identity(w: &[f64], d: usize, k: usize) -> Vec<f64> {
    let mut a = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            let dot: f64 = (0..d).map(|r| w[r * k + i] * w[r * k + j]).sum();
            a[i * k + j] = dot - if i == j { 1.0 } else { 0.0 };
        }
    }
    a
}

/// ‖WᵀW − I‖_F.
fn orthogonality_residual(w: &[f64], d: usize, k: usize) -> f64 {
    gram_minus_identity(w, d, k)
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
}

/// d(λ·‖WᵀW − I‖_F)/dW = 2λ·W·A/‖A‖_F, (d, k).
fn orthogonality_gradient(w: &[f64], d: usize, k: usize, lambda: f64) -> Vec<f64> {
    let a = gram_minus_identity(w, d, k);
    let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut g = vec![0.0; d * k];
    for r in 0..d {
        for j in 0..k {
            let wa: f64 = (0..k).map(|i| w[r * k + i] * a[i * k + j]).sum();
            g[r * k + j] = 2.0 * lambda * wa / norm;
        }
    }
    g
}

/// (centered codes Hc, covariance Cov = HcᵀHc/(n − 1)) of codes h (n, k).
fn centered_and_covariance(h: &[f64], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mean: Vec<f64> = (0..k)
        .map(|j| (0..n).map(|r| h[r * k + j]).sum::<f64>() / n as f64)
        .collect();
    let hc: Vec<f64> = (0..n * k).map(|e| h[e] - mean[e % k]).collect();
    let mut cov = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            cov[i * k + j] =
                (0..n).map(|r| hc[r * k + i] * hc[r * k + j]).sum::<f64>() / (n - 1) as f64;
        }
    }
    (hc, cov)
}

/// Σ_{i≠j} Cov_ij².
fn offdiagonal_covariance_sq(h: &[f64], n: usize, k: usize) -> f64 {
    let (_, cov) = centered_and_covariance(h, n, k);
    (0..k * k)
        .filter(|e| e / k != e % k)
        .map(|e| cov[e] * cov[e])
        .sum()
}

/// ‖W[:, j]‖₂ for every column j of a (d, k) kernel.
fn column_norms(w: &[f32], d: usize, k: usize) -> Vec<f64> {
    (0..k)
        .map(|j| {
            (0..d)
                .map(|r| (w[r * k + j] as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ------------------------------------------------------------------------------------ gradient checks

/// d(MSE + penalties)/dθ from the backward pass against central differences of
/// `loss_and_gradient` + `penalty`, for every parameter, in f64.
fn check(widths: &[usize], acts: (Activation, Activation, Activation), c: Constraints, seed: u64) {
    let (hidden, code, output) = acts;
    let spec = spec(widths, hidden, code, output);
    let what = format!("widths {widths:?} {hidden}/{code}/{output} {c:?}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..ROWS * widths[0]).map(|_| rng.random::<f32>()).collect();
    let params: Vec<f64> = (0..spec.param_count())
        .map(|_| rng.random_range(-0.8..0.8))
        .collect();
    let params32: Vec<f32> = params.iter().map(|&x| x as f32).collect();
    let mut net =
        Network::new(CpuBackend::<f64>::new(), &spec, &params32, ROWS, Some(SGD)).unwrap();
    net.set_data(DataSet::Train, &data, ROWS, DataOptions::default())
        .unwrap();
    net.write_params(&params).unwrap();
    // The reconstruction gradient alone, to show the penalties add a visible part.
    net.loss_and_gradient(0, ROWS).unwrap();
    let mse_only = net.read_grads().unwrap();

    net.set_constraints(c);
    fn total(net: &mut Network<CpuBackend<f64>>) -> f64 {
        net.loss_and_gradient(0, ROWS).unwrap() + net.penalty(0, ROWS).unwrap()
    }
    let at_params = total(&mut net);
    let analytic = net.read_grads().unwrap();
    let penalty = net.penalty(0, ROWS).unwrap();
    assert!(penalty > 1e-5, "{what}: penalty {penalty} is all but zero");
    assert!(at_params.is_finite());
    let worst = check_gradient(&what, "d(loss + penalty)", &params, &analytic, |p| {
        net.write_params(p).unwrap();
        total(&mut net)
    });
    let added = analytic
        .iter()
        .zip(&mse_only)
        .map(|(a, m)| (a - m).abs())
        .fold(0.0, f64::max);
    assert!(
        added > 1e-3,
        "{what}: the penalties change the gradient by at most {added:e}: the check would be vacuous"
    );
    eprintln!(
        "{what}: penalty {penalty:.4}, penalty gradient up to {added:.3e}, worst |analytic − numeric| {worst:e}"
    );
}

const LIN: Activation = Activation::Linear;
const TANH: Activation = Activation::Tanh;
const SIGM: Activation = Activation::Sigmoid;
const RELU: Activation = Activation::Relu;

#[test]
fn orthogonality_gradient_matches_finite_differences() {
    let c = constraints(0.7, 0.0, false);
    check(&[6, 3], (LIN, LIN, LIN), c, 1);
    check(&[6, 3], (LIN, TANH, SIGM), c, 2);
    check(&[7, 5, 4, 2], (TANH, LIN, LIN), c, 3);
    check(&[7, 5, 4, 2], (RELU, SIGM, LIN), c, 4);
}

#[test]
fn uncorrelated_gradient_matches_finite_differences() {
    let c = constraints(0.0, 3.0, false);
    check(&[6, 3], (LIN, LIN, LIN), c, 11);
    check(&[6, 3], (LIN, TANH, LIN), c, 12);
    check(&[7, 5, 4, 3], (TANH, TANH, LIN), c, 14);
    // Sigmoid codes vary little around 0.5 (covariances ~1e-3): a larger λ keeps the penalty's gradient
    // well above the check's tolerance.
    let c = constraints(0.0, 2000.0, false);
    check(&[6, 3], (LIN, SIGM, SIGM), c, 13);
    check(&[7, 5, 4, 3], (RELU, SIGM, TANH), c, 15);
}

#[test]
fn both_penalties_gradient_matches_finite_differences() {
    // --unit-norm acts after the step only: it must not change the gradient.
    for unit_norm in [false, true] {
        let c = constraints(0.4, 2.0, unit_norm);
        check(&[6, 3], (LIN, TANH, LIN), c, 21);
        check(&[7, 5, 4, 3], (TANH, LIN, SIGM), c, 22);
        check(&[7, 5, 4, 3], (SIGM, SIGM, LIN), c, 23);
    }
}

#[test]
fn uncorrelated_penalty_is_zero_for_a_single_row() {
    let spec = spec(&[6, 3], LIN, TANH, LIN);
    let params = spec.glorot_init(7);
    let data: Vec<f32> = (0..ROWS * 6).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut net = Network::new(CpuBackend::<f64>::new(), &spec, &params, ROWS, Some(SGD)).unwrap();
    net.set_data(DataSet::Train, &data, ROWS, DataOptions::default())
        .unwrap();
    net.loss_and_gradient(2, 1).unwrap();
    let plain = net.read_grads().unwrap();
    net.set_constraints(constraints(0.0, 5.0, false));
    net.loss_and_gradient(2, 1).unwrap();
    assert_eq!(net.read_grads().unwrap(), plain);
    assert_eq!(net.penalty(2, 1).unwrap(), 0.0);
    assert!(net.penalty(0, ROWS).unwrap() > 0.0);
}

// ------------------------------------------------------------------------------------ one exact step

/// One SGD step over the whole batch, on the f64 backend: w_after = w − lr·(g_mse + g_penalty), with g_mse
/// from the backward pass without constraints and g_penalty written out on the host from the formulas. In a
/// depth-1 model with a linear code h = x·W + b the code penalty reaches W through the encoder only:
/// dP/dW = xᵀ·dP/dH with dP/dH = (4λ/(n − 1))·Hc·Offdiag(Cov), and the code bias gets colsum(dP/dH) = 0.
#[test]
fn one_sgd_step_adds_the_penalty_gradients_of_the_formulas() {
    let (d, k, n) = (6, 3, ROWS);
    let spec = spec(&[d, k], LIN, LIN, SIGM);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    let x: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
    let params: Vec<f32> = (0..spec.param_count())
        .map(|_| rng.random_range(-0.8f32..0.8))
        .collect();
    let c = constraints(0.6, 2.5, false);
    let (lambda_o, lambda_u) = (c.orthogonality as f64, c.uncorrelated as f64);
    let lr = 0.1f32 as f64; // SGD's lr, as the f64 backend widens it
    let slot = spec.slots()[0].clone();

    let mut net = Network::new(CpuBackend::<f64>::new(), &spec, &params, n, Some(SGD)).unwrap();
    net.set_data(DataSet::Train, &x, n, DataOptions::default())
        .unwrap();
    net.loss_and_gradient(0, n).unwrap();
    let g_mse = net.read_grads().unwrap();

    let w = to_f64(&params[slot.kernel.clone()]);
    let b = to_f64(&params[slot.enc_bias.clone()]);
    let xs = to_f64(&x);
    let h: Vec<f64> = (0..n * k)
        .map(|e| {
            let (r, j) = (e / k, e % k);
            (0..d).map(|i| xs[r * d + i] * w[i * k + j]).sum::<f64>() + b[j]
        })
        .collect();
    let (hc, cov) = centered_and_covariance(&h, n, k);
    let scale = 4.0 * lambda_u / (n - 1) as f64;
    let dh: Vec<f64> = (0..n * k)
        .map(|e| {
            let (r, j) = (e / k, e % k);
            let off = |i: usize| if i == j { 0.0 } else { cov[i * k + j] };
            scale * (0..k).map(|i| hc[r * k + i] * off(i)).sum::<f64>()
        })
        .collect();
    let g_orth = orthogonality_gradient(&w, d, k, lambda_o);
    let mut expected = to_f64(&params);
    for (p, g) in expected.iter_mut().zip(&g_mse) {
        *p -= lr * g;
    }
    for i in 0..d {
        for j in 0..k {
            let g_code: f64 = (0..n).map(|r| xs[r * d + i] * dh[r * k + j]).sum();
            expected[slot.kernel.start + i * k + j] -= lr * (g_orth[i * k + j] + g_code);
        }
    }

    net.set_constraints(c);
    let identity: Vec<u32> = (0..n as u32).collect();
    net.train_epoch(&identity, n).unwrap();
    let got = net.read_params().unwrap();
    let want: Vec<f32> = expected.iter().map(|&x| x as f32).collect();
    assert_close("params after one step", &got, &want, 1e-7, 1e-6);
    // The penalties did move the kernel: the step differs from the MSE-only step.
    let moved = slot
        .kernel
        .clone()
        .map(|e| (expected[e] - (params[e] as f64 - lr * g_mse[e])).abs())
        .fold(0.0, f64::max);
    assert!(
        moved > 1e-3,
        "the penalty part of the step is only {moved:e}"
    );
}

/// With --unit-norm, the parameters after one SGD step are the plain step's, with every kernel column
/// divided by its norm; the biases are untouched by the projection.
#[test]
fn one_sgd_step_with_unit_norm_projects_every_kernel_column() {
    let spec = spec(&[7, 5, 3], TANH, LIN, LIN);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(41);
    let x: Vec<f32> = (0..ROWS * 7).map(|_| rng.random::<f32>()).collect();
    let params = spec.glorot_init(41);
    let lr = 0.1f32 as f64;
    let mut net = Network::new(CpuBackend::<f64>::new(), &spec, &params, ROWS, Some(SGD)).unwrap();
    net.set_data(DataSet::Train, &x, ROWS, DataOptions::default())
        .unwrap();
    net.loss_and_gradient(0, ROWS).unwrap();
    let g = net.read_grads().unwrap();
    let mut expected: Vec<f64> = params
        .iter()
        .zip(&g)
        .map(|(&p, g)| p as f64 - lr * g)
        .collect();
    for (slot, wd) in spec.slots().iter().zip(spec.widths.windows(2)) {
        let (d, k) = (wd[0], wd[1]);
        let w = &mut expected[slot.kernel.clone()];
        for j in 0..k {
            let norm = (0..d).map(|r| w[r * k + j].powi(2)).sum::<f64>().sqrt();
            (0..d).for_each(|r| w[r * k + j] /= norm);
        }
    }
    net.set_constraints(constraints(0.0, 0.0, true));
    let identity: Vec<u32> = (0..ROWS as u32).collect();
    net.train_epoch(&identity, ROWS).unwrap();
    let got = net.read_params().unwrap();
    let want: Vec<f32> = expected.iter().map(|&x| x as f32).collect();
    assert_close("params after one unit-norm step", &got, &want, 1e-7, 1e-6);
}

// ------------------------------------------------------------------------- training does what it says

fn digits() -> (Vec<f32>, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let mut d = load_csv(&path, &[ColumnSelector::Name("digit".into())]).unwrap();
    d.values.iter_mut().for_each(|x| *x /= 16.0);
    (d.values, d.rows)
}

fn config(optimizer: Optimizer, epochs: usize, c: Constraints) -> TrainConfig {
    TrainConfig {
        batch_size: 64,
        epochs,
        optimizer,
        shuffle: true,
        seed: 17,
        constraints: c,
    }
}

/// Trains on the digits from Glorot init (seed 5) on the CPU; returns the network.
fn train_digits(spec: &ModelSpec, cfg: &TrainConfig) -> Network<CpuBackend<f32>> {
    let (values, rows) = digits();
    let mut net = Network::new(
        CpuBackend::<f32>::new(),
        spec,
        &spec.glorot_init(5),
        cfg.batch_size,
        Some(cfg.optimizer),
    )
    .unwrap();
    net.set_data(DataSet::Train, &values, rows, DataOptions::default())
        .unwrap();
    net.fit(cfg, |r| {
        assert!(r.loss.is_finite());
        Ok(())
    })
    .unwrap();
    net
}

/// Σ over kernels of ‖WᵀW − I‖_F.
fn total_orthogonality_residual(spec: &ModelSpec, params: &[f32]) -> f64 {
    spec.slots()
        .iter()
        .zip(spec.widths.windows(2))
        .map(|(s, w)| orthogonality_residual(&to_f64(&params[s.kernel.clone()]), w[0], w[1]))
        .sum()
}

/// (Σ_{i≠j} Cov_ij² of the codes of the whole data set, reconstruction MSE).
fn code_covariance_and_mse<B: Backend>(net: &mut Network<B>) -> (f64, f64) {
    let k = net.spec().code_width();
    let mut codes = Vec::new();
    let mse = net
        .evaluate(
            |_, _, c, _| codes.extend(c.iter().map(|x| x.to_f64())),
            true,
            false,
        )
        .unwrap();
    let n = codes.len() / k;
    (offdiagonal_covariance_sq(&codes, n, k), mse)
}

#[test]
fn orthogonality_makes_the_kernels_orthonormal() {
    let spec = spec(&[64, 8], LIN, LIN, LIN);
    let adam = Optimizer::from_flags("adam", Some(1e-3), 0.0).unwrap();
    let residual = |lambda: f32| {
        let mut net = train_digits(&spec, &config(adam, 4, constraints(lambda, 0.0, false)));
        let params = net.read_params().unwrap();
        let r = total_orthogonality_residual(&spec, &params);
        let mse = net.evaluate(|_, _, _, _| {}, false, false).unwrap();
        eprintln!("--orthogonality {lambda}: ‖WᵀW − I‖_F = {r:.4}, mse {mse:.5}");
        (r, mse)
    };
    let init = total_orthogonality_residual(&spec, &spec.glorot_init(5));
    let (without, mse_without) = residual(0.0);
    let (with, mse_with) = residual(1.0);
    eprintln!("at init ‖WᵀW − I‖_F = {init:.4}");
    assert!(
        with < 0.25 * without,
        "‖WᵀW − I‖_F with the penalty {with} is not clearly below {without} without"
    );
    assert!(with < 0.05, "‖WᵀW − I‖_F = {with} with --orthogonality 1");
    // Only the penalty's formula is asserted: in 4 epochs a large λ reaches WᵀW = I long before the MSE
    // comes down (the MSE's own optimum is orthonormal too, but it is approached slowly).
    assert!(mse_with.is_finite() && mse_without.is_finite());
}

#[test]
fn uncorrelated_decorrelates_the_codes() {
    let spec = spec(&[64, 4], LIN, LIN, LIN);
    let adam = Optimizer::from_flags("adam", Some(3e-3), 0.0).unwrap();
    let run = |lambda: f32| {
        let mut net = train_digits(&spec, &config(adam, 20, constraints(0.0, lambda, false)));
        let (cov, mse) = code_covariance_and_mse(&mut net);
        eprintln!("--uncorrelated {lambda}: Σ_(i≠j) Cov² = {cov:.3e}, mse {mse:.5}");
        (cov, mse)
    };
    let (without, mse_without) = run(0.0);
    let (with, mse_with) = run(10.0);
    assert!(
        with < 0.05 * without,
        "Σ_(i≠j) Cov² of the codes with the penalty {with:e} is not clearly below {without:e} without"
    );
    // Only the penalty's formula is asserted: shrinking the codes is a quick way down for it, so the MSE
    // is higher after 20 epochs (printed above).
    assert!(mse_with.is_finite() && mse_without.is_finite());
}

#[test]
fn unit_norm_keeps_every_kernel_column_at_norm_one() {
    let spec = spec(&[64, 32, 8], TANH, LIN, LIN);
    let adam = Optimizer::from_flags("adam", Some(3e-3), 0.0).unwrap();
    for unit_norm in [true, false] {
        let mut net = train_digits(&spec, &config(adam, 3, constraints(0.0, 0.0, unit_norm)));
        let params = net.read_params().unwrap();
        let mut worst = 0.0f64;
        for (s, w) in spec.slots().iter().zip(spec.widths.windows(2)) {
            for norm in column_norms(&params[s.kernel.clone()], w[0], w[1]) {
                worst = worst.max((norm - 1.0).abs());
            }
        }
        eprintln!("--unit-norm {unit_norm}: max |‖W[:, j]‖ − 1| = {worst:.2e}");
        if unit_norm {
            assert!(worst <= 1e-5, "a column norm is off 1 by {worst:e}");
        } else {
            assert!(
                worst > 0.1,
                "without --unit-norm the columns are at norm 1 anyway ({worst:e})"
            );
        }
    }
}

#[test]
fn penalties_are_not_part_of_the_reported_loss() {
    let spec = spec(&[6, 3], LIN, LIN, LIN);
    let data: Vec<f32> = (0..ROWS * 6).map(|i| (i as f32 * 0.61).cos()).collect();
    let params = spec.glorot_init(3);
    let mut net = Network::new(CpuBackend::<f64>::new(), &spec, &params, ROWS, Some(SGD)).unwrap();
    net.set_data(DataSet::Train, &data, ROWS, DataOptions::default())
        .unwrap();
    let plain = net.loss_and_gradient(0, ROWS).unwrap();
    net.set_constraints(constraints(2.0, 2.0, true));
    assert_eq!(net.loss_and_gradient(0, ROWS).unwrap(), plain);
    assert!(net.penalty(0, ROWS).unwrap() > 0.1);
}

// ------------------------------------------------------------------------- the CPU twins of the new ops

fn cpu_region(b: &mut CpuBackend<f32>, data: &[f32]) -> Region {
    let r = Region::whole(b.alloc(data.len()).unwrap(), data.len());
    b.upload(r, data).unwrap();
    r
}

fn cpu_read(b: &mut CpuBackend<f32>, r: Region) -> Vec<f32> {
    let mut out = vec![0.0; r.len];
    b.download(r, &mut out).unwrap();
    out
}

#[test]
fn cpu_constraint_ops_on_small_cases() {
    let mut b = CpuBackend::<f32>::new();
    // diagonal_affine on a 3×3: the diagonal only.
    let m = cpu_region(&mut b, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    b.diagonal_affine(m, 3, 1.0, -1.0).unwrap();
    assert_eq!(
        cpu_read(&mut b, m),
        [0.0, 2.0, 3.0, 4.0, 4.0, 6.0, 7.0, 8.0, 8.0]
    );
    b.diagonal_affine(m, 3, 0.0, 0.0).unwrap();
    assert_eq!(
        cpu_read(&mut b, m),
        [0.0, 2.0, 3.0, 4.0, 0.0, 6.0, 7.0, 8.0, 0.0]
    );
    // sum_squares into a one-element region (overwritten), then div_by_sqrt by it.
    let x = cpu_region(&mut b, &[3.0, 0.0, -4.0]);
    let s = cpu_region(&mut b, &[123.0]);
    b.sum_squares(x, s).unwrap();
    assert_eq!(cpu_read(&mut b, s), [25.0]);
    b.div_by_sqrt(x, s).unwrap();
    assert_eq!(cpu_read(&mut b, x), [0.6, 0.0, -0.8]);
    let zeros = cpu_region(&mut b, &[0.0, 0.0]);
    b.sum_squares(zeros, s).unwrap();
    b.div_by_sqrt(zeros, s).unwrap();
    assert_eq!(cpu_read(&mut b, zeros), [0.0, 0.0]);
    let empty = cpu_region(&mut b, &[]);
    b.sum_squares(empty, s).unwrap();
    assert_eq!(cpu_read(&mut b, s), [0.0]);
    // normalize_columns of a 2×3 with a zero column.
    let m = cpu_region(&mut b, &[3.0, 0.0, 1.0, 4.0, 0.0, -1.0]);
    b.normalize_columns(m, 3).unwrap();
    let h = 0.5f32.sqrt();
    assert_close(
        "normalize_columns",
        &cpu_read(&mut b, m),
        &[0.6, 0.0, h, 0.8, 0.0, -h],
        1e-7,
        1e-7,
    );
    // center_columns of a 3×2.
    let m = cpu_region(&mut b, &[1.0, 10.0, 2.0, 20.0, 6.0, 0.0]);
    let out = cpu_region(&mut b, &[f32::NAN; 6]);
    b.center_columns(m, 2, out).unwrap();
    assert_eq!(cpu_read(&mut b, out), [-2.0, 0.0, -1.0, 10.0, 3.0, -10.0]);
}

// ------------------------------------------------------------------------------------- GPU against CPU

/// A whole run with all three constraints on: the GPU's parameters, epoch losses and penalty against the
/// CPU's. Same tolerances as tests/gpu_training.rs (rounding drift only).
#[test]
fn all_constraints_gpu_training_matches_cpu() {
    let test = "all_constraints_gpu_training_matches_cpu";
    let Some(gpu) = gpu_backend(test) else {
        return;
    };
    let spec = spec(&[64, 32, 8], TANH, LIN, LIN);
    let adam = Optimizer::from_flags("adam", Some(3e-3), 0.0).unwrap();
    let mut cfg = config(adam, 3, constraints(0.05, 0.5, true));
    cfg.batch_size = 100; // 1797 = 17·100 + 97: the last, smaller batch too
    let (values, rows) = digits();
    fn run<B: Backend>(
        backend: B,
        spec: &ModelSpec,
        cfg: &TrainConfig,
        values: &[f32],
        rows: usize,
    ) -> (Vec<f32>, Vec<f64>, f64) {
        let mut net = Network::new(
            backend,
            spec,
            &spec.glorot_init(5),
            cfg.batch_size,
            Some(cfg.optimizer),
        )
        .unwrap();
        net.set_data(DataSet::Train, values, rows, DataOptions::default())
            .unwrap();
        let losses = net
            .fit(cfg, |_| Ok(()))
            .unwrap()
            .iter()
            .map(|r| r.loss)
            .collect();
        let penalty = net.penalty(0, cfg.batch_size).unwrap();
        (net.read_params().unwrap(), losses, penalty)
    }
    let (cpu_params, cpu_losses, cpu_penalty) =
        run(CpuBackend::<f32>::new(), &spec, &cfg, &values, rows);
    let (gpu_params, gpu_losses, gpu_penalty) = run(gpu, &spec, &cfg, &values, rows);
    assert_close(
        &format!("{test}: parameters"),
        &gpu_params,
        &cpu_params,
        1e-4,
        1e-3,
    );
    for (e, (g, c)) in gpu_losses.iter().zip(&cpu_losses).enumerate() {
        assert!(
            (g - c).abs() <= 1e-6 + 1e-4 * c,
            "{test}: epoch {} loss gpu {g} cpu {c}",
            e + 1
        );
    }
    assert!(
        (gpu_penalty - cpu_penalty).abs() <= 1e-5 + 1e-3 * cpu_penalty,
        "{test}: penalty gpu {gpu_penalty} cpu {cpu_penalty}"
    );
    // The run really had the constraints on: unit columns.
    for (s, w) in spec.slots().iter().zip(spec.widths.windows(2)) {
        for norm in column_norms(&gpu_params[s.kernel.clone()], w[0], w[1]) {
            assert!(
                (norm - 1.0).abs() <= 1e-5,
                "{test}: a GPU column norm is {norm}"
            );
        }
    }
}
