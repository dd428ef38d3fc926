//! Every file a command reads or writes, checked before any work and held for the length of the run: the
//! one place where the commands' paths meet (train, eval, encode, reconstruct, summary all go through it).
//!
//! - An input must be a regular file (a link to one is fine): not a folder, a device or a FIFO, which
//!   could block a read forever or never end.
//! - An output is never the same file as an input, under any name (the same path, a symbolic link, a hard
//!   link: compared by device and inode), nor as another output. It is never a folder, a device or a FIFO:
//!   outputs are written to a temporary file and renamed over the target, which would replace the device
//!   itself. `-` is standard output where a command can write there (the CSV of `encode` and
//!   `reconstruct`). Its folder must exist and be writable.
//! - While a run lasts, each output file is locked (`.{name}.tiedae-lock` beside it, with the run's process
//!   id inside): a second run on the same output is refused. Holding the lock, the run removes the temporary
//!   files a killed run left for that output (`io::remove_stale_temps`).
//!
//! Nothing here opens an output or an input: only their metadata is read, so a FIFO cannot block a check.

use crate::error::{Error, Result};
use crate::io;
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// True when an output path means standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// A file's identity: its device and inode where there are such (two names of one file share it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileId {
    #[cfg(unix)]
    Inode(u64, u64),
    #[cfg(not(unix))]
    Path(PathBuf),
}

fn file_id(meta: &Metadata, path: &Path) -> FileId {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        FileId::Inode(meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        FileId::Path(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
    }
}

/// What a path that is not a regular file is, for messages.
fn kind(meta: &Metadata) -> &'static str {
    if meta.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// Checks that `path`, given by `flag`, can be read as a file: it exists and is a regular file.
pub fn check_input(flag: &str, path: &Path) -> Result<()> {
    input_id(flag, path).map(|_| ())
}

fn input_id(flag: &str, path: &Path) -> Result<FileId> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::flag(flag, format!("'{shown}' does not exist")))
        }
        Err(e) => Err(Error::flag(flag, format!("cannot read '{shown}': {e}"))),
        Ok(m) if m.is_dir() => Err(Error::flag(
            flag,
            format!("'{shown}' is a folder, not a file"),
        )),
        Ok(m) if !m.is_file() => Err(Error::flag(
            flag,
            format!(
                "'{shown}' is {}, not a regular file; tiedae reads its inputs from files",
                kind(&m)
            ),
        )),
        Ok(m) => Ok(file_id(&m, path)),
    }
}

struct Output {
    flag: &'static str,
    path: PathBuf,
    stdout: bool,
    /// The input this output may be the same file as (train --resume writes back the file it read).
    may_replace: Option<&'static str>,
}

/// The inputs and outputs of one command, checked together by [`PathPlan::check`].
#[derive(Default)]
pub struct PathPlan {
    inputs: Vec<(&'static str, PathBuf)>,
    outputs: Vec<Output>,
}

impl PathPlan {
    pub fn new() -> PathPlan {
        PathPlan::default()
    }
    pub fn input(mut self, flag: &'static str, path: &Path) -> PathPlan {
        self.inputs.push((flag, path.to_path_buf()));
        self
    }
    /// An output file (a model, metrics, a plot): never `-`.
    pub fn output(self, flag: &'static str, path: &Path) -> PathPlan {
        self.push_output(flag, path, false, None)
    }
    /// An output that may be `-`, standard output.
    pub fn output_or_stdout(self, flag: &'static str, path: &Path) -> PathPlan {
        self.push_output(flag, path, true, None)
    }
    /// An output that may be the same file as the input of `input_flag`, which the run has read whole
    /// before it writes.
    pub fn output_replacing(
        self,
        flag: &'static str,
        path: &Path,
        input_flag: &'static str,
    ) -> PathPlan {
        self.push_output(flag, path, false, Some(input_flag))
    }
    fn push_output(
        mut self,
        flag: &'static str,
        path: &Path,
        stdout: bool,
        may_replace: Option<&'static str>,
    ) -> PathPlan {
        self.outputs.push(Output {
            flag,
            path: path.to_path_buf(),
            stdout,
            may_replace,
        });
        self
    }

    /// Checks every input and output (see the module doc) and locks the output files; the locks last as
    /// long as the returned [`Claim`].
    pub fn check(&self) -> Result<Claim> {
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for (flag, path) in &self.inputs {
            inputs.push((*flag, path, input_id(flag, path)?));
        }
        let mut seen: Vec<(&'static str, PathBuf, Option<FileId>)> = Vec::new();
        for o in &self.outputs {
            if let Some((canonical, id)) = check_output(o, &inputs)? {
                if let Some((other, _, _)) = seen
                    .iter()
                    .find(|(_, c, i)| *c == canonical || (id.is_some() && *i == id))
                {
                    return Err(Error::flag(
                        o.flag,
                        format!(
                            "'{}' is also {other}; give each output its own file",
                            o.path.display()
                        ),
                    ));
                }
                seen.push((o.flag, canonical, id));
            }
        }
        let mut claim = Claim {
            locks: Vec::new(),
            stale_removed: 0,
        };
        for o in self.outputs.iter().filter(|o| !is_stdout(&o.path)) {
            claim.locks.push(Lock::take(o.flag, &o.path)?);
            claim.stale_removed += io::remove_stale_temps(&o.path);
        }
        Ok(claim)
    }
}

/// Checks one output; returns its canonical path and, when it exists, its identity (None for stdout).
fn check_output(
    o: &Output,
    inputs: &[(&'static str, &PathBuf, FileId)],
) -> Result<Option<(PathBuf, Option<FileId>)>> {
    let (flag, path) = (o.flag, &o.path);
    let shown = path.display();
    if is_stdout(path) {
        if o.stdout {
            return Ok(None);
        }
        return Err(Error::flag(
            flag,
            "'-' (standard output) is not possible here: this output is written to a file and renamed into place when complete; give a file name",
        ));
    }
    let Some(name) = path.file_name() else {
        return Err(Error::flag(flag, format!("'{shown}' is not a file name")));
    };
    let dir = io::folder_of(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::flag(
                flag,
                format!("'{}' is not a folder", dir.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::flag(
                flag,
                format!("folder '{}' does not exist", dir.display()),
            ))
        }
        Err(e) => {
            return Err(Error::flag(
                flag,
                format!("cannot use folder '{}': {e}", dir.display()),
            ))
        }
    }
    let id = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(Error::flag(flag, format!("'{shown}' is a folder")));
        }
        Ok(m) if !m.is_file() => {
            let stdout = if o.stdout {
                " (use - for standard output)"
            } else {
                ""
            };
            return Err(Error::flag(
                flag,
                format!(
                    "'{shown}' is {}, not a regular file: tiedae writes a finished file and renames it over the output, which would replace it{stdout}",
                    kind(&m)
                ),
            ));
        }
        Ok(m) => Some(file_id(&m, path)),
        // A link to nothing is replaced by the file, as a missing file would be created.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::flag(flag, format!("cannot use '{shown}': {e}"))),
    };
    if let Some(id) = &id {
        for (in_flag, in_path, in_id) in inputs {
            if in_id == id && o.may_replace != Some(*in_flag) {
                let how = if *in_path == path {
                    String::new()
                } else {
                    format!(" ('{}', another name of it)", in_path.display())
                };
                return Err(Error::flag(
                    flag,
                    format!(
                        "'{shown}' is the same file as {in_flag}{how}; an output never replaces an input: choose another file"
                    ),
                ));
            }
        }
    }
    let canonical = std::fs::canonicalize(&dir).unwrap_or(dir).join(name);
    Ok(Some((canonical, id)))
}

/// The locks of a run's output files, released (and their lock files removed) when dropped.
pub struct Claim {
    locks: Vec<Lock>,
    /// Temporary files of killed runs that were removed.
    pub stale_removed: usize,
}

struct Lock {
    path: PathBuf,
    // Held open: the lock lasts as long as the file does.
    _file: File,
}

impl Lock {
    fn lock_path(output: &Path) -> PathBuf {
        let mut name = std::ffi::OsString::from(".");
        name.push(output.file_name().unwrap_or_default());
        name.push(".tiedae-lock");
        io::folder_of(output).join(name)
    }

    fn take(flag: &'static str, output: &Path) -> Result<Lock> {
        let path = Lock::lock_path(output);
        let dir = io::folder_of(output);
        // A run that ends removes its lock file; one that opened the old file just before must not lock a
        // file no longer there, so the path is checked again once locked.
        for _ in 0..8 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| {
                    Error::flag(
                        flag,
                        format!("cannot write in folder '{}': {e}", dir.display()),
                    )
                })?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let who = match text.trim().parse::<u32>() {
                        Ok(pid) => format!(" (process {pid})"),
                        Err(_) => String::new(),
                    };
                    return Err(Error::flag(
                        flag,
                        format!(
                            "'{}' is being written by another tiedae run{who}; wait for it to end or choose another file",
                            output.display()
                        ),
                    ));
                }
                // A file system without locks: the run goes on unlocked, as it did before locks.
                Err(std::fs::TryLockError::Error(_)) => {}
            }
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => file_id(&a, &path) == file_id(&b, &path),
                _ => false,
            };
            if !same {
                continue;
            }
            let _ = file.set_len(0);
            let _ = write!(file, "{}", std::process::id());
            let _ = file.flush();
            return Ok(Lock { path, _file: file });
        }
        Err(Error::flag(
            flag,
            format!(
                "cannot lock '{}': its lock file keeps changing",
                output.display()
            ),
        ))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the file handle right after.
        let _ = std::fs::remove_file(&self.path);
    }
}
