//! Training steps recorded once as a graph and replayed (`Network::set_graphs`) compute the same bits as the
//! same ops called one by one. One test body, two backends:
//! - `Recorder` (tests/common/recorder.rs), a CPU backend that records ops as a CUDA stream in capture mode
//!   does (kept, not run; an op that would copy or wait fails) and replays them. It checks the training loop's side on every machine:
//!   a value that changes from step to step but was passed as an op's argument instead of living in backend
//!   memory would be replayed stale, and the parameters would differ.
//! - the GPU, where the same loop records real CUDA graphs (skipped, and saying so, without one).

mod common;

use common::gpu_backend;
use common::recorder::Recorder;
use std::path::Path;
use tiedae::activation::Activation;
use tiedae::backend::Backend;
use tiedae::data::{load_csv, ColumnSelector};
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{epoch_order, Constraints, DataOptions, DataSet, Network, Stop, GRAPH_STEPS};

fn digits() -> (Vec<f32>, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let mut d = load_csv(&path, &[ColumnSelector::Name("digit".into())]).unwrap();
    d.values.iter_mut().for_each(|x| *x /= 16.0);
    (d.values, d.rows)
}

/// What one training run gives back: the parameters, the loss of each `train_steps` call (as bits) and
/// the step count.
type RunResult = (Vec<f32>, Vec<u64>, u64);

/// Three epochs of 64→32→8 on the digits with `optimizer` and `constraints`, batches of 16 (1797 rows: 113
/// steps an epoch, the last of 5 rows; recorded runs end at 32, 64, 96 and 113), a shuffled order, and in
/// epoch 2 a stop inside the second recorded run (that run's steps then go one by one) and a restart from
/// there. `graphs` turns recording on; the backend must be able to record.
fn three_epochs<B: Backend>(
    test: &str,
    backend: B,
    graphs: bool,
    optimizer: Optimizer,
    constraints: Constraints,
) -> (RunResult, Network<B>) {
    let spec = ModelSpec::new(
        vec![64, 32, 8],
        Activation::Tanh,
        Activation::Linear,
        Activation::Linear,
    )
    .unwrap();
    let (values, rows) = digits();
    let batch = 16;
    let steps = rows.div_ceil(batch);
    assert!(steps % GRAPH_STEPS != 0 && rows % batch != 0);
    let mut net =
        Network::new(backend, &spec, &spec.glorot_init(5), batch, Some(optimizer)).unwrap();
    net.set_data(DataSet::Train, &values, rows, DataOptions::default())
        .unwrap();
    net.set_constraints(constraints);
    assert_eq!(
        net.set_graphs(graphs),
        graphs,
        "{test}: the backend records graphs"
    );
    let mut losses = Vec::new();
    for epoch in 1..=3 {
        let order = epoch_order(rows, 7, epoch, true);
        let stop_at = (epoch == 2).then_some(net.steps_done() + GRAPH_STEPS as u64 + 5);
        let first = net
            .train_steps(
                &order,
                batch,
                0,
                Stop {
                    flag: None,
                    at_step: stop_at,
                },
            )
            .unwrap();
        losses.push(first.loss.to_bits());
        if epoch == 2 {
            assert!(!first.finished, "{test}: epoch 2 stops early");
            assert_eq!(
                first.next_step,
                GRAPH_STEPS + 5,
                "{test}: at the exact step"
            );
            let rest = net
                .train_steps(&order, batch, first.next_step, Stop::default())
                .unwrap();
            assert!(rest.finished);
            losses.push(rest.loss.to_bits());
        }
    }
    assert_eq!(net.steps_done(), 3 * steps as u64);
    assert!(
        net.graph_failures().is_empty(),
        "{test}: {:?}",
        net.graph_failures()
    );
    let params = net.read_params().unwrap();
    ((params, losses, net.steps_done()), net)
}

/// The parameters and losses of a run with graphs equal, bit for bit, those of a run without.
fn assert_same_bits(test: &str, graphs: &RunResult, launched: &RunResult) {
    assert_eq!(graphs.2, launched.2, "{test}: steps");
    assert_eq!(
        graphs.1, launched.1,
        "{test}: losses of each train_steps call"
    );
    let differ = graphs
        .0
        .iter()
        .zip(&launched.0)
        .filter(|(g, l)| g.to_bits() != l.to_bits())
        .count();
    assert_eq!(
        differ,
        0,
        "{test}: {differ} of {} parameters differ from the run without graphs",
        graphs.0.len()
    );
}

fn adam() -> Optimizer {
    Optimizer::from_flags("adam", Some(3e-3), 0.0).unwrap()
}

/// Every constraint on: each adds ops to the step (and scratch buffers, grown by the first step).
fn all_constraints() -> Constraints {
    Constraints {
        orthogonality: 0.01,
        uncorrelated: 0.01,
        unit_norm: true,
    }
}

fn recorded_run_matches(test: &str, optimizer: Optimizer, constraints: Constraints) {
    let (launched, _) = three_epochs(test, Recorder::new(), false, optimizer, constraints);
    let (graphs, net) = three_epochs(test, Recorder::new(), true, optimizer, constraints);
    assert_same_bits(test, &graphs, &launched);
    // Most steps ran as replays: epoch 1 records steps 32..113 (steps 0..32 go one by one, the first of
    // them before any recording), epoch 2 records 0..32 and replays the rest but 32..64, epoch 3 replays all.
    let recorder = &net.backend;
    assert!(
        recorder.ops_replayed > 2 * recorder.ops_called,
        "{test}: {} ops replayed, {} called one by one",
        recorder.ops_replayed,
        recorder.ops_called
    );
}

#[test]
fn recorded_adam_steps_replay_bit_for_bit() {
    recorded_run_matches(
        "recorded_adam_steps_replay_bit_for_bit",
        adam(),
        Constraints::default(),
    );
}

#[test]
fn recorded_steps_with_constraints_replay_bit_for_bit() {
    recorded_run_matches(
        "recorded_steps_with_constraints_replay_bit_for_bit",
        Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
        },
        all_constraints(),
    );
}

/// A replayed value that should change from step to step but does not is caught: when every recorded Adam
/// step reads the alpha of step 0 (as if alpha had been passed as an argument when recording), the
/// parameters differ. This guards the tests above against passing because nothing was replayed.
#[test]
fn a_stale_recorded_value_is_detected() {
    let test = "a_stale_recorded_value_is_detected";
    let (launched, _) = three_epochs(test, Recorder::new(), false, adam(), Constraints::default());
    let mut stale = Recorder::new();
    stale.stale_alpha = true;
    let (graphs, net) = three_epochs(test, stale, true, adam(), Constraints::default());
    assert!(net.backend.ops_replayed > 0);
    let differ = graphs
        .0
        .iter()
        .zip(&launched.0)
        .filter(|(g, l)| g.to_bits() != l.to_bits())
        .count();
    assert!(differ > 0, "{test}: a stale alpha went unnoticed");
}

#[test]
fn gpu_graph_replay_matches_launches_bit_for_bit() {
    let test = "gpu_graph_replay_matches_launches_bit_for_bit";
    if gpu_backend(test).is_none() {
        return;
    }
    let sgd_with_constraints = (
        Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
        },
        all_constraints(),
    );
    for (optimizer, constraints) in [(adam(), Constraints::default()), sgd_with_constraints] {
        // A network owns its backend: two fresh ones per pair of runs.
        let gpu = || gpu_backend(test).expect("the GPU of the first call");
        let (launched, _) = three_epochs(test, gpu(), false, optimizer, constraints);
        let (graphs, _) = three_epochs(test, gpu(), true, optimizer, constraints);
        assert_same_bits(test, &graphs, &launched);
    }
}
