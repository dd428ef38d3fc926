//! Data sets: a CSV file read into a row-major `f32` matrix (`csv.rs`), its columns chosen by selectors or
//! matched to a model's by name (`columns.rs`), and the per-column normalization stored in the model
//! (`normalize.rs`).

mod columns;
mod csv;
mod normalize;
#[cfg(test)]
mod tests;

pub use columns::{parse_selectors, ColumnSelector};
pub use csv::{column_names, load_csv, load_csv_for_model, Dataset};
pub use normalize::{Normalization, NormalizeKind};
