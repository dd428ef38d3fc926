//! The size of a model file's header, known before training: safetensors refuses to write a header over
//! [`MAX_HEADER_BYTES`], and a run that learns this only when it saves has trained for nothing.
//!
//! The header is JSON: one entry per tensor, and the metadata, in which the feature names (a JSON list inside
//! a JSON string, so escaped twice) and the checkpoint's loss history (one entry per epoch) grow with the
//! data and the run.

use super::MAX_HEADER_BYTES;
use crate::error::{Error, Result};
use crate::memory::format_bytes;
use std::path::Path;

/// Bytes of a JSON text once it is written again as a JSON string (quotes and backslashes doubled, control
/// characters as `\u00XX`).
struct EscapedLen(u128);

impl std::io::Write for EscapedLen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.0 += match b {
                b'"' | b'\\' => 2,
                0..=0x1f => 6,
                _ => 1,
            };
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn escaped_json_len<T: serde::Serialize + ?Sized>(value: &T) -> u128 {
    let mut len = EscapedLen(0);
    // Writing to a counter cannot fail, and strings always serialize.
    let _ = serde_json::to_writer(&mut len, value);
    len.0
}

/// An upper bound on one epoch's entry in the loss history: `[epoch,loss,val_loss],` with 17 digits each.
const HISTORY_ENTRY_BYTES: u128 = 64;
/// Everything else: the other metadata, the checkpoint's settings, one entry per tensor.
const FIXED_BYTES: u128 = 8192;
const TENSOR_ENTRY_BYTES: u128 = 128;

/// How many column names there are and the bytes their list takes in the header, counted one name at a
/// time (a file's first row can be measured without keeping its names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamesSize {
    pub count: usize,
    pub bytes: u128,
}

impl NamesSize {
    pub fn add(&mut self, name: &str) {
        // Each name, its comma, and the list's brackets.
        self.bytes += escaped_json_len(name) + 1 + if self.count == 0 { 1 } else { 0 };
        self.count += 1;
    }
    pub fn of(names: &[String]) -> NamesSize {
        let mut size = NamesSize::default();
        for n in names {
            size.add(n);
        }
        size
    }
}

/// Refuses, before any training, a run whose model file's header could not be written: too many or too
/// long column names in `data` (`names`, counted by [`NamesSize`]), or too many epochs of loss history
/// (`--epochs`), for a model of `depth` layers.
pub fn check_header_fits(
    data: &Path,
    names: &NamesSize,
    depth: usize,
    epochs: usize,
) -> Result<()> {
    let history = HISTORY_ENTRY_BYTES.saturating_mul(epochs as u128);
    let tensors = TENSOR_ENTRY_BYTES * (3 * depth as u128 + 6);
    let total = names.bytes + history + tensors + FIXED_BYTES;
    if total <= MAX_HEADER_BYTES {
        return Ok(());
    }
    let cap = format_bytes(MAX_HEADER_BYTES);
    if names.bytes >= history {
        Err(Error::file(
            data,
            format!(
                "the names of its {} columns would take {} in the model file's header, more than the {cap} a safetensors header can hold; use a file with fewer columns",
                names.count,
                format_bytes(names.bytes)
            ),
        ))
    } else {
        Err(Error::flag(
            "--epochs",
            format!(
                "{epochs} epochs of loss history would take {} in the model file's header, more than the {cap} a safetensors header can hold; ask for fewer epochs",
                format_bytes(history)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_estimate_bounds_the_header_written() {
        // The metadata value safetensors writes for the names, escaped as the header holds it.
        let names: Vec<String> = (0..50).map(|i| format!("col \"{i}\"\\\t")).collect();
        let inner = serde_json::to_string(&names).unwrap();
        let mut meta = HashMap::new();
        meta.insert("feature_names".to_string(), inner);
        let header = serde_json::to_string(&meta).unwrap();
        let est = escaped_json_len(&names);
        // The estimate counts the value's own characters; the header adds the key and two quotes.
        assert_eq!(
            est + "{\"feature_names\":\"\"}".len() as u128,
            header.len() as u128
        );
    }

    #[test]
    fn names_counted_one_at_a_time_are_their_list() {
        let names: Vec<String> = vec!["a".into(), "b \"c\"".into(), "\\".into()];
        let inner = serde_json::to_string(&names).unwrap();
        // The list as the header holds it: its JSON, escaped once more inside the metadata's string.
        let mut held = EscapedLen(0);
        std::io::Write::write_all(&mut held, inner.as_bytes()).unwrap();
        assert_eq!(NamesSize::of(&names).bytes, held.0);
        assert_eq!(NamesSize::of(&names).count, 3);
    }

    #[test]
    fn too_many_names_or_epochs_are_refused_naming_what_to_change() {
        let p = Path::new("wide.csv");
        check_header_fits(p, &NamesSize::of(&["a".into(), "b".into()]), 2, 1000).unwrap();
        // 25 million columns named col0 … col24999999, as the 50 MB row has (counted, not built:
        // the binary's refusal is in tests/cli.rs).
        let names = NamesSize {
            count: 25_000_000,
            bytes: (0..25_000_000u128)
                .map(|i| 5 + 3 + i.to_string().len() as u128)
                .sum(),
        };
        let e = check_header_fits(p, &names, 2, 10).unwrap_err().to_string();
        assert!(
            e.starts_with("wide.csv: the names of its 25000000 columns would take 3"),
            "{e}"
        );
        assert!(e.contains("100.0 MB a safetensors header can hold"), "{e}");
        let e = check_header_fits(p, &NamesSize::of(&["a".into()]), 2, 5_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--epochs: 5000000 epochs of loss history"),
            "{e}"
        );
    }
}
