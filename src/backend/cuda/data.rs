//! The launches of `kernels/data.cu` (twin: `cpu/data.rs`): batch assembly and the epoch's row order.

use cudarc::driver::LaunchConfig;

use super::launch::{grid_1d, MAX_GRID_Y, THREADS};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::backend::{HalfFormat, HalfId, IdxId, IdxRegion, Region};
use crate::error::{Error, Result};

/// The launch shape of `gather_rows` and `gather_rows_half` (kernels/data.cu): threads along a row's
/// columns, blockIdx.y striding over the output rows.
fn gather_config(cols: usize, out_rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(THREADS as usize).min(MAX_GRID_Y) as u32,
            out_rows.min(MAX_GRID_Y) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// data is (data_rows, cols) 16-bit floats, idx is (out_rows), out is (out_rows, cols) f32. Twin of
    /// `gather_rows_half` in cpu/data.rs.
    pub(super) fn gather_rows_half(
        &mut self,
        data: HalfId,
        format: HalfFormat,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        assert_eq!(out.len, idx.len * cols, "gather_rows_half output size");
        if out.len == 0 {
            return Ok(());
        }
        let data_len = self.half_lens[data.0];
        let p_data = self.address(&self.halves, data.0, 0, data_len, "half buffer");
        let (p_idx, p_out) = (self.idx_ptr(idx), self.ptr(out));
        let (out_rows, cols_u, data_rows) = (idx.len as u64, cols as u64, (data_len / cols) as u64);
        let format_code = format as u32;
        let cfg = gather_config(cols, idx.len);
        // SAFETY: gather_rows_half(const u16* data, const u32* idx, float* out, u64 out_rows, u64 cols,
        // u64 data_rows, u32 format). out holds out_rows·cols floats (asserted, checked by `ptr`), idx holds
        // out_rows indices (`idx_ptr`), data holds data_rows·cols 16-bit values (data_rows = the length
        // asked for / cols, so an empty data set has 0 rows) and the kernel reads it only for indices <
        // data_rows.
        unsafe {
            self.launch(
                &self.k.gather_rows_half,
                cfg,
                (
                    p_data,
                    p_idx,
                    p_out,
                    out_rows,
                    cols_u,
                    data_rows,
                    format_code,
                ),
            )
        }?;
        Ok(())
    }

    /// dst is (rows): dst[i] = the row position i of the epoch reads. Twin of `shuffle_order` in cpu/data.rs.
    pub(super) fn shuffle_order(&mut self, dst: IdxId, rows: usize, key: u64) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let rows_u = u32::try_from(rows).map_err(|_| {
            Error::Device(format!(
                "{rows} rows: the row order holds at most {} rows",
                u32::MAX
            ))
        })?;
        let p_dst = self.idx_ptr(IdxRegion {
            buf: dst,
            offset: 0,
            len: rows,
        });
        // SAFETY: shuffle_order(u32* order, u32 rows, u64 key); p_dst addresses `rows` indices of a live index
        // buffer (checked by `idx_ptr`), and the kernel writes order[0..rows] only.
        unsafe { self.launch(&self.k.shuffle_order, grid_1d(rows), (p_dst, rows_u, key)) }?;
        Ok(())
    }

    /// data is (rows, cols), idx is (out_rows), out is (out_rows, cols). Twin of `gather_rows` in cpu/data.rs.
    pub(super) fn gather_rows(
        &mut self,
        data: Region,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        assert_eq!(out.len, idx.len * cols, "gather_rows output size");
        assert_disjoint("gather_rows", out, data);
        if out.len == 0 {
            return Ok(());
        }
        let (p_data, p_idx, p_out) = (self.ptr(data), self.idx_ptr(idx), self.ptr(out));
        let (out_rows, cols_u, data_rows) = (idx.len as u64, cols as u64, (data.len / cols) as u64);
        let cfg = gather_config(cols, idx.len);
        // SAFETY: gather_rows(const float* data, const u32* idx, float* out, u64 out_rows, u64 cols,
        // u64 data_rows). out holds out_rows·cols floats (asserted), idx holds out_rows indices, data holds at
        // least data_rows·cols floats (data_rows = data.len / cols), and the kernel reads data only for
        // indices < data_rows; all three regions were checked by `ptr`/`idx_ptr`.
        unsafe {
            self.launch(
                &self.k.gather_rows,
                cfg,
                (p_data, p_idx, p_out, out_rows, cols_u, data_rows),
            )
        }?;
        Ok(())
    }
}
