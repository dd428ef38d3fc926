//! The training step and the epoch loop, written once over [`Backend`].
//!
//! Notation (batch of B rows, L tied layers, widths d_0 … d_L):
//!   encoder  h_0 = x,  h_{i+1} = f_enc_i(h_i·W_i + b_i)              h_i is (B, d_i)
//!   decoder  g_L = h_L, g_i    = f_dec_i(g_{i+1}·W_iᵀ + c_i)          g_i is (B, d_i)
//!   loss     mean over all B·d_0 elements of (g_0 − x)²
//! Backward, the decoder from the output inward, then the encoder from the code outward:
//!   decoder i:  dc_i = colsum(dz_dec_i)     dg_{i+1} = dz_dec_i·W_i
//!   encoder i:  db_i = colsum(dz_enc_i)     dh_i     = dz_enc_i·W_iᵀ
//!   then        dW_i = h_iᵀ·dz_enc_i + dz_dec_iᵀ·g_{i+1} = [h_i; dz_dec_i]ᵀ·[dz_enc_i; g_{i+1}]
//! The one gradient slot of W_i holds the sum of what both of its uses contribute, computed as ONE product
//! over the batch stacked twice (depth 2B): each pair lives in one buffer, rows 0..B then B..2B
//! (`stack_in`, `stack_out`), so the stacking is free. One product instead of two per layer: one op fewer
//! and one pass over dW_i instead of a write and a read-add. On 2 CPU cores the seed workload (51→1, all
//! overhead) ran 1.16× as fast; mnist's step did not change (0.97-1.01×).
//!
//! How a step reaches the backend (`train_steps`): op by op (`train_step`), or, with graphs on, runs of
//! GRAPH_STEPS steps recorded once and replayed (`recorded_steps`; every per-step value lives in backend
//! memory: the epoch's order, Adam's α per step, a loss slot per step). A data set kept on the host (a GPU
//! too small for it) is copied up a batch ahead, into the batch buffer the running step does not read
//! (`stage_batch`).

use crate::activation::Activation;
use crate::backend::shuffle::shuffle_key;
use crate::backend::{
    Backend, BufId, Gemm, GraphId, HalfFormat, HalfId, IdxId, IdxRegion, Real, Region, Trans,
};
use crate::error::{Error, Result};
use crate::model::{LayerSlots, ModelSpec};
use crate::optim::Optimizer;

mod constraints;
mod fit;
pub use constraints::Constraints;
pub use fit::{epoch_order, FitEnd, FitOptions, FitOutcome, FitState, OptimizerState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Steps recorded in one graph when graphs are on (`Network::set_graphs`): a run stops (Ctrl-C) at most this
/// many steps late, and an epoch of a digits-sized model is a handful of replays.
pub const GRAPH_STEPS: usize = 32;

/// When a run should stop before its epochs are done: a flag set from a signal handler (Ctrl-C), or a
/// global step count (tests use it to interrupt a run at an exact step).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stop<'a> {
    pub flag: Option<&'a AtomicBool>,
    /// Stop once this many optimizer steps have been taken in all.
    pub at_step: Option<u64>,
}

impl Stop<'_> {
    fn now(&self, steps_done: u64) -> bool {
        self.flag.is_some_and(|f| f.load(Ordering::Relaxed))
            || self.at_step.is_some_and(|s| steps_done >= s)
    }
}

/// What [`Network::train_steps`] ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepsRun {
    /// MSE over every element of the steps that ran.
    pub loss: f64,
    /// Rows those steps covered.
    pub samples: usize,
    /// The step to continue from (the epoch's step count when it finished).
    pub next_step: usize,
    pub finished: bool,
}

#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub batch_size: usize,
    pub epochs: usize,
    pub optimizer: Optimizer,
    /// Reshuffle the rows every epoch (seeded); otherwise batches follow file order.
    pub shuffle: bool,
    pub seed: u64,
    /// The PCA-inspired constraints (orthogonality, uncorrelated codes, unit-norm columns); all off by default.
    pub constraints: Constraints,
}

/// What one epoch did, reported to the caller once per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Mean squared error over every element seen in the epoch (Keras's reported epoch loss).
    pub loss: f64,
    /// MSE on the validation set after the epoch, when there is one.
    pub val_loss: Option<f64>,
    pub seconds: f64,
    /// Rows trained on in this epoch (fewer than the training set in an interrupted or resumed epoch).
    pub samples: usize,
}

/// Which uploaded data set an op reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSet {
    Train,
    Validation,
}

/// How a data set is stored on the backend: f32, or 16-bit floats converted while a batch is gathered
/// (half the memory: a 6 GB card holds twice the rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DataType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::F32 => "f32",
            DataType::F16 => "f16",
            DataType::Bf16 => "bf16",
        }
    }
    fn half_format(self) -> Option<HalfFormat> {
        match self {
            DataType::F32 => None,
            DataType::F16 => Some(HalfFormat::F16),
            DataType::Bf16 => Some(HalfFormat::Bf16),
        }
    }
}

impl std::str::FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DataType::F32),
            "f16" | "float16" | "half" => Ok(DataType::F16),
            "bf16" | "bfloat16" => Ok(DataType::Bf16),
            other => Err(format!(
                "unknown data type '{other}' (expected f32, f16 or bf16)"
            )),
        }
    }
}

/// Where a data set lives: on the backend (uploaded once, read by index), or on the host for a data set the
/// device cannot hold (each batch gathered on the host and copied up a step ahead: `Network::stage_batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On the device when it fits in the free device memory, else on the host.
    #[default]
    Auto,
    Device,
    Host,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Placement::Auto),
            "device" | "gpu" => Ok(Placement::Device),
            "host" => Ok(Placement::Host),
            other => Err(format!("'{other}' is not auto, device or host")),
        }
    }
}

/// Device memory left free for what a training run allocates after its data set (the split-K and
/// constraint scratch, the driver's own needs), beyond which a data set goes to the host.
const DEVICE_HEADROOM_BYTES: usize = 256 << 20;

/// Where a data set's values live.
enum DataValues<T> {
    F32(Region),
    Half(HalfId, HalfFormat),
    /// On the host, (rows, d_0) row-major, with the row order of the epoch in progress; a batch is gathered
    /// here and copied to the backend's input buffer.
    Host {
        values: Vec<T>,
        order: Vec<u32>,
    },
}

/// A data set: its values (on the backend or the host) and its per-step slots on the backend.
struct DeviceData<T> {
    values: DataValues<T>,
    rows: usize,
    /// The epoch's row order on the backend (None for a set kept on the host: its order is there too).
    order: Option<IdxId>,
    /// One slot per step of an epoch, read back once per epoch.
    step_losses: Region,
    /// One slot per step of an epoch: Adam's alpha for that step, uploaded once per `train_steps` (a
    /// recorded step reads its own slot, whatever t is when it is replayed).
    step_alphas: Region,
}

impl<T> DeviceData<T> {
    fn placement(&self) -> Placement {
        match self.values {
            DataValues::Host { .. } => Placement::Host,
            _ => Placement::Device,
        }
    }
}

/// Everything a model needs on a backend: parameters, gradients, optimizer state and the activations of one
/// batch of at most `max_batch` rows.
pub struct Network<B: Backend> {
    pub backend: B,
    spec: ModelSpec,
    slots: Vec<LayerSlots>,
    max_batch: usize,
    params: Region,
    grads: Region,
    optimizer: Option<Optimizer>,
    /// Velocity (SGD) or m and v (Adam), each shaped like `params`.
    opt_state: Vec<Region>,
    /// Adam's step count t, 1-based after the first step.
    steps_done: u64,
    /// The batch's activations and the gradients at the pre-activations, in pairs that stack into the
    /// operands of each tied kernel's gradient (see the module doc), n rows each for a batch of n:
    /// stack_in[i] is (2·max_batch, d_i): h_i (rows 0..n; h_0 = x, gathered from the data set), then
    /// dz_dec_i (rows n..2n). Read through `h` and `dz_dec`.
    stack_in: Vec<Region>,
    /// stack_out[i] is (2·max_batch, d_{i+1}): dz_enc_i (rows 0..n), then g_{i+1} (rows n..2n; g_L = h_L,
    /// the code). Read through `dz_enc`, `g` and `h`.
    stack_out: Vec<Region>,
    /// g_0, the reconstruction, (max_batch, d_0).
    recon: Region,
    data: Option<DeviceData<B::Scalar>>,
    validation: Option<DeviceData<B::Scalar>>,
    /// A batch of a data set kept on the host, gathered before its copy up (reused: no allocation a step).
    staging: Vec<B::Scalar>,
    /// For a set kept on the host, a second `stack_in[0]` (allocated on first use): each batch is copied
    /// into the one the previous step did not use, while that step runs, and the two swap (`stack_in[0]` is
    /// always the one the next forward pass reads).
    spare_input: Option<Region>,
    /// The batch already copied into `stack_in[0]` for the next forward pass: (set, first row of the order,
    /// rows).
    staged: Option<(DataSet, usize, usize)>,
    constraints: Constraints,
    /// Scratch buffers of the constraints, allocated on first use (see constraints.rs).
    constraint_buffers: Option<constraints::Buffers>,
    /// Whether training steps are recorded as graphs and replayed (`set_graphs`).
    graphs_on: bool,
    /// Recorded runs of steps, by (batch size, first step of the epoch): each runs steps first..first +
    /// GRAPH_STEPS (or to the epoch's end) on the training set as it is now.
    step_graphs: HashMap<(usize, usize), GraphId>,
    /// Why recordings failed (their steps then ran one op at a time), oldest first.
    graph_failures: Vec<String>,
    /// Whether a step has run op by op since the graphs were last forgotten: it grows the backend's scratch
    /// buffers to this model's and data set's sizes, which a recording cannot do.
    warm: bool,
    /// Failed recordings by the key of `step_graphs`: a run whose recording failed twice is not tried again
    /// (the first failure may be a scratch buffer that had to grow, which the steps run instead then did).
    failed_recordings: HashMap<(usize, usize), u32>,
}

fn alloc<B: Backend>(backend: &mut B, len: usize) -> Result<Region> {
    Ok(Region::whole(backend.alloc(len)?, len))
}

impl<B: Backend> Network<B> {
    /// Puts a model on `backend`. `params` is the flat parameter vector (see `model.rs`); `optimizer` is
    /// `None` for inference only (no gradient or optimizer buffers are allocated then).
    pub fn new(
        mut backend: B,
        spec: &ModelSpec,
        params: &[f32],
        max_batch: usize,
        optimizer: Option<Optimizer>,
    ) -> Result<Self> {
        assert_eq!(params.len(), spec.param_count(), "parameter vector size");
        let max_batch = max_batch.max(1);
        let p = spec.param_count();
        let params_region = alloc(&mut backend, p)?;
        let host: Vec<B::Scalar> = params.iter().map(|&x| B::Scalar::from_f32(x)).collect();
        backend.upload(params_region, &host)?;
        let (grads, opt_state) = match optimizer {
            Some(opt) => {
                let grads = alloc(&mut backend, p)?;
                let state = (0..opt.state_buffers())
                    .map(|_| alloc(&mut backend, p))
                    .collect::<Result<Vec<_>>>()?;
                (grads, state)
            }
            None => (Region::whole(BufId(usize::MAX), 0), Vec::new()),
        };
        let depth = spec.depth();
        let w = &spec.widths;
        // Inference needs only the activations, half of each pair; the layout is the same, for one code path.
        let (mut stack_in, mut stack_out) = (Vec::with_capacity(depth), Vec::with_capacity(depth));
        for i in 0..depth {
            stack_in.push(alloc(&mut backend, 2 * max_batch * w[i])?);
            stack_out.push(alloc(&mut backend, 2 * max_batch * w[i + 1])?);
        }
        let recon = alloc(&mut backend, max_batch * w[0])?;
        Ok(Network {
            backend,
            spec: spec.clone(),
            slots: spec.slots(),
            max_batch,
            params: params_region,
            grads,
            optimizer,
            opt_state,
            steps_done: 0,
            stack_in,
            stack_out,
            recon,
            data: None,
            validation: None,
            constraints: Constraints::default(),
            constraint_buffers: None,
            staging: Vec::new(),
            spare_input: None,
            staged: None,
            graphs_on: false,
            step_graphs: HashMap::new(),
            graph_failures: Vec::new(),
            failed_recordings: HashMap::new(),
            warm: false,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Uploads the training set, (rows, d_0) row-major, once. Replaces any earlier one (its memory is not
    /// reused).
    pub fn set_data(&mut self, values: &[f32], rows: usize) -> Result<()> {
        self.set_data_as(values, rows, DataType::F32)
    }

    /// [`Network::set_data`], stored as `dtype` on the backend. Fails (naming `--data-dtype`, the row and
    /// the column) when a value does not fit a 16-bit format.
    pub fn set_data_as(&mut self, values: &[f32], rows: usize, dtype: DataType) -> Result<()> {
        self.set_data_placed(values, rows, dtype, Placement::Device)
            .map(|_| ())
    }

    /// [`Network::set_data_as`], kept where `placement` says; returns where it went (`Device` or `Host`).
    /// On the host, training reads the same rows in the same order (a 16-bit `dtype` rounds them the same
    /// way), so it computes the same bits; only the copy of each batch is added.
    pub fn set_data_placed(
        &mut self,
        values: &[f32],
        rows: usize,
        dtype: DataType,
        placement: Placement,
    ) -> Result<Placement> {
        // Recorded steps read the old set's buffers.
        self.forget_graphs();
        self.place_set(DataSet::Train, values, rows, dtype, placement)
    }

    /// Uploads a validation set, evaluated with [`Network::evaluate_set`].
    pub fn set_validation(&mut self, values: &[f32], rows: usize) -> Result<()> {
        self.set_validation_as(values, rows, DataType::F32)
    }

    /// [`Network::set_validation`], stored as `dtype`.
    pub fn set_validation_as(
        &mut self,
        values: &[f32],
        rows: usize,
        dtype: DataType,
    ) -> Result<()> {
        self.set_validation_placed(values, rows, dtype, Placement::Device)
            .map(|_| ())
    }

    /// [`Network::set_validation_as`], kept where `placement` says (see [`Network::set_data_placed`]).
    pub fn set_validation_placed(
        &mut self,
        values: &[f32],
        rows: usize,
        dtype: DataType,
        placement: Placement,
    ) -> Result<Placement> {
        self.place_set(DataSet::Validation, values, rows, dtype, placement)
    }

    /// Replaces set `which` (the old one's host memory is freed first) and says where the new one went.
    fn place_set(
        &mut self,
        which: DataSet,
        values: &[f32],
        rows: usize,
        dtype: DataType,
        placement: Placement,
    ) -> Result<Placement> {
        *self.set_slot(which) = None;
        self.staged = None;
        let data = self.place_data(values, rows, dtype, placement)?;
        let placed = data.placement();
        *self.set_slot(which) = Some(data);
        Ok(placed)
    }

    fn set_slot(&mut self, which: DataSet) -> &mut Option<DeviceData<B::Scalar>> {
        match which {
            DataSet::Train => &mut self.data,
            DataSet::Validation => &mut self.validation,
        }
    }

    /// Where `Auto` puts a data set of `bytes` on this backend: on the device unless the device says it has
    /// less free memory than the set, its order and the headroom need.
    fn resolve_placement(&self, placement: Placement, bytes: usize, rows: usize) -> Placement {
        match placement {
            Placement::Auto => match self.backend.free_memory() {
                Some(free) if bytes + 4 * rows + DEVICE_HEADROOM_BYTES > free => Placement::Host,
                _ => Placement::Device,
            },
            p => p,
        }
    }

    fn place_data(
        &mut self,
        values: &[f32],
        rows: usize,
        dtype: DataType,
        placement: Placement,
    ) -> Result<DeviceData<B::Scalar>> {
        let cols = self.spec.input_width();
        assert_eq!(values.len(), rows * cols, "data size");
        let half = dtype.half_format();
        let bytes = values.len() * if half.is_some() { 2 } else { 4 };
        let placement = self.resolve_placement(placement, bytes, rows);
        let encode = |format: HalfFormat, i: usize, x: f32| {
            format.encode(x).ok_or_else(|| {
                Error::flag(
                    "--data-dtype",
                    format!(
                        "value {x} (row {}, column {} after normalization) does not fit {}; use bf16 or f32, or --normalize",
                        i / cols + 1,
                        i % cols + 1,
                        dtype.as_str()
                    ),
                )
            })
        };
        let (values, order) = match (placement, half) {
            (Placement::Host, _) => {
                // A 16-bit dtype rounds the values as the device's copy would be rounded.
                let host = values
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| match half {
                        None => Ok(B::Scalar::from_f32(x)),
                        Some(format) => {
                            Ok(B::Scalar::from_f32(format.decode(encode(format, i, x)?)))
                        }
                    })
                    .collect::<Result<Vec<B::Scalar>>>()?;
                let order = (0..rows as u32).collect();
                (
                    DataValues::Host {
                        values: host,
                        order,
                    },
                    None,
                )
            }
            (_, None) => {
                let region = alloc(&mut self.backend, values.len())?;
                let host: Vec<B::Scalar> = values.iter().map(|&x| B::Scalar::from_f32(x)).collect();
                self.backend.upload(region, &host)?;
                (DataValues::F32(region), Some(self.identity_order(rows)?))
            }
            (_, Some(format)) => {
                let bits = values
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| encode(format, i, x))
                    .collect::<Result<Vec<u16>>>()?;
                let id = self.backend.alloc_half(bits.len())?;
                self.backend.upload_half(id, &bits)?;
                (
                    DataValues::Half(id, format),
                    Some(self.identity_order(rows)?),
                )
            }
        };
        let steps = rows.div_ceil(self.max_batch).max(1);
        let step_losses = alloc(&mut self.backend, steps)?;
        let step_alphas = alloc(&mut self.backend, steps)?;
        Ok(DeviceData {
            values,
            rows,
            order,
            step_losses,
            step_alphas,
        })
    }

    /// A new index buffer of `rows` holding 0, 1, 2, …
    fn identity_order(&mut self, rows: usize) -> Result<IdxId> {
        let order = self.backend.alloc_indices(rows)?;
        let identity: Vec<u32> = (0..rows as u32).collect();
        self.backend.upload_indices(order, 0, &identity)?;
        Ok(order)
    }

    /// Sets the row order of `which` for the following batches: on the backend, or on the host for a set
    /// kept there.
    fn set_order(&mut self, which: DataSet, order: &[u32]) -> Result<()> {
        let d = match which {
            DataSet::Train => self.data.as_mut(),
            DataSet::Validation => self.validation.as_mut(),
        }
        .expect("the data set was set");
        assert_eq!(order.len(), d.rows);
        // A batch staged for the old order holds other rows.
        self.staged = None;
        match (&mut d.values, d.order) {
            (DataValues::Host { order: host, .. }, _) => {
                host.clear();
                host.extend_from_slice(order);
                Ok(())
            }
            (_, Some(idx)) => self.backend.upload_indices(idx, 0, order),
            (_, None) => unreachable!("a set on the backend has an order buffer"),
        }
    }

    /// Where the training set is (`Device` or `Host`; None before `set_data`).
    pub fn data_placement(&self) -> Option<Placement> {
        self.data.as_ref().map(|d| d.placement())
    }

    fn data(&self) -> &DeviceData<B::Scalar> {
        self.dataset(DataSet::Train)
    }

    fn dataset(&self, which: DataSet) -> &DeviceData<B::Scalar> {
        match which {
            DataSet::Train => self.data.as_ref().expect("set_data must come first"),
            DataSet::Validation => self
                .validation
                .as_ref()
                .expect("set_validation must come first"),
        }
    }

    /// Rows of the training set (0 before `set_data`).
    pub fn train_rows(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.rows)
    }

    /// Whether a validation set was uploaded.
    pub fn has_validation(&self) -> bool {
        self.validation.is_some()
    }

    /// The region of one parameter slot (see `model.rs`) in the parameter buffer.
    fn param_of(&self, slot: impl Fn(&[LayerSlots]) -> &std::ops::Range<usize>) -> Region {
        let r = slot(&self.slots);
        self.params.sub(r.start, r.len())
    }
    /// The same slot in the gradient buffer: a tied kernel's one gradient.
    fn grad_of(&self, slot: impl Fn(&[LayerSlots]) -> &std::ops::Range<usize>) -> Region {
        let r = slot(&self.slots);
        self.grads.sub(r.start, r.len())
    }
    fn kernel(&self, i: usize) -> Region {
        self.param_of(|s| &s[i].kernel)
    }
    fn enc_bias(&self, i: usize) -> Region {
        self.param_of(|s| &s[i].enc_bias)
    }
    fn dec_bias(&self, i: usize) -> Region {
        self.param_of(|s| &s[i].dec_bias)
    }

    /// Copies rows `order[start .. start + n]` of set `which` (kept on the host) into the spare `stack_in[0]`,
    /// which then becomes `stack_in[0]`: the copy may run while the ops queued since the last one still run,
    /// as those use the other one (see `Backend::prefetch`).
    fn stage_batch(&mut self, which: DataSet, start: usize, n: usize) -> Result<()> {
        let cols = self.spec.input_width();
        let spare = match self.spare_input {
            Some(r) => r,
            None => alloc(&mut self.backend, 2 * self.max_batch * cols)?,
        };
        let d = match which {
            DataSet::Train => self.data.as_ref(),
            DataSet::Validation => self.validation.as_ref(),
        }
        .expect("the data set was set");
        let DataValues::Host { values, order } = &d.values else {
            unreachable!("only a set kept on the host is staged");
        };
        self.staging.clear();
        for &r in &order[start..start + n] {
            let r = r as usize;
            self.staging
                .extend_from_slice(&values[r * cols..(r + 1) * cols]);
        }
        self.backend
            .prefetch(spare.prefix(n * cols), &self.staging)?;
        self.spare_input = Some(std::mem::replace(&mut self.stack_in[0], spare));
        self.staged = Some((which, start, n));
        Ok(())
    }

    /// Forward pass of rows `order[start .. start + n]` of the data set: fills every h_i and g_i.
    fn forward(&mut self, which: DataSet, start: usize, n: usize) -> Result<()> {
        let w = self.spec.widths.clone();
        let depth = self.spec.depth();
        if self.dataset(which).placement() == Placement::Host {
            // A set the device cannot hold: the batch was copied up while the previous step ran, or is
            // copied now.
            if self.staged != Some((which, start, n)) {
                self.stage_batch(which, start, n)?;
            }
            self.staged = None;
        } else {
            let d = self.dataset(which);
            let (values, order) = (
                &d.values,
                d.order.expect("a set on the backend has an order"),
            );
            let idx = IdxRegion {
                buf: order,
                offset: start,
                len: n,
            };
            let x = self.x(n);
            match *values {
                DataValues::F32(values) => self.backend.gather_rows(values, w[0], idx, x)?,
                DataValues::Half(values, format) => self
                    .backend
                    .gather_rows_half(values, format, w[0], idx, x)?,
                DataValues::Host { .. } => unreachable!("placement says the backend"),
            }
        }
        // Encoder: h_{i+1} = f(h_i·W_i + b_i). h_i is (n, d_i), W_i is (d_i, d_{i+1}).
        for i in 0..depth {
            let (h_in, h_out) = (self.h(i, n), self.h(i + 1, n));
            let g = Gemm::new(Trans::N, Trans::N, n, w[i + 1], w[i]);
            let act = self.spec.encoder_activation(i);
            self.backend
                .gemm_bias_act(g, h_in, self.kernel(i), h_out, self.enc_bias(i), act)?;
        }
        self.decode(n)
    }

    /// The decoder on the codes in h_L, n rows: fills g_{L−1} … g_0.
    fn decode(&mut self, n: usize) -> Result<()> {
        let w = self.spec.widths.clone();
        // Decoder: g_i = f(g_{i+1}·W_iᵀ + c_i). The SAME kernel buffer, read transposed.
        for i in (0..self.spec.depth()).rev() {
            let (g_in, g_out) = (self.g(i + 1, n), self.g(i, n));
            let g = Gemm::new(Trans::N, Trans::T, n, w[i], w[i + 1]);
            let act = self.spec.decoder_activation(i);
            self.backend
                .gemm_bias_act(g, g_in, self.kernel(i), g_out, self.dec_bias(i), act)?;
        }
        Ok(())
    }

    /// Runs the decoder alone on `codes` (n, d_L) and returns the reconstructions (n, d_0), in the model's
    /// normalized units. `demo` uses it to read the decoder's kernel back through the decoder itself.
    pub fn decode_codes(&mut self, codes: &[B::Scalar]) -> Result<Vec<B::Scalar>> {
        let (dl, d0) = (self.spec.code_width(), self.spec.input_width());
        assert_eq!(codes.len() % dl, 0, "codes are (n, d_L)");
        let n = codes.len() / dl;
        assert!(n <= self.max_batch, "more codes than max_batch");
        let code = self.h(self.spec.depth(), n);
        self.backend.upload(code, codes)?;
        self.decode(n)?;
        let mut out = vec![B::Scalar::zero(); n * d0];
        self.backend.download(self.g(0, n), &mut out)?;
        Ok(out)
    }

    /// x = h_0, the batch of n rows.
    fn x(&self, n: usize) -> Region {
        self.h(0, n)
    }
    /// h_i for a batch of n rows, (n, d_i); h_L, the code, is g_L.
    fn h(&self, i: usize, n: usize) -> Region {
        if i == self.spec.depth() {
            self.g(i, n)
        } else {
            self.stack_in[i].prefix(n * self.spec.widths[i])
        }
    }
    /// g_i for a batch of n rows, (n, d_i): the input of decoder layer i − 1, or the reconstruction (i = 0).
    fn g(&self, i: usize, n: usize) -> Region {
        let d = self.spec.widths[i];
        if i == 0 {
            self.recon.prefix(n * d)
        } else {
            self.stack_out[i - 1].sub(n * d, n * d)
        }
    }
    /// The gradient at decoder layer i's pre-activation, (n, d_i).
    fn dz_dec(&self, i: usize, n: usize) -> Region {
        let d = self.spec.widths[i];
        self.stack_in[i].sub(n * d, n * d)
    }
    /// The gradient at encoder layer i's pre-activation, (n, d_{i+1}).
    fn dz_enc(&self, i: usize, n: usize) -> Region {
        self.stack_out[i].prefix(n * self.spec.widths[i + 1])
    }

    /// Backward pass for the batch of `n` rows last run forward; writes the whole gradient buffer and the
    /// batch's summed squared error into `loss_slot`.
    fn backward(&mut self, n: usize, loss_slot: Region) -> Result<()> {
        let w = self.spec.widths.clone();
        let depth = self.spec.depth();
        let (x, recon) = (self.x(n), self.g(0, n));
        // dL/d(pre-activation of the output layer), with the output activation folded in.
        let out_delta = self.dz_dec(0, n);
        let out_act = self.spec.decoder_activation(0);
        self.backend
            .mse_backward(recon, x, out_act, n * w[0], out_delta, loss_slot)?;
        // Decoder, from the output inward. dz is (n, d_i), g_{i+1} is (n, d_{i+1}), W_i is (d_i, d_{i+1}).
        for i in 0..depth {
            let (dz, g_in) = (self.dz_dec(i, n), self.g(i + 1, n));
            // dg_{i+1} = dz·W_i   (n, d_{i+1}), then through the activation that produced g_{i+1}.
            let (d_next, act) = if i + 1 == depth {
                (self.dz_enc(i, n), self.spec.encoder_activation(i))
            } else {
                (self.dz_dec(i + 1, n), self.spec.decoder_activation(i + 1))
            };
            let dg_product = Gemm::new(Trans::N, Trans::N, n, w[i + 1], w[i]);
            self.backend.gemm(dg_product, dz, self.kernel(i), d_next)?;
            self.backend
                .col_sum(dz, w[i], self.grad_of(|s| &s[i].dec_bias))?;
            if i + 1 == depth {
                // dL/dh_L: the uncorrelated-codes penalty adds its share here, before the code activation.
                self.add_code_penalty_gradient(n, g_in, d_next)?;
            }
            self.backend.act_backward(d_next, g_in, act)?;
        }
        // Encoder, from the code outward. dz is (n, d_{i+1}), h_i is (n, d_i).
        for i in (0..depth).rev() {
            let (dz, h_in) = (self.dz_enc(i, n), self.h(i, n));
            // The tied kernel's gradient, both uses at once (see the module doc):
            // dW_i = [h_i; dz_dec_i]ᵀ·[dz_enc_i; g_{i+1}]   (d_i, d_{i+1}), depth 2n.
            let dw_product = Gemm::new(Trans::T, Trans::N, w[i], w[i + 1], 2 * n);
            let dw_args = (
                dw_product,
                self.stack_in[i].prefix(2 * n * w[i]),
                self.stack_out[i].prefix(2 * n * w[i + 1]),
                self.grad_of(|s| &s[i].kernel),
            );
            if i > 0 {
                // dh_i = dz·W_iᵀ   (n, d_i), then through the activation that produced h_i.
                let d_prev = self.dz_enc(i - 1, n);
                let dh_product = Gemm::new(Trans::N, Trans::T, n, w[i], w[i + 1]);
                self.backend
                    .gemm_pair(dw_args, (dh_product, dz, self.kernel(i), d_prev))?;
                self.backend
                    .act_backward(d_prev, h_in, self.spec.encoder_activation(i - 1))?;
            } else {
                let (g, a, b, c) = dw_args;
                self.backend.gemm(g, a, b, c)?;
            }
            self.backend
                .col_sum(dz, w[i + 1], self.grad_of(|s| &s[i].enc_bias))?;
        }
        // --orthogonality: λ·‖WᵀW − I‖_F per kernel adds its gradient to each kernel's one slot.
        self.add_kernel_penalty_gradients()?;
        Ok(())
    }

    /// The update after a backward pass; `alpha` holds Adam's alpha for this step (unused by SGD).
    fn optimizer_step(&mut self, alpha: Region) -> Result<()> {
        let opt = self.optimizer.expect("training needs an optimizer");
        self.steps_done += 1;
        match opt {
            Optimizer::Sgd { lr, momentum } => {
                self.backend
                    .sgd_step(self.params, self.grads, self.opt_state[0], lr, momentum)?
            }
            Optimizer::Adam { .. } => self.backend.adam_step(
                self.params,
                self.grads,
                self.opt_state[0],
                self.opt_state[1],
                alpha,
                opt.adam_config().expect("adam"),
            )?,
        }
        // --unit-norm: each kernel column back onto the unit sphere after the update.
        self.project_unit_norm()
    }

    /// Sets the constraints used by the following steps.
    pub fn set_constraints(&mut self, constraints: Constraints) {
        if constraints != self.constraints {
            // Recorded steps ran the old constraints' ops.
            self.forget_graphs();
            self.constraints = constraints;
        }
    }

    /// Optimizer steps taken so far (Adam's t).
    pub fn steps_done(&self) -> u64 {
        self.steps_done
    }

    /// Turns graphs on or off for the following training steps: each run of [`GRAPH_STEPS`] steps is
    /// recorded the first time (its ops queued as usual) and then replayed with one call per epoch,
    /// computing exactly what the same ops called one by one compute. Returns whether the backend records
    /// graphs (the CPU does not, and then nothing changes).
    pub fn set_graphs(&mut self, on: bool) -> bool {
        self.graphs_on = on && self.backend.can_capture();
        if !self.graphs_on {
            self.forget_graphs();
        }
        self.graphs_on
    }

    /// Why recordings failed, oldest first (empty when none did).
    pub fn graph_failures(&self) -> &[String] {
        &self.graph_failures
    }

    fn forget_graphs(&mut self) {
        self.step_graphs.clear();
        self.failed_recordings.clear();
        self.warm = false;
        self.backend.clear_graphs();
    }

    /// Computes the loss and the full gradient for rows `order[start .. start + n]` without updating
    /// anything. Returns the mean squared error. Used by gradient checks and tests.
    pub fn loss_and_gradient(&mut self, start: usize, n: usize) -> Result<f64> {
        assert!(n <= self.max_batch, "batch larger than max_batch");
        let slot = self.data().step_losses.prefix(1);
        self.forward(DataSet::Train, start, n)?;
        self.backward(n, slot)?;
        let mut sum = [B::Scalar::zero()];
        self.backend.download(slot, &mut sum)?;
        Ok(sum[0].to_f64() / (n * self.spec.input_width()) as f64)
    }

    /// One whole epoch over the rows in `order` (a permutation of the training set's rows), batch by batch
    /// with the last, smaller batch kept. Returns the epoch's MSE.
    pub fn train_epoch(&mut self, order: &[u32], batch_size: usize) -> Result<f64> {
        Ok(self
            .train_steps(order, batch_size, 0, Stop::default())?
            .loss)
    }

    /// Steps `first_step..` of an epoch whose row order is `order`. The order goes up once; the per-step
    /// losses come back once, at the end. When `stop` becomes true the run ends after the step in flight,
    /// and the result says where to continue.
    pub fn train_steps(
        &mut self,
        order: &[u32],
        batch_size: usize,
        first_step: usize,
        stop: Stop<'_>,
    ) -> Result<StepsRun> {
        self.set_order(DataSet::Train, order)?;
        self.train_steps_in_order(batch_size, first_step, stop)
    }

    /// Sets the training set's row order for epoch `epoch` of a run seeded with `seed`: file order, or that
    /// epoch's shuffle ([`epoch_order`]). A set on the backend gets it from the backend (on a GPU, a kernel
    /// writes it where the batches read it: nothing is copied up); a set kept on the host, from the host.
    pub fn order_epoch(&mut self, seed: u64, epoch: usize, shuffle: bool) -> Result<()> {
        let d = self.data();
        let rows = d.rows;
        let backend_order = match d.values {
            DataValues::Host { .. } => None,
            _ => d.order,
        };
        match backend_order {
            Some(idx) if shuffle => {
                self.staged = None;
                self.backend
                    .shuffle_order(idx, rows, shuffle_key(seed, epoch as u64))
            }
            _ => self.set_order(DataSet::Train, &epoch_order(rows, seed, epoch, shuffle)),
        }
    }

    /// Steps `first_step..` of an epoch in the order last set ([`Network::order_epoch`] or
    /// [`Network::train_steps`]); see `train_steps`.
    pub fn train_steps_in_order(
        &mut self,
        batch_size: usize,
        first_step: usize,
        stop: Stop<'_>,
    ) -> Result<StepsRun> {
        assert!(batch_size <= self.max_batch && batch_size > 0);
        let (rows, losses, on_host) = {
            let d = self.data();
            (d.rows, d.step_losses, d.placement() == Placement::Host)
        };
        let steps = rows.div_ceil(batch_size);
        assert!(first_step <= steps, "first step {first_step} of {steps}");
        if let Some(opt) = self.optimizer.filter(|o| o.adam_config().is_some()) {
            // Adam's alpha of every step still to run in this epoch, in one copy.
            let alphas: Vec<B::Scalar> = (first_step..steps)
                .map(|s| {
                    let t = self.steps_done + 1 + (s - first_step) as u64;
                    B::Scalar::from_f32(opt.adam_alpha(t).expect("adam"))
                })
                .collect();
            let slots = self.data().step_alphas.sub(first_step, steps - first_step);
            self.backend.upload(slots, &alphas)?;
        }
        let mut next = first_step;
        while next < steps {
            if stop.now(self.steps_done) {
                break;
            }
            // Whole recorded runs where they start on a boundary, after a step has run op by op (`warm`),
            // and end before an exact stop. A set on the host copies each batch up from the host: no graph
            // can hold that.
            let end = ((next / GRAPH_STEPS + 1) * GRAPH_STEPS).min(steps);
            let len = (end - next) as u64;
            if self.graphs_on
                && !on_host
                && next.is_multiple_of(GRAPH_STEPS)
                && self.warm
                && stop.at_step.is_none_or(|s| self.steps_done + len <= s)
            {
                if let Some(graph) = self.recorded_steps(batch_size, next, end)? {
                    self.backend.replay(graph)?;
                    self.steps_done += len;
                    next = end;
                    continue;
                }
            }
            self.train_step(batch_size, next)?;
            self.warm = true;
            next += 1;
            if on_host && next < steps && !stop.now(self.steps_done) {
                // The next batch goes up while this step runs.
                let start = next * batch_size;
                self.stage_batch(DataSet::Train, start, batch_size.min(rows - start))?;
            }
        }
        let mut step_losses = vec![B::Scalar::zero(); next - first_step];
        self.backend
            .download(losses.sub(first_step, next - first_step), &mut step_losses)?;
        let mut total = 0.0;
        for (s, l) in step_losses.iter().enumerate() {
            let l = l.to_f64();
            if !l.is_finite() {
                return Err(Error::Diverged(format!(
                    "the loss became {} at step {} of {steps}",
                    if l.is_nan() { "NaN" } else { "infinite" },
                    first_step + s + 1,
                )));
            }
            total += l;
        }
        let samples = (next * batch_size).min(rows) - first_step * batch_size;
        Ok(StepsRun {
            loss: total / (samples.max(1) * self.spec.input_width()) as f64,
            samples,
            next_step: next,
            finished: next == steps,
        })
    }

    /// Step `step` of the epoch whose order was uploaded last: forward, backward, update.
    fn train_step(&mut self, batch_size: usize, step: usize) -> Result<()> {
        let (rows, losses, alphas) = {
            let d = self.data();
            (d.rows, d.step_losses, d.step_alphas)
        };
        let start = step * batch_size;
        let n = batch_size.min(rows - start);
        self.forward(DataSet::Train, start, n)?;
        self.backward(n, losses.sub(step, 1))?;
        self.optimizer_step(alphas.sub(step, 1))
    }

    /// The graph of steps `first..end` at this batch size, recorded now if it was not yet. None when the
    /// recording failed (the reason is kept in `graph_failures`): the caller then runs the steps one op at a
    /// time. Recording runs nothing, so the steps are still to run either way.
    fn recorded_steps(
        &mut self,
        batch_size: usize,
        first: usize,
        end: usize,
    ) -> Result<Option<GraphId>> {
        let key = (batch_size, first);
        if let Some(&graph) = self.step_graphs.get(&key) {
            return Ok(Some(graph));
        }
        if self.failed_recordings.get(&key).is_some_and(|&n| n >= 2) {
            return Ok(None);
        }
        let steps_done = self.steps_done;
        let recorded = self.backend.begin_capture().and_then(|()| {
            let steps = (first..end).try_for_each(|s| self.train_step(batch_size, s));
            match steps {
                Ok(()) => self.backend.end_capture(),
                Err(e) => {
                    self.backend.abort_capture();
                    Err(e)
                }
            }
        });
        // The recorded steps did not run.
        self.steps_done = steps_done;
        match recorded {
            Ok(graph) => {
                self.step_graphs.insert(key, graph);
                Ok(Some(graph))
            }
            Err(e) => {
                *self.failed_recordings.entry(key).or_default() += 1;
                self.graph_failures
                    .push(format!("recording steps {first}..{end}: {e}"));
                Ok(None)
            }
        }
    }

    /// Runs the model forward over every row in file order and calls `sink(first_row, n, codes, recon)`
    /// for each batch; also returns the reconstruction MSE over all elements.
    pub fn evaluate(
        &mut self,
        sink: impl FnMut(usize, usize, &[B::Scalar], &[B::Scalar]),
        want_codes: bool,
        want_recon: bool,
    ) -> Result<f64> {
        self.evaluate_set(DataSet::Train, sink, want_codes, want_recon)
    }

    /// [`Network::evaluate`] on either uploaded set.
    pub fn evaluate_set(
        &mut self,
        which: DataSet,
        mut sink: impl FnMut(usize, usize, &[B::Scalar], &[B::Scalar]),
        want_codes: bool,
        want_recon: bool,
    ) -> Result<f64> {
        let rows = self.dataset(which).rows;
        let identity: Vec<u32> = (0..rows as u32).collect();
        self.set_order(which, &identity)?;
        let d0 = self.spec.input_width();
        let dl = self.spec.code_width();
        let depth = self.spec.depth();
        let mut codes = vec![B::Scalar::zero(); if want_codes { self.max_batch * dl } else { 0 }];
        let mut recon = vec![B::Scalar::zero(); self.max_batch * d0];
        let mut input = vec![B::Scalar::zero(); self.max_batch * d0];
        let mut sum = 0.0f64;
        let mut start = 0;
        while start < rows {
            let n = self.max_batch.min(rows - start);
            self.forward(which, start, n)?;
            // The loss is computed on the host here: evaluation is not the hot path and this keeps
            // inference free of gradient buffers.
            self.backend.download(self.g(0, n), &mut recon[..n * d0])?;
            self.backend.download(self.x(n), &mut input[..n * d0])?;
            for (r, x) in recon[..n * d0].iter().zip(&input[..n * d0]) {
                let diff = (*r - *x).to_f64();
                sum += diff * diff;
            }
            if want_codes {
                self.backend
                    .download(self.h(depth, n), &mut codes[..n * dl])?;
            }
            sink(
                start,
                n,
                if want_codes { &codes[..n * dl] } else { &[] },
                if want_recon { &recon[..n * d0] } else { &[] },
            );
            start += n;
        }
        Ok(sum / (rows * d0) as f64)
    }

    /// The flat parameter vector, as f32 (see `model.rs` for the layout).
    pub fn read_params(&mut self) -> Result<Vec<f32>> {
        self.read(self.params)
    }
    /// The flat gradient vector of the last step.
    pub fn read_grads(&mut self) -> Result<Vec<B::Scalar>> {
        let mut out = vec![B::Scalar::zero(); self.grads.len];
        self.backend.download(self.grads, &mut out)?;
        Ok(out)
    }
    /// Overwrites the parameters (f64 for gradient checks on an f64 backend).
    pub fn write_params(&mut self, values: &[B::Scalar]) -> Result<()> {
        self.backend.upload(self.params, values)
    }

    fn read(&mut self, r: Region) -> Result<Vec<f32>> {
        let mut out = vec![B::Scalar::zero(); r.len];
        self.backend.download(r, &mut out)?;
        Ok(out.iter().map(|x| x.to_f32()).collect())
    }
}

/// Activation of the output layer as the loss sees it (re-exported for tests).
pub fn output_activation(spec: &ModelSpec) -> Activation {
    spec.decoder_activation(0)
}
