//! Denoising: the noise a training batch's inputs get (`--noise swap:P`, `mask:P`, `gaussian:SIGMA`), while
//! the loss compares the reconstruction with the clean rows. Validation and evaluation never see noise.
//!
//! Where the batch lives with noise on: the clean rows (the target) sit right before `stack_in[0]`, in one
//! buffer of 3·max_batch rows: [clean target area | h_0 = the corrupted input | dz_dec_0]. A batch of n rows
//! has its target in the n rows just before h_0, so the clean and the corrupted rows of a batch are one
//! contiguous region: a data set kept on the host copies both up in one `prefetch` (`stage_batch`, data.rs).
//! Without noise nothing moves and the step runs exactly the ops it always ran.
//!
//! The noise itself, and why every device draws the same, is `backend/noise.rs`: the key of an epoch
//! (seed, epoch) lives in backend memory, set by [`Network::order_epoch`] with the epoch's order, so a
//! recorded graph replays with the key of the epoch it runs in.

use super::data::DataValues;
use super::{alloc, Network};
use crate::backend::noise::{corrupt_row, key_words, threshold};
use crate::backend::{Backend, Donors, IdxId, IdxRegion, NoiseParams, NoiseSource, Real, Region};
use crate::error::{Error, Result};

/// The noise of a denoising run: each kind off at 0. Applied in this order: swap, then mask, then Gaussian
/// (`backend/noise.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Noise {
    /// The probability that a cell takes the same column's value from another row of the training set.
    pub swap: f32,
    /// The probability that a cell is set to its column's fill value (0 in the normalized units).
    pub mask: f32,
    /// The standard deviation of the Gaussian noise added to every cell, in the normalized units.
    pub gaussian: f32,
}

impl Noise {
    /// Whether this noise changes nothing (a plain autoencoder).
    pub fn is_off(&self) -> bool {
        self.swap == 0.0 && self.mask == 0.0 && self.gaussian == 0.0
    }

    /// The noise of `--noise` flags, each `swap:P`, `mask:P` or `gaussian:SIGMA` (a flag may hold several,
    /// comma-separated; 0 is off); a kind given twice is an error.
    pub fn from_flags<S: AsRef<str>>(items: &[S]) -> Result<Noise> {
        let bad = |msg: String| Error::flag("--noise", msg);
        let mut noise = Noise::default();
        let mut seen = [false; 3];
        for item in items.iter().flat_map(|s| s.as_ref().split(',')) {
            let item = item.trim();
            let (kind, value) = item.split_once(':').ok_or_else(|| {
                bad(format!(
                    "'{item}' is not KIND:VALUE; use swap:P, mask:P or gaussian:SIGMA, e.g. swap:0.15"
                ))
            })?;
            let kind = kind.trim().to_ascii_lowercase();
            let v: f32 = value
                .trim()
                .parse()
                .map_err(|_| bad(format!("'{value}' in '{item}' is not a number")))?;
            let (slot, which) = match kind.as_str() {
                "swap" => (&mut noise.swap, 0),
                "mask" => (&mut noise.mask, 1),
                "gaussian" | "gauss" => (&mut noise.gaussian, 2),
                other => {
                    return Err(bad(format!(
                        "unknown noise '{other}'; use swap:P, mask:P or gaussian:SIGMA"
                    )))
                }
            };
            if seen[which] {
                return Err(bad(format!("{kind} is given twice")));
            }
            seen[which] = true;
            *slot = v;
        }
        noise.check()?;
        Ok(noise)
    }

    /// Fails (naming `--noise`) unless each probability is in [0, 1] and sigma is finite and ≥ 0 (0: off).
    pub fn check(&self) -> Result<()> {
        for (kind, p) in [("swap", self.swap), ("mask", self.mask)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::flag(
                    "--noise",
                    format!("{kind}:{p}: the probability must be in [0, 1]"),
                ));
            }
        }
        if !(self.gaussian.is_finite() && self.gaussian >= 0.0) {
            return Err(Error::flag(
                "--noise",
                format!("gaussian:{}: sigma must be a number ≥ 0", self.gaussian),
            ));
        }
        Ok(())
    }

    /// What the noise op receives.
    pub fn params(&self) -> NoiseParams {
        NoiseParams {
            swap_below: threshold(self.swap),
            mask_below: threshold(self.mask),
            sigma: self.gaussian,
        }
    }
}

/// `swap:0.15,gaussian:0.05` (the kinds that are on, in the order they are applied), or `none`. What the
/// model file's `noise` metadata holds and `summary` shows; [`Noise::from_flags`] reads it back.
impl std::fmt::Display for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("swap", self.swap),
            ("mask", self.mask),
            ("gaussian", self.gaussian),
        ]
        .into_iter()
        .filter(|&(_, v)| v != 0.0)
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// The noise of a network on its backend.
pub(super) struct NoiseState<T> {
    pub(super) noise: Noise,
    params: NoiseParams,
    /// The epoch's key on the backend: (3) u32 [`key_words`].
    key: IdxId,
    /// The same key on the host, for a data set kept there.
    host_key: [u32; 3],
    /// Each column's mask value on the backend, (d_0), and on the host.
    fill: Region,
    host_fill: Vec<T>,
}

impl<B: Backend> Network<B> {
    /// Turns denoising on for the following training steps (off: a `Noise` that is off). Call it before
    /// [`Network::set_data`] for a set kept on the host; the first call that turns noise on moves the input
    /// batch into a buffer of 3·max_batch rows with room for the clean rows before it (see the module doc;
    /// the first input buffer stays allocated, backends free nothing, which the run's memory estimate
    /// counts). The key is set per epoch by [`Network::order_epoch`], or by [`Network::set_noise_key`].
    pub fn set_noise(&mut self, noise: Noise) -> Result<()> {
        self.forget_graphs();
        self.sets.staged = None;
        if noise.is_off() {
            self.noise = None;
            return Ok(());
        }
        let d0 = self.spec.input_width();
        if self.noise.is_none() && self.input_lead() == 0 {
            let mb = self.max_batch;
            let block = alloc(&mut self.backend, 3 * mb * d0)?;
            self.acts.stack_in[0] = block.sub(mb * d0, 2 * mb * d0);
            self.sets.spare_input = None;
            self.has_target_area = true;
        }
        let state = match self.noise.take() {
            Some(mut s) => {
                s.noise = noise;
                s.params = noise.params();
                s
            }
            None => {
                let key = self.backend.alloc_indices(3)?;
                let fill = alloc(&mut self.backend, d0)?;
                NoiseState {
                    noise,
                    params: noise.params(),
                    key,
                    host_key: [0; 3],
                    fill,
                    host_fill: vec![B::Scalar::zero(); d0],
                }
            }
        };
        self.noise = Some(state);
        self.set_noise_key(0, 1)
    }

    /// The noise of the training steps (off when none was set).
    pub fn noise(&self) -> Noise {
        self.noise.as_ref().map(|s| s.noise).unwrap_or_default()
    }

    /// The key of epoch `epoch` of a run seeded with `seed`, for the following training steps (a no-op
    /// without noise). [`Network::order_epoch`] sets it with the epoch's order.
    pub fn set_noise_key(&mut self, seed: u64, epoch: u64) -> Result<()> {
        let Some(s) = self.noise.as_mut() else {
            return Ok(());
        };
        s.host_key = key_words(seed, epoch);
        let (key, words) = (s.key, s.host_key);
        self.sets.staged = None;
        self.backend.upload_indices(key, 0, &words)
    }

    /// The value mask noise puts in each column, in the model's normalized units (0 until this is called):
    /// where missing-value imputation knows a better value (a column's imputed value), it goes here.
    pub fn set_mask_fill(&mut self, values: &[f32]) -> Result<()> {
        assert_eq!(
            values.len(),
            self.spec.input_width(),
            "one value per column"
        );
        let Some(s) = self.noise.as_mut() else {
            return Ok(());
        };
        s.host_fill = values.iter().map(|&x| B::Scalar::from_f32(x)).collect();
        let (fill, host) = (s.fill, s.host_fill.clone());
        self.sets.staged = None;
        self.backend.upload(fill, &host)
    }

    /// Whether training batches are corrupted.
    pub(super) fn corrupts(&self) -> bool {
        self.noise.is_some()
    }

    /// Scalars before `stack_in[0]` in its buffer: the clean target area (max_batch rows) once noise was
    /// turned on, else none.
    pub(super) fn input_lead(&self) -> usize {
        if self.has_target_area {
            self.max_batch * self.spec.input_width()
        } else {
            0
        }
    }

    /// The clean rows of a corrupted batch of n rows: the n rows right before h_0 (see the module doc).
    pub(super) fn target(&self, n: usize) -> Region {
        let len = n * self.spec.input_width();
        assert!(len <= self.input_lead(), "no target area");
        let x = self.acts.stack_in[0];
        Region {
            buf: x.buf,
            offset: x.offset - len,
            len,
        }
    }

    /// The corrupted inputs h_0 of a batch of `n` rows whose clean rows (training rows `order[start ..
    /// start + n]`) were gathered into `target(n)`, on the backend.
    pub(super) fn corrupt_batch(&mut self, start: usize, n: usize) -> Result<()> {
        let s = self.noise.as_ref().expect("noise is on");
        let d = self.data();
        let donors = match d.values {
            DataValues::F32(r) => Donors::F32(r),
            DataValues::Half(id, format) => Donors::Half(id, format),
            DataValues::Host { .. } => unreachable!("a set on the host is corrupted while staged"),
        };
        let source = NoiseSource {
            donors,
            donor_rows: d.rows,
            fill: s.fill,
            key: IdxRegion {
                buf: s.key,
                offset: 0,
                len: 3,
            },
            params: s.params,
        };
        let idx = IdxRegion {
            buf: d.order.expect("a set on the backend has an order"),
            offset: start,
            len: n,
        };
        let (clean, x) = (self.target(n), self.x(n));
        let d0 = self.spec.input_width();
        self.backend.corrupt_rows(clean, d0, idx, source, x)
    }
}

/// The corrupted copy of rows `rows` of a training set kept on the host (`values`, (donor_rows, cols)),
/// whose clean copy is `clean`, into `out`: what `corrupt_rows` computes on a backend.
pub(super) fn corrupt_on_host<T: Real>(
    state: &NoiseState<T>,
    values: &[T],
    cols: usize,
    rows: &[u32],
    clean: &[T],
    out: &mut [T],
) {
    let donor_rows = (values.len() / cols.max(1)) as u32;
    let donor = |d: u32, c: usize| values[d as usize * cols + c];
    for ((&row, x), o) in rows
        .iter()
        .zip(clean.chunks_exact(cols))
        .zip(out.chunks_exact_mut(cols))
    {
        corrupt_row(
            x,
            o,
            row,
            &state.host_key,
            &state.params,
            donor_rows,
            donor,
            &state.host_fill,
        );
    }
}
