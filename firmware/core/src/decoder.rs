//! The int8 decoder: runs a parsed [`Model`] on a quantized latent and writes a grayscale image.
//!
//! Integer arithmetic only (int8 x int8 -> int32 accumulation, fixed-point requantization, see
//! `Q8.md`), working memory in a statically sized [`Scratch`]. Nearest upsampling is folded into
//! the next convolution's indexing, so upsampled maps are never materialised.

use crate::q8::{Layer, LayerKind, Model};

/// Side of the square image the MNIST decoders produce.
pub const IMAGE_SIDE: usize = 28;
/// Pixels in that image.
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Bytes in each of the two ping-pong activation buffers of [`Scratch`].
pub const SCRATCH_BYTES: usize = 4096;

/// Why a decode did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The latent does not have the model's latent size.
    LatentLength {
        /// What the model takes.
        expected: u16,
        /// What was given.
        got: u16,
    },
    /// The output buffer does not match the model's output shape.
    OutputLength {
        /// What the model writes.
        expected: u32,
    },
    /// An activation of the model does not fit in [`SCRATCH_BYTES`].
    ScratchTooSmall {
        /// Elements needed.
        needed: u32,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::LatentLength { expected, got } => {
                write!(f, "latent has {got} values, the model takes {expected}")
            }
            Error::OutputLength { expected } => {
                write!(f, "output buffer must hold {expected} pixels")
            }
            Error::ScratchTooSmall { needed } => write!(
                f,
                "model needs {needed} bytes per activation buffer, firmware has {SCRATCH_BYTES}"
            ),
        }
    }
}

#[cfg(any(test, feature = "std"))]
impl std::error::Error for Error {}

/// Working memory for [`decode`]: two activation buffers used in turn.
pub struct Scratch {
    a: [i8; SCRATCH_BYTES],
    b: [i8; SCRATCH_BYTES],
}

impl Scratch {
    /// Zeroed working memory (usable in a `static`).
    pub const fn new() -> Self {
        Scratch {
            a: [0; SCRATCH_BYTES],
            b: [0; SCRATCH_BYTES],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// `(acc * multiplier) >> (31 - shift)`, rounded half up, as `Q8.md` specifies.
#[inline(always)]
fn requantize(acc: i32, multiplier: i32, shift: i32) -> i32 {
    let n = (31 - shift) as u32;
    let product = acc as i64 * multiplier as i64;
    ((product + (1i64 << (n - 1))) >> n) as i32
}

/// Where a layer's results go: the next activation buffer, or through the output table to pixels.
enum Sink<'s> {
    Activations(&'s mut [i8]),
    Pixels(&'s mut [u8], &'s [u8]),
}

impl Sink<'_> {
    #[inline(always)]
    fn put(&mut self, index: usize, y: i8) {
        match self {
            Sink::Activations(out) => out[index] = y,
            Sink::Pixels(out, table) => out[index] = table[(y as i32 + 128) as usize],
        }
    }
}

/// Finishes one output value: requantize, add the zero point, clamp (ReLU clamps at the zero point).
#[inline(always)]
fn finish(layer: &Layer, acc: i32, multiplier: i32, shift: i32) -> i8 {
    let zp = layer.output_zero_point as i32;
    let low = if layer.relu { zp } else { -128 };
    (requantize(acc, multiplier, shift) + zp).clamp(low, 127) as i8
}

fn dense(layer: &Layer, input: &[i8], sink: &mut Sink) {
    let n_in = layer.input.len();
    let w = layer.weights();
    for o in 0..layer.output.c as usize {
        let (bias, m, s) = layer.params(o);
        let row = &w[o * n_in..(o + 1) * n_in];
        let mut acc = bias;
        for (&wi, &xi) in row.iter().zip(input) {
            acc += (wi as i8 as i32) * (xi as i32);
        }
        sink.put(o, finish(layer, acc, m, s));
    }
}

fn conv(layer: &Layer, kernel: u8, padding: u8, upsample: u8, input: &[i8], sink: &mut Sink) {
    let (k, pad, up) = (kernel as usize, padding as isize, upsample as usize);
    let (c_in, h_in, w_in) = (
        layer.input.c as usize,
        layer.input.h as usize,
        layer.input.w as usize,
    );
    let (c_out, h_out, w_out) = (
        layer.output.c as usize,
        layer.output.h as usize,
        layer.output.w as usize,
    );
    // Size of the (virtual) upsampled input.
    let (h_up, w_up) = ((h_in * up) as isize, (w_in * up) as isize);
    let zp_in = layer.input_zero_point as i32;
    let w = layer.weights();
    for o in 0..c_out {
        let (bias, m, s) = layer.params(o);
        let w_o = &w[o * c_in * k * k..(o + 1) * c_in * k * k];
        for oy in 0..h_out {
            for ox in 0..w_out {
                let mut acc = bias;
                for ky in 0..k {
                    let y = oy as isize + ky as isize - pad;
                    let row_inside = y >= 0 && y < h_up;
                    for kx in 0..k {
                        let x = ox as isize + kx as isize - pad;
                        if row_inside && x >= 0 && x < w_up {
                            let src = (y as usize / up) * w_in + x as usize / up;
                            for c in 0..c_in {
                                let wv = w_o[(c * k + ky) * k + kx] as i8 as i32;
                                acc += wv * input[c * h_in * w_in + src] as i32;
                            }
                        } else {
                            // Padding reads a real zero, which is the input zero point.
                            for c in 0..c_in {
                                acc += (w_o[(c * k + ky) * k + kx] as i8 as i32) * zp_in;
                            }
                        }
                    }
                }
                sink.put((o * h_out + oy) * w_out + ox, finish(layer, acc, m, s));
            }
        }
    }
}

/// Decodes one quantized latent (see [`Model::quantize_latent`]) into `out`, a row-major
/// grayscale image of the model's output shape (0 = background, 255 = stroke).
pub fn decode(
    model: &Model,
    latent_q: &[i8],
    scratch: &mut Scratch,
    out: &mut [u8],
) -> Result<(), Error> {
    if latent_q.len() != model.latent_dim() {
        return Err(Error::LatentLength {
            expected: model.latent_dim() as u16,
            got: latent_q.len().min(u16::MAX as usize) as u16,
        });
    }
    let out_len = model.output_shape().len();
    if out.len() != out_len {
        return Err(Error::OutputLength {
            expected: out_len as u32,
        });
    }
    if model.largest_activation() > SCRATCH_BYTES {
        return Err(Error::ScratchTooSmall {
            needed: model.largest_activation() as u32,
        });
    }
    let Scratch { a, b } = scratch;
    a[..latent_q.len()].copy_from_slice(latent_q);
    let (mut current, mut next) = (a, b);
    let count = model.layer_count();
    for i in 0..count {
        let Some(layer) = model.layer(i) else {
            break; // unreachable: parse validated every layer
        };
        let input = &current[..layer.input.len()];
        let mut sink = if i + 1 == count {
            Sink::Pixels(out, model.output_table())
        } else {
            Sink::Activations(&mut next[..layer.output.len()])
        };
        match layer.kind {
            LayerKind::Dense => dense(&layer, input, &mut sink),
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => conv(&layer, kernel, padding, upsample, input, &mut sink),
        }
        core::mem::swap(&mut current, &mut next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8::tests::tiny_blob;

    /// Straightforward reference of the same arithmetic, written from `Q8.md` with explicit
    /// upsampled and padded tensors (no index folding), to check the folded kernels.
    fn reference(model: &Model, latent: &[i8]) -> Vec<u8> {
        let mut x: Vec<i32> = latent.iter().map(|&v| v as i32).collect();
        let n = model.layer_count();
        let mut last = Vec::new();
        for i in 0..n {
            let l = model.layer(i).expect("layer");
            let w: Vec<i32> = l.weights().iter().map(|&b| b as i8 as i32).collect();
            let zp = l.output_zero_point as i32;
            let fin = |acc: i32, o: usize| {
                let (_, m, s) = l.params(o);
                let v = ((acc as i64 * m as i64) as f64 / 2f64.powi(31 - s) + 0.5).floor() as i32;
                (v + zp).clamp(if l.relu { zp } else { -128 }, 127)
            };
            let y: Vec<i32> = match l.kind {
                LayerKind::Dense => (0..l.output.c as usize)
                    .map(|o| {
                        let row = &w[o * x.len()..(o + 1) * x.len()];
                        let acc =
                            l.params(o).0 + row.iter().zip(&x).map(|(a, b)| a * b).sum::<i32>();
                        fin(acc, o)
                    })
                    .collect(),
                LayerKind::Conv {
                    kernel,
                    padding,
                    upsample,
                } => {
                    let (k, p, u) = (kernel as usize, padding as usize, upsample as usize);
                    let (c, h, wd) = (l.input.c as usize, l.input.h as usize, l.input.w as usize);
                    let (hp, wp) = (h * u + 2 * p, wd * u + 2 * p);
                    let mut padded = vec![l.input_zero_point as i32; c * hp * wp];
                    for ci in 0..c {
                        for yy in 0..h * u {
                            for xx in 0..wd * u {
                                padded[(ci * hp + yy + p) * wp + xx + p] =
                                    x[(ci * h + yy / u) * wd + xx / u];
                            }
                        }
                    }
                    let (co, ho, wo) = (
                        l.output.c as usize,
                        l.output.h as usize,
                        l.output.w as usize,
                    );
                    let mut y = vec![0; co * ho * wo];
                    for o in 0..co {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let mut acc = l.params(o).0;
                                for ci in 0..c {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            acc += w[((o * c + ci) * k + ky) * k + kx]
                                                * padded[(ci * hp + oy + ky) * wp + ox + kx];
                                        }
                                    }
                                }
                                y[(o * ho + oy) * wo + ox] = fin(acc, o);
                            }
                        }
                    }
                    y
                }
            };
            if i + 1 == n {
                last = y
                    .iter()
                    .map(|&v| model.output_table()[(v + 128) as usize])
                    .collect();
            }
            x = y;
        }
        last
    }

    #[test]
    fn folded_kernels_match_the_reference() {
        let blob = tiny_blob();
        let model = Model::parse(&blob).expect("parses");
        let mut scratch = Scratch::new();
        for latent in [[0i8, 0], [127, -127], [-50, 33], [5, 90]] {
            let mut out = [0u8; 16];
            decode(&model, &latent, &mut scratch, &mut out).expect("decodes");
            assert_eq!(
                out.to_vec(),
                reference(&model, &latent),
                "latent {latent:?}"
            );
        }
    }

    #[test]
    fn bad_calls_are_errors() {
        let blob = tiny_blob();
        let model = Model::parse(&blob).expect("parses");
        let mut scratch = Scratch::new();
        let mut out = [0u8; 16];
        assert_eq!(
            decode(&model, &[1], &mut scratch, &mut out),
            Err(Error::LatentLength {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            decode(&model, &[1, 2], &mut scratch, &mut out[..15]),
            Err(Error::OutputLength { expected: 16 })
        );
    }

    #[test]
    fn requantize_rounds_half_up() {
        // factor 0.5: multiplier 2^30, shift 0.
        assert_eq!(requantize(3, 1 << 30, 0), 2);
        assert_eq!(requantize(-3, 1 << 30, 0), -1);
        assert_eq!(requantize(4, 1 << 30, 0), 2);
    }
}
