//! The analytic gradient of the tied model against central finite differences, all in f64 on the CPU
//! backend (the very code path that trains, instantiated with f64). Because the decoder reads the encoder's
//! kernel, the finite difference of W_i measures the derivative through BOTH uses at once: agreement shows
//! that the one gradient slot of W_i holds the sum of the encoder's and the decoder's contributions.

mod common;

use common::finite_difference::check_gradient;
use rand::{RngExt, SeedableRng};
use tiedae::activation::Activation;
use tiedae::backend::CpuBackend;
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{DataOptions, DataSet, Network};

const ROWS: usize = 5;

fn check(widths: &[usize], hidden: Activation, code: Activation, output: Activation, seed: u64) {
    let spec = ModelSpec::new(widths.to_vec(), hidden, code, output).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..ROWS * widths[0]).map(|_| rng.random::<f32>()).collect();
    // Non-zero biases so every activation is exercised away from its symmetric point.
    let params: Vec<f64> = (0..spec.param_count())
        .map(|_| rng.random_range(-0.8..0.8))
        .collect();
    let params32: Vec<f32> = params.iter().map(|&x| x as f32).collect();
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
    };
    let mut net =
        Network::new(CpuBackend::<f64>::new(), &spec, &params32, ROWS, Some(opt)).unwrap();
    net.set_data(DataSet::Train, &data, ROWS, DataOptions::default())
        .unwrap();
    net.write_params(&params).unwrap();
    net.loss_and_gradient(0, ROWS).unwrap();
    let analytic = net.read_grads().unwrap();
    let what = format!("widths {widths:?} {hidden}/{code}/{output}");
    let worst = check_gradient(&what, "d loss", &params, &analytic, |p| {
        net.write_params(p).unwrap();
        net.loss_and_gradient(0, ROWS).unwrap()
    });
    // A gradient of all zeros would pass trivially: make sure it is not.
    assert!(
        analytic.iter().any(|g| g.abs() > 1e-4),
        "gradient is all but zero"
    );
    eprintln!("{what}: worst |analytic − numeric| {worst:e}");
}

#[test]
fn every_activation_depth_1() {
    for (s, act) in Activation::ALL.into_iter().enumerate() {
        // The activation on the code and on the output (depth 1 has no hidden layer).
        check(&[6, 3], act, act, act, s as u64);
        check(&[6, 3], act, Activation::Linear, act, 10 + s as u64);
        check(&[6, 3], act, act, Activation::Linear, 20 + s as u64);
    }
}

#[test]
fn every_activation_depth_3() {
    for (s, act) in Activation::ALL.into_iter().enumerate() {
        check(&[7, 5, 4, 2], act, act, act, 30 + s as u64);
        check(
            &[7, 5, 4, 2],
            act,
            Activation::Linear,
            Activation::Sigmoid,
            40 + s as u64,
        );
        check(
            &[7, 5, 4, 2],
            act,
            Activation::Tanh,
            Activation::Linear,
            50 + s as u64,
        );
    }
}

#[test]
fn kernel_gradient_is_the_sum_of_both_uses() {
    // With a linear 1-layer model the two contributions have a closed form:
    //   encoder use: xᵀ·(dL/dh) ; decoder use: (dL/dx̂)ᵀ·h.
    // Check that the gradient slot equals their sum and differs from either alone.
    let spec = ModelSpec::new(
        vec![4, 2],
        Activation::Linear,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let x: Vec<f32> = (0..ROWS * 4).map(|_| rng.random::<f32>()).collect();
    let params: Vec<f32> = (0..spec.param_count())
        .map(|_| rng.random_range(-0.5f32..0.5))
        .collect();
    let opt = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
    };
    let mut net = Network::new(CpuBackend::<f64>::new(), &spec, &params, ROWS, Some(opt)).unwrap();
    net.set_data(DataSet::Train, &x, ROWS, DataOptions::default())
        .unwrap();
    net.loss_and_gradient(0, ROWS).unwrap();
    let grads = net.read_grads().unwrap();
    let s = &spec.slots()[0];
    let w = |i: usize, j: usize| params[s.kernel.start + i * 2 + j] as f64;
    let b = |j: usize| params[s.enc_bias.start + j] as f64;
    let c = |i: usize| params[s.dec_bias.start + i] as f64;
    let n = (ROWS * 4) as f64;
    let mut enc = [[0.0f64; 2]; 4];
    let mut dec = [[0.0f64; 2]; 4];
    for r in 0..ROWS {
        let xr: Vec<f64> = (0..4).map(|i| x[r * 4 + i] as f64).collect();
        let h: Vec<f64> = (0..2)
            .map(|j| (0..4).map(|i| xr[i] * w(i, j)).sum::<f64>() + b(j))
            .collect();
        let xhat: Vec<f64> = (0..4)
            .map(|i| (0..2).map(|j| h[j] * w(i, j)).sum::<f64>() + c(i))
            .collect();
        let dxhat: Vec<f64> = (0..4).map(|i| 2.0 * (xhat[i] - xr[i]) / n).collect();
        let dh: Vec<f64> = (0..2)
            .map(|j| (0..4).map(|i| dxhat[i] * w(i, j)).sum())
            .collect();
        for i in 0..4 {
            for j in 0..2 {
                enc[i][j] += xr[i] * dh[j];
                dec[i][j] += dxhat[i] * h[j];
            }
        }
    }
    for i in 0..4 {
        for j in 0..2 {
            let g = grads[s.kernel.start + i * 2 + j];
            let sum = enc[i][j] + dec[i][j];
            assert!(
                (g - sum).abs() < 1e-12,
                "dW[{i}][{j}] = {g}, encoder + decoder = {sum}"
            );
        }
    }
    let differs = |part: &[[f64; 2]; 4]| {
        (0..8).any(|k| (grads[s.kernel.start + k] - part[k / 2][k % 2]).abs() > 1e-6)
    };
    assert!(
        differs(&enc) && differs(&dec),
        "one use alone already explains the gradient"
    );
}

/// The check itself can fail: a gradient off by 1% is caught, the right one passes.
#[test]
#[should_panic(expected = "d loss / d param[1] analytic")]
fn the_finite_difference_check_catches_a_wrong_gradient() {
    let loss = |p: &[f64]| p[0] * p[0] + p[1].sin();
    let params = [0.7, 0.3];
    check_gradient("x² + sin y", "d loss", &params, &[1.4, 0.3f64.cos()], loss);
    check_gradient(
        "x² + sin y",
        "d loss",
        &params,
        &[1.4, 1.01 * 0.3f64.cos()],
        loss,
    );
}
