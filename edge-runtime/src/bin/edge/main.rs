//! `edge`: runs the exported autoencoders on a Raspberry Pi (or any Linux machine) with tract.
//!
//! One module per subcommand: `generate`, `denoise` (with `signals` for Ctrl-C on a stream),
//! `image_models` (`encode`, `upscale`, `anomaly`) and `bench`; `files` finds the images they
//! read and checks the paths they write. The work itself is the `edge_runtime` library's.

mod bench;
mod denoise;
mod files;
mod generate;
mod image_models;
mod signals;

use anyhow::Result;
use clap::{Parser, Subcommand};

use bench::{BENCH_EXAMPLES, BenchArgs};
use denoise::{DENOISE_EXAMPLES, DenoiseArgs};
use generate::{GENERATE_EXAMPLES, GenerateArgs};
use image_models::{AnomalyArgs, EncodeArgs, UpscaleArgs};

const EXAMPLES: &str = "\
Examples:
  edge generate --model out/conv-vae/decoder.onnx --latent 0.5,-1.2 --out digit.png
  edge generate --model out/conv-vae/decoder.onnx --grid 10 --sheet grid.png
  rpicam-vid -t 0 --width 640 --height 480 --codec yuv420 -o - \\
    | edge denoise --model out/camera-denoiser/denoiser.onnx --size 640x480 --threads 4 > clean.yuv";

/// Runs the exported autoencoders with tract: MNIST digits, and the camera-frame denoiser on
/// photographs and frame streams.
#[derive(Debug, Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decodes latent vectors into digit images with an ONNX decoder.
    #[command(after_help = GENERATE_EXAMPLES)]
    Generate(GenerateArgs),
    /// Denoises camera frames (a raw YUV 4:2:0 or gray stream, as `rpicam-vid --codec yuv420`
    /// writes it) or image files with the camera-frame denoiser.
    #[command(after_help = DENOISE_EXAMPLES)]
    Denoise(DenoiseArgs),
    /// Encodes digit images (PNG/PGM, 28x28) into latent vectors with an exported encoder: CSV,
    /// one vector per line after a `# file` comment (what `generate --latents` reads).
    Encode(EncodeArgs),
    /// Upscales low-resolution digit images to twice their size with an exported upscaler (the
    /// super-resolution AE's: 14x14 to 28x28; a fully convolutional one takes any even size).
    Upscale(UpscaleArgs),
    /// Scores images by how badly an autoencoder rebuilds them (mean squared pixel error through
    /// encoder.onnx then decoder.onnx): digits it learned score low, anything else high. A
    /// conditional decoder rebuilds each image as every digit; the best scores and is named.
    Anomaly(AnomalyArgs),
    /// Times a decoder (digits per second) or, with --size, a denoiser (frames per second):
    /// latency percentiles with tract and (when built with the `ort` feature and given the
    /// library) ONNX Runtime on the same inputs.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
}

fn main() -> Result<()> {
    machine::keep_freed_buffers();
    match Cli::parse().command {
        Command::Generate(args) => generate::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Denoise(args) => denoise::run(&args),
        Command::Encode(args) => image_models::encode(&args),
        Command::Upscale(args) => image_models::upscale(&args),
        Command::Anomaly(args) => image_models::anomaly(&args),
    }
}

/// `WIDTHxHEIGHT`, both at least 1.
fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let parsed = text.split_once(['x', 'X']).and_then(|(w, h)| {
        Some((
            w.trim().parse::<usize>().ok()?,
            h.trim().parse::<usize>().ok()?,
        ))
    });
    let side = 1..=edge_runtime::MAX_FRAME_SIDE;
    match parsed {
        Some((w, h)) if side.contains(&w) && side.contains(&h) => Ok((w, h)),
        Some(_) => Err(format!(
            "`{text}`: each side must be 1 to {} pixels",
            edge_runtime::MAX_FRAME_SIDE
        )),
        None => Err(format!("`{text}` is not a size like 640x480")),
    }
}

/// A finite, positive number.
fn positive(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}

#[cfg(test)]
#[macro_use]
#[path = "../../../../tests/src/readme.rs"]
mod readme;

#[cfg(test)]
readme_commands_parse!(super::Cli, "edge-runtime", "edge", 12, ["ort", "v4l2"]);
