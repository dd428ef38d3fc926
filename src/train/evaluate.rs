//! The forward pass over a whole data set, batch by batch in file order: the reconstruction MSE, and the codes
//! and reconstructions when asked for (`eval`, `encode`, `reconstruct`, and the validation loss of `fit`).

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
            self.forward(which, start, n, false)?;
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
}
