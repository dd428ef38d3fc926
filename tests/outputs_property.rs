//! A property test through the real binary: random commands (train, train --resume, encode, reconstruct,
//! eval) on random combinations of input and output paths (the same file, hard and symbolic links, device
//! nodes, FIFOs, folders, missing folders, `-`). A failed run changes nothing; a run that succeeds changes
//! no input and replaces no device, FIFO or folder; nothing hangs; every refusal is one line. 64 cases a
//! run; TIEDAE_PATH_CASES=1000 for a longer one.

mod common;

use common::binary::*;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

/// What a path of the property test is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Data,
    DataHardLink,
    DataSymlink,
    Model,
    ModelHardLink,
    ModelSymlink,
    Fresh,
    Existing,
    MissingFolder,
    Folder,
    Fifo,
    Null,
    Full,
    Dash,
}

const KINDS: [Kind; 14] = [
    Kind::Data,
    Kind::DataHardLink,
    Kind::DataSymlink,
    Kind::Model,
    Kind::ModelHardLink,
    Kind::ModelSymlink,
    Kind::Fresh,
    Kind::Existing,
    Kind::MissingFolder,
    Kind::Folder,
    Kind::Fifo,
    Kind::Null,
    Kind::Full,
    Kind::Dash,
];

/// The files a case starts with: the data, a model trained on it, links to both, an unrelated file, a
/// folder, a FIFO and two device nodes (made with mknod, like /dev/null and /dev/full: a binary that
/// replaced one replaces a copy in the scratch folder, not the machine's own).
struct World {
    s: Scratch,
    devices: bool,
}

impl World {
    fn new(n: usize, model: &Path, devices: bool) -> World {
        let s = Scratch::new(&format!("prop-{n}"));
        s.file("d.csv", small_csv());
        std::fs::copy(model, s.0.join("m.safetensors")).unwrap();
        std::fs::hard_link(s.0.join("d.csv"), s.0.join("d-hard.csv")).unwrap();
        std::os::unix::fs::symlink(s.0.join("d.csv"), s.0.join("d-sym.csv")).unwrap();
        std::fs::hard_link(s.0.join("m.safetensors"), s.0.join("m-hard.safetensors")).unwrap();
        std::os::unix::fs::symlink(s.0.join("m.safetensors"), s.0.join("m-sym.safetensors"))
            .unwrap();
        s.file("existing.txt", "keep me");
        std::fs::create_dir(s.0.join("folder")).unwrap();
        mkfifo(&s.0.join("fifo"));
        if devices {
            mknod(&s.0.join("null"), 3);
            mknod(&s.0.join("full"), 7);
        }
        World { s, devices }
    }

    fn path(&self, kind: Kind, ext: &str) -> String {
        let name = match kind {
            Kind::Data => "d.csv".to_string(),
            Kind::DataHardLink => "d-hard.csv".to_string(),
            Kind::DataSymlink => "d-sym.csv".to_string(),
            Kind::Model => "m.safetensors".to_string(),
            Kind::ModelHardLink => "m-hard.safetensors".to_string(),
            Kind::ModelSymlink => "m-sym.safetensors".to_string(),
            Kind::Fresh => format!("fresh{ext}"),
            Kind::Existing => "existing.txt".to_string(),
            Kind::MissingFolder => format!("missing/x{ext}"),
            Kind::Folder => "folder".to_string(),
            Kind::Fifo => "fifo".to_string(),
            Kind::Null if self.devices => "null".to_string(),
            Kind::Full if self.devices => "full".to_string(),
            Kind::Null | Kind::Full => "fifo".to_string(),
            Kind::Dash => return "-".to_string(),
        };
        self.s.path(&name)
    }

    /// The state of every file a run must not change: (name, content hash, type).
    fn snapshot(&self) -> Vec<(&'static str, Option<String>, Option<std::fs::FileType>)> {
        SNAPSHOT
            .iter()
            .map(|n| {
                let p = self.s.0.join(n);
                // A link is what it points to; its target's content is the target's entry.
                let content = match std::fs::read_link(&p) {
                    Ok(target) => Some(format!("-> {}", target.display())),
                    Err(_) => file_hash(&p),
                };
                (
                    *n,
                    content,
                    std::fs::symlink_metadata(&p).ok().map(|m| m.file_type()),
                )
            })
            .collect()
    }
}

const SNAPSHOT: [&str; 9] = [
    "d.csv",
    "d-sym.csv",
    "m.safetensors",
    "m-sym.safetensors",
    "existing.txt",
    "folder",
    "fifo",
    "null",
    "full",
];

fn cases() -> u32 {
    std::env::var("TIEDAE_PATH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// The file whose content a path of this kind reads ("" for one that is no regular file of the world).
fn content(k: Kind) -> &'static str {
    match k {
        Kind::Data | Kind::DataHardLink | Kind::DataSymlink => "d.csv",
        Kind::Model | Kind::ModelHardLink | Kind::ModelSymlink => "m.safetensors",
        Kind::Existing => "existing.txt",
        _ => "",
    }
}

fn is_model(k: Kind) -> bool {
    matches!(k, Kind::Model | Kind::ModelHardLink | Kind::ModelSymlink)
}

/// Random commands with random input and output paths (the same file, links, devices, FIFOs, folders,
/// missing folders, `-`): a failed run changes nothing; a run that succeeds changes no input (but the file
/// a resumed run writes back) and replaces no device, FIFO, folder or link; nothing hangs; every refusal
/// is one line.
#[test]
fn random_paths_never_change_an_input_or_replace_a_device() {
    use proptest::test_runner::{Config, TestRunner};
    let base = Scratch::new("prop-base");
    let model = base.path("m.safetensors");
    let data = base.file("d.csv", small_csv());
    train_small(&data, &model, "1");
    let devices = can_mknod(&base.0);
    if !devices {
        common::skipped("random_paths_never_change_an_input_or_replace_a_device (device nodes): mknod needs root; FIFOs stand in");
    }
    // Each slot is mostly what it should be, so that runs also succeed; any kind can land anywhere.
    let weighted = |favoured: Vec<(u32, Kind)>| {
        let mut choices: Vec<(u32, Kind)> = favoured.clone();
        for k in KINDS {
            if !favoured.iter().any(|(_, f)| *f == k) {
                choices.push((1, k));
            }
        }
        prop::strategy::Union::new_weighted(
            choices
                .into_iter()
                .map(|(w, k)| (w, Just(k).boxed()))
                .collect(),
        )
    };
    let data = weighted(vec![
        (8, Kind::Data),
        (3, Kind::DataHardLink),
        (3, Kind::DataSymlink),
    ]);
    let model_in = weighted(vec![
        (8, Kind::Model),
        (3, Kind::ModelHardLink),
        (3, Kind::ModelSymlink),
    ]);
    let out = || {
        weighted(vec![
            (10, Kind::Fresh),
            (3, Kind::Existing),
            (2, Kind::Dash),
        ])
    };
    let extra = || prop::option::weighted(0.3, out());
    let strategy = (
        0usize..5,
        (data, model_in, out()),
        (extra(), extra(), extra()),
    );
    let n = std::cell::Cell::new(0);
    let succeeded_runs = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // Against another binary (TIEDAE_TEST_BIN) its first failure is the answer: no shrinking through
        // runs that may each hang until their limit.
        max_shrink_iters: if own_binary() { 256 } else { 0 },
        ..Config::default()
    });
    let result = runner.run(&strategy, |(command, (a, b, c), (d, e, f))| {
        n.set(n.get() + 1);
        let w = World::new(n.get(), Path::new(&model), devices);
        let before = w.snapshot();
        let (pa, pb, pc) = (
            w.path(a, ".csv"),
            w.path(b, ".safetensors"),
            w.path(c, ".csv"),
        );
        let opt = |k: Option<Kind>, ext| k.map(|k| w.path(k, ext));
        let (pd, pe, pf) = (opt(d, ".jsonl"), opt(e, ".png"), opt(f, ".safetensors"));
        let mut args: Vec<&str> = match command {
            0 => vec![
                "train",
                "--data",
                &pa,
                "--out",
                &pc,
                "--ignore-columns",
                "Id,label",
                "--layers",
                "2",
                "--epochs",
                "1",
            ],
            1 => vec![
                "train", "--resume", &pb, "--data", &pa, "--epochs", "3", "--out", &pc,
            ],
            2 => vec!["encode", "--model", &pb, "--data", &pa, "--out", &pc],
            3 => vec!["reconstruct", "--model", &pb, "--data", &pa, "--out", &pc],
            _ => vec!["eval", "--model", &pb, "--data", &pa],
        };
        if command <= 1 {
            if let Some(p) = &pd {
                args.extend(["--metrics", p]);
            }
            if let Some(p) = &pe {
                args.extend(["--plot", p]);
            }
        }
        if command == 0 {
            if let Some(p) = &pf {
                args.extend(["--init", p]);
            }
        }
        args.extend(["--device", "cpu"]);
        let r = run_limited(&args, Duration::from_secs(30), None);
        prop_assert!(r.code != -2, "{:?} hung", args);
        prop_assert!(
            r.code == 0 || r.code == 1,
            "{:?}: exit {} {}",
            args,
            r.code,
            r.stderr
        );
        prop_assert!(!r.stderr.contains("panicked"), "{:?}: {}", args, r.stderr);
        if r.code == 1 {
            let errors: Vec<&str> = r
                .lines()
                .into_iter()
                .filter(|l| !l.starts_with("note: "))
                .collect();
            prop_assert_eq!(errors.len(), 1, "{:?}: {}", args, r.stderr);
        }
        let succeeded = r.code == 0;
        succeeded_runs.set(succeeded_runs.get() + succeeded as usize);
        // Slot a is the data, b the model (read by every command but train), c `--out`, f `--init`.
        let mut inputs: Vec<&str> = vec![content(a)];
        match command {
            0 => inputs.extend(f.map(content)),
            _ => inputs.push(content(b)),
        }
        let mut outputs: Vec<Kind> = vec![c];
        if command <= 1 {
            outputs.extend(d.into_iter().chain(e));
        }
        // A run that resumes its file into itself rewrites it (through a link, it replaces the link).
        let in_place = succeeded && command == 1 && is_model(b) && is_model(c);
        // An output that is a link is replaced by the file written, as a rename does (its target stays).
        let link_written = |k: Kind| outputs.contains(&k) && !inputs.contains(&content(k));
        for ((name, hash0, type0), (_, hash1, type1)) in before.iter().zip(&w.snapshot()) {
            let may_change = succeeded
                && match *name {
                    "m.safetensors" => in_place || !inputs.contains(name),
                    "m-sym.safetensors" => {
                        (in_place && c == Kind::ModelSymlink) || link_written(Kind::ModelSymlink)
                    }
                    "d-sym.csv" => link_written(Kind::DataSymlink),
                    // A regular file that is not an input is an output like any other.
                    "d.csv" | "existing.txt" => !inputs.contains(name),
                    // Folders, FIFOs, devices: never.
                    _ => false,
                };
            if !may_change {
                prop_assert_eq!(hash0, hash1, "{:?} changed {}: {}", args, name, r.stderr);
                prop_assert_eq!(type0, type1, "{:?} replaced {}: {}", args, name, r.stderr);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let _ = writeln_stderr(&format!(
        "paths: {} random commands ({} succeeded), no input changed",
        n.get(),
        succeeded_runs.get()
    ));
}

fn writeln_stderr(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{line}")
}
