//! Denoising through the real binary: a noisy run resumed from its model file ends bit for bit where the
//! straight run ends; the model file and `summary` record the noise and a file without it loads; bad
//! `--noise` values are one-line errors; `encode --all-layers` writes every encoder layer's activations.

use std::path::{Path, PathBuf};
use std::process::Command;
use tiedae::io::{self, checksum};
use tiedae::train::Noise;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiedae-dae-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits.csv")
        .display()
        .to_string()
}

const TRAIN: &[&str] = &[
    "--ignore-columns",
    "digit",
    "--normalize",
    "standard",
    "--layers",
    "24,6",
    "--batch-size",
    "50",
    "--val-split",
    "0.15",
    "--seed",
    "9",
    "--device",
    "cpu",
    "--noise",
    "swap:0.15",
    "--noise",
    "gaussian:0.05,mask:0.05",
];

#[test]
fn a_noisy_run_resumed_from_its_file_ends_bit_for_bit_where_the_straight_run_ends() {
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
        ok(&args)
    };
    let first_line = run(&straight, "5");
    assert!(
        first_line.contains("denoising (swap:0.15,mask:0.05,gaussian:0.05)"),
        "{first_line}"
    );
    run(&split, "2");
    // A resumed run continues with its noise: the same given again is accepted, another one is refused.
    let split_path = split.to_str().unwrap();
    let other = tiedae(&[
        "train", "--resume", split_path, "--epochs", "5", "--device", "cpu", "--noise", "swap:0.2",
    ]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && err.contains("--noise: swap:0.2 differs"),
        "{err}"
    );
    let resumed = ok(&[
        "train",
        "--resume",
        split.to_str().unwrap(),
        "--epochs",
        "5",
        "--device",
        "cpu",
        "--noise",
        "mask:0.05,swap:0.15",
        "--noise",
        "gaussian:0.05",
    ]);
    assert!(resumed.contains("denoising"), "{resumed}");
    let (a, b) = (
        io::load_model(&straight).unwrap(),
        io::load_model(&split).unwrap(),
    );
    assert_eq!(
        bits(&a.params),
        bits(&b.params),
        "weights differ after resuming"
    );
    assert_eq!(a.checkpoint.unwrap().history, b.checkpoint.unwrap().history);
    assert_eq!(
        b.noise,
        Noise {
            swap: 0.15,
            mask: 0.05,
            gaussian: 0.05
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_model_file_and_summary_record_the_noise_and_a_file_without_it_loads() {
    let dir = scratch("summary");
    let (noisy, plain) = (dir.join("noisy.safetensors"), dir.join("plain.safetensors"));
    let data = digits();
    let mut args = vec![
        "train",
        "--data",
        &data,
        "--out",
        noisy.to_str().unwrap(),
        "--epochs",
        "1",
    ];
    args.extend_from_slice(TRAIN);
    ok(&args);
    let summary = ok(&["summary", "--model", noisy.to_str().unwrap()]);
    assert!(
        summary.contains("Training noise: swap:0.15,mask:0.05,gaussian:0.05"),
        "{summary}"
    );
    // A plain run writes no noise key; such a file (every file from before --noise) loads as none.
    let n = TRAIN.len() - 4;
    let mut args = vec![
        "train",
        "--data",
        &data,
        "--out",
        plain.to_str().unwrap(),
        "--epochs",
        "1",
    ];
    args.extend_from_slice(&TRAIN[..n]);
    ok(&args);
    let bytes = std::fs::read(&plain).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(!header.metadata().as_ref().unwrap().contains_key("noise"));
    assert!(io::load_model(&plain).unwrap().noise.is_off());
    let summary = ok(&["summary", "--model", plain.to_str().unwrap()]);
    assert!(summary.contains("Training noise: none"), "{summary}");
    // A checkpoint written before --noise has no noise in its settings: it resumes, without noise.
    let old = dir.join("old.safetensors");
    without_noise_in_checkpoint(&plain, &old);
    ok(&[
        "train",
        "--resume",
        old.to_str().unwrap(),
        "--epochs",
        "2",
        "--device",
        "cpu",
    ]);
    let resumed = io::load_model(&old).unwrap();
    assert_eq!(resumed.checkpoint.unwrap().state.epochs_done, 2);
    assert!(resumed.noise.is_off());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `from` rewritten to `to` with the `noise` field taken out of its checkpoint's settings, as a file written
/// before the flag existed.
fn without_noise_in_checkpoint(from: &Path, to: &Path) {
    let bytes = std::fs::read(from).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut ck: serde_json::Value = serde_json::from_str(&meta["checkpoint"]).unwrap();
    let settings = ck["settings"].as_object_mut().unwrap();
    assert!(
        settings.remove("noise").is_some(),
        "the checkpoint holds the noise"
    );
    meta.insert("checkpoint".into(), ck.to_string());
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .names()
        .into_iter()
        .map(|n| (n.to_string(), st.tensor(n).unwrap()))
        .collect();
    // Signed again, as the tiedae of before would have signed it.
    let mut refs: Vec<checksum::TensorRef<'_>> = tensors
        .iter()
        .map(|(name, view)| checksum::TensorRef {
            name,
            dtype: format!("{:?}", view.dtype()),
            shape: view.shape(),
            data: view.data(),
        })
        .collect();
    let sum = checksum::model_checksum(&meta, &mut refs);
    meta.insert(checksum::KEY.to_string(), sum);
    let out = safetensors::serialize(tensors, Some(meta)).unwrap();
    std::fs::write(to, out).unwrap();
}

#[test]
fn bad_noise_flags_are_one_line_errors() {
    let dir = scratch("flags");
    let out = dir.join("m.safetensors");
    let data = digits();
    for (noise, says) in [
        ("swap:1.5", "must be in [0, 1]"),
        ("gaussian:-1", "sigma must be a number ≥ 0"),
        ("swap", "is not KIND:VALUE"),
        ("swap:x", "is not a number"),
        ("blur:0.1", "unknown noise 'blur'"),
        ("swap:0.1,swap:0.2", "swap is given twice"),
    ] {
        let o = tiedae(&[
            "train",
            "--data",
            &data,
            "--out",
            out.to_str().unwrap(),
            "--noise",
            noise,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{noise}");
        assert!(
            err.starts_with("error: --noise: ") && err.contains(says),
            "{noise}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{noise}: {err}");
        assert!(!out.exists(), "{noise}: a model was written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `encode --all-layers` writes the ignored columns, then every encoder layer's activations, computed here
/// by hand from the model file's kernels: h_1 = relu(x·W_0 + b_0), h_2 = h_1·W_1 + b_1 (the code).
#[test]
fn encode_all_layers_writes_every_layers_activations() {
    let dir = scratch("encode");
    let (model_path, feats) = (dir.join("m.safetensors"), dir.join("all.csv"));
    let data = digits();
    let mut args = vec![
        "train",
        "--data",
        &data,
        "--out",
        model_path.to_str().unwrap(),
        "--epochs",
        "2",
    ];
    args.extend_from_slice(TRAIN);
    ok(&args);
    let said = ok(&[
        "encode",
        "--model",
        model_path.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        feats.to_str().unwrap(),
        "--all-layers",
        "--device",
        "cpu",
    ]);
    assert!(said.contains("1797 rows of 30 activations"), "{said}");
    let model = io::load_model(&model_path).unwrap();
    let mut reader = csv::Reader::from_path(&feats).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let mut want_header = vec!["digit".to_string()];
    want_header.extend((0..24).map(|j| format!("l0_{j}")));
    want_header.extend((0..6).map(|j| format!("l1_{j}")));
    assert_eq!(header, want_header);
    let raw = tiedae::data::load_csv(Path::new(&data), &model.ignore).unwrap();
    let slots = model.spec.slots();
    let p = &model.params;
    let layer = |x: &[f64], i: usize, relu: bool| -> Vec<f64> {
        let (din, dout) = (model.spec.widths[i], model.spec.widths[i + 1]);
        (0..dout)
            .map(|j| {
                let z: f64 = p[slots[i].enc_bias.start + j] as f64
                    + (0..din)
                        .map(|k| x[k] * p[slots[i].kernel.start + k * dout + j] as f64)
                        .sum::<f64>();
                if relu {
                    z.max(0.0)
                } else {
                    z
                }
            })
            .collect()
    };
    let digits_raw = std::fs::read_to_string(&data).unwrap();
    let labels: Vec<&str> = digits_raw
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    for (r, record) in reader.records().enumerate() {
        let record = record.unwrap();
        assert_eq!(&record[0], labels[r], "row {r}: the ignored column");
        let x: Vec<f64> = (0..64)
            .map(|c| {
                let v = raw.values[r * 64 + c];
                ((v - model.normalization.shift[c]) * model.normalization.scale[c]) as f64
            })
            .collect();
        let h1 = layer(&x, 0, true);
        let h2 = layer(&h1, 1, false);
        for (k, want) in h1.iter().chain(&h2).enumerate() {
            let got: f64 = record[1 + k].parse().unwrap();
            assert!(
                (got - want).abs() <= 1e-4 + 1e-4 * want.abs(),
                "row {r}, column {k}: {got} vs {want}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
