//! Portable core of the firmware: the q8 model format, the int8 decoder and the renderer.
//!
//! `no_std`, no heap: every buffer is statically sized. The same code runs on the host (tests, and
//! the exporter, which uses it to measure quantization error) and on the microcontroller.
//!
//! - [`q8`]: the versioned int8 model blob (spec in `firmware/core/Q8.md`), parsed zero-copy.
//! - [`decoder`]: int8 kernels and the decode loop (latent -> 28x28 grayscale digit).
//! - [`render`]: draws a digit and a caption on any embedded-graphics `DrawTarget`, and a 128x64
//!   monochrome framebuffer in SSD1306 page layout that can be dumped as a PBM image.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]

pub mod decoder;
#[cfg(arm_dsp)]
mod dsp;
pub mod fold;
pub mod q8;
pub mod render;
