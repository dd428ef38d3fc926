//! The `tiedae` command line: flags in, library requests, output out. Each command's flags and printing live
//! in `cli/` (train.rs, model.rs for eval/encode/reconstruct/summary, bench.rs, about.rs for demo and info);
//! the work is the library's (`tiedae::workflow`, `tiedae::bench`).

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tiedae::workflow::DeviceChoice;

mod cli;

#[derive(Parser)]
#[command(
    name = "tiedae",
    version,
    args_override_self = true,
    about = "Tied-weight autoencoders done right: one kernel W, used as W by the encoder and as Wᵀ by the decoder"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a tied autoencoder on a CSV file and write the model (safetensors).
    Train(Box<cli::train::TrainArgs>),
    /// Reconstruction MSE of a model on a CSV file.
    Eval(cli::model::EvalArgs),
    /// Write the codes (the encoder's output) of every row to a CSV file.
    Encode(cli::model::EncodeArgs),
    /// Reconstruct every row (in the data's own units); with --per-row-error, rank rows by their error.
    Reconstruct(cli::model::ReconstructArgs),
    /// A Keras-like table of a model's layers; the tied kernel is counted once.
    Summary {
        #[arg(long)]
        model: PathBuf,
    },
    /// The classic 51→1 scenario: one SGD epoch, showing that the decoder's kernel IS the encoder's, moved.
    Demo {
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The GPUs this machine has and how this binary was built.
    Info,
    /// Time training epochs (seed, digits, mnist workloads) on the CPU and the GPU.
    Bench(cli::bench::BenchArgs),
}

fn main() {
    // The CPU GEMM threads (ours and matrixmultiply's) read their count from the environment: use every core
    // unless the user said otherwise.
    if std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("MATMUL_NUM_THREADS", cores.to_string());
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line. A cause whose text the message already holds is left out: the
/// library's I/O errors name their OS error and also carry it as their source.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => cli::train::run(*args),
        Command::Eval(args) => cli::model::eval(args),
        Command::Encode(args) => cli::model::encode(args),
        Command::Reconstruct(args) => cli::model::reconstruct(args),
        Command::Summary { model } => cli::model::summary(&model),
        Command::Demo { device, seed } => cli::about::demo(device, seed),
        Command::Info => cli::about::info(),
        Command::Bench(args) => Ok(cli::bench::run(&args)?),
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        // The library's I/O error shows its OS error and also carries it as its source.
        let os = std::io::Error::from_raw_os_error(21);
        let e = anyhow::Error::new(tiedae::Error::io(std::path::Path::new("m.safetensors"), os));
        let line = one_line(&e);
        assert_eq!(line.matches("os error 21").count(), 1, "{line}");
        assert!(line.starts_with("m.safetensors: "), "{line}");
        // A context that adds to the message keeps both.
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
