//! The CUDA kernels' own source, compiled for the CPU and run there: the check that needs no GPU.
//!
//! `tests/kernels_on_cpu/include/cuda_on_cpu.h` maps CUDA's built-ins onto C++ (one OS thread per GPU
//! thread, real barriers for `__syncthreads`), so a C++ compiler builds `kernels/*.cu` unchanged; each
//! `*_checks.cpp` beside it launches a kernel the way `src/backend/cuda/` does and compares it with an f64
//! reference of its contract (and the GEMM's two tilings with each other). This catches indexing, bounds,
//! tiling and barrier-placement bugs on any machine; it cannot measure speed or show warp-level or
//! memory-model effects (compute-sanitizer on a GPU does: scripts/gpu-check.sh).
//!
//! Needs a C++20 compiler (`CXX`, else `g++`, else `clang++`). Without one the test prints SKIPPED, unless
//! `TIEDAE_REQUIRE_KERNELS=1` (set by CI, whose nvcc needs g++ anyway), which makes it fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn compiler() -> Option<String> {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["g++".to_string(), "clang++".to_string()]);
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Compiles `tests/kernels_on_cpu/<name>.cpp` against the kernels and runs it; panics with its output on
/// failure. Returns false (after printing SKIPPED) when there is no compiler and none is required.
fn build_and_run(name: &str) -> bool {
    build_and_run_with(name, &[]).is_some()
}

/// [`build_and_run`] with arguments for the program: its standard output (None when skipped).
fn build_and_run_with(name: &str, args: &[String]) -> Option<String> {
    let Some(cxx) = compiler() else {
        assert!(
            !common::env_flag("TIEDAE_REQUIRE_KERNELS"),
            "{name}: TIEDAE_REQUIRE_KERNELS=1 but no C++ compiler (CXX, g++, clang++) was found"
        );
        common::skipped(&format!("{name}: no C++ compiler (CXX, g++, clang++)"));
        return None;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let here = root.join("tests/kernels_on_cpu");
    let exe: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-on-cpu"));
    let out = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-ffp-contract=off",
            "-Wall",
        ])
        // The kernels' `#pragma unroll` means nothing to a host compiler.
        .arg("-Wno-unknown-pragmas")
        .arg("-include")
        .arg(here.join("include/cuda_on_cpu.h"))
        .arg("-I")
        .arg(here.join("include"))
        .arg("-I")
        .arg(root.join("kernels"))
        .args(["-x", "c++"])
        .arg(here.join(format!("{name}.cpp")))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
    assert!(
        out.status.success(),
        "{cxx} could not build {name}.cpp:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprint!("{stdout}");
    assert!(
        run.status.success(),
        "{name} failed ({}):\n{stdout}{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    Some(stdout.into_owned())
}

/// Both tilings of kernels/gemm.cu (`gemm` 64×64 and `gemm_large` 128×128 with float4 loads and double
/// buffering), every orientation, edge shapes, misaligned operands, capped grids, α/β and the fused
/// bias + activation epilogue.
#[test]
fn gemm_kernels_on_cpu() {
    build_and_run("gemm_checks");
}

/// kernels/elementwise.cu: bias_act (every activation, NaN/inf inputs), act_backward (bit for bit) and fill.
#[test]
fn elementwise_kernels_on_cpu() {
    build_and_run("elementwise_checks");
}

/// kernels/loss.cu: mse_backward's gradient (bit for bit) and loss through mse_finalize, empty batch included.
#[test]
fn loss_kernels_on_cpu() {
    build_and_run("loss_checks");
}

/// kernels/reduce.cu: col_sum over edge shapes, zero rows and capped grids.
#[test]
fn reduce_kernels_on_cpu() {
    build_and_run("reduce_checks");
}

/// kernels/optim.cu: sgd_step and adam_step over several steps, bit for bit with the CPU twins.
#[test]
fn optim_kernels_on_cpu() {
    build_and_run("optim_checks");
}

/// kernels/data.cu: gather_rows and gather_rows_half (every f16 and bf16 bit pattern), out-of-range rows NaN.
#[test]
fn data_kernels_on_cpu() {
    build_and_run("data_checks");
}

/// kernels/data.cu's shuffle_order gives, position for position, the order of its Rust twin
/// (`backend::shuffle::fill_order`, which the CPU backend and a data set kept on the host use), on
/// `common::shuffle_cases`. The program itself checks that each order is a permutation and that nothing is
/// written past it.
#[test]
fn shuffle_kernel_on_cpu_gives_the_rust_twins_order() {
    use tiedae::backend::shuffle::fill_order;
    let cases = common::shuffle_cases();
    let args: Vec<String> = cases
        .iter()
        .flat_map(|&(rows, key)| [rows.to_string(), key.to_string()])
        .collect();
    let Some(out) = build_and_run_with("shuffle_checks", &args) else {
        return;
    };
    let orders: Vec<&str> = out.lines().filter(|l| l.starts_with("order ")).collect();
    assert_eq!(orders.len(), cases.len(), "one order per case:\n{out}");
    for (&(rows, key), line) in cases.iter().zip(orders) {
        let (head, values) = line.split_once(':').expect("order <rows>: ...");
        assert_eq!(head, format!("order {rows}"));
        let got: Vec<u32> = values
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let mut want = vec![0u32; rows];
        fill_order(&mut want, key);
        assert_eq!(got, want, "{rows} rows, key {key}");
    }
}

/// kernels/constraints.cu: diagonal_affine, sum_squares (with mse_finalize), div_by_sqrt, normalize_columns
/// and center_columns.
#[test]
fn constraints_kernels_on_cpu() {
    build_and_run("constraints_checks");
}

/// The values that src/backend/cuda/launch.rs and kernels/*.cu must agree on (launch shapes, tiles, activation
/// codes, 16-bit formats: `cuda::kernel_constants()`) against the kernels' own `#define`s. A block of 128
/// threads launched for a kernel whose shared-memory tree assumes 256 would sum garbage on a GPU, silently.
#[test]
fn kernel_constants_match_the_host() {
    let Some(printed) = build_and_run_with("constants_print", &[]) else {
        return;
    };
    let in_kernels: std::collections::HashMap<&str, u64> = printed
        .lines()
        .map(|line| {
            let (name, value) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("not 'NAME value': {line}"));
            (name, value.parse().expect("a number"))
        })
        .collect();
    let host = tiedae::backend::cuda::kernel_constants();
    assert!(host.len() >= 20, "{} constants", host.len());
    for (name, value) in &host {
        assert_eq!(
            in_kernels.get(name.as_str()),
            Some(value),
            "{name}: kernels/*.cu (left) against src/backend/cuda/launch.rs (right)"
        );
    }
    assert_eq!(
        in_kernels.len(),
        host.len(),
        "constants_print.cpp prints names the host does not list"
    );
}
