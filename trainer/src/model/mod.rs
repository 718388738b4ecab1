//! The model families, one definition each, and their losses.
//!
//! | family | input | model | loss (per image) |
//! |---|---|---|---|
//! | `dense-ae` | image | [`DenseAe`] 784-512-128-latent-128-512-784 | BCE, mean over pixels |
//! | `conv-ae` | image | [`ConvAe`], the lesson's (4x4x8 code) | BCE, mean over pixels |
//! | `denoising-ae` | noisy image (fresh noise every batch) | [`ConvAe`] | BCE vs the clean image |
//! | `super-res` | 14x14 average-pooled image | [`SuperRes`] | BCE vs the 28x28 image |
//! | `fc-vae` | image | [`FcVae`] 784-512-(mean, log-var) / latent-512-784 | MSE x 784 + KL (or BCE summed + KL) |
//! | `conv-vae` | image | [`ConvVae`], the lesson's or wider | BCE summed over pixels + KL (or MSE x 784 + KL) |
//! | `camera-denoiser` | noisy photo patch (sigma 5..50 of 255, 8-bit) | [`CameraDenoiser`] | MSE |
//!
//! [`ModelConfig`] (saved in the run's `config.json`) names the family and its hyper-parameters;
//! [`Model`] is the trained module. The MNIST models return pre-sigmoid logits
//! `[batch, 1, 28, 28]` (the losses apply the sigmoid stably; on the CPU in one fused pass, see
//! `fused.rs`); the camera denoiser returns the image itself ([`Model::to_image`] makes either an
//! image).

mod conv;
mod conv_vae;
mod dense;
mod fused;

pub use conv::{
    CODE_SIDE, CameraDenoiser, CameraDenoiserConfig, ConvAe, ConvAeConfig, SuperRes,
    SuperResConfig, UpConv,
};
pub use conv_vae::*;
pub use dense::{DenseAe, DenseAeConfig, FcDecoder, FcVae, FcVaeConfig};

use burn::{
    prelude::*,
    tensor::{
        activation::{relu, sigmoid},
        module::{avg_pool2d, interpolate},
        ops::{AvgPoolOptions, InterpolateMode, InterpolateOptions},
    },
};
use serde::{Deserialize, Serialize};

use crate::{data::SIDE, rng::SplitMix64};

/// What a family feeds its model, made from a clean image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Corruption {
    /// The clean image.
    None,
    /// The clean image plus Gaussian noise `N(mean, std)` per pixel, clipped to `[0, 1]`.
    Noise {
        /// Mean of the noise.
        mean: f32,
        /// Standard deviation of the noise.
        std: f32,
    },
    /// The image average-pooled 2x2 (28x28 -> 14x14).
    Downsample,
}

impl Corruption {
    /// The model input made from clean images `[batch, 1, 28, 28]`; the noise comes from `rng`
    /// (a fresh draw on every call).
    pub fn apply(&self, clean: Tensor<4>, rng: &mut SplitMix64) -> Tensor<4> {
        match *self {
            Self::None => clean,
            Self::Noise { mean, std } => {
                let shape = clean.dims();
                let noise = rng.normals(shape.iter().product());
                let noise = Tensor::<1>::from_floats(noise.as_slice(), &clean.device())
                    .reshape(shape)
                    .mul_scalar(std)
                    .add_scalar(mean);
                (clean + noise).clamp(0.0, 1.0)
            }
            Self::Downsample => avg_pool2d(clean, AvgPoolOptions::new([2, 2])),
        }
    }

    /// What the model's output is judged against besides the clean image: the noisy input
    /// itself, or the low-resolution input upscaled bicubically (clipped to `[0, 1]`). `None`
    /// when the input is the clean image.
    pub fn baseline(&self, input: Tensor<4>) -> Option<Tensor<4>> {
        match self {
            Self::None => None,
            Self::Noise { .. } => Some(input),
            Self::Downsample => Some(
                interpolate(
                    input,
                    InterpolateOptions::new(InterpolateMode::Bicubic)
                        .with_align_corners(false)
                        .with_output_size([SIDE, SIDE]),
                )
                .clamp(0.0, 1.0),
            ),
        }
    }
}

/// Hyper-parameters of the denoising AE: the lesson's conv AE fed noisy images.
#[derive(Config, Debug, PartialEq)]
pub struct DenoisingAeConfig {
    /// The autoencoder.
    #[config(default = "ConvAeConfig::new()")]
    pub model: ConvAeConfig,
    /// Mean of the Gaussian noise added to the inputs (the lesson's notebook: 0.5).
    #[config(default = 0.5)]
    pub noise_mean: f32,
    /// Standard deviation of the noise (the lesson's notebook: 0.5).
    #[config(default = 0.5)]
    pub noise_std: f32,
}

/// A model family and its hyper-parameters, as `config.json` records it
/// (`{"family": "conv-vae", "latent": 2}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// Dense autoencoder.
    DenseAe(DenseAeConfig),
    /// The lesson's convolutional autoencoder.
    ConvAe(ConvAeConfig),
    /// Denoising autoencoder (noisy in, clean out).
    DenoisingAe(DenoisingAeConfig),
    /// Super-resolution autoencoder (14x14 in, 28x28 out).
    SuperRes(SuperResConfig),
    /// Fully-connected VAE.
    FcVae(FcVaeConfig),
    /// Convolutional VAE.
    ConvVae(ConvVaeConfig),
    /// Denoiser for camera frames, trained on natural photographs.
    CameraDenoiser(CameraDenoiserConfig),
}

/// What a VAE's reconstruction term measures (per image, summed over the pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reconstruction {
    /// Binary cross-entropy of the sigmoid output: with the KL, the negative ELBO of a Bernoulli
    /// likelihood (the conv VAE's default).
    Bce,
    /// Squared error, `MSE x 784`: the lesson's FC VAE loss (its default).
    Sse,
}

/// How a family's loss is computed (per image, averaged over the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Binary cross-entropy, mean over the pixels (Keras' `binary_crossentropy`).
    MeanBce,
    /// Squared error summed over the pixels (`MSE x 784`) + KL.
    SseKl,
    /// Binary cross-entropy summed over the pixels + KL.
    BceKl,
    /// Squared error of the (unclipped) output image, mean over the pixels.
    Mse,
}

impl From<Reconstruction> for LossKind {
    fn from(r: Reconstruction) -> Self {
        match r {
            Reconstruction::Bce => Self::BceKl,
            Reconstruction::Sse => Self::SseKl,
        }
    }
}

impl ModelConfig {
    /// Every family's name, as the CLI and `config.json` spell it.
    pub const FAMILIES: [&'static str; 7] = [
        "dense-ae",
        "conv-ae",
        "denoising-ae",
        "super-res",
        "fc-vae",
        "conv-vae",
        "camera-denoiser",
    ];

    /// The family's name.
    pub fn family(&self) -> &'static str {
        let i = match self {
            Self::DenseAe(_) => 0,
            Self::ConvAe(_) => 1,
            Self::DenoisingAe(_) => 2,
            Self::SuperRes(_) => 3,
            Self::FcVae(_) => 4,
            Self::ConvVae(_) => 5,
            Self::CameraDenoiser(_) => 6,
        };
        Self::FAMILIES[i]
    }

    /// The family's default configuration, or `None` for an unknown name.
    pub fn default_for(family: &str) -> Option<Self> {
        Some(match family {
            "dense-ae" => Self::DenseAe(DenseAeConfig::new()),
            "conv-ae" => Self::ConvAe(ConvAeConfig::new()),
            "denoising-ae" => Self::DenoisingAe(DenoisingAeConfig::new()),
            "super-res" => Self::SuperRes(SuperResConfig::new()),
            "fc-vae" => Self::FcVae(FcVaeConfig::new()),
            "conv-vae" => Self::ConvVae(ConvVaeConfig::new()),
            "camera-denoiser" => Self::CameraDenoiser(
                CameraDenoiserConfig::new()
                    .with_transposes(Some(true))
                    .with_interior_loss(Some(true)),
            ),
            _ => return None,
        })
    }

    /// Sets the latent (code) size where the family has one: dense AE and VAEs take any size;
    /// the conv AEs take a multiple of 16 (their code is a 4x4 map).
    ///
    /// # Errors
    /// A size the family cannot take, or 0.
    pub fn with_latent(self, latent: usize) -> Result<Self, String> {
        if latent == 0 {
            return Err("the latent size must be at least 1".into());
        }
        let per_map = CODE_SIDE * CODE_SIDE;
        let code = |latent: usize| {
            if latent.is_multiple_of(per_map) {
                Ok(latent / per_map)
            } else {
                Err(format!(
                    "the conv AE's code is a 4x4 map: the latent size must be a multiple of {per_map}, not {latent}"
                ))
            }
        };
        Ok(match self {
            Self::DenseAe(c) => Self::DenseAe(c.with_latent(latent)),
            Self::ConvAe(c) => Self::ConvAe(c.with_code_channels(code(latent)?)),
            Self::DenoisingAe(c) => {
                let model = c.model.clone().with_code_channels(code(latent)?);
                Self::DenoisingAe(c.with_model(model))
            }
            Self::SuperRes(_) | Self::CameraDenoiser(_) => {
                return Err(format!("a {} has no latent size", self.family()));
            }
            Self::FcVae(c) => Self::FcVae(c.with_latent(latent)),
            Self::ConvVae(c) => Self::ConvVae(c.with_latent(latent)),
        })
    }

    /// Size of the latent vector (code), for families with an encoder/decoder pair.
    pub fn latent(&self) -> Option<usize> {
        match self {
            Self::DenseAe(c) => Some(c.latent),
            Self::ConvAe(c) => Some(c.code_channels * CODE_SIDE * CODE_SIDE),
            Self::DenoisingAe(c) => Some(c.model.code_channels * CODE_SIDE * CODE_SIDE),
            Self::SuperRes(_) | Self::CameraDenoiser(_) => None,
            Self::FcVae(c) => Some(c.latent),
            Self::ConvVae(c) => Some(c.latent),
        }
    }

    /// Values appended to the latent at the decoder's input: the digit's one-hot vector
    /// ([`CLASSES`]) for a conditional conv VAE, none (0) otherwise.
    pub fn classes(&self) -> usize {
        match self {
            Self::ConvVae(c) => c.classes(),
            _ => 0,
        }
    }

    /// Whether the family is variational (its loss has a KL term, its latent can be sampled).
    pub fn is_variational(&self) -> bool {
        matches!(self, Self::FcVae(_) | Self::ConvVae(_))
    }

    /// Draws a training example takes from the latent-sample generator (a VAE's samples, see
    /// [`reparameterise`]; none for the other families), so that a batch split into shards can
    /// start each shard's samples where one device's would be ([`SplitMix64::skip`]).
    pub fn sample_draws_per_example(&self) -> u64 {
        match self.latent() {
            Some(latent) if self.is_variational() => sample_draws(latent),
            _ => 0,
        }
    }

    /// What the model is fed.
    pub fn corruption(&self) -> Corruption {
        match self {
            Self::DenoisingAe(c) => Corruption::Noise {
                mean: c.noise_mean,
                std: c.noise_std,
            },
            Self::SuperRes(_) => Corruption::Downsample,
            _ => Corruption::None,
        }
    }

    /// How the loss is computed.
    pub fn loss_kind(&self) -> LossKind {
        match self {
            Self::FcVae(c) => c.reconstruction.unwrap_or(Reconstruction::Sse).into(),
            Self::ConvVae(c) => c.reconstruction.unwrap_or(Reconstruction::Bce).into(),
            Self::CameraDenoiser(_) => LossKind::Mse,
            _ => LossKind::MeanBce,
        }
    }

    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> Model {
        match self {
            Self::DenseAe(c) => Model::DenseAe(c.init(device)),
            Self::ConvAe(c) => Model::ConvAe(c.init(device)),
            Self::DenoisingAe(c) => Model::DenoisingAe(c.model.init(device)),
            Self::SuperRes(c) => Model::SuperRes(c.init(device)),
            Self::FcVae(c) => Model::FcVae(c.init(device)),
            Self::ConvVae(c) => Model::ConvVae(c.init(device)),
            Self::CameraDenoiser(c) => Model::CameraDenoiser(c.init(device)),
        }
    }

    /// Checks hyper-parameters that [`ModelConfig::init`] cannot build a model from (zero sizes,
    /// noise levels out of range).
    pub fn validate(&self) -> Result<(), String> {
        // Widths and channel counts from 1 to their maximum: far above any useful model, and
        // small enough that a typo (`--latent 1000000000`) is an error here instead of an
        // allocation of hundreds of GB that aborts the process.
        let sized = |what: &str, n: usize, max: usize| {
            if n == 0 || n > max {
                Err(format!(
                    "a {} needs {what} from 1 to {max}, not {n}",
                    self.family()
                ))
            } else {
                Ok(())
            }
        };
        let (width, channels) = (
            |what: &str, n: usize| sized(what, n, MAX_WIDTH),
            |what: &str, n: usize| sized(what, n, MAX_CHANNELS),
        );
        match self {
            Self::DenseAe(c) => {
                width("a latent size", c.latent)?;
                c.hidden.iter().try_for_each(|&h| width("hidden widths", h))
            }
            Self::ConvAe(c) => channels("code channels", c.code_channels),
            Self::DenoisingAe(c) => {
                channels("code channels", c.model.code_channels)?;
                if !(c.noise_mean.is_finite() && c.noise_std.is_finite() && c.noise_std >= 0.0) {
                    return Err(format!(
                        "noise N({}, {}) needs a finite mean and a finite standard deviation >= 0",
                        c.noise_mean, c.noise_std
                    ));
                }
                Ok(())
            }
            Self::SuperRes(c) => match c.channels {
                2..=MAX_CHANNELS => Ok(()),
                n => Err(format!(
                    "a super-res needs channels from 2 to {MAX_CHANNELS}, not {n}"
                )),
            },
            Self::FcVae(c) => {
                width("a latent size", c.latent)?;
                width("a hidden width", c.hidden)
            }
            Self::ConvVae(c) => {
                width("a latent size", c.latent)?;
                channels("channels", c.channels())?;
                c.hidden.map_or(Ok(()), |h| width("a hidden width", h))
            }
            Self::CameraDenoiser(c) => {
                channels("channels", c.channels)?;
                c.validate()
            }
        }
    }
}

/// The largest latent size or dense layer width [`ModelConfig::validate`] allows.
pub const MAX_WIDTH: usize = 1 << 14;

/// The most channels a convolution may have ([`ModelConfig::validate`]).
pub const MAX_CHANNELS: usize = 1 << 10;

/// A trained model of any family.
// A process holds one or two models: the variants' sizes do not matter, and Burn's `Module`
// derive wants the modules inline.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// Dense autoencoder.
    DenseAe(DenseAe),
    /// The lesson's convolutional autoencoder.
    ConvAe(ConvAe),
    /// Denoising autoencoder.
    DenoisingAe(ConvAe),
    /// Super-resolution autoencoder.
    SuperRes(SuperRes),
    /// Fully-connected VAE.
    FcVae(FcVae),
    /// Convolutional VAE.
    ConvVae(ConvVae),
    /// Camera-frame denoiser.
    CameraDenoiser(CameraDenoiser),
}

/// A forward pass.
#[derive(Debug)]
pub struct Output {
    /// Pre-sigmoid reconstruction, `[batch, 1, 28, 28]`.
    pub logits: Tensor<4>,
    /// VAEs: latent mean and log-variance, each `[batch, latent]`.
    pub posterior: Option<(Tensor<2>, Tensor<2>)>,
}

fn flat(images: Tensor<4>) -> Tensor<2> {
    images.flatten(1, 3)
}

fn square(x: Tensor<2>) -> Tensor<4> {
    let [batch, _] = x.dims();
    x.reshape([batch, 1, SIDE, SIDE])
}

/// Draws of [`SplitMix64::next_u64`] behind one latent row of [`reparameterise`]: whole
/// Box-Muller pairs of normals, two uniforms each.
fn sample_draws(latent: usize) -> u64 {
    latent.next_multiple_of(2) as u64
}

/// `z = mean + exp(log_var / 2) * eps`, `eps ~ N(0, I)` drawn from `sample`'s generator when
/// there is one, the mean otherwise.
///
/// The noise comes from the caller's generator, not Burn's: the CPU backend's generator is one
/// for the whole process, so two trainings in one process (tests) would take each other's draws.
fn reparameterise(
    mean: Tensor<2>,
    log_var: Tensor<2>,
    sample: Option<&mut SplitMix64>,
) -> Tensor<2> {
    let Some(rng) = sample else {
        return mean;
    };
    let [rows, latent] = mean.dims();
    // Row by row, each from whole Box-Muller pairs: the same numbers however the batch is split
    // among devices.
    let values: Vec<f32> = (0..rows)
        .flat_map(|_| {
            let mut row = rng.normals(sample_draws(latent) as usize);
            row.truncate(latent);
            row
        })
        .collect();
    let eps = Tensor::from_data(TensorData::new(values, [rows, latent]), &mean.device());
    mean + log_var.mul_scalar(0.5).exp() * eps
}

/// The one-hot rows `[digits.len(), classes]` of `digits` (a digit >= `classes` gets a zero row).
pub fn one_hot(digits: &[u8], classes: usize, device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; digits.len() * classes];
    for (row, &d) in values.chunks_exact_mut(classes.max(1)).zip(digits) {
        if let Some(v) = row.get_mut(usize::from(d)) {
            *v = 1.0;
        }
    }
    Tensor::<1>::from_floats(values.as_slice(), device).reshape([digits.len(), classes])
}

/// `latent` with the one-hot `condition` appended (a conditional decoder's input), or `latent`
/// alone when there is no condition.
pub fn with_condition(latent: Tensor<2>, condition: Option<Tensor<2>>) -> Tensor<2> {
    match condition {
        Some(c) => Tensor::cat(vec![latent, c], 1),
        None => latent,
    }
}

impl Model {
    /// Values appended to the latent at the decoder's input ([`ModelConfig::classes`]).
    pub fn classes(&self) -> usize {
        match self {
            Self::ConvVae(m) => m.classes(),
            _ => 0,
        }
    }

    /// What a conditional model is told about `digits` (their one-hot rows); `None` for the
    /// other models, which ignore labels.
    pub fn condition(&self, digits: &[u8], device: &Device) -> Option<Tensor<2>> {
        let classes = self.classes();
        (classes > 0).then(|| one_hot(digits, classes, device))
    }

    /// Runs the model on its `input` (already corrupted as the family's [`Corruption`] says).
    /// VAEs decode a sample of the posterior drawn with `sample`'s generator when given, its mean
    /// otherwise. A conditional model's decoder also gets `condition` ([`Model::condition`];
    /// without one, an all-zero vector: no digit); other models ignore it.
    ///
    /// # Shapes
    /// - input: `[batch, 1, 28, 28]` (`super-res`: `[batch, 1, 14, 14]`)
    /// - condition: `[batch, classes]`
    pub fn forward(
        &self,
        input: Tensor<4>,
        condition: Option<Tensor<2>>,
        sample: Option<&mut SplitMix64>,
    ) -> Output {
        self.forward_with(input, condition, sample, UpConv::Plain)
    }

    /// [`Model::forward`], the decoders' upsampling convolutions computed as `up` says: the
    /// training steps fold them ([`UpConv::Folded`], the same function for fewer multiply-adds);
    /// what the exporter traces keeps them plain.
    pub fn forward_with(
        &self,
        input: Tensor<4>,
        condition: Option<Tensor<2>>,
        sample: Option<&mut SplitMix64>,
        up: UpConv,
    ) -> Output {
        let (logits, posterior) = match self {
            Self::DenseAe(m) => (square(m.decode_logits(m.encode(flat(input)))), None),
            Self::ConvAe(m) | Self::DenoisingAe(m) => {
                (m.decode_logits_with(m.encode(input), up), None)
            }
            Self::SuperRes(m) => (m.forward_logits_with(input, up), None),
            Self::CameraDenoiser(m) => (m.forward(input), None),
            Self::FcVae(m) => {
                let (mean, log_var) = m.encode(flat(input));
                let z = reparameterise(mean.clone(), log_var.clone(), sample);
                (square(m.decoder.forward_logits(z)), Some((mean, log_var)))
            }
            Self::ConvVae(m) => {
                let (mean, log_var) = m.encoder.forward(input);
                let z = reparameterise(mean.clone(), log_var.clone(), sample);
                let classes = m.classes();
                let condition = (classes > 0).then(|| {
                    condition.unwrap_or_else(|| Tensor::zeros([z.dims()[0], classes], &z.device()))
                });
                let z = with_condition(z, condition);
                (
                    m.decoder.forward_logits_with(z, None, up),
                    Some((mean, log_var)),
                )
            }
        };
        Output { logits, posterior }
    }

    /// The model's output image for its `input`, in `[0, 1]` (VAEs: decoded from the mean; a
    /// conditional one told `condition`, as in [`Model::forward`]).
    pub fn reconstruct(&self, input: Tensor<4>, condition: Option<Tensor<2>>) -> Tensor<4> {
        self.to_image(self.forward(input, condition, None).logits)
    }

    /// The image in `[0, 1]` that [`Output::logits`] stands for: their sigmoid, or for the camera
    /// denoiser the output clipped.
    pub fn to_image(&self, logits: Tensor<4>) -> Tensor<4> {
        match self {
            Self::CameraDenoiser(_) => logits.clamp(0.0, 1.0),
            _ => sigmoid(logits),
        }
    }

    /// The latent code of clean images (VAEs: the posterior mean), `None` for families without
    /// one.
    ///
    /// # Shapes
    /// - images: `[batch, 1, 28, 28]`; output: `[batch, latent]`
    pub fn encode(&self, images: Tensor<4>) -> Option<Tensor<2>> {
        match self {
            Self::DenseAe(m) => Some(m.encode(flat(images))),
            Self::ConvAe(m) | Self::DenoisingAe(m) => Some(flat(m.encode(images))),
            Self::SuperRes(_) | Self::CameraDenoiser(_) => None,
            Self::FcVae(m) => Some(m.encode(flat(images)).0),
            Self::ConvVae(m) => Some(m.encoder.forward(images).0),
        }
    }

    /// What the family's encoder gives for clean images: `[mean, log_var]` for VAEs, `[code]` for
    /// the other autoencoders with a latent, nothing for super-resolution and the camera denoiser
    /// (the exporter writes this as `encoder.onnx`).
    ///
    /// # Shapes
    /// - images: `[batch, 1, 28, 28]`; outputs: `[batch, latent]` each
    pub fn encoder_outputs(&self, images: Tensor<4>) -> Vec<Tensor<2>> {
        match self {
            Self::FcVae(m) => {
                let (mean, log_var) = m.encode(flat(images));
                vec![mean, log_var]
            }
            Self::ConvVae(m) => {
                let (mean, log_var) = m.encoder.forward(images);
                vec![mean, log_var]
            }
            _ => self.encode(images).into_iter().collect(),
        }
    }

    /// Images decoded from latent codes, in `[0, 1]`; `None` for families without a decoder. A
    /// conditional decoder's latents carry the one-hot digit appended ([`with_condition`]).
    ///
    /// # Shapes
    /// - latent: `[batch, latent + classes]`; output: `[batch, 1, 28, 28]`
    pub fn decode(&self, latent: Tensor<2>) -> Option<Tensor<4>> {
        let logits = match self {
            Self::DenseAe(m) => square(m.decode_logits(latent)),
            Self::ConvAe(m) | Self::DenoisingAe(m) => {
                let [batch, _] = latent.dims();
                let code = latent.reshape([batch, m.code_channels(), CODE_SIDE, CODE_SIDE]);
                m.decode_logits(code)
            }
            Self::SuperRes(_) | Self::CameraDenoiser(_) => return None,
            Self::FcVae(m) => square(m.decoder.forward_logits(latent)),
            Self::ConvVae(m) => m.decoder.forward_logits(latent, None),
        };
        Some(sigmoid(logits))
    }

    /// Width of the input [`Model::decode`] takes (the latent, plus [`Model::classes`]); `None`
    /// for families without a decoder.
    pub fn decoder_input(&self) -> Option<usize> {
        match self {
            Self::DenseAe(m) => Some(m.latent()),
            Self::ConvAe(m) | Self::DenoisingAe(m) => {
                Some(m.code_channels() * CODE_SIDE * CODE_SIDE)
            }
            Self::SuperRes(_) | Self::CameraDenoiser(_) => None,
            Self::FcVae(m) => Some(m.decoder.latent()),
            Self::ConvVae(m) => Some(m.decoder.latent()),
        }
    }

    /// The convolutional VAE, if that is what this is (the int8 exporter's input).
    pub fn conv_vae(&self) -> Option<&ConvVae> {
        match self {
            Self::ConvVae(m) => Some(m),
            _ => None,
        }
    }
}

/// Per-image losses of a batch, averaged over the batch.
#[derive(Debug)]
pub struct Losses {
    /// What is minimised: reconstruction, plus KL for VAEs.
    pub total: Tensor<1>,
    /// The reconstruction term ([`LossKind`] says which).
    pub reconstruction: Tensor<1>,
    /// KL divergence of the posterior from `N(0, I)` (VAEs; zero otherwise).
    pub kl: Tensor<1>,
}

/// Binary cross-entropy of `sigmoid(logits)` against `targets`, element-wise, computed stably as
/// `max(l, 0) - x l + log(1 + exp(-|l|))`.
pub fn bce_with_logits(logits: Tensor<4>, targets: Tensor<4>) -> Tensor<4> {
    relu(logits.clone()) - logits.clone() * targets + logits.abs().neg().exp().log1p()
}

/// The centre of `images` at the height and width of `like` (`images` itself when they are the
/// same size): the camera denoiser's output against a target that leaves out the patch's edges
/// ([`CameraDenoiserConfig::interior_loss`]).
fn interior(images: Tensor<4>, like: &Tensor<4>) -> Tensor<4> {
    let [batch, channels, h, w] = images.dims();
    let [.., th, tw] = like.dims();
    if (h, w) == (th, tw) {
        return images;
    }
    let (top, left) = (h.saturating_sub(th) / 2, w.saturating_sub(tw) / 2);
    images.slice([0..batch, 0..channels, top..top + th, left..left + tw])
}

/// The reconstruction term of [`loss`], written with Burn's tensor ops (any device).
pub fn reconstruction_ops(kind: LossKind, logits: Tensor<4>, targets: Tensor<4>) -> Tensor<1> {
    let [batch, ..] = targets.dims();
    let per_image = 1.0 / batch as f64;
    match kind {
        LossKind::MeanBce => bce_with_logits(logits, targets).mean(),
        LossKind::BceKl => bce_with_logits(logits, targets).sum().mul_scalar(per_image),
        LossKind::SseKl => (sigmoid(logits) - targets)
            .square()
            .sum()
            .mul_scalar(per_image),
        LossKind::Mse => (interior(logits, &targets) - targets).square().mean(),
    }
}

/// The loss of `output` against the clean `targets` (for the camera denoiser, an output larger
/// than the targets is scored on its centre). On the CPU the reconstruction term of the MNIST
/// families is computed in one fused pass (module `fused`); elsewhere with tensor ops
/// ([`reconstruction_ops`]), which give the same values and gradients.
pub fn loss(kind: LossKind, output: &Output, targets: Tensor<4>) -> Losses {
    let [batch, ..] = targets.dims();
    let per_image = 1.0 / batch as f64;
    let device = targets.device();
    let reconstruction = if fused::applies(kind, &output.logits, &targets) {
        fused::reconstruction(kind, &output.logits, targets)
    } else {
        reconstruction_ops(kind, output.logits.clone(), targets)
    };
    let kl = match &output.posterior {
        Some((mean, log_var)) => {
            (log_var.clone().add_scalar(1.0) - mean.clone().square() - log_var.clone().exp())
                .sum()
                .mul_scalar(-0.5 * per_image)
        }
        None => Tensor::zeros([1], &device),
    };
    Losses {
        total: reconstruction.clone() + kl.clone(),
        reconstruction,
        kl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each loss on inputs whose value is known in closed form: a formula with a wrong factor
    /// (KL's 1/2, summing against averaging, the batch) changes one of these numbers.
    #[test]
    fn losses_have_their_closed_form_values() {
        let device = Device::flex();
        // Two images; logits 0 (sigmoid 1/2) everywhere, against all-zero targets.
        let output = |posterior| Output {
            logits: Tensor::<4>::zeros([2, 1, 28, 28], &device),
            posterior,
        };
        let targets = || Tensor::<4>::zeros([2, 1, 28, 28], &device);
        let scalar = |t: Tensor<1>| t.into_scalar::<f32>();
        let ln2 = std::f32::consts::LN_2;
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
        // BCE of 1/2 against anything is ln 2 per pixel: the mean, or 784 ln 2 per image.
        let mean_bce = scalar(loss(LossKind::MeanBce, &output(None), targets()).total);
        assert!(close(mean_bce, ln2), "{mean_bce}");
        // A posterior N(mean = (1, 0), var = 1) in image 0 and N(0, 1) in image 1: KL per image
        // is 0.5 * 1^2 = 0.5 and 0, so 0.25 per image over the batch.
        let mean = Tensor::<1>::from_floats([1.0, 0.0, 0.0, 0.0], &device).reshape([2, 2]);
        let posterior = || Some((mean.clone(), Tensor::<2>::zeros([2, 2], &device)));
        let bce_kl = loss(LossKind::BceKl, &output(posterior()), targets());
        let (reconstruction, kl) = (scalar(bce_kl.reconstruction), scalar(bce_kl.kl));
        assert!(close(reconstruction, 784.0 * ln2), "{reconstruction}");
        assert!(close(kl, 0.25), "{kl}");
        assert!(close(scalar(bce_kl.total), 784.0 * ln2 + 0.25));
        // Squared error of 1/2 against 0 is 1/4 per pixel: 196 per image.
        let sse_kl = loss(LossKind::SseKl, &output(posterior()), targets());
        assert!(close(scalar(sse_kl.reconstruction), 196.0));
        assert!(close(scalar(sse_kl.kl), 0.25));
        // A posterior with log-variance ln 2 (variance 2) and mean 0: KL per dimension is
        // 0.5 * (2 - 1 - ln 2).
        let log_var = Tensor::<2>::full([2, 2], ln2, &device);
        let wide = Some((Tensor::<2>::zeros([2, 2], &device), log_var));
        let kl = scalar(loss(LossKind::BceKl, &output(wide), targets()).kl);
        assert!(close(kl, 2.0 * 0.5 * (1.0 - ln2)), "{kl}");
    }

    #[test]
    fn an_output_larger_than_its_target_is_scored_on_its_centre() {
        let device = Device::flex();
        // A 6x6 output that is 1 on its 2x2 centre and 100 elsewhere: against a 2x2 target of
        // zeros only the centre counts.
        let mut pixels = [100.0f32; 36];
        for i in [14, 15, 20, 21] {
            pixels[i] = 1.0;
        }
        let output = Output {
            logits: Tensor::<1>::from_floats(pixels, &device).reshape([1, 1, 6, 6]),
            posterior: None,
        };
        let target = Tensor::<4>::zeros([1, 1, 2, 2], &device);
        let mse = loss(LossKind::Mse, &output, target)
            .total
            .into_scalar::<f32>();
        assert_eq!(mse, 1.0);
        let whole = Tensor::<4>::zeros([1, 1, 6, 6], &device);
        let mse = loss(LossKind::Mse, &output, whole)
            .total
            .into_scalar::<f32>();
        assert!(mse > 1000.0, "{mse}");
    }

    #[test]
    fn the_interior_loss_needs_a_patch_wider_than_the_context() {
        let config = CameraDenoiserConfig::new().with_interior_loss(Some(true));
        assert_eq!((config.context(), config.loss_margin()), (10, 10));
        let model = config.init(&Device::flex());
        assert_eq!(model.context(), config.context());
        assert!(config.clone().with_patch(21).validate().is_ok());
        let err = config.with_patch(20).validate().unwrap_err();
        assert!(err.contains("no interior"), "{err}");
        assert_eq!(CameraDenoiserConfig::new().loss_margin(), 0);
    }

    #[test]
    fn a_dilation_is_at_most_64() {
        let config = CameraDenoiserConfig::new();
        assert!(
            config
                .clone()
                .with_dilations(vec![1, 64])
                .validate()
                .is_ok()
        );
        // A single layer too wide is named for its dilation, not for its layer count.
        for dilations in [vec![1, 65], vec![100_000, 1], vec![65]] {
            let err = config
                .clone()
                .with_dilations(dilations.clone())
                .validate()
                .unwrap_err();
            assert!(err.contains("is more than 64"), "{dilations:?}: {err}");
        }
    }
}
