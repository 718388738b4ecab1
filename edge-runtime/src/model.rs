//! Any exported ONNX model with one `f32` input, optimised for a fixed input shape: the encoder,
//! the upscaler, and the pieces `anomaly` chains together.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;

use crate::Error;

/// An optimised tract plan for one input shape; [`OnnxModel::run`] returns every output.
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    state: Mutex<TypedSimpleState>,
    input_shape: Vec<usize>,
    output_shapes: Vec<Vec<usize>>,
}

impl OnnxModel {
    /// Loads the ONNX file at `path` and optimises it for `input_shape`, or for the shape its
    /// input declares when `None` (every dimension must then be a number; a symbolic batch is
    /// taken as 1).
    ///
    /// # Errors
    /// [`Error::ReadModel`], [`Error::ParseModel`]; [`Error::NotADecoder`] (the interface check)
    /// for a model without exactly one input, without outputs or without a usable shape; [`Error::PrepareModel`]
    /// when tract cannot optimise it for the shape; [`Error::Memory`] when its tensors for that
    /// shape need more memory than the process can get ([`crate::available_bytes`]).
    pub fn load(path: impl AsRef<Path>, input_shape: Option<&[usize]>) -> Result<Self, Error> {
        let path = path.as_ref();
        let model = read_one_input(path)?;
        let interface = |reason: String| interface_error(path, reason);
        let prepare_failed = |e: TractError| prepare_error(path, e);
        let shape = match input_shape {
            Some(shape) => shape.to_vec(),
            None => declared_shape(model.input_fact(0).map_err(prepare_failed)?)
                .map_err(|reason| interface(format!("input 0 {reason}")))?,
        };
        let model = model
            .with_input_fact(0, f32::fact(&shape).into())
            .and_then(crate::convolution::optimize)
            .map_err(prepare_failed)?;
        let mut output_shapes = Vec::new();
        for i in 0..model.outputs.len() {
            let fact = model.output_fact(i).map_err(prepare_failed)?;
            let dims: Option<Vec<usize>> = fact.shape.iter().map(|d| d.to_usize().ok()).collect();
            output_shapes
                .push(dims.ok_or_else(|| interface(format!("output {i} has no fixed shape")))?);
        }
        if output_shapes.is_empty() {
            return Err(interface("it has no outputs".into()));
        }
        let plan = model.into_runnable().map_err(prepare_failed)?;
        crate::memory::ensure_fits(crate::memory::plan_tensor_bytes(&plan).unwrap_or(0), || {
            format!("{} on a {shape:?} input", path.display())
        })?;
        let state = Mutex::new(plan.spawn().map_err(prepare_failed)?);
        Ok(Self {
            plan,
            state,
            input_shape: shape,
            output_shapes,
        })
    }

    /// The shape the ONNX file at `path` declares for its only input, `None` for a symbolic
    /// dimension (a fully convolutional model's height and width, a batch).
    ///
    /// # Errors
    /// As [`OnnxModel::load`] for an unreadable file or one without exactly one input with a
    /// declared rank.
    pub fn declared_input(path: impl AsRef<Path>) -> Result<Vec<Option<usize>>, Error> {
        use tract_onnx::tract_hir::infer::Factoid;
        let path = path.as_ref();
        let model = read_one_input(path)?;
        let fact = model.input_fact(0).map_err(|e| prepare_error(path, e))?;
        let shape = fact
            .shape
            .concretize()
            .ok_or_else(|| interface_error(path, "input 0 has no declared shape".into()))?;
        Ok(shape.iter().map(|d| d.to_usize().ok()).collect())
    }

    /// The input shape the plan was optimised for.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The shape of every output.
    pub fn output_shapes(&self) -> &[Vec<usize>] {
        &self.output_shapes
    }

    /// Runs the model on `input` (row-major values of [`OnnxModel::input_shape`]).
    ///
    /// # Errors
    /// [`Error::InputLength`] for a wrong number of values, [`Error::Inference`] if tract fails
    /// or an output is not finite.
    pub fn run(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, Error> {
        let expected: usize = self.input_shape.iter().product();
        if input.len() != expected {
            return Err(Error::InputLength {
                expected,
                actual: input.len(),
            });
        }
        let failed = |e: TractError| Error::Inference { source: e.into() };
        crate::onnx::catch_inference_panic(|| {
            let tensor = Tensor::from_shape(&self.input_shape, input).map_err(failed)?;
            let mut state = crate::onnx::lock_state(&self.state, || self.plan.spawn().ok());
            let outputs = state.run(tvec!(tensor.into_tvalue())).map_err(failed)?;
            drop(state);
            outputs
                .iter()
                .map(|o| {
                    let view = o.to_plain_array_view::<f32>().map_err(failed)?;
                    crate::onnx::finite(crate::onnx::row_major(&view))
                })
                .collect()
        })
    }
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("input_shape", &self.input_shape)
            .field("output_shapes", &self.output_shapes)
            .finish_non_exhaustive()
    }
}

/// The ONNX file at `path`, which must have exactly one input.
fn read_one_input(path: &Path) -> Result<InferenceModel, Error> {
    let model = crate::onnx::read(path)?;
    let inputs = model
        .input_outlets()
        .map_err(|e| prepare_error(path, e))?
        .len();
    if inputs != 1 {
        return Err(interface_error(path, format!("it has {inputs} inputs")));
    }
    Ok(model)
}

/// The interface check's error for the model at `path`.
fn interface_error(path: &Path, reason: String) -> Error {
    Error::NotADecoder {
        path: path.into(),
        reason: format!("as a model with one input: {reason}"),
    }
}

/// tract could not type or optimise the model at `path`.
fn prepare_error(path: &Path, e: TractError) -> Error {
    Error::PrepareModel {
        path: path.into(),
        source: e.into(),
    }
}

/// The declared shape of an input, a symbolic first (batch) axis taken as 1.
fn declared_shape(fact: &InferenceFact) -> Result<Vec<usize>, String> {
    use tract_onnx::tract_hir::infer::Factoid;
    let shape = fact
        .shape
        .concretize()
        .ok_or_else(|| "has no declared shape".to_string())?;
    shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d.to_usize() {
            Ok(n) => Ok(n),
            Err(_) if i == 0 => Ok(1),
            Err(_) => Err(format!(
                "has a symbolic dimension {i} ({d}) where a fixed size is needed (is it a fully \
                 convolutional model, a denoiser or an upscaler?)"
            )),
        })
        .collect()
}
