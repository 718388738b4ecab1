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

use crate::data::SIDE;

/// Channels of the 4x4 feature map at the bottleneck (the lesson's 4x4x8 code).
const BOTTLENECK: [usize; 3] = [8, 4, 4];

/// Hyper-parameters of [`ConvVae`].
#[derive(Config, Debug, PartialEq)]
pub struct ConvVaeConfig {
    /// Size of the latent vector.
    #[config(default = 2)]
    pub latent: usize,
}

/// Encoder: Conv16-Pool-Conv8-Pool-Conv8-Pool to a 4x4x8 map, then mean and log-variance.
#[derive(Module, Debug)]
pub struct ConvEncoder {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    pool: MaxPool2d,
    mean: Linear,
    log_var: Linear,
}

/// Decoder: dense to a 4x4x8 map, then conv + 2x nearest upsampling up to 28x28, sigmoid output.
#[derive(Module, Debug)]
pub struct ConvDecoder {
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
    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> ConvVae {
        let flat = BOTTLENECK.iter().product();
        ConvVae {
            encoder: ConvEncoder {
                conv1: conv([1, 16], 1, device),
                conv2: conv([16, 8], 1, device),
                conv3: conv([8, 8], 1, device),
                // ceil mode turns 7x7 into 4x4, like Keras' `padding="same"` pooling.
                pool: MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init(),
                mean: LinearConfig::new(flat, self.latent).init(device),
                log_var: LinearConfig::new(flat, self.latent).init(device),
            },
            decoder: ConvDecoder {
                fc: LinearConfig::new(self.latent, flat).init(device),
                conv1: conv([8, 8], 1, device),
                conv2: conv([8, 8], 1, device),
                conv3: conv([8, 16], 0, device),
                conv4: conv([16, 1], 1, device),
                up: Interpolate2dConfig::new()
                    .with_scale_factor(Some([2.0, 2.0]))
                    .with_mode(InterpolateMode::Nearest)
                    .init(),
            },
        }
    }
}

impl ConvEncoder {
    /// # Shapes
    /// - images: `[batch, 1, 28, 28]`
    /// - output: (mean, log-variance), each `[batch, latent]`
    pub fn forward(&self, images: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let x = self.pool.forward(relu(self.conv1.forward(images))); // [b, 16, 14, 14]
        let x = self.pool.forward(relu(self.conv2.forward(x))); // [b, 8, 7, 7]
        let x = self.pool.forward(relu(self.conv3.forward(x))); // [b, 8, 4, 4]
        let x: Tensor<2> = x.flatten(1, 3); // [b, 128]
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
    /// Latent size the decoder takes.
    pub fn latent(&self) -> usize {
        self.fc.weight.dims()[0]
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
        mut trace: Option<&mut Vec<Tensor<2>>>,
    ) -> Tensor<4> {
        let mut record = |t: &Tensor<4>| {
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(t.clone().flatten(1, 3));
            }
        };
        let [batch, _] = latent.dims();
        let x = relu(self.fc.forward(latent));
        let x: Tensor<4> = x.reshape([batch, BOTTLENECK[0], BOTTLENECK[1], BOTTLENECK[2]]);
        record(&x);
        let x = relu(self.conv1.forward(x)); // [b, 8, 4, 4]
        record(&x);
        let x = relu(self.conv2.forward(self.up.forward(x))); // [b, 8, 8, 8]
        record(&x);
        let x = relu(self.conv3.forward(self.up.forward(x))); // [b, 16, 14, 14]
        record(&x);
        let x = self.conv4.forward(self.up.forward(x)); // [b, 1, 28, 28]
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
        let flat = BOTTLENECK.iter().product();
        let (w, b) = dense_weights(&self.fc);
        let mut layers = vec![LayerWeights {
            op: LayerOp::Dense,
            relu: true,
            input: [self.latent(), 1, 1],
            output: [flat, 1, 1],
            weights: w,
            bias: b,
        }];
        let convs = [
            (&self.conv1, 1, 1, BOTTLENECK, [8, 4, 4], true),
            (&self.conv2, 1, 2, [8, 4, 4], [8, 8, 8], true),
            (&self.conv3, 0, 2, [8, 8, 8], [16, 14, 14], true),
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
