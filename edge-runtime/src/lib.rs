//! Runs the exported MNIST autoencoders with [tract] on small Linux devices (Raspberry Pi).
//!
//! The trainer and exporter produce ONNX files; this crate loads them, checks that each has the
//! interface its role needs, optimises it once (tract's optimiser, with rewrites of our own for
//! the images these models see: a one-pass `DepthToSpace`, zero padding as a copy ahead of
//! narrow convolutions, a batch of images convolved side by side as one wide image, and on
//! x86-64 and aarch64 a direct convolution of our own; BENCHMARKS.md), and runs it: a
//! [`Decoder`] turns latent vectors into grayscale digit images (written as PNG or PGM), a
//! [`Denoiser`] cleans camera frames of a size fixed at load time (one by one or as a stream,
//! [`frames`]; in strips of rows when a whole frame's tensors would not fit in the memory), and
//! an [`OnnxModel`] runs encoders and upscalers. Work too large for the memory is an
//! [`Error::Memory`] before anything is allocated, not a process the kernel kills.
//!
//! ```no_run
//! use edge_runtime::Decoder;
//!
//! # fn main() -> Result<(), edge_runtime::Error> {
//! let decoder = Decoder::load("out/conv-vae/decoder.onnx")?;
//! let image = decoder.decode(&vec![0.0; decoder.latent_dim()])?;
//! image.save("digit.png")?; // or .pgm; written atomically
//! # Ok(())
//! # }
//! ```
//!
//! # The decoder contract
//! One input, `f32 [1, D]` or `f32 [N, D]` with a symbolic batch `N` (fixed to 1 at load time);
//! one output, `f32 [1, 1, H, W]`, values in `[0, 1]` for the trained models. Inputs and outputs
//! are found by position, not by name. Anything else is reported as [`Error::NotADecoder`]. A
//! conditional decoder's metadata `classes` says how many of its `D` inputs are a one-hot digit
//! ([`Decoder::with_digit`]).
//!
//! # Portability
//! Nothing here is specific to a CPU: the same code is tested on x86_64 and, through
//! `qemu-aarch64 -cpu cortex-a72`, on the aarch64 build that runs on a Pi (see the workspace's
//! `.cargo/config.toml`). One speed choice differs by CPU, not the results (within float
//! rounding): on x86-64 with AVX2 and FMA and on aarch64, convolutions with rows of 32 points or
//! more (on x86-64 also any with at most 4 output channels) run on this crate's own direct
//! kernel (`direct_conv`, the one module with SIMD intrinsics); other CPUs (armv7) run tract's.
//!
//! [tract]: https://github.com/sonos/tract
#![warn(missing_docs)]

pub mod bench;
pub mod camera;
mod convolution;
mod decoder;
mod denoiser;
mod depth_to_space;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod direct_conv;
mod error;
pub mod frames;
mod image;
pub mod latents;
mod memory;
mod model;
mod onnx;

pub use decoder::Decoder;
pub use denoiser::{Denoiser, MAX_FRAME_SIDE};
pub use error::{Error, TractFailure};
pub use image::{Depth, Image, ImageFormat, write_atomically};
pub use machine::available_bytes;
pub use model::OnnxModel;
