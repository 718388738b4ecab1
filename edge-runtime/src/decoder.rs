//! Loading an exported ONNX decoder with tract and turning latent vectors into images.

use std::path::Path;
use std::sync::Mutex;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::{
    Error, Image,
    onnx::{finite, row_major},
};

/// An optimised tract plan for a decoder `latent [1, D] -> image [1, 1, H, W]`.
///
/// The plan is built once, for batch 1, when the file is loaded; [`Decoder::decode`] only runs
/// it, in one execution state kept between calls (so that each digit does not set up every
/// operator's state again). Input and output are taken by position (input 0, output 0), not by
/// name: exporters name them differently (`latent`, `tensor_8`, ...).
pub struct Decoder {
    plan: Arc<TypedRunnableModel>,
    /// The plan's execution state, reused by every call (a mutex so that `decode` takes `&self`).
    state: Mutex<TypedSimpleState>,
    latent_dim: usize,
    /// Digits a conditional decoder knows (its input ends in their one-hot vector); 0 if none.
    classes: usize,
    width: usize,
    height: usize,
}

impl Decoder {
    /// Loads, checks and optimises the ONNX decoder at `path`.
    ///
    /// The graph must have exactly one input, `f32 [B, D]` with a fixed latent size `D` and a
    /// batch `B` that is 1 or symbolic (it is fixed to 1 here), and exactly one output,
    /// `f32 [1, 1, H, W]` once the batch is fixed.
    ///
    /// # Errors
    /// - [`Error::ReadModel`]: the file is missing or unreadable;
    /// - [`Error::ParseModel`]: it is not an ONNX model tract understands (garbage, truncated);
    /// - [`Error::NotADecoder`]: wrong number of inputs/outputs, wrong rank, type or sizes;
    /// - [`Error::PrepareModel`]: tract cannot type or optimise the graph for `[1, D]`;
    /// - [`Error::Memory`]: one decode (its tensors, latent and image) needs more memory than
    ///   the process can get.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let model = crate::onnx::read(path)?;
        let not_a_decoder = |reason: String| Error::NotADecoder {
            path: path.into(),
            reason: format!("as a decoder: {reason}"),
        };
        let prepare_failed = |e: TractError| Error::PrepareModel {
            path: path.into(),
            source: e.into(),
        };

        let inputs = model.input_outlets().map_err(prepare_failed)?.len();
        if inputs != 1 {
            return Err(not_a_decoder(format!(
                "it has {inputs} inputs, a decoder has 1 (latent)"
            )));
        }
        let outputs = model.output_outlets().map_err(prepare_failed)?.len();
        if outputs != 1 {
            return Err(not_a_decoder(format!(
                "it has {outputs} outputs, a decoder has 1 (image)"
            )));
        }
        let latent_dim = latent_dim_of(model.input_fact(0).map_err(prepare_failed)?)
            .map_err(|reason| not_a_decoder(format!("input 0 {reason}")))?;
        // The exporter records a conditional decoder's digit classes in the ONNX metadata.
        let classes = match crate::onnx::metadata_count(&model, "classes") {
            None => 0,
            Some(count) => count.filter(|&c| c > 0 && c < latent_dim).ok_or_else(|| {
                not_a_decoder(format!(
                    "its metadata `classes` is not a count below the input size {latent_dim}"
                ))
            })?,
        };

        let model = model
            .with_input_fact(0, f32::fact([1, latent_dim]).into())
            .and_then(crate::convolution::optimize)
            .map_err(prepare_failed)?;
        let output = model.output_fact(0).map_err(prepare_failed)?;
        let (height, width) =
            image_size_of(output).map_err(|reason| not_a_decoder(format!("output 0 {reason}")))?;
        let plan = model.into_runnable().map_err(prepare_failed)?;
        // One decode's tensors, its latent and its image: a declared size can be anything.
        let latent_and_image = (latent_dim as u64)
            .saturating_add((height as u64).saturating_mul(width as u64))
            .saturating_mul(4);
        let needed = crate::memory::plan_tensor_bytes(&plan)
            .unwrap_or(0)
            .saturating_add(latent_and_image);
        crate::memory::ensure_fits(needed, || {
            format!(
                "{} ({latent_dim} latent values -> {width}x{height} image)",
                path.display()
            )
        })?;
        let state = Mutex::new(plan.spawn().map_err(prepare_failed)?);
        Ok(Self {
            plan,
            state,
            latent_dim,
            classes,
            width,
            height,
        })
    }

    /// Length `D` of the vectors [`Decoder::decode`] takes: the latent, and for a conditional
    /// decoder its one-hot digit after it ([`Decoder::with_digit`]).
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// Digits a conditional decoder can be asked for (0 to `classes - 1`); 0 for a decoder that
    /// takes a latent alone.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The input asking a conditional decoder for `digit` in the style `latent`
    /// (`latent_dim() - classes()` values): `latent` with the digit's one-hot vector appended.
    ///
    /// # Errors
    /// [`Error::Digit`] when the decoder is not conditional or `digit >= classes()`,
    /// [`Error::LatentLength`] when `latent` has the wrong length.
    pub fn with_digit(&self, latent: &[f32], digit: usize) -> Result<Vec<f32>, Error> {
        if self.classes == 0 {
            return Err(Error::Digit {
                reason: "this decoder is not conditional: it cannot be asked for a digit".into(),
            });
        }
        if digit >= self.classes {
            return Err(Error::Digit {
                reason: format!(
                    "digit {digit} is not one of the decoder's 0..={}",
                    self.classes - 1
                ),
            });
        }
        let style = self.latent_dim - self.classes;
        if latent.len() != style {
            return Err(Error::LatentLength {
                expected: style,
                actual: latent.len(),
            });
        }
        let mut input = latent.to_vec();
        input.extend((0..self.classes).map(|c| if c == digit { 1.0 } else { 0.0 }));
        Ok(input)
    }

    /// Size `(width, height)` of the images it produces.
    pub fn image_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Decodes one latent vector into an image.
    ///
    /// # Shapes
    /// `latent: [D]` (fed as `[1, D]`) -> `image: [1, 1, H, W]`, returned as `H x W` row-major.
    ///
    /// # Errors
    /// [`Error::LatentLength`] when `latent.len() != latent_dim()`, [`Error::NonFiniteLatent`]
    /// for a NaN or infinite value, [`Error::Inference`] if tract fails or the model's output
    /// is not finite.
    pub fn decode(&self, latent: &[f32]) -> Result<Image, Error> {
        if latent.len() != self.latent_dim {
            return Err(Error::LatentLength {
                expected: self.latent_dim,
                actual: latent.len(),
            });
        }
        if let Some((index, &value)) = latent.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteLatent { index, value });
        }
        crate::onnx::catch_inference_panic(|| self.decode_checked(latent))
    }

    /// [`Decoder::decode`] once `latent` is checked.
    fn decode_checked(&self, latent: &[f32]) -> Result<Image, Error> {
        let inference_failed = |e: TractError| Error::Inference { source: e.into() };
        let input = Tensor::from_shape(&[1, self.latent_dim], latent).map_err(inference_failed)?;
        let mut state = crate::onnx::lock_state(&self.state, || self.plan.spawn().ok());
        let outputs = state
            .run(tvec!(input.into_tvalue()))
            .map_err(inference_failed)?;
        drop(state);
        let Some(output) = outputs.first() else {
            return Err(inference_failed(anyhow::anyhow!(
                "the plan returned no output"
            )));
        };
        let view = output
            .to_plain_array_view::<f32>()
            .map_err(inference_failed)?;
        Image::new(self.width, self.height, finite(row_major(&view))?)
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The plan itself is a whole graph dump: leave it out.
        f.debug_struct("Decoder")
            .field("latent_dim", &self.latent_dim)
            .field("classes", &self.classes)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// The latent size `D` of an input declared `[B, D]`, B being 1 or symbolic.
fn latent_dim_of(fact: &InferenceFact) -> Result<usize, String> {
    if let Some(dt) = fact.datum_type.concretize()
        && dt != f32::datum_type()
    {
        return Err(format!("has type {dt:?}, expected f32"));
    }
    if fact.shape.is_open() {
        return Err("has no declared shape, expected [1, latent_dim]".into());
    }
    let dims: Vec<Option<TDim>> = fact.shape.dims().map(|d| d.concretize()).collect();
    let [batch, latent] = dims.as_slice() else {
        return Err(format!(
            "has rank {}, expected 2 ([1, latent_dim])",
            dims.len()
        ));
    };
    // A symbolic or unknown batch is fine: it is fixed to 1 at load time.
    if let Some(batch) = batch
        && let Ok(batch) = batch.to_usize()
        && batch != 1
    {
        return Err(format!(
            "has batch size {batch}, expected 1 or a dynamic batch"
        ));
    }
    match latent.as_ref().map(TDim::to_usize) {
        Some(Ok(d)) if d > 0 => Ok(d),
        Some(Ok(_)) => Err("has an empty latent dimension".into()),
        _ => Err("has no fixed latent size (dimension 1 must be a number)".into()),
    }
}

/// The `(height, width)` of an output `f32 [1, 1, H, W]`.
fn image_size_of(fact: &TypedFact) -> Result<(usize, usize), String> {
    if fact.datum_type != f32::datum_type() {
        return Err(format!("has type {:?}, expected f32", fact.datum_type));
    }
    match fact.shape.as_concrete() {
        Some(&[1, 1, height, width]) if height > 0 && width > 0 => Ok((height, width)),
        Some(shape) => Err(format!(
            "has shape {shape:?}, expected [1, 1, height, width]"
        )),
        None => Err(format!(
            "has shape {:?} with unknown sizes, expected [1, 1, height, width]",
            fact.shape
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Writes `bytes` as `model.onnx` in a fresh directory and tries to load it.
    fn load_bytes(bytes: &[u8]) -> Result<Decoder, Error> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, bytes).expect("write model file");
        Decoder::load(&path)
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nope.onnx");
        let err = Decoder::load(&path).expect_err("file does not exist");
        match &err {
            Error::ReadModel { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("nope.onnx"), "{err}");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let err = load_bytes(b"this is not a protobuf \xff\xfe\x00\x01").expect_err("garbage");
        assert!(matches!(err, Error::ParseModel { .. }), "{err}");
        assert!(err.to_string().contains("model.onnx"), "{err}");
    }

    #[test]
    fn truncated_protobuf_is_a_parse_error() {
        // Field 7 (ModelProto.graph), length-delimited, announces 100 bytes and holds 3.
        let err = load_bytes(&[0x3a, 100, 0x0a, 0x01, b'x']).expect_err("truncated");
        assert!(matches!(err, Error::ParseModel { .. }), "{err}");
    }

    #[test]
    fn empty_file_is_rejected() {
        // Zero bytes are a valid, empty protobuf message: a model with no graph at all.
        let err = load_bytes(&[]).expect_err("empty model");
        assert!(
            matches!(err, Error::ParseModel { .. } | Error::NotADecoder { .. }),
            "unexpected error: {err}"
        );
    }

    #[test]
    fn directory_is_rejected() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(Decoder::load(dir.path()).is_err());
    }
}
