//! The CPU backend: the reference twin of every kernel in `kernels/*.cu`, function for function.
//! Generic over the scalar so that gradient checks can run the very same step in f64.
//!
//! Buffers are plain `Vec`s. An op takes its output buffer out of the arena for the duration of the call
//! (`std::mem::take`, no allocation), which lets it read the other buffers at the same time; the trait's
//! rule that outputs never overlap inputs makes this sound.

use super::{AdamStep, Backend, BufId, Gemm, IdxId, IdxRegion, Real, Region, Trans};
use crate::activation::Activation;
use crate::error::Result;

#[derive(Debug, Default)]
pub struct CpuBackend<T: Real = f32> {
    bufs: Vec<Vec<T>>,
    indices: Vec<Vec<u32>>,
    bytes: usize,
}

impl<T: Real> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend {
            bufs: Vec::new(),
            indices: Vec::new(),
            bytes: 0,
        }
    }

    fn view(bufs: &[Vec<T>], r: Region) -> &[T] {
        &bufs[r.buf.0][r.offset..r.offset + r.len]
    }

    /// Runs `f` with `out` as a mutable slice and every other buffer readable.
    fn with_out<R>(&mut self, out: Region, f: impl FnOnce(&[Vec<T>], &mut [T]) -> R) -> R {
        let mut taken = std::mem::take(&mut self.bufs[out.buf.0]);
        let result = f(&self.bufs, &mut taken[out.offset..out.offset + out.len]);
        self.bufs[out.buf.0] = taken;
        result
    }
}

/// Number of threads the CPU GEMM uses (matrixmultiply reads `MATMUL_NUM_THREADS`; we default it to every
/// core at start-up in `main`).
pub fn gemm_threads() -> usize {
    std::env::var("MATMUL_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

impl<T: Real> Backend for CpuBackend<T> {
    type Scalar = T;

    fn name(&self) -> String {
        format!(
            "cpu ({} GEMM thread{}, {})",
            gemm_threads(),
            if gemm_threads() == 1 { "" } else { "s" },
            std::any::type_name::<T>()
        )
    }

    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.bufs.push(vec![T::zero(); len]);
        self.bytes += len * std::mem::size_of::<T>();
        Ok(BufId(self.bufs.len() - 1))
    }

    fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        self.indices.push(vec![0; len]);
        self.bytes += len * std::mem::size_of::<u32>();
        Ok(IdxId(self.indices.len() - 1))
    }

    fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    fn upload(&mut self, dst: Region, src: &[T]) -> Result<()> {
        assert_eq!(src.len(), dst.len, "upload length");
        self.bufs[dst.buf.0][dst.offset..dst.offset + dst.len].copy_from_slice(src);
        Ok(())
    }

    fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()> {
        self.indices[dst.0][offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, src: Region, dst: &mut [T]) -> Result<()> {
        assert_eq!(src.len, dst.len(), "download length");
        dst.copy_from_slice(Self::view(&self.bufs, src));
        Ok(())
    }

    fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        self.bufs[dst.buf.0][dst.offset..dst.offset + dst.len].fill(T::from_f32(value));
        Ok(())
    }

    // data is (rows, cols), out is (idx.len, cols). Twin of `gather_rows` in kernels/data.cu.
    fn gather_rows(
        &mut self,
        data: Region,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        assert_eq!(out.len, idx.len * cols, "gather_rows output size");
        let rows = &self.indices[idx.buf.0][idx.offset..idx.offset + idx.len];
        let mut taken = std::mem::take(&mut self.bufs[out.buf.0]);
        let src = Self::view(&self.bufs, data);
        for (dst_row, &r) in taken[out.offset..out.offset + out.len]
            .chunks_exact_mut(cols)
            .zip(rows)
        {
            let start = r as usize * cols;
            dst_row.copy_from_slice(&src[start..start + cols]);
        }
        self.bufs[out.buf.0] = taken;
        Ok(())
    }

    // C = alpha·op(A)·op(B) + beta·C, row-major. Twin of `gemm` in kernels/gemm.cu. Trans::T swaps the
    // row and column strides of the stored matrix: the decoder reads the encoder's kernel this way.
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        let Gemm { m, n, k, .. } = g;
        assert_eq!(a.len, m * k, "gemm A size");
        assert_eq!(b.len, k * n, "gemm B size");
        assert_eq!(c.len, m * n, "gemm C size");
        let (rsa, csa) = match g.trans_a {
            Trans::N => (k as isize, 1), // A stored m×k
            Trans::T => (1, m as isize), // A stored k×m
        };
        let (rsb, csb) = match g.trans_b {
            Trans::N => (n as isize, 1), // B stored k×n
            Trans::T => (1, k as isize), // B stored n×k
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        self.with_out(c, |bufs, c_out| {
            let a_in = Self::view(bufs, a);
            let b_in = Self::view(bufs, b);
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
            // SAFETY: the asserts above make A, B and C exactly m·k, k·n and m·n elements, and the strides
            // describe those row-major shapes; C does not alias A or B (different buffers).
            unsafe {
                T::gemm_strided(
                    m,
                    k,
                    n,
                    T::from_f32(g.alpha),
                    a_in.as_ptr(),
                    rsa,
                    csa,
                    b_in.as_ptr(),
                    rsb,
                    csb,
                    T::from_f32(g.beta),
                    c_out.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        });
        Ok(())
    }

    // z is (rows, cols), bias is (cols). Twin of `bias_act` in kernels/elementwise.cu.
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()> {
        assert_eq!(bias.len, cols, "bias_act bias size");
        self.with_out(z, |bufs, z| {
            let bias = Self::view(bufs, bias);
            for row in z.chunks_exact_mut(cols) {
                for (x, &b) in row.iter_mut().zip(bias) {
                    *x = act.forward(*x + b);
                }
            }
        });
        Ok(())
    }

    // grad and y are (rows, cols). Twin of `act_backward` in kernels/elementwise.cu.
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        assert_eq!(grad.len, y.len, "act_backward sizes");
        if act == Activation::Linear {
            return Ok(());
        }
        self.with_out(grad, |bufs, grad| {
            for (g, &y) in grad.iter_mut().zip(Self::view(bufs, y)) {
                *g *= act.grad_from_output(y);
            }
        });
        Ok(())
    }

    // pred, target, grad are (rows, cols); loss is (1). Twin of `mse_backward` in kernels/loss.cu.
    fn mse_backward(
        &mut self,
        pred: Region,
        target: Region,
        act: Activation,
        count: usize,
        grad: Region,
        loss: Region,
    ) -> Result<()> {
        assert!(pred.len == target.len && pred.len == grad.len, "mse sizes");
        let scale = T::from_f64(2.0 / count as f64);
        let sum = self.with_out(grad, |bufs, grad| {
            let mut sum = 0.0f64;
            for ((g, &p), &t) in grad
                .iter_mut()
                .zip(Self::view(bufs, pred))
                .zip(Self::view(bufs, target))
            {
                let diff = p - t;
                sum += (diff * diff).to_f64();
                *g = scale * diff * act.grad_from_output(p);
            }
            sum
        });
        self.bufs[loss.buf.0][loss.offset] = T::from_f64(sum);
        Ok(())
    }

    // m is (rows, cols), out is (cols). Twin of `col_sum` in kernels/reduce.cu.
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        assert_eq!(out.len, cols, "col_sum output size");
        self.with_out(out, |bufs, out| {
            out.fill(T::zero());
            for row in Self::view(bufs, m).chunks_exact(cols) {
                for (o, &x) in out.iter_mut().zip(row) {
                    *o += x;
                }
            }
        });
        Ok(())
    }

    // w, g, v are (P), the flat parameter, gradient and velocity buffers. Twin of `sgd_step` in
    // kernels/optim.cu. Written as Keras writes it so float rounding matches: v = −(g·lr) + v·momentum.
    fn sgd_step(&mut self, w: Region, g: Region, v: Region, lr: f32, momentum: f32) -> Result<()> {
        let (lr, momentum) = (T::from_f32(lr), T::from_f32(momentum));
        let mut vel = std::mem::take(&mut self.bufs[v.buf.0]);
        self.with_out(w, |bufs, w| {
            let g = Self::view(bufs, g);
            for ((w, &g), v) in w
                .iter_mut()
                .zip(g)
                .zip(&mut vel[v.offset..v.offset + v.len])
            {
                *v = -(g * lr) + *v * momentum;
                *w += *v;
            }
        });
        self.bufs[v.buf.0] = vel;
        Ok(())
    }

    // w, g, m, v are (P). Twin of `adam_step` in kernels/optim.cu, in Keras's operation order.
    fn adam_step(&mut self, w: Region, g: Region, m: Region, v: Region, s: AdamStep) -> Result<()> {
        let alpha = T::from_f32(s.alpha);
        let one_minus_b1 = T::one() - T::from_f32(s.beta1);
        let one_minus_b2 = T::one() - T::from_f32(s.beta2);
        let eps = T::from_f32(s.epsilon);
        let mut mom = std::mem::take(&mut self.bufs[m.buf.0]);
        let mut var = std::mem::take(&mut self.bufs[v.buf.0]);
        self.with_out(w, |bufs, w| {
            let g = Self::view(bufs, g);
            let ms = &mut mom[m.offset..m.offset + m.len];
            let vs = &mut var[v.offset..v.offset + v.len];
            for (((w, &g), m), v) in w.iter_mut().zip(g).zip(ms).zip(vs) {
                *m += (g - *m) * one_minus_b1;
                *v += (g * g - *v) * one_minus_b2;
                *w = *w - (*m * alpha) / (v.sqrt() + eps);
            }
        });
        self.bufs[m.buf.0] = mom;
        self.bufs[v.buf.0] = var;
        Ok(())
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}
