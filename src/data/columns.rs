//! Which columns of a file are features: the columns `--ignore-columns` leaves out (training), or the
//! columns a trained model takes, found by name (eval, encode, reconstruct, a resumed run).

use std::fmt;
use std::path::Path;

use super::csv::show;
use crate::error::{Error, Result};

pub(super) const IGNORE_FLAG: &str = "--ignore-columns";

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

/// How a file's columns become the features of a data set.
#[derive(Debug, Clone, Copy)]
pub(super) enum Columns<'a> {
    /// Every column is a feature, in file order, except those the selectors leave out (training).
    Ignoring(&'a [ColumnSelector]),
    /// The features a trained model takes, in its order ([`load_csv_for_model`]).
    Model {
        features: &'a [String],
        ignore: &'a [ColumnSelector],
    },
}

/// What one column of the file is: feature `k` of a row, or a column kept as text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Slot {
    Feature(usize),
    Ignored,
}

pub(super) fn column_list(names: &[String]) -> String {
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

/// The slot of every file column under a header, matching a model's features by name.
pub(super) fn slots_by_name(
    path: &Path,
    header: &[String],
    features: &[String],
) -> Result<Vec<Slot>> {
    let mut slots = vec![Slot::Ignored; header.len()];
    for (k, name) in features.iter().enumerate() {
        // The model's n-th feature of this name is the file's n-th column of this name.
        let nth = features[..k].iter().filter(|f| *f == name).count();
        let found = header
            .iter()
            .enumerate()
            .filter(|(_, h)| *h == name)
            .nth(nth)
            .map(|(j, _)| j);
        let Some(j) = found else {
            let unknown: Vec<String> = header
                .iter()
                .filter(|h| !features.contains(h))
                .cloned()
                .collect();
            let synthetic = features.iter().enumerate().all(|(i, f)| {
                f.strip_prefix("col")
                    .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n >= i))
            });
            let hint = if synthetic {
                "; the model was trained on a file without a header row, so give this data without one (its columns are then taken by position)".to_string()
            } else if unknown.is_empty() {
                String::new()
            } else {
                format!(
                    "; columns the model does not take: {}",
                    column_list(&unknown)
                )
            };
            return Err(Error::file(
                path,
                format!(
                    "has no column '{}', which the model takes (feature {} of {}){hint}",
                    show(name),
                    k + 1,
                    features.len()
                ),
            ));
        };
        slots[j] = Slot::Feature(k);
    }
    Ok(slots)
}

/// The slot of every file column from ignore selectors: the others are features in file order.
pub(super) fn slots_ignoring(
    path: &Path,
    ignore: &[ColumnSelector],
    header: Option<&[String]>,
    ncols: usize,
) -> Result<Vec<Slot>> {
    let ignored = resolve_ignored(path, ignore, header, ncols)?;
    let mut k = 0;
    Ok(ignored
        .iter()
        .map(|&ig| {
            if ig {
                Slot::Ignored
            } else {
                k += 1;
                Slot::Feature(k - 1)
            }
        })
        .collect())
}
