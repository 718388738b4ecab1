//! A batch too large for the memory is refused before the run starts (the `trainer` binary
//! measures what a training step allocates), with a batch size that fits; the measuring leaves
//! the run as it would have been.

use std::path::Path;
use std::process::{Command, Output};

use burn::prelude::*;

/// The `trainer` binary, limited to `kib` KiB of address space (`ulimit -v`) when given, on two
/// threads (each thread's allocator arena takes address space of its own).
fn trainer(kib: Option<u64>, args: &[&str]) -> Output {
    let limit = kib.map_or(String::new(), |kib| format!("ulimit -v {kib}; "));
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{limit}exec {} {}",
            env!("CARGO_BIN_EXE_trainer"),
            args.join(" ")
        ))
        .env("RAYON_NUM_THREADS", "2")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("sh")
}

#[test]
fn a_batch_too_large_for_the_memory_is_refused_with_one_that_fits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = run.to_str().expect("utf-8");
    // The conv AE's step holds ~230 KiB an image: 8192 images need ~1.8 GiB, in 1 GB.
    let limit = Some(1_000_000);
    let refused = trainer(
        limit,
        &[
            "train",
            "conv-ae",
            "--batch-size",
            "8192",
            "--train-subset",
            "8192",
            "--test-subset",
            "64",
            "--epochs",
            "1",
            "--out",
            out,
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "trained: {stderr}");
    assert!(
        stderr.contains("a training step on batches of 8192 images needs about")
            && stderr.contains("this process can get"),
        "{stderr}"
    );
    assert!(!run.exists(), "the refused run left {}", run.display());
    // The size it suggests trains under the same limit.
    let suggested = stderr
        .split("try --batch-size ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no batch size suggested: {stderr}"));
    assert!((256..8192).contains(&suggested), "{suggested}");
    let bench = trainer(
        limit,
        &[
            "bench",
            "conv-ae",
            "--batch-size",
            &suggested.to_string(),
            "--batches",
            "1",
        ],
    );
    assert!(
        bench.status.success(),
        "--batch-size {suggested}: {}",
        String::from_utf8_lossy(&bench.stderr)
    );
}

/// The run's metrics without the timing columns (`images_per_second`, `seconds`: the last two).
fn losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .expect("metrics.csv")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            fields[..fields.len() - 2].join(",")
        })
        .collect()
}

/// The probe steps draw from a stream of their own and leave the model alone: the binary (which
/// measures, and says so) trains what the library (which cannot, without the counting
/// allocator) trains.
#[test]
fn measuring_the_batch_leaves_the_run_as_it_was() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (measured, plain) = (dir.path().join("measured"), dir.path().join("plain"));
    let args = [
        "train",
        "denoising-ae",
        "--batch-size",
        "512",
        "--train-subset",
        "1024",
        "--test-subset",
        "64",
        "--epochs",
        "1",
        "--out",
        measured.to_str().expect("utf-8"),
    ];
    let out = trainer(None, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The user is told of the check's pause before the first epoch, and what it found.
    assert!(
        stderr.contains("checking that batches of 512 fit in memory")
            && stderr.contains("a step on batches of 512 needs about")
            && stderr.contains("this process can get (checked in"),
        "{stderr}"
    );
    let config = trainer::run::load_config(&measured).expect("config");
    // On as many threads as the binary had, as it runs: the whole command in the pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("thread pool")
        .install(|| {
            trainer::training::train(
                &config,
                &trainer::data::bundled_dir(),
                &plain,
                &[Device::flex()],
                |_| {},
            )
        })
        .expect("trains");
    assert_eq!(losses(&measured), losses(&plain));
}
