//! The command line's rooms, one per group of commands: each turns its flags into a library request
//! (`tiedae::workflow`, `tiedae::bench`) and prints what comes back.

use tiedae::error::Error;

pub mod about;
pub mod bench;
pub mod model;
pub mod train;

/// A flag's integer that must be positive (flags take i64 so that a negative value is named, not refused by
/// the parser).
pub fn positive(flag: &str, value: i64) -> Result<usize, Error> {
    if value <= 0 {
        Err(Error::flag(
            flag,
            format!("must be a positive integer, got {value}"),
        ))
    } else {
        Ok(value as usize)
    }
}

/// `--layers`: the widths after the input.
pub fn parse_layers(s: &str) -> Result<Vec<usize>, Error> {
    s.split(',')
        .map(|w| {
            let w = w.trim();
            match w.parse::<i64>() {
                Ok(v) if v > 0 => Ok(v as usize),
                Ok(v) => Err(Error::flag(
                    "--layers",
                    format!("width {v} is not positive; every width must be a positive integer"),
                )),
                Err(_) => Err(Error::flag(
                    "--layers",
                    format!("'{w}' is not a width; expected positive integers like 32,8"),
                )),
            }
        })
        .collect()
}
