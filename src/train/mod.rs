//! Training, written once over [`Backend`]: the network on a backend and the rooms of what it does.
//!
//! - `step.rs`: one training step, forward, backward and the optimizer's update, written as the maths in its
//!   doc; and where each tensor of a batch lives.
//! - `data.rs`: the data sets on the backend (or kept on the host, a batch copied up a step ahead), their
//!   storage (f32 or 16-bit) and the epoch's row order; [`Network::set_data`] puts a set in place.
//! - `fit.rs`: the steps of an epoch and the epochs of a run: shuffling, validation, early stopping,
//!   interruption, and the state a checkpoint needs to resume.
//! - `graphs.rs`: runs of steps recorded once as a graph and replayed (a CUDA graph on a GPU).
//! - `noise.rs`: denoising: the noise of a training batch's inputs, while the loss keeps the clean rows.
//! - `constraints.rs`: the PCA-principle penalties and projection.
//! - `evaluate.rs`: the forward pass over a whole data set (eval, encode, reconstruct, validation).
//!
//! The network holds only [`Region`]s of backend memory, so a GPU keeps everything on the device: a step
//! moves nothing between host and device, and the per-step losses come back once per epoch. One flat
//! parameter buffer and one flat gradient buffer hold everything (`model.rs` says where each slot is); a tied
//! kernel has exactly one slot in each.

use crate::backend::{Backend, BufId, Real, Region};
use crate::error::Result;
use crate::model::{LayerSlots, ModelSpec};
use crate::optim::Optimizer;
use std::sync::atomic::{AtomicBool, Ordering};

mod constraints;
mod data;
mod evaluate;
mod fit;
mod graphs;
mod noise;
mod step;

pub use constraints::Constraints;
pub use data::{DataOptions, DataSet, DataType, Placement};
pub use fit::{epoch_order, FitEnd, FitOptions, FitOutcome, FitState, OptimizerState};
pub use graphs::GRAPH_STEPS;
pub use noise::Noise;
pub use step::step_products;

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

/// Everything a model needs on a backend: parameters, gradients, optimizer state and the activations of one
/// batch of at most `max_batch` rows; the data sets; the constraints; the recorded steps.
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
    /// The batch's activations and gradients (step.rs).
    acts: step::Activations,
    /// The training and validation sets, and the staging of a set kept on the host (data.rs).
    sets: data::DataSets<B::Scalar>,
    constraints: Constraints,
    /// Scratch buffers of the constraints, allocated on first use (constraints.rs).
    constraint_buffers: Option<constraints::Buffers>,
    /// Recorded runs of steps (graphs.rs).
    graphs: graphs::StepGraphs,
    /// Denoising (noise.rs): the noise of the training batches, its key and mask values on the backend.
    noise: Option<noise::NoiseState<B::Scalar>>,
    /// Whether `stack_in[0]` has the clean target area before it (noise.rs), once noise was turned on.
    has_target_area: bool,
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
        let acts = step::Activations::alloc(&mut backend, spec, max_batch)?;
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
            acts,
            sets: data::DataSets::default(),
            constraints: Constraints::default(),
            constraint_buffers: None,
            graphs: graphs::StepGraphs::default(),
            noise: None,
            has_target_area: false,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Optimizer steps taken so far (Adam's t).
    pub fn steps_done(&self) -> u64 {
        self.steps_done
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
