//! The `trainer` binary's own behaviour around its output streams.

use std::process::Command;

/// The `trainer` binary these tests build.
fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

/// A stderr that cannot be written (a full device, a pipe whose reader is gone: `2>&1 | head`)
/// does not stop a training: its progress lines are dropped, its run is whole. `eprintln!` had
/// panicked there (status 101) after the epochs the reader took.
#[test]
fn a_full_or_closed_stderr_does_not_stop_training() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut stderrs: Vec<(&str, std::process::Stdio)> = vec![("closed pipe", writer.into())];
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        stderrs.push(("/dev/full", full.into()));
    }
    for (i, (what, stderr)) in stderrs.into_iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        let status = trainer()
            .args(["train", "dense-ae", "--epochs", "3", "--batch-size", "32"])
            .args(["--train-subset", "64", "--test-subset", "32", "--out"])
            .arg(&run)
            .stderr(stderr)
            .status()
            .expect("run trainer");
        assert!(status.success(), "stderr {what}: {status}");
        let metrics = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics.csv");
        assert_eq!(metrics.lines().count(), 1 + 3, "stderr {what}: {metrics}");
    }
}

/// `train` into a folder with what is left of a run (its config gone, say) is refused and the
/// files are left as they were: it had overwritten the weights and the metrics.
#[test]
fn train_refuses_a_folder_with_files_of_a_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let train = || {
        trainer()
            .args(["train", "dense-ae", "--epochs", "1", "--batch-size", "32"])
            .args(["--train-subset", "64", "--test-subset", "32", "--out"])
            .arg(&run)
            .output()
            .expect("run trainer")
    };
    assert!(train().status.success());
    std::fs::remove_file(run.join("config.json")).expect("rm config");
    let weights = std::fs::read(run.join("model.bpk")).expect("weights");
    let again = train();
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("holds model.bpk, a file of a run"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(run.join("model.bpk")).expect("weights"),
        weights
    );
    // Staged weights alone (an epoch's, not yet renamed) are a run's file too.
    for entry in std::fs::read_dir(&run).expect("run") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    std::fs::write(run.join("model-2.bpk"), &weights).expect("staged");
    let message = String::from_utf8_lossy(&train().stderr).into_owned();
    assert!(message.contains("holds model-2.bpk"), "{message}");
}

/// A bad setting given to `train` is said as itself before anything is made.
#[test]
fn a_bad_setting_is_said_before_training() {
    for (flags, said) in [
        (["--epochs", "0"], "Error: epochs must be at least 1"),
        (["--ema", "1"], "Error: ema_decay 1 is not a decay per step"),
        (
            ["--ema", "NaN"],
            "Error: ema_decay NaN is not a decay per step",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let run = dir.path().join("run");
        let out = trainer()
            .args(["train", "dense-ae"])
            .args(flags)
            .arg("--out")
            .arg(&run)
            .output()
            .expect("run trainer");
        assert!(!out.status.success());
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(message.starts_with(said), "{message}");
        assert!(!run.exists());
    }
}

/// `bench` checks its settings before its table: no header above an error.
#[test]
fn bench_checks_its_settings_before_printing() {
    let out = trainer()
        .args(["bench", "dense-ae", "--batch-size", "0"])
        .output()
        .expect("run trainer");
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("batch_size must be at least 1"),
        "{message}"
    );
}

/// A warm-up longer than the run is refused before anything is made (its learning rate would
/// never reach `--lr`: the run had trained at ~0 and exited 0).
#[test]
fn a_warmup_longer_than_the_run_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let train = |warmup: &str| {
        trainer()
            .args(["train", "dense-ae", "--epochs", "1", "--batch-size", "32"])
            .args([
                "--train-subset",
                "64",
                "--test-subset",
                "32",
                "--warmup-steps",
                warmup,
            ])
            .arg("--out")
            .arg(&run)
            .output()
            .expect("run trainer")
    };
    let out = train("3");
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("--warmup-steps 3 is more than the run's 2 optimisation steps"),
        "{message}"
    );
    assert!(!run.exists());
    assert!(train("2").status.success());
}

/// A VAE's hidden width of 1 is refused before training: its encoder trains but could not be
/// exported (tract fails to optimise the 1-wide layer after the flattened image).
#[test]
fn a_hidden_width_of_one_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    for family in ["fc-vae", "conv-vae"] {
        let run = dir.path().join(family);
        let out = trainer()
            .args(["train", family, "--hidden", "1", "--epochs", "1", "--out"])
            .arg(&run)
            .output()
            .expect("run trainer");
        assert!(!out.status.success());
        assert!(!run.exists());
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(
            message.contains("hidden width of at least 2, not 1"),
            "{message}"
        );
    }
}

/// `pca` prints one row per number of components, each reconstructing the test set better than
/// fewer do; a number no PCA of 28x28 images has is refused by name.
#[test]
fn pca_prints_a_row_per_component_count_and_refuses_impossible_ones() {
    let out = trainer()
        .args(["pca", "--components", "2,8"])
        .output()
        .expect("run trainer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mse: Vec<(usize, f64)> = stdout
        .lines()
        .skip(1)
        .map(|row| {
            let cells: Vec<&str> = row.split_whitespace().collect();
            (
                cells[0].parse().expect("components"),
                cells[1].parse().expect("PCA MSE"),
            )
        })
        .collect();
    assert_eq!(mse.len(), 2, "{stdout}");
    assert_eq!((mse[0].0, mse[1].0), (2, 8));
    assert!(
        mse[1].1 < mse[0].1 && mse[0].1 < 0.07,
        "8 components must reconstruct better than 2: {stdout}"
    );
    for bad in ["0", "785"] {
        let out = trainer()
            .args(["pca", "--components", bad])
            .output()
            .expect("run trainer");
        assert!(!out.status.success(), "--components {bad} was taken");
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(message.contains("not in 1..=784"), "{message}");
    }
}
