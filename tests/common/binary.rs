//! Running the real binary from a test: in a scratch folder, with no standard input, a time limit (a run
//! that blocks, on a FIFO say, fails the test instead of hanging it) and, where asked, a cap on its address
//! space (a binary that tried to allocate terabytes fails fast instead of taking the machine's memory).
//!
//! `TIEDAE_TEST_BIN=/path/to/tiedae` runs the tests against another binary, e.g. one built from an older
//! commit, to see which of them it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> PathBuf {
    match std::env::var_os("TIEDAE_TEST_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_tiedae")),
    }
}

/// True when the tests run against the binary this crate built (not one named by TIEDAE_TEST_BIN).
pub fn own_binary() -> bool {
    std::env::var_os("TIEDAE_TEST_BIN").is_none()
}

/// A folder of its own for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tiedae-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p.display().to_string()
    }
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
pub struct Run {
    /// The exit code; -1 for a signal, -2 when the run was killed at its time limit.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stderr lines that are not empty.
    pub fn lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs the binary with `args`, killing it after `limit`; `mem_kb` caps its address space (`ulimit -v`).
pub fn run_limited(args: &[&str], limit: Duration, mem_kb: Option<u64>) -> Run {
    let mut cmd = match mem_kb {
        Some(kb) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -v {kb} && exec \"$0\" \"$@\""))
                .arg(bin())
                .args(args);
            c
        }
        None => {
            let mut c = Command::new(bin());
            c.args(args);
            c
        }
    };
    let out_file = tempfile("stdout");
    let err_file = tempfile("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break -2;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |p: &Path| {
        let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        let _ = std::fs::remove_file(p);
        text
    };
    Run {
        code,
        stdout: read(&out_file),
        stderr: read(&err_file),
    }
}

fn tempfile(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "tiedae-run-{}-{}.{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs the binary with a 60-second limit.
pub fn run(args: &[&str]) -> Run {
    run_limited(args, Duration::from_secs(60), None)
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.code, 0, "{args:?} failed: {}", r.stderr);
    r.stdout
}

/// Asserts that a run failed as tiedae fails: exit 1, one line on stderr starting with `error: `, naming
/// every one of `needles`, no panic.
pub fn assert_refused(r: &Run, args: &[&str], needles: &[&str]) {
    assert_eq!(
        r.code, 1,
        "{args:?}: exit {}, stdout {:?}, stderr {:?}",
        r.code, r.stdout, r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "panic: {}", r.stderr);
    let lines = r.lines();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one line, got {:?}",
        r.stderr
    );
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: '{}' lacks '{n}'", lines[0]);
    }
}

/// Runs and asserts the refusal; returns the line.
pub fn refused(args: &[&str], needles: &[&str]) -> String {
    let r = run(args);
    assert_refused(&r, args, needles);
    r.lines()[0].to_string()
}

/// The bundled digits.
pub fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits.csv")
        .display()
        .to_string()
}

/// A small data set with a header, an Id and a label: 40 rows of 4 features.
pub fn small_csv() -> String {
    let mut s = String::from("Id,a,b,c,d,label\n");
    for r in 0..40 {
        let x = r as f32 / 40.0;
        s.push_str(&format!(
            "{r},{:.4},{:.4},{:.4},{:.4},{}\n",
            x,
            1.0 - x,
            (x * 7.0).sin(),
            x * x,
            r % 3
        ));
    }
    s
}

/// Trains a small model on `data` (written by `small_csv`) into `out`, `epochs` epochs.
pub fn train_small(data: &str, out: &str, epochs: &str) {
    ok(&[
        "train",
        "--data",
        data,
        "--out",
        out,
        "--ignore-columns",
        "Id,label",
        "--normalize",
        "standard",
        "--layers",
        "3,2",
        "--epochs",
        epochs,
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ]);
}

/// Whether this process may make device nodes (root).
pub fn can_mknod(dir: &Path) -> bool {
    let probe = dir.join(".mknod-probe");
    let made = Command::new("mknod")
        .arg(&probe)
        .args(["c", "1", "3"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = std::fs::remove_file(&probe);
    made
}

/// A character device node at `path` like /dev/null (1,3) or /dev/full (1,7).
pub fn mknod(path: &Path, minor: u32) {
    let status = Command::new("mknod")
        .arg(path)
        .args(["c", "1", &minor.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "mknod {}", path.display());
}

/// A FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// SHA-256 of a file's bytes, as hex (None when it cannot be read as a regular file).
pub fn file_hash(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    Some(
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}
