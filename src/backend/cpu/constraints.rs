//! The small ops of the PCA-principle constraints (`train/constraints.rs`): twin of `kernels/constraints.cu`
//! (launched by `cuda/constraints.rs`). Their matrix products go through `gemm`.

use super::CpuBackend;
use crate::backend::Region;
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// m is (n, n). Twin of `diagonal_affine` in kernels/constraints.cu.
    pub(super) fn diagonal_affine(
        &mut self,
        m: Region,
        n: usize,
        scale: f32,
        shift: f32,
    ) -> Result<()> {
        assert_eq!(m.len, n * n, "diagonal_affine: m is not n × n");
        let (scale, shift) = (T::from_f32(scale), T::from_f32(shift));
        self.with_out(m, |_, m| {
            for d in m.iter_mut().step_by(n + 1) {
                *d = if scale == T::zero() {
                    shift
                } else {
                    scale * *d + shift
                };
            }
        });
        Ok(())
    }

    /// x is (n), out is (1). Twin of `sum_squares_partials` + `mse_finalize` in kernels/constraints.cu and
    /// kernels/loss.cu.
    pub(super) fn sum_squares(&mut self, x: Region, out: Region) -> Result<()> {
        assert!(out.len >= 1, "sum_squares: the output region is empty");
        let sum: f64 = Self::view(&self.bufs, x)
            .iter()
            .map(|&v| (v * v).to_f64())
            .sum();
        self.bufs[out.buf.0][out.offset] = T::from_f64(sum);
        Ok(())
    }

    /// x is (n), sum_sq is (1). Twin of `div_by_sqrt` in kernels/constraints.cu.
    pub(super) fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()> {
        assert!(sum_sq.len >= 1, "div_by_sqrt: the sum_sq region is empty");
        let s = self.bufs[sum_sq.buf.0][sum_sq.offset];
        if s > T::zero() {
            let norm = s.sqrt();
            self.with_out(x, |_, x| {
                for v in x.iter_mut() {
                    *v = *v / norm;
                }
            });
        }
        Ok(())
    }

    /// m is (rows, cols). Twin of `normalize_columns` in kernels/constraints.cu.
    pub(super) fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()> {
        if cols == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "normalize_columns: {} is not rows × {cols}",
            m.len
        );
        self.with_out(m, |_, m| {
            for j in 0..cols {
                let sum: f64 = m[j..].iter().step_by(cols).map(|&v| (v * v).to_f64()).sum();
                if sum > 0.0 {
                    let norm = T::from_f64(sum.sqrt());
                    for v in m[j..].iter_mut().step_by(cols) {
                        *v = *v / norm;
                    }
                }
            }
        });
        Ok(())
    }

    /// m and out are (rows, cols). Twin of `center_columns` in kernels/constraints.cu.
    pub(super) fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        assert_eq!(m.len, out.len, "center_columns sizes");
        if cols == 0 || m.len == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "center_columns: {} is not rows × {cols}",
            m.len
        );
        let rows = m.len / cols;
        self.with_out(out, |bufs, out| {
            let m = bufs.view(m);
            for j in 0..cols {
                let sum: f64 = m[j..].iter().step_by(cols).map(|&v| v.to_f64()).sum();
                let mean = T::from_f64(sum / rows as f64);
                for (o, &v) in out[j..]
                    .iter_mut()
                    .step_by(cols)
                    .zip(m[j..].iter().step_by(cols))
                {
                    *o = v - mean;
                }
            }
        });
        Ok(())
    }
}
