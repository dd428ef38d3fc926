//! The launches of `kernels/elementwise.cu` (twin: `cpu/elementwise.rs`).

use super::launch::grid_1d;
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::activation::Activation;
use crate::backend::Region;
use crate::error::Result;

impl CudaBackend {
    /// dst is (n): dst[i] = value. Twin of `fill` in cpu/elementwise.rs.
    pub(super) fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        if dst.len == 0 {
            return Ok(());
        }
        let p_dst = self.ptr(dst);
        let n = dst.len as u64;
        // SAFETY: fill(float* dst, u64 n, float value); p_dst addresses dst.len floats of a live buffer
        // (checked by `ptr`) and n == dst.len.
        unsafe { self.launch(&self.k.fill, grid_1d(dst.len), (p_dst, n, value)) }?;
        Ok(())
    }

    /// z is (rows, cols), bias is (cols): z = f(z + bias) in place. Twin of `bias_act` in cpu/elementwise.rs.
    pub(super) fn bias_act(
        &mut self,
        z: Region,
        cols: usize,
        bias: Region,
        act: Activation,
    ) -> Result<()> {
        assert_eq!(bias.len, cols, "bias_act bias size");
        assert_disjoint("bias_act", z, bias);
        if z.len == 0 {
            return Ok(());
        }
        assert!(
            cols > 0 && z.len.is_multiple_of(cols),
            "bias_act: {} is not rows × {cols}",
            z.len
        );
        let (p_z, p_bias) = (self.ptr(z), self.ptr(bias));
        let (n, cols_u, code) = (z.len as u64, cols as u64, act.code());
        // SAFETY: bias_act(float* z, const float* bias, u64 n, u64 cols, u32 act); z holds n floats and bias
        // holds cols floats (asserted; both checked by `ptr`); the kernel reads bias[i % cols] only.
        unsafe {
            self.launch(
                &self.k.bias_act,
                grid_1d(z.len),
                (p_z, p_bias, n, cols_u, code),
            )
        }?;
        Ok(())
    }

    /// grad and y are (rows, cols): grad *= f'(y). Twin of `act_backward` in cpu/elementwise.rs.
    pub(super) fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        assert_eq!(grad.len, y.len, "act_backward sizes");
        assert_disjoint("act_backward", grad, y);
        if act == Activation::Linear || grad.len == 0 {
            return Ok(());
        }
        let (p_grad, p_y) = (self.ptr(grad), self.ptr(y));
        let (n, code) = (grad.len as u64, act.code());
        // SAFETY: act_backward(float* grad, const float* y, u64 n, u32 act); grad and y hold n floats each
        // (asserted; checked by `ptr`).
        unsafe {
            self.launch(
                &self.k.act_backward,
                grid_1d(grad.len),
                (p_grad, p_y, n, code),
            )
        }?;
        Ok(())
    }
}
