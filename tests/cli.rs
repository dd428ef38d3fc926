//! The real binary, end to end: the main workflows, and every kind of bad input answered with one line that
//! names the file (line, column) or the flag, a non-zero exit, no panic, and `--out` left exactly as it was.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tiedae-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn file(&self, name: &str, contents: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p.display().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tiedae(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .args(args)
        .output()
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits.csv")
        .display()
        .to_string()
}

/// Runs a command that must fail: exit 1, one line on stderr naming every `needles`, no panic, and the file
/// at `out` (pre-filled by this function) untouched.
fn fails(s: &Scratch, args: &[&str], needles: &[&str]) {
    let out_path = s.path("precious.safetensors");
    std::fs::write(&out_path, b"KEEP ME").unwrap();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "OUT" { out_path.as_str() } else { a })
        .collect();
    let r = tiedae(&args);
    assert_eq!(
        r.code, 1,
        "args {args:?}: exit {} stderr {}",
        r.code, r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "args {args:?}: want one line, got {:?}",
        r.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "args {args:?}: '{}' lacks '{n}'",
            lines[0]
        );
    }
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        b"KEEP ME",
        "args {args:?}: --out was touched"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&s.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

fn train_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train", "--data", data, "--out", "OUT", "--layers", "2", "--epochs", "1", "--device",
        "cpu",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn bad_csv_files_name_file_line_and_column() {
    let s = Scratch::new("badcsv");
    let ragged = s.file("ragged.csv", "a,b,c\n1,2,3\n4,5\n6,7,8\n");
    fails(
        &s,
        &train_args(&ragged, &[]),
        &["ragged.csv", "line 3", "expected 3 fields, found 2"],
    );
    let text = s.file("text.csv", "a,b,c\n1,2,3\n4,x5,6\n");
    fails(
        &s,
        &train_args(&text, &[]),
        &["text.csv", "line 3", "column 2", "'b'", "x5"],
    );
    let nan = s.file("nan.csv", "1,2\n3,NaN\n");
    fails(
        &s,
        &train_args(&nan, &[]),
        &["nan.csv", "line 2", "column 2", "not a finite number"],
    );
    let inf = s.file("inf.csv", "a,b\n1,2\n-inf,4\n");
    fails(
        &s,
        &train_args(&inf, &[]),
        &["inf.csv", "line 3", "column 1", "not a finite number"],
    );
    let empty = s.file("empty.csv", "");
    fails(&s, &train_args(&empty, &[]), &["empty.csv", "empty"]);
    let header = s.file("header.csv", "a,b,c\n");
    fails(
        &s,
        &train_args(&header, &[]),
        &["header.csv", "no data rows"],
    );
    let missing = s.path("missing.csv");
    fails(&s, &train_args(&missing, &[]), &["missing.csv"]);
    let ok = s.file("ok.csv", "Id,x,y,label\n1,0.1,0.2,a\n2,0.3,0.4,b\n");
    fails(
        &s,
        &train_args(&ok, &["--ignore-columns", "nope"]),
        &["--ignore-columns", "nope"],
    );
    fails(
        &s,
        &train_args(&ok, &["--ignore-columns", "9"]),
        &["--ignore-columns", "9"],
    );
    // The label is text: without --ignore-columns it is an error at its cell.
    fails(
        &s,
        &train_args(&ok, &["--ignore-columns", "Id"]),
        &["ok.csv", "line 2", "column 4", "'label'"],
    );
}

#[test]
fn bad_flags_name_the_flag() {
    let s = Scratch::new("badflags");
    let data = s.file("d.csv", "1,2,3\n4,5,6\n7,8,9\n");
    for (extra, flag) in [
        (&["--layers", "0"][..], "--layers"),
        (&["--layers", "4,-3"][..], "--layers"),
        (&["--layers", "4,x"][..], "--layers"),
        (&["--batch-size", "0"][..], "--batch-size"),
        (&["--batch-size", "-5"][..], "--batch-size"),
        (&["--lr", "0"][..], "--lr"),
        (&["--lr", "-0.1"][..], "--lr"),
        (&["--epochs", "0"][..], "--epochs"),
        (
            &["--momentum", "1.5", "--optimizer", "sgd"][..],
            "--momentum",
        ),
        (&["--optimizer", "rmsprop"][..], "--optimizer"),
        (&["--orthogonality", "-1"][..], "--orthogonality"),
        (&["--uncorrelated", "nan"][..], "--uncorrelated"),
        (&["--val-split", "1.5"][..], "--val-split"),
        (&["--val-split", "0.001"][..], "--val-split"),
        (&["--patience", "0"][..], "--patience"),
    ] {
        fails(&s, &train_args(&data, extra), &[flag]);
    }
    let nowhere = "/nonexistent-dir/m.safetensors";
    let r = tiedae(&[
        "train", "--data", &data, "--out", nowhere, "--layers", "2", "--device", "cpu",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--out") && r.stderr.contains("does not exist"),
        "{}",
        r.stderr
    );
    // clap's own errors (unknown activation) exit non-zero too, naming the flag.
    let r = tiedae(&[
        "train",
        "--data",
        &data,
        "--out",
        "x",
        "--activation",
        "swish",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("--activation") && !r.stderr.contains("panicked"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_model_files() {
    let s = Scratch::new("badmodel");
    let data = s.file("d.csv", "1,2,3\n4,5,6\n7,8,9\n");
    let garbage = s.file("garbage.safetensors", "this is not a model");
    fails(
        &s,
        &train_args(&data, &["--init", &garbage]),
        &["garbage.safetensors", "not a safetensors"],
    );
    fails(
        &s,
        &[
            "eval", "--model", &garbage, "--data", &data, "--device", "cpu",
        ],
        &["garbage.safetensors"],
    );
    fails(
        &s,
        &[
            "encode", "--model", &garbage, "--data", &data, "--out", "OUT", "--device", "cpu",
        ],
        &["garbage.safetensors"],
    );
    fails(
        &s,
        &["summary", "--model", &s.path("none.safetensors")],
        &["none.safetensors"],
    );
    // A real model of another shape: 3 → 2 does not fit --layers 1, nor a 4-column file.
    let model = s.path("m.safetensors");
    let r = tiedae(&[
        "train", "--data", &data, "--out", &model, "--layers", "2", "--epochs", "1", "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    fails(
        &s,
        &train_args(&data, &["--layers", "1", "--init", &model]),
        &["m.safetensors", "encoder.0.kernel", "[3, 1]"],
    );
    fails(
        &s,
        &train_args(&data, &["--layers", "2,1", "--init", &model]),
        &["m.safetensors", "1 tied layer", "model has 2"],
    );
    let wide = s.file("wide.csv", "1,2,3,4\n5,6,7,8\n");
    fails(
        &s,
        &[
            "eval", "--model", &model, "--data", &wide, "--device", "cpu",
        ],
        &["wide.csv", "4 feature columns", "takes 3"],
    );
    // A model without training state cannot be resumed; one that did its epochs needs more of them.
    let keras_init =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras/linear_sgd/init.safetensors");
    fails(
        &s,
        &[
            "train",
            "--resume",
            keras_init.to_str().unwrap(),
            "--out",
            "OUT",
            "--epochs",
            "3",
        ],
        &["init.safetensors"],
    );
    fails(
        &s,
        &["train", "--resume", &model, "--out", "OUT", "--epochs", "1"],
        &["--epochs", "already did 1 epoch"],
    );
    // Keras weights alone (no metadata) are fine for --init but are not a model for eval.
    let keras =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras/linear_sgd/init.safetensors");
    fails(
        &s,
        &[
            "eval",
            "--model",
            keras.to_str().unwrap(),
            "--data",
            &data,
            "--device",
            "cpu",
        ],
        &["not a tiedae model"],
    );
}

#[test]
fn divergence_is_an_error_and_keeps_out() {
    let s = Scratch::new("diverge");
    let data = s.file("d.csv", "1,200,3\n400,5,6\n7,8,900\n10,11,12\n");
    fails(
        &s,
        &train_args(
            &data,
            &[
                "--optimizer",
                "sgd",
                "--lr",
                "1e6",
                "--epochs",
                "5",
                "--batch-size",
                "1",
            ],
        ),
        &["diverged", "epoch 1", "step"],
    );
}

#[test]
fn cuda_without_gpu_is_one_clear_line() {
    if tiedae::workflow::check_cuda(0).is_ok() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED cuda_without_gpu_is_one_clear_line: this machine has a usable GPU"
        );
        return;
    }
    let s = Scratch::new("nocuda");
    let data = s.file("d.csv", "1,2,3\n4,5,6\n");
    fails(
        &s,
        &[
            "train", "--data", &data, "--out", "OUT", "--layers", "2", "--device", "cuda",
        ],
        &["CUDA", "--device cpu"],
    );
}

#[test]
fn train_eval_encode_summary_on_digits() {
    let s = Scratch::new("workflow");
    let model = s.path("digits.safetensors");
    let r = tiedae(&[
        "train",
        "--data",
        &digits(),
        "--ignore-columns",
        "digit",
        "--normalize",
        "minmax",
        "--layers",
        "16,4",
        "--epochs",
        "3",
        "--out",
        &model,
        "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.matches("epoch ").count(),
        3,
        "one plain line per epoch off a terminal:\n{}",
        r.stdout
    );
    let r = tiedae(&[
        "eval",
        "--model",
        &model,
        "--data",
        &digits(),
        "--json",
        "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["samples"], 1797);
    let mse = v["mse"].as_f64().unwrap();
    assert!(mse.is_finite() && mse > 0.0 && mse < 0.2, "mse {mse}");
    let codes = s.path("codes.csv");
    let r = tiedae(&[
        "encode",
        "--model",
        &model,
        "--data",
        &digits(),
        "--out",
        &codes,
        "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&codes).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "digit,code_0,code_1,code_2,code_3");
    assert_eq!(lines.count(), 1797);
    let r = tiedae(&["summary", "--model", &model]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // 64·16 + 16 + 64 + 16·4 + 4 + 16 = 1188: each tied kernel once.
    assert!(r.stdout.contains("Total params: 1188"), "{}", r.stdout);
}

#[test]
fn summary_counts_the_tied_kernel_once() {
    let s = Scratch::new("summary");
    let rows: String = (0..16)
        .map(|r| {
            (0..51)
                .map(|c| ((r * 51 + c) % 7).to_string())
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        })
        .collect();
    let data = s.file("seed.csv", &rows);
    let model = s.path("seed.safetensors");
    let r = tiedae(&[
        "train",
        "--data",
        &data,
        "--out",
        &model,
        "--layers",
        "1",
        "--activation",
        "linear",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tiedae(&["summary", "--model", &model]);
    assert!(r.stdout.contains("Total params: 103"), "{}", r.stdout);
}

#[test]
fn demo_shows_one_kernel_moving() {
    let r = tiedae(&["demo", "--device", "cpu"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let grab = |label: &str| -> (String, String) {
        let line = r.stdout.lines().find(|l| l.starts_with(label)).unwrap();
        let enc = line
            .split("= [")
            .nth(1)
            .unwrap()
            .split(']')
            .next()
            .unwrap()
            .to_string();
        let dec = line.rsplit("= ").next().unwrap().trim().to_string();
        (enc, dec)
    };
    let (enc0, dec0) = grab("before");
    let (enc1, dec1) = grab("after");
    assert_eq!(enc0, dec0);
    assert_eq!(enc1, dec1);
    assert_ne!(enc0, enc1, "the kernel did not move:\n{}", r.stdout);
}
