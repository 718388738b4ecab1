//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// A failure from tract, with its chain of causes (tract reports errors as `anyhow::Error`).
pub type TractFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while loading a model, decoding a latent or writing an image.
///
/// Bad input (a missing or corrupt file, a graph of the wrong shape, a latent of the wrong length,
/// an unknown file extension) always ends up here; nothing in this crate panics on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model file could not be opened or read.
    #[error("cannot read model file {path}")]
    ReadModel {
        /// The model file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },

    /// The file is not an ONNX model tract can parse (garbage, truncated, unsupported operator).
    #[error("cannot parse ONNX model {path}")]
    ParseModel {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        #[source]
        source: TractFailure,
    },

    /// The model parsed, but its inputs or outputs do not fit the role it was loaded for (a
    /// decoder, a denoiser, a model with one input); `reason` names the role.
    #[error("{path} cannot be used {reason}")]
    NotADecoder {
        /// The model file.
        path: PathBuf,
        /// What is wrong with the graph's interface.
        reason: String,
    },

    /// tract could not type-check or optimise the graph for the fixed input shape.
    #[error("cannot prepare model {path} for inference")]
    PrepareModel {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        #[source]
        source: TractFailure,
    },

    /// A latent vector does not have as many values as the decoder's input.
    #[error("latent has {actual} values but the decoder expects {expected}")]
    LatentLength {
        /// The decoder's latent size.
        expected: usize,
        /// The number of values given.
        actual: usize,
    },

    /// The two ends of a morph differ in length.
    #[error("a morph needs two latents of the same length: {from} values, then {to}")]
    MorphLengths {
        /// Values of the latent it starts from.
        from: usize,
        /// Values of the latent it ends at.
        to: usize,
    },

    /// A digit asked of a decoder that is not conditional, or outside its classes.
    #[error("{reason}")]
    Digit {
        /// What is wrong.
        reason: String,
    },

    /// An input with the wrong number of values for the model.
    #[error("the model takes {expected} input values, got {actual}")]
    InputLength {
        /// Values the model's input has.
        expected: usize,
        /// Values given.
        actual: usize,
    },

    /// A latent vector holds NaN or an infinity.
    #[error("latent value #{index} is {value}, not a finite number")]
    NonFiniteLatent {
        /// Position of the value in the latent vector.
        index: usize,
        /// The offending value.
        value: f32,
    },

    /// tract failed while running the graph.
    #[error("inference failed")]
    Inference {
        /// tract's explanation.
        #[source]
        source: TractFailure,
    },

    /// A frame size a denoiser cannot take: a side of 0 or above [`crate::MAX_FRAME_SIDE`].
    #[error("a {width}x{height} frame: each side must be 1 to {max} pixels", max = crate::MAX_FRAME_SIDE)]
    FrameSize {
        /// Frame width.
        width: usize,
        /// Frame height.
        height: usize,
    },

    /// Pixel data whose length does not match the image size.
    #[error("a {width}x{height} image cannot hold {actual} pixels")]
    PixelCount {
        /// Image width.
        width: usize,
        /// Image height.
        height: usize,
        /// Number of pixels given.
        actual: usize,
    },

    /// An image of another size than the frames a [`crate::Denoiser`] was loaded for.
    #[error(
        "a {width}x{height} image given to a denoiser made for {frame_width}x{frame_height} frames"
    )]
    ImageSize {
        /// The image's width.
        width: usize,
        /// The image's height.
        height: usize,
        /// The frames' width.
        frame_width: usize,
        /// The frames' height.
        frame_height: usize,
    },

    /// A file of latent vectors could not be read or parsed.
    #[error("cannot read latents from {path}: {reason}")]
    LatentFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line or position where it applies.
        reason: String,
    },

    /// Images of different sizes were given to [`crate::Image::tile`].
    #[error("cannot tile images of different sizes ({first} and {other})")]
    MixedSizes {
        /// Size of the first image, `WxH`.
        first: String,
        /// Size of the first image that differs, `WxH`.
        other: String,
    },

    /// The image file name has no extension this crate knows how to write.
    #[error("cannot tell the image format of {path}: use a .png or .pgm extension")]
    UnknownImageFormat {
        /// The requested file.
        path: PathBuf,
    },

    /// An image file could not be read or decoded.
    #[error("cannot read image {path}: {reason}")]
    ReadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A frame stream ended inside a frame. Every complete frame before it was processed.
    #[error("frame {index} is short: {got} of its {expected} bytes before the end of the stream")]
    ShortFrame {
        /// Index of the incomplete frame, from 0.
        index: usize,
        /// Bytes a frame has.
        expected: usize,
        /// Bytes read.
        got: usize,
    },

    /// Denoising a frame of a stream failed. Every frame before it was written.
    #[error("denoising frame {index} failed ({index} frames written before it)")]
    Frame {
        /// Index of the frame, from 0.
        index: usize,
        /// Why.
        #[source]
        source: Box<Error>,
    },

    /// Reading a frame of a stream failed (an I/O error, a camera buffer short of a frame).
    /// Every frame before it was written.
    #[error("reading frame {index} of the stream failed ({index} frames written before it)")]
    ReadFrame {
        /// Index of the frame, from 0.
        index: usize,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Writing a frame stream failed, or its frame buffers do not fit in memory.
    #[error("frame stream {what}")]
    Stream {
        /// `writing frame N` or `buffers: N frames of M bytes`.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A V4L2 camera could not be opened, set up or read (cargo feature `v4l2`).
    #[error("camera {path} {what}")]
    Camera {
        /// The device, e.g. `/dev/video0`.
        path: PathBuf,
        /// What went wrong, e.g. `cannot open` or `offers none of GREY, YU12, YUYV`.
        what: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// Running a model on an input this large needs more memory than the process can get
    /// ([`crate::available_bytes`]): refused up front, where Linux would let the allocations
    /// succeed and then end the process without a word when the memory runs out.
    #[error(
        "{what} needs at least {} of memory at once, more than the {} this process can get \
         (free memory and swap, within its cgroup and `ulimit -v` limits)",
        crate::memory::human(*.needed),
        crate::memory::human(*.available)
    )]
    Memory {
        /// The model and its input, e.g. `denoiser.onnx on 16404x16404 frames`.
        what: String,
        /// Bytes it needs at once (a lower bound: the tensors and, for a stream, the frames).
        needed: u64,
        /// Bytes available.
        available: u64,
    },

    /// An output file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// Why (PNG encoding errors are reported as [`io::ErrorKind::Other`]).
        #[source]
        source: io::Error,
    },
}

/// `text` as an error message quotes it: whole up to 40 characters, else its first 40 and an
/// ellipsis (a token of a broken file can be megabytes long).
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn excerpt_shortens_long_text_on_a_character_boundary() {
        assert_eq!(super::excerpt("1.5x"), "1.5x");
        let long = "\u{e9}".repeat(100);
        assert_eq!(super::excerpt(&long), format!("{}...", "\u{e9}".repeat(40)));
    }
}
