//! The int8 decoder: runs a parsed [`Model`] on a quantized latent and writes a grayscale image.
//!
//! Integer arithmetic only (int8 x int8 -> int32 accumulation, fixed-point requantization, see
//! `Q8.md`). Nearest upsampling is folded into the next convolution's indexing, so upsampled maps
//! are never materialised.
//!
//! # Working memory
//!
//! All activations live in one statically sized arena, [`Scratch`], of [`SCRATCH_BYTES`] bytes.
//! A layer reads its input from one end of the arena and writes its output at the other end; the
//! next layer reads that output where it lies and writes at the opposite end, so the ends
//! alternate from layer to layer and nothing is copied:
//!
//! ```text
//! layer 0:  [latent ......................... out0]
//! layer 1:  [out1 ........................... out0]   (reads out0, writes out1)
//! layer 2:  [out1 ........................... out2]   (reads out1, writes out2)
//! ```
//!
//! A layer's input and output must therefore fit side by side: `input + output <= SCRATCH_BYTES`.
//! The last layer writes through the output table straight into the caller's pixel buffer, so
//! only its input counts. [`Model::working_bytes`] is the largest such need of a model;
//! [`decode`] returns [`Error::ScratchTooSmall`] (before computing anything) for a model that
//! needs more. The MNIST decoder's largest pair is its third conv, 8x8x8 in (512 bytes, upsampled
//! on the fly) and 16x14x14 out (3136 bytes): 3648 bytes; its last conv reads those 3136 bytes and
//! writes the 784 pixels directly.

use crate::q8::{Layer, LayerKind, Model};

/// Side of the square image the MNIST decoders produce.
pub const IMAGE_SIDE: usize = 28;
/// Pixels in that image.
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;
/// Bytes in the activation arena of [`Scratch`]: a layer's input and output together must fit.
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
    /// A layer's input and output together (the last layer: its input) do not fit in
    /// [`SCRATCH_BYTES`]; see [`Model::working_bytes`].
    ScratchTooSmall {
        /// Bytes needed.
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
                "model needs {needed} bytes of working memory (a layer's input and output), \
                 firmware has {SCRATCH_BYTES}"
            ),
        }
    }
}

#[cfg(any(test, feature = "std"))]
impl std::error::Error for Error {}

/// Working memory for [`decode`]: one arena holding a layer's input at one end and its output at
/// the other (see the module docs).
pub struct Scratch {
    arena: [i8; SCRATCH_BYTES],
}

impl Scratch {
    /// Zeroed working memory (usable in a `static`).
    pub const fn new() -> Self {
        Scratch {
            arena: [0; SCRATCH_BYTES],
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
    let (plane, kk) = (h_in * w_in, k * k);
    let w = layer.weights();
    for o in 0..c_out {
        let (bias, m, s) = layer.params(o);
        let w_o = &w[o * c_in * kk..(o + 1) * c_in * kk];
        for oy in 0..h_out {
            for ox in 0..w_out {
                let mut acc = bias;
                for ky in 0..k {
                    let y = oy as isize + ky as isize - pad;
                    let row_inside = y >= 0 && y < h_up;
                    for kx in 0..k {
                        let x = ox as isize + kx as isize - pad;
                        // This tap's weight for each input channel (`w_o[c * kk + tap]`); strided
                        // iterators instead of indexing keep bounds checks out of the MAC loop.
                        let taps = w_o[ky * k + kx..].iter().step_by(kk);
                        if row_inside && x >= 0 && x < w_up {
                            let src = (y as usize / up) * w_in + x as usize / up;
                            let pixels = input[src..].iter().step_by(plane);
                            for (&wv, &xv) in taps.zip(pixels) {
                                acc += (wv as i8 as i32) * xv as i32;
                            }
                        } else {
                            // Padding reads a real zero, which is the input zero point.
                            acc += zp_in * taps.map(|&wv| wv as i8 as i32).sum::<i32>();
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
///
/// Fails, without touching `out`, if the latent or `out` has the wrong length, or with
/// [`Error::ScratchTooSmall`] if the model needs more than [`SCRATCH_BYTES`] of working memory
/// ([`Model::working_bytes`]).
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
    let too_small = Error::ScratchTooSmall {
        needed: model.working_bytes() as u32,
    };
    if model.working_bytes() > SCRATCH_BYTES {
        return Err(too_small);
    }
    let arena = &mut scratch.arena[..];
    arena[..latent_q.len()].copy_from_slice(latent_q);
    // Whether the current layer's input lies at the start of the arena (else at its end).
    let mut input_at_start = true;
    let count = model.layer_count();
    for i in 0..count {
        let Some(layer) = model.layer(i) else {
            break; // unreachable: parse validated every layer
        };
        let n_in = layer.input.len();
        // `ok_or` cannot fail: `working_bytes` was checked above.
        let (input, mut sink) = if i + 1 == count {
            let input = if input_at_start {
                arena.get(..n_in)
            } else {
                arena.len().checked_sub(n_in).and_then(|at| arena.get(at..))
            };
            let input = input.ok_or(too_small)?;
            (input, Sink::Pixels(&mut *out, model.output_table()))
        } else {
            let (input, output) =
                split(arena, n_in, layer.output.len(), input_at_start).ok_or(too_small)?;
            (input, Sink::Activations(output))
        };
        match layer.kind {
            LayerKind::Dense => dense(&layer, input, &mut sink),
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => conv(&layer, kernel, padding, upsample, input, &mut sink),
        }
        input_at_start = !input_at_start;
    }
    Ok(())
}

/// Splits the arena into a layer's input (`n_in` bytes at the start, or at the end) and its output
/// (`n_out` bytes at the other end). `None` if they do not fit side by side.
fn split(
    arena: &mut [i8],
    n_in: usize,
    n_out: usize,
    input_at_start: bool,
) -> Option<(&[i8], &mut [i8])> {
    let len = arena.len();
    if n_in.checked_add(n_out)? > len {
        return None;
    }
    if input_at_start {
        let (low, high) = arena.split_at_mut(len - n_out);
        Some((&low[..n_in], high))
    } else {
        let (low, high) = arena.split_at_mut(n_out);
        Some((&high[high.len() - n_in..], low))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::q8::tests::tiny_blob;
    use crate::q8::{LayerSpec, Shape, TABLE_LEN, quantize_multiplier, write};

    /// A model made of `layers` (kind, input, output, ReLU), with pseudo-random weights and
    /// parameters scaled so that the activations spread over the int8 range.
    fn chain(layers: &[(LayerKind, Shape, Shape, bool)]) -> Vec<u8> {
        let mut seed = 0x2545_f491_u32;
        let mut next = move |span: i32| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((seed >> 8) % (2 * span as u32 + 1)) as i32 - span
        };
        let mut zp_in = 0i8;
        let specs: Vec<LayerSpec> = layers
            .iter()
            .enumerate()
            .map(|(i, &(kind, input, output, relu))| {
                let k = match kind {
                    LayerKind::Dense => 1,
                    LayerKind::Conv { kernel, .. } => kernel as usize,
                };
                let fan_in = input.c as usize * k * k;
                let c_out = output.c as usize;
                let (m, s) = quantize_multiplier(0.06 / (fan_in as f64).sqrt()).expect("factor");
                let zp_out = if i + 1 == layers.len() { 5 } else { -20 };
                let spec = LayerSpec {
                    kind,
                    relu,
                    input,
                    output,
                    input_zero_point: zp_in,
                    output_zero_point: zp_out,
                    weights: (0..c_out * fan_in).map(|_| next(20) as i8).collect(),
                    bias: (0..c_out).map(|_| next(2000)).collect(),
                    multiplier: vec![m; c_out],
                    shift: vec![s; c_out],
                };
                zp_in = zp_out;
                spec
            })
            .collect();
        let mut table = [0u8; TABLE_LEN];
        for (i, t) in table.iter_mut().enumerate() {
            *t = i as u8;
        }
        write(2, 0.05, &specs, &table).expect("valid blob")
    }

    fn shape(c: u16, h: u16, w: u16) -> Shape {
        Shape { c, h, w }
    }

    fn conv(kernel: u8, padding: u8, upsample: u8) -> LayerKind {
        LayerKind::Conv {
            kernel,
            padding,
            upsample,
        }
    }

    /// Decodes a few latents and compares with [`reference`]; returns the distinct pixel values.
    fn check_against_reference(model: &Model) -> usize {
        let mut scratch = Scratch::new();
        let mut distinct = std::collections::BTreeSet::new();
        for latent in [[0i8, 0], [127, -127], [-50, 33], [5, 90]] {
            let mut out = vec![0u8; model.output_shape().len()];
            decode(model, &latent, &mut scratch, &mut out).expect("decodes");
            assert_eq!(out, reference(model, &latent), "latent {latent:?}");
            distinct.extend(out);
        }
        distinct.len()
    }

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
    fn layers_that_fill_the_arena_exactly_match_the_reference() {
        // Two layers hold 2048 + 2048 bytes at once; the last layer's input lies at the end.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(2048, 1, 1), true),
            (conv(1, 0, 1), shape(32, 8, 8), shape(32, 8, 8), true),
            (conv(3, 1, 2), shape(32, 8, 8), shape(8, 16, 16), true),
            (conv(3, 1, 1), shape(8, 16, 16), shape(1, 16, 16), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(model.working_bytes(), SCRATCH_BYTES);
        assert!(
            check_against_reference(&model) > 20,
            "degenerate test model"
        );
    }

    #[test]
    fn only_the_last_layers_input_counts() {
        // The last layer reads 4000 bytes and writes pixels, not scratch.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(4000, 1, 1), true),
            (conv(3, 1, 1), shape(40, 10, 10), shape(1, 10, 10), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(model.working_bytes(), 4002);
        assert!(
            check_against_reference(&model) > 10,
            "degenerate test model"
        );
    }

    #[test]
    fn a_model_that_needs_more_than_the_arena_is_an_error() {
        // The middle conv holds 2100 + 2100 bytes at once, more than the arena.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(2100, 1, 1), true),
            (conv(1, 0, 1), shape(21, 10, 10), shape(21, 10, 10), true),
            (conv(3, 1, 1), shape(21, 10, 10), shape(1, 10, 10), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(model.working_bytes(), 4200);
        let mut scratch = Scratch::new();
        let mut out = [7u8; 100];
        assert_eq!(
            decode(&model, &[1, 2], &mut scratch, &mut out),
            Err(Error::ScratchTooSmall { needed: 4200 })
        );
        assert_eq!(out, [7u8; 100], "output touched");
        // The same for a single layer whose input alone is too big.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(4097, 1, 1), true),
            (conv(1, 0, 1), shape(4097, 1, 1), shape(1, 1, 1), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(
            decode(&model, &[1, 2], &mut scratch, &mut [0u8; 1]),
            Err(Error::ScratchTooSmall { needed: 4099 })
        );
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
