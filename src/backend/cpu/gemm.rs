//! The GEMM of the CPU backend: twin of `kernels/gemm.cu` (launched by `cuda/gemm.rs`). f32 on an AVX-512 or
//! AVX2 CPU goes to our packed, multithreaded GEMM (`sgemm.rs`); f64, and f32 elsewhere, to matrixmultiply.
//! `Trans::T` swaps the row and column strides of the stored matrix: the decoder reads the encoder's kernel
//! this way, one buffer in two orientations.

#[cfg(target_arch = "x86_64")]
use super::sgemm;
use super::{gemm_threads, pool, CpuBackend};
use crate::backend::{Gemm, GemmArgs, Region, Trans};
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// `c = alpha·op(a)·op(b) + beta·c` of `Backend::gemm` on the stored matrices, on at most `threads`
    /// threads (the result does not depend on how many).
    fn gemm_slices(g: Gemm, a_in: &[T], b_in: &[T], c_out: &mut [T], threads: usize) {
        let Gemm { m, n, k, .. } = g;
        assert_eq!(a_in.len(), m * k, "gemm A size");
        assert_eq!(b_in.len(), k * n, "gemm B size");
        assert_eq!(c_out.len(), m * n, "gemm C size");
        let (rsa, csa) = match g.trans_a {
            Trans::N => (k as isize, 1), // A stored m×k
            Trans::T => (1, m as isize), // A stored k×m
        };
        let (rsb, csb) = match g.trans_b {
            Trans::N => (n as isize, 1), // B stored k×n
            Trans::T => (1, k as isize), // B stored n×k
        };
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for x in c_out.iter_mut() {
                *x = if g.beta == 0.0 {
                    T::zero()
                } else {
                    *x * T::from_f32(g.beta)
                };
            }
            return;
        }
        // f32 on an AVX-512 or AVX2 CPU: our packed, multithreaded GEMM (cpu/sgemm.rs); else
        // matrixmultiply.
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = our_gemm::<T>() {
            // SAFETY: T is f32 (`our_gemm` runs only for f32), so the casts only rename the type; the asserts
            // above make A, B and C exactly m·k, k·n and m·n elements, the strides describe those
            // row-major shapes, and C does not alias A or B (C is a mutable borrow).
            unsafe {
                sgemm::sgemm(
                    isa,
                    threads,
                    m,
                    k,
                    n,
                    g.alpha,
                    a_in.as_ptr() as *const f32,
                    rsa,
                    csa,
                    b_in.as_ptr() as *const f32,
                    rsb,
                    csb,
                    g.beta,
                    c_out.as_mut_ptr() as *mut f32,
                    n,
                )
            };
            return;
        }
        // SAFETY: the asserts above make A, B and C exactly m·k, k·n and m·n elements, and the strides
        // describe those row-major shapes; C does not alias A or B (C is a mutable borrow).
        unsafe {
            matrixmultiply_gemm(
                m,
                k,
                n,
                g.alpha,
                a_in,
                (rsa, csa),
                b_in,
                (rsb, csb),
                g.beta,
                c_out,
            )
        }
    }

    /// `Backend::gemm_pair` on at most `threads` threads; says whether the two ran side by side.
    pub(super) fn gemm_pair_on(
        &mut self,
        first: GemmArgs,
        second: GemmArgs,
        threads: usize,
    ) -> Result<bool> {
        let small =
            |(g, ..): &GemmArgs| (PAIR_MIN_MACS..=PAIR_MAX_MACS).contains(&(g.m * g.n * g.k));
        let (c1, c2) = (first.3, second.3);
        // Both outputs leave the arena for the call, so no input may live in either output's buffer.
        let reads_outputs = |(_, a, b, _): &GemmArgs| {
            [a.buf, b.buf]
                .iter()
                .any(|&buf| buf == c1.buf || buf == c2.buf)
        };
        let side_by_side = threads >= 2
            && pairs_side_by_side::<T>()
            && small(&first)
            && small(&second)
            && c1.buf != c2.buf
            && !reads_outputs(&first)
            && !reads_outputs(&second);
        if !side_by_side {
            self.gemm(first.0, first.1, first.2, first.3)?;
            self.gemm(second.0, second.1, second.2, second.3)?;
            return Ok(false);
        }
        check_gemm_sizes(first.0, first.1, first.2, first.3);
        check_gemm_sizes(second.0, second.1, second.2, second.3);
        let mut out1 = std::mem::take(&mut self.bufs[c1.buf.0]);
        let mut out2 = std::mem::take(&mut self.bufs[c2.buf.0]);
        {
            let bufs = &self.bufs;
            let outs = [
                pool::SharedMut::new(&mut out1[c1.offset..c1.offset + c1.len]),
                pool::SharedMut::new(&mut out2[c2.offset..c2.offset + c2.len]),
            ];
            let args = [first, second];
            pool::for_each(threads, 2, &|i| {
                let (g, a, b, c) = args[i];
                // SAFETY: job i, run once, is the only one to touch output i.
                let c_out = unsafe { outs[i].part(0..c.len) };
                Self::gemm_slices(g, Self::view(bufs, a), Self::view(bufs, b), c_out, 1);
            });
        }
        self.bufs[c1.buf.0] = out1;
        self.bufs[c2.buf.0] = out2;
        Ok(true)
    }

    /// C = alpha·op(A)·op(B) + beta·C, row-major. Twin of `gemm` in kernels/gemm.cu. Trans::T swaps the
    /// row and column strides of the stored matrix: the decoder reads the encoder's kernel this way.
    pub(super) fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        check_gemm_sizes(g, a, b, c);
        self.with_out(c, |bufs, c_out| {
            Self::gemm_slices(g, bufs.view(a), bufs.view(b), c_out, gemm_threads())
        });
        Ok(())
    }

    /// Two small products side by side, one per thread, each summed exactly as `gemm` sums it: split across
    /// two threads, a small product is far from twice as fast as on one, so a pair finishes sooner side by
    /// side than one after the other.
    pub(super) fn gemm_pair(&mut self, first: GemmArgs, second: GemmArgs) -> Result<()> {
        self.gemm_pair_on(first, second, gemm_threads())
            .map(|_side_by_side| ())
    }
}

/// The instruction set of our GEMM when a `CpuBackend<T>` runs it (f32 on a CPU with AVX2 or AVX-512);
/// None when matrixmultiply's runs.
#[cfg(target_arch = "x86_64")]
fn our_gemm<T: 'static>() -> Option<sgemm::Isa> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(sgemm::isa)
        .flatten()
}

/// Products a `gemm_pair` may run side by side, one per thread, in multiply-adds: from where waking a helper
/// costs less than half the pair, to the mnist workload's 256↔64 layer (its tied gradient, 256×64×512, with a
/// 256×256×64 product); larger ones run faster split across the threads, one after the other.
const PAIR_MIN_MACS: usize = 1 << 18;
const PAIR_MAX_MACS: usize = 1 << 24;

/// Whether `gemm_pair` runs side by side for `T`: with our GEMM, whose threads it controls (matrixmultiply
/// has threads of its own).
fn pairs_side_by_side<T: 'static>() -> bool {
    #[cfg(target_arch = "x86_64")]
    return our_gemm::<T>().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `c = alpha·op(a)·op(b) + beta·c` by matrixmultiply (strided, multithreaded): f64 always, and f32 where our
/// GEMM does not run. `T` is f32 or f64, the two `Real` types.
///
/// # Safety
/// `a` and `b` with their (row, column) strides must cover op(A) m×k and op(B) k×n; `c` holds m×n, row-major.
#[allow(clippy::too_many_arguments)]
unsafe fn matrixmultiply_gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[T],
    (rsa, csa): (isize, isize),
    b: &[T],
    (rsb, csb): (isize, isize),
    beta: f32,
    c: &mut [T],
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    let rsc = n as isize;
    use std::any::TypeId;
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32, so the casts only rename the type; the caller's contract covers the rest.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha,
                a as *const f32,
                rsa,
                csa,
                b as *const f32,
                rsb,
                csb,
                beta,
                c as *mut f32,
                rsc,
                1,
            )
        }
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        // SAFETY: T is f64, so the casts only rename the type; the caller's contract covers the rest.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                f64::from(alpha),
                a as *const f64,
                rsa,
                csa,
                b as *const f64,
                rsb,
                csb,
                f64::from(beta),
                c as *mut f64,
                rsc,
                1,
            )
        }
    } else {
        panic!(
            "the CPU backend computes in f32 or f64, not {}",
            std::any::type_name::<T>()
        )
    }
}

/// `a`, `b` and `c` hold exactly the m·k, k·n and m·n elements of `g`.
fn check_gemm_sizes(g: Gemm, a: Region, b: Region, c: Region) {
    let Gemm { m, n, k, .. } = g;
    assert_eq!(a.len, m * k, "gemm A size");
    assert_eq!(b.len, k * n, "gemm B size");
    assert_eq!(c.len, m * n, "gemm C size");
}

/// Which GEMM a `CpuBackend<T>` runs: ours with its instruction set, or matrixmultiply's.
pub(super) fn gemm_kernel<T: 'static>() -> String {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = our_gemm::<T>() {
        return format!("{} GEMM", isa.name());
    }
    "matrixmultiply GEMM".into()
}
