//! The CPU backend's f32 GEMM on x86-64: a register-blocked micro-kernel over 12×32 tiles, packed B panels in
//! buffers reused across calls (no allocation in a training step once warm), and the backend's thread pool
//! (pool.rs) splitting large products across the cores. Two instruction sets share everything but the
//! innermost loops ([`Isa`]): AVX-512 (a 12×32 tile in 24 zmm registers) and AVX2 with FMA, the laptops'
//! (the same 12×32 tile as four 6×16 tiles of 12 ymm registers each, over the same packed panels). The module
//! is compiled on x86-64 only; CPUs with neither, and other architectures, keep matrixmultiply.
//!
//! Layouts: `C = alpha·op(A)·op(B) + beta·C`, op(A) m×k read as `a[i·rsa + p·csa]`, op(B) k×n read as
//! `b[p·rsb + j·csb]`, C m×n row-major with leading dimension `ldc`. `beta == 0` never reads C.
//!
//! Blocking (BLIS's loop order): for each NC-wide column block of C and each KC-deep slice of k, op(B) is
//! packed into NR-wide panels (`[panel][p][NR]`, zero-padded); for each MC-tall row block, the micro-kernel
//! computes one MR×NR tile of C from MR rows of op(A) and one B panel, with the MR·NR/16 = 24 accumulators
//! held in zmm registers. An untransposed op(A) is read in place, since the kernel only broadcasts its
//! elements (packing it cost more than it saved at the narrow widths of the workloads); only a last panel of
//! fewer than MR rows is copied and zero-padded. A transposed op(A) (`rsa == 1`: the dW = Xᵀ·δ products),
//! read in place, touches a new cache line for every k, so it is
//! packed (`[panel][p][MR]`) wherever each packed panel serves at least PACK_A_MIN_PANELS B panels. Packing
//! moves values, not sums: every element of C is summed in the same order whatever the thread split or
//! packing, so the result does not depend on the thread count. It can depend on the instruction set
//! when k > 256: each k slice is summed on its own and then added to C, and AVX2's slices are 256 deep,
//! AVX-512's 1024.

pub use super::isa::{isa, Isa};
use super::pool;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many k ahead the AVX-512 kernel prefetches its B panel into L1 (16 k: 2 KiB ahead).
const B_PREFETCH_K: usize = 16;

/// Rows of a micro-tile (one broadcast of A each per k).
const MR: usize = 12;
/// Columns of a micro-tile: two zmm vectors of 16 f32.
const NR: usize = 32;
/// Depth of a packed slice. The workloads' products (k ≤ 784) then run in one slice, each C tile written
/// once, with the B panel (up to KC·NR·4 = 128 KiB) in L2 rather than L1: fewer passes over C outweigh the
/// panel's slower loads (bench/speed-notes.md has the paired measurements of the depths tried).
const KC: usize = 1024;
/// The same for AVX2, whose 6×16 tiles read each half of the B panel twice per 12 rows, with half the
/// multiply-adds per load of AVX-512's: from L1 (KC·NR·4 = 32 KiB) rather than L2.
const KC_AVX2: usize = 256;
/// Rows of a packed A block (MC·KC·4 = 576 KiB, in L2).
const MC: usize = 144;
/// Columns of a packed B block (KC·NC·4 = 4 MiB, in L3).
const NC: usize = 1024;
/// Products below this many multiply-adds run on the calling thread alone: waking a helper and waiting for
/// the slower of two costs more than the second thread saves. Below 2^21 fall the digits workload's
/// 256×32×64 products, which ran slower split in two; mnist's products (4-50M multiply-adds) are above.
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// A transposed op(A) (its MR values of one k side by side, a new cache line for every k) is packed when each
/// packed panel serves at least this many B panels; read in place it costs a cache line per value of k.
/// One thread packs it block by block; several pack it whole once, together, and share it.
const PACK_A_MIN_PANELS: usize = 4;

/// Whether op(A) is packed: stored transposed (unit row stride), and wide enough to reuse each packed panel.
fn packs_a(o: &Operands) -> bool {
    o.rsa == 1 && o.csa != 1 && o.n.min(NC) >= PACK_A_MIN_PANELS * NR
}

/// Depth of a packed slice for `isa`.
fn kc_for(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => KC,
        Isa::Avx2 => KC_AVX2,
    }
}

/// Raw operands of one GEMM, shared by the threads that compute parts of it.
#[derive(Clone, Copy)]
struct Operands {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    /// op(A) already packed whole, shared by the threads of one product (null: not packed): k slice `pc`
    /// starts at `a_packed + pc·a_packed_rows`, and within it the panel of rows i..i+MR at `+ i·kc`.
    a_packed: *const f32,
    /// op(A)'s rows rounded up to MR.
    a_packed_rows: usize,
    /// op(B) packed whole, the same way (null: not packed): slice `pc` at `b_packed + pc·b_packed_cols`, its
    /// panel of columns j..j+NR at `+ j·kc`.
    b_packed: *const f32,
    /// op(B)'s columns rounded up to NR.
    b_packed_cols: usize,
    /// The instruction set of the kernel and the packing.
    isa: Isa,
}

// SAFETY: the pointers are only dereferenced inside `sgemm`'s call, while the caller's borrows are alive, and
// the threads write disjoint parts of C.
unsafe impl Send for Operands {}
unsafe impl Sync for Operands {}

/// `C = alpha·op(A)·op(B) + beta·C` (see the module doc), on `threads` threads at most.
///
/// # Safety
/// The CPU must have `isa`'s instructions (as [`isa()`] says); the pointers with their strides must cover
/// op(A) m×k, op(B) k×n and C m×n (leading dimension `ldc ≥ n`), and C must not overlap A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    isa: Isa,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let ops = Operands {
        m,
        n,
        k,
        alpha,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        beta,
        c,
        ldc,
        a_packed: std::ptr::null(),
        a_packed_rows: 0,
        b_packed: std::ptr::null(),
        b_packed_cols: 0,
        isa,
    };
    if k == 0 {
        // SAFETY: C covers m×n with leading dimension ldc (caller's contract).
        unsafe { scale_c(&ops) };
        return;
    }
    let row_tiles = m.div_ceil(MR);
    let threads = if m * n * k < PARALLEL_MIN_MACS {
        1
    } else {
        threads
    };
    if threads > 1 {
        if packs_a(&ops) {
            // A transposed op(A) is packed once, by all threads, into this thread's shared buffer; the
            // parts of C then read it like an op(A) in place.
            SHARED_A.with(|cell| {
                let mut buf = cell.borrow_mut();
                let rows = row_tiles * MR;
                let whole = buf.at_least(rows * k);
                let packed_a = whole.as_ptr();
                let dst = pool::SharedMut::new(whole);
                let kc_max = kc_for(isa);
                let slices = k.div_ceil(kc_max);
                let src = &ops; // the whole struct (Sync), not its raw pointer field
                pool::for_each(threads, slices * row_tiles, &|t| {
                    let (pc, i0) = (t / row_tiles * kc_max, t % row_tiles * MR);
                    let kc = kc_max.min(k - pc);
                    let at = pc * rows + i0 * kc;
                    // SAFETY: (slice, panel) pairs are distinct per t, so their ranges are disjoint; rows
                    // i0.. (fewer than MR at the end) and columns pc..pc+kc are inside op(A).
                    unsafe {
                        pack_a(
                            src.isa,
                            dst.part(at..at + MR * kc),
                            src.a.offset(i0 as isize * rsa + pc as isize * csa),
                            rsa,
                            csa,
                            MR.min(m - i0),
                            kc,
                        )
                    };
                });
                let mut packed = ops;
                packed.a_packed = packed_a;
                packed.a_packed_rows = rows;
                // SAFETY: as below, with op(A) read from the packed copy, which outlives the call.
                unsafe { split(threads, &packed) };
            });
            return;
        }
        // SAFETY: forwarded from the caller's contract.
        unsafe { split(threads, &ops) };
        return;
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { gemm_serial(&ops) }
}

/// The least work of one block of rows of the last panels (see [`split`]), in multiply-adds: enough that
/// handing it out costs little beside it.
const MIN_BLOCK_MACS: usize = 1 << 19;

/// Runs `o` on up to `threads` threads, handing out its parts dynamically (a thread the host delays takes
/// fewer). Most of C goes in column chunks of whole NR panels that share nothing but A: each packs its own
/// part of B (A is read in place, or was packed beforehand when transposed). The last `threads` panels
/// (all of them when there are fewer than 2·threads) are packed once, into this thread's shared buffer, and
/// cut by rows into small blocks that come last: a thread that runs out of work waits for the others only
/// as long as one such block takes, where a whole column chunk took up to an eighth of the product.
///
/// # Safety
/// `o` must satisfy `sgemm`'s contract (and `a_packed`, when set, cover op(A) packed).
unsafe fn split(threads: usize, o: &Operands) {
    let kc_max = kc_for(o.isa);
    let panels = o.n.div_ceil(NR);
    let row_tiles = o.m.div_ceil(MR);
    let shared = if panels >= 2 * threads {
        threads
    } else {
        panels
    };
    let head = panels - shared;
    let head_chunks = head.min(4 * threads);
    // Each block spans all the shared panels, so that its tiles of A serve them all while in L1.
    let tall = (MIN_BLOCK_MACS / (MR * shared * NR * o.k)).clamp(1, row_tiles);
    let row_blocks = row_tiles.div_ceil(tall);
    // The shared panels as a product of their own: columns head·NR.. of op(B) and C.
    let mut last = *o;
    last.n = o.n - head * NR;
    // SAFETY: head·NR < n, so these stay inside op(B) and C.
    unsafe {
        last.b = o.b.offset((head * NR) as isize * o.csb);
        last.c = o.c.add(head * NR);
    }
    let last_cols = shared * NR;
    SHARED_B.with(|cell| {
        let mut buf = cell.borrow_mut();
        let whole = buf.at_least(last_cols * o.k);
        last.b_packed = whole.as_ptr();
        last.b_packed_cols = last_cols;
        let dst = pool::SharedMut::new(whole);
        let packed = AtomicUsize::new(0);
        // The closure takes the whole structs (Sync), not their raw pointer fields.
        let (o, last) = (o, &last);
        // Tasks, in the order they are handed out: packing each shared panel (all of k), the column chunks,
        // then the blocks of rows of the shared panels.
        pool::for_each(threads, shared + head_chunks + row_blocks, &|t| {
            if t < shared {
                // Counted as packed even if packing panics, so that no block waits forever (the pool then
                // reports the panic).
                struct Counted<'a>(&'a AtomicUsize);
                impl Drop for Counted<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::Release);
                    }
                }
                let _counted = Counted(&packed);
                let j0 = t * NR;
                for pc in (0..o.k).step_by(kc_max) {
                    let kc = kc_max.min(o.k - pc);
                    let at = pc * last_cols + j0 * kc;
                    // SAFETY: (panel, slice) pairs are distinct, so their ranges are disjoint; rows
                    // pc..pc+kc and columns j0.. (fewer than NR at the end) are inside op(B).
                    unsafe {
                        pack_b(
                            o.isa,
                            dst.part(at..at + NR * kc),
                            last.b.offset(pc as isize * o.rsb + j0 as isize * o.csb),
                            o.rsb,
                            o.csb,
                            kc,
                            NR.min(last.n - j0),
                        )
                    };
                }
            } else if t < shared + head_chunks {
                let chunk = t - shared;
                let (lo, hi) = (head * chunk / head_chunks, head * (chunk + 1) / head_chunks);
                let mut part = *o;
                part.n = (hi - lo) * NR;
                // SAFETY: hi ≤ head, so these columns are inside op(B) and C; chunks write disjoint columns.
                unsafe {
                    part.b = o.b.offset((lo * NR) as isize * o.csb);
                    part.c = o.c.add(lo * NR);
                    gemm_serial(&part)
                }
            } else {
                let block = t - shared - head_chunks;
                // The packing tasks were handed out before this one, so they are running or done.
                while packed.load(Ordering::Acquire) < shared {
                    std::hint::spin_loop();
                }
                let tiles = block * tall..((block + 1) * tall).min(row_tiles);
                // SAFETY: blocks write disjoint rows of C; every shared panel is packed (above).
                unsafe { gemm_block(last, tiles) };
            }
        });
    });
}

/// The tiles `tiles` (of MR rows) of C, all its columns, over all of k, from op(B) packed whole (`o.b_packed`)
/// and op(A) packed whole or read in place. Each element of C is summed exactly as
/// [`gemm_serial`] sums it.
///
/// # Safety
/// `o` must satisfy `sgemm`'s contract with `b_packed` set, and the block be inside C.
unsafe fn gemm_block(o: &Operands, tiles: std::ops::Range<usize>) {
    let kc_max = kc_for(o.isa);
    PACK.with(|cell| {
        let mut guard = cell.borrow_mut();
        let apack = guard.0.at_least(MR * kc_max.min(o.k));
        let prepacked = !o.a_packed.is_null();
        for pc in (0..o.k).step_by(kc_max) {
            let kc = kc_max.min(o.k - pc);
            // The first k-slice applies the caller's beta; later slices add to what is there.
            let beta = if pc == 0 { o.beta } else { 1.0 };
            for tile in tiles.clone() {
                let i0 = tile * MR;
                let mr = MR.min(o.m - i0);
                let (ap, rsa, csa) = if prepacked {
                    // SAFETY: slice pc and rows i0..i0+MR are inside the packed op(A).
                    let ap = unsafe { o.a_packed.add(pc * o.a_packed_rows + i0 * kc) };
                    (ap, 1, MR as isize)
                } else if mr == MR {
                    // SAFETY: row i0 and column pc are inside op(A).
                    let ap = unsafe { o.a.offset(i0 as isize * o.rsa + pc as isize * o.csa) };
                    (ap, o.rsa, o.csa)
                } else {
                    // A last tile of fewer than MR rows is copied, zero-padded, so the kernel never reads
                    // past A.
                    // SAFETY: rows i0..i0+mr and columns pc..pc+kc are inside op(A).
                    unsafe {
                        pack_a(
                            o.isa,
                            apack,
                            o.a.offset(i0 as isize * o.rsa + pc as isize * o.csa),
                            o.rsa,
                            o.csa,
                            mr,
                            kc,
                        )
                    };
                    (apack.as_ptr(), 1, MR as isize)
                };
                for panel in 0..o.n.div_ceil(NR) {
                    let j0 = panel * NR;
                    // SAFETY: the tile (i0.., j0..) of mr × nr is inside C (caller); A has MR readable rows of
                    // kc, the packed panel kc·NR values.
                    unsafe {
                        tile_kernel(
                            o.isa,
                            kc,
                            ap,
                            rsa,
                            csa,
                            o.b_packed.add(pc * o.b_packed_cols + j0 * kc),
                            o.c.add(i0 * o.ldc + j0),
                            o.ldc,
                            mr,
                            NR.min(o.n - j0),
                            o.alpha,
                            beta,
                        )
                    };
                }
            }
        }
    });
}

/// `C = beta·C` (k = 0).
unsafe fn scale_c(o: &Operands) {
    for i in 0..o.m {
        // SAFETY: row i of C holds n elements (caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(o.c.add(i * o.ldc), o.n) };
        for x in row {
            *x = if o.beta == 0.0 { 0.0 } else { *x * o.beta };
        }
    }
}

thread_local! {
    /// The whole packed op(A) of a product this thread runs with helpers (they read it), kept between calls.
    static SHARED_A: RefCell<PackBuf> = const { RefCell::new(PackBuf::new()) };
    /// The packed op(B) panels that this thread's helpers share (see `split`), kept between calls.
    static SHARED_B: RefCell<PackBuf> = const { RefCell::new(PackBuf::new()) };
    /// Packed A and B of this thread, kept between calls.
    static PACK: RefCell<(PackBuf, PackBuf)> = const { RefCell::new((PackBuf::new(), PackBuf::new())) };
}

/// One cache line of f32.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A growable f32 buffer that starts on a cache line, so that every packed B panel (a multiple of 32 values
/// from the start) does too and the kernel's 16-wide loads never straddle two lines. A large `Vec<f32>`
/// starts 16 bytes past a page (malloc's header), which split every one of them.
struct PackBuf(Vec<Line>);

impl PackBuf {
    const fn new() -> PackBuf {
        PackBuf(Vec::new())
    }

    /// The buffer, grown (zero-filled) to at least `len` values.
    fn at_least(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.0.len() < lines {
            self.0.resize(lines, Line([0.0; 16]));
        }
        // SAFETY: `Line` is 16 f32 with no padding (repr(C), size 64 = align 64), so the vector's lines are
        // 16 f32 each, side by side, borrowed mutably with `self`.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), self.0.len() * 16)
        }
    }
}

/// One thread's GEMM over the whole of `o`.
unsafe fn gemm_serial(o: &Operands) {
    PACK.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (apack, bpack) = &mut *guard;
        let prepacked = !o.a_packed.is_null();
        let pack_all = !prepacked && packs_a(o);
        let a_need = if pack_all {
            MC.min(o.m).div_ceil(MR) * MR
        } else {
            MR
        } * kc_for(o.isa).min(o.k);
        let b_need = NC.min(o.n.div_ceil(NR) * NR) * kc_for(o.isa).min(o.k);
        let (apack, bpack) = (apack.at_least(a_need), bpack.at_least(b_need));
        for jc in (0..o.n).step_by(NC) {
            let nc = NC.min(o.n - jc);
            for pc in (0..o.k).step_by(kc_for(o.isa)) {
                let kc = kc_for(o.isa).min(o.k - pc);
                // The first k-slice applies the caller's beta; later slices add to what is there.
                let beta = if pc == 0 { o.beta } else { 1.0 };
                // SAFETY: rows pc..pc+kc and columns jc..jc+nc are inside op(B).
                unsafe {
                    pack_b(
                        o.isa,
                        bpack,
                        o.b.offset(pc as isize * o.rsb + jc as isize * o.csb),
                        o.rsb,
                        o.csb,
                        kc,
                        nc,
                    )
                };
                for ic in (0..o.m).step_by(MC) {
                    let mc = MC.min(o.m - ic);
                    // op(A) is read in place (the kernel only broadcasts its elements); only a last panel
                    // of fewer than MR rows is copied, zero-padded, so the kernel never reads past A. A
                    // packed op(A) copies the whole block: `full` rows in place is then 0.
                    let full = if pack_all { 0 } else { mc / MR * MR };
                    if full < mc && !prepacked {
                        // SAFETY: rows ic+full..ic+mc and columns pc..pc+kc are inside op(A).
                        unsafe {
                            pack_a(
                                o.isa,
                                apack,
                                o.a.offset((ic + full) as isize * o.rsa + pc as isize * o.csa),
                                o.rsa,
                                o.csa,
                                mc - full,
                                kc,
                            )
                        };
                    }
                    for ir in (0..mc).step_by(MR) {
                        let mr = MR.min(mc - ir);
                        let (ap, rsa, csa) = if prepacked {
                            // SAFETY: slice pc and rows ic+ir..+MR are inside the packed op(A).
                            let ap =
                                unsafe { o.a_packed.add(pc * o.a_packed_rows + (ic + ir) * kc) };
                            (ap, 1, MR as isize)
                        } else if ir < full {
                            // SAFETY: row ic+ir and column pc are inside op(A).
                            let ap = unsafe {
                                o.a.offset((ic + ir) as isize * o.rsa + pc as isize * o.csa)
                            };
                            (ap, o.rsa, o.csa)
                        } else {
                            (apack[(ir - full) * kc..].as_ptr(), 1, MR as isize)
                        };
                        for jr in (0..nc).step_by(NR) {
                            let nr = NR.min(nc - jr);
                            let bp = &bpack[(jr / NR) * kc * NR..][..kc * NR];
                            // SAFETY: the tile (ic+ir.., jc+jr..) of mr×nr is inside C; A has MR readable
                            // rows of kc (in place or padded), the B panel kc·NR values.
                            unsafe {
                                tile_kernel(
                                    o.isa,
                                    kc,
                                    ap,
                                    rsa,
                                    csa,
                                    bp.as_ptr(),
                                    o.c.add((ic + ir) * o.ldc + jc + jr),
                                    o.ldc,
                                    mr,
                                    nr,
                                    o.alpha,
                                    beta,
                                )
                            };
                        }
                    }
                }
            }
        }
    });
}

/// One MR×NR tile of C: C[0..mr, 0..nr] = alpha·(A·Bp) + beta·C, with MR rows of A readable (element (i, p) at
/// `a[i·rsa + p·csa]`) and one packed B panel (kc×NR), on `isa`'s kernel.
///
/// # Safety
/// The CPU must have `isa`; A's MR rows and kc columns readable, the panel kc·NR values, the tile inside C.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_kernel(
    isa: Isa,
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        match isa {
            Isa::Avx512 => {
                // A last tile of few rows runs a shorter kernel (no work on padding).
                let kernel = match mr {
                    1..=4 => kernel::<4>,
                    5..=8 => kernel::<8>,
                    _ => kernel::<MR>,
                };
                kernel(kc, a, rsa, csa, b, c, ldc, mr, nr, alpha, beta)
            }
            // The MR rows as tiles of AVX2_ROWS over the same B panel; the rows past mr that a last tile
            // reads are the panel's padding.
            Isa::Avx2 => {
                for i0 in (0..mr).step_by(AVX2_ROWS) {
                    kernel_avx2(
                        kc,
                        a.offset(i0 as isize * rsa),
                        rsa,
                        csa,
                        b,
                        c.add(i0 * ldc),
                        ldc,
                        AVX2_ROWS.min(mr - i0),
                        nr,
                        alpha,
                        beta,
                    )
                }
            }
        }
    }
}

/// Packs op(A)[0..mc, 0..kc] (element (i, p) at `a[i·rsa + p·csa]`) into MR-row panels `[panel][p][MR]`.
unsafe fn pack_a(
    isa: Isa,
    dst: &mut [f32],
    a: *const f32,
    rsa: isize,
    csa: isize,
    mc: usize,
    kc: usize,
) {
    for (panel, out) in dst[..mc.div_ceil(MR) * MR * kc]
        .chunks_exact_mut(MR * kc)
        .enumerate()
    {
        let i0 = panel * MR;
        let rows = MR.min(mc - i0);
        if rsa == 1 {
            // SAFETY: rows i0..i0+rows < mc at columns < kc are inside op(A), side by side since rsa == 1;
            // `out` holds kc·MR values; the CPU has `isa` (caller).
            unsafe {
                match isa {
                    Isa::Avx512 => pack_a_panel_cols(out, a.add(i0), csa, rows, kc),
                    Isa::Avx2 => pack_a_panel_cols_avx2(out, a.add(i0), csa, rows, kc),
                }
            };
            continue;
        }
        if rows < MR {
            out.fill(0.0);
        }
        for i in 0..rows {
            // SAFETY: row i0+i < mc and columns < kc are inside op(A) (caller's contract).
            let row = unsafe { a.offset((i0 + i) as isize * rsa) };
            for p in 0..kc {
                out[p * MR + i] = unsafe { *row.offset(p as isize * csa) };
            }
        }
    }
}

/// Packs op(B)[0..kc, 0..nc] (element (p, j) at `b[p·rsb + j·csb]`) into NR-column panels `[panel][p][NR]`.
unsafe fn pack_b(
    isa: Isa,
    dst: &mut [f32],
    b: *const f32,
    rsb: isize,
    csb: isize,
    kc: usize,
    nc: usize,
) {
    for (panel, out) in dst[..nc.div_ceil(NR) * NR * kc]
        .chunks_exact_mut(NR * kc)
        .enumerate()
    {
        let j0 = panel * NR;
        let cols = NR.min(nc - j0);
        if csb == 1 {
            // SAFETY: rows < kc and columns j0..j0+cols < nc are inside op(B), contiguous in a row since
            // csb == 1; `out` holds kc·NR values; the CPU has `isa` (caller).
            unsafe {
                match isa {
                    Isa::Avx512 => pack_b_panel_rows(out, b.add(j0), rsb, cols, kc),
                    Isa::Avx2 => pack_b_panel_rows_avx2(out, b.add(j0), rsb, cols, kc),
                }
            };
        } else if rsb == 1 && isa == Isa::Avx512 {
            // SAFETY: as above, with columns contiguous (rsb == 1).
            unsafe { pack_b_panel_cols(out, b.offset(j0 as isize * csb), csb, cols, kc) };
        } else {
            if cols < NR {
                out.fill(0.0);
            }
            for j in 0..cols {
                // SAFETY: column j0+j < nc and rows < kc are inside op(B).
                let col = unsafe { b.offset((j0 + j) as isize * csb) };
                for p in 0..kc {
                    out[p * NR + j] = unsafe { *col.offset(p as isize * rsb) };
                }
            }
        }
    }
}

/// One NR-column panel `[p][NR]` of an op(B) with contiguous rows (`b[p·rsb + j]`, j < cols ≤ NR): two 16-wide
/// loads and stores per k, masked for a last panel of fewer columns (which zero-fills its padding): a slice
/// copy per k would call libc's memmove for every 128 bytes.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b_panel_rows(out: &mut [f32], b: *const f32, rsb: isize, cols: usize, kc: usize) {
    use std::arch::x86_64::*;
    assert!(out.len() >= kc * NR && cols <= NR);
    let m0: __mmask16 = if cols >= 16 {
        0xFFFF
    } else {
        (1u16 << cols) - 1
    };
    let m1: __mmask16 = match cols {
        NR => 0xFFFF,
        0..=16 => 0,
        _ => (1u16 << (cols - 16)) - 1,
    };
    let dst = out.as_mut_ptr();
    for p in 0..kc {
        // SAFETY: row p < kc holds `cols` readable values from `b` (caller), and masked-off lanes are not
        // read; out[p·NR .. p·NR + NR] is inside `out` (asserted).
        unsafe {
            let src = b.offset(p as isize * rsb);
            _mm512_storeu_ps(dst.add(p * NR), _mm512_maskz_loadu_ps(m0, src));
            _mm512_storeu_ps(dst.add(p * NR + 16), _mm512_maskz_loadu_ps(m1, src.add(16)));
        }
    }
}

/// One NR-column panel `[p][NR]` of a transposed op(B) (`b[p + j·csb]`, j < cols ≤ NR: the weight read as Wᵀ)
/// by 16×16 transposes in registers: 16 columns of 16 k each are loaded, transposed and stored as 16 rows of
/// the panel (masked for the last k and for missing columns, which are zero), instead of element by element
/// (strided 4-byte stores).
#[target_feature(enable = "avx512f")]
unsafe fn pack_b_panel_cols(out: &mut [f32], b: *const f32, csb: isize, cols: usize, kc: usize) {
    use std::arch::x86_64::*;
    assert!(out.len() >= kc * NR && cols <= NR);
    let dst = out.as_mut_ptr();
    for half in 0..NR / 16 {
        let j0 = half * 16;
        let width = cols.saturating_sub(j0).min(16);
        for p0 in (0..kc).step_by(16) {
            let depth = (kc - p0).min(16);
            let mask: __mmask16 = if depth == 16 {
                0xFFFF
            } else {
                (1u16 << depth) - 1
            };
            let mut r = [_mm512_setzero_ps(); 16];
            for (jj, row) in r.iter_mut().enumerate().take(width) {
                // SAFETY: column j0+jj < cols holds k values p0..p0+depth, contiguous (rsb == 1; caller);
                // masked-off lanes are not read.
                *row = unsafe {
                    _mm512_maskz_loadu_ps(mask, b.offset((j0 + jj) as isize * csb).add(p0))
                };
            }
            let t = transpose16(r);
            for (p, row) in t.iter().enumerate().take(depth) {
                // SAFETY: row p0+p < kc of the panel: out[(p0+p)·NR + j0 ..][..16] is inside `out` (asserted).
                unsafe { _mm512_storeu_ps(dst.add((p0 + p) * NR + j0), *row) };
            }
        }
    }
}

/// The 16×16 transpose of `r` (row i, lane p → row p, lane i): unpack 32-bit, unpack 64-bit, then two rounds
/// of 128-bit lane shuffles.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut a = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // b[4i + q], 128-bit lane L: k = 4L + q of rows 4i..4i+4.
    let mut b = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let pd = |x: __m512| _mm512_castps_pd(x);
        let (lo0, hi0, lo1, hi1) = (a[4 * i], a[4 * i + 2], a[4 * i + 1], a[4 * i + 3]);
        b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(lo0), pd(hi0)));
        b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(lo0), pd(hi0)));
        b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(lo1), pd(hi1)));
        b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(lo1), pd(hi1)));
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let (b0, b1, b2, b3) = (b[q], b[4 + q], b[8 + q], b[12 + q]);
        let lo01 = _mm512_shuffle_f32x4::<0b01_00_01_00>(b0, b1);
        let lo23 = _mm512_shuffle_f32x4::<0b01_00_01_00>(b2, b3);
        let hi01 = _mm512_shuffle_f32x4::<0b11_10_11_10>(b0, b1);
        let hi23 = _mm512_shuffle_f32x4::<0b11_10_11_10>(b2, b3);
        t[q] = _mm512_shuffle_f32x4::<0b10_00_10_00>(lo01, lo23);
        t[4 + q] = _mm512_shuffle_f32x4::<0b11_01_11_01>(lo01, lo23);
        t[8 + q] = _mm512_shuffle_f32x4::<0b10_00_10_00>(hi01, hi23);
        t[12 + q] = _mm512_shuffle_f32x4::<0b11_01_11_01>(hi01, hi23);
    }
    t
}

/// One MR-row panel `[p][MR]` of a transposed op(A) (`a[i + p·csa]`, i < rows ≤ MR): one masked 16-wide load
/// and store per k (zero-filling the padding of a last panel of fewer rows), instead of a memmove call for
/// every 48 bytes.
#[target_feature(enable = "avx512f")]
unsafe fn pack_a_panel_cols(out: &mut [f32], a: *const f32, csa: isize, rows: usize, kc: usize) {
    use std::arch::x86_64::*;
    assert!(out.len() >= kc * MR && rows <= MR);
    let load: __mmask16 = (1u16 << rows) - 1;
    let store: __mmask16 = (1u16 << MR) - 1;
    let dst = out.as_mut_ptr();
    for p in 0..kc {
        // SAFETY: k = p < kc holds `rows` readable values from `a` (caller), and masked-off lanes are not
        // read; the store writes out[p·MR .. p·MR + MR], inside `out` (asserted).
        unsafe {
            let v = _mm512_maskz_loadu_ps(load, a.offset(p as isize * csa));
            _mm512_mask_storeu_ps(dst.add(p * MR), store, v);
        }
    }
}

/// C[0..mr, 0..nr] = alpha·(A·Bp) + beta·C for R ≥ mr rows of A (element (i, p) at `a[i·rsa + p·csa]`, all
/// R rows readable) and one packed B panel (kc×NR): R×32 accumulators in zmm registers.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..kc {
        // The B panel is KC·NR·4 bytes, up to 128 KiB: it streams from L2, two lines per k, faster than the
        // next-line prefetcher brings them. A prefetch never faults, so running past the panel is harmless.
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + B_PREFETCH_K) * NR).cast());
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + B_PREFETCH_K) * NR + 16).cast());
        // SAFETY: the B panel holds kc·NR values; A's R rows and kc columns are readable (caller).
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_ps(b.add(p * NR)),
                _mm512_loadu_ps(b.add(p * NR + 16)),
            )
        };
        let ap = unsafe { a.offset(p as isize * csa) };
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(unsafe { *ap.offset(i as isize * rsa) });
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
    }
    let va = _mm512_set1_ps(alpha);
    let vb = _mm512_set1_ps(beta);
    let m0: __mmask16 = if nr >= 16 { 0xFFFF } else { (1u16 << nr) - 1 };
    let m1: __mmask16 = if nr >= NR {
        0xFFFF
    } else if nr <= 16 {
        0
    } else {
        (1u16 << (nr - 16)) - 1
    };
    for (i, row) in acc.iter().enumerate().take(mr) {
        // SAFETY: row i < mr of the tile and its first nr columns are inside C; masks cover nr exactly.
        unsafe {
            let ci = c.add(i * ldc);
            let mut r0 = _mm512_mul_ps(row[0], va);
            let mut r1 = _mm512_mul_ps(row[1], va);
            if beta != 0.0 {
                r0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, ci), vb, r0);
                r1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, ci.add(16)), vb, r1);
            }
            _mm512_mask_storeu_ps(ci, m0, r0);
            _mm512_mask_storeu_ps(ci.add(16), m1, r1);
        }
    }
}

// The AVX2 packing and tiling are written for these.
const _: () = assert!(MR == 2 * AVX2_ROWS && NR == 2 * AVX2_COLS);

/// Rows of an AVX2 tile: 6 rows × 2 vectors of 8 = 12 accumulators, plus two vectors of B and one broadcast of
/// A: 15 of the 16 ymm registers (BLIS's Haswell tile). A 12×32 panel pair is four such tiles: two row halves
/// times two column halves of the B panel.
const AVX2_ROWS: usize = 6;
/// Columns of an AVX2 tile: half a B panel.
const AVX2_COLS: usize = 16;

/// The lane mask of an 8-wide vector whose first `lanes` (≤ 8) lanes are on.
#[target_feature(enable = "avx2")]
fn lane_mask(lanes: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    const ONES_THEN_ZEROS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    let lanes = lanes.min(8);
    // SAFETY: 8 - lanes + 8 ≤ 16 values of the table are read.
    unsafe { _mm256_loadu_si256(ONES_THEN_ZEROS.as_ptr().add(8 - lanes).cast()) }
}

/// [`kernel`] on AVX2: C[0..mr, 0..nr] = alpha·(A·Bp) + beta·C for mr ≤ AVX2_ROWS rows and nr ≤ 32 columns,
/// with AVX2_ROWS rows of A readable (element (i, p) at `a[i·rsa + p·csa]`) and one packed B panel (kc×NR),
/// as one 6×16 tile per column half of the panel.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx2(
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    alpha: f32,
    beta: f32,
) {
    use std::arch::x86_64::*;
    let va = _mm256_set1_ps(alpha);
    let vb = _mm256_set1_ps(beta);
    for j0 in (0..nr).step_by(AVX2_COLS) {
        let mut acc = [[_mm256_setzero_ps(); 2]; AVX2_ROWS];
        for p in 0..kc {
            // SAFETY: A's AVX2_ROWS rows and kc columns are readable (caller); row p of the panel holds NR
            // values from `b`, of which this half reads j0..j0+16.
            unsafe {
                let bp = b.add(p * NR + j0);
                let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                let ap = a.offset(p as isize * csa);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*ap.offset(i as isize * rsa));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
            }
        }
        let cols = (nr - j0).min(AVX2_COLS);
        let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(8))];
        for (i, row) in acc.iter().enumerate().take(mr) {
            for (j, (&v, &mask)) in row.iter().zip(&masks).enumerate() {
                if cols <= 8 * j {
                    break;
                }
                // SAFETY: row i < mr of the tile and its columns j0+8j.. (those under the mask, < nr) are
                // inside C.
                unsafe {
                    let cij = c.add(i * ldc + j0 + 8 * j);
                    let mut r = _mm256_mul_ps(v, va);
                    if beta != 0.0 {
                        r = _mm256_fmadd_ps(_mm256_maskload_ps(cij, mask), vb, r);
                    }
                    _mm256_maskstore_ps(cij, mask, r);
                }
            }
        }
    }
}

/// [`pack_b_panel_rows`] on AVX2: four masked 8-wide loads and stores per k (padding zero-filled).
#[target_feature(enable = "avx2")]
unsafe fn pack_b_panel_rows_avx2(
    out: &mut [f32],
    b: *const f32,
    rsb: isize,
    cols: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    assert!(out.len() >= kc * NR && cols <= NR);
    let masks: [__m256i; NR / 8] = std::array::from_fn(|j| lane_mask(cols.saturating_sub(8 * j)));
    let dst = out.as_mut_ptr();
    for p in 0..kc {
        for (j, &mask) in masks.iter().enumerate() {
            // SAFETY: row p < kc holds `cols` readable values from `b` (caller) and masked-off lanes are not
            // read; out[p·NR + 8j ..][..8] is inside `out` (asserted).
            unsafe {
                let v = _mm256_maskload_ps(b.offset(p as isize * rsb).add(8 * j), mask);
                _mm256_storeu_ps(dst.add(p * NR + 8 * j), v);
            }
        }
    }
}

/// [`pack_a_panel_cols`] on AVX2: the MR (12) values of one k as an 8-wide and a 4-wide masked load, stored
/// whole (rows past `rows` as zeros).
#[target_feature(enable = "avx2")]
unsafe fn pack_a_panel_cols_avx2(
    out: &mut [f32],
    a: *const f32,
    csa: isize,
    rows: usize,
    kc: usize,
) {
    use std::arch::x86_64::*;
    assert!(out.len() >= kc * MR && rows <= MR);
    let lo = lane_mask(rows);
    let hi = _mm_castps_si128(_mm256_castps256_ps128(_mm256_castsi256_ps(lane_mask(
        rows.saturating_sub(8),
    ))));
    let dst = out.as_mut_ptr();
    for p in 0..kc {
        // SAFETY: k = p < kc holds `rows` readable values from `a` (caller), masked-off lanes are not read;
        // out[p·MR ..][..12] is inside `out` (asserted).
        unsafe {
            let src = a.offset(p as isize * csa);
            _mm256_storeu_ps(dst.add(p * MR), _mm256_maskload_ps(src, lo));
            _mm_storeu_ps(dst.add(p * MR + 8), _mm_maskload_ps(src.add(8), hi));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_buffers_start_on_a_cache_line() {
        let mut buf = PackBuf::new();
        for len in [1, 1000, 1 << 20] {
            let slice = buf.at_least(len);
            assert!(slice.len() >= len);
            assert_eq!(slice.as_ptr() as usize % 64, 0, "len {len}");
        }
    }

    /// Naive f64 reference of the same product.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
        beta: f32,
        c: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                }
                let prev = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * n + j] as f64
                };
                out[i * n + j] = (alpha as f64 * s + prev) as f32;
            }
        }
        out
    }

    /// The instruction sets this CPU has, saying which it lacks.
    fn isas_here(test: &str) -> Vec<Isa> {
        let mut isas = Vec::new();
        for (isa, has) in [
            (Isa::Avx512, std::arch::is_x86_feature_detected!("avx512f")),
            (
                Isa::Avx2,
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
            ),
        ] {
            if has {
                isas.push(isa);
            } else {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test} for {}: not on this CPU",
                    isa.name()
                );
            }
        }
        isas
    }

    #[test]
    fn matches_reference_every_transpose_and_edge() {
        for isa in isas_here("matches_reference_every_transpose_and_edge") {
            matches_reference(isa);
        }
    }

    fn matches_reference(isa: Isa) {
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for &(m, n, k) in &[
            (1, 1, 1),
            (16, 1, 51),
            (16, 51, 1),
            (13, 33, 7),
            (12, 32, 256),
            (25, 65, 300),
            (150, 70, 513),
            (150, 200, 513),
            (300, 1030, 20),
            // Two k slices (k > KC): the second adds to what the first wrote.
            (30, 140, 1100),
            // Split across threads (from 2^21 multiply-adds), with a last tile and panel cut short.
            (257, 100, 300),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            for ta in [false, true] {
                for tb in [false, true] {
                    let sa = if ta { (1, m) } else { (k, 1) };
                    let sb = if tb { (1, k) } else { (n, 1) };
                    for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-2.0, 0.25)] {
                        let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                        let mut on_one_thread = Vec::new();
                        // 3 and 8 threads cut C in other ways (where the pool has another size, their tasks run
                        // on this thread, in order).
                        for threads in [1, 2, 3, 8] {
                            let mut c = c0.clone();
                            if beta == 0.0 {
                                c.iter_mut().for_each(|x| *x = f32::NAN);
                            }
                            let want = reference(m, k, n, alpha, &a, sa, &b, sb, beta, &c);
                            // SAFETY: the slices cover the shapes with these strides.
                            unsafe {
                                sgemm(
                                    isa,
                                    threads,
                                    m,
                                    k,
                                    n,
                                    alpha,
                                    a.as_ptr(),
                                    sa.0 as isize,
                                    sa.1 as isize,
                                    b.as_ptr(),
                                    sb.0 as isize,
                                    sb.1 as isize,
                                    beta,
                                    c.as_mut_ptr(),
                                    n,
                                )
                            };
                            for (x, y) in c.iter().zip(&want) {
                                let tol = 1e-5 * (k as f32).sqrt() * (1.0 + y.abs());
                                assert!(
                                    (x - y).abs() <= tol,
                                    "{isa:?} {m}x{n}x{k} ta={ta} tb={tb} α={alpha} β={beta} t={threads}: {x} vs {y}"
                                );
                            }
                            // However the threads cut C, each element is summed in the same order.
                            let bits: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
                            if threads == 1 {
                                on_one_thread = bits;
                            } else {
                                assert!(
                                    bits == on_one_thread,
                                    "{isa:?} {m}x{n}x{k} ta={ta} tb={tb} α={alpha} β={beta}: {threads} threads differ from 1"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
