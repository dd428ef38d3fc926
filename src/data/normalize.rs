//! The per-column normalization fitted on the training data, stored in the model and applied again by
//! `eval`, `encode` and `reconstruct`.

use std::fmt;
use std::str::FromStr;

use super::csv::show;
use super::Dataset;

/// How the feature columns are normalized before training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NormalizeKind {
    None,
    Standard,
    MinMax,
}

impl NormalizeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NormalizeKind::None => "none",
            NormalizeKind::Standard => "standard",
            NormalizeKind::MinMax => "minmax",
        }
    }
}

impl fmt::Display for NormalizeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NormalizeKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(NormalizeKind::None),
            "standard" => Ok(NormalizeKind::Standard),
            "minmax" => Ok(NormalizeKind::MinMax),
            _ => Err(format!(
                "unknown normalization '{}' (valid values: none, standard, minmax)",
                show(s)
            )),
        }
    }
}

/// Per-column affine map `x' = (x - shift[j]) · scale[j]`; stored in the model file, applied again by eval/encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub kind: NormalizeKind,
    pub shift: Vec<f32>,
    pub scale: Vec<f32>,
}

/// `1/d` as a usable f32 scale: 1 where the spread is zero or the result would not be finite and non-zero.
fn inv_scale(d: f64) -> f32 {
    if d > 0.0 {
        let s = (1.0 / d) as f32;
        if s.is_finite() && s > 0.0 {
            return s;
        }
    }
    1.0
}

impl Normalization {
    /// The normalization that does nothing, for weights that come without one.
    pub fn identity(cols: usize) -> Normalization {
        Normalization {
            kind: NormalizeKind::None,
            shift: vec![0.0; cols],
            scale: vec![1.0; cols],
        }
    }

    /// None: shift 0, scale 1. Standard: mean, 1/std (population std, in f64; a constant column gets scale 1).
    /// MinMax: min, 1/(max-min) (a constant column gets scale 1).
    pub fn fit(kind: NormalizeKind, data: &Dataset) -> Normalization {
        let cols = data.cols;
        let mut shift = vec![0.0f32; cols];
        let mut scale = vec![1.0f32; cols];
        if kind == NormalizeKind::None || cols == 0 || data.rows == 0 {
            return Normalization { kind, shift, scale };
        }
        let rows = data.values.chunks_exact(cols);
        let n = rows.len() as f64;
        let mut min = vec![f64::INFINITY; cols];
        let mut max = vec![f64::NEG_INFINITY; cols];
        let mut sum = vec![0.0f64; cols];
        for row in rows.clone() {
            for (j, &x) in row.iter().enumerate() {
                let x = x as f64;
                if let (Some(lo), Some(hi), Some(s)) =
                    (min.get_mut(j), max.get_mut(j), sum.get_mut(j))
                {
                    *lo = lo.min(x);
                    *hi = hi.max(x);
                    *s += x;
                }
            }
        }
        match kind {
            NormalizeKind::None => {}
            NormalizeKind::MinMax => {
                for j in 0..cols {
                    if let (Some(sh), Some(sc), Some(&lo), Some(&hi)) =
                        (shift.get_mut(j), scale.get_mut(j), min.get(j), max.get(j))
                    {
                        *sh = lo as f32;
                        *sc = inv_scale(hi - lo);
                    }
                }
            }
            NormalizeKind::Standard => {
                let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
                let mut sq = vec![0.0f64; cols];
                for row in rows {
                    for ((q, &x), &m) in sq.iter_mut().zip(row).zip(&mean) {
                        let d = x as f64 - m;
                        *q += d * d;
                    }
                }
                for j in 0..cols {
                    if let (Some(sh), Some(sc), Some(&m), Some(&q), Some(&lo), Some(&hi)) = (
                        shift.get_mut(j),
                        scale.get_mut(j),
                        mean.get(j),
                        sq.get(j),
                        min.get(j),
                        max.get(j),
                    ) {
                        if lo == hi {
                            // Constant column: exact shift, no rounding noise blown up into a huge scale.
                            *sh = lo as f32;
                            *sc = 1.0;
                        } else {
                            *sh = m as f32;
                            *sc = inv_scale((q / n).sqrt());
                        }
                    }
                }
            }
        }
        Normalization { kind, shift, scale }
    }

    /// Applies the map to every row in place; the caller guarantees the column counts match.
    pub fn apply(&self, data: &mut Dataset) {
        debug_assert_eq!(self.shift.len(), data.cols);
        debug_assert_eq!(self.scale.len(), data.cols);
        if data.cols == 0 {
            return;
        }
        for row in data.values.chunks_exact_mut(data.cols) {
            for ((x, &sh), &sc) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
                *x = ((*x as f64 - sh as f64) * sc as f64) as f32;
            }
        }
    }

    /// x = x'/scale + shift: back to the original units, for writing reconstructions.
    pub fn invert_row(&self, row: &mut [f32]) {
        debug_assert_eq!(self.shift.len(), row.len());
        for ((x, &sh), &sc) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
            *x = (*x as f64 / sc as f64 + sh as f64) as f32;
        }
    }
}
