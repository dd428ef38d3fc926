//! Compiles `kernels/*.cu` to PTX with nvcc and embeds it (candle-kernels style).
//!
//! - nvcc: `$NVCC`, else `$CUDA_PATH/bin/nvcc`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`.
//! - Architecture: `$CUDA_ARCH` (`compute_61`, `sm_61`, `61` or `6.1`), else the lowest virtual architecture
//!   this nvcc supports from compute_61 up (`nvcc --list-gpu-arch`, or trial compiles of 61, 70, 75, 80, 90).
//!   PTX is forward compatible: the driver JIT-compiles compute_61 PTX for any newer GPU (sm_70 … sm_90).
//! - No `--use_fast_math`: the kernels are compared with the CPU backend.
//! - Output: `$OUT_DIR/kernels.rs` with one `include_str!` constant per module, `MODULES` (name, PTX),
//!   `PTX_ARCH` and `NVCC_VERSION`; the cfg `tiedae_cuda_kernels` and the env vars `TIEDAE_PTX_ARCH` and
//!   `TIEDAE_NVCC_VERSION` ("none" without kernels).
//! - Without nvcc, or when nvcc fails, the build still succeeds (CPU only) with a warning that says why and
//!   how to get kernels; with `TIEDAE_REQUIRE_KERNELS=1` (CI) it fails instead.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest GPUs we target: Pascal (GTX 10xx), compute capability 6.1.
const MIN_ARCH: u32 = 61;
/// Tried in order when nvcc cannot list its architectures.
const PROBE_ARCHS: [u32; 5] = [61, 70, 75, 80, 90];

const NVCC_MISSING: &str = "nvcc not found";
const HOW_TO_GET_KERNELS: &str =
    "to build the GPU kernels install nvcc (scripts/install-nvcc.sh) or set NVCC=/path/to/nvcc, then rebuild";
const FIX_KERNEL_BUILD: &str = "fix the error above (or point NVCC at another nvcc), then rebuild";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_ARCH",
        "PATH",
        "TIEDAE_REQUIRE_KERNELS",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(tiedae_cuda_kernels)");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let kernel_dir = manifest_dir.join("kernels");
    let sources = kernel_sources(&kernel_dir);
    for path in &sources {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    let cu_files: Vec<PathBuf> = sources
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    let require = env::var("TIEDAE_REQUIRE_KERNELS").is_ok_and(|v| v.trim() == "1");

    match build_kernels(&kernel_dir, &cu_files, &out_dir) {
        Ok(built) => {
            write_generated(&out_dir, &built.arch, &built.nvcc_version, &built.modules);
            println!("cargo::rustc-cfg=tiedae_cuda_kernels");
            println!("cargo::rustc-env=TIEDAE_PTX_ARCH={}", built.arch);
            println!(
                "cargo::rustc-env=TIEDAE_NVCC_VERSION={}",
                built.nvcc_version
            );
            println!(
                "cargo::warning=tiedae: {} CUDA kernel modules compiled to PTX for {} ({}) with {} ({})",
                built.modules.len(),
                built.arch,
                built.arch_reason,
                built.nvcc.display(),
                built.nvcc_version
            );
            for warning in built.nvcc_warnings {
                println!("cargo::warning=tiedae: nvcc: {warning}");
            }
        }
        Err(why) => {
            let nvcc_missing = why.starts_with(NVCC_MISSING) || why.starts_with("NVCC=");
            let hint = if nvcc_missing {
                HOW_TO_GET_KERNELS
            } else {
                FIX_KERNEL_BUILD
            };
            if require {
                panic!(
                    "\n\ntiedae: TIEDAE_REQUIRE_KERNELS=1 but the CUDA kernels could not be built:\n{why}\n({hint})\n\n"
                );
            }
            write_generated(&out_dir, "none", "none", &[]);
            println!("cargo::rustc-env=TIEDAE_PTX_ARCH=none");
            println!("cargo::rustc-env=TIEDAE_NVCC_VERSION=none");
            for (i, line) in why.lines().enumerate() {
                if i == 0 {
                    println!(
                        "cargo::warning=tiedae: building WITHOUT GPU kernels (CPU only): {line}"
                    );
                } else {
                    println!("cargo::warning=tiedae:   {line}");
                }
            }
            println!("cargo::warning=tiedae: {hint}");
        }
    }
}

/// `kernels/*.cu` and `kernels/*.cuh`, sorted (an empty list when the folder is missing).
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

struct Built {
    nvcc: PathBuf,
    nvcc_version: String,
    arch: String,
    arch_reason: String,
    /// (module name, path of its PTX file)
    modules: Vec<(String, PathBuf)>,
    nvcc_warnings: Vec<String>,
}

fn build_kernels(kernel_dir: &Path, cu_files: &[PathBuf], out_dir: &Path) -> Result<Built, String> {
    let nvcc = find_nvcc()?;
    let nvcc_version = nvcc_version(&nvcc)?;
    if cu_files.is_empty() {
        return Err(format!("no kernels/*.cu files in {}", kernel_dir.display()));
    }
    let (arch, arch_reason) = choose_arch(&nvcc, out_dir)?;

    // One nvcc per file, in parallel: each is independent and takes about a second.
    let jobs: Vec<_> = cu_files
        .iter()
        .map(|cu| {
            let name = cu.file_stem().unwrap().to_string_lossy().into_owned();
            let ptx = out_dir.join(format!("{name}.ptx"));
            let mut cmd = Command::new(&nvcc);
            cmd.arg("--ptx")
                .arg(format!("-arch={arch}"))
                .args(["-O3", "-lineinfo"])
                .arg("-I")
                .arg(kernel_dir)
                .arg("-o")
                .arg(&ptx)
                .arg(cu);
            let cu = cu.clone();
            let handle = std::thread::spawn(move || cmd.output());
            (name, cu, ptx, handle)
        })
        .collect();

    let mut modules = Vec::new();
    let mut errors = Vec::new();
    let mut nvcc_warnings = Vec::new();
    for (name, cu, ptx, handle) in jobs {
        let output = handle.join().expect("nvcc thread");
        match output {
            Ok(out) if out.status.success() && ptx.is_file() => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                nvcc_warnings.extend(
                    stderr
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| format!("{}: {l}", cu.display())),
                );
                modules.push((name, ptx));
            }
            Ok(out) => errors.push(format!(
                "nvcc failed on {} ({}):\n{}{}",
                cu.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )),
            Err(e) => errors.push(format!("could not run {}: {e}", nvcc.display())),
        }
    }
    if let Some(first) = errors.first() {
        // The first failure in full; the others usually repeat it (a bad flag fails every file).
        let more = match errors.len() {
            1 => String::new(),
            n => format!("\n(and {} more kernel files failed)", n - 1),
        };
        return Err(format!("{first}{more}"));
    }
    modules.sort();
    Ok(Built {
        nvcc,
        nvcc_version,
        arch,
        arch_reason,
        modules,
        nvcc_warnings,
    })
}

fn non_empty_env(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn find_nvcc() -> Result<PathBuf, String> {
    let exe = format!("nvcc{}", env::consts::EXE_SUFFIX);
    if let Some(nvcc) = non_empty_env("NVCC") {
        let path = PathBuf::from(&nvcc);
        if path.is_file() {
            return Ok(path);
        }
        // A bare name ("nvcc-11.8") is looked up on PATH.
        if !nvcc.contains(std::path::MAIN_SEPARATOR) {
            if let Some(found) = search_path(&nvcc) {
                return Ok(found);
            }
        }
        return Err(format!("NVCC={nvcc} does not exist"));
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = non_empty_env(var) {
            let path = Path::new(&root).join("bin").join(&exe);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    search_path(&exe).ok_or_else(|| {
        format!("{NVCC_MISSING} (looked at $NVCC, $CUDA_PATH/bin, $CUDA_HOME/bin and PATH)")
    })
}

fn search_path(exe: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(exe))
        .find(|candidate| candidate.is_file())
}

/// The line of `nvcc --version` that names the release ("Cuda compilation tools, release 11.8, V11.8.89").
fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("could not run {} --version: {e}", nvcc.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            nvcc.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("release"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("unknown nvcc version");
    Ok(line.trim().replace(['\n', '\r'], " "))
}

/// "compute_61", "sm_61", "61", "6.1" → 61.
fn parse_arch(s: &str) -> Option<u32> {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_prefix("compute_")
        .or_else(|| s.strip_prefix("sm_"))
        .unwrap_or(&s)
        .replace('.', "");
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The virtual architectures `nvcc --list-gpu-arch` names (nvcc >= 11), sorted; `None` when it cannot list.
fn list_archs(nvcc: &Path) -> Option<Vec<u32>> {
    let out = Command::new(nvcc).arg("--list-gpu-arch").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut archs: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("compute_"))
        .filter_map(|n| n.parse().ok())
        .collect();
    archs.sort_unstable();
    archs.dedup();
    (!archs.is_empty()).then_some(archs)
}

/// The virtual architecture to compile for, and why.
fn choose_arch(nvcc: &Path, out_dir: &Path) -> Result<(String, String), String> {
    if let Some(requested) = non_empty_env("CUDA_ARCH") {
        let Some(arch) = parse_arch(&requested) else {
            return Err(format!(
                "CUDA_ARCH={requested} is not an architecture (expected e.g. compute_61, sm_61, 61 or 6.1)"
            ));
        };
        if let Some(supported) = list_archs(nvcc) {
            if !supported.contains(&arch) {
                let list: Vec<String> = supported.iter().map(|a| format!("compute_{a}")).collect();
                return Err(format!(
                    "CUDA_ARCH={requested}: {} does not support compute_{arch} (it supports {})",
                    nvcc.display(),
                    list.join(", ")
                ));
            }
        }
        return Ok((
            format!("compute_{arch}"),
            format!("from CUDA_ARCH={requested}"),
        ));
    }
    // nvcc >= 11 lists what it supports.
    if let Some(supported) = list_archs(nvcc) {
        if let Some(&arch) = supported.iter().find(|&&a| a >= MIN_ARCH) {
            return Ok((
                format!("compute_{arch}"),
                format!("the lowest this nvcc supports from compute_{MIN_ARCH} up; set CUDA_ARCH to change"),
            ));
        }
    }
    // Older nvcc: try a trivial kernel with each candidate.
    let probe = out_dir.join("arch_probe.cu");
    fs::write(
        &probe,
        "extern \"C\" __global__ void probe(float* x) { x[0] = 1.0f; }\n",
    )
    .map_err(|e| format!("could not write {}: {e}", probe.display()))?;
    let mut tried = Vec::new();
    for arch in PROBE_ARCHS {
        let ok = Command::new(nvcc)
            .arg("--ptx")
            .arg(format!("-arch=compute_{arch}"))
            .arg("-o")
            .arg(out_dir.join("arch_probe.ptx"))
            .arg(&probe)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok((
                format!("compute_{arch}"),
                "the first of compute_61/70/75/80/90 this nvcc accepts; set CUDA_ARCH to change"
                    .to_string(),
            ));
        }
        tried.push(format!("compute_{arch}"));
    }
    Err(format!(
        "{} accepts none of {} (probed with a trivial kernel)",
        nvcc.display(),
        tried.join(", ")
    ))
}

/// Writes `$OUT_DIR/kernels.rs`, included by `src/backend/cuda/device.rs`.
fn write_generated(out_dir: &Path, arch: &str, nvcc_version: &str, modules: &[(String, PathBuf)]) {
    let mut src = String::new();
    src.push_str("// @generated by build.rs from kernels/*.cu. Do not edit.\n");
    let _ = writeln!(
        src,
        "/// The virtual architecture the PTX targets (\"none\" when built without kernels).\n\
         pub const PTX_ARCH: &str = {arch:?};"
    );
    let _ = writeln!(
        src,
        "/// The version line of the nvcc that compiled the PTX (\"none\" when built without kernels).\n\
         pub const NVCC_VERSION: &str = {nvcc_version:?};"
    );
    for (name, ptx) in modules {
        let _ = writeln!(
            src,
            "/// PTX of kernels/{name}.cu.\npub const {}: &str = include_str!({:?});",
            name.to_ascii_uppercase(),
            ptx.display().to_string()
        );
    }
    src.push_str("/// (module name, PTX) for every kernels/*.cu, sorted by name.\n");
    src.push_str("pub const MODULES: &[(&str, &str)] = &[\n");
    for (name, _) in modules {
        let _ = writeln!(src, "    ({name:?}, {}),", name.to_ascii_uppercase());
    }
    src.push_str("];\n");
    let path = out_dir.join("kernels.rs");
    fs::write(&path, src).unwrap_or_else(|e| panic!("could not write {}: {e}", path.display()));
}
