//! ONNX `DepthToSpace` as one pass over the data.
//!
//! The exporter's decoders interleave the four phases of each folded upsampling with
//! `DepthToSpace` (blocksize 2). tract runs that operator as a reshape and two axis moves, and
//! an axis move whose innermost block is under 64 bytes copies element by element (a `memcpy`
//! per float): a fifth of a decode's instructions (BENCHMARKS.md). [`register`] makes
//! the ONNX front end build [`Interleave`] instead, which writes each output row in one pass:
//! the same values in the same places, for every copyable element type and both modes.

use tract_onnx::Onnx;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Makes `onnx` parse every `DepthToSpace` node as [`Interleave`].
pub(crate) fn register(onnx: &mut Onnx) {
    onnx.op_register.insert("DepthToSpace", parse);
}

/// How `DepthToSpace` orders its input channels: ONNX's `DCR` (block position major, the
/// default) or `CRD` (output channel major).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Mode {
    Dcr,
    Crd,
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let block: i64 = node.get_attr_opt("blocksize")?.unwrap_or(2);
    // `b * b` divides the channel count, so it must not overflow.
    let block = usize::try_from(block)
        .ok()
        .filter(|&b| b >= 1 && b.checked_mul(b).is_some())
        .with_context(|| format!("DepthToSpace blocksize {block} is out of range"))?;
    let mode = match node.get_attr_opt::<&str>("mode")? {
        None | Some("DCR") => Mode::Dcr,
        Some("CRD") => Mode::Crd,
        Some(other) => bail!("DepthToSpace mode must be DCR or CRD, got {other}"),
    };
    let op = Interleave { block, mode };
    Ok((expand(op), vec![]))
}

/// `[n, c * b * b, h, w] -> [n, c, h * b, w * b]`: output `(n, c, y * b + by, x * b + bx)` is
/// input `(n, channel(c, by, bx), y, x)` (ONNX `DepthToSpace`, blocksize `b`).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct Interleave {
    pub(crate) block: usize,
    pub(crate) mode: Mode,
}

impl Interleave {
    fn output_shape<D: DimLike>(&self, input: &[D]) -> TractResult<TVec<D>> {
        if input.len() != 4 {
            bail!("DepthToSpace needs a rank-4 input, got {input:?}");
        }
        let b = self.block;
        Ok(tvec!(
            input[0].clone(),
            input[1].clone() / (b * b),
            input[2].clone() * b,
            input[3].clone() * b,
        ))
    }

    /// The input channel that lands at block position `(by, bx)` of output channel `c`.
    fn channel(&self, c: usize, channels: usize, by: usize, bx: usize) -> usize {
        let b = self.block;
        match self.mode {
            Mode::Dcr => (by * b + bx) * channels + c,
            Mode::Crd => (c * b + by) * b + bx,
        }
    }

    fn eval_t<T: Datum + Copy>(&self, input: &Tensor, output: &mut Tensor) -> TractResult<()> {
        let &[n, _, h, w] = input.shape() else {
            bail!("DepthToSpace needs a rank-4 input, got {:?}", input.shape());
        };
        let channels = output.shape()[1];
        let b = self.block;
        if input.shape()[1] != channels * b * b {
            bail!(
                "DepthToSpace needs a channel count divisible by {}, got {:?}",
                b * b,
                input.shape()
            );
        }
        if w == 0 {
            return Ok(()); // no values to move (and no rows to cut them into)
        }
        let src = input.try_as_plain_ram()?;
        let src = src.as_slice::<T>()?;
        let mut dst = output.try_as_plain_ram_mut()?;
        let dst = dst.as_slice_mut::<T>()?;
        // One output row (w * b values) per (image, channel, input row, block row): value x * b
        // + bx comes from column x of input channel `channel(c, by, bx)`.
        let mut rows = dst.chunks_exact_mut(w * b);
        for image in 0..n {
            for c in 0..channels {
                for y in 0..h {
                    for by in 0..b {
                        let row = rows.next().context("DepthToSpace output is too short")?;
                        let from = |bx| {
                            let ic = self.channel(c, channels, by, bx);
                            let start = ((image * channels * b * b + ic) * h + y) * w;
                            src.get(start..start + w)
                                .context("DepthToSpace input is too short")
                        };
                        if b == 2 {
                            // The exporter's case: pairs, which the compiler keeps in registers.
                            let (left, right) = (from(0)?, from(1)?);
                            for (pair, (&l, &r)) in
                                row.chunks_exact_mut(2).zip(left.iter().zip(right))
                            {
                                pair[0] = l;
                                pair[1] = r;
                            }
                        } else {
                            for bx in 0..b {
                                for (to, &v) in row[bx..].iter_mut().step_by(b).zip(from(bx)?) {
                                    *to = v;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Expansion for Interleave {
    fn name(&self) -> StaticName {
        "DepthToSpace".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].shape, move |s, shape| {
            let shape = self.output_shape(&shape)?;
            s.equals(&outputs[0].shape, ShapeFactoid::from(shape))
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?;
        let depth = fact.shape[1].to_usize()?;
        if depth % (self.block * self.block) != 0 {
            bail!(
                "DepthToSpace needs a channel count divisible by {}, got {depth}",
                self.block * self.block
            );
        }
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Interleave {
    fn name(&self) -> StaticName {
        "DepthToSpace".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Interleave {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = self.output_shape(input.shape())?;
        let dt = input.datum_type();
        if !dt.is_copy() {
            bail!("DepthToSpace on {dt:?} tensors is not supported");
        }
        // `eval_t` writes every element (each output row once, whole) before anything reads
        // them, so the zeroing `Tensor::zero_dt` would do is skipped: it cost ~4% of a decode.
        #[allow(unsafe_code)]
        // SAFETY: only copyable element types reach `eval_t` (`dispatch_copy!`), for which
        // uninitialised storage is overwritten without being read or dropped; on an error the
        // tensor is dropped unread.
        let mut output = unsafe { Tensor::uninitialized_dt(dt, &shape)? };
        dispatch_copy!(Self::eval_t(dt)(self, &input, &mut output))?;
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Interleave {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.output_shape(&inputs[0].shape.to_tvec())?;
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: &Interleave, input: Tensor) -> Tensor {
        let outputs = op.eval_out_of_plan(tvec!(input.into_tvalue())).unwrap();
        outputs.unwrap()[0].clone().into_tensor()
    }

    /// ONNX's reference formula for `DepthToSpace`, one element at a time.
    fn reference(mode: Mode, b: usize, input: &tract_ndarray::ArrayD<f32>) -> Vec<f32> {
        let s = input.shape();
        let (n, c, h, w) = (s[0], s[1] / (b * b), s[2], s[3]);
        let mut out = Vec::new();
        for i in 0..n {
            for ch in 0..c {
                for oy in 0..h * b {
                    for ox in 0..w * b {
                        let (by, bx) = (oy % b, ox % b);
                        let ic = match mode {
                            Mode::Dcr => by * b * c + bx * c + ch,
                            Mode::Crd => ch * b * b + by * b + bx,
                        };
                        out.push(input[[i, ic, oy / b, ox / b]]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn interleaves_like_the_onnx_formula_in_both_modes() {
        for (mode, b, shape) in [
            (Mode::Dcr, 2, [2, 12, 3, 5]),
            (Mode::Crd, 2, [2, 12, 3, 5]),
            (Mode::Dcr, 3, [1, 18, 2, 4]),
            (Mode::Crd, 3, [1, 18, 2, 4]),
            (Mode::Dcr, 1, [1, 3, 2, 2]),
        ] {
            let len = shape.iter().product::<usize>();
            let input = tract_ndarray::ArrayD::from_shape_vec(
                &shape[..],
                (0..len).map(|v| v as f32).collect(),
            )
            .unwrap();
            let op = Interleave { block: b, mode };
            let output = run(&op, input.clone().into_tensor());
            let (c, h, w) = (shape[1] / (b * b), shape[2] * b, shape[3] * b);
            assert_eq!(output.shape(), &[shape[0], c, h, w], "{mode:?} {b}");
            assert_eq!(
                output
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap(),
                &reference(mode, b, &input)[..],
                "{mode:?} blocksize {b}"
            );
        }
    }

    #[test]
    fn keeps_the_element_type() {
        let input = tract_ndarray::ArrayD::from_shape_vec(&[1, 4, 1, 1][..], vec![1u8, 2, 3, 4])
            .unwrap()
            .into_tensor();
        let op = Interleave {
            block: 2,
            mode: Mode::Dcr,
        };
        let output = run(&op, input);
        assert_eq!(output.datum_type(), u8::datum_type());
        assert_eq!(
            output.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap(),
            &[1, 2, 3, 4]
        );
    }

    #[test]
    fn an_empty_input_gives_an_empty_output() {
        let op = Interleave {
            block: 2,
            mode: Mode::Dcr,
        };
        let output = run(&op, Tensor::zero::<f32>(&[1, 4, 3, 0]).unwrap());
        assert_eq!(output.shape(), &[1, 1, 6, 0]);
    }

    #[test]
    fn a_wrong_rank_is_an_error() {
        let op = Interleave {
            block: 2,
            mode: Mode::Dcr,
        };
        let input = Tensor::zero::<f32>(&[4, 2, 2]).unwrap();
        let error = op.eval_out_of_plan(tvec!(input.into_tvalue())).unwrap_err();
        assert!(error.to_string().contains("rank-4"), "{error}");
    }
}
