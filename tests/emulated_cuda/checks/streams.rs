//! Streams that punish a missing wait, and graphs that keep CUDA's capture rules.

use super::*;

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
