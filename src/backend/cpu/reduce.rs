//! Column sums (a bias's gradient): twin of `kernels/reduce.cu` (launched by `cuda/reduce.rs`).

use super::{as_f32, as_f32_mut, fast_math, gemm_threads, pool, CpuBackend};
use crate::backend::Region;
use crate::error::Result;
use crate::real::Real;

impl<T: Real> CpuBackend<T> {
    /// `Backend::col_sum` on at most `threads` threads: ranges of columns, each summed over all rows in row
    /// order (the same sums however the columns are split; each thread's reads a cache line or more wide),
    /// split only when there is enough work.
    pub(super) fn col_sum_on(&mut self, m: Region, cols: usize, out: Region, threads: usize) {
        assert_eq!(out.len, cols, "col_sum output size");
        self.with_out(out, |bufs, out| {
            let m = bufs.view(m);
            let threads = if m.len() >= 2 * pool::CHUNK {
                threads
            } else {
                1
            };
            let out = pool::SharedMut::new(out);
            pool::for_each_range(threads, cols, COL_SUM_COLUMNS, &|r| {
                // SAFETY: the ranges of one for_each_range are disjoint.
                let out = unsafe { out.part(r.clone()) };
                // f32: the loop compiled for the widest vectors this CPU has (cpu/fast_math.rs).
                match as_f32(m) {
                    Some(m) => {
                        let out = as_f32_mut(out).expect("T is f32, as m is");
                        fast_math::col_sum(m, cols, r.start, out)
                    }
                    None => fast_math::col_sum_generic(m, cols, r.start, out),
                }
            });
        });
    }

    /// m is (rows, cols), out is (cols). Twin of `col_sum` in kernels/reduce.cu.
    pub(super) fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.col_sum_on(m, cols, out, gemm_threads());
        Ok(())
    }
}

/// Columns per part of a `col_sum` split across threads (four cache lines of f32).
const COL_SUM_COLUMNS: usize = 64;
