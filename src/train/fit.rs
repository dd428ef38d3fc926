//! The steps of an epoch and the epochs of a run: shuffling, validation, early stopping, interruption, and the
//! state a checkpoint needs to resume exactly where a run stopped.
//!
//! How a step reaches the backend (`train_steps_in_order`): op by op (`train_step`, step.rs), or, with graphs
//! on, runs of GRAPH_STEPS steps recorded once and replayed (graphs.rs). A data set kept on the host is
//! copied up a batch ahead, into the batch buffer the running step does not read (`stage_batch`, data.rs).

use super::{DataSet, EpochReport, Network, Placement, StepsRun, Stop, TrainConfig, GRAPH_STEPS};
use crate::backend::shuffle::{fill_order, shuffle_key};
use crate::backend::{Backend, Real};
use crate::error::{Error, Result};

/// The row order of epoch `epoch` (1-based): file order, or the shuffle keyed by the seed and the epoch
/// (`backend::shuffle`), which the GPU computes too. A resumed run rebuilds any epoch's order from the seed
/// and the epoch alone.
pub fn epoch_order(rows: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..rows as u32).collect();
    if shuffle {
        fill_order(&mut order, shuffle_key(seed, epoch as u64));
    }
    order
}

/// The optimizer's state on the host: the step count (Adam's t) and its flat buffers (SGD's velocity, or
/// Adam's m and v), each laid out like the parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub steps_done: u64,
    pub buffers: Vec<Vec<f32>>,
}

/// Where a run stands, and what early stopping has seen: everything a checkpoint stores besides weights and
/// optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct FitState {
    /// Epochs fully done.
    pub epochs_done: usize,
    /// Steps done of epoch `epochs_done + 1` (non-zero only after an interruption).
    pub step_in_epoch: usize,
    /// The lowest monitored loss so far (validation loss when there is a validation set).
    pub best_loss: f64,
    pub best_epoch: usize,
    /// The parameters of the best epoch, kept only with `--patience`.
    pub best_params: Option<Vec<f32>>,
}

impl Default for FitState {
    fn default() -> Self {
        FitState {
            epochs_done: 0,
            step_in_epoch: 0,
            best_loss: f64::INFINITY,
            best_epoch: 0,
            best_params: None,
        }
    }
}

pub struct FitOptions<'a> {
    /// Where to start (a fresh run: the default).
    pub state: FitState,
    /// Stop when the monitored loss has not improved for this many epochs, and restore the best weights.
    pub patience: Option<usize>,
    /// When to stop early, after the step in flight; `FitEnd::Interrupted` says so.
    pub stop: Stop<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FitEnd {
    Completed,
    /// Early stopping; the best epoch's weights are in the network.
    EarlyStopped {
        best_epoch: usize,
        best_loss: f64,
    },
    /// `stop` was set: `state` says where to resume.
    Interrupted,
}

pub struct FitOutcome {
    pub reports: Vec<EpochReport>,
    pub end: FitEnd,
    pub state: FitState,
}

impl<B: Backend> Network<B> {
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
            if self.graphs.on
                && !on_host
                && next.is_multiple_of(GRAPH_STEPS)
                && self.graphs.warm
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
            self.graphs.warm = true;
            next += 1;
            if on_host && next < steps && !stop.now(self.steps_done) {
                // The next batch goes up while this step runs.
                let start = next * batch_size;
                let corrupt = self.corrupts();
                self.stage_batch(DataSet::Train, start, batch_size.min(rows - start), corrupt)?;
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

    /// Trains until `cfg.epochs` epochs are done in all (counting those in `opts.state`), calling
    /// `on_epoch` after every epoch with the report, the state a checkpoint needs, and the network (to read
    /// its weights and optimizer state).
    pub fn fit_with(
        &mut self,
        cfg: &TrainConfig,
        opts: FitOptions<'_>,
        mut on_epoch: impl FnMut(&EpochReport, &FitState, &mut Self) -> Result<()>,
    ) -> Result<FitOutcome> {
        self.set_constraints(cfg.constraints);
        let mut state = opts.state;
        let mut reports = Vec::new();
        while state.epochs_done < cfg.epochs {
            let epoch = state.epochs_done + 1;
            let t0 = std::time::Instant::now();
            self.order_epoch(cfg.seed, epoch, cfg.shuffle)?;
            let run = self
                .train_steps_in_order(cfg.batch_size, state.step_in_epoch, opts.stop)
                .map_err(|e| match e {
                    Error::Diverged(msg) => Error::Diverged(format!(
                        "training diverged in epoch {epoch}: {msg}; lower --lr or normalize the data (--normalize standard)"
                    )),
                    other => other,
                })?;
            if !run.finished {
                state.step_in_epoch = run.next_step;
                return Ok(FitOutcome {
                    reports,
                    end: FitEnd::Interrupted,
                    state,
                });
            }
            state.epochs_done = epoch;
            state.step_in_epoch = 0;
            let val_loss = if self.has_validation() {
                Some(self.evaluate_set(DataSet::Validation, |_, _, _, _| {}, false, false)?)
            } else {
                None
            };
            // A loss is a number or an error: never an infinite or NaN value in a report or a file.
            for (what, l) in [("loss", Some(run.loss)), ("validation loss", val_loss)] {
                if let Some(l) = l.filter(|l| !l.is_finite()) {
                    return Err(Error::Diverged(format!(
                        "training diverged in epoch {epoch}: the {what} became {l}; lower --lr or normalize the data (--normalize standard)"
                    )));
                }
            }
            let report = EpochReport {
                epoch,
                loss: run.loss,
                val_loss,
                seconds: t0.elapsed().as_secs_f64(),
                samples: run.samples,
            };
            let monitored = val_loss.unwrap_or(run.loss);
            if monitored < state.best_loss {
                state.best_loss = monitored;
                state.best_epoch = epoch;
                if opts.patience.is_some() {
                    state.best_params = Some(self.read_params()?);
                }
            }
            on_epoch(&report, &state, self)?;
            reports.push(report);
            if let Some(patience) = opts.patience {
                if epoch - state.best_epoch >= patience {
                    self.restore_best(&state)?;
                    return Ok(FitOutcome {
                        reports,
                        end: FitEnd::EarlyStopped {
                            best_epoch: state.best_epoch,
                            best_loss: state.best_loss,
                        },
                        state,
                    });
                }
            }
        }
        if opts.patience.is_some() {
            self.restore_best(&state)?;
        }
        Ok(FitOutcome {
            reports,
            end: FitEnd::Completed,
            state,
        })
    }

    /// Trains for `cfg.epochs` epochs from scratch, calling `on_epoch` after each.
    pub fn fit(
        &mut self,
        cfg: &TrainConfig,
        mut on_epoch: impl FnMut(&EpochReport) -> Result<()>,
    ) -> Result<Vec<EpochReport>> {
        let opts = FitOptions {
            state: FitState::default(),
            patience: None,
            stop: Stop::default(),
        };
        Ok(self.fit_with(cfg, opts, |r, _, _| on_epoch(r))?.reports)
    }

    fn restore_best(&mut self, state: &FitState) -> Result<()> {
        if let Some(best) = &state.best_params {
            let host: Vec<B::Scalar> = best.iter().map(|&x| B::Scalar::from_f32(x)).collect();
            self.write_params(&host)?;
        }
        Ok(())
    }

    /// The optimizer's state, for a checkpoint.
    pub fn optimizer_state(&mut self) -> Result<OptimizerState> {
        let regions = self.opt_state.clone();
        let buffers = regions
            .into_iter()
            .map(|r| self.read(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(OptimizerState {
            steps_done: self.steps_done,
            buffers,
        })
    }

    /// Puts back the optimizer state of a checkpoint (same optimizer, same model).
    pub fn restore_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        if state.buffers.len() != self.opt_state.len()
            || state.buffers.iter().any(|b| b.len() != self.params.len)
        {
            return Err(Error::Device(format!(
                "optimizer state has {} buffer(s) that do not fit this model and optimizer ({} of {})",
                state.buffers.len(),
                self.opt_state.len(),
                self.params.len
            )));
        }
        for (r, host) in self.opt_state.clone().into_iter().zip(&state.buffers) {
            let host: Vec<B::Scalar> = host.iter().map(|&x| B::Scalar::from_f32(x)).collect();
            self.backend.upload(r, &host)?;
        }
        self.steps_done = state.steps_done;
        Ok(())
    }
}
