//! The optimizer steps over the flat parameter buffer, in Keras's operation order: twin of `kernels/optim.cu`
//! (launched by `cuda/optim.rs`).

use super::{as_f32, as_f32_mut, fast_math, gemm_threads, pool, CpuBackend};
use crate::backend::{AdamConfig, Region};
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// w, g, v are (P), the flat parameter, gradient and velocity buffers. Twin of `sgd_step` in
    /// kernels/optim.cu. Written as Keras writes it so float rounding matches: v = −(g·lr) + v·momentum.
    pub(super) fn sgd_step(
        &mut self,
        w: Region,
        g: Region,
        v: Region,
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        let (lr, momentum) = (T::from_f32(lr), T::from_f32(momentum));
        // v leaves the arena for the call (as w does in with_out): it needs a buffer of its own.
        assert!(
            v.buf != w.buf && v.buf != g.buf,
            "sgd_step: v shares a buffer with w or g"
        );
        let mut vel = std::mem::take(&mut self.bufs[v.buf.0]);
        self.with_out(w, |bufs, w| {
            let g = bufs.view(g);
            let len = w.len();
            let (w, vel) = (
                pool::SharedMut::new(w),
                pool::SharedMut::new(&mut vel[v.offset..v.offset + v.len]),
            );
            pool::for_each_range(gemm_threads(), len, pool::CHUNK, &|r| {
                let (lr, momentum) = (lr, momentum);
                // SAFETY: the ranges of one for_each_range are disjoint.
                let (w, vel) = unsafe { (w.part(r.clone()), vel.part(r.clone())) };
                for ((w, &g), v) in w.iter_mut().zip(&g[r]).zip(vel) {
                    *v = -(g * lr) + *v * momentum;
                    *w += *v;
                }
            });
        });
        self.bufs[v.buf.0] = vel;
        Ok(())
    }

    /// w, g, m, v are (P). Twin of `adam_step` in kernels/optim.cu, in Keras's operation order.
    pub(super) fn adam_step(
        &mut self,
        w: Region,
        g: Region,
        m: Region,
        v: Region,
        alpha: Region,
        s: AdamConfig,
    ) -> Result<()> {
        assert_eq!(alpha.len, 1, "adam_step: alpha is one value");
        let alpha_buf = alpha.buf;
        assert!(
            [w.buf, g.buf, m.buf, v.buf].iter().all(|&b| b != alpha_buf),
            "adam_step: alpha shares a buffer with w, g, m or v"
        );
        let alpha = self.bufs[alpha.buf.0][alpha.offset];
        let one_minus_b1 = T::one() - T::from_f32(s.beta1);
        let one_minus_b2 = T::one() - T::from_f32(s.beta2);
        let eps = T::from_f32(s.epsilon);
        // m and v leave the arena for the call (as w does in with_out): each needs a buffer of its own.
        assert!(
            m.buf != v.buf && [w.buf, g.buf].iter().all(|&b| b != m.buf && b != v.buf),
            "adam_step: m or v shares a buffer with another operand"
        );
        let mut mom = std::mem::take(&mut self.bufs[m.buf.0]);
        let mut var = std::mem::take(&mut self.bufs[v.buf.0]);
        self.with_out(w, |bufs, w| {
            let g = bufs.view(g);
            let len = w.len();
            let (w, ms, vs) = (
                pool::SharedMut::new(w),
                pool::SharedMut::new(&mut mom[m.offset..m.offset + m.len]),
                pool::SharedMut::new(&mut var[v.offset..v.offset + v.len]),
            );
            pool::for_each_range(gemm_threads(), len, pool::CHUNK, &|r| {
                let (alpha, one_minus_b1, one_minus_b2, eps) =
                    (alpha, one_minus_b1, one_minus_b2, eps);
                // SAFETY: the ranges of one for_each_range are disjoint.
                let (w, ms, vs) =
                    unsafe { (w.part(r.clone()), ms.part(r.clone()), vs.part(r.clone())) };
                let g = &g[r];
                // f32: the same loop, compiled for the widest vectors this CPU has (cpu/fast_math.rs).
                if let (Some(w), Some(g), Some(ms), Some(vs)) =
                    (as_f32_mut(w), as_f32(g), as_f32_mut(ms), as_f32_mut(vs))
                {
                    return fast_math::adam(w, g, ms, vs, alpha.to_f32(), s);
                }
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(ms).zip(vs) {
                    *m += (g - *m) * one_minus_b1;
                    *v += (g * g - *v) * one_minus_b2;
                    *w = *w - (*m * alpha) / (v.sqrt() + eps);
                }
            });
        });
        self.bufs[m.buf.0] = mom;
        self.bufs[v.buf.0] = var;
        Ok(())
    }
}
