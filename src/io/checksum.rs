//! The checksum a model file carries, and the fingerprint of a data set a checkpoint records.
//!
//! Both are SHA-256 (the `sha2` crate) over a canonical form, not over the file's bytes: the metadata's
//! key/value pairs sorted by key and the tensors sorted by name, every field prefixed with its length so
//! that no two different contents hash alike. A file rewritten by another safetensors writer (another key
//! order, other padding) keeps its checksum; any change to a value, a name, a shape or a bit of a tensor
//! does not.

use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The metadata key of a model file's checksum.
pub const KEY: &str = "checksum";
const PREFIX: &str = "sha256:";

struct Hasher(Sha256);

impl Hasher {
    fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }
    fn finish(self) -> String {
        let digest = self.0.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{PREFIX}{hex}")
    }
}

/// A tensor as the checksum sees it: name, dtype (as safetensors names it, e.g. `F32`), shape, bytes.
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: String,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// The checksum of a model file's metadata (every key except [`KEY`]) and tensors.
pub fn model_checksum(meta: &HashMap<String, String>, tensors: &mut [TensorRef<'_>]) -> String {
    let mut h = Hasher(Sha256::new());
    h.field(b"tiedae model checksum 1");
    let mut keys: Vec<&String> = meta.keys().filter(|k| k.as_str() != KEY).collect();
    keys.sort();
    h.field(&(keys.len() as u64).to_le_bytes());
    for k in keys {
        h.field(k.as_bytes());
        h.field(meta[k].as_bytes());
    }
    tensors.sort_by(|a, b| a.name.cmp(b.name));
    h.field(&(tensors.len() as u64).to_le_bytes());
    for t in tensors.iter() {
        h.field(t.name.as_bytes());
        h.field(t.dtype.as_bytes());
        let shape: Vec<u8> = t
            .shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        h.field(&shape);
        h.field(t.data);
    }
    h.finish()
}

/// The fingerprint of a data set's content: its feature columns' names, its row count and every value's
/// bits (as read, before normalization). Two files with the same numbers in the same order under the same
/// names have the same fingerprint, whatever their formatting.
pub fn data_fingerprint(names: &[String], rows: usize, values: &[f32]) -> String {
    let mut h = Hasher(Sha256::new());
    h.field(b"tiedae data fingerprint 1");
    h.field(&(names.len() as u64).to_le_bytes());
    for n in names {
        h.field(n.as_bytes());
    }
    h.field(&(rows as u64).to_le_bytes());
    h.0.update((values.len() as u64).to_le_bytes());
    for chunk in values.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
        h.0.update(&bytes);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn order_does_not_count_and_content_does() {
        let data = [1u8, 2, 3, 4];
        let other = [1u8, 2, 3, 5];
        let t = |name, data| TensorRef {
            name,
            dtype: "F32".into(),
            shape: &[1],
            data,
        };
        let m = meta(&[("a", "1"), ("b", "2")]);
        let base = model_checksum(&m, &mut [t("x", &data[..]), t("y", &data[..])]);
        assert!(base.starts_with("sha256:") && base.len() == 7 + 64);
        // Another order of tensors, and the checksum key itself, change nothing.
        let mut with_key = m.clone();
        with_key.insert(KEY.into(), "whatever".into());
        assert_eq!(
            base,
            model_checksum(&with_key, &mut [t("y", &data[..]), t("x", &data[..])])
        );
        // A bit of a tensor, a value, a key, a name do.
        for changed in [
            model_checksum(&m, &mut [t("x", &data[..]), t("y", &other[..])]),
            model_checksum(
                &meta(&[("a", "1"), ("b", "3")]),
                &mut [t("x", &data[..]), t("y", &data[..])],
            ),
            model_checksum(
                &meta(&[("a", "1"), ("c", "2")]),
                &mut [t("x", &data[..]), t("y", &data[..])],
            ),
            model_checksum(&m, &mut [t("x", &data[..]), t("z", &data[..])]),
            // Fields cannot run into each other: "ab"+"" differs from "a"+"b".
            model_checksum(
                &meta(&[("ab", ""), ("b", "2")]),
                &mut [t("x", &data[..]), t("y", &data[..])],
            ),
        ] {
            assert_ne!(base, changed);
        }
    }

    #[test]
    fn a_fingerprint_sees_names_rows_and_every_bit() {
        let names = vec!["a".to_string(), "b".to_string()];
        let v = [1.0f32, 2.0, 3.0, 4.0];
        let base = data_fingerprint(&names, 2, &v);
        assert_eq!(base, data_fingerprint(&names, 2, &v));
        let mut w = v;
        w[3] = f32::from_bits(4.0f32.to_bits() ^ 1);
        assert_ne!(base, data_fingerprint(&names, 2, &w));
        assert_ne!(base, data_fingerprint(&["a".into(), "c".into()], 2, &v));
        assert_ne!(base, data_fingerprint(&names, 1, &v));
    }
}
