//! Sizes refused before anything is allocated, through the real binary: widths, a batch, epochs of history,
//! a bench workload or GEMM that would need terabytes, a data file larger than memory, and column names
//! that a model file's header cannot hold. Each is one line naming the flag (or the file), how much is
//! needed and how much there is. The binary runs with its address space capped at 8 GB: one that tried
//! the allocation fails at once instead of taking the machine's memory.

mod common;

use common::binary::*;
use std::path::Path;
use std::time::Duration;

/// Runs with the address space capped at 8 GB: a binary that tried the allocation fails at once instead
/// of taking the machine's memory.
fn refused_small(args: &[&str], needles: &[&str]) -> String {
    let r = run_limited(args, Duration::from_secs(60), Some(8 << 20));
    assert_refused(&r, args, needles);
    assert!(
        !r.stdout.contains("epoch"),
        "{args:?} trained: {}",
        r.stdout
    );
    r.lines()[0].to_string()
}

#[test]
fn sizes_that_would_need_terabytes_are_refused_before_allocating() {
    let s = Scratch::new("int-sizes");
    let data = s.file("d.csv", small_csv());
    let out = s.path("m.safetensors");
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            &data,
            "--out",
            &out,
            "--ignore-columns",
            "Id,label",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        let line = refused_small(&args, needles);
        assert!(!Path::new(&out).exists());
        line
    };
    // Parameters: 4 → 10⁶ → 10⁶ holds 10¹² weights, 4 TB each for them, their gradient, …
    let line = train(
        &["--layers", "1000000,1000000"],
        &[
            "--layers",
            "TB of memory",
            "parameters 4.0 TB",
            "is available",
            "use smaller --layers",
        ],
    );
    assert!(
        line.contains("training 4→1000000→1000000 needs about"),
        "{line}"
    );
    // Activations: one batch of 10¹¹ rows.
    train(
        &["--layers", "2", "--batch-size", "100000000000"],
        &[
            "--batch-size",
            "activations",
            "TB",
            "use a smaller --batch-size",
        ],
    );
    // The loss history of 2 million epochs would not fit the model file's header.
    let r = run_limited(
        &[
            "train",
            "--data",
            &data,
            "--out",
            &out,
            "--ignore-columns",
            "Id,label",
            "--layers",
            "2",
            "--epochs",
            "2000000",
            "--device",
            "cpu",
        ],
        Duration::from_secs(30),
        Some(8 << 20),
    );
    assert_refused(
        &r,
        &[],
        &["--epochs", "2000000 epochs of loss history", "header"],
    );
    // bench: a custom workload and a GEMM.
    refused_small(
        &["bench", "--layers", "100000000,10", "--device", "cpu"],
        &["--rows", "TB", "is available"],
    );
    refused_small(
        &["bench", "--gemm", "1000000", "--device", "cpu"],
        &["--gemm", "TB", "is available"],
    );
}

#[test]
fn a_data_file_that_cannot_fit_is_refused_before_it_is_read() {
    let s = Scratch::new("int-bigcsv");
    // 2 TB that the file system stores in one block: a header, one row, then zeros (never read).
    let sparse = s.0.join("sparse.csv");
    std::fs::write(&sparse, "a,b\n1,2\n").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap();
    if f.set_len(2 << 40).is_err() {
        common::skipped(
            "a_data_file_that_cannot_fit_is_refused_before_it_is_read: no sparse 2 TB file here",
        );
        return;
    }
    drop(f);
    let sparse = sparse.display().to_string();
    refused_small(
        &[
            "train",
            "--data",
            &sparse,
            "--out",
            &s.path("m.safetensors"),
            "--device",
            "cpu",
        ],
        &[
            "sparse.csv",
            "rows of 2 columns",
            "TB in memory",
            "is available",
        ],
    );
    // 8 million columns: their names would not fit a model file's header (safetensors caps it at 100 MB);
    // refused from the first row, before the data is read.
    let wide = s.file("wide.csv", vec!["1"; 8_000_000].join(",") + "\n");
    refused_small(
        &[
            "train",
            "--data",
            &wide,
            "--out",
            &s.path("m.safetensors"),
            "--device",
            "cpu",
        ],
        &["wide.csv", "8000000 columns", "header"],
    );
}
