//! The forward pass over a whole data set, batch by batch in file order: the reconstruction MSE, and the codes
//! and reconstructions when asked for (`eval`, `encode`, `reconstruct`, and the validation loss of `fit`);
//! and every encoder layer's activations (`encode --all-layers`).

use super::{DataSet, Network};
use crate::backend::{Backend, Real};
use crate::error::Result;

impl<B: Backend> Network<B> {
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
        let (dl, depth) = (self.spec.code_width(), self.spec.depth());
        let mut codes = vec![B::Scalar::zero(); if want_codes { self.max_batch * dl } else { 0 }];
        self.forward_over(which, |net, start, n, recon| {
            if want_codes {
                net.backend
                    .download(net.h(depth, n), &mut codes[..n * dl])?;
            }
            sink(
                start,
                n,
                if want_codes { &codes[..n * dl] } else { &[] },
                if want_recon { recon } else { &[] },
            );
            Ok(())
        })
    }

    /// Runs the model over every row of the training set in file order (clean: no noise) and calls
    /// `sink(first_row, n, layers)` for each batch with its activations h_1 … h_L, `layers[i]` being h_{i+1}
    /// (n, d_{i+1}): every hidden layer, the code last. Returns the reconstruction MSE.
    pub fn encode_layers(
        &mut self,
        mut sink: impl FnMut(usize, usize, &[Vec<B::Scalar>]),
    ) -> Result<f64> {
        let depth = self.spec.depth();
        let mut layers: Vec<Vec<B::Scalar>> = (1..=depth)
            .map(|i| Vec::with_capacity(self.max_batch * self.spec.widths[i]))
            .collect();
        self.forward_over(DataSet::Train, |net, start, n, _| {
            for (i, layer) in layers.iter_mut().enumerate() {
                layer.resize(n * net.spec.widths[i + 1], B::Scalar::zero());
                net.backend.download(net.h(i + 1, n), layer)?;
            }
            sink(start, n, &layers);
            Ok(())
        })
    }

    /// The forward pass over every row of `which` in file order, batch by batch, calling `each(self,
    /// first_row, n, reconstructions)` after each batch (the reconstructions (n, d_0) in normalized units);
    /// returns the reconstruction MSE over all elements.
    fn forward_over(
        &mut self,
        which: DataSet,
        mut each: impl FnMut(&mut Self, usize, usize, &[B::Scalar]) -> Result<()>,
    ) -> Result<f64> {
        let rows = self.dataset(which).rows;
        let identity: Vec<u32> = (0..rows as u32).collect();
        self.set_order(which, &identity)?;
        let d0 = self.spec.input_width();
        let mut recon = vec![B::Scalar::zero(); self.max_batch * d0];
        let mut input = vec![B::Scalar::zero(); self.max_batch * d0];
        let mut sum = 0.0f64;
        let mut start = 0;
        while start < rows {
            let n = self.max_batch.min(rows - start);
            self.forward(which, start, n, false)?;
            // The loss is computed on the host here: evaluation is not the hot path and this keeps
            // inference free of gradient buffers.
            self.backend.download(self.g(0, n), &mut recon[..n * d0])?;
            self.backend.download(self.x(n), &mut input[..n * d0])?;
            for (r, x) in recon[..n * d0].iter().zip(&input[..n * d0]) {
                let diff = (*r - *x).to_f64();
                sum += diff * diff;
            }
            each(self, start, n, &recon[..n * d0])?;
            start += n;
        }
        Ok(sum / (rows * d0) as f64)
    }
}
