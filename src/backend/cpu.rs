//! The CPU backend: the reference twin of every kernel in `kernels/*.cu`, function for function.
//! Generic over the scalar so that gradient checks can run the very same step in f64.
//!
//! Buffers are `Vec`s that start on a cache line (`Buffer`). An op takes its output buffer out of the arena
//! for the duration of the call (`std::mem::take`, no allocation), which lets it read the other buffers at the
//! same time, and the rest of the output's own buffer through `Reads`: the trait's rule that outputs never
//! overlap inputs makes this sound. (The training step keeps pairs of tensors in one buffer: see
//! `train/mod.rs`.)

use super::{
    AdamConfig, Backend, BufId, Gemm, GemmArgs, HalfFormat, HalfId, IdxId, IdxRegion, Real, Region,
    Trans,
};
use crate::activation::Activation;
use crate::error::Result;

mod fast_math;
#[cfg(target_arch = "x86_64")]
mod isa;
mod pool;
// x86-64 only: elsewhere the f32 GEMM is matrixmultiply's.
#[cfg(target_arch = "x86_64")]
mod sgemm;

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

    /// `c = alpha·op(a)·op(b) + beta·c` of [`Backend::gemm`] on the stored matrices, on at most `threads`
    /// threads (the result does not depend on how many).
    fn gemm_slices(g: Gemm, a_in: &[T], b_in: &[T], c_out: &mut [T], threads: usize) {
        let Gemm { m, n, k, .. } = g;
        assert_eq!(a_in.len(), m * k, "gemm A size");
        assert_eq!(b_in.len(), k * n, "gemm B size");
        assert_eq!(c_out.len(), m * n, "gemm C size");
        let (rsa, csa) = match g.trans_a {
            Trans::N => (k as isize, 1), // A stored m×k
            Trans::T => (1, m as isize), // A stored k×m
        };
        let (rsb, csb) = match g.trans_b {
            Trans::N => (n as isize, 1), // B stored k×n
            Trans::T => (1, k as isize), // B stored n×k
        };
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for x in c_out.iter_mut() {
                *x = if g.beta == 0.0 {
                    T::zero()
                } else {
                    *x * T::from_f32(g.beta)
                };
            }
            return;
        }
        // f32 on an AVX-512 or AVX2 CPU: our packed, multithreaded GEMM (cpu/sgemm.rs); else
        // matrixmultiply.
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = our_gemm::<T>() {
            // SAFETY: T is f32 (`our_gemm` runs only for f32), so the casts only rename the type; the asserts
            // above make A, B and C exactly m·k, k·n and m·n elements, the strides describe those
            // row-major shapes, and C does not alias A or B (C is a mutable borrow).
            unsafe {
                sgemm::sgemm(
                    isa,
                    threads,
                    m,
                    k,
                    n,
                    g.alpha,
                    a_in.as_ptr() as *const f32,
                    rsa,
                    csa,
                    b_in.as_ptr() as *const f32,
                    rsb,
                    csb,
                    g.beta,
                    c_out.as_mut_ptr() as *mut f32,
                    n,
                )
            };
            return;
        }
        // SAFETY: the asserts above make A, B and C exactly m·k, k·n and m·n elements, and the strides
        // describe those row-major shapes; C does not alias A or B (C is a mutable borrow).
        unsafe {
            matrixmultiply_gemm(
                m,
                k,
                n,
                g.alpha,
                a_in,
                (rsa, csa),
                b_in,
                (rsb, csb),
                g.beta,
                c_out,
            )
        }
    }

    /// [`Backend::gemm_pair`] on at most `threads` threads; says whether the two ran side by side.
    fn gemm_pair_on(&mut self, first: GemmArgs, second: GemmArgs, threads: usize) -> Result<bool> {
        let small =
            |(g, ..): &GemmArgs| (PAIR_MIN_MACS..=PAIR_MAX_MACS).contains(&(g.m * g.n * g.k));
        let (c1, c2) = (first.3, second.3);
        // Both outputs leave the arena for the call, so no input may live in either output's buffer.
        let reads_outputs = |(_, a, b, _): &GemmArgs| {
            [a.buf, b.buf]
                .iter()
                .any(|&buf| buf == c1.buf || buf == c2.buf)
        };
        let side_by_side = threads >= 2
            && pairs_side_by_side::<T>()
            && small(&first)
            && small(&second)
            && c1.buf != c2.buf
            && !reads_outputs(&first)
            && !reads_outputs(&second);
        if !side_by_side {
            self.gemm(first.0, first.1, first.2, first.3)?;
            self.gemm(second.0, second.1, second.2, second.3)?;
            return Ok(false);
        }
        check_gemm_sizes(first.0, first.1, first.2, first.3);
        check_gemm_sizes(second.0, second.1, second.2, second.3);
        let mut out1 = std::mem::take(&mut self.bufs[c1.buf.0]);
        let mut out2 = std::mem::take(&mut self.bufs[c2.buf.0]);
        {
            let bufs = &self.bufs;
            let outs = [
                pool::SharedMut::new(&mut out1[c1.offset..c1.offset + c1.len]),
                pool::SharedMut::new(&mut out2[c2.offset..c2.offset + c2.len]),
            ];
            let args = [first, second];
            pool::for_each(threads, 2, &|i| {
                let (g, a, b, c) = args[i];
                // SAFETY: job i, run once, is the only one to touch output i.
                let c_out = unsafe { outs[i].part(0..c.len) };
                Self::gemm_slices(g, Self::view(bufs, a), Self::view(bufs, b), c_out, 1);
            });
        }
        self.bufs[c1.buf.0] = out1;
        self.bufs[c2.buf.0] = out2;
        Ok(true)
    }

    /// [`Backend::col_sum`] on at most `threads` threads: ranges of columns, each summed over all rows in
    /// row order (the same sums however the columns are split; each thread's reads a cache line or more
    /// wide), split only when there is enough work.
    fn col_sum_on(&mut self, m: Region, cols: usize, out: Region, threads: usize) {
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

/// The instruction set of our GEMM when a `CpuBackend<T>` runs it (f32 on a CPU with AVX2 or AVX-512);
/// None when matrixmultiply's runs.
#[cfg(target_arch = "x86_64")]
fn our_gemm<T: 'static>() -> Option<sgemm::Isa> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(sgemm::isa)
        .flatten()
}

/// Columns per part of a `col_sum` split across threads (four cache lines of f32).
const COL_SUM_COLUMNS: usize = 64;

/// Products a `gemm_pair` may run side by side, one per thread, in multiply-adds: from about 3 µs of one core
/// (below, waking a helper costs more than half the pair) to the mnist workload's 256↔64 layer (its tied
/// gradient, 256×64×512, 8.4 M, with a 256×256×64 product);
/// larger ones run faster split across the threads, one after the other.
const PAIR_MIN_MACS: usize = 1 << 18;
const PAIR_MAX_MACS: usize = 1 << 24;

/// Whether `gemm_pair` runs side by side for `T`: with our GEMM, whose threads it controls (matrixmultiply
/// has threads of its own).
fn pairs_side_by_side<T: 'static>() -> bool {
    #[cfg(target_arch = "x86_64")]
    return our_gemm::<T>().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `c = alpha·op(a)·op(b) + beta·c` by matrixmultiply (strided, multithreaded): f64 always, and f32 where our
/// GEMM does not run. `T` is f32 or f64, the two `Real` types.
///
/// # Safety
/// `a` and `b` with their (row, column) strides must cover op(A) m×k and op(B) k×n; `c` holds m×n, row-major.
#[allow(clippy::too_many_arguments)]
unsafe fn matrixmultiply_gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[T],
    (rsa, csa): (isize, isize),
    b: &[T],
    (rsb, csb): (isize, isize),
    beta: f32,
    c: &mut [T],
) {
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    let rsc = n as isize;
    use std::any::TypeId;
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32, so the casts only rename the type; the caller's contract covers the rest.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha,
                a as *const f32,
                rsa,
                csa,
                b as *const f32,
                rsb,
                csb,
                beta,
                c as *mut f32,
                rsc,
                1,
            )
        }
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        // SAFETY: T is f64, so the casts only rename the type; the caller's contract covers the rest.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                f64::from(alpha),
                a as *const f64,
                rsa,
                csa,
                b as *const f64,
                rsb,
                csb,
                f64::from(beta),
                c as *mut f64,
                rsc,
                1,
            )
        }
    } else {
        panic!(
            "the CPU backend computes in f32 or f64, not {}",
            std::any::type_name::<T>()
        )
    }
}

/// `a`, `b` and `c` hold exactly the m·k, k·n and m·n elements of `g`.
fn check_gemm_sizes(g: Gemm, a: Region, b: Region, c: Region) {
    let Gemm { m, n, k, .. } = g;
    assert_eq!(a.len, m * k, "gemm A size");
    assert_eq!(b.len, k * n, "gemm B size");
    assert_eq!(c.len, m * n, "gemm C size");
}

/// Which GEMM a `CpuBackend<T>` runs: ours with its instruction set, or matrixmultiply's.
fn gemm_kernel<T: 'static>() -> String {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = our_gemm::<T>() {
        return format!("{} GEMM", isa.name());
    }
    "matrixmultiply GEMM".into()
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

impl<T: Real> Backend for CpuBackend<T> {
    type Scalar = T;

    fn name(&self) -> String {
        format!(
            "cpu ({} GEMM thread{}, {}, {})",
            gemm_threads(),
            if gemm_threads() == 1 { "" } else { "s" },
            std::any::type_name::<T>(),
            gemm_kernel::<T>()
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

    // data is (rows, cols) 16-bit floats, out is (idx.len, cols). Twin of `gather_rows_half` in
    // kernels/data.cu.
    fn gather_rows_half(
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

    // dst is (rows): dst[i] = the row position i of the epoch reads. Twin of `shuffle_order` in
    // kernels/data.cu.
    fn shuffle_order(&mut self, dst: IdxId, rows: usize, key: u64) -> Result<()> {
        // Every position is computed on its own: parts of the order on the pool's threads.
        let order = pool::SharedMut::new(&mut self.indices[dst.0][..rows]);
        pool::for_each_range(gemm_threads(), rows, pool::CHUNK, &|r| {
            // SAFETY: the ranges of one for_each_range are disjoint.
            let part = unsafe { order.part(r.clone()) };
            super::shuffle::fill_order_part(part, r.start, rows, key);
        });
        Ok(())
    }

    fn download(&mut self, src: Region, dst: &mut [T]) -> Result<()> {
        assert_eq!(src.len, dst.len(), "download length");
        dst.copy_from_slice(Self::view(&self.bufs, src));
        Ok(())
    }

    fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        self.bufs[dst.buf.0][dst.offset..dst.offset + dst.len].fill(T::from_f32(value));
        Ok(())
    }

    // data is (rows, cols), out is (idx.len, cols). Twin of `gather_rows` in kernels/data.cu.
    fn gather_rows(
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

    // C = alpha·op(A)·op(B) + beta·C, row-major. Twin of `gemm` in kernels/gemm.cu. Trans::T swaps the
    // row and column strides of the stored matrix: the decoder reads the encoder's kernel this way.
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        check_gemm_sizes(g, a, b, c);
        self.with_out(c, |bufs, c_out| {
            Self::gemm_slices(g, bufs.view(a), bufs.view(b), c_out, gemm_threads())
        });
        Ok(())
    }

    // Two small products side by side, one per thread, each summed exactly as `gemm` sums it: with 2
    // threads a 256×64×256 product took 60-69 µs split across both, 86-94 µs on one (so a pair, 120-140 µs in
    // turn, takes about 90 µs side by side).
    fn gemm_pair(&mut self, first: GemmArgs, second: GemmArgs) -> Result<()> {
        self.gemm_pair_on(first, second, gemm_threads())
            .map(|_side_by_side| ())
    }

    // z is (rows, cols), bias is (cols). Twin of `bias_act` in kernels/elementwise.cu.
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()> {
        assert_eq!(bias.len, cols, "bias_act bias size");
        if cols == 0 {
            return Ok(());
        }
        self.with_out(z, |bufs, z| {
            let bias = bufs.view(bias);
            let rows = z.len() / cols;
            let z = pool::SharedMut::new(z);
            // Chunks of rows, on every thread of the pool for a large batch (cpu/pool.rs).
            pool::for_each_range(gemm_threads(), rows, (pool::CHUNK / cols).max(1), &|r| {
                // Captured values copied into locals: the stores below cannot alias them, so the loops
                // stay vectorized (the same in the closures below).
                let (act, cols) = (act, cols);
                // SAFETY: the ranges of one for_each_range are disjoint.
                let z = unsafe { z.part(r.start * cols..r.end * cols) };
                // f32: loops compiled for the widest vectors this CPU has, and for tanh one without a libm
                // call per element (cpu/fast_math.rs).
                match as_f32(bias) {
                    Some(bias) => {
                        let z = as_f32_mut(z).expect("T is f32, as bias is");
                        if act == Activation::Tanh {
                            fast_math::bias_tanh(z, cols, bias)
                        } else {
                            fast_math::bias_act(z, cols, bias, act)
                        }
                    }
                    None => fast_math::bias_act_generic(z, cols, bias, act),
                }
            });
        });
        Ok(())
    }

    // grad and y are (rows, cols). Twin of `act_backward` in kernels/elementwise.cu.
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        assert_eq!(grad.len, y.len, "act_backward sizes");
        if act == Activation::Linear {
            return Ok(());
        }
        self.with_out(grad, |bufs, grad| {
            let y = bufs.view(y);
            let len = grad.len();
            let grad = pool::SharedMut::new(grad);
            pool::for_each_range(gemm_threads(), len, pool::CHUNK, &|r| {
                // A local copy keeps the loop vectorized (see bias_act).
                #[allow(clippy::redundant_locals)]
                let act = act;
                // SAFETY: the ranges of one for_each_range are disjoint.
                let grad = unsafe { grad.part(r.clone()) };
                let y = &y[r];
                // f32: the loop compiled for the widest vectors this CPU has (cpu/fast_math.rs).
                match as_f32(y) {
                    Some(y) => {
                        let grad = as_f32_mut(grad).expect("T is f32, as y is");
                        fast_math::act_backward(grad, y, act)
                    }
                    None => fast_math::act_backward_generic(grad, y, act),
                }
            });
        });
        Ok(())
    }

    // pred, target, grad are (rows, cols); loss is (1). Twin of `mse_backward` in kernels/loss.cu.
    fn mse_backward(
        &mut self,
        pred: Region,
        target: Region,
        act: Activation,
        count: usize,
        grad: Region,
        loss: Region,
    ) -> Result<()> {
        assert!(pred.len == target.len && pred.len == grad.len, "mse sizes");
        let scale = T::from_f64(2.0 / count as f64);
        let sum = self.with_out(grad, |bufs, grad| {
            let (pred, target) = (bufs.view(pred), bufs.view(target));
            let len = grad.len();
            let grad = pool::SharedMut::new(grad);
            // At most PARTS chunks (of at least pool::CHUNK), whose sums are added in chunk order: the loss does
            // not depend on the thread count. Within a chunk, eight running sums (one chain would wait on
            // every add; eight vectorize). It differs from one running sum in the last bits of the f64 only.
            const PARTS: usize = 64;
            let chunk = pool::CHUNK.max(len.div_ceil(PARTS));
            let partial: [std::sync::atomic::AtomicU64; PARTS] =
                std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0));
            pool::for_each_range(gemm_threads(), len, chunk, &|r| {
                let (act, scale) = (act, scale);
                // SAFETY: the ranges of one for_each_range are disjoint.
                let grad = unsafe { grad.part(r.clone()) };
                let (pred, target) = (&pred[r.clone()], &target[r.clone()]);
                // One loop (cpu/fast_math.rs), for f32 compiled for the widest vectors this CPU has.
                let s = match (as_f32_mut(grad), as_f32(pred), as_f32(target)) {
                    (Some(grad), Some(pred), Some(target)) => {
                        fast_math::mse_grad(grad, pred, target, scale.to_f32(), act)
                    }
                    _ => fast_math::mse_grad_generic(grad, pred, target, scale, act),
                };
                partial[r.start / chunk].store(s.to_bits(), std::sync::atomic::Ordering::Relaxed);
            });
            partial
                .iter()
                .map(|x| f64::from_bits(x.load(std::sync::atomic::Ordering::Relaxed)))
                .sum::<f64>()
        });
        self.bufs[loss.buf.0][loss.offset] = T::from_f64(sum);
        Ok(())
    }

    // m is (rows, cols), out is (cols). Twin of `col_sum` in kernels/reduce.cu.
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.col_sum_on(m, cols, out, gemm_threads());
        Ok(())
    }

    // w, g, v are (P), the flat parameter, gradient and velocity buffers. Twin of `sgd_step` in
    // kernels/optim.cu. Written as Keras writes it so float rounding matches: v = −(g·lr) + v·momentum.
    fn sgd_step(&mut self, w: Region, g: Region, v: Region, lr: f32, momentum: f32) -> Result<()> {
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

    // w, g, m, v are (P). Twin of `adam_step` in kernels/optim.cu, in Keras's operation order.
    fn adam_step(
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

    // m is (n, n). Twin of `diagonal_affine` in kernels/constraints.cu.
    fn diagonal_affine(&mut self, m: Region, n: usize, scale: f32, shift: f32) -> Result<()> {
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

    // x is (n), out is (1). Twin of `sum_squares_partials` + `mse_finalize` in kernels/constraints.cu and
    // kernels/loss.cu.
    fn sum_squares(&mut self, x: Region, out: Region) -> Result<()> {
        assert!(out.len >= 1, "sum_squares: the output region is empty");
        let sum: f64 = Self::view(&self.bufs, x)
            .iter()
            .map(|&v| (v * v).to_f64())
            .sum();
        self.bufs[out.buf.0][out.offset] = T::from_f64(sum);
        Ok(())
    }

    // x is (n), sum_sq is (1). Twin of `div_by_sqrt` in kernels/constraints.cu.
    fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()> {
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

    // m is (rows, cols). Twin of `normalize_columns` in kernels/constraints.cu.
    fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()> {
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

    // m and out are (rows, cols). Twin of `center_columns` in kernels/constraints.cu.
    fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
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

    fn synchronize(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uploads `len` values in [-1, 1) (a fixed sequence per `seed`) into a new buffer.
    fn values(be: &mut CpuBackend<f32>, len: usize, seed: u32) -> Region {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        let host: Vec<f32> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect();
        let r = Region::whole(be.alloc(len).unwrap(), len);
        be.upload(r, &host).unwrap();
        r
    }

    fn read(be: &mut CpuBackend<f32>, r: Region) -> Vec<u32> {
        let mut out = vec![0.0; r.len];
        be.download(r, &mut out).unwrap();
        out.iter().map(|v| v.to_bits()).collect()
    }

    /// The operands of a product (`g`'s stored shapes), C holding values for β = 1.
    fn operands(be: &mut CpuBackend<f32>, g: Gemm, seed: u32) -> GemmArgs {
        let a = values(be, g.m * g.k, seed);
        let b = values(be, g.k * g.n, seed + 1);
        let c = values(be, g.m * g.n, seed + 2);
        (g, a, b, c)
    }

    /// Every buffer starts on a cache line, small or large (a large `Vec` would start 16 bytes past one), in
    /// f32 and f64, holds `len` zeros, and stays so after an op has taken it out and put it back.
    #[test]
    fn buffers_start_on_a_cache_line() {
        fn check<T: Real>(be: &mut CpuBackend<T>, len: usize) -> BufId {
            let id = be.alloc(len).unwrap();
            let buf = &be.bufs[id.0];
            assert_eq!(
                buf.as_ptr() as usize % BUFFER_ALIGN,
                0,
                "{len} {}",
                std::any::type_name::<T>()
            );
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&x| x == T::zero()));
            id
        }
        let mut be = CpuBackend::<f32>::new();
        for len in [0, 1, 5, 1000, 200_000, 3_000_001] {
            let out = Region::whole(check(&mut be, len), len);
            // An op that writes it: the column sums of one row of twos.
            let twos = Region::whole(be.alloc(len).unwrap(), len);
            be.fill(twos, 2.0).unwrap();
            be.col_sum(twos, len, out).unwrap();
            assert_eq!(
                be.bufs[out.buf.0].as_ptr() as usize % BUFFER_ALIGN,
                0,
                "{len} after"
            );
            assert!(be.bufs[out.buf.0].iter().all(|&x| x == 2.0), "{len} after");
        }
        let mut be64 = CpuBackend::<f64>::new();
        for len in [1, 3, 300_000] {
            check(&mut be64, len);
        }
    }

    /// An op reads inputs that live in its output's own buffer, before and after the output (the training
    /// step keeps pairs of tensors in one buffer), and gets the bits it gets from separate buffers.
    #[test]
    fn inputs_in_the_output_buffer_are_read_around_the_output() {
        let g = Gemm::new(Trans::T, Trans::N, 7, 5, 6).accumulate();
        let (a_len, b_len, c_len) = (g.k * g.m, g.k * g.n, g.m * g.n);
        let mut apart = CpuBackend::<f32>::new();
        let (_, a, b, c) = operands(&mut apart, g, 3);
        // One buffer: [a | c | b], filled with the same values.
        let mut shared = CpuBackend::<f32>::new();
        let whole = Region::whole(
            shared.alloc(a_len + c_len + b_len).unwrap(),
            a_len + c_len + b_len,
        );
        let (sa, sc, sb) = (
            whole.sub(0, a_len),
            whole.sub(a_len, c_len),
            whole.sub(a_len + c_len, b_len),
        );
        for (from, to) in [(a, sa), (b, sb), (c, sc)] {
            let mut host = vec![0.0f32; from.len];
            apart.download(from, &mut host).unwrap();
            shared.upload(to, &host).unwrap();
        }
        apart.gemm(g, a, b, c).unwrap();
        shared.gemm(g, sa, sb, sc).unwrap();
        assert_eq!(read(&mut shared, sc), read(&mut apart, c), "gemm");
        // mse_backward: the target before the gradient in one buffer, against separate buffers.
        let (target, grad) = (sa.sub(0, 30), sb.sub(0, 30));
        let (pred, loss) = (values(&mut shared, 30, 9), values(&mut shared, 1, 0));
        shared
            .mse_backward(pred, target, Activation::Tanh, 30, grad, loss)
            .unwrap();
        let (apart_target, apart_grad) = (values(&mut apart, 30, 0), values(&mut apart, 30, 0));
        let mut host = vec![0.0f32; 30];
        shared.download(target, &mut host).unwrap();
        apart.upload(apart_target, &host).unwrap();
        let (apart_pred, apart_loss) = (values(&mut apart, 30, 9), values(&mut apart, 1, 0));
        apart
            .mse_backward(
                apart_pred,
                apart_target,
                Activation::Tanh,
                30,
                apart_grad,
                apart_loss,
            )
            .unwrap();
        assert_eq!(
            read(&mut shared, grad),
            read(&mut apart, apart_grad),
            "mse gradient"
        );
        assert_eq!(
            read(&mut shared, loss),
            read(&mut apart, apart_loss),
            "mse loss"
        );
    }

    /// An input that overlaps the output is refused (the trait rules it out), not read half-written.
    #[test]
    #[should_panic(expected = "overlaps output")]
    fn an_input_overlapping_the_output_panics() {
        let mut be = CpuBackend::<f32>::new();
        let r = values(&mut be, 12, 1);
        be.act_backward(r.sub(0, 8), r.sub(4, 8), Activation::Tanh)
            .unwrap();
    }

    /// Column sums split across threads are the sums of each column's rows in row order, as on one thread.
    #[test]
    fn col_sum_split_across_threads_sums_each_column_in_row_order() {
        let mut be = CpuBackend::<f32>::new();
        for (rows, cols) in [(256, 784), (300, 130), (3, 5)] {
            let m = values(&mut be, rows * cols, 7);
            let out = Region::whole(be.alloc(cols).unwrap(), cols);
            be.col_sum_on(m, cols, out, 2);
            let mut host = vec![0.0f32; rows * cols];
            be.download(m, &mut host).unwrap();
            let mut want = vec![0.0f32; cols];
            for row in host.chunks_exact(cols) {
                for (w, &x) in want.iter_mut().zip(row) {
                    *w += x;
                }
            }
            let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(read(&mut be, out), want, "{rows}×{cols}");
        }
    }

    /// A pair run side by side on two threads gives the bits of the two run in turn; a pair that is too
    /// large, too small or dependent (the second reads the first's output) runs in turn.
    #[test]
    fn a_pair_side_by_side_equals_the_two_in_turn() {
        let (n, t) = (Trans::N, Trans::T);
        // (first, second, expected side by side): the backward pass's pairs of the workloads.
        let cases = [
            // mnist's 256↔64 layer: the tied gradient [h; dz_dec]ᵀ·[dz_enc; g] (depth 2·256) with
            // dh = dz·Wᵀ.
            (
                Gemm::new(t, n, 256, 64, 512),
                Gemm::new(n, t, 256, 256, 64),
                true,
            ),
            // The same shapes at depth 256, with β = 1 and the other orientations; a smaller pair, and an odd
            // shape with a scaled product.
            (
                Gemm::new(t, n, 256, 64, 256).accumulate(),
                Gemm::new(n, n, 256, 64, 256),
                true,
            ),
            (
                Gemm::new(t, n, 64, 32, 256),
                Gemm::new(n, n, 256, 32, 64),
                true,
            ),
            (
                Gemm::new(t, n, 77, 45, 129).scaled(0.5),
                Gemm::new(n, t, 129, 77, 45),
                true,
            ),
            // Too small (digits' 32↔8 layer) and too large (mnist's 784↔256 layer): in turn.
            (
                Gemm::new(t, n, 32, 8, 512),
                Gemm::new(n, t, 256, 32, 8),
                false,
            ),
            (
                Gemm::new(t, n, 784, 256, 512),
                Gemm::new(n, t, 256, 784, 256),
                false,
            ),
        ];
        for (i, &(g1, g2, expected)) in cases.iter().enumerate() {
            let seed = 10 * i as u32;
            let mut paired = CpuBackend::<f32>::new();
            let (p1, p2) = (
                operands(&mut paired, g1, seed),
                operands(&mut paired, g2, seed + 5),
            );
            let side_by_side = paired.gemm_pair_on(p1, p2, 2).unwrap();
            assert_eq!(side_by_side, expected, "case {i}: side by side");
            let mut in_turn = CpuBackend::<f32>::new();
            let (q1, q2) = (
                operands(&mut in_turn, g1, seed),
                operands(&mut in_turn, g2, seed + 5),
            );
            in_turn.gemm(q1.0, q1.1, q1.2, q1.3).unwrap();
            in_turn.gemm(q2.0, q2.1, q2.2, q2.3).unwrap();
            assert_eq!(
                read(&mut paired, p1.3),
                read(&mut in_turn, q1.3),
                "case {i}: first"
            );
            assert_eq!(
                read(&mut paired, p2.3),
                read(&mut in_turn, q2.3),
                "case {i}: second"
            );
        }
        // Dependent: the second product reads the first's output, which must be written first.
        let g1 = Gemm::new(n, n, 64, 64, 64);
        let mut paired = CpuBackend::<f32>::new();
        let p1 = operands(&mut paired, g1, 1);
        let b2 = values(&mut paired, 64 * 64, 9);
        let c2 = values(&mut paired, 64 * 64, 10);
        let p2 = (Gemm::new(n, n, 64, 64, 64), p1.3, b2, c2);
        assert!(
            !paired.gemm_pair_on(p1, p2, 2).unwrap(),
            "dependent: in turn"
        );
        let mut in_turn = CpuBackend::<f32>::new();
        let q1 = operands(&mut in_turn, g1, 1);
        let b2 = values(&mut in_turn, 64 * 64, 9);
        let c2 = values(&mut in_turn, 64 * 64, 10);
        in_turn.gemm(q1.0, q1.1, q1.2, q1.3).unwrap();
        in_turn
            .gemm(Gemm::new(n, n, 64, 64, 64), q1.3, b2, c2)
            .unwrap();
        assert_eq!(
            read(&mut paired, p2.3),
            read(&mut in_turn, c2),
            "dependent: second"
        );
    }
}
