//! `edge`: runs the exported autoencoders on a Raspberry Pi (or any Linux machine) with tract.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use edge_runtime::{Decoder, Image, ImageFormat, write_atomically};

const EXAMPLES: &str = "\
Examples:
  edge generate --model out/conv-vae/decoder.onnx --latent 0.5,-1.2 --out digit.png";

const GENERATE_EXAMPLES: &str = "\
Examples:
  # One digit:
  edge generate --model out/conv-vae/decoder.onnx --latent 0.5,-1.2 --out digit.png

  # Two digits, written to digits_0.pgm and digits_1.pgm, plus their raw pixels
  # (2 x 784 little-endian f32 values) in digits.f32:
  edge generate --model out/conv-vae/decoder.onnx --latent 0,0 --latent -1,2 --out digits.pgm --raw digits.f32";

/// Runs the exported MNIST autoencoders with tract.
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
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// ONNX decoder written by the exporter (`decoder.onnx` in its output directory).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,

    /// One latent vector as comma-separated numbers, e.g. `0.5,-1.2`; repeat the flag for
    /// several digits. Its length must be the decoder's latent size.
    #[arg(
        long,
        value_name = "V,V,...",
        required = true,
        allow_hyphen_values = true,
        value_parser = Latent::parse
    )]
    latent: Vec<Latent>,

    /// Output image, `.png` or `.pgm`. With several `--latent`s, digit i (counting from 0) is
    /// written to `<stem>_<i>.<ext>` instead, e.g. `digits_0.png`, `digits_1.png`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Also write the pixels of every digit as little-endian f32 values (height x width per
    /// digit, row-major), concatenated in `--latent` order, exactly as the model produced them.
    #[arg(long, value_name = "FILE")]
    raw: Option<PathBuf>,
}

/// A latent vector parsed from the command line.
#[derive(Debug, Clone, PartialEq)]
struct Latent(Vec<f32>);

impl Latent {
    fn parse(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(|part| {
                let part = part.trim();
                if part.is_empty() {
                    return Err("empty value in the list".to_string());
                }
                part.parse::<f32>()
                    .map_err(|_| format!("`{part}` is not a number"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for Latent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => generate(&args),
    }
}

fn generate(args: &GenerateArgs) -> Result<()> {
    // Check the cheap things before loading the model.
    ImageFormat::from_path(&args.out).context("checking --out")?;

    let decoder = Decoder::load(&args.model).context("loading the decoder")?;
    // Decode everything before writing anything: a bad latent leaves no partial output.
    let images = args
        .latent
        .iter()
        .enumerate()
        .map(|(i, latent)| {
            decoder
                .decode(&latent.0)
                .with_context(|| format!("decoding latent {i} ({latent})"))
        })
        .collect::<Result<Vec<Image>>>()?;

    for (image, path) in images.iter().zip(output_paths(&args.out, images.len())) {
        image.save(&path).context("writing an image")?;
        println!("wrote {}", path.display());
    }
    if let Some(raw) = &args.raw {
        let bytes: Vec<u8> = images
            .iter()
            .flat_map(Image::pixels)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_atomically(raw, &bytes).context("writing raw pixels")?;
        println!("wrote {}", raw.display());
    }
    Ok(())
}

/// `out` itself for a single image; `<stem>_<i>.<ext>` beside it for several.
fn output_paths(out: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().unwrap_or_default();
    (0..count)
        .map(|i| {
            let mut name = stem.to_os_string();
            name.push(format!("_{i}"));
            if let Some(extension) = out.extension() {
                name.push(".");
                name.push(extension);
            }
            out.with_file_name(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_latents() {
        assert_eq!(Latent::parse("0.5,-1.2"), Ok(Latent(vec![0.5, -1.2])));
        assert_eq!(Latent::parse(" 1 , 2e-1 "), Ok(Latent(vec![1.0, 0.2])));
        assert_eq!(Latent::parse("3"), Ok(Latent(vec![3.0])));
        assert_eq!(Latent::parse("1,abc"), Err("`abc` is not a number".into()));
        assert_eq!(Latent::parse("1,,2"), Err("empty value in the list".into()));
        assert!(Latent::parse("").is_err());
    }

    #[test]
    fn negative_first_value_is_a_latent_not_a_flag() {
        let cli = Cli::try_parse_from([
            "edge", "generate", "--model", "m.onnx", "--latent", "-1,2", "--latent", "3,-4",
            "--out", "d.png",
        ])
        .expect("valid command line");
        let Command::Generate(args) = cli.command;
        assert_eq!(
            args.latent,
            [Latent(vec![-1.0, 2.0]), Latent(vec![3.0, -4.0])]
        );
    }

    #[test]
    fn names_outputs() {
        assert_eq!(
            output_paths(Path::new("out/digit.png"), 1),
            [PathBuf::from("out/digit.png")]
        );
        assert_eq!(
            output_paths(Path::new("out/digit.png"), 2),
            [
                PathBuf::from("out/digit_0.png"),
                PathBuf::from("out/digit_1.png")
            ]
        );
        assert_eq!(
            output_paths(Path::new("d.x.pgm"), 2)[1],
            PathBuf::from("d.x_1.pgm")
        );
    }
}
