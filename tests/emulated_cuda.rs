//! The emulated CUDA driver's own checks (tests/emulated_cuda): each test makes one of them fire, through
//! cudarc as tiedae calls it or through the release binary, so that none of them passes by being unable to
//! fail. They run where there is no real GPU (CI); with one, they say SKIPPED (the GPU tests use the GPU).
//!
//! A test whose body needs the emulated driver in-process runs in a child process (see
//! tests/common/emulated.rs): `emulated_child` is true there, and false in the parent once the child passed.
//! Streams run with `TIEDAE_EMU_INTERLEAVE=0` where the check depends on which stream runs first: the
//! hazard checks themselves catch both orders (`an_unordered_copy_and_kernel_are_a_hazard_in_either_order`).

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

// ------------------------------------------------------------------------------------ device identity

#[test]
fn info_shows_the_emulated_device_from_the_environment() {
    let test = "info_shows_the_emulated_device_from_the_environment";
    let Some(emulator) = emulator_or_skip(test) else {
        return;
    };
    let env = [
        ("TIEDAE_EMU_SMS", "132"),
        ("TIEDAE_EMU_CC", "9.0"),
        ("TIEDAE_EMU_DRIVER", "12.4"),
        ("TIEDAE_EMU_MEMORY_MIB", "2048"),
    ];
    let out = tiedae(emulator, &env, &["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "cuda:0 emulated CUDA device (CPU) (compute 9.0, 2.0 GiB, driver for CUDA 12.4): usable"
        ),
        "{stdout}"
    );
}

/// `check_device`'s refusals, driven by the emulated device: a driver older than the bindings, an
/// architecture older than the PTX, no device at all. Each is one line naming the fix, `info` says why the
/// GPU is not usable, and `--device auto` trains on the CPU instead.
#[test]
fn old_drivers_old_architectures_and_no_device_are_refused() {
    let test = "old_drivers_old_architectures_and_no_device_are_refused";
    let Some(emulator) = emulator_or_skip(test) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tiedae-emu-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("m.safetensors").display().to_string();
    let data = digits();
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "TIEDAE_EMU_DRIVER",
            "11.4",
            &["supports CUDA 11.4", "11.8 or newer", "--device cpu"],
        ),
        (
            "TIEDAE_EMU_CC",
            "5.2",
            &["compute capability 5.2", "compute_61", "--device cpu"],
        ),
        ("TIEDAE_EMU_DEVICES", "0", &["sees no GPU", "--device cpu"]),
    ];
    for (var, value, words) in cases {
        let env = [(var, value)];
        let train = |device: &str| {
            tiedae(
                emulator,
                &env,
                &[
                    "train",
                    "--data",
                    &data,
                    "--ignore-columns",
                    "digit",
                    "--layers",
                    "4",
                    "--epochs",
                    "1",
                    "--out",
                    &model,
                    "--device",
                    device,
                ],
            )
        };
        let out = train("cuda");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: trained on cuda");
        assert_eq!(stderr.trim().lines().count(), 1, "{var}={value}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{var}={value}: '{w}' missing: {stderr}");
        }
        let out = train("auto");
        assert!(
            out.status.success(),
            "{var}={value}: auto did not fall back to the CPU: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = tiedae(emulator, &env, &["info"]);
        let stdout = String::from_utf8_lossy(&info.stdout);
        if var == "TIEDAE_EMU_DEVICES" {
            assert!(stdout.contains("cuda: no device"), "{stdout}");
        } else {
            assert!(
                stdout.contains("emulated CUDA device (CPU)")
                    && stdout.contains("not usable")
                    && stdout.contains(value),
                "{var}={value}: {stdout}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// C = A·B on `be` (A is m×k, B is k×n, row-major).
fn gemm_on<B: tiedae::backend::Backend<Scalar = f32>>(
    be: &mut B,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
) -> Vec<f32> {
    use tiedae::backend::{Gemm, Region, Trans};
    let whole = |be: &mut B, len: usize| Region::whole(be.alloc(len).unwrap(), len);
    let (ra, rb, rc) = (whole(be, m * k), whole(be, k * n), whole(be, m * n));
    be.upload(ra, a).unwrap();
    be.upload(rb, b).unwrap();
    let g = Gemm {
        m,
        n,
        k,
        trans_a: Trans::N,
        trans_b: Trans::N,
        alpha: 1.0,
        beta: 0.0,
    };
    be.gemm(g, ra, rb, rc).unwrap();
    let mut c = vec![0.0; m * n];
    be.download(rc, &mut c).unwrap();
    c
}

/// The device's memory decides where `--data-on auto` keeps the data set: a device of 1 MiB keeps the
/// digits (0.46 MB, and the model and its batches besides) on the host and trains to the same bits; a model
/// too large for it fails with one line naming the error.
#[test]
fn a_device_too_small_for_the_data_keeps_it_on_the_host() {
    let test = "a_device_too_small_for_the_data_keeps_it_on_the_host";
    let Some(emulator) = emulator_or_skip(test) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tiedae-emu-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = digits();
    let train = |mib: &str, placement: &str, out: &str, layers: &str| {
        let out = dir.join(out).display().to_string();
        let run = tiedae(
            emulator,
            &[("TIEDAE_EMU_MEMORY_MIB", mib)],
            &[
                "train",
                "--data",
                &data,
                "--ignore-columns",
                "digit",
                "--layers",
                layers,
                "--epochs",
                "1",
                "--device",
                "cuda",
                "--data-on",
                placement,
                "--out",
                &out,
            ],
        );
        (run, out)
    };
    let (small, small_model) = train("1", "auto", "small.safetensors", "8,3");
    let stderr = String::from_utf8_lossy(&small.stderr);
    assert!(small.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&small.stdout).contains("stays in host memory"));
    let (large, large_model) = train("6144", "auto", "large.safetensors", "8,3");
    assert!(
        large.status.success(),
        "{}",
        String::from_utf8_lossy(&large.stderr)
    );
    assert!(!String::from_utf8_lossy(&large.stdout).contains("stays in host memory"));
    let params = |m: &str| tiedae::io::load_model(Path::new(m)).unwrap().params;
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(params(&small_model)), bits(params(&large_model)));
    // 64·2048 + 2048·8 parameters, their gradient and Adam's two moments: 2.4 MB.
    let (full, _) = train("1", "device", "full.safetensors", "2048,8");
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success());
    assert!(
        stderr.contains("CUDA_ERROR_OUT_OF_MEMORY") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SM count decides each product's plan (`GemmKernel::plan`): 10 SMs (a GTX 1060) and 132 (an H100)
/// between them run all three, each checked against the CPU and seen in the driver's trace.
#[test]
fn each_gemm_plan_runs_for_the_sm_count_that_picks_it() {
    use tiedae::backend::cuda::{CudaBackend, GemmKernel, GemmPlan};
    use tiedae::backend::CpuBackend;
    const SHAPES: [(usize, usize, usize); 2] = [(1024, 1280, 16), (256, 256, 784)];
    let test = "each_gemm_plan_runs_for_the_sm_count_that_picks_it";
    if emulated::in_child() {
        let mut gpu = CudaBackend::new(0).unwrap();
        let sms = gpu.device_info().multiprocessors;
        let wanted = match sms {
            10 => [GemmPlan::Large, GemmPlan::Tile64],
            132 => [
                GemmPlan::Tile64,
                GemmPlan::SplitK {
                    k_split: 144,
                    splits: 6,
                },
            ],
            other => panic!("TIEDAE_EMU_SMS={other}: not a case of this test"),
        };
        for (&shape, want) in SHAPES.iter().zip(wanted) {
            let (m, n, k) = shape;
            assert_eq!(GemmKernel::Auto.plan(m, n, k, sms), want, "{m}×{n}×{k}");
            // Multiples of 1/8 below 1 in magnitude: every product and every sum is exact in f32, in any order.
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0)
                .collect();
            let got = gemm_on(&mut gpu, shape, &a, &b);
            let want_c = gemm_on(&mut CpuBackend::<f32>::new(), shape, &a, &b);
            assert!(
                got == want_c,
                "{m}×{n}×{k} on {sms} SMs differs from the CPU"
            );
        }
        return;
    }
    let Some(emulator) = emulator_or_skip(test) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("tiedae-emu-plans-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (sms, kernels) in [
        ("10", &["kernel gemm_large ", "kernel gemm "][..]),
        (
            "132",
            &["kernel gemm grid=(4,4,6)", "kernel gemm_split_reduce "][..],
        ),
    ] {
        let trace = dir.join(format!("trace-{sms}"));
        let _ = std::fs::remove_file(&trace);
        let trace_s = trace.display().to_string();
        let out = emulated::run_child(
            emulator,
            &[("TIEDAE_EMU_SMS", sms), ("TIEDAE_EMU_TRACE", &trace_s)],
        );
        emulated::assert_child_passed(emulator, &out);
        let launched = std::fs::read_to_string(&trace).unwrap();
        for k in kernels {
            assert!(
                launched
                    .lines()
                    .any(|l| l.starts_with("queue ") && l.contains(k)),
                "{sms} SMs: no launch of '{k}' in the trace"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------ launches

/// A GPU's limits, with the driver's error: too many threads, a zero or too large grid, more threads than
/// the kernel's `__launch_bounds__`, too much shared memory. None of these is sticky.
#[test]
fn launch_shapes_are_checked_as_a_gpu_checks_them() {
    if !emulated_child("launch_shapes_are_checked_as_a_gpu_checks_them", &[]) {
        return;
    }
    let ctx = context();
    let stream = ctx.new_stream().unwrap();
    let buf = stream.alloc_zeros::<f32>(4096).unwrap();
    let (p, _) = buf.device_ptr(&stream);
    let fill = fill_kernel(&ctx);
    let shape = |grid: (u32, u32, u32), block: (u32, u32, u32), shared: u32| LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: shared,
    };
    let bad = [
        (shape((1, 1, 1), (1025, 1, 1), 0), "1024 threads"),
        (shape((1, 1, 1), (64, 32, 1), 0), "1024 threads"),
        (shape((0, 1, 1), (256, 1, 1), 0), "zero dimension"),
        (shape((1, 65536, 1), (256, 1, 1), 0), "exceeds"),
        (
            shape((1, 1, 1), (256, 1, 1), 48 * 1024 + 4),
            "shared memory",
        ),
    ];
    for (cfg, words) in bad {
        assert_error(
            launch_fill(&stream, &fill, p, 4096, 1.0, cfg),
            CUresult::CUDA_ERROR_INVALID_VALUE,
            &["fill", words],
        );
    }
    // col_sum is declared __launch_bounds__(512): its PTX says .maxntid 512.
    let col_sum = module(&ctx, "reduce").load_function("col_sum").unwrap();
    let (rows, cols) = (4u64, 8u64);
    let mut launch = stream.launch_builder(&col_sum);
    launch.arg(&p).arg(&p).arg(&rows).arg(&cols);
    // SAFETY: refused before anything runs (a block of 1024 threads).
    let refused = unsafe { launch.launch(shape((1, 1, 1), (32, 32, 1), 0)) }.map(|_| ());
    assert_error(
        refused,
        CUresult::CUDA_ERROR_INVALID_VALUE,
        &["col_sum", ".maxntid 512"],
    );
    // The context still works: nothing above was sticky.
    launch_fill(&stream, &fill, p, 4096, 2.0, blocks(4096)).unwrap();
    assert!(stream.clone_dtoh(&buf).unwrap().iter().all(|&x| x == 2.0));
}

/// A pointer argument outside every live allocation: CUDA_ERROR_ILLEGAL_ADDRESS when the launch runs,
/// naming the kernel and the argument, and sticky, as a GPU's fault is.
#[test]
fn a_pointer_outside_every_allocation_is_an_illegal_address() {
    if !emulated_child(
        "a_pointer_outside_every_allocation_is_an_illegal_address",
        &[],
    ) {
        return;
    }
    let ctx = context();
    let stream = ctx.new_stream().unwrap();
    let fill = fill_kernel(&ctx);
    let not_device_memory = 0x1000u64;
    // Queued: the fault shows at the next wait, as on a GPU.
    launch_fill(&stream, &fill, not_device_memory, 16, 1.0, blocks(16)).unwrap();
    assert_error(
        stream.synchronize(),
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        &[
            "kernel fill",
            "argument dst",
            "float*",
            "not inside any device allocation",
        ],
    );
    assert!(stream.alloc_zeros::<f32>(4).is_err(), "the fault is sticky");
}

/// Fresh device memory reads as NaN (0xFF bytes) until something writes it; memory freed in stream order
/// is poisoned, and a launch that still uses it is an illegal address naming who freed it.
#[test]
fn fresh_memory_is_nan_and_freed_memory_is_an_illegal_address() {
    if !emulated_child(
        "fresh_memory_is_nan_and_freed_memory_is_an_illegal_address",
        &[],
    ) {
        return;
    }
    let ctx = context();
    let stream = ctx.new_stream().unwrap();
    // SAFETY: read before any write on purpose: what the emulated driver fills fresh memory with.
    let fresh = unsafe { stream.alloc::<f32>(100) }.unwrap();
    let seen = stream.clone_dtoh(&fresh).unwrap();
    assert!(
        seen.iter().all(|x| x.to_bits() == 0xFFFF_FFFF),
        "fresh memory: {:?}",
        &seen[..4]
    );
    let (stale, _) = fresh.device_ptr(&stream);
    drop(fresh); // cuMemFreeAsync on `stream`
    let fill = fill_kernel(&ctx);
    launch_fill(&stream, &fill, stale, 100, 1.0, blocks(100)).unwrap();
    assert_error(
        stream.synchronize(),
        CUresult::CUDA_ERROR_ILLEGAL_ADDRESS,
        &["kernel fill", "argument dst", "freed by cuMemFreeAsync"],
    );
}

/// A kernel that writes past its buffer, through a pointer inside it: AddressSanitizer stops the process
/// with the kernel's source line, as compute-sanitizer's memcheck would report it.
#[test]
fn a_kernel_writing_past_its_buffer_is_stopped_by_address_sanitizer() {
    let test = "a_kernel_writing_past_its_buffer_is_stopped_by_address_sanitizer";
    if emulated::in_child() {
        let ctx = context();
        let stream = ctx.new_stream().unwrap();
        let buf = stream.alloc_zeros::<f32>(1000).unwrap();
        let (p, _) = buf.device_ptr(&stream);
        let fill = fill_kernel(&ctx);
        launch_fill(&stream, &fill, p, 1001, 1.0, blocks(1001)).unwrap();
        let _ = stream.synchronize();
        panic!("{test}: the write past the buffer went unnoticed");
    }
    let Some(emulator) = emulator_or_skip(test) else {
        return;
    };
    if emulator.asan_runtime.is_none() {
        common::skipped(&format!(
            "{test}: the emulated driver was built without AddressSanitizer (no libasan)"
        ));
        return;
    }
    let out = emulated::run_child(emulator, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child passed: {stderr}");
    for w in [
        "AddressSanitizer: heap-buffer-overflow",
        "WRITE of size 4",
        "in fill",
        "kernels/elementwise.cu:",
        "emulated CUDA: while running kernel fill",
    ] {
        assert!(
            stderr.contains(w),
            "'{w}' missing from the report:\n{stderr}"
        );
    }
}

// ------------------------------------------------------------------------------------------- streams

/// Two streams and no event between them: a kernel reading what a copy on the other stream writes is a
/// hazard whichever runs first (the seed decides; both orders are tried).
#[test]
fn an_unordered_copy_and_kernel_are_a_hazard_in_either_order() {
    let test = "an_unordered_copy_and_kernel_are_a_hazard_in_either_order";
    if emulated::in_child() {
        let ctx = context();
        let (compute, copies) = (ctx.new_stream().unwrap(), ctx.new_stream().unwrap());
        let buf = compute.alloc_zeros::<f32>(256).unwrap();
        compute.synchronize().unwrap();
        let (p, _) = buf.device_ptr(&compute);
        let host = vec![3.0f32; 256];
        // SAFETY: `host` outlives the copy (the test synchronizes before returning).
        unsafe { cu::memcpy_htod_async(p, &host, copies.cu_stream()) }.unwrap();
        let sum = module(&ctx, "reduce").load_function("col_sum").unwrap();
        let out = compute.alloc_zeros::<f32>(16).unwrap();
        let (o, _) = out.device_ptr(&compute);
        let (rows, cols) = (16u64, 16u64);
        let mut launch = compute.launch_builder(&sum);
        launch.arg(&p).arg(&o).arg(&rows).arg(&cols);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 16, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: both buffers hold what the kernel reads and writes (16×16 in, 16 out).
        unsafe { launch.launch(cfg) }.unwrap();
        let result = compute.synchronize().and_then(|_| copies.synchronize());
        assert_error(
            result,
            CUresult::CUDA_ERROR_LAUNCH_FAILED,
            &[
                "hazard",
                "kernel col_sum",
                "argument m",
                "host-to-device copy",
                "no event orders the two",
            ],
        );
        return;
    }
    let Some(emulator) = emulator_or_skip(test) else {
        return;
    };
    // Without interleaving the kernel runs first (the copy's stream is never waited for); with it, some
    // seeds run the copy first.
    let mut orders = std::collections::BTreeSet::new();
    for (interleave, seed) in [
        ("0", "1"),
        ("1", "1"),
        ("1", "2"),
        ("1", "3"),
        ("1", "4"),
        ("1", "5"),
        ("1", "6"),
    ] {
        let out = emulated::run_child(
            emulator,
            &[
                ("TIEDAE_EMU_INTERLEAVE", interleave),
                ("TIEDAE_EMU_SEED", seed),
            ],
        );
        emulated::assert_child_passed(emulator, &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        orders.insert(stderr.contains("hazard: kernel col_sum"));
    }
    assert_eq!(orders.len(), 2, "the seeds did not try both orders");
}

/// A host write into a page-locked buffer that a queued copy still reads: the copy runs late (lazily) and
/// would carry the new bytes; the driver reports it instead.
#[test]
fn refilling_a_pinned_buffer_under_a_queued_copy_is_a_hazard() {
    if !emulated_child(
        "refilling_a_pinned_buffer_under_a_queued_copy_is_a_hazard",
        &[],
    ) {
        return;
    }
    let ctx = context();
    let copies = ctx.new_stream().unwrap();
    let buf = copies.alloc_zeros::<f32>(64).unwrap();
    let (p, _) = buf.device_ptr(&copies);
    // SAFETY: written below before the copy reads it.
    let mut staging = unsafe { ctx.alloc_pinned::<f32>(64) }.unwrap();
    let host = staging.as_mut_ptr().unwrap();
    // SAFETY: `staging` holds 64 floats; the slices below stay inside it.
    unsafe {
        std::ptr::write_bytes(host, 0, 64);
        cu::memcpy_htod_async(p, std::slice::from_raw_parts(host, 64), copies.cu_stream()).unwrap();
        *host = 1.0; // too early: the copy has not run
    }
    assert_error(
        copies.synchronize(),
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        &[
            "hazard",
            "the host wrote page-locked buffer",
            "before the copy ran",
        ],
    );
}

/// With the wait in place, the same two streams are fine, and the kernel sees the copy's bytes.
#[test]
fn an_event_between_the_streams_orders_them() {
    if !emulated_child(
        "an_event_between_the_streams_orders_them",
        &[("TIEDAE_EMU_INTERLEAVE", "1")],
    ) {
        return;
    }
    let ctx = context();
    let (compute, copies) = (ctx.new_stream().unwrap(), ctx.new_stream().unwrap());
    let buf = compute.alloc_zeros::<f32>(256).unwrap();
    copies.join(&compute).unwrap(); // the allocation and its zeroing come first
    let (p, _) = buf.device_ptr(&compute);
    let host = vec![3.0f32; 256];
    // SAFETY: `host` outlives the copy (synchronized below).
    unsafe { cu::memcpy_htod_async(p, &host, copies.cu_stream()) }.unwrap();
    compute.join(&copies).unwrap();
    let fill = fill_kernel(&ctx);
    launch_fill(&compute, &fill, p, 128, 1.0, blocks(128)).unwrap();
    let got = compute.clone_dtoh(&buf).unwrap();
    assert!(got[..128].iter().all(|&x| x == 1.0) && got[128..].iter().all(|&x| x == 3.0));
}

// -------------------------------------------------------------------------------------------- graphs

/// A capture records launches with their arguments as they were; a synchronize while capturing is refused
/// and invalidates the capture, as CUDA does; a replay runs the recorded launches.
#[test]
fn graphs_follow_cudas_capture_rules() {
    if !emulated_child("graphs_follow_cudas_capture_rules", &[]) {
        return;
    }
    let ctx = context();
    let stream = ctx.new_stream().unwrap();
    let buf = stream.alloc_zeros::<f32>(64).unwrap();
    stream.synchronize().unwrap();
    let (p, _) = buf.device_ptr(&stream);
    let fill = fill_kernel(&ctx);
    let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
    let flags = sys::CUgraphInstantiate_flags(0);

    stream.begin_capture(mode).unwrap();
    launch_fill(&stream, &fill, p, 64, 5.0, blocks(64)).unwrap();
    assert_error(
        stream.synchronize(),
        CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
        &["cuStreamSynchronize", "captures a graph"],
    );
    assert_error(
        stream.end_capture(flags).map(|_| ()),
        CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
        &[],
    );
    // Nothing of the invalidated capture ran.
    assert!(stream.clone_dtoh(&buf).unwrap().iter().all(|&x| x == 0.0));

    stream.begin_capture(mode).unwrap();
    let mut value = 7.0f32;
    launch_fill(&stream, &fill, p, 64, value, blocks(64)).unwrap();
    value = 8.0; // after the launch: the graph keeps 7
    let graph = stream.end_capture(flags).unwrap().expect("a graph");
    assert!(
        stream.clone_dtoh(&buf).unwrap().iter().all(|&x| x == 0.0),
        "capture ran work"
    );
    launch_fill(&stream, &fill, p, 64, value, blocks(64)).unwrap();
    graph.launch().unwrap();
    assert!(stream.clone_dtoh(&buf).unwrap().iter().all(|&x| x == 7.0));
}

// ---------------------------------------------------------------------------------- modules and misc

/// A PTX entry with no CPU twin, or with other parameters than its twin's, fails to load naming the
/// kernel; so does PTX for a newer architecture or a newer driver.
#[test]
fn ptx_that_the_twins_or_the_device_cannot_run_is_refused() {
    if !emulated_child(
        "ptx_that_the_twins_or_the_device_cannot_run_is_refused",
        &[],
    ) {
        return;
    }
    let ctx = context();
    let ptx = |version: &str, target: &str, entry: &str, params: &str| {
        format!(".version {version}\n.target {target}\n.address_size 64\n\n.visible .entry {entry}(\n{params}\n)\n{{\n\tret;\n}}\n")
    };
    let load = |text: String| ctx.load_module(Ptx::from_src(text)).map(|_| ());
    assert_error(
        load(ptx("7.8", "sm_61", "not_a_kernel", "\t.param .u64 p")),
        CUresult::CUDA_ERROR_NOT_FOUND,
        &["not_a_kernel", "no CPU-compiled twin"],
    );
    assert_error(
        load(ptx(
            "7.8",
            "sm_61",
            "fill",
            "\t.param .u64 a,\n\t.param .u32 b,\n\t.param .f32 c",
        )),
        CUresult::CUDA_ERROR_INVALID_IMAGE,
        &["fill", "(.u64, .u32, .f32)", "unsigned long long"],
    );
    assert_error(
        load(ptx(
            "7.8",
            "sm_90",
            "fill",
            "\t.param .u64 a,\n\t.param .u64 b,\n\t.param .f32 c",
        )),
        CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU,
        &["sm_90", "6.1"],
    );
    assert_error(
        load(ptx(
            "8.5",
            "sm_61",
            "fill",
            "\t.param .u64 a,\n\t.param .u64 b,\n\t.param .f32 c",
        )),
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
        &["8.5", "12.2"],
    );
    load(ptx(
        "7.8",
        "sm_61",
        "fill",
        "\t.param .u64 a,\n\t.param .u64 b,\n\t.param .f32 c",
    ))
    .unwrap();
}

/// Barriers run as fibers: a block's threads all reach __syncthreads before any goes on; threads waiting at
/// two different ones are a fault naming both lines.
#[test]
fn barriers_hold_and_divergent_barriers_are_reported() {
    if !emulated_child("barriers_hold_and_divergent_barriers_are_reported", &[]) {
        return;
    }
    let ctx = context();
    let text = ".version 7.8\n.target sm_61\n.address_size 64\n\n\
                .visible .entry emu_selfcheck_barrier_sum(\n\t.param .u64 p\n)\n{\n\tbar.sync 0;\n\tret;\n}\n\
                .visible .entry emu_selfcheck_divergent_barrier(\n\t.param .u64 p\n)\n{\n\tbar.sync 0;\n\tret;\n}\n";
    let m = ctx.load_module(Ptx::from_src(text)).unwrap();
    let stream = ctx.new_stream().unwrap();
    let out = stream.alloc_zeros::<f32>(1024).unwrap();
    let (p, _) = out.device_ptr(&stream);
    let cfg = LaunchConfig {
        grid_dim: (3, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    let sum = m.load_function("emu_selfcheck_barrier_sum").unwrap();
    let mut launch = stream.launch_builder(&sum);
    launch.arg(&p);
    // SAFETY: writes out[blockIdx.x] for 3 blocks; `out` holds 1024 floats.
    unsafe { launch.launch(cfg) }.unwrap();
    let got = stream.clone_dtoh(&out).unwrap();
    assert_eq!(
        &got[..3],
        &[523_776.0; 3],
        "0 + 1 + … + 1023 in every block"
    );
    let divergent = m.load_function("emu_selfcheck_divergent_barrier").unwrap();
    let mut launch = stream.launch_builder(&divergent);
    launch.arg(&p);
    // SAFETY: writes out[threadIdx.x] < 1024.
    unsafe { launch.launch(cfg) }.unwrap();
    assert_error(
        stream.synchronize(),
        CUresult::CUDA_ERROR_LAUNCH_FAILED,
        &[
            "emu_selfcheck_divergent_barrier",
            "different __syncthreads",
            "selfcheck_kernels.cu:",
        ],
    );
}

/// A driver function the emulator does not implement returns CUDA_ERROR_NOT_SUPPORTED naming itself; it
/// never crashes the process.
#[test]
fn functions_not_emulated_return_an_error() {
    if !emulated_child("functions_not_emulated_return_an_error", &[]) {
        return;
    }
    let _ctx = context();
    let mut uuid = std::mem::MaybeUninit::uninit();
    // SAFETY: a driver call with a valid out-pointer and device 0.
    let result = unsafe { sys::cuDeviceGetUuid_v2(uuid.as_mut_ptr(), 0) }.result();
    assert_error(
        result,
        CUresult::CUDA_ERROR_NOT_SUPPORTED,
        &["cuDeviceGetUuid_v2", "not emulated"],
    );
}
