//! The workflow around training: checkpoints that resume bit for bit, Ctrl-C, validation and early stopping,
//! metrics and plots, and reconstructions ranked by error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use tiedae::activation::Activation;
use tiedae::backend::CpuBackend;
use tiedae::io;
use tiedae::model::ModelSpec;
use tiedae::optim::Optimizer;
use tiedae::train::{
    epoch_order, DataOptions, DataSet, FitEnd, FitOptions, FitState, Network, Stop, TrainConfig,
};
use tiedae::workflow::train::{train, NewRun, RunSource, TrainObserver, TrainPlan, TrainRequest};
use tiedae::workflow::DeviceChoice;

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiedae-wf-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits.csv")
        .display()
        .to_string()
}

fn tiedae(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tiedae(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const TRAIN: &[&str] = &[
    "--ignore-columns",
    "digit",
    "--normalize",
    "standard",
    "--layers",
    "24,6",
    "--activation",
    "tanh",
    "--batch-size",
    "50",
    "--val-split",
    "0.15",
    "--seed",
    "9",
    "--device",
    "cpu",
];

#[test]
fn resume_after_k_epochs_ends_bit_for_bit_where_the_straight_run_ends() {
    let dir = scratch("resume");
    let (straight, split) = (
        dir.join("straight.safetensors"),
        dir.join("split.safetensors"),
    );
    let data = digits();
    let run = |out: &Path, epochs: &str| {
        let mut args = vec![
            "train",
            "--data",
            &data,
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            epochs,
        ];
        args.extend_from_slice(TRAIN);
        ok(&args);
    };
    run(&straight, "6");
    run(&split, "2");
    let halfway = io::load_model(&split).unwrap();
    assert_eq!(halfway.checkpoint.as_ref().unwrap().state.epochs_done, 2);
    let stdout = ok(&[
        "train",
        "--resume",
        split.to_str().unwrap(),
        "--epochs",
        "6",
        "--device",
        "cpu",
    ]);
    assert!(stdout.contains("resuming after epoch 2"), "{stdout}");
    let (a, b) = (
        io::load_model(&straight).unwrap(),
        io::load_model(&split).unwrap(),
    );
    assert_eq!(
        bits(&a.params),
        bits(&b.params),
        "weights differ after resuming"
    );
    let (ca, cb) = (a.checkpoint.unwrap(), b.checkpoint.unwrap());
    assert_eq!(ca.state.epochs_done, 6);
    assert_eq!(ca.optimizer_state.steps_done, cb.optimizer_state.steps_done);
    for (x, y) in ca
        .optimizer_state
        .buffers
        .iter()
        .zip(&cb.optimizer_state.buffers)
    {
        assert_eq!(bits(x), bits(y), "optimizer state differs after resuming");
    }
    assert_eq!(ca.history, cb.history, "per-epoch losses differ");
    // The run moved: the resumed half did work.
    assert_ne!(bits(&halfway.params), bits(&b.params));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model on random data for the library-level tests.
fn setup(seed: u64) -> (ModelSpec, Vec<f32>, Vec<f32>, usize) {
    use rand::{RngExt, SeedableRng};
    let spec = ModelSpec::new(
        vec![10, 6, 3],
        Activation::Tanh,
        Activation::Linear,
        Activation::Sigmoid,
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let rows = 103;
    let data: Vec<f32> = (0..rows * 10).map(|_| rng.random::<f32>()).collect();
    (spec.clone(), spec.glorot_init(seed), data, rows)
}

/// Each epoch of `fit` reads the rows in `epoch_order`'s order: the seed's shuffle of that epoch (which the
/// backend computes where the set lives on it), or file order without shuffling.
#[test]
fn fit_reads_each_epoch_in_epoch_order() {
    let (spec, init, data, rows) = setup(2);
    let optimizer = Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap();
    let fresh = || {
        let mut net =
            Network::new(CpuBackend::<f32>::new(), &spec, &init, 10, Some(optimizer)).unwrap();
        net.set_data(DataSet::Train, &data, rows, DataOptions::default())
            .unwrap();
        net
    };
    for shuffle in [true, false] {
        let cfg = TrainConfig {
            batch_size: 10,
            epochs: 3,
            optimizer,
            shuffle,
            seed: 5,
            constraints: Default::default(),
        };
        let mut by_fit = fresh();
        by_fit.fit(&cfg, |_| Ok(())).unwrap();
        let mut by_hand = fresh();
        for epoch in 1..=3 {
            by_hand
                .train_epoch(&epoch_order(rows, 5, epoch, shuffle), 10)
                .unwrap();
        }
        assert_eq!(
            bits(&by_fit.read_params().unwrap()),
            bits(&by_hand.read_params().unwrap()),
            "shuffle {shuffle}"
        );
    }
    // Not vacuous: the shuffled epochs differ from file order and from each other.
    let file_order = epoch_order(rows, 5, 1, false);
    assert!(file_order.iter().copied().eq(0..rows as u32));
    assert_ne!(epoch_order(rows, 5, 1, true), file_order);
    assert_ne!(epoch_order(rows, 5, 1, true), epoch_order(rows, 5, 2, true));
}

#[test]
fn a_run_stopped_mid_epoch_resumes_bit_for_bit() {
    let (spec, init, data, rows) = setup(1);
    let optimizer = Optimizer::from_flags("adam", Some(0.01), 0.0).unwrap();
    let cfg = TrainConfig {
        batch_size: 10,
        epochs: 4,
        optimizer,
        shuffle: true,
        seed: 3,
        constraints: Default::default(),
    };
    let fresh = |params: &[f32]| {
        let mut net =
            Network::new(CpuBackend::<f32>::new(), &spec, params, 10, Some(optimizer)).unwrap();
        net.set_data(DataSet::Train, &data, rows, DataOptions::default())
            .unwrap();
        net
    };
    let mut straight = fresh(&init);
    straight.fit(&cfg, |_| Ok(())).unwrap();
    // Stop after 16 steps in all: epoch 2 (11 steps each), step 5.
    let mut first = fresh(&init);
    let opts = FitOptions {
        state: FitState::default(),
        patience: None,
        stop: Stop {
            flag: None,
            at_step: Some(16),
        },
    };
    let out = first.fit_with(&cfg, opts, |_, _, _| Ok(())).unwrap();
    assert_eq!(out.end, FitEnd::Interrupted);
    assert_eq!((out.state.epochs_done, out.state.step_in_epoch), (1, 5));
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
    let end = second.fit_with(&cfg, opts, |_, _, _| Ok(())).unwrap();
    assert_eq!(end.end, FitEnd::Completed);
    assert_eq!(
        bits(&second.read_params().unwrap()),
        bits(&straight.read_params().unwrap())
    );
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    // Train on rows near u, validate on rows near −u: fitting the training set makes validation worse, so the
    // validation loss peaks early and patience must stop the run and restore the best epoch's weights.
    let (spec, init, mut data, rows) = setup(2);
    let mut val = data.clone();
    data.iter_mut().for_each(|x| *x = 0.9 + 0.05 * *x);
    val.iter_mut().for_each(|x| *x = 0.1 - 0.05 * *x);
    let optimizer = Optimizer::from_flags("adam", Some(0.05), 0.0).unwrap();
    let cfg = TrainConfig {
        batch_size: 16,
        epochs: 50,
        optimizer,
        shuffle: true,
        seed: 1,
        constraints: Default::default(),
    };
    let mut net =
        Network::new(CpuBackend::<f32>::new(), &spec, &init, 16, Some(optimizer)).unwrap();
    net.set_data(DataSet::Train, &data, rows, DataOptions::default())
        .unwrap();
    net.set_data(DataSet::Validation, &val, rows, DataOptions::default())
        .unwrap();
    let mut per_epoch = Vec::new();
    let opts = FitOptions {
        state: FitState::default(),
        patience: Some(3),
        stop: Stop::default(),
    };
    let out = net
        .fit_with(&cfg, opts, |r, _, net| {
            per_epoch.push((r.val_loss.unwrap(), net.read_params().unwrap()));
            Ok(())
        })
        .unwrap();
    let FitEnd::EarlyStopped {
        best_epoch,
        best_loss,
    } = out.end
    else {
        panic!("no early stop: {:?}", out.end);
    };
    assert!(out.state.epochs_done < 50);
    assert_eq!(out.state.epochs_done, best_epoch + 3);
    let (min_epoch, (min_loss, best_params)) = per_epoch
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
        .map(|(i, v)| (i + 1, v))
        .unwrap();
    assert_eq!((best_epoch, best_loss), (min_epoch, *min_loss));
    assert_eq!(
        bits(&net.read_params().unwrap()),
        bits(best_params),
        "best weights not restored"
    );
}

#[test]
fn ctrl_c_saves_a_model_that_eval_loads_and_resume_continues() {
    let dir = scratch("sigint");
    let out = dir.join("m.safetensors");
    let data = digits();
    let mut args = vec![
        "train",
        "--data",
        data.as_str(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1000000",
    ];
    args.extend_from_slice(TRAIN);
    let child = Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first checkpoint, then interrupt.
    let t0 = std::time::Instant::now();
    while !out.exists() {
        assert!(t0.elapsed().as_secs() < 60, "no checkpoint after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
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
        stderr.contains("interrupted in epoch") && stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(
        ok(&[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--data",
            &data,
            "--json",
            "--device",
            "cpu",
        ])
        .trim(),
    )
    .unwrap();
    assert!(v["mse"].as_f64().unwrap().is_finite());
    let ck = io::load_model(&out).unwrap().checkpoint.unwrap();
    let next = (ck.state.epochs_done + 1).to_string();
    ok(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--epochs",
        &next,
        "--device",
        "cpu",
    ]);
    let after = io::load_model(&out).unwrap().checkpoint.unwrap();
    assert_eq!(after.state.epochs_done, ck.state.epochs_done + 1);
    assert_eq!(after.state.step_in_epoch, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metrics_lines_and_plot() {
    let dir = scratch("metrics");
    let (out, metrics, plot) = (
        dir.join("m.safetensors"),
        dir.join("m.jsonl"),
        dir.join("loss.png"),
    );
    let data = digits();
    let mut args = vec![
        "train",
        "--data",
        data.as_str(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "4",
        "--metrics",
        metrics.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    args.extend_from_slice(TRAIN);
    let stdout = ok(&args);
    assert_eq!(stdout.matches("val_loss").count(), 4, "{stdout}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], i + 1);
        for key in ["loss", "val_loss", "seconds", "samples_per_s"] {
            assert!(
                l[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0),
                "{key} in {l}"
            );
        }
    }
    let png = std::fs::read(&plot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5000,
        "not a PNG plot"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reconstruct_ranks_rows_by_error() {
    let dir = scratch("recon");
    let (model, recon, ranked) = (
        dir.join("m.safetensors"),
        dir.join("r.csv"),
        dir.join("ranked.csv"),
    );
    let data = digits();
    let mut args = vec![
        "train",
        "--data",
        data.as_str(),
        "--out",
        model.to_str().unwrap(),
        "--epochs",
        "3",
    ];
    args.extend_from_slice(TRAIN);
    ok(&args);
    let m = model.to_str().unwrap();
    ok(&[
        "reconstruct",
        "--model",
        m,
        "--data",
        &data,
        "--out",
        recon.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    ok(&[
        "reconstruct",
        "--model",
        m,
        "--data",
        &data,
        "--out",
        ranked.to_str().unwrap(),
        "--per-row-error",
        "--device",
        "cpu",
    ]);
    let plain = std::fs::read_to_string(&recon).unwrap();
    let mut plain_lines = plain.lines();
    let header: Vec<&str> = plain_lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 65);
    assert_eq!(
        (header[0], header[1], header[64]),
        ("digit", "pixel0", "pixel63")
    );
    // Reconstructions are in the data's own units (0..16 pixels), not the normalized ones.
    let mean: f64 = plain_lines
        .clone()
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .map(|v| v.parse::<f64>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum::<f64>()
        / (1797.0 * 64.0);
    assert!(
        (2.0..8.0).contains(&mean),
        "mean reconstructed pixel {mean}"
    );
    let ranked_text = std::fs::read_to_string(&ranked).unwrap();
    let mut lines = ranked_text.lines();
    assert!(lines.next().unwrap().starts_with("digit,row,error,pixel0"));
    let rows: Vec<(usize, f64)> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .map(|c| (c[1].parse().unwrap(), c[2].parse().unwrap()))
        .collect();
    assert_eq!(rows.len(), 1797);
    assert!(
        rows.windows(2).all(|w| w[0].1 >= w[1].1),
        "not sorted by error"
    );
    let mut seen: Vec<usize> = rows.iter().map(|r| r.0).collect();
    seen.sort();
    assert_eq!(seen, (0..1797).collect::<Vec<_>>());
    // The errors average to what eval reports.
    let v: serde_json::Value = serde_json::from_str(
        ok(&[
            "eval", "--model", m, "--data", &data, "--json", "--device", "cpu",
        ])
        .trim(),
    )
    .unwrap();
    let mean_err = rows.iter().map(|r| r.1).sum::<f64>() / 1797.0;
    assert!((mean_err - v["mse"].as_f64().unwrap()).abs() < 1e-9 + 1e-6 * mean_err);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Records what a run tells its observer.
#[derive(Default)]
struct Events(Vec<String>);

impl TrainObserver for Events {
    fn prepared(&mut self, plan: &TrainPlan) -> tiedae::Result<()> {
        self.0.push(format!(
            "prepared {:?} {}+{}",
            plan.widths, plan.train_rows, plan.val_rows
        ));
        Ok(())
    }
    fn started(&mut self, _plan: &TrainPlan, backend: &str) {
        self.0
            .push(format!("started {}", backend.starts_with("cpu")));
    }
    fn epoch(&mut self, report: &tiedae::train::EpochReport) -> tiedae::Result<()> {
        self.0.push(format!(
            "epoch {} {}",
            report.epoch,
            report.val_loss.is_some()
        ));
        Ok(())
    }
    fn finished(&mut self) {
        self.0.push("finished".into());
    }
}

/// The library's training workflow (what a Python front end would call) writes the model the binary writes,
/// bit for bit, and tells its observer each stage in order; a request the binary's flags could not make (a
/// batch size of 0) is refused with the flag's name, before anything is written.
#[test]
fn the_library_workflow_trains_as_the_binary_does() {
    let dir = scratch("library");
    let (by_cli, by_lib) = (dir.join("cli.safetensors"), dir.join("lib.safetensors"));
    let data = digits();
    let mut args = vec![
        "train",
        "--data",
        data.as_str(),
        "--out",
        by_cli.to_str().unwrap(),
        "--epochs",
        "3",
    ];
    args.extend_from_slice(TRAIN);
    ok(&args);
    let new_run = NewRun {
        data: PathBuf::from(&data),
        out: by_lib.clone(),
        ignore: tiedae::data::parse_selectors("digit"),
        normalize: tiedae::data::NormalizeKind::Standard,
        layers: vec![24, 6],
        activation: Activation::Tanh,
        code_activation: Activation::Linear,
        output_activation: Activation::Linear,
        optimizer: Optimizer::from_flags("adam", None, 0.0).unwrap(),
        batch_size: 50,
        seed: 9,
        shuffle: true,
        init: None,
        val_split: Some(0.15),
        patience: None,
        constraints: Default::default(),
        data_dtype: Default::default(),
        noise: Default::default(),
    };
    let mut request = TrainRequest {
        run: RunSource::New(Box::new(new_run.clone())),
        epochs: 3,
        device: DeviceChoice::Cpu,
        data_on: Default::default(),
        cuda_graphs: false,
        metrics: None,
        plot: None,
    };
    let mut events = Events::default();
    let stop = AtomicBool::new(false);
    let outcome = train(&request, &stop, &mut events).unwrap();
    assert_eq!(outcome.end, FitEnd::Completed);
    assert_eq!(outcome.history.len(), 3);
    assert_eq!(
        events.0,
        [
            "prepared [64, 24, 6] 1527+270",
            "started true",
            "epoch 1 true",
            "epoch 2 true",
            "epoch 3 true",
            "finished"
        ]
    );
    let (a, b) = (
        io::load_model(&by_cli).unwrap(),
        io::load_model(&by_lib).unwrap(),
    );
    assert_eq!(bits(&a.params), bits(&b.params));
    assert_eq!(a.checkpoint.unwrap().history, b.checkpoint.unwrap().history);

    std::fs::remove_file(&by_lib).unwrap();
    request.run = RunSource::New(Box::new(NewRun {
        batch_size: 0,
        ..new_run
    }));
    let err = train(&request, &stop, &mut ()).unwrap_err().to_string();
    assert!(
        err.starts_with("--batch-size: must be a positive integer"),
        "{err}"
    );
    assert!(!by_lib.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
