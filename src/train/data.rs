//! The data sets of a network: where they live, how they are stored, and in which order the batches read
//! them.
//!
//! A set lives on the backend, uploaded once (f32, or 16-bit floats converted as a batch is gathered: half
//! the memory), and a batch is gathered there by index from the epoch's order buffer; or, when the device
//! cannot hold it, on the host, where each batch is gathered and copied up into the batch buffer that the
//! running step does not read, a step ahead (`stage_batch`, `Backend::prefetch`). Either way training reads
//! the same rows in the same order and computes the same bits. [`Network::set_data`] puts a set in place.

use super::{alloc, Network};
use crate::backend::shuffle::shuffle_key;
use crate::backend::{Backend, HalfFormat, HalfId, IdxId, IdxRegion, Real, Region};
use crate::error::{Error, Result};

/// Which data set an op reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataSet {
    Train,
    Validation,
}

/// How a data set is stored on the backend: f32, or 16-bit floats converted while a batch is gathered
/// (half the memory: a 6 GB card holds twice the rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DataType {
    #[default]
    F32,
    F16,
    Bf16,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::F32 => "f32",
            DataType::F16 => "f16",
            DataType::Bf16 => "bf16",
        }
    }
    fn half_format(self) -> Option<HalfFormat> {
        match self {
            DataType::F32 => None,
            DataType::F16 => Some(HalfFormat::F16),
            DataType::Bf16 => Some(HalfFormat::Bf16),
        }
    }
}

impl std::str::FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DataType::F32),
            "f16" | "float16" | "half" => Ok(DataType::F16),
            "bf16" | "bfloat16" => Ok(DataType::Bf16),
            other => Err(format!(
                "unknown data type '{other}' (expected f32, f16 or bf16)"
            )),
        }
    }
}

/// Where a data set lives: on the backend (uploaded once, read by index), or on the host for a data set the
/// device cannot hold (each batch gathered on the host and copied up a step ahead: `Network::stage_batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On the device when it fits in the free device memory, else on the host.
    #[default]
    Auto,
    Device,
    Host,
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Placement::Auto),
            "device" | "gpu" => Ok(Placement::Device),
            "host" => Ok(Placement::Host),
            other => Err(format!("'{other}' is not auto, device or host")),
        }
    }
}

/// How [`Network::set_data`] keeps a data set: its storage and its place. The default is f32 on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOptions {
    pub dtype: DataType,
    pub placement: Placement,
}

impl DataOptions {
    pub fn new(dtype: DataType, placement: Placement) -> DataOptions {
        DataOptions { dtype, placement }
    }
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            dtype: DataType::F32,
            placement: Placement::Device,
        }
    }
}

/// Device memory left free for what a training run allocates after its data set (the split-K and
/// constraint scratch, the driver's own needs), beyond which a data set goes to the host.
const DEVICE_HEADROOM_BYTES: usize = 256 << 20;

/// Where a data set's values live.
pub(super) enum DataValues<T> {
    F32(Region),
    Half(HalfId, HalfFormat),
    /// On the host, (rows, d_0) row-major, with the row order of the epoch in progress; a batch is gathered
    /// here and copied to the backend's input buffer.
    Host {
        values: Vec<T>,
        order: Vec<u32>,
    },
}

/// A data set: its values (on the backend or the host) and its per-step slots on the backend.
pub(super) struct DeviceData<T> {
    pub(super) values: DataValues<T>,
    pub(super) rows: usize,
    /// The epoch's row order on the backend (None for a set kept on the host: its order is there too).
    pub(super) order: Option<IdxId>,
    /// One slot per step of an epoch, read back once per epoch.
    pub(super) step_losses: Region,
    /// One slot per step of an epoch: Adam's alpha for that step, uploaded once per `train_steps` (a
    /// recorded step reads its own slot, whatever t is when it is replayed).
    pub(super) step_alphas: Region,
}

impl<T> DeviceData<T> {
    pub(super) fn placement(&self) -> Placement {
        match self.values {
            DataValues::Host { .. } => Placement::Host,
            _ => Placement::Device,
        }
    }
}

/// The network's data sets, and the staging of a batch of a set kept on the host.
pub(super) struct DataSets<T> {
    train: Option<DeviceData<T>>,
    validation: Option<DeviceData<T>>,
    /// A batch of a data set kept on the host, gathered before its copy up (reused: no allocation a step):
    /// its rows, or with noise its clean rows then its corrupted ones.
    staging: Vec<T>,
    /// For a set kept on the host, a second `stack_in[0]` with the clean target area before it, if any
    /// (noise.rs), as one region (allocated on first use): each batch is copied into the one the previous
    /// step did not use, while that step runs, and the two swap (`stack_in[0]` is always the one the next
    /// forward pass reads).
    pub(super) spare_input: Option<Region>,
    /// The batch already copied into `stack_in[0]` for the next forward pass: (set, first row of the order,
    /// rows, corrupted).
    pub(super) staged: Option<(DataSet, usize, usize, bool)>,
}

impl<T> Default for DataSets<T> {
    fn default() -> Self {
        DataSets {
            train: None,
            validation: None,
            staging: Vec::new(),
            spare_input: None,
            staged: None,
        }
    }
}

impl<B: Backend> Network<B> {
    /// Puts data set `which`, (rows, d_0) row-major, in place, as `options` say, replacing any earlier one
    /// (its memory is not reused; a set kept on the host is freed first); returns where it went (`Device` or
    /// `Host`). Fails (naming `--data-dtype`, the row and the column) when a value does not fit a 16-bit
    /// format. On the host, training reads the same rows in the same order (a 16-bit `dtype` rounds them
    /// the same way), so it computes the same bits; only the copy of each batch is added. The validation set
    /// is evaluated with [`Network::evaluate_set`].
    pub fn set_data(
        &mut self,
        which: DataSet,
        values: &[f32],
        rows: usize,
        options: DataOptions,
    ) -> Result<Placement> {
        if which == DataSet::Train {
            // Recorded steps read the old set's buffers.
            self.forget_graphs();
        }
        *self.set_slot(which) = None;
        self.sets.staged = None;
        let data = self.place_data(values, rows, options.dtype, options.placement)?;
        let placed = data.placement();
        *self.set_slot(which) = Some(data);
        Ok(placed)
    }

    fn set_slot(&mut self, which: DataSet) -> &mut Option<DeviceData<B::Scalar>> {
        match which {
            DataSet::Train => &mut self.sets.train,
            DataSet::Validation => &mut self.sets.validation,
        }
    }

    /// Where `Auto` puts a data set of `bytes` on this backend: on the device unless the device says it has
    /// less free memory than the set, its order and the headroom need.
    fn resolve_placement(&self, placement: Placement, bytes: usize, rows: usize) -> Placement {
        match placement {
            Placement::Auto => match self.backend.free_memory() {
                Some(free) if bytes + 4 * rows + DEVICE_HEADROOM_BYTES > free => Placement::Host,
                _ => Placement::Device,
            },
            p => p,
        }
    }

    fn place_data(
        &mut self,
        values: &[f32],
        rows: usize,
        dtype: DataType,
        placement: Placement,
    ) -> Result<DeviceData<B::Scalar>> {
        let cols = self.spec.input_width();
        assert_eq!(values.len(), rows * cols, "data size");
        let half = dtype.half_format();
        let bytes = values.len() * if half.is_some() { 2 } else { 4 };
        let placement = self.resolve_placement(placement, bytes, rows);
        let encode = |format: HalfFormat, i: usize, x: f32| {
            format.encode(x).ok_or_else(|| {
                Error::flag(
                    "--data-dtype",
                    format!(
                        "value {x} (row {}, column {} after normalization) does not fit {}; use bf16 or f32, or --normalize",
                        i / cols + 1,
                        i % cols + 1,
                        dtype.as_str()
                    ),
                )
            })
        };
        let (values, order) = match (placement, half) {
            (Placement::Host, _) => {
                // A 16-bit dtype rounds the values as the device's copy would be rounded.
                let host = values
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| match half {
                        None => Ok(B::Scalar::from_f32(x)),
                        Some(format) => {
                            Ok(B::Scalar::from_f32(format.decode(encode(format, i, x)?)))
                        }
                    })
                    .collect::<Result<Vec<B::Scalar>>>()?;
                let order = (0..rows as u32).collect();
                (
                    DataValues::Host {
                        values: host,
                        order,
                    },
                    None,
                )
            }
            (_, None) => {
                let region = alloc(&mut self.backend, values.len())?;
                let host: Vec<B::Scalar> = values.iter().map(|&x| B::Scalar::from_f32(x)).collect();
                self.backend.upload(region, &host)?;
                (DataValues::F32(region), Some(self.identity_order(rows)?))
            }
            (_, Some(format)) => {
                let bits = values
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| encode(format, i, x))
                    .collect::<Result<Vec<u16>>>()?;
                let id = self.backend.alloc_half(bits.len())?;
                self.backend.upload_half(id, &bits)?;
                (
                    DataValues::Half(id, format),
                    Some(self.identity_order(rows)?),
                )
            }
        };
        let steps = rows.div_ceil(self.max_batch).max(1);
        let step_losses = alloc(&mut self.backend, steps)?;
        let step_alphas = alloc(&mut self.backend, steps)?;
        Ok(DeviceData {
            values,
            rows,
            order,
            step_losses,
            step_alphas,
        })
    }

    /// A new index buffer of `rows` holding 0, 1, 2, …
    fn identity_order(&mut self, rows: usize) -> Result<IdxId> {
        let order = self.backend.alloc_indices(rows)?;
        let identity: Vec<u32> = (0..rows as u32).collect();
        self.backend.upload_indices(order, 0, &identity)?;
        Ok(order)
    }

    /// Sets the row order of `which` for the following batches: on the backend, or on the host for a set
    /// kept there.
    pub(super) fn set_order(&mut self, which: DataSet, order: &[u32]) -> Result<()> {
        let d = match which {
            DataSet::Train => self.sets.train.as_mut(),
            DataSet::Validation => self.sets.validation.as_mut(),
        }
        .expect("the data set was set");
        assert_eq!(order.len(), d.rows);
        // A batch staged for the old order holds other rows.
        self.sets.staged = None;
        match (&mut d.values, d.order) {
            (DataValues::Host { order: host, .. }, _) => {
                host.clear();
                host.extend_from_slice(order);
                Ok(())
            }
            (_, Some(idx)) => self.backend.upload_indices(idx, 0, order),
            (_, None) => unreachable!("a set on the backend has an order buffer"),
        }
    }

    /// Sets the training set's row order for epoch `epoch` of a run seeded with `seed`: file order, or that
    /// epoch's shuffle ([`super::epoch_order`]). A set on the backend gets it from the backend (on a GPU, a
    /// kernel writes it where the batches read it: nothing is copied up); a set kept on the host, from the
    /// host. With noise on, the epoch's noise key too ([`Network::set_noise_key`]).
    pub fn order_epoch(&mut self, seed: u64, epoch: usize, shuffle: bool) -> Result<()> {
        self.set_noise_key(seed, epoch as u64)?;
        let d = self.data();
        let rows = d.rows;
        let backend_order = match d.values {
            DataValues::Host { .. } => None,
            _ => d.order,
        };
        match backend_order {
            Some(idx) if shuffle => {
                self.sets.staged = None;
                self.backend
                    .shuffle_order(idx, rows, shuffle_key(seed, epoch as u64))
            }
            _ => self.set_order(
                DataSet::Train,
                &super::epoch_order(rows, seed, epoch, shuffle),
            ),
        }
    }

    /// Where the training set is (`Device` or `Host`; None before `set_data`).
    pub fn data_placement(&self) -> Option<Placement> {
        self.sets.train.as_ref().map(|d| d.placement())
    }

    pub(super) fn data(&self) -> &DeviceData<B::Scalar> {
        self.dataset(DataSet::Train)
    }

    pub(super) fn dataset(&self, which: DataSet) -> &DeviceData<B::Scalar> {
        match which {
            DataSet::Train => self.sets.train.as_ref().expect("set_data must come first"),
            DataSet::Validation => self
                .sets
                .validation
                .as_ref()
                .expect("set_data(DataSet::Validation, …) must come first"),
        }
    }

    /// Rows of the training set (0 before `set_data`).
    pub fn train_rows(&self) -> usize {
        self.sets.train.as_ref().map_or(0, |d| d.rows)
    }

    /// Whether a validation set was set.
    pub fn has_validation(&self) -> bool {
        self.sets.validation.is_some()
    }

    /// x = rows `order[start .. start + n]` of set `which`, into `stack_in[0]`: gathered on the backend, or,
    /// for a set the device cannot hold, copied up while the previous step ran (or now). With `corrupt`
    /// (a training batch with noise on) the clean rows go to the target area and x gets them corrupted.
    pub(super) fn load_batch(
        &mut self,
        which: DataSet,
        start: usize,
        n: usize,
        corrupt: bool,
    ) -> Result<()> {
        let d0 = self.spec.input_width();
        if self.dataset(which).placement() == Placement::Host {
            if self.sets.staged != Some((which, start, n, corrupt)) {
                self.stage_batch(which, start, n, corrupt)?;
            }
            self.sets.staged = None;
            return Ok(());
        }
        let d = self.dataset(which);
        let (values, order) = (
            &d.values,
            d.order.expect("a set on the backend has an order"),
        );
        let idx = IdxRegion {
            buf: order,
            offset: start,
            len: n,
        };
        let rows = if corrupt { self.target(n) } else { self.x(n) };
        match *values {
            DataValues::F32(values) => self.backend.gather_rows(values, d0, idx, rows)?,
            DataValues::Half(values, format) => self
                .backend
                .gather_rows_half(values, format, d0, idx, rows)?,
            DataValues::Host { .. } => unreachable!("placement says the backend"),
        }
        if corrupt {
            self.corrupt_batch(start, n)?;
        }
        Ok(())
    }

    /// Copies rows `order[start .. start + n]` of set `which` (kept on the host) into the spare `stack_in[0]`,
    /// which then becomes `stack_in[0]`: the copy may run while the ops queued since the last one still run,
    /// as those use the other one (see `Backend::prefetch`). With `corrupt`, the host corrupts the rows as
    /// `corrupt_rows` would on the backend, with donors from the whole set here, and the clean rows and the
    /// corrupted ones go up in one copy (target area, then h_0: noise.rs).
    pub(super) fn stage_batch(
        &mut self,
        which: DataSet,
        start: usize,
        n: usize,
        corrupt: bool,
    ) -> Result<()> {
        let cols = self.spec.input_width();
        let lead = self.input_lead();
        let block_len = lead + 2 * self.max_batch * cols;
        let spare = match self.sets.spare_input {
            Some(r) => r,
            None => alloc(&mut self.backend, block_len)?,
        };
        let d = match which {
            DataSet::Train => self.sets.train.as_ref(),
            DataSet::Validation => self.sets.validation.as_ref(),
        }
        .expect("the data set was set");
        let DataValues::Host { values, order } = &d.values else {
            unreachable!("only a set kept on the host is staged");
        };
        let rows = &order[start..start + n];
        let mut staging = std::mem::take(&mut self.sets.staging);
        staging.clear();
        for &r in rows {
            let r = r as usize;
            staging.extend_from_slice(&values[r * cols..(r + 1) * cols]);
        }
        let dst = if corrupt {
            let state = self.noise.as_ref().expect("noise is on");
            staging.resize(2 * n * cols, B::Scalar::zero());
            let (clean, noisy) = staging.split_at_mut(n * cols);
            super::noise::corrupt_on_host(state, values, cols, rows, clean, noisy);
            spare.sub(lead - n * cols, 2 * n * cols)
        } else {
            spare.sub(lead, n * cols)
        };
        let prefetched = self.backend.prefetch(dst, &staging);
        self.sets.staging = staging;
        prefetched?;
        let current = self.acts.stack_in[0];
        self.acts.stack_in[0] = spare.sub(lead, block_len - lead);
        self.sets.spare_input = Some(Region {
            buf: current.buf,
            offset: current.offset - lead,
            len: block_len,
        });
        self.sets.staged = Some((which, start, n, corrupt));
        Ok(())
    }
}
