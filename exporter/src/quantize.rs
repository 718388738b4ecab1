//! Post-training int8 quantization of the decoder into a q8 blob (format: `firmware/core/Q8.md`).
//!
//! - weights: symmetric int8 per output channel; biases int32 with the input zero point folded in;
//! - activations: per-tensor scales from calibration latents (post-ReLU tensors use the whole
//!   int8 range for `[0, max]`, the last layer's logits an asymmetric `[min, max]` range);
//! - the sigmoid becomes the blob's 256-entry output table.
//!
//! The int8 outputs are computed by `firmware_core` itself, the code the microcontroller runs.

use anyhow::{Context, anyhow, bail};
use burn::prelude::*;
use firmware_core::{
    decoder::{self, Scratch},
    q8::{self, LayerKind, LayerSpec, Model, Shape},
};
use serde::Serialize;
use trainer::model::{ConvDecoder, LayerOp, LayerWeights};

/// Quantization error of the int8 decoder against the float one, and its cost.
#[derive(Debug, Clone, Serialize)]
pub struct Q8Report {
    /// Blob size in bytes.
    pub bytes: usize,
    /// Multiply-accumulates per decoded digit.
    pub macs: usize,
    /// Latents compared.
    pub latents: usize,
    /// PSNR of the int8 digits against the float digits (peak = 1.0).
    pub psnr_db: f64,
    /// Largest absolute pixel difference, in `[0, 1]` units.
    pub max_abs_diff: f32,
    /// Mean absolute pixel difference.
    pub mean_abs_diff: f32,
}

/// How an activation tensor maps to int8: `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy)]
struct Affine {
    scale: f64,
    zero_point: i32,
}

fn tensor_values<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow!("reading tensor: {e:?}"))
}

/// Range of a calibrated activation: `[0, max]` after a ReLU, `[min, max]` otherwise.
fn activation_affine(values: &[f32], relu: bool) -> Affine {
    let max = values.iter().copied().fold(0.0f32, f32::max) as f64;
    if relu {
        return Affine {
            scale: (max / 255.0).max(1e-8),
            zero_point: -128,
        };
    }
    let min = values.iter().copied().fold(0.0f32, f32::min) as f64;
    let scale = ((max - min) / 255.0).max(1e-8);
    Affine {
        scale,
        zero_point: ((-128.0 - min / scale).round() as i32).clamp(-128, 127),
    }
}

/// One decoder layer quantized: its q8 spec and the real scales behind it.
#[derive(Debug, Clone)]
pub struct QuantizedLayer {
    /// What the q8 blob stores.
    pub spec: LayerSpec,
    /// Real value of one input step (`real = scale * (q - zero_point)`).
    pub input_scale: f64,
    /// Real value of one output step.
    pub output_scale: f64,
    /// Real value of one weight step, per output channel (weights are symmetric).
    pub weight_scales: Vec<f64>,
}

/// A decoder quantized to int8: what the q8 blob holds, with the scales it was derived from (the
/// int8 ONNX file, [`crate::qdq`], is written from them).
#[derive(Debug, Clone)]
pub struct QuantizedDecoder {
    /// Inputs the decoder takes: the latent size, plus `classes`.
    pub latent: usize,
    /// Inputs of `latent` that are a conditional decoder's one-hot digit (the last ones); 0 if
    /// the decoder is not conditional.
    pub classes: usize,
    /// Real value of one latent step (latents are symmetric, clamped to +-127 steps).
    pub latent_scale: f32,
    /// The layers, in order.
    pub layers: Vec<QuantizedLayer>,
    /// Sigmoid of each int8 logit (index `q + 128`) as a pixel in `0..=255`.
    pub table: [u8; q8::TABLE_LEN],
}

impl QuantizedDecoder {
    /// The q8 blob the firmware loads.
    pub fn blob(&self) -> anyhow::Result<Vec<u8>> {
        let specs: Vec<LayerSpec> = self.layers.iter().map(|l| l.spec.clone()).collect();
        Ok(q8::write_conditional(
            self.latent,
            self.classes,
            self.latent_scale,
            &specs,
            &self.table,
        )?)
    }
}

fn quantize_layer(
    layer: &LayerWeights,
    input: Affine,
    output: Affine,
) -> anyhow::Result<QuantizedLayer> {
    let out_channels = layer.output[0];
    let per_channel = layer.weights.len() / out_channels.max(1);
    if per_channel * out_channels != layer.weights.len() || layer.bias.len() != out_channels {
        bail!("layer weights do not match {out_channels} output channels");
    }
    let mut spec = LayerSpec {
        kind: match layer.op {
            LayerOp::Dense => LayerKind::Dense,
            LayerOp::Conv {
                kernel,
                padding,
                upsample,
            } => LayerKind::Conv {
                kernel: u8::try_from(kernel)?,
                padding: u8::try_from(padding)?,
                upsample: u8::try_from(upsample)?,
            },
        },
        relu: layer.relu,
        input: shape(layer.input)?,
        output: shape(layer.output)?,
        input_zero_point: input.zero_point as i8,
        output_zero_point: output.zero_point as i8,
        weights: Vec::with_capacity(layer.weights.len()),
        bias: Vec::new(),
        multiplier: Vec::new(),
        shift: Vec::new(),
    };
    let mut weight_scales = Vec::with_capacity(out_channels);
    for (o, w) in layer.weights.chunks(per_channel).enumerate() {
        let w_max = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let w_scale = if w_max > 0.0 { w_max / 127.0 } else { 1.0 };
        let q: Vec<i8> = w
            .iter()
            .map(|&v| (v as f64 / w_scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        let sum: i64 = q.iter().map(|&v| v as i64).sum();
        let acc_scale = input.scale * w_scale;
        let bias =
            (layer.bias[o] as f64 / acc_scale).round() as i64 - input.zero_point as i64 * sum;
        let bias =
            i32::try_from(bias).map_err(|_| anyhow!("bias of channel {o} overflows int32"))?;
        let (m, s) = q8::quantize_multiplier(acc_scale / output.scale)
            .ok_or_else(|| anyhow!("requantization factor of channel {o} is out of range"))?;
        spec.weights.extend(q);
        spec.bias.push(bias);
        spec.multiplier.push(m);
        spec.shift.push(s);
        weight_scales.push(w_scale);
    }
    Ok(QuantizedLayer {
        spec,
        input_scale: input.scale,
        output_scale: output.scale,
        weight_scales,
    })
}

fn shape([c, h, w]: [usize; 3]) -> anyhow::Result<Shape> {
    Ok(Shape {
        c: u16::try_from(c)?,
        h: u16::try_from(h)?,
        w: u16::try_from(w)?,
    })
}

/// Quantizes `decoder` with activation ranges from `calibration` latents; `classes` of its
/// inputs are a conditional decoder's one-hot digit (recorded in the blob), 0 if none.
///
/// # Shapes
/// - calibration: `[n, latent + classes]`
pub fn quantize_decoder(
    decoder: &ConvDecoder,
    classes: usize,
    calibration: Tensor<2>,
) -> anyhow::Result<QuantizedDecoder> {
    let layers = decoder.layers();
    let latent_values = tensor_values(calibration.clone())?;
    let mut trace = Vec::new();
    decoder.forward_logits(calibration, Some(&mut trace));
    if trace.len() != layers.len() {
        bail!(
            "decoder traced {} layers but describes {}",
            trace.len(),
            layers.len()
        );
    }

    let latent_max = latent_values.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let latent_scale = (latent_max / 127.0).max(1e-8);
    let mut input = Affine {
        scale: latent_scale,
        zero_point: 0,
    };
    let mut quantized = Vec::with_capacity(layers.len());
    for (layer, activations) in layers.iter().zip(trace) {
        let output = activation_affine(&tensor_values(activations)?, layer.relu);
        quantized.push(quantize_layer(layer, input, output).context("quantizing the decoder")?);
        input = output;
    }
    // `input` is now the last layer's output (the logits).
    let mut table = [0u8; q8::TABLE_LEN];
    for (i, t) in table.iter_mut().enumerate() {
        let logit = input.scale * (i as i32 - 128 - input.zero_point) as f64;
        *t = (255.0 / (1.0 + (-logit).exp())).round() as u8;
    }
    Ok(QuantizedDecoder {
        latent: decoder.latent(),
        classes,
        latent_scale: latent_scale as f32,
        layers: quantized,
        table,
    })
}

/// Decodes every `latent`-long row of `latents` with the int8 blob (`firmware_core`): the
/// digits' pixels (`0..=255`), one digit after the other.
pub fn decode_int8(blob: &[u8], latents: &[f32], latent: usize) -> anyhow::Result<Vec<u8>> {
    let model = Model::parse(blob)?;
    let mut scratch = Scratch::new();
    let mut q = vec![0i8; latent];
    let mut digit = [0u8; decoder::IMAGE_PIXELS];
    let mut pixels = Vec::with_capacity(latents.len() / latent.max(1) * decoder::IMAGE_PIXELS);
    for z in latents.chunks(latent.max(1)) {
        model.quantize_latent(z, &mut q)?;
        decoder::decode(&model, &q, &mut scratch, &mut digit)?;
        pixels.extend_from_slice(&digit);
    }
    Ok(pixels)
}

/// How far `pixels` (`0..=255`) are from `reference` (`[0, 1]`): PSNR (peak 1.0), largest and
/// mean absolute difference in `[0, 1]` units. Lengths must match (else infinitely far).
pub fn pixel_error(pixels: &[u8], reference: &[f32]) -> (f64, f32, f32) {
    if pixels.len() != reference.len() || pixels.is_empty() {
        return (f64::NEG_INFINITY, f32::INFINITY, f32::INFINITY);
    }
    let (mut squared, mut sum_abs, mut max_abs) = (0.0f64, 0.0f64, 0.0f32);
    for (&p, &r) in pixels.iter().zip(reference) {
        let d = (p as f32 / 255.0 - r).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        squared += (d as f64).powi(2);
        sum_abs += d as f64;
        max_abs = max_abs.max(d);
    }
    let count = pixels.len() as f64;
    (
        10.0 * (1.0 / (squared / count).max(1e-12)).log10(),
        max_abs,
        (sum_abs / count) as f32,
    )
}

/// Decodes every row of `latents` with the float decoder and with the int8 blob.
pub fn evaluate(
    decoder: &ConvDecoder,
    blob: &[u8],
    latents: Tensor<2>,
) -> anyhow::Result<Q8Report> {
    let model = Model::parse(blob)?;
    let [n, latent] = latents.dims();
    let float = tensor_values(decoder.forward(latents.clone()))?;
    let pixels = decode_int8(blob, &tensor_values(latents)?, latent)?;
    let (psnr_db, max_abs_diff, mean_abs_diff) = pixel_error(&pixels, &float);
    Ok(Q8Report {
        bytes: blob.len(),
        macs: model.macs(),
        latents: n,
        psnr_db,
        max_abs_diff,
        mean_abs_diff,
    })
}
