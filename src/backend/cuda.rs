//! The CUDA backend: our kernels in `kernels/*.cu`, compiled to PTX by `build.rs`, loaded once per backend and
//! launched through cudarc. Every op has its CPU twin in `cpu.rs` with the same name and the same layouts.
//!
//! - One context, one stream: every op is queued on `stream` and returns at once; `download` and
//!   `synchronize` wait. Kernel faults surface at the next wait. The one exception is `prefetch` (a data set
//!   kept on the host), whose copies run on a second stream, ordered against the first by events.
//! - Buffers are `CudaSlice<f32>` / `CudaSlice<u32>` owned by the backend and freed when it is dropped.
//! - A region is passed to a kernel as the raw device address of its first element (`ptr`). See `ptr` for why
//!   that is sound; the trait's rule that outputs never overlap inputs is asserted at every op.
//! - Every kernel is launched through its typed parameter list in `cuda/launch.rs` (one table for all of
//!   them), which a test checks against the PTX: cudarc itself passes arguments as untyped bytes.
//! - Built without kernels (no nvcc at build time) this file still compiles and [`CudaBackend::new`] returns
//!   one clear error, so callers need no `cfg` (candle's dummy-backend idea).
//! - Nothing here touches the CUDA driver before [`driver_present`] said the library loads: cudarc panics
//!   when it is missing. Driver initialization is also wrapped in `catch_unwind`, because cudarc panics when
//!   a symbol is missing from an old driver.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute, CUresult};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DeviceRepr, LaunchConfig, PinnedHostSlice, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::{
    AdamConfig, Backend, BufId, Gemm, GraphId, HalfFormat, HalfId, IdxId, IdxRegion, Region, Trans,
};
use crate::activation::Activation;
use crate::error::{Error, Result};

mod launch;
pub use launch::kernel_signatures;
use launch::{DevPtr, Kernel, KernelAdamConfig, KernelParams, Kernels};

/// The PTX of `kernels/*.cu` as written by `build.rs`: `PTX_ARCH`, `NVCC_VERSION` and `MODULES`.
mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The error of [`CudaBackend::new`] in a build without kernels.
pub const NO_KERNELS_MESSAGE: &str = "CUDA unavailable: this tiedae was built without GPU kernels (nvcc was \
                                      not found at build time); install nvcc (scripts/install-nvcc.sh) and \
                                      rebuild, or use --device cpu";
/// The error when the driver library cannot be loaded.
pub const NO_DRIVER_MESSAGE: &str =
    "CUDA unavailable: no NVIDIA driver found (libcuda not loadable); use --device cpu";

// Launch shapes; each must match the constant of the same name in kernels/*.cu (`kernel_constants`).
/// Threads per block of the element-wise kernels (grid-stride loops, so any grid works).
const THREADS: u32 = 256;
/// Cap on the grid of the element-wise kernels: 4096·256 threads keep any GPU busy.
const MAX_BLOCKS: usize = 4096;
/// `GEMM_THREADS` in gemm.cu: one block of `gemm` computes a GEMM_TILE × GEMM_TILE tile of C.
const GEMM_THREADS: u32 = 256;
/// `BM` = `BN` in gemm.cu.
const GEMM_TILE: usize = 64;
/// `GEMM_LARGE_THREADS` in gemm.cu: one block of `gemm_large` computes a GEMM_LARGE_TILE² tile of C.
const GEMM_LARGE_THREADS: u32 = 256;
/// `LBM` = `LBN` in gemm.cu.
const GEMM_LARGE_TILE: usize = 128;
/// The GEMM's int indices need room for one more tile (see gemm.cu).
const GEMM_MAX_DIM: usize = i32::MAX as usize - 256;
/// `MSE_THREADS` in loss.cu, and `SUM_SQUARES_THREADS` in constraints.cu (whose partials `mse_finalize` sums).
const MSE_THREADS: u32 = 256;
/// `MSE_MAX_BLOCKS` in loss.cu: the size of the partial-sum scratch buffer (of `mse_backward` and of
/// `sum_squares`).
const MSE_MAX_BLOCKS: usize = 1024;
/// `COL_SUM_TX`, `COL_SUM_TY` in reduce.cu.
const COL_SUM_BLOCK: (u32, u32) = (32, 16);
/// `COLUMN_TX`, `COLUMN_TY` in constraints.cu (`normalize_columns`, `center_columns`).
const COLUMN_BLOCK: (u32, u32) = (32, 16);
/// `gridDim.y` limit of every GPU.
const MAX_GRID_Y: usize = 65535;

/// Every value this file and `kernels/*.cu` must agree on, under the name of its `#define` there: the launch
/// shapes above, the GEMM's tile depth, the activation codes and the 16-bit formats. The test
/// `kernel_constants_match_the_host` (tests/kernels_on_cpu.rs) compiles the kernels' headers and compares.
pub fn kernel_constants() -> Vec<(String, u64)> {
    let (col_sum_tx, col_sum_ty) = COL_SUM_BLOCK;
    let (column_tx, column_ty) = COLUMN_BLOCK;
    let shapes = [
        ("GEMM_THREADS", u64::from(GEMM_THREADS)),
        ("BM", GEMM_TILE as u64),
        ("BN", GEMM_TILE as u64),
        ("BK", GEMM_BK as u64),
        ("GEMM_LARGE_THREADS", u64::from(GEMM_LARGE_THREADS)),
        ("LBM", GEMM_LARGE_TILE as u64),
        ("LBN", GEMM_LARGE_TILE as u64),
        ("MSE_THREADS", u64::from(MSE_THREADS)),
        ("SUM_SQUARES_THREADS", u64::from(MSE_THREADS)),
        ("MSE_MAX_BLOCKS", MSE_MAX_BLOCKS as u64),
        ("COL_SUM_TX", u64::from(col_sum_tx)),
        ("COL_SUM_TY", u64::from(col_sum_ty)),
        ("COLUMN_TX", u64::from(column_tx)),
        ("COLUMN_TY", u64::from(column_ty)),
        ("HALF_FORMAT_F16", HalfFormat::F16 as u64),
        ("HALF_FORMAT_BF16", HalfFormat::Bf16 as u64),
    ];
    let activations = Activation::ALL.map(|a| {
        let name = format!("ACT_{}", a.as_str().to_uppercase());
        (name, u64::from(a.code()))
    });
    shapes
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .chain(activations)
        .collect()
}

/// Whether `build.rs` compiled the kernels into this binary.
pub fn is_built_with_kernels() -> bool {
    cfg!(tiedae_cuda_kernels)
}

/// The virtual architecture of the embedded PTX ("compute_61"), or "none".
pub fn ptx_arch() -> &'static str {
    kernels::PTX_ARCH
}

/// The version line of the nvcc that compiled the kernels, or "none".
pub fn nvcc_version() -> &'static str {
    kernels::NVCC_VERSION
}

/// (module name, PTX text) of every kernel file, sorted by name; empty in a build without kernels.
pub fn ptx_modules() -> &'static [(&'static str, &'static str)] {
    kernels::MODULES
}

/// Whether the CUDA driver library (libcuda) can be loaded. Call this before anything else of this module
/// touches the driver: cudarc panics when the library is missing.
pub fn driver_present() -> bool {
    // SAFETY: is_culib_present only tries to dlopen the library by its usual names; it calls nothing in it.
    catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

/// One line for a driver error: "CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)".
fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("CUDA error {}", e.0 as u32));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

fn device_error(what: &str, e: DriverError) -> Error {
    let hint = match e.0 {
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
            "; the NVIDIA driver is older than the nvcc that built the kernels: update the driver or rebuild \
             with an older nvcc"
        }
        _ => "",
    };
    Error::Device(format!("{what}: {}{hint}", describe(e)))
}

/// Runs a driver call that may panic inside cudarc (a symbol missing from an old driver) and turns both
/// failures into one-line errors.
fn guarded<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, DriverError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(device_error(what, e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Error::Device(format!(
                "{what}: the CUDA driver library cannot be used ({}); use --device cpu",
                msg.lines().next().unwrap_or("")
            )))
        }
    }
}

/// `cuInit`, with "no device" as `Ok(false)`.
fn init_driver() -> Result<bool> {
    if !driver_present() {
        return Err(Error::Device(NO_DRIVER_MESSAGE.to_string()));
    }
    guarded("initializing the CUDA driver", || match cu::init() {
        Ok(()) => Ok(true),
        Err(e) if e.0 == CUresult::CUDA_ERROR_NO_DEVICE => Ok(false),
        Err(e) => Err(e),
    })
}

/// The number of CUDA devices (0 when the driver is installed but sees no GPU). Errors when there is no
/// driver library or the driver fails to initialize.
pub fn device_count() -> Result<usize> {
    if !init_driver()? {
        return Ok(0);
    }
    let n = guarded("counting CUDA devices", cu::device::get_count)?;
    Ok(n.max(0) as usize)
}

/// What `tiedae info` shows about a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor): (6, 1) for a GTX 1080, (9, 0) for an H100.
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
    /// Streaming multiprocessors (the GEMM picks its tiling by how many of them a product's tiles fill).
    pub multiprocessors: usize,
    /// The CUDA version the driver supports, e.g. "12.2" (`cuDriverGetVersion`).
    pub driver_version: String,
}

fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    let what = format!("querying CUDA device {ordinal}");
    guarded(&what, || {
        let dev = cu::device::get(ordinal as i32)?;
        let name = cu::device::get_name(dev)?;
        // SAFETY: `dev` is a valid device handle from cuDeviceGet after a successful cuInit.
        let (major, minor, total, sms) = unsafe {
            (
                cu::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )?,
                cu::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )?,
                cu::device::total_mem(dev)?,
                cu::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                )?,
            )
        };
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
        unsafe { sys::cuDriverGetVersion(&mut version) }.result()?;
        Ok(DeviceInfo {
            ordinal,
            name: name.trim().to_string(),
            compute_capability: (major, minor),
            total_memory_bytes: total,
            multiprocessors: sms.max(1) as usize,
            driver_version: format!("{}.{}", version / 1000, (version % 1000) / 10),
        })
    })
}

/// The oldest CUDA version a driver may support: that of cudarc's bindings (`cuda-11080` in Cargo.toml).
const MIN_DRIVER: (i32, i32) = (11, 8);

/// Whether a driver that supports CUDA `version` ("12.2", as [`DeviceInfo::driver_version`]) is older than
/// [`MIN_DRIVER`]; false when the version does not parse (then the driver is let try).
fn driver_too_old(version: &str) -> bool {
    version
        .split_once('.')
        .and_then(|(major, minor)| Some((major.parse::<i32>().ok()?, minor.parse::<i32>().ok()?)))
        .is_some_and(|v| v < MIN_DRIVER)
}

/// Every CUDA device the driver sees (empty when it sees none). Errors when there is no driver.
pub fn list_devices() -> Result<Vec<DeviceInfo>> {
    (0..device_count()?).map(device_info).collect()
}

impl Kernels {
    fn load_from(modules: &HashMap<&str, Arc<CudaModule>>) -> Result<Kernels> {
        Kernels::load(|module: &str, entry: &str| -> Result<CudaFunction> {
            let m = modules.get(module).ok_or_else(|| {
                Error::Device(format!(
                    "the kernel module '{module}' is missing from this build (kernels/{module}.cu)"
                ))
            })?;
            guarded(
                &format!("loading kernel '{entry}' of module '{module}'"),
                || m.load_function(entry),
            )
        })
    }
}

/// A grid-stride launch over `n` elements: 256 threads a block, at most [`MAX_BLOCKS`] blocks.
fn grid_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch of the per-column kernels of constraints.cu: blocks of (COLUMN_TX, COLUMN_TY) threads, one per
/// COLUMN_TX columns, at most [`MAX_BLOCKS`] (the kernels stride over column tiles).
fn column_grid(cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(COLUMN_BLOCK.0 as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (COLUMN_BLOCK.0, COLUMN_BLOCK.1, 1),
        shared_mem_bytes: 0,
    }
}

/// Panics when `out` and `input` share an element: the trait forbids it, and a kernel would silently read
/// values it has already overwritten.
fn assert_disjoint(op: &str, out: Region, input: Region) {
    let overlap = out.buf == input.buf
        && out.len > 0
        && input.len > 0
        && out.offset < input.offset + input.len
        && input.offset < out.offset + out.len;
    assert!(!overlap, "{op}: output {out:?} overlaps {input:?}");
}

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

/// `prefetch`'s machinery: a stream of its own for the copies, so that they run while `stream` computes; two
/// page-locked staging buffers used by turns (the DMA engine reads them directly, and the host fills one
/// while the other is being copied); and the events that order the two streams.
struct Copies {
    stream: Arc<CudaStream>,
    staging: [Option<PinnedHostSlice<f32>>; 2],
    /// Recorded on the copy stream after the copy out of `staging[i]`: the host waits for it before
    /// refilling that buffer.
    copied: [Option<CudaEvent>; 2],
    /// The staging buffer the next call fills.
    next: usize,
    /// Recorded on the compute stream at the previous call: the ops queued before it, which the next copy
    /// waits for.
    before_previous: Option<CudaEvent>,
}

/// Which kernel of kernels/gemm.cu runs a product (see gemm.cu). `Tile64` and `Large` compute the same C;
/// `SplitK` (the 64×64 kernel over slices of K, then `gemm_split_reduce`) sums in another, fixed order.
/// `Auto` picks `Large` when its 128×128 tiles alone fill every SM at least once; `SplitK` when the 64×64
/// tiles would leave more than half of the SMs idle and K is deep enough to share out (the 256-row
/// products of a training step on a big GPU); `Tile64` otherwise. `TIEDAE_CUDA_GEMM=64`, `=128` or
/// `=splitk` forces one, to measure one against the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernel {
    Auto,
    Tile64,
    Large,
    SplitK,
}

/// How one product runs: the kernel, and for split-K the depth of a split and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPlan {
    Tile64,
    Large,
    SplitK { k_split: usize, splits: usize },
}

/// `BK` in gemm.cu: a split covers whole slices.
const GEMM_BK: usize = 16;
/// Split-K gives each split at least this much of K (a split must outweigh its partials' round trip).
const SPLIT_MIN_K: usize = 128;

impl GemmKernel {
    /// `TIEDAE_CUDA_GEMM`: unset or `auto`, `64`, `128`, `splitk`.
    fn from_env() -> Result<GemmKernel> {
        match std::env::var("TIEDAE_CUDA_GEMM").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(GemmKernel::Auto),
            Ok("64") => Ok(GemmKernel::Tile64),
            Ok("128") => Ok(GemmKernel::Large),
            Ok("splitk") => Ok(GemmKernel::SplitK),
            Ok(other) => Err(Error::Device(format!(
                "TIEDAE_CUDA_GEMM={other} is not one of auto, 64, 128, splitk"
            ))),
        }
    }

    /// How `self` runs an m×n×k product on a GPU with `sms` multiprocessors.
    pub fn plan(self, m: usize, n: usize, k: usize, sms: usize) -> GemmPlan {
        let tiles64 = (m.div_ceil(GEMM_TILE) * n.div_ceil(GEMM_TILE)).max(1);
        // The splits that give every SM a block.
        let to_fill = sms.div_ceil(tiles64);
        match self {
            _ if k == 0 => GemmPlan::Tile64,
            GemmKernel::Tile64 => GemmPlan::Tile64,
            GemmKernel::Large => GemmPlan::Large,
            GemmKernel::SplitK => GemmPlan::split_k(k, to_fill.max(2)),
            GemmKernel::Auto => {
                let large_tiles = m.div_ceil(GEMM_LARGE_TILE) * n.div_ceil(GEMM_LARGE_TILE);
                if large_tiles >= sms {
                    GemmPlan::Large
                } else if 2 * tiles64 <= sms && k >= 2 * SPLIT_MIN_K {
                    GemmPlan::split_k(k, to_fill.min(k / SPLIT_MIN_K))
                } else {
                    GemmPlan::Tile64
                }
            }
        }
    }
}

impl GemmPlan {
    /// K (> 0) cut into about `wanted` splits of whole BK slices; fewer when K has fewer slices.
    fn split_k(k: usize, wanted: usize) -> GemmPlan {
        let k_split = k.div_ceil(wanted.max(1)).div_ceil(GEMM_BK) * GEMM_BK;
        GemmPlan::SplitK {
            k_split,
            splits: k.div_ceil(k_split),
        }
    }
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

/// Everything that decides whether GPU `ordinal` can run our kernels, without creating a context: kernels
/// built in, a driver new enough, the device there, a compute capability the PTX can target.
/// `CudaBackend::new` and `--device auto` both ask this, so auto falls back to the CPU in every case `new`
/// refuses before it creates a context. What fails after that (a GPU that another process holds in
/// exclusive mode, a module the driver will not load) is an error under auto too, not a fallback.
pub fn check_device(ordinal: usize) -> Result<DeviceInfo> {
    if !is_built_with_kernels() {
        return Err(Error::Device(NO_KERNELS_MESSAGE.to_string()));
    }
    if !driver_present() {
        return Err(Error::Device(NO_DRIVER_MESSAGE.to_string()));
    }
    let count = device_count()?;
    if count == 0 {
        return Err(Error::Device(
            "CUDA unavailable: no CUDA device found (the NVIDIA driver is installed but sees no GPU); use \
             --device cpu"
                .to_string(),
        ));
    }
    if ordinal >= count {
        return Err(Error::Device(format!(
            "CUDA unavailable: no CUDA device {ordinal}; the driver reports {count} device(s) (0..={}); use \
             --device cpu",
            count - 1
        )));
    }
    let info = device_info(ordinal)?;
    // cudarc's bindings are those of the CUDA 11.8 driver API (Cargo.toml), resolved symbol by symbol on first
    // use, and a symbol an older driver lacks panics there (a graph's instantiation, in the middle of
    // training) rather than failing here. PTX from nvcc 11.8 needs such a driver anyway.
    if driver_too_old(&info.driver_version) {
        return Err(Error::Device(format!(
            "CUDA unavailable: the NVIDIA driver supports CUDA {}, tiedae needs one for CUDA {}.{} or newer \
             (driver 520 or later); update the driver or use --device cpu",
            info.driver_version, MIN_DRIVER.0, MIN_DRIVER.1
        )));
    }
    let (major, minor) = info.compute_capability;
    let arch: i32 = ptx_arch()
        .trim_start_matches("compute_")
        .parse()
        .unwrap_or(0);
    if major * 10 + minor < arch {
        return Err(Error::Device(format!(
            "CUDA unavailable: {} has compute capability {major}.{minor}, but the kernels were built for {}; rebuild with \
             CUDA_ARCH=compute_{major}{minor} (if your nvcc supports it) or use --device cpu",
            info.name,
            ptx_arch()
        )));
    }
    Ok(info)
}

impl CudaBackend {
    /// A backend on GPU `ordinal`: checks that kernels are built in, the driver loads and the device exists
    /// and can run the PTX, then creates a context and a stream and loads every kernel module once. Every
    /// failure is one line ([`Error::Device`]).
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

    /// Forces one GEMM tiling (benchmarks and tests compare them); `GemmKernel::Auto` is the default.
    pub fn set_gemm_kernel(&mut self, kernel: GemmKernel) {
        self.gemm_kernel = kernel;
    }

    /// Whether `gemm_bias_act` fuses bias and activation into the GEMM (the default, unless
    /// `TIEDAE_CUDA_FUSE=0`).
    pub fn set_fuse_epilogue(&mut self, fuse: bool) {
        self.fuse_epilogue = fuse;
    }

    /// `gemm` and `gemm_bias_act`: one launch of the tiling `self.gemm_kernel` picks for the shape.
    fn launch_gemm(
        &mut self,
        g: Gemm,
        a: Region,
        b: Region,
        c: Region,
        epilogue: Option<(Region, Activation)>,
    ) -> Result<()> {
        let Gemm { m, n, k, .. } = g;
        assert_eq!(a.len, m * k, "gemm A size");
        assert_eq!(b.len, k * n, "gemm B size");
        assert_eq!(c.len, m * n, "gemm C size");
        assert_disjoint("gemm", c, a);
        assert_disjoint("gemm", c, b);
        if m == 0 || n == 0 {
            return Ok(());
        }
        assert!(
            m <= GEMM_MAX_DIM && n <= GEMM_MAX_DIM && k <= GEMM_MAX_DIM,
            "gemm dimensions {m}×{n}×{k} exceed the kernel's int indices"
        );
        // K == 0 leaves beta·C (or 0); the kernel's accumulators are 0, and alpha·0 must not become NaN.
        let alpha = if k == 0 { 0.0f32 } else { g.alpha };
        let (p_a, p_b, p_c) = (self.ptr(a), self.ptr(b), self.ptr(c));
        // A null bias means no bias and no activation (the kernel's contract).
        let (p_bias, act) = match epilogue {
            Some((bias, act)) => (self.ptr(bias), act.code()),
            None => (0 as DevPtr, Activation::Linear.code()),
        };
        let (m_i, n_i, k_i) = (m as i32, n as i32, k as i32);
        let trans_a = i32::from(g.trans_a == Trans::T);
        let trans_b = i32::from(g.trans_b == Trans::T);
        let plan = self.gemm_kernel.plan(m, n, k, self.info.multiprocessors);
        let (tile, threads, splits, k_split) = match plan {
            GemmPlan::Large => (GEMM_LARGE_TILE, GEMM_LARGE_THREADS, 1, 0),
            GemmPlan::Tile64 => (GEMM_TILE, GEMM_THREADS, 1, 0),
            GemmPlan::SplitK { k_split, splits } => (GEMM_TILE, GEMM_THREADS, splits, k_split),
        };
        // Split-K's partial sums: splits·m·n floats of the backend's scratch, grown when too small.
        let p_partials = if let GemmPlan::SplitK { .. } = plan {
            let need = splits * m * n;
            if self.gemm_partials.as_ref().is_none_or(|p| p.len() < need) {
                // Before the old scratch is freed: a recording keeps it.
                self.refuse_while_capturing("growing the split-K scratch")?;
                if let Some(old) = self.gemm_partials.take() {
                    if self.graphs.is_empty() {
                        self.bytes -= old.len() * std::mem::size_of::<f32>();
                    } else {
                        self.retired_partials.push(old);
                    }
                }
                self.gemm_partials = Some(self.alloc_zeros::<f32>(need, "split-K partial sums")?);
            }
            let partials = self.gemm_partials.as_ref().expect("allocated above");
            let (p, _) = partials.device_ptr(&self.stream);
            p
        } else {
            0 as DevPtr // null: no split
        };
        let cfg = LaunchConfig {
            grid_dim: (
                m.div_ceil(tile) as u32, // <= 2^25: within gridDim.x's 2^31 - 1
                n.div_ceil(tile).min(MAX_GRID_Y) as u32,
                splits as u32, // <= max(2, SMs): within gridDim.z's 65535
            ),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let k_split_i = k_split as i32;
        // SAFETY (both plans): gemm_large takes (A, B, C, M, N, K, trans_a, trans_b, alpha, beta, bias, act),
        // and gemm the same followed by (partials, k_split) (the kernel table in cuda/launch.rs). A, B, C
        // hold exactly m·k, k·n, m·n floats (asserted) inside live buffers (checked by `ptr`), bias is null
        // or n floats (asserted by gemm_bias_act, checked by `ptr`), M, N, K fit the kernels' int arithmetic
        // (asserted), and the kernels bounds-check every element against M, N, K and read bias[j] for j < N
        // only; C overlaps neither A, B nor the bias (asserted). Both stride over tiles, so any grid works.
        // partials is null (gridDim.z = 1), or holds splits·m·n floats (grown above) and gridDim.z = splits
        // = ⌈K / k_split⌉ with k_split a multiple of BK, so block z writes only partials[z] and every k lies
        // in one split.
        if plan == GemmPlan::Large {
            // SAFETY: as said above.
            unsafe {
                self.launch(
                    &self.k.gemm_large,
                    cfg,
                    (
                        p_a, p_b, p_c, m_i, n_i, k_i, trans_a, trans_b, alpha, g.beta, p_bias, act,
                    ),
                )
            }?;
        } else {
            // SAFETY: as said above.
            unsafe {
                self.launch(
                    &self.k.gemm,
                    cfg,
                    (
                        p_a, p_b, p_c, m_i, n_i, k_i, trans_a, trans_b, alpha, g.beta, p_bias, act,
                        p_partials, k_split_i,
                    ),
                )
            }?;
        }
        if let GemmPlan::SplitK { splits, .. } = plan {
            let splits_i = splits as i32;
            // SAFETY: gemm_split_reduce(partials, splits, C, M, N, alpha, beta, bias, act): partials holds
            // splits·m·n floats, all written by the launch above (stream order), C holds m·n floats, bias is
            // null or n floats (see the launch above); a grid-stride loop, so any grid works.
            unsafe {
                self.launch(
                    &self.k.gemm_split_reduce,
                    grid_1d(m * n),
                    (
                        p_partials, splits_i, p_c, m_i, n_i, alpha, g.beta, p_bias, act,
                    ),
                )
            }?;
        }
        Ok(())
    }

    /// The GPU this backend runs on.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context, for callers that want to query the device.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The device address of `r`'s first element, after checking that `r` lies inside its buffer.
    ///
    /// Why passing raw addresses is sound: device memory is never borrowed as Rust memory, so no Rust
    /// aliasing rule applies to it; what a kernel may touch is decided by the address and the count we pass,
    /// and every op checks (with `assert!`, before launching) that each region lies inside its live buffer
    /// and that the counts it passes match the regions. The buffers stay alive until the backend is dropped,
    /// and `Drop` waits for the stream first. Because outputs and inputs are separate regions (asserted), an
    /// output may live in the same buffer as an input, which `&mut`/`&` views of one `CudaSlice` could not
    /// express. No cudarc event is skipped: event tracking is off (see `new`), so the guard that
    /// `device_ptr` returns is empty.
    fn ptr(&self, r: Region) -> DevPtr {
        self.address(&self.bufs, r.buf.0, r.offset, r.len, "buffer")
    }

    /// The device address of `r`'s first index; see [`CudaBackend::ptr`].
    fn idx_ptr(&self, r: IdxRegion) -> DevPtr {
        self.address(&self.indices, r.buf.0, r.offset, r.len, "index buffer")
    }

    /// `len` zeros on the device, counted in `allocated_bytes`. A zero-length allocation is not valid in
    /// CUDA: it keeps one element and counts none.
    fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.refuse_while_capturing(&format!("allocating {len} {what}"))?;
        let buf = self.stream.alloc_zeros::<T>(len.max(1)).map_err(|e| {
            device_error(&format!("allocating {len} {what} on {}", self.info.name), e)
        })?;
        self.bytes += len * std::mem::size_of::<T>();
        Ok(buf)
    }

    /// The device address of element `offset` of `bufs[buf]`, after checking that `offset + len` fits.
    fn address<T>(
        &self,
        bufs: &[CudaSlice<T>],
        buf: usize,
        offset: usize,
        len: usize,
        what: &str,
    ) -> DevPtr {
        let slice = bufs
            .get(buf)
            .unwrap_or_else(|| panic!("no such {what} {buf}"));
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= slice.len()),
            "{what} {buf}: {offset}+{len} exceeds its {} elements",
            slice.len()
        );
        let (base, _no_event) = slice.device_ptr(&self.stream);
        base + (offset * std::mem::size_of::<T>()) as u64
    }

    /// The second launch of `mse_backward` and `sum_squares`: `mse_finalize` sums the first `blocks`
    /// per-block partials (written by the launch just before, in stream order) into the float at `p_out`.
    fn finalize_partials(&self, p_partials: DevPtr, blocks: usize, p_out: DevPtr) -> Result<()> {
        let num_partials = blocks as u32;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (MSE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: mse_finalize(const double* partials, u32 num_partials, float* loss); the first
        // num_partials (<= MSE_MAX_BLOCKS) partials were written by the caller's launch just before (stream
        // order), p_out addresses one float (the caller checked it with `ptr`); one block of MSE_THREADS
        // threads as the kernel requires.
        unsafe { self.launch(&self.k.mse_finalize, cfg, (p_partials, num_partials, p_out)) }?;
        Ok(())
    }

    fn launch_error(&self, kernel: &str, e: DriverError) -> Error {
        device_error(&format!("launching {kernel} on {}", self.info.name), e)
    }

    /// Queues `kernel` with `params` on the compute stream; a failure names the kernel and the GPU.
    ///
    /// # Safety
    /// [`Kernel::launch`]'s: the kernel's own contract for these pointers, sizes and grid.
    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &Kernel<P>,
        cfg: LaunchConfig,
        params: P,
    ) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { kernel.launch(&self.stream, cfg, params) }
            .map_err(|e| self.launch_error(kernel.name(), e))
    }
}

impl CudaBackend {
    /// Fails while the stream records a graph: `what` (an allocation, a copy from or to the host, a wait)
    /// would not be recorded as an op of the graph but done once, now, or would break the recording.
    fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        if self.capturing {
            return Err(Error::Device(format!(
                "{what} is not possible while a CUDA graph is being recorded"
            )));
        }
        Ok(())
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

impl Backend for CudaBackend {
    type Scalar = f32;

    fn name(&self) -> String {
        let (major, minor) = self.info.compute_capability;
        format!(
            "cuda:{} {} (sm_{major}{minor})",
            self.info.ordinal, self.info.name
        )
    }

    fn alloc(&mut self, len: usize) -> Result<BufId> {
        let buf = self.alloc_zeros::<f32>(len, "floats")?;
        self.bufs.push(buf);
        Ok(BufId(self.bufs.len() - 1))
    }

    fn alloc_indices(&mut self, len: usize) -> Result<IdxId> {
        let buf = self.alloc_zeros::<u32>(len, "indices")?;
        self.indices.push(buf);
        Ok(IdxId(self.indices.len() - 1))
    }

    fn alloc_half(&mut self, len: usize) -> Result<HalfId> {
        let buf = self.alloc_zeros::<u16>(len, "16-bit floats")?;
        self.halves.push(buf);
        self.half_lens.push(len);
        Ok(HalfId(self.halves.len() - 1))
    }

    fn upload_half(&mut self, dst: HalfId, src: &[u16]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        if src.is_empty() {
            return Ok(());
        }
        let buf = &mut self.halves[dst.0];
        assert!(
            src.len() <= buf.len(),
            "upload_half: {} exceeds its buffer",
            src.len()
        );
        let mut view = buf.slice_mut(0..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| device_error("copying 16-bit data to the GPU", e))
    }

    // data is (data_rows, cols) 16-bit floats, idx is (out_rows), out is (out_rows, cols) f32. Twin of
    // `gather_rows_half` in cpu.rs.
    fn gather_rows_half(
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

    fn allocated_bytes(&self) -> usize {
        self.bytes
    }

    fn upload(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        assert_eq!(src.len(), dst.len, "upload length");
        if dst.len == 0 {
            return Ok(());
        }
        let buf = &mut self.bufs[dst.buf.0];
        assert!(
            dst.offset + dst.len <= buf.len(),
            "upload: {dst:?} exceeds its buffer"
        );
        let mut view = buf.slice_mut(dst.offset..dst.offset + dst.len);
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| device_error("copying to the GPU", e))
    }

    // See the trait: the copy runs on a stream of its own, after the compute stream has passed the point of
    // the previous call, and the compute stream waits for it before the ops queued after this call.
    fn prefetch(&mut self, dst: Region, src: &[f32]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        assert_eq!(src.len(), dst.len, "prefetch length");
        if dst.len == 0 {
            return Ok(());
        }
        let p_dst = self.ptr(dst);
        let what = |step: &str| format!("{step} (copying a batch to {})", self.info.name);
        if self.copies.is_none() {
            let stream = self
                .ctx
                .new_stream()
                .map_err(|e| device_error(&what("creating a copy stream"), e))?;
            self.copies = Some(Copies {
                stream,
                staging: [None, None],
                copied: [None, None],
                next: 0,
                before_previous: None,
            });
        }
        let ctx = self.ctx.clone();
        let compute = self.stream.clone();
        let c = self.copies.as_mut().expect("set up above");
        let now = compute
            .record_event(None)
            .map_err(|e| device_error(&what("recording an event"), e))?;
        // The copy waits for the ops queued before the previous call; the first copy, which has no previous
        // call, for every op queued so far (among them the allocation and zeroing of `dst` itself, queued on
        // the compute stream: the two streams are not ordered otherwise).
        let wait_for = match &c.before_previous {
            Some(before) => before,
            None => &now,
        };
        c.stream
            .wait(wait_for)
            .map_err(|e| device_error(&what("ordering the copy stream"), e))?;
        c.before_previous = Some(now);
        let slot = c.next;
        c.next ^= 1;
        if let Some(copied) = &c.copied[slot] {
            // The previous copy out of this staging buffer must be done before it is refilled.
            copied
                .synchronize()
                .map_err(|e| device_error(&what("waiting for an earlier copy"), e))?;
        }
        if c.staging[slot].as_ref().is_none_or(|b| b.len() < src.len()) {
            // SAFETY: the new buffer's contents are written below before anything reads them.
            let buf = unsafe { ctx.alloc_pinned::<f32>(src.len()) }
                .map_err(|e| device_error(&what("allocating page-locked memory"), e))?;
            c.staging[slot] = Some(buf);
        }
        let staging = c.staging[slot].as_mut().expect("allocated above");
        let host = staging
            .as_mut_ptr()
            .map_err(|e| device_error(&what("reaching page-locked memory"), e))?;
        // SAFETY: the staging buffer holds at least src.len() floats (grown above) and no copy reads it any
        // more (its last copy was waited for above); `src` is a separate host slice.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host, src.len()) };
        // SAFETY: p_dst addresses dst.len = src.len() floats of a live buffer (checked by `ptr`); the host
        // slice is page-locked and stays untouched until `copied[slot]` completes (waited for before the
        // next refill, and the buffer lives until the backend is dropped, after the streams are drained).
        unsafe {
            cu::memcpy_htod_async(
                p_dst,
                std::slice::from_raw_parts(host as *const f32, src.len()),
                c.stream.cu_stream(),
            )
        }
        .map_err(|e| device_error(&what("queuing the copy"), e))?;
        let ordered = c.stream.record_event(None).and_then(|copied| {
            compute.wait(&copied)?;
            Ok(copied)
        });
        match ordered {
            Ok(copied) => {
                c.copied[slot] = Some(copied);
                Ok(())
            }
            Err(e) => {
                // Nothing orders the queued copy now: let it finish before its buffers can be refilled or
                // freed. (Its own error, if any, is the one reported.)
                let _ = c.stream.synchronize();
                Err(device_error(&what("ordering the compute stream"), e))
            }
        }
    }

    fn upload_indices(&mut self, dst: IdxId, offset: usize, src: &[u32]) -> Result<()> {
        self.refuse_while_capturing("a copy from the host")?;
        if src.is_empty() {
            return Ok(());
        }
        let buf = &mut self.indices[dst.0];
        assert!(
            offset + src.len() <= buf.len(),
            "upload_indices: {offset}+{} exceeds its buffer",
            src.len()
        );
        let mut view = buf.slice_mut(offset..offset + src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(|e| device_error("copying indices to the GPU", e))
    }

    fn download(&mut self, src: Region, dst: &mut [f32]) -> Result<()> {
        assert_eq!(src.len, dst.len(), "download length");
        self.refuse_while_capturing("a copy to the host")?;
        if src.len > 0 {
            let buf = &self.bufs[src.buf.0];
            assert!(
                src.offset + src.len <= buf.len(),
                "download: {src:?} exceeds its buffer"
            );
            let view = buf.slice(src.offset..src.offset + src.len);
            self.stream.memcpy_dtoh(&view, dst).map_err(|e| {
                device_error("copying from the GPU (a queued kernel may have failed)", e)
            })?;
        }
        self.synchronize()
    }

    // dst is (n): dst[i] = value. Twin of `fill` in cpu.rs.
    fn fill(&mut self, dst: Region, value: f32) -> Result<()> {
        if dst.len == 0 {
            return Ok(());
        }
        let p_dst = self.ptr(dst);
        let n = dst.len as u64;
        // SAFETY: fill(float* dst, u64 n, float value); p_dst addresses dst.len floats of a live buffer
        // (checked by `ptr`) and n == dst.len.
        unsafe { self.launch(&self.k.fill, grid_1d(dst.len), (p_dst, n, value)) }?;
        Ok(())
    }

    // dst is (rows): dst[i] = the row position i of the epoch reads. Twin of `shuffle_order` in cpu.rs.
    fn shuffle_order(&mut self, dst: IdxId, rows: usize, key: u64) -> Result<()> {
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

    // data is (rows, cols), idx is (out_rows), out is (out_rows, cols). Twin of `gather_rows` in cpu.rs.
    fn gather_rows(
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

    // C = alpha·op(A)·op(B) + beta·C. A is (m,k), or (k,m) when trans_a; B is (k,n), or (n,k) when trans_b;
    // C is (m,n); all row-major. Twin of `gemm` in cpu.rs.
    fn gemm(&mut self, g: Gemm, a: Region, b: Region, c: Region) -> Result<()> {
        self.launch_gemm(g, a, b, c, None)
    }

    // The same product with bias is (n) and C = f(C + bias) in the GEMM's epilogue (gemm.cu). Equals `gemm`
    // followed by `bias_act` bit for bit (same rounding, see `gemm_epilogue`).
    fn gemm_bias_act(
        &mut self,
        g: Gemm,
        a: Region,
        b: Region,
        c: Region,
        bias: Region,
        act: Activation,
    ) -> Result<()> {
        assert_eq!(bias.len, g.n, "gemm_bias_act bias size");
        assert_disjoint("gemm_bias_act", c, bias);
        if !self.fuse_epilogue {
            self.launch_gemm(g, a, b, c, None)?;
            return self.bias_act(c, g.n, bias, act);
        }
        self.launch_gemm(g, a, b, c, Some((bias, act)))
    }

    // z is (rows, cols), bias is (cols): z = f(z + bias) in place. Twin of `bias_act` in cpu.rs.
    fn bias_act(&mut self, z: Region, cols: usize, bias: Region, act: Activation) -> Result<()> {
        assert_eq!(bias.len, cols, "bias_act bias size");
        assert_disjoint("bias_act", z, bias);
        if z.len == 0 {
            return Ok(());
        }
        assert!(
            cols > 0 && z.len.is_multiple_of(cols),
            "bias_act: {} is not rows × {cols}",
            z.len
        );
        let (p_z, p_bias) = (self.ptr(z), self.ptr(bias));
        let (n, cols_u, code) = (z.len as u64, cols as u64, act.code());
        // SAFETY: bias_act(float* z, const float* bias, u64 n, u64 cols, u32 act); z holds n floats and bias
        // holds cols floats (asserted; both checked by `ptr`); the kernel reads bias[i % cols] only.
        unsafe {
            self.launch(
                &self.k.bias_act,
                grid_1d(z.len),
                (p_z, p_bias, n, cols_u, code),
            )
        }?;
        Ok(())
    }

    // grad and y are (rows, cols): grad *= f'(y). Twin of `act_backward` in cpu.rs.
    fn act_backward(&mut self, grad: Region, y: Region, act: Activation) -> Result<()> {
        assert_eq!(grad.len, y.len, "act_backward sizes");
        assert_disjoint("act_backward", grad, y);
        if act == Activation::Linear || grad.len == 0 {
            return Ok(());
        }
        let (p_grad, p_y) = (self.ptr(grad), self.ptr(y));
        let (n, code) = (grad.len as u64, act.code());
        // SAFETY: act_backward(float* grad, const float* y, u64 n, u32 act); grad and y hold n floats each
        // (asserted; checked by `ptr`).
        unsafe {
            self.launch(
                &self.k.act_backward,
                grid_1d(grad.len),
                (p_grad, p_y, n, code),
            )
        }?;
        Ok(())
    }

    // pred, target, grad are (n): grad = 2/count·(pred − target)·f'(pred); loss[0] = Σ (pred − target)²
    // (overwritten). Twin of `mse_backward` in cpu.rs.
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
        assert!(loss.len >= 1, "mse_backward: the loss region is empty");
        let loss = loss.prefix(1);
        for input in [pred, target] {
            assert_disjoint("mse_backward", grad, input);
            assert_disjoint("mse_backward", loss, input);
        }
        assert_disjoint("mse_backward", loss, grad);
        // The same float as the CPU's T::from_f64(2.0 / count as f64).
        let scale = (2.0 / count as f64) as f32;
        let n = pred.len;
        let blocks = n.div_ceil(MSE_THREADS as usize).min(MSE_MAX_BLOCKS);
        let (p_loss, (p_partials, _no_event)) =
            (self.ptr(loss), self.mse_partials.device_ptr(&self.stream));
        if blocks > 0 {
            let (p_pred, p_target, p_grad) = (self.ptr(pred), self.ptr(target), self.ptr(grad));
            let (n_u, code) = (n as u64, act.code());
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (MSE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: mse_backward(const float* pred, const float* target, float* grad, double* partials,
            // u64 n, float scale, u32 act); pred, target, grad hold n floats (asserted; checked by `ptr`);
            // partials holds MSE_MAX_BLOCKS >= gridDim.x doubles; blockDim.x == MSE_THREADS as the kernel's
            // shared-memory tree requires.
            unsafe {
                self.launch(
                    &self.k.mse_backward,
                    cfg,
                    (p_pred, p_target, p_grad, p_partials, n_u, scale, code),
                )
            }?;
        }
        self.finalize_partials(p_partials, blocks, p_loss)
    }

    // m is (rows, cols), out is (cols): out[j] = Σ_r m[r, j] (overwritten). Twin of `col_sum` in cpu.rs.
    fn col_sum(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        assert_eq!(out.len, cols, "col_sum output size");
        assert_disjoint("col_sum", out, m);
        if cols == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "col_sum: {} is not rows × {cols}",
            m.len
        );
        let (p_m, p_out) = (self.ptr(m), self.ptr(out));
        let (rows, cols_u) = ((m.len / cols) as u64, cols as u64);
        let cfg = LaunchConfig {
            grid_dim: (
                cols.div_ceil(COL_SUM_BLOCK.0 as usize).min(MAX_BLOCKS) as u32,
                1,
                1,
            ),
            block_dim: (COL_SUM_BLOCK.0, COL_SUM_BLOCK.1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: col_sum(const float* m, float* out, u64 rows, u64 cols); m holds rows·cols floats and out
        // cols floats (asserted; checked by `ptr`); blockDim is (COL_SUM_TX, COL_SUM_TY) as the kernel's
        // shared tile requires.
        unsafe { self.launch(&self.k.col_sum, cfg, (p_m, p_out, rows, cols_u)) }?;
        Ok(())
    }

    // w, g, v are (P): v = −(g·lr) + v·momentum; w += v. Twin of `sgd_step` in cpu.rs.
    fn sgd_step(&mut self, w: Region, g: Region, v: Region, lr: f32, momentum: f32) -> Result<()> {
        assert!(g.len == w.len && v.len == w.len, "sgd_step sizes");
        assert_disjoint("sgd_step", w, g);
        assert_disjoint("sgd_step", v, g);
        assert_disjoint("sgd_step", w, v);
        if w.len == 0 {
            return Ok(());
        }
        let (p_w, p_g, p_v) = (self.ptr(w), self.ptr(g), self.ptr(v));
        let n = w.len as u64;
        // SAFETY: sgd_step(float* w, const float* g, float* v, u64 n, float lr, float momentum); w, g, v hold
        // n floats each (asserted; checked by `ptr`) and do not overlap (asserted).
        unsafe {
            self.launch(
                &self.k.sgd_step,
                grid_1d(w.len),
                (p_w, p_g, p_v, n, lr, momentum),
            )
        }?;
        Ok(())
    }

    // w, g, m, v are (P); Keras's Adam in Keras's operation order. Twin of `adam_step` in cpu.rs.
    fn adam_step(
        &mut self,
        w: Region,
        g: Region,
        m: Region,
        v: Region,
        alpha: Region,
        s: AdamConfig,
    ) -> Result<()> {
        assert!(
            g.len == w.len && m.len == w.len && v.len == w.len,
            "adam_step sizes"
        );
        assert_eq!(alpha.len, 1, "adam_step: alpha is one value");
        for out in [w, m, v] {
            assert_disjoint("adam_step", out, g);
            assert_disjoint("adam_step", out, alpha);
        }
        assert_disjoint("adam_step", w, m);
        assert_disjoint("adam_step", w, v);
        assert_disjoint("adam_step", m, v);
        if w.len == 0 {
            return Ok(());
        }
        let (p_w, p_g, p_m, p_v) = (self.ptr(w), self.ptr(g), self.ptr(m), self.ptr(v));
        let p_alpha = self.ptr(alpha);
        let n = w.len as u64;
        let cfg = KernelAdamConfig {
            beta1: s.beta1,
            beta2: s.beta2,
            epsilon: s.epsilon,
        };
        // SAFETY: adam_step(float* w, const float* g, float* m, float* v, u64 n, const float* alpha,
        // AdamConfig cfg); the four regions hold n floats each and alpha one (asserted; checked by `ptr`), the
        // outputs overlap no input (asserted); KernelAdamConfig has the kernel's C layout.
        unsafe {
            self.launch(
                &self.k.adam_step,
                grid_1d(w.len),
                (p_w, p_g, p_m, p_v, n, p_alpha, cfg),
            )
        }?;
        Ok(())
    }

    // m is (n, n): m[i, i] = scale·m[i, i] + shift. Twin of `diagonal_affine` in cpu.rs.
    fn diagonal_affine(&mut self, m: Region, n: usize, scale: f32, shift: f32) -> Result<()> {
        assert_eq!(m.len, n * n, "diagonal_affine: m is not n × n");
        if n == 0 {
            return Ok(());
        }
        let p_m = self.ptr(m);
        let n_u = n as u64;
        // SAFETY: diagonal_affine(float* m, u64 n, float scale, float shift); m holds n·n floats (asserted;
        // checked by `ptr`) and the kernel touches only m[i·(n + 1)] for i < n, the last being n·n − 1.
        unsafe {
            self.launch(
                &self.k.diagonal_affine,
                grid_1d(n),
                (p_m, n_u, scale, shift),
            )
        }?;
        Ok(())
    }

    // x is (n), out is (1): out[0] = Σ x² (overwritten). Twin of `sum_squares` in cpu.rs. Two launches, as
    // `mse_backward`: per-block partials into the backend's scratch, then `mse_finalize` sums them.
    fn sum_squares(&mut self, x: Region, out: Region) -> Result<()> {
        assert!(out.len >= 1, "sum_squares: the output region is empty");
        let out = out.prefix(1);
        assert_disjoint("sum_squares", out, x);
        let blocks = x.len.div_ceil(MSE_THREADS as usize).min(MSE_MAX_BLOCKS);
        let (p_out, (p_partials, _no_event)) =
            (self.ptr(out), self.mse_partials.device_ptr(&self.stream));
        if blocks > 0 {
            let p_x = self.ptr(x);
            let n = x.len as u64;
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (MSE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: sum_squares_partials(const float* x, double* partials, u64 n); x holds n floats
            // (checked by `ptr`); partials holds MSE_MAX_BLOCKS >= gridDim.x doubles; blockDim.x ==
            // MSE_THREADS == SUM_SQUARES_THREADS as the kernel's shared-memory tree requires.
            unsafe { self.launch(&self.k.sum_squares_partials, cfg, (p_x, p_partials, n)) }?;
        }
        self.finalize_partials(p_partials, blocks, p_out)
    }

    // x is (n), sum_sq is (1): x /= √sum_sq[0] when sum_sq[0] > 0. Twin of `div_by_sqrt` in cpu.rs.
    fn div_by_sqrt(&mut self, x: Region, sum_sq: Region) -> Result<()> {
        assert!(sum_sq.len >= 1, "div_by_sqrt: the sum_sq region is empty");
        let sum_sq = sum_sq.prefix(1);
        assert_disjoint("div_by_sqrt", x, sum_sq);
        if x.len == 0 {
            return Ok(());
        }
        let (p_x, p_s) = (self.ptr(x), self.ptr(sum_sq));
        let n = x.len as u64;
        // SAFETY: div_by_sqrt(float* x, const float* sum_sq, u64 n); x holds n floats, sum_sq one float
        // (both checked by `ptr`), and they do not overlap (asserted): every thread reads sum_sq[0] while
        // others write x.
        unsafe { self.launch(&self.k.div_by_sqrt, grid_1d(x.len), (p_x, p_s, n)) }?;
        Ok(())
    }

    // m is (rows, cols): m[:, j] /= ‖m[:, j]‖₂ in place. Twin of `normalize_columns` in cpu.rs.
    fn normalize_columns(&mut self, m: Region, cols: usize) -> Result<()> {
        if cols == 0 || m.len == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "normalize_columns: {} is not rows × {cols}",
            m.len
        );
        let p_m = self.ptr(m);
        let (rows, cols_u) = ((m.len / cols) as u64, cols as u64);
        // SAFETY: normalize_columns(float* m, u64 rows, u64 cols); m holds rows·cols floats (asserted;
        // checked by `ptr`); blockDim is (COLUMN_TX, COLUMN_TY) as the kernel's shared tile requires.
        unsafe {
            self.launch(
                &self.k.normalize_columns,
                column_grid(cols),
                (p_m, rows, cols_u),
            )
        }?;
        Ok(())
    }

    // m and out are (rows, cols): out = m − colmean(m). Twin of `center_columns` in cpu.rs.
    fn center_columns(&mut self, m: Region, cols: usize, out: Region) -> Result<()> {
        assert_eq!(m.len, out.len, "center_columns sizes");
        assert_disjoint("center_columns", out, m);
        if cols == 0 || m.len == 0 {
            return Ok(());
        }
        assert!(
            m.len.is_multiple_of(cols),
            "center_columns: {} is not rows × {cols}",
            m.len
        );
        let (p_m, p_out) = (self.ptr(m), self.ptr(out));
        let (rows, cols_u) = ((m.len / cols) as u64, cols as u64);
        // SAFETY: center_columns(const float* m, float* out, u64 rows, u64 cols); m and out hold rows·cols
        // floats each (asserted; checked by `ptr`), rows >= 1, and they do not overlap (asserted);
        // blockDim is (COLUMN_TX, COLUMN_TY) as the kernel's shared tile requires.
        unsafe {
            self.launch(
                &self.k.center_columns,
                column_grid(cols),
                (p_m, p_out, rows, cols_u),
            )
        }?;
        Ok(())
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

    fn can_capture(&self) -> bool {
        true
    }

    fn free_memory(&self) -> Option<usize> {
        // cuMemGetInfo reports on the context current on this thread.
        self.ctx.bind_to_thread().ok()?;
        cu::mem_get_info().ok().map(|(free, _total)| free)
    }

    fn begin_capture(&mut self) -> Result<()> {
        assert!(!self.capturing, "begin_capture while recording");
        // Thread-local mode: only this thread's calls that cannot be recorded fail (another thread's work on
        // another context is none of this recording's business).
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| device_error("starting a CUDA graph recording", e))?;
        self.capturing = true;
        Ok(())
    }

    fn end_capture(&mut self) -> Result<GraphId> {
        assert!(self.capturing, "end_capture without begin_capture");
        self.capturing = false;
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| device_error("ending a CUDA graph recording", e))?
            .ok_or_else(|| Error::Device("the CUDA graph recording captured nothing".into()))?;
        // Uploading now keeps the first replay from paying for it.
        graph
            .upload()
            .map_err(|e| device_error("uploading a CUDA graph", e))?;
        self.graphs.push(graph);
        Ok(GraphId(self.graphs.len() - 1))
    }

    fn abort_capture(&mut self) {
        if self.capturing {
            self.capturing = false;
            // An invalidated recording ends with an error and no graph; a valid one ends with a graph that
            // is dropped here. Either way the stream is no longer recording.
            let _ = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        }
    }

    fn replay(&mut self, graph: GraphId) -> Result<()> {
        self.refuse_while_capturing("replaying a CUDA graph")?;
        let g = self
            .graphs
            .get(graph.0)
            .ok_or_else(|| Error::Device(format!("no CUDA graph {}", graph.0)))?;
        g.launch().map_err(|e| self.launch_error("a CUDA graph", e))
    }

    fn clear_graphs(&mut self) {
        // An executable graph still running is freed when it completes (cuGraphExecDestroy).
        self.graphs.clear();
        if !self.retired_partials.is_empty() {
            // The scratch of replays still queued is freed once they are done. An error here was reported
            // by the op that caused it.
            let _ = self.stream.synchronize();
            for old in self.retired_partials.drain(..) {
                self.bytes -= old.len() * std::mem::size_of::<f32>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{driver_too_old, GemmKernel, GemmPlan, GEMM_BK};

    #[test]
    fn drivers_older_than_the_bindings_are_refused() {
        for old in ["10.2", "11.0", "11.4", "11.7"] {
            assert!(driver_too_old(old), "{old}");
        }
        for new in ["11.8", "12.0", "12.10", "13.0"] {
            assert!(!driver_too_old(new), "{new}");
        }
        // A version that does not parse is let try (the driver's own errors still apply).
        assert!(!driver_too_old("unknown"));
    }

    const H100_SMS: usize = 132;
    const GTX1060_SMS: usize = 10;

    #[test]
    fn auto_plan_follows_the_shape_and_the_gpu() {
        let auto = GemmKernel::Auto;
        // Big products: 128×128 tiles (1024 of them at 4096², 64 at 1024² on a 10-SM card).
        assert_eq!(auto.plan(4096, 4096, 4096, H100_SMS), GemmPlan::Large);
        assert_eq!(auto.plan(1024, 1024, 1024, GTX1060_SMS), GemmPlan::Large);
        // mnist's x·W (256×256×784): 16 tiles of 64 leave an H100 idle, so K is split six ways (784 / 128
        // caps it); a GTX 1060 is filled by the 16 tiles alone.
        assert_eq!(
            auto.plan(256, 256, 784, H100_SMS),
            GemmPlan::SplitK {
                k_split: 144,
                splits: 6
            }
        );
        assert_eq!(auto.plan(256, 256, 784, GTX1060_SMS), GemmPlan::Tile64);
        // K too shallow to share out, and K = 0.
        assert_eq!(auto.plan(256, 64, 64, H100_SMS), GemmPlan::Tile64);
        assert_eq!(auto.plan(5, 3, 0, H100_SMS), GemmPlan::Tile64);
    }

    #[test]
    fn split_plans_cover_k_exactly_in_whole_slices() {
        for k in [1, 15, 16, 17, 100, 255, 256, 784, 1000, 4097] {
            for (m, n) in [(1, 1), (64, 64), (256, 784), (5000, 5000)] {
                for sms in [1, GTX1060_SMS, H100_SMS] {
                    for kernel in [GemmKernel::Auto, GemmKernel::SplitK] {
                        if let GemmPlan::SplitK { k_split, splits } = kernel.plan(m, n, k, sms) {
                            assert_eq!(k_split % GEMM_BK, 0, "{m}×{n}×{k} on {sms}");
                            assert!(splits * k_split >= k && (splits - 1) * k_split < k);
                            assert!((1..=sms.max(2)).contains(&splits), "{splits} splits");
                        }
                    }
                }
            }
        }
        // Forced split-K splits whenever K has two slices.
        assert!(matches!(
            GemmKernel::SplitK.plan(4096, 4096, 64, H100_SMS),
            GemmPlan::SplitK { splits: 2, .. }
        ));
    }
}
