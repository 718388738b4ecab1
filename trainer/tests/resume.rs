//! Kill -9 in the middle of training, then resume: the run ends with every epoch's metrics and
//! weights that load, having lost at most the epoch that was running.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use burn::prelude::*;
use trainer::run::{load_config, load_run};

const EPOCHS: usize = 3;

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

/// The epoch numbers in a run's metrics.csv.
fn epochs_done(dir: &std::path::Path) -> Vec<usize> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    csv.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .next()
                .and_then(|e| e.parse().ok())
                .expect("epoch")
        })
        .collect()
}

#[test]
fn killed_run_resumes_and_completes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let mut child = trainer()
        .args([
            "train",
            "conv-vae",
            "--epochs",
            &EPOCHS.to_string(),
            "--batch-size",
            "64",
        ])
        .args(["--train-subset", "2048", "--test-subset", "256", "--out"])
        .arg(&run)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trainer");
    // Kill it (SIGKILL) as soon as the first epoch has been reported, i.e. mid-training.
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let first = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("epoch   1"));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert!(first.is_some(), "the first epoch was never reported");

    // Whatever was on disk at the kill is whole: the config, and weights that load.
    let done = epochs_done(&run);
    assert!(!done.is_empty() && done.len() <= EPOCHS, "{done:?}");
    assert_eq!(done, (1..=done.len()).collect::<Vec<_>>());
    load_run(&run, &Device::flex()).expect("the checkpoint loads");

    let out = trainer().arg("resume").arg(&run).output().expect("resume");
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(epochs_done(&run), (1..=EPOCHS).collect::<Vec<_>>());
    load_run(&run, &Device::flex()).expect("the final weights load");

    // Resuming a finished run does nothing; asking for more epochs extends it.
    let more = trainer()
        .args(["resume", "--epochs", "4"])
        .arg(&run)
        .output()
        .expect("resume");
    assert!(
        more.status.success(),
        "{}",
        String::from_utf8_lossy(&more.stderr)
    );
    assert_eq!(epochs_done(&run), [1, 2, 3, 4]);
    assert_eq!(load_config(&run).expect("config").epochs, 4);
    let fewer = trainer()
        .args(["resume", "--epochs", "2"])
        .arg(&run)
        .output()
        .expect("resume");
    assert!(!fewer.status.success(), "fewer epochs than done must fail");
    assert!(
        String::from_utf8_lossy(&fewer.stderr).contains("done 4 epochs already"),
        "{}",
        String::from_utf8_lossy(&fewer.stderr)
    );
}

#[test]
fn a_run_killed_before_its_first_checkpoint_starts_afresh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    // What `trainer train` leaves behind when killed during epoch 1: the config alone.
    let config = trainer::run::TrainingConfig::new(trainer::model::ModelConfig::ConvVae(
        trainer::model::ConvVaeConfig::new(),
    ))
    .with_epochs(1)
    .with_batch_size(64)
    .with_train_subset(Some(512))
    .with_test_subset(Some(128));
    trainer::run::save_config(&config, &run).expect("config");
    let out = trainer().arg("resume").arg(&run).output().expect("resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(epochs_done(&run), [1]);
}

#[test]
fn resuming_a_missing_run_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = trainer()
        .arg("resume")
        .arg(dir.path().join("nothing-here"))
        .output()
        .expect("resume");
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("nothing-here"), "{message}");
}
