//! The emulated CUDA driver's own checks (tests/emulated_cuda): each test makes one of them fire, through
//! cudarc as tiedae calls it or through the release binary, so that none of them passes by being unable to
//! fail. They run where there is no real GPU (CI); with one, they say SKIPPED (the GPU tests use the GPU).
//!
//! A test whose body needs the emulated driver in-process runs in a child process (see
//! tests/common/emulated.rs): `emulated_child` is true there, and false in the parent once the child passed.
//! Where a check could depend on which stream runs first, the test runs it under several seeds and shows
//! that both orders came up and were caught (`an_unordered_copy_and_kernel_are_a_hazard_in_either_order`).

mod common;

use common::emulated::{self, emulated_child, emulator_or_skip, Emulator};
use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use tiedae::backend::cuda;

/// A context with cudarc's own event tracking off (tiedae's setting: every wait between streams is ours).
fn context() -> Arc<CudaContext> {
    let ctx = CudaContext::new(0).expect("a context on the emulated driver");
    // SAFETY: nothing was allocated on this context yet; the tests order their streams themselves.
    unsafe { ctx.disable_event_tracking() };
    ctx
}

/// One of tiedae's kernel modules, loaded.
fn module(ctx: &Arc<CudaContext>, name: &str) -> Arc<CudaModule> {
    let (_, ptx) = cuda::ptx_modules()
        .iter()
        .find(|(m, _)| *m == name)
        .expect("the module is built in");
    ctx.load_module(Ptx::from_src(*ptx))
        .expect("the module loads")
}

fn fill_kernel(ctx: &Arc<CudaContext>) -> CudaFunction {
    module(ctx, "elementwise")
        .load_function("fill")
        .expect("fill")
}

/// Queues `fill(dst, n, value)` with `cfg`.
fn launch_fill(
    stream: &Arc<CudaStream>,
    f: &CudaFunction,
    dst: u64,
    n: u64,
    value: f32,
    cfg: LaunchConfig,
) -> Result<(), DriverError> {
    let mut launch = stream.launch_builder(f);
    launch.arg(&dst).arg(&n).arg(&value);
    // SAFETY: the tests pass what they mean to pass, bad pointers included: the emulated driver checks
    // them before the kernel runs (that is what is under test), and AddressSanitizer watches the rest.
    unsafe { launch.launch(cfg) }.map(|_| ())
}

fn blocks(n: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The driver's whole message for an error: its name and cuGetErrorString's text.
fn message(e: DriverError) -> String {
    format!(
        "{} {}",
        e.error_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
        e.error_string()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default()
    )
}

fn assert_error(result: Result<(), DriverError>, code: CUresult, words: &[&str]) {
    let e = result.expect_err("the emulated driver refuses this");
    let text = message(e);
    assert_eq!(e.0, code, "{text}");
    for w in words {
        assert!(text.contains(w), "'{w}' missing from: {text}");
    }
}

fn tiedae(emulator: &Emulator, env: &[(&str, &str)], args: &[&str]) -> Output {
    emulator
        .command(env!("CARGO_BIN_EXE_tiedae"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("running tiedae")
}

fn digits() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/digits.csv")
        .display()
        .to_string()
}

// The checks, by what they check (Rust beside the emulator's C++, not tests of their own: one executable).
#[path = "emulated_cuda/checks/device.rs"]
mod device;
#[path = "emulated_cuda/checks/launches.rs"]
mod launches;
#[path = "emulated_cuda/checks/modules.rs"]
mod modules;
#[path = "emulated_cuda/checks/streams.rs"]
mod streams;
