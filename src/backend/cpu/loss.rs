//! The MSE loss and its gradient: twin of `kernels/loss.cu` (launched by `cuda/loss.rs`).

use super::{as_f32, as_f32_mut, fast_math, gemm_threads, pool, CpuBackend};
use crate::activation::Activation;
use crate::backend::Region;
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// pred, target, grad are (rows, cols); loss is (1). Twin of `mse_backward` in kernels/loss.cu.
    pub(super) fn mse_backward(
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
            let (pred, target) = (bufs.view(pred), bufs.view(target));
            let len = grad.len();
            let grad = pool::SharedMut::new(grad);
            // At most PARTS chunks (of at least pool::CHUNK), whose sums are added in chunk order: the loss does
            // not depend on the thread count. Within a chunk, eight running sums (one chain would wait on
            // every add; eight vectorize). It differs from one running sum in the last bits of the f64 only.
            const PARTS: usize = 64;
            let chunk = pool::CHUNK.max(len.div_ceil(PARTS));
            let partial: [std::sync::atomic::AtomicU64; PARTS] =
                std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0));
            pool::for_each_range(gemm_threads(), len, chunk, &|r| {
                let (act, scale) = (act, scale);
                // SAFETY: the ranges of one for_each_range are disjoint.
                let grad = unsafe { grad.part(r.clone()) };
                let (pred, target) = (&pred[r.clone()], &target[r.clone()]);
                // One loop (cpu/fast_math.rs), for f32 compiled for the widest vectors this CPU has.
                let s = match (as_f32_mut(grad), as_f32(pred), as_f32(target)) {
                    (Some(grad), Some(pred), Some(target)) => {
                        fast_math::mse_grad(grad, pred, target, scale.to_f32(), act)
                    }
                    _ => fast_math::mse_grad_generic(grad, pred, target, scale, act),
                };
                partial[r.start / chunk].store(s.to_bits(), std::sync::atomic::Ordering::Relaxed);
            });
            partial
                .iter()
                .map(|x| f64::from_bits(x.load(std::sync::atomic::Ordering::Relaxed)))
                .sum::<f64>()
        });
        self.bufs[loss.buf.0][loss.offset] = T::from_f64(sum);
        Ok(())
    }
}
