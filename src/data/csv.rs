//! Reading a CSV data set into a row-major `f32` matrix, with the columns to leave out.
//!
//! Every problem in a file is reported as one line naming the file, the physical 1-based line (the header
//! counted) and the 1-based column, with the column's name when the file has a header.

use std::fmt;
use std::path::{Path, PathBuf};

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
pub(super) fn show(s: &str) -> String {
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
