//! Outputs never destroy inputs, through the real binary: an output that is an input under any name (the
//! same path, a hard link, a symbolic link), a device, a FIFO, a folder, or in a missing or read-only folder
//! is refused before any work, with one line naming the flag and the path; `-` is standard output where a
//! CSV can go there; a second run on the same output is refused while the first holds its lock; the
//! temporary files of a killed run are removed by the next; OS errors are not repeated.
//! `outputs_property.rs` runs random commands on random combinations of such paths.

mod common;

use common::binary::*;
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
