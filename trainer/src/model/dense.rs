//! The fully-connected families: the dense autoencoder and the fully-connected VAE.

use burn::{
    nn::{Linear, LinearConfig},
    prelude::*,
    tensor::activation::relu,
};

use super::Reconstruction;
use crate::data::PIXELS;

/// Hyper-parameters of [`DenseAe`].
#[derive(Config, Debug, PartialEq)]
pub struct DenseAeConfig {
    /// Size of the code.
    #[config(default = 32)]
    pub latent: usize,
    /// Hidden layer widths of the encoder, outermost first (the decoder mirrors them).
    #[config(default = "vec![512, 128]")]
    pub hidden: Vec<usize>,
}

/// Dense autoencoder: 784 -> hidden... -> latent -> ...hidden -> 784, ReLU between layers.
#[derive(Module, Debug)]
pub struct DenseAe {
    encoder: Vec<Linear>,
    decoder: Vec<Linear>,
}

/// Widths from `from` through `hidden` to `to`, as consecutive linear layers.
fn stack(widths: &[usize], device: &Device) -> Vec<Linear> {
    widths
        .windows(2)
        .map(|w| LinearConfig::new(w[0], w[1]).init(device))
        .collect()
}

/// Runs `layers` with a ReLU after every layer but the last.
fn run(layers: &[Linear], mut x: Tensor<2>) -> Tensor<2> {
    for (i, layer) in layers.iter().enumerate() {
        x = layer.forward(x);
        if i + 1 < layers.len() {
            x = relu(x);
        }
    }
    x
}

impl DenseAeConfig {
    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> DenseAe {
        let mut widths = vec![PIXELS];
        widths.extend(&self.hidden);
        widths.push(self.latent);
        let encoder = stack(&widths, device);
        widths.reverse();
        DenseAe {
            encoder,
            decoder: stack(&widths, device),
        }
    }
}

impl DenseAe {
    /// # Shapes
    /// - images: `[batch, 784]`; output: `[batch, latent]`
    pub fn encode(&self, images: Tensor<2>) -> Tensor<2> {
        run(&self.encoder, images)
    }

    /// Pre-sigmoid reconstruction.
    ///
    /// # Shapes
    /// - code: `[batch, latent]`; output: `[batch, 784]`
    pub fn decode_logits(&self, code: Tensor<2>) -> Tensor<2> {
        // The code is linear (no ReLU), as in the lesson; the first decoder layer follows with one.
        run(&self.decoder, code)
    }

    /// Width of the code the decoder takes.
    pub fn latent(&self) -> usize {
        self.decoder.first().map_or(0, |l| l.weight.dims()[0])
    }
}

/// Hyper-parameters of [`FcVae`].
#[derive(Config, Debug, PartialEq)]
pub struct FcVaeConfig {
    /// Size of the latent vector.
    #[config(default = 2)]
    pub latent: usize,
    /// Width of the hidden layer of the encoder and of the decoder.
    #[config(default = 512)]
    pub hidden: usize,
    /// The reconstruction term of the loss [default: [`Reconstruction::Sse`], the lesson's]
    /// (an option so that older runs' `config.json` still reads).
    pub reconstruction: Option<Reconstruction>,
}

/// Fully-connected VAE: 784 -> 512 -> (mean, log-variance) | latent -> 512 -> 784.
#[derive(Module, Debug)]
pub struct FcVae {
    hidden: Linear,
    mean: Linear,
    log_var: Linear,
    /// The decoder: latent -> hidden -> 784.
    pub decoder: FcDecoder,
}

/// Decoder of [`FcVae`].
#[derive(Module, Debug)]
pub struct FcDecoder {
    hidden: Linear,
    output: Linear,
}

impl FcVaeConfig {
    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> FcVae {
        FcVae {
            hidden: LinearConfig::new(PIXELS, self.hidden).init(device),
            mean: LinearConfig::new(self.hidden, self.latent).init(device),
            log_var: LinearConfig::new(self.hidden, self.latent).init(device),
            decoder: FcDecoder {
                hidden: LinearConfig::new(self.latent, self.hidden).init(device),
                output: LinearConfig::new(self.hidden, PIXELS).init(device),
            },
        }
    }
}

impl FcVae {
    /// # Shapes
    /// - images: `[batch, 784]`; output: (mean, log-variance), each `[batch, latent]`
    pub fn encode(&self, images: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let h = relu(self.hidden.forward(images));
        (self.mean.forward(h.clone()), self.log_var.forward(h))
    }
}

impl FcDecoder {
    /// Pre-sigmoid reconstruction.
    ///
    /// # Shapes
    /// - latent: `[batch, latent]`; output: `[batch, 784]`
    pub fn forward_logits(&self, latent: Tensor<2>) -> Tensor<2> {
        self.output.forward(relu(self.hidden.forward(latent)))
    }

    /// Width of the latent the decoder takes.
    pub fn latent(&self) -> usize {
        self.hidden.weight.dims()[0]
    }
}
