//! The int8 decoder: runs a parsed [`Model`] on a quantized latent and writes a grayscale image.
//!
//! Integer arithmetic only (int8 activations x int8 or folded int16 weights -> int32
//! accumulation, fixed-point requantization, see `Q8.md`). Accumulators wrap on overflow, as the
//! DSP's `smlad` does, so no blob, however crafted, makes a decode panic. Nearest upsampling is folded into the
//! next convolution ([`crate::fold`]), so upsampled maps are never materialised and a `u = 2`,
//! 3x3 conv does 4 multiplications per input channel instead of 9.
//!
//! # Kernels
//!
//! Conv layers keep their activations channels-last (`[h][w][c]`), so each row of a pixel's taps
//! is one contiguous run of bytes. The kernel computes [`CHANNEL_BLOCK`] output channels at once
//! (each input byte loaded feeds four accumulators), or, for a layer with a single output channel,
//! [`PIXEL_BLOCK`] neighbouring pixels at once (each weight loaded feeds four). On Armv7E-M
//! (Cortex-M4/M7, the `arm_dsp` cfg set by the build script) four input bytes are split with
//! `sxtb16` into 16-bit lanes and multiplied with `smlad`, two MACs per instruction; elsewhere
//! (Cortex-M0, hosts) the same sums run in plain Rust. Both give identical results on every blob
//! the parser accepts.
//!
//! Taps outside the input read the input's zero point (a real zero). Along x they are stored:
//! every row of a conv's input carries [`Layer::input_padding`] columns of zero point on each
//! side, written by the layer before it, so every output of a row is an interior pixel and a
//! whole row of outputs is one run of the kernel (no border path). Tap rows above or below the
//! input are skipped, and what they would add (zero point x the row's weights) starts the
//! accumulators.
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
//! A layer's input and output, as stored (padding columns included, [`Shape::stored_len`]), must
//! therefore fit side by side: `input + output <= SCRATCH_BYTES`. The last layer writes through
//! the output table straight into the caller's pixel buffer, so only its input counts.
//! [`Model::working_bytes`] is the largest such need of a model; [`decode`] returns
//! [`Error::ScratchTooSmall`] (before computing anything) for a model that needs more. The MNIST
//! decoder's largest pair is its third conv, 8x8x8 in (512 bytes, upsampled on the fly) and
//! 16x14x14 out stored as 16x14x16 for the last conv's padding (3584 bytes): 4096 bytes, the whole
//! arena; its last conv reads those 3584 bytes and writes the 784 pixels directly.

use crate::fold::{AxisPhase, CHANNEL_BLOCK, FoldLayout, MAX_SPAN, blocks, blocks_len};
use crate::q8::{Layer, LayerKind, Model, Shape};

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

/// One output channel's requantization (see `Q8.md`, "Arithmetic"), with its constants
/// prepared once: `y = clamp(((acc * multiplier + 2^(n-1)) >> n) + zp, low, 127)` with
/// `n = 31 - shift` (checked to lie in 1..=62 at parse time) and `low` the zero point after a
/// ReLU, else -128.
///
/// For the usual `32 <= n <= 54` ([`Requant::FOLDED`]) the zero point is folded into the rounding
/// constant (`2^(n-1) + zp * 2^n`: adding a multiple of `2^n` before the shift adds `zp` after
/// it, exactly) and the shift is a 32-bit shift of the product's high word: one `smlal`, one
/// `asr`, a saturation and a max. Other shifts (only a crafted blob has them) take a slower path.
#[derive(Clone, Copy)]
struct Requant {
    multiplier: i32,
    /// `2^(n-1) + zp * 2^n` for `n` in [`Requant::FOLDED`], else `2^(n-1)`.
    round: i64,
    n: u32,
    zero_point: i32,
    low: i32,
}

impl Requant {
    /// The shifts `n` of the fast path: `n >= 32` makes it a shift of the high word, and
    /// `n <= 54` keeps `acc * multiplier + 2^(n-1) + zp * 2^n` (each term below `2^62`,
    /// `2^53` and `2^61`) inside an i64.
    const FOLDED: core::ops::RangeInclusive<u32> = 32..=54;

    /// From the channel's multiplier and shift, as [`Layer::params`] gives them with its bias.
    fn new(layer: &Layer, (multiplier, shift): (i32, i32)) -> Self {
        let n = (31 - shift).clamp(1, 62) as u32;
        let zero_point = layer.output_zero_point as i32;
        Requant {
            multiplier,
            round: Self::round(n, zero_point),
            n,
            zero_point,
            low: if layer.relu { zero_point } else { -128 },
        }
    }

    /// The rounding constant for shift `n`: `2^(n-1)`, plus `zero_point * 2^n` on the fast
    /// path ([`Requant::FOLDED`]), where it is built from its high word: a variable 64-bit shift
    /// is a dozen instructions on a 32-bit core. `zero_point << k` fits an i32 there (an i8
    /// zero point, `k <= 22`).
    fn round(n: u32, zero_point: i32) -> i64 {
        if Self::FOLDED.contains(&n) {
            let k = n - 32;
            let high = (zero_point << k) + if k > 0 { 1 << (k - 1) } else { 0 };
            let low: u32 = if k == 0 { 1 << 31 } else { 0 };
            ((high as i64) << 32) | low as i64
        } else {
            1i64 << (n.clamp(1, 62) - 1)
        }
    }

    /// The constants of `crate::dsp::run_4ch_store` for a block of channels: per channel the
    /// rounding constant (low word, high word), the multiplier, and `n - 32 | low << 8`; `None`
    /// unless every channel takes the fast path ([`Requant::FOLDED`]).
    #[cfg(arm_dsp)]
    fn packed<const N: usize>(block: &[Requant; N]) -> Option<Packed<N>> {
        let mut packed = [[0u32; 4]; N];
        for (p, r) in packed.iter_mut().zip(block) {
            if !Self::FOLDED.contains(&r.n) {
                return None;
            }
            *p = [
                r.round as u32,
                (r.round >> 32) as u32,
                r.multiplier as u32,
                (r.n - 32) | ((r.low as i8 as u8 as u32) << 8),
            ];
        }
        Some(packed)
    }

    #[inline(always)]
    fn apply(&self, acc: i32) -> i8 {
        let product = widening_mul(acc, self.multiplier);
        let y = if Self::FOLDED.contains(&self.n) {
            // One `smlal`; the high word shifted is `scaled + zp`, within +-2^31 (see FOLDED).
            (((product + self.round) >> 32) as i32) >> (self.n - 32)
        } else {
            // A crafted blob: the result can exceed i32 (small n) and the zero point is not
            // folded in; added in i64 (`n >= 1` keeps the shifted sum within +-2^62), then
            // saturated, so a result past i32 stays on its side of the range (cut to i32 after
            // the addition, it had wrapped to the other end).
            (((product + self.round) >> self.n) + self.zero_point as i64)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32
        };
        // `clamp(-128, 127)` is one `ssat`; `low` is at least -128.
        y.clamp(-128, 127).max(self.low) as i8
    }
}

/// [`Requant::packed`]'s constants of `N` channels.
type Packed<const N: usize> = [[u32; 4]; N];

/// What a block of `N` output channels needs besides its weights, the same in every phase of a
/// conv layer, so prepared once per block: the biases and the requantization, per channel and
/// (Armv7E-M) packed for the assembly kernels.
struct BlockConstants<const N: usize> {
    bias: [i32; N],
    requant: [Requant; N],
    /// [`Requant::packed`]: `None` where some channel takes the slow path.
    #[cfg(arm_dsp)]
    packed: Option<Packed<N>>,
}

impl<const N: usize> BlockConstants<N> {
    fn new(layer: &Layer, o: usize) -> Self {
        let params: [_; N] = core::array::from_fn(|j| layer.channel(o + j));
        let requant = params.map(|(_, multiplier, shift)| Requant::new(layer, (multiplier, shift)));
        BlockConstants {
            bias: params.map(|(bias, _, _)| bias),
            #[cfg(arm_dsp)]
            packed: Requant::packed(&requant),
            requant,
        }
    }

    /// The packed constants as `M` channels (`M = N`; the kernels name their block size), or
    /// `None` where the assembly kernels cannot take them (or do not exist).
    fn packed<const M: usize>(&self) -> Option<&Packed<M>> {
        #[cfg(arm_dsp)]
        return self
            .packed
            .as_ref()
            .and_then(|p| <&Packed<M>>::try_from(&p[..]).ok());
        #[cfg(not(arm_dsp))]
        None
    }
}

/// `a * b` as an i64. One instruction where the core has a 32 x 32 -> 64 multiply; the
/// Cortex-M0 (Armv6-M) has none, and its runtime's 64 x 64 multiply costs ~38 instructions.
#[inline(always)]
fn widening_mul(a: i32, b: i32) -> i64 {
    if cfg!(armv6m) {
        widening_mul_by_halves(a, b)
    } else {
        a as i64 * b as i64
    }
}

/// [`widening_mul`] from four 16 x 16-bit products, each of which fits an i32 (`muls`):
/// `a = ah 2^16 + al`, `b = bh 2^16 + bl` with `al`, `bl` unsigned, so `a b = ah bh 2^32 +
/// (ah bl + al bh) 2^16 + al bl`.
#[inline(always)]
fn widening_mul_by_halves(a: i32, b: i32) -> i64 {
    let (ah, al) = (a >> 16, (a & 0xffff) as u32);
    let (bh, bl) = (b >> 16, (b & 0xffff) as u32);
    let low = (al * bl) as i64; // < 2^32: unsigned
    let cross = (ah * bl as i32) as i64 + (al as i32 * bh) as i64; // each within +-2^31
    ((ah * bh) as i64).wrapping_shl(32) + cross.wrapping_shl(16) + low
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
            Sink::Activations(out) => {
                if let Some(v) = out.get_mut(index) {
                    *v = y;
                }
            }
            Sink::Pixels(out, table) => {
                if let (Some(v), Some(&t)) =
                    (out.get_mut(index), table.get((y as i32 + 128) as usize))
                {
                    *v = t;
                }
            }
        }
    }
}

/// Where element `i` of a flat `[c][h][w]` tensor lies when it is stored channels-last, as conv
/// layers store their activations, with `padding` columns on each side of every row (see
/// [`Shape::stored_len`]); `None` for a flat (dense) tensor.
#[inline(always)]
fn channels_last(i: usize, stored: Option<(Shape, usize)>) -> usize {
    match stored {
        Some((s, padding)) => {
            let (w, plane) = (s.w as usize, s.h as usize * s.w as usize);
            let (pixel, channel) = (i % plane, i / plane);
            let (y, x) = (pixel / w, pixel % w);
            (y * (w + 2 * padding) + x + padding) * s.c as usize + channel
        }
        None => i,
    }
}

/// A dense layer. Its input is stored channels-last with shape `input_hwc` when a conv wrote it;
/// its output is stored channels-last (shape and padding `output_hwc`) when a conv reads it.
fn dense(
    layer: &Layer,
    input: &[i8],
    (input_hwc, output_hwc): (Option<Shape>, Option<(Shape, usize)>),
    sink: &mut Sink,
) {
    let n_in = layer.input.len();
    let w = layer.weights();
    for o in 0..layer.output.c as usize {
        let bias = layer.channel(o).0;
        let row = &w[o * n_in..(o + 1) * n_in];
        let mut acc = bias;
        if input_hwc.is_none() {
            for (&wi, &xi) in row.iter().zip(input) {
                acc = acc.wrapping_add((wi as i8 as i32) * (xi as i32));
            }
        } else {
            for (i, &wi) in row.iter().enumerate() {
                let xi = input
                    .get(channels_last(i, input_hwc.map(|shape| (shape, 0))))
                    .map_or(0, |&x| x as i32);
                acc = acc.wrapping_add((wi as i8 as i32) * xi);
            }
        }
        // (Read again rather than kept from the bias: 600 instructions fewer per decode on the
        // M4F, where keeping them live across the loop costs spills.)
        let (_, multiplier, shift) = layer.channel(o);
        sink.put(
            channels_last(o, output_hwc),
            Requant::new(layer, (multiplier, shift)).apply(acc),
        );
    }
}

/// Where the outputs of one kernel call lie: `lines` lines (output rows) of `count` steps. Step
/// `p` of line `l` reads its first tap row from quad `at + l * line + p * step` of the input,
/// `(at, step, line) = x`, and writes from index `at + l * line + p * step` of the output,
/// `(at, step, line) = out`. A step is one pixel (channel-block kernels), or a group of
/// [`PIXEL_BLOCK`] or a pair (single-channel kernels). One call covers the rows of a phase that
/// share their tap rows, so the bounds are checked once for all of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    /// Steps per line.
    pub count: usize,
    /// Lines.
    pub lines: usize,
    /// Input quad of step 0 of line 0, and the quads between steps and between lines.
    pub x: (usize, usize, usize),
    /// Output index of step 0 of line 0, and the indices between steps and between lines.
    pub out: (usize, usize, usize),
}

impl Grid {
    /// The largest offset from step 0 of line 0 to another step, in units of `(step, line)`;
    /// `None` on overflow or for an empty grid.
    #[cfg_attr(not(arm_dsp), allow(dead_code))]
    fn last(&self, (step, line): (usize, usize)) -> Option<usize> {
        let steps = self.count.checked_sub(1)?.checked_mul(step)?;
        self.lines
            .checked_sub(1)?
            .checked_mul(line)?
            .checked_add(steps)
    }

    /// One past the last quad read when each step reads `rows` rows `stride` quads apart of
    /// `span` quads each (from its first quad); `None` on overflow or for an empty grid.
    #[cfg_attr(not(arm_dsp), allow(dead_code))]
    pub(crate) fn x_end(&self, (stride, rows, span): (usize, usize, usize)) -> Option<usize> {
        let (at, step, line) = self.x;
        let taps = rows
            .checked_sub(1)?
            .checked_mul(stride)?
            .checked_add(span)?;
        self.last((step, line))?.checked_add(at)?.checked_add(taps)
    }

    /// One past the last output index written when each step writes `width` indices.
    #[cfg_attr(not(arm_dsp), allow(dead_code))]
    pub(crate) fn out_end(&self, width: usize) -> Option<usize> {
        let (at, step, line) = self.out;
        self.last((step, line))?.checked_add(at)?.checked_add(width)
    }

    /// Step `p` of line `l`: (first input quad, first output index). Wrapping arithmetic, so
    /// that it never panics; the kernels read and write only after `x_end`/`out_end` (DSP) or
    /// checked slicing (portable) ruled out overflow.
    #[inline(always)]
    pub(crate) fn step(&self, l: usize, p: usize) -> (usize, usize) {
        let at = |(base, step, line): (usize, usize, usize)| {
            base.wrapping_add(l.wrapping_mul(line))
                .wrapping_add(p.wrapping_mul(step))
        };
        (at(self.x), at(self.out))
    }

    /// Every step, line by line, as [`Grid::step`] gives them.
    #[cfg_attr(not(arm_dsp), allow(dead_code))]
    pub(crate) fn steps(&self) -> impl Iterator<Item = (usize, usize)> {
        let grid = *self;
        (0..grid.lines).flat_map(move |l| (0..grid.count).map(move |p| grid.step(l, p)))
    }
}

/// Where the pixels of one conv layer read their input: the stored (channels-last) input and its
/// geometry.
#[derive(Clone, Copy)]
struct Input<'a> {
    values: &'a [i8],
    c: usize,
    h: usize,
    w: usize,
    /// Columns of zero point stored on each side of every row ([`Layer::input_padding`]).
    padding: usize,
    zero_point: i32,
}

/// The folded weights of one tap row for a block of `N` channels, split as [`FoldLayout`] lays
/// them out: quads (per quad, per channel, 4 i16 in lane order) and the tail (per position, per
/// channel, one i16).
#[derive(Clone, Copy)]
struct WeightRow<'a, const N: usize> {
    quads: &'a [[[u8; 8]; N]],
    tail: &'a [[[u8; 2]; N]],
}

impl<'a, const N: usize> WeightRow<'a, N> {
    fn new(folded: &'a [u8], layout: &FoldLayout, dy: usize) -> Self {
        let quads = layout.run / 4;
        let row = folded
            .get(2 * dy * layout.row_len..)
            .unwrap_or(&[])
            .split_at_checked(quads * N * 8)
            .map(|(q, t)| (q.as_chunks::<8>().0, t.as_chunks::<2>().0));
        let (q, t) = row.unwrap_or((&[], &[]));
        WeightRow {
            quads: q.as_chunks::<N>().0,
            tail: t
                .get(..(layout.run % 4) * N)
                .unwrap_or(&[])
                .as_chunks::<N>()
                .0,
        }
    }

    /// Sum of each channel's weights in this row, in one pass.
    fn sums(&self) -> [i32; N] {
        let mut sums = [0i32; N];
        let add = |sum: &mut i32, w: &[[u8; 2]]| {
            for &w in w {
                *sum = sum.wrapping_add(i16::from_le_bytes(w) as i32);
            }
        };
        for q in self.quads {
            for (sum, w) in sums.iter_mut().zip(q) {
                add(sum, w.as_chunks::<2>().0);
            }
        }
        for t in self.tail {
            for (sum, w) in sums.iter_mut().zip(t) {
                add(sum, core::slice::from_ref(w));
            }
        }
        sums
    }
}

/// `acc[j] += sum of w * x` over whole quads of input values, with the Armv7E-M DSP
/// instructions: four input bytes are split once into two pairs of 16-bit lanes, which feed two
/// dual multiply-accumulates per channel.
#[cfg(arm_dsp)]
#[inline(always)]
fn quads<const N: usize>(xs: &[[i8; 4]], ws: &[[[u8; 8]; N]], acc: &mut [i32; N]) {
    use crate::dsp::{smlad, sxtb16, sxtb16_ror8};
    for (x, w) in xs.iter().zip(ws) {
        let x = u32::from_le_bytes(x.map(|b| b as u8));
        let (even, odd) = (sxtb16(x), sxtb16_ror8(x));
        for (a, w) in acc.iter_mut().zip(w) {
            let (w_even, w_odd) = w.split_at(4);
            let w_even = u32::from_le_bytes([w_even[0], w_even[1], w_even[2], w_even[3]]);
            let w_odd = u32::from_le_bytes([w_odd[0], w_odd[1], w_odd[2], w_odd[3]]);
            *a = smlad(odd, w_odd, smlad(even, w_even, *a));
        }
    }
}

/// The weights of `blocks` as i16 values, when their bytes sit at an even address (the writer
/// aligns the folded weights; a blob kept at an aligned address keeps them so): one `ldrsh`
/// each on the Cortex-M0 (with its offset register), where a little-endian byte pair costs five
/// instructions.
#[cfg(not(arm_dsp))]
#[inline(always)]
fn as_i16<const B: usize>(blocks: &[[u8; B]]) -> Option<&[i16]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(blocks.as_flattened()).ok()
    } else {
        None
    }
}

/// The same sums in plain Rust (hosts, Cortex-M0).
#[cfg(not(arm_dsp))]
#[inline(always)]
fn quads<const N: usize>(xs: &[[i8; 4]], ws: &[[[u8; 8]; N]], acc: &mut [i32; N]) {
    if let Some(w) = as_i16(ws.as_flattened()) {
        // Per channel the lanes' weights in the order `w0, w2, w1, w3` (see `FoldLayout`).
        for (x, w) in xs.iter().zip(w.as_chunks::<4>().0.chunks_exact(N)) {
            let [x0, x1, x2, x3] = x.map(|v| v as i32);
            for (a, &[w0, w2, w1, w3]) in acc.iter_mut().zip(w) {
                let [w0, w1, w2, w3] = [w0, w1, w2, w3].map(i32::from);
                *a = a.wrapping_add(w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3);
            }
        }
        return;
    }
    for (x, w) in xs.iter().zip(ws) {
        let [x0, x1, x2, x3] = x.map(|v| v as i32);
        for (a, w) in acc.iter_mut().zip(w) {
            let [w0, w2, w1, w3] =
                [0, 2, 4, 6].map(|i| i16::from_le_bytes([w[i], w[i + 1]]) as i32);
            *a = a.wrapping_add(w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3);
        }
    }
}

/// `acc[j] += sum of w * x` over one tap row of a pixel (`xs`: the row's `run` input values).
#[inline(always)]
fn row_macs<const N: usize>(xs: &[i8], w: &WeightRow<N>, acc: &mut [i32; N]) {
    let (x_quads, x_tail) = xs.as_chunks::<4>();
    quads(x_quads, w.quads, acc);
    for (&x, w) in x_tail.iter().zip(w.tail) {
        for (a, w) in acc.iter_mut().zip(w) {
            *a = a.wrapping_add(i16::from_le_bytes(*w) as i32 * x as i32);
        }
    }
}

/// Output pixels a single-channel kernel computes at once: its weights, loaded once, feed this
/// many accumulators (the counterpart of [`CHANNEL_BLOCK`] for layers with one output channel).
pub const PIXEL_BLOCK: usize = 4;

/// `acc[p] += sum of w * x` over one tap row of four neighbouring pixels of a single output
/// channel, all with the weights `ws`: pixel `p` reads the quads `xq[p * QS..][..ws.len()]`
/// (`QS` quads from one pixel to the next, a constant so that the four reads share one base
/// register). `xq` must hold `ws.len() + 3 * QS` quads; missing ones end the sums early.
/// (Plain Rust for hosts and the Cortex-M0; Armv7E-M runs `crate::dsp::run_pixels`.)
#[cfg(not(arm_dsp))]
#[inline(always)]
fn pixel_quads<const QS: usize>(xq: &[[i8; 4]], ws: &[[u8; 8]], acc: &mut [i32; PIXEL_BLOCK]) {
    let [mut a0, mut a1, mut a2, mut a3] = *acc;
    let mut step = |[w0, w2, w1, w3]: [i32; 4], x: &[[i8; 4]]| {
        let mac = |a: i32, x: [i8; 4]| {
            let [x0, x1, x2, x3] = x.map(|v| v as i32);
            a.wrapping_add(w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3)
        };
        a0 = mac(a0, x[0]);
        a1 = mac(a1, x[QS]);
        a2 = mac(a2, x[2 * QS]);
        a3 = mac(a3, x[3 * QS]);
    };
    // One window per weight quad: the four pixels' quads at constant offsets.
    let windows = xq.windows(3 * QS + 1);
    if let Some(w) = as_i16(ws) {
        for (w, x) in w.as_chunks::<4>().0.iter().zip(windows) {
            step(w.map(i32::from), x);
        }
    } else {
        for (w, x) in ws.iter().zip(windows) {
            step(
                [0, 2, 4, 6].map(|i| i16::from_le_bytes([w[i], w[i + 1]]) as i32),
                x,
            );
        }
    }
    *acc = [a0, a1, a2, a3];
}

/// The output pixels of `grid` (a step is a pixel) for a block of [`CHANNEL_BLOCK`] channels,
/// every tap inside the input, the input's channels in whole quads: the hot loop of most conv
/// layers. Positions are in quads of `x`: a pixel reads `rows` tap rows of `quads_per_row` quads
/// from its first quad, rows `stride` apart, with the weights `w` (`rows x quads_per_row`); it
/// writes its channels from its output index.
#[inline(never)]
fn channel_block_run(
    x: &[[i8; 4]],
    grid: &Grid,
    (stride, rows, quads_per_row): (usize, usize, usize),
    w: &[[[u8; 8]; CHANNEL_BLOCK]],
    init: [i32; CHANNEL_BLOCK],
    (requant, packed): (&[Requant; CHANNEL_BLOCK], Option<&Packed<CHANNEL_BLOCK>>),
    out: &mut [i8],
) {
    let store = |out: &mut [i8], at: usize, acc: [i32; CHANNEL_BLOCK]| {
        if let Some(dst) = out.get_mut(at..at.saturating_add(CHANNEL_BLOCK)) {
            for ((d, &a), r) in dst.iter_mut().zip(&acc).zip(requant) {
                *d = r.apply(a);
            }
        }
    };
    #[cfg(arm_dsp)]
    {
        let taps = (stride, rows, quads_per_row);
        // Requantization and store in the assembly loop when every channel allows it.
        let fused = packed
            .is_some_and(|packed| crate::dsp::run_4ch_store(x, grid, taps, w, init, packed, out));
        if !fused {
            crate::dsp::run_4ch(x, grid, taps, w, init, |at, acc| store(out, at, acc));
        }
    }
    #[cfg(not(arm_dsp))]
    let _ = packed;
    #[cfg(not(arm_dsp))]
    for l in 0..grid.lines {
        for p in 0..grid.count {
            let (first, at) = grid.step(l, p);
            let mut acc = init;
            for (r, ws) in w.chunks(quads_per_row.max(1)).take(rows).enumerate() {
                let at = first.wrapping_add(r.wrapping_mul(stride));
                if let Some(xs) = x.get(at..at.wrapping_add(quads_per_row)) {
                    quads(xs, ws, &mut acc);
                }
            }
            store(out, at, acc);
        }
    }
}

/// The groups of [`PIXEL_BLOCK`] neighbouring output pixels of `grid` (a step is a group) for a
/// layer with a single output channel, every tap inside the input, whole quads only: the hot loop
/// of the last layer. Positions are in quads of `x`: pixel `p` of a group reads `rows` tap rows
/// of `quads_per_row` quads from `p * QS` quads after the group's first, rows `stride` apart, all
/// with the weights `w` (`rows x quads_per_row`), and writes at the group's output index plus
/// `p * pixel_step`.
#[inline(never)]
fn pixel_block_run<const QS: usize>(
    x: &[[i8; 4]],
    (grid, pixel_step): (&Grid, usize),
    (stride, rows, quads_per_row): (usize, usize, usize),
    w: &[[u8; 8]],
    (init, requant, packed): (i32, &Requant, Option<&Packed<1>>),
    sink: &mut Sink,
) {
    #[cfg(arm_dsp)]
    let taps = (stride, rows, quads_per_row);
    // The last layer: requantization, table and store in the assembly loop when it can.
    #[cfg(arm_dsp)]
    if let Sink::Pixels(out, table) = sink
        && let Ok(table) = <&[u8; 256]>::try_from(&table[..])
        && let Some([packed]) = packed
        && crate::dsp::run_pixels_store::<QS, PIXEL_BLOCK>(
            x,
            (grid, pixel_step),
            taps,
            w,
            init,
            (packed, table),
            out,
        )
    {
        return;
    }
    #[cfg(not(arm_dsp))]
    let _ = packed;
    #[cfg_attr(arm_dsp, allow(unused_mut))] // moved into the DSP kernel there
    let mut finish = |at: usize, acc: [i32; PIXEL_BLOCK]| {
        for (p, &a) in acc.iter().enumerate() {
            sink.put(
                at.wrapping_add(p.wrapping_mul(pixel_step)),
                requant.apply(a),
            );
        }
    };
    #[cfg(arm_dsp)]
    crate::dsp::run_pixels::<QS>(x, grid, taps, w, init, finish);
    #[cfg(not(arm_dsp))]
    for l in 0..grid.lines {
        for g in 0..grid.count {
            let (first, at) = grid.step(l, g);
            let mut acc = [init; PIXEL_BLOCK];
            // The row's quads for the four pixels.
            let span = (PIXEL_BLOCK - 1) * QS + quads_per_row;
            for (r, w_row) in w.chunks(quads_per_row.max(1)).take(rows).enumerate() {
                let at = first.wrapping_add(r.wrapping_mul(stride));
                if let Some(xs) = x.get(at..at.wrapping_add(span)) {
                    pixel_quads::<QS>(xs, w_row, &mut acc);
                }
            }
            finish(at, acc);
        }
    }
}

/// The pairs of neighbouring output pixels of `grid` (a step is a pair), as
/// [`pixel_block_run`]'s groups but two pixels each, on the Armv7E-M DSP kernel for the last
/// layer; `false`, having done nothing, where that kernel does not apply (then the caller takes
/// the pixels one at a time).
fn pixel_pair_run<const QS: usize>(
    x: &[[i8; 4]],
    (grid, pixel_step): (&Grid, usize),
    taps: (usize, usize, usize),
    w: &[[u8; 8]],
    (init, requant, packed): (i32, &Requant, Option<&Packed<1>>),
    sink: &mut Sink,
) -> bool {
    #[cfg(arm_dsp)]
    if let Sink::Pixels(out, table) = sink
        && let Ok(table) = <&[u8; 256]>::try_from(&table[..])
        && let Some([packed]) = packed
    {
        return crate::dsp::run_pixels_store::<QS, 2>(
            x,
            (grid, pixel_step),
            taps,
            w,
            init,
            (packed, table),
            out,
        );
    }
    let _ = (x, grid, pixel_step, taps, w, init, requant, packed, sink);
    false
}

/// The output pixels of one phase for the block of `N` channels starting at `o`, whose folded
/// weights are `folded`. Along x every tap lies inside a stored row (the input's padding columns
/// hold its zero point), so a row of outputs is one run of the row kernel. Tap rows above or below
/// the input are skipped and their zero-point contribution added from per-row weight sums. The
/// outputs go to `sink`, stored with `out_padding` columns on each side of every row.
fn phase_block<const N: usize>(
    layer: &Layer,
    input: &Input,
    (folded, layout): (&[u8], &FoldLayout),
    (ay, ax): (&AxisPhase, &AxisPhase),
    (o, constants): (usize, &BlockConstants<N>),
    (sink, out_padding): (&mut Sink, usize),
) {
    let (h_out, w_out, c_out) = (
        layer.output.h as usize,
        layer.output.w as usize,
        layer.output.c as usize,
    );
    let (up, sy, sx, c) = (ay.up, ay.span.min(MAX_SPAN), ax.span, input.c);
    let mut weight_rows = [WeightRow::<N> {
        quads: &[],
        tail: &[],
    }; MAX_SPAN];
    for (dy, row) in weight_rows.iter_mut().enumerate().take(sy) {
        *row = WeightRow::new(folded, layout, dy);
    }
    let (bias, requant) = (constants.bias, &constants.requant);
    let (rows_out, columns) = (
        h_out.saturating_sub(ay.phase).div_ceil(up),
        w_out.saturating_sub(ax.phase).div_ceil(up),
    );
    // Stored column of output column 0's first tap, and bytes from one stored row to the next.
    let stored_w = input.w + 2 * input.padding;
    let stride = stored_w * c;
    let first = usize::try_from(ax.base + input.padding as isize);
    let (Ok(first), Some(last)) = (first, columns.checked_sub(1)) else {
        return; // no output, or taps left of the padding (`input_padding` rules that out)
    };
    if first + last + sx > stored_w {
        return; // taps right of the padding: ruled out the same way
    }
    // What each tap row adds when it lies above or below the input (it reads the zero point);
    // `None` when every output row's taps lie inside the input.
    let (top, bottom) = (
        ay.start(0),
        ay.start(rows_out.saturating_sub(1)) + sy as isize,
    );
    let padding_rows = (top < 0 || bottom > input.h as isize).then(|| {
        let mut padding_rows = [[0i32; N]; MAX_SPAN];
        for (row, sums) in weight_rows.iter().zip(&mut padding_rows).take(sy) {
            for (v, sum) in sums.iter_mut().zip(row.sums()) {
                *v = input.zero_point.wrapping_mul(sum);
            }
        }
        padding_rows
    });
    let out_w = w_out + 2 * out_padding;
    // The tap rows of output row `k` of the phase that lie inside the input.
    let tap_rows = |k: usize| {
        let row0 = ay.start(k);
        let lo = (-row0).clamp(0, sy as isize);
        lo as usize..(input.h as isize - row0).clamp(lo, sy as isize) as usize
    };
    let mut k = 0;
    while k < rows_out {
        // This output row and the following ones that read the same tap rows (all of them, in
        // the interior) share their start and one kernel call.
        let rows = tap_rows(k);
        let lines = if rows == (0..sy) {
            // Every tap row inside the input: so for each output row up to the last whose
            // taps end at the input's last row (`start(k) + sy <= h`, `start(k) = k + base`).
            let last = input.h as isize - sy as isize - ay.base;
            (last + 1 - k as isize).clamp(1, (rows_out - k) as isize) as usize
        } else {
            (k..rows_out).take_while(|&k| tap_rows(k) == rows).count()
        };
        // The bias plus what the rows outside the input contribute (none in the interior).
        let mut init = bias;
        if rows != (0..sy)
            && let Some(padding_rows) = &padding_rows
        {
            for (dy, sums) in padding_rows.iter().enumerate().take(sy) {
                if !rows.contains(&dy) {
                    for (v, &p) in init.iter_mut().zip(sums) {
                        *v = v.wrapping_add(p);
                    }
                }
            }
        }
        // Byte of output column 0's first tap in the first row inside the input, and where the
        // outputs go: `out_step` from column to column, `out_line` from row to row.
        let y = (ay.start(k) + rows.start as isize).max(0) as usize;
        let x_at = y * stride + first * c;
        let oy = ay.phase + k * up;
        let out_at = (oy * out_w + out_padding + ax.phase) * c_out + o;
        let (out_step, out_line) = (up * c_out, up * out_w * c_out);
        // The weights of the rows inside the input (whole quads: rows follow one another).
        let bytes = 2 * layout.row_len;
        let w = folded
            .get(rows.start * bytes..rows.end * bytes)
            .unwrap_or(&[]);
        let taps = (stride / 4, rows.len(), layout.run / 4);
        let mut done = 0;
        if N == CHANNEL_BLOCK
            && c.is_multiple_of(4)
            && let Sink::Activations(out) = sink
            && let Ok(init) = <[i32; CHANNEL_BLOCK]>::try_from(&init[..])
            && let Ok(block) = <&[Requant; CHANNEL_BLOCK]>::try_from(&requant[..])
        {
            // Whole quads per tap: input positions in quads.
            let grid = Grid {
                count: columns,
                lines,
                x: (x_at / 4, c / 4, stride / 4),
                out: (out_at, out_step, out_line),
            };
            let w = w.as_chunks::<8>().0.as_chunks::<CHANNEL_BLOCK>().0;
            channel_block_run(
                input.values.as_chunks::<4>().0,
                &grid,
                taps,
                w,
                init,
                (block, constants.packed()),
                out,
            );
            done = columns;
        } else if N == 1 && matches!(c, 4 | 8 | 16) && columns >= PIXEL_BLOCK {
            // A single output channel: PIXEL_BLOCK neighbouring pixels at once.
            let groups = columns / PIXEL_BLOCK;
            let grid = Grid {
                count: groups,
                lines,
                x: (x_at / 4, PIXEL_BLOCK * c / 4, stride / 4),
                out: (out_at, PIXEL_BLOCK * out_step, out_line),
            };
            let (x, w) = (input.values.as_chunks::<4>().0, w.as_chunks::<8>().0);
            let (grid, finish) = (
                (&grid, out_step),
                (init[0], &requant[0], constants.packed()),
            );
            match c {
                4 => pixel_block_run::<1>(x, grid, taps, w, finish, sink),
                8 => pixel_block_run::<2>(x, grid, taps, w, finish, sink),
                _ => pixel_block_run::<4>(x, grid, taps, w, finish, sink),
            }
            done = groups * PIXEL_BLOCK;
            // A row's last two pixels, when the width leaves them (the MNIST decoders' 14
            // columns per phase), as one pair per row: the rows' pairs as the steps of one
            // line, so that a single kernel call walks down them.
            if columns - done >= 2 {
                let pairs = Grid {
                    count: lines,
                    lines: 1,
                    x: (x_at / 4 + done * c / 4, stride / 4, 0),
                    out: (out_at + done * out_step, out_line, 0),
                };
                let (grid, finish) = (
                    (&pairs, out_step),
                    (init[0], &requant[0], constants.packed()),
                );
                let paired = match c {
                    4 => pixel_pair_run::<1>(x, grid, taps, w, finish, sink),
                    8 => pixel_pair_run::<2>(x, grid, taps, w, finish, sink),
                    _ => pixel_pair_run::<4>(x, grid, taps, w, finish, sink),
                };
                if paired {
                    done += 2;
                }
            }
        }
        // The rest one pixel at a time.
        for line in 0..lines {
            for i in done..columns {
                let mut acc = init;
                for (r, dy) in rows.clone().enumerate() {
                    let at = x_at + (line + r) * stride + i * c;
                    if let (Some(xs), Some(w)) =
                        (input.values.get(at..at + layout.run), weight_rows.get(dy))
                    {
                        row_macs(xs, w, &mut acc);
                    }
                }
                let at = out_at + line * out_line + i * out_step;
                for (j, (&a, r)) in acc.iter().zip(requant).enumerate() {
                    sink.put(at + j, r.apply(a));
                }
            }
        }
        k += lines;
    }
}

/// Convolution of the (virtually) upsampled and padded input, channels-last in and out, with
/// the folded weights the q8 blob stores (see [`crate::fold`]): for the MNIST decoders' `u = 2,
/// k = 3` layers, 4 multiplications per input channel instead of 9. `values` holds the input with
/// the layer's padding columns ([`Layer::input_padding`]); the outputs go to `sink` with
/// `out_padding` columns on each side of every row.
fn conv(
    layer: &Layer,
    (kernel, padding, upsample): (u8, u8, u8),
    values: &[i8],
    (sink, out_padding): (&mut Sink, usize),
) {
    let c_in = layer.input.c as usize;
    let input = Input {
        values,
        c: c_in,
        h: layer.input.h as usize,
        w: layer.input.w as usize,
        padding: layer.input_padding(),
        zero_point: layer.input_zero_point as i32,
    };
    let (folded, c_out) = (layer.folded(), layer.output.c as usize);
    // The weights are stored phase by phase, each phase's blocks one after the other (see
    // `crate::fold`); the blocks go outermost here so that their constants are prepared once.
    for (o, n) in blocks(c_out) {
        let conv = (kernel, padding, upsample);
        if n == CHANNEL_BLOCK {
            let block = (o, &BlockConstants::<CHANNEL_BLOCK>::new(layer, o));
            conv_phases(layer, &input, conv, folded, block, sink, out_padding);
        } else {
            let block = (o, &BlockConstants::<1>::new(layer, o));
            conv_phases(layer, &input, conv, folded, block, sink, out_padding);
        }
    }
}

/// The phases of [`conv`] for the block of `N` channels from `o`: each phase's weights found
/// in `folded` after the phases before it and the blocks before `o` in this one.
#[allow(clippy::too_many_arguments)]
fn conv_phases<const N: usize>(
    layer: &Layer,
    input: &Input,
    (kernel, padding, upsample): (u8, u8, u8),
    folded: &[u8],
    (o, constants): (usize, &BlockConstants<N>),
    sink: &mut Sink,
    out_padding: usize,
) {
    let (c_in, c_out) = (input.c, layer.output.c as usize);
    let mut phase_at = 0;
    for py in 0..upsample as usize {
        let ay = AxisPhase::new(py, kernel, padding, upsample);
        for px in 0..upsample as usize {
            let ax = AxisPhase::new(px, kernel, padding, upsample);
            let spans = (ay.span, ax.span);
            let at = phase_at + 2 * blocks_len(o, c_out, spans, c_in);
            phase_at += 2 * blocks_len(c_out, c_out, spans, c_in);
            let layout = FoldLayout::new(N, spans, c_in);
            // Never `None`: parse checked the section's length against the same layouts.
            let Some(weights) = folded.get(at..at + 2 * layout.len()) else {
                return;
            };
            let out = (&mut *sink, out_padding);
            phase_block::<N>(
                layer,
                input,
                (weights, &layout),
                (&ay, &ax),
                (o, constants),
                out,
            );
        }
    }
}

/// Writes `zero_point` into the `padding` columns on each side of every row of activations
/// stored with `shape` (see [`Shape::stored_len`]), where a conv's taps read them.
fn fill_padding(stored: &mut [i8], shape: Shape, padding: usize, zero_point: i8) {
    if padding == 0 {
        return;
    }
    let (w, c) = (shape.w as usize, shape.c as usize);
    for row in stored.chunks_exact_mut((w + 2 * padding) * c) {
        let (left, rest) = row.split_at_mut(padding * c);
        left.fill(zero_point);
        if let Some(right) = rest.get_mut(w * c..) {
            right.fill(zero_point);
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
        needed: u32::try_from(model.working_bytes()).unwrap_or(u32::MAX),
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
        let next = model.layer(i + 1);
        // Activations as stored: a conv's input with its padding columns (see `Layer::input_padding`).
        let n_in = layer.input.stored_len(layer.input_padding());
        let out_padding = next.map_or(0, |l| l.input_padding());
        // `ok_or` cannot fail: `working_bytes` was checked above.
        let (input, mut sink) = match next {
            None => {
                let input = if input_at_start {
                    arena.get(..n_in)
                } else {
                    arena.len().checked_sub(n_in).and_then(|at| arena.get(at..))
                };
                let input = input.ok_or(too_small)?;
                (input, Sink::Pixels(&mut *out, model.output_table()))
            }
            Some(next) => {
                let n_out = next.input.stored_len(out_padding);
                let (input, output) = split(arena, n_in, n_out, input_at_start).ok_or(too_small)?;
                fill_padding(output, next.input, out_padding, next.input_zero_point);
                (input, Sink::Activations(output))
            }
        };
        match layer.kind {
            LayerKind::Dense => {
                // Conv layers keep activations channels-last; a dense neighbour maps its indices.
                let before = i.checked_sub(1).and_then(|p| model.layer(p));
                let layouts = (
                    before
                        .filter(|l| l.kind != LayerKind::Dense)
                        .map(|l| l.output),
                    next.filter(|l| l.kind != LayerKind::Dense)
                        .map(|l| (l.input, out_padding)),
                );
                dense(&layer, input, layouts, &mut sink)
            }
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => conv(
                &layer,
                (kernel, padding, upsample),
                input,
                (&mut sink, out_padding),
            ),
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
                let (_, m, s) = l.channel(o);
                let v = ((acc as i64 * m as i64) as f64 / 2f64.powi(31 - s) + 0.5).floor() as i32;
                (v as i64 + zp as i64).clamp(if l.relu { zp } else { -128 } as i64, 127) as i32
            };
            let y: Vec<i32> = match l.kind {
                LayerKind::Dense => (0..l.output.c as usize)
                    .map(|o| {
                        let row = &w[o * x.len()..(o + 1) * x.len()];
                        // Wrapping, as the decoder's int32 accumulators (Q8.md).
                        let acc = row
                            .iter()
                            .zip(&x)
                            .fold(l.channel(o).0, |acc, (a, b)| acc.wrapping_add(a * b));
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
                                let mut acc = l.channel(o).0;
                                for ci in 0..c {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            acc = acc.wrapping_add(
                                                w[((o * c + ci) * k + ky) * k + kx]
                                                    * padded[(ci * hp + oy + ky) * wp + ox + kx],
                                            );
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
        // The 1x1 conv holds 1536 + 2560 bytes at once (its output stored with a column of
        // padding on each side, 32 x 8 x 10); the last layer's input lies at the end.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(1536, 1, 1), true),
            (conv(1, 0, 1), shape(24, 8, 8), shape(32, 8, 8), true),
            (conv(3, 1, 2), shape(32, 8, 8), shape(4, 16, 16), true),
            (conv(3, 1, 1), shape(4, 16, 16), shape(1, 16, 16), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(model.working_bytes(), SCRATCH_BYTES);
        assert!(
            check_against_reference(&model) > 20,
            "degenerate test model"
        );
    }

    #[test]
    fn every_fold_shape_matches_the_reference() {
        // Upsampling by 2 and 3, even and odd kernels, paddings 0..k-1: interior and border
        // pixels, folded spans of 1 to 4, channel blocks of 4 and single channels, channel
        // counts with and without whole quads.
        for (k, p, u) in [
            (3, 0, 2),
            (3, 1, 2),
            (3, 2, 2),
            (2, 1, 2),
            (5, 2, 3),
            (4, 0, 3),
            (1, 0, 2),
            (3, 1, 1),
            (5, 4, 1),
        ] {
            for c in [3u16, 4, 8] {
                let (h, w) = (5u16, 4u16);
                let side = |n: u16| n * u as u16 + 2 * p as u16 + 1 - k as u16;
                let blob = chain(&[
                    (
                        LayerKind::Dense,
                        shape(2, 1, 1),
                        shape(c * h * w, 1, 1),
                        true,
                    ),
                    (
                        conv(k, p, u),
                        shape(c, h, w),
                        shape(5, side(h), side(w)),
                        true,
                    ),
                    (
                        conv(3, 1, 1),
                        shape(5, side(h), side(w)),
                        shape(1, side(h), side(w)),
                        false,
                    ),
                ]);
                let model = Model::parse(&blob).expect("parses");
                assert!(
                    check_against_reference(&model) > 5,
                    "degenerate test model for k={k} p={p} u={u} c={c}"
                );
            }
        }
    }

    #[test]
    fn the_mnist_decoder_shape_matches_the_reference_with_fewer_macs() {
        // The conv VAE decoder's shapes: every kernel path (channel blocks, pixel blocks and
        // the single pixels after them, skipped padding rows, stored padding columns).
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(128, 1, 1), true),
            (conv(3, 1, 1), shape(8, 4, 4), shape(8, 4, 4), true),
            (conv(3, 1, 2), shape(8, 4, 4), shape(8, 8, 8), true),
            (conv(3, 0, 2), shape(8, 8, 8), shape(16, 14, 14), true),
            (conv(3, 1, 2), shape(16, 14, 14), shape(1, 28, 28), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert!(check_against_reference(&model) > 8, "degenerate test model");
        // The third conv: 8x8x8 in (512 bytes, upsampled on the fly), 16x14x14 out stored as
        // 16x14x16 for the last conv's padding (3584 bytes).
        assert_eq!(model.working_bytes(), 512 + 3584);
        assert_eq!(model.macs(), 385_024);
        // 256 + 9,216 + 16,384 + 100,352 + 50,176: 2x2 instead of 3x3 taps after upsampling.
        assert_eq!(model.folded_macs(), 176_384);
    }

    #[test]
    fn a_dense_layer_between_convs_matches_the_reference() {
        // Convs store activations channels-last; a dense layer after a conv reads them, and one
        // before a conv writes them, in that order.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(48, 1, 1), true),
            (conv(3, 1, 2), shape(3, 4, 4), shape(5, 8, 8), true),
            (LayerKind::Dense, shape(320, 1, 1), shape(60, 1, 1), true),
            (conv(3, 1, 1), shape(6, 2, 5), shape(1, 2, 5), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert!(check_against_reference(&model) > 5, "degenerate test model");
    }

    #[test]
    fn only_the_last_layers_input_counts() {
        // The last layer reads 4080 bytes (34 x 10 x 12 with its padding) and writes its 100
        // pixels into the caller's buffer, not scratch.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(3400, 1, 1), true),
            (conv(3, 1, 1), shape(34, 10, 10), shape(1, 10, 10), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(model.working_bytes(), 2 + 4080);
        assert!(
            check_against_reference(&model) > 10,
            "degenerate test model"
        );
    }

    #[test]
    fn a_model_that_needs_more_than_the_arena_is_an_error() {
        // The middle conv holds 2100 + 2520 bytes at once (its output stored as 21 x 10 x 12
        // for the last conv's padding), more than the arena.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(2100, 1, 1), true),
            (conv(1, 0, 1), shape(21, 10, 10), shape(21, 10, 10), true),
            (conv(3, 1, 1), shape(21, 10, 10), shape(1, 10, 10), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        assert_eq!(model.working_bytes(), 4620);
        let mut scratch = Scratch::new();
        let mut out = [7u8; 100];
        assert_eq!(
            decode(&model, &[1, 2], &mut scratch, &mut out),
            Err(Error::ScratchTooSmall { needed: 4620 })
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
    fn extreme_biases_do_not_panic() {
        // A crafted blob (valid CRC) whose biases sit at the ends of i32: accumulators wrap and
        // requantization saturates, in debug builds too, exactly as the reference does.
        let blob = chain(&[
            (LayerKind::Dense, shape(2, 1, 1), shape(48, 1, 1), true),
            (conv(3, 1, 2), shape(3, 4, 4), shape(5, 8, 8), true),
            (conv(3, 1, 1), shape(5, 8, 8), shape(1, 8, 8), false),
        ]);
        let model = Model::parse(&blob).expect("parses");
        let mut crafted = blob.clone();
        for i in 0..model.layer_count() {
            let record = crate::q8::HEADER_LEN + crate::q8::LAYER_RECORD_LEN * i;
            let params = u32::from_le_bytes(
                crafted[record + 24..record + 28]
                    .try_into()
                    .expect("4 bytes"),
            ) as usize;
            let channels = model.layer(i).expect("layer").output.c as usize;
            for o in 0..channels {
                let bias = if o % 2 == 0 { i32::MAX } else { i32::MIN };
                crafted[params + 12 * o..][..4].copy_from_slice(&bias.to_le_bytes());
            }
        }
        let crafted = crate::q8::tests::resealed(crafted);
        let model = Model::parse(&crafted).expect("still a valid blob");
        let mut out = [0u8; 64];
        for latent in [[127i8, 127], [-127, -127], [0, 0]] {
            decode(&model, &latent, &mut Scratch::new(), &mut out).expect("decodes");
            assert_eq!(out.to_vec(), reference(&model, &latent), "{latent:?}");
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
    fn widening_mul_by_halves_is_the_64_bit_product() {
        let edges = [
            i32::MIN,
            i32::MIN + 1,
            -65_537,
            -65_536,
            -65_535,
            -1,
            0,
            1,
            65_535,
        ];
        let more = [
            65_536,
            1 << 30,
            i32::MAX,
            12_345_678,
            -987_654_321,
            0x7fff_0001,
        ];
        for &a in edges.iter().chain(&more) {
            for &b in edges.iter().chain(&more) {
                assert_eq!(
                    widening_mul_by_halves(a, b),
                    a as i64 * b as i64,
                    "{a} x {b}"
                );
            }
        }
    }

    #[test]
    fn rounding_constants_are_their_64_bit_formula() {
        for n in 1..=62u32 {
            for zp in [-128, -60, -1, 0, 1, 77, 127] {
                let half = 1i64 << (n - 1);
                let expected = if Requant::FOLDED.contains(&n) {
                    half + ((zp as i64) << n)
                } else {
                    half
                };
                assert_eq!(Requant::round(n, zp), expected, "n {n}, zero point {zp}");
            }
        }
    }

    #[test]
    fn requantize_rounds_half_up() {
        // factor 0.5: multiplier 2^30, shift 0; output zero point 0, no ReLU.
        let blob = chain(&[(LayerKind::Dense, shape(2, 1, 1), shape(1, 1, 1), false)]);
        let model = Model::parse(&blob).expect("parses");
        let layer = model.layer(0).expect("layer");
        let (_, multiplier, shift) = layer.channel(0);
        let mut r = Requant::new(&layer, (multiplier, shift));
        (r.multiplier, r.round, r.n, r.zero_point) = (1 << 30, 1 << 30, 31, 0);
        r.low = -128;
        assert_eq!(r.apply(3), 2);
        assert_eq!(r.apply(-3), -1);
        assert_eq!(r.apply(4), 2);
        assert_eq!(r.apply(1000), 127);
        // factor 2^-10 (n = 40 >= 32 takes the high-word shift): 3.5 rounds up, -3.5 to -3.
        (r.round, r.n) = (1 << 39, 40);
        assert_eq!(r.apply(3072), 3);
        assert_eq!(r.apply(3584), 4);
        assert_eq!(r.apply(-3584), -3);
        assert_eq!(r.apply(-3585), -4);
        // The slow path (n = 21, outside FOLDED): a result of 2^31 plus a zero point of 1
        // saturates to 127, and -2^31 - 1 to -128 (they had wrapped to the other end).
        (r.round, r.n) = (Requant::round(21, 1), 21);
        r.zero_point = 1;
        assert_eq!(r.apply(1 << 22), 127);
        (r.round, r.zero_point) = (Requant::round(21, -1), -1);
        assert_eq!(r.apply(-(1 << 22)), -128);
    }
}
