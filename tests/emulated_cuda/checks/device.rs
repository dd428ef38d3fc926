//! The emulated device from environment variables: what `info` shows, what `check_device` refuses, where
//! `--data-on auto` puts the data, which GEMM plan the SM count picks.

use super::*;

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
    // Refused up front by the memory estimate (src/memory.rs) against the device's free memory, before any
    // allocation could fail.
    assert!(
        stderr.contains("of GPU memory")
            && stderr.contains("but 1.0 MB is free")
            && stderr.contains("--layers")
            && stderr.trim().lines().count() == 1,
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
