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

/// kernels/noise.cu's corrupt_rows and corrupt_rows_half give, bit for bit, what the Rust twin
/// (`CpuBackend::corrupt_rows`, which a data set kept on the host uses too) gives on the same inputs: every
/// noise at once, f16 and bf16 donors, capped grids, a set of one and of two rows, rows out of range, 80 000
/// Gaussian draws, noise off and an empty batch. The program itself checks its guards and that donors are read
/// only inside the set.
#[test]
fn noise_kernel_on_cpu_gives_the_rust_twins_bits() {
    use tiedae::backend::{Backend, CpuBackend, Donors, HalfFormat, IdxRegion, NoiseParams};
    use tiedae::backend::{NoiseSource, Region};
    let Some(out) = build_and_run_with("noise_checks", &[]) else {
        return;
    };
    let hex = |line: &str, name: &str| -> Vec<u32> {
        let values = line
            .strip_prefix(name)
            .and_then(|l| l.strip_prefix(':'))
            .unwrap_or_else(|| panic!("expected '{name}:', got {:.60}", line));
        values
            .split_whitespace()
            .map(|v| u32::from_str_radix(v, 16).unwrap())
            .collect()
    };
    let floats = |bits: Vec<u32>| -> Vec<f32> { bits.into_iter().map(f32::from_bits).collect() };
    let lines: Vec<&str> = out.lines().collect();
    let mut cases = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(head) = line.strip_prefix("case ") else {
            continue;
        };
        let f: Vec<&str> = head.split_whitespace().collect();
        let num = |k: usize| -> u64 { f[k].parse().unwrap() };
        let word = |k: usize| -> u32 { u32::from_str_radix(f[k], 16).unwrap() };
        let (rows, cols, donor_rows) = (num(0) as usize, num(1) as usize, num(2) as usize);
        let params = NoiseParams {
            swap_below: num(4) as u32,
            mask_below: num(5) as u32,
            sigma: f32::from_bits(word(6)),
        };
        let key = [word(7), word(8), word(9)];
        let clean = floats(hex(lines[i + 1], "clean"));
        let donors = hex(lines[i + 2], "donors");
        let idx = hex(lines[i + 3], "idx");
        let fill = floats(hex(lines[i + 4], "fill"));
        let want = hex(lines[i + 5], "out");
        let mut cpu = CpuBackend::<f32>::new();
        let put = |cpu: &mut CpuBackend<f32>, v: &[f32]| {
            let r = Region::whole(cpu.alloc(v.len()).unwrap(), v.len());
            cpu.upload(r, v).unwrap();
            r
        };
        let (clean_r, fill_r) = (put(&mut cpu, &clean), put(&mut cpu, &fill));
        let out_r = put(&mut cpu, &vec![f32::NAN; rows * cols]);
        let donors = match f[3] {
            "f32" => Donors::F32(put(&mut cpu, &floats(donors))),
            half => {
                let id = cpu.alloc_half(donors.len()).unwrap();
                let bits: Vec<u16> = donors.iter().map(|&b| b as u16).collect();
                cpu.upload_half(id, &bits).unwrap();
                let format = if half == "f16" {
                    HalfFormat::F16
                } else {
                    HalfFormat::Bf16
                };
                Donors::Half(id, format)
            }
        };
        let idx_buf = cpu.alloc_indices(rows.max(1)).unwrap();
        cpu.upload_indices(idx_buf, 0, &idx).unwrap();
        let key_buf = cpu.alloc_indices(3).unwrap();
        cpu.upload_indices(key_buf, 0, &key).unwrap();
        let source = NoiseSource {
            donors,
            donor_rows,
            fill: fill_r,
            key: IdxRegion {
                buf: key_buf,
                offset: 0,
                len: 3,
            },
            params,
        };
        let batch = IdxRegion {
            buf: idx_buf,
            offset: 0,
            len: rows,
        };
        cpu.corrupt_rows(clean_r, cols, batch, source, out_r)
            .unwrap();
        let mut got = vec![0.0f32; rows * cols];
        cpu.download(out_r, &mut got).unwrap();
        assert_eq!(want.len(), rows * cols, "{line}: output size");
        let differ: Vec<usize> = (0..want.len())
            .filter(|&k| got[k].to_bits() != want[k])
            .collect();
        if let Some(&k) = differ.first() {
            panic!(
                "{line}: {} of {} cells differ; first at {k}: kernel {:e} ({:#x}), Rust {:e} ({:#x})",
                differ.len(),
                want.len(),
                f32::from_bits(want[k]),
                want[k],
                got[k],
                got[k].to_bits()
            );
        }
        if (params.sigma != 0.0 || params.swap_below != 0) && !want.is_empty() {
            let changed = (0..want.len())
                .filter(|&k| want[k] != clean[k].to_bits())
                .count();
            assert!(
                changed > 0 || donor_rows < 2,
                "{line}: noise changed nothing"
            );
        }
        cases += 1;
    }
    assert_eq!(cases, 10, "cases printed:\n{out:.2000}");
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
