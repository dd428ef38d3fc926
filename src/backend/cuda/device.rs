//! Finding a GPU and deciding whether tiedae can use it, without creating a context: the kernels this build
//! carries (`build.rs` embeds their PTX), the driver (present, initialized, new enough), the device and its
//! compute capability. `check_device` is asked by `CudaBackend::new`, `--device auto` and `tiedae info`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute, CUresult};

use crate::error::{Error, Result};

/// The PTX of `kernels/*.cu` as written by `build.rs`: `PTX_ARCH`, `NVCC_VERSION` and `MODULES`.
mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The error of [`CudaBackend::new`](super::CudaBackend::new) in a build without kernels.
pub const NO_KERNELS_MESSAGE: &str = "CUDA unavailable: this tiedae was built without GPU kernels (nvcc was \
                                      not found at build time); install nvcc (scripts/install-nvcc.sh) and \
                                      rebuild, or use --device cpu";
/// The error when the driver library cannot be loaded.
pub const NO_DRIVER_MESSAGE: &str =
    "CUDA unavailable: no NVIDIA driver found (libcuda not loadable); use --device cpu";

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

pub(super) fn device_error(what: &str, e: DriverError) -> Error {
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
pub(super) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, DriverError>,
) -> Result<T> {
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

#[cfg(test)]
mod tests {
    use super::driver_too_old;

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
}
