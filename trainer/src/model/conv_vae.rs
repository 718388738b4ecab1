//! The convolutional VAE with a 2-d latent: the lesson's convolutional autoencoder turned into a
//! variational one (the encoder ends in a mean and a log-variance, the decoder starts from a
//! sample of the latent).
//!
//! The decoder is built from nearest upsampling + convolutions rather than transposed
//! convolutions: it exports to ONNX and runs as int8 on a microcontroller without a special
//! kernel. [`ConvDecoder::layers`] describes the same layers for the int8 quantizer, so the
//! exporter never redefines the architecture.

use burn::{
    nn::{
        Linear, LinearConfig, PaddingConfig2d,
        conv::{Conv2d, Conv2dConfig},
        interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode},
        pool::{MaxPool2d, MaxPool2dConfig},
    },
    prelude::*,
    tensor::activation::{relu, sigmoid},
};

use super::{Reconstruction, UpConv};
use crate::data::SIDE;

/// Side of the feature map at the bottleneck (the lesson's 4x4x8 code).
const BOTTLENECK_SIDE: usize = 4;

/// Channels of the narrow layers in the lesson's model.
pub const LESSON_CHANNELS: usize = 8;

/// Classes a conditional decoder tells apart: the ten digits.
pub const CLASSES: usize = 10;

/// Hyper-parameters of [`ConvVae`]. The defaults are the lesson's model (the one the firmware
/// runs); `channels` and `hidden` widen it. (Both are options so that the `config.json` of a run
/// from before they existed still reads.)
#[derive(Config, Debug, PartialEq)]
pub struct ConvVaeConfig {
    /// Size of the latent vector.
    #[config(default = 2)]
    pub latent: usize,
    /// Channels of the narrow layers: the 7x7 and 4x4 maps of the encoder, the 4x4 and 8x8 maps
    /// of the decoder [default: [`LESSON_CHANNELS`]].
    pub channels: Option<usize>,
    /// Width of a dense hidden layer between the 4x4 map and the latent, in the encoder and in
    /// the decoder [default: none, the lesson's].
    pub hidden: Option<usize>,
    /// The reconstruction term of the loss [default: [`Reconstruction::Bce`]].
    pub reconstruction: Option<Reconstruction>,
    /// Condition the decoder on the digit: its input is the latent with the digit's one-hot
    /// vector ([`CLASSES`] values) appended, so it can be asked for a given digit; the encoder
    /// stays unconditional [default: false].
    pub conditional: Option<bool>,
}

/// Encoder: Conv16-Pool-Conv8-Pool-Conv8-Pool to a 4x4x8 map, an optional dense hidden layer,
/// then mean and log-variance.
#[derive(Module, Debug)]
pub struct ConvEncoder {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    pool: MaxPool2d,
    hidden: Option<Linear>,
    mean: Linear,
    log_var: Linear,
}

/// Decoder: an optional dense hidden layer, dense to a 4x4x8 map, then conv + 2x nearest
/// upsampling up to 28x28, sigmoid output.
#[derive(Module, Debug)]
pub struct ConvDecoder {
    hidden: Option<Linear>,
    fc: Linear,
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    conv4: Conv2d,
    up: Interpolate2d,
}

/// The convolutional VAE.
#[derive(Module, Debug)]
pub struct ConvVae {
    /// Image -> (mean, log-variance) of the latent.
    pub encoder: ConvEncoder,
    /// Latent -> image.
    pub decoder: ConvDecoder,
}

fn conv(channels: [usize; 2], padding: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new(channels, [3, 3])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .init(device)
}

impl ConvVaeConfig {
    /// Channels of the narrow layers.
    pub fn channels(&self) -> usize {
        self.channels.unwrap_or(LESSON_CHANNELS)
    }

    /// Values appended to the latent at the decoder's input: [`CLASSES`] when conditional.
    pub fn classes(&self) -> usize {
        if self.conditional == Some(true) {
            CLASSES
        } else {
            0
        }
    }

    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> ConvVae {
        let c = self.channels();
        let input = self.latent + self.classes();
        let flat = c * BOTTLENECK_SIDE * BOTTLENECK_SIDE;
        let dense = |from: usize, to: usize| LinearConfig::new(from, to).init(device);
        // A hidden layer sits between the 4x4 map and the latent on both sides; `code` is the
        // width next to the latent.
        let (encoder_hidden, decoder_hidden, code) = match self.hidden {
            Some(h) => (Some(dense(flat, h)), Some(dense(input, h)), h),
            None => (None, None, flat),
        };
        ConvVae {
            encoder: ConvEncoder {
                conv1: conv([1, 16], 1, device),
                conv2: conv([16, c], 1, device),
                conv3: conv([c, c], 1, device),
                // ceil mode turns 7x7 into 4x4, like Keras' `padding="same"` pooling.
                pool: MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init(),
                hidden: encoder_hidden,
                mean: dense(code, self.latent),
                log_var: dense(code, self.latent),
            },
            decoder: ConvDecoder {
                hidden: decoder_hidden,
                fc: dense(self.hidden.unwrap_or(input), flat),
                conv1: conv([c, c], 1, device),
                conv2: conv([c, c], 1, device),
                conv3: conv([c, 16], 0, device),
                conv4: conv([16, 1], 1, device),
                up: Interpolate2dConfig::new()
                    .with_scale_factor(Some([2.0, 2.0]))
                    .with_mode(InterpolateMode::Nearest)
                    .init(),
            },
        }
    }
}

impl ConvVae {
    /// Values the decoder takes besides the latent: [`CLASSES`] for a conditional model, else 0.
    pub fn classes(&self) -> usize {
        let latent = self.encoder.mean.weight.dims()[1];
        self.decoder.latent().saturating_sub(latent)
    }
}

impl ConvEncoder {
    /// # Shapes
    /// - images: `[batch, 1, 28, 28]`
    /// - output: (mean, log-variance), each `[batch, latent]`
    pub fn forward(&self, images: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let x = self.pool.forward(relu(self.conv1.forward(images))); // [b, 16, 14, 14]
        let x = self.pool.forward(relu(self.conv2.forward(x))); // [b, c, 7, 7]
        let x = self.pool.forward(relu(self.conv3.forward(x))); // [b, c, 4, 4]
        let mut x: Tensor<2> = x.flatten(1, 3); // [b, 16 c]
        if let Some(hidden) = &self.hidden {
            x = relu(hidden.forward(x)); // [b, hidden]
        }
        (self.mean.forward(x.clone()), self.log_var.forward(x))
    }
}

/// What a decoder layer computes, as the int8 quantizer needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOp {
    /// Fully connected.
    Dense,
    /// Square convolution, stride 1, with its input first upsampled (nearest) by `upsample`.
    Conv {
        /// Kernel side.
        kernel: usize,
        /// Zero padding on each side.
        padding: usize,
        /// Nearest upsampling factor of the input (1 = none).
        upsample: usize,
    },
}

/// One decoder layer with its float weights, in the order [`ConvDecoder::forward`] runs them.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// What it computes.
    pub op: LayerOp,
    /// Whether a ReLU follows (the last layer is followed by the sigmoid instead).
    pub relu: bool,
    /// Input shape `[c, h, w]` (dense: `[features, 1, 1]`).
    pub input: [usize; 3],
    /// Output shape `[c, h, w]`.
    pub output: [usize; 3],
    /// Weights: dense `[out][in]`, conv `[out][in][k][k]`, row-major.
    pub weights: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    // Parameters are f32 on every backend we build; an empty vector would fail the shape checks.
    t.into_data().try_to_vec::<f32>().unwrap_or_default()
}

fn dense_weights(l: &Linear) -> (Vec<f32>, Vec<f32>) {
    // Burn stores `[in, out]`; the quantizer wants `[out][in]`.
    let w = values(l.weight.val().transpose());
    let b = l.bias.as_ref().map(|b| values(b.val())).unwrap_or_default();
    (w, b)
}

fn conv_weights(c: &Conv2d) -> (Vec<f32>, Vec<f32>) {
    let w = values(c.weight.val());
    let b = c.bias.as_ref().map(|b| values(b.val())).unwrap_or_default();
    (w, b)
}

impl ConvDecoder {
    /// Width of the decoder's input: the latent size, plus [`CLASSES`] for a conditional decoder.
    pub fn latent(&self) -> usize {
        self.hidden.as_ref().unwrap_or(&self.fc).weight.dims()[0]
    }

    /// Channels of the 4x4 map the dense part reshapes to.
    fn channels(&self) -> usize {
        self.conv1.weight.dims()[0]
    }

    /// Pre-sigmoid output; with `trace`, also every layer's output (after its ReLU), flattened.
    ///
    /// # Shapes
    /// - latent: `[batch, latent]`
    /// - output: `[batch, 1, 28, 28]`
    /// - trace entries: `[batch, c * h * w]`, one per entry of [`ConvDecoder::layers`]
    pub fn forward_logits(
        &self,
        latent: Tensor<2>,
        trace: Option<&mut Vec<Tensor<2>>>,
    ) -> Tensor<4> {
        self.forward_logits_with(latent, trace, UpConv::Plain)
    }

    /// [`ConvDecoder::forward_logits`], its upsampling convolutions computed as `up` says.
    pub fn forward_logits_with(
        &self,
        latent: Tensor<2>,
        mut trace: Option<&mut Vec<Tensor<2>>>,
        up: UpConv,
    ) -> Tensor<4> {
        let [batch, _] = latent.dims();
        let mut x = latent;
        if let Some(hidden) = &self.hidden {
            x = relu(hidden.forward(x)); // [b, hidden]
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(x.clone());
            }
        }
        let mut record = |t: &Tensor<4>| {
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(t.clone().flatten(1, 3));
            }
        };
        let x = relu(self.fc.forward(x));
        let side = BOTTLENECK_SIDE;
        let x: Tensor<4> = x.reshape([batch, self.channels(), side, side]);
        record(&x);
        let x = relu(self.conv1.forward(x)); // [b, c, 4, 4]
        record(&x);
        let x = relu(up.run(&self.conv2, &self.up, x)); // [b, c, 8, 8]
        record(&x);
        let x = relu(up.run(&self.conv3, &self.up, x)); // [b, 16, 14, 14]
        record(&x);
        let x = up.run(&self.conv4, &self.up, x); // [b, 1, 28, 28]
        record(&x);
        x
    }

    /// # Shapes
    /// - latent: `[batch, latent]`
    /// - output: `[batch, 1, 28, 28]`, in `[0, 1]`
    pub fn forward(&self, latent: Tensor<2>) -> Tensor<4> {
        sigmoid(self.forward_logits(latent, None))
    }

    /// The layers of [`ConvDecoder::forward_logits`] with their weights, for quantization.
    pub fn layers(&self) -> Vec<LayerWeights> {
        let c = self.channels();
        let side = BOTTLENECK_SIDE;
        let bottleneck = [c, side, side];
        let dense = |l: &Linear| {
            let [input, output] = l.weight.dims();
            let (weights, bias) = dense_weights(l);
            LayerWeights {
                op: LayerOp::Dense,
                relu: true,
                input: [input, 1, 1],
                output: [output, 1, 1],
                weights,
                bias,
            }
        };
        let mut layers: Vec<LayerWeights> = self.hidden.iter().map(dense).collect();
        layers.push(dense(&self.fc));
        let convs = [
            (&self.conv1, 1, 1, bottleneck, bottleneck, true),
            (&self.conv2, 1, 2, bottleneck, [c, 8, 8], true),
            (&self.conv3, 0, 2, [c, 8, 8], [16, 14, 14], true),
            (&self.conv4, 1, 2, [16, 14, 14], [1, SIDE, SIDE], false),
        ];
        for (c, padding, upsample, input, output, relu) in convs {
            let (weights, bias) = conv_weights(c);
            layers.push(LayerWeights {
                op: LayerOp::Conv {
                    kernel: 3,
                    padding,
                    upsample,
                },
                relu,
                input,
                output,
                weights,
                bias,
            });
        }
        layers
    }
}
