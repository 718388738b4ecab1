//! `edge generate`: latent vectors (given, read from a file, random, a grid or a morph) decoded
//! into digit images, contact sheets and raw pixels.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args};
use edge_runtime::{Decoder, Image, ImageFormat, latents};

use crate::files::{distinct_outputs, folder_of};
use crate::positive;

pub(crate) const GENERATE_EXAMPLES: &str = "\
Examples:
  # One digit:
  edge generate --model out/conv-vae/decoder.onnx --latent 0.5,-1.2 --out digit.png

  # Two digits, written to digits_0.pgm and digits_1.pgm, plus their raw pixels
  # (2 x 784 little-endian f32 values) in digits.f32:
  edge generate --model out/conv-vae/decoder.onnx --latent 0,0 --latent -1,2 --out digits.pgm --raw digits.f32

  # A 10 x 10 walk over the 2-d latent plane, from -2 to 2 on both axes, as one contact sheet:
  edge generate --model out/conv-vae/decoder.onnx --grid 10 --span 2 --sheet grid.png

  # 16 samples of the prior N(0, I), and a 12-step morph from one digit to another:
  edge generate --model out/conv-vae/decoder.onnx --random 16 --seed 7 --sheet samples.png
  edge generate --model out/conv-vae/decoder.onnx --morph -1.5,1 1.5,-1 --steps 12 --sheet morph.png

  # Latents from a file: CSV (one vector per line) or JSON ([[0.5, -1.2], [0, 0]]):
  edge generate --model out/conv-vae/decoder.onnx --latents z.csv --out digit.png

  # A conditional decoder (trainer train conv-vae --conditional): 16 sevens in random styles:
  edge generate --model out/cvae/decoder.onnx --digit 7 --random 16 --sheet sevens.png";

/// Most digits one `generate` decodes.
const MAX_DIGITS: u32 = 10_000;
/// Digits in a `--morph` without `--steps`.
const DEFAULT_STEPS: u32 = 8;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["latent", "latents", "random", "grid", "morph"])))]
#[command(group(ArgGroup::new("output").required(true).multiple(true).args(["out", "sheet", "raw"])))]
pub(crate) struct GenerateArgs {
    /// ONNX decoder written by the exporter (`decoder.onnx` in its output directory).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,

    /// One latent vector as comma-separated numbers, e.g. `0.5,-1.2`; repeat the flag for
    /// several digits. Its length must be the decoder's latent size.
    #[arg(
        long,
        value_name = "V,V,...",
        allow_hyphen_values = true,
        value_parser = Latent::parse
    )]
    latent: Vec<Latent>,

    /// Latent vectors from a file: `.csv` (one vector per line, comma-separated; blank lines and
    /// `#` comments skipped) or `.json` (an array of arrays of numbers).
    #[arg(long, value_name = "FILE")]
    latents: Option<PathBuf>,

    /// N latents drawn from the VAE's prior N(0, I), reproducible with `--seed`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_DIGITS as i64))]
    random: Option<u32>,

    /// Seed of `--random` [default: 0].
    #[arg(long)]
    seed: Option<u64>,

    /// An N x N grid over the 2-d latent plane (2-d decoders only), row by row from the top
    /// left: z0 from -SPAN to SPAN, z1 from SPAN to -SPAN.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    grid: Option<u32>,

    /// Half-width of `--grid` on both axes, at most 1000 [default: 2].
    #[arg(long, value_name = "SPAN", value_parser = span)]
    span: Option<f32>,

    /// A morph: `--steps` digits on the straight line from the latent FROM to the latent TO
    /// (both included).
    #[arg(
        long,
        num_args = 2,
        value_names = ["FROM", "TO"],
        allow_hyphen_values = true,
        value_parser = Latent::parse
    )]
    morph: Vec<Latent>,

    /// Digits in `--morph` [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=1000))]
    steps: Option<u32>,

    /// Conditional decoders (`trainer train conv-vae --conditional`): the digit to draw. Every
    /// latent then holds the style alone; the digit's one-hot vector is appended to it.
    #[arg(long, value_name = "0-9", value_parser = clap::value_parser!(u8).range(0..=9))]
    digit: Option<u8>,

    /// Output image, `.png` or `.pgm`. With several digits, digit i (counting from 0) is written
    /// to `<stem>_<i>.<ext>` instead, e.g. `digits_0.png`, `digits_1.png`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// One contact sheet of all the digits, `.png` or `.pgm`: left to right, top to bottom.
    #[arg(long, value_name = "FILE")]
    sheet: Option<PathBuf>,

    /// Digits per row of `--sheet` (default: N for `--grid`, `--steps` for `--morph`, else the
    /// smallest square that holds them all).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    columns: Option<u32>,

    /// Also write the pixels of every digit as little-endian f32 values (height x width per
    /// digit, row-major), concatenated in order, exactly as the model produced them.
    #[arg(long, value_name = "FILE")]
    raw: Option<PathBuf>,
}

/// `--span`: a positive number up to 1000 (the prior's latents lie within a few units of 0;
/// far beyond, the grid's arithmetic would overflow to infinities).
fn span(text: &str) -> Result<f32, String> {
    positive(text)
        .ok()
        .filter(|&v| v <= 1000.0)
        .ok_or_else(|| format!("`{text}` is not a half-width above 0 and at most 1000"))
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
    /// The values, comma-separated; past [`Latent::SHOWN`] of them, those and the count (an
    /// error about a latent of a million values names it in one line).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().take(Self::SHOWN).enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        if self.0.len() > Self::SHOWN {
            write!(f, ",... ({} values)", self.0.len())?;
        }
        Ok(())
    }
}

impl Latent {
    /// Values a [`Latent`] shows when displayed.
    const SHOWN: usize = 8;
}

/// Options that only make sense with another one.
fn check_companions(args: &GenerateArgs) -> Result<()> {
    let pairs = [
        (
            args.seed.is_some(),
            args.random.is_some(),
            "--seed",
            "--random",
        ),
        (args.span.is_some(), args.grid.is_some(), "--span", "--grid"),
        (
            args.steps.is_some(),
            !args.morph.is_empty(),
            "--steps",
            "--morph",
        ),
        (
            args.columns.is_some(),
            args.sheet.is_some(),
            "--columns",
            "--sheet",
        ),
    ];
    for (given, companion, option, needs) in pairs {
        if given && !companion {
            bail!("{option} only applies with {needs}");
        }
    }
    Ok(())
}

/// Refuses a run whose `digits` (kept until all are decoded, with a sheet and the raw values
/// when asked for) need more memory than the process can get: said, not ended by the kernel's
/// OOM killer. Only a decoder with huge images gets near it: 10,000 28x28 digits are 31 MB of
/// f32 pixels.
fn check_memory(args: &GenerateArgs, decoder: &Decoder, digits: usize) -> Result<()> {
    let (width, height) = decoder.image_size();
    let image = (width as u64).saturating_mul(height as u64);
    let copies = 1 + u64::from(args.sheet.is_some()) + u64::from(args.raw.is_some());
    let needed = (digits as u64)
        .saturating_mul(image.saturating_mul(copies))
        .saturating_mul(4);
    if let Some(available) = edge_runtime::available_bytes().filter(|&a| needed > a) {
        bail!(
            "{digits} digits of {width}x{height} need about {} MB of memory, more than the {} MB \
             this process can get",
            needed / 1_000_000,
            available / 1_000_000
        );
    }
    Ok(())
}

pub(crate) fn run(args: &GenerateArgs) -> Result<()> {
    check_companions(args)?;
    // Check the cheap things before loading the model.
    for path in [&args.out, &args.sheet].into_iter().flatten() {
        ImageFormat::from_path(path).context("checking the output file name")?;
    }
    // The decoder's latent size is bounded by its load; the latents are then few and small.
    let decoder = Decoder::load(&args.model).context("loading the decoder")?;
    let (latents, natural_columns) = latents(args, &decoder)?;
    if latents.len() > MAX_DIGITS as usize {
        bail!("{} latents: at most {MAX_DIGITS} per run", latents.len());
    }
    check_memory(args, &decoder, latents.len())?;
    // Decode everything before writing anything: a bad latent leaves no partial output.
    let images = latents
        .iter()
        .enumerate()
        .map(|(i, latent)| {
            decoder
                .decode(latent)
                .with_context(|| format!("decoding latent {i} ({})", Latent(latent.clone())))
        })
        .collect::<Result<Vec<Image>>>()?;

    // And every output made, and its folder found, before the first is written: a sheet that
    // cannot be tiled or a folder that is not there leaves the other outputs as they were.
    let sheet = match &args.sheet {
        Some(path) => {
            let columns = args.columns.map_or(natural_columns, |c| c as usize);
            let tiled =
                Image::tile(&images, columns, SHEET_GAP).context("tiling the contact sheet")?;
            Some((path, tiled))
        }
        None => None,
    };
    let digit_paths = match &args.out {
        Some(out) => output_paths(out, images.len()),
        None => Vec::new(),
    };
    let every_path = digit_paths
        .iter()
        .chain(sheet.as_ref().map(|(path, _)| *path))
        .chain(&args.raw);
    for path in every_path {
        folder_of(path)?;
    }
    let outputs: Vec<(&str, &Path)> = digit_paths
        .iter()
        .map(|path| ("--out", path.as_path()))
        .chain(sheet.as_ref().map(|(path, _)| ("--sheet", path.as_path())))
        .chain(args.raw.as_deref().map(|path| ("--raw", path)))
        .collect();
    let inputs: Vec<&Path> = std::iter::once(args.model.as_path())
        .chain(args.latents.as_deref())
        .collect();
    distinct_outputs(&outputs, &inputs)?;

    // Every output encoded, then written as one set: all of them or, when the disk fills or a
    // folder is in a file's way, none (the files there before stay as they were).
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::with_capacity(outputs.len());
    for (image, path) in images.iter().zip(&digit_paths) {
        files.push((path.clone(), image.encode_for(path)?));
    }
    if let Some((path, tiled)) = &sheet {
        files.push((path.to_path_buf(), tiled.encode_for(path)?));
    }
    if let Some(raw) = &args.raw {
        let bytes: Vec<u8> = images
            .iter()
            .flat_map(Image::pixels)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        files.push((raw.clone(), bytes));
    }
    machine::write_files(&files).context("writing the outputs")?;
    for path in &digit_paths {
        machine::outln!("wrote {}", path.display());
    }
    if let Some((path, _)) = &sheet {
        let digits = if images.len() == 1 { "digit" } else { "digits" };
        machine::outln!("wrote {} ({} {digits})", path.display(), images.len());
    }
    if let Some(raw) = &args.raw {
        machine::outln!("wrote {}", raw.display());
    }
    Ok(())
}

/// Pixels between the digits of a contact sheet.
const SHEET_GAP: usize = 2;

/// The decoder inputs the arguments ask for, and how many a contact sheet should put on a row:
/// the latents, each with the `--digit`'s one-hot vector appended when one is given.
fn latents(args: &GenerateArgs, decoder: &Decoder) -> Result<(Vec<Vec<f32>>, usize)> {
    let Some(digit) = args.digit else {
        let classes = decoder.classes();
        let generated = args.random.is_some() || args.grid.is_some();
        let needs_digit = || {
            format!(
                "this decoder is conditional: say which digit to draw with --digit (0-{})",
                classes - 1
            )
        };
        if classes > 0 && generated {
            bail!(needs_digit());
        }
        let (latents, columns) = styles(args, decoder.latent_dim())?;
        // Given styles without the digit's one-hot values (the decoder would refuse them as
        // too short): the digit is what is missing.
        let style = decoder.latent_dim() - classes;
        if classes > 0 && latents.iter().any(|l| l.len() == style) {
            bail!("{}: the {style} values given are a style", needs_digit());
        }
        return Ok((latents, columns));
    };
    if decoder.classes() == 0 {
        bail!(
            "--digit needs a conditional decoder (exported from `trainer train conv-vae --conditional`); this one takes a latent alone"
        );
    }
    let (styles, columns) = styles(args, decoder.latent_dim() - decoder.classes())?;
    let inputs = styles
        .iter()
        .map(|style| decoder.with_digit(style, digit.into()))
        .collect::<Result<Vec<_>, _>>()
        .context("appending the digit")?;
    Ok((inputs, columns))
}

/// The latents (of `dim` values where the arguments generate them) the arguments ask for, and
/// how many a contact sheet should put on a row.
fn styles(args: &GenerateArgs, dim: usize) -> Result<(Vec<Vec<f32>>, usize)> {
    let square = |n: usize| (n as f64).sqrt().ceil() as usize;
    if !args.latent.is_empty() {
        let latents: Vec<Vec<f32>> = args.latent.iter().map(|l| l.0.clone()).collect();
        let columns = square(latents.len());
        return Ok((latents, columns));
    }
    if let Some(path) = &args.latents {
        let latents = latents::read_file(path)?;
        let columns = square(latents.len());
        return Ok((latents, columns));
    }
    if let Some(n) = args.random {
        return Ok((
            latents::random_normal(n as usize, dim, args.seed.unwrap_or(0)),
            square(n as usize),
        ));
    }
    if let Some(side) = args.grid {
        if dim != 2 {
            let values = if dim == 1 { "value" } else { "values" };
            bail!("--grid walks the 2-d latent plane, but this decoder takes {dim} {values}");
        }
        let span = args.span.unwrap_or(2.0);
        return Ok((latents::grid(side as usize, span), side as usize));
    }
    if let [from, to] = args.morph.as_slice() {
        let steps = args.steps.unwrap_or(DEFAULT_STEPS) as usize;
        let latents = latents::morph(&from.0, &to.0, steps).context("--morph")?;
        return Ok((latents, steps));
    }
    bail!("no latents: give --latent, --latents, --random, --grid or --morph")
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
    use crate::{Cli, Command};
    use clap::Parser;

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
    fn a_long_latent_is_shown_in_short() {
        assert_eq!(Latent(vec![0.5, -1.0]).to_string(), "0.5,-1");
        let long = Latent((0..2_000_000).map(|i| i as f32).collect());
        assert_eq!(long.to_string(), "0,1,2,3,4,5,6,7,... (2000000 values)");
    }

    #[test]
    fn negative_first_value_is_a_latent_not_a_flag() {
        let cli = Cli::try_parse_from([
            "edge", "generate", "--model", "m.onnx", "--latent", "-1,2", "--latent", "3,-4",
            "--out", "d.png",
        ])
        .expect("valid command line");
        let Command::Generate(args) = cli.command else {
            panic!("not generate");
        };
        assert_eq!(
            args.latent,
            [Latent(vec![-1.0, 2.0]), Latent(vec![3.0, -4.0])]
        );
    }

    fn parse(args: &[&str]) -> Result<GenerateArgs, clap::Error> {
        let full = [&["edge", "generate", "--model", "m.onnx"], args].concat();
        Cli::try_parse_from(full).map(|cli| match cli.command {
            Command::Generate(args) => args,
            _ => panic!("not generate"),
        })
    }

    #[test]
    fn latent_sources_are_exclusive_and_one_is_required() {
        let args = parse(&[
            "--morph", "-1,1", "1,-1", "--steps", "5", "--sheet", "m.png",
        ])
        .expect("morph");
        assert_eq!(
            args.morph,
            [Latent(vec![-1.0, 1.0]), Latent(vec![1.0, -1.0])]
        );
        assert_eq!(args.steps, Some(5));
        let args = parse(&[
            "--grid",
            "4",
            "--span",
            "1.5",
            "--sheet",
            "g.png",
            "--columns",
            "2",
        ])
        .expect("grid");
        assert_eq!(
            (args.grid, args.span, args.columns),
            (Some(4), Some(1.5), Some(2))
        );
        assert!(parse(&["--random", "3", "--raw", "r.f32"]).is_ok());
        assert!(parse(&["--latents", "z.csv", "--out", "d.png"]).is_ok());
        // None, or two at once.
        assert!(parse(&["--out", "d.png"]).is_err());
        assert!(parse(&["--grid", "3", "--random", "2", "--out", "d.png"]).is_err());
        // No output at all.
        assert!(parse(&["--grid", "3"]).is_err());
        // Options that belong to another source or output.
        for extra in [
            ["--seed", "3"],
            ["--span", "1"],
            ["--steps", "3"],
            ["--columns", "3"],
        ] {
            let args = parse(&[&["--latent", "0,0", "--out", "d.png"], &extra[..]].concat())
                .expect("parses");
            let message = check_companions(&args).expect_err("rejected").to_string();
            assert!(message.starts_with(extra[0]), "{message}");
        }
        // Out-of-range counts.
        assert!(parse(&["--random", "0", "--out", "d.png"]).is_err());
        assert!(parse(&["--grid", "101", "--out", "d.png"]).is_err());
        assert!(parse(&["--morph", "0,0", "1,1", "--steps", "1", "--out", "d.png"]).is_err());
        assert!(parse(&["--grid", "3", "--span", "-1", "--out", "d.png"]).is_err());
        assert!(parse(&["--grid", "3", "--span", "inf", "--out", "d.png"]).is_err());
        assert!(parse(&["--grid", "3", "--span", "3e38", "--out", "d.png"]).is_err());
        assert!(parse(&["--grid", "3", "--span", "1000", "--out", "d.png"]).is_ok());
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
