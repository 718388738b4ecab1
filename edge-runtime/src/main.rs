//! `edge`: runs the exported autoencoders on a Raspberry Pi (or any Linux machine) with tract.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::bail;
use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand};
use edge_runtime::frames::{self, FrameFormat};
use edge_runtime::{
    Decoder, Denoiser, Image, ImageFormat, OnnxModel, bench, latents, write_atomically,
};

const EXAMPLES: &str = "\
Examples:
  edge generate --model out/conv-vae/decoder.onnx --latent 0.5,-1.2 --out digit.png
  edge generate --model out/conv-vae/decoder.onnx --grid 10 --sheet grid.png
  rpicam-vid -t 0 --width 640 --height 480 --codec yuv420 -o - \\
    | edge denoise --model out/camera-denoiser/denoiser.onnx --size 640x480 --threads 4 > clean.yuv";

const DENOISE_EXAMPLES: &str = "\
Examples:
  # Camera frames from the Pi camera, denoised on 4 cores, to a file (or pipe them on):
  rpicam-vid -t 10000 --width 640 --height 480 --codec yuv420 -o - \\
    | edge denoise --model out/camera-denoiser/denoiser.onnx --size 640x480 --threads 4 > clean.yuv

  # Until Ctrl-C, to a file: the frames read before it are denoised and kept:
  rpicam-vid -t 0 --width 640 --height 480 --codec yuv420 -o - \\
    | edge denoise --model out/camera-denoiser/denoiser.onnx --size 640x480 --out clean.yuv

  # A recorded 8-bit grayscale stream, from a file to a file:
  edge denoise --model denoiser.onnx --size 320x240 --format gray8 --input noisy.y8 --out clean.y8

  # 100 frames from a V4L2 camera (builds with --features v4l2), as gray8:
  edge denoise --model denoiser.onnx --size 640x480 --device /dev/video0 --format gray8 \\
    --frames 100 > clean.y8

  # Image files (PNG or PGM; color PNGs become grayscale), or every image in a folder:
  edge denoise --model denoiser.onnx photo.png scans/ --out denoised/";

const GENERATE_EXAMPLES: &str = "\
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

const BENCH_EXAMPLES: &str = "\
Examples:
  edge bench --model out/conv-vae/decoder.onnx --runs 500

  # tract and ONNX Runtime side by side (build with --features ort):
  ORT_DYLIB_PATH=/path/to/libonnxruntime.so edge bench --model out/conv-vae/decoder.onnx";

#[derive(Debug, Args)]
struct BenchArgs {
    /// ONNX decoder (or, with --size, denoiser) written by the exporter.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,

    /// Timed calls per runtime.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    runs: u32,

    /// Untimed calls first.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    warmup: u32,

    /// Time a denoiser (the model is then `denoiser.onnx`) on frames of this size, WxH, e.g.
    /// 640x480; repeat for several sizes.
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    size: Vec<(usize, usize)>,

    /// Decoders: latents per call; repeat or separate with commas for several (a decoder
    /// exported with a symbolic batch takes any). A denoiser (`--size`) is timed at batch 1.
    #[arg(long, value_delimiter = ',', default_value = "1", conflicts_with = "size",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: Vec<u32>,

    /// ONNX Runtime shared library (`libonnxruntime.so`) to time next to tract.
    #[cfg(feature = "ort")]
    #[arg(long, value_name = "FILE", env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DenoiseArgs {
    /// ONNX denoiser written by the exporter (`denoiser.onnx`).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,

    /// Image files (.png, .pgm) or folders of them. Without any, a raw frame stream is read
    /// (see --size).
    #[arg(value_name = "IMAGE")]
    images: Vec<PathBuf>,

    /// Frame size of a raw stream, WIDTHxHEIGHT (e.g. 640x480).
    #[arg(long, value_name = "WxH", value_parser = parse_size, conflicts_with = "images")]
    size: Option<(usize, usize)>,

    /// Layout of the raw frames: yuv420 (I420; the luma is denoised, the chroma passed through)
    /// or gray8 [default: yuv420].
    // Both conflict with the images themselves: clap drops a `requires` of --size once an
    // image is given (--size conflicts with them), so `--format` with image files was accepted
    // and ignored. No `default_value`: one would count as given.
    #[arg(long, requires = "size", conflicts_with = "images")]
    format: Option<FrameFormat>,

    /// Raw stream input file, or `-` for stdin [default: -].
    #[arg(
        long,
        value_name = "FILE",
        requires = "size",
        conflicts_with = "images"
    )]
    input: Option<PathBuf>,

    /// Read the stream from a V4L2 camera instead (e.g. /dev/video0), asking it for --size
    /// frames in GREY, YU12 or YUYV; --format is then the output's layout (builds with the
    /// `v4l2` cargo feature, 64-bit Linux).
    #[arg(
        long,
        value_name = "DEVICE",
        requires = "size",
        conflicts_with = "input"
    )]
    device: Option<PathBuf>,

    /// With --device: stop after this many frames [default: run until Ctrl-C].
    #[arg(long, requires = "device")]
    frames: Option<usize>,

    /// Stream: output file or `-` for stdout [default: -]. Images: output folder [default:
    /// denoised], one PNG or PGM per input with its name.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    /// Images: first add Gaussian noise of this standard deviation (8-bit units, e.g. 25) to
    /// simulate a noisy camera; writes `<name>_noisy.<ext>` next to the denoised image and
    /// prints the PSNR of both against the original.
    #[arg(long, value_name = "SIGMA", value_parser = positive, conflicts_with = "size")]
    add_noise: Option<f32>,

    /// Worker threads for a stream (frames in flight, written in order).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    threads: u32,
}

impl DenoiseArgs {
    /// `--format`, or its default.
    fn format(&self) -> FrameFormat {
        self.format.unwrap_or(FrameFormat::Yuv420)
    }

    /// `--input`, or its default (stdin).
    fn input(&self) -> &Path {
        self.input.as_deref().unwrap_or(Path::new("-"))
    }
}

#[derive(Debug, Args)]
struct EncodeArgs {
    /// ONNX encoder written by the exporter (`encoder.onnx`; a VAE's writes the mean).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Image files (.png, .pgm) or folders of them.
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    /// CSV file to write [default: stdout].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UpscaleArgs {
    /// ONNX upscaler written by the exporter (`upscaler.onnx`).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Image files (.png, .pgm) or folders of them: any even width and height for the
    /// exporter's fully convolutional upscaler (a plan per size), else the model's input size.
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    /// Output folder, one image per input with its name.
    #[arg(long, value_name = "DIR", default_value = "upscaled")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct AnomalyArgs {
    /// ONNX encoder (`encoder.onnx`).
    #[arg(long, value_name = "FILE")]
    encoder: PathBuf,
    /// ONNX decoder (`decoder.onnx`) of the same run.
    #[arg(long, value_name = "FILE")]
    decoder: PathBuf,
    /// Image files (.png, .pgm, 28x28) or folders of them.
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    /// Flag images whose score is above this.
    #[arg(long, value_parser = positive)]
    threshold: Option<f32>,
}

/// The images of `files`, each checked to be `width x height` (the model's input).
fn load_sized(file: &Path, (width, height): (usize, usize)) -> Result<Image> {
    let image = Image::load(file)?;
    if (image.width(), image.height()) != (width, height) {
        bail!(
            "{} is {}x{}, the model takes {width}x{height}",
            file.display(),
            image.width(),
            image.height()
        );
    }
    Ok(image)
}

/// `(width, height)` of a model input `[1, 1, H, W]`.
fn image_input(model: &OnnxModel, path: &Path) -> Result<(usize, usize)> {
    match model.input_shape() {
        [1, 1, h, w] => Ok((*w, *h)),
        other => bail!(
            "{} takes {other:?}, not an image [1, 1, H, W]",
            path.display()
        ),
    }
}

fn encode(args: &EncodeArgs) -> Result<()> {
    let model = OnnxModel::load(&args.model, None).context("loading the encoder")?;
    let size = image_input(&model, &args.model)?;
    let mut csv = String::new();
    for file in image_files(&args.images, "encode")? {
        let image = load_sized(&file, size)?;
        let outputs = model
            .run(image.pixels())
            .with_context(|| format!("encoding {}", file.display()))?;
        let latent = outputs.first().context("the encoder has an output")?;
        let values: Vec<String> = latent.iter().map(|v| format!("{v}")).collect();
        csv.push_str(&format!("# {}\n{}\n", file.display(), values.join(",")));
    }
    match &args.out {
        Some(path) => write_atomically(path, csv.as_bytes())?,
        None => print!("{csv}"),
    }
    Ok(())
}

fn upscale(args: &UpscaleArgs) -> Result<()> {
    // A fully convolutional upscaler (symbolic height and width) takes every image at its own
    // size, with one plan per size; a fixed one, images of its size only.
    let declared = OnnxModel::declared_input(&args.model).context("loading the upscaler")?;
    let any_size = matches!(declared[..], [_, Some(1), None, None]);
    let mut models: Vec<((usize, usize), OnnxModel)> = Vec::new();
    if !any_size {
        let model = OnnxModel::load(&args.model, None).context("loading the upscaler")?;
        models.push((image_input(&model, &args.model)?, model));
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let files = image_files(&args.images, "upscale")?;
    for (file, target) in files.iter().zip(targets(&files, &args.out)?) {
        let image = if any_size {
            let image = Image::load(file)?;
            let size = (image.width(), image.height());
            // The model pools its input 2x2 first: an odd side would not come back doubled.
            if size.0 % 2 == 1 || size.1 % 2 == 1 {
                bail!(
                    "{} is {}x{}: the upscaler takes even widths and heights",
                    file.display(),
                    size.0,
                    size.1
                );
            }
            if !models.iter().any(|(s, _)| *s == size) {
                let model = OnnxModel::load(&args.model, Some(&[1, 1, size.1, size.0]))
                    .with_context(|| format!("preparing the upscaler for {}x{}", size.0, size.1))?;
                models.push((size, model));
            }
            image
        } else {
            let size = models
                .first()
                .map(|(s, _)| *s)
                .context("a fixed-size upscaler")?;
            load_sized(file, size)?
        };
        let size = (image.width(), image.height());
        let Some((_, model)) = models.iter().find(|(s, _)| *s == size) else {
            bail!("no upscaler for {}x{}", size.0, size.1);
        };
        let [_, _, h, w] = model
            .output_shapes()
            .first()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        else {
            bail!(
                "{} does not output an image [1, 1, H, W]",
                args.model.display()
            );
        };
        let (h, w) = (*h, *w);
        if (w, h) != (2 * size.0, 2 * size.1) {
            bail!(
                "{} turns {}x{} into {w}x{h}, not twice the size",
                args.model.display(),
                size.0,
                size.1
            );
        }
        let mut outputs = model
            .run(image.pixels())
            .with_context(|| format!("upscaling {}", file.display()))?;
        let pixels = outputs.swap_remove(0);
        Image::new(w, h, pixels)?.save(&target)?;
        println!("{} -> {} ({w}x{h})", file.display(), target.display());
    }
    Ok(())
}

fn anomaly(args: &AnomalyArgs) -> Result<()> {
    let encoder = OnnxModel::load(&args.encoder, None).context("loading the encoder")?;
    let size = image_input(&encoder, &args.encoder)?;
    let decoder = Decoder::load(&args.decoder).context("loading the decoder")?;
    if decoder.image_size() != size {
        bail!(
            "the decoder makes {:?} images, the encoder takes {size:?}",
            decoder.image_size()
        );
    }
    println!("{:>10}  image", "score");
    let mut flagged = 0;
    let files = image_files(&args.images, "score")?;
    for file in &files {
        let image = load_sized(file, size)?;
        let latent = encoder
            .run(image.pixels())
            .with_context(|| format!("encoding {}", file.display()))?
            .into_iter()
            .next()
            .context("the encoder has no output")?;
        // A conditional decoder rebuilds the image as every digit; the best one scores (and
        // names the digit the image looks most like).
        let inputs = match decoder.classes() {
            0 => vec![latent],
            classes => (0..classes)
                .map(|digit| decoder.with_digit(&latent, digit))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("encoding {}", file.display()))?,
        };
        let mut best: Option<(f32, usize)> = None;
        for (digit, input) in inputs.iter().enumerate() {
            let rebuilt = decoder
                .decode(input)
                .with_context(|| format!("decoding {}", file.display()))?;
            let score = image
                .pixels()
                .iter()
                .zip(rebuilt.pixels())
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / image.pixels().len() as f32;
            // NaN (a broken model) wins, so that it is flagged.
            if best.is_none_or(|(b, _)| score.is_nan() || score < b) {
                best = Some((score, digit));
            }
        }
        let (score, digit) = best.context("the decoder rebuilt nothing")?;
        // A NaN score (a broken model) is flagged too.
        let flag = args.threshold.is_some_and(|t| score.is_nan() || score > t);
        flagged += usize::from(flag);
        let looks_like = if decoder.classes() > 0 {
            format!("  (closest digit: {digit})")
        } else {
            String::new()
        };
        println!(
            "{score:>10.5}  {}{looks_like}{}",
            file.display(),
            if flag { "  ANOMALY" } else { "" }
        );
    }
    if let Some(threshold) = args.threshold {
        println!("{flagged} of {} above {threshold}", files.len());
    }
    Ok(())
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

/// Most digits one `generate` decodes.
const MAX_DIGITS: u32 = 10_000;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["latent", "latents", "random", "grid", "morph"])))]
#[command(group(ArgGroup::new("output").required(true).multiple(true).args(["out", "sheet", "raw"])))]
struct GenerateArgs {
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

/// A finite, positive number.
fn positive(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

/// `--span`: a positive number up to 1000 (the prior's latents lie within a few units of 0;
/// far beyond, the grid's arithmetic would overflow to infinities).
fn span(text: &str) -> Result<f32, String> {
    positive(text)
        .ok()
        .filter(|&v| v <= 1000.0)
        .ok_or_else(|| format!("`{text}` is not a half-width from 0 to 1000"))
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

/// Tells glibc's allocator to keep freed large buffers for reuse instead of returning them to
/// the kernel. tract allocates its big per-call buffers (a convolution's im2col patches: ~30 MB
/// for a batch of 64 digits, a few MB for a 640x480 frame) afresh on every call; by default glibc
/// maps each with `mmap` and unmaps it on free, so every call page-faults its buffers in again
/// (a quarter of the time of a batch-64 decode under `perf`). Kept, they are reused: the process
/// holds on to its peak heap instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_buffers() {
    // SAFETY: `mallopt` only sets allocator parameters; it is called first thing in `main`,
    // before any other thread exists. The trim threshold is only set once the mmap threshold was
    // accepted (setting either turns off glibc's adaptive thresholds; one without the other would
    // be worse than the defaults).
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20) == 1 {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_buffers() {}

/// Set by the first SIGINT or SIGTERM once [`stop_on_interrupt`] has run.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The temporary file a stream is writing, as a C string (leaked), which a second signal deletes
/// before it exits: quitting at once keeps nothing, not a file cut inside a frame.
static TEMPORARY_OUTPUT: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// A stream's input that stops waiting for data once the stream is interrupted: the signal may
/// be taken by any thread, so the reader cannot count on its blocking `read` returning `EINTR`.
/// It waits in `poll` for at most a tenth of a second at a time and looks at the flag between.
#[cfg(unix)]
struct Interruptible<R> {
    inner: R,
    fd: std::os::fd::RawFd,
    stop: &'static AtomicBool,
}

#[cfg(unix)]
impl<R: std::io::Read> std::io::Read for Interruptible<R> {
    #[allow(unsafe_code)]
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                // The input ends here: the frame being read, if any, is dropped as cut short.
                return Ok(0);
            }
            let mut fd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid `pollfd`, for the duration of the call.
            match unsafe { libc::poll(&mut fd, 1, 100) } {
                0 => continue,
                n if n < 0 => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                // Data, the end of the input or an error: `read` says which.
                _ => return self.inner.read(buf),
            }
        }
    }
}

/// Makes the first Ctrl-C (SIGINT, or a SIGTERM) end a frame stream cleanly instead of killing
/// the process: the stream takes no further frame, writes every frame it read, and keeps a file
/// `--out` (a camera pipeline is normally stopped this way). A second signal exits at once.
/// Returns the flag the stream watches.
#[cfg(unix)]
#[allow(unsafe_code)]
fn stop_on_interrupt() -> &'static AtomicBool {
    extern "C" fn on_signal(_: libc::c_int) {
        const NOTE: &[u8] = b"interrupted: finishing the frames read so far (again to quit now)\n";
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let temporary = TEMPORARY_OUTPUT.load(std::sync::atomic::Ordering::Relaxed);
            // SAFETY: `unlink` and `_exit` are async-signal-safe; a non-null TEMPORARY_OUTPUT
            // is a leaked, never freed C string.
            unsafe {
                if !temporary.is_null() {
                    libc::unlink(temporary);
                }
                libc::_exit(130)
            };
        }
        // SAFETY: `write` is async-signal-safe; NOTE outlives the call. A failed write is moot.
        unsafe { libc::write(2, NOTE.as_ptr().cast(), NOTE.len()) };
    }
    // SAFETY: the handler only touches atomics and calls `write`, `unlink` and `_exit`, all
    // async-signal-safe.
    // Whichever thread takes the signal, the stream's reader sees the flag within a tenth of a
    // second, even on an input that sends nothing more ([`Interruptible`]).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    &INTERRUPTED
}

#[cfg(not(unix))]
fn stop_on_interrupt() -> &'static AtomicBool {
    &INTERRUPTED
}

/// Has a second signal delete `path` (the stream's temporary output) before the process exits.
#[cfg(unix)]
fn delete_on_second_interrupt(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        TEMPORARY_OUTPUT.store(path.into_raw(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(not(unix))]
fn delete_on_second_interrupt(_: &Path) {}

fn main() -> Result<()> {
    keep_freed_buffers();
    match Cli::parse().command {
        Command::Generate(args) => generate(&args),
        Command::Bench(args) => bench(&args),
        Command::Denoise(args) => denoise(&args),
        Command::Encode(args) => encode(&args),
        Command::Upscale(args) => upscale(&args),
        Command::Anomaly(args) => anomaly(&args),
    }
}

fn denoise(args: &DenoiseArgs) -> Result<()> {
    let Some((width, height)) = args.size else {
        return denoise_images(args);
    };
    let denoiser = Denoiser::load(&args.model, width, height).context("loading the denoiser")?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("-"));
    // A file output is written to a temporary file beside it and renamed when the stream ends:
    // a failed run never leaves half a frame. After a short final frame, or a frame that could
    // not be read or denoised, the frames before it are kept (renamed) and the error reported;
    // after a Ctrl-C, every frame read before it. A failed write removes the file, as does a
    // failure before the first frame was written (an existing output stays as it was). An existing
    // output that is not a regular file (a FIFO, /dev/null, a device) is written in place:
    // renaming over it would replace it.
    let to_stdout = out.as_os_str() == "-";
    let special = !to_stdout && std::fs::metadata(&out).is_ok_and(|m| !m.is_file());
    let temporary = (!to_stdout && !special).then(|| {
        let name = out.file_name().unwrap_or_default().to_string_lossy();
        out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    });
    if temporary.is_some() {
        let same = std::fs::canonicalize(args.input())
            .ok()
            .zip(std::fs::canonicalize(&out).ok())
            .is_some_and(|(a, b)| a == b);
        if same {
            bail!("--out {} is also the input", out.display());
        }
        folder_of(&out)?;
    }
    let stop = stop_on_interrupt();
    let reader = stream_reader(args, (width, height), stop)?;
    let writer: Box<dyn std::io::Write> = match &temporary {
        None if special => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&out)
                .with_context(|| format!("opening {}", out.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
        Some(tmp) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?,
        )),
    };
    if let Some(tmp) = &temporary {
        delete_on_second_interrupt(tmp);
    }
    let start = std::time::Instant::now();
    let result = frames::denoise_stream_until(
        &denoiser,
        args.format(),
        reader,
        writer,
        args.threads as usize,
        stop,
    );
    let seconds = start.elapsed().as_secs_f64();
    if let Some(tmp) = &temporary {
        // Kept whenever every frame before the failure was written whole (a short last frame,
        // a frame that failed to denoise or to be read) and there was one; a failed write
        // leaves a broken file.
        use edge_runtime::Error::{Frame, ReadFrame, ShortFrame};
        let keep = match &result {
            Ok(_) => true,
            Err(ShortFrame { index, .. } | Frame { index, .. } | ReadFrame { index, .. }) => {
                *index > 0
            }
            Err(_) => false,
        };
        if keep {
            // On disk before the rename makes it visible (the stream's writer is flushed).
            std::fs::File::open(tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", tmp.display()))?;
            std::fs::rename(tmp, &out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        } else {
            std::fs::remove_file(tmp).ok();
        }
    }
    match result {
        Ok(summary) => {
            eprintln!(
                "denoised {} frames of {width}x{height} in {seconds:.2}s ({:.1} frames/s){}",
                summary.frames,
                summary.frames as f64 / seconds.max(1e-9),
                if summary.stopped { ", interrupted" } else { "" }
            );
            if summary.stopped {
                // The shell's status for a command ended by SIGINT.
                std::process::exit(130);
            }
            Ok(())
        }
        Err(e) => Err(e).context("denoising the frame stream"),
    }
}

/// Where a raw frame stream comes from: a V4L2 camera (`--device`, cargo feature `v4l2`), stdin
/// or a file.
fn stream_reader(
    args: &DenoiseArgs,
    #[cfg_attr(not(v4l2_camera), expect(unused_variables))] size: (usize, usize),
    stop: &'static AtomicBool,
) -> Result<Box<dyn std::io::Read + Send>> {
    if let Some(device) = &args.device {
        #[cfg(v4l2_camera)]
        {
            let camera =
                edge_runtime::camera::Camera::open(device, size, args.format(), args.frames)?;
            eprintln!(
                "camera {}: {}x{} frames in {:?}",
                device.display(),
                size.0,
                size.1,
                camera.pixels()
            );
            return Ok(Box::new(camera));
        }
        // The flag parses in every build, so that a build without the camera says so.
        #[cfg(not(v4l2_camera))]
        bail!(
            "--device {}: this edge was built without V4L2 camera input (cargo feature `v4l2`, \
             64-bit Linux only); pipe the camera's frames in on stdin instead (`rpicam-vid ... \
             -o - | edge denoise ...`)",
            device.display()
        );
    }
    if args.input().as_os_str() == "-" {
        return Ok(interruptible(unbuffered_stdin()?, stop));
    }
    let file = std::fs::File::open(args.input())
        .with_context(|| format!("opening {}", args.input().display()))?;
    Ok(interruptible(file, stop))
}

/// Standard input without `Stdin`'s buffer, which would hold bytes `poll` on the descriptor
/// cannot see ([`Interruptible`]); frames are read whole, so the buffer saves nothing.
#[cfg(unix)]
fn unbuffered_stdin() -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("reading standard input")?;
    Ok(std::fs::File::from(fd))
}

#[cfg(not(unix))]
fn unbuffered_stdin() -> Result<std::io::Stdin> {
    Ok(std::io::stdin())
}

/// `input`, made to stop waiting once `stop` is set ([`Interruptible`]).
#[cfg(unix)]
fn interruptible<R>(input: R, stop: &'static AtomicBool) -> Box<dyn std::io::Read + Send>
where
    R: std::io::Read + std::os::fd::AsRawFd + Send + 'static,
{
    let fd = input.as_raw_fd();
    Box::new(Interruptible {
        inner: input,
        fd,
        stop,
    })
}

#[cfg(not(unix))]
fn interruptible<R>(input: R, _: &'static AtomicBool) -> Box<dyn std::io::Read + Send>
where
    R: std::io::Read + Send + 'static,
{
    Box::new(input)
}

/// The image files named on the command line, folders expanded (sorted, .png and .pgm only).
fn image_files(inputs: &[PathBuf], verb: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading folder {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && ImageFormat::from_path(p).is_ok())
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        bail!("no images to {verb}: name image files or folders");
    }
    Ok(files)
}

/// Where each of `files` is written in the folder `out` (under its own file name), refusing to
/// overwrite an input or to write two inputs to one file.
fn targets(files: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let inputs = canonical(files);
    let mut taken = std::collections::HashSet::new();
    files
        .iter()
        .map(|file| {
            let target = out.join(file.file_name().context("an image file has a name")?);
            if !taken.insert(target.clone()) {
                bail!(
                    "two inputs named {} would both be written to {}",
                    target.file_name().unwrap_or_default().to_string_lossy(),
                    target.display()
                );
            }
            if std::fs::canonicalize(&target).is_ok_and(|t| inputs.contains(&t)) {
                bail!(
                    "{} would overwrite an input: choose another --out folder",
                    target.display()
                );
            }
            Ok(target)
        })
        .collect()
}

/// The files that exist, as canonical paths (to tell whether an output would overwrite one).
fn canonical(files: &[PathBuf]) -> std::collections::HashSet<PathBuf> {
    files
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect()
}

fn denoise_images(args: &DenoiseArgs) -> Result<()> {
    if args.images.is_empty() {
        bail!("no images to denoise: name image files or folders, or give --size for a raw stream");
    }
    let files = image_files(&args.images, "denoise")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("denoised"));
    if out.as_os_str() == "-" {
        bail!(
            "--out - (stdout) is for a raw stream (--size): image files are denoised into a folder"
        );
    }
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} is a file: image files are denoised into a folder",
            out.display()
        );
    }
    let created = !out.exists();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let result = denoise_files(args, &files, &out);
    if result.is_err() && created {
        // Only if nothing was written into it (`remove_dir` leaves a folder with files).
        std::fs::remove_dir(&out).ok();
    }
    result
}

/// `denoise_images` once its output folder `out` exists: each of `files` denoised into it. An
/// image that cannot be read is reported and skipped (an error at the end); a model that
/// cannot be loaded or run, or an output that cannot be written, stops the run.
fn denoise_files(args: &DenoiseArgs, files: &[PathBuf], out: &Path) -> Result<()> {
    let targets = targets(files, out)?;
    // With --add-noise each image also writes its noisy copy: that name must not be another
    // image's output or an input either.
    let noisy: Vec<PathBuf> = match args.add_noise {
        Some(_) => targets
            .iter()
            .map(|t| noisy_path(t))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let inputs = canonical(files);
    for path in &noisy {
        let input = std::fs::canonicalize(path).is_ok_and(|p| inputs.contains(&p));
        if targets.contains(path) || input {
            bail!(
                "the noisy copy {} would overwrite another image: rename it or choose another --out folder",
                path.display()
            );
        }
    }
    // One plan per frame size, optimised on first use.
    let mut plans: std::collections::HashMap<(usize, usize), Denoiser> = Default::default();
    let mut skipped = 0;
    for (index, (file, target)) in files.iter().zip(targets).enumerate() {
        let original = match Image::load(file) {
            Ok(image) => image,
            Err(e) => {
                eprintln!("skipped: {e}");
                skipped += 1;
                continue;
            }
        };
        let image = match args.add_noise {
            Some(sigma) => with_noise(&original, sigma, index as u64)?,
            None => original.clone(),
        };
        let size = (image.width(), image.height());
        let denoiser = match plans.entry(size) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                Denoiser::load(&args.model, size.0, size.1).with_context(|| {
                    format!(
                        "loading the denoiser for {} ({}x{})",
                        file.display(),
                        size.0,
                        size.1
                    )
                })?,
            ),
        };
        let clean = denoiser
            .denoise(&image)
            .with_context(|| format!("denoising {}", file.display()))?;
        clean.save(&target)?;
        if let Some(noisy_path) = noisy.get(index) {
            image.save(noisy_path)?;
            println!(
                "{} -> {} ({:.2} dB) and {} ({:.2} dB), PSNR against the original",
                file.display(),
                noisy_path.display(),
                psnr(&image, &original),
                target.display(),
                psnr(&clean, &original)
            );
        } else {
            println!("{} -> {}", file.display(), target.display());
        }
    }
    if skipped == files.len() {
        bail!("none of the {skipped} image(s) could be read (above)");
    }
    if skipped > 0 {
        bail!(
            "{skipped} of {} images could not be read (above); the others are denoised",
            files.len()
        );
    }
    Ok(())
}

/// Where `denoise --add-noise` writes the noisy copy of the image denoised into `target`:
/// `<name>_noisy.<ext>` beside it.
fn noisy_path(target: &Path) -> Result<PathBuf> {
    Ok(target.with_file_name(format!(
        "{}_noisy.{}",
        target.file_stem().unwrap_or_default().to_string_lossy(),
        ImageFormat::from_path(target)?.extension()
    )))
}

/// `image` plus Gaussian noise of standard deviation `sigma` (8-bit units), seeded, rounded and
/// clipped to 8 bits as a camera frame would be.
fn with_noise(image: &Image, sigma: f32, seed: u64) -> Result<Image> {
    let noise = latents::random_normal(1, image.pixels().len(), seed)
        .pop()
        .unwrap_or_default();
    let pixels = image
        .pixels()
        .iter()
        .zip(noise)
        .map(|(&p, n)| (p * 255.0 + sigma * n).round().clamp(0.0, 255.0) / 255.0)
        .collect();
    Ok(Image::new(image.width(), image.height(), pixels)?)
}

/// PSNR of the 8-bit pixels of `a` against `b`, in dB.
fn psnr(a: &Image, b: &Image) -> f64 {
    let (a, b) = (a.to_gray8(), b.to_gray8());
    let mse = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    10.0 * (255.0f64.powi(2) / mse).log10()
}

/// The `bench` table's header; `input` names the second column, `rate` the last.
fn print_header(input: &str, rate: &str) {
    println!(
        "{:<12} {input:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {rate:>10}",
        "runtime", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms"
    );
}

/// One row of the `bench` table: `runtime` on `input` (a batch size or a frame size); each call
/// handles `items` digits or frames.
fn print_row(runtime: &str, input: &str, stats: &bench::Stats, items: usize) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!(
        "{runtime:<12} {input:>8} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10.1}",
        stats.runs,
        ms(stats.p50),
        ms(stats.p90),
        ms(stats.p99),
        ms(stats.mean),
        stats.per_second() * items as f64
    );
}

/// `bench` for a denoiser: frames of each size, noisy gray values, with tract (and ORT).
fn bench_denoiser(args: &BenchArgs) -> Result<()> {
    let (runs, warmup) = (args.runs as usize, args.warmup as usize);
    println!(
        "{}: denoiser, batch 1, {runs} timed frames after {warmup}",
        args.model.display()
    );
    print_header("frame", "frames/s");
    for &(width, height) in &args.size {
        let denoiser =
            Denoiser::load(&args.model, width, height).context("loading the denoiser")?;
        let frame: Vec<u8> = (0..width * height)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut out = vec![0u8; width * height];
        let stats = bench::measure(warmup, runs, || denoiser.denoise_gray8(&frame, &mut out))
            .context("running the denoiser with tract")?;
        if let Some(stats) = stats {
            print_row("tract", &format!("{width}x{height}"), &stats, 1);
        }
        #[cfg(feature = "ort")]
        if let Some(dylib) = &args.ort_dylib {
            // The model's input as tract gets it, reflect padding included: the same work. (The
            // tract row also times the 8-bit conversions, the mirroring and the crop.)
            let input = denoiser.model_input_gray8(&frame)?;
            let (input_width, input_height) = denoiser.model_input_size();
            let stats = ort_bench::measure(
                &args.model,
                dylib,
                &[input],
                &[1, 1, input_height, input_width],
                warmup,
                runs,
            )
            .context("running the denoiser with ONNX Runtime")?;
            if let Some(stats) = stats {
                print_row("onnxruntime", &format!("{width}x{height}"), &stats, 1);
            }
        }
    }
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    // Without the feature `--ort-dylib` does not exist, and the variable would go unread.
    #[cfg(not(feature = "ort"))]
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        eprintln!(
            "note: ORT_DYLIB_PATH is set, but this `edge` was built without the `ort` feature: \
             timing tract only (build with `--features ort` for ONNX Runtime beside it)"
        );
    }
    if !args.size.is_empty() {
        return bench_denoiser(args);
    }
    let decoder = Decoder::load(&args.model).context("loading the decoder")?;
    let (runs, warmup) = (args.runs as usize, args.warmup as usize);
    let d = decoder.latent_dim();
    // The same latents for every runtime: samples of the prior, cycled.
    let latents = latents::random_normal(64, d, 0);
    println!(
        "{}: latent {d} -> {}x{} image, {runs} timed calls after {warmup}",
        args.model.display(),
        decoder.image_size().0,
        decoder.image_size().1,
    );
    print_header("batch", "digits/s");
    for &batch in &args.batch {
        let batch = batch as usize;
        // `batch` latents per call, taken in turn from the 64.
        let batches: Vec<Vec<f32>> = (0..latents.len())
            .map(|i| {
                (0..batch)
                    .flat_map(|j| latents[(i + j) % latents.len()].iter().copied())
                    .collect()
            })
            .collect();
        let stats = if batch == 1 {
            // The library's own API for one digit.
            let mut next = latents.iter().cycle();
            bench::measure(warmup, runs, || {
                let z = next.next().map_or(&[][..], Vec::as_slice);
                decoder.decode(z).map(drop)
            })
        } else {
            let model = OnnxModel::load(&args.model, Some(&[batch, d]))
                .with_context(|| format!("optimising the decoder for batch {batch}"))?;
            let mut next = batches.iter().cycle();
            bench::measure(warmup, runs, || {
                let z = next.next().map_or(&[][..], Vec::as_slice);
                model.run(z).map(drop)
            })
        }
        .context("running the decoder with tract")?;
        if let Some(stats) = stats {
            print_row("tract", &batch.to_string(), &stats, batch);
        }
        #[cfg(feature = "ort")]
        if let Some(dylib) = &args.ort_dylib {
            let stats = ort_bench::measure(&args.model, dylib, &batches, &[batch, d], warmup, runs)
                .context("running the decoder with ONNX Runtime")?;
            if let Some(stats) = stats {
                print_row("onnxruntime", &batch.to_string(), &stats, batch);
            }
        }
    }
    Ok(())
}

/// ONNX Runtime on the same decoder, for `bench`.
#[cfg(feature = "ort")]
mod ort_bench {
    use std::path::Path;

    use anyhow::Result;
    use edge_runtime::bench;

    /// Times ONNX Runtime on `inputs` of `shape`, cycled.
    pub fn measure(
        model: &Path,
        dylib: &Path,
        inputs: &[Vec<f32>],
        shape: &[usize],
        warmup: usize,
        runs: usize,
    ) -> Result<Option<bench::Stats>> {
        // ONNX Runtime allows one environment per process: made on first use, then shared.
        static ENV: std::sync::OnceLock<Result<ort::environment::Environment, String>> =
            std::sync::OnceLock::new();
        let env = ENV
            .get_or_init(|| {
                let failed =
                    |e: String| format!("loading ONNX Runtime from {}: {e}", dylib.display());
                ort::init_from(dylib)
                    .map_err(|e| failed(e.to_string()))?
                    .build()
                    .map_err(|e| failed(e.to_string()))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // One intra-op thread, like tract: a fair single-core comparison.
        let mut session = ort::session::Session::builder(env)?
            .with_intra_threads(1)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .commit_from_file(model)?;
        let mut next = inputs.iter().cycle();
        bench::measure(warmup, runs, || -> Result<()> {
            let z = next.next().cloned().unwrap_or_default();
            let input = ort::value::Tensor::from_array((shape.to_vec(), z.into_boxed_slice()))?;
            let outputs = session.run(ort::inputs![input])?;
            outputs[0].try_extract_tensor::<f32>()?;
            Ok(())
        })
    }
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

fn generate(args: &GenerateArgs) -> Result<()> {
    check_companions(args)?;
    // Check the cheap things before loading the model.
    for path in [&args.out, &args.sheet].into_iter().flatten() {
        ImageFormat::from_path(path).context("checking the output file name")?;
    }
    let decoder = Decoder::load(&args.model).context("loading the decoder")?;
    let (latents, natural_columns) = latents(args, &decoder)?;
    if latents.len() > MAX_DIGITS as usize {
        bail!("{} latents: at most {MAX_DIGITS} per run", latents.len());
    }
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

    for (image, path) in images.iter().zip(&digit_paths) {
        image.save(path).context("writing an image")?;
        println!("wrote {}", path.display());
    }
    if let Some((path, tiled)) = sheet {
        tiled.save(path).context("writing the contact sheet")?;
        println!("wrote {} ({} digits)", path.display(), images.len());
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
            bail!("--grid walks the 2-d latent plane, but this decoder takes {dim} values");
        }
        let span = args.span.unwrap_or(2.0);
        return Ok((latents::grid(side as usize, span), side as usize));
    }
    if let [from, to] = args.morph.as_slice() {
        let steps = args.steps.unwrap_or(8) as usize;
        let latents = latents::morph(&from.0, &to.0, steps).context("--morph")?;
        return Ok((latents, steps));
    }
    bail!("no latents: give --latent, --latents, --random, --grid or --morph")
}

/// Checks that the folder a file is to be written into is there, as a folder.
fn folder_of(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) if !d.exists() => bail!("the folder of {} does not exist", path.display()),
        Some(d) if !d.is_dir() => {
            bail!(
                "cannot write {}: {} is not a folder",
                path.display(),
                d.display()
            )
        }
        _ => Ok(()),
    }
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

#[cfg(test)]
#[macro_use]
#[path = "../../tests/src/readme.rs"]
mod readme;

#[cfg(test)]
readme_commands_parse!(super::Cli, "edge-runtime", "edge", 11, ["ort", "v4l2"]);
