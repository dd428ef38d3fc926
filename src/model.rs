//! The model: widths, activations, and where every parameter lives in the ONE flat parameter buffer.
//!
//! Layer i (counted from the input) owns exactly three slots, in this order:
//!   kernel  W_i  (d_i, d_{i+1})  row-major, Keras orientation; used as W_i by the encoder, as W_iᵀ by the decoder
//!   enc_bias b_i (d_{i+1})
//!   dec_bias c_i (d_i)
//! The decoder has no kernel slot: that is what "tied" means here, and why the parameter count of a 51→1 model
//! is 51 + 1 + 51 = 103. The gradient buffer has the same layout, so W_i's gradient is one slot that both uses
//! add into.

use crate::activation::Activation;
use crate::error::{Error, Result};
use rand::{RngExt, SeedableRng};
use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// d_0 (the input width) … d_L (the code width).
    pub widths: Vec<usize>,
    /// Every hidden layer of the encoder and of the decoder.
    pub activation: Activation,
    /// The encoder's last layer (the code).
    pub code_activation: Activation,
    /// The decoder's last layer (the reconstruction).
    pub output_activation: Activation,
}

/// Where one layer's parameters are in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSlots {
    pub kernel: Range<usize>,
    pub enc_bias: Range<usize>,
    pub dec_bias: Range<usize>,
}

impl ModelSpec {
    pub fn new(
        widths: Vec<usize>,
        activation: Activation,
        code_activation: Activation,
        output_activation: Activation,
    ) -> Result<ModelSpec> {
        if widths.len() < 2 {
            return Err(Error::flag(
                "--layers",
                "needs at least one width (the code size), e.g. --layers 32,8",
            ));
        }
        if let Some(pos) = widths.iter().position(|&w| w == 0) {
            let msg = if pos == 0 {
                "the data has no feature columns".to_string()
            } else {
                format!("width {pos} is 0; every width must be a positive integer")
            };
            return Err(Error::flag("--layers", msg));
        }
        Ok(ModelSpec {
            widths,
            activation,
            code_activation,
            output_activation,
        })
    }

    /// Number of tied layers L.
    pub fn depth(&self) -> usize {
        self.widths.len() - 1
    }
    pub fn input_width(&self) -> usize {
        self.widths[0]
    }
    pub fn code_width(&self) -> usize {
        self.widths[self.depth()]
    }
    /// The activation of encoder layer i (which produces h_{i+1}).
    pub fn encoder_activation(&self, i: usize) -> Activation {
        if i + 1 == self.depth() {
            self.code_activation
        } else {
            self.activation
        }
    }
    /// The activation of decoder layer i (which produces g_i, the mirror of h_i).
    pub fn decoder_activation(&self, i: usize) -> Activation {
        if i == 0 {
            self.output_activation
        } else {
            self.activation
        }
    }

    pub fn slots(&self) -> Vec<LayerSlots> {
        let mut at = 0;
        let mut take = |n: usize| {
            at += n;
            at - n..at
        };
        self.widths
            .windows(2)
            .map(|w| LayerSlots {
                kernel: take(w[0] * w[1]),
                enc_bias: take(w[1]),
                dec_bias: take(w[0]),
            })
            .collect()
    }

    /// Parameters in the model: one kernel per tied layer, two biases.
    pub fn param_count(&self) -> usize {
        self.widths
            .windows(2)
            .map(|w| w[0] * w[1] + w[0] + w[1])
            .sum()
    }

    /// Glorot-uniform kernels (Keras's default), zero biases, from a seed.
    pub fn glorot_init(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = vec![0.0f32; self.param_count()];
        for (slots, w) in self.slots().iter().zip(self.widths.windows(2)) {
            let limit = (6.0 / (w[0] + w[1]) as f64).sqrt() as f32;
            for p in &mut params[slots.kernel.clone()] {
                *p = rng.random_range(-limit..limit);
            }
        }
        params
    }
}
