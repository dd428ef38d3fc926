//! Unit tests of the CSV reader and the normalization.

use super::*;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary file removed on drop.
struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tmp(contents: impl AsRef<[u8]>) -> Tmp {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!("tiedae-data-test-{}-{n}.csv", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    Tmp(p)
}

fn load(contents: &str, ignore: &str) -> Result<Dataset> {
    let t = tmp(contents);
    load_csv(&t.0, &parse_selectors(ignore))
}

fn err(contents: impl AsRef<[u8]>, ignore: &str) -> Error {
    let t = tmp(contents);
    let e = load_csv(&t.0, &parse_selectors(ignore)).unwrap_err();
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(
        msg.contains(&t.0.display().to_string()) || matches!(e, Error::Flag { .. }),
        "{msg}"
    );
    e
}

fn data_at(e: &Error) -> (u64, usize, Option<&str>, &str) {
    match e {
        Error::DataAt {
            line,
            column,
            name,
            msg,
            ..
        } => (*line, *column, name.as_deref(), msg.as_str()),
        other => panic!("expected DataAt, got {other:?}"),
    }
}

#[test]
fn selectors() {
    assert_eq!(ColumnSelector::parse(" 3 "), ColumnSelector::Index(3));
    assert_eq!(
        ColumnSelector::parse(" Id "),
        ColumnSelector::Name("Id".into())
    );
    assert_eq!(
        ColumnSelector::parse("-1"),
        ColumnSelector::Name("-1".into())
    );
    assert_eq!(
        ColumnSelector::parse("99999999999999999999999"),
        ColumnSelector::Index(usize::MAX)
    );
    assert_eq!(
        parse_selectors("Id, 2,,label ,"),
        vec![
            ColumnSelector::Name("Id".into()),
            ColumnSelector::Index(2),
            ColumnSelector::Name("label".into())
        ]
    );
    assert!(parse_selectors("").is_empty());
}

#[test]
fn header_detected() {
    let d = load("a,b,c\n1,2,3\n4,5,6\n", "").unwrap();
    assert!(d.has_header);
    assert_eq!(d.feature_names, ["a", "b", "c"]);
    assert_eq!((d.rows, d.cols), (2, 3));
    assert_eq!(d.values, [1., 2., 3., 4., 5., 6.]);
    assert!(d.ignored_names.is_empty() && d.ignored_values.is_empty());
}

#[test]
fn no_header() {
    let d = load(" 1, 2.5 ,-3e2\n4,5,6\r\n", "").unwrap();
    assert!(!d.has_header);
    assert_eq!(d.feature_names, ["col0", "col1", "col2"]);
    assert_eq!((d.rows, d.cols), (2, 3));
    assert_eq!(d.values, [1., 2.5, -300., 4., 5., 6.]);
}

#[test]
fn header_with_one_text_cell_and_empty_cell() {
    let d = load("1,x,3\n1,2,3\n", "").unwrap();
    assert!(d.has_header);
    assert_eq!(d.feature_names, ["1", "x", "3"]);
    let d = load("1,,3\n1,2,3\n", "").unwrap();
    assert!(d.has_header);
    assert_eq!(d.rows, 1);
}

#[test]
fn ignore_by_name() {
    let d = load("Id,x,y,label\nA,1,2,cat\nB,3,4,dog\n", "Id,label").unwrap();
    assert_eq!(d.feature_names, ["x", "y"]);
    assert_eq!(d.ignored_names, ["Id", "label"]);
    assert_eq!(d.ignored_values, ["A", "cat", "B", "dog"]);
    assert_eq!(d.values, [1., 2., 3., 4.]);
}

#[test]
fn ignore_by_index_without_header() {
    let d = load("7,1,2\n8,3,4\n", "0").unwrap();
    assert_eq!(d.feature_names, ["col1", "col2"]);
    assert_eq!(d.ignored_names, ["col0"]);
    assert_eq!(d.ignored_values, ["7", "8"]);
    assert_eq!(d.values, [1., 2., 3., 4.]);
}

#[test]
fn ignore_mixed_keeps_raw_text() {
    let d = load("Id,x,y,label\n A ,1,2, not a number \nB,3,4,\n", "3, Id").unwrap();
    assert_eq!(d.feature_names, ["x", "y"]);
    assert_eq!(d.ignored_names, ["Id", "label"]);
    assert_eq!(d.ignored_values, [" A ", " not a number ", "B", ""]);
}

#[test]
fn ignore_errors() {
    let e = err("a,b\n1,2\n", "c");
    assert!(
        matches!(&e, Error::Flag { flag, .. } if flag == "--ignore-columns"),
        "{e}"
    );
    assert!(e.to_string().contains("no column named 'c'"), "{e}");
    assert!(e.to_string().contains("(columns: a, b)"), "{e}");

    let e = err("1,2\n3,4\n", "a");
    assert!(matches!(&e, Error::Flag { .. }), "{e}");
    assert!(e.to_string().contains("no column named 'a'"), "{e}");
    assert!(e.to_string().contains("no header"), "{e}");

    let e = err("1,2\n3,4\n", "2");
    assert!(matches!(&e, Error::Flag { .. }), "{e}");
    assert!(e.to_string().contains("has 2 columns"), "{e}");

    let e = err("a,b\n1,2\n", "0,b");
    assert_eq!(e.to_string(), "--ignore-columns: leaves no feature columns");

    let header = (0..30)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let row = vec!["1"; 30].join(",");
    let e = err(format!("{header}\n{row}\n"), "zz");
    let m = e.to_string();
    assert!(m.contains("c9, …)"), "{m}");
    assert!(!m.contains("c10"), "{m}");
}

#[test]
fn ragged_rows() {
    // Short row on physical line 3 (header counted).
    let e = err("a,b,c\n1,2,3\n4,5\n", "");
    assert_eq!(data_at(&e), (3, 3, Some("c"), "expected 3 fields, found 2"));
    // Long row, no header, after a blank line: line 4.
    let e = err("1,2\n3,4\n\n5,6,7\n", "");
    assert_eq!(data_at(&e), (4, 3, None, "expected 2 fields, found 3"));
    assert!(
        e.to_string()
            .contains("line 4, column 3: expected 2 fields, found 3"),
        "{e}"
    );
}

#[test]
fn line_numbers_count_blank_lines_crlf_and_quoted_newlines() {
    let e = err("\n\na,b\n\n1,2\n\n\n3,x\n", "");
    assert_eq!(
        data_at(&e),
        (8, 2, Some("b"), "expected a number, found 'x'")
    );
    let e = err("a,b\r\n\r\n1,2\r\n\r\n\r\n3,x\r\n", "");
    assert_eq!(
        data_at(&e),
        (6, 2, Some("b"), "expected a number, found 'x'")
    );
    let e = err("a,b\r\n1,2\r\n3,x\r\n", "");
    assert_eq!(data_at(&e).0, 3);
    let e = err("a,b\n\"p\nq\",2\n\n3,x", "a");
    assert_eq!(
        data_at(&e),
        (5, 2, Some("b"), "expected a number, found 'x'")
    );
    let e = err("  \n1,2\n   \n3,4,5\n", "");
    assert_eq!(data_at(&e), (4, 3, None, "expected 2 fields, found 3"));
}

#[test]
fn text_cell() {
    let e = err("a,b,c\n1,2,3\n\n4,abc,6\n", "");
    assert_eq!(
        data_at(&e),
        (4, 2, Some("b"), "expected a number, found 'abc'")
    );
    let t = e.to_string();
    assert!(
        t.ends_with("line 4, column 2 ('b'): expected a number, found 'abc'"),
        "{t}"
    );
    // An all-numeric first line is data, so there is no name to show.
    let e = err("1,2\n3,x\n", "");
    assert_eq!(data_at(&e), (2, 2, None, "expected a number, found 'x'"));
    let t = e.to_string();
    assert!(
        t.ends_with("line 2, column 2: expected a number, found 'x'"),
        "{t}"
    );
}

#[test]
fn empty_cell() {
    let e = err("1,2\n3, \n", "");
    assert_eq!(data_at(&e).0, 2); // first line has no empty cell, so no header
    assert_eq!(data_at(&e), (2, 2, None, "empty cell"));
}

#[test]
fn non_finite() {
    for (bad, shown) in [
        ("nan", "nan"),
        (" NaN ", "NaN"),
        ("inf", "inf"),
        ("-infinity", "-infinity"),
        ("1e39", "1e39"),
    ] {
        let e = err(format!("x,y\n1,2\n3,{bad}\n"), "");
        let msg = format!("not a finite number: '{shown}'");
        assert_eq!(data_at(&e), (3, 2, Some("y"), msg.as_str()));
    }
    // In the first line, "nan" parses as a float: no header, and the error is on line 1.
    let e = err("nan,1\n2,3\n", "");
    assert_eq!(data_at(&e), (1, 1, None, "not a finite number: 'nan'"));
}

#[test]
fn quoted_multiline_cell_message_is_one_line() {
    let e = err("a,b\n1,\"x\ny\"\n", "");
    let (line, col, _, msg) = data_at(&e);
    assert_eq!((line, col), (2, 2));
    assert_eq!(msg, "expected a number, found 'x\\ny'");
}

#[test]
fn empty_and_header_only() {
    let e = err("", "");
    assert!(
        matches!(&e, Error::File { msg, .. } if msg == "empty file: no rows"),
        "{e}"
    );
    let e = err("\n\n", "");
    assert!(
        matches!(&e, Error::File { msg, .. } if msg == "empty file: no rows"),
        "{e}"
    );
    let e = err("a,b\n", "");
    assert!(
        matches!(&e, Error::File { msg, .. } if msg == "no data rows after the header"),
        "{e}"
    );
    let e = err("a,b\n\n", "");
    assert!(
        matches!(&e, Error::File { msg, .. } if msg == "no data rows after the header"),
        "{e}"
    );
}

#[test]
fn missing_file() {
    let p = std::env::temp_dir().join("tiedae-data-test-does-not-exist.csv");
    let e = load_csv(&p, &[]).unwrap_err();
    assert!(
        matches!(&e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    assert!(e.to_string().starts_with(&p.display().to_string()));
}

#[test]
fn directory_is_io_error() {
    let e = load_csv(&std::env::temp_dir(), &[]).unwrap_err();
    assert!(matches!(&e, Error::Io { .. }), "{e:?}");
}

#[test]
fn bom() {
    let d = load("\u{feff}Id,x\nA,1\n", "Id").unwrap();
    assert!(d.has_header);
    assert_eq!(d.ignored_names, ["Id"]);
    assert_eq!(d.feature_names, ["x"]);
    let d = load("\u{feff}1,2\n3,4\n", "").unwrap();
    assert!(!d.has_header);
    assert_eq!(d.values, [1., 2., 3., 4.]);
}

#[test]
fn invalid_utf8() {
    let e = err(b"a,b\n1,2\n3,\xff\n".as_slice(), "");
    assert_eq!(data_at(&e), (3, 2, Some("b"), "not valid UTF-8"));
    let e = err(b"a,\xfe\n1,2\n".as_slice(), "");
    assert_eq!(data_at(&e), (1, 2, None, "not valid UTF-8"));
}

#[test]
fn digits() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv");
    let d = load_csv(&p, &parse_selectors("digit")).unwrap();
    assert!(d.has_header);
    assert_eq!((d.rows, d.cols), (1797, 64));
    assert_eq!(d.values.len(), 1797 * 64);
    assert_eq!(d.feature_names.first().map(String::as_str), Some("pixel0"));
    assert_eq!(d.feature_names.last().map(String::as_str), Some("pixel63"));
    assert_eq!(d.ignored_names, ["digit"]);
    assert_eq!(d.ignored_values.len(), 1797);
    assert_eq!(d.ignored_values.first().map(String::as_str), Some("0"));
}

fn ds(rows: usize, cols: usize, values: Vec<f32>) -> Dataset {
    Dataset {
        path: PathBuf::from("mem.csv"),
        feature_names: (0..cols).map(|i| format!("col{i}")).collect(),
        rows,
        cols,
        values,
        ignored_names: vec![],
        ignored_values: vec![],
        has_header: false,
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

#[test]
fn normalize_kind_parse() {
    for k in [
        NormalizeKind::None,
        NormalizeKind::Standard,
        NormalizeKind::MinMax,
    ] {
        assert_eq!(k.as_str().parse::<NormalizeKind>(), Ok(k));
        assert_eq!(k.to_string(), k.as_str());
    }
    let e = "zscore".parse::<NormalizeKind>().unwrap_err();
    assert!(e.contains("none, standard, minmax"), "{e}");
}

// Columns: varying, constant 0.1 (rounding-prone), constant 0.
const ORIG: [f32; 9] = [1.0, 0.1, 0.0, 2.0, 0.1, 0.0, 4.0, 0.1, 0.0];

#[test]
fn normalize_none() {
    let mut d = ds(3, 3, ORIG.to_vec());
    let n = Normalization::fit(NormalizeKind::None, &d);
    assert_eq!(n.shift, [0.0; 3]);
    assert_eq!(n.scale, [1.0; 3]);
    n.apply(&mut d);
    assert_eq!(d.values, ORIG);
}

#[test]
fn normalize_standard() {
    let mut d = ds(3, 3, ORIG.to_vec());
    let n = Normalization::fit(NormalizeKind::Standard, &d);
    let mean = 7.0f64 / 3.0;
    let var = ((1.0 - mean).powi(2) + (2.0 - mean).powi(2) + (4.0 - mean).powi(2)) / 3.0;
    assert!(close(&n.shift, &[mean as f32, 0.1, 0.0]), "{n:?}");
    assert!(
        close(&n.scale, &[(1.0 / var.sqrt()) as f32, 1.0, 1.0]),
        "{n:?}"
    );
    assert_eq!(&n.scale[1..], [1.0, 1.0]);
    n.apply(&mut d);
    let col0: Vec<f32> = d.values.iter().step_by(3).copied().collect();
    let m: f32 = col0.iter().sum::<f32>() / 3.0;
    let v: f32 = col0.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / 3.0;
    assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5, "{col0:?}");
    assert_eq!(d.values[1], 0.0);
    assert_eq!(d.values[2], 0.0);
    for row in d.values.chunks_mut(3) {
        n.invert_row(row);
    }
    assert!(close(&d.values, &ORIG), "{:?}", d.values);
}

#[test]
fn normalize_minmax() {
    let mut d = ds(3, 3, ORIG.to_vec());
    let n = Normalization::fit(NormalizeKind::MinMax, &d);
    assert_eq!(n.shift, [1.0, 0.1, 0.0]);
    assert_eq!(n.scale, [1.0 / 3.0, 1.0, 1.0]);
    n.apply(&mut d);
    assert!(
        close(
            &d.values,
            &[0.0, 0.0, 0.0, 1.0 / 3.0, 0.0, 0.0, 1.0, 0.0, 0.0]
        ),
        "{:?}",
        d.values
    );
    for row in d.values.chunks_mut(3) {
        n.invert_row(row);
    }
    assert!(close(&d.values, &ORIG), "{:?}", d.values);
}

#[test]
fn normalize_extremes_stay_finite() {
    let mut d = ds(2, 1, vec![-3.0e38, 3.0e38]);
    for kind in [NormalizeKind::Standard, NormalizeKind::MinMax] {
        let n = Normalization::fit(kind, &d);
        assert!(
            n.shift.iter().chain(&n.scale).all(|x| x.is_finite()),
            "{n:?}"
        );
        let mut c = d.clone();
        n.apply(&mut c);
        assert!(c.values.iter().all(|x| x.is_finite()), "{:?}", c.values);
    }
    let n = Normalization::fit(NormalizeKind::Standard, &ds(0, 2, vec![]));
    assert_eq!(n.scale, [1.0, 1.0]);
    d.cols = 0;
    d.rows = 0;
    d.values.clear();
    Normalization {
        kind: NormalizeKind::None,
        shift: vec![],
        scale: vec![],
    }
    .apply(&mut d);
}

fn for_model(contents: &str, features: &[&str], ignore: &str) -> Result<Dataset> {
    let t = tmp(contents);
    let features: Vec<String> = features.iter().map(|s| s.to_string()).collect();
    load_csv_for_model(&t.0, &features, &parse_selectors(ignore))
}

#[test]
fn a_model_finds_its_columns_by_name() {
    // Reordered, with a column the model does not know and without its label: features in the model's
    // order, every other column carried as text in file order.
    let d = for_model("z,b,Id,a\n9,2,x,1\n8,4,y,3\n", &["a", "b"], "Id,label").unwrap();
    assert_eq!(d.feature_names, ["a", "b"]);
    assert_eq!(d.values, [1., 2., 3., 4.]);
    assert_eq!(d.ignored_names, ["z", "Id"]);
    assert_eq!(d.ignored_values, ["9", "x", "8", "y"]);
    // A name the model has twice is matched occurrence by occurrence.
    let d = for_model("a,b,a\n1,2,3\n", &["a", "a", "b"], "").unwrap();
    assert_eq!(d.values, [1., 3., 2.]);
    // A missing feature is named, with what the file has instead.
    let e = for_model("a,bb\n1,2\n", &["a", "b"], "")
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("has no column 'b', which the model takes (feature 2 of 2); columns the model does not take: bb"),
        "{e}"
    );
    let e = for_model("a,b\n1,2\n", &["a", "b", "a"], "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no column 'a'") && e.contains("feature 3 of 3"),
        "{e}"
    );
    // A model trained without a header says to give the data without one.
    let e = for_model("x,y\n1,2\n", &["col0", "col1"], "")
        .unwrap_err()
        .to_string();
    assert!(e.contains("without a header row"), "{e}");
}

#[test]
fn a_file_without_a_header_is_taken_by_position() {
    // The model's width: the features alone.
    let d = for_model("1,2\n3,4\n", &["a", "b"], "label").unwrap();
    assert_eq!(
        (d.values.clone(), d.ignored_names.len()),
        (vec![1., 2., 3., 4.], 0)
    );
    // Wider: the training's ignored columns are left out by index, as in training.
    let d = for_model("7,1,2\n8,3,4\n", &["a", "b"], "0").unwrap();
    assert_eq!(d.values, [1., 2., 3., 4.]);
    assert_eq!(d.ignored_values, ["7", "8"]);
    let e = for_model("7,1,2,5\n8,3,4,6\n", &["a", "b"], "0")
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("has 3 feature columns after ignoring [0], but the model takes 2"),
        "{e}"
    );
}

#[test]
fn column_names_come_from_the_first_row_alone() {
    let names = |contents: &str| {
        let t = tmp(contents);
        let mut got = Vec::new();
        let n = column_names(&t.0, &mut |s| got.push(s.to_string())).unwrap();
        assert_eq!(n, got.len());
        got
    };
    assert_eq!(names("\u{feff}Id, x ,y\n1,2,3\n"), ["Id", "x", "y"]);
    assert_eq!(names("\n1,2,3\nnot,even,read"), ["col0", "col1", "col2"]);
}
