//! Helpers shared by the integration tests: a GPU backend when one works, and an element-wise comparison
//! with a tolerance `atol + rtol·|want|` that names the worst element (llm.c's test_gpt2 style).
#![allow(dead_code)] // each test binary uses its own subset

use tiedae::backend::cuda::CudaBackend;

pub mod binary;
pub mod emulated;
pub mod finite_difference;
pub mod recorder;

/// True when the environment variable is set to "1".
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "1")
}

/// A CUDA backend on GPU 0 for a GPU test, on a real GPU when one works, else on the emulated CUDA driver
/// (see `emulated`): there the test's body runs in a child process, and this returns `None` in the parent
/// once the child passed. Without either, `None` with `SKIPPED <test>: ...` on stderr, or a failure when
/// `TIEDAE_REQUIRE_GPU=1` (a real GPU, nothing else) or `TIEDAE_REQUIRE_KERNELS=1` (the emulator at least).
pub fn gpu_backend(test: &str) -> Option<CudaBackend> {
    if emulated::in_child() {
        return Some(CudaBackend::new(0).unwrap_or_else(|e| {
            panic!("{test}: the emulated CUDA driver does not give a backend: {e}")
        }));
    }
    match emulated::gpu() {
        emulated::Gpu::Real => Some(
            CudaBackend::new(0)
                .unwrap_or_else(|e| panic!("{test}: `tiedae info` calls GPU 0 usable, but: {e}")),
        ),
        emulated::Gpu::Emulated(emulator) => {
            let out = emulated::run_child(emulator, &[]);
            emulated::assert_child_passed(emulator, &out);
            None
        }
        emulated::Gpu::Missing(why) => {
            if env_flag("TIEDAE_REQUIRE_GPU") {
                panic!("{test}: TIEDAE_REQUIRE_GPU=1 but there is no usable GPU: {why}");
            }
            skipped(&format!("{test}: {why}"));
            None
        }
    }
}

/// The environment in which the release binary runs `--device cuda` for a GPU test: none on a real GPU, the
/// emulated driver's otherwise; `None` as [`gpu_backend`] gives it.
pub fn gpu_env(test: &str) -> Option<Vec<(String, String)>> {
    match emulated::gpu() {
        emulated::Gpu::Real => Some(Vec::new()),
        emulated::Gpu::Emulated(emulator) => Some(emulator.env()),
        emulated::Gpu::Missing(why) => {
            if env_flag("TIEDAE_REQUIRE_GPU") {
                panic!("{test}: TIEDAE_REQUIRE_GPU=1 but there is no usable GPU: {why}");
            }
            skipped(&format!("{test}: {why}"));
            None
        }
    }
}

/// Says that a test skipped, on the real stderr: libtest captures `eprintln!` of passing tests, but not
/// direct writes, so `cargo test` shows every skip without `--nocapture`.
pub fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}");
}

/// Asserts |got − want| ≤ atol + rtol·|want| for every element (NaN only matches NaN), and on failure reports
/// how many elements fail and the worst one (largest excess over its allowance).
pub fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut failures = 0usize;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = if g.is_nan() || w.is_nan() {
            if g.is_nan() && w.is_nan() {
                continue;
            }
            f64::INFINITY
        } else if g == w {
            continue; // also equal infinities
        } else {
            let err = (g as f64 - w as f64).abs();
            let allowed = atol as f64 + rtol as f64 * (w as f64).abs();
            if err <= allowed {
                continue;
            }
            err - allowed
        };
        failures += 1;
        if worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        let (g, w) = (got[i], want[i]);
        panic!(
            "{name}: {failures} of {} elements differ; worst at [{i}]: got {g:e}, want {w:e}, |diff| {:e} > \
             allowed {:e} (atol {atol:e} + rtol {rtol:e}·|want|)",
            got.len(),
            (g as f64 - w as f64).abs(),
            atol as f64 + rtol as f64 * (w as f64).abs()
        );
    }
}

/// The (rows, key) pairs on which the epoch shuffle's kernel is compared with its Rust twin (on the GPU and
/// run on the CPU): tiny sets (the smallest network, walked the most), both sides of 128 rows (where the
/// network stops being wider than the set), the digits, and sizes off a power of two.
pub fn shuffle_cases() -> Vec<(usize, u64)> {
    [
        1usize, 2, 3, 5, 10, 127, 128, 129, 1797, 4099, 60_000, 65_537,
    ]
    .into_iter()
    .enumerate()
    .map(|(e, rows)| {
        (
            rows,
            tiedae::backend::shuffle::shuffle_key(42, e as u64 + 1),
        )
    })
    .collect()
}
