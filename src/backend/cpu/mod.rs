//! The CPU backend: the reference twin of every kernel in `kernels/*.cu`, function for function, in a file of
//! the same name: `cpu/gemm.rs` is the twin of `kernels/gemm.cu` (and of `cuda/gemm.rs`, which launches it),
//! `cpu/elementwise.rs` of `kernels/elementwise.cu`, and so on; the `Backend` impl below lists every op with
//! its file. Generic over the scalar so that gradient checks can run the very same step in f64.
//!
//! This file holds the arena and the copies. Buffers are `Vec`s that start on a cache line (`Buffer`). An op
//! takes its output buffer out of the arena for the duration of the call (`std::mem::take`, no allocation),
//! which lets it read the other buffers at the same time, and the rest of the output's own buffer through
//! `Reads`: the trait's rule that outputs never overlap inputs makes this sound. (The training step keeps
//! pairs of tensors in one buffer: see `train/step.rs`.)
//!
//! The fast paths: `sgemm.rs` (our f32 GEMM, AVX-512 and AVX2), `fast_math.rs` (element-wise loops compiled
//! for the widest vectors, tanh without libm), `pool.rs` (the threads), `isa.rs` (which instruction set runs).

use super::{
    AdamConfig, Backend, BufId, Gemm, GemmArgs, HalfFormat, HalfId, IdxId, IdxRegion, NoiseSource,
    Region,
};
use crate::activation::Activation;
use crate::error::Result;
use crate::real::Real;

mod constraints;
mod data;
mod elementwise;
mod fast_math;
mod gemm;
#[cfg(target_arch = "x86_64")]
mod isa;
mod loss;
mod noise;
mod optim;
mod pool;
mod reduce;
// x86-64 only: elsewhere the f32 GEMM is matrixmultiply's.
#[cfg(target_arch = "x86_64")]
mod sgemm;
#[cfg(test)]
mod tests;

#[derive(Debug, Default)]
pub struct CpuBackend<T: Real = f32> {
    bufs: Vec<Buffer<T>>,
    indices: Vec<Vec<u32>>,
    halves: Vec<Vec<u16>>,
    bytes: usize,
}

impl<T: Real> CpuBackend<T> {
    pub fn new() -> Self {
        CpuBackend {
            bufs: Vec::new(),
            indices: Vec::new(),
            halves: Vec::new(),
            bytes: 0,
        }
    }

    fn view(bufs: &[Buffer<T>], r: Region) -> &[T] {
        &bufs[r.buf.0][r.offset..r.offset + r.len]
    }

    /// Runs `f` with `out` as a mutable slice and every other region readable.
    fn with_out<R>(&mut self, out: Region, f: impl FnOnce(&Reads<T>, &mut [T]) -> R) -> R {
        with_out(&mut self.bufs, out, f)
    }
}

/// A buffer of the arena: `len` zeros whose first one starts a 64-byte cache line. A `Vec` of more than a few
/// hundred KiB comes from `mmap` through the allocator, 16 bytes past a line, so that every 64-byte load of an
/// AVX-512 loop (and every other one of AVX2) would straddle two lines.
#[derive(Debug)]
struct Buffer<T> {
    raw: Vec<T>,
    start: usize,
    len: usize,
}

/// The alignment of a [`Buffer`]'s first element, in bytes: a cache line.
const BUFFER_ALIGN: usize = 64;

impl<T: Real> Buffer<T> {
    fn zeros(len: usize) -> Self {
        let spare = BUFFER_ALIGN / std::mem::size_of::<T>();
        let raw = vec![T::zero(); len + spare];
        // align_offset counts elements; T's size divides the line, so it is below `spare`.
        let start = raw.as_ptr().align_offset(BUFFER_ALIGN).min(spare);
        Buffer { raw, start, len }
    }
}

/// Empty: what `std::mem::take` leaves in the arena while an op writes the buffer.
impl<T> Default for Buffer<T> {
    fn default() -> Self {
        Buffer {
            raw: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

impl<T> std::ops::Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// The arena while one region of it is written: every other region can be read, also those in the output's
/// own buffer.
struct Reads<'a, T> {
    /// The arena, with the output's buffer taken out (empty).
    bufs: &'a [Buffer<T>],
    out: Region,
    /// The output's buffer before and after the output.
    before: &'a [T],
    after: &'a [T],
}

impl<'a, T> Reads<'a, T> {
    /// Input region `r`. Panics when it overlaps the output, which the trait rules out.
    fn view(&self, r: Region) -> &'a [T] {
        let end = r.offset + r.len;
        if r.buf != self.out.buf || r.len == 0 {
            return &self.bufs[r.buf.0][r.offset..end];
        }
        let out_end = self.out.offset + self.out.len;
        if end <= self.out.offset {
            &self.before[r.offset..end]
        } else if r.offset >= out_end {
            &self.after[r.offset - out_end..end - out_end]
        } else {
            panic!("input {r:?} overlaps output {:?}", self.out)
        }
    }
}

/// Runs `f` with `out` as a mutable slice and every other region of `bufs` readable.
fn with_out<T, R>(
    bufs: &mut [Buffer<T>],
    out: Region,
    f: impl FnOnce(&Reads<T>, &mut [T]) -> R,
) -> R {
    let mut taken = std::mem::take(&mut bufs[out.buf.0]);
    let (before, rest) = taken.split_at_mut(out.offset);
    let (out_slice, after) = rest.split_at_mut(out.len);
    let result = f(
        &Reads {
            bufs,
            out,
            before,
            after,
        },
        out_slice,
    );
    bufs[out.buf.0] = taken;
    result
}

/// Number of threads the CPU GEMM uses: `MATMUL_NUM_THREADS` (which `main` defaults to every core; matrixmultiply
/// reads it too), at most the cores this process may use, 1 when unset. Read once: a step calls it per GEMM.
pub fn gemm_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::var("MATMUL_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1usize)
            .clamp(1, cores)
    })
}

/// `x` as f32 when T is f32 (the fast paths), else None.
fn as_f32<T: Real>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, so this only renames the element type.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// `x` as mutable f32 when T is f32, else None.
fn as_f32_mut<T: Real>(x: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, so this only renames the element type.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// The arena's own ops (buffers and copies) here; every other op in the file named for its kernel file, where
/// it is an inherent method of the same name that this impl calls.
impl<T: Real> Backend for CpuBackend<T> {
    type Scalar = T;

    fn name(&self) -> String {
        format!(
            "cpu ({} GEMM thread{}, {}, {})",
            gemm_threads(),
            if gemm_threads() == 1 { "" } else { "s" },
            std::any::type_name::<T>(),
            gemm::gemm_kernel::<T>()
        )
    }

    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.bufs.push(Buffer::zeros(len));
        self.bytes += len * std::mem::size_of::<T>();
        Ok(BufId(self.bufs.len() - 1))
    }

    fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        self.indices.push(vec![0; len]);
        self.bytes += len * std::mem::size_of::<u32>();
        Ok(IdxId(self.indices.len() - 1))
    }

    fn alloc_half(&mut self, len: usize) -> Result<HalfId> {
        self.halves.push(vec![0; len]);
        self.bytes += len * std::mem::size_of::<u16>();
        Ok(HalfId(self.halves.len() - 1))
    }

    fn upload_half(&mut self, dst: HalfId, src: &[u16]) -> Result<()> {
        self.halves[dst.0].copy_from_slice(src);
        Ok(())
    }

    fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    fn upload(&mut self, dst: Region, src: &[T]) -> Result<()> {
        assert_eq!(src.len(), dst.len, "upload length");
        self.bufs[dst.buf.0][dst.offset..dst.offset + dst.len].copy_from_slice(src);
        Ok(())
    }

    fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()> {
        self.indices[dst.0][offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, src: Region, dst: &mut [T]) -> Result<()> {
        assert_eq!(src.len, dst.len(), "download length");
        dst.copy_from_slice(Self::view(&self.bufs, src));
        Ok(())
    }

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }

    // data.rs, twin of kernels/data.cu
    fn gather_rows_half(
        &mut self,
        data: HalfId,
        format: HalfFormat,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        self.gather_rows_half(data, format, cols, idx, out)
    }
    fn shuffle_order(&mut self, dst: IdxId, rows: usize, key: u64) -> Result<()> {
        self.shuffle_order(dst, rows, key)
    }
    fn gather_rows(
        &mut self,
        data: Region,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()> {
        self.gather_rows(data, cols, idx, out)
    }

    // noise.rs, twin of kernels/noise.cu
    fn corrupt_rows(
        &mut self,
        clean: Region,
        cols: usize,
        idx: IdxRegion,
        source: NoiseSource,
        out: Region,
    ) -> Result<()> {
        self.corrupt_rows(clean, cols, idx, source, out)
    }

    // gemm.rs, twin of kernels/gemm.cu
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        self.gemm(g, a, b, c)
    }
    fn gemm_pair(&mut self, first: GemmArgs, second: GemmArgs) -> Result<()> {
        self.gemm_pair(first, second)
    }

    // elementwise.rs, twin of kernels/elementwise.cu
    fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        self.fill(dst, value)
    }
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()> {
        self.bias_act(z, cols, bias, act)
    }
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        self.act_backward(grad, y, act)
    }

    // loss.rs, twin of kernels/loss.cu
    fn mse_backward(
        &mut self,
        pred: Region,
        target: Region,
        act: Activation,
        count: usize,
        grad: Region,
        loss: Region,
    ) -> Result<()> {
        self.mse_backward(pred, target, act, count, grad, loss)
    }

    // reduce.rs, twin of kernels/reduce.cu
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.col_sum(m, cols, out)
    }

    // optim.rs, twin of kernels/optim.cu
    fn sgd_step(&mut self, w: Region, g: Region, v: Region, lr: f32, momentum: f32) -> Result<()> {
        self.sgd_step(w, g, v, lr, momentum)
    }
    fn adam_step(
        &mut self,
        w: Region,
        g: Region,
        m: Region,
        v: Region,
        alpha: Region,
        s: AdamConfig,
    ) -> Result<()> {
        self.adam_step(w, g, m, v, alpha, s)
    }

    // constraints.rs, twin of kernels/constraints.cu
    fn diagonal_affine(&mut self, m: Region, n: usize, scale: f32, shift: f32) -> Result<()> {
        self.diagonal_affine(m, n, scale, shift)
    }
    fn sum_squares(&mut self, x: Region, out: Region) -> Result<()> {
        self.sum_squares(x, out)
    }
    fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()> {
        self.div_by_sqrt(x, sum_sq)
    }
    fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()> {
        self.normalize_columns(m, cols)
    }
    fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.center_columns(m, cols, out)
    }
}
