//! Nothing silently wrong, through the real binary: a model file with a flipped bit (a weight, the optimizer
//! state, the metadata) is refused naming the file, and a file without a checksum still loads and says so;
//! a result that is not a finite number is an error, not a number; sizes that would need terabytes are
//! refused before anything is allocated; `--resume` refuses settings and data other than its checkpoint's;
//! columns are matched to a model by name. And, in the library, every single-bit flip of a model file is
//! refused.

mod common;

use common::binary::*;
use std::path::Path;
use std::time::Duration;

/// The header of a safetensors file as JSON, and where its data starts.
fn header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).unwrap(), 8 + n)
}

/// A copy of the model at `from` with bit `bit` of element `index` of tensor `name` flipped.
fn flip_tensor_bit(from: &str, to: &str, name: &str, index: usize, bit: u32) {
    let mut bytes = std::fs::read(from).unwrap();
    let (h, start) = header(&bytes);
    let offset = h[name]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = start + offset + 4 * index + (bit / 8) as usize;
    bytes[at] ^= 1 << (bit % 8);
    std::fs::write(to, bytes).unwrap();
}

/// A copy of the model at `from` with one bit of the first occurrence of `text` in its header flipped (in
/// byte `byte` of it, mask `mask`).
fn flip_header_bit(from: &str, to: &str, text: &str, byte: usize, mask: u8) {
    let mut bytes = std::fs::read(from).unwrap();
    let (_, start) = header(&bytes);
    let at = bytes[..start]
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .unwrap_or_else(|| panic!("'{text}' is not in the header"));
    bytes[at + byte] ^= mask;
    std::fs::write(to, bytes).unwrap();
}

/// Rewrites a model file as a file of format version 1 (no checksum), as an older tiedae wrote them.
fn as_version_1(from: &str, to: &str) {
    let bytes = std::fs::read(from).unwrap();
    let (mut h, start) = header(&bytes);
    let meta = h["__metadata__"].as_object_mut().unwrap();
    meta.remove("checksum");
    meta.insert("format_version".into(), "1".into());
    let mut text = serde_json::to_vec(&h).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(&bytes[start..]);
    std::fs::write(to, out).unwrap();
}

#[test]
fn a_flipped_bit_in_a_weight_the_optimizer_state_or_the_metadata_is_refused() {
    let s = Scratch::new("int-flip");
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "2");
    // A weight's exponent (bit 30 of an f32): 0.3 becomes 1e38, which gave "mse inf" with exit 0.
    let weight = s.path("weight.safetensors");
    flip_tensor_bit(&model, &weight, "encoder.0.kernel", 0, 30);
    refused(
        &[
            "eval", "--model", &weight, "--data", &data, "--device", "cpu",
        ],
        &["weight.safetensors", "damaged"],
    );
    refused(
        &[
            "encode",
            "--model",
            &weight,
            "--data",
            &data,
            "--out",
            &s.path("c.csv"),
            "--device",
            "cpu",
        ],
        &["weight.safetensors", "damaged"],
    );
    assert!(!Path::new(&s.path("c.csv")).exists());
    // The optimizer state and the metadata matter when a run is resumed.
    let optimizer = s.path("optimizer.safetensors");
    flip_tensor_bit(&model, &optimizer, "optimizer.state.1", 3, 0);
    let metadata = s.path("metadata.safetensors");
    // lr 0.001 → 0.003: one bit of the checkpoint's JSON.
    flip_header_bit(&model, &metadata, "\\\"lr\\\":0.001", 11, 0x02);
    for file in [&optimizer, &metadata] {
        let before = file_hash(Path::new(file));
        let name = Path::new(file)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        refused(
            &[
                "train", "--resume", file, "--epochs", "4", "--device", "cpu",
            ],
            &[&name, "damaged"],
        );
        assert_eq!(file_hash(Path::new(file)), before, "{file} was rewritten");
    }
    // The file itself is fine.
    ok(&[
        "eval", "--model", &model, "--data", &data, "--device", "cpu",
    ]);
}

/// In the library: a model file (with a checkpoint) with any one of its bits flipped does not load.
#[test]
fn every_single_bit_flip_of_a_model_file_is_refused() {
    let s = Scratch::new("int-allbits");
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "1");
    let good = std::fs::read(&model).unwrap();
    if !own_binary() {
        common::skipped("every_single_bit_flip_of_a_model_file_is_refused: a library test (TIEDAE_TEST_BIN names another binary)");
        return;
    }
    tiedae::io::load_model_verified(Path::new(&model)).unwrap();
    let path = s.0.join("flipped.safetensors");
    std::fs::write(&path, &good).unwrap();
    // Rewritten in place, same size: truncating a file each time would make ext4 flush it each time.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut accepted = Vec::new();
    for bit in 0..good.len() * 8 {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        std::os::unix::fs::FileExt::write_all_at(&file, &b, 0).unwrap();
        match tiedae::io::load_model_verified(&path) {
            Ok(_) => accepted.push(bit),
            Err(e) => assert!(!e.to_string().contains('\n')),
        }
    }
    assert!(
        accepted.is_empty(),
        "{} of {} single-bit flips loaded, e.g. bit {} (byte {})",
        accepted.len(),
        good.len() * 8,
        accepted[0],
        accepted[0] / 8
    );
    let _ = writeln_stderr(&format!(
        "flips: all {} single-bit flips refused",
        good.len() * 8
    ));
}

fn writeln_stderr(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{line}")
}

#[test]
fn a_file_without_a_checksum_still_loads_and_says_so() {
    let s = Scratch::new("int-nochecksum");
    // Keras weights (no metadata at all) start a run with --init, and the run says they were not checked.
    let keras = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras/linear_sgd");
    let init = keras.join("init.safetensors").display().to_string();
    let kdata = keras.join("data.csv").display().to_string();
    let out = s.path("k.safetensors");
    let stdout = ok(&[
        "train",
        "--data",
        &kdata,
        "--out",
        &out,
        "--layers",
        "3",
        "--activation",
        "linear",
        "--init",
        &init,
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]);
    assert!(
        stdout.contains("note: --init") && stdout.contains("has no checksum"),
        "{stdout}"
    );
    // A file of an older tiedae (format 1, no checksum) is still read, with a note on stderr.
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "1");
    let old = s.path("old.safetensors");
    as_version_1(&model, &old);
    for args in [
        vec![
            "eval", "--model", &old, "--data", &data, "--json", "--device", "cpu",
        ],
        vec!["summary", "--model", &old],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("note: ") && r.stderr.contains("has no checksum"),
            "{args:?}: {}",
            r.stderr
        );
        if args.contains(&"--json") {
            serde_json::from_str::<serde_json::Value>(r.stdout.trim())
                .expect("JSON alone on stdout");
        }
    }
    let r = run(&[
        "train", "--resume", &old, "--epochs", "2", "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("has no checksum"), "{}", r.stdout);
}

#[test]
fn non_finite_weights_are_refused_at_load() {
    let s = Scratch::new("int-nan");
    let keras = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras/linear_sgd");
    let mut kernel = vec![0.1f32; 30];
    kernel[7] = f32::NAN;
    let tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        ("encoder.0.kernel", vec![10, 3], kernel),
        ("encoder.0.bias", vec![3], vec![0.0; 3]),
        ("decoder.0.bias", vec![10], vec![0.0; 10]),
    ];
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            (
                *n,
                safetensors::tensor::TensorView::new(
                    safetensors::tensor::Dtype::F32,
                    shape.clone(),
                    b,
                )
                .unwrap(),
            )
        })
        .collect();
    let init = s.path("nan.safetensors");
    safetensors::serialize_to_file(views, None, Path::new(&init)).unwrap();
    let data = keras.join("data.csv").display().to_string();
    refused(
        &[
            "train",
            "--data",
            &data,
            "--out",
            &s.path("m.safetensors"),
            "--layers",
            "3",
            "--init",
            &init,
            "--device",
            "cpu",
        ],
        &[
            "nan.safetensors",
            "encoder.0.kernel",
            "non-finite",
            "element 7",
        ],
    );
}

/// The small data set with every feature at `value` (finite in f32, but past what a model's sums hold).
fn far_out_csv(value: &str) -> String {
    let mut s = String::from("Id,a,b,c,d,label\n");
    for r in 0..10 {
        s.push_str(&format!("{r},{value},{value},{value},{value},{}\n", r % 3));
    }
    s
}

#[test]
fn a_result_that_is_not_finite_is_an_error_not_a_number() {
    let s = Scratch::new("int-nonfinite");
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "2");
    let far = s.file("far.csv", far_out_csv("3e38"));
    let out = s.path("out.csv");
    for (args, needle) in [
        (
            vec!["eval", "--model", &model, "--data", &far, "--device", "cpu"],
            "MSE",
        ),
        (
            vec![
                "eval", "--model", &model, "--data", &far, "--json", "--device", "cpu",
            ],
            "MSE",
        ),
        (
            vec![
                "encode", "--model", &model, "--data", &far, "--out", &out, "--device", "cpu",
            ],
            "code",
        ),
        (
            vec![
                "reconstruct",
                "--model",
                &model,
                "--data",
                &far,
                "--out",
                &out,
                "--device",
                "cpu",
            ],
            "reconstruction",
        ),
    ] {
        let r = run(&args);
        assert_refused(&r, &args, &["m.safetensors", "far.csv", needle, "overflow"]);
        assert!(r.stdout.is_empty(), "{args:?} printed {}", r.stdout);
        assert!(!Path::new(&out).exists(), "{args:?} wrote {out}");
    }
}

/// Runs with the address space capped at 8 GB: a binary that tried the allocation fails at once instead
/// of taking the machine's memory.
fn refused_small(args: &[&str], needles: &[&str]) -> String {
    let r = run_limited(args, Duration::from_secs(60), Some(8 << 20));
    assert_refused(&r, args, needles);
    assert!(
        !r.stdout.contains("epoch"),
        "{args:?} trained: {}",
        r.stdout
    );
    r.lines()[0].to_string()
}

#[test]
fn sizes_that_would_need_terabytes_are_refused_before_allocating() {
    let s = Scratch::new("int-sizes");
    let data = s.file("d.csv", small_csv());
    let out = s.path("m.safetensors");
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            &data,
            "--out",
            &out,
            "--ignore-columns",
            "Id,label",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let line = refused_small(&args, needles);
        assert!(!Path::new(&out).exists());
        line
    };
    // Parameters: 4 → 10⁶ → 10⁶ holds 10¹² weights, 4 TB each for them, their gradient, …
    let line = train(
        &["--layers", "1000000,1000000"],
        &[
            "--layers",
            "TB of memory",
            "parameters 4.0 TB",
            "is available",
            "use smaller --layers",
        ],
    );
    assert!(
        line.contains("training 4→1000000→1000000 needs about"),
        "{line}"
    );
    // Activations: one batch of 10¹¹ rows.
    train(
        &["--layers", "2", "--batch-size", "100000000000"],
        &[
            "--batch-size",
            "activations",
            "TB",
            "use a smaller --batch-size",
        ],
    );
    // The loss history of 2 million epochs would not fit the model file's header.
    let r = run_limited(
        &[
            "train",
            "--data",
            &data,
            "--out",
            &out,
            "--ignore-columns",
            "Id,label",
            "--layers",
            "2",
            "--epochs",
            "2000000",
            "--device",
            "cpu",
        ],
        Duration::from_secs(30),
        Some(8 << 20),
    );
    assert_refused(
        &r,
        &[],
        &["--epochs", "2000000 epochs of loss history", "header"],
    );
    // bench: a custom workload and a GEMM.
    refused_small(
        &["bench", "--layers", "100000000,10", "--device", "cpu"],
        &["--rows", "TB", "is available"],
    );
    refused_small(
        &["bench", "--gemm", "1000000", "--device", "cpu"],
        &["--gemm", "TB", "is available"],
    );
}

#[test]
fn a_data_file_that_cannot_fit_is_refused_before_it_is_read() {
    let s = Scratch::new("int-bigcsv");
    // 2 TB that the file system stores in one block: a header, one row, then zeros (never read).
    let sparse = s.0.join("sparse.csv");
    std::fs::write(&sparse, "a,b\n1,2\n").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap();
    if f.set_len(2 << 40).is_err() {
        common::skipped(
            "a_data_file_that_cannot_fit_is_refused_before_it_is_read: no sparse 2 TB file here",
        );
        return;
    }
    drop(f);
    let sparse = sparse.display().to_string();
    refused_small(
        &[
            "train",
            "--data",
            &sparse,
            "--out",
            &s.path("m.safetensors"),
            "--device",
            "cpu",
        ],
        &[
            "sparse.csv",
            "rows of 2 columns",
            "TB in memory",
            "is available",
        ],
    );
    // 8 million columns: their names would not fit a model file's header (safetensors caps it at 100 MB);
    // refused from the first row, before the data is read.
    let wide = s.file("wide.csv", vec!["1"; 8_000_000].join(",") + "\n");
    refused_small(
        &[
            "train",
            "--data",
            &wide,
            "--out",
            &s.path("m.safetensors"),
            "--device",
            "cpu",
        ],
        &["wide.csv", "8000000 columns", "header"],
    );
}

fn resume_case(s: &Scratch) -> (String, String) {
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "2");
    (data, model)
}

#[test]
fn resume_refuses_a_setting_that_conflicts_with_its_checkpoint() {
    let s = Scratch::new("int-resume");
    let (_, model) = resume_case(&s);
    let before = file_hash(Path::new(&model));
    // train_small: --layers 3,2, adam (lr 0.001), batch 8, seed 42, standard normalization, Id,label ignored.
    for (flag, value, recorded) in [
        ("--lr", "0.01", "0.001"),
        ("--layers", "4,2", "3,2"),
        ("--normalize", "minmax", "standard"),
        ("--optimizer", "sgd", "adam"),
        ("--batch-size", "16", "8"),
        ("--seed", "7", "42"),
        ("--activation", "tanh", "relu"),
        ("--code-activation", "tanh", "linear"),
        ("--ignore-columns", "Id", "Id,label"),
        ("--val-split", "0.2", "none"),
        ("--patience", "3", "none"),
        ("--momentum", "0.9", "0"),
        ("--orthogonality", "0.1", "0"),
        ("--data-dtype", "f16", "f32"),
    ] {
        refused(
            &[
                "train", "--resume", &model, "--epochs", "4", flag, value, "--device", "cpu",
            ],
            &[flag, value, recorded, "m.safetensors"],
        );
    }
    for flag in ["--no-shuffle", "--unit-norm"] {
        refused(
            &[
                "train", "--resume", &model, "--epochs", "4", flag, "--device", "cpu",
            ],
            &[flag, "m.safetensors"],
        );
    }
    assert_eq!(
        file_hash(Path::new(&model)),
        before,
        "a refused resume wrote the model"
    );
    // The recorded values may be given again, and what may change on resume changes.
    let stdout = ok(&[
        "train",
        "--resume",
        &model,
        "--epochs",
        "4",
        "--lr",
        "0.001",
        "--layers",
        "3,2",
        "--batch-size",
        "8",
        "--normalize",
        "standard",
        "--metrics",
        &s.path("m.jsonl"),
        "--device",
        "cpu",
    ]);
    assert!(stdout.contains("resuming after epoch 2"), "{stdout}");
}

#[test]
fn resume_refuses_another_data_set_unless_asked() {
    let s = Scratch::new("int-resume-data");
    let (data, model) = resume_case(&s);
    let text = small_csv();
    // Same columns and rows, one value changed.
    let other = s.file("other.csv", text.replacen(",0.0250,", ",0.0251,", 1));
    assert_ne!(std::fs::read_to_string(&other).unwrap(), text);
    // Fewer rows.
    let fewer = s.file(
        "fewer.csv",
        text.lines().take(30).collect::<Vec<_>>().join("\n") + "\n",
    );
    refused(
        &[
            "train", "--resume", &model, "--data", &other, "--epochs", "3", "--device", "cpu",
        ],
        &["other.csv", "other values", "--resume-with-other-data"],
    );
    refused(
        &[
            "train", "--resume", &model, "--data", &fewer, "--epochs", "3", "--device", "cpu",
        ],
        &[
            "fewer.csv",
            "29 rows",
            "40 rows",
            "--resume-with-other-data",
        ],
    );
    // The same data with its columns in another order is the same data set.
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let reordered: String = lines
        .iter()
        .map(|c| [c[5], c[4], c[3], c[2], c[1], c[0]].join(",") + "\n")
        .collect();
    let reordered = s.file("reordered.csv", reordered);
    ok(&[
        "train",
        "--resume",
        &model,
        "--data",
        &reordered,
        "--epochs",
        "3",
        "--out",
        &s.path("r.safetensors"),
        "--device",
        "cpu",
    ]);
    // Asked for, another data set is used, and the run says so.
    let stdout = ok(&[
        "train",
        "--resume",
        &model,
        "--data",
        &other,
        "--epochs",
        "3",
        "--resume-with-other-data",
        "--device",
        "cpu",
    ]);
    assert!(stdout.contains("not the data set"), "{stdout}");
    let _ = data;
}

#[test]
fn columns_are_matched_to_the_model_by_name() {
    let s = Scratch::new("int-columns");
    let text = small_csv();
    let data = s.file("d.csv", &text);
    let model = s.path("m.safetensors");
    train_small(&data, &model, "3");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let write = |name: &str, pick: &dyn Fn(&[&str]) -> Vec<String>, header: bool| {
        let body: String = rows
            .iter()
            .skip(if header { 0 } else { 1 })
            .map(|r| pick(r).join(",") + "\n")
            .collect();
        s.file(name, body)
    };
    // Id,a,b,c,d,label → label,d,c,b,a,Id.
    let reordered = write(
        "reordered.csv",
        &|r| r.iter().rev().map(|c| c.to_string()).collect(),
        true,
    );
    // A test set without its label or Id.
    let features = write(
        "features.csv",
        &|r| r[1..5].iter().map(|c| c.to_string()).collect(),
        true,
    );
    // The features alone, without a header: by position.
    let headerless = write(
        "headerless.csv",
        &|r| r[1..5].iter().map(|c| c.to_string()).collect(),
        false,
    );
    let mse = |file: &str| -> String {
        let out = ok(&[
            "eval", "--model", &model, "--data", file, "--json", "--device", "cpu",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["mse"].to_string()
    };
    let want = mse(&data);
    for file in [&reordered, &features, &headerless] {
        assert_eq!(mse(file), want, "{file}");
    }
    // Codes follow the rows whatever the order of the columns; the other columns are carried along.
    let codes = |file: &str, out: &str| {
        ok(&[
            "encode", "--model", &model, "--data", file, "--out", out, "--device", "cpu",
        ]);
        std::fs::read_to_string(out).unwrap()
    };
    let (a, b) = (
        codes(&data, &s.path("a.csv")),
        codes(&reordered, &s.path("b.csv")),
    );
    let code_part = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(',').skip(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(code_part(&a), code_part(&b));
    assert!(b.starts_with("label,Id,code_0,code_1\n"), "{b}");
    // A renamed feature is refused, naming it and what the file has instead.
    let renamed = s.file(
        "renamed.csv",
        text.replacen("Id,a,b,c,d,label", "Id,a,bb,c,d,label", 1),
    );
    refused(
        &[
            "eval", "--model", &model, "--data", &renamed, "--device", "cpu",
        ],
        &["renamed.csv", "no column 'b'", "feature 2 of 4", "bb"],
    );
    refused(
        &[
            "encode",
            "--model",
            &model,
            "--data",
            &renamed,
            "--out",
            &s.path("c.csv"),
            "--device",
            "cpu",
        ],
        &["renamed.csv", "no column 'b'"],
    );
}
