//! The launches of `kernels/constraints.cu` (twin: `cpu/constraints.rs`).

use cudarc::driver::{DevicePtr, LaunchConfig};

use super::launch::{grid_1d, COLUMN_BLOCK, MAX_BLOCKS, MSE_MAX_BLOCKS, MSE_THREADS};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::backend::Region;
use crate::error::Result;

/// The launch of the per-column kernels of constraints.cu: blocks of (COLUMN_TX, COLUMN_TY) threads, one per
/// COLUMN_TX columns, at most [`MAX_BLOCKS`] (the kernels stride over column tiles).
fn column_grid(cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(COLUMN_BLOCK.0 as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (COLUMN_BLOCK.0, COLUMN_BLOCK.1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// m is (n, n): m[i, i] = scale·m[i, i] + shift. Twin of `diagonal_affine` in cpu/constraints.rs.
    pub(super) fn diagonal_affine(
        &mut self,
        m: Region,
        n: usize,
        scale: f32,
        shift: f32,
    ) -> Result<()> {
        assert_eq!(m.len, n * n, "diagonal_affine: m is not n × n");
        if n == 0 {
            return Ok(());
        }
        let p_m = self.ptr(m);
        let n_u = n as u64;
        // SAFETY: diagonal_affine(float* m, u64 n, float scale, float shift); m holds n·n floats (asserted;
        // checked by `ptr`) and the kernel touches only m[i·(n + 1)] for i < n, the last being n·n − 1.
        unsafe {
            self.launch(
                &self.k.diagonal_affine,
                grid_1d(n),
                (p_m, n_u, scale, shift),
            )
        }?;
        Ok(())
    }

    /// x is (n), out is (1): out[0] = Σ x² (overwritten). Twin of `sum_squares` in cpu/constraints.rs. Two
    /// launches, as `mse_backward`: per-block partials into the backend's scratch, then `mse_finalize` sums
    /// them.
    pub(super) fn sum_squares(&mut self, x: Region, out: Region) -> Result<()> {
        assert!(out.len >= 1, "sum_squares: the output region is empty");
        let out = out.prefix(1);
        assert_disjoint("sum_squares", out, x);
        let blocks = x.len.div_ceil(MSE_THREADS as usize).min(MSE_MAX_BLOCKS);
        let (p_out, (p_partials, _no_event)) =
            (self.ptr(out), self.mse_partials.device_ptr(&self.stream));
        if blocks > 0 {
            let p_x = self.ptr(x);
            let n = x.len as u64;
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (MSE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: sum_squares_partials(const float* x, double* partials, u64 n); x holds n floats
            // (checked by `ptr`); partials holds MSE_MAX_BLOCKS >= gridDim.x doubles; blockDim.x ==
            // MSE_THREADS == SUM_SQUARES_THREADS as the kernel's shared-memory tree requires.
            unsafe { self.launch(&self.k.sum_squares_partials, cfg, (p_x, p_partials, n)) }?;
        }
        self.finalize_partials(p_partials, blocks, p_out)
    }

    /// x is (n), sum_sq is (1): x /= √sum_sq[0] when sum_sq[0] > 0. Twin of `div_by_sqrt` in cpu/constraints.rs.
    pub(super) fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()> {
        assert!(sum_sq.len >= 1, "div_by_sqrt: the sum_sq region is empty");
        let sum_sq = sum_sq.prefix(1);
        assert_disjoint("div_by_sqrt", x, sum_sq);
        if x.len == 0 {
            return Ok(());
        }
        let (p_x, p_s) = (self.ptr(x), self.ptr(sum_sq));
        let n = x.len as u64;
        // SAFETY: div_by_sqrt(float* x, const float* sum_sq, u64 n); x holds n floats, sum_sq one float
        // (both checked by `ptr`), and they do not overlap (asserted): every thread reads sum_sq[0] while
        // others write x.
        unsafe { self.launch(&self.k.div_by_sqrt, grid_1d(x.len), (p_x, p_s, n)) }?;
        Ok(())
    }

    /// m is (rows, cols): m[:, j] /= ‖m[:, j]‖₂ in place. Twin of `normalize_columns` in cpu/constraints.rs.
    pub(super) fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()> {
        if cols == 0 || m.len == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "normalize_columns: {} is not rows × {cols}",
            m.len
        );
        let p_m = self.ptr(m);
        let (rows, cols_u) = ((m.len / cols) as u64, cols as u64);
        // SAFETY: normalize_columns(float* m, u64 rows, u64 cols); m holds rows·cols floats (asserted;
        // checked by `ptr`); blockDim is (COLUMN_TX, COLUMN_TY) as the kernel's shared tile requires.
        unsafe {
            self.launch(
                &self.k.normalize_columns,
                column_grid(cols),
                (p_m, rows, cols_u),
            )
        }?;
        Ok(())
    }

    /// m and out are (rows, cols): out = m − colmean(m). Twin of `center_columns` in cpu/constraints.rs.
    pub(super) fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        assert_eq!(m.len, out.len, "center_columns sizes");
        assert_disjoint("center_columns", out, m);
        if cols == 0 || m.len == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "center_columns: {} is not rows × {cols}",
            m.len
        );
        let (p_m, p_out) = (self.ptr(m), self.ptr(out));
        let (rows, cols_u) = ((m.len / cols) as u64, cols as u64);
        // SAFETY: center_columns(const float* m, float* out, u64 rows, u64 cols); m and out hold rows·cols
        // floats each (asserted; checked by `ptr`), rows >= 1, and they do not overlap (asserted);
        // blockDim is (COLUMN_TX, COLUMN_TY) as the kernel's shared tile requires.
        unsafe {
            self.launch(
                &self.k.center_columns,
                column_grid(cols),
                (p_m, p_out, rows, cols_u),
            )
        }?;
        Ok(())
    }
}
