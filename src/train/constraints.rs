//! The constraints of "Build the right Autoencoder — Tune and Optimize using PCA principles" (the article
//! tied weights come from), as penalties and a projection on top of the reconstruction loss.
//! STUB: the hooks are wired into the step; the math is to be written.

use super::Network;
use crate::backend::{Backend, Region};
use crate::error::Result;

/// All off by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Constraints {
    /// `--orthogonality λ`: adds λ·‖WᵀW − I‖_F for every kernel W.
    pub orthogonality: f32,
    /// `--uncorrelated λ`: adds λ·Σ_{i≠j} Cov(codes)_ij² over the batch.
    pub uncorrelated: f32,
    /// `--unit-norm`: each kernel column is projected to norm 1 after every step.
    pub unit_norm: bool,
}

/// Scratch space the constraints need on the backend.
#[derive(Debug)]
pub(super) struct Buffers {}

impl<B: Backend> Network<B> {
    /// Adds the uncorrelated-codes penalty's gradient to `d_code` = dL/dh_L, (n, d_L); `code` is h_L.
    pub(super) fn add_code_penalty_gradient(
        &mut self,
        _n: usize,
        _code: Region,
        _d_code: Region,
    ) -> Result<()> {
        Ok(())
    }

    /// Adds the orthogonality penalty's gradient to every kernel's gradient slot.
    pub(super) fn add_kernel_penalty_gradients(&mut self) -> Result<()> {
        Ok(())
    }

    /// Projects every kernel column to unit norm.
    pub(super) fn project_unit_norm(&mut self) -> Result<()> {
        Ok(())
    }
}
