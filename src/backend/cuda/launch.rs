//! Every kernel's parameter list, in one table, checked twice without a GPU.
//!
//! cudarc passes a launch's arguments as pointers to their bytes, and the driver reads as many bytes as the
//! kernel's parameter has: an argument of the wrong width (a `u32` where the kernel takes a `u64`) is read
//! with whatever lies past it, a missing one is read from memory that is not an argument, and nothing says
//! so until a GPU computes garbage. So each kernel here is a [`Kernel<P>`] whose tuple `P` is its parameter list:
//! - the compiler holds every launch in `cuda/` to its kernel's tuple (`Kernel::launch` takes a `P`);
//! - [`kernel_signatures`] spells each tuple in PTX's terms, and the test
//!   `kernel_parameters_match_the_ptx` (tests/gpu_kernels.rs) compares it with the `.entry` of the PTX that
//!   nvcc wrote for `kernels/*.cu`, on any machine that builds the kernels.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::result::DriverError;
use cudarc::driver::{
    CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};

use super::device::{device_error, guarded};
use super::CudaBackend;
use crate::activation::Activation;
use crate::backend::{HalfFormat, NoiseParams};
use crate::error::{Error, Result};

/// A device address, as a kernel's pointer parameter receives it.
pub(super) type DevPtr = u64;

/// A kernel parameter type, with its PTX declaration (what follows `.param` in an `.entry`, the name left
/// out): `.u64` for pointers and 64-bit integers, `.u32` for `int` and `unsigned` (PTX gives both the same
/// type), `.f32` for `float`, `.align A .b8[N]` for a struct passed by value.
pub(super) trait PtxParam: DeviceRepr {
    const PTX: &'static str;
}

impl PtxParam for u64 {
    const PTX: &'static str = ".u64";
}
impl PtxParam for u32 {
    const PTX: &'static str = ".u32";
}
impl PtxParam for i32 {
    const PTX: &'static str = ".u32";
}
impl PtxParam for f32 {
    const PTX: &'static str = ".f32";
}

/// Adam's constants as `adam_step` receives them: the layout of `struct AdamConfig` in optim.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelAdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
}

// SAFETY: three f32 in C layout, the same size (12), alignment (4) and field order as `AdamConfig` in
// optim.cu (the PTX declares it `.align 4 .b8[12]`, which the signature test checks).
unsafe impl DeviceRepr for KernelAdamConfig {}

impl PtxParam for KernelAdamConfig {
    const PTX: &'static str = ".align 4 .b8[12]";
}

/// The noise's thresholds and sigma as `corrupt_rows` receives them: the layout of `struct NoiseConfig` in
/// noise.cu, the values of [`NoiseParams`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelNoiseConfig {
    pub swap_below: u32,
    pub mask_below: u32,
    pub sigma: f32,
}

impl From<NoiseParams> for KernelNoiseConfig {
    fn from(p: NoiseParams) -> Self {
        KernelNoiseConfig {
            swap_below: p.swap_below,
            mask_below: p.mask_below,
            sigma: p.sigma,
        }
    }
}

// SAFETY: two u32 and an f32 in C layout, the same size (12), alignment (4) and field order as `NoiseConfig`
// in noise.cu (the PTX declares it `.align 4 .b8[12]`, which the signature test checks).
unsafe impl DeviceRepr for KernelNoiseConfig {}

impl PtxParam for KernelNoiseConfig {
    const PTX: &'static str = ".align 4 .b8[12]";
}

/// A kernel's whole parameter list: a tuple of [`PtxParam`]s.
pub(super) trait KernelParams {
    /// Each parameter's PTX declaration, in order.
    fn ptx() -> Vec<&'static str>;
    /// Appends every parameter to `launch`, in order.
    fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>);
}

macro_rules! kernel_params {
    ($($name:ident . $index:tt),+) => {
        impl<$($name: PtxParam),+> KernelParams for ($($name,)+) {
            fn ptx() -> Vec<&'static str> {
                vec![$($name::PTX),+]
            }
            fn push<'a>(&'a self, launch: &mut LaunchArgs<'a>) {
                $(launch.arg(&self.$index);)+
            }
        }
    };
}

kernel_params!(A.0, B.1, C.2);
kernel_params!(A.0, B.1, C.2, D.3);
kernel_params!(A.0, B.1, C.2, D.3, E.4);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5, G.6);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9, K.10);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9, K.10, L.11);
kernel_params!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7, I.8, J.9, K.10, L.11, M.12, N.13);

/// A loaded kernel entry point whose parameters are the tuple `P`.
pub(super) struct Kernel<P> {
    function: CudaFunction,
    name: &'static str,
    params: PhantomData<fn(P)>,
}

impl<P: KernelParams> Kernel<P> {
    pub(super) fn new(function: CudaFunction, name: &'static str) -> Kernel<P> {
        Kernel {
            function,
            name,
            params: PhantomData,
        }
    }

    /// The entry point's name (errors name the kernel that failed).
    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    /// Queues one launch of the kernel on `stream`.
    ///
    /// # Safety
    /// The kernel's own contract: every pointer addresses as many live elements as the kernel reads or writes
    /// through it for these sizes, outputs overlap nothing the kernel reads, and `cfg` is a grid and block the
    /// kernel accepts. The parameters' count and types are this kernel's (the tuple `P`, checked against the
    /// PTX by `kernel_parameters_match_the_ptx`).
    pub(super) unsafe fn launch(
        &self,
        stream: &Arc<CudaStream>,
        cfg: LaunchConfig,
        params: P,
    ) -> Result<(), DriverError> {
        let mut launch = stream.launch_builder(&self.function);
        params.push(&mut launch);
        // SAFETY: the caller's contract; the arguments are P's, which the PTX entry declares.
        unsafe { launch.launch(cfg) }.map(|_events| ())
    }
}

macro_rules! kernels {
    ($($(#[$doc:meta])* $field:ident in $module:literal: ($($param:ty),+ $(,)?);)+) => {
        /// Every kernel entry point, looked up once, each with its parameter list.
        pub(super) struct Kernels {
            $($(#[$doc])* pub(super) $field: Kernel<($($param,)+)>,)+
        }

        impl Kernels {
            /// Looks up every entry: `get(module, entry)`.
            pub(super) fn load<E>(
                mut get: impl FnMut(&str, &str) -> Result<CudaFunction, E>,
            ) -> Result<Kernels, E> {
                Ok(Kernels {
                    $($field: Kernel::new(get($module, stringify!($field))?, stringify!($field)),)+
                })
            }
        }

        /// (module, entry, PTX declaration of each parameter) of every kernel the CUDA backend launches, in
        /// the order of its table: what the test `kernel_parameters_match_the_ptx` compares with the PTX.
        pub fn kernel_signatures() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
            vec![$(($module, stringify!($field), <($($param,)+) as KernelParams>::ptx()),)+]
        }
    };
}

// The table: each field is named after its `.entry` and lists the kernel's parameters in the order of its C
// signature (the comment; the `.cu` file is the module's name).
kernels! {
    /// (const float* A, const float* B, float* C, int M, int N, int K, int trans_a, int trans_b,
    /// float alpha, float beta, const float* bias, unsigned act, float* partials, int k_split)
    gemm in "gemm": (
        DevPtr, DevPtr, DevPtr, i32, i32, i32, i32, i32, f32, f32, DevPtr, u32, DevPtr, i32,
    );
    /// `gemm`'s parameters without the last two.
    gemm_large in "gemm": (DevPtr, DevPtr, DevPtr, i32, i32, i32, i32, i32, f32, f32, DevPtr, u32);
    /// (const float* partials, int splits, float* C, int M, int N, float alpha, float beta,
    /// const float* bias, unsigned act)
    gemm_split_reduce in "gemm": (DevPtr, i32, DevPtr, i32, i32, f32, f32, DevPtr, u32);
    /// (float* z, const float* bias, u64 n, u64 cols, u32 act)
    bias_act in "elementwise": (DevPtr, DevPtr, u64, u64, u32);
    /// (float* grad, const float* y, u64 n, u32 act)
    act_backward in "elementwise": (DevPtr, DevPtr, u64, u32);
    /// (float* dst, u64 n, float value)
    fill in "elementwise": (DevPtr, u64, f32);
    /// (const float* pred, const float* target, float* grad, double* partials, u64 n, float scale, u32 act)
    mse_backward in "loss": (DevPtr, DevPtr, DevPtr, DevPtr, u64, f32, u32);
    /// (const double* partials, u32 num_partials, float* loss)
    mse_finalize in "loss": (DevPtr, u32, DevPtr);
    /// (const float* m, float* out, u64 rows, u64 cols)
    col_sum in "reduce": (DevPtr, DevPtr, u64, u64);
    /// (float* w, const float* g, float* v, u64 n, float lr, float momentum)
    sgd_step in "optim": (DevPtr, DevPtr, DevPtr, u64, f32, f32);
    /// (float* w, const float* g, float* m, float* v, u64 n, const float* alpha, AdamConfig cfg)
    adam_step in "optim": (DevPtr, DevPtr, DevPtr, DevPtr, u64, DevPtr, KernelAdamConfig);
    /// (const float* data, const u32* idx, float* out, u64 out_rows, u64 cols, u64 data_rows)
    gather_rows in "data": (DevPtr, DevPtr, DevPtr, u64, u64, u64);
    /// (const u16* data, const u32* idx, float* out, u64 out_rows, u64 cols, u64 data_rows, u32 format)
    gather_rows_half in "data": (DevPtr, DevPtr, DevPtr, u64, u64, u64, u32);
    /// (u32* order, u32 rows, u64 key)
    shuffle_order in "data": (DevPtr, u32, u64);
    /// (const float* clean, const float* donors, const u32* idx, const float* fill, const u32* key, float* out,
    /// u64 rows, u64 cols, u32 donor_rows, NoiseConfig cfg)
    corrupt_rows in "noise": (
        DevPtr, DevPtr, DevPtr, DevPtr, DevPtr, DevPtr, u64, u64, u32, KernelNoiseConfig,
    );
    /// `corrupt_rows`'s with `const u16* donors` and a last `u32 format`.
    corrupt_rows_half in "noise": (
        DevPtr, DevPtr, DevPtr, DevPtr, DevPtr, DevPtr, u64, u64, u32, KernelNoiseConfig, u32,
    );
    /// (float* m, u64 n, float scale, float shift)
    diagonal_affine in "constraints": (DevPtr, u64, f32, f32);
    /// (const float* x, double* partials, u64 n)
    sum_squares_partials in "constraints": (DevPtr, DevPtr, u64);
    /// (float* x, const float* sum_sq, u64 n)
    div_by_sqrt in "constraints": (DevPtr, DevPtr, u64);
    /// (float* m, u64 rows, u64 cols)
    normalize_columns in "constraints": (DevPtr, u64, u64);
    /// (const float* m, float* out, u64 rows, u64 cols)
    center_columns in "constraints": (DevPtr, DevPtr, u64, u64);
}

// Launch shapes; each must match the constant of the same name in kernels/*.cu (`kernel_constants`).
/// Threads per block of the element-wise kernels (grid-stride loops, so any grid works).
pub(super) const THREADS: u32 = 256;
/// Cap on the grid of the element-wise kernels: 4096·256 threads keep any GPU busy.
pub(super) const MAX_BLOCKS: usize = 4096;
/// `GEMM_THREADS` in gemm.cu: one block of `gemm` computes a GEMM_TILE × GEMM_TILE tile of C.
pub(super) const GEMM_THREADS: u32 = 256;
/// `BM` = `BN` in gemm.cu.
pub(super) const GEMM_TILE: usize = 64;
/// `GEMM_LARGE_THREADS` in gemm.cu: one block of `gemm_large` computes a GEMM_LARGE_TILE² tile of C.
pub(super) const GEMM_LARGE_THREADS: u32 = 256;
/// `LBM` = `LBN` in gemm.cu.
pub(super) const GEMM_LARGE_TILE: usize = 128;
/// The GEMM's int indices need room for one more tile (see gemm.cu).
pub(super) const GEMM_MAX_DIM: usize = i32::MAX as usize - 256;
/// `MSE_THREADS` in loss.cu, and `SUM_SQUARES_THREADS` in constraints.cu (whose partials `mse_finalize` sums).
pub(super) const MSE_THREADS: u32 = 256;
/// `MSE_MAX_BLOCKS` in loss.cu: the size of the partial-sum scratch buffer (of `mse_backward` and of
/// `sum_squares`).
pub(super) const MSE_MAX_BLOCKS: usize = 1024;
/// `COL_SUM_TX`, `COL_SUM_TY` in reduce.cu.
pub(super) const COL_SUM_BLOCK: (u32, u32) = (32, 16);
/// `COLUMN_TX`, `COLUMN_TY` in constraints.cu (`normalize_columns`, `center_columns`).
pub(super) const COLUMN_BLOCK: (u32, u32) = (32, 16);
/// `gridDim.y` limit of every GPU.
pub(super) const MAX_GRID_Y: usize = 65535;
/// `BK` in gemm.cu: a split covers whole slices.
pub(super) const GEMM_BK: usize = 16;

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

impl Kernels {
    pub(super) fn load_from(modules: &HashMap<&str, Arc<CudaModule>>) -> Result<Kernels> {
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
pub(super) fn grid_1d(n: usize) -> LaunchConfig {
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

impl CudaBackend {
    pub(super) fn launch_error(&self, kernel: &str, e: DriverError) -> Error {
        device_error(&format!("launching {kernel} on {}", self.info.name), e)
    }

    /// Queues `kernel` with `params` on the compute stream; a failure names the kernel and the GPU.
    ///
    /// # Safety
    /// [`Kernel::launch`]'s: the kernel's own contract for these pointers, sizes and grid.
    pub(super) unsafe fn launch<P: KernelParams>(
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
