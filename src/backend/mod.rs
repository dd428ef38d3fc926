//! The ops one training step needs, as one trait with two implementations: `cpu` (the reference, generic over
//! f32 and f64 so gradients can be checked in f64) and `cuda` (our kernels in `kernels/*.cu`, f32).
//!
//! The training loop in `train.rs` only ever holds [`BufId`]s and [`Region`]s, never host memory, so a GPU
//! backend keeps everything on the device: a step moves nothing between host and device, the batch indices
//! of a whole epoch go up once, and the per-step losses come back once per epoch.
//!
//! Layout conventions, shared by both backends and the kernels: every matrix is row-major and contiguous, its
//! leading dimension is its column count. `Trans::T` means "read the stored matrix transposed", which is how
//! the decoder uses the encoder's kernel: one buffer, two orientations, no copy.

pub mod cpu;
pub mod cuda;
pub mod noise;
pub mod products;
pub mod shuffle;

use crate::activation::Activation;
use crate::error::{Error, Result};

pub use crate::real::Real;

pub use cpu::CpuBackend;
pub use noise::NoiseParams;

/// A buffer of scalars owned by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufId(pub usize);

/// A buffer of u32 row indices owned by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdxId(pub usize);

/// A buffer of 16-bit floats (the bit patterns of f16 or bf16): a data set kept at half the size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HalfId(pub usize);

/// A recorded run of ops that a backend replays with one call (a CUDA graph): see [`Backend::begin_capture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphId(pub usize);

/// The 16-bit float format of a [`HalfId`] buffer. The codes are `gather_rows_half`'s `format` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum HalfFormat {
    /// IEEE binary16: 11 bits of precision, range ±65504.
    F16 = 0,
    /// bfloat16: 8 bits of precision, f32's range.
    Bf16 = 1,
}

impl HalfFormat {
    /// The bits of `x` in this format, rounded to nearest even; `None` when `x` is finite but out of range.
    pub fn encode(self, x: f32) -> Option<u16> {
        let bits = match self {
            HalfFormat::F16 => half::f16::from_f32(x).to_bits(),
            HalfFormat::Bf16 => half::bf16::from_f32(x).to_bits(),
        };
        (self.decode(bits).is_finite() || !x.is_finite()).then_some(bits)
    }
    /// The f32 these bits stand for (exact: both formats are subsets of f32).
    pub fn decode(self, bits: u16) -> f32 {
        match self {
            HalfFormat::F16 => half::f16::from_bits(bits).to_f32(),
            HalfFormat::Bf16 => half::bf16::from_bits(bits).to_f32(),
        }
    }
}

/// `len` scalars of buffer `buf` starting at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub buf: BufId,
    pub offset: usize,
    pub len: usize,
}

impl Region {
    pub fn whole(buf: BufId, len: usize) -> Region {
        Region {
            buf,
            offset: 0,
            len,
        }
    }
    /// The sub-region `[offset, offset + len)` of this region.
    pub fn sub(self, offset: usize, len: usize) -> Region {
        assert!(
            offset + len <= self.len,
            "sub-region {offset}+{len} exceeds region of {}",
            self.len
        );
        Region {
            buf: self.buf,
            offset: self.offset + offset,
            len,
        }
    }
    /// The first `len` scalars.
    pub fn prefix(self, len: usize) -> Region {
        self.sub(0, len)
    }
}

/// `len` indices of index buffer `buf` starting at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxRegion {
    pub buf: IdxId,
    pub offset: usize,
    pub len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trans {
    /// Use the stored matrix as it is.
    N,
    /// Use the stored matrix transposed (a stride swap or a kernel flag, never a copy).
    T,
}

/// `C = alpha·op(A)·op(B) + beta·C` with op(A) m×k, op(B) k×n, C m×n, all row-major.
/// A is stored m×k (N) or k×m (T); B is stored k×n (N) or n×k (T). `beta == 0` never reads C, so C may hold
/// garbage (or NaN) before the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub trans_a: Trans,
    pub trans_b: Trans,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// A [`Backend::gemm`]'s arguments: the product, then a, b and c.
pub type GemmArgs = (Gemm, Region, Region, Region);

impl Gemm {
    /// `C = op(A)·op(B)`: α = 1, β = 0 (C is overwritten, never read).
    pub fn new(trans_a: Trans, trans_b: Trans, m: usize, n: usize, k: usize) -> Gemm {
        Gemm {
            trans_a,
            trans_b,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
        }
    }
    /// The same product ADDED to C (β = 1): how the two uses of a tied kernel sum into one gradient.
    pub fn accumulate(self) -> Gemm {
        Gemm { beta: 1.0, ..self }
    }
    /// The same product scaled by `alpha`.
    pub fn scaled(self, alpha: f32) -> Gemm {
        Gemm { alpha, ..self }
    }
}

/// Where swap noise takes its donor values: the training set, as the backend holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Donors {
    /// (rows, cols) scalars.
    F32(Region),
    /// (rows, cols) 16-bit floats of a format, converted exactly as they are read.
    Half(HalfId, HalfFormat),
}

/// What [`Backend::corrupt_rows`] draws from besides the batch: the training set (swap noise's donors), the
/// mask values, the epoch's key in backend memory (a CUDA graph replays with the key of the epoch it runs
/// in) and the probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseSource {
    /// The training set, (donor_rows, cols).
    pub donors: Donors,
    pub donor_rows: usize,
    /// (cols): what mask noise puts in a cell.
    pub fill: Region,
    /// (3) u32: the epoch's [`noise::key_words`].
    pub key: IdxRegion,
    pub params: NoiseParams,
}

/// Adam's constants, in Keras's form: `m += (g − m)(1 − β1)`, `v += (g² − v)(1 − β2)`,
/// `w −= alpha·m/(√v + ε)` with `alpha = lr·√(1−β2ᵗ)/(1−β1ᵗ)` ([`crate::optim::Optimizer::adam_alpha`]).
/// alpha, the one value that changes from step to step, is not here: [`Backend::adam_step`] reads it from
/// backend memory, so that a step's ops are the same at every step (a CUDA graph captures them once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
}

/// The ops of a training step. Each op has a kernel in `kernels/*.cu`, launched from the file of the same
/// name in `cuda/`, and a CPU twin in the file of the same name in `cpu/` (`gemm`: kernels/gemm.cu,
/// cuda/gemm.rs, cpu/gemm.rs); the doc of each method states the layouts. Regions passed as outputs never
/// overlap regions passed as inputs.
pub trait Backend {
    type Scalar: Real;

    /// A short human name ("cpu (2 threads)", "cuda:0 NVIDIA H100").
    fn name(&self) -> String;
    /// A new buffer of `len` zeros.
    fn alloc(&mut self, len: usize) -> Result<BufId>;
    /// A new index buffer of `len` zeros.
    fn alloc_indices(&mut self, len: usize) -> Result<IdxId>;
    /// Bytes this backend has allocated for buffers and index buffers so far.
    fn allocated_bytes(&self) -> usize;
    /// Bytes the device has free now, where memory is scarce (a GPU); None where the host's memory is the
    /// backend's (the CPU).
    fn free_memory(&self) -> Option<usize> {
        None
    }
    /// Host → backend copy of `src` into `dst` (`src.len() == dst.len`).
    fn upload(&mut self, dst: Region, src: &[Self::Scalar]) -> Result<()>;
    /// Host → backend copy of indices into `dst[offset..offset + src.len()]`.
    fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()>;
    /// The row order of a shuffled epoch into `dst[0..rows]`: `dst[i] = shuffle::shuffled_row(i, rows, …)`
    /// for `key` (a [`shuffle::shuffle_key`]). The CUDA backend computes it on the GPU (`shuffle_order` in
    /// kernels/data.cu), so no order is copied up at each epoch. This default computes it on the host and
    /// copies it.
    fn shuffle_order(&mut self, dst: IdxId, rows: usize, key: u64) -> Result<()> {
        let mut order = vec![0; rows];
        shuffle::fill_order(&mut order, key);
        self.upload_indices(dst, 0, &order)
    }
    /// Host → backend copy of `src` into `dst`, which may overlap the ops queued since the previous
    /// `prefetch` call: those must not use `dst`. Ops queued before the previous call (before the first
    /// call: every op queued so far, the allocation of `dst` among them) are done before the copy starts,
    /// and ops queued after this call see the copied values. A batch of a data set kept on the
    /// host is copied this way, into one of two buffers by turns, while the GPU works on the other. This
    /// default is `upload` (nothing to overlap).
    fn prefetch(&mut self, dst: Region, src: &[Self::Scalar]) -> Result<()> {
        self.upload(dst, src)
    }
    /// Backend → host copy of `src` into `dst` (`dst.len() == src.len`). Waits for queued work.
    fn download(&mut self, src: Region, dst: &mut [Self::Scalar]) -> Result<()>;
    /// Sets every element of `dst` to `value`.
    fn fill(&mut self, dst: Region, value: f32) -> Result<()>;

    /// A new buffer of `len` 16-bit floats (zeros).
    fn alloc_half(&mut self, len: usize) -> Result<HalfId>;
    /// Host → backend copy of 16-bit float bit patterns into the whole of `dst`.
    fn upload_half(&mut self, dst: HalfId, src: &[u16]) -> Result<()>;
    /// out is (idx.len, cols): `out[r] = to_f32(data[idx[r]])`; data is (rows, cols) 16-bit floats of
    /// `format`, converted exactly while gathering (so the batch is f32 as always).
    fn gather_rows_half(
        &mut self,
        data: HalfId,
        format: HalfFormat,
        cols: usize,
        idx: IdxRegion,
        out: Region,
    ) -> Result<()>;
    /// out is (idx.len, cols): `out[r] = data[idx[r]]`; data is (rows, cols).
    fn gather_rows(&mut self, data: Region, cols: usize, idx: IdxRegion, out: Region)
        -> Result<()>;
    /// clean and out are (idx.len, cols), idx[r] the row of the training set (`source.donors`) that batch
    /// row r holds: out = clean with the noise of [`noise`] (swap, then mask, then Gaussian), drawn for each
    /// cell from (the key, its row idx[r], its column) alone: `out[r] = noise::corrupt_row(clean[r], idx[r],
    /// …)`, bit for bit on every backend.
    fn corrupt_rows(
        &mut self,
        clean: Region,
        cols: usize,
        idx: IdxRegion,
        source: NoiseSource,
        out: Region,
    ) -> Result<()>;
    /// See [`Gemm`]. a, b, c are the stored matrices.
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()>;
    /// `first`, then `second` (each a [`Backend::gemm`]'s arguments): the backward pass's two products of one
    /// layer, which read the same gradient. Where neither writes a buffer the other uses, the CPU runs two
    /// small ones side by side, one per thread, instead of each split across the threads in turn; the
    /// results are the same bits either way. This default runs them in turn.
    fn gemm_pair(&mut self, first: GemmArgs, second: GemmArgs) -> Result<()> {
        self.gemm(first.0, first.1, first.2, first.3)?;
        self.gemm(second.0, second.1, second.2, second.3)
    }
    /// z is (rows, cols), bias is (cols): `z = f(z + bias)` in place.
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()>;
    /// A layer's forward pass: `c = f(op(a)·op(b) + bias)` for a product with α = 1, β = 0 (`bias` is
    /// (g.n)). The same as [`Backend::gemm`] then [`Backend::bias_act`], which is what this default does; the
    /// CUDA backend fuses the two into the GEMM's epilogue (one launch and one pass over c fewer) with the
    /// same rounding.
    fn gemm_bias_act(
        &mut self,
        g: Gemm,
        a: Region,
        b: Region,
        c: Region,
        bias: Region,
        act: Activation,
    ) -> Result<()> {
        self.gemm(g, a, b, c)?;
        self.bias_act(c, g.n, bias, act)
    }
    /// grad and y are (rows, cols): `grad *= f'(y)` in place, with y = f(z) the layer's output.
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()>;
    /// pred, target, grad are (rows, cols): `grad = 2/count·(pred − target)·f'(pred)` (the MSE gradient taken
    /// through the output activation f), and `loss[0] = Σ (pred − target)²` (overwritten).
    fn mse_backward(
        &mut self,
        pred: Region,
        target: Region,
        act: Activation,
        count: usize,
        grad: Region,
        loss: Region,
    ) -> Result<()>;
    /// m is (rows, cols), out is (cols): `out[j] = Σ_r m[r, j]` (overwritten).
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()>;
    /// Keras SGD over a flat buffer: `v = momentum·v − lr·g; w += v`. v is in a buffer of its own.
    fn sgd_step(&mut self, w: Region, g: Region, v: Region, lr: f32, momentum: f32) -> Result<()>;
    /// Keras Adam over a flat buffer; see [`AdamConfig`]. `alpha` is (1): this step's alpha, in a buffer
    /// other than the other four's. m and v are each in a buffer of its own.
    fn adam_step(
        &mut self,
        w: Region,
        g: Region,
        m: Region,
        v: Region,
        alpha: Region,
        cfg: AdamConfig,
    ) -> Result<()>;

    // The ops of the PCA-principle constraints (`train/constraints.rs`); their matrix products go through
    // `gemm`. A value that depends on device data (a norm) stays on the backend: it is passed as a region of
    // one scalar, never read back to the host.

    /// m is (n, n): `m[i, i] = scale·m[i, i] + shift` for every i; the other elements are untouched.
    /// `scale == 0` never reads the diagonal (it becomes `shift`).
    fn diagonal_affine(&mut self, m: Region, n: usize, scale: f32, shift: f32) -> Result<()>;
    /// x is (n), out is (1): `out[0] = Σ x[i]²` (overwritten), the float squares summed in f64 and rounded
    /// once; 0 for an empty x.
    fn sum_squares(&mut self, x: Region, out: Region) -> Result<()>;
    /// x is (n), sum_sq is (1): `x[i] /= √sum_sq[0]` when `sum_sq[0] > 0`; otherwise x is left as it is
    /// (then x is usually all zeros: sum_sq is its own sum of squares).
    fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()>;
    /// m is (rows, cols): every column is divided by its Euclidean norm in place, `m[:, j] /= ‖m[:, j]‖₂`
    /// (the float squares summed in f64, the root rounded once); a column of zeros is left as it is.
    fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()>;
    /// m and out are (rows, cols): `out[r, j] = m[r, j] − μ_j` with `μ_j = (1/rows)·Σ_r m[r, j]` (summed in
    /// f64, rounded once).
    fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()>;

    /// Waits until every queued op has finished (a no-op on the CPU).
    fn synchronize(&mut self) -> Result<()>;

    // Graphs: the ops of several training steps recorded once and then replayed with one call each time (a
    // CUDA graph: one launch instead of one per kernel, which is most of a small model's step). Every value
    // that changes from step to step must then live in backend memory (Adam's alpha: `adam_step`). A backend
    // without graphs (the CPU, where an op costs no launch) keeps these defaults and its caller runs the ops
    // one by one.

    /// Whether this backend can record graphs.
    fn can_capture(&self) -> bool {
        false
    }
    /// From here to `end_capture`, ops are recorded, not run. An op that cannot be recorded (one that would
    /// allocate, copy from the host or wait) fails; the caller then calls `abort_capture`.
    fn begin_capture(&mut self) -> Result<()> {
        Err(Error::Device(format!(
            "{} cannot record graphs",
            self.name()
        )))
    }
    /// Ends a recording and keeps it for `replay`.
    fn end_capture(&mut self) -> Result<GraphId> {
        Err(Error::Device(format!(
            "{} cannot record graphs",
            self.name()
        )))
    }
    /// Ends a recording that failed and discards it (nothing of it ran).
    fn abort_capture(&mut self) {}
    /// Queues a recorded graph: its ops run as if called again, in the same order, on the same regions.
    fn replay(&mut self, graph: GraphId) -> Result<()> {
        Err(Error::Device(format!(
            "{} has no graph {}",
            self.name(),
            graph.0
        )))
    }
    /// Frees every recorded graph (their ids become invalid).
    fn clear_graphs(&mut self) {}
}
