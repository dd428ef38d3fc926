//! A resumed run and a trained model meet their data through the real binary: `--resume` refuses a setting
//! that conflicts with its checkpoint (naming both values) and a data set other than the one it started on
//! (unless `--resume-with-other-data`); eval, encode and reconstruct find a model's columns by name, accept
//! a file without the columns the model ignored, refuse a missing or renamed feature naming it, and take a
//! file without a header by position.

mod common;

use common::binary::*;
use std::path::Path;

fn resume_case(s: &Scratch) -> (String, String) {
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "2");
    (data, model)
}

#[test]
fn resume_refuses_a_setting_that_conflicts_with_its_checkpoint() {
    let s = Scratch::new("int-resume");
    let (_, model) = resume_case(&s);
    let before = file_hash(Path::new(&model));
    // train_small: --layers 3,2, adam (lr 0.001), batch 8, seed 42, standard normalization, Id,label ignored.
    for (flag, value, recorded) in [
        ("--lr", "0.01", "0.001"),
        ("--layers", "4,2", "3,2"),
        ("--normalize", "minmax", "standard"),
        ("--optimizer", "sgd", "adam"),
        ("--batch-size", "16", "8"),
        ("--seed", "7", "42"),
        ("--activation", "tanh", "relu"),
        ("--code-activation", "tanh", "linear"),
        ("--ignore-columns", "Id", "Id,label"),
        ("--val-split", "0.2", "none"),
        ("--patience", "3", "none"),
        ("--momentum", "0.9", "0"),
        ("--orthogonality", "0.1", "0"),
        ("--data-dtype", "f16", "f32"),
    ] {
        refused(
            &[
                "train", "--resume", &model, "--epochs", "4", flag, value, "--device", "cpu",
            ],
            &[flag, value, recorded, "m.safetensors"],
        );
    }
    for flag in ["--no-shuffle", "--unit-norm"] {
        refused(
            &[
                "train", "--resume", &model, "--epochs", "4", flag, "--device", "cpu",
            ],
            &[flag, "m.safetensors"],
        );
    }
    assert_eq!(
        file_hash(Path::new(&model)),
        before,
        "a refused resume wrote the model"
    );
    // The recorded values may be given again, and what may change on resume changes.
    let stdout = ok(&[
        "train",
        "--resume",
        &model,
        "--epochs",
        "4",
        "--lr",
        "0.001",
        "--layers",
        "3,2",
        "--batch-size",
        "8",
        "--normalize",
        "standard",
        "--metrics",
        &s.path("m.jsonl"),
        "--device",
        "cpu",
    ]);
    assert!(stdout.contains("resuming after epoch 2"), "{stdout}");
}

#[test]
fn resume_refuses_another_data_set_unless_asked() {
    let s = Scratch::new("int-resume-data");
    let (data, model) = resume_case(&s);
    let text = small_csv();
    // Same columns and rows, one value changed.
    let other = s.file("other.csv", text.replacen(",0.0250,", ",0.0251,", 1));
    assert_ne!(std::fs::read_to_string(&other).unwrap(), text);
    // Fewer rows.
    let fewer = s.file(
        "fewer.csv",
        text.lines().take(30).collect::<Vec<_>>().join("\n") + "\n",
    );
    refused(
        &[
            "train", "--resume", &model, "--data", &other, "--epochs", "3", "--device", "cpu",
        ],
        &["other.csv", "other values", "--resume-with-other-data"],
    );
    refused(
        &[
            "train", "--resume", &model, "--data", &fewer, "--epochs", "3", "--device", "cpu",
        ],
        &[
            "fewer.csv",
            "29 rows",
            "40 rows",
            "--resume-with-other-data",
        ],
    );
    // The same data with its columns in another order is the same data set.
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let reordered: String = lines
        .iter()
        .map(|c| [c[5], c[4], c[3], c[2], c[1], c[0]].join(",") + "\n")
        .collect();
    let reordered = s.file("reordered.csv", reordered);
    ok(&[
        "train",
        "--resume",
        &model,
        "--data",
        &reordered,
        "--epochs",
        "3",
        "--out",
        &s.path("r.safetensors"),
        "--device",
        "cpu",
    ]);
    // Asked for, another data set is used, and the run says so.
    let stdout = ok(&[
        "train",
        "--resume",
        &model,
        "--data",
        &other,
        "--epochs",
        "3",
        "--resume-with-other-data",
        "--device",
        "cpu",
    ]);
    assert!(stdout.contains("not the data set"), "{stdout}");
    let _ = data;
}

#[test]
fn columns_are_matched_to_the_model_by_name() {
    let s = Scratch::new("int-columns");
    let text = small_csv();
    let data = s.file("d.csv", &text);
    let model = s.path("m.safetensors");
    train_small(&data, &model, "3");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let write = |name: &str, pick: &dyn Fn(&[&str]) -> Vec<String>, header: bool| {
        let body: String = rows
            .iter()
            .skip(if header { 0 } else { 1 })
            .map(|r| pick(r).join(",") + "\n")
            .collect();
        s.file(name, body)
    };
    // Id,a,b,c,d,label → label,d,c,b,a,Id.
    let reordered = write(
        "reordered.csv",
        &|r| r.iter().rev().map(|c| c.to_string()).collect(),
        true,
    );
    // A test set without its label or Id.
    let features = write(
        "features.csv",
        &|r| r[1..5].iter().map(|c| c.to_string()).collect(),
        true,
    );
    // The features alone, without a header: by position.
    let headerless = write(
        "headerless.csv",
        &|r| r[1..5].iter().map(|c| c.to_string()).collect(),
        false,
    );
    let mse = |file: &str| -> String {
        let out = ok(&[
            "eval", "--model", &model, "--data", file, "--json", "--device", "cpu",
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["mse"].to_string()
    };
    let want = mse(&data);
    for file in [&reordered, &features, &headerless] {
        assert_eq!(mse(file), want, "{file}");
    }
    // Codes follow the rows whatever the order of the columns; the other columns are carried along.
    let codes = |file: &str, out: &str| {
        ok(&[
            "encode", "--model", &model, "--data", file, "--out", out, "--device", "cpu",
        ]);
        std::fs::read_to_string(out).unwrap()
    };
    let (a, b) = (
        codes(&data, &s.path("a.csv")),
        codes(&reordered, &s.path("b.csv")),
    );
    let code_part = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(',').skip(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(code_part(&a), code_part(&b));
    assert!(b.starts_with("label,Id,code_0,code_1\n"), "{b}");
    // A renamed feature is refused, naming it and what the file has instead.
    let renamed = s.file(
        "renamed.csv",
        text.replacen("Id,a,b,c,d,label", "Id,a,bb,c,d,label", 1),
    );
    refused(
        &[
            "eval", "--model", &model, "--data", &renamed, "--device", "cpu",
        ],
        &["renamed.csv", "no column 'b'", "feature 2 of 4", "bb"],
    );
    refused(
        &[
            "encode",
            "--model",
            &model,
            "--data",
            &renamed,
            "--out",
            &s.path("c.csv"),
            "--device",
            "cpu",
        ],
        &["renamed.csv", "no column 'b'"],
    );
}
