//! `trainer`: trains an autoencoder on the bundled MNIST and writes a run directory.
use std::{io::IsTerminal, path::PathBuf};

use anyhow::Context;
use burn::prelude::*;
use clap::{Parser, Subcommand, ValueEnum, builder::RangedU64ValueParser};
use trainer::{
    data::{self, PIXELS},
    model::{ModelConfig, Reconstruction},
    pictures,
    run::TrainingConfig,
    training,
};

#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  trainer train conv-vae --epochs 10 --out runs/conv-vae\n  trainer train dense-ae --latent 32 --out runs/dense-32\n  trainer train denoising-ae --noise-std 0.3 --noise-mean 0\n  trainer eval runs/conv-vae\n  trainer sample runs/conv-vae --count 64\n  trainer train conv-vae --conditional --out runs/cvae\n  trainer sample runs/cvae --digit 7\n  trainer pictures runs/conv-vae"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Train a model family: dense-ae, conv-ae, denoising-ae, super-res, fc-vae, conv-vae,
    /// camera-denoiser.
    Train(TrainArgs),
    /// Continue an interrupted run (even one killed with kill -9) after its last completed
    /// epoch.
    Resume(ResumeArgs),
    /// Evaluate a trained run on the official 10k test images: loss, and PSNR/SSIM of the output
    /// (and of the noisy input or the bicubic upscaling for denoising/super-resolution).
    Eval(EvalArgs),
    /// Decode random latents (N(0, I), the prior of a VAE) into a PNG contact sheet.
    Sample(SampleArgs),
    /// The PCA baseline: fit on the training images, reconstruction MSE on the test images at
    /// each number of components, next to a trained run's at its latent size.
    Pca(PcaArgs),
    /// Training throughput of every family (or the named ones): images (patches for the camera
    /// denoiser) per second over a number of Adam steps on the bundled data.
    Bench(BenchArgs),
    /// Draw a trained run: reconstructions, the latent scatter of the test set coloured by digit,
    /// digits decoded across the 2-d latent plane (not for a conditional VAE: its samples show
    /// each style as every digit), loss curves (PNG files).
    Pictures(PicturesArgs),
}

#[derive(clap::Args)]
struct ResumeArgs {
    /// Run directory written by `trainer train`.
    run: PathBuf,
    /// Train up to this many epochs in all (default: the run's configured epochs).
    #[arg(long)]
    epochs: Option<usize>,
    /// Dataset directory [default: the one the run was trained on, else the bundled MNIST, or
    /// data/natural for camera-denoiser].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    hardware: Hardware,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Families to time [default: all].
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(ModelConfig::FAMILIES))]
    families: Vec<String>,
    /// Timed optimisation steps per family.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batches: u32,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Where to train, as `train` does.
    #[command(flatten)]
    hardware: Hardware,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Run directory written by `trainer train`.
    run: PathBuf,
    /// Dataset directory [default: the one the run was trained on, else the bundled MNIST, or
    /// data/natural for camera-denoiser].
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PcaArgs {
    /// Numbers of components, comma-separated (each at most 784, the pixels of an image).
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [2, 8, 32],
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=PIXELS as u64)
    )]
    components: Vec<usize>,
    /// A trained run to compare with (its reconstruction MSE from the latent mean).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Directory with the MNIST IDX files and SHA256SUMS [default: the run's dataset with --run,
    /// else the bundled MNIST].
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SampleArgs {
    /// Run directory written by `trainer train`.
    run: PathBuf,
    /// Digits to draw.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    count: u32,
    /// Seed of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Conditional models: the digit to draw [default: the ten digits, one per column].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    digit: Option<u8>,
    /// The PNG to write, named `.png` (default: `<run>/samples.png`).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PicturesArgs {
    /// Run directory written by `trainer train`.
    run: PathBuf,
    /// Where to write the PNG files (default: `<run>/pictures`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Dataset directory [default: the one the run was trained on, else the bundled MNIST, or
    /// data/natural for camera-denoiser].
    #[arg(long)]
    data: Option<PathBuf>,
}

/// `--reconstruction`'s values.
#[derive(Clone, Copy, ValueEnum)]
enum Loss {
    /// Binary cross-entropy.
    Bce,
    /// Squared error.
    Sse,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// Burn's pure-Rust CPU backend.
    Flex,
    /// Burn's deprecated ndarray CPU backend (build with `--features ndarray`; for comparison).
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// NVIDIA GPU (build with `--features cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
    /// Any GPU through wgpu (build with `--features wgpu`).
    #[cfg(feature = "wgpu")]
    Wgpu,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Model family.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(ModelConfig::FAMILIES))]
    family: String,
    /// Run directory to write (config.json, model.bpk, metrics.csv) [default: runs/<family>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Dataset directory [default: the bundled MNIST, or data/natural for camera-denoiser].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, value_parser = learning_rate)]
    lr: f64,
    /// Let the learning rate fall from --lr to this value along a half cosine over the run's
    /// --epochs (`resume --epochs` with more epochs stretches the schedule) [default: constant].
    #[arg(long, value_parser = learning_rate)]
    final_lr: Option<f64>,
    /// Raise the learning rate linearly from --lr/N to --lr over the first N steps (a step is
    /// one batch; 60,000 MNIST images at batch 128 are 469 steps an epoch) [default: none].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Save and evaluate an exponential moving average of the weights, with this decay per
    /// step (above 0 and below 1; 0.999: about the last 1,000 steps), instead of the last
    /// step's weights; training goes on from the trained ones [default: off].
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,
    /// Latent size [default: the family's: dense-ae 32, conv AEs 128 (4x4x8), VAEs 2].
    #[arg(long)]
    latent: Option<usize>,
    /// Denoising AE: mean of the Gaussian noise added to the inputs [default: 0.5].
    #[arg(long)]
    noise_mean: Option<f32>,
    /// Denoising AE: standard deviation of the noise [default: 0.5].
    #[arg(long)]
    noise_std: Option<f32>,
    /// Camera denoiser: feature channels; conv-vae: channels of its narrow (7x7, 4x4, 8x8)
    /// layers [default: 8 for both].
    #[arg(long)]
    channels: Option<usize>,
    /// conv-vae: width of a dense hidden layer between the 4x4 map and the latent, in the
    /// encoder and the decoder (0: none); fc-vae: width of its hidden layers [default: conv-vae
    /// none (the lesson's), fc-vae 512].
    #[arg(long)]
    hidden: Option<usize>,
    /// VAEs: the loss's reconstruction term, binary cross-entropy or squared error summed over
    /// the pixels [default: conv-vae bce, fc-vae sse (the lesson's)].
    #[arg(long, value_enum)]
    reconstruction: Option<Loss>,
    /// Camera denoiser: dilation of each 3x3 layer (1 to 64), comma-separated, at least two
    /// layers [default: 1,2,4,2,1].
    #[arg(long, value_delimiter = ',')]
    dilations: Option<Vec<usize>>,
    /// Camera denoiser: training patches per epoch [default: 16384].
    #[arg(long)]
    patches: Option<usize>,
    /// conv-vae: condition the decoder on the digit (a conditional VAE: the one-hot label is
    /// appended to the latent), so `sample --digit` can ask for one.
    #[arg(long)]
    conditional: bool,
    /// Camera denoiser: side of the square training patches, in pixels [default: 48].
    #[arg(long)]
    patch: Option<usize>,
    /// Camera denoiser: score every pixel of a training patch. By default the loss leaves out
    /// the outer pixels (as many as the network's context, 10 for the default dilations): their
    /// outputs read the convolutions' zero padding, which the model never meets in use, where
    /// frames are mirrored outwards first.
    #[arg(long)]
    whole_patch_loss: bool,
    /// Seed for initialisation, shuffling and sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Use only the first N training images.
    #[arg(long)]
    train_subset: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    test_subset: Option<usize>,
    #[command(flatten)]
    hardware: Hardware,
}

impl Backend {
    /// The name `--backend` takes.
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// Where training runs.
#[derive(clap::Args, Clone, Copy)]
struct Hardware {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
    /// Train data parallel on the backend's first N devices (GPUs: cuda 0..N, wgpu's discrete
    /// GPUs 0..N), each batch split among them. The CPU backend has one device: N > 1 splits each
    /// batch into N shards that train at once, the cores shared among them (data parallel on the
    /// cores; on 2 cores `--devices 2` trains the convolutional families faster than one batch on
    /// both, BENCHMARKS.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    devices: u32,
}

impl Hardware {
    /// The devices to train on, the first holding the model.
    ///
    /// # Errors
    /// wgpu: several devices asked for where the machine has fewer discrete GPUs (Burn would
    /// panic on first use instead).
    fn devices(&self) -> anyhow::Result<Vec<Device>> {
        let devices: Vec<Device> = (0..self.devices as usize)
            .map(|i| device(self.backend, i, self.devices))
            .collect();
        #[cfg(feature = "wgpu")]
        if let (Backend::Wgpu, 2..) = (self.backend, self.devices) {
            let found = Device::enumerate(burn::tensor::DeviceType::Wgpu);
            let missing = devices
                .iter()
                .filter(|d| !found.iter().any(|f| f == *d))
                .count();
            if missing > 0 {
                anyhow::bail!(
                    "--devices {} takes wgpu's discrete GPUs 0..{}, and {missing} of them are \
                     not there (wgpu finds: {found:?})",
                    self.devices,
                    self.devices
                );
            }
        }
        Ok(devices)
    }
}

/// A learning rate: a finite number, not negative.
fn learning_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err(format!(
            "{text} is not a usable learning rate (finite, >= 0)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Device `index` of `count` for `backend`: the CPU backends have one (repeated), CUDA counts its
/// GPUs, wgpu takes the best adapter for one device and the discrete GPUs in order for several.
fn device(
    backend: Backend,
    #[cfg_attr(not(any(feature = "cuda", feature = "wgpu")), expect(unused_variables))]
    index: usize,
    #[cfg_attr(not(feature = "wgpu"), expect(unused_variables))] count: u32,
) -> Device {
    match backend {
        Backend::Flex => Device::flex(),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        Backend::Ndarray => Device::ndarray(),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Device::cuda(index),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu if count == 1 => Device::wgpu(Default::default()),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(index)),
    }
}

// Every allocation counted, so that `train` can measure what a step takes before it commits to a
// batch size (`trainer::memory`).
#[global_allocator]
static ALLOCATOR: trainer::memory::CountingAllocator = trainer::memory::CountingAllocator;

fn main() -> anyhow::Result<()> {
    machine::keep_freed_buffers();
    let cli = Cli::parse();
    // The whole command runs on a worker of flex's thread pool, not beside it (see
    // BENCHMARKS.md): the parallel sections then take the pool's other workers, and no idle
    // worker spins on a core the training thread needs.
    rayon::ThreadPoolBuilder::new()
        .build()
        .context("starting the thread pool")?
        .install(|| run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Resume(args) => {
            let config = trainer::run::load_config(&args.run).context("reading the run")?;
            let total = args.epochs.unwrap_or(config.epochs);
            machine::errln!("resuming {}", args.run.display());
            let data = training::data_dir(&config, args.data);
            let mut report = reporter(total, config.model.is_variational());
            let mut epochs_run = 0;
            training::resume(
                &args.run,
                &data,
                &args.hardware.devices()?,
                args.epochs,
                |progress| {
                    if let training::Progress::Epoch(_) = progress {
                        epochs_run += 1;
                    }
                    report(progress)
                },
            )
            .map_err(training_failed)?;
            if epochs_run == 0 {
                // A finished run: nothing was trained.
                machine::errln!(
                    "{} has done its {total} epoch{} already: nothing to train (--epochs N \
                     with a larger N trains on)",
                    args.run.display(),
                    if total == 1 { "" } else { "s" }
                );
            } else {
                machine::errln!("wrote {}", args.run.display());
            }
        }
        Command::Bench(args) => {
            let families: Vec<&str> = if args.families.is_empty() {
                ModelConfig::FAMILIES.to_vec()
            } else {
                args.families.iter().map(String::as_str).collect()
            };
            // Every family's settings checked before the table's first line.
            let configs = families
                .iter()
                .map(|family| {
                    let model = ModelConfig::default_for(family).context("a known family")?;
                    let config = TrainingConfig::new(model).with_batch_size(args.batch_size);
                    config.validate().map_err(anyhow::Error::msg)?;
                    Ok((*family, config))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let on_devices = args.hardware.devices()?;
            let Hardware { backend, devices } = args.hardware;
            let threads = rayon::current_num_threads();
            let on = match on_devices.first() == Some(&Device::flex()) {
                true if devices > 1 => {
                    format!("flex CPU backend, {devices} shards on {threads} threads")
                }
                true => format!("flex CPU backend, {threads} threads"),
                false => format!(
                    "{} backend, {devices} device{}",
                    backend.name(),
                    if devices > 1 { "s" } else { "" }
                ),
            };
            machine::outln!(
                "{:<16} {:>10} {:>14}  (batch {}, {} Adam steps, {on})",
                "family",
                "latent",
                "examples/s",
                args.batch_size,
                args.batches,
            );
            for (family, config) in configs {
                let latent = config.model.latent().map_or("-".into(), |l| l.to_string());
                let data = training::bundled_data_dir(&config.model);
                let rate =
                    training::throughput(&config, &data, args.batches as usize, &on_devices)?;
                machine::outln!("{family:<16} {latent:>10} {rate:>14.0}");
            }
        }
        Command::Eval(args) => {
            let device = Device::flex();
            let (config, model) =
                trainer::run::load_run(&args.run, &device).context("loading the run")?;
            let dir = training::data_dir(&config, args.data);
            if let ModelConfig::CameraDenoiser(_) = config.model {
                let images = trainer::natural::load(&dir, &trainer::natural::HELD_OUT)?;
                let rows =
                    training::evaluate_camera(&model, &images, &[15.0, 25.0, 50.0], &device)?;
                print_camera_evaluation(&args.run, &rows);
                return Ok(());
            }
            let test =
                data::Mnist::load(&dir, data::Split::Test).context("loading the test images")?;
            let e = training::evaluate_images(&model, &config.model, &test, 500, &device)?;
            print_evaluation(&args.run, &config.model, &e);
        }
        Command::Pca(args) => {
            let device = Device::flex();
            // A run is compared on the dataset it was trained on.
            let run = args
                .run
                .as_deref()
                .map(|dir| {
                    let (config, model) =
                        trainer::run::load_run(dir, &device).context("loading the run")?;
                    let latent = config.model.latent().with_context(|| {
                        format!("a {} has no latent size", config.model.family())
                    })?;
                    anyhow::Ok((config, model, latent))
                })
                .transpose()?;
            let dir = match (&run, args.data) {
                (Some((config, ..)), given) => training::data_dir(config, given),
                (None, given) => given.unwrap_or_else(data::bundled_dir),
            };
            let train = data::Mnist::load(&dir, data::Split::Train)
                .context("loading the training images")?;
            let test =
                data::Mnist::load(&dir, data::Split::Test).context("loading the test images")?;
            let k_max = args.components.iter().copied().max().unwrap_or(2);
            let start = std::time::Instant::now();
            let pca = trainer::pca::Pca::fit_images(&train, k_max, &device)?;
            machine::errln!(
                "fitted {k_max} components to {} training images in {:.1}s",
                train.len(),
                start.elapsed().as_secs_f64()
            );
            let rows: Vec<f32> = (0..test.len())
                .flat_map(|i| test.image(i).iter().map(|&p| p as f32 / 255.0))
                .collect();
            let run = match run {
                Some((config, model, latent)) => {
                    let e = training::evaluate_images(&model, &config.model, &test, 500, &device)?;
                    if config.model.classes() > 0 {
                        machine::errln!(
                            "note: a conditional model's decoder is also told each image's digit, \
                             so its {latent}-d code is not compared like for like with PCA's"
                        );
                    }
                    Some((latent, e.output.mse))
                }
                None => None,
            };
            machine::outln!(
                "{:>10} {:>12} {:>10} {:>12}",
                "components",
                "PCA MSE",
                "PCA PSNR",
                "run MSE"
            );
            for &k in &args.components {
                let mse = pca.reconstruction_mse(&rows, k);
                let ours = run
                    .filter(|(latent, _)| *latent == k)
                    .map_or(String::from("-"), |(_, mse)| format!("{mse:.5}"));
                machine::outln!(
                    "{k:>10} {mse:>12.5} {:>9.2}dB {ours:>12}",
                    10.0 * (1.0 / mse).log10()
                );
            }
        }
        Command::Sample(args) => {
            // The samples are one PNG: any other name (the run's own model.bpk, config.json)
            // would be replaced by it.
            if let Some(out) = &args.out {
                let png = out
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("png"));
                anyhow::ensure!(
                    png,
                    "--out {} is not a .png file name: the samples are written as one PNG image",
                    out.display()
                );
            }
            let device = Device::flex();
            let (config, model) =
                trainer::run::load_run(&args.run, &device).context("loading the run")?;
            let latent = config
                .model
                .latent()
                .with_context(|| format!("a {} has no latent to sample", config.model.family()))?;
            if args.digit.is_some() && model.classes() == 0 {
                anyhow::bail!(
                    "--digit needs a conditional model (train conv-vae --conditional); this {} is not",
                    config.model.family()
                );
            }
            let canvas = pictures::samples(
                &model,
                latent,
                args.count as usize,
                args.seed,
                args.digit,
                &device,
            )?;
            let out = args.out.unwrap_or_else(|| args.run.join("samples.png"));
            machine::write_file(&out, &canvas.png()?)?;
            machine::outln!("wrote {} ({} samples)", out.display(), args.count);
        }
        Command::Pictures(args) => {
            let out = args.out.unwrap_or_else(|| args.run.join("pictures"));
            let config = trainer::run::load_config(&args.run).context("reading the run")?;
            let data = training::data_dir(&config, args.data);
            let written = pictures::write_pictures(&args.run, &data, &out, &Device::flex())
                .context("drawing the run")?;
            for path in written {
                machine::outln!("wrote {}", path.display());
            }
        }
        Command::Train(args) => {
            let devices = args.hardware.devices()?;
            let mut model = ModelConfig::default_for(&args.family)
                .with_context(|| format!("unknown family {}", args.family))?;
            if let Some(latent) = args.latent {
                model = model.with_latent(latent).map_err(anyhow::Error::msg)?;
            }
            if args.noise_mean.is_some() || args.noise_std.is_some() {
                let ModelConfig::DenoisingAe(c) = &mut model else {
                    anyhow::bail!("--noise-mean and --noise-std are for denoising-ae");
                };
                c.noise_mean = args.noise_mean.unwrap_or(c.noise_mean);
                c.noise_std = args.noise_std.unwrap_or(c.noise_std);
            }
            let denoiser_flags = args.dilations.is_some()
                || args.patches.is_some()
                || args.patch.is_some()
                || args.whole_patch_loss;
            let reconstruction = args.reconstruction.map(|l| match l {
                Loss::Bce => Reconstruction::Bce,
                Loss::Sse => Reconstruction::Sse,
            });
            match &mut model {
                ModelConfig::CameraDenoiser(c) => {
                    c.channels = args.channels.unwrap_or(c.channels);
                    c.dilations = args.dilations.unwrap_or(c.dilations.clone());
                    c.patches_per_epoch = args.patches.unwrap_or(c.patches_per_epoch);
                    c.patch = args.patch.unwrap_or(c.patch);
                    if args.whole_patch_loss {
                        c.interior_loss = Some(false);
                    }
                }
                ModelConfig::ConvVae(c) => {
                    c.channels = args.channels.or(c.channels);
                    c.hidden = args.hidden.or(c.hidden).filter(|&h| h > 0);
                    c.reconstruction = reconstruction.or(c.reconstruction);
                    c.conditional = c.conditional.or(args.conditional.then_some(true));
                }
                ModelConfig::FcVae(c) => {
                    c.hidden = args.hidden.unwrap_or(c.hidden);
                    c.reconstruction = reconstruction.or(c.reconstruction);
                }
                _ => {}
            }
            let family = model.family();
            let given = |flag: &str, set: bool, families: &[&str]| {
                if set && !families.contains(&family) {
                    let verb = if flag.contains(" and ") { "are" } else { "is" };
                    anyhow::bail!("{flag} {verb} for {}, not {family}", families.join(", "));
                }
                Ok(())
            };
            given(
                "--channels",
                args.channels.is_some(),
                &["camera-denoiser", "conv-vae"],
            )?;
            given("--hidden", args.hidden.is_some(), &["conv-vae", "fc-vae"])?;
            // A VAE's hidden layer of width 1 trains, but its encoder (the image flattened into
            // one value) cannot be exported: tract fails to optimise that layer ("Trying to
            // substitute a ,F32 by 1,1,F32" in its EinSum codegen). Refused for new runs only:
            // one trained before still loads (its decoder exports).
            if args.hidden == Some(1) {
                anyhow::bail!(
                    "a {family} needs a hidden width of at least 2, not 1 (its encoder could not \
                     be run by the edge runtime's tract)"
                );
            }
            given("--conditional", args.conditional, &["conv-vae"])?;
            given(
                "--reconstruction",
                reconstruction.is_some(),
                &["conv-vae", "fc-vae"],
            )?;
            given(
                "--dilations, --patches, --patch and --whole-patch-loss",
                denoiser_flags,
                &["camera-denoiser"],
            )?;
            let mnist: Vec<&str> = ModelConfig::FAMILIES
                .iter()
                .copied()
                .filter(|&f| f != "camera-denoiser")
                .collect();
            given(
                "--train-subset and --test-subset",
                args.train_subset.is_some() || args.test_subset.is_some(),
                &mnist,
            )?;
            model.validate().map_err(anyhow::Error::msg)?;
            let out = args
                .out
                .unwrap_or_else(|| PathBuf::from("runs").join(&args.family));
            let config = TrainingConfig::new(model)
                .with_epochs(args.epochs)
                .with_batch_size(args.batch_size)
                .with_learning_rate(args.lr)
                .with_final_learning_rate(args.final_lr)
                .with_warmup_steps(args.warmup_steps)
                .with_ema_decay(args.ema)
                .with_seed(args.seed)
                .with_train_subset(args.train_subset)
                .with_test_subset(args.test_subset)
                .with_data(args.data.map(std::path::absolute).transpose()?);
            // Bad settings are said as such, before anything is made (not as "training failed").
            config.validate().map_err(anyhow::Error::msg)?;
            machine::check_output_folder(&out)?;
            // A run another trainer is training is said as such, not as one to resume.
            if out.join(trainer::run::LOCK_FILE).exists() {
                drop(trainer::run::RunLock::take(&out)?);
            }
            if out.join(trainer::run::CONFIG_FILE).exists() {
                anyhow::bail!(
                    "{} already holds a run: `trainer resume {0}` continues it; to start over, \
                     delete it or give another --out",
                    out.display()
                );
            }
            // What is left of a run whose config is gone would be overwritten all the same.
            trainer::run::Occupied::check(&out)?;
            machine::errln!("training {} into {}", args.family, out.display());
            let data = training::data_dir(&config, None);
            let vae = config.model.is_variational();
            // A run that fails before its first epoch is recorded leaves no folder it made
            // (`training::train`), so the same --out can be trained again.
            training::train(&config, &data, &out, &devices, reporter(config.epochs, vae))
                .map_err(training_failed)?;
            machine::errln!("wrote {}", out.display());
        }
    }
    Ok(())
}

/// A training error as the user reads it: "training failed" above its cause, except for a run
/// another trainer holds ([`trainer::run::Occupied`]), which was refused, not failed.
fn training_failed(e: anyhow::Error) -> anyhow::Error {
    if e.is::<trainer::run::Occupied>() {
        e
    } else {
        e.context("training failed")
    }
}

/// Prints training progress: a bar on a terminal (redrawn at most 5 times a second) and one line
/// per epoch.
///
/// For a VAE, warns when the test KL has fallen to about zero: the posterior is the prior and
/// the decoder ignores the latent.
fn reporter(epochs: usize, vae: bool) -> impl FnMut(training::Progress) {
    let interactive = std::io::stderr().is_terminal();
    let mut last_bar = std::time::Instant::now();
    move |progress| {
        let m = match progress {
            training::Progress::Batch {
                epoch,
                done,
                batches,
                loss,
                images_per_second,
            } => {
                // A progress bar on a terminal, redrawn at most 5 times a second.
                if interactive && (done == batches || last_bar.elapsed().as_millis() >= 200) {
                    last_bar = std::time::Instant::now();
                    let filled = 30 * done / batches.max(1);
                    machine::err!(
                        "\repoch {epoch:>3}/{} [{}{}] {done}/{batches}  loss {loss:.2}  {images_per_second:.0} img/s ",
                        epochs,
                        "=".repeat(filled),
                        " ".repeat(30 - filled)
                    );
                }
                return;
            }
            training::Progress::Epoch(m) => m,
            training::Progress::CheckingMemory { batch } => {
                machine::errln!(
                    "checking that batches of {batch} fit in memory: a few smaller training \
                     steps, measured (the model is left as it is)"
                );
                return;
            }
            training::Progress::MemoryChecked {
                batch,
                needed,
                available,
                seconds,
            } => {
                machine::errln!(
                    "a step on batches of {batch} needs about {} for its tensors and Adam's \
                     moments, of the {} this process can get (checked in {seconds:.1} s)",
                    machine::human(needed),
                    machine::human(available)
                );
                return;
            }
            training::Progress::TrainedWeightsMissing { epoch } => {
                machine::errln!(
                    "warning: trained-{epoch}.bpk is missing: training goes on from epoch \
                     {epoch}'s averaged weights, so the run will not end as an uninterrupted one \
                     would"
                );
                return;
            }
            training::Progress::AdamAfresh { epoch } => {
                machine::errln!(
                    "warning: optimizer-{epoch}.bpk is missing: Adam starts afresh from epoch \
                     {epoch}'s weights, so the run will not end as an uninterrupted one would"
                );
                return;
            }
        };
        if interactive {
            machine::err!("\r{}\r", " ".repeat(100));
        }
        machine::errln!(
            "epoch {:>3}  train {:.4} (rec {:.4} kl {:.3})  test {:.4} (rec {:.4} kl {:.3})  mse {:.5}  {:.0} img/s  {:.1}s",
            m.epoch,
            m.train_loss,
            m.train_reconstruction,
            m.train_kl,
            m.test_loss,
            m.test_reconstruction,
            m.test_kl,
            m.test_mse,
            m.images_per_second,
            m.seconds
        );
        if vae && m.test_kl < COLLAPSED_KL {
            machine::errln!(
                "warning: KL {:.4} at epoch {}: the latent carries no information (the decoder \
                 ignores it; with --reconstruction sse often saturated sigmoid outputs that no \
                 longer learn); a learning-rate warm-up (--warmup-steps 469, one epoch at \
                 batch 128) or a lower --lr usually avoids it",
                m.test_kl,
                m.epoch
            );
        }
    }
}

/// Test KL (nats per image) under which a VAE's latent carries next to no information.
const COLLAPSED_KL: f64 = 0.05;

/// Prints `trainer eval`'s report.
fn print_evaluation(run: &std::path::Path, model: &ModelConfig, e: &training::Evaluation) {
    use trainer::model::LossKind;
    machine::outln!(
        "{} ({}): {} test images",
        run.display(),
        model.family(),
        e.images
    );
    let reconstruction = match model.loss_kind() {
        LossKind::MeanBce => "binary cross-entropy, mean over pixels",
        LossKind::BceKl => "binary cross-entropy summed over 784 pixels",
        LossKind::SseKl => "squared error summed over 784 pixels",
        LossKind::Mse => "squared error, mean over pixels",
    };
    machine::outln!("loss            {:>9.4} per image", e.loss);
    if model.is_variational() {
        machine::outln!(
            "  reconstruction {:>8.4} ({reconstruction})",
            e.reconstruction
        );
        machine::outln!("  KL             {:>8.4}", e.kl);
        if let Some(sampled) = e.sampled_loss {
            machine::outln!(
                "  sampled        {sampled:>8.4} (the loss with one latent sample per image, \
                 not the mean: Keras' validation loss)"
            );
        }
        // Both VAE losses, whichever this one was trained on, to compare VAEs.
        machine::outln!(
            "  MSE x 784 + KL {:>8.4} (the lesson's FC VAE loss)",
            e.output.mse * 784.0 + e.kl
        );
        machine::outln!(
            "  BCE + KL       {:>8.4} (summed over pixels: the Bernoulli negative ELBO, nats)",
            e.bce + e.kl
        );
    } else {
        machine::outln!("  ({reconstruction})");
    }
    let row = |name: &str, q: &training::Quality| {
        machine::outln!(
            "{name:<15} MSE {:.5}  PSNR {:>6.2} dB  SSIM {:.4}",
            q.mse,
            q.psnr_db,
            q.ssim
        );
    };
    row("output", &e.output);
    if let Some(baseline) = &e.baseline {
        let name = match model.corruption() {
            trainer::model::Corruption::Downsample => "bicubic",
            _ => "noisy input",
        };
        row(name, baseline);
    }
}

/// Prints `trainer eval`'s report for the camera denoiser.
fn print_camera_evaluation(run: &std::path::Path, rows: &[training::CameraEvaluation]) {
    machine::outln!(
        "{} (camera-denoiser): held-out photographs, 8-bit noisy frames",
        run.display()
    );
    machine::outln!(
        "{:<14} {:>6} {:>10} {:>10}",
        "image",
        "sigma",
        "noisy dB",
        "ours dB"
    );
    for r in rows {
        machine::outln!(
            "{:<14} {:>6} {:>10.2} {:>10.2}",
            r.image,
            r.sigma,
            r.noisy_psnr_db,
            r.denoised_psnr_db
        );
    }
    let mut sigmas: Vec<f32> = rows.iter().map(|r| r.sigma).collect();
    sigmas.sort_by(f32::total_cmp);
    sigmas.dedup();
    for sigma in sigmas {
        let of: Vec<_> = rows.iter().filter(|r| r.sigma == sigma).collect();
        let mean = |f: fn(&training::CameraEvaluation) -> f64| {
            of.iter().map(|r| f(r)).sum::<f64>() / of.len() as f64
        };
        machine::outln!(
            "{:<14} {:>6} {:>10.2} {:>10.2}",
            "mean",
            sigma,
            mean(|r| r.noisy_psnr_db),
            mean(|r| r.denoised_psnr_db)
        );
    }
}

#[cfg(test)]
#[macro_use]
#[path = "../../tests/src/readme.rs"]
mod readme;

#[cfg(test)]
readme_commands_parse!(
    super::Cli,
    "trainer",
    "trainer",
    15,
    ["cuda", "wgpu", "ndarray"]
);
