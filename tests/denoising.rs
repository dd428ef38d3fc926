//! Denoising autoencoders through the training code: the encoder sees the corrupted rows and the loss the
//! clean ones; validation sees clean rows; noise off trains exactly as before; the gradient with noise on
//! passes finite differences; a set kept on the host, recorded graphs and a resumed run draw the same noise
//! as the plain op-by-op run, bit for bit; the GPU trains as the CPU does. The command line's side (flags,
//! model file, summary, encode --all-layers, resume) is tests/denoising_cli.rs.

mod common;

use common::finite_difference::check_gradient;
use common::gpu_backend;
use common::recorder::Recorder;
use rand::{RngExt, SeedableRng};
use tiedae::activation::Activation;
use tiedae::backend::noise::{corrupt_row, key_words};
use tiedae::backend::{Backend, CpuBackend};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{
    DataOptions, DataSet, DataType, EpochReport, FitEnd, FitOptions, FitState, Network, Noise,
    Placement, Stop, TrainConfig,
};

const COLS: usize = 9;

fn values(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rows * COLS)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect()
}

fn spec() -> ModelSpec {
    ModelSpec::new(
        vec![COLS, 6, 3],
        Activation::Tanh,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap()
}

fn every_noise() -> Noise {
    Noise {
        swap: 0.2,
        mask: 0.1,
        gaussian: 0.1,
    }
}

fn adam() -> Optimizer {
    Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap()
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        batch_size: 16,
        epochs,
        optimizer: adam(),
        shuffle: true,
        seed: 8,
        constraints: Default::default(),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A network on `backend` with `noise` (None: set_noise never called), a training set of `rows` rows and a
/// validation set of 40, both placed as `options` say.
fn network<B: Backend>(
    backend: B,
    noise: Option<Noise>,
    rows: usize,
    options: DataOptions,
    params: &[f32],
) -> Network<B> {
    let mut net = Network::new(backend, &spec(), params, 16, Some(adam())).unwrap();
    if let Some(n) = noise {
        net.set_noise(n).unwrap();
    }
    net.set_data(DataSet::Train, &values(rows, 4), rows, options)
        .unwrap();
    net.set_data(DataSet::Validation, &values(40, 5), 40, options)
        .unwrap();
    net
}

/// Each epoch's training loss and validation loss (as bits; an epoch's time is not compared).
type Losses = Vec<(u64, Option<u64>)>;

/// The parameters (as bits) and each epoch's losses after `fit`.
fn fit<B: Backend>(net: &mut Network<B>, epochs: usize) -> (Vec<u32>, Losses) {
    let reports: Vec<EpochReport> = net.fit(&config(epochs), |_| Ok(())).unwrap();
    let losses = reports
        .iter()
        .map(|r| (r.loss.to_bits(), r.val_loss.map(f64::to_bits)))
        .collect();
    (bits(&net.read_params().unwrap()), losses)
}

#[test]
fn noise_off_trains_exactly_as_without_it() {
    let init = spec().glorot_init(2);
    let (plain, plain_reports) = fit(
        &mut network(
            CpuBackend::<f32>::new(),
            None,
            157,
            DataOptions::default(),
            &init,
        ),
        3,
    );
    let off = Some(Noise::default());
    let (with_off, off_reports) = fit(
        &mut network(
            CpuBackend::<f32>::new(),
            off,
            157,
            DataOptions::default(),
            &init,
        ),
        3,
    );
    assert_eq!(plain, with_off);
    assert_eq!(plain_reports, off_reports);
    // And noise on does change the run.
    let on = Some(every_noise());
    let (noisy, _) = fit(
        &mut network(
            CpuBackend::<f32>::new(),
            on,
            157,
            DataOptions::default(),
            &init,
        ),
        3,
    );
    assert_ne!(plain, noisy);
}

/// The loss of a noisy step is the MSE between the reconstruction of the CORRUPTED rows and the CLEAN rows:
/// computed here with a plain network fed the rows corrupted on the host (`corrupt_row`, the op's own
/// function) and compared with the clean ones.
#[test]
fn the_encoder_sees_corrupted_rows_and_the_loss_the_clean_ones() {
    let rows = 16;
    let clean = values(rows, 4);
    let params = spec().glorot_init(6);
    let mut noisy = network(
        CpuBackend::<f32>::new(),
        Some(every_noise()),
        rows,
        DataOptions::default(),
        &params,
    );
    // The set's order is file order until an epoch is ordered.
    noisy.set_noise_key(8, 3).unwrap();
    let loss = noisy.loss_and_gradient(0, rows).unwrap();
    // The same rows corrupted on the host.
    let (key, p) = (key_words(8, 3), every_noise().params());
    let mut corrupted = vec![0.0f32; clean.len()];
    for r in 0..rows {
        corrupt_row(
            &clean[r * COLS..(r + 1) * COLS],
            &mut corrupted[r * COLS..(r + 1) * COLS],
            r as u32,
            &key,
            &p,
            rows as u32,
            |d, c| clean[d as usize * COLS + c],
            &[0.0; COLS],
        );
    }
    assert_ne!(corrupted, clean);
    let mut plain = Network::new(CpuBackend::<f32>::new(), &spec(), &params, rows, None).unwrap();
    plain
        .set_data(DataSet::Train, &corrupted, rows, DataOptions::default())
        .unwrap();
    let mut recon = Vec::new();
    let against_corrupted = plain
        .evaluate(|_, _, _, r| recon.extend_from_slice(r), false, true)
        .unwrap();
    let against_clean = recon
        .iter()
        .zip(&clean)
        .map(|(r, x)| ((r - x) as f64).powi(2))
        .sum::<f64>()
        / clean.len() as f64;
    assert!(
        (loss - against_clean).abs() <= 1e-6 * against_clean,
        "step loss {loss} vs MSE(recon of corrupted, clean) {against_clean}"
    );
    assert!(
        (loss - against_corrupted).abs() > 1e-3 * against_clean,
        "the loss compares with the corrupted rows ({against_corrupted})"
    );
}

/// With noise on, the validation loss is the plain MSE of the clean validation rows.
#[test]
fn validation_sees_clean_rows() {
    let init = spec().glorot_init(2);
    let mut net = network(
        CpuBackend::<f32>::new(),
        Some(every_noise()),
        157,
        DataOptions::default(),
        &init,
    );
    let (_, losses) = fit(&mut net, 2);
    let val = f64::from_bits(losses.last().unwrap().1.unwrap());
    let params = net.read_params().unwrap();
    let mut plain = Network::new(CpuBackend::<f32>::new(), &spec(), &params, 16, None).unwrap();
    plain
        .set_data(DataSet::Train, &values(40, 5), 40, DataOptions::default())
        .unwrap();
    let mse = plain.evaluate(|_, _, _, _| {}, false, false).unwrap();
    assert_eq!(
        val.to_bits(),
        mse.to_bits(),
        "val_loss {val} vs clean MSE {mse}"
    );
}

/// The gradient of the denoising loss (the corrupted rows in, the clean rows compared), in f64, against
/// central differences: the noise is a function of the key alone, so the loss is a fixed function of the
/// parameters.
#[test]
fn the_denoising_gradient_passes_finite_differences() {
    let rows = 6;
    let spec = ModelSpec::new(
        vec![COLS, 5, 2],
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Linear,
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let params: Vec<f64> = (0..spec.param_count())
        .map(|_| rng.random_range(-0.8..0.8))
        .collect();
    let p32: Vec<f32> = params.iter().map(|&x| x as f32).collect();
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
    };
    let mut net = Network::new(CpuBackend::<f64>::new(), &spec, &p32, rows, Some(sgd)).unwrap();
    net.set_noise(every_noise()).unwrap();
    net.set_data(
        DataSet::Train,
        &values(rows, 9),
        rows,
        DataOptions::default(),
    )
    .unwrap();
    net.write_params(&params).unwrap();
    let with_noise = net.loss_and_gradient(0, rows).unwrap();
    let analytic = net.read_grads().unwrap();
    check_gradient("denoising", "d loss", &params, &analytic, |p| {
        net.write_params(p).unwrap();
        net.loss_and_gradient(0, rows).unwrap()
    });
    net.set_noise(Noise::default()).unwrap();
    net.write_params(&params).unwrap();
    let without = net.loss_and_gradient(0, rows).unwrap();
    assert!(
        (with_noise - without).abs() > 1e-3,
        "the noise changed nothing"
    );
}

/// A set kept on the host is corrupted on the host, with donors from the whole set there: the same bits as
/// the set kept on the backend, for every storage type, validation included. The Recorder checks that the
/// clean-and-corrupted copy of each batch goes into the buffers no running op reads.
#[test]
fn noise_on_a_set_kept_on_the_host_equals_noise_on_the_device() {
    let init = spec().glorot_init(2);
    for dtype in [DataType::F32, DataType::F16, DataType::Bf16] {
        let run = |placement| {
            let options = DataOptions::new(dtype, placement);
            let mut net = network(Recorder::new(), Some(every_noise()), 157, options, &init);
            let out = fit(&mut net, 3);
            assert_eq!(net.data_placement(), Some(placement));
            (out, net.backend.prefetches)
        };
        let ((device, dev_reports), _) = run(Placement::Device);
        let ((host, host_reports), prefetches) = run(Placement::Host);
        assert!(prefetches > 0, "{dtype:?}: the host set was copied up");
        assert_eq!(host_reports, dev_reports, "{dtype:?}: epoch losses");
        assert_eq!(host, device, "{dtype:?}: parameters");
    }
}

/// The mask value of each column (`Network::set_mask_fill`, where imputation will put its values) reaches
/// both the device's op and the host's staging, and changes the run.
#[test]
fn the_mask_values_reach_the_device_and_the_host() {
    let init = spec().glorot_init(2);
    let mask = Noise {
        mask: 0.3,
        ..Default::default()
    };
    let run = |placement, fill: Option<&[f32]>| {
        let options = DataOptions::new(DataType::F32, placement);
        let mut net = network(Recorder::new(), Some(mask), 157, options, &init);
        if let Some(f) = fill {
            net.set_mask_fill(f).unwrap();
        }
        fit(&mut net, 2)
    };
    let fill: Vec<f32> = (0..COLS).map(|c| 0.5 - c as f32 * 0.25).collect();
    let device = run(Placement::Device, Some(&fill));
    assert_eq!(run(Placement::Host, Some(&fill)), device);
    assert_ne!(
        run(Placement::Device, None),
        device,
        "the mask values changed nothing"
    );
}

/// Recorded graphs replay the noise of the epoch they run in (its key is in backend memory): the same bits
/// as the steps run op by op, over epochs with different keys.
#[test]
fn recorded_graphs_replay_each_epochs_noise() {
    let init = spec().glorot_init(2);
    let rows = 1000; // 63 steps of 16: graphs of 32 steps, and a shorter last one
    let run = |graphs: bool| {
        let mut net = network(
            Recorder::new(),
            Some(every_noise()),
            rows,
            DataOptions::default(),
            &init,
        );
        assert_eq!(net.set_graphs(graphs), graphs);
        let out = fit(&mut net, 3);
        assert!(
            net.graph_failures().is_empty(),
            "{:?}",
            net.graph_failures()
        );
        (out, net.backend.ops_replayed)
    };
    let ((launched, launched_reports), _) = run(false);
    let ((replayed, replayed_reports), ops_replayed) = run(true);
    assert!(ops_replayed > 0, "nothing was replayed");
    assert_eq!(replayed_reports, launched_reports);
    assert_eq!(replayed, launched);
}

#[test]
fn a_noisy_run_stopped_mid_epoch_resumes_bit_for_bit() {
    let init = spec().glorot_init(2);
    let cfg = config(4);
    let fresh = |params: &[f32]| {
        network(
            CpuBackend::<f32>::new(),
            Some(every_noise()),
            157,
            DataOptions::default(),
            params,
        )
    };
    let mut straight = fresh(&init);
    straight.fit(&cfg, |_| Ok(())).unwrap();
    // 10 steps an epoch: stop in epoch 2 after its step 3.
    let mut first = fresh(&init);
    let stop = Stop {
        flag: None,
        at_step: Some(13),
    };
    let opts = FitOptions {
        state: FitState::default(),
        patience: None,
        stop,
    };
    let out = first.fit_with(&cfg, opts, |_, _, _| Ok(())).unwrap();
    assert_eq!(out.end, FitEnd::Interrupted);
    assert_eq!((out.state.epochs_done, out.state.step_in_epoch), (1, 3));
    let (params, opt) = (
        first.read_params().unwrap(),
        first.optimizer_state().unwrap(),
    );
    let mut second = fresh(&params);
    second.restore_optimizer_state(&opt).unwrap();
    let opts = FitOptions {
        state: out.state,
        patience: None,
        stop: Stop::default(),
    };
    second.fit_with(&cfg, opts, |_, _, _| Ok(())).unwrap();
    assert_eq!(
        bits(&second.read_params().unwrap()),
        bits(&straight.read_params().unwrap())
    );
}

/// The GPU trains a denoising model as the CPU does (its noise is the CPU's bit for bit, its sums are
/// rounded in another order: the tolerance of tests/gpu_training.rs), with the set on the device or kept on
/// the host; and recorded CUDA graphs replay it bit for bit.
#[test]
fn gpu_denoising_matches_cpu() {
    let test = "gpu_denoising_matches_cpu";
    if gpu_backend(test).is_none() {
        return;
    }
    let init = spec().glorot_init(2);
    for placement in [Placement::Device, Placement::Host] {
        let options = DataOptions::new(DataType::F32, placement);
        let gpu = gpu_backend(test).expect("the GPU of the first call");
        let (g, g_reports) = fit(
            &mut network(gpu, Some(every_noise()), 157, options, &init),
            3,
        );
        let (c, c_reports) = fit(
            &mut network(
                CpuBackend::<f32>::new(),
                Some(every_noise()),
                157,
                options,
                &init,
            ),
            3,
        );
        let floats = |b: &[u32]| b.iter().map(|&x| f32::from_bits(x)).collect::<Vec<_>>();
        common::assert_close(test, &floats(&g), &floats(&c), 1e-4, 1e-3);
        for (a, b) in g_reports.iter().zip(&c_reports) {
            let (a, b) = (f64::from_bits(a.0), f64::from_bits(b.0));
            assert!(
                (a - b).abs() <= 1e-6 + 1e-4 * b,
                "{test}: epoch loss {a} vs {b}"
            );
        }
    }
    // CUDA graphs replay each epoch's noise: the same bits as the kernels launched one by one.
    let run = |graphs: bool| {
        let gpu = gpu_backend(test).expect("the GPU of the first call");
        let mut net = network(
            gpu,
            Some(every_noise()),
            1000,
            DataOptions::default(),
            &init,
        );
        assert_eq!(
            net.set_graphs(graphs),
            graphs,
            "{test}: the GPU records graphs"
        );
        let out = fit(&mut net, 3);
        assert!(
            net.graph_failures().is_empty(),
            "{:?}",
            net.graph_failures()
        );
        out
    };
    assert_eq!(run(true), run(false), "{test}: graphs against launches");
}
