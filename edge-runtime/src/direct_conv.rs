//! A stride-1 float convolution computed along its output rows with AVX2 and FMA (x86-64) or
//! NEON (aarch64, a 64-bit Raspberry Pi): the direct convolution [`crate::convolution::optimize`]
//! gives the rows of 32 points or more on those CPUs.
//!
//! tract 0.23 has a direct kernel of its own (`DirectSpatialConv`). It tests the input stride
//! inside its loop over taps, reads each tap's four weights from four places behind bounds
//! checks, computes a whole plane for four output channels before the next four (so a wide
//! frame's input comes back from L2 or further for each four), and computes the borders of a
//! padded input one point and one tap at a time. [`DirectConv`] computes an output row for all
//! its channels before the next row, from weights packed tap by tap at load time, and applies
//! the ReLU that follows as it stores. On x86-64 it computes the borders with masked loads
//! (lanes outside the input read as zero, so padding costs no copy); NEON has no masked loads,
//! so on aarch64 the border points are computed one tap at a time and the crate pads ahead of
//! the convolution instead ([`crate::convolution`]). On the camera denoiser that took 66% of
//! the x86-64 instructions per 28x28 frame and 36% per 320x240 frame, made tract faster than
//! ONNX Runtime at every frame size, and took 39-45% of the aarch64 instructions per frame
//! (BENCHMARKS.md, "DirectConv").
//!
//! The weights are packed in (kernel row, input channel, kernel column) order, so the taps
//! whose kernel rows fall inside the input for an output row are one contiguous range of them.
//!
//! The crate's one module of SIMD intrinsics: each `unsafe` block says why its loads and
//! stores stay inside their slices.
#![allow(unsafe_code)]

#[cfg(target_arch = "aarch64")]
use std::arch::aarch64::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::sync::Arc;

use tract_onnx::tract_hir::internal::*;

/// `f32` lanes of a vector register: AVX, NEON.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 8;
#[cfg(target_arch = "aarch64")]
const LANES: usize = 4;

/// Vectors of points per block of the kernel for four output channels: enough accumulators to
/// cover the FMA latency times the FMA units' throughput (x86-64: 4 cycles x 2, 8 accumulators;
/// a Pi 4's Cortex-A72: 7 x 2, 16 of its 32 registers).
#[cfg(target_arch = "x86_64")]
const VECTORS_4CH: usize = 2;
#[cfg(target_arch = "aarch64")]
const VECTORS_4CH: usize = 4;

/// Vectors of points per block of the kernel for one output channel.
#[cfg(target_arch = "x86_64")]
const VECTORS_1CH: usize = 4;
#[cfg(target_arch = "aarch64")]
const VECTORS_1CH: usize = 8;

/// Output points per call of the border code: a masked vector (x86-64), one point (aarch64).
#[cfg(target_arch = "x86_64")]
const BORDER_STEP: usize = LANES;
#[cfg(target_arch = "aarch64")]
const BORDER_STEP: usize = 1;

/// The widest kernel row [`DirectConv`] takes (one load mask per kernel column).
pub(crate) const MAX_KERNEL_WIDTH: usize = 16;

/// Whether this CPU runs [`DirectConv`]: AVX2 and FMA on x86-64; any aarch64 (NEON is part of
/// its base instruction set).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(target_arch = "aarch64")]
    return true;
}

/// The shape of a [`DirectConv`]: one batch of NCHW images, stride 1.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels, rows, columns.
    pub input: [usize; 3],
    /// Output channels, rows, columns.
    pub output: [usize; 3],
    /// Kernel rows and columns.
    pub kernel: [usize; 2],
    /// Dilation along rows and columns.
    pub dilation: [usize; 2],
    /// Zero rows above and zero columns left of the input (those below and right follow from
    /// the output size).
    pub pad: [usize; 2],
}

/// A stride-1, group-1 float NCHW convolution with constant weights and bias, computed row by
/// row with AVX2 and FMA (module docs).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct DirectConv {
    geometry: Geometry,
    /// Per group of output channels (fours, then the remaining channels one by one), each tap's
    /// weights for the group's channels side by side, taps in (kernel row, input channel,
    /// kernel column) order.
    packed: Arc<Tensor>,
    /// One per output channel.
    bias: Arc<Tensor>,
    /// Each tap's offset from the input point under the output point, in packed order.
    offsets: Vec<isize>,
    /// Whether a ReLU follows (`max(0, y)`, fused into the stores; NaN stays NaN).
    relu: bool,
}

impl DirectConv {
    /// The convolution of `geometry` with `kernel` (`[O, I, KH, KW]`) and `bias` (one value per
    /// output channel, or one for all), followed by a ReLU if `relu`.
    pub(crate) fn new(
        geometry: Geometry,
        kernel: &Tensor,
        bias: &Tensor,
        relu: bool,
    ) -> TractResult<Self> {
        let [co, ci, kh, kw] = [
            geometry.output[0],
            geometry.input[0],
            geometry.kernel[0],
            geometry.kernel[1],
        ];
        ensure!(
            kernel.shape() == [co, ci, kh, kw],
            "kernel of shape {:?} for {geometry:?}",
            kernel.shape()
        );
        ensure!(
            (1..=MAX_KERNEL_WIDTH).contains(&kw) && kh >= 1,
            "kernel of {kh}x{kw} taps"
        );
        ensure!(
            geometry.dilation.iter().all(|&d| d >= 1),
            "dilation {:?}",
            geometry.dilation
        );
        let kernel = kernel.cast_to::<f32>()?;
        let weights = kernel.try_as_plain_ram()?;
        let weights = weights.as_slice::<f32>()?;
        let bias = bias.cast_to::<f32>()?;
        let bias = bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        let bias: Vec<f32> = match bias.len() {
            1 => vec![bias[0]; co],
            n if n == co => bias.to_vec(),
            n => bail!("{n} bias values for {co} output channels"),
        };
        let mut packed = Vec::with_capacity(weights.len());
        for (first, channels) in channel_groups(co) {
            for ky in 0..kh {
                for c in 0..ci {
                    for kx in 0..kw {
                        for o in first..first + channels {
                            packed.push(weights[((o * ci + c) * kh + ky) * kw + kx]);
                        }
                    }
                }
            }
        }
        let [hi, wi] = [geometry.input[1], geometry.input[2]];
        let [dh, dw] = geometry.dilation;
        let mut offsets = Vec::with_capacity(kh * ci * kw);
        for ky in 0..kh {
            for c in 0..ci {
                for kx in 0..kw {
                    offsets.push(((c * hi + ky * dh) * wi + kx * dw) as isize);
                }
            }
        }
        Ok(DirectConv {
            geometry,
            offsets,
            packed: Arc::new(tensor1(&packed)),
            bias: Arc::new(tensor1(&bias)),
            relu,
        })
    }

    fn output_shape(&self) -> [usize; 4] {
        let g = &self.geometry;
        [g.batch, g.output[0], g.output[1], g.output[2]]
    }

    /// # Safety
    /// The CPU runs [`DirectConv`] ([`available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn eval_f32(&self, input: &[f32], output: &mut [f32]) -> TractResult<()> {
        let g = &self.geometry;
        let [ci, hi, wi] = g.input;
        let [co, ho, wo] = g.output;
        let [kh, kw] = g.kernel;
        let [dh, dw] = g.dilation;
        let [pt, pl] = g.pad;
        ensure!(
            input.len() == g.batch * ci * hi * wi,
            "input of {} values",
            input.len()
        );
        ensure!(
            output.len() == g.batch * co * ho * wo,
            "output of {} values",
            output.len()
        );
        let packed = self.packed.try_as_plain_ram()?;
        let packed = packed.as_slice::<f32>()?;
        let bias = self.bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        ensure!(packed.len() == co * ci * kh * kw && bias.len() == co);
        let offsets = &self.offsets;
        ensure!(offsets.len() == kh * ci * kw);
        let taps_per_row = ci * kw;
        // Output columns whose taps all fall inside the input columns.
        let reach = (kw - 1) * dw;
        let (x_lo, x_hi) = (pl, (wi + pl).saturating_sub(reach).min(wo));
        let plane = ho * wo;
        for n in 0..g.batch {
            let image = &input[n * ci * hi * wi..][..ci * hi * wi];
            let out = &mut output[n * co * plane..][..co * plane];
            for y in 0..ho {
                // Kernel rows inside the input: `y - pt + ky * dh` in `0..hi`.
                let ky_lo = pt.saturating_sub(y).div_ceil(dh).min(kh);
                let ky_hi = (hi + pt).saturating_sub(y).div_ceil(dh).min(kh);
                let taps = if ky_lo < ky_hi {
                    ky_lo * taps_per_row..ky_hi * taps_per_row
                } else {
                    0..0
                };
                let row = Row {
                    image,
                    // Offset of input point (y - pt, x - pl) for output point (y, 0).
                    origin: (y as isize - pt as isize) * wi as isize - pl as isize,
                    offsets: &offsets[taps.clone()],
                    columns: [pl, wi, wo, kw, dw],
                    x_range: (x_lo, x_hi),
                    relu: self.relu,
                };
                for (first, channels) in channel_groups(co) {
                    let weights = &packed[first * ci * kh * kw..][..channels * ci * kh * kw];
                    let weights = &weights[taps.start * channels..taps.end * channels];
                    let out = &mut out[first * plane + y * wo..];
                    // SAFETY: this function's own condition.
                    unsafe {
                        match channels {
                            4 => row.compute::<4, VECTORS_4CH>(
                                weights,
                                bias[first..first + 4].try_into()?,
                                out,
                                plane,
                            )?,
                            _ => {
                                row.compute::<1, VECTORS_1CH>(weights, &[bias[first]], out, plane)?
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Output channels in groups: `(first, channels)`, fours and then ones.
fn channel_groups(co: usize) -> impl Iterator<Item = (usize, usize)> {
    let fours = co / 4;
    (0..fours)
        .map(|g| (4 * g, 4))
        .chain((4 * fours..co).map(|o| (o, 1)))
}

/// A vector register of [`LANES`] floats (AVX, NEON) and what [`Row::full`] does with it.
#[derive(Clone, Copy)]
struct F32s(Register);

#[cfg(target_arch = "x86_64")]
type Register = __m256;
#[cfg(target_arch = "aarch64")]
type Register = float32x4_t;

#[cfg(target_arch = "x86_64")]
impl F32s {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn splat(x: f32) -> Self {
        F32s(_mm256_set1_ps(x))
    }

    /// # Safety
    /// `p` is valid for reading `LANES` floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's.
        F32s(unsafe { _mm256_loadu_ps(p) })
    }

    /// # Safety
    /// `p` is valid for writing `LANES` floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's.
        unsafe { _mm256_storeu_ps(p, self.0) }
    }

    /// `self + v * *k`, fused.
    ///
    /// # Safety
    /// `k` is valid for reading a float.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul_add(self, v: Self, k: *const f32) -> Self {
        // SAFETY: the caller's.
        F32s(_mm256_fmadd_ps(
            v.0,
            _mm256_broadcast_ss(unsafe { &*k }),
            self.0,
        ))
    }

    /// `max(0, self)`; NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn relu(self) -> Self {
        F32s(_mm256_max_ps(_mm256_setzero_ps(), self.0))
    }
}

#[cfg(target_arch = "aarch64")]
impl F32s {
    #[inline]
    #[target_feature(enable = "neon")]
    fn splat(x: f32) -> Self {
        F32s(vdupq_n_f32(x))
    }

    /// # Safety
    /// `p` is valid for reading `LANES` floats.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's.
        F32s(unsafe { vld1q_f32(p) })
    }

    /// # Safety
    /// `p` is valid for writing `LANES` floats.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's.
        unsafe { vst1q_f32(p, self.0) }
    }

    /// `self + v * *k`, fused.
    ///
    /// # Safety
    /// `k` is valid for reading a float.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn mul_add(self, v: Self, k: *const f32) -> Self {
        // SAFETY: the caller's.
        F32s(vfmaq_n_f32(self.0, v.0, unsafe { *k }))
    }

    /// `max(0, self)` (`fmax`: NaN stays NaN).
    #[inline]
    #[target_feature(enable = "neon")]
    fn relu(self) -> Self {
        F32s(vmaxq_f32(vdupq_n_f32(0.0), self.0))
    }
}

/// One output row's view of one input image.
struct Row<'a> {
    image: &'a [f32],
    origin: isize,
    offsets: &'a [isize],
    /// Left padding, input width, output width, kernel width, column dilation.
    columns: [usize; 5],
    /// Output columns whose taps are all inside the input.
    x_range: (usize, usize),
    /// Whether to store `max(0, y)`.
    relu: bool,
}

impl Row<'_> {
    /// Output row `out[..wo]` and the same row of the next `C - 1` channels (`plane` apart):
    /// blocks of `V` vectors where every tap is inside the input, the border code elsewhere.
    ///
    /// # Safety
    /// The CPU runs [`DirectConv`] ([`available`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    unsafe fn compute<const C: usize, const V: usize>(
        &self,
        weights: &[f32],
        bias: &[f32; C],
        out: &mut [f32],
        plane: usize,
    ) -> TractResult<()> {
        let wo = self.columns[2];
        ensure!(weights.len() == self.offsets.len() * C);
        ensure!(
            out.len() >= (C - 1) * plane + wo,
            "output row out of bounds"
        );
        let block = V * LANES;
        let (x_lo, x_hi) = self.x_range;
        let mut x = 0;
        let interior = x_hi.saturating_sub(x_lo);
        // SAFETY (all kernels): the taps' offsets stay inside the image for every point the
        // full kernel computes (`x_range`), the border code loads only inside it, and all
        // write `out` below `(C - 1) * plane + wo`, checked above.
        unsafe {
            if interior >= block {
                while x < x_lo {
                    self.border::<C>(x, weights, bias, out, plane);
                    x += BORDER_STEP;
                }
                self.full::<C, V>(x_lo, interior / block, weights, bias, out, plane);
                if !interior.is_multiple_of(block) {
                    // The last block overlaps the one before: same points, same values.
                    self.full::<C, V>(x_hi - block, 1, weights, bias, out, plane);
                }
                x = x_hi;
            }
            while x < wo {
                self.border::<C>(x, weights, bias, out, plane);
                x += BORDER_STEP;
            }
        }
        Ok(())
    }

    /// `blocks` blocks of `V` vectors of output points from column `x`, every tap inside the
    /// input.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    #[cfg_attr(target_arch = "aarch64", target_feature(enable = "neon"))]
    unsafe fn full<const C: usize, const V: usize>(
        &self,
        x: usize,
        blocks: usize,
        weights: &[f32],
        bias: &[f32; C],
        out: &mut [f32],
        plane: usize,
    ) {
        let input = self.image.as_ptr();
        let out = out.as_mut_ptr();
        let w = weights.as_ptr();
        for b in 0..blocks {
            let x = x + b * V * LANES;
            let start = self.origin + x as isize;
            let mut acc = [[F32s::splat(0.0); V]; C];
            for (c, acc) in acc.iter_mut().enumerate() {
                *acc = [F32s::splat(bias[c]); V];
            }
            for (t, &offset) in self.offsets.iter().enumerate() {
                // SAFETY: the caller's (`compute`'s) bounds.
                unsafe {
                    let p = input.offset(start + offset);
                    let mut v = [F32s::splat(0.0); V];
                    for (i, v) in v.iter_mut().enumerate() {
                        *v = F32s::load(p.add(i * LANES));
                    }
                    for (c, acc) in acc.iter_mut().enumerate() {
                        let k = w.add(t * C + c);
                        for (acc, &v) in acc.iter_mut().zip(&v) {
                            *acc = acc.mul_add(v, k);
                        }
                    }
                }
            }
            for (c, acc) in acc.iter().enumerate() {
                for (i, &acc) in acc.iter().enumerate() {
                    let y = if self.relu { acc.relu() } else { acc };
                    // SAFETY: the caller's (`compute`'s) bounds.
                    unsafe { y.store(out.add(c * plane + x + i * LANES)) };
                }
            }
        }
    }

    /// The output points `x..x + 8` that are in the row, the taps' lanes outside the input
    /// masked off (they add nothing: zero padding).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn border<const C: usize>(
        &self,
        x: usize,
        weights: &[f32],
        bias: &[f32; C],
        out: &mut [f32],
        plane: usize,
    ) {
        let [pl, wi, wo, kw, dw] = self.columns;
        // Lane `l` of kernel column `kx` reads input column `x + l - pl + kx * dw`.
        let mut masks = [_mm256_setzero_si256(); MAX_KERNEL_WIDTH];
        for (kx, mask) in masks.iter_mut().enumerate().take(kw) {
            let mut lanes = [0i32; LANES];
            for (l, lane) in lanes.iter_mut().enumerate() {
                let column = (x + l + kx * dw).checked_sub(pl);
                *lane = if column.is_some_and(|c| c < wi) {
                    -1
                } else {
                    0
                };
            }
            // SAFETY: reads the eight lanes just written.
            *mask = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
        }
        let mut stored = [0i32; LANES];
        for (l, lane) in stored.iter_mut().enumerate() {
            *lane = if x + l < wo { -1 } else { 0 };
        }
        // SAFETY: reads the eight lanes just written.
        let stored = unsafe { _mm256_loadu_si256(stored.as_ptr().cast()) };

        let input = self.image.as_ptr();
        let start = self.origin + x as isize;
        // Two sets of accumulators, even and odd taps, to keep both FMA units busy.
        let mut acc = [[_mm256_setzero_ps(); C]; 2];
        for (c, acc) in acc[0].iter_mut().enumerate() {
            *acc = _mm256_set1_ps(bias[c]);
        }
        let w = weights.as_ptr();
        for (t, &offset) in self.offsets.iter().enumerate() {
            // Taps run along the kernel columns fastest.
            let mask = masks[t % kw];
            let acc = &mut acc[t % 2];
            // SAFETY: `maskload` touches only the lanes its mask keeps, which are inside the
            // image; the pointer to the masked-off ones is never dereferenced.
            unsafe {
                let v = _mm256_maskload_ps(input.wrapping_offset(start + offset), mask);
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(v, _mm256_broadcast_ss(&*w.add(t * C + c)), *acc);
                }
            }
        }
        let out = out.as_mut_ptr();
        let [even, odd] = acc;
        for (c, (even, odd)) in even.into_iter().zip(odd).enumerate() {
            let y = _mm256_add_ps(even, odd);
            let y = if self.relu { F32s(y).relu().0 } else { y };
            // SAFETY: the lanes `stored` keeps are inside the row (`compute`'s bounds).
            unsafe { _mm256_maskstore_ps(out.wrapping_add(c * plane + x), stored, y) };
        }
    }

    /// The output point `x`, one tap at a time; taps outside the input add nothing (zero
    /// padding).
    #[cfg(target_arch = "aarch64")]
    unsafe fn border<const C: usize>(
        &self,
        x: usize,
        weights: &[f32],
        bias: &[f32; C],
        out: &mut [f32],
        plane: usize,
    ) {
        let [pl, wi, _, kw, dw] = self.columns;
        let mut sums = *bias;
        for (t, &offset) in self.offsets.iter().enumerate() {
            // Taps run along the kernel columns fastest.
            let column = (x + (t % kw) * dw).checked_sub(pl);
            if column.is_some_and(|c| c < wi) {
                let v = self.image[(self.origin + x as isize + offset) as usize];
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum += weights[t * C + c] * v;
                }
            }
        }
        for (c, &y) in sums.iter().enumerate() {
            // `y < 0` is false for NaN, which stays NaN.
            out[c * plane + x] = if self.relu && y < 0.0 { 0.0 } else { y };
        }
    }
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "DirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geometry)])
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let g = &self.geometry;
        let expected = [g.batch, g.input[0], g.input[1], g.input[2]];
        ensure!(
            input.shape() == expected && input.datum_type() == f32::datum_type(),
            "DirectConv for {expected:?} f32 given a {:?} {:?} input",
            input.shape(),
            input.datum_type()
        );
        ensure!(available(), "DirectConv needs a CPU with AVX2 and FMA");
        let input = input.try_as_plain_ram()?;
        // SAFETY: `eval_f32` writes every output value (each row's points `0..wo`, for every
        // channel, image and row) before the tensor is read.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape())? };
        {
            let mut values = output.try_as_plain_ram_mut()?;
            // SAFETY: AVX2 and FMA are available (checked above).
            unsafe { self.eval_f32(input.as_slice::<f32>()?, values.as_slice_mut::<f32>()?)? };
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geometry;
        let macs =
            g.batch * g.output.iter().product::<usize>() * g.input[0] * g.kernel[0] * g.kernel[1];
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs.into())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The geometry of an input, a kernel and the padding below and right of the input.
    fn geometry(
        batch: usize,
        input: [usize; 3],
        co: usize,
        kernel: [usize; 2],
        dilation: [usize; 2],
        before: [usize; 2],
        after: [usize; 2],
    ) -> Geometry {
        let [_, hi, wi] = input;
        let out = |axis: usize, size: usize| {
            size + before[axis] + after[axis] - (kernel[axis] - 1) * dilation[axis]
        };
        Geometry {
            batch,
            input,
            output: [co, out(0, hi), out(1, wi)],
            kernel,
            dilation,
            pad: before,
        }
    }

    /// The convolution by its definition, in f64.
    fn reference(g: &Geometry, input: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
        let ([ci, hi, wi], [co, ho, wo], [kh, kw]) = (g.input, g.output, g.kernel);
        let mut output = Vec::with_capacity(g.batch * co * ho * wo);
        for n in 0..g.batch {
            for o in 0..co {
                for y in 0..ho {
                    for x in 0..wo {
                        let mut sum = bias[o] as f64;
                        for c in 0..ci {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (y + ky * g.dilation[0]).checked_sub(g.pad[0]);
                                    let ix = (x + kx * g.dilation[1]).checked_sub(g.pad[1]);
                                    let (Some(iy), Some(ix)) = (iy, ix) else {
                                        continue;
                                    };
                                    if iy < hi && ix < wi {
                                        let v = input[((n * ci + c) * hi + iy) * wi + ix];
                                        let k = kernel[((o * ci + c) * kh + ky) * kw + kx];
                                        sum += v as f64 * k as f64;
                                    }
                                }
                            }
                        }
                        output.push(sum as f32);
                    }
                }
            }
        }
        output
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| (i as f32 * seed).sin()).collect()
    }

    #[test]
    fn computes_the_convolution_at_every_border() {
        if !available() {
            return;
        }
        for g in [
            // Five output channels (a group of four and one), dilated, padded unevenly.
            geometry(1, [3, 7, 45], 5, [3, 3], [2, 3], [2, 1], [1, 4]),
            // A 1x2 kernel, no padding, a batch of two.
            geometry(2, [2, 5, 70], 4, [1, 2], [1, 1], [0, 0], [0, 0]),
            // More padding than the kernel reaches: rows and columns of bias alone.
            geometry(1, [2, 3, 33], 4, [3, 3], [1, 1], [5, 5], [5, 5]),
            // Rows narrower than one vector: masked loads only.
            geometry(1, [1, 6, 10], 1, [3, 3], [1, 1], [1, 1], [1, 1]),
            // The single-channel kernel's blocks with a remainder, a row of 64 + 3 points.
            geometry(1, [8, 4, 67], 1, [3, 3], [1, 1], [1, 1], [1, 1]),
        ] {
            let ([ci, hi, wi], co, [kh, kw]) = (g.input, g.output[0], g.kernel);
            let input = values(g.batch * ci * hi * wi, 0.37);
            let kernel = values(co * ci * kh * kw, 0.91);
            let bias = values(co, 1.7);
            let kernel_tensor = Tensor::from_shape(&[co, ci, kh, kw], &kernel).unwrap();
            for relu in [false, true] {
                let op = DirectConv::new(g, &kernel_tensor, &tensor1(&bias), relu).unwrap();
                let x = Tensor::from_shape(&[g.batch, ci, hi, wi], &input).unwrap();
                let outputs = op.eval_out_of_plan(tvec!(x.into_tvalue())).unwrap();
                let got = outputs.unwrap()[0].clone().into_tensor();
                assert_eq!(got.shape(), op.output_shape(), "{g:?}");
                let got = got.try_as_plain_ram().unwrap();
                let got = got.as_slice::<f32>().unwrap();
                let want = reference(&g, &input, &kernel, &bias);
                assert_eq!(got.len(), want.len());
                for (i, (&got, &want)) in got.iter().zip(&want).enumerate() {
                    let want = if relu { want.max(0.0) } else { want };
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{g:?}, relu {relu}: output {i} is {got}, not {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_input_is_an_error() {
        if !available() {
            return;
        }
        let g = geometry(1, [1, 4, 40], 4, [3, 3], [1, 1], [1, 1], [1, 1]);
        let op = DirectConv::new(
            g,
            &Tensor::zero::<f32>(&[4, 1, 3, 3]).unwrap(),
            &tensor1(&[0f32]),
            false,
        )
        .unwrap();
        let wrong = Tensor::zero::<f32>(&[1, 1, 4, 39]).unwrap();
        let error = op.eval_out_of_plan(tvec!(wrong.into_tvalue())).unwrap_err();
        assert!(error.to_string().contains("[1, 1, 4, 39]"), "{error}");
        // A kernel that does not match the geometry is refused when the op is made.
        let kernel = Tensor::zero::<f32>(&[4, 2, 3, 3]).unwrap();
        assert!(DirectConv::new(g, &kernel, &tensor1(&[0f32]), false).is_err());
    }
}
