//! How the crate's models get their convolutions: tract's own choices, changed for the images
//! our models run on.
//!
//! tract 0.23 computes a convolution with output rows of 128 points or more with its direct
//! spatial kernel, and narrower ones by unfolding the input (im2col) and a matrix product.
//! [`optimize`] makes three changes to that, all measured (BENCHMARKS.md):
//! - narrow convolutions get their zero padding from [`ZeroPad`], a copy of whole rows into a
//!   zeroed tensor ahead of them: tract's im2col tests every tap of a padded input against the
//!   border (half of a decoder's time at batch 64), and takes a fast path on an input that
//!   holds its padding already; for one image it padded with a generic element-by-element
//!   `Pad` of its own;
//! - a batch of narrow images goes through each unpadded convolution side by side, as one wide
//!   image (`[N, C, H, W] -> [1, C, H, N * W]`, the outputs cut back apart): tract copies its
//!   im2col input row by row, and rows of 4 to 16 values made that most of a decoder's time at
//!   batch 64;
//! - on x86-64 (with AVX2 and FMA) and aarch64, every stride-1 convolution with rows of 32
//!   points or more (on x86-64 also any with at most 4 output channels, such as a decoder's
//!   last layer) is a [`DirectConv`] of this crate, with the ReLU after it fused in: up to
//!   3x faster than tract's direct kernel on the camera denoiser's small frames on x86-64, 39-45%
//!   fewer instructions per frame on aarch64 (where every padded convolution gets [`ZeroPad`]
//!   ahead of it). 32-bit ARM (armv7) keeps tract's choices.
//!
//! [`DirectConv`]: crate::direct_conv::DirectConv

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::cnn::{Conv, PaddingSpec};
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// The typed, optimised form of `model`, as tract's `into_optimized` makes it, with the changes
/// to its convolutions the module describes.
pub(crate) fn optimize(model: InferenceModel) -> TractResult<TypedModel> {
    let mut model = model.into_typed()?.into_decluttered()?;
    // Each patch replaces one convolution by another op or an unpadded one, so these end.
    while let Some(patch) = split_first_padded_conv(&model)? {
        patch.apply(&mut model)?;
    }
    while let Some(patch) = batch_of_first_narrow_conv_side_by_side(&model)? {
        patch.apply(&mut model)?;
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    while let Some(patch) = direct_first_conv(&model)? {
        patch.apply(&mut model)?;
    }
    let mut model = model.into_compact()?;
    model.optimize()?;
    Ok(model)
}

/// A patch that makes the first convolution [`DirectConv`] computes (x86-64 with AVX2 and FMA,
/// or aarch64: stride 1, group 1, float NCHW over two spatial axes, constant weights and bias,
/// a concrete input shape, output rows of [`OUR_DIRECT_FROM`] points or more, or of any width
/// with at most [`NARROW_DIRECT_CHANNELS`] output channels) into one; `None` when there is none
/// left.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn direct_first_conv(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    use crate::direct_conv::{self, DirectConv, Geometry};
    if !direct_conv::available() {
        return Ok(None);
    }
    for node in model.eval_order()?.into_iter().map(|id| model.node(id)) {
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let &[x, kernel, bias] = &node.inputs[..] else {
            continue;
        };
        let input = model.outlet_fact(x)?;
        let (Some(kernel), Some(bias)) = (
            model.outlet_fact(kernel)?.konst.clone(),
            model.outlet_fact(bias)?.konst.clone(),
        ) else {
            continue;
        };
        let Some(&[n, ci, hi, wi]) = input.shape.as_concrete() else {
            continue;
        };
        let output = model.outlet_fact(node.id.into())?;
        let Some(&[_, co, ho, wo]) = output.shape.as_concrete() else {
            continue;
        };
        let spec = &conv.pool_spec;
        if conv.q_params.is_some()
            || input.datum_type != f32::datum_type()
            || spec.data_format != DataFormat::NCHW
            || conv.group != 1
            || spec.rank() != 2
            || spec.strides().iter().any(|&s| s != 1)
            || spec.kernel_shape[1] > direct_conv::MAX_KERNEL_WIDTH
            || (wo < OUR_DIRECT_FROM && NARROW_DIRECT_CHANNELS.is_none_or(|most| co > most))
        {
            continue;
        }
        let padding = spec.computed_padding(&[hi, wi]);
        let dilation = spec.dilations();
        let geometry = Geometry {
            batch: n,
            input: [ci, hi, wi],
            output: [co, ho, wo],
            kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
            dilation: [dilation[0], dilation[1]],
            pad: [padding[0].pad_before, padding[1].pad_before],
        };
        let kernel = conv.kernel_fmt.kernel_as_group_o_i_hw(&kernel, 1)?; // [1, O, I, H * W]
        let kernel = kernel.into_shape(&[co, ci, geometry.kernel[0], geometry.kernel[1]])?;
        let relu = relu_after(model, node)?;
        let op = DirectConv::new(geometry, &kernel, &bias, relu.is_some())?;

        let mut patch = TypedModelPatch::new("direct-conv");
        let x = patch.tap_model(model, x)?;
        let y = patch.wire_node(&node.name, op, &[x])?[0];
        patch.shunt_outside(model, relu.unwrap_or(node.id).into(), y)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

/// The node that applies a ReLU (`max(x, 0)`, as tract declutters ONNX's `Relu`) to `node`'s
/// output and is its only reader, if there is one.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn relu_after(model: &TypedModel, node: &TypedNode) -> TractResult<Option<usize>> {
    use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_hir::tract_core::ops::math::Max;
    let output = OutletId::new(node.id, 0);
    let readers = model.outlet_successors(output);
    if model.output_outlets()?.contains(&output) || readers.len() != 1 {
        return Ok(None);
    }
    let next = model.node(readers[0].node);
    let Some(TypedBinOp(op, _)) = next.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    let &[a, b] = &next.inputs[..] else {
        return Ok(None);
    };
    let other = if a == output { b } else { a };
    let zero = model
        .outlet_fact(other)?
        .konst
        .as_ref()
        .is_some_and(|k| k.len() == 1 && k.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0));
    Ok((op.is::<Max>() && zero).then_some(next.id))
}

/// A patch that splits the first float convolution with explicit padding and output rows under
/// [`PAD_AHEAD_BELOW`] points into [`ZeroPad`] and the same convolution without padding;
/// `None` when there is none left.
fn split_first_padded_conv(model: &TypedModel) -> TractResult<Option<TypedModelPatch>> {
    for node in model.eval_order()?.into_iter().map(|id| model.node(id)) {
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let PaddingSpec::Explicit(before, after) = &conv.pool_spec.padding else {
            continue;
        };
        let input = model.outlet_fact(node.inputs[0])?;
        if conv.q_params.is_some()
            || !input.datum_type.is_float()
            || before.iter().chain(after).all(|&p| p == 0)
            || output_row(conv, model.outlet_fact(node.id.into())?)
                .is_none_or(|w| PAD_AHEAD_BELOW.is_some_and(|below| w >= below))
        {
            continue;
        }
        let shape = conv.pool_spec.data_format.shape(input.shape.to_tvec())?;
        let mut pads = tvec![(0, 0); input.rank()];
        for ((axis, &b), &a) in shape.hw_axes().zip(before).zip(after) {
            pads[axis] = (b, a);
        }
        let mut unpadded = conv.clone();
        unpadded.pool_spec.padding = PaddingSpec::Valid;

        let mut patch = TypedModelPatch::default();
        let mut wires = patch.taps(model, &node.inputs)?;
        wires[0] = patch.wire_node(
            format!("{}.zero_pad", node.name),
            ZeroPad { pads },
            &wires[..1],
        )?[0];
        let output = patch.wire_node(&node.name, unpadded, &wires)?[0];
        patch.shunt_outside(model, node.id.into(), output)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

/// A patch that computes the first unpadded, stride-1 float convolution of a batch of narrow
/// images as one convolution of a single wide image: the batch's images side by side along
/// the rows, `[N, C, H, W] -> [1, C, H, N * W]`, and the output cut back into images, so that
/// tract unfolds `N` times longer rows (its im2col copies row by row: most of a decoder's time
/// at batch 64 went to rows of 4 to 16 values) and runs one matrix product instead of `N`, or
/// (x86-64, aarch64) [`DirectConv`] takes the wide rows. `kw - 1` zero columns after the last
/// image keep every image's outputs `W` apart; the outputs that straddle two images are cut
/// away. Both ends are a [`SideBySide`] op. `None` when there is none left.
///
/// [`DirectConv`]: crate::direct_conv::DirectConv
fn batch_of_first_narrow_conv_side_by_side(
    model: &TypedModel,
) -> TractResult<Option<TypedModelPatch>> {
    for node in model.eval_order()?.into_iter().map(|id| model.node(id)) {
        let Some(conv) = node.op_as::<Conv>() else {
            continue;
        };
        let input = model.outlet_fact(node.inputs[0])?;
        let unpadded = match &conv.pool_spec.padding {
            PaddingSpec::Valid => true,
            PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|&p| p == 0),
            _ => false,
        };
        let Some(&[n, _, _, w]) = input.shape.as_concrete() else {
            continue;
        };
        let output_width = output_row(conv, model.outlet_fact(node.id.into())?)
            .filter(|&ow| ow > 0 && ow < TRACT_DIRECT_FROM);
        let Some(output_width) = output_width else {
            continue;
        };
        if n < 2
            || !unpadded
            || conv.q_params.is_some()
            || !input.datum_type.is_float()
            || conv.pool_spec.data_format != DataFormat::NCHW
            || conv.pool_spec.rank() != 2
            || conv.pool_spec.strides().iter().any(|&s| s != 1)
        {
            continue;
        }
        let kernel_width = w - output_width + 1;

        let mut patch = TypedModelPatch::new("batch-side-by-side");
        let mut wires = patch.taps(model, &node.inputs)?;
        let name = |step: &str| format!("{}.side_by_side_{step}", node.name);
        let join = SideBySide::Join {
            zeros: kernel_width - 1,
        };
        wires[0] = patch.wire_node(name("join"), join, &wires[..1])?[0]; // [1, C, H, N * W + kw - 1]
        let y = patch.wire_node(&node.name, conv.clone(), &wires)?[0]; // [1, M, Ho, N * W]
        let split = SideBySide::Split {
            images: n,
            keep: output_width,
        };
        // [N, M, Ho, Wo]; `shunt_outside` checks it against the convolution's output fact.
        let y = patch.wire_node(name("split"), split, &[y])?[0];
        patch.shunt_outside(model, node.id.into(), y)?;
        return Ok(Some(patch));
    }
    Ok(None)
}

/// tract 0.23 computes a convolution with its direct spatial kernel (where that fits) from
/// output rows of this many points (`MIN_DIRECT_SPATIAL_W` in tract's `conv.rs`), and narrower
/// ones by unfolding the input (im2col) and a matrix product.
const TRACT_DIRECT_FROM: usize = 128;

/// Convolutions with output rows narrower than this get their zero padding from [`ZeroPad`].
/// On aarch64 (`None`) that is every convolution: [`DirectConv`] computes its border points
/// one tap at a time there (NEON has no masked loads), which cost more than copying the input
/// (qemu counts, BENCHMARKS.md). Elsewhere, wider rows go to kernels that handle their
/// borders: tract's direct one, or `DirectConv`'s masked loads on x86-64.
///
/// [`DirectConv`]: crate::direct_conv::DirectConv
#[cfg(target_arch = "aarch64")]
const PAD_AHEAD_BELOW: Option<usize> = None;
#[cfg(not(target_arch = "aarch64"))]
const PAD_AHEAD_BELOW: Option<usize> = Some(TRACT_DIRECT_FROM);

/// On x86-64 and aarch64, convolutions with output rows of this many points or more run on
/// [`DirectConv`] ([`direct_first_conv`]); narrower ones stay on tract's im2col: the decoder at
/// batch 1, whose rows are 4 to 15 points, executed 24% more instructions per call with all
/// its convolutions on `DirectConv` (x86-64, BENCHMARKS.md).
///
/// [`DirectConv`]: crate::direct_conv::DirectConv
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const OUR_DIRECT_FROM: usize = 32;

/// On x86-64, convolutions with this many output channels or fewer run on [`DirectConv`]
/// whatever their width: tract's matrix product fills 8-row tiles with them, half empty for
/// the decoders' last layer (4 phases of one channel, rows of 15 points), which `DirectConv`
/// computes in masked vectors: 390.5 k -> 359.7 k instructions per batch-1 decoder call (-8%;
/// with at most 8 channels, 372.8 k; BENCHMARKS.md). aarch64 computes border points one tap at
/// a time, so there narrow rows stay on tract's im2col.
///
/// [`DirectConv`]: crate::direct_conv::DirectConv
#[cfg(target_arch = "x86_64")]
const NARROW_DIRECT_CHANNELS: Option<usize> = Some(4);
#[cfg(target_arch = "aarch64")]
const NARROW_DIRECT_CHANNELS: Option<usize> = None;

/// The length of the convolution's output rows, when known.
fn output_row(conv: &Conv, output: &TypedFact) -> Option<usize> {
    let shape = conv
        .pool_spec
        .data_format
        .shape(output.shape.to_tvec())
        .ok()?;
    shape.hw_dims().last().and_then(|w| w.to_usize().ok())
}

/// A batch of images laid side by side along their rows, and back: the two ends of
/// [`batch_of_first_narrow_conv_side_by_side`]'s rewrite, each one pass of row copies.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) enum SideBySide {
    /// `[N, C, H, W] -> [1, C, H, N * W + zeros]`: image `n` in columns `n * W ..`, then `zeros`
    /// zero columns.
    Join { zeros: usize },
    /// `[1, C, H, images * W] -> [images, C, H, keep]`: the first `keep` of each image's `W`
    /// columns.
    Split { images: usize, keep: usize },
}

impl SideBySide {
    fn output_shape(&self, input: &[usize]) -> TractResult<[usize; 4]> {
        let &[n, c, h, w] = input else {
            bail!("{self:?} given a rank-{} input", input.len());
        };
        match *self {
            Self::Join { zeros } => Ok([1, c, h, n * w + zeros]),
            Self::Split { images, keep } => {
                if n != 1 || images == 0 || w % images != 0 || keep > w / images {
                    bail!("{self:?} given a {input:?} input");
                }
                Ok([images, c, h, keep])
            }
        }
    }

    fn eval_t<T: Datum + Copy>(&self, input: &Tensor, output: &mut Tensor) -> TractResult<()> {
        let (from, to) = (input.shape().to_vec(), output.shape().to_vec());
        let src = input.try_as_plain_ram()?;
        let src = src.as_slice::<T>()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        let dst = dst.as_slice_mut::<T>()?;
        // Row `r` (over C and H) of image `n` starts at `r * wide + n * narrow` of the wide
        // tensor and at `(n * rows + r)` times the batch's row length (`narrow` on the way in,
        // `keep` on the way out) of the batch.
        let rows = from[1] * from[2];
        let (images, narrow, keep, wide) = match *self {
            Self::Join { .. } => (from[0], from[3], from[3], to[3]),
            Self::Split { images, keep } => (images, from[3] / images, keep, from[3]),
        };
        for n in 0..images {
            for r in 0..rows {
                let (batch, side) = ((n * rows + r) * narrow, r * wide + n * narrow);
                let (from_at, to_at) = match self {
                    Self::Join { .. } => (batch, side),
                    Self::Split { .. } => (side, (n * rows + r) * keep),
                };
                dst.get_mut(to_at..to_at + keep)
                    .context("SideBySide output is too short")?
                    .copy_from_slice(src.get(from_at..from_at + keep).context("short input")?);
            }
        }
        Ok(())
    }
}

impl Op for SideBySide {
    fn name(&self) -> StaticName {
        "SideBySide".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    op_as_typed_op!();
}

impl EvalOp for SideBySide {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let dt = input.datum_type();
        if !dt.is_copy() {
            bail!("SideBySide on {dt:?} tensors is not supported");
        }
        let shape = self.output_shape(input.shape())?;
        let mut output = match self {
            // Zeroed: its last columns stay so.
            Self::Join { .. } => Tensor::zero_dt(dt, &shape)?,
            // `eval_t` writes every element of a split (each image's rows whole, once) before
            // anything reads them, so the zeroing is skipped: it cost 7% of a batch of 64.
            #[allow(unsafe_code)]
            // SAFETY: only copyable element types reach `eval_t` (`dispatch_copy!`), for which
            // uninitialised storage is overwritten without being read or dropped; on an error
            // the tensor is dropped unread.
            Self::Split { .. } => unsafe { Tensor::uninitialized_dt(dt, &shape)? },
        };
        dispatch_copy!(Self::eval_t(dt)(self, &input, &mut output))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for SideBySide {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("SideBySide needs a concrete input shape")?;
        let shape = self.output_shape(shape)?;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }

    as_op!();
}

/// Pads a tensor with zeros: `pads[axis]` elements before and after along each axis.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct ZeroPad {
    pub(crate) pads: TVec<(usize, usize)>,
}

impl ZeroPad {
    fn output_shape<D: DimLike>(&self, input: &[D]) -> TractResult<TVec<D>> {
        if input.len() != self.pads.len() {
            bail!(
                "ZeroPad for rank {} given a rank-{} input",
                self.pads.len(),
                input.len()
            );
        }
        Ok(input
            .iter()
            .zip(&self.pads)
            .map(|(d, &(before, after))| d.clone() + before + after)
            .collect())
    }

    fn eval_t<T: Datum + Copy>(&self, input: &Tensor, output: &mut Tensor) -> TractResult<()> {
        let (from_shape, to_shape) = (input.shape(), output.shape().to_vec());
        let Some((&width, outer)) = from_shape.split_last() else {
            return Ok(()); // a scalar: nothing to pad
        };
        let src = input.try_as_plain_ram()?;
        let src = src.as_slice::<T>()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        let dst = dst.as_slice_mut::<T>()?;
        if width == 0 {
            return Ok(());
        }
        // An input row (an index over all axes but the last) lands at the same index shifted
        // by the padding before, on every axis, in the output. The index counts up row by row;
        // within a plane the output offset steps by one output row.
        let strides: TVec<usize> = (0..outer.len())
            .map(|axis| to_shape[axis + 1..].iter().product())
            .collect();
        let offset = |index: &[usize]| -> usize {
            let left = self.pads[outer.len()].0;
            let shifted = index.iter().zip(&self.pads).map(|(i, pad)| i + pad.0);
            left + shifted.zip(&strides).map(|(i, s)| i * s).sum::<usize>()
        };
        let mut index: TVec<usize> = tvec![0; outer.len()];
        let mut start = offset(&index);
        for row in src.chunks_exact(width) {
            dst.get_mut(start..start + width)
                .context("ZeroPad output is too short")?
                .copy_from_slice(row);
            let Some(last) = outer.len().checked_sub(1) else {
                break; // one row in all
            };
            index[last] += 1;
            if index[last] < outer[last] {
                start += strides[last];
                continue;
            }
            let mut axis = last;
            while axis > 0 && index[axis] == outer[axis] {
                index[axis] = 0;
                axis -= 1;
                index[axis] += 1;
            }
            start = offset(&index);
        }
        Ok(())
    }
}

impl Op for ZeroPad {
    fn name(&self) -> StaticName {
        "ZeroPad".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("pads: {:?}", self.pads)])
    }

    op_as_typed_op!();
}

impl EvalOp for ZeroPad {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let dt = input.datum_type();
        if !dt.is_copy() {
            bail!("ZeroPad on {dt:?} tensors is not supported");
        }
        let mut output = Tensor::zero_dt(dt, &self.output_shape(input.shape())?)?;
        dispatch_copy!(Self::eval_t(dt)(self, &input, &mut output))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ZeroPad {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.output_shape(&inputs[0].shape.to_tvec())?;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pad(pads: &[(usize, usize)], input: Tensor) -> Tensor {
        let op = ZeroPad { pads: pads.into() };
        let outputs = op.eval_out_of_plan(tvec!(input.into_tvalue())).unwrap();
        outputs.unwrap()[0].clone().into_tensor()
    }

    #[test]
    fn pads_every_axis_with_zeros() {
        let input = tensor3(&[[[1f32, 2., 3.], [4., 5., 6.]]]); // 1 x 2 x 3
        let output = pad(&[(1, 0), (0, 1), (2, 1)], input);
        assert_eq!(output.shape(), &[2, 3, 6]);
        let mut expected = [0f32; 36];
        for (y, row) in [[1f32, 2., 3.], [4., 5., 6.]].iter().enumerate() {
            for (x, &v) in row.iter().enumerate() {
                expected[18 + y * 6 + 2 + x] = v;
            }
        }
        let values = output.try_as_plain_ram().unwrap();
        assert_eq!(values.as_slice::<f32>().unwrap(), &expected[..]);
    }

    /// What the exporter writes runs the same through this crate's graph (its `DepthToSpace`,
    /// [`ZeroPad`], batches side by side and, on x86-64 and aarch64, [`DirectConv`]) as through
    /// tract's own: the decoder at batch 1 and 64, the camera denoiser on frames 200, 40 and 24
    /// points wide (padded inside the convolution on x86-64, by [`ZeroPad`], by [`ZeroPad`] for
    /// tract's im2col but in the last layer) and on a batch of three.
    ///
    /// [`DirectConv`]: crate::direct_conv::DirectConv
    #[test]
    fn exported_models_compute_what_tracts_own_graph_computes() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/roundtrip");
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        let direct = crate::direct_conv::available();
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let direct = false;
        // The ops each graph has, and those it has not, with and without `DirectConv`.
        type Ops = (&'static [&'static str], &'static [&'static str]);
        let cases: [(&str, Vec<usize>, Ops, Ops); 6] = [
            (
                "conv_vae_decoder.onnx",
                vec![1, 2],
                // Rows of 4 to 15 points: only the last layer's 4 channels on x86-64.
                if cfg!(target_arch = "x86_64") {
                    (&["DepthToSpace", "ZeroPad", "DirectConv"], &[])
                } else {
                    (&["DepthToSpace", "ZeroPad"], &["DirectConv"])
                },
                (&["DepthToSpace", "ZeroPad"], &[]),
            ),
            (
                "conv_vae_decoder.onnx",
                vec![64, 2],
                (&["DepthToSpace", "ZeroPad", "DirectConv"], &[]),
                (&["DepthToSpace", "ZeroPad"], &[]),
            ),
            (
                "camera_denoiser.onnx",
                vec![1, 1, 12, 200],
                // Padded by `DirectConv`'s masked loads; on aarch64 ahead of it.
                if cfg!(target_arch = "aarch64") {
                    (&["ZeroPad", "DirectConv"], &[])
                } else {
                    (&["DirectConv"], &["ZeroPad"])
                },
                (&[], &["ZeroPad"]),
            ),
            (
                "camera_denoiser.onnx",
                vec![1, 1, 30, 40],
                (&["ZeroPad", "DirectConv"], &[]),
                (&["ZeroPad"], &[]),
            ),
            (
                "camera_denoiser.onnx",
                vec![1, 1, 20, 24],
                // Rows of 24 points: only the one-channel last layer on x86-64.
                if cfg!(target_arch = "x86_64") {
                    (&["ZeroPad", "DirectConv"], &[])
                } else {
                    (&["ZeroPad"], &["DirectConv"])
                },
                (&["ZeroPad"], &[]),
            ),
            // Dilated convolutions, three images side by side.
            (
                "camera_denoiser.onnx",
                vec![3, 1, 9, 10],
                (&["ZeroPad", "DirectConv"], &[]),
                (&["ZeroPad"], &[]),
            ),
        ];
        for (file, shape, with_direct, without) in cases {
            let (has, has_not) = if direct { with_direct } else { without };
            let path = fixtures.join(file);
            let fact = f32::fact(&shape);
            let stock = tract_onnx::onnx()
                .model_for_path(&path)
                .and_then(|m| m.with_input_fact(0, fact.clone().into()))
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .unwrap();
            let ours = crate::onnx::read(&path)
                .unwrap()
                .with_input_fact(0, fact.into())
                .and_then(optimize)
                .unwrap();
            for &op in has {
                assert!(
                    ours.nodes().iter().any(|n| n.op.name() == op),
                    "{file} {shape:?}: no {op} in the graph"
                );
            }
            for &op in has_not {
                assert!(
                    !ours.nodes().iter().any(|n| n.op.name() == op),
                    "{file} {shape:?}: {op} in the graph"
                );
            }
            // A batch of narrow images, and only that, runs side by side.
            let side_by_side = ours.nodes().iter().any(|n| n.name.contains("side_by_side"));
            assert_eq!(side_by_side, shape[0] > 1, "{file} {shape:?}");
            let ours = ours.into_runnable().unwrap();

            let len = shape.iter().product::<usize>();
            let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
            let input = Tensor::from_shape(&shape, &values).unwrap();
            let run = |plan: &std::sync::Arc<TypedRunnableModel>| {
                let mut state = plan.spawn().unwrap();
                let outputs = state.run(tvec!(input.clone().into_tvalue())).unwrap();
                let view = outputs[0].to_plain_array_view::<f32>().unwrap();
                view.iter().copied().collect::<Vec<f32>>()
            };
            let (want, got) = (run(&stock), run(&ours));
            assert_eq!(want.len(), got.len(), "{file} {shape:?}");
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "{file} {shape:?}: max abs diff {diff}");
        }
    }

    #[test]
    fn a_batch_goes_side_by_side_and_back() {
        // Two images of one channel, 2 x 3 each.
        let batch = Tensor::from_shape(
            &[2, 1, 2, 3],
            &[1f32, 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.],
        )
        .unwrap();
        let run = |op: SideBySide, input: Tensor| {
            let outputs = op.eval_out_of_plan(tvec!(input.into_tvalue())).unwrap();
            outputs.unwrap()[0].clone().into_tensor()
        };
        let wide = run(SideBySide::Join { zeros: 2 }, batch.clone());
        assert_eq!(wide.shape(), &[1, 1, 2, 8]);
        let values = wide.try_as_plain_ram().unwrap();
        assert_eq!(
            values.as_slice::<f32>().unwrap(),
            &[
                1., 2., 3., 7., 8., 9., 0., 0., 4., 5., 6., 10., 11., 12., 0., 0.
            ]
        );
        // Back, without the zero columns: each image whole, then its first two columns.
        let wide = wide.slice(3, 0, 6).unwrap();
        assert_eq!(
            run(SideBySide::Split { images: 2, keep: 3 }, wide.clone()),
            batch
        );
        let cut = run(SideBySide::Split { images: 2, keep: 2 }, wide.clone());
        let values = cut.try_as_plain_ram().unwrap();
        assert_eq!(
            values.as_slice::<f32>().unwrap(),
            &[1., 2., 4., 5., 7., 8., 10., 11.]
        );
        // Rows that do not split into the images are an error, not a panic.
        let op = SideBySide::Split { images: 4, keep: 1 };
        let error = op.eval_out_of_plan(tvec!(wide.into_tvalue())).unwrap_err();
        assert!(error.to_string().contains("[1, 1, 2, 6]"), "{error}");
    }

    #[test]
    fn the_wrong_rank_is_an_error() {
        let op = ZeroPad {
            pads: tvec![(1, 1); 4],
        };
        let input = Tensor::zero::<f32>(&[2, 2]).unwrap();
        let error = op.eval_out_of_plan(tvec!(input.into_tvalue())).unwrap_err();
        assert!(error.to_string().contains("rank-2"), "{error}");
    }
}
