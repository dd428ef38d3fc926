//! Runs of training steps recorded once as a graph and replayed with one call (a CUDA graph on a GPU: one
//! launch instead of one per kernel, which is most of a small model's step).
//!
//! A replay repeats every op with the arguments it was recorded with, so every value that changes from step
//! to step lives in backend memory: the epoch's row order, Adam's alpha (one slot per step) and the loss (one
//! slot per step). A recording cannot allocate, so recordings start once a step has run op by op (`warm`: it
//! grew the backend's scratch buffers), and a run of steps whose recording failed runs op by op instead.
//! `Network::train_steps_in_order` (fit.rs) decides, run by run, whether to replay.

use super::Network;
use crate::backend::{Backend, GraphId};
use crate::error::Result;
use std::collections::HashMap;

/// Steps recorded in one graph when graphs are on (`Network::set_graphs`): a run stops (Ctrl-C) at most this
/// many steps late, and an epoch of a digits-sized model is a handful of replays.
pub const GRAPH_STEPS: usize = 32;

/// The recorded runs of steps of a network, and what became of the recordings.
#[derive(Default)]
pub(super) struct StepGraphs {
    /// Whether training steps are recorded as graphs and replayed (`set_graphs`).
    pub(super) on: bool,
    /// Recorded runs of steps, by (batch size, first step of the epoch): each runs steps first..first +
    /// GRAPH_STEPS (or to the epoch's end) on the training set as it is now.
    recorded: HashMap<(usize, usize), GraphId>,
    /// Why recordings failed (their steps then ran one op at a time), oldest first.
    failures: Vec<String>,
    /// Whether a step has run op by op since the graphs were last forgotten: it grows the backend's scratch
    /// buffers to this model's and data set's sizes, which a recording cannot do.
    pub(super) warm: bool,
    /// Failed recordings by the key of `recorded`: a run whose recording failed twice is not tried again
    /// (the first failure may be a scratch buffer that had to grow, which the steps run instead then did).
    failed: HashMap<(usize, usize), u32>,
}

impl<B: Backend> Network<B> {
    /// Turns graphs on or off for the following training steps: each run of [`GRAPH_STEPS`] steps is
    /// recorded the first time (its ops queued as usual) and then replayed with one call per epoch,
    /// computing exactly what the same ops called one by one compute. Returns whether the backend records
    /// graphs (the CPU does not, and then nothing changes).
    pub fn set_graphs(&mut self, on: bool) -> bool {
        self.graphs.on = on && self.backend.can_capture();
        if !self.graphs.on {
            self.forget_graphs();
        }
        self.graphs.on
    }

    /// Why recordings failed, oldest first (empty when none did).
    pub fn graph_failures(&self) -> &[String] {
        &self.graphs.failures
    }

    pub(super) fn forget_graphs(&mut self) {
        self.graphs.recorded.clear();
        self.graphs.failed.clear();
        self.graphs.warm = false;
        self.backend.clear_graphs();
    }

    /// The graph of steps `first..end` at this batch size, recorded now if it was not yet. None when the
    /// recording failed (the reason is kept in `graph_failures`): the caller then runs the steps one op at a
    /// time. Recording runs nothing, so the steps are still to run either way.
    pub(super) fn recorded_steps(
        &mut self,
        batch_size: usize,
        first: usize,
        end: usize,
    ) -> Result<Option<GraphId>> {
        let key = (batch_size, first);
        if let Some(&graph) = self.graphs.recorded.get(&key) {
            return Ok(Some(graph));
        }
        if self.graphs.failed.get(&key).is_some_and(|&n| n >= 2) {
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
                self.graphs.recorded.insert(key, graph);
                Ok(Some(graph))
            }
            Err(e) => {
                *self.graphs.failed.entry(key).or_default() += 1;
                self.graphs
                    .failures
                    .push(format!("recording steps {first}..{end}: {e}"));
                Ok(None)
            }
        }
    }
}
