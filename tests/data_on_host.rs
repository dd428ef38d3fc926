//! `--data-on host`: a data set the GPU cannot hold stays in host memory, and each batch is gathered there
//! and copied up. Training on it must equal, bit for bit, training on the same set kept on the device (the
//! same rows in the same order; a 16-bit `--data-dtype` rounds them the same way), validation included;
//! `auto` must keep a set on the device exactly when it fits in the device's free memory.

mod common;

use common::gpu_backend;
use common::recorder::Recorder;
use rand::{RngExt, SeedableRng};
use std::process::Command;
use tiedae::activation::Activation;
use tiedae::backend::{Backend, CpuBackend};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{DataOptions, DataSet, DataType, EpochReport, Network, Placement, TrainConfig};

const ROWS: usize = 157;
const VAL_ROWS: usize = 40;
const COLS: usize = 9;

fn values(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rows * COLS)
        .map(|_| rng.random_range(-3.0f32..3.0))
        .collect()
}

/// COLS→5→2, tanh hidden, linear code and output.
fn spec() -> ModelSpec {
    ModelSpec::new(
        vec![COLS, 5, 2],
        Activation::Tanh,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap()
}

/// Each epoch's training and validation loss, as bits.
type EpochLosses = Vec<(u64, Option<u64>)>;

/// Three epochs with a validation set, both placed by `placement`: the parameters (as bits), the epoch
/// losses and where the sets went.
fn train<B: Backend>(
    backend: B,
    dtype: DataType,
    placement: Placement,
) -> (Vec<u32>, EpochLosses, Placement) {
    let spec = spec();
    let optimizer = Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap();
    let mut net = Network::new(backend, &spec, &spec.glorot_init(2), 16, Some(optimizer)).unwrap();
    let placed = net
        .set_data(
            DataSet::Train,
            &values(ROWS, 4),
            ROWS,
            DataOptions::new(dtype, placement),
        )
        .unwrap();
    let val_placed = net
        .set_data(
            DataSet::Validation,
            &values(VAL_ROWS, 5),
            VAL_ROWS,
            DataOptions::new(dtype, placement),
        )
        .unwrap();
    assert_eq!(placed, val_placed);
    assert_eq!(net.data_placement(), Some(placed));
    let cfg = TrainConfig {
        batch_size: 16,
        epochs: 3,
        optimizer,
        shuffle: true,
        seed: 8,
        constraints: Default::default(),
    };
    let reports: Vec<EpochReport> = net.fit(&cfg, |_| Ok(())).unwrap();
    let params = net
        .read_params()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let losses = reports
        .iter()
        .map(|r| (r.loss.to_bits(), r.val_loss.map(f64::to_bits)))
        .collect();
    (params, losses, placed)
}

fn host_equals_device<B: Backend>(backend: impl Fn() -> B) {
    for dtype in [DataType::F32, DataType::F16, DataType::Bf16] {
        let (dev_params, dev_losses, dev) = train(backend(), dtype, Placement::Device);
        let (host_params, host_losses, host) = train(backend(), dtype, Placement::Host);
        assert_eq!((dev, host), (Placement::Device, Placement::Host));
        assert!(
            dev_losses.iter().all(|(_, v)| v.is_some()),
            "validation ran"
        );
        assert_eq!(host_losses, dev_losses, "{dtype:?}: epoch losses");
        assert_eq!(host_params, dev_params, "{dtype:?}: parameters");
    }
}

#[test]
fn host_data_trains_exactly_like_device_data_on_cpu() {
    host_equals_device(CpuBackend::<f32>::new);
}

#[test]
fn host_data_trains_exactly_like_device_data_on_gpu() {
    let test = "host_data_trains_exactly_like_device_data_on_gpu";
    if gpu_backend(test).is_none() {
        return;
    }
    host_equals_device(|| gpu_backend(test).expect("the GPU of the first call"));
}

/// A set on the host takes no backend memory for its values or its order.
#[test]
fn host_data_takes_no_backend_memory_for_its_rows() {
    let spec = spec();
    let used = |placement| {
        let mut net = Network::new(
            CpuBackend::<f32>::new(),
            &spec,
            &spec.glorot_init(2),
            16,
            None,
        )
        .unwrap();
        let before = net.backend.allocated_bytes();
        net.set_data(
            DataSet::Train,
            &values(ROWS, 4),
            ROWS,
            DataOptions::new(DataType::F32, placement),
        )
        .unwrap();
        net.backend.allocated_bytes() - before
    };
    // Per step: one loss slot and one Adam alpha slot, both sets alike.
    let slots = 2 * 4 * ROWS.div_ceil(16);
    assert_eq!(used(Placement::Host), slots);
    assert_eq!(used(Placement::Device), slots + 4 * ROWS * COLS + 4 * ROWS);
}

/// `auto`: the device while the set, its order and 256 MiB of headroom fit in the free memory; the host
/// beyond that, and the device where the backend reports no limit (the CPU).
#[test]
fn auto_keeps_a_set_on_the_device_only_when_it_fits() {
    let spec = spec();
    let need = 4 * ROWS * COLS + 4 * ROWS + (256 << 20);
    for (free, want) in [
        (None, Placement::Device),
        (Some(need), Placement::Device),
        (Some(need - 1), Placement::Host),
        (Some(0), Placement::Host),
    ] {
        let mut backend = Recorder::new();
        backend.free_memory = free;
        let mut net = Network::new(backend, &spec, &spec.glorot_init(2), 16, None).unwrap();
        let placed = net
            .set_data(
                DataSet::Train,
                &values(ROWS, 4),
                ROWS,
                DataOptions::new(DataType::F32, Placement::Auto),
            )
            .unwrap();
        assert_eq!(placed, want, "free memory {free:?}");
        // f16 halves the set: it fits where f32 did not.
        if free == Some(need - 1) {
            let placed = net
                .set_data(
                    DataSet::Train,
                    &values(ROWS, 4),
                    ROWS,
                    DataOptions::new(DataType::F16, Placement::Auto),
                )
                .unwrap();
            assert_eq!(placed, Placement::Device, "f16 in {free:?}");
        }
    }
}

/// Graphs are not recorded for a set on the host (each step copies a batch up); the run still trains, op
/// by op, with the same bits.
#[test]
fn graphs_step_aside_for_host_data() {
    let mut with_graphs = Recorder::new();
    with_graphs.free_memory = Some(0);
    let run = |backend: Recorder, graphs: bool| {
        let spec = spec();
        let optimizer = Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap();
        let mut net =
            Network::new(backend, &spec, &spec.glorot_init(2), 4, Some(optimizer)).unwrap();
        net.set_graphs(graphs);
        net.set_data(
            DataSet::Train,
            &values(ROWS, 4),
            ROWS,
            DataOptions::new(DataType::F32, Placement::Host),
        )
        .unwrap();
        let order: Vec<u32> = (0..ROWS as u32).rev().collect();
        for _ in 0..3 {
            net.train_epoch(&order, 4).unwrap();
        }
        assert!(net.graph_failures().is_empty());
        let params: Vec<u32> = net
            .read_params()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        (params, net.backend.ops_replayed)
    };
    let (graph_params, replayed) = run(with_graphs, true);
    let (plain_params, _) = run(Recorder::new(), false);
    assert_eq!(replayed, 0, "nothing was recorded");
    assert_eq!(graph_params, plain_params);
}

fn tiedae(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .args(args)
        .output()
        .expect("run tiedae")
}

/// Through the binary: `--data-on host` writes the same weights as `--data-on device`, and a bad value is
/// one line naming the flag.
#[test]
fn cli_data_on_host_writes_the_same_model() {
    let dir = std::env::temp_dir().join(format!("tiedae-data-on-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv");
    let mut models = Vec::new();
    for on in ["device", "host"] {
        let out = dir.join(format!("{on}.safetensors"));
        let o = tiedae(&[
            "train",
            "--data",
            data,
            "--ignore-columns",
            "digit",
            "--epochs",
            "2",
            "--val-split",
            "0.1",
            "--device",
            "cpu",
            "--data-on",
            on,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let eval = tiedae(&[
            "eval",
            "--json",
            "--model",
            out.to_str().unwrap(),
            "--data",
            data,
            "--device",
            "cpu",
        ]);
        assert!(eval.status.success());
        models.push(String::from_utf8_lossy(&eval.stdout).to_string());
    }
    let mse = |s: &str| {
        let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v["mse"].as_f64().unwrap()
    };
    assert_eq!(mse(&models[0]).to_bits(), mse(&models[1]).to_bits());
    let bad = tiedae(&[
        "train",
        "--data",
        data,
        "--out",
        "x.safetensors",
        "--data-on",
        "nowhere",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--data-on"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The batch copies of a set kept on the host keep `Backend::prefetch`'s contract: no copy goes into a buffer
/// that an op queued since the previous copy uses (the `Recorder` checks every copy and panics otherwise),
/// while every batch after the first of a `train_steps` call is copied during the step before it. Training,
/// validation, a stop in the middle of an epoch and the restart from there, against the same run with the
/// set on the device.
#[test]
fn host_batches_are_copied_ahead_within_the_prefetch_contract() {
    let optimizer = Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap();
    let run = |placement: Placement| {
        let mut net = Network::new(
            Recorder::new(),
            &spec(),
            &spec().glorot_init(2),
            16,
            Some(optimizer),
        )
        .unwrap();
        net.set_data(
            DataSet::Train,
            &values(ROWS, 4),
            ROWS,
            DataOptions::new(DataType::F32, placement),
        )
        .unwrap();
        net.set_data(
            DataSet::Validation,
            &values(VAL_ROWS, 5),
            VAL_ROWS,
            DataOptions::new(DataType::F32, placement),
        )
        .unwrap();
        let steps = ROWS.div_ceil(16);
        let mut val = Vec::new();
        for epoch in 1..=2 {
            let order = tiedae::train::epoch_order(ROWS, 3, epoch, true);
            let stop_at = (epoch == 2).then_some(net.steps_done() + 4);
            let first = net
                .train_steps(
                    &order,
                    16,
                    0,
                    tiedae::train::Stop {
                        flag: None,
                        at_step: stop_at,
                    },
                )
                .unwrap();
            if !first.finished {
                // Validation in between, as a checkpoint would, then the rest of the epoch.
                val.push(validation_mse(&mut net));
                net.train_steps(&order, 16, first.next_step, Default::default())
                    .unwrap();
            }
            val.push(validation_mse(&mut net));
        }
        let params: Vec<u32> = net
            .read_params()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        (params, val, net.backend.prefetches, steps)
    };
    let (host_params, host_val, prefetches, steps) = run(Placement::Host);
    let (dev_params, dev_val, none, _) = run(Placement::Device);
    assert_eq!(none, 0, "a set on the device is never copied up");
    // Two epochs of training batches, the first epoch's split in two, and the validation batches (one each
    // of the three evaluations, 40 rows in a batch of 16 is 3).
    assert_eq!(prefetches, 2 * steps + 3 * VAL_ROWS.div_ceil(16));
    assert_eq!(host_val, dev_val);
    assert_eq!(host_params, dev_params);
}

fn validation_mse(net: &mut Network<Recorder>) -> u64 {
    net.evaluate_set(DataSet::Validation, |_, _, _, _| {}, false, false)
        .unwrap()
        .to_bits()
}

/// The `Recorder`'s contract check can fail: a copy into a buffer an op used since the last copy panics.
#[test]
#[should_panic(expected = "which an op queued since the last prefetch uses")]
fn a_prefetch_into_a_buffer_in_use_is_caught() {
    let mut r = Recorder::new();
    let (a, b) = (
        tiedae::backend::Region::whole(r.alloc(4).unwrap(), 4),
        tiedae::backend::Region::whole(r.alloc(4).unwrap(), 4),
    );
    r.prefetch(a, &[1.0; 4]).unwrap();
    r.col_sum(a, 2, b.prefix(2)).unwrap();
    r.prefetch(a, &[2.0; 4]).unwrap();
}
