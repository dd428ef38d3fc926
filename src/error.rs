//! One error type for the library. Every message is one line and names what the user has to fix: the file
//! with its 1-based line and column, or the flag.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A problem at one place of a data file. `line` is 1-based and counts the header; `column` is 1-based.
    #[error("{}: line {line}, column {column}{}: {msg}", path.display(), name.as_deref().map(|n| format!(" ('{n}')")).unwrap_or_default())]
    DataAt {
        path: PathBuf,
        line: u64,
        column: usize,
        name: Option<String>,
        msg: String,
    },
    /// A problem with a file as a whole (empty, header only, not a model file, shapes that do not fit).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A flag with a value that cannot work, e.g. `--batch-size 0`. The message names the flag.
    #[error("{flag}: {msg}")]
    Flag { flag: String, msg: String },
    /// The requested device cannot be used (no driver, no GPU, a binary built without kernels).
    #[error("{0}")]
    Device(String),
    /// Training stopped because the loss stopped being a finite number.
    #[error("{0}")]
    Diverged(String),
    /// An error of the caller's code, passed through the library (a training observer's, say).
    #[error("{0}")]
    Caller(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn file(path: &Path, msg: impl Into<String>) -> Self {
        Error::File {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn flag(flag: &str, msg: impl Into<String>) -> Self {
        Error::Flag {
            flag: flag.to_string(),
            msg: msg.into(),
        }
    }
}
