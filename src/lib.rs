//! tiedae: tied-weight autoencoders done right.
//!
//! ONE kernel `W` (in × out, Keras orientation) per layer is used twice: the encoder computes `x·W + b`, the
//! decoder `h·Wᵀ + c` with its own bias `c`, and the gradient of `W` is the sum of both uses. `Wᵀ` is never
//! materialized: the GEMM reads `W` with swapped strides (CPU) or a transpose flag (CUDA).
//!
//! Where to look (ARCHITECTURE.md has the whole layout):
//! - `workflow/`: the commands' workflows as library calls (train, eval, encode, reconstruct), with plain
//!   request types; the binary (`main.rs`, `cli/`) only turns flags into requests and prints.
//! - `train/`: the network on a backend; `train/step.rs` is the training step, written once for every backend.
//! - `backend/mod.rs`: the ops a step needs; `backend/cpu/` is the reference twin of every CUDA kernel in
//!   `kernels/*.cu`, launched from `backend/cuda/` (one file per kernel file, of the same name).
//! - `model.rs`: widths, activations and where each parameter lives in the flat parameter buffer.

pub mod activation;
pub mod backend;
pub mod bench;
pub mod data;
pub mod error;
pub mod io;
pub mod memory;
pub mod model;
pub mod optim;
pub mod plot;
pub mod real;
pub mod train;
pub mod workflow;

pub use error::{Error, Result};
