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

/// Trains the dense AE's [`one_short_epoch`] on 64 images into `run`, on the CPU.
fn train_a_short_dense_run(run: &std::path::Path) {
    trainer::training::train(
        &one_short_epoch("dense-ae", 64),
        &trainer::data::bundled_dir(),
        run,
        &[Device::flex()],
        |_| {},
    )
    .expect("trains");
}

/// One epoch of `family` on `images` training images (batch 64), tested on a quarter as many.
fn one_short_epoch(family: &str, images: usize) -> trainer::run::TrainingConfig {
    trainer::run::TrainingConfig::new(
        trainer::model::ModelConfig::default_for(family).expect("family"),
    )
    .with_epochs(1)
    .with_batch_size(64)
    .with_train_subset(Some(images))
    .with_test_subset(Some(images / 4))
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

    // The killed trainer's lock died with it.
    drop(trainer::run::RunLock::take(&run).expect("a killed run leaves its folder unlocked"));
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
    let config = one_short_epoch("conv-vae", 512);
    trainer::run::save_config(&config, &run).expect("config");
    let out = trainer().arg("resume").arg(&run).output().expect("resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(epochs_done(&run), [1]);
}

/// Resuming a run that has done its epochs trains nothing and says so (it had said "wrote").
#[test]
fn resuming_a_finished_run_says_there_is_nothing_to_train() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train_a_short_dense_run(&run);
    let weights = std::fs::read(run.join("model.bpk")).expect("weights");
    let out = trainer().arg("resume").arg(&run).output().expect("resume");
    assert!(out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("has done its 1 epoch already: nothing to train"),
        "{message}"
    );
    assert!(!message.contains("wrote"), "{message}");
    assert_eq!(
        std::fs::read(run.join("model.bpk")).expect("weights"),
        weights
    );
    assert_eq!(epochs_done(&run), [1]);
}

#[test]
fn a_run_being_trained_is_not_trained_by_a_second_trainer_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let mut child = trainer()
        .args([
            "train",
            "dense-ae",
            "--epochs",
            "1000",
            "--batch-size",
            "64",
        ])
        .args(["--train-subset", "256", "--test-subset", "64", "--out"])
        .arg(&run)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trainer");
    let stderr = child.stderr.take().expect("stderr");
    let first = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("epoch   1"));
    assert!(first.is_some(), "the first epoch was never reported");
    // A second trainer on the same run, while the first trains: refused (not "failed"), its
    // config untouched (a resume that got through would save its --epochs there).
    let second = trainer()
        .args(["resume", "--epochs", "2000"])
        .arg(&run)
        .output()
        .expect("resume");
    let third = trainer()
        .args(["train", "dense-ae", "--out"])
        .arg(&run)
        .output()
        .expect("train");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    for (what, out) in [("resume", second), ("train", third)] {
        assert!(
            !out.status.success(),
            "a second trainer ({what}) took the run"
        );
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(
            message.contains("is being trained by another process")
                && !message.contains("training failed"),
            "{what}: {message}"
        );
    }
    assert_eq!(
        load_config(&run).expect("config").epochs,
        1000,
        "the second trainer changed the run"
    );
}

#[test]
fn train_into_a_folder_another_trainer_holds_is_refused_and_writes_nothing() {
    use trainer::{data::bundled_dir, run::Occupied, training};
    let dir = tempfile::tempdir().expect("temp dir");
    let device = Device::flex();
    let devices = std::slice::from_ref(&device);
    let lock = trainer::run::RunLock::take(dir.path()).expect("lock");
    let error = training::train(
        &one_short_epoch("dense-ae", 128),
        &bundled_dir(),
        dir.path(),
        devices,
        |_| {},
    )
    .expect_err("trained into a locked folder");
    assert!(
        matches!(error.downcast_ref(), Some(Occupied::Busy { .. })),
        "{error:#}"
    );
    assert!(!dir.path().join("config.json").exists(), "wrote a config");
    assert!(dir.path().is_dir(), "removed a folder it had not made");
    // Nor does resume touch a locked run; once the lock is given back, it trains.
    let run = dir.path().join("run");
    training::train(
        &one_short_epoch("dense-ae", 128),
        &bundled_dir(),
        &run,
        devices,
        |_| {},
    )
    .expect("trains");
    let held = trainer::run::RunLock::take(&run).expect("lock");
    let error = training::resume(&run, &bundled_dir(), devices, Some(2), |_| {})
        .expect_err("resumed a locked run");
    assert!(
        matches!(error.downcast_ref(), Some(Occupied::Busy { .. })),
        "{error:#}"
    );
    assert_eq!(epochs_done(&run), [1]);
    drop((lock, held));
    training::resume(&run, &bundled_dir(), devices, Some(2), |_| {}).expect("resumes");
    assert_eq!(epochs_done(&run), [1, 2]);
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

#[test]
fn a_run_with_weights_but_no_metrics_or_the_reverse_is_refused_and_left_alone() {
    use trainer::{data::bundled_dir, run::TrainingConfig, training};
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let config: TrainingConfig = one_short_epoch("dense-ae", 128);
    let device = Device::flex();
    let devices = std::slice::from_ref(&device);
    training::train(&config, &bundled_dir(), &run, devices, |_| {}).expect("trains");
    let files = |run: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(run)
            .expect("run dir")
            .map(|e| {
                let e = e.expect("entry");
                let bytes = std::fs::read(e.path()).expect("file");
                (e.file_name(), bytes)
            })
            .collect();
        names.sort();
        names
    };
    for (missing, named) in [
        ("metrics.csv", "records no epoch"),
        ("model.bpk", "is missing"),
    ] {
        let damaged = dir.path().join(format!("without-{missing}"));
        std::fs::create_dir(&damaged).expect("dir");
        for (name, bytes) in files(&run) {
            if name != missing {
                std::fs::write(damaged.join(name), bytes).expect("copy");
            }
        }
        let before = files(&damaged);
        let err = training::resume(&damaged, &bundled_dir(), devices, Some(2), |_| {})
            .expect_err("a damaged run");
        let message = format!("{err:#}");
        assert!(message.contains(named), "{message}");
        assert!(message.contains("damaged"), "{message}");
        assert!(files(&damaged) == before, "{missing}: the run was changed");
    }
    // Metrics older than the weights: epoch 1 recorded, but only epoch 3's optimizer
    // checkpoint there (as when an older metrics.csv is put back over a longer run's; one
    // epoch further on is what an interruption between the checkpoint and the metrics row
    // leaves, and resumes).
    // A copy of the run named `to`, its optimizer checkpoint renamed to `checkpoint`'s.
    let copy_with_checkpoint = |to: &str, checkpoint: &str| {
        let copy = dir.path().join(to);
        std::fs::create_dir(&copy).expect("dir");
        for (name, bytes) in files(&run) {
            let name = name.to_string_lossy().replace("optimizer-1", checkpoint);
            std::fs::write(copy.join(name), bytes).expect("copy");
        }
        copy
    };
    let damaged = copy_with_checkpoint("metrics-behind", "optimizer-3");
    let before = files(&damaged);
    let err = training::resume(&damaged, &bundled_dir(), devices, Some(3), |_| {})
        .expect_err("a damaged run");
    let message = format!("{err:#}");
    assert!(
        message.contains("optimizer-3.bpk is there: the run is damaged"),
        "{message}"
    );
    assert!(files(&damaged) == before, "the run was changed");
    // Epoch 2's checkpoint without epoch 1's: a run without its recorded checkpoint,
    // interrupted after the next epoch's checkpoint and before its metrics row. It resumes.
    let interrupted = copy_with_checkpoint("interrupted", "optimizer-2");
    training::resume(&interrupted, &bundled_dir(), devices, Some(2), |_| {})
        .expect("an interrupted run resumes");
}

#[test]
fn a_resumed_run_ends_exactly_as_the_straight_one() {
    // The dense AE draws no random numbers while training; the denoising AE draws its input
    // noise, the FC VAE its latent samples.
    for family in ["dense-ae", "denoising-ae", "fc-vae"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (straight, split) = straight_and_resumed(two_short_epochs(family), dir.path());
        let (a, b) = (evaluate(&straight), evaluate(&split));
        assert_eq!(
            a.loss, b.loss,
            "{family}: resumed run differs from the straight one"
        );
        assert_eq!(a.output.mse, b.output.mse, "{family}");
    }
}

/// With weight averaging the run's weights are the average, training goes on from the trained
/// weights saved beside them (`trained-<epoch>.bpk`, the last epoch's only), and a resumed run
/// ends as the straight one (up to float rounding: the average is read back from its file).
#[test]
fn an_averaging_run_resumes_from_its_trained_weights() {
    use trainer::training::{self, Progress};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = two_short_epochs("fc-vae").with_ema_decay(Some(0.9));
    let (straight, split) = straight_and_resumed(config.clone(), dir.path());
    let names: Vec<String> = std::fs::read_dir(&split)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("trained-"))
        .collect();
    assert_eq!(
        names,
        ["trained-2.bpk"],
        "only the last trained weights are kept"
    );
    let (a, b) = (evaluate(&straight), evaluate(&split));
    assert!(
        (a.loss - b.loss).abs() < 1e-4 * a.loss,
        "resumed run differs from the straight one: {} vs {}",
        a.loss,
        b.loss
    );
    // The trained weights went on from `trained-1.bpk` (not from the average): bit for bit the
    // straight run's. And the saved weights are not the trained ones.
    let device = Device::flex();
    let trained = |run: &std::path::Path| {
        let weights =
            trainer::run::load_weights(&run.join("trained-2.bpk"), &config.model, &device)
                .expect("trained weights load");
        training::evaluate_images(&weights, &config.model, &test_images(), 128, &device)
            .expect("eval")
    };
    let (trained_straight, trained_split) = (trained(&straight), trained(&split));
    assert_eq!(trained_straight.loss, trained_split.loss);
    assert_eq!(trained_straight.output.mse, trained_split.output.mse);
    assert_ne!(trained_split.loss, b.loss);

    // One epoch of `config` at `seed` into `dir/name`.
    let one_epoch = |name: &str, seed: u64| {
        let run = dir.path().join(name);
        training::train(
            &config.clone().with_epochs(1).with_seed(seed),
            &trainer::data::bundled_dir(),
            &run,
            std::slice::from_ref(&device),
            |_| {},
        )
        .expect("trains");
        run
    };
    // Another run's trained weights (other parameters) are refused, and the run left as it was.
    let (run, other) = (one_epoch("run", 42), one_epoch("other", 7));
    std::fs::copy(other.join("trained-1.bpk"), run.join("trained-1.bpk")).expect("copy");
    let err = training::resume(
        &run,
        &trainer::data::bundled_dir(),
        std::slice::from_ref(&device),
        Some(2),
        |_| {},
    )
    .expect_err("another run's trained weights");
    assert!(
        format!("{err:#}").contains("are not the trained weights of"),
        "{err:#}"
    );
    assert_eq!(epochs_done(&run), [1]);

    // Without its trained weights the run goes on from the average, and says so.
    let lost = one_epoch("lost", 42);
    std::fs::remove_file(lost.join("trained-1.bpk")).expect("remove");
    let mut seen = Vec::new();
    training::resume(
        &lost,
        &trainer::data::bundled_dir(),
        std::slice::from_ref(&device),
        Some(2),
        |p| {
            if let Progress::TrainedWeightsMissing { epoch } = p {
                seen.push(epoch);
            }
        },
    )
    .expect("resumes");
    assert_eq!(seen, [1]);
}

/// Two epochs of `family` on 512 training images (batch 64), tested on 128.
fn two_short_epochs(family: &str) -> trainer::run::TrainingConfig {
    trainer::run::TrainingConfig::new(
        trainer::model::ModelConfig::default_for(family).expect("family"),
    )
    .with_epochs(2)
    .with_batch_size(64)
    .with_train_subset(Some(512))
    .with_test_subset(Some(128))
}

/// The first 128 test images.
fn test_images() -> trainer::data::Mnist {
    use trainer::data::{Mnist, Split, bundled_dir};
    let mut test = Mnist::load(&bundled_dir(), Split::Test).expect("test set");
    test.truncate(128);
    test
}

/// The run in `run` evaluated on [`test_images`].
fn evaluate(run: &std::path::Path) -> trainer::training::Evaluation {
    let device = Device::flex();
    let (config, model) = load_run(run, &device).expect("loads");
    trainer::training::evaluate_images(&model, &config.model, &test_images(), 128, &device)
        .expect("eval")
}

/// `config` trained straight into `dir/straight`, and for one epoch then resumed for the rest
/// into `dir/split` (checking that only the last optimizer checkpoint is kept). Both end with
/// the same weights only if the data order, Adam's moments and the random draws of the later
/// epochs are restored.
fn straight_and_resumed(
    config: trainer::run::TrainingConfig,
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use trainer::{data::bundled_dir, training};
    let device = Device::flex();
    let (straight, split) = (dir.join("straight"), dir.join("split"));
    training::train(
        &config,
        &bundled_dir(),
        &straight,
        std::slice::from_ref(&device),
        |_| {},
    )
    .expect("trains");
    let first = config.clone().with_epochs(1);
    training::train(
        &first,
        &bundled_dir(),
        &split,
        std::slice::from_ref(&device),
        |_| {},
    )
    .expect("trains");
    assert!(split.join("optimizer-1.bpk").is_file());
    training::resume(
        &split,
        &bundled_dir(),
        std::slice::from_ref(&device),
        Some(config.epochs),
        |_| {},
    )
    .expect("resumes");
    let files: Vec<String> = std::fs::read_dir(&split)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("optimizer-"))
        .collect();
    assert_eq!(
        files,
        ["optimizer-2.bpk"],
        "only the last checkpoint is kept"
    );
    (straight, split)
}

#[test]
fn a_run_killed_between_its_first_weights_and_metrics_starts_afresh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let config = one_short_epoch("dense-ae", 256);
    trainer::training::train(
        &config,
        &trainer::data::bundled_dir(),
        &run,
        &[Device::flex()],
        |_| {},
    )
    .expect("trains");
    // What a kill after epoch 1's weights were staged but before its metrics row leaves behind:
    // the staged weights, and neither a metrics row nor the run's own weights.
    std::fs::rename(run.join("model.bpk"), run.join("model-1.bpk")).expect("stage");
    std::fs::remove_file(run.join("metrics.csv")).expect("rm metrics");
    let out = trainer().arg("resume").arg(&run).output().expect("resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(epochs_done(&run), [1]);
    assert!(run.join("model.bpk").exists());
    assert!(!run.join("model-1.bpk").exists());
}

#[test]
fn a_run_keeps_its_dataset_and_is_not_trained_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, run) = (dir.path().join("mnist-copy"), dir.path().join("run"));
    std::fs::create_dir_all(&data).expect("mkdir");
    for entry in std::fs::read_dir(trainer::data::bundled_dir()).expect("bundled MNIST") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, data.join(path.file_name().expect("name"))).expect("copy");
    }
    let train = |data: &std::path::Path| {
        trainer()
            .args(["train", "dense-ae", "--epochs", "1", "--batch-size", "64"])
            .args(["--train-subset", "256", "--test-subset", "64", "--data"])
            .arg(data)
            .arg("--out")
            .arg(&run)
            .output()
            .expect("train")
    };
    let out = train(&data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        load_config(&run).expect("config").data.as_deref(),
        Some(&*data)
    );

    // Another `train` into the same directory is refused, and the run is left as it was.
    let again = train(&trainer::data::bundled_dir());
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains("already holds a run"), "{message}");
    assert_eq!(
        load_config(&run).expect("config").data.as_deref(),
        Some(&*data)
    );

    // `resume` trains on the run's own dataset, not the bundled one: without it, it stops.
    std::fs::remove_dir_all(&data).expect("rm data");
    let resumed = trainer()
        .args(["resume", "--epochs", "2"])
        .arg(&run)
        .output()
        .expect("resume");
    assert!(!resumed.status.success());
    let message = String::from_utf8_lossy(&resumed.stderr);
    assert!(message.contains("mnist-copy"), "{message}");
    assert_eq!(epochs_done(&run), [1]);
}

#[test]
fn a_run_killed_around_an_epochs_metrics_row_resumes_from_the_epoch_the_row_says() {
    use trainer::{data::bundled_dir, model::ModelConfig, run::TrainingConfig, training};
    let config = TrainingConfig::new(ModelConfig::default_for("dense-ae").expect("family"))
        .with_epochs(2)
        .with_batch_size(64)
        .with_train_subset(Some(256))
        .with_test_subset(Some(64));
    let device = Device::flex();
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &str, epochs: usize| {
        let path = dir.path().join(name);
        training::train(
            &config.clone().with_epochs(epochs),
            &bundled_dir(),
            &path,
            std::slice::from_ref(&device),
            |_| {},
        )
        .expect("trains");
        path
    };
    let (straight, after_row, before_row) = (run("straight", 2), run("a", 1), run("b", 1));
    let copy = |from: &str, to: &std::path::Path, name: &str| {
        std::fs::copy(straight.join(from), to.join(name)).expect("copy");
    };
    // Killed after epoch 2's metrics row, before its weights were renamed into place.
    copy("metrics.csv", &after_row, "metrics.csv");
    copy("optimizer-2.bpk", &after_row, "optimizer-2.bpk");
    copy("model.bpk", &after_row, "model-2.bpk");
    // Killed after epoch 2's weights were written, before its metrics row.
    copy("optimizer-2.bpk", &before_row, "optimizer-2.bpk");
    std::fs::write(before_row.join("model-2.bpk"), b"cut short").expect("write");
    std::fs::write(before_row.join(".model-2.bpk.tmp-4294967-0"), b"cut").expect("write");
    for stopped in [&after_row, &before_row] {
        training::resume(
            stopped,
            &bundled_dir(),
            std::slice::from_ref(&device),
            Some(2),
            |_| {},
        )
        .expect("resumes");
        assert!(!stopped.join("model-2.bpk").exists());
        assert!(!stopped.join(".model-2.bpk.tmp-4294967-0").exists());
        assert_eq!(epochs_done(stopped), [1, 2]);
    }
    // The first continues from epoch 2's weights, not epoch 1's.
    let weights = |run: &std::path::Path| std::fs::read(run.join("model.bpk")).expect("weights");
    assert!(weights(&after_row) == weights(&straight));
    // The second trained epoch 2 again from epoch 1's weights and Adam state (not the stale
    // epoch-2 state beside them): the dense AE is deterministic, so it ends as the straight run.
    let mut test =
        trainer::data::Mnist::load(&bundled_dir(), trainer::data::Split::Test).expect("test set");
    test.truncate(64);
    let eval = |run: &std::path::Path| {
        let (config, model) = load_run(run, &device).expect("loads");
        training::evaluate_images(&model, &config.model, &test, 64, &device).expect("eval")
    };
    let (a, b) = (eval(&straight), eval(&before_row));
    assert_eq!((a.loss, a.output.mse), (b.loss, b.output.mse));

    // Staged weights of the recorded epoch that do not load (damaged since: they are written
    // whole) are an error, and the run's own weights stay: nothing is renamed over them.
    let damaged = run("c", 1);
    copy("metrics.csv", &damaged, "metrics.csv");
    let own = std::fs::read(damaged.join("model.bpk")).expect("weights");
    std::fs::write(damaged.join("model-2.bpk"), &own[..1000]).expect("write");
    let err = training::resume(
        &damaged,
        &bundled_dir(),
        std::slice::from_ref(&device),
        Some(3),
        |_| {},
    )
    .expect_err("damaged staged weights");
    assert!(
        format!("{err:#}").contains("nothing was changed"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read(damaged.join("model.bpk")).expect("weights"),
        own
    );
    assert!(damaged.join("model-2.bpk").exists());
}

#[test]
fn a_flag_the_family_does_not_use_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = trainer()
        .args(["train", "camera-denoiser", "--train-subset", "64", "--out"])
        .arg(&run)
        .output()
        .expect("train");
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("--train-subset and --test-subset are for dense-ae"),
        "{message}"
    );
    assert!(!run.exists());
}

/// Sizes far past any useful model, or a batch past MNIST, are refused before anything is
/// written (they had aborted the process asking for hundreds of GB); a run that fails before its
/// first epoch is recorded leaves no directory behind, so the same --out can be trained again.
#[test]
fn absurd_sizes_are_refused_and_a_failed_run_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let fails = |args: &[&str], message: &str| {
        let out = trainer().args(args).output().expect("trainer");
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!run.exists(), "{args:?} left {}", run.display());
    };
    let out = run.to_str().expect("utf-8");
    fails(
        &["train", "dense-ae", "--latent", "1000000000", "--out", out],
        "a dense-ae needs a latent size from 1 to 16384, not 1000000000",
    );
    fails(
        &["train", "conv-vae", "--channels", "100000", "--out", out],
        "needs channels from 1 to 1024",
    );
    fails(
        &["train", "fc-vae", "--batch-size", "100000", "--out", out],
        "batch_size 100000 is more than 65536",
    );
    fails(
        &[
            "bench",
            "dense-ae",
            "--batch-size",
            "100000",
            "--batches",
            "1",
        ],
        "batch_size 100000 is more than 65536",
    );
    fails(&["bench", "dense-ae", "--batches", "0"], "--batches");
    // Training starts (the config is written), then the photographs cannot give such patches.
    fails(
        &[
            "train",
            "camera-denoiser",
            "--patch",
            "100000",
            "--patches",
            "64",
            "--epochs",
            "1",
            "--out",
            out,
        ],
        "is smaller than a 100000x100000 patch",
    );
}

/// Weights with a NaN in them (training stops at a non-finite loss, so they were damaged since)
/// are refused when a run is loaded, instead of evaluations and pictures made of NaN.
#[test]
fn weights_with_a_nan_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let device = Device::flex();
    train_a_short_dense_run(&run);
    load_run(&run, &device).expect("the run loads");
    // The file ends with the last parameter's values (little-endian f32): the last one NaN.
    let mut bytes = std::fs::read(run.join("model.bpk")).expect("weights");
    let at = bytes.len() - 4;
    bytes[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(run.join("model.bpk"), &bytes).expect("write");
    let err = load_run(&run, &device).expect_err("a NaN weight");
    assert!(
        err.to_string().contains("a weight is NaN or infinite"),
        "{err}"
    );
}

/// A metrics row cut short or garbled is refused by `resume` (which would append to it), not
/// only later by `pictures`; the file stays as it was.
#[test]
fn a_damaged_metrics_row_is_refused_by_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let device = Device::flex();
    let data = trainer::data::bundled_dir();
    train_a_short_dense_run(&run);
    let metrics = run.join("metrics.csv");
    let header = std::fs::read_to_string(&metrics).expect("metrics");
    let header = header.lines().next().expect("a header");
    let damaged = format!("{header}\n1,0.65,abc\n");
    std::fs::write(&metrics, &damaged).expect("write");
    let err =
        trainer::training::resume(&run, &data, std::slice::from_ref(&device), Some(2), |_| {})
            .expect_err("a damaged row");
    assert!(format!("{err:#}").contains("is damaged"), "{err:#}");
    assert_eq!(std::fs::read_to_string(&metrics).expect("metrics"), damaged);
    // `pictures` refuses it too, before it makes its folder.
    let pictures = dir.path().join("pictures");
    trainer::pictures::write_pictures(&run, &data, &pictures, &device).expect_err("damaged");
    assert!(!pictures.exists(), "an empty pictures folder was left");
    // A header and no epoch: no loss curves (an empty chart had been drawn), the rest drawn.
    std::fs::write(&metrics, format!("{header}\n")).expect("write");
    let written =
        trainer::pictures::write_pictures(&run, &data, &pictures, &device).expect("pictures");
    assert!(!written.is_empty());
    assert!(!pictures.join("loss_curves.png").exists());
}

/// `pictures` writes its pictures as one set: a folder where one of them goes leaves those
/// already there as they were. A file named as the pictures' folder is said before any drawing.
#[test]
fn pictures_are_written_all_or_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let device = Device::flex();
    let data = trainer::data::bundled_dir();
    train_a_short_dense_run(&run);
    let pictures = dir.path().join("pictures");
    std::fs::create_dir_all(pictures.join("reconstructions.png")).expect("mkdir");
    std::fs::write(pictures.join("loss_curves.png"), b"old").expect("old picture");
    let err = trainer::pictures::write_pictures(&run, &data, &pictures, &device)
        .expect_err("a folder in the way");
    assert!(
        format!("{err:#}").contains("cannot write")
            && format!("{err:#}").contains("reconstructions.png"),
        "{err:#}"
    );
    assert_eq!(
        std::fs::read(pictures.join("loss_curves.png")).expect("kept"),
        b"old"
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let err = trainer::pictures::write_pictures(&run, &data, &file, &device)
        .expect_err("a file as the folder");
    assert!(
        format!("{err:#}").contains("it is a file, not a folder to write into"),
        "{err:#}"
    );
}

/// A resumed run tells its caller when Adam's saved state is missing (it then starts afresh,
/// and the run cannot end as the straight one would), and only then.
#[test]
fn a_missing_optimizer_state_is_reported_on_resume() {
    use trainer::training::{self, Progress};
    let dir = tempfile::tempdir().expect("temp dir");
    let device = Device::flex();
    let data = trainer::data::bundled_dir();
    let afresh = |run: &std::path::Path| {
        let mut seen = Vec::new();
        training::resume(run, &data, std::slice::from_ref(&device), Some(2), |p| {
            if let Progress::AdamAfresh { epoch } = p {
                seen.push(epoch);
            }
        })
        .expect("resumes");
        seen
    };
    let runs = ["kept", "lost"].map(|name| {
        let run = dir.path().join(name);
        train_a_short_dense_run(&run);
        run
    });
    std::fs::remove_file(runs[1].join("optimizer-1.bpk")).expect("remove");
    assert_eq!(afresh(&runs[0]), Vec::<usize>::new());
    assert_eq!(afresh(&runs[1]), [1]);
}

/// Adam's saved state of another run (Burn would drop it without a word and start afresh) or
/// with a NaN in it (training would stop at a NaN loss and blame the learning rate) is refused
/// when the run is resumed, and the run is left as it was.
#[test]
fn another_runs_or_a_damaged_optimizer_state_is_refused_on_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = trainer::data::bundled_dir();
    let runs = ["ours", "other", "damaged"].map(|name| {
        let run = dir.path().join(name);
        train_a_short_dense_run(&run);
        run
    });
    let state = |run: &std::path::Path| run.join("optimizer-1.bpk");
    std::fs::copy(state(&runs[1]), state(&runs[0])).expect("copy");
    // The moments are the file's last bytes: write a NaN over one of them.
    let mut bytes = std::fs::read(state(&runs[2])).expect("read");
    let end = bytes.len();
    bytes[end - 8..end - 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(state(&runs[2]), &bytes).expect("write");
    for (run, message) in [
        (&runs[0], "it is another run's"),
        (&runs[2], "holds a NaN or an infinity"),
    ] {
        let before = std::fs::read_to_string(run.join("metrics.csv")).expect("metrics");
        let err = trainer::training::resume(run, &data, &[Device::flex()], Some(2), |_| {})
            .expect_err("refused");
        let err = format!("{err:#}");
        assert!(err.contains(message), "{err}");
        assert_eq!(
            std::fs::read_to_string(run.join("metrics.csv")).expect("metrics"),
            before
        );
    }
}

/// `sample --out` names the PNG it writes: any other name, such as the run's own weights, is
/// refused (the weights had been replaced by the PNG).
#[test]
fn samples_are_never_written_over_the_runs_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    train_a_short_dense_run(&run);
    let weights = std::fs::read(run.join("model.bpk")).expect("weights");
    for name in ["model.bpk", "config.json"] {
        let target = run.join(name);
        let out = trainer()
            .args(["sample", run.to_str().expect("utf-8"), "--out"])
            .arg(&target)
            .output()
            .expect("trainer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(stderr.contains("is not a .png file name"), "{stderr}");
    }
    assert_eq!(
        std::fs::read(run.join("model.bpk")).expect("weights"),
        weights
    );
    let out = trainer()
        .args([
            "sample",
            run.to_str().expect("utf-8"),
            "--count",
            "2",
            "--out",
        ])
        .arg(run.join("two.PNG"))
        .output()
        .expect("trainer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
