//! Optimizers in Keras's exact form (see `AdamConfig` in backend/mod.rs for Adam's formulas).

use crate::backend::AdamConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `v = momentum·v − lr·g; w += v` (with momentum 0 this is plain `w −= lr·g`, bit for bit).
    Sgd { lr: f32, momentum: f32 },
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
}

impl Optimizer {
    pub const ADAM_BETA1: f32 = 0.9;
    pub const ADAM_BETA2: f32 = 0.999;
    pub const ADAM_EPSILON: f32 = 1e-7;

    /// From the CLI's words: `name` is sgd|adam, `lr` defaults to Keras's (0.01 SGD, 0.001 Adam).
    pub fn from_flags(name: &str, lr: Option<f32>, momentum: f32) -> Result<Optimizer> {
        if let Some(lr) = lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::flag(
                    "--lr",
                    format!("must be a positive number, got {lr}"),
                ));
            }
        }
        if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
            return Err(Error::flag(
                "--momentum",
                format!("must be in [0, 1), got {momentum}"),
            ));
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "sgd" => Ok(Optimizer::Sgd {
                lr: lr.unwrap_or(0.01),
                momentum,
            }),
            "adam" => {
                if momentum != 0.0 {
                    return Err(Error::flag("--momentum", "applies to --optimizer sgd only"));
                }
                Ok(Optimizer::Adam {
                    lr: lr.unwrap_or(0.001),
                    beta1: Self::ADAM_BETA1,
                    beta2: Self::ADAM_BETA2,
                    epsilon: Self::ADAM_EPSILON,
                })
            }
            other => Err(Error::flag(
                "--optimizer",
                format!("unknown optimizer '{other}' (expected sgd or adam)"),
            )),
        }
    }

    pub fn lr(&self) -> f32 {
        match *self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } => lr,
        }
    }

    /// How many flat state buffers (each the size of the parameters) the optimizer keeps.
    pub fn state_buffers(&self) -> usize {
        match self {
            Optimizer::Sgd { .. } => 1,
            Optimizer::Adam { .. } => 2,
        }
    }

    /// Adam's values for step t (1-based), computed in f32 as TensorFlow does.
    /// Adam's constants (None for SGD).
    pub fn adam_config(&self) -> Option<AdamConfig> {
        match *self {
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
                ..
            } => Some(AdamConfig {
                beta1,
                beta2,
                epsilon,
            }),
            Optimizer::Sgd { .. } => None,
        }
    }

    /// Adam's step size at step `t` (1-based), `lr·√(1−β2ᵗ)/(1−β1ᵗ)`, in f32 as Keras computes it (None for
    /// SGD).
    pub fn adam_alpha(&self, t: u64) -> Option<f32> {
        match *self {
            Optimizer::Adam {
                lr, beta1, beta2, ..
            } => {
                let t = t as f32;
                Some(lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t)))
            }
            Optimizer::Sgd { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Optimizer::Sgd { lr, momentum } => format!("sgd (lr {lr}, momentum {momentum})"),
            Optimizer::Adam { lr, .. } => format!("adam (lr {lr})"),
        }
    }
}
