//! Folded convolution weights: nearest upsampling folded into the convolution that follows it.
//!
//! A conv layer with upsampling factor `u` reads its input repeated `u x u` times. Output
//! position `u * i + p` (phase `p`) reads upsampled positions `u * i + p - pad + t` for the taps
//! `t < k`, that is stored positions `i + floor((p - pad + t) / u)`: at most `span` distinct
//! ones, starting at `i + base`. Taps that land on the same stored position can share one
//! multiplication once their weights are summed: with `u = 2, k = 3` this turns 3 taps into 2
//! per axis, 9 multiplications per input channel into 4. The sums are exact (integers), so the
//! folded convolution gives bit-identical results.
//!
//! The q8 writer stores the folded weights of every conv layer next to its int8 weights (in
//! flash on the target), in the order the kernel reads them: for each phase `(py, px)` in
//! row-major order, for each block of output channels ([`blocks`]), one [`FoldLayout`].

/// Output channels a kernel computes at once: each input value loaded feeds this many
/// accumulators. Channels are taken in blocks of this size while enough remain, then one by one.
pub const CHANNEL_BLOCK: usize = 4;

/// Most distinct stored positions one output reads along an axis (kernels have at most 7 taps).
pub const MAX_SPAN: usize = 7;

/// How one axis of a conv layer reads its stored input for the outputs of one phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AxisPhase {
    /// Output positions of this phase are `phase, phase + up, ...`.
    pub phase: usize,
    /// Upsampling factor.
    pub up: usize,
    /// Offset of the first stored position read by output index `i`: `i + base`.
    pub base: isize,
    /// Number of distinct stored positions one output reads (`<= k`).
    pub span: usize,
    /// `phase - pad`: tap `t` reads stored position `i + floor((shift + t) / up)`.
    #[cfg_attr(not(any(test, feature = "std")), allow(dead_code))]
    shift: isize,
}

impl AxisPhase {
    pub(crate) fn new(phase: usize, kernel: u8, padding: u8, upsample: u8) -> Self {
        let (p, pad, up) = (phase as isize, padding as isize, upsample.max(1) as isize);
        let base = (p - pad).div_euclid(up);
        let last = (p - pad + kernel as isize - 1).div_euclid(up);
        AxisPhase {
            phase,
            up: up as usize,
            base,
            span: (last - base + 1) as usize,
            shift: p - pad,
        }
    }

    /// Which of the `span` stored positions tap `t` reads.
    #[cfg_attr(not(any(test, feature = "std")), allow(dead_code))]
    pub(crate) fn fold(&self, t: usize) -> usize {
        ((self.shift + t as isize).div_euclid(self.up as isize) - self.base) as usize
    }

    /// First stored position read by output index `i` of this phase (may be negative: padding).
    pub(crate) fn start(&self, i: usize) -> isize {
        i as isize + self.base
    }
}

/// The blocks of output channels `(first, count)` a layer with `c_out` channels is computed in.
pub(crate) fn blocks(c_out: usize) -> impl Iterator<Item = (usize, usize)> {
    let full = c_out / CHANNEL_BLOCK * CHANNEL_BLOCK;
    (0..full)
        .step_by(CHANNEL_BLOCK)
        .map(|o| (o, CHANNEL_BLOCK))
        .chain((full..c_out).map(|o| (o, 1)))
}

/// The layout of the folded weights of one phase and one block of `n` channels (i16, LE).
///
/// Channels-last activations make each row `dy` of a pixel's folded taps one contiguous run of
/// `run = sx * c_in` input values (all `dx`, then all channels). The weights of row `dy` follow
/// that run in quads of 4 positions: quad `q` holds, for each channel `j < n`, the weights of run
/// positions `4q, 4q+2, 4q+1, 4q+3` in that order (the order in which the DSP's `sxtb16` splits
/// four input bytes: even lanes, then odd lanes); the last `run % 4` positions follow as
/// `[position][j]`. Rows are padded to an even number of weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldLayout {
    /// Channels in the block.
    #[cfg_attr(not(any(test, feature = "std")), allow(dead_code))]
    pub n: usize,
    /// Folded rows.
    pub rows: usize,
    /// Input values per row (`sx * c_in`).
    pub run: usize,
    /// Weights per row, padding included.
    pub row_len: usize,
}

impl FoldLayout {
    pub(crate) fn new(n: usize, (sy, sx): (usize, usize), c_in: usize) -> Self {
        let run = sx * c_in;
        FoldLayout {
            n,
            rows: sy,
            run,
            row_len: (run * n).next_multiple_of(2),
        }
    }

    /// Number of i16 weights.
    pub(crate) fn len(&self) -> usize {
        self.rows * self.row_len
    }

    /// Position of the weight of run position `r` in row `dy` for channel `j` (the q8 writer's;
    /// the decoder walks rows in this order).
    #[cfg_attr(not(any(test, feature = "std")), allow(dead_code))]
    pub(crate) fn index(&self, dy: usize, r: usize, j: usize) -> usize {
        let quads = self.run / 4 * 4;
        let within = if r < quads {
            const LANE: [usize; 4] = [0, 2, 1, 3];
            (r / 4 * self.n + j) * 4 + LANE[r % 4]
        } else {
            quads * self.n + (r - quads) * self.n + j
        };
        dy * self.row_len + within
    }
}

/// Columns of padding a conv layer's stored input needs on each side of every row so that every
/// output's taps lie inside the stored row: the farthest any phase's taps reach before the first
/// or past the last of the `w_in` stored columns, for `w_out` outputs. The decoder stores the
/// input's zero point there (see `decoder`), so no output needs a border path along x.
pub(crate) fn input_padding(
    (kernel, padding, upsample): (u8, u8, u8),
    w_in: usize,
    w_out: usize,
) -> usize {
    let mut pad = 0;
    for p in 0..upsample.max(1) as usize {
        let axis = AxisPhase::new(p, kernel, padding, upsample);
        let outputs = w_out.saturating_sub(p).div_ceil(axis.up);
        if let Some(last) = outputs.checked_sub(1) {
            let before = -axis.start(0);
            let after = axis.start(last) + axis.span as isize - w_in as isize;
            pad = pad.max(before.max(after).max(0) as usize);
        }
    }
    pad
}

/// Folded i16 weights, in the writer's order, of the blocks of one phase (`spans`) that come
/// before the block starting at channel `o` (`o` a first channel of [`blocks`], or `c_out`: the
/// whole phase). In closed form, as the decoder calls it per phase and block: whole blocks
/// first, then single channels, as [`blocks`] yields them.
pub(crate) fn blocks_len(o: usize, c_out: usize, spans: (usize, usize), c_in: usize) -> usize {
    let full = c_out / CHANNEL_BLOCK * CHANNEL_BLOCK;
    let block = FoldLayout::new(CHANNEL_BLOCK, spans, c_in).len();
    if o < full {
        o / CHANNEL_BLOCK * block
    } else {
        full / CHANNEL_BLOCK * block + (o - full) * FoldLayout::new(1, spans, c_in).len()
    }
}

/// Number of folded i16 weights of a conv layer.
pub(crate) fn folded_len(
    (kernel, padding, upsample): (u8, u8, u8),
    c_in: usize,
    c_out: usize,
) -> usize {
    let mut len = 0;
    for py in 0..upsample as usize {
        let ay = AxisPhase::new(py, kernel, padding, upsample);
        for px in 0..upsample as usize {
            let ax = AxisPhase::new(px, kernel, padding, upsample);
            len += blocks_len(c_out, c_out, (ay.span, ax.span), c_in);
        }
    }
    len
}

/// Appends the folded weights of a conv layer (int8 `weights`, `[c_out][c_in][k][k]`) to `out`,
/// little-endian, in the order described in the module docs.
#[cfg(any(test, feature = "std"))]
pub(crate) fn append_folded(
    (kernel, padding, upsample): (u8, u8, u8),
    c_in: usize,
    c_out: usize,
    weights: &[i8],
    out: &mut Vec<u8>,
) {
    let k = kernel as usize;
    for py in 0..upsample as usize {
        let ay = AxisPhase::new(py, kernel, padding, upsample);
        for px in 0..upsample as usize {
            let ax = AxisPhase::new(px, kernel, padding, upsample);
            for (o, n) in blocks(c_out) {
                let layout = FoldLayout::new(n, (ay.span, ax.span), c_in);
                let mut fold = vec![0i16; layout.len()];
                for j in 0..n {
                    for c in 0..c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let w = weights[(((o + j) * c_in + c) * k + ky) * k + kx];
                                let r = ax.fold(kx) * c_in + c;
                                fold[layout.index(ay.fold(ky), r, j)] += w as i16;
                            }
                        }
                    }
                }
                out.extend(fold.iter().flat_map(|w| w.to_le_bytes()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form against the writer's walk: the layouts of the blocks before `o`, summed.
    #[test]
    fn blocks_len_is_the_writers_offset() {
        for c_out in 0..=13 {
            let starts = blocks(c_out).map(|(first, _)| first).chain([c_out]);
            for o in starts {
                for (spans, c_in) in [((2, 2), 8), ((3, 3), 3), ((1, 2), 5)] {
                    let walked: usize = blocks(c_out)
                        .take_while(|&(first, _)| first < o)
                        .map(|(_, n)| FoldLayout::new(n, spans, c_in).len())
                        .sum();
                    assert_eq!(
                        blocks_len(o, c_out, spans, c_in),
                        walked,
                        "o {o}, c_out {c_out}, spans {spans:?}, c_in {c_in}"
                    );
                }
            }
        }
    }
}
