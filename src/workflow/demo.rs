//! `tiedae demo`: the classic 51→1 scenario, one SGD epoch, read back so that it shows the decoder's kernel IS
//! the encoder's, moved. The encoder's value is read from the parameters; the decoder's through the decoder
//! itself: decode(code 1) − decode(code 0) = 1·Wᵀ + c − c = Wᵀ (1×51), whose `[0][0]` comes from the decoder's
//! own GEMM reading the shared buffer transposed.

use super::Device;
use crate::activation::Activation;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::ModelSpec;
use crate::optim::Optimizer;
use crate::train::{DataOptions, DataSet, Network};
use rand::{RngExt, SeedableRng};

/// Rows and features of the scenario: 16 random samples of 51 features.
pub const ROWS: usize = 16;
pub const FEATURES: usize = 51;

/// What the demo saw: (encoder `kernel[0]`, decoder `kernel[0][0]`) before and after the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Demo {
    /// The backend's name.
    pub device: String,
    /// The epoch's loss.
    pub loss: f64,
    pub before: (f32, f32),
    pub after: (f32, f32),
}

/// Runs the scenario on `device` with data and weights drawn from `seed`.
pub fn run(device: Device, seed: u64) -> Result<Demo> {
    let (rows, cols) = (ROWS, FEATURES);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..rows * cols).map(|_| rng.random::<f32>()).collect();
    let spec = ModelSpec::new(
        vec![cols, 1],
        Activation::Linear,
        Activation::Linear,
        Activation::Linear,
    )?;
    let params = spec.glorot_init(seed);
    let kernel_at = spec.slots()[0].kernel.start;
    let optimizer = Optimizer::Sgd {
        lr: 0.01,
        momentum: 0.0,
    };
    crate::with_backend!(device, |backend| {
        let device = backend.name();
        let mut net = Network::new(backend, &spec, &params, rows, Some(optimizer))?;
        net.set_data(DataSet::Train, &values, rows, DataOptions::default())?;
        let look = |net: &mut Network<_>| -> Result<(f32, f32)> {
            let encoder = net.read_params()?[kernel_at];
            let g = net.decode_codes(&[1.0, 0.0])?;
            Ok((encoder, g[0] - g[cols]))
        };
        let before = look(&mut net)?;
        let loss = net.train_epoch(&(0..rows as u32).collect::<Vec<_>>(), rows)?;
        let after = look(&mut net)?;
        Ok(Demo {
            device,
            loss,
            before,
            after,
        })
    })
}
