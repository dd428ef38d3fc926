//! An outside reference for the whole trainer: a LINEAR tied autoencoder with k units is optimal exactly
//! when it spans the top-k principal subspace with orthonormal kernel columns, so its reconstruction error
//! must come down to the PCA floor. For the digits (pixels / 16) the floors are in shared/reference/README.md:
//! 0.0624 (k=1), 0.0376 (k=4), 0.0239 (k=8).

use std::path::Path;
use tiedae::activation::Activation;
use tiedae::backend::CpuBackend;
use tiedae::data::{load_csv, ColumnSelector};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{DataOptions, DataSet, Network, TrainConfig};

fn train_linear(k: usize, floor: f64) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let mut data = load_csv(&path, &[ColumnSelector::Name("digit".into())]).unwrap();
    assert_eq!((data.rows, data.cols), (1797, 64));
    data.values.iter_mut().for_each(|x| *x /= 16.0);
    let spec = ModelSpec::new(
        vec![64, k],
        Activation::Linear,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    let mut params = spec.glorot_init(1);
    // A short Adam schedule: 200 epochs at 3e-3, then 300 at 1e-3 to settle.
    for (lr, epochs) in [(3e-3, 200), (1e-3, 300)] {
        let optimizer = Optimizer::from_flags("adam", Some(lr), 0.0).unwrap();
        let mut net = Network::new(
            CpuBackend::<f32>::new(),
            &spec,
            &params,
            32,
            Some(optimizer),
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
            batch_size: 32,
            epochs,
            optimizer,
            shuffle: true,
            constraints: Default::default(),
            seed: 5,
        };
        net.fit(&cfg, |_| Ok(())).unwrap();
        params = net.read_params().unwrap();
    }
    let mut net = Network::new(CpuBackend::<f32>::new(), &spec, &params, 2048, None).unwrap();
    net.set_data(
        DataSet::Train,
        &data.values,
        data.rows,
        DataOptions::default(),
    )
    .unwrap();
    let mse = net.evaluate(|_, _, _, _| {}, false, false).unwrap();
    eprintln!(
        "k={k}: mse {mse:.5} vs PCA floor {floor} ({:+.2}%)",
        100.0 * (mse / floor - 1.0)
    );
    // The floor is given to 3 significant digits: allow that rounding on the low side, 1% above.
    assert!(
        mse <= floor * 1.01,
        "k={k}: mse {mse} is more than 1% above the PCA floor {floor}"
    );
    assert!(
        mse >= floor * 0.995,
        "k={k}: mse {mse} is below the PCA floor {floor}: impossible for a linear model"
    );
    // At the optimum WᵀW = I: the kernel's columns are orthonormal.
    let w = &params[spec.slots()[0].kernel.clone()];
    let mut worst = 0.0f64;
    for a in 0..k {
        for b in 0..k {
            let dot: f64 = (0..64)
                .map(|i| w[i * k + a] as f64 * w[i * k + b] as f64)
                .sum();
            let want = if a == b { 1.0 } else { 0.0 };
            worst = worst.max((dot - want).abs());
        }
    }
    eprintln!("k={k}: max |WᵀW − I| = {worst:.4}");
    assert!(
        worst < 0.05,
        "k={k}: kernel columns are not orthonormal (max |WᵀW − I| = {worst})"
    );
}

#[test]
fn linear_tied_model_reaches_the_pca_floor_k4() {
    train_linear(4, 0.0376);
}

#[test]
fn linear_tied_model_reaches_the_pca_floor_k8() {
    train_linear(8, 0.0239);
}
