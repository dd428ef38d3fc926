//! Element-wise f32 loops the compiler can vectorize, compiled for the widest vectors the CPU has: tanh
//! without a libm call per element, Adam, and the MSE gradient (written once, generic, for every element type).
//!
//! `tanh` follows Cephes's `tanhf`: an odd polynomial for |x| < 0.625, `1 − 2/(e^{2|x|} + 1)` above, with
//! `e^y` from Cephes's `expf` (range reduction by ln 2, degree-6 polynomial, the exponent put in with bit
//! operations). Both branches are computed and one is selected, so a loop over a slice has no branch and no
//! call and becomes SIMD code. Relative error ≤ 3·10⁻⁷ (a few ulp, checked below against f64), the accuracy
//! class of CUDA's `tanhf` in the GPU twin. Plain multiplies and adds (no FMA): the same bits on every CPU.

use crate::activation::Activation;
use crate::backend::Real;

/// Defines `pub fn $name` that runs `$generic` compiled for AVX-512 or AVX2 when [`super::isa::has`] allows
/// them (checked at each call: a cached value), else as compiled for the baseline. The loops are written once, in
/// `$generic` (`#[inline(always)]`), and the compiler vectorizes them for each width.
macro_rules! widest_vectors {
    ($(#[$doc:meta])* $name:ident => $generic:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if super::isa::has(super::isa::Isa::Avx512) {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if super::isa::has(super::isa::Isa::Avx2) {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// tanh(x) for every finite f32; ±1 beyond |x| ≈ 9, NaN stays NaN.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    // |x| < 0.625: x + x³·P(x²).
    let z = x * x;
    let p = ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1)
        * z
        - 3.333_328e-1)
        * z;
    let small = x + x * p;
    // |x| ≥ 0.625: 1 − 2/(e^{2|x|} + 1), with e^{2|x|} ≤ e^{40} (tanh is 1 in f32 long before).
    let y = (2.0 * ax).min(40.0);
    let e = exp_reduced(y);
    let large = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    // NaN fails both comparisons and takes the polynomial branch, which keeps it NaN.
    if ax >= 0.625 {
        large
    } else {
        small
    }
}

/// e^y for 0 ≤ y ≤ 88 (Cephes `expf`: y = n·ln2 + r, |r| ≤ ln2/2).
#[inline(always)]
fn exp_reduced(y: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // Round to nearest without a call: adding 1.5·2²³ leaves the integer part in the mantissa.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = y * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = (y - n * C1) - n * C2;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5e-1)
        * r2
        + r
        + 1.0;
    // 2ⁿ from its bits: n (0 ≤ n ≤ 58 here) is the low mantissa bits of `shifted`. Integer operations only
    // (a float-to-int cast would be scalarized for its saturation rules).
    let n_int = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    p * scale
}

widest_vectors! {
    /// z is (rows, cols), bias is (cols): `z = tanh(z + bias)` in place.
    bias_tanh => bias_tanh_generic(z: &mut [f32], cols: usize, bias: &[f32])
}

#[inline(always)]
fn bias_tanh_generic(z: &mut [f32], cols: usize, bias: &[f32]) {
    for row in z.chunks_exact_mut(cols) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x = tanh(*x + b);
        }
    }
}

widest_vectors! {
    /// Keras's Adam over flat f32 buffers, in `CpuBackend::adam_step`'s exact operation order (so the same
    /// bits as its generic loop).
    adam => adam_generic(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], alpha: f32, s: super::AdamConfig)
}

#[inline(always)]
fn adam_generic(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    alpha: f32,
    s: super::AdamConfig,
) {
    let one_minus_b1 = 1.0 - s.beta1;
    let one_minus_b2 = 1.0 - s.beta2;
    let eps = s.epsilon;
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m).zip(v) {
        *m += (g - *m) * one_minus_b1;
        *v += (g * g - *v) * one_minus_b2;
        *w -= (*m * alpha) / (v.sqrt() + eps);
    }
}

widest_vectors! {
    /// `z = f(z + bias)` in f32 (tanh: [`bias_tanh`]): see [`bias_act_generic`].
    bias_act => bias_act_generic(z: &mut [f32], cols: usize, bias: &[f32], act: Activation)
}

/// z is (rows, cols), bias is (cols): `z = f(z + bias)` in place with [`Activation::forward`]: one loop per
/// activation, so none branches on it per element.
#[inline(always)]
pub fn bias_act_generic<T: Real>(z: &mut [T], cols: usize, bias: &[T], act: Activation) {
    #[inline(always)]
    fn with<T: Real>(z: &mut [T], cols: usize, bias: &[T], f: impl Fn(T) -> T) {
        for row in z.chunks_exact_mut(cols) {
            for (x, &b) in row.iter_mut().zip(bias) {
                *x = f(*x + b);
            }
        }
    }
    match act {
        Activation::Linear => with(z, cols, bias, |x| Activation::Linear.forward(x)),
        Activation::Relu => with(z, cols, bias, |x| Activation::Relu.forward(x)),
        Activation::Tanh => with(z, cols, bias, |x| Activation::Tanh.forward(x)),
        Activation::Sigmoid => with(z, cols, bias, |x| Activation::Sigmoid.forward(x)),
    }
}

widest_vectors! {
    /// `grad *= f'(y)` in f32: see [`act_backward_generic`].
    act_backward => act_backward_generic(grad: &mut [f32], y: &[f32], act: Activation)
}

/// grad and y are (n): `grad *= f'(y)` with [`Activation::grad_from_output`], one loop per activation.
#[inline(always)]
pub fn act_backward_generic<T: Real>(grad: &mut [T], y: &[T], act: Activation) {
    #[inline(always)]
    fn with<T: Real>(grad: &mut [T], y: &[T], f: impl Fn(T) -> T) {
        for (g, &y) in grad.iter_mut().zip(y) {
            *g *= f(y);
        }
    }
    match act {
        Activation::Linear => with(grad, y, |y| Activation::Linear.grad_from_output(y)),
        Activation::Relu => with(grad, y, |y| Activation::Relu.grad_from_output(y)),
        Activation::Tanh => with(grad, y, |y| Activation::Tanh.grad_from_output(y)),
        Activation::Sigmoid => with(grad, y, |y| Activation::Sigmoid.grad_from_output(y)),
    }
}

widest_vectors! {
    /// Column sums of f32: see [`col_sum_generic`].
    col_sum => col_sum_generic(m: &[f32], cols: usize, first: usize, out: &mut [f32])
}

/// m is (rows, cols): `out[j] = Σ_r m[r, first + j]` for the columns first..first + out.len(), each summed
/// over the rows in row order (so the same bits as one running sum per column, from zero). Blocks of 64
/// columns are summed in registers (four zmm, or eight ymm), with one store per block instead of one per row.
#[inline(always)]
pub fn col_sum_generic<T: Real>(m: &[T], cols: usize, first: usize, out: &mut [T]) {
    const BLOCK: usize = 64;
    assert!(first + out.len() <= cols, "col_sum columns out of range");
    let rows = m.len().checked_div(cols).unwrap_or(0);
    for (b, out) in out.chunks_mut(BLOCK).enumerate() {
        let start = first + b * BLOCK;
        let mut acc = [T::zero(); BLOCK];
        if out.len() == BLOCK {
            for r in 0..rows {
                let row = &m[r * cols + start..][..BLOCK];
                for l in 0..BLOCK {
                    acc[l] += row[l];
                }
            }
        } else {
            for r in 0..rows {
                let row = &m[r * cols + start..][..out.len()];
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
        }
        out.copy_from_slice(&acc[..out.len()]);
    }
}

widest_vectors! {
    /// One range of the MSE gradient in f32: see [`mse_grad_generic`].
    mse_grad => mse_grad_generic(grad: &mut [f32], pred: &[f32], target: &[f32], scale: f32, act: Activation) -> f64
}

/// One range of the MSE gradient: `grad = scale·(pred − target)·act′(pred)` (act′ from the output:
/// `Activation::grad_from_output`), returning Σ(pred − target)² in f64 from eight running sums (element i into
/// sum i mod 8; eight independent chains vectorize, one would wait on every add). `CpuBackend::mse_backward`
/// runs it for every element type, through [`mse_grad`] for f32.
#[inline(always)]
pub fn mse_grad_generic<T: Real>(
    grad: &mut [T],
    pred: &[T],
    target: &[T],
    scale: T,
    act: Activation,
) -> f64 {
    // One loop per activation, each with its derivative inlined: no branch on the activation per element.
    match act {
        Activation::Linear => mse_grad_with(grad, pred, target, scale, |y| {
            Activation::Linear.grad_from_output(y)
        }),
        Activation::Relu => mse_grad_with(grad, pred, target, scale, |y| {
            Activation::Relu.grad_from_output(y)
        }),
        Activation::Tanh => mse_grad_with(grad, pred, target, scale, |y| {
            Activation::Tanh.grad_from_output(y)
        }),
        Activation::Sigmoid => mse_grad_with(grad, pred, target, scale, |y| {
            Activation::Sigmoid.grad_from_output(y)
        }),
    }
}

#[inline(always)]
fn mse_grad_with<T: Real>(
    grad: &mut [T],
    pred: &[T],
    target: &[T],
    scale: T,
    derivative: impl Fn(T) -> T,
) -> f64 {
    let mut sums = [0.0f64; 8];
    let body = |g: &mut T, p: T, t: T, sum: &mut f64| {
        let diff = p - t;
        *sum += (diff * diff).to_f64();
        *g = scale * diff * derivative(p);
    };
    let mut g8 = grad.chunks_exact_mut(8);
    let (mut p8, mut t8) = (pred.chunks_exact(8), target.chunks_exact(8));
    for ((g, p), t) in (&mut g8).zip(&mut p8).zip(&mut t8) {
        for l in 0..8 {
            body(&mut g[l], p[l], t[l], &mut sums[l]);
        }
    }
    for (l, ((g, &p), &t)) in g8
        .into_remainder()
        .iter_mut()
        .zip(p8.remainder())
        .zip(t8.remainder())
        .enumerate()
    {
        body(g, p, t, &mut sums[l]);
    }
    sums.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x <= 12.0 {
            let want = (x as f64).tanh();
            let got = tanh(x) as f64;
            let rel = (got - want).abs() / want.abs().max(1e-30);
            worst = worst.max(rel);
            x += 1.0e-4;
        }
        assert!(worst <= 3.0e-7, "worst relative error {worst:e}");
        for x in [
            0.0f32, -0.0, 1e-30, -1e-30, 1e-8, 0.625, -0.625, 20.0, -20.0, 1e30, -1e30,
        ] {
            let want = (x as f64).tanh() as f32;
            assert!(
                (tanh(x) - want).abs() <= 2.0 * f32::EPSILON * want.abs().max(f32::MIN_POSITIVE),
                "tanh({x}) = {} vs {want}",
                tanh(x)
            );
        }
        assert!(tanh(f32::NAN).is_nan());
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
    }

    #[test]
    fn mse_grad_matches_the_scalar_form_bit_for_bit() {
        let len = 1003; // 125 groups of eight and a remainder of three
        let pred: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
        let target: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 0.5).collect();
        let scale = 2.0 / len as f32;
        for act in [
            Activation::Linear,
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
        ] {
            let mut grad = vec![f32::NAN; len];
            let sum = mse_grad(&mut grad, &pred, &target, scale, act);
            let mut sums = [0.0f64; 8];
            for i in 0..len {
                let diff = pred[i] - target[i];
                sums[i % 8] += (diff * diff) as f64;
                let want = scale * diff * act.grad_from_output(pred[i]);
                assert_eq!(grad[i].to_bits(), want.to_bits(), "{act:?} element {i}");
            }
            assert_eq!(sum.to_bits(), sums.iter().sum::<f64>().to_bits(), "{act:?}");
        }
    }

    #[test]
    fn bias_tanh_matches_the_scalar_form() {
        let cols = 7;
        let bias: Vec<f32> = (0..cols).map(|j| j as f32 * 0.3 - 1.0).collect();
        let z0: Vec<f32> = (0..cols * 9)
            .map(|i| (i as f32 * 0.37).sin() * 3.0)
            .collect();
        let mut z = z0.clone();
        bias_tanh(&mut z, cols, &bias);
        for (i, (&got, &x)) in z.iter().zip(&z0).enumerate() {
            assert_eq!(got, tanh(x + bias[i % cols]));
        }
    }
    /// The loops compiled for the widest vectors give the scalar forms' bits, with 0, a remainder and
    /// several blocks of columns (col_sum: each column summed over its rows in row order, from zero).
    #[test]
    fn bias_act_act_backward_and_col_sum_match_the_scalar_forms_bit_for_bit() {
        for cols in [1, 7, 64, 130] {
            let rows = 9;
            let bias: Vec<f32> = (0..cols).map(|j| j as f32 * 0.03 - 1.0).collect();
            let z0: Vec<f32> = (0..cols * rows)
                .map(|i| (i as f32 * 0.37).sin() * 3.0)
                .collect();
            for act in Activation::ALL {
                let mut z = z0.clone();
                bias_act(&mut z, cols, &bias, act);
                let mut grad = z0.clone();
                act_backward(&mut grad, &z, act);
                for i in 0..z.len() {
                    let want = act.forward(z0[i] + bias[i % cols]);
                    assert_eq!(z[i].to_bits(), want.to_bits(), "bias_act {act:?} {i}");
                    let want = z0[i] * act.grad_from_output(z[i]);
                    assert_eq!(
                        grad[i].to_bits(),
                        want.to_bits(),
                        "act_backward {act:?} {i}"
                    );
                }
            }
            for first in [0, cols / 2] {
                let mut out = vec![f32::NAN; cols - first];
                col_sum(&z0, cols, first, &mut out);
                for (j, &got) in out.iter().enumerate() {
                    let want = (0..rows).fold(0.0f32, |s, r| s + z0[r * cols + first + j]);
                    assert_eq!(got.to_bits(), want.to_bits(), "col_sum {cols} {first} {j}");
                }
            }
        }
    }
}
