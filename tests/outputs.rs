//! Outputs never destroy inputs, through the real binary: an output that is an input under any name (the
//! same path, a hard link, a symbolic link), a device, a FIFO, a folder, or in a missing or read-only folder
//! is refused before any work, with one line naming the flag and the path; `-` is standard output where a
//! CSV can go there; a second run on the same output is refused while the first holds its lock; the
//! temporary files of a killed run are removed by the next; OS errors are not repeated. Then a property
//! test: random commands on random combinations of such paths never change an input or replace a device.

mod common;

use common::binary::*;
use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

fn train_args<'a>(data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--data",
        data,
        "--ignore-columns",
        "Id,label",
        "--layers",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ];
    v.extend_from_slice(extra);
    v
}

fn unchanged(path: &str, before: &Option<String>) {
    assert_eq!(
        &file_hash(Path::new(path)),
        before,
        "{path} changed (or is no longer a regular file)"
    );
}

#[test]
fn an_output_is_never_an_input_under_any_name() {
    let s = Scratch::new("out-input");
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "1");
    let hard = s.path("hard.csv");
    std::fs::hard_link(&data, &hard).unwrap();
    let sym = s.path("sym.csv");
    std::os::unix::fs::symlink(&data, &sym).unwrap();
    let model_link = s.path("model-link.safetensors");
    std::os::unix::fs::symlink(&model, &model_link).unwrap();
    let (data_hash, model_hash) = (file_hash(Path::new(&data)), file_hash(Path::new(&model)));
    let other = s.path("other.safetensors");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (train_args(&data, &["--out", &data]), "--out"),
        (train_args(&data, &["--out", &hard]), "--out"),
        (train_args(&data, &["--out", &sym]), "--out"),
        (
            train_args(&data, &["--out", &other, "--plot", &data]),
            "--plot",
        ),
        (
            train_args(&data, &["--out", &other, "--metrics", &hard]),
            "--metrics",
        ),
        (
            train_args(&data, &["--out", &other, "--metrics", &sym]),
            "--metrics",
        ),
        (
            train_args(&data, &["--out", &model, "--init", &model]),
            "--out",
        ),
        (
            vec![
                "encode", "--model", &model, "--data", &data, "--out", &data, "--device", "cpu",
            ],
            "--out",
        ),
        (
            vec![
                "encode", "--model", &model, "--data", &data, "--out", &model, "--device", "cpu",
            ],
            "--out",
        ),
        (
            vec![
                "encode",
                "--model",
                &model,
                "--data",
                &data,
                "--out",
                &model_link,
                "--device",
                "cpu",
            ],
            "--out",
        ),
        (
            vec![
                "reconstruct",
                "--model",
                &model,
                "--data",
                &data,
                "--out",
                &hard,
                "--device",
                "cpu",
            ],
            "--out",
        ),
        (
            vec![
                "train", "--resume", &model, "--epochs", "3", "--plot", &model, "--device", "cpu",
            ],
            "--plot",
        ),
        (
            vec![
                "train", "--resume", &model, "--epochs", "3", "--out", &data, "--device", "cpu",
            ],
            "--out",
        ),
    ];
    for (args, flag) in &cases {
        let line = refused(
            args,
            &[
                flag,
                "is the same file as",
                "an output never replaces an input",
            ],
        );
        unchanged(&data, &data_hash);
        unchanged(&model, &model_hash);
        assert!(
            !Path::new(&other).exists(),
            "{args:?}: {other} was written: {line}"
        );
    }
    // Two outputs on one file are refused too, and the run that writes back its --resume file goes on.
    refused(
        &train_args(&data, &["--out", &other, "--metrics", &other]),
        &["--metrics", "is also --out"],
    );
    ok(&[
        "train", "--resume", &model, "--epochs", "2", "--device", "cpu",
    ]);
}

#[test]
fn devices_fifos_and_folders_are_not_outputs() {
    let s = Scratch::new("out-devices");
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "1");
    let fifo = s.0.join("fifo");
    mkfifo(&fifo);
    let fifo = fifo.display().to_string();
    let folder = s.path("folder");
    std::fs::create_dir(&folder).unwrap();
    let mut cases: Vec<(String, &str)> =
        vec![(fifo.clone(), "a FIFO"), (folder.clone(), "a folder")];
    if can_mknod(&s.0) {
        let (null, full) = (s.0.join("null"), s.0.join("full"));
        mknod(&null, 3);
        mknod(&full, 7);
        cases.push((null.display().to_string(), "a character device"));
        cases.push((full.display().to_string(), "a character device"));
    } else {
        common::skipped(
            "devices_fifos_and_folders_are_not_outputs (device nodes): mknod needs root",
        );
    }
    let out = s.path("out.safetensors");
    for (target, kind) in &cases {
        let kind_before = std::fs::symlink_metadata(target).unwrap().file_type();
        let mut all: Vec<Vec<&str>> = vec![
            train_args(&data, &["--out", target]),
            train_args(&data, &["--out", &out, "--metrics", target]),
            train_args(&data, &["--out", &out, "--plot", target]),
        ];
        for cmd in ["encode", "reconstruct"] {
            all.push(vec![
                cmd, "--model", &model, "--data", &data, "--out", target, "--device", "cpu",
            ]);
        }
        for args in &all {
            // A FIFO opened for writing would block: the limit turns a hang into a failure.
            let r = run_limited(args, Duration::from_secs(20), None);
            assert_refused(&r, args, &[target.as_str(), kind]);
            assert_eq!(
                std::fs::symlink_metadata(target).unwrap().file_type(),
                kind_before,
                "{args:?} replaced {target}"
            );
            assert!(!Path::new(&out).exists(), "{args:?} wrote {out}");
        }
    }
    // Inputs must be files too: a FIFO given as data would block its reader.
    let args = train_args(&fifo, &["--out", &out]);
    let r = run_limited(&args, Duration::from_secs(20), None);
    assert_refused(&r, &args, &["--data", "a FIFO"]);
}

#[test]
fn a_missing_or_read_only_folder_is_refused_before_training() {
    let s = Scratch::new("out-folders");
    let data = s.file("d.csv", small_csv());
    let out = s.path("m.safetensors");
    for (flag, path) in [
        ("--plot", s.path("missing/loss.png")),
        ("--metrics", s.path("missing/m.jsonl")),
        ("--out", s.path("missing/m.safetensors")),
    ] {
        let mut args = train_args(&data, &[]);
        if flag != "--out" {
            args.extend(["--out", &out]);
        }
        args.extend([flag, &path]);
        let r = run(&args);
        assert_refused(&r, &args, &[flag, "does not exist"]);
        assert!(
            !r.stdout.contains("epoch"),
            "it trained first: {}",
            r.stdout
        );
        assert!(!Path::new(&out).exists(), "{args:?}: the model was written");
    }
    // A folder nothing can be written in: read-only for a user; immutable for root, whom modes do not stop.
    let locked = s.0.join("locked");
    std::fs::create_dir(&locked).unwrap();
    let root = can_mknod(&s.0);
    let made = if root {
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(&locked)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|st| st.success())
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).is_ok()
    };
    if !made {
        common::skipped("a_missing_or_read_only_folder_is_refused_before_training (read-only folder): cannot make one here");
        return;
    }
    let plot = locked.join("loss.png").display().to_string();
    let args = train_args(&data, &["--out", &out, "--plot", &plot]);
    let r = run(&args);
    if root {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&locked)
            .status();
    }
    assert_refused(&r, &args, &["--plot", "cannot write in folder", "locked"]);
    assert!(!Path::new(&out).exists(), "the model was written");
}

#[test]
fn encode_and_reconstruct_write_csv_to_standard_output_for_dash() {
    let s = Scratch::new("out-stdout");
    let data = s.file("d.csv", small_csv());
    let model = s.path("m.safetensors");
    train_small(&data, &model, "1");
    let file = s.path("codes.csv");
    ok(&[
        "encode", "--model", &model, "--data", &data, "--out", &file, "--device", "cpu",
    ]);
    let r = run(&[
        "encode", "--model", &model, "--data", &data, "--out", "-", "--device", "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, std::fs::read_to_string(&file).unwrap());
    assert!(
        r.stderr.contains("written to standard output"),
        "{}",
        r.stderr
    );
    assert!(!s.0.join("-").exists(), "a file named '-' was written");
    let r = run(&[
        "reconstruct",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        "-",
        "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("Id,label,a,b,c,d\n"), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 41);
    // A model file cannot go to standard output: it is renamed into place when complete.
    refused(&train_args(&data, &["--out", "-"]), &["--out", "'-'"]);
}

#[test]
fn a_second_run_on_the_same_out_is_refused_while_the_first_runs() {
    let s = Scratch::new("out-lock");
    let data = digits();
    let out = s.path("m.safetensors");
    let long = std::process::Command::new(bin())
        .args([
            "train",
            "--data",
            &data,
            "--ignore-columns",
            "digit",
            "--out",
            &out,
            "--epochs",
            "1000000",
            "--device",
            "cpu",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut long = Kill(long);
    // The first run holds the lock once its first checkpoint is written.
    let started = std::time::Instant::now();
    while !Path::new(&out).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run wrote nothing"
        );
        assert!(long.0.try_wait().unwrap().is_none(), "the first run ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = long.0.id().to_string();
    let second = [
        "train",
        "--data",
        &data,
        "--ignore-columns",
        "digit",
        "--out",
        &out,
        "--epochs",
        "1",
        "--device",
        "cpu",
    ];
    refused(
        &second,
        &["--out", "is being written by another tiedae run", &pid],
    );
    refused(
        &[
            "train", "--resume", &out, "--epochs", "1000001", "--device", "cpu",
        ],
        &["--out", "another tiedae run"],
    );
    // Once the first run is gone (killed: no clean exit), its lock goes with it.
    drop(long);
    let r = run(&second);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !s.0.join(".m.safetensors.tiedae-lock").exists(),
        "the lock file stayed"
    );
}

#[test]
fn temporary_files_of_a_killed_run_are_removed_by_the_next() {
    let s = Scratch::new("out-stale");
    let data = s.file("d.csv", small_csv());
    let out = s.path("m.safetensors");
    // What kill -9 during a save leaves: a temporary file named for the output and a process now gone.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let stale = s.0.join(format!(".m.safetensors.tiedae-{pid}.tmp"));
    std::fs::write(&stale, vec![0u8; 16 << 20]).unwrap();
    let unrelated = s.0.join(".notes.tmp");
    std::fs::write(&unrelated, b"mine").unwrap();
    let stdout = ok(&train_args(&data, &["--out", &out]));
    assert!(
        !stale.exists(),
        "the killed run's temporary file is still there"
    );
    assert!(stdout.contains("removed 1 temporary file"), "{stdout}");
    assert!(
        unrelated.exists(),
        "a file that is not tiedae's was removed"
    );
    let left: Vec<String> = std::fs::read_dir(&s.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tiedae-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn os_errors_are_said_once() {
    let s = Scratch::new("out-oserr");
    let folder = s.path("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    let data = s.file("d.csv", small_csv());
    for (args, needles) in [
        (
            vec!["summary", "--model", folder.as_str()],
            vec!["--model", "is a folder"],
        ),
        (
            vec!["eval", "--model", folder.as_str(), "--data", &data],
            vec!["--model", "is a folder"],
        ),
        (
            vec!["summary", "--model", "/nonexistent/m.safetensors"],
            vec!["--model", "does not exist"],
        ),
    ] {
        let line = refused(&args, &needles);
        assert!(line.matches("os error").count() <= 1, "{line}");
        assert!(
            !line.contains("Is a directory (os error 21): Is a directory"),
            "{line}"
        );
    }
}

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
