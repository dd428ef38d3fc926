//! The constraints of "Build the right Autoencoder — Tune and Optimize using PCA principles" (the article
//! tied weights come from), as penalties and a projection on top of the reconstruction loss.
//!
//! For a batch of n rows, codes H = h_L (n, k) taken AFTER the code activation, and kernels W_i (d_i, d_{i+1}):
//!
//! - `--orthogonality λ`: P = λ·Σ_i ‖W_iᵀW_i − I‖_F (the norm, not its square). With A = WᵀW − I (symmetric)
//!   dP/dW = 2λ·W·A/‖A‖_F, and 0 when ‖A‖_F = 0. Added to each kernel's one gradient slot after the
//!   reconstruction gradient is complete.
//! - `--uncorrelated λ`: Hc = H − colmean(H), Cov = HcᵀHc/(n − 1), P = λ·Σ_{i≠j} Cov_ij² (0 when n = 1).
//!   dP/dH = (4λ/(n − 1))·Hc·Offdiag(Cov): the mean's own derivative adds nothing because the columns of Hc
//!   sum to zero. Added to dL/dh_L before the code activation's backward.
//! - `--unit-norm`: after every optimizer step, W[:, j] /= ‖W[:, j]‖₂ for every column of every kernel.
//!
//! The penalties steer the gradient only: the reported loss stays the reconstruction MSE. [`Network::penalty`]
//! computes their value on the host (in f64) for tests.
//!
//! Everything runs on the backend with `gemm` (transpose flags, α/β; no transposed copies) and five small ops
//! (`diagonal_affine`, `sum_squares`, `div_by_sqrt`, `center_columns`, `normalize_columns`); the norm
//! ‖A‖_F stays in a one-element device region, so a step still moves nothing to the host.

use super::{alloc, Network};
use crate::backend::{Backend, Gemm, Real, Region, Trans};
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

/// Scratch space the constraints need on the backend, allocated on the first step that needs it (a model
/// trained without constraints allocates none of it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Buffers {
    /// (c, c) with c = max_i d_{i+1}: A = WᵀW − I of the kernel at hand, later the codes' covariance. One
    /// buffer serves every use: the backend runs the ops in order.
    square: Region,
    /// (1), in the same buffer after `square`: ‖A‖_F² of the kernel at hand.
    sum_sq: Region,
    /// (max_batch, d_L): the centered codes Hc; allocated on the first step with `--uncorrelated`.
    centered: Option<Region>,
}

impl<B: Backend> Network<B> {
    /// Sets the constraints used by the following steps.
    pub fn set_constraints(&mut self, constraints: Constraints) {
        if constraints != self.constraints {
            // Recorded steps ran the old constraints' ops.
            self.forget_graphs();
            self.constraints = constraints;
        }
    }

    /// The constraints the next steps use.
    pub fn constraints(&self) -> Constraints {
        self.constraints
    }

    /// The scratch buffers, allocated on first use (`centered` only when `with_centered`).
    fn constraint_scratch(&mut self, with_centered: bool) -> Result<Buffers> {
        if self.constraint_buffers.is_none() {
            let c = self.spec.widths[1..].iter().copied().max().unwrap_or(0);
            let both = alloc(&mut self.backend, c * c + 1)?;
            self.constraint_buffers = Some(Buffers {
                square: both.prefix(c * c),
                sum_sq: both.sub(c * c, 1),
                centered: None,
            });
        }
        let buffers = self
            .constraint_buffers
            .as_mut()
            .expect("allocated just above");
        if with_centered && buffers.centered.is_none() {
            let len = self.max_batch * self.spec.code_width();
            buffers.centered = Some(alloc(&mut self.backend, len)?);
        }
        Ok(*buffers)
    }

    /// Adds the uncorrelated-codes penalty's gradient to `d_code` = dL/dh_L, (n, d_L); `code` is h_L.
    pub(super) fn add_code_penalty_gradient(
        &mut self,
        n: usize,
        code: Region,
        d_code: Region,
    ) -> Result<()> {
        let lambda = self.constraints.uncorrelated;
        if lambda == 0.0 || n < 2 {
            return Ok(());
        }
        let k = self.spec.code_width();
        let scratch = self.constraint_scratch(true)?;
        let hc = scratch
            .centered
            .expect("allocated with_centered")
            .prefix(n * k);
        let cov = scratch.square.prefix(k * k);
        // Hc = H − colmean(H)   (n, k)
        self.backend.center_columns(code, k, hc)?;
        // Cov = HcᵀHc/(n − 1)   (k, k), then its off-diagonal part.
        let g = Gemm::new(Trans::T, Trans::N, k, k, n).scaled((1.0 / (n - 1) as f64) as f32);
        self.backend.gemm(g, hc, hc, cov)?;
        self.backend.diagonal_affine(cov, k, 0.0, 0.0)?;
        // dL/dH += 4λ/(n − 1)·Hc·Offdiag(Cov)   (n, k)
        let g = Gemm::new(Trans::N, Trans::N, n, k, k)
            .scaled((4.0 * lambda as f64 / (n - 1) as f64) as f32)
            .accumulate();
        self.backend.gemm(g, hc, cov, d_code)
    }

    /// Adds the orthogonality penalty's gradient to every kernel's gradient slot.
    pub(super) fn add_kernel_penalty_gradients(&mut self) -> Result<()> {
        let lambda = self.constraints.orthogonality;
        if lambda == 0.0 {
            return Ok(());
        }
        let scratch = self.constraint_scratch(false)?;
        let w = self.spec.widths.clone();
        for i in 0..self.spec.depth() {
            let (d, k) = (w[i], w[i + 1]);
            let kernel = self.kernel(i);
            let slot = self.slots[i].kernel.clone();
            let dw = self.grads.sub(slot.start, slot.len());
            let a = scratch.square.prefix(k * k);
            // A = WᵀW − I   (k, k): W is (d, k), read transposed as the first operand.
            let g = Gemm::new(Trans::T, Trans::N, k, k, d);
            self.backend.gemm(g, kernel, kernel, a)?;
            self.backend.diagonal_affine(a, k, 1.0, -1.0)?;
            // A /= ‖A‖_F, the norm staying on the backend (A stays 0 when it is 0).
            self.backend.sum_squares(a, scratch.sum_sq)?;
            self.backend.div_by_sqrt(a, scratch.sum_sq)?;
            // dW += 2λ·W·A   (d, k)
            let g = Gemm::new(Trans::N, Trans::N, d, k, k)
                .scaled(2.0 * lambda)
                .accumulate();
            self.backend.gemm(g, kernel, a, dw)?;
        }
        Ok(())
    }

    /// Projects every kernel column to unit norm.
    pub(super) fn project_unit_norm(&mut self) -> Result<()> {
        if !self.constraints.unit_norm {
            return Ok(());
        }
        for i in 0..self.spec.depth() {
            let cols = self.spec.widths[i + 1];
            self.backend.normalize_columns(self.kernel(i), cols)?;
        }
        Ok(())
    }

    /// The value of the enabled penalties, Σ over kernels of λ_o·‖WᵀW − I‖_F plus λ_u·Σ_{i≠j} Cov_ij² of the
    /// codes of rows `order[start .. start + n]`, computed on the host in f64 from the downloaded parameters
    /// and codes. Runs the forward pass of those rows itself (overwriting the activations of the last batch)
    /// when the code penalty is on. Not part of the reported loss; tests add it to `loss_and_gradient`'s MSE.
    pub fn penalty(&mut self, start: usize, n: usize) -> Result<f64> {
        assert!(n <= self.max_batch, "batch larger than max_batch");
        let c = self.constraints;
        let w = self.spec.widths.clone();
        let mut total = 0.0;
        if c.orthogonality != 0.0 {
            let params = self.download_f64(self.params)?;
            for (i, slot) in self.slots.iter().enumerate() {
                let kernel = &params[slot.kernel.clone()];
                total += c.orthogonality as f64 * orthogonality_residual(kernel, w[i], w[i + 1]);
            }
        }
        if c.uncorrelated != 0.0 && n > 1 {
            // The codes the training step penalizes: of the corrupted rows when noise is on.
            let corrupt = self.corrupts();
            self.forward(super::DataSet::Train, start, n, corrupt)?;
            let k = self.spec.code_width();
            let codes = self.h(self.spec.depth(), n);
            let codes = self.download_f64(codes)?;
            total += c.uncorrelated as f64 * offdiagonal_covariance_sq(&codes, n, k);
        }
        Ok(total)
    }

    fn download_f64(&mut self, r: Region) -> Result<Vec<f64>> {
        let mut out = vec![B::Scalar::zero(); r.len];
        self.backend.download(r, &mut out)?;
        Ok(out.iter().map(|x| x.to_f64()).collect())
    }
}

/// ‖WᵀW − I‖_F of a (d, k) row-major kernel.
fn orthogonality_residual(w: &[f64], d: usize, k: usize) -> f64 {
    let mut sum = 0.0;
    for a in 0..k {
        for b in 0..k {
            let dot: f64 = (0..d).map(|r| w[r * k + a] * w[r * k + b]).sum();
            let diff = dot - if a == b { 1.0 } else { 0.0 };
            sum += diff * diff;
        }
    }
    sum.sqrt()
}

/// Σ_{i≠j} Cov_ij² of codes h (n, k) row-major, Cov = HcᵀHc/(n − 1); 0 when n < 2.
fn offdiagonal_covariance_sq(h: &[f64], n: usize, k: usize) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let mean: Vec<f64> = (0..k)
        .map(|j| (0..n).map(|r| h[r * k + j]).sum::<f64>() / n as f64)
        .collect();
    let mut sum = 0.0;
    for a in 0..k {
        for b in 0..k {
            if a != b {
                let cov: f64 = (0..n)
                    .map(|r| (h[r * k + a] - mean[a]) * (h[r * k + b] - mean[b]))
                    .sum::<f64>()
                    / (n - 1) as f64;
                sum += cov * cov;
            }
        }
    }
    sum
}
