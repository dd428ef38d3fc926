//! The workflows behind the commands, as library calls with plain request types: train a model from a data
//! file (fresh or resumed, with validation, checkpoints and a caller-owned stop flag), evaluate a model,
//! encode and reconstruct rows, and the 51→1 demo. They report through return values and the
//! [`train::TrainObserver`] trait, never by printing: `main.rs` turns flags into requests and prints what
//! comes back, and other front ends (a Python package) can call the same functions.
//!
//! - `train.rs`: [`train::train`] and its request, observer and outcome.
//! - `prepare.rs`: what a run starts from, fresh or from a checkpoint: the data loaded and split, the model
//!   built or read back.
//! - `infer.rs`: `eval`, `encode`, `reconstruct`.
//! - `paths.rs`: every input and output checked before any work (never an output onto an input, a device
//!   or a folder), and the outputs locked for the length of a run.
//! - `demo.rs`: the 51→1 scenario.

use crate::backend::cuda;
use crate::error::Result;

pub mod demo;
pub mod infer;
pub mod paths;
mod prepare;
pub mod train;

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    /// The GPU when one works, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(format!(
                "unknown device '{other}' (expected cpu, cuda or auto)"
            )),
        }
    }
}

/// A device that is known to work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

/// Picks the device: `cuda` fails with one line when there is no usable GPU, `auto` falls back to the CPU.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            check_cuda(0)?;
            Ok(Device::Cuda(0))
        }
        DeviceChoice::Auto => Ok(match check_cuda(0) {
            Ok(()) => Device::Cuda(0),
            Err(_) => Device::Cpu,
        }),
    }
}

/// Whether GPU `ordinal` can run our kernels, checked without creating a context (see
/// [`cuda::check_device`]).
pub fn check_cuda(ordinal: usize) -> Result<()> {
    cuda::check_device(ordinal).map(|_| ())
}

/// Runs `$body` with `$backend` bound to a fresh backend of `$device` (monomorphized per backend). The
/// enclosing function returns a `Result` that a [`crate::Error`] converts into.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::workflow::Device::Cpu => {
                let $backend = $crate::backend::CpuBackend::<f32>::new();
                $body
            }
            $crate::workflow::Device::Cuda(ordinal) => {
                let $backend = $crate::backend::cuda::CudaBackend::new(ordinal)?;
                $body
            }
        }
    };
}
