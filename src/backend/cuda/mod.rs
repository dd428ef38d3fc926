//! The CUDA backend: our kernels in `kernels/*.cu`, compiled to PTX by `build.rs`, loaded once per backend and
//! launched through cudarc. Each kernel file's launches are in the file of the same name here
//! (`cuda/gemm.rs` launches `kernels/gemm.cu`), and its CPU twin, with the same names and layouts, in the file
//! of the same name in `cpu/` (`cpu/gemm.rs`). The other rooms: `device.rs` (finding a GPU and deciding
//! whether it can run the kernels), `memory.rs` (buffers and copies, the batch prefetch), `graphs.rs`
//! (recording and replaying CUDA graphs), `launch.rs` (every kernel's typed parameter list and launch shape).
//!
//! - One context, one stream: every op is queued on `stream` and returns at once; `download` and
//!   `synchronize` wait. Kernel faults surface at the next wait. The one exception is `prefetch` (a data set
//!   kept on the host), whose copies run on a second stream, ordered against the first by events.
//! - Buffers are `CudaSlice<f32>` / `CudaSlice<u32>` owned by the backend and freed when it is dropped.
//! - A region is passed to a kernel as the raw device address of its first element (`ptr`, in `memory.rs`).
//!   See `ptr` for why that is sound; the trait's rule that outputs never overlap inputs is asserted at every
//!   op.
//! - Every kernel is launched through its typed parameter list in `cuda/launch.rs` (one table for all of
//!   them), which a test checks against the PTX: cudarc itself passes arguments as untyped bytes.
//! - Built without kernels (no nvcc at build time) this module still compiles and [`CudaBackend::new`] returns
//!   one clear error, so callers need no `cfg` (candle's dummy-backend idea).
//! - Nothing here touches the CUDA driver before [`driver_present`] said the library loads: cudarc panics
//!   when it is missing. Driver initialization is also wrapped in `catch_unwind`, because cudarc panics when
//!   a symbol is missing from an old driver.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaGraph, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;

use super::{
    AdamConfig, Backend, BufId, Gemm, GraphId, HalfFormat, HalfId, IdxId, IdxRegion, NoiseSource,
    Region,
};
use crate::activation::Activation;
use crate::error::Result;

mod constraints;
mod data;
mod device;
mod elementwise;
mod gemm;
mod graphs;
mod launch;
mod loss;
mod memory;
mod noise;
mod optim;
mod reduce;

pub use device::{
    check_device, device_count, driver_present, is_built_with_kernels, list_devices, nvcc_version,
    ptx_arch, ptx_modules, DeviceInfo, NO_DRIVER_MESSAGE, NO_KERNELS_MESSAGE,
};
use device::{device_error, guarded};
pub use gemm::{GemmKernel, GemmPlan};
pub use launch::{kernel_constants, kernel_signatures};
use launch::{Kernels, MSE_MAX_BLOCKS};
use memory::Copies;

/// The CUDA backend of one GPU. See the module documentation.
pub struct CudaBackend {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    bufs: Vec<CudaSlice<f32>>,
    indices: Vec<CudaSlice<u32>>,
    /// Data sets kept as 16-bit floats (f16 or bf16 bit patterns).
    halves: Vec<CudaSlice<u16>>,
    /// The length asked for of each of `halves` (an empty one is allocated with one element).
    half_lens: Vec<usize>,
    /// Device bytes this backend holds: the MSE scratch, everything asked for through `alloc` and
    /// `alloc_indices` (len·size_of, as the CPU backend counts them), and the split-K scratch once a
    /// split-K product has run.
    bytes: usize,
    /// MSE_MAX_BLOCKS per-block partial sums of `mse_backward` and `sum_squares` (a fixed cost of the
    /// backend; stream order makes sharing it safe).
    mse_partials: CudaSlice<f64>,
    gemm_kernel: GemmKernel,
    /// Whether `gemm_bias_act` fuses (the default) or launches gemm then bias_act; `TIEDAE_CUDA_FUSE=0`
    /// turns fusion off, to measure what it brings.
    fuse_epilogue: bool,
    /// The partial sums of split-K products, grown to the largest one run so far (stream order makes
    /// reusing it safe); counted in `bytes` once allocated.
    gemm_partials: Option<CudaSlice<f32>>,
    /// Recorded graphs (`Backend::begin_capture`), indexed by `GraphId`.
    graphs: Vec<CudaGraph>,
    /// Split-K scratch buffers outgrown while graphs were recorded: a graph holds the address of the one it
    /// was recorded with, so they live (counted in `bytes`) until the graphs are cleared.
    retired_partials: Vec<CudaSlice<f32>>,
    /// Whether the stream is recording: an op that would allocate, copy or wait fails instead.
    capturing: bool,
    /// `prefetch`'s copies, set up by the first one.
    copies: Option<Copies>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.info)
            .field("buffers", &self.bufs.len())
            .field("index_buffers", &self.indices.len())
            .field("allocated_bytes", &self.bytes)
            .finish()
    }
}

impl CudaBackend {
    /// A backend on GPU `ordinal`: checks that kernels are built in, the driver loads and the device exists
    /// and can run the PTX, then creates a context and a stream and loads every kernel module once. Every
    /// failure is one line ([`Error::Device`](crate::Error::Device)).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let info = check_device(ordinal)?;

        let ctx = guarded(
            &format!("creating a CUDA context on device {ordinal}"),
            || CudaContext::new(ordinal),
        )?;
        // SAFETY: this backend queues everything (allocations, copies, launches, frees) on the stream created
        // below, so stream order alone orders every use of every buffer; cudarc's per-buffer events (for
        // multi-stream use) would only add overhead. The one exception, `prefetch`'s copy stream, orders
        // itself against this one with events of its own (see `prefetch`): its first copy waits for every op
        // queued before it, each later one for the ops queued before the previous call, and the compute
        // stream waits for each copy. Nothing was allocated on this context before.
        unsafe { ctx.disable_event_tracking() };
        let stream = guarded("creating a CUDA stream", || ctx.new_stream())?;

        let mut modules = HashMap::new();
        for &(name, ptx) in ptx_modules() {
            let what = format!(
                "loading the PTX of kernels/{name}.cu ({}) on {}",
                ptx_arch(),
                info.name
            );
            let module = guarded(&what, || ctx.load_module(Ptx::from_src(ptx)))?;
            modules.insert(name, module);
        }
        let k = Kernels::load_from(&modules)?;
        let mse_partials = guarded("allocating scratch memory", || {
            stream.alloc_zeros::<f64>(MSE_MAX_BLOCKS)
        })?;
        Ok(CudaBackend {
            info,
            ctx,
            stream,
            k,
            bufs: Vec::new(),
            indices: Vec::new(),
            halves: Vec::new(),
            half_lens: Vec::new(),
            bytes: MSE_MAX_BLOCKS * std::mem::size_of::<f64>(),
            mse_partials,
            gemm_kernel: GemmKernel::from_env()?,
            fuse_epilogue: std::env::var("TIEDAE_CUDA_FUSE").as_deref() != Ok("0"),
            gemm_partials: None,
            graphs: Vec::new(),
            retired_partials: Vec::new(),
            capturing: false,
            copies: None,
        })
    }

    /// The GPU this backend runs on.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context, for callers that want to query the device.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        self.abort_capture();
        // Let queued kernels and copies finish before the buffers they use are freed. An error here was
        // already reported by the op that caused it, or will never be read.
        let _ = self.stream.synchronize();
        if let Some(c) = &self.copies {
            let _ = c.stream.synchronize();
        }
    }
}

/// Every op in the file named for its kernel file (or for what it does: memory, graphs), where it is an
/// inherent method of the same name that this impl calls; `cpu/` has the twin of each in the file of the same
/// name.
impl Backend for CudaBackend {
    type Scalar = f32;

    fn name(&self) -> String {
        let (major, minor) = self.info.compute_capability;
        format!(
            "cuda:{} {} (sm_{major}{minor})",
            self.info.ordinal, self.info.name
        )
    }

    fn synchronize(&mut self) -> Result<()> {
        self.refuse_while_capturing("waiting for the GPU")?;
        self.stream.synchronize().map_err(|e| {
            device_error(
                &format!("waiting for {} (a queued kernel failed)", self.info.name),
                e,
            )
        })
    }

    // memory.rs: buffers, copies to and from the host, the batch prefetch
    fn alloc(&mut self, len: usize) -> Result<BufId> {
        self.alloc(len)
    }
    fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        self.alloc_indices(len)
    }
    fn alloc_half(&mut self, len: usize) -> Result<HalfId> {
        self.alloc_half(len)
    }
    fn upload_half(&mut self, dst: HalfId, src: &[u16]) -> Result<()> {
        self.upload_half(dst, src)
    }
    fn allocated_bytes(&self) -> usize {
        self.allocated_bytes()
    }
    fn upload(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.upload(dst, src)
    }
    fn prefetch(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.prefetch(dst, src)
    }
    fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()> {
        self.upload_indices(dst, offset, src)
    }
    fn download(&mut self, src: Region, dst: &mut [f32]) -> Result<()> {
        self.download(src, dst)
    }
    fn free_memory(&self) -> Option<usize> {
        self.free_memory()
    }

    // data.rs, launches of kernels/data.cu
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

    // noise.rs, launches of kernels/noise.cu
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

    // gemm.rs, launches of kernels/gemm.cu
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        self.gemm(g, a, b, c)
    }
    fn gemm_bias_act(
        &mut self,
        g: Gemm,
        a: Region,
        b: Region,
        c: Region,
        bias: Region,
        act: Activation,
    ) -> Result<()> {
        self.gemm_bias_act(g, a, b, c, bias, act)
    }

    // elementwise.rs, launches of kernels/elementwise.cu
    fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        self.fill(dst, value)
    }
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()> {
        self.bias_act(z, cols, bias, act)
    }
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        self.act_backward(grad, y, act)
    }

    // loss.rs, launches of kernels/loss.cu
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

    // reduce.rs, launches of kernels/reduce.cu
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        self.col_sum(m, cols, out)
    }

    // optim.rs, launches of kernels/optim.cu
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

    // constraints.rs, launches of kernels/constraints.cu
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

    // graphs.rs: recording and replaying CUDA graphs
    fn can_capture(&self) -> bool {
        self.can_capture()
    }
    fn begin_capture(&mut self) -> Result<()> {
        self.begin_capture()
    }
    fn end_capture(&mut self) -> Result<GraphId> {
        self.end_capture()
    }
    fn abort_capture(&mut self) {
        self.abort_capture()
    }
    fn replay(&mut self, graph: GraphId) -> Result<()> {
        self.replay(graph)
    }
    fn clear_graphs(&mut self) {
        self.clear_graphs()
    }
}
