//! Reading a CSV data set into a row-major `f32` matrix, and the per-column normalization stored in the model.
//!
//! Every problem in a file is reported as one line naming the file, the physical 1-based line (the header
//! counted) and the 1-based column, with the column's name when the file has a header.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

const IGNORE_FLAG: &str = "--ignore-columns";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A column to leave out of the features, as given to `--ignore-columns`: a header name, or a 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColumnSelector {
    Name(String),
    Index(usize),
}

impl ColumnSelector {
    /// All ASCII digits (after trimming) → `Index`, anything else → `Name` (trimmed).
    pub fn parse(s: &str) -> ColumnSelector {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            // Too many digits for a usize cannot be a valid index; keep it out of range so the loader says so.
            ColumnSelector::Index(t.parse().unwrap_or(usize::MAX))
        } else {
            ColumnSelector::Name(t.to_string())
        }
    }
}

impl fmt::Display for ColumnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnSelector::Name(n) => write!(f, "{n}"),
            ColumnSelector::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Splits a comma-separated list of selectors; empty items are skipped.
pub fn parse_selectors(list: &str) -> Vec<ColumnSelector> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(ColumnSelector::parse)
        .collect()
}

/// A data set as a row-major f32 matrix.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    /// Header names of the feature columns, or `col{i}` (i = 0-based index in the file) without a header.
    pub feature_names: Vec<String>,
    pub rows: usize,
    /// Number of feature columns.
    pub cols: usize,
    /// rows × cols, row-major.
    pub values: Vec<f32>,
    /// Names of the ignored columns, in file order.
    pub ignored_names: Vec<String>,
    /// rows × ignored_names.len(), the raw text of ignored cells (Id, label...), kept for `encode`.
    pub ignored_values: Vec<String>,
    pub has_header: bool,
}

/// Shows user text inside a one-line message: control characters escaped, long text cut.
fn show(s: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    let pos = e.position().map(|p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Error::io(path, io),
        csv::ErrorKind::Utf8 { pos, err } => match pos {
            Some(p) => Error::DataAt {
                path: path.to_path_buf(),
                line: p.line(),
                column: err.field() + 1,
                name: None,
                msg: "not valid UTF-8".to_string(),
            },
            None => Error::file(path, "not valid UTF-8"),
        },
        other => {
            let msg = format!("cannot read CSV: {}", show(&format!("{other:?}")));
            match pos {
                Some(line) => Error::DataAt {
                    path: path.to_path_buf(),
                    line,
                    column: 1,
                    name: None,
                    msg,
                },
                None => Error::file(path, msg),
            }
        }
    }
}

/// The cells of one record as text, trimmed of nothing; a BOM is stripped from the very first cell.
fn record_strings(
    path: &Path,
    rec: &csv::ByteRecord,
    first: bool,
    header: Option<&[String]>,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(rec.len());
    for (j, field) in rec.iter().enumerate() {
        let bytes = if first && j == 0 {
            field.strip_prefix(UTF8_BOM).unwrap_or(field)
        } else {
            field
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => out.push(s.to_string()),
            Err(_) => {
                return Err(Error::DataAt {
                    path: path.to_path_buf(),
                    line: record_line(path, rec.position()),
                    column: j + 1,
                    name: header.and_then(|h| h.get(j)).map(|n| show(n)),
                    msg: "not valid UTF-8".to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// The physical 1-based line where a record starts. The `csv` crate stamps a record with the position where
/// reading began, i.e. before any blank lines it skipped (and, with CRLF, before the previous record's `\n`);
/// on the error path we reread those few bytes and count the line breaks.
fn record_line(path: &Path, pos: Option<&csv::Position>) -> u64 {
    use std::io::{BufRead, Seek, SeekFrom};
    let Some(pos) = pos else { return 0 };
    let mut line = pos.line();
    let Ok(mut f) = std::fs::File::open(path) else {
        return line;
    };
    if f.seek(SeekFrom::Start(pos.byte())).is_err() {
        return line;
    }
    let mut r = std::io::BufReader::new(f);
    loop {
        let (n, done) = match r.fill_buf() {
            Ok([]) | Err(_) => return line,
            Ok(buf) => {
                let n = buf
                    .iter()
                    .take_while(|&&b| b == b'\n' || b == b'\r')
                    .count();
                line += buf.iter().take(n).filter(|&&b| b == b'\n').count() as u64;
                (n, n < buf.len())
            }
        };
        if done {
            return line;
        }
        r.consume(n);
    }
}

/// A record that is one cell of nothing but whitespace: a blank line for our purposes.
fn is_blank(rec: &csv::ByteRecord) -> bool {
    rec.len() == 1
        && rec
            .get(0)
            .is_some_and(|f| f.iter().all(|b| b.is_ascii_whitespace()))
}

fn column_list(names: &[String]) -> String {
    const MAX: usize = 10;
    let mut s = names
        .iter()
        .take(MAX)
        .map(|n| show(n))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX {
        s.push_str(", …");
    }
    s
}

/// Which of the `ncols` file columns the selectors leave out.
fn resolve_ignored(
    path: &Path,
    ignore: &[ColumnSelector],
    header: Option<&[String]>,
    ncols: usize,
) -> Result<Vec<bool>> {
    let mut ignored = vec![false; ncols];
    for sel in ignore {
        match sel {
            ColumnSelector::Index(i) => match ignored.get_mut(*i) {
                Some(slot) => *slot = true,
                None => {
                    return Err(Error::flag(
                        IGNORE_FLAG,
                        format!(
                            "column index {i} is out of range: {} has {ncols} column{} (0-based indices 0..={})",
                            path.display(),
                            if ncols == 1 { "" } else { "s" },
                            ncols.saturating_sub(1)
                        ),
                    ))
                }
            },
            ColumnSelector::Name(name) => {
                let Some(h) = header else {
                    return Err(Error::flag(
                        IGNORE_FLAG,
                        format!(
                            "no column named '{}' in {}: the file has no header row (give a 0-based index below {ncols} instead)",
                            show(name),
                            path.display()
                        ),
                    ));
                };
                let mut found = false;
                for (slot, hn) in ignored.iter_mut().zip(h) {
                    if hn == name {
                        *slot = true;
                        found = true;
                    }
                }
                if !found {
                    return Err(Error::flag(
                        IGNORE_FLAG,
                        format!(
                            "no column named '{}' in {} (columns: {})",
                            show(name),
                            path.display(),
                            column_list(h)
                        ),
                    ));
                }
            }
        }
    }
    Ok(ignored)
}

/// Reads a CSV file: an optional header (detected: any non-numeric cell in the first record), every other
/// column a finite number except those `ignore` leaves out, whose raw text is kept.
pub fn load_csv(path: &Path, ignore: &[ColumnSelector]) -> Result<Dataset> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));

    let mut rec = csv::ByteRecord::new();
    // The first record that is not blank.
    let first_pos = loop {
        if !reader
            .read_byte_record(&mut rec)
            .map_err(|e| csv_error(path, e))?
        {
            return Err(Error::file(path, "empty file: no rows"));
        }
        if !is_blank(&rec) {
            break rec.position().cloned();
        }
    };
    let first = record_strings(path, &rec, true, None)?;
    let ncols = first.len();
    let has_header = first.iter().any(|c| c.trim().parse::<f32>().is_err());
    let header: Option<Vec<String>> =
        has_header.then(|| first.iter().map(|c| c.trim().to_string()).collect());
    let names: Vec<String> = match &header {
        Some(h) => h.clone(),
        None => (0..ncols).map(|i| format!("col{i}")).collect(),
    };

    let ignored = resolve_ignored(path, ignore, header.as_deref(), ncols)?;
    let feature_names: Vec<String> = names
        .iter()
        .zip(&ignored)
        .filter(|(_, &ig)| !ig)
        .map(|(n, _)| n.clone())
        .collect();
    let ignored_names: Vec<String> = names
        .iter()
        .zip(&ignored)
        .filter(|(_, &ig)| ig)
        .map(|(n, _)| n.clone())
        .collect();
    if feature_names.is_empty() {
        return Err(Error::flag(IGNORE_FLAG, "leaves no feature columns"));
    }
    let cols = feature_names.len();

    let mut ds = Dataset {
        path: path.to_path_buf(),
        feature_names,
        rows: 0,
        cols,
        values: Vec::new(),
        ignored_names,
        ignored_values: Vec::new(),
        has_header,
    };

    let hdr = header.as_deref();
    let col_name = |j: usize| hdr.and_then(|h| h.get(j)).map(|n| show(n));
    let push_row =
        |ds: &mut Dataset, cells: &[String], pos: Option<&csv::Position>| -> Result<()> {
            for (j, (cell, &ig)) in cells.iter().zip(&ignored).enumerate() {
                if ig {
                    ds.ignored_values.push(cell.clone());
                    continue;
                }
                let t = cell.trim();
                let msg = if t.is_empty() {
                    "empty cell".to_string()
                } else {
                    match t.parse::<f32>() {
                        Ok(v) if v.is_finite() => {
                            ds.values.push(v);
                            continue;
                        }
                        Ok(_) => format!("not a finite number: '{}'", show(t)),
                        Err(_) => format!("expected a number, found '{}'", show(t)),
                    }
                };
                return Err(Error::DataAt {
                    path: path.to_path_buf(),
                    line: record_line(path, pos),
                    column: j + 1,
                    name: col_name(j),
                    msg,
                });
            }
            ds.rows += 1;
            Ok(())
        };

    if !has_header {
        push_row(&mut ds, &first, first_pos.as_ref())?;
    }
    while reader
        .read_byte_record(&mut rec)
        .map_err(|e| csv_error(path, e))?
    {
        if is_blank(&rec) {
            continue;
        }
        if rec.len() != ncols {
            let column = rec.len().min(ncols) + 1;
            return Err(Error::DataAt {
                path: path.to_path_buf(),
                line: record_line(path, rec.position()),
                column,
                name: col_name(column - 1),
                msg: format!("expected {ncols} fields, found {}", rec.len()),
            });
        }
        let cells = record_strings(path, &rec, false, hdr)?;
        push_row(&mut ds, &cells, rec.position())?;
    }

    if ds.rows == 0 {
        return Err(Error::file(path, "no data rows after the header"));
    }
    Ok(ds)
}

/// How the feature columns are normalized before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormalizeKind {
    None,
    Standard,
    MinMax,
}

impl NormalizeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NormalizeKind::None => "none",
            NormalizeKind::Standard => "standard",
            NormalizeKind::MinMax => "minmax",
        }
    }
}

impl fmt::Display for NormalizeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NormalizeKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(NormalizeKind::None),
            "standard" => Ok(NormalizeKind::Standard),
            "minmax" => Ok(NormalizeKind::MinMax),
            _ => Err(format!(
                "unknown normalization '{}' (valid values: none, standard, minmax)",
                show(s)
            )),
        }
    }
}

/// Per-column affine map `x' = (x - shift[j]) · scale[j]`; stored in the model file, applied again by eval/encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub kind: NormalizeKind,
    pub shift: Vec<f32>,
    pub scale: Vec<f32>,
}

/// `1/d` as a usable f32 scale: 1 where the spread is zero or the result would not be finite and non-zero.
fn inv_scale(d: f64) -> f32 {
    if d > 0.0 {
        let s = (1.0 / d) as f32;
        if s.is_finite() && s > 0.0 {
            return s;
        }
    }
    1.0
}

impl Normalization {
    /// The normalization that does nothing, for weights that come without one.
    pub fn identity(cols: usize) -> Normalization {
        Normalization {
            kind: NormalizeKind::None,
            shift: vec![0.0; cols],
            scale: vec![1.0; cols],
        }
    }

    /// None: shift 0, scale 1. Standard: mean, 1/std (population std, in f64; a constant column gets scale 1).
    /// MinMax: min, 1/(max-min) (a constant column gets scale 1).
    pub fn fit(kind: NormalizeKind, data: &Dataset) -> Normalization {
        let cols = data.cols;
        let mut shift = vec![0.0f32; cols];
        let mut scale = vec![1.0f32; cols];
        if kind == NormalizeKind::None || cols == 0 || data.rows == 0 {
            return Normalization { kind, shift, scale };
        }
        let rows = data.values.chunks_exact(cols);
        let n = rows.len() as f64;
        let mut min = vec![f64::INFINITY; cols];
        let mut max = vec![f64::NEG_INFINITY; cols];
        let mut sum = vec![0.0f64; cols];
        for row in rows.clone() {
            for (j, &x) in row.iter().enumerate() {
                let x = x as f64;
                if let (Some(lo), Some(hi), Some(s)) =
                    (min.get_mut(j), max.get_mut(j), sum.get_mut(j))
                {
                    *lo = lo.min(x);
                    *hi = hi.max(x);
                    *s += x;
                }
            }
        }
        match kind {
            NormalizeKind::None => {}
            NormalizeKind::MinMax => {
                for j in 0..cols {
                    if let (Some(sh), Some(sc), Some(&lo), Some(&hi)) =
                        (shift.get_mut(j), scale.get_mut(j), min.get(j), max.get(j))
                    {
                        *sh = lo as f32;
                        *sc = inv_scale(hi - lo);
                    }
                }
            }
            NormalizeKind::Standard => {
                let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
                let mut sq = vec![0.0f64; cols];
                for row in rows {
                    for ((q, &x), &m) in sq.iter_mut().zip(row).zip(&mean) {
                        let d = x as f64 - m;
                        *q += d * d;
                    }
                }
                for j in 0..cols {
                    if let (Some(sh), Some(sc), Some(&m), Some(&q), Some(&lo), Some(&hi)) = (
                        shift.get_mut(j),
                        scale.get_mut(j),
                        mean.get(j),
                        sq.get(j),
                        min.get(j),
                        max.get(j),
                    ) {
                        if lo == hi {
                            // Constant column: exact shift, no rounding noise blown up into a huge scale.
                            *sh = lo as f32;
                            *sc = 1.0;
                        } else {
                            *sh = m as f32;
                            *sc = inv_scale((q / n).sqrt());
                        }
                    }
                }
            }
        }
        Normalization { kind, shift, scale }
    }

    /// Applies the map to every row in place; the caller guarantees the column counts match.
    pub fn apply(&self, data: &mut Dataset) {
        debug_assert_eq!(self.shift.len(), data.cols);
        debug_assert_eq!(self.scale.len(), data.cols);
        if data.cols == 0 {
            return;
        }
        for row in data.values.chunks_exact_mut(data.cols) {
            for ((x, &sh), &sc) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
                *x = ((*x as f64 - sh as f64) * sc as f64) as f32;
            }
        }
    }

    /// x = x'/scale + shift: back to the original units, for writing reconstructions.
    pub fn invert_row(&self, row: &mut [f32]) {
        debug_assert_eq!(self.shift.len(), row.len());
        for ((x, &sh), &sc) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
            *x = (*x as f64 / sc as f64 + sh as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let p =
            std::env::temp_dir().join(format!("tiedae-data-test-{}-{n}.csv", std::process::id()));
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
}
