//! The convolutional autoencoder of the lesson (also the denoising AE's architecture) and the
//! super-resolution autoencoder.
//!
//! Decoders upsample with nearest interpolation + convolution (no transposed convolutions): it
//! exports to ONNX and keeps the models fully convolutional. The training steps compute each such
//! pair folded into one convolution of the low-resolution input ([`UpConv::Folded`]).

use burn::{
    nn::{
        PaddingConfig2d,
        conv::{Conv2d, Conv2dConfig},
        interpolate::{Interpolate2d, Interpolate2dConfig, InterpolateMode},
        pool::{MaxPool2d, MaxPool2dConfig},
    },
    prelude::*,
    tensor::{activation::relu, module::conv2d, ops::ConvOptions},
};

/// Side of the convolutional AE's code map (28 -> 14 -> 7 -> 4).
pub const CODE_SIDE: usize = 4;

/// Hyper-parameters of [`ConvAe`].
#[derive(Config, Debug, PartialEq)]
pub struct ConvAeConfig {
    /// Channels of the 4x4 code map: the code has `16 * code_channels` values (the lesson's 8).
    #[config(default = 8)]
    pub code_channels: usize,
}

/// The lesson's convolutional AE: Conv16-Pool-Conv8-Pool-Conv8-Pool to a 4x4 code map, then
/// Conv8-Up-Conv8-Up-Conv16(valid)-Up-Conv1 back to 28x28 (sigmoid applied by the loss).
#[derive(Module, Debug)]
pub struct ConvAe {
    enc1: Conv2d,
    enc2: Conv2d,
    enc3: Conv2d,
    pool: MaxPool2d,
    dec1: Conv2d,
    dec2: Conv2d,
    dec3: Conv2d,
    dec4: Conv2d,
    up: Interpolate2d,
}

/// A 3x3 convolution with `padding` zeros on each side.
pub(crate) fn conv3(channels: [usize; 2], padding: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new(channels, [3, 3])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .init(device)
}

/// Nearest-neighbour upsampling by 2.
pub(crate) fn up2() -> Interpolate2d {
    Interpolate2dConfig::new()
        .with_scale_factor(Some([2.0, 2.0]))
        .with_mode(InterpolateMode::Nearest)
        .init()
}

/// How a decoder computes a nearest 2x upsampling and the 3x3 convolution after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpConv {
    /// Upsample, then convolve: the graph the exporter traces to ONNX (and folds there itself).
    Plain,
    /// Both at once on the low-resolution input ([`up2_conv3`]): 4/9 of the multiply-adds, the
    /// same function. What the training steps run.
    Folded,
}

impl UpConv {
    /// `conv(up(x))`, computed as this says where [`foldable`] allows it, else plainly.
    pub(crate) fn run(self, conv: &Conv2d, up: &Interpolate2d, x: Tensor<4>) -> Tensor<4> {
        match (self, foldable(conv, up)) {
            (UpConv::Folded, Some(padding)) => up2_conv3(conv, padding, x),
            _ => conv.forward(up.forward(x)),
        }
    }
}

/// The padding of `conv` when [`up2_conv3`] can compute `conv(up(x))`: `up` a nearest 2x
/// upsampling, `conv` a 3x3, stride-1, ungrouped, undilated convolution padded 0 or 1 on every
/// side.
fn foldable(conv: &Conv2d, up: &Interpolate2d) -> Option<usize> {
    let nearest_2x = up.scale_factor == Some([2.0, 2.0])
        && up.output_size.is_none()
        && matches!(up.mode, InterpolateMode::Nearest);
    let plain_3x3 = conv.kernel_size == [3, 3]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1;
    match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r)
            if nearest_2x && plain_3x3 && t == l && t == b && t == r && t <= 1 =>
        {
            Some(t)
        }
        _ => None,
    }
}

/// `conv(up2(x))` computed on the low-resolution input, for a [`foldable`] `conv` with `padding`
/// (0 or 1) on every side: output pixel `(2i + py, 2j + px)` (phase `(py, px)`) reads only input
/// rows `i + a` and columns `j + b` for two values each of `a` and `b`, so its nine taps fold into
/// a 2x2 kernel (the taps that land on the same input pixel, summed). The four phases' kernels
/// are stacked on the output channels of one convolution of `x` and the phases interleaved back:
/// 4/9 of the multiply-adds and no upsampled copy, the same sums up to float rounding (the
/// exporter writes decoders this way, `exporter/src/onnx.rs`). Autodiff differentiates through
/// the folding, so the trained weights are the 3x3 ones.
fn up2_conv3(conv: &Conv2d, padding: usize, x: Tensor<4>) -> Tensor<4> {
    let [n, _, h, w] = x.dims();
    let weight = conv.weight.val();
    let c_out = weight.dims()[0];
    // Along one axis, phase 0 of a padding-1 conv reads (i - 1, i): taps [t0, t1 + t2]; phase 1
    // reads (i, i + 1): [t0 + t1, t2]. Without padding both read (i, i + 1), the other way round.
    let fold = |k: Tensor<4>, dim: usize, phase: usize| {
        let tap = |t: usize| k.clone().narrow(dim, t, 1);
        if (phase == 0) == (padding == 0) {
            Tensor::cat(vec![tap(0) + tap(1), tap(2)], dim)
        } else {
            Tensor::cat(vec![tap(0), tap(1) + tap(2)], dim)
        }
    };
    let kernels = (0..4)
        .map(|phase| fold(fold(weight.clone(), 2, phase / 2), 3, phase % 2))
        .collect();
    // The bias once per phase. Concatenated, not `repeat_dim`: on the wgpu backend (Burn 0.22)
    // repeating a one-element bias (the decoders' last layer) gives a view of its 4-byte buffer
    // that the convolution's vectorised kernel binds as 16 bytes, a validation error at run time
    // (`tests/gpu.rs` trains through it).
    let bias = conv.bias.as_ref().map(|b| Tensor::cat(vec![b.val(); 4], 0));
    let options = ConvOptions::new([1, 1], [padding, padding], [1, 1], 1);
    // [n, 4 c_out, h', w']: channel block `2 py + px` is phase (py, px).
    let phases = conv2d(x, Tensor::cat(kernels, 0), bias, options);
    let (phases, h, w) = if padding == 1 {
        // Padded on both sides, the convolution gives h + 1 rows: phase py's are py..py + h.
        let block = |phase: usize| {
            let (py, px) = (phase / 2, phase % 2);
            phases.clone().slice([
                0..n,
                phase * c_out..(phase + 1) * c_out,
                py..py + h,
                px..px + w,
            ])
        };
        (Tensor::cat((0..4).map(block).collect(), 1), h, w)
    } else {
        (phases, h - 1, w - 1)
    };
    phases
        .reshape([n, 2, 2, c_out, h, w])
        .permute([0, 3, 4, 1, 5, 2])
        .reshape([n, c_out, 2 * h, 2 * w])
}

/// 2x2 max pooling; ceil mode turns 7x7 into 4x4, like Keras' `padding="same"`.
pub(crate) fn pool2() -> MaxPool2d {
    MaxPool2dConfig::new([2, 2]).with_ceil_mode(true).init()
}

impl ConvAeConfig {
    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> ConvAe {
        let c = self.code_channels;
        ConvAe {
            enc1: conv3([1, 16], 1, device),
            enc2: conv3([16, 8], 1, device),
            enc3: conv3([8, c], 1, device),
            pool: pool2(),
            dec1: conv3([c, 8], 1, device),
            dec2: conv3([8, 8], 1, device),
            dec3: conv3([8, 16], 0, device),
            dec4: conv3([16, 1], 1, device),
            up: up2(),
        }
    }
}

impl ConvAe {
    /// # Shapes
    /// - images: `[batch, 1, 28, 28]`; output: `[batch, code_channels, 4, 4]`
    pub fn encode(&self, images: Tensor<4>) -> Tensor<4> {
        let x = self.pool.forward(relu(self.enc1.forward(images))); // [b, 16, 14, 14]
        let x = self.pool.forward(relu(self.enc2.forward(x))); // [b, 8, 7, 7]
        self.pool.forward(relu(self.enc3.forward(x))) // [b, c, 4, 4]
    }

    /// Pre-sigmoid reconstruction.
    ///
    /// # Shapes
    /// - code: `[batch, code_channels, 4, 4]`; output: `[batch, 1, 28, 28]`
    pub fn decode_logits(&self, code: Tensor<4>) -> Tensor<4> {
        self.decode_logits_with(code, UpConv::Plain)
    }

    /// [`ConvAe::decode_logits`], its upsampling convolutions computed as `up` says.
    pub fn decode_logits_with(&self, code: Tensor<4>, up: UpConv) -> Tensor<4> {
        let x = relu(self.dec1.forward(code)); // [b, 8, 4, 4]
        let x = relu(up.run(&self.dec2, &self.up, x)); // [b, 8, 8, 8]
        let x = relu(up.run(&self.dec3, &self.up, x)); // [b, 16, 14, 14]
        up.run(&self.dec4, &self.up, x) // [b, 1, 28, 28]
    }

    /// Channels of the code map.
    pub fn code_channels(&self) -> usize {
        self.dec1.weight.dims()[1]
    }
}

/// Hyper-parameters of [`SuperRes`].
#[derive(Config, Debug, PartialEq)]
pub struct SuperResConfig {
    /// Channels of the feature maps at the input resolution and of the upsampled ones.
    #[config(default = 16)]
    pub channels: usize,
}

/// Super-resolution AE, fully convolutional: a low-resolution image (14x14 for MNIST; any even
/// size) -> Conv-Pool-Conv (half the input resolution) -> Up-Conv-Up-Conv-Conv -> twice the input
/// resolution.
#[derive(Module, Debug)]
pub struct SuperRes {
    enc1: Conv2d,
    enc2: Conv2d,
    pool: MaxPool2d,
    dec1: Conv2d,
    dec2: Conv2d,
    out: Conv2d,
    up: Interpolate2d,
}

impl SuperResConfig {
    /// Returns the initialized model.
    pub fn init(&self, device: &Device) -> SuperRes {
        let c = self.channels;
        SuperRes {
            enc1: conv3([1, c], 1, device),
            enc2: conv3([c, c / 2], 1, device),
            pool: pool2(),
            dec1: conv3([c / 2, c], 1, device),
            dec2: conv3([c, c / 2], 1, device),
            out: conv3([c / 2, 1], 1, device),
            up: up2(),
        }
    }
}

impl SuperRes {
    /// Pre-sigmoid high-resolution image.
    ///
    /// # Shapes
    /// - low: `[batch, 1, h, w]` (h, w even); output: `[batch, 1, 2h, 2w]`
    pub fn forward_logits(&self, low: Tensor<4>) -> Tensor<4> {
        self.forward_logits_with(low, UpConv::Plain)
    }

    /// [`SuperRes::forward_logits`], its upsampling convolutions computed as `up` says.
    pub fn forward_logits_with(&self, low: Tensor<4>, up: UpConv) -> Tensor<4> {
        let x = self.pool.forward(relu(self.enc1.forward(low))); // [b, c, h/2, w/2]
        let x = relu(self.enc2.forward(x)); // [b, c/2, h/2, w/2]
        let x = relu(up.run(&self.dec1, &self.up, x)); // [b, c, h, w]
        let x = relu(up.run(&self.dec2, &self.up, x)); // [b, c/2, 2h, 2w]
        self.out.forward(x)
    }
}

/// Hyper-parameters of [`CameraDenoiser`] and of its training data.
#[derive(Config, Debug, PartialEq)]
pub struct CameraDenoiserConfig {
    /// Feature channels of the hidden layers.
    #[config(default = 8)]
    pub channels: usize,
    /// Dilation of each 3x3 convolution, input to output (at least 2 layers). The default
    /// `[1, 2, 4, 2, 1]` sees 21x21 pixels around each output pixel for 1,872 multiply-adds per
    /// pixel: 640x480 frames at 30+ frames/s on one x86 core with tract (BENCHMARKS.md).
    #[config(default = "vec![1, 2, 4, 2, 1]")]
    pub dilations: Vec<usize>,
    /// Side of the square training patches.
    #[config(default = 48)]
    pub patch: usize,
    /// Patches per epoch.
    #[config(default = 16384)]
    pub patches_per_epoch: usize,
    /// Smallest noise standard deviation in training, in 8-bit units.
    #[config(default = 5.0)]
    pub sigma_min: f32,
    /// Largest noise standard deviation in training, in 8-bit units.
    #[config(default = 50.0)]
    pub sigma_max: f32,
    /// Also transpose training patches at random: with the flips, all eight symmetries of a
    /// square. `None` (runs written before the option existed) keeps to the flips, as those
    /// runs trained; `trainer train` writes `Some(true)`.
    pub transposes: Option<bool>,
    /// Score only the interior of each training patch: the loss leaves out the
    /// [`CameraDenoiserConfig::context`] pixels along every edge, whose outputs read the
    /// convolutions' zero padding. Frames are mirrored outwards by that much before the model
    /// ([`crate::training::denoise_photo`], the edge runtime), so no output it is used for reads
    /// padding, and training then spends nothing on learning the padding. `None` (runs written
    /// before the option existed) is off; `trainer train` writes `Some(true)` unless told
    /// `--whole-patch-loss`.
    pub interior_loss: Option<bool>,
}

/// Denoiser for camera frames: a fully convolutional stack of dilated 3x3 convolutions (ReLU
/// between them) that estimates the noise, subtracted from the input (residual learning). No
/// pooling or resampling, so it runs on frames of any size.
#[derive(Module, Debug)]
pub struct CameraDenoiser {
    convs: Vec<Conv2d>,
}

/// The largest dilation [`CameraDenoiserConfig::validate`] accepts: a 3x3 tap 64 pixels away,
/// beyond the default 48-pixel training patch, and a padding any frame can still afford.
pub const MAX_DILATION: usize = 64;

impl CameraDenoiserConfig {
    /// Pixels each output pixel sees on every side: [`CameraDenoiser::context`] of the model
    /// this builds.
    pub fn context(&self) -> usize {
        self.dilations.iter().sum()
    }

    /// Pixels along each edge of a training patch that the loss leaves out (zero unless
    /// [`CameraDenoiserConfig::interior_loss`]).
    pub fn loss_margin(&self) -> usize {
        if self.interior_loss == Some(true) {
            self.context()
        } else {
            0
        }
    }

    /// Returns the initialized model.
    ///
    /// Call [`CameraDenoiserConfig::validate`] first (training and loading a run do): the
    /// result of a configuration it refuses is unspecified.
    pub fn init(&self, device: &Device) -> CameraDenoiser {
        let n = self.dilations.len();
        let convs = self
            .dilations
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let from = if i == 0 { 1 } else { self.channels };
                let to = if i + 1 == n { 1 } else { self.channels };
                Conv2dConfig::new([from, to], [3, 3])
                    .with_dilation([d, d])
                    .with_padding(PaddingConfig2d::Explicit(d, d, d, d))
                    .init(device)
            })
            .collect();
        CameraDenoiser { convs }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<(), String> {
        // Each convolution pads its input by its dilation: a dilation of 100,000 asked for
        // 160 GB for a 48-pixel patch (and aborted), in training and on every photograph. Said
        // first, so that one dilation too large is named as such.
        if let Some(&d) = self.dilations.iter().find(|&&d| d > MAX_DILATION) {
            return Err(format!(
                "a dilation of {d} is more than {MAX_DILATION}: each convolution pads its input by its dilation on every side"
            ));
        }
        if self.dilations.len() < 2 || self.dilations.contains(&0) || self.channels == 0 {
            return Err(format!(
                "the camera denoiser needs >= 2 layers with dilations >= 1 and >= 1 channel, got dilations {:?} and {} channels",
                self.dilations, self.channels
            ));
        }
        let in_range = |v: f32| (0.0..=255.0).contains(&v);
        if !in_range(self.sigma_min) || !in_range(self.sigma_max) || self.sigma_max < self.sigma_min
        {
            return Err(format!(
                "noise range {}..{} is not an increasing range within 0..255",
                self.sigma_min, self.sigma_max
            ));
        }
        if self.patch == 0 || self.patches_per_epoch == 0 {
            return Err("patch size and patches per epoch must be at least 1".into());
        }
        if self.patch <= 2 * self.loss_margin() {
            return Err(format!(
                "a patch of {} pixels has no interior to score: the loss leaves out {} pixels along each edge",
                self.patch,
                self.loss_margin()
            ));
        }
        Ok(())
    }
}

impl CameraDenoiser {
    /// The denoised frame (not clipped).
    ///
    /// # Shapes
    /// - noisy: `[batch, 1, h, w]`, pixels in `[0, 1]`; output: `[batch, 1, h, w]`
    pub fn forward(&self, noisy: Tensor<4>) -> Tensor<4> {
        let mut x = noisy.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.forward(x);
            if i + 1 < self.convs.len() {
                x = relu(x);
            }
        }
        noisy - x
    }

    /// Pixels each output pixel sees on every side: the radius of its receptive field (10 for
    /// the default dilations). Within this many pixels of a frame's edge the convolutions' zero
    /// padding shows in the output; [`crate::training::denoise_photo`] mirrors the frame
    /// outwards by this much first and crops after, so no output reads padding.
    pub fn context(&self) -> usize {
        self.convs
            .iter()
            .map(|c| c.dilation[0] * (c.kernel_size[0] / 2))
            .sum()
    }

    /// Multiply-accumulates per pixel.
    pub fn macs_per_pixel(&self) -> usize {
        self.convs
            .iter()
            .map(|c| c.weight.dims().iter().product::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// `up2_conv3` against `conv(up(x))`: outputs, and the gradients of a weighted sum of them
    /// with respect to the weights, the bias and the input.
    fn check_folded_up_conv(channels: [usize; 2], padding: usize, side: usize) {
        let device = Device::flex().autodiff();
        device.seed(13); // the same draws on every run
        let conv = conv3(channels, padding, &device);
        let up = up2();
        let shape = [3, channels[0], side, side];
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let out = 2 * side + 2 * padding - 2;
        let weights =
            Tensor::<4>::random([3, channels[1], out, out], Distribution::Default, &device);
        // The folded path must really run (not the plain fallback).
        assert_eq!(foldable(&conv, &up), Some(padding));
        let run = |up_conv: UpConv| {
            let x = x.clone().detach().require_grad();
            let y = up_conv.run(&conv, &up, x.clone());
            assert_eq!(y.dims(), weights.dims());
            let grads = (y.clone() * weights.clone()).sum().backward();
            let weight_grad = conv.weight.val().grad(&grads).expect("a weight gradient");
            let bias = conv.bias.as_ref().expect("a bias");
            let bias_grad = bias.val().grad(&grads).expect("a bias gradient");
            let input_grad = x.grad(&grads).expect("an input gradient");
            let grads = [
                weight_grad.into_data(),
                bias_grad.into_data(),
                input_grad.into_data(),
            ];
            (y.into_data(), grads)
        };
        let (plain, plain_grads) = run(UpConv::Plain);
        let (folded, folded_grads) = run(UpConv::Folded);
        // Float rounding only: the folded sums add the same products in another order (a run
        // of CI saw 2e-5 relative on a weight gradient); a wrong fold is off by ~100%.
        let tolerance = Tolerance::<f32>::rel_abs(1e-4, 1e-3);
        plain.assert_approx_eq::<f32>(&folded, tolerance);
        for (plain, folded) in plain_grads.iter().zip(&folded_grads) {
            plain.assert_approx_eq::<f32>(folded, tolerance);
        }
    }

    #[test]
    fn folded_up_convolution_with_padding_matches_upsample_then_convolve() {
        check_folded_up_conv([8, 8], 1, 4);
        check_folded_up_conv([16, 1], 1, 14);
    }

    #[test]
    fn folded_up_convolution_without_padding_matches_upsample_then_convolve() {
        check_folded_up_conv([8, 16], 0, 8);
    }
}
