//! The training loop: Adam on the family's loss, one checkpoint and one metrics row per epoch.
//!
//! A plain loop rather than burn-train's `Learner`: it keeps the build small and the logs readable
//! in a non-interactive terminal.

use std::{path::Path, time::Instant};

use anyhow::{Context, bail};
use burn::{
    module::{ModuleVisitor, Param},
    optim::{GradientsAccumulator, GradientsParams},
    prelude::*,
};

use crate::{
    average::{Keep, WeightAverage},
    data::{Mnist, SIDE, Split},
    model::{
        CameraDenoiserConfig, Corruption, LossKind, Model, ModelConfig, UpConv, bce_with_logits,
        loss, one_hot,
    },
    natural::{self, GrayImage, add_noise},
    optim::adam,
    quality::{psnr, ssim},
    rng::SplitMix64,
    run::{
        METRICS_FILE, Occupied, RunLock, TrainingConfig, WEIGHTS_FILE, commit_weights, load_config,
        load_optimizer, load_run, load_trained_weights, prune_checkpoints, save_config,
        save_optimizer, save_trained_weights, settle_staged_weights, stage_weights,
        trained_weights_file,
    },
};

/// Losses of one epoch, averaged per image.
#[derive(Debug, Clone, Copy, Default)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Training loss (reconstruction, + KL for VAEs).
    pub train_loss: f64,
    /// Training reconstruction term.
    pub train_reconstruction: f64,
    /// Training KL (0 for plain autoencoders).
    pub train_kl: f64,
    /// Test loss (VAEs decode the latent mean).
    pub test_loss: f64,
    /// Test reconstruction term.
    pub test_reconstruction: f64,
    /// Test KL.
    pub test_kl: f64,
    /// Test pixel MSE of the output against the clean image.
    pub test_mse: f64,
    /// Training throughput.
    pub images_per_second: f64,
    /// Wall time of the epoch (training and evaluation).
    pub seconds: f64,
}

impl EpochMetrics {
    const CSV_HEADER: &'static str = "epoch,train_loss,train_reconstruction,train_kl,test_loss,test_reconstruction,test_kl,test_mse,images_per_second,seconds\n";

    fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1},{:.2}\n",
            self.epoch,
            self.train_loss,
            self.train_reconstruction,
            self.train_kl,
            self.test_loss,
            self.test_reconstruction,
            self.test_kl,
            self.test_mse,
            self.images_per_second,
            self.seconds
        )
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

/// A float tensor's values, row-major.
pub fn tensor_values<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
}

/// Seed of the corruption noise used for evaluation, so every evaluation of every run sees the
/// same noisy test images.
const EVAL_NOISE_SEED: u64 = 0x5EED_7E57;

/// Seed of the latent samples of [`Evaluation::sampled_loss`].
const EVAL_SAMPLE_SEED: u64 = 0x5A3B_1E57;

/// Quality of one kind of output against the clean images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Mean squared error per pixel, pixels in `[0, 1]`.
    pub mse: f64,
    /// `10 log10(1 / mse)`.
    pub psnr_db: f64,
    /// Mean SSIM per image.
    pub ssim: f64,
}

/// What `trainer eval` reports for a run on a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Images evaluated.
    pub images: usize,
    /// Mean loss per image, as training reports it (VAEs: decoded from the latent mean).
    pub loss: f64,
    /// Mean reconstruction term.
    pub reconstruction: f64,
    /// Mean KL term (0 for plain autoencoders).
    pub kl: f64,
    /// Binary cross-entropy of the output summed over the pixels, mean per image, whatever the
    /// family's loss (with [`Evaluation::kl`], a VAE's negative ELBO under a Bernoulli
    /// likelihood: VAEs trained on different losses compare on it). NaN for the camera denoiser.
    pub bce: f64,
    /// VAEs, in `trainer eval`: the mean loss per image with the decoder fed one sample of each
    /// image's posterior instead of its mean (the same KL). This is what Keras reports as a VAE's
    /// validation loss when its sampling layer stays on at evaluation, as in the lesson's; it is
    /// higher than [`Evaluation::loss`] by the reconstruction error the sampling adds.
    pub sampled_loss: Option<f64>,
    /// The model's output (VAEs: decoded from the latent mean) against the clean images.
    pub output: Quality,
    /// Denoising: the noisy input; super-resolution: the bicubic upscaling of the input.
    pub baseline: Option<Quality>,
}

/// Sums over batches of an evaluation.
#[derive(Default)]
struct Sums {
    images: usize,
    losses: [f64; 3],
    sampled_loss: f64,
    bce: f64,
    squared: [f64; 2],
    ssim: [f64; 2],
}

impl Sums {
    fn quality(&self, i: usize) -> Quality {
        let mse = self.squared[i] / (self.images.max(1) * SIDE * SIDE) as f64;
        Quality {
            mse,
            psnr_db: psnr(mse),
            ssim: self.ssim[i] / self.images.max(1) as f64,
        }
    }
}

/// Evaluates `model` on `data`: the losses as training reports them (VAEs decode the latent mean;
/// the inputs are corrupted with a fixed seed), and the output's and the baseline's quality.
/// `thorough` adds what `trainer eval` reports beyond the per-epoch figures: SSIM (it costs more
/// than the model on small images) and a VAE's [`Evaluation::sampled_loss`].
fn evaluate(
    model: &Model,
    config: &ModelConfig,
    data: &Mnist,
    batch_size: usize,
    thorough: bool,
    device: &Device,
) -> anyhow::Result<Evaluation> {
    let corruption = config.corruption();
    let sampled = thorough && config.is_variational();
    let mut rng = SplitMix64(EVAL_NOISE_SEED);
    let mut samples = SplitMix64(EVAL_SAMPLE_SEED);
    let mut sums = Sums::default();
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let clean = data.batch(chunk, device);
        let input = corruption.apply(clean.clone(), &mut rng);
        let condition = model.condition(&data.digits(chunk), device);
        if sampled {
            let output = model.forward(input.clone(), condition.clone(), Some(&mut samples));
            let l = loss(config.loss_kind(), &output, clean.clone());
            sums.sampled_loss += scalar(l.total) * chunk.len() as f64;
        }
        let output = model.forward(input.clone(), condition, None);
        let images = model.to_image(output.logits.clone());
        let l = loss(config.loss_kind(), &output, clean.clone());
        let n = chunk.len() as f64;
        sums.bce += scalar(bce_with_logits(output.logits.clone(), clean.clone()).sum());
        for (sum, term) in sums
            .losses
            .iter_mut()
            .zip([l.total, l.reconstruction, l.kl])
        {
            *sum += scalar(term) * n;
        }
        let clean_px = tensor_values(clean)?;
        let mut compare = |i: usize, out: Tensor<4>| -> anyhow::Result<()> {
            let px = tensor_values(out)?;
            sums.squared[i] += px
                .iter()
                .zip(&clean_px)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>();
            if thorough {
                let side = SIDE * SIDE;
                sums.ssim[i] += px
                    .chunks_exact(side)
                    .zip(clean_px.chunks_exact(side))
                    .map(|(a, b)| ssim(a, b, SIDE, SIDE))
                    .sum::<f64>();
            }
            Ok(())
        };
        compare(0, images)?;
        if let Some(baseline) = corruption.baseline(input) {
            compare(1, baseline)?;
        }
        sums.images += chunk.len();
    }
    let n = sums.images.max(1) as f64;
    let mut quality = [sums.quality(0), sums.quality(1)];
    if !thorough {
        quality.iter_mut().for_each(|q| q.ssim = f64::NAN);
    }
    Ok(Evaluation {
        images: sums.images,
        loss: sums.losses[0] / n,
        reconstruction: sums.losses[1] / n,
        kl: sums.losses[2] / n,
        bce: sums.bce / n,
        sampled_loss: sampled.then_some(sums.sampled_loss / n),
        output: quality[0],
        baseline: (corruption != Corruption::None).then_some(quality[1]),
    })
}

/// Evaluates a trained `model` of an MNIST family `config` on `data`: losses, and PSNR/SSIM of
/// its output and of the family's baseline against the clean images.
///
/// # Errors
/// The camera denoiser (it is measured on photographs: [`evaluate_camera`]).
pub fn evaluate_images(
    model: &Model,
    config: &ModelConfig,
    data: &Mnist,
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<Evaluation> {
    if let ModelConfig::CameraDenoiser(_) = config {
        bail!("the camera denoiser is evaluated on photographs (evaluate_camera), not on MNIST");
    }
    evaluate(model, config, data, batch_size, true, device)
}

/// A freshly initialised `model`, its weights drawn with `seed`.
///
/// Burn's CPU backend has one random generator for the whole process, so seeding it and drawing
/// the weights hold a lock: two trainings started at once in one process (tests) would otherwise
/// draw from each other's seeds. Burn draws a parameter's initial values when it is first read,
/// so every parameter is read before the lock is let go. (Nothing else in the trainer draws from
/// Burn's generator.)
pub fn init_model(model: &ModelConfig, seed: u64, device: &Device) -> Model {
    /// Reads each parameter once, which draws its initial values.
    struct DrawNow;
    impl ModuleVisitor for DrawNow {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    static BURN_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = BURN_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    let model = model.init(device);
    model.visit(&mut DrawNow);
    model
}

/// The dataset bundled with the repository that `model`'s family trains on.
pub fn bundled_data_dir(model: &ModelConfig) -> std::path::PathBuf {
    match model {
        ModelConfig::CameraDenoiser(_) => natural::bundled_dir(),
        _ => crate::data::bundled_dir(),
    }
}

/// The dataset directory for a command on a run: `given` (`--data`), else the one the run was
/// trained on, else the family's bundled data.
pub fn data_dir(config: &TrainingConfig, given: Option<std::path::PathBuf>) -> std::path::PathBuf {
    given
        .or_else(|| config.data.clone())
        .unwrap_or_else(|| bundled_data_dir(&config.model))
}

/// Noise level of the per-epoch test of the camera denoiser, in 8-bit units.
pub const CAMERA_TEST_SIGMA: f32 = 25.0;

/// PSNR of the camera denoiser on one held-out photograph at one noise level.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraEvaluation {
    /// File name.
    pub image: String,
    /// Noise standard deviation, 8-bit units.
    pub sigma: f32,
    /// PSNR of the noisy frame (8-bit, as a camera gives it).
    pub noisy_psnr_db: f64,
    /// PSNR of the denoised frame (clipped to `[0, 1]`).
    pub denoised_psnr_db: f64,
    /// Mean squared error of the denoised frame, pixels in `[0, 1]`.
    pub denoised_mse: f64,
}

/// Denoises each of `images` (whole) at each noise level of `sigmas` (the noise seeded by image
/// and level, so every run sees the same noisy frames) and measures PSNR against the clean image.
pub fn evaluate_camera(
    model: &Model,
    images: &[GrayImage],
    sigmas: &[f32],
    device: &Device,
) -> anyhow::Result<Vec<CameraEvaluation>> {
    let mut rows = Vec::new();
    for (i, image) in images.iter().enumerate() {
        for &sigma in sigmas {
            let seed = EVAL_NOISE_SEED ^ ((i as u64) << 40) ^ sigma.to_bits() as u64;
            let noisy = add_noise(&image.pixels, sigma, &mut SplitMix64(seed));
            let mse = |px: &[f32]| {
                px.iter()
                    .zip(&image.pixels)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    / px.len() as f64
            };
            let denoised = denoise_photo(model, &noisy, image.width, image.height, device)?;
            let denoised_mse = mse(&denoised);
            rows.push(CameraEvaluation {
                image: image.name.clone(),
                sigma,
                noisy_psnr_db: psnr(mse(&noisy)),
                denoised_psnr_db: psnr(denoised_mse),
                denoised_mse,
            });
        }
    }
    Ok(rows)
}

/// What `model` makes of one noisy photograph or frame (`width x height`, pixels in `[0, 1]`):
/// for the camera denoiser, the frame mirrored outwards by [`crate::model::CameraDenoiser::context`] pixels
/// first and cropped back after, so the pixels near the edges are denoised like the others
/// instead of seeing the convolutions' zero padding (the edge runtime does the same, told the
/// border by the exported model's metadata).
///
/// # Errors
/// A tensor that cannot be read back.
pub fn denoise_photo(
    model: &Model,
    noisy: &[f32],
    width: usize,
    height: usize,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let border = match model {
        Model::CameraDenoiser(m) => m.context(),
        _ => 0,
    };
    let (w, h) = (width + 2 * border, height + 2 * border);
    let padded = natural::reflect_pad(noisy, width, height, border);
    let input = Tensor::<1>::from_floats(padded.as_slice(), device).reshape([1, 1, h, w]);
    let output = tensor_values(model.reconstruct(input, None))?;
    Ok((0..height)
        .flat_map(|y| output[(y + border) * w + border..][..width].iter().copied())
        .collect())
}

/// Where a family's training batches and test data come from.
enum Source {
    /// MNIST: the training images in shuffled order, the official test split.
    Mnist { train: Mnist, test: Mnist },
    /// Natural photographs: random patches of the training images with noise of a random level
    /// each; the held-out images whole.
    Photos {
        train: Vec<GrayImage>,
        test: Vec<GrayImage>,
        config: CameraDenoiserConfig,
    },
}

/// A training batch: model input, clean target, and the one-hot digits for a conditional model.
type Batch = (Tensor<4>, Tensor<4>, Option<Tensor<2>>);

impl Source {
    fn load(config: &TrainingConfig, data_dir: &Path) -> anyhow::Result<Source> {
        if let ModelConfig::CameraDenoiser(c) = &config.model {
            let train = natural::load(data_dir, &natural::TRAINING)
                .context("loading the training photographs")?;
            let test = natural::load(data_dir, &natural::HELD_OUT)
                .context("loading the held-out photographs")?;
            return Ok(Source::Photos {
                train,
                test,
                config: c.clone(),
            });
        }
        let mut train = Mnist::load(data_dir, Split::Train).context("loading the training set")?;
        let mut test = Mnist::load(data_dir, Split::Test).context("loading the test set")?;
        for (set, subset, flag) in [
            (&mut train, config.train_subset, "train"),
            (&mut test, config.test_subset, "test"),
        ] {
            if let Some(n) = subset {
                // More than there are is a mistake to name, not a silent "all of them".
                if n > set.len() {
                    bail!(
                        "--{flag}-subset {n} is more than the {} images of the {flag} set",
                        set.len()
                    );
                }
                set.truncate(n);
            }
        }
        if train.is_empty() || test.is_empty() {
            bail!("the training and test subsets must not be empty");
        }
        Ok(Source::Mnist { train, test })
    }

    /// What a training example is, for messages: an image, or a photograph's patch.
    fn example_noun(&self, plural: bool) -> &'static str {
        match (self, plural) {
            (Source::Mnist { .. }, false) => "image",
            (Source::Mnist { .. }, true) => "images",
            (Source::Photos { .. }, false) => "patch",
            (Source::Photos { .. }, true) => "patches",
        }
    }

    /// Examples in a training epoch.
    fn examples_per_epoch(&self) -> usize {
        match self {
            Source::Mnist { train, .. } => train.len(),
            Source::Photos { config, .. } => config.patches_per_epoch,
        }
    }

    /// The model input, the clean target and, for a conditional model, the one-hot digits
    /// ([`Model::condition`]) of the examples `chunk` of the epoch's order.
    fn training_batch(
        &self,
        config: &TrainingConfig,
        chunk: &[usize],
        noise: &mut SplitMix64,
        device: &Device,
    ) -> anyhow::Result<Batch> {
        match self {
            Source::Mnist { train, .. } => {
                let clean = train.batch(chunk, device);
                let classes = config.model.classes();
                let condition =
                    (classes > 0).then(|| one_hot(&train.digits(chunk), classes, device));
                let input = config.model.corruption().apply(clean.clone(), noise);
                Ok((input, clean, condition))
            }
            Source::Photos { train, config, .. } => {
                let side = config.patch;
                let transposes = config.transposes == Some(true);
                let clean = natural::patches(train, chunk.len(), side, transposes, noise)
                    .map_err(anyhow::Error::msg)?;
                let mut noisy = Vec::with_capacity(clean.len());
                for patch in clean.chunks_exact(side * side) {
                    let u = noise.uniform() as f32;
                    let sigma = config.sigma_min + (config.sigma_max - config.sigma_min) * u;
                    noisy.extend(add_noise(patch, sigma, noise));
                }
                let tensor = |v: &[f32], side: usize| {
                    Tensor::<1>::from_floats(v, device).reshape([chunk.len(), 1, side, side])
                };
                // With the interior loss the target is each clean patch's centre.
                let margin = config.loss_margin();
                let inner = side - 2 * margin;
                let target: Vec<f32> = clean
                    .chunks_exact(side * side)
                    .flat_map(|patch| patch.chunks_exact(side).skip(margin).take(inner))
                    .flat_map(|row| &row[margin..margin + inner])
                    .copied()
                    .collect();
                Ok((tensor(&noisy, side), tensor(&target, inner), None))
            }
        }
    }

    /// The epoch's test figures.
    fn evaluate(
        &self,
        model: &Model,
        config: &TrainingConfig,
        device: &Device,
    ) -> anyhow::Result<Evaluation> {
        match self {
            Source::Mnist { test, .. } => evaluate(
                model,
                &config.model,
                test,
                config.batch_size.max(256),
                false,
                device,
            ),
            Source::Photos { test, .. } => {
                let rows = evaluate_camera(model, test, &[CAMERA_TEST_SIGMA], device)?;
                let mse = rows.iter().map(|r| r.denoised_mse).sum::<f64>() / rows.len() as f64;
                Ok(Evaluation {
                    images: rows.len(),
                    loss: mse,
                    reconstruction: mse,
                    kl: 0.0,
                    bce: f64::NAN,
                    sampled_loss: None,
                    output: Quality {
                        mse,
                        psnr_db: psnr(mse),
                        ssim: f64::NAN,
                    },
                    baseline: None,
                })
            }
        }
    }
}

/// Training throughput of `config`'s model: `batches` optimisation steps (after 2 untimed ones)
/// on real data from `data_dir`, on `devices` as [`train`] uses them, in training examples
/// (images or patches) per second.
///
/// # Errors
/// Unreadable data, no device, or a non-finite loss.
pub fn throughput(
    config: &TrainingConfig,
    data_dir: &Path,
    batches: usize,
    devices: &[Device],
) -> anyhow::Result<f64> {
    config.validate().map_err(anyhow::Error::msg)?;
    let source = Source::load(config, data_dir)?;
    let devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let Some(device) = devices.first() else {
        bail!("no device to train on");
    };
    let pools = shard_pools(&devices)?;
    let mut model = init_model(&config.model, config.seed, device);
    ensure_batch_fits(&model, (&source, config), (&devices, &pools), &mut |_| {})?;
    let mut optim = adam();
    let mut noise = SplitMix64(config.seed);
    let size = config.batch_size.max(1);
    let examples = source.examples_per_epoch().max(1);
    let mut start = Instant::now();
    for step in 0..batches + 2 {
        if step == 2 {
            start = Instant::now();
        }
        let chunk: Vec<usize> = (0..size).map(|i| (step * size + i) % examples).collect();
        let (losses, grads) = gradients(
            &model,
            (&source, config),
            &chunk,
            &mut noise,
            (&devices, &pools),
        )?;
        if !losses[0].is_finite() {
            bail!("loss became {} at step {step}", losses[0]);
        }
        model = optim.step(config.learning_rate, model, grads);
    }
    Ok((batches * size) as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// The loss (total, reconstruction, KL: means over the batch) and the gradients of one batch
/// (`chunk`'s examples), on the first of `devices`, where `model` lives.
///
/// With several devices the batch is split data parallel, with Burn's multi-device building
/// blocks (those burn-train's multi-device strategy uses): each device gets a contiguous shard,
/// built on it, and a copy of the model (`Module::fork`); its loss is weighted by its share of
/// the batch, so the shards' gradients, moved to the first device (`GradientsParams::to_device`)
/// and added (`GradientsAccumulator`), are the whole batch's; the caller takes one optimizer step
/// there. The MNIST families' input noise and the VAEs' latent samples are the numbers one
/// device would draw: every shard's inputs first, in example order, then each shard's samples
/// from where the shards before it leave the generator ([`SplitMix64::skip`]). (The camera
/// denoiser draws each shard's patches, then their noise, shard by shard: its shards see other
/// patches than one device would, as repeatably.)
///
/// Shards on different devices (GPUs) run one after the other from this thread (each GPU queues
/// its work; the loss values are read back last). Shards that share one device (the CPU's,
/// repeated) run at once, shard `i` on `pools[i]`, a pool of its own ([`shard_pools`]).
fn gradients(
    model: &Model,
    (source, config): (&Source, &TrainingConfig),
    chunk: &[usize],
    noise: &mut SplitMix64,
    (devices, pools): (&[Device], &[rayon::ThreadPool]),
) -> anyhow::Result<([f64; 3], GradientsParams)> {
    let kind = config.model.loss_kind();
    let Some(main) = devices.first() else {
        bail!("no device to train on");
    };
    if devices.len() == 1 {
        let (input, target, condition) = source.training_batch(config, chunk, noise, main)?;
        let output = model.forward_with(input, condition, Some(noise), UpConv::Folded);
        let loss = loss(kind, &output, target);
        let values = [&loss.total, &loss.reconstruction, &loss.kl].map(|t| scalar(t.clone()));
        return Ok((
            values,
            GradientsParams::from_grads(loss.total.backward(), model),
        ));
    }
    // Shards as even as they come (sizes differ by at most one), none empty.
    let (base, extra) = (chunk.len() / devices.len(), chunk.len() % devices.len());
    let mut rest = chunk;
    let mut shards = Vec::with_capacity(devices.len());
    for (i, device) in devices.iter().enumerate() {
        let (shard, tail) = rest.split_at((base + usize::from(i < extra)).min(rest.len()));
        rest = tail;
        if !shard.is_empty() {
            let batch = source.training_batch(config, shard, noise, device)?;
            shards.push((device, shard.len(), batch));
        }
    }
    let draws = config.model.sample_draws_per_example();
    let jobs: Vec<Shard> = shards
        .into_iter()
        .map(|(device, len, batch)| {
            let sample = noise.clone();
            noise.skip(draws * len as u64);
            Shard {
                replica: model.clone().fork(device),
                batch,
                sample,
                weight: len as f64 / chunk.len() as f64,
            }
        })
        .collect();
    let done: Vec<ShardDone> = if pools.len() >= jobs.len() {
        std::thread::scope(|scope| {
            let running: Vec<_> = jobs
                .into_iter()
                .zip(pools)
                .map(|(job, pool)| scope.spawn(move || pool.install(|| job.run(kind))))
                .collect();
            // Every thread joined before any result is looked at (a scope whose panicked
            // thread was left unjoined would panic itself).
            let joined: Vec<_> = running.into_iter().map(|thread| thread.join()).collect();
            joined.into_iter().collect::<Result<_, _>>()
        })
        .map_err(|_| anyhow::anyhow!("a shard's training thread panicked"))?
    } else {
        jobs.into_iter().map(|job| job.run(kind)).collect()
    };
    let mut accumulator = GradientsAccumulator::<Model>::new();
    let mut values = [0.0; 3];
    for ShardDone {
        weight,
        losses,
        grads,
    } in done
    {
        accumulator.accumulate(model, grads.to_device(main, model));
        for (v, t) in values.iter_mut().zip(losses) {
            *v += weight * scalar(t);
        }
    }
    Ok((values, accumulator.grads()))
}

/// One shard of a batch split data parallel ([`gradients`]): the model's copy on the shard's
/// device, its examples, where its latent samples start, its share of the batch.
struct Shard {
    replica: Model,
    batch: Batch,
    sample: SplitMix64,
    weight: f64,
}

/// What a [`Shard`] gives back: its share, its losses (total, reconstruction, KL; means over the
/// shard), the gradients of its weighted loss.
struct ShardDone {
    weight: f64,
    losses: [Tensor<1>; 3],
    grads: GradientsParams,
}

impl Shard {
    fn run(self, kind: LossKind) -> ShardDone {
        let Shard {
            replica,
            batch: (input, target, condition),
            mut sample,
            weight,
        } = self;
        let output = replica.forward_with(input, condition, Some(&mut sample), UpConv::Folded);
        let loss = loss(kind, &output, target);
        let grads =
            GradientsParams::from_grads(loss.total.clone().mul_scalar(weight).backward(), &replica);
        ShardDone {
            weight,
            losses: [loss.total, loss.reconstruction, loss.kl],
            grads,
        }
    }
}

/// The threads for the shards of [`gradients`] when every shard is on the same device (the
/// CPU's: the CPU backends have one device, which `--devices N` repeats): the cores of the
/// calling thread's rayon pool shared among the shards, one pool each (one thread each on a
/// machine with as many cores as shards, at least one). flex runs its parallel loops (a
/// convolution's tiles, gemm's blocks) on the pool of the thread that calls it, so each shard's
/// work stays on its own cores: on 2 cores two shards keep both busy, where one batch on both
/// leaves them waiting on each other (BENCHMARKS.md, "Data parallel on the CPU"). None for one
/// device or distinct devices.
///
/// # Errors
/// A thread that cannot be started.
pub fn shard_pools(devices: &[Device]) -> anyhow::Result<Vec<rayon::ThreadPool>> {
    let Some(first) = devices.first() else {
        return Ok(Vec::new());
    };
    if devices.len() == 1 || devices.iter().any(|d| d != first) {
        return Ok(Vec::new());
    }
    let threads = (rayon::current_num_threads() / devices.len()).max(1);
    (0..devices.len())
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |j| format!("shard-{i}.{j}"))
                .build()
                .context("starting a shard's threads")
        })
        .collect()
}

/// The smallest batch whose training step [`ensure_batch_fits`] measures; each next is twice the
/// last, up to half the run's batch. Runs with batches under four times this (two probes) are
/// not checked: their steps take a few hundred MB at most (the camera denoiser's, whose patches
/// take ~1 MiB each, the most).
const FIRST_PROBE: usize = 128;

/// Refuses a batch size whose training step would allocate more memory than the process can get
/// ([`machine::available_bytes`]), before the run starts: on the CPU, whose memory is the
/// process's (a GPU's is its backend's to manage), and only where the allocations are counted
/// ([`crate::memory::CountingAllocator`], which the `trainer` binary installs).
///
/// Burn allocates a step's activations and gradients as it goes, so they are measured: the
/// gradients of probe batches of 128, 256, ... examples, up to half the run's batch, are computed
/// exactly as training computes them and dropped, and the most bytes the two largest held at once
/// are extrapolated linearly to the run's batch, plus Adam's two moments. (Small batches do not
/// lie on the line: a dense layer's matrix products change strategy with their size, which is
/// why the probes go up to half the batch; the probes of the convolutional families lie on it
/// exactly.) The probing stops early once the next probe alone would take half the memory. The
/// model, the data order and the run's random streams are left as they were (the probes draw
/// from a stream of their own), so a run trains the same with or without the check. The figure
/// is an estimate of the tensors alone: the allocator's own overhead and fragmentation come on
/// top (about half as much again, BENCHMARKS.md), so a batch is refused only where even its
/// tensors cannot fit, and one whose tensors take most of the memory may still fail; the
/// batch size the refusal suggests puts them in half of it. The probes' examples add up to half
/// to one batch (less time than one step: 6.1 s for the conv AE at 8,192, whose step takes
/// ~10 s); `report` hears when they start and what they found
/// ([`Progress::CheckingMemory`], [`Progress::MemoryChecked`]).
fn ensure_batch_fits(
    model: &Model,
    (source, config): (&Source, &TrainingConfig),
    (devices, pools): (&[Device], &[rayon::ThreadPool]),
    report: &mut dyn FnMut(Progress),
) -> anyhow::Result<()> {
    let batch = config.batch_size.min(source.examples_per_epoch());
    let on_host = devices.iter().all(|d| *d == Device::flex().autodiff());
    if !on_host || batch < 4 * FIRST_PROBE || !crate::memory::counting() {
        return Ok(());
    }
    let Some(available) = machine::available_bytes() else {
        return Ok(());
    };
    report(Progress::CheckingMemory { batch });
    let started = Instant::now();
    // A stream of its own: the run's are left where they are.
    let mut noise = SplitMix64(!config.seed);
    let mut probe = |examples: usize| {
        let chunk: Vec<usize> = (0..examples).collect();
        let (done, peak) = crate::memory::peak_during(|| {
            gradients(
                model,
                (source, config),
                &chunk,
                &mut noise,
                (devices, pools),
            )
            .map(drop)
        });
        done.map(|()| peak.map(|peak| (examples, peak)))
    };
    // A first, small step is not measured: it allocates what every step after it reuses (flex's
    // thread-local scratch), which would bend the line.
    probe(FIRST_PROBE / 4)?;
    let mut probes: Vec<(usize, u64)> = Vec::new();
    let mut size = FIRST_PROBE;
    while size <= batch / 2 {
        // No probe that would take half the memory itself (after the first: a machine that
        // cannot take even that is judged on it).
        if crate::memory::extrapolate(&probes, size).is_some_and(|next| next > available / 2) {
            break;
        }
        let Some(measured) = probe(size)? else {
            return Ok(()); // not counting
        };
        probes.push(measured);
        size *= 2;
    }
    let (Some(tensors), Some(per_example), Some(&(large, large_peak))) = (
        crate::memory::extrapolate(&probes, batch),
        crate::memory::per_example(&probes),
        probes.last(),
    ) else {
        return Ok(());
    };
    // Adam's first and second moments, one f32 of each per parameter, made at the first step.
    let moments = 2 * 4 * model.num_params() as u64;
    let needed = tensors.saturating_add(moments);
    if needed > available {
        // The tensors alone are counted: what would fit leaves the allocator half the memory
        // (under `ulimit -v` a batch whose tensors take three quarters of it failed).
        let per_example = per_example.max(1);
        // Where the line through the probes meets half the memory (below the largest probe
        // too, when even that took more).
        let room = i128::from(available / 2) - i128::from(large_peak) - i128::from(moments);
        let fits = (large as i128 + room / i128::from(per_example)).clamp(1, batch as i128 - 1);
        let measured = match probes[..] {
            [.., (small, _), _] => format!("measured on batches of {small} and {large}"),
            _ => format!("measured on a batch of {large}, which is all there was room for"),
        };
        bail!(
            "a training step on batches of {batch} {examples} needs about {} of memory for its \
             tensors alone ({measured}: {} more for each {example}), more than the {} this \
             process can get (free memory and swap, within its cgroup and `ulimit -v` limits); \
             try --batch-size {} or less (tensors in half the memory, the rest left to the \
             allocator)",
            machine::human(needed),
            machine::human(per_example),
            machine::human(available),
            fits,
            examples = source.example_noun(true),
            example = source.example_noun(false),
        );
    }
    report(Progress::MemoryChecked {
        batch,
        needed,
        available,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
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
    /// A resumed run has no saved Adam state for the epoch it continues from
    /// (`optimizer-<epoch>.bpk`): Adam starts afresh from that epoch's weights, so the run will
    /// not end bit for bit as an uninterrupted one.
    AdamAfresh {
        /// The last completed epoch.
        epoch: usize,
    },
    /// A resumed run that averages its weights ([`TrainingConfig::ema_decay`]) has no trained
    /// weights of its last completed epoch (`trained-<epoch>.bpk`): training goes on from
    /// their average, so the run will not end bit for bit as an uninterrupted one.
    TrainedWeightsMissing {
        /// The last completed epoch.
        epoch: usize,
    },
    /// Before the first epoch: a batch large enough to be checked against the memory (at least
    /// 512 examples, on the CPU, in the `trainer` binary, where the memory left can be read:
    /// Linux) is being measured with a few smaller training steps, which leave the model as it
    /// is.
    CheckingMemory {
        /// Examples per batch.
        batch: usize,
    },
    /// The batch fits: a step's tensors and Adam's moments need about `needed` bytes.
    MemoryChecked {
        /// Examples per batch.
        batch: usize,
        /// Bytes a step's tensors and Adam's moments need, estimated.
        needed: u64,
        /// Bytes this process can get ([`machine::available_bytes`]).
        available: u64,
        /// How long the check took.
        seconds: f64,
    },
}

/// Trains a model as `config` says on the MNIST in `data_dir`, writing the run into `out`
/// (`config.json` once the data has loaded, then weights and a metrics row after every epoch,
/// each file replaced atomically). `report` sees every batch's progress and every epoch's
/// metrics as soon as they are known.
///
/// With several `devices` (GPUs, or the CPU's one repeated) each batch is split among them, data
/// parallel: see [`gradients`]. The model lives on the first; one device is the plain
/// single-device loop.
///
/// Stops with an error naming the epoch and batch if the loss becomes NaN or infinite. The run
/// holds `out`'s [`RunLock`] while it trains.
///
/// # Errors
/// Besides bad data, settings and I/O: [`Occupied`] when `out` is being trained by another
/// process or holds a file of a run.
pub fn train(
    config: &TrainingConfig,
    data_dir: &Path,
    out: &Path,
    devices: &[Device],
    report: impl FnMut(Progress),
) -> anyhow::Result<Model> {
    run_epochs(config, data_dir, out, devices, None, None, report)
}

/// Continues the interrupted run in `out` (killed, even with `kill -9`, or stopped by an error)
/// after its last completed epoch (from scratch if it had not completed one), up to its
/// configured epochs or to `epochs` when given (which is then saved in its `config.json`). At
/// most the epoch that was running when it stopped is lost: weights and metrics are written
/// atomically after every epoch. The run holds `out`'s [`RunLock`] from the start.
///
/// The data order of the remaining epochs is the one the uninterrupted run would have used, and
/// so are the input noise and the VAEs' latent samples (one stream per epoch, from the seed).
/// Adam continues from its saved state (`optimizer-<epoch>.bpk`; a run without one starts Adam
/// afresh, and says so: [`Progress::AdamAfresh`]): a resumed run ends as the uninterrupted one
/// would have, bit for bit. A run that averages its weights ([`TrainingConfig::ema_decay`]) goes
/// on from its trained weights (`trained-<epoch>.bpk`; without them from the average, and says
/// so: [`Progress::TrainedWeightsMissing`]), its average read back from `model.bpk` (the same up
/// to float rounding).
///
/// # Errors
/// A missing or unreadable run, a run another process is training ([`Occupied::Busy`]), weights
/// without a metrics row or metrics without weights (a damaged run, left as it is), an optimizer
/// checkpoint two or more epochs past the last one `metrics.csv` records (its metrics older than
/// its weights), a `metrics.csv` that does not count epochs 1, 2, ... in order, or `epochs`
/// below the epochs already done.
pub fn resume(
    out: &Path,
    data_dir: &Path,
    devices: &[Device],
    epochs: Option<usize>,
    report: impl FnMut(Progress),
) -> anyhow::Result<Model> {
    // One trainer at a time, before anything in the run is read or settled: a second would
    // write over this one's checkpoints. (A folder without a config is no run, and gets no lock
    // file.)
    if !out.join(crate::run::CONFIG_FILE).is_file() {
        load_config(out).context("reading the run to resume")?;
    }
    let lock = RunLock::take(out)?;
    // The epochs `metrics.csv` records as done (checked row by row below). A file that is there
    // but cannot be read stops here, before any staged weights are settled against it.
    let metrics_path = out.join(METRICS_FILE);
    let recorded = match std::fs::read_to_string(&metrics_path) {
        Ok(csv) => csv.lines().skip(1).filter(|l| !l.trim().is_empty()).count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", metrics_path.display())),
    };
    settle_staged_weights(out, recorded)?;
    // An interrupted run has both (epochs done) or neither (killed before its first epoch
    // ended). One without the other is a damaged run, and starting it afresh would replace the
    // weights or the metrics that are there: stop instead.
    let weights_path = out.join(WEIGHTS_FILE);
    match (weights_path.exists(), recorded > 0) {
        (true, false) => bail!(
            "{} has weights but {} records no epoch: the run is damaged, and resuming would \
             train over its weights; move them away to start it afresh",
            out.display(),
            metrics_path.display()
        ),
        (false, true) => bail!(
            "{} records {recorded} epoch{} but {} is missing: the run is damaged, and resuming \
             would start over and replace its metrics; move them away to start it afresh",
            metrics_path.display(),
            if recorded == 1 { "" } else { "s" },
            weights_path.display()
        ),
        _ => {}
    }
    // A run writes epoch N's optimizer checkpoint before its metrics row and removes the older
    // ones after it, so an interrupted run holds no checkpoint past the epoch after the last
    // one recorded. One further on: metrics.csv is older than the weights (an older copy put
    // back), and resuming would train the weights on as if they were that epoch's. (One epoch
    // further on is what an interruption leaves too, so only two or more are told apart.)
    let later = crate::run::optimizer_checkpoints(out)
        .into_iter()
        .filter(|&(e, _)| e > recorded + 1)
        .max();
    if let Some((_, later)) = later {
        bail!(
            "{} records {recorded} epoch{} but {} is there: the run is damaged (its metrics \
             older than its weights), and resuming would train on from the wrong epoch",
            metrics_path.display(),
            if recorded == 1 { "" } else { "s" },
            later.display(),
        );
    }
    // Killed before its first completed epoch: nothing to keep, start the configured run afresh.
    if recorded == 0 {
        let mut config = load_config(out).context("reading the run to resume")?;
        if let Some(epochs) = epochs {
            config.epochs = epochs;
        }
        return run_epochs(&config, data_dir, out, devices, None, Some(lock), report);
    }
    let Some(device) = devices.first() else {
        bail!("no device to train on");
    };
    let autodiff = device.clone().autodiff();
    let (mut config, model) = load_run(out, &autodiff).context("loading the run to resume")?;
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
    // Every row whole, as `pictures` reads them: a damaged row would otherwise be appended to
    // and the run's loss curves refused from then on.
    crate::pictures::parse_metrics(&metrics).with_context(|| {
        format!(
            "{} is damaged; resuming would append to it",
            metrics_path.display()
        )
    })?;
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
        devices,
        Some((model, done, csv)),
        Some(lock),
        report,
    )
}

/// Makes the folder `dir` (and its parents); whether this call made it, rather than found it.
fn make_dir(dir: &Path) -> anyhow::Result<bool> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// A run folder [`run_epochs`] made: when it is left (by an error, or a panic) before the first
/// epoch's metrics row was written, it holds only the config and is removed, so that the same
/// `--out` can be trained again. A run with an epoch done stays, to resume; so does a folder the
/// run found (a run being resumed, a folder the user made).
struct UnfinishedRun<'a> {
    dir: &'a Path,
    made_here: bool,
}

impl Drop for UnfinishedRun<'_> {
    fn drop(&mut self) {
        if self.made_here && !self.dir.join(METRICS_FILE).exists() {
            std::fs::remove_dir_all(self.dir).ok();
        }
    }
}

/// The epochs of a run: from scratch, or from `start` = (model, epochs done, metrics so far).
/// `lock` is the run's when the caller holds it; without it `out` is a new run's, locked here
/// when it is made.
fn run_epochs(
    config: &TrainingConfig,
    data_dir: &Path,
    out: &Path,
    devices: &[Device],
    start: Option<(Model, usize, String)>,
    lock: Option<RunLock>,
    mut report: impl FnMut(Progress),
) -> anyhow::Result<Model> {
    // The checks `load_config` makes of a saved run, for a configuration built in code too.
    config.validate().map_err(anyhow::Error::msg)?;
    let source = Source::load(config, data_dir)?;
    let fresh = start.is_none();
    let devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let Some(device) = devices.first().cloned() else {
        bail!("no device to train on");
    };
    let pools = shard_pools(&devices)?;
    let mut rng = SplitMix64(config.seed);
    let examples = source.examples_per_epoch();
    let steps = config.epochs * examples.div_ceil(config.batch_size);
    if let Some(warmup) = config.warmup_steps.filter(|&w| fresh && w > steps) {
        bail!(
            "--warmup-steps {warmup} is more than the run's {steps} optimisation steps: its \
             learning rate would never reach --lr"
        );
    }
    let (mut model, done, mut metrics_csv) = match start {
        None => {
            let model = init_model(&config.model, config.seed, &device);
            (model, 0, String::from(EpochMetrics::CSV_HEADER))
        }
        Some((model, done, csv)) => {
            // Replay the shuffles of the epochs done, so the next epochs see the same order.
            let mut order: Vec<usize> = (0..examples).collect();
            for _ in 0..done {
                rng.shuffle(&mut order);
            }
            (model, done, csv)
        }
    };
    let batches = examples.div_ceil(config.batch_size);
    // Weight averaging: a resumed run's `model` (its `model.bpk`) is then the average, and
    // training goes on from the trained weights saved beside it.
    let mut average = match config.ema_decay {
        None => None,
        Some(decay) if done == 0 => Some(WeightAverage::new(decay, Keep::for_device(&device))?),
        Some(decay) => {
            let keep = Keep::for_device(&device);
            let average = WeightAverage::resume(decay, keep, (done * batches) as u64, &model)?;
            match load_trained_weights(out, done, &config.model, &device)? {
                Some(trained) => {
                    average.check(&trained).with_context(|| {
                        format!(
                            "{} are not the trained weights of {}",
                            out.join(trained_weights_file(done)).display(),
                            out.join(WEIGHTS_FILE).display()
                        )
                    })?;
                    model = trained;
                }
                None => report(Progress::TrainedWeightsMissing { epoch: done }),
            }
            Some(average)
        }
    };
    ensure_batch_fits(&model, (&source, config), (&devices, &pools), &mut report)?;
    // Only once the data has loaded and the batch is known to fit, so a run that cannot start
    // leaves nothing behind.
    let (_lock, created) = match lock {
        Some(lock) => (lock, false),
        None => {
            let created = make_dir(out)?;
            let lock = RunLock::take(out)?;
            // Another trainer may have started a run here since the caller looked.
            Occupied::check(out)?;
            (lock, created)
        }
    };
    // Dropped before the lock: the folder goes while no other trainer can take it.
    let _unfinished = UnfinishedRun {
        dir: out,
        made_here: created,
    };
    if fresh {
        save_config(config, out)?;
    }
    let mut optim = adam();
    if done > 0 {
        // Adam's moments as they were after the last completed epoch, when the run has them.
        match load_optimizer(out, done, &model)? {
            Some(record) => optim = optim.load_record(record),
            None => report(Progress::AdamAfresh { epoch: done }),
        }
    }
    for epoch in done + 1..=config.epochs {
        let start = Instant::now();
        // The input noise and the VAEs' latent samples have a stream of their own, so the data
        // order does not depend on the family; one per epoch, so a resumed run draws what the
        // straight run drew.
        let mut noise_rng = SplitMix64(config.seed ^ 0xC0FF_EE00 ^ ((epoch as u64) << 32));
        let mut order: Vec<usize> = (0..examples).collect();
        rng.shuffle(&mut order);
        let mut sums = [0.0; 3];
        let mut seen = 0usize;
        for (batch_index, chunk) in order.chunks(config.batch_size).enumerate() {
            let (losses, grads) = gradients(
                &model,
                (&source, config),
                chunk,
                &mut noise_rng,
                (&devices, &pools),
            )?;
            let total = losses[0];
            if !total.is_finite() {
                bail!(
                    "loss became {total} at epoch {epoch}, batch {batch_index}: \
                     lower the learning rate (now {:e})",
                    config.learning_rate_at(
                        (epoch - 1) * batches + batch_index,
                        config.epochs * batches
                    )
                );
            }
            let n = chunk.len() as f64;
            for (sum, value) in sums.iter_mut().zip(losses) {
                *sum += value * n;
            }
            let step = (epoch - 1) * batches + batch_index;
            let lr = config.learning_rate_at(step, config.epochs * batches);
            model = optim.step(lr, model, grads);
            if let Some(average) = average.as_mut() {
                average.update(&model)?;
            }
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
        let trained = model.valid();
        // The run's weights: the trained ones, or their average.
        let weights = match &average {
            Some(average) => average.weights(trained.clone()),
            None => trained.clone(),
        };
        let test = source.evaluate(&weights, config, &device)?;
        // The last step can leave weights that are no longer finite: keep the last good
        // checkpoint rather than replace it with them.
        if !test.loss.is_finite() {
            bail!(
                "test loss became {} after epoch {epoch}: the weights are no longer finite, \
                 so epoch {epoch} is not saved; lower the learning rate (now {:e})",
                test.loss,
                config.learning_rate_at(epoch * batches - 1, config.epochs * batches)
            );
        }
        let n = examples as f64;
        let m = EpochMetrics {
            epoch,
            train_loss: sums[0] / n,
            train_reconstruction: sums[1] / n,
            train_kl: sums[2] / n,
            test_loss: test.loss,
            test_reconstruction: test.reconstruction,
            test_kl: test.kl,
            test_mse: test.output.mse,
            images_per_second: n / train_seconds,
            seconds: start.elapsed().as_secs_f64(),
        };
        // Optimizer and weights beside the previous epoch's, then the metrics row that marks
        // the epoch done, then the weights renamed into place. A run killed before the row
        // resumes from the previous epoch's weights and optimizer state (both still there); one
        // killed after it, from this epoch's (`resume` finishes the renaming).
        save_optimizer(&optim, epoch, out)?;
        if average.is_some() {
            save_trained_weights(&trained, epoch, out)?;
        }
        stage_weights(&weights, epoch, out)?;
        metrics_csv.push_str(&m.csv_row());
        machine::write_file(&out.join(METRICS_FILE), metrics_csv.as_bytes())?;
        commit_weights(out, epoch)?;
        prune_checkpoints(out, epoch);
        report(Progress::Epoch(&m));
    }
    Ok(match &average {
        Some(average) => average.weights(model.valid()),
        None => model.valid(),
    })
}
