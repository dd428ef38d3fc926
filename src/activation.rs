//! Activations. The backward pass needs only each layer's OUTPUT y = f(z): every activation we offer has a
//! derivative that is a function of y, so no pre-activation buffer is kept (CPU and CUDA alike).

use crate::real::Real;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Activation {
    Linear = 0,
    Relu = 1,
    Tanh = 2,
    Sigmoid = 3,
}

impl Activation {
    pub const ALL: [Activation; 4] = [
        Activation::Linear,
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
        }
    }

    /// The code passed to the CUDA kernels (`kernels/common.cuh` uses the same numbers).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// y = f(z). Mirrors `apply_activation` in `kernels/common.cuh`.
    #[inline(always)]
    pub fn forward<T: Real>(self, z: T) -> T {
        match self {
            Activation::Linear => z,
            Activation::Relu => {
                if z > T::zero() {
                    z
                } else {
                    T::zero()
                }
            }
            Activation::Tanh => z.tanh(),
            Activation::Sigmoid => T::one() / (T::one() + (-z).exp()),
        }
    }

    /// f'(z) written in terms of y = f(z). Mirrors `activation_grad_from_output` in `kernels/common.cuh`.
    #[inline(always)]
    pub fn grad_from_output<T: Real>(self, y: T) -> T {
        match self {
            Activation::Linear => T::one(),
            // relu'(0) = 0, as in TensorFlow.
            Activation::Relu => {
                if y > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Activation::Tanh => T::one() - y * y,
            Activation::Sigmoid => y * (T::one() - y),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linear" | "identity" | "none" => Ok(Activation::Linear),
            "relu" => Ok(Activation::Relu),
            "tanh" => Ok(Activation::Tanh),
            "sigmoid" => Ok(Activation::Sigmoid),
            other => Err(format!(
                "unknown activation '{other}' (expected linear, relu, tanh or sigmoid)"
            )),
        }
    }
}
