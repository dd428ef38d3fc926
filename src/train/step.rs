//! One training step, as the maths. A batch of n rows, L tied layers, widths d_0 … d_L; `W_i` (d_i, d_{i+1})
//! is the ONE kernel of layer i, `b_i` its encoder bias and `c_i` its decoder bias:
//!
//!   encoder  h_0 = x,   h_{i+1} = f_enc_i(h_i·W_i + b_i)              h_i is (n, d_i)
//!   decoder  g_L = h_L, g_i     = f_dec_i(g_{i+1}·W_iᵀ + c_i)         g_i is (n, d_i)
//!   loss     mean over all n·d_0 elements of (g_0 − x)²
//!
//! (A denoising run feeds the encoder a corrupted x̃ and keeps the loss on the clean x: h_0 = x̃, and the
//! loss is the mean of (g_0 − x)²; noise.rs.)
//!
//! Backward, the decoder from the output inward, then the encoder from the code outward, with dz the
//! gradient at a layer's pre-activation:
//!
//!   decoder i:  dc_i = colsum(dz_dec_i)     dg_{i+1} = dz_dec_i·W_i
//!   encoder i:  db_i = colsum(dz_enc_i)     dh_i     = dz_enc_i·W_iᵀ
//!   then        dW_i = h_iᵀ·dz_enc_i + dz_dec_iᵀ·g_{i+1} = [h_i; dz_dec_i]ᵀ·[dz_enc_i; g_{i+1}]
//!
//! The one gradient slot of W_i holds the sum of what both of its uses contribute, computed as ONE product
//! over the batch stacked twice (depth 2n): each pair lives in one buffer, rows 0..n then n..2n
//! ([`Activations`]), so the stacking costs nothing, and the product makes one pass over dW_i instead of a
//! write and a read-add. Then the update: SGD `v = m·v − lr·g; w += v`, or Adam (`AdamConfig`), over the
//! flat parameter buffer.
//!
//! The functions below follow that order: [`Network::train_step`], then `forward`, `decode`, `backward` and
//! `optimizer_step`, then where each tensor lives.

use super::{alloc, DataOptions, DataSet, Network};
use crate::backend::products::ProductLog;
use crate::backend::{Backend, Gemm, Real, Region, Trans};
use crate::error::Result;
use crate::model::{LayerSlots, ModelSpec};
use crate::optim::Optimizer;

/// The batch's activations and the gradients at the pre-activations, in pairs that stack into the operands of
/// each tied kernel's gradient (see the module doc), n rows each for a batch of n.
pub(super) struct Activations {
    /// stack_in[i] is (2·max_batch, d_i): h_i (rows 0..n; h_0 = x, gathered from the data set), then dz_dec_i
    /// (rows n..2n). Read through `h` and `dz_dec`.
    pub(super) stack_in: Vec<Region>,
    /// stack_out[i] is (2·max_batch, d_{i+1}): dz_enc_i (rows 0..n), then g_{i+1} (rows n..2n; g_L = h_L, the
    /// code). Read through `dz_enc`, `g` and `h`.
    stack_out: Vec<Region>,
    /// g_0, the reconstruction, (max_batch, d_0).
    recon: Region,
}

impl Activations {
    /// Inference needs only the activations, half of each pair; the layout is the same, for one code path.
    pub(super) fn alloc<B: Backend>(
        backend: &mut B,
        spec: &ModelSpec,
        max_batch: usize,
    ) -> Result<Activations> {
        let depth = spec.depth();
        let w = &spec.widths;
        let (mut stack_in, mut stack_out) = (Vec::with_capacity(depth), Vec::with_capacity(depth));
        for i in 0..depth {
            stack_in.push(alloc(backend, 2 * max_batch * w[i])?);
            stack_out.push(alloc(backend, 2 * max_batch * w[i + 1])?);
        }
        let recon = alloc(backend, max_batch * w[0])?;
        Ok(Activations {
            stack_in,
            stack_out,
            recon,
        })
    }
}

impl<B: Backend> Network<B> {
    /// Step `step` of the epoch whose order was uploaded last: forward, backward, update.
    pub(super) fn train_step(&mut self, batch_size: usize, step: usize) -> Result<()> {
        let (rows, losses, alphas) = {
            let d = self.data();
            (d.rows, d.step_losses, d.step_alphas)
        };
        let start = step * batch_size;
        let n = batch_size.min(rows - start);
        let target = self.forward_train(start, n)?;
        self.backward(n, target, losses.sub(step, 1))?;
        self.optimizer_step(alphas.sub(step, 1))
    }

    /// The forward pass of a training batch, corrupted when noise is on (noise.rs); returns the rows the
    /// loss compares the reconstruction with: the clean rows, which are x itself without noise.
    fn forward_train(&mut self, start: usize, n: usize) -> Result<Region> {
        let corrupt = self.corrupts();
        self.forward(DataSet::Train, start, n, corrupt)?;
        Ok(if corrupt { self.target(n) } else { self.x(n) })
    }

    /// Forward pass of rows `order[start .. start + n]` of the data set, with noise when `corrupt` (a
    /// training batch with noise on): fills every h_i and g_i.
    pub(super) fn forward(
        &mut self,
        which: DataSet,
        start: usize,
        n: usize,
        corrupt: bool,
    ) -> Result<()> {
        // x = h_0: the batch's rows, gathered (data.rs), and corrupted (noise.rs).
        self.load_batch(which, start, n, corrupt)?;
        self.encode(n)?;
        self.decode(n)
    }

    /// The encoder on the n rows in h_0: fills h_1 … h_L.
    pub(super) fn encode(&mut self, n: usize) -> Result<()> {
        let w = self.spec.widths.clone();
        // Encoder: h_{i+1} = f(h_i·W_i + b_i). h_i is (n, d_i), W_i is (d_i, d_{i+1}).
        for i in 0..self.spec.depth() {
            let (h_in, h_out) = (self.h(i, n), self.h(i + 1, n));
            let g = Gemm::new(Trans::N, Trans::N, n, w[i + 1], w[i]);
            let act = self.spec.encoder_activation(i);
            self.backend
                .gemm_bias_act(g, h_in, self.kernel(i), h_out, self.enc_bias(i), act)?;
        }
        Ok(())
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

    /// Backward pass for the batch of `n` rows last run forward, whose reconstruction the loss compares with
    /// `target` (x, or the clean rows of a corrupted x); writes the whole gradient buffer and the batch's
    /// summed squared error into `loss_slot`.
    fn backward(&mut self, n: usize, target: Region, loss_slot: Region) -> Result<()> {
        let w = self.spec.widths.clone();
        let depth = self.spec.depth();
        let recon = self.g(0, n);
        // dL/d(pre-activation of the output layer), with the output activation folded in.
        let out_delta = self.dz_dec(0, n);
        let out_act = self.spec.decoder_activation(0);
        self.backend
            .mse_backward(recon, target, out_act, n * w[0], out_delta, loss_slot)?;
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
                self.acts.stack_in[i].prefix(2 * n * w[i]),
                self.acts.stack_out[i].prefix(2 * n * w[i + 1]),
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

    /// Computes the loss and the full gradient for rows `order[start .. start + n]` without updating
    /// anything, with the training steps' noise (if any). Returns the mean squared error. Used by gradient
    /// checks and tests.
    pub fn loss_and_gradient(&mut self, start: usize, n: usize) -> Result<f64> {
        assert!(n <= self.max_batch, "batch larger than max_batch");
        let slot = self.data().step_losses.prefix(1);
        let target = self.forward_train(start, n)?;
        self.backward(n, target, slot)?;
        let mut sum = [B::Scalar::zero()];
        self.backend.download(slot, &mut sum)?;
        Ok(sum[0].to_f64() / (n * self.spec.input_width()) as f64)
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

    // Where each tensor of the batch lives (see `Activations`), and each parameter's slot (see `model.rs`).

    /// x = h_0, the batch of n rows.
    pub(super) fn x(&self, n: usize) -> Region {
        self.h(0, n)
    }
    /// h_i for a batch of n rows, (n, d_i); h_L, the code, is g_L.
    pub(super) fn h(&self, i: usize, n: usize) -> Region {
        if i == self.spec.depth() {
            self.g(i, n)
        } else {
            self.acts.stack_in[i].prefix(n * self.spec.widths[i])
        }
    }
    /// g_i for a batch of n rows, (n, d_i): the input of decoder layer i − 1, or the reconstruction (i = 0).
    pub(super) fn g(&self, i: usize, n: usize) -> Region {
        let d = self.spec.widths[i];
        if i == 0 {
            self.acts.recon.prefix(n * d)
        } else {
            self.acts.stack_out[i - 1].sub(n * d, n * d)
        }
    }
    /// The gradient at decoder layer i's pre-activation, (n, d_i).
    fn dz_dec(&self, i: usize, n: usize) -> Region {
        let d = self.spec.widths[i];
        self.acts.stack_in[i].sub(n * d, n * d)
    }
    /// The gradient at encoder layer i's pre-activation, (n, d_{i+1}).
    fn dz_enc(&self, i: usize, n: usize) -> Region {
        self.acts.stack_out[i].prefix(n * self.spec.widths[i + 1])
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
    pub(super) fn kernel(&self, i: usize) -> Region {
        self.param_of(|s| &s[i].kernel)
    }
    fn enc_bias(&self, i: usize) -> Region {
        self.param_of(|s| &s[i].enc_bias)
    }
    fn dec_bias(&self, i: usize) -> Region {
        self.param_of(|s| &s[i].dec_bias)
    }
}

/// The matrix products of one training step of a `spec` model on a batch of `batch` rows, in the order the
/// step runs them: `Network::train_step` itself, run on a backend that computes nothing and records each
/// product (`tiedae bench --step-gemms` times them alone).
pub fn step_products(spec: &ModelSpec, batch: usize, optimizer: Optimizer) -> Result<Vec<Gemm>> {
    let params = vec![0.0; spec.param_count()];
    let mut net = Network::new(ProductLog::default(), spec, &params, batch, Some(optimizer))?;
    let rows = vec![0.0; batch * spec.input_width()];
    net.set_data(DataSet::Train, &rows, batch, DataOptions::default())?;
    net.backend.products.clear();
    let order: Vec<u32> = (0..batch as u32).collect();
    net.train_epoch(&order, batch)?;
    Ok(std::mem::take(&mut net.backend.products))
}
