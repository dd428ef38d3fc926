//! The launches of `kernels/optim.cu` (twin: `cpu/optim.rs`).

use super::launch::{grid_1d, KernelAdamConfig};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::backend::{AdamConfig, Region};
use crate::error::Result;

impl CudaBackend {
    /// w, g, v are (P): v = −(g·lr) + v·momentum; w += v. Twin of `sgd_step` in cpu/optim.rs.
    pub(super) fn sgd_step(
        &mut self,
        w: Region,
        g: Region,
        v: Region,
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        assert!(g.len == w.len && v.len == w.len, "sgd_step sizes");
        assert_disjoint("sgd_step", w, g);
        assert_disjoint("sgd_step", v, g);
        assert_disjoint("sgd_step", w, v);
        if w.len == 0 {
            return Ok(());
        }
        let (p_w, p_g, p_v) = (self.ptr(w), self.ptr(g), self.ptr(v));
        let n = w.len as u64;
        // SAFETY: sgd_step(float* w, const float* g, float* v, u64 n, float lr, float momentum); w, g, v hold
        // n floats each (asserted; checked by `ptr`) and do not overlap (asserted).
        unsafe {
            self.launch(
                &self.k.sgd_step,
                grid_1d(w.len),
                (p_w, p_g, p_v, n, lr, momentum),
            )
        }?;
        Ok(())
    }

    /// w, g, m, v are (P); Keras's Adam in Keras's operation order. Twin of `adam_step` in cpu/optim.rs.
    pub(super) fn adam_step(
        &mut self,
        w: Region,
        g: Region,
        m: Region,
        v: Region,
        alpha: Region,
        s: AdamConfig,
    ) -> Result<()> {
        assert!(
            g.len == w.len && m.len == w.len && v.len == w.len,
            "adam_step sizes"
        );
        assert_eq!(alpha.len, 1, "adam_step: alpha is one value");
        for out in [w, m, v] {
            assert_disjoint("adam_step", out, g);
            assert_disjoint("adam_step", out, alpha);
        }
        assert_disjoint("adam_step", w, m);
        assert_disjoint("adam_step", w, v);
        assert_disjoint("adam_step", m, v);
        if w.len == 0 {
            return Ok(());
        }
        let (p_w, p_g, p_m, p_v) = (self.ptr(w), self.ptr(g), self.ptr(m), self.ptr(v));
        let p_alpha = self.ptr(alpha);
        let n = w.len as u64;
        let cfg = KernelAdamConfig {
            beta1: s.beta1,
            beta2: s.beta2,
            epsilon: s.epsilon,
        };
        // SAFETY: adam_step(float* w, const float* g, float* m, float* v, u64 n, const float* alpha,
        // AdamConfig cfg); the four regions hold n floats each and alpha one (asserted; checked by `ptr`), the
        // outputs overlap no input (asserted); KernelAdamConfig has the kernel's C layout.
        unsafe {
            self.launch(
                &self.k.adam_step,
                grid_1d(w.len),
                (p_w, p_g, p_m, p_v, n, p_alpha, cfg),
            )
        }?;
        Ok(())
    }
}
