//! The launches of `kernels/noise.cu` (twin: `cpu/noise.rs`): the noise of a denoising autoencoder.

use cudarc::driver::LaunchConfig;

use super::launch::{KernelNoiseConfig, MAX_GRID_Y, THREADS};
use super::memory::assert_disjoint;
use super::CudaBackend;
use crate::backend::{Donors, IdxRegion, NoiseSource, Region};
use crate::error::{Error, Result};

/// The launch shape of `corrupt_rows` and `corrupt_rows_half`: `gather_rows`'s (threads along a row's
/// columns, blockIdx.y striding over the rows).
fn noise_config(cols: usize, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(THREADS as usize).min(MAX_GRID_Y) as u32,
            rows.min(MAX_GRID_Y) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// clean and out are (idx.len, cols); source.donors is (donor_rows, cols). Twin of `corrupt_rows` in
    /// cpu/noise.rs.
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
        assert_disjoint("corrupt_rows", out, clean);
        assert_disjoint("corrupt_rows", out, source.fill);
        if out.len == 0 {
            return Ok(());
        }
        let donor_rows = u32::try_from(source.donor_rows).map_err(|_| {
            Error::Device(format!(
                "{} rows: swap noise draws from at most {} rows",
                source.donor_rows,
                u32::MAX
            ))
        })?;
        assert!(u32::try_from(cols).is_ok(), "{cols} columns");
        let (p_clean, p_idx, p_out) = (self.ptr(clean), self.idx_ptr(idx), self.ptr(out));
        let (p_fill, p_key) = (self.ptr(source.fill), self.idx_ptr(source.key));
        let (rows_u, cols_u) = (idx.len as u64, cols as u64);
        let cfg = KernelNoiseConfig::from(source.params);
        let shape = noise_config(cols, idx.len);
        let donor_len = source.donor_rows * cols;
        match source.donors {
            Donors::F32(data) => {
                assert!(
                    data.len >= donor_len,
                    "corrupt_rows: donors hold {} of {donor_len}",
                    data.len
                );
                assert_disjoint("corrupt_rows", out, data);
                let p_data = self.ptr(data);
                // SAFETY: corrupt_rows(const float* clean, const float* donors, const u32* idx, const float*
                // fill, const u32* key, float* out, u64 rows, u64 cols, u32 donor_rows, NoiseConfig cfg).
                // clean and out hold rows·cols floats, idx rows indices, fill cols floats, key 3 words
                // (asserted, and each region checked by `ptr`/`idx_ptr`); donors hold donor_rows·cols floats
                // (asserted) and the kernel reads them only at rows below donor_rows, whatever idx holds; out
                // overlaps no input (asserted).
                unsafe {
                    self.launch(
                        &self.k.corrupt_rows,
                        shape,
                        (
                            p_clean, p_data, p_idx, p_fill, p_key, p_out, rows_u, cols_u,
                            donor_rows, cfg,
                        ),
                    )
                }
            }
            Donors::Half(id, format) => {
                let data_len = self.half_lens[id.0];
                assert!(
                    data_len >= donor_len,
                    "corrupt_rows: donors hold {data_len} of {donor_len}"
                );
                let p_data = self.address(&self.halves, id.0, 0, data_len, "half buffer");
                let format_code = format as u32;
                // SAFETY: corrupt_rows_half: corrupt_rows's parameters with u16 donors, and a last u32 format
                // (a HalfFormat code). The same sizes as above, checked the same way; donors hold
                // donor_rows·cols 16-bit values (asserted).
                unsafe {
                    self.launch(
                        &self.k.corrupt_rows_half,
                        shape,
                        (
                            p_clean,
                            p_data,
                            p_idx,
                            p_fill,
                            p_key,
                            p_out,
                            rows_u,
                            cols_u,
                            donor_rows,
                            cfg,
                            format_code,
                        ),
                    )
                }
            }
        }
    }
}
