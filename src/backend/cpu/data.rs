//! Batch assembly and the epoch's row order: twin of `kernels/data.cu` (launched by `cuda/data.rs`).

use super::{gemm_threads, pool, with_out, CpuBackend};
use crate::backend::{HalfFormat, HalfId, IdxId, IdxRegion, Region};
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// data is (rows, cols) 16-bit floats, out is (idx.len, cols). Twin of `gather_rows_half` in
    /// kernels/data.cu.
    pub(super) fn gather_rows_half(
        &mut self,
        data: HalfId,
        format: HalfFormat,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        assert_eq!(out.len, idx.len * cols, "gather_rows_half output size");
        let rows = &self.indices[idx.buf.0][idx.offset..idx.offset + idx.len];
        let src = &self.halves[data.0];
        let dst = &mut self.bufs[out.buf.0][out.offset..out.offset + out.len];
        for (dst_row, &r) in dst.chunks_exact_mut(cols.max(1)).zip(rows) {
            let start = r as usize * cols;
            for (d, &bits) in dst_row.iter_mut().zip(&src[start..start + cols]) {
                *d = T::from_f32(format.decode(bits));
            }
        }
        Ok(())
    }

    /// dst is (rows): dst[i] = the row position i of the epoch reads. Twin of `shuffle_order` in
    /// kernels/data.cu.
    pub(super) fn shuffle_order(&mut self, dst: IdxId, rows: usize, key: u64) -> Result<()> {
        // Every position is computed on its own: parts of the order on the pool's threads.
        let order = pool::SharedMut::new(&mut self.indices[dst.0][..rows]);
        pool::for_each_range(gemm_threads(), rows, pool::CHUNK, &|r| {
            // SAFETY: the ranges of one for_each_range are disjoint.
            let part = unsafe { order.part(r.clone()) };
            crate::backend::shuffle::fill_order_part(part, r.start, rows, key);
        });
        Ok(())
    }

    /// data is (rows, cols), out is (idx.len, cols). Twin of `gather_rows` in kernels/data.cu.
    pub(super) fn gather_rows(
        &mut self,
        data: Region,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        assert_eq!(out.len, idx.len * cols, "gather_rows output size");
        if cols == 0 {
            return Ok(());
        }
        let rows = &self.indices[idx.buf.0][idx.offset..idx.offset + idx.len];
        with_out(&mut self.bufs, out, |bufs, dst| {
            let src = bufs.view(data);
            // A large batch is copied by every thread of the pool, a chunk of rows each (cpu/pool.rs).
            let dst = pool::SharedMut::new(dst);
            // Rows are read from random places: latency-bound, so small chunks (both threads wait on misses).
            let chunk_rows = (pool::CHUNK / 4 / cols).max(8);
            pool::for_each_range(gemm_threads(), rows.len(), chunk_rows, &|r| {
                // SAFETY: the ranges of one for_each_range are disjoint.
                let dst = unsafe { dst.part(r.start * cols..r.end * cols) };
                for (dst_row, &r) in dst.chunks_exact_mut(cols).zip(&rows[r]) {
                    let start = r as usize * cols;
                    dst_row.copy_from_slice(&src[start..start + cols]);
                }
            });
        });
        Ok(())
    }
}
