//! The launches of `kernels/reduce.cu` (twin: `cpu/reduce.rs`).

use cudarc::driver::LaunchConfig;

use super::launch::{COL_SUM_BLOCK, MAX_BLOCKS};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::backend::Region;
use crate::error::Result;

impl CudaBackend {
    /// m is (rows, cols), out is (cols): out[j] = Σ_r m[r, j] (overwritten). Twin of `col_sum` in cpu/reduce.rs.
    pub(super) fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        assert_eq!(out.len, cols, "col_sum output size");
        assert_disjoint("col_sum", out, m);
        if cols == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "col_sum: {} is not rows × {cols}",
            m.len
        );
        let (p_m, p_out) = (self.ptr(m), self.ptr(out));
        let (rows, cols_u) = ((m.len / cols) as u64, cols as u64);
        let cfg = LaunchConfig {
            grid_dim: (
                cols.div_ceil(COL_SUM_BLOCK.0 as usize).min(MAX_BLOCKS) as u32,
                1,
                1,
            ),
            block_dim: (COL_SUM_BLOCK.0, COL_SUM_BLOCK.1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: col_sum(const float* m, float* out, u64 rows, u64 cols); m holds rows·cols floats and out
        // cols floats (asserted; checked by `ptr`); blockDim is (COL_SUM_TX, COL_SUM_TY) as the kernel's
        // shared tile requires.
        unsafe { self.launch(&self.k.col_sum, cfg, (p_m, p_out, rows, cols_u)) }?;
        Ok(())
    }
}
