//! Loading an exported ONNX denoiser with tract and cleaning camera frames with it.
//!
//! The denoiser is fully convolutional with stride 1 (`noisy [B, 1, H, W] -> denoised
//! [B, 1, H, W]`, symbolic `B`, `H`, `W`), so frames need no padding to a stride: the plan is
//! optimised once for the frame size given at load time. When the exporter recorded a
//! `reflect_padding` of `b` pixels in the model's metadata (the camera denoiser's receptive-field
//! radius), each frame is mirrored outwards by `b` pixels on every side on its way into the
//! model and the output cropped back, so the pixels near the edges are denoised like the rest
//! instead of seeing the convolutions' zero padding (the trainer measures its PSNR that way).
//!
//! A frame whose tensors would not fit in the memory is denoised in strips of rows instead, each
//! run with `b` rows of context above and below it: every output pixel sees what it sees in the
//! whole frame, so the result is the same while the memory grows with the strip.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

use crate::{Error, Image};

/// An optimised tract plan for frames of one size, with its execution state and input buffer
/// kept between frames.
pub struct Denoiser {
    plan: Arc<TypedRunnableModel>,
    /// Execution state and the input tensor, reused by every frame.
    state: Mutex<(TypedSimpleState, Option<Tensor>)>,
    width: usize,
    height: usize,
    /// Pixels mirrored onto each side of a frame before the model (the metadata's
    /// `reflect_padding`; 0 without it).
    border: usize,
    /// Frame rows the plan denoises per run: `height` (the whole frame), or fewer when the
    /// frame is denoised in strips ([`Denoiser::strip_rows`]).
    rows: usize,
    /// Bytes the plan's tensors hold at once in a run (a lower bound; 0 if unknown).
    tensor_bytes: u64,
}

/// Longest frame side a denoiser takes (a 16K frame; any sensor's is smaller). It keeps every
/// buffer size far from overflow, on 32-bit targets too.
pub const MAX_FRAME_SIDE: usize = 16_384;

/// Largest `reflect_padding` a model's metadata may ask for.
pub const MAX_REFLECT_PADDING: usize = 1024;

impl Denoiser {
    /// Loads the ONNX denoiser at `path` and optimises it for `width x height` frames: whole,
    /// or, when the whole frame's tensors would take more than half the memory the process can
    /// get ([`crate::available_bytes`]), in strips of rows that take at most a quarter of it
    /// (each strip with the model's context above and below it, so the pixels come out as the
    /// whole frame's would; [`Denoiser::load_in_strips`]). A model without `reflect_padding`
    /// metadata (its context unknown) is always run on whole frames.
    ///
    /// # Errors
    /// - [`Error::FrameSize`]: a side of 0 or above [`MAX_FRAME_SIDE`];
    /// - [`Error::ReadModel`] / [`Error::ParseModel`]: missing, unreadable or not ONNX;
    /// - [`Error::NotADecoder`] (the interface check): not one input and one output, an output
    ///   that is not the input's shape, or a `reflect_padding` that is not a count of pixels up
    ///   to `MAX_REFLECT_PADDING` (1,024);
    /// - [`Error::PrepareModel`]: tract cannot type or optimise it for that size (e.g. a model
    ///   with a fixed size other than the frame's).
    /// - [`Error::Memory`]: even a strip of one row (a whole frame, for a model without
    ///   `reflect_padding`) needs more memory than the process can get.
    pub fn load(path: impl AsRef<Path>, width: usize, height: usize) -> Result<Self, Error> {
        Self::load_with(path.as_ref(), width, height, Strips::Fit { workers: 1 })
    }

    /// [`Denoiser::load`] for `workers` running at once, each with its own tensors (a stream's
    /// [`Denoiser::worker`]s): the memory is shared among them when the strips are chosen.
    ///
    /// # Errors
    /// As [`Denoiser::load`].
    pub fn load_for_workers(
        path: impl AsRef<Path>,
        width: usize,
        height: usize,
        workers: usize,
    ) -> Result<Self, Error> {
        let workers = workers.max(1);
        Self::load_with(path.as_ref(), width, height, Strips::Fit { workers })
    }

    /// [`Denoiser::load`] denoising each frame in strips of `rows` rows (the last strip ends at
    /// the frame's last row, overlapping the one before it), each run with the model's context
    /// (`reflect_padding` rows) above and below, so every output pixel sees what it sees in the
    /// whole frame. The tensors then grow with the strip instead of the frame. `rows` at least
    /// the frame's height denoises it whole.
    ///
    /// # Errors
    /// As [`Denoiser::load`], [`Error::Memory`] when a strip of `rows` needs more memory than
    /// the process can get, and [`Error::NotADecoder`] for strips shorter than the frame of a
    /// model without `reflect_padding` metadata (its reach unknown, its strips would not join
    /// like the whole frame).
    pub fn load_in_strips(
        path: impl AsRef<Path>,
        width: usize,
        height: usize,
        rows: NonZeroUsize,
    ) -> Result<Self, Error> {
        Self::load_with(path.as_ref(), width, height, Strips::Rows(rows.get()))
    }

    /// [`Denoiser::load`], [`Denoiser::load_for_workers`] and [`Denoiser::load_in_strips`].
    fn load_with(path: &Path, width: usize, height: usize, strips: Strips) -> Result<Self, Error> {
        if !(1..=MAX_FRAME_SIDE).contains(&width) || !(1..=MAX_FRAME_SIDE).contains(&height) {
            return Err(Error::FrameSize { width, height });
        }
        let model = crate::onnx::read(path)?;
        let not_a_denoiser = |reason: String| Error::NotADecoder {
            path: path.into(),
            reason: format!("as a denoiser: {reason}"),
        };
        let prepare_failed = |e: TractError| Error::PrepareModel {
            path: path.into(),
            source: e.into(),
        };
        let inputs = model.input_outlets().map_err(prepare_failed)?.len();
        let outputs = model.output_outlets().map_err(prepare_failed)?.len();
        if inputs != 1 || outputs != 1 {
            return Err(not_a_denoiser(format!(
                "it has {inputs} inputs and {outputs} outputs, a denoiser has 1 and 1"
            )));
        }
        // A model declared for other inputs (a decoder's latent vectors) is named as such here,
        // not by tract's shape analysis failing deep inside it; one made for one size (the MNIST
        // denoising AE: 28x28 digits), below, not by its output's shape coming out wrong.
        let fixed_size = {
            use tract_onnx::tract_hir::infer::Factoid;
            let declared = model.input_fact(0).map_err(prepare_failed)?;
            let dim = |i: usize| declared.shape.dims().nth(i).and_then(|d| d.concretize());
            let rank = declared.shape.rank().concretize();
            let gray = !matches!(dim(1), Some(TDim::Val(c)) if c != 1);
            if rank.is_some_and(|r| r != 4) || !gray {
                return Err(not_a_denoiser(format!(
                    "its input is declared as {:?}, a denoiser takes gray frames [N, 1, H, W]",
                    declared.shape
                )));
            }
            let side = |i: usize| match dim(i) {
                Some(TDim::Val(v)) => usize::try_from(v).ok(),
                _ => None,
            };
            side(3).zip(side(2))
        };
        // Without `reflect_padding` the model's reach is unknown: a frame is then denoised whole
        // (strips would read zero padding where their neighbours' rows are, and show seams).
        let reach = match crate::onnx::metadata_count(&model, "reflect_padding") {
            None => None,
            Some(count) => Some(count.filter(|&b| b <= MAX_REFLECT_PADDING).ok_or_else(|| {
                not_a_denoiser(format!(
                    "its metadata `reflect_padding` is not a pixel count up to \
                         {MAX_REFLECT_PADDING}"
                ))
            })?),
        };
        let border = reach.unwrap_or(0);
        if let Strips::Rows(rows) = strips
            && rows < height
            && reach.is_none()
        {
            return Err(not_a_denoiser(
                "it has no `reflect_padding` metadata (the exporter's reach of the network), so \
                 its strips would not join like the whole frame: denoise whole frames"
                    .into(),
            ));
        }
        if let Some((w, h)) = fixed_size
            && (w, h) != (width + 2 * border, height + 2 * border)
        {
            // The model sees the frame with its mirrored border.
            let (w, h) = (w.saturating_sub(2 * border), h.saturating_sub(2 * border));
            return Err(not_a_denoiser(format!(
                "it takes {w}x{h} images only, not {width}x{height}"
            )));
        }
        // The plan for `rows` frame rows at a time, its context mirrored onto every side.
        let plan_for = |rows: usize| -> Result<(Arc<TypedRunnableModel>, u64), Error> {
            let (padded_width, padded_height) = (width + 2 * border, rows + 2 * border);
            let typed = model
                .clone()
                .with_input_fact(0, f32::fact([1, 1, padded_height, padded_width]).into())
                .and_then(crate::convolution::optimize)
                .map_err(prepare_failed)?;
            let output = typed.output_fact(0).map_err(prepare_failed)?;
            let expected: TVec<TDim> = tvec![
                1.into(),
                1.into(),
                padded_height.into(),
                padded_width.into()
            ];
            if output.shape.to_tvec() != expected {
                return Err(not_a_denoiser(format!(
                    "output 0 is {:?} for a [1, 1, {padded_height}, {padded_width}] input",
                    output.shape
                )));
            }
            let plan = typed.into_runnable().map_err(prepare_failed)?;
            let bytes = crate::memory::plan_tensor_bytes(&plan).unwrap_or(0);
            Ok((plan, bytes))
        };
        let mut rows = match strips {
            Strips::Rows(rows) => rows.min(height),
            Strips::Fit { .. } => height,
        };
        let (mut plan, mut tensor_bytes) = plan_for(rows)?;
        if let Strips::Fit { workers } = strips
            && reach.is_some()
        {
            // Each worker's share of the memory.
            let share = crate::memory::available_bytes().map(|a| a / workers as u64);
            let fitting = rows_that_fit(tensor_bytes, height + 2 * border, border, share);
            if let Some(strip) = fitting.filter(|&strip| strip < height) {
                (plan, tensor_bytes) = plan_for(strip)?;
                rows = strip;
            }
        }
        crate::memory::ensure_fits(tensor_bytes, || {
            let whole = if rows == height {
                String::new()
            } else {
                format!(" in strips of {rows} rows")
            };
            format!(
                "{} on {width}x{height} frames{whole} (with the {border}-pixel mirrored border)",
                path.display()
            )
        })?;
        let state = plan.spawn().map_err(prepare_failed)?;
        Ok(Self {
            plan,
            state: Mutex::new((state, None)),
            width,
            height,
            border,
            rows,
            tensor_bytes,
        })
    }

    /// Another denoiser sharing this one's optimised plan, with its own state and buffers: one
    /// per worker thread.
    ///
    /// # Errors
    /// [`Error::Inference`] if tract cannot create a state.
    pub fn worker(&self) -> Result<Self, Error> {
        let state = self
            .plan
            .spawn()
            .map_err(|e| Error::Inference { source: e.into() })?;
        Ok(Self {
            plan: self.plan.clone(),
            state: Mutex::new((state, None)),
            width: self.width,
            height: self.height,
            border: self.border,
            rows: self.rows,
            tensor_bytes: self.tensor_bytes,
        })
    }

    /// Bytes the plan's tensors hold at once while a frame is denoised (0 when tract cannot
    /// tell): what each worker needs on top of the model, a lower bound (the convolutions'
    /// scratch buffers and the allocator's overhead come on top).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_bytes
    }

    /// Frame rows denoised per run of the plan: the frame's height, or fewer when it is
    /// denoised in strips ([`Denoiser::load_in_strips`]).
    pub fn strip_rows(&self) -> usize {
        self.rows
    }

    /// Size `(width, height)` of the frames it takes.
    pub fn frame_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Pixels mirrored onto each side of a frame before the model (its metadata's
    /// `reflect_padding`, 0 without).
    pub fn reflect_padding(&self) -> usize {
        self.border
    }

    /// Size `(width, height)` of the model's input for the whole frame: the frame with the
    /// reflect padding on every side (denoised in strips, each run takes a band of it).
    pub fn model_input_size(&self) -> (usize, usize) {
        (self.width + 2 * self.border, self.height + 2 * self.border)
    }

    /// What [`Denoiser::denoise_gray8`] hands the model for `frame`: its pixels scaled to
    /// `[0, 1]` and mirrored outwards by the reflect padding, row-major, of
    /// [`Denoiser::model_input_size`]. For running the same model elsewhere on the same input
    /// (`edge bench`'s ONNX Runtime comparison).
    ///
    /// # Errors
    /// [`Error::PixelCount`] for a frame of the wrong size.
    pub fn model_input_gray8(&self, frame: &[u8]) -> Result<Vec<f32>, Error> {
        if frame.len() != self.width * self.height {
            return Err(self.size_error(frame.len()));
        }
        let (width, height) = self.model_input_size();
        let mut input = vec![0.0; width * height];
        self.fill_mirrored(&mut input, 0, |i| frame[i] as f32 * (1.0 / 255.0));
        Ok(input)
    }

    /// Denoises an 8-bit grayscale frame (`width * height` bytes, row-major) into `out` (same
    /// size), rounding to 8 bits.
    ///
    /// # Errors
    /// [`Error::PixelCount`] for a frame or output buffer of the wrong size, [`Error::Inference`]
    /// if tract fails or the model's output is not finite. After an error `out` may hold the
    /// strips denoised before it.
    pub fn denoise_gray8(&self, frame: &[u8], out: &mut [u8]) -> Result<(), Error> {
        self.run(
            frame.len(),
            |i| frame[i] as f32 * (1.0 / 255.0),
            out.len(),
            |first, values| {
                for (o, v) in out[first..].iter_mut().zip(values) {
                    *o = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            },
        )
    }

    /// Denoises a grayscale image of the frame size into one of the same [`crate::Depth`].
    ///
    /// # Errors
    /// [`Error::ImageSize`] for an image of another size, [`Error::Memory`] when its output and
    /// a run's tensors need more memory than the process can get, [`Error::Inference`] if tract
    /// fails or the model's output is not finite.
    pub fn denoise(&self, image: &Image) -> Result<Image, Error> {
        if (image.width(), image.height()) != (self.width, self.height) {
            return Err(Error::ImageSize {
                width: image.width(),
                height: image.height(),
                frame_width: self.width,
                frame_height: self.height,
            });
        }
        // The clean image's f32 pixels next to a run's tensors: too many for the memory is an
        // error here, not the kernel's OOM killer (or an abort under `ulimit -v`) later.
        let output = (self.width * self.height) as u64 * 4;
        crate::memory::ensure_fits(output.saturating_add(self.tensor_bytes), || {
            format!("denoising a {}x{} image", self.width, self.height)
        })?;
        let mut pixels = vec![0.0; self.width * self.height];
        self.run(
            image.pixels().len(),
            |i| image.pixels()[i],
            pixels.len(),
            |first, values| {
                for (o, v) in pixels[first..].iter_mut().zip(values) {
                    *o = v.clamp(0.0, 1.0);
                }
            },
        )?;
        Ok(Image::new(self.width, self.height, pixels)?.with_depth(image.depth()))
    }

    fn size_error(&self, actual: usize) -> Error {
        Error::PixelCount {
            width: self.width,
            height: self.height,
            actual,
        }
    }

    /// Fills the reused input tensor with the frame (`pixel(i)` is its value at row-major index
    /// `i`), mirrored outwards by the border, runs the plan, and hands the output, cropped back
    /// to the frame, to `take`: once for the whole frame, or once per strip, with the index of
    /// the strip's first pixel in the frame.
    fn run(
        &self,
        input_len: usize,
        pixel: impl Fn(usize) -> f32,
        output_len: usize,
        take: impl FnMut(usize, &mut dyn Iterator<Item = f32>),
    ) -> Result<(), Error> {
        crate::onnx::catch_inference_panic(|| {
            self.run_unguarded(input_len, pixel, output_len, take)
        })
    }

    /// [`Denoiser::run`], a panic inside it not caught.
    fn run_unguarded(
        &self,
        input_len: usize,
        pixel: impl Fn(usize) -> f32,
        output_len: usize,
        mut take: impl FnMut(usize, &mut dyn Iterator<Item = f32>),
    ) -> Result<(), Error> {
        let pixels = self.width * self.height;
        if input_len != pixels {
            return Err(self.size_error(input_len));
        }
        if output_len != pixels {
            return Err(self.size_error(output_len));
        }
        let inference_failed = |e: TractError| Error::Inference { source: e.into() };
        let mut guard = crate::onnx::lock_state(&self.state, || {
            self.plan.spawn().ok().map(|fresh| (fresh, None))
        });
        let (state, buffer) = &mut *guard;
        let (b, w, h, rows) = (self.border, self.width, self.height, self.rows);
        let padded_width = w + 2 * b;
        let mut next = 0;
        while next < h {
            // The last strip ends at the frame's last row, overlapping the one before it.
            let top = next.min(h - rows);
            next = top + rows;
            let mut input = match buffer.take() {
                Some(tensor) => tensor,
                None => Tensor::zero::<f32>(&[1, 1, rows + 2 * b, padded_width])
                    .map_err(inference_failed)?,
            };
            {
                let mut view = input
                    .to_plain_array_view_mut::<f32>()
                    .map_err(inference_failed)?;
                let slice = view.as_slice_mut().ok_or_else(|| {
                    inference_failed(anyhow::anyhow!("the input tensor is not contiguous"))
                })?;
                self.fill_mirrored(slice, top, &pixel);
            }
            let value = input.into_tvalue();
            let outputs = state.run(tvec!(value.clone())).map_err(inference_failed)?;
            // tract has let go of the input by now: keep its buffer for the next run.
            *buffer = Some(value.into_tensor());
            let output = outputs
                .first()
                .ok_or_else(|| inference_failed(anyhow::anyhow!("the plan returned no output")))?;
            let view = output
                .to_plain_array_view::<f32>()
                .map_err(inference_failed)?;
            let values = view.as_slice().ok_or_else(|| {
                inference_failed(anyhow::anyhow!("the output tensor is not contiguous"))
            })?;
            let cropped = || {
                values
                    .chunks_exact(padded_width)
                    .skip(b)
                    .take(rows)
                    .flat_map(|row| row[b..b + w].iter().copied())
            };
            // A NaN would come out as a black pixel without a word.
            if let Some(at) = cropped().position(|v| !v.is_finite()) {
                return Err(inference_failed(anyhow::anyhow!(
                    "the model's output at pixel ({}, {}) is not a finite number",
                    at % w,
                    top + at / w
                )));
            }
            take(top * w, &mut cropped());
        }
        Ok(())
    }

    /// Writes frame rows from `top` on (`pixel(i)` is the frame's value at row-major index `i`),
    /// mirrored outwards by the border, into `input`: row `y` of `input` is row `top + y - border`
    /// of the frame (mirrored where that lies outside it), and each row has the border's
    /// mirrored columns on both sides. With `top` 0 and the whole frame's rows, it is the
    /// model's input of [`Denoiser::model_input_size`].
    fn fill_mirrored(&self, input: &mut [f32], top: usize, pixel: impl Fn(usize) -> f32) {
        let (b, w, h) = (self.border, self.width, self.height);
        for (y, row) in input.chunks_exact_mut(w + 2 * b).enumerate() {
            let source = mirror((top + y) as isize - b as isize, h) * w;
            let (left, rest) = row.split_at_mut(b);
            let (middle, right) = rest.split_at_mut(w);
            for (x, v) in middle.iter_mut().enumerate() {
                *v = pixel(source + x);
            }
            for (x, v) in left.iter_mut().enumerate() {
                *v = middle[mirror(x as isize - b as isize, w)];
            }
            for (x, v) in right.iter_mut().enumerate() {
                *v = middle[mirror((w + x) as isize, w)];
            }
        }
    }
}

/// How [`Denoiser::load_with`] cuts frames into strips of rows.
#[derive(Clone, Copy)]
enum Strips {
    /// The whole frame when it fits in the memory `workers` share, else strips that do.
    Fit { workers: usize },
    /// Strips of this many rows (the whole frame from its height on).
    Rows(usize),
}

/// Frame rows per strip when the whole frame's tensors (`whole_bytes` for `padded_height` rows,
/// the frame's and its border's) take more than half of the `available` memory: as many as
/// take at most a quarter of it, with the `border` rows of context above and below each strip
/// (at least one row; [`crate::memory::ensure_fits`] then judges it). `None`: the whole frame,
/// or nothing is known of the memory.
fn rows_that_fit(
    whole_bytes: u64,
    padded_height: usize,
    border: usize,
    available: Option<u64>,
) -> Option<usize> {
    let available = available?;
    if whole_bytes <= available / 2 {
        return None;
    }
    let per_row = whole_bytes.div_ceil(padded_height.max(1) as u64).max(1);
    let rows = usize::try_from((available / 4) / per_row).unwrap_or(usize::MAX);
    Some(rows.saturating_sub(2 * border).max(1))
}

/// Index `i`, which may lie outside `0..n`, mirrored into `0..n` about the edge pixels (`-1` to
/// `1`, `n` to `n - 2`, as ONNX `Pad` mode `reflect`), folding again for offsets past the far
/// side. Every index of a 1-pixel side is 0.
fn mirror(i: isize, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let j = i.rem_euclid(period);
    (if j < n as isize { j } else { period - j }) as usize
}

impl std::fmt::Debug for Denoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denoiser")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("strip_rows", &self.rows)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::rows_that_fit;

    #[test]
    fn strips_are_taken_only_when_the_whole_frame_would_take_half_the_memory() {
        const MB: u64 = 1 << 20;
        // 100 MB for 1,020 padded rows (about 0.1 MB a row), border 10.
        let whole = 100 * MB;
        assert_eq!(rows_that_fit(whole, 1020, 10, None), None);
        assert_eq!(rows_that_fit(whole, 1020, 10, Some(200 * MB)), None);
        // 150 MB available: a quarter (37.5 MB) holds 382 rows, 362 of them the strip's own.
        assert_eq!(rows_that_fit(whole, 1020, 10, Some(150 * MB)), Some(362));
        // Next to no memory: one row, which the memory check then judges.
        assert_eq!(rows_that_fit(whole, 1020, 10, Some(MB)), Some(1));
    }
}
