//! Reading a CSV data set into a row-major `f32` matrix, with the columns to leave out, or with the
//! columns a trained model takes, found by name.
//!
//! Every problem in a file is reported as one line naming the file, the physical 1-based line (the header
//! counted) and the 1-based column, with the column's name when the file has a header. Sizes come from the
//! file, so they are checked before buffers grow: the rows the file's size suggests against the memory
//! available, every growth with `try_reserve`, and no line longer than memory can hold.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::columns::{slots_by_name, slots_ignoring, ColumnSelector, Columns, Slot, IGNORE_FLAG};
use crate::error::{Error, Result};
use crate::memory;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

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

/// Reads a CSV file: an optional header (detected: any non-numeric cell in the first record), every other
/// column a finite number except those `ignore` leaves out, whose raw text is kept.
pub fn load_csv(path: &Path, ignore: &[ColumnSelector]) -> Result<Dataset> {
    read_csv(path, Columns::Ignoring(ignore))
}

/// Reads a CSV file for a trained model whose inputs are `features` (its `feature_names`) and which was
/// trained leaving out `ignore`.
///
/// With a header, each feature is found by its name, wherever the file has it (a name the model has twice is
/// matched occurrence by occurrence); a feature the file lacks is an error naming it; every other column is
/// carried along as an ignored one (an Id, a label, which a test set may also lack). Without a header,
/// columns are taken by position, as in training: `ignore` leaves out the same columns, unless the file has
/// exactly the model's width (the ignored columns already left out).
pub fn load_csv_for_model(
    path: &Path,
    features: &[String],
    ignore: &[ColumnSelector],
) -> Result<Dataset> {
    read_csv(path, Columns::Model { features, ignore })
}

/// A reader that fails once a line grows past `cap` bytes: the CSV reader holds a whole record in memory,
/// and a file with no line break (a binary file, a file of zeros) would grow that record until an
/// allocation failed.
struct LineCap<R> {
    inner: R,
    cap: u64,
    run: u64,
    line: u64,
}

impl<R: Read> Read for LineCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.run = 0;
                self.line += 1;
            } else {
                self.run += 1;
                if self.run > self.cap {
                    return Err(std::io::Error::other(format!(
                        "line {} is longer than {}, more than a row can take in the memory available",
                        self.line,
                        memory::format_bytes(self.cap as u128)
                    )));
                }
            }
        }
        Ok(n)
    }
}

/// Room for `additional` more values, refused with a message naming the line when the memory available
/// (`budget` bytes for the whole set) or the allocator says no.
fn reserve<T>(
    v: &mut Vec<T>,
    additional: usize,
    budget: u128,
    other_bytes: u128,
    at: &dyn Fn(String) -> Error,
) -> Result<()> {
    if v.capacity() - v.len() >= additional {
        return Ok(());
    }
    let item = std::mem::size_of::<T>() as u128;
    let wanted = (v.capacity().max(additional) as u128 + v.len() as u128) * item + other_bytes;
    if wanted > budget {
        return Err(at(format!(
            "the data set no longer fits in memory: {} read so far, {} available",
            memory::format_bytes(v.len() as u128 * item + other_bytes),
            memory::format_bytes(budget)
        )));
    }
    v.try_reserve(v.capacity().max(additional))
        .or_else(|_| v.try_reserve(additional))
        .map_err(|e| at(format!("the data set no longer fits in memory ({e})")))
}

type Reader = csv::Reader<LineCap<std::io::BufReader<std::fs::File>>>;

/// A CSV reader of `path` (no line longer than a quarter of the memory available), and the file's size.
fn open(path: &Path) -> Result<(Reader, u64)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let cap = memory::host_available().map_or(u64::MAX, |a| (a / 4).min(u64::MAX as u128) as u64);
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(LineCap {
            inner: std::io::BufReader::new(file),
            cap,
            run: 0,
            line: 1,
        });
    Ok((reader, file_len))
}

/// Reads the first record that is not blank into `rec`; returns its position.
fn first_record(
    path: &Path,
    reader: &mut Reader,
    rec: &mut csv::ByteRecord,
) -> Result<Option<csv::Position>> {
    loop {
        if !reader
            .read_byte_record(rec)
            .map_err(|e| csv_error(path, e))?
        {
            return Err(Error::file(path, "empty file: no rows"));
        }
        if !is_blank(rec) {
            return Ok(rec.position().cloned());
        }
    }
}

/// The name of every column of a file, as [`load_csv`] names them (the header's cells, or `col{i}`
/// without a header), passed to `each` one at a time from the first record alone: a file's width can be
/// judged before its data is read. Returns the number of columns.
pub fn column_names(path: &Path, each: &mut dyn FnMut(&str)) -> Result<usize> {
    let (mut reader, _) = open(path)?;
    let mut rec = csv::ByteRecord::new();
    first_record(path, &mut reader, &mut rec)?;
    let cell = |j: usize, field: &[u8]| -> Result<String> {
        let bytes = if j == 0 {
            field.strip_prefix(UTF8_BOM).unwrap_or(field)
        } else {
            field
        };
        std::str::from_utf8(bytes)
            .map(|s| s.trim().to_string())
            .map_err(|_| Error::DataAt {
                path: path.to_path_buf(),
                line: record_line(path, rec.position()),
                column: j + 1,
                name: None,
                msg: "not valid UTF-8".to_string(),
            })
    };
    let mut has_header = false;
    for (j, field) in rec.iter().enumerate() {
        if cell(j, field)?.parse::<f32>().is_err() {
            has_header = true;
            break;
        }
    }
    let mut name = String::new();
    for (j, field) in rec.iter().enumerate() {
        if has_header {
            each(&cell(j, field)?);
        } else {
            use std::fmt::Write;
            name.clear();
            let _ = write!(name, "col{j}");
            each(&name);
        }
    }
    Ok(rec.len())
}

fn read_csv(path: &Path, columns: Columns<'_>) -> Result<Dataset> {
    let (mut reader, file_len) = open(path)?;
    let budget = memory::host_available().unwrap_or(isize::MAX as u128);
    let mut rec = csv::ByteRecord::new();
    let first_pos = first_record(path, &mut reader, &mut rec)?;
    let first = record_strings(path, &rec, true, None)?;
    let first_bytes = rec.as_slice().len() as u64 + rec.len() as u64;
    let ncols = first.len();
    let has_header = first.iter().any(|c| c.trim().parse::<f32>().is_err());
    let header: Option<Vec<String>> =
        has_header.then(|| first.iter().map(|c| c.trim().to_string()).collect());
    let names: Vec<String> = match &header {
        Some(h) => h.clone(),
        None => (0..ncols).map(|i| format!("col{i}")).collect(),
    };

    let slots = match (columns, header.as_deref()) {
        (Columns::Ignoring(ignore), h) => slots_ignoring(path, ignore, h, ncols)?,
        (Columns::Model { features, .. }, Some(h)) => slots_by_name(path, h, features)?,
        // A headerless file of exactly the model's width holds the features alone.
        (Columns::Model { features, .. }, None) if ncols == features.len() => {
            (0..ncols).map(Slot::Feature).collect()
        }
        (Columns::Model { features, ignore }, None) => {
            let slots = slots_ignoring(path, ignore, None, ncols)?;
            let cols = slots.iter().filter(|s| **s != Slot::Ignored).count();
            if cols != features.len() {
                return Err(Error::file(
                    path,
                    format!(
                        "has {cols} feature columns after ignoring [{}], but the model takes {}",
                        ignore
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        features.len()
                    ),
                ));
            }
            slots
        }
    };
    let cols = slots.iter().filter(|s| **s != Slot::Ignored).count();
    if cols == 0 {
        return Err(Error::flag(IGNORE_FLAG, "leaves no feature columns"));
    }
    let mut feature_names = vec![String::new(); cols];
    let mut ignored_names = Vec::new();
    for (slot, name) in slots.iter().zip(&names) {
        match slot {
            Slot::Feature(k) => feature_names[*k] = name.clone(),
            Slot::Ignored => ignored_names.push(name.clone()),
        }
    }
    let n_ignored = ignored_names.len();

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
    let mut row = vec![0.0f32; cols];
    // Bytes of the ignored cells kept so far (their text and their `String`s).
    let mut text_bytes: u128 = 0;
    let mut push_row = |ds: &mut Dataset,
                        cells: &[String],
                        pos: Option<&csv::Position>,
                        consumed: u64|
     -> Result<()> {
        let line = || record_line(path, pos);
        if ds.rows == 0 {
            // The first data row tells how many rows the file's size allows for: refuse a set that cannot fit
            // before reading it.
            let row_bytes = (cells.iter().map(|c| c.len() as u64 + 1).sum::<u64>()).max(1);
            let rows = 1 + file_len.saturating_sub(consumed) as u128 / row_bytes as u128;
            let text: u128 = slots
                .iter()
                .zip(cells)
                .filter(|(s, _)| **s == Slot::Ignored)
                .map(|(_, c)| (std::mem::size_of::<String>() + c.len()) as u128)
                .sum();
            let need = rows.saturating_mul(cols as u128 * 4 + text);
            if need > budget {
                return Err(Error::file(
                    path,
                    format!(
                        "about {rows} rows of {ncols} columns (estimated from its size, {}, and its first row) would take {} in memory, but {} is available; use a smaller file",
                        memory::format_bytes(file_len as u128),
                        memory::format_bytes(need),
                        memory::format_bytes(budget)
                    ),
                ));
            }
        }
        for (j, (cell, &slot)) in cells.iter().zip(&slots).enumerate() {
            let Slot::Feature(k) = slot else {
                text_bytes += (std::mem::size_of::<String>() + cell.len()) as u128;
                let at = |msg| Error::DataAt {
                    path: path.to_path_buf(),
                    line: line(),
                    column: j + 1,
                    name: col_name(j),
                    msg,
                };
                let other = ds.values.capacity() as u128 * 4 + text_bytes;
                reserve(&mut ds.ignored_values, n_ignored, budget, other, &at)?;
                ds.ignored_values.push(cell.clone());
                continue;
            };
            let t = cell.trim();
            let msg = if t.is_empty() {
                "empty cell".to_string()
            } else {
                match t.parse::<f32>() {
                    Ok(v) if v.is_finite() => {
                        row[k] = v;
                        continue;
                    }
                    Ok(_) => format!("not a finite number: '{}'", show(t)),
                    Err(_) => format!("expected a number, found '{}'", show(t)),
                }
            };
            return Err(Error::DataAt {
                path: path.to_path_buf(),
                line: line(),
                column: j + 1,
                name: col_name(j),
                msg,
            });
        }
        let at = |msg| Error::DataAt {
            path: path.to_path_buf(),
            line: line(),
            column: 1,
            name: None,
            msg,
        };
        reserve(&mut ds.values, cols, budget, text_bytes, &at)?;
        ds.values.extend_from_slice(&row);
        ds.rows += 1;
        Ok(())
    };

    if !has_header {
        push_row(&mut ds, &first, first_pos.as_ref(), first_bytes)?;
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
        let consumed = reader.position().byte();
        push_row(&mut ds, &cells, rec.position(), consumed)?;
    }

    if ds.rows == 0 {
        return Err(Error::file(path, "no data rows after the header"));
    }
    Ok(ds)
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn a_line_longer_than_the_cap_is_an_error_not_an_allocation() {
        let mut text = b"a,b\n1,2\n".to_vec();
        text.extend(std::iter::repeat_n(b'7', 1000));
        let mut r = LineCap {
            inner: &text[..],
            cap: 100,
            run: 0,
            line: 1,
        };
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3 is longer than 100 B, more than a row can take in the memory available"
        );
    }

    #[test]
    fn growth_past_the_budget_names_the_line() {
        let mut v: Vec<f32> = Vec::new();
        let at = |msg: String| Error::Caller(msg);
        reserve(&mut v, 10, 1000, 0, &at).unwrap();
        assert!(v.capacity() >= 10);
        v.resize(v.capacity(), 0.0);
        let e = reserve(&mut v, 500, 1000, 0, &at).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the data set no longer fits in memory"),
            "{e}"
        );
    }
}
