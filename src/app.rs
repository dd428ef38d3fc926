//! The workflows behind the CLI, generic over the backend: train a model from a data set, evaluate it,
//! encode and reconstruct rows. `main.rs` only turns flags into these calls and results into output.

use crate::backend::{cuda, Backend, CpuBackend, Real};
use crate::data::{load_csv, ColumnSelector, Dataset, Normalization};
use crate::error::{Error, Result};
use crate::io::ModelFile;
use crate::model::ModelSpec;
use crate::train::{DataOptions, DataSet, DataType, EpochReport, Network, Placement, TrainConfig};
use std::path::Path;

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

/// Runs `$body` with `$backend` bound to a fresh backend of `$device` (monomorphized per backend).
#[macro_export]
macro_rules! with_backend {
    ($device:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::app::Device::Cpu => {
                let $backend = $crate::backend::CpuBackend::<f32>::new();
                $body
            }
            $crate::app::Device::Cuda(ordinal) => {
                let $backend = $crate::backend::cuda::CudaBackend::new(ordinal)?;
                $body
            }
        }
    };
}

/// Loads a data set for a trained model: the same ignored columns, the same width, the same normalization.
pub fn load_for_model(path: &Path, model: &ModelFile) -> Result<Dataset> {
    let mut data = load_csv(path, &model.ignore)?;
    let d0 = model.spec.input_width();
    if data.cols != d0 {
        return Err(Error::file(
            path,
            format!(
                "has {} feature columns after ignoring [{}], but the model takes {d0}",
                data.cols,
                model
                    .ignore
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    model.normalization.apply(&mut data);
    Ok(data)
}

/// Trains `params` (flat, see `model.rs`) on `data` (already normalized). Returns the trained parameters and
/// the per-epoch reports.
pub fn fit<B: Backend>(
    backend: B,
    spec: &ModelSpec,
    params: &[f32],
    data: &Dataset,
    cfg: &TrainConfig,
    on_epoch: impl FnMut(&EpochReport) -> Result<()>,
) -> Result<(Vec<f32>, Vec<EpochReport>, String)> {
    let name = backend.name();
    let mut net = Network::new(backend, spec, params, cfg.batch_size, Some(cfg.optimizer))?;
    net.set_data(
        DataSet::Train,
        &data.values,
        data.rows,
        DataOptions::default(),
    )?;
    let reports = net.fit(cfg, on_epoch)?;
    Ok((net.read_params()?, reports, name))
}

/// What one forward pass over a data set produced.
pub struct Evaluation {
    pub mse: f64,
    /// (rows, d_L) when asked for.
    pub codes: Vec<f32>,
    /// (rows, d_0), in the normalized space, when asked for.
    pub reconstructions: Vec<f32>,
    pub device: String,
}

/// Batch size for inference: large enough to keep a GPU busy, small enough for any card.
pub const EVAL_BATCH: usize = 4096;

pub fn evaluate<B: Backend>(
    backend: B,
    model: &ModelFile,
    data: &Dataset,
    want_codes: bool,
    want_recon: bool,
) -> Result<Evaluation> {
    let device = backend.name();
    let batch = EVAL_BATCH.min(data.rows.max(1));
    let mut net = Network::new(backend, &model.spec, &model.params, batch, None)?;
    // A data set larger than the GPU's free memory stays on the host, a batch copied up at a time.
    net.set_data(
        DataSet::Train,
        &data.values,
        data.rows,
        DataOptions::new(DataType::F32, Placement::Auto),
    )?;
    let mut codes = Vec::with_capacity(if want_codes {
        data.rows * model.spec.code_width()
    } else {
        0
    });
    let mut recon = Vec::with_capacity(if want_recon { data.values.len() } else { 0 });
    let mse = net.evaluate(
        |_, _, c, r| {
            codes.extend(c.iter().map(|x| x.to_f32()));
            recon.extend(r.iter().map(|x| x.to_f32()));
        },
        want_codes,
        want_recon,
    )?;
    Ok(Evaluation {
        mse,
        codes,
        reconstructions: recon,
        device,
    })
}

/// CPU evaluation of a model on an in-memory data set (used by tests and `demo`).
pub fn evaluate_cpu(model: &ModelFile, data: &Dataset) -> Result<Evaluation> {
    evaluate(CpuBackend::<f32>::new(), model, data, true, true)
}

/// Parses `--ignore-columns`.
pub fn ignore_list(flag: Option<&str>) -> Vec<ColumnSelector> {
    flag.map(crate::data::parse_selectors).unwrap_or_default()
}

/// Normalization that does nothing, for weights that come without one.
pub fn identity_normalization(cols: usize) -> Normalization {
    Normalization {
        kind: crate::data::NormalizeKind::None,
        shift: vec![0.0; cols],
        scale: vec![1.0; cols],
    }
}
