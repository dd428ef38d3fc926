//! A launch's checks: its shape, its pointer arguments, fresh and freed memory, AddressSanitizer in a kernel.

use super::*;

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
