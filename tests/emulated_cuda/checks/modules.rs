//! PTX the twins or the device cannot run, barriers as fibers, functions not emulated.

use super::*;

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
