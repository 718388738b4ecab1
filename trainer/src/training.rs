//! The training loop: Adam on the VAE loss, one checkpoint and one metrics row per epoch.
//!
//! A plain loop rather than burn-train's `Learner`: it keeps the build small and the logs readable
//! in a non-interactive terminal.

use std::{path::Path, time::Instant};

use anyhow::{Context, bail};
use burn::{
    optim::{AdamConfig, GradientsParams},
    prelude::*,
    tensor::Distribution,
};

use crate::{
    data::{Mnist, Split},
    model::{ConvVae, vae_loss},
    run::{
        METRICS_FILE, TrainingConfig, WEIGHTS_FILE, load_config, load_run, save_config,
        save_weights, write_atomic,
    },
};

/// Losses of one epoch, averaged per image.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Training loss (reconstruction + KL).
    pub train_loss: f64,
    /// Training reconstruction (BCE summed over pixels).
    pub train_reconstruction: f64,
    /// Training KL.
    pub train_kl: f64,
    /// Test loss, decoding the latent mean.
    pub test_loss: f64,
    /// Test reconstruction.
    pub test_reconstruction: f64,
    /// Test KL.
    pub test_kl: f64,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f64,
}

impl EpochMetrics {
    const CSV_HEADER: &'static str = "epoch,train_loss,train_reconstruction,train_kl,test_loss,test_reconstruction,test_kl,images_per_second,seconds\n";

    fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1},{:.2}\n",
            self.epoch,
            self.train_loss,
            self.train_reconstruction,
            self.train_kl,
            self.test_loss,
            self.test_reconstruction,
            self.test_kl,
            self.images_per_second,
            self.seconds
        )
    }
}

/// SplitMix64: a small, fast, seedable generator for the shuffling (no extra dependency).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// What `trainer eval` reports for a run on a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Images evaluated.
    pub images: usize,
    /// Mean loss per image (reconstruction + KL), nats.
    pub loss: f64,
    /// Mean reconstruction term (binary cross-entropy summed over the 784 pixels), nats.
    pub reconstruction: f64,
    /// Mean KL term, nats.
    pub kl: f64,
    /// Mean squared error per pixel of the reconstruction from the latent mean, pixels in [0, 1].
    pub mse: f64,
    /// `10 log10(1 / mse)`.
    pub psnr_db: f64,
}

/// Evaluates `model` on `data`: the losses as training reports them, and the pixel error of the
/// reconstruction from the latent mean.
pub fn evaluate_images(
    model: &ConvVae,
    data: &Mnist,
    batch_size: usize,
    device: &Device,
) -> Evaluation {
    let [loss, reconstruction, kl] = evaluate(model, data, batch_size, device);
    let mut squared = 0.0;
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let images = data.batch(chunk, device);
        let (mean, _) = model.encoder.forward(images.clone());
        let error = (model.decoder.forward(mean) - images)
            .powf_scalar(2.0)
            .sum();
        squared += scalar(error);
    }
    let mse = squared / (data.len().max(1) * crate::data::PIXELS) as f64;
    Evaluation {
        images: data.len(),
        loss,
        reconstruction,
        kl,
        mse,
        psnr_db: 10.0 * (1.0 / mse.max(1e-12)).log10(),
    }
}

/// Mean losses over `data` with the latent mean decoded (no sampling noise).
fn evaluate(model: &ConvVae, data: &Mnist, batch_size: usize, device: &Device) -> [f64; 3] {
    let mut sums = [0.0; 3];
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let images = data.batch(chunk, device);
        let eps = Tensor::zeros([chunk.len(), model.decoder.latent()], device);
        let loss = vae_loss(&model.forward(images.clone(), eps), images);
        let n = chunk.len() as f64;
        sums[0] += scalar(loss.total) * n;
        sums[1] += scalar(loss.reconstruction) * n;
        sums[2] += scalar(loss.kl) * n;
    }
    sums.map(|s| s / data.len().max(1) as f64)
}

/// What [`train`] tells its caller while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A training batch is done.
    Batch {
        /// Epoch, from 1.
        epoch: usize,
        /// Batches done in this epoch.
        done: usize,
        /// Batches per epoch.
        batches: usize,
        /// Mean loss per image over this epoch's batches so far.
        loss: f64,
        /// Training images per second so far in this epoch.
        images_per_second: f64,
    },
    /// An epoch is done, evaluated and checkpointed.
    Epoch(&'a EpochMetrics),
}

/// Trains a model as `config` says on the MNIST in `data_dir`, writing the run into `out`
/// (`config.json` first, then weights and a metrics row after every epoch, each file replaced
/// atomically). `report` sees every batch's progress and every epoch's metrics as soon as they
/// are known.
///
/// Stops with an error naming the epoch and batch if the loss becomes NaN or infinite.
pub fn train(
    config: &TrainingConfig,
    data_dir: &Path,
    out: &Path,
    device: &Device,
    report: impl FnMut(Progress),
) -> anyhow::Result<ConvVae> {
    if config.batch_size == 0 || config.epochs == 0 {
        bail!("batch size and epochs must be at least 1");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    save_config(config, out)?;
    run_epochs(config, data_dir, out, device, None, report)
}

/// Continues the interrupted run in `out` (killed, even with `kill -9`, or stopped by an error)
/// after its last completed epoch (from scratch if it had not completed one), up to its configured epochs or to `epochs` when given (which
/// is then saved in its `config.json`). At most the epoch that was running when it stopped is
/// lost: weights and metrics are written atomically after every epoch.
///
/// The data order of the remaining epochs is the one the uninterrupted run would have used; the
/// latent sampling noise and Adam's moment estimates start afresh (Adam's state is not saved).
///
/// # Errors
/// A missing or unreadable run, a `metrics.csv` that does not count epochs 1, 2, ... in order,
/// or `epochs` below the epochs already done.
pub fn resume(
    out: &Path,
    data_dir: &Path,
    device: &Device,
    epochs: Option<usize>,
    report: impl FnMut(Progress),
) -> anyhow::Result<ConvVae> {
    // Killed before its first checkpoint: nothing to keep, start the configured run afresh.
    if !out.join(WEIGHTS_FILE).exists() {
        let mut config = load_config(out).context("reading the run to resume")?;
        if let Some(epochs) = epochs {
            config.epochs = epochs;
        }
        return train(&config, data_dir, out, device, report);
    }
    let autodiff = device.clone().autodiff();
    let (mut config, model) = load_run(out, &autodiff).context("loading the run to resume")?;
    let metrics_path = out.join(METRICS_FILE);
    let metrics = std::fs::read_to_string(&metrics_path)
        .with_context(|| format!("reading {}", metrics_path.display()))?;
    let rows: Vec<&str> = metrics
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let epoch = row.split(',').next().and_then(|e| e.parse::<usize>().ok());
        if epoch != Some(i + 1) {
            bail!(
                "{} row {} should be epoch {}, not `{row}`",
                metrics_path.display(),
                i + 2,
                i + 1
            );
        }
    }
    let done = rows.len();
    if let Some(epochs) = epochs {
        if epochs < done {
            bail!("the run has done {done} epochs already, more than --epochs {epochs}");
        }
        config.epochs = epochs;
        save_config(&config, out)?;
    }
    let csv: String = std::iter::once(EpochMetrics::CSV_HEADER.trim_end())
        .chain(rows.iter().copied())
        .map(|l| format!("{l}\n"))
        .collect();
    run_epochs(
        &config,
        data_dir,
        out,
        device,
        Some((model, done, csv)),
        report,
    )
}

/// The epochs of a run: from scratch, or from `start` = (model, epochs done, metrics so far).
fn run_epochs(
    config: &TrainingConfig,
    data_dir: &Path,
    out: &Path,
    device: &Device,
    start: Option<(ConvVae, usize, String)>,
    mut report: impl FnMut(Progress),
) -> anyhow::Result<ConvVae> {
    if config.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut train_set = Mnist::load(data_dir, Split::Train).context("loading the training set")?;
    let mut test_set = Mnist::load(data_dir, Split::Test).context("loading the test set")?;
    if let Some(n) = config.train_subset {
        train_set.truncate(n);
    }
    if let Some(n) = config.test_subset {
        test_set.truncate(n);
    }
    if train_set.is_empty() || test_set.is_empty() {
        bail!("the training and test subsets must not be empty");
    }

    let device = device.clone().autodiff();
    let mut rng = SplitMix64(config.seed);
    let (mut model, done, mut metrics_csv) = match start {
        None => {
            device.seed(config.seed);
            let model = config.model.init(&device);
            (model, 0, String::from(EpochMetrics::CSV_HEADER))
        }
        Some((model, done, csv)) => {
            device.seed(config.seed.wrapping_add(done as u64));
            // Replay the shuffles of the epochs done, so the next epochs see the same order.
            let mut order: Vec<usize> = (0..train_set.len()).collect();
            for _ in 0..done {
                rng.shuffle(&mut order);
            }
            (model, done, csv)
        }
    };
    let mut optim = AdamConfig::new().init();
    let latent = config.model.latent;

    for epoch in done + 1..=config.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        rng.shuffle(&mut order);
        let mut sums = [0.0; 3];
        let (batches, mut seen) = (order.len().div_ceil(config.batch_size), 0usize);
        for (batch_index, chunk) in order.chunks(config.batch_size).enumerate() {
            let images = train_set.batch(chunk, &device);
            let eps = Tensor::random(
                [chunk.len(), latent],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let output = model.forward(images.clone(), eps);
            let loss = vae_loss(&output, images);
            let total = scalar(loss.total.clone());
            if !total.is_finite() {
                bail!(
                    "loss became {total} at epoch {epoch}, batch {batch_index}: \
                     lower the learning rate (now {})",
                    config.learning_rate
                );
            }
            let n = chunk.len() as f64;
            sums[0] += total * n;
            sums[1] += scalar(loss.reconstruction) * n;
            sums[2] += scalar(loss.kl) * n;
            let grads = GradientsParams::from_grads(loss.total.backward(), &model);
            model = optim.step(config.learning_rate, model, grads);
            seen += chunk.len();
            report(Progress::Batch {
                epoch,
                done: batch_index + 1,
                batches,
                loss: sums[0] / seen as f64,
                images_per_second: seen as f64 / start.elapsed().as_secs_f64().max(1e-9),
            });
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let [test_loss, test_reconstruction, test_kl] = evaluate(
            &model.valid(),
            &test_set,
            config.batch_size.max(256),
            &device,
        );
        let n = train_set.len() as f64;
        let m = EpochMetrics {
            epoch,
            train_loss: sums[0] / n,
            train_reconstruction: sums[1] / n,
            train_kl: sums[2] / n,
            test_loss,
            test_reconstruction,
            test_kl,
            images_per_second: n / train_seconds,
            seconds: start.elapsed().as_secs_f64(),
        };
        save_weights(&model.valid(), out)?;
        metrics_csv.push_str(&m.csv_row());
        write_atomic(&out.join(METRICS_FILE), metrics_csv.as_bytes())?;
        report(Progress::Epoch(&m));
    }
    Ok(model.valid())
}
