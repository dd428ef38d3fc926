//! Every CUDA kernel against its CPU twin (`CpuBackend<f32>`), on the same inputs.
//!
//! Without a usable GPU each GPU test prints `SKIPPED <test>: no usable GPU (...)` and passes, unless
//! `TIEDAE_REQUIRE_GPU=1`. The PTX tests at the end need no GPU, only the kernels built in (and `ptxas`).
//!
//! Every buffer is allocated with PAD NaNs on both sides of the region an op sees: a kernel that reads past
//! its region picks up NaN (and fails the comparison), one that writes past it overwrites a NaN (and fails
//! `take`). The regions therefore also start at a non-zero offset, which checks the offset arithmetic.
//!
//! Tolerances, and why:
//! - GEMM: both sides sum k products in f32 in different orders (tiles + FMA vs matrixmultiply's kernels);
//!   with inputs in [-1, 1] the error is ~√k·2⁻²⁴, far below the atol of 2e-6·(k+1). An indexing bug is O(1).
//! - bias_act: expf/tanhf are within 2 ulp of the CPU's libm: atol 1e-6, rtol 1e-5.
//! - act_backward, mse_backward's gradient, sgd_step, adam_step: the same float operations in the same order
//!   (no FMA contraction: the kernels use __fmul_rn/__fadd_rn), so they should agree to the bit; the
//!   tolerance of 1 ulp-ish (rtol 1e-6) only keeps a failure readable.
//! - mse loss: both sum float squares in f64 then round once; rtol 1e-6.
//! - col_sum: f32 sums in different orders over `rows` terms: atol 1e-6·rows.
//! - The constraint ops: diagonal_affine and div_by_sqrt do the same float operations as the CPU (bitwise
//!   equal, rtol 1e-7 keeps a failure readable); sum_squares, normalize_columns and center_columns sum in f64
//!   in another order and round once to f32, so they agree to an ulp or two: rtol 1e-6.

mod common;

use common::{assert_close, env_flag, gpu_backend, shuffle_cases};
use std::path::{Path, PathBuf};
use std::process::Command;
use tiedae::activation::Activation;
use tiedae::backend::cuda::{self, CudaBackend, GemmKernel};
use tiedae::backend::noise::threshold;
use tiedae::backend::shuffle::fill_order;
use tiedae::backend::{
    AdamConfig, Backend, CpuBackend, Donors, Gemm, HalfFormat, IdxRegion, NoiseParams, NoiseSource,
    Region, Trans,
};

const PAD: usize = 5;

/// `n` deterministic pseudo-random values in [lo, hi) (splitmix64).
fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// A new buffer holding `data` at offset PAD, with PAD NaNs on both sides; returns the inner region.
fn put<B: Backend<Scalar = f32>>(b: &mut B, data: &[f32]) -> Region {
    put_at(b, data, PAD)
}

/// Offset of a region that starts 16-byte aligned (buffers themselves are at least 256-byte aligned): the
/// GEMM's float4 paths run only on aligned operands, PAD = 5 keeps them off.
const ALIGNED: usize = 8;

/// `put` with `before` NaNs before the region (PAD after).
fn put_at<B: Backend<Scalar = f32>>(b: &mut B, data: &[f32], before: usize) -> Region {
    let total = before + data.len() + PAD;
    let id = b.alloc(total).unwrap();
    b.fill(Region::whole(id, total), f32::NAN).unwrap();
    let inner = Region::whole(id, total).sub(before, data.len());
    b.upload(inner, data).unwrap();
    inner
}

/// A new padded buffer of `len` elements, every one NaN (an output nobody may read first).
fn nans<B: Backend<Scalar = f32>>(b: &mut B, len: usize) -> Region {
    put(b, &vec![f32::NAN; len])
}

/// The contents of `inner` (made by `put`), after checking that nothing was written to its padding.
fn take<B: Backend<Scalar = f32>>(b: &mut B, inner: Region, what: &str) -> Vec<f32> {
    let whole = Region {
        buf: inner.buf,
        offset: 0,
        len: inner.offset + inner.len + PAD,
    };
    let mut all = vec![0.0f32; whole.len];
    b.download(whole, &mut all).unwrap();
    let (before, rest) = all.split_at(inner.offset);
    let (body, after) = rest.split_at(inner.len);
    for (side, pad) in [("before", before), ("after", after)] {
        if let Some(i) = pad.iter().position(|x| !x.is_nan()) {
            panic!(
                "{what}: the padding {side} the region was written: [{i}] = {}",
                pad[i]
            );
        }
    }
    body.to_vec()
}

fn cpu() -> CpuBackend<f32> {
    CpuBackend::<f32>::new()
}

// ---------------------------------------------------------------------------------------------------- GEMM

const GEMM_SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 51, 129),
    (129, 7, 51),
    (51, 1, 16),
    (1, 64, 65),
    (64, 64, 64),
    (65, 63, 17),
    (256, 784, 64),
    (784, 32, 256),
    (64, 32, 784),
    (5, 3, 0),
    (300, 260, 37),
    (129, 131, 8),
];

/// C after one GEMM on `be`, every operand `before` floats into its buffer. C starts as `c0` when
/// beta != 0; with beta == 0 it starts as NaN when `nan_c` (it must not be read) and as zeros otherwise.
fn gemm_on<B: Backend<Scalar = f32>>(
    be: &mut B,
    g: Gemm,
    (a, b, c0): (&[f32], &[f32], &[f32]),
    nan_c: bool,
    before: usize,
) -> Vec<f32> {
    let (ra, rb) = (put_at(be, a, before), put_at(be, b, before));
    let rc = match (g.beta == 0.0, nan_c) {
        (false, _) => put_at(be, c0, before),
        (true, true) => put_at(be, &vec![f32::NAN; c0.len()], before),
        (true, false) => put_at(be, &vec![0.0; c0.len()], before),
    };
    be.gemm(g, ra, rb, rc).unwrap();
    take(be, rc, "gemm C")
}

/// Every GEMM kernel of gemm.cu against the CPU (split-K forced, too), on misaligned operands (element by
/// element loads) and on aligned ones (gemm_large's float4 loads and stores); and the two tilings against
/// each other: they sum every element in the same order, so they must agree exactly (`==`, which also
/// equates the 0 and −0 that zero padding may produce).
fn check_gemm(gpu: &mut CudaBackend, g: Gemm, seed: u64) {
    let Gemm { m, n, k, .. } = g;
    let a = values(seed, m * k, -1.0, 1.0);
    let b = values(seed + 1, k * n, -1.0, 1.0);
    let c0 = values(seed + 2, m * n, -1.0, 1.0);
    let want = gemm_on(&mut cpu(), g, (&a, &b, &c0), false, PAD);
    let atol = 2e-6 * (k as f32 + 1.0) * g.alpha.abs().max(1.0) + 1e-6;
    for before in [PAD, ALIGNED] {
        let mut results = Vec::new();
        for kernel in [GemmKernel::Tile64, GemmKernel::Large, GemmKernel::SplitK] {
            gpu.set_gemm_kernel(kernel);
            let got = gemm_on(gpu, g, (&a, &b, &c0), true, before);
            let what = format!("gemm {kernel:?} {g:?} at offset {before}");
            assert_close(&what, &got, &want, atol, 1e-5);
            results.push(got);
        }
        gpu.set_gemm_kernel(GemmKernel::Auto);
        if let Some(i) = (0..results[0].len()).find(|&i| results[0][i] != results[1][i]) {
            panic!(
                "gemm {g:?} at offset {before}: the 64×64 and 128×128 tilings differ at {i}: {} vs {}",
                results[0][i], results[1][i]
            );
        }
    }
}

#[test]
fn gemm_matches_cpu_in_all_four_transpose_combinations() {
    let Some(mut gpu) = gpu_backend("gemm_matches_cpu_in_all_four_transpose_combinations") else {
        return;
    };
    let mut seed = 1;
    for &(m, n, k) in GEMM_SHAPES {
        for trans_a in [Trans::N, Trans::T] {
            for trans_b in [Trans::N, Trans::T] {
                for (alpha, beta) in [
                    (1.0, 0.0),
                    (1.0, 1.0),
                    (-0.75, 0.0),
                    (0.5, 1.0),
                    (1.5, -0.25),
                ] {
                    let g = Gemm {
                        trans_a,
                        trans_b,
                        m,
                        n,
                        k,
                        alpha,
                        beta,
                    };
                    check_gemm(&mut gpu, g, seed);
                    seed += 3;
                }
            }
        }
    }
}

/// The tied use of one kernel W (d_in × d_out): encoder X·W, decoder H·Wᵀ, and dW = dZ_decᵀ·H + Xᵀ·dZ_enc,
/// the second GEMM accumulating into the first with beta = 1, and as the training step computes it: one
/// product of depth 2·batch, [X; dZ_dec]ᵀ·[dZ_enc; H], each stacked pair in one buffer. Returns [X·W, H·Wᵀ,
/// dW, dW stacked].
fn tied_on<B: Backend<Scalar = f32>>(be: &mut B, dims: (usize, usize, usize)) -> Vec<Vec<f32>> {
    let (batch, d_in, d_out) = dims;
    let gemm = |trans_a, trans_b, m, n, k, beta| Gemm {
        trans_a,
        trans_b,
        m,
        n,
        k,
        alpha: 1.0,
        beta,
    };
    let (x_host, dz_dec_host) = (
        values(10, batch * d_in, -1.0, 1.0),
        values(12, batch * d_in, -1.0, 1.0),
    );
    let (h_host, dz_enc_host) = (
        values(13, batch * d_out, -1.0, 1.0),
        values(14, batch * d_out, -1.0, 1.0),
    );
    let x = put(be, &x_host);
    let w = put(be, &values(11, d_in * d_out, -0.5, 0.5));
    let dz_dec = put(be, &dz_dec_host);
    let h = put(be, &h_host);
    let dz_enc = put(be, &dz_enc_host);
    let (xw, hwt, dw) = (
        nans(be, batch * d_out),
        nans(be, batch * d_in),
        nans(be, d_in * d_out),
    );
    be.gemm(gemm(Trans::N, Trans::N, batch, d_out, d_in, 0.0), x, w, xw)
        .unwrap();
    be.gemm(gemm(Trans::N, Trans::T, batch, d_in, d_out, 0.0), h, w, hwt)
        .unwrap();
    be.gemm(
        gemm(Trans::T, Trans::N, d_in, d_out, batch, 0.0),
        dz_dec,
        h,
        dw,
    )
    .unwrap();
    be.gemm(
        gemm(Trans::T, Trans::N, d_in, d_out, batch, 1.0),
        x,
        dz_enc,
        dw,
    )
    .unwrap();
    let stack_in = put(be, &[x_host, dz_dec_host].concat());
    let stack_out = put(be, &[dz_enc_host, h_host].concat());
    let dw_stacked = nans(be, d_in * d_out);
    be.gemm(
        gemm(Trans::T, Trans::N, d_in, d_out, 2 * batch, 0.0),
        stack_in,
        stack_out,
        dw_stacked,
    )
    .unwrap();
    vec![
        take(be, xw, "X·W"),
        take(be, hwt, "H·Wᵀ"),
        take(be, dw, "dW"),
        take(be, dw_stacked, "dW stacked"),
    ]
}

#[test]
fn gemm_tied_kernel_both_orientations_accumulate() {
    let Some(mut gpu) = gpu_backend("gemm_tied_kernel_both_orientations_accumulate") else {
        return;
    };
    let dims = (33, 70, 9);
    let want = tied_on(&mut cpu(), dims);
    let got = tied_on(&mut gpu, dims);
    for (name, (g, w)) in ["X·W", "H·Wᵀ", "dW (both uses)", "dW (one stacked product)"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        assert_close(name, g, w, 2e-4, 1e-5);
    }
    // The stacked product is the same sum as the two (the CPU's, reference against reference).
    assert_close("dW stacked vs two products", &want[3], &want[2], 2e-4, 1e-5);
}

/// The forward pass's fused GEMM + bias + activation: on the GPU it equals `gemm` then `bias_act` bit for bit
/// (same rounding, see `gemm_epilogue` in gemm.cu), with either tiling; and it is close to the CPU's.
#[test]
fn gemm_bias_act_equals_gemm_then_bias_act() {
    let Some(mut gpu) = gpu_backend("gemm_bias_act_equals_gemm_then_bias_act") else {
        return;
    };
    let mut seed = 500;
    for &(m, n, k) in &[
        (1, 1, 1),
        (7, 51, 129),
        (256, 784, 64),
        (256, 64, 784),
        (300, 260, 37),
    ] {
        for trans_b in [Trans::N, Trans::T] {
            for act in Activation::ALL {
                let g = Gemm::new(Trans::N, trans_b, m, n, k);
                let a = values(seed, m * k, -1.0, 1.0);
                let b = values(seed + 1, k * n, -0.3, 0.3);
                let bias = values(seed + 2, n, -1.0, 1.0);
                seed += 3;
                let mut cpu = cpu();
                let (ca, cb, cbias, cc) = (
                    put(&mut cpu, &a),
                    put(&mut cpu, &b),
                    put(&mut cpu, &bias),
                    nans(&mut cpu, m * n),
                );
                cpu.gemm_bias_act(g, ca, cb, cc, cbias, act).unwrap();
                let want = take(&mut cpu, cc, "cpu gemm_bias_act");
                gpu.set_fuse_epilogue(true); // whatever TIEDAE_CUDA_FUSE says
                for (kernel, before) in [GemmKernel::Tile64, GemmKernel::Large, GemmKernel::SplitK]
                    .into_iter()
                    .flat_map(|k| [(k, PAD), (k, ALIGNED)])
                {
                    gpu.set_gemm_kernel(kernel);
                    let (ga, gb, gbias) = (
                        put_at(&mut gpu, &a, before),
                        put_at(&mut gpu, &b, before),
                        put_at(&mut gpu, &bias, before),
                    );
                    let nan_c = vec![f32::NAN; m * n];
                    let (fused_c, split_c) = (
                        put_at(&mut gpu, &nan_c, before),
                        put_at(&mut gpu, &nan_c, before),
                    );
                    gpu.gemm_bias_act(g, ga, gb, fused_c, gbias, act).unwrap();
                    gpu.gemm(g, ga, gb, split_c).unwrap();
                    gpu.bias_act(split_c, n, gbias, act).unwrap();
                    let fused = take(&mut gpu, fused_c, "gpu gemm_bias_act");
                    let split = take(&mut gpu, split_c, "gpu gemm + bias_act");
                    let what = format!(
                        "gemm_bias_act {kernel:?} {act} {m}×{n}×{k} {trans_b:?} at offset {before}"
                    );
                    if let Some(i) = (0..fused.len()).find(|&i| fused[i] != split[i]) {
                        panic!(
                            "{what}: fused {} vs gemm + bias_act {} at {i}",
                            fused[i], split[i]
                        );
                    }
                    let atol = 2e-6 * (k as f32 + 1.0) + 1e-6;
                    assert_close(&what, &fused, &want, atol, 1e-5);
                }
                gpu.set_gemm_kernel(GemmKernel::Auto);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------- element-wise

#[test]
fn bias_act_matches_cpu_for_every_activation() {
    let Some(mut gpu) = gpu_backend("bias_act_matches_cpu_for_every_activation") else {
        return;
    };
    for &(rows, cols) in &[(1, 1), (7, 13), (1000, 3), (3, 1000), (256, 784)] {
        for act in Activation::ALL {
            let z = values(rows as u64 * 31 + cols as u64, rows * cols, -4.0, 4.0);
            let bias = values(cols as u64, cols, -1.0, 1.0);
            let mut cpu = cpu();
            let (cz, cb) = (put(&mut cpu, &z), put(&mut cpu, &bias));
            cpu.bias_act(cz, cols, cb, act).unwrap();
            let want = take(&mut cpu, cz, "cpu bias_act");
            let (gz, gb) = (put(&mut gpu, &z), put(&mut gpu, &bias));
            gpu.bias_act(gz, cols, gb, act).unwrap();
            let got = take(&mut gpu, gz, "gpu bias_act");
            assert_close(
                &format!("bias_act {act} {rows}×{cols}"),
                &got,
                &want,
                1e-6,
                1e-5,
            );
        }
    }
}

#[test]
fn act_backward_matches_cpu_for_every_activation() {
    let Some(mut gpu) = gpu_backend("act_backward_matches_cpu_for_every_activation") else {
        return;
    };
    for &n in &[1usize, 7, 1000, 256 * 784, 1_100_000] {
        for act in Activation::ALL {
            // y is a real layer output f(z), so relu gives exact zeros (relu'(0) = 0).
            let y: Vec<f32> = values(n as u64, n, -3.0, 3.0)
                .into_iter()
                .map(|z| act.forward(z))
                .collect();
            let grad = values(n as u64 + 1, n, -1.0, 1.0);
            let mut cpu = cpu();
            let (cg, cy) = (put(&mut cpu, &grad), put(&mut cpu, &y));
            cpu.act_backward(cg, cy, act).unwrap();
            let want = take(&mut cpu, cg, "cpu act_backward");
            let (gg, gy) = (put(&mut gpu, &grad), put(&mut gpu, &y));
            gpu.act_backward(gg, gy, act).unwrap();
            let got = take(&mut gpu, gg, "gpu act_backward");
            assert_close(
                &format!("act_backward {act} n={n}"),
                &got,
                &want,
                1e-7,
                1e-6,
            );
        }
    }
}

#[test]
fn fill_sets_exactly_its_region() {
    let Some(mut gpu) = gpu_backend("fill_sets_exactly_its_region") else {
        return;
    };
    for &n in &[1usize, 255, 256, 257, 1_048_577, 1_048_576 + 3] {
        let r = nans(&mut gpu, n);
        gpu.fill(r, 2.5).unwrap();
        let got = take(&mut gpu, r, "fill");
        assert_close(&format!("fill n={n}"), &got, &vec![2.5; n], 0.0, 0.0);
    }
    // a sub-region of a buffer: its neighbours keep their values
    let id = gpu.alloc(10).unwrap();
    let whole = Region::whole(id, 10);
    gpu.upload(whole, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
        .unwrap();
    gpu.fill(whole.sub(3, 4), -1.0).unwrap();
    let mut out = vec![0.0; 10];
    gpu.download(whole, &mut out).unwrap();
    assert_eq!(out, [0.0, 1.0, 2.0, -1.0, -1.0, -1.0, -1.0, 7.0, 8.0, 9.0]);
}

// ---------------------------------------------------------------------------------------------------- loss

#[test]
fn mse_backward_matches_cpu_for_every_activation() {
    let Some(mut gpu) = gpu_backend("mse_backward_matches_cpu_for_every_activation") else {
        return;
    };
    // 300_000 > MSE_MAX_BLOCKS·MSE_THREADS = 262_144: some threads take two elements.
    for &n in &[1usize, 7, 1000, 256 * 784, 300_000] {
        for act in Activation::ALL {
            let pred: Vec<f32> = values(n as u64 + 5, n, -2.0, 2.0)
                .into_iter()
                .map(|z| act.forward(z))
                .collect();
            let target = values(n as u64 + 6, n, 0.0, 1.0);
            let count = if n % 2 == 0 { n / 2 } else { n }; // count is its own argument
            let mut cpu = cpu();
            let (cp, ct, cg) = (
                put(&mut cpu, &pred),
                put(&mut cpu, &target),
                put(&mut cpu, &vec![0.0; n]),
            );
            let cl = put(&mut cpu, &[0.0]);
            cpu.mse_backward(cp, ct, act, count, cg, cl).unwrap();
            let (want_grad, want_loss) = (
                take(&mut cpu, cg, "cpu grad"),
                take(&mut cpu, cl, "cpu loss"),
            );

            let (gp, gt, gg) = (
                put(&mut gpu, &pred),
                put(&mut gpu, &target),
                nans(&mut gpu, n),
            );
            let gl = put(&mut gpu, &[1.0e30]); // overwritten, never accumulated into
            gpu.mse_backward(gp, gt, act, count, gg, gl).unwrap();
            let (got_grad, got_loss) = (
                take(&mut gpu, gg, "gpu grad"),
                take(&mut gpu, gl, "gpu loss"),
            );
            assert_close(
                &format!("mse grad {act} n={n}"),
                &got_grad,
                &want_grad,
                1e-9,
                1e-6,
            );
            assert_close(
                &format!("mse loss {act} n={n}"),
                &got_loss,
                &want_loss,
                0.0,
                1e-6,
            );
            // a second call on the same buffers gives the same loss (overwritten, deterministic)
            gpu.mse_backward(gp, gt, act, count, gg, gl).unwrap();
            let again = take(&mut gpu, gl, "gpu loss again");
            assert_eq!(
                again[0].to_bits(),
                got_loss[0].to_bits(),
                "mse loss is not deterministic"
            );
        }
    }
}

#[test]
fn mse_backward_of_an_empty_batch_is_zero() {
    let Some(mut gpu) = gpu_backend("mse_backward_of_an_empty_batch_is_zero") else {
        return;
    };
    let (p, t, g) = (put(&mut gpu, &[]), put(&mut gpu, &[]), put(&mut gpu, &[]));
    let l = put(&mut gpu, &[f32::NAN]);
    gpu.mse_backward(p, t, Activation::Linear, 1, g, l).unwrap();
    assert_eq!(take(&mut gpu, l, "loss"), [0.0]);
}

// --------------------------------------------------------------------------------------------------- reduce

#[test]
fn col_sum_matches_cpu_for_odd_shapes() {
    let Some(mut gpu) = gpu_backend("col_sum_matches_cpu_for_odd_shapes") else {
        return;
    };
    for &(rows, cols) in &[
        (1, 1),
        (1000, 3),
        (3, 1000),
        (257, 129),
        (256, 784),
        (100_000, 2),
        (0, 5),
    ] {
        let m = values(rows as u64 * 7 + cols as u64, rows * cols, -1.0, 1.0);
        let mut cpu = cpu();
        let (cm, co) = (put(&mut cpu, &m), put(&mut cpu, &vec![0.0; cols]));
        cpu.col_sum(cm, cols, co).unwrap();
        let want = take(&mut cpu, co, "cpu col_sum");
        let (gm, go) = (put(&mut gpu, &m), nans(&mut gpu, cols));
        gpu.col_sum(gm, cols, go).unwrap();
        let got = take(&mut gpu, go, "gpu col_sum");
        assert_close(
            &format!("col_sum {rows}×{cols}"),
            &got,
            &want,
            1e-6 * rows.max(1) as f32,
            1e-5,
        );
    }
}

// ---------------------------------------------------------------------------------------------- optimizers

#[test]
fn sgd_step_matches_cpu_over_several_steps() {
    let Some(mut gpu) = gpu_backend("sgd_step_matches_cpu_over_several_steps") else {
        return;
    };
    for &n in &[1usize, 1000, 50_177, 1_100_000] {
        for momentum in [0.0f32, 0.9] {
            let w0 = values(n as u64, n, -1.0, 1.0);
            let mut cpu = cpu();
            let (cw, cv) = (put(&mut cpu, &w0), put(&mut cpu, &vec![0.0; n]));
            let (gw, gv) = (put(&mut gpu, &w0), put(&mut gpu, &vec![0.0; n]));
            for step in 0..4u64 {
                let g = values(n as u64 * 10 + step, n, -1.0, 1.0);
                let (cg, gg) = (put(&mut cpu, &g), put(&mut gpu, &g));
                cpu.sgd_step(cw, cg, cv, 0.01, momentum).unwrap();
                gpu.sgd_step(gw, gg, gv, 0.01, momentum).unwrap();
            }
            let what = format!("sgd n={n} momentum={momentum}");
            let (want_w, got_w) = (take(&mut cpu, cw, "cpu w"), take(&mut gpu, gw, "gpu w"));
            let (want_v, got_v) = (take(&mut cpu, cv, "cpu v"), take(&mut gpu, gv, "gpu v"));
            assert_close(&format!("{what} w"), &got_w, &want_w, 1e-7, 1e-6);
            assert_close(&format!("{what} v"), &got_v, &want_v, 1e-9, 1e-6);
        }
    }
}

#[test]
fn adam_step_matches_cpu_over_several_steps() {
    let Some(mut gpu) = gpu_backend("adam_step_matches_cpu_over_several_steps") else {
        return;
    };
    let (lr, beta1, beta2, epsilon) = (0.001f32, 0.9f32, 0.999f32, 1e-7f32);
    for &n in &[1usize, 1000, 50_177, 1_100_000] {
        let w0 = values(n as u64 + 3, n, -1.0, 1.0);
        let zeros = vec![0.0; n];
        let mut cpu = cpu();
        let (cw, cm, cv) = (
            put(&mut cpu, &w0),
            put(&mut cpu, &zeros),
            put(&mut cpu, &zeros),
        );
        let (gw, gm, gv) = (
            put(&mut gpu, &w0),
            put(&mut gpu, &zeros),
            put(&mut gpu, &zeros),
        );
        let s = AdamConfig {
            beta1,
            beta2,
            epsilon,
        };
        for t in 1..=5i32 {
            // alpha is read from device memory, as Network::optimizer_step passes it.
            let alpha = [lr * (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t))];
            let (ca, ga) = (put(&mut cpu, &alpha), put(&mut gpu, &alpha));
            let g = values(n as u64 * 3 + t as u64, n, -1.0, 1.0);
            let (cg, gg) = (put(&mut cpu, &g), put(&mut gpu, &g));
            cpu.adam_step(cw, cg, cm, cv, ca, s).unwrap();
            gpu.adam_step(gw, gg, gm, gv, ga, s).unwrap();
        }
        for (name, c, g) in [("w", cw, gw), ("m", cm, gm), ("v", cv, gv)] {
            let want = take(&mut cpu, c, "cpu adam");
            let got = take(&mut gpu, g, "gpu adam");
            assert_close(&format!("adam n={n} {name}"), &got, &want, 1e-9, 1e-6);
        }
    }
}

// ------------------------------------------------------------------------------------------------------ data

#[test]
fn gather_rows_matches_cpu() {
    let Some(mut gpu) = gpu_backend("gather_rows_matches_cpu") else {
        return;
    };
    for &(rows, cols, picks) in &[
        (1usize, 1usize, 1usize),
        (50, 7, 13),
        (1797, 64, 256),
        (300, 784, 256),
        (3, 1000, 5),
    ] {
        let data = values(rows as u64 + cols as u64, rows * cols, -5.0, 5.0);
        // indices in an index buffer at an offset, with repeats and both ends
        let mut idx: Vec<u32> = (0..picks).map(|i| ((i * 7919 + 3) % rows) as u32).collect();
        idx[0] = (rows - 1) as u32;
        let offset = 3;
        let mut all_idx = vec![0u32; offset];
        all_idx.extend(&idx);
        let idx_region = |id| IdxRegion {
            buf: id,
            offset,
            len: picks,
        };

        let mut cpu = cpu();
        let cd = put(&mut cpu, &data);
        let ci = cpu.alloc_indices(all_idx.len()).unwrap();
        cpu.upload_indices(ci, 0, &all_idx).unwrap();
        let co = put(&mut cpu, &vec![0.0; picks * cols]);
        cpu.gather_rows(cd, cols, idx_region(ci), co).unwrap();
        let want = take(&mut cpu, co, "cpu gather");

        let gd = put(&mut gpu, &data);
        let gi = gpu.alloc_indices(all_idx.len()).unwrap();
        gpu.upload_indices(gi, 0, &all_idx).unwrap();
        let go = nans(&mut gpu, picks * cols);
        gpu.gather_rows(gd, cols, idx_region(gi), go).unwrap();
        let got = take(&mut gpu, go, "gpu gather");
        assert_close(
            &format!("gather_rows {rows}×{cols} pick {picks}"),
            &got,
            &want,
            0.0,
            0.0,
        );
    }
}

#[test]
fn shuffle_order_matches_cpu() {
    let Some(mut gpu) = gpu_backend("shuffle_order_matches_cpu") else {
        return;
    };
    for (rows, key) in shuffle_cases() {
        let mut want = vec![0u32; rows];
        fill_order(&mut want, key);
        // The order is read back through gather_rows of a column holding each row's number (exact in f32
        // below 2^24). One index more than the order, left at u32::MAX, gathers NaN unless the kernel wrote
        // past the order.
        let idx = gpu.alloc_indices(rows + 1).unwrap();
        gpu.upload_indices(idx, 0, &vec![u32::MAX; rows + 1])
            .unwrap();
        gpu.shuffle_order(idx, rows, key).unwrap();
        let numbers: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        let data = put(&mut gpu, &numbers);
        let out = nans(&mut gpu, rows + 1);
        let all = IdxRegion {
            buf: idx,
            offset: 0,
            len: rows + 1,
        };
        gpu.gather_rows(data, 1, all, out).unwrap();
        let got = take(&mut gpu, out, "gathered order");
        let order: Vec<u32> = got[..rows].iter().map(|&v| v as u32).collect();
        assert_eq!(order, want, "{rows} rows");
        assert!(got[rows].is_nan(), "{rows} rows: wrote past the order");
    }
}

// ----------------------------------------------------------------------------------------------------- noise

/// corrupt_rows on `be`: `clean` (idx.len() rows of `cols`) with the noise of `params` under `key`, donors
/// from `donors` (f32 values, or the bits of `half` 16-bit floats); every region padded with NaN and at an
/// offset, the output checked for writes past it.
#[allow(clippy::too_many_arguments)]
fn corrupt_on<B: Backend<Scalar = f32>>(
    be: &mut B,
    clean: &[f32],
    cols: usize,
    idx: &[u32],
    donors: &[f32],
    half: Option<(HalfFormat, &[u16])>,
    fill: &[f32],
    key: [u32; 3],
    params: NoiseParams,
) -> Vec<f32> {
    let c = put(be, clean);
    let f = put(be, fill);
    let (donors, donor_rows) = match half {
        None => (Donors::F32(put(be, donors)), donors.len() / cols),
        Some((format, bits)) => {
            let id = be.alloc_half(bits.len()).unwrap();
            be.upload_half(id, bits).unwrap();
            (Donors::Half(id, format), bits.len() / cols)
        }
    };
    let offset = 2;
    let ib = be.alloc_indices(offset + idx.len()).unwrap();
    be.upload_indices(ib, offset, idx).unwrap();
    let kb = be.alloc_indices(offset + 3).unwrap();
    be.upload_indices(kb, offset, &key).unwrap();
    let out = nans(be, clean.len());
    let source = NoiseSource {
        donors,
        donor_rows,
        fill: f,
        key: IdxRegion {
            buf: kb,
            offset,
            len: 3,
        },
        params,
    };
    let batch = IdxRegion {
        buf: ib,
        offset,
        len: idx.len(),
    };
    be.corrupt_rows(c, cols, batch, source, out).unwrap();
    take(be, out, "corrupt_rows")
}

/// The GPU draws the same noise as the CPU, bit for bit (the generator uses only IEEE operations rounded
/// once, see src/backend/noise.rs): every noise at once and each alone, f32 and 16-bit donors, a batch of
/// more rows than a grid's y dimension, rows out of range.
#[test]
fn corrupt_rows_matches_cpu() {
    let Some(mut gpu) = gpu_backend("corrupt_rows_matches_cpu") else {
        return;
    };
    let all = NoiseParams {
        swap_below: threshold(0.15),
        mask_below: threshold(0.1),
        sigma: 0.5,
    };
    let gauss = NoiseParams {
        sigma: 1.0,
        ..Default::default()
    };
    let swap = NoiseParams {
        swap_below: threshold(0.5),
        ..Default::default()
    };
    let swap_all = NoiseParams {
        swap_below: threshold(1.0),
        ..Default::default()
    };
    for &(rows, cols, donor_rows, params) in &[
        (256usize, 784usize, 1797usize, all),
        (13, 300, 40, all),
        (1, 1, 2, swap_all),
        (70_000, 3, 100, gauss),
        (64, 64, 1797, swap),
    ] {
        let clean = values(rows as u64, rows * cols, -2.0, 2.0);
        let donors = values(cols as u64 + 7, donor_rows * cols, 5.0, 9.0);
        let fill = values(3, cols, 20.0, 21.0);
        let mut idx: Vec<u32> = (0..rows)
            .map(|i| ((i * 7919 + 3) % donor_rows) as u32)
            .collect();
        idx[0] = donor_rows as u32; // out of range: its donors are still inside the set
        let half_bits: Vec<u16> = donors
            .iter()
            .map(|&x| HalfFormat::Bf16.encode(x / 16.0).unwrap())
            .collect();
        for half in [None, Some((HalfFormat::Bf16, half_bits.as_slice()))] {
            for key in [[42, 0, 1], [0xdead_beef, 0x1234_5678, 17]] {
                let want = corrupt_on(
                    &mut cpu(),
                    &clean,
                    cols,
                    &idx,
                    &donors,
                    half,
                    &fill,
                    key,
                    params,
                );
                let got = corrupt_on(
                    &mut gpu, &clean, cols, &idx, &donors, half, &fill, key, params,
                );
                let what = format!(
                    "corrupt_rows {rows}×{cols} of {donor_rows}, {params:?}, half {}",
                    half.is_some()
                );
                let differ = (0..want.len())
                    .filter(|&i| got[i].to_bits() != want[i].to_bits())
                    .count();
                assert_eq!(differ, 0, "{what}: {differ} cells differ from the CPU's");
                assert!(
                    want.iter().zip(&clean).any(|(w, c)| w != c),
                    "{what}: no noise"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------- constraints

#[test]
fn diagonal_affine_matches_cpu() {
    let Some(mut gpu) = gpu_backend("diagonal_affine_matches_cpu") else {
        return;
    };
    for &n in &[1usize, 3, 64, 300, 1100] {
        for (scale, shift) in [(1.0f32, -1.0f32), (0.0, 0.0), (0.5, 2.0), (-1.5, 0.25)] {
            let mut m = values(n as u64 * 13, n * n, -2.0, 2.0);
            if scale == 0.0 {
                // scale 0 must not read the diagonal: a NaN there disappears.
                (0..n).for_each(|i| m[i * (n + 1)] = f32::NAN);
            }
            let mut cpu = cpu();
            let cm = put(&mut cpu, &m);
            cpu.diagonal_affine(cm, n, scale, shift).unwrap();
            let want = take(&mut cpu, cm, "cpu diagonal_affine");
            let gm = put(&mut gpu, &m);
            gpu.diagonal_affine(gm, n, scale, shift).unwrap();
            let got = take(&mut gpu, gm, "gpu diagonal_affine");
            assert!(want.iter().all(|x| !x.is_nan()), "cpu left a NaN");
            assert_close(
                &format!("diagonal_affine n={n} scale={scale} shift={shift}"),
                &got,
                &want,
                0.0,
                1e-7,
            );
        }
    }
}

#[test]
fn sum_squares_matches_cpu_and_is_deterministic() {
    let Some(mut gpu) = gpu_backend("sum_squares_matches_cpu_and_is_deterministic") else {
        return;
    };
    // 300_000 > MSE_MAX_BLOCKS·MSE_THREADS: some threads take two elements. 0: the sum of nothing.
    for &n in &[0usize, 1, 7, 1000, 256 * 784, 300_000] {
        let x = values(n as u64 + 21, n, -3.0, 3.0);
        let mut cpu = cpu();
        let (cx, cs) = (put(&mut cpu, &x), put(&mut cpu, &[1.0e30]));
        cpu.sum_squares(cx, cs).unwrap();
        let want = take(&mut cpu, cs, "cpu sum_squares");
        let (gx, gs) = (put(&mut gpu, &x), put(&mut gpu, &[1.0e30]));
        gpu.sum_squares(gx, gs).unwrap();
        let got = take(&mut gpu, gs, "gpu sum_squares");
        assert_close(&format!("sum_squares n={n}"), &got, &want, 0.0, 1e-6);
        let _ = take(&mut gpu, gx, "sum_squares input"); // x is read only: its padding is intact
        gpu.sum_squares(gx, gs).unwrap();
        let again = take(&mut gpu, gs, "gpu sum_squares again");
        assert_eq!(
            again[0].to_bits(),
            got[0].to_bits(),
            "sum_squares is not deterministic"
        );
    }
}

#[test]
fn div_by_sqrt_matches_cpu() {
    let Some(mut gpu) = gpu_backend("div_by_sqrt_matches_cpu") else {
        return;
    };
    for &n in &[1usize, 1000, 1_100_000] {
        // s > 0 divides by √s; s == 0 leaves x as it is.
        for s in [6.25f32, 0.37, 0.0] {
            let x = values(n as u64 + 3, n, -1.0, 1.0);
            let mut cpu = cpu();
            let (cx, cs) = (put(&mut cpu, &x), put(&mut cpu, &[s]));
            cpu.div_by_sqrt(cx, cs).unwrap();
            let want = take(&mut cpu, cx, "cpu div_by_sqrt");
            let (gx, gs) = (put(&mut gpu, &x), put(&mut gpu, &[s]));
            gpu.div_by_sqrt(gx, gs).unwrap();
            let got = take(&mut gpu, gx, "gpu div_by_sqrt");
            assert_close(&format!("div_by_sqrt n={n} s={s}"), &got, &want, 0.0, 1e-7);
            if s == 0.0 {
                assert_close("div_by_sqrt by 0 leaves x", &got, &x, 0.0, 0.0);
            }
            assert_eq!(
                take(&mut gpu, gs, "gpu s"),
                [s],
                "div_by_sqrt wrote its scale"
            );
        }
    }
}

#[test]
fn normalize_columns_matches_cpu() {
    let Some(mut gpu) = gpu_backend("normalize_columns_matches_cpu") else {
        return;
    };
    for &(rows, cols) in &[
        (1usize, 1usize),
        (64, 8),
        (784, 32),
        (3, 1000),
        (1000, 3),
        (257, 129),
        (5, 70),
    ] {
        let mut m = values(rows as u64 * 5 + cols as u64, rows * cols, -1.0, 1.0);
        if cols > 2 {
            // a zero column stays zero
            (0..rows).for_each(|r| m[r * cols + 2] = 0.0);
        }
        let mut cpu = cpu();
        let cm = put(&mut cpu, &m);
        cpu.normalize_columns(cm, cols).unwrap();
        let want = take(&mut cpu, cm, "cpu normalize_columns");
        let gm = put(&mut gpu, &m);
        gpu.normalize_columns(gm, cols).unwrap();
        let got = take(&mut gpu, gm, "gpu normalize_columns");
        assert_close(
            &format!("normalize_columns {rows}×{cols}"),
            &got,
            &want,
            1e-9,
            1e-6,
        );
    }
}

#[test]
fn center_columns_matches_cpu() {
    let Some(mut gpu) = gpu_backend("center_columns_matches_cpu") else {
        return;
    };
    for &(rows, cols) in &[
        (1usize, 1usize),
        (256, 8),
        (3, 1000),
        (1000, 3),
        (257, 129),
        (100_000, 2),
    ] {
        let m = values(rows as u64 * 11 + cols as u64, rows * cols, -2.0, 3.0);
        let mut cpu = cpu();
        let (cm, co) = (put(&mut cpu, &m), put(&mut cpu, &vec![0.0; rows * cols]));
        cpu.center_columns(cm, cols, co).unwrap();
        let want = take(&mut cpu, co, "cpu center_columns");
        let (gm, go) = (put(&mut gpu, &m), nans(&mut gpu, rows * cols));
        gpu.center_columns(gm, cols, go).unwrap();
        let got = take(&mut gpu, go, "gpu center_columns");
        // |m − mean| can cancel to ~0 while the mean's last ulp differs: atol of an ulp of |m| ≤ 3.
        assert_close(
            &format!("center_columns {rows}×{cols}"),
            &got,
            &want,
            5e-7,
            1e-6,
        );
        let _ = take(&mut gpu, gm, "center_columns input");
    }
}

// --------------------------------------------------------------------------------------------- bookkeeping

#[test]
fn allocated_bytes_and_name() {
    let Some(mut gpu) = gpu_backend("allocated_bytes_and_name") else {
        return;
    };
    let mut cpu = cpu();
    // The GPU backend's fixed scratch (the MSE partial sums) is there before any buffer.
    let fixed = gpu.allocated_bytes();
    assert!(
        fixed > 0 && fixed <= 64 * 1024,
        "fixed scratch {fixed} bytes"
    );
    for len in [0usize, 1, 1000, 12345] {
        gpu.alloc(len).unwrap();
        cpu.alloc(len).unwrap();
        gpu.alloc_indices(len + 1).unwrap();
        cpu.alloc_indices(len + 1).unwrap();
    }
    assert_eq!(gpu.allocated_bytes() - fixed, cpu.allocated_bytes());
    let name = gpu.name();
    assert!(
        name.starts_with("cuda:0 ") && name.contains("(sm_"),
        "name: {name}"
    );
    gpu.synchronize().unwrap();
}

// ------------------------------------------------------------------------------------------ no GPU needed

/// Without a GPU the backend must fail with one line, never panic. (With a GPU there is nothing to check.)
#[test]
fn new_without_a_usable_gpu_is_one_line_error() {
    match CudaBackend::new(0) {
        Ok(_) => eprintln!(
            "new_without_a_usable_gpu_is_one_line_error: a GPU works here; nothing to check"
        ),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("CudaBackend::new(0): {msg}");
            assert!(
                !msg.is_empty() && !msg.contains('\n'),
                "not one line: {msg:?}"
            );
        }
    }
    // An ordinal no machine has fails the same way.
    let msg = CudaBackend::new(1_000_000).unwrap_err().to_string();
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    // list_devices never panics either.
    let _ = cuda::list_devices();
}

/// A CUDA tool (`ptxas`, `nvcc`) on PATH, else beside `$NVCC`, else under `$CUDA_PATH`, `$CUDA_HOME` or
/// /usr/local/cuda.
fn find_cuda_tool(tool: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool));
    let mut beside_nvcc = Vec::new();
    if let Some(nvcc) = std::env::var_os("NVCC") {
        if let Some(dir) = Path::new(&nvcc).parent() {
            beside_nvcc.push(dir.join(tool));
        }
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            beside_nvcc.push(Path::new(&root).join("bin").join(tool));
        }
    }
    beside_nvcc.push(Path::new("/usr/local/cuda/bin").join(tool));
    on_path.chain(beside_nvcc).find(|p| p.is_file())
}

/// Skips (or, with TIEDAE_REQUIRE_KERNELS=1, fails) when the kernels are not built in.
fn kernels_or_skip(test: &str) -> bool {
    if cuda::is_built_with_kernels() && !cuda::ptx_modules().is_empty() {
        return true;
    }
    assert!(
        !env_flag("TIEDAE_REQUIRE_KERNELS"),
        "{test}: TIEDAE_REQUIRE_KERNELS=1 but this build has no GPU kernels (nvcc missing at build time?)"
    );
    common::skipped(&format!("{test}: built without GPU kernels"));
    false
}

/// Every `.entry` of a PTX text: (name, each parameter's declaration as the kernel table in
/// src/backend/cuda/launch.rs spells it: the type, then `[N]` for an array, the name left out).
fn ptx_entries(ptx: &str) -> Vec<(String, Vec<String>)> {
    let mut entries = Vec::new();
    let mut rest = ptx;
    while let Some(at) = rest.find(".entry ") {
        let after = &rest[at + ".entry ".len()..];
        let open = after.find('(').expect("'(' after .entry");
        let close = after.find(')').expect("')' closing an .entry's parameters");
        let params = after[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                let decl = p
                    .strip_prefix(".param")
                    .unwrap_or_else(|| panic!("not a .param: {p}"))
                    .trim();
                let (ty, name) = decl
                    .rsplit_once(char::is_whitespace)
                    .unwrap_or_else(|| panic!("no name in .param {decl}"));
                let array = name.find('[').map_or("", |i| &name[i..]);
                format!("{}{array}", ty.trim())
            })
            .collect();
        entries.push((after[..open].trim().to_string(), params));
        rest = &after[close..];
    }
    entries
}

#[test]
fn ptx_entries_reads_names_and_parameter_types() {
    let ptx = ".visible .entry f(\n\t.param .u64 f_param_0,\n\t.param .u32 f_param_1\n)\n.maxntid 256\n{}\n\
               .visible .entry g(\n\t.param .align 4 .b8 g_param_0[12]\n)\n{}";
    assert_eq!(
        ptx_entries(ptx),
        vec![
            (
                "f".to_string(),
                vec![".u64".to_string(), ".u32".to_string()]
            ),
            ("g".to_string(), vec![".align 4 .b8[12]".to_string()]),
        ]
    );
}

/// The kernel table in src/backend/cuda/launch.rs against the PTX nvcc wrote: every entry the backend
/// launches is in its module, with the parameters the table (and so every launch, which the compiler holds to
/// it) passes, in count, order and type; and the PTX has no entry the table lacks. A launch with one argument
/// too few, or a u64 where the kernel takes an int, would shift every later argument on a GPU, unnoticed.
#[test]
fn kernel_parameters_match_the_ptx() {
    if !kernels_or_skip("kernel_parameters_match_the_ptx") {
        return;
    }
    let in_ptx: Vec<(String, String, Vec<String>)> = cuda::ptx_modules()
        .iter()
        .flat_map(|(module, ptx)| {
            ptx_entries(ptx)
                .into_iter()
                .map(|(entry, params)| (module.to_string(), entry, params))
        })
        .collect();
    let table: Vec<(String, String, Vec<String>)> = cuda::kernel_signatures()
        .into_iter()
        .map(|(module, entry, params)| {
            let params = params.into_iter().map(String::from).collect();
            (module.to_string(), entry.to_string(), params)
        })
        .collect();
    assert!(table.len() >= 19, "{} kernels in the table", table.len());
    for (module, entry, params) in &table {
        let found = in_ptx.iter().find(|(_, e, _)| e == entry);
        let Some((ptx_module, _, ptx_params)) = found else {
            panic!("{entry}: in the kernel table but no module's PTX has it");
        };
        assert_eq!(ptx_module, module, "{entry}: the module");
        assert_eq!(
            ptx_params, params,
            "{entry}: the PTX's parameters (left) against the kernel table's (right)"
        );
    }
    assert_eq!(
        in_ptx.len(),
        table.len(),
        "entries in the PTX but not in the kernel table: {:?}",
        in_ptx
            .iter()
            .filter(|(_, e, _)| !table.iter().any(|(_, t, _)| t == e))
            .map(|(_, e, _)| e)
            .collect::<Vec<_>>()
    );
    assert!(
        cuda::ptx_arch().starts_with("compute_"),
        "ptx arch {}",
        cuda::ptx_arch()
    );
    assert_ne!(cuda::nvcc_version(), "none");
}

#[test]
fn ptx_assembles_for_sm61_and_sm90() {
    let test = "ptx_assembles_for_sm61_and_sm90";
    if !kernels_or_skip(test) {
        return;
    }
    let Some(ptxas) = find_cuda_tool("ptxas") else {
        assert!(
            !env_flag("TIEDAE_REQUIRE_KERNELS"),
            "{test}: TIEDAE_REQUIRE_KERNELS=1 but ptxas is not on PATH nor beside nvcc"
        );
        common::skipped(&format!("{test}: no ptxas on PATH nor beside nvcc"));
        return;
    };
    let dir = std::env::temp_dir().join(format!("tiedae-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, ptx) in cuda::ptx_modules() {
        let file = dir.join(format!("{name}.ptx"));
        std::fs::write(&file, ptx).unwrap();
        for arch in ["sm_61", "sm_90"] {
            let out = Command::new(&ptxas)
                .arg(format!("-arch={arch}"))
                .arg("-v")
                .arg("-o")
                .arg(dir.join(format!("{name}.{arch}.cubin")))
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "ptxas -arch={arch} failed on kernels/{name}.cu's PTX ({}):\n{log}",
                out.status
            );
            for line in log
                .lines()
                .filter(|l| l.contains("Compiling entry") || l.contains("Used"))
            {
                eprintln!("{name} {arch}: {}", line.trim());
            }
            // The GEMM's register tile must stay in registers.
            if *name == "gemm" {
                assert!(
                    log.contains("0 bytes spill stores")
                        && !log
                            .lines()
                            .any(|l| l.contains("spill stores")
                                && !l.contains(" 0 bytes spill stores")),
                    "gemm spills registers on {arch}:\n{log}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
