//! Where the GPU tests run: on a real GPU when one works, else on the emulated CUDA driver
//! (tests/emulated_cuda, see its README), built here with g++ and AddressSanitizer once per test run.
//!
//! - A real GPU is looked for first, in a child process (`tiedae info`), so that this process never binds
//!   cudarc to the system's driver library. When one works, the GPU tests use it and the emulator is never
//!   loaded. `TIEDAE_REQUIRE_GPU=1` asks for a real GPU and nothing else.
//! - Otherwise a GPU test runs its body in a child process: this test executable again, filtered to the one
//!   test, with the emulator's folder (holding a library named `libcuda.so`) first on `LD_LIBRARY_PATH`, so
//!   that cudarc's `dlopen("libcuda.so")` finds it before the one in the loader cache, and with the
//!   AddressSanitizer runtime preloaded (an instrumented library cannot bring its runtime along into a
//!   process that started without it). The parent checks that the child ran the test and passed.
//! - Processes started by such a child (the CLI tests run the release binary) inherit both.
//! - `TIEDAE_EMU_SEED` (else one drawn per test process) is given to every child; a failure names it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Set in the child process that runs a test on the emulated driver.
pub const CHILD_VAR: &str = "TIEDAE_EMU_CHILD";

/// What this machine offers the GPU tests.
pub enum Gpu {
    /// A real GPU that `tiedae info` calls usable.
    Real,
    Emulated(Emulator),
    /// Neither, and why.
    Missing(String),
}

/// The emulated driver, built.
pub struct Emulator {
    /// The folder that holds `libcuda.so`.
    pub dir: PathBuf,
    /// The AddressSanitizer runtime to preload (None: built without, see `TIEDAE_EMU_ASAN`).
    pub asan_runtime: Option<PathBuf>,
    pub seed: u64,
}

impl Emulator {
    /// The environment of a process that runs on the emulated driver.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut library_path = self.dir.display().to_string();
        if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
            if !old.is_empty() {
                library_path = format!("{library_path}:{old}");
            }
        }
        let mut env = vec![
            ("LD_LIBRARY_PATH".to_string(), library_path),
            ("TIEDAE_EMU_SEED".to_string(), self.seed.to_string()),
        ];
        if let Some(asan) = &self.asan_runtime {
            env.push(("LD_PRELOAD".to_string(), asan.display().to_string()));
            // Leaks: the Rust test harness and cudarc keep some memory to the end, by design.
            env.push((
                "ASAN_OPTIONS".to_string(),
                "detect_leaks=0:halt_on_error=1:abort_on_error=0".to_string(),
            ));
        }
        env
    }

    /// `program` set up to run on the emulated driver.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }
}

/// True when this process is the child that runs a test on the emulated driver.
pub fn in_child() -> bool {
    std::env::var_os(CHILD_VAR).is_some()
}

/// What the GPU tests of this process use, decided once.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        if real_gpu() {
            return Gpu::Real;
        }
        if super::env_flag("TIEDAE_REQUIRE_GPU") {
            return Gpu::Missing("TIEDAE_REQUIRE_GPU=1 and `tiedae info` finds no usable GPU".into());
        }
        if std::env::var("TIEDAE_EMULATOR").is_ok_and(|v| v.trim() == "0") {
            return Gpu::Missing("no usable GPU, and TIEDAE_EMULATOR=0".into());
        }
        match build() {
            Ok(emulator) => Gpu::Emulated(emulator),
            Err(why) => {
                assert!(
                    !super::env_flag("TIEDAE_REQUIRE_KERNELS"),
                    "TIEDAE_REQUIRE_KERNELS=1, no usable GPU, and the emulated CUDA driver could not be built: {why}"
                );
                Gpu::Missing(format!("no usable GPU, and no emulated driver: {why}"))
            }
        }
    })
}

/// Whether `tiedae info`, run without the emulator, calls GPU 0 usable.
fn real_gpu() -> bool {
    if !tiedae::backend::cuda::is_built_with_kernels() {
        return false;
    }
    // A child runs on the emulator: its library path leads there, not to a real GPU.
    if in_child() {
        return false;
    }
    Command::new(env!("CARGO_BIN_EXE_tiedae"))
        .arg("info")
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout).lines().any(|l| {
                // (An environment that already leads to the emulated driver is not a GPU.)
                l.starts_with("cuda:0 ")
                    && l.ends_with(": usable")
                    && !l.contains("emulated CUDA device")
            })
        })
}

/// The seed of the streams' interleaving for every child of this process.
fn seed() -> u64 {
    if let Ok(s) = std::env::var("TIEDAE_EMU_SEED") {
        if let Ok(v) = s.trim().parse() {
            return v;
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 20)) % 1_000_000_007
}

/// Runs the calling test (named by its thread, as libtest names it) again in a child process on the emulated
/// driver, with `extra_env`; returns its output.
pub fn run_child(emulator: &Emulator, extra_env: &[(&str, &str)]) -> Output {
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|n| *n != "main")
        .expect("run_child is called from a test's own thread (libtest names it after the test)");
    let exe = std::env::current_exe().expect("the test executable");
    let mut command = emulator.command(exe);
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .envs(extra_env.iter().map(|&(k, v)| (k, v)));
    command
        .output()
        .unwrap_or_else(|e| panic!("{test}: cannot run the test executable again: {e}"))
}

/// Panics unless the child ran exactly the one test and passed; echoes its output (libtest shows it only
/// for a test that fails).
pub fn assert_child_passed(emulator: &Emulator, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- on the emulated CUDA driver (TIEDAE_EMU_SEED={}):\n{stdout}{stderr}",
        emulator.seed
    );
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "failed on the emulated CUDA driver ({}); rerun with TIEDAE_EMU_SEED={} to replay its streams' \
         interleaving:\n{stdout}{stderr}",
        out.status,
        emulator.seed
    );
}

/// For a test of the emulated driver itself: true in the child, where the body runs on it; false in the
/// parent, once the child passed (or after saying why it could not run: a real GPU is here, or no
/// emulator can be built and none is required).
pub fn emulated_child(test: &str, extra_env: &[(&str, &str)]) -> bool {
    if in_child() {
        return true;
    }
    if let Some(emulator) = emulator_or_skip(test) {
        let out = run_child(emulator, extra_env);
        assert_child_passed(emulator, &out);
    }
    false
}

/// The emulator, for a test that needs it; None (having said SKIPPED) on a machine with a real GPU, or
/// without a C++ compiler when `TIEDAE_REQUIRE_KERNELS` is not set.
pub fn emulator_or_skip(test: &str) -> Option<&'static Emulator> {
    match gpu() {
        Gpu::Emulated(e) => Some(e),
        Gpu::Real => {
            super::skipped(&format!(
                "{test}: a real GPU is here (the emulated driver's own tests run where there is none)"
            ));
            None
        }
        Gpu::Missing(why) => {
            super::skipped(&format!("{test}: {why}"));
            None
        }
    }
}

// ------------------------------------------------------------------------------------------------ build

fn compiler() -> Result<String, String> {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["g++".to_string(), "clang++".to_string()]);
    for c in candidates {
        if Command::new(&c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(c);
        }
    }
    Err("no C++ compiler (CXX, g++, clang++)".into())
}

/// The compiler's AddressSanitizer runtime, when it has one and `TIEDAE_EMU_ASAN` is not 0.
fn asan_runtime(cxx: &str) -> Option<PathBuf> {
    if std::env::var("TIEDAE_EMU_ASAN").is_ok_and(|v| v.trim() == "0") {
        return None;
    }
    let out = Command::new(cxx)
        .arg("-print-file-name=libasan.so")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (path.is_absolute() && path.exists()).then(|| path.canonicalize().unwrap_or(path))
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file the library is built from.
fn sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        "tests/emulated_cuda",
        "tests/emulated_cuda/include",
        "kernels",
    ] {
        if let Ok(entries) = std::fs::read_dir(root().join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.push(root().join("tests/kernels_on_cpu/include/cuda_fp16.h"));
    files.sort();
    files
}

/// The `extern "C" __global__` functions of a kernel file: (name, parameter names).
fn kernels_in(source: &str) -> Vec<(String, Vec<String>)> {
    const MARK: &str = "extern \"C\" __global__ void";
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(MARK) {
        let mut s = rest[at + MARK.len()..].trim_start();
        if let Some(bounds) = s.strip_prefix("__launch_bounds__") {
            let close = bounds.find(')').expect("__launch_bounds__(...)");
            s = bounds[close + 1..].trim_start();
        }
        let open = s.find('(').expect("a kernel's parameter list");
        let name = s[..open].trim().to_string();
        let close = s.find(')').expect("a kernel's parameter list ends");
        let params = s[open + 1..close]
            .split(',')
            .map(|p| {
                p.trim()
                    .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .filter(|p| !p.is_empty())
            .collect();
        out.push((name, params));
        rest = &s[close..];
    }
    out
}

fn build() -> Result<Emulator, String> {
    if !tiedae::backend::cuda::is_built_with_kernels() {
        return Err("this build has no GPU kernels (nvcc was missing at build time)".into());
    }
    let cxx = compiler()?;
    let asan = asan_runtime(&cxx);
    let here = root().join("tests/emulated_cuda");
    let mut flags: Vec<String> = [
        "-std=c++20",
        "-O2",
        "-g",
        "-fPIC",
        "-fvisibility=hidden",
        "-fno-omit-frame-pointer",
        "-ffp-contract=off",
        "-Wall",
        "-Wextra",
        "-Wno-unknown-pragmas",
    ]
    .map(String::from)
    .to_vec();
    if asan.is_some() {
        flags.push("-fsanitize=address".into());
    }
    // fmaf as one instruction (still one rounding, as on the GPU), not a call into libm's software fma.
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        flags.push("-mfma".into());
    }
    let version = Command::new(&cxx)
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&cxx, &flags, &version, &asan).hash(&mut hasher);
    for file in sources() {
        file.file_name().hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emulated-cuda");
    let dir = base.join(format!("{:016x}", hasher.finish()));
    let library = dir.join("libcuda.so");
    let emulator = || Emulator {
        dir: dir.clone(),
        asan_runtime: asan.clone(),
        seed: seed(),
    };
    if library.exists() {
        return Ok(emulator());
    }
    std::fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    // Several test executables (and threads) may get here at once: one builds, the others wait for it.
    let lock = std::fs::File::create(base.join("build.lock"))
        .map_err(|e| format!("creating the build lock: {e}"))?;
    lock.lock().map_err(|e| format!("locking the build: {e}"))?;
    if library.exists() {
        return Ok(emulator());
    }
    let tmp = base.join(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;

    // One translation unit per file of the driver, and one per kernel file: the kernel file included
    // unchanged, then a twin registered for each of its kernels.
    let mut units: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for name in [
        "errors", "device", "memory", "streams", "graphs", "modules", "threads", "stubs",
    ] {
        units.push((here.join(format!("{name}.cpp")), Vec::new()));
    }
    let mut kernel_files: Vec<PathBuf> = std::fs::read_dir(root().join("kernels"))
        .map_err(|e| format!("reading kernels/: {e}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    kernel_files.sort();
    // The driver's own test kernels (tests/emulated_cuda.rs): never in tiedae's PTX.
    kernel_files.push(here.join("selfcheck_kernels.cu"));
    for cu in &kernel_files {
        let text = std::fs::read_to_string(cu).map_err(|e| format!("{}: {e}", cu.display()))?;
        let stem = cu.file_stem().unwrap().to_string_lossy().into_owned();
        let mut wrapper = format!(
            "// Generated by tests/common/emulated.rs: kernels/{stem}.cu and a twin for each kernel.\n\
             #include \"{}\"\n#include \"emu_twin.h\"\n",
            cu.display()
        );
        for (kernel, params) in kernels_in(&text) {
            wrapper.push_str(&format!("EMU_TWIN({kernel}, \"{}\")\n", params.join(",")));
        }
        let path = tmp.join(format!("twin_{stem}.cpp"));
        std::fs::write(&path, wrapper).map_err(|e| format!("{}: {e}", path.display()))?;
        let kernel_flags = vec![
            "-include".to_string(),
            here.join("include/cuda_emulated.h").display().to_string(),
            "-I".to_string(),
            root().join("kernels").display().to_string(),
            "-I".to_string(),
            // cuda_fp16.h, shared with the kernel checks
            root()
                .join("tests/kernels_on_cpu/include")
                .display()
                .to_string(),
        ];
        units.push((path, kernel_flags));
    }
    let results: Vec<Result<PathBuf, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = units
            .iter()
            .map(|(source, extra)| {
                let object = tmp.join(format!(
                    "{}.o",
                    source.file_stem().unwrap().to_string_lossy()
                ));
                let (cxx, flags, here) = (&cxx, &flags, &here);
                scope.spawn(move || {
                    let out = Command::new(cxx)
                        .args(flags)
                        .args(extra)
                        .arg("-I")
                        .arg(here.join("include"))
                        .arg("-I")
                        .arg(here)
                        .arg("-c")
                        .arg(source)
                        .arg("-o")
                        .arg(&object)
                        .output()
                        .map_err(|e| format!("running {cxx}: {e}"))?;
                    if out.status.success() {
                        Ok(object)
                    } else {
                        Err(format!(
                            "{cxx} could not compile {}:\n{}",
                            source.display(),
                            String::from_utf8_lossy(&out.stderr)
                        ))
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let objects = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut link = Command::new(&cxx);
    link.args(["-shared", "-Wl,-soname,libcuda.so", "-Wl,-z,defs"]);
    if asan.is_some() {
        link.arg("-fsanitize=address");
    }
    let out = link
        .arg("-o")
        .arg(tmp.join("libcuda.so"))
        .args(&objects)
        .arg("-lpthread")
        .output()
        .map_err(|e| format!("running {cxx}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cxx} could not link the emulated driver:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::rename(&tmp, &dir).map_err(|e| format!("moving the build into place: {e}"))?;
    // Builds from older sources are not needed any more.
    for old in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        if old.path() != dir && old.path().is_dir() {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    Ok(emulator())
}
