//! Memory a run will take, estimated before anything large is allocated, against the memory there is.
//!
//! An allocation that fails aborts a Rust process (and one the kernel overcommits gets it killed later), so
//! every size that comes from the user (widths, batch size, rows, columns) is turned into an [`Estimate`]
//! first and refused with one line saying how much is needed, how much there is, and which flag to change.
//! Sizes are counted in `u128`, so widths whose products do not fit a `usize` are refused instead of wrapping.

use crate::error::{Error, Result};

/// One part of what a run allocates: what it is, its bytes, and the flag that makes it smaller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub what: &'static str,
    pub bytes: u128,
    pub flag: &'static str,
    /// What to do when this part is what does not fit, e.g. "use smaller --layers".
    pub advice: &'static str,
}

/// What a run will allocate: in host memory, and on the device (a GPU's own memory; on the CPU the device
/// is the host, and both lists are counted against host memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Estimate {
    pub host: Vec<Need>,
    pub device: Vec<Need>,
}

/// The largest allocation Rust can make (`isize::MAX` bytes): past it `Vec` panics whatever the memory.
const MAX_ALLOCATION: u128 = isize::MAX as u128;

impl Estimate {
    /// Checks the estimate for `task` (e.g. "training 64→32→8"): the host parts against [`host_available`],
    /// and the device parts against `device_free` when the device has memory of its own (a GPU), else
    /// against host memory too. An unknown amount of memory (no /proc/meminfo) checks only that every
    /// size can be allocated at all.
    pub fn check(&self, task: &str, device_free: Option<u64>) -> Result<()> {
        let host_avail = host_available();
        match device_free {
            Some(free) => {
                check_parts(task, &self.device, Some(free as u128), "GPU memory", "free")?;
                check_parts(task, &self.host, host_avail, "host memory", "available")
            }
            None => {
                let all: Vec<Need> = self.device.iter().chain(&self.host).cloned().collect();
                check_parts(task, &all, host_avail, "memory", "available")
            }
        }
    }
}

fn check_parts(
    task: &str,
    parts: &[Need],
    available: Option<u128>,
    memory: &str,
    free_word: &str,
) -> Result<()> {
    let total: u128 = parts.iter().fold(0u128, |t, p| t.saturating_add(p.bytes));
    let Some(largest) = parts.iter().max_by_key(|p| p.bytes) else {
        return Ok(());
    };
    let limit = available.map_or(MAX_ALLOCATION, |a| a.min(MAX_ALLOCATION));
    if total <= limit {
        return Ok(());
    }
    let mut shown: Vec<&Need> = parts.iter().filter(|p| p.bytes > 0).collect();
    shown.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    let list = shown
        .iter()
        .map(|p| format!("{} {}", p.what, format_bytes(p.bytes)))
        .collect::<Vec<_>>()
        .join(", ");
    let have = match available {
        Some(a) => format!("{} is {free_word}", format_bytes(a)),
        None => format!("no allocation can exceed {}", format_bytes(MAX_ALLOCATION)),
    };
    Err(Error::flag(
        largest.flag,
        format!(
            "{task} needs about {} of {memory} ({list}), but {have}; {}",
            format_bytes(total),
            largest.advice
        ),
    ))
}

/// Bytes as a person reads them: decimal units with one decimal ("4.0 TB", "512 B").
pub fn format_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["kB", "MB", "GB", "TB", "PB", "EB", "ZB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value >= 1000.0 {
        return format!("{:.1e} B", bytes as f64);
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The memory this process can still take: the kernel's `MemAvailable`, lowered to what a cgroup (v2)
/// memory limit leaves (a container, a notebook's sandbox). None where neither can be read.
pub fn host_available() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo
        .as_deref()
        .and_then(|m| meminfo_kb(m, "MemAvailable:"));
    match (available, cgroup_room()) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// A `/proc/meminfo` field in bytes.
fn meminfo_kb(text: &str, key: &str) -> Option<u128> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u128 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// `memory.max − memory.current` of this process's cgroup (v2), when it has a limit.
fn cgroup_room() -> Option<u128> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let max: u128 = std::fs::read_to_string(dir.join("memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?; // "max" (no limit) does not parse
    let current: u128 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}

/// Parameters of a tied model of these widths (one kernel per layer and two biases), without overflow.
pub fn param_count(widths: &[usize]) -> u128 {
    widths
        .windows(2)
        .map(|w| (w[0] as u128) * (w[1] as u128) + w[0] as u128 + w[1] as u128)
        .sum()
}

/// Floats of one batch's activations and their gradients (`train/step.rs`'s `Activations`): for each
/// layer two (2·batch, d_i) and (2·batch, d_{i+1}) stacks, and the (batch, d_0) reconstruction.
pub fn activation_floats(widths: &[usize], batch: usize) -> u128 {
    let stacks: u128 = widths
        .windows(2)
        .map(|w| 2 * (w[0] as u128 + w[1] as u128))
        .sum();
    batch as u128 * (widths.first().copied().unwrap_or(0) as u128 + stacks)
}

/// What training a model of `widths` takes (see `workflow/train.rs`): the parameters, their gradient and
/// the optimizer's `state_buffers` on the device with one batch of activations; the data set (`rows` ×
/// d_0, stored as `data_bytes` per value) on the device unless `data_on_device` is false; and on the host
/// the data as read and split, the weights a run keeps, and the copies a checkpoint makes when it is written
/// (the weights, the optimizer state and the best epoch's weights, read back, turned into bytes and
/// serialized: three copies).
pub struct TrainingShape<'a> {
    pub widths: &'a [usize],
    pub state_buffers: usize,
    pub batch: usize,
    pub rows: usize,
    pub data_bytes: usize,
    pub data_on_device: bool,
    pub keeps_best: bool,
}

pub fn training_estimate(s: &TrainingShape<'_>) -> Estimate {
    let p = param_count(s.widths);
    let f = |floats: u128| floats.saturating_mul(4);
    let d0 = s.widths.first().copied().unwrap_or(0) as u128;
    let values = (s.rows as u128).saturating_mul(d0);
    let steps = (s.rows.div_ceil(s.batch.max(1))).max(1) as u128;
    let layers = "use smaller --layers";
    let mut device = vec![
        Need {
            what: "parameters",
            bytes: f(p),
            flag: "--layers",
            advice: layers,
        },
        Need {
            what: "gradients",
            bytes: f(p),
            flag: "--layers",
            advice: layers,
        },
        Need {
            what: "optimizer state",
            bytes: f(p.saturating_mul(s.state_buffers as u128)),
            flag: "--layers",
            advice:
                "use smaller --layers (or --optimizer sgd, which keeps one buffer instead of two)",
        },
        Need {
            what: "activations",
            bytes: f(activation_floats(s.widths, s.batch)),
            flag: "--batch-size",
            advice: "use a smaller --batch-size",
        },
    ];
    let data_device = values
        .saturating_mul(s.data_bytes as u128)
        .saturating_add(4 * s.rows as u128 + 8 * steps);
    if s.data_on_device {
        device.push(Need {
            what: "data set on the device",
            bytes: data_device,
            flag: "--data-dtype",
            advice: "use --data-dtype f16 (half the memory) or --data-on host, or fewer rows",
        });
    }
    let kept = 1 + s.state_buffers as u128 + s.keeps_best as u128;
    let host = vec![
        Need {
            what: "data set as read and split",
            bytes: f(values.saturating_mul(2)),
            flag: "--data",
            advice: "use a data file with fewer rows or columns",
        },
        Need {
            what: "weights kept by the run",
            bytes: f(p),
            flag: "--layers",
            advice: layers,
        },
        Need {
            what: "checkpoint copies",
            bytes: f(p.saturating_mul(kept).saturating_mul(3)),
            flag: "--layers",
            advice: layers,
        },
    ];
    Estimate { host, device }
}

/// What running a model forward over `rows` rows takes (`eval`, `encode`, `reconstruct`): the parameters
/// and one batch of activations on the device with the data set; on the host the data as read, the weights,
/// and the codes and reconstructions kept for writing.
pub fn inference_estimate(widths: &[usize], batch: usize, rows: usize, keep: u128) -> Estimate {
    let p = param_count(widths);
    let d0 = widths.first().copied().unwrap_or(0) as u128;
    let values = (rows as u128).saturating_mul(d0);
    let data = "use a data file with fewer rows";
    Estimate {
        device: vec![
            Need {
                what: "parameters",
                bytes: p.saturating_mul(4),
                flag: "--model",
                advice: "use a smaller model",
            },
            Need {
                what: "activations",
                bytes: activation_floats(widths, batch).saturating_mul(4),
                flag: "--data",
                advice: data,
            },
            Need {
                what: "data set on the device",
                bytes: values.saturating_mul(4).saturating_add(4 * rows as u128),
                flag: "--data",
                advice: data,
            },
        ],
        host: vec![
            Need {
                what: "data set as read",
                bytes: values.saturating_mul(8),
                flag: "--data",
                advice: data,
            },
            Need {
                what: "weights",
                bytes: p.saturating_mul(4),
                flag: "--model",
                advice: "use a smaller model",
            },
            Need {
                what: "results kept for writing",
                bytes: keep.saturating_mul(4),
                flag: "--data",
                advice: data,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_a_person_reads_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1000), "1.0 kB");
        assert_eq!(format_bytes(5_600_000_116), "5.6 GB");
        assert_eq!(format_bytes(4_000_000_000_000), "4.0 TB");
        assert_eq!(format_bytes(u128::MAX), "3.4e38 B");
    }

    #[test]
    fn widths_that_overflow_usize_are_counted_exactly() {
        let w = [usize::MAX, usize::MAX];
        let p = param_count(&w);
        assert_eq!(
            p,
            (usize::MAX as u128) * (usize::MAX as u128) + 2 * usize::MAX as u128
        );
        // 64 → 1e6 → 1e6 (the issue's --layers 1000000,1000000): about 4 TB of parameters alone.
        assert!(param_count(&[64, 1_000_000, 1_000_000]) * 4 > 4_000_000_000_000);
    }

    #[test]
    fn the_estimate_matches_what_a_training_network_allocates() {
        // tests/gpu_training.rs checks the backend's bytes against the same formula: parameters, gradient,
        // optimizer state, activations, data, order and the per-step slots.
        let widths = [64, 32, 8];
        let e = training_estimate(&TrainingShape {
            widths: &widths,
            state_buffers: 2,
            batch: 256,
            rows: 1797,
            data_bytes: 4,
            data_on_device: true,
            keeps_best: false,
        });
        let device: u128 = e.device.iter().map(|n| n.bytes).sum();
        let p = 64 * 32 + 32 + 64 + 32 * 8 + 8 + 32;
        let acts = 256 * (64 + 2 * (64 + 32) + 2 * (32 + 8));
        let steps = 1797usize.div_ceil(256);
        assert_eq!(
            device,
            (4 * (4 * p + acts + 1797 * 64 + 2 * steps) + 4 * 1797) as u128
        );
    }

    #[test]
    fn a_refusal_names_the_largest_part_its_flag_and_both_amounts() {
        let e = training_estimate(&TrainingShape {
            widths: &[64, 1_000_000, 1_000_000],
            state_buffers: 2,
            batch: 32,
            rows: 100,
            data_bytes: 4,
            data_on_device: true,
            keeps_best: false,
        });
        let msg = e
            .check("training 64→1000000→1000000", None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("--layers: training 64→1000000→1000000 needs about "),
            "{msg}"
        );
        assert!(msg.contains(" TB of memory (checkpoint copies "), "{msg}");
        assert!(msg.contains("use smaller --layers"), "{msg}");
        assert!(!msg.contains('\n'));
        // On a GPU the device's parts are checked against its free memory, and named so.
        let msg = e
            .check("training", Some(8_000_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("of GPU memory (") && msg.contains("8.0 GB is free"),
            "{msg}"
        );
        // A small run fits.
        let small = training_estimate(&TrainingShape {
            widths: &[64, 32, 8],
            state_buffers: 2,
            batch: 32,
            rows: 100,
            data_bytes: 4,
            data_on_device: true,
            keeps_best: true,
        });
        small.check("training", None).unwrap();
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24683584 kB\nMemAvailable:   24163216 kB\n";
        assert_eq!(meminfo_kb(text, "MemAvailable:"), Some(24163216 * 1024));
        assert_eq!(meminfo_kb(text, "Nope:"), None);
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(host_available().is_some_and(|a| a > 0));
        }
    }
}
