//! Fill, bias and activation, and the activation's backward pass: twin of `kernels/elementwise.cu` (launched by
//! `cuda/elementwise.rs`).

use super::{as_f32, as_f32_mut, fast_math, gemm_threads, pool, CpuBackend};
use crate::activation::Activation;
use crate::backend::Region;
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// dst is (n): dst[i] = value. Twin of `fill` in kernels/elementwise.cu.
    pub(super) fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        self.bufs[dst.buf.0][dst.offset..dst.offset + dst.len].fill(T::from_f32(value));
        Ok(())
    }

    /// z is (rows, cols), bias is (cols). Twin of `bias_act` in kernels/elementwise.cu.
    pub(super) fn bias_act(
        &mut self,
        z: Region,
        cols: usize,
        bias: Region,
        act: Activation,
    ) -> Result<()> {
        assert_eq!(bias.len, cols, "bias_act bias size");
        if cols == 0 {
            return Ok(());
        }
        self.with_out(z, |bufs, z| {
            let bias = bufs.view(bias);
            let rows = z.len() / cols;
            let z = pool::SharedMut::new(z);
            // Chunks of rows, on every thread of the pool for a large batch (cpu/pool.rs).
            pool::for_each_range(gemm_threads(), rows, (pool::CHUNK / cols).max(1), &|r| {
                // Captured values copied into locals: the stores below cannot alias them, so the loops
                // stay vectorized (the same in the closures below).
                let (act, cols) = (act, cols);
                // SAFETY: the ranges of one for_each_range are disjoint.
                let z = unsafe { z.part(r.start * cols..r.end * cols) };
                // f32: loops compiled for the widest vectors this CPU has, and for tanh one without a libm
                // call per element (cpu/fast_math.rs).
                match as_f32(bias) {
                    Some(bias) => {
                        let z = as_f32_mut(z).expect("T is f32, as bias is");
                        if act == Activation::Tanh {
                            fast_math::bias_tanh(z, cols, bias)
                        } else {
                            fast_math::bias_act(z, cols, bias, act)
                        }
                    }
                    None => fast_math::bias_act_generic(z, cols, bias, act),
                }
            });
        });
        Ok(())
    }

    /// grad and y are (rows, cols). Twin of `act_backward` in kernels/elementwise.cu.
    pub(super) fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        assert_eq!(grad.len, y.len, "act_backward sizes");
        if act == Activation::Linear {
            return Ok(());
        }
        self.with_out(grad, |bufs, grad| {
            let y = bufs.view(y);
            let len = grad.len();
            let grad = pool::SharedMut::new(grad);
            pool::for_each_range(gemm_threads(), len, pool::CHUNK, &|r| {
                // A local copy keeps the loop vectorized (see bias_act).
                #[allow(clippy::redundant_locals)]
                let act = act;
                // SAFETY: the ranges of one for_each_range are disjoint.
                let grad = unsafe { grad.part(r.clone()) };
                let y = &y[r];
                // f32: the loop compiled for the widest vectors this CPU has (cpu/fast_math.rs).
                match as_f32(y) {
                    Some(y) => {
                        let grad = as_f32_mut(grad).expect("T is f32, as y is");
                        fast_math::act_backward(grad, y, act)
                    }
                    None => fast_math::act_backward_generic(grad, y, act),
                }
            });
        });
        Ok(())
    }
}
