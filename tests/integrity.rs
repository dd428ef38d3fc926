//! Nothing silently wrong, through the real binary: a model file with a flipped bit (a weight, the optimizer
//! state, the metadata) is refused naming the file, and a file without a checksum still loads and says so;
//! non-finite weights are refused at load; a result that is not a finite number is an error, not a number.
//! And, in the library, every single-bit flip of a model file is refused.

mod common;

use common::binary::*;
use std::path::Path;

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
