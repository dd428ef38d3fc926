//! Property-based fuzzing of the two readers that take user files: the CSV loader and the model-file reader.
//! Every input must give Ok or a one-line error, never a panic; an accepted CSV must hold only finite numbers
//! in the shape it reports; a mutated model file that still loads holds what was written. Each test prints how many inputs it ran (`cargo test --test fuzz_readers`).
//! TIEDAE_FUZZ_CASES raises the count for a longer run.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::Write;
use std::path::PathBuf;
use tiedae::activation::Activation;
use tiedae::data::{load_csv, parse_selectors, Normalization};
use tiedae::io::{self, ModelFile};
use tiedae::model::ModelSpec;

/// Runs `check` on `default` inputs drawn from `strategy` (or TIEDAE_FUZZ_CASES), each written to the
/// scratch file `file`, and reports the count.
fn fuzz<S: Strategy>(
    what: &str,
    file: &str,
    default: u32,
    strategy: S,
    check: impl Fn(&PathBuf, S::Value) -> Result<(), TestCaseError>,
) {
    let path = temp(file);
    let n = cases(default);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    runner.run(&strategy, |v| check(&path, v)).unwrap();
    let _ = std::fs::remove_file(&path);
    report(what, n);
}

fn cases(default: u32) -> u32 {
    std::env::var("TIEDAE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tiedae-fuzz-{name}-{}", std::process::id()))
}

fn report(what: &str, n: u32) {
    let _ = writeln!(std::io::stderr(), "fuzz: {what}: {n} inputs, no panic");
}

fn one_line(e: &tiedae::Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    Ok(())
}

fn check_csv(path: &PathBuf, bytes: &[u8], ignore: &str) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    match load_csv(path, &parse_selectors(ignore)) {
        Ok(d) => {
            prop_assert_eq!(d.values.len(), d.rows * d.cols);
            prop_assert_eq!(d.feature_names.len(), d.cols);
            prop_assert_eq!(d.ignored_values.len(), d.rows * d.ignored_names.len());
            prop_assert!(d.rows > 0 && d.cols > 0);
            prop_assert!(d.values.iter().all(|x| x.is_finite()));
            let _ = Normalization::fit(tiedae::data::NormalizeKind::Standard, &d);
        }
        Err(e) => one_line(&e)?,
    }
    Ok(())
}

/// Cells that stress the parser: numbers in many spellings, text, specials, quotes, separators, newlines.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f32>().prop_map(|x| x.to_string()),
        (-1000i32..1000).prop_map(|x| x.to_string()),
        Just(String::new()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        Just("1e39".to_string()),
        Just(" 3.5 ".to_string()),
        Just("\"4,5\"".to_string()),
        Just("\"a\nb\"".to_string()),
        Just("\u{feff}7".to_string()),
        "[a-zA-Z_]{1,6}",
        "[0-9.eE+-]{1,8}",
    ]
}

fn csv_text() -> impl Strategy<Value = (String, String)> {
    let row = prop::collection::vec(cell(), 1..6).prop_map(|cells| cells.join(","));
    let rows = prop::collection::vec(row, 0..8);
    let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\n\n")];
    let ignore = prop_oneof![Just(""), Just("0"), Just("1,2"), Just("a"), Just("9")];
    (rows, eol, ignore).prop_map(|(rows, eol, ignore)| (rows.join(eol), ignore.to_string()))
}

#[test]
fn csv_reader_never_panics_on_structured_input() {
    fuzz(
        "CSV reader, structured rows",
        "csv-structured.csv",
        4000,
        csv_text(),
        |path, (text, ignore)| check_csv(path, text.as_bytes(), &ignore),
    );
}

#[test]
fn csv_reader_never_panics_on_random_bytes() {
    let bytes = prop::collection::vec(
        prop_oneof![any::<u8>(), Just(b','), Just(b'\n'), Just(b'1'), Just(b'"')],
        0..512,
    );
    fuzz(
        "CSV reader, random bytes",
        "csv-bytes.csv",
        4000,
        bytes,
        |path, b| check_csv(path, &b, ""),
    );
}

fn valid_model_bytes() -> Vec<u8> {
    let spec = ModelSpec::new(
        vec![5, 3, 2],
        Activation::Tanh,
        Activation::Linear,
        Activation::Sigmoid,
    )
    .unwrap();
    let model = ModelFile {
        params: spec.glorot_init(1),
        normalization: tiedae::data::Normalization::identity(5),
        feature_names: (0..5).map(|i| format!("f{i}")).collect(),
        ignore: parse_selectors("id"),
        training: Default::default(),
        checkpoint: None,
        noise: Default::default(),
        spec,
    };
    let path = temp("valid.safetensors");
    io::save_model(&path, &model).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    bytes
}

fn check_model(path: &PathBuf, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).unwrap();
    if let Err(e) = io::load_model(path) {
        one_line(&e)?;
    }
    if let Err(e) = io::widths_in(path) {
        one_line(&e)?;
    }
    let spec = ModelSpec::new(
        vec![5, 3, 2],
        Activation::Tanh,
        Activation::Linear,
        Activation::Sigmoid,
    )
    .unwrap();
    if let Ok(p) = io::load_weights(path, &spec) {
        prop_assert_eq!(p.len(), spec.param_count());
        prop_assert!(p.iter().all(|x| x.is_finite()));
    }
    Ok(())
}

#[test]
fn model_reader_never_panics_on_mutated_files() {
    let valid = valid_model_bytes();
    let valid_model = {
        let path = temp("valid-read.safetensors");
        std::fs::write(&path, &valid).unwrap();
        let m = io::load_model(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        m
    };
    let len = valid.len();
    let edits = prop::collection::vec((0..len, any::<u8>()), 0..6);
    let cut = prop_oneof![Just(None), (0..len).prop_map(Some)];
    let what = "model reader, mutated valid files";
    fuzz(
        what,
        "model-mutated.safetensors",
        4000,
        (edits, cut),
        |path, (edits, cut)| {
            let mut b = valid.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            check_model(path, &b)?;
            // The checksum: a file that still loads holds what was written (an edit that loads can only
            // have touched what the checksum does not see, such as the header's padding).
            if let Ok(m) = io::load_model(path) {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&m.params), bits(&valid_model.params));
                prop_assert_eq!(&m.feature_names, &valid_model.feature_names);
                prop_assert_eq!(&m.training, &valid_model.training);
            }
            Ok(())
        },
    );
}

#[test]
fn model_reader_never_panics_on_forged_headers() {
    // A well-formed length prefix with an arbitrary JSON-ish header: names, dtypes, shapes and offsets that lie.
    let name = prop_oneof![
        Just("encoder.0.kernel"),
        Just("encoder.0.bias"),
        Just("decoder.0.bias"),
        Just("encoder.1.kernel"),
        Just("decoder.0.kernel"),
        Just("normalization.shift")
    ];
    let dtype = prop_oneof![Just("F32"), Just("F64"), Just("I8"), Just("BOOL")];
    let entry = (
        name,
        dtype,
        prop::collection::vec(0usize..6, 0..3),
        0usize..64,
        0usize..64,
    );
    let meta = prop_oneof![
        Just(String::new()),
        Just(r#""__metadata__":{"format":"tiedae","format_version":"1","widths":"2,1","activation":"relu","code_activation":"linear","output_activation":"linear","normalize":"none","feature_names":"[\"a\",\"b\"]","ignore_columns":"[]"},"#.to_string()),
        Just(r#""__metadata__":{"format":"tiedae","format_version":"1","widths":"0,x"},"#.to_string()),
    ];
    let strategy = (
        prop::collection::vec(entry, 0..5),
        meta,
        prop::collection::vec(any::<u8>(), 0..64),
    );
    let what = "model reader, forged headers";
    fuzz(
        what,
        "model-forged.safetensors",
        3000,
        strategy,
        |path, (entries, meta, data)| {
            let body: Vec<String> = entries
                .iter()
                .map(|(n, d, shape, a, b)| {
                    format!(r#""{n}":{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{a},{b}]}}"#)
                })
                .collect();
            let header = format!("{{{meta}{}}}", body.join(","));
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&data);
            check_model(path, &bytes)
        },
    );
}
