//! The launches of `kernels/loss.cu` (twin: `cpu/loss.rs`).

use cudarc::driver::{DevicePtr, LaunchConfig};

use super::launch::{DevPtr, MSE_MAX_BLOCKS, MSE_THREADS};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::activation::Activation;
use crate::backend::Region;
use crate::error::Result;

impl CudaBackend {
    /// pred, target, grad are (n): grad = 2/count·(pred − target)·f'(pred); loss[0] = Σ (pred − target)²
    /// (overwritten). Twin of `mse_backward` in cpu/loss.rs.
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
        assert!(loss.len >= 1, "mse_backward: the loss region is empty");
        let loss = loss.prefix(1);
        for input in [pred, target] {
            assert_disjoint("mse_backward", grad, input);
            assert_disjoint("mse_backward", loss, input);
        }
        assert_disjoint("mse_backward", loss, grad);
        // The same float as the CPU's T::from_f64(2.0 / count as f64).
        let scale = (2.0 / count as f64) as f32;
        let n = pred.len;
        let blocks = n.div_ceil(MSE_THREADS as usize).min(MSE_MAX_BLOCKS);
        let (p_loss, (p_partials, _no_event)) =
            (self.ptr(loss), self.mse_partials.device_ptr(&self.stream));
        if blocks > 0 {
            let (p_pred, p_target, p_grad) = (self.ptr(pred), self.ptr(target), self.ptr(grad));
            let (n_u, code) = (n as u64, act.code());
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (MSE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: mse_backward(const float* pred, const float* target, float* grad, double* partials,
            // u64 n, float scale, u32 act); pred, target, grad hold n floats (asserted; checked by `ptr`);
            // partials holds MSE_MAX_BLOCKS >= gridDim.x doubles; blockDim.x == MSE_THREADS as the kernel's
            // shared-memory tree requires.
            unsafe {
                self.launch(
                    &self.k.mse_backward,
                    cfg,
                    (p_pred, p_target, p_grad, p_partials, n_u, scale, code),
                )
            }?;
        }
        self.finalize_partials(p_partials, blocks, p_loss)
    }

    /// The second launch of `mse_backward` and `sum_squares`: `mse_finalize` sums the first `blocks`
    /// per-block partials (written by the launch just before, in stream order) into the float at `p_out`.
    pub(super) fn finalize_partials(
        &self,
        p_partials: DevPtr,
        blocks: usize,
        p_out: DevPtr,
    ) -> Result<()> {
        let num_partials = blocks as u32;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (MSE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: mse_finalize(const double* partials, u32 num_partials, float* loss); the first
        // num_partials (<= MSE_MAX_BLOCKS) partials were written by the caller's launch just before (stream
        // order), p_out addresses one float (the caller checked it with `ptr`); one block of MSE_THREADS
        // threads as the kernel requires.
        unsafe { self.launch(&self.k.mse_finalize, cfg, (p_partials, num_partials, p_out)) }?;
        Ok(())
    }
}
