//! The commands that run a trained model, `eval`, `encode` and `reconstruct` (the workflows of
//! `tiedae::workflow::infer`), and `summary`, which reads one.

use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};
use tiedae::io;
use tiedae::workflow::infer::{self, ModelRequest};
use tiedae::workflow::paths;
use tiedae::workflow::DeviceChoice;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
pub struct EncodeArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Output CSV: the columns other than the model's features (Id, label…) as they were, then code_0 …
    /// code_{k-1}; `-` for standard output.
    #[arg(long)]
    out: PathBuf,
    /// Write every encoder layer's activations, concatenated (l0_0 … l0_{d1-1}, l1_0 …, the code last),
    /// instead of the code alone: features for a downstream model.
    #[arg(long)]
    all_layers: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

#[derive(Args)]
pub struct ReconstructArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Output CSV: the columns other than the model's features as they were, then the reconstructed
    /// features; `-` for standard output.
    #[arg(long)]
    out: PathBuf,
    /// Add each row's reconstruction error (MSE in the model's normalized units) and its row number, and
    /// sort the rows from the worst reconstructed: the usual way to find anomalies.
    #[arg(long)]
    per_row_error: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Notes go to stderr: stdout may carry JSON or CSV.
fn notes(notes: &[String]) {
    for n in notes {
        eprintln!("note: {n}");
    }
}

/// The closing line: on stdout, unless stdout carries the CSV.
fn say(out: &Path, line: &str) {
    if paths::is_stdout(out) {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

fn shown(out: &Path) -> String {
    if paths::is_stdout(out) {
        "standard output".to_string()
    } else {
        out.display().to_string()
    }
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let request = ModelRequest {
        model: a.model,
        data: a.data,
        device: a.device,
    };
    let result = infer::eval(&request)?;
    notes(&result.notes);
    if a.json {
        let obj = serde_json::json!({
            "mse": result.mse,
            "samples": result.samples,
            "features": result.features,
            "model": request.model.display().to_string(),
            "data": request.data.display().to_string(),
            "device": result.device,
        });
        println!("{obj}");
    } else {
        println!(
            "mse {:.6} over {} samples × {} features ({})",
            result.mse, result.samples, result.features, result.device
        );
    }
    Ok(())
}

pub fn encode(a: EncodeArgs) -> Result<()> {
    let request = ModelRequest {
        model: a.model,
        data: a.data,
        device: a.device,
    };
    let w = infer::encode(&request, &a.out, a.all_layers)?;
    notes(&w.notes);
    let what = if a.all_layers {
        format!(
            "{} rows of {} activations (every encoder layer)",
            w.rows, w.width
        )
    } else {
        format!("{} codes of width {}", w.rows, w.width)
    };
    say(&a.out, &format!("{what} written to {}", shown(&a.out)));
    Ok(())
}

pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    let request = ModelRequest {
        model: a.model,
        data: a.data,
        device: a.device,
    };
    let w = infer::reconstruct(&request, &a.out, a.per_row_error)?;
    notes(&w.notes);
    say(
        &a.out,
        &format!(
            "{} reconstructions written to {} (mse {:.6}{})",
            w.rows,
            shown(&a.out),
            w.mse,
            if a.per_row_error {
                ", rows ranked by error, worst first"
            } else {
                ""
            }
        ),
    );
    Ok(())
}

pub fn summary(path: &Path) -> Result<()> {
    paths::check_input("--model", path)?;
    let (model, integrity) = io::load_model_verified(path)?;
    if integrity == io::Integrity::NoChecksum {
        notes(&[format!(
            "{} has no checksum (written by an older tiedae): a damaged file cannot be told from a good one",
            path.display()
        )]);
    }
    let spec = &model.spec;
    let depth = spec.depth();
    println!("Model: tied autoencoder ({})", path.display());
    let rule = "─".repeat(86);
    let row = |cells: [String; 5]| {
        println!(
            "{:<26}{:<16}{:<12}{:<10}{}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        )
    };
    println!("{rule}");
    row([
        "Layer (type)",
        "Output Shape",
        "Activation",
        "Param #",
        "Kernel",
    ]
    .map(String::from));
    println!("{rule}");
    for i in 0..depth {
        let (din, dout) = (spec.widths[i], spec.widths[i + 1]);
        row([
            format!("encoder.{i} (Dense)"),
            format!("(None, {dout})"),
            spec.encoder_activation(i).to_string(),
            (din * dout + dout).to_string(),
            format!("encoder.{i}.kernel ({din}×{dout})"),
        ]);
    }
    for i in (0..depth).rev() {
        let (din, dout) = (spec.widths[i], spec.widths[i + 1]);
        row([
            format!("decoder.{i} (DenseTied)"),
            format!("(None, {din})"),
            spec.decoder_activation(i).to_string(),
            din.to_string(),
            format!("encoder.{i}.kernel, transposed ({dout}×{din}): tied, not counted again"),
        ]);
    }
    println!("{rule}");
    let kernels: usize = spec.widths.windows(2).map(|w| w[0] * w[1]).sum();
    println!(
        "Total params: {} ({} in {} tied kernel(s), {} in biases)",
        spec.param_count(),
        kernels,
        depth,
        spec.param_count() - kernels
    );
    println!(
        "Input: {} features, normalization {}",
        spec.input_width(),
        model.normalization.kind.as_str()
    );
    if model.noise.is_off() {
        println!("Training noise: none");
    } else {
        println!(
            "Training noise: {} (a denoising autoencoder: its training inputs were corrupted, its loss compared with the clean rows)",
            model.noise
        );
    }
    for (k, v) in &model.training {
        println!("  {k}: {v}");
    }
    Ok(())
}
