//! Writing a file so that a failed run never leaves it half-written (a temporary file beside it, renamed
//! over it when complete), recognizing the temporary files of a run that died, and reading a file whose size
//! was checked against the memory there is.
//!
//! A temporary file is named `.{name}.tiedae-{pid}.tmp` (with the target's extension after it where the
//! writer needs one: plots), so the next run that holds the output's lock (`workflow/paths.rs`) can tell the
//! leftovers of a killed run from anything else and remove them.

use crate::error::{Error, Result};
use crate::memory;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

const TEMP_TAG: &str = ".tiedae-";

/// The folder a path's file lives in ("." for a bare name).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary file this process writes `path` through: `.{name}.tiedae-{pid}.tmp{ext}` beside it.
pub fn temp_path(path: &Path, ext: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "is not a file name"))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!("{TEMP_TAG}{}.tmp{ext}", std::process::id()));
    Ok(folder_of(path).join(tmp))
}

/// Removes the temporary files another process left for `path` (see the module doc), and returns how many.
/// Only called while holding `path`'s lock: no live run can be writing them then.
pub fn remove_stale_temps(path: &Path) -> usize {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return 0;
    };
    let prefix = format!(".{name}{TEMP_TAG}");
    let Ok(entries) = std::fs::read_dir(folder_of(path)) else {
        return 0;
    };
    let own = std::process::id().to_string();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, tail)) = rest.split_once('.') else {
            continue;
        };
        let is_temp = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && (tail == "tmp" || tail.starts_with("tmp."));
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_temp && is_file && pid != own && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is renamed over `path`
/// only when `write` succeeded. On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let tmp = temp_path(path, "")?;
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a whole file whose size has been checked first: against the memory available, so that a file
/// larger than memory is one line instead of an aborted allocation. `what` names it in the message.
pub fn read_checked(path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if let Some(avail) = memory::host_available() {
        if len as u128 > avail {
            return Err(Error::file(
                path,
                format!(
                    "is a {what} of {}, more than the {} of memory available",
                    memory::format_bytes(len as u128),
                    memory::format_bytes(avail)
                ),
            ));
        }
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .map_err(|e| Error::file(path, format!("cannot hold its {len} bytes in memory: {e}")))?;
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_other_runs_go_and_nothing_else_does() {
        let dir = std::env::temp_dir().join(format!("tiedae-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("m.safetensors");
        let own = temp_path(&out, "").unwrap();
        let keep = [
            own.clone(),
            dir.join("m.safetensors"),
            dir.join(".m.safetensors.tiedae-lock"),
            dir.join(".m.safetensors.tiedae-x1.tmp"),
            dir.join(".other.safetensors.tiedae-12.tmp"),
            dir.join(".m.safetensors.12.tmp"),
        ];
        let stale = [
            dir.join(".m.safetensors.tiedae-12.tmp"),
            dir.join(".m.safetensors.tiedae-4194304.tmp"),
            dir.join(".m.safetensors.tiedae-77.tmp.png"),
        ];
        for p in keep.iter().chain(&stale) {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&out), stale.len());
        for p in &keep {
            assert!(p.exists(), "{} was removed", p.display());
        }
        for p in &stale {
            assert!(!p.exists(), "{} was kept", p.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temp() {
        let dir = std::env::temp_dir().join(format!("tiedae-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.csv");
        std::fs::write(&out, b"before").unwrap();
        let e = write_atomic(&out, |_| Err(Error::Caller("stop".into()))).unwrap_err();
        assert_eq!(e.to_string(), "stop");
        assert_eq!(std::fs::read(&out).unwrap(), b"before");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        write_atomic(&out, |w| {
            use std::io::Write;
            w.write_all(b"after").map_err(|e| Error::io(&out, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"after");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
