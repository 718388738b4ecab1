//! Trains the project's autoencoders on MNIST with Burn and writes run directories.
//!
//! - [`data`]: the MNIST IDX loader (checksums, headers, sizes);
//! - [`model`]: the model families (dense, convolutional, denoising and super-resolution AEs,
//!   fully-connected and convolutional VAEs) and their losses;
//! - [`natural`]: the photographs the camera-frame denoiser learns from;
//! - [`quality`]: PSNR and SSIM;
//! - [`training`]: the training loop, on one device or data parallel (a batch's shards on
//!   several GPUs, or at once on the CPU's cores);
//! - [`optim`]: Adam, fused into one pass per parameter on the CPU;
//! - [`average`]: the weight averaging of `--ema`;
//! - [`run`]: the run directory (config, weights, metrics) and how to load it back;
//! - [`memory`]: what a training step allocates, measured, so a batch too large for the machine
//!   is refused before the run starts.
//!
//! Training runs on Burn's `flex` CPU backend by default; the `cuda` and `wgpu` features add GPU
//! devices.
#![warn(missing_docs)]

pub mod average;
pub mod data;
pub mod memory;
pub mod model;
pub mod natural;
pub mod optim;
pub mod pca;
pub mod pictures;
pub mod quality;
pub mod rng;
pub mod run;
pub mod training;
