//! Model files: safetensors, with the tensors named as Keras would name them so weights move to and from
//! numpy, PyTorch and Keras:
//!   encoder.{i}.kernel  f32 (d_i, d_{i+1})   the ONE kernel of tied layer i
//!   encoder.{i}.bias    f32 (d_{i+1})
//!   decoder.{i}.bias    f32 (d_i)
//!   normalization.shift, normalization.scale  f32 (d_0)   x' = (x − shift)·scale, applied before the model
//! and the rest of what the model needs in the safetensors metadata (string → string): the format and its
//! version, widths, activations, normalization kind, feature names and ignored columns, and the noise of a
//! denoising run (`noise`, only when there was any). There is no decoder kernel, in memory or on disk.
//!
//! Every file is written to a temporary file beside the target and renamed over it only once complete, so
//! a failed run leaves an existing file exactly as it was (`files.rs`). Since format version 2 a file
//! carries a checksum of its tensors and metadata (`checksum.rs`), checked whenever it is read: a flipped
//! bit is an error naming the file. Files of version 1 and weights written elsewhere (Keras, numpy) have
//! none; they still load, and the loader says so ([`Integrity::NoChecksum`]).

use crate::activation::Activation;
use crate::data::{ColumnSelector, Normalization, NormalizeKind};
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{Constraints, DataType, FitState, Noise, OptimizerState};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub mod checksum;
mod files;
mod header;

pub use files::{folder_of, read_checked, remove_stale_temps, temp_path, write_atomic};
pub use header::{check_header_fits, NamesSize};

pub const FORMAT: &str = "tiedae";
/// Version 2 added the checksum; version 1 files (without one) are still read.
pub const FORMAT_VERSION: &str = "2";
const FORMAT_VERSIONS_READ: [&str; 2] = ["1", "2"];

/// The largest header safetensors writes or reads (its `MAX_HEADER_SIZE`).
pub const MAX_HEADER_BYTES: u128 = 100_000_000;

/// Whether a file read back was checked against its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Its checksum matched its tensors and metadata.
    Verified,
    /// It has no checksum (a version 1 file, or weights from elsewhere): a damaged file cannot be told from
    /// a good one, though its weights were still checked to be finite.
    NoChecksum,
}

/// Everything a model file holds.
#[derive(Debug, Clone)]
pub struct ModelFile {
    pub spec: ModelSpec,
    /// The flat parameter vector, laid out as `ModelSpec::slots` says.
    pub params: Vec<f32>,
    pub normalization: Normalization,
    /// Names of the d_0 feature columns the model was trained on.
    pub feature_names: Vec<String>,
    /// The `--ignore-columns` of training, applied again by `eval`, `encode` and `reconstruct`.
    pub ignore: Vec<ColumnSelector>,
    /// Free-form facts about the run (optimizer, epochs, final loss, device), shown by `summary`.
    pub training: BTreeMap<String, String>,
    /// What `train --resume` needs to continue exactly where the run stopped.
    pub checkpoint: Option<Checkpoint>,
    /// The noise its training inputs got (`--noise`): off for a plain autoencoder, and for files from before
    /// the flag. Stored as the metadata key `noise` (`swap:0.15,gaussian:0.05`) when on.
    pub noise: Noise,
}

/// The training state saved with a model: the run's settings, where it stands, and the optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub settings: RunSettings,
    pub state: FitState,
    pub optimizer_state: OptimizerState,
    /// (epoch, loss, val_loss) of every epoch so far, for plots that span resumed runs.
    pub history: Vec<(usize, f64, Option<f64>)>,
    /// The data set the run trains on, so that a resumed run can tell another one (None in files written
    /// before it was recorded).
    pub data_identity: Option<DataIdentity>,
}

/// What identifies a data set: its rows and a fingerprint of its feature columns' names and values
/// ([`checksum::data_fingerprint`]); the columns themselves are the model's feature names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataIdentity {
    pub rows: usize,
    pub fingerprint: String,
}

impl DataIdentity {
    pub fn of(data: &crate::data::Dataset) -> DataIdentity {
        DataIdentity {
            rows: data.rows,
            fingerprint: checksum::data_fingerprint(&data.feature_names, data.rows, &data.values),
        }
    }
}

/// The settings a resumed run takes from its checkpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    pub data: PathBuf,
    pub optimizer: String,
    pub lr: f32,
    pub momentum: f32,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub val_split: Option<f64>,
    pub patience: Option<usize>,
    pub orthogonality: f32,
    pub uncorrelated: f32,
    pub unit_norm: bool,
    /// How the data set is stored on the device (`--data-dtype`); files from before the flag read as f32.
    #[serde(default)]
    pub data_dtype: DataType,
    /// The noise of the training inputs (`--noise`); files from before the flag read as none.
    #[serde(default)]
    pub noise: Noise,
}

impl RunSettings {
    pub fn optimizer(&self) -> Result<Optimizer> {
        Optimizer::from_flags(&self.optimizer, Some(self.lr), self.momentum)
    }
    pub fn constraints(&self) -> Constraints {
        Constraints {
            orthogonality: self.orthogonality,
            uncorrelated: self.uncorrelated,
            unit_norm: self.unit_norm,
        }
    }
}

/// The JSON of a checkpoint's metadata (the tensors hold the optimizer state and best weights).
#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    settings: RunSettings,
    epochs_done: usize,
    step_in_epoch: usize,
    steps_done: u64,
    best_loss: Option<f64>,
    best_epoch: usize,
    history: Vec<(usize, f64, Option<f64>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_identity: Option<DataIdentity>,
}

/// safetensors stores little-endian: on a little-endian host that is the memory itself.
fn f32_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

/// The inverse of [`f32_bytes`]; `bytes` need not be aligned.
fn f32_values(bytes: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec(bytes)
    } else {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

pub fn save_model(path: &Path, model: &ModelFile) -> Result<()> {
    let spec = &model.spec;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (slots, w)) in spec.slots().iter().zip(spec.widths.windows(2)).enumerate() {
        let p = &model.params;
        tensors.push((
            format!("encoder.{i}.kernel"),
            vec![w[0], w[1]],
            f32_bytes(&p[slots.kernel.clone()]),
        ));
        tensors.push((
            format!("encoder.{i}.bias"),
            vec![w[1]],
            f32_bytes(&p[slots.enc_bias.clone()]),
        ));
        tensors.push((
            format!("decoder.{i}.bias"),
            vec![w[0]],
            f32_bytes(&p[slots.dec_bias.clone()]),
        ));
    }
    let d0 = spec.input_width();
    tensors.push((
        "normalization.shift".into(),
        vec![d0],
        f32_bytes(&model.normalization.shift),
    ));
    tensors.push((
        "normalization.scale".into(),
        vec![d0],
        f32_bytes(&model.normalization.scale),
    ));
    if let Some(ck) = &model.checkpoint {
        let p = model.params.len();
        for (k, buf) in ck.optimizer_state.buffers.iter().enumerate() {
            tensors.push((format!("optimizer.state.{k}"), vec![p], f32_bytes(buf)));
        }
        if let Some(best) = &ck.state.best_params {
            tensors.push(("checkpoint.best_params".into(), vec![p], f32_bytes(best)));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::file(path, format!("cannot serialize {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert("widths".to_string(), join(&spec.widths));
    meta.insert("activation".to_string(), spec.activation.to_string());
    meta.insert(
        "code_activation".to_string(),
        spec.code_activation.to_string(),
    );
    meta.insert(
        "output_activation".to_string(),
        spec.output_activation.to_string(),
    );
    meta.insert(
        "normalize".to_string(),
        model.normalization.kind.as_str().to_string(),
    );
    meta.insert(
        "feature_names".to_string(),
        serde_json::to_string(&model.feature_names).expect("strings serialize"),
    );
    let ignore: Vec<String> = model.ignore.iter().map(|s| s.to_string()).collect();
    meta.insert(
        "ignore_columns".to_string(),
        serde_json::to_string(&ignore).expect("strings serialize"),
    );
    meta.insert(
        "training".to_string(),
        serde_json::to_string(&model.training).expect("strings serialize"),
    );
    if !model.noise.is_off() {
        meta.insert("noise".to_string(), model.noise.to_string());
    }
    if let Some(ck) = &model.checkpoint {
        let ck_meta = CheckpointMeta {
            settings: ck.settings.clone(),
            epochs_done: ck.state.epochs_done,
            step_in_epoch: ck.state.step_in_epoch,
            steps_done: ck.optimizer_state.steps_done,
            best_loss: ck.state.best_loss.is_finite().then_some(ck.state.best_loss),
            best_epoch: ck.state.best_epoch,
            history: ck.history.clone(),
            data_identity: ck.data_identity.clone(),
        };
        meta.insert(
            "checkpoint".to_string(),
            serde_json::to_string(&ck_meta).expect("checkpoint serializes"),
        );
    }
    let mut refs: Vec<checksum::TensorRef<'_>> = tensors
        .iter()
        .map(|(name, shape, bytes)| checksum::TensorRef {
            name,
            dtype: format!("{:?}", Dtype::F32),
            shape,
            data: bytes,
        })
        .collect();
    let sum = checksum::model_checksum(&meta, &mut refs);
    meta.insert(checksum::KEY.to_string(), sum);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::file(path, format!("cannot serialize the model: {e}")))?;
    write_atomic(path, |w| {
        w.write_all(&bytes).map_err(|e| Error::io(path, e))
    })
}

fn join(xs: &[usize]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a model file: the header length it announces is checked against safetensors's cap before the
/// rest is read, and its size against the memory available.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let mut prefix = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // A file shorter than the prefix is the parser's to refuse.
    if file.read_exact(&mut prefix).is_ok() {
        let n = u64::from_le_bytes(prefix) as u128;
        if n > MAX_HEADER_BYTES {
            return Err(Error::file(
                path,
                format!(
                    "not a safetensors model file (its header would take {}; safetensors allows {})",
                    crate::memory::format_bytes(n),
                    crate::memory::format_bytes(MAX_HEADER_BYTES)
                ),
            ));
        }
    }
    drop(file);
    read_checked(path, "model file")
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors model file ({e})")))
}

/// The metadata of a parsed file (empty when it has none).
fn metadata_of(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::file(path, format!("not a safetensors model file ({e})")))?;
    Ok(header.metadata().clone().unwrap_or_default())
}

/// Checks a file's checksum: a tiedae file of version 2 or later must carry one that matches; a version 1
/// file or weights from elsewhere have none.
fn verify(path: &Path, st: &SafeTensors<'_>, meta: &HashMap<String, String>) -> Result<Integrity> {
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Ok(Integrity::NoChecksum);
    }
    let version = meta
        .get("format_version")
        .ok_or_else(|| Error::file(path, "model metadata lacks 'format_version'"))?;
    if !FORMAT_VERSIONS_READ.contains(&version.as_str()) {
        return Err(Error::file(
            path,
            format!(
                "model format version {version} is not supported (this tiedae reads {})",
                FORMAT_VERSIONS_READ.join(" and ")
            ),
        ));
    }
    if version == "1" {
        return Ok(Integrity::NoChecksum);
    }
    let stored = meta.get(checksum::KEY).ok_or_else(|| {
        Error::file(
            path,
            format!("is damaged: a model file of format version {version} carries a checksum, and this one has none"),
        )
    })?;
    let tensors = st.tensors();
    let mut refs: Vec<checksum::TensorRef<'_>> = tensors
        .iter()
        .map(|(name, view)| checksum::TensorRef {
            name,
            dtype: format!("{:?}", view.dtype()),
            shape: view.shape(),
            data: view.data(),
        })
        .collect();
    if checksum::model_checksum(meta, &mut refs) != *stored {
        return Err(Error::file(
            path,
            "is damaged: its checksum does not match its tensors and metadata (the file changed after it was written); restore a copy or train again",
        ));
    }
    Ok(Integrity::Verified)
}

/// Reads tensor `name` as f32 with exactly `shape`, with a clear error otherwise.
fn tensor_f32(path: &Path, st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = st.tensor(name).map_err(|_| {
        Error::file(
            path,
            format!("has no tensor '{name}' (expected shape {shape:?})"),
        )
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(Error::file(
            path,
            format!("tensor '{name}' is {:?}, expected F32", view.dtype()),
        ));
    }
    if view.shape() != shape {
        return Err(Error::file(
            path,
            format!(
                "tensor '{name}' has shape {:?}, but the model needs {shape:?}",
                view.shape()
            ),
        ));
    }
    let values = f32_values(view.data());
    if let Some(pos) = values.iter().position(|x| !x.is_finite()) {
        return Err(Error::file(
            path,
            format!("tensor '{name}' holds a non-finite value at element {pos}"),
        ));
    }
    Ok(values)
}

/// Reads the weights of a model shaped like `spec` (for `--init`): every tensor named and shaped as the model
/// needs, no more layers than it has, and no decoder kernel (a file with one was not tied).
pub fn load_weights(path: &Path, spec: &ModelSpec) -> Result<Vec<f32>> {
    load_weights_verified(path, spec).map(|(w, _)| w)
}

/// [`load_weights`], saying whether the file's checksum was checked (a tiedae file's is; weights written
/// elsewhere have none).
pub fn load_weights_verified(path: &Path, spec: &ModelSpec) -> Result<(Vec<f32>, Integrity)> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let integrity = verify(path, &st, &metadata_of(path, &bytes)?)?;
    Ok((weights_from(path, &st, spec)?, integrity))
}

fn weights_from(path: &Path, st: &SafeTensors<'_>, spec: &ModelSpec) -> Result<Vec<f32>> {
    for name in st.names() {
        if name.starts_with("decoder.") && name.ends_with(".kernel") {
            return Err(Error::file(
                path,
                format!("has a tensor '{name}': a tied model has no decoder kernel (the decoder uses encoder.i.kernel transposed)"),
            ));
        }
    }
    let depth = spec.depth();
    let file_depth = (0..)
        .take_while(|i| st.tensor(&format!("encoder.{i}.kernel")).is_ok())
        .count();
    if file_depth != depth {
        return Err(Error::file(
            path,
            format!(
                "has {file_depth} tied layer(s), but the model has {depth} (widths {})",
                join(&spec.widths)
            ),
        ));
    }
    let mut params = vec![0.0f32; spec.param_count()];
    for (i, (slots, w)) in spec.slots().iter().zip(spec.widths.windows(2)).enumerate() {
        params[slots.kernel.clone()].copy_from_slice(&tensor_f32(
            path,
            st,
            &format!("encoder.{i}.kernel"),
            &[w[0], w[1]],
        )?);
        params[slots.enc_bias.clone()].copy_from_slice(&tensor_f32(
            path,
            st,
            &format!("encoder.{i}.bias"),
            &[w[1]],
        )?);
        params[slots.dec_bias.clone()].copy_from_slice(&tensor_f32(
            path,
            st,
            &format!("decoder.{i}.bias"),
            &[w[0]],
        )?);
    }
    Ok(params)
}

/// The widths a file's kernels describe, d_0 … d_L, read from the tensor shapes alone.
pub fn widths_in(path: &Path) -> Result<Vec<usize>> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let mut widths = Vec::new();
    for i in 0.. {
        let Ok(view) = st.tensor(&format!("encoder.{i}.kernel")) else {
            break;
        };
        let shape = view.shape();
        if shape.len() != 2 || (i > 0 && widths.last() != Some(&shape[0])) {
            return Err(Error::file(
                path,
                format!("tensor 'encoder.{i}.kernel' has shape {shape:?}, which does not chain with the layer before"),
            ));
        }
        if i == 0 {
            widths.push(shape[0]);
        }
        widths.push(shape[1]);
    }
    if widths.is_empty() {
        return Err(Error::file(path, "has no tensor 'encoder.0.kernel'"));
    }
    Ok(widths)
}

/// Reads a model file written by `save_model`.
pub fn load_model(path: &Path) -> Result<ModelFile> {
    load_model_verified(path).map(|(m, _)| m)
}

/// [`load_model`], saying whether the file's checksum was checked (files of format version 1 have none).
pub fn load_model_verified(path: &Path) -> Result<(ModelFile, Integrity)> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let meta = metadata_of(path, &bytes)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::file(
            path,
            "is a safetensors file but not a tiedae model (no 'format: tiedae' metadata); weights alone can be used with train --init",
        ));
    }
    let integrity = verify(path, &st, &meta)?;
    let get = |key: &str| -> Result<&String> {
        meta.get(key)
            .ok_or_else(|| Error::file(path, format!("model metadata lacks '{key}'")))
    };
    let bad = |key: &str, e: String| Error::file(path, format!("model metadata '{key}': {e}"));
    let widths = get("widths")?
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|e| bad("widths", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let act = |key: &str| -> Result<Activation> { get(key)?.parse().map_err(|e| bad(key, e)) };
    let spec = ModelSpec::new(
        widths,
        act("activation")?,
        act("code_activation")?,
        act("output_activation")?,
    )
    .map_err(|e| bad("widths", e.to_string()))?;
    let params = weights_from(path, &st, &spec)?;
    let d0 = spec.input_width();
    let kind: NormalizeKind = get("normalize")?.parse().map_err(|e| bad("normalize", e))?;
    let normalization = Normalization {
        kind,
        shift: tensor_f32(path, &st, "normalization.shift", &[d0])?,
        scale: tensor_f32(path, &st, "normalization.scale", &[d0])?,
    };
    let feature_names: Vec<String> = serde_json::from_str(get("feature_names")?)
        .map_err(|e| bad("feature_names", e.to_string()))?;
    if feature_names.len() != d0 {
        return Err(bad(
            "feature_names",
            format!("{} names for {d0} inputs", feature_names.len()),
        ));
    }
    let ignore: Vec<String> = serde_json::from_str(get("ignore_columns")?)
        .map_err(|e| bad("ignore_columns", e.to_string()))?;
    let noise = match meta.get("noise").map(|s| s.trim()) {
        None | Some("none") => Noise::default(),
        Some(text) => Noise::from_flags(&[text]).map_err(|e| bad("noise", e.to_string()))?,
    };
    let training = match meta.get("training") {
        Some(s) => serde_json::from_str(s).map_err(|e| bad("training", e.to_string()))?,
        None => BTreeMap::new(),
    };
    let checkpoint = match meta.get("checkpoint") {
        None => None,
        Some(text) => {
            let m: CheckpointMeta =
                serde_json::from_str(text).map_err(|e| bad("checkpoint", e.to_string()))?;
            let p = params.len();
            let buffers = (0..)
                .map_while(|k| {
                    let name = format!("optimizer.state.{k}");
                    st.tensor(&name)
                        .is_ok()
                        .then(|| tensor_f32(path, &st, &name, &[p]))
                })
                .collect::<Result<Vec<_>>>()?;
            let best_params = match st.tensor("checkpoint.best_params") {
                Ok(_) => Some(tensor_f32(path, &st, "checkpoint.best_params", &[p])?),
                Err(_) => None,
            };
            Some(Checkpoint {
                settings: m.settings,
                state: FitState {
                    epochs_done: m.epochs_done,
                    step_in_epoch: m.step_in_epoch,
                    best_loss: m.best_loss.unwrap_or(f64::INFINITY),
                    best_epoch: m.best_epoch,
                    best_params,
                },
                optimizer_state: OptimizerState {
                    steps_done: m.steps_done,
                    buffers,
                },
                history: m.history,
                data_identity: m.data_identity,
            })
        }
    };
    let model = ModelFile {
        spec,
        params,
        normalization,
        feature_names,
        ignore: ignore.iter().map(|s| ColumnSelector::parse(s)).collect(),
        training,
        checkpoint,
        noise,
    };
    Ok((model, integrity))
}
