//! The epoch loop: shuffling, validation, early stopping, interruption, and the state a checkpoint needs to
//! resume exactly where a run stopped.

use super::{DataSet, EpochReport, Network, Stop, TrainConfig};
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
