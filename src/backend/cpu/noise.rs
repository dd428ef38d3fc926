//! The noise of a denoising autoencoder: twin of `kernels/noise.cu` (launched by `cuda/noise.rs`); the
//! generator and the order of the noises are in `backend/noise.rs`.

use super::{gemm_threads, pool, with_out, CpuBackend};
use crate::backend::noise::corrupt_row;
use crate::backend::{Donors, IdxRegion, NoiseSource, Region};
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// clean and out are (idx.len, cols); source.donors is (donor_rows, cols). Twin of `corrupt_rows` and
    /// `corrupt_rows_half` in kernels/noise.cu.
    pub(super) fn corrupt_rows(
        &mut self,
        clean: Region,
        cols: usize,
        idx: IdxRegion,
        source: NoiseSource,
        out: Region,
    ) -> Result<()> {
        assert_eq!(out.len, idx.len * cols, "corrupt_rows output size");
        assert_eq!(clean.len, out.len, "corrupt_rows input size");
        assert_eq!(source.fill.len, cols, "corrupt_rows fill size");
        assert_eq!(source.key.len, 3, "corrupt_rows key size");
        if out.len == 0 {
            return Ok(());
        }
        let donor_rows = u32::try_from(source.donor_rows).expect("at most u32::MAX rows");
        let col_count = u32::try_from(cols).expect("at most u32::MAX columns");
        debug_assert!(col_count > 0);
        let rows = &self.indices[idx.buf.0][idx.offset..idx.offset + idx.len];
        let k = &self.indices[source.key.buf.0][source.key.offset..source.key.offset + 3];
        let key = [k[0], k[1], k[2]];
        let halves = &self.halves;
        with_out(&mut self.bufs, out, |bufs, dst| {
            let (clean, fill) = (bufs.view(clean), bufs.view(source.fill));
            let dst = pool::SharedMut::new(dst);
            // Each cell costs one or two Philox blocks: a large batch is split across the pool, rows at a time.
            let chunk_rows = (pool::CHUNK / 16 / cols).max(1);
            pool::for_each_range(gemm_threads(), rows.len(), chunk_rows, &|range| {
                // SAFETY: the ranges of one for_each_range are disjoint.
                let dst = unsafe { dst.part(range.start * cols..range.end * cols) };
                for (i, out_row) in range.clone().zip(dst.chunks_exact_mut(cols)) {
                    let clean_row = &clean[i * cols..(i + 1) * cols];
                    let row = rows[i];
                    match source.donors {
                        Donors::F32(data) => {
                            let data = bufs.view(data);
                            let donor = |d: u32, c: usize| data[d as usize * cols + c];
                            corrupt_row(
                                clean_row,
                                out_row,
                                row,
                                &key,
                                &source.params,
                                donor_rows,
                                donor,
                                fill,
                            );
                        }
                        Donors::Half(id, format) => {
                            let data = &halves[id.0];
                            let donor = |d: u32, c: usize| {
                                T::from_f32(format.decode(data[d as usize * cols + c]))
                            };
                            corrupt_row(
                                clean_row,
                                out_row,
                                row,
                                &key,
                                &source.params,
                                donor_rows,
                                donor,
                                fill,
                            );
                        }
                    }
                }
            });
        });
        Ok(())
    }
}
