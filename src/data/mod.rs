//! Data sets: a CSV file read into a row-major `f32` matrix (`csv.rs`), and the per-column normalization
//! stored in the model (`normalize.rs`).

mod csv;
mod normalize;
#[cfg(test)]
mod tests;

pub use csv::{
    column_names, load_csv, load_csv_for_model, parse_selectors, ColumnSelector, Dataset,
};
pub use normalize::{Normalization, NormalizeKind};
