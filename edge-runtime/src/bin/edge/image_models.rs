//! `edge encode`, `edge upscale` and `edge anomaly`: digit images through the exported encoder,
//! upscaler, and encoder then decoder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use edge_runtime::{Decoder, Image, OnnxModel, write_atomically};

use crate::files::{distinct_outputs, image_files, into_output_folder, targets};
use crate::positive;

#[derive(Debug, Args)]
pub(crate) struct EncodeArgs {
    /// ONNX encoder written by the exporter (`encoder.onnx`; a VAE's writes the mean).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Image files (.png, .pgm) or folders of them.
    #[arg(value_name = "IMAGE", required = true)]
    images: Vec<PathBuf>,
    /// CSV file to write, or `-` for stdout [default: -].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct UpscaleArgs {
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
pub(crate) struct AnomalyArgs {
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

pub(crate) fn encode(args: &EncodeArgs) -> Result<()> {
    let model = OnnxModel::load(&args.model, None).context("loading the encoder")?;
    let size = image_input(&model, &args.model)?;
    // An encoder's first output is the latent vector, [1, N]; an image out (a denoiser, an
    // upscaler) is another kind of model.
    if let Some(shape) = model.output_shapes().first().filter(|s| s.len() != 2) {
        bail!(
            "{} gives {shape:?}, not a latent vector [1, N]: it is not an encoder",
            args.model.display()
        );
    }
    let files = image_files(&args.images, "encode")?;
    // `--out -` is stdout, as for `denoise`'s stream (not a file named `-`).
    let out = args.out.as_deref().filter(|out| out.as_os_str() != "-");
    if let Some(out) = out {
        let inputs: Vec<&Path> = std::iter::once(args.model.as_path())
            .chain(files.iter().map(PathBuf::as_path))
            .collect();
        distinct_outputs(&[("--out", out)], &inputs)?;
    }
    let mut csv = String::new();
    for file in files {
        let image = load_sized(&file, size)?;
        let outputs = model
            .run(image.pixels())
            .with_context(|| format!("encoding {}", file.display()))?;
        let latent = outputs.first().context("the encoder has an output")?;
        let values: Vec<String> = latent.iter().map(|v| format!("{v}")).collect();
        csv.push_str(&format!("# {}\n{}\n", file.display(), values.join(",")));
    }
    match out {
        Some(path) => write_atomically(path, csv.as_bytes())?,
        None => machine::out!("{csv}"),
    }
    Ok(())
}

pub(crate) fn upscale(args: &UpscaleArgs) -> Result<()> {
    // A fully convolutional upscaler (symbolic height and width) takes every image at its own
    // size, with one plan per size; a fixed one, images of its size only.
    let declared = OnnxModel::declared_input(&args.model).context("loading the upscaler")?;
    let any_size = matches!(declared[..], [_, Some(1), None, None]);
    let mut models: Vec<((usize, usize), OnnxModel)> = Vec::new();
    if !any_size {
        let model = OnnxModel::load(&args.model, None).context("loading the upscaler")?;
        models.push((image_input(&model, &args.model)?, model));
    }
    let files = image_files(&args.images, "upscale")?;
    into_output_folder(&args.out, "upscaled", |out| {
        upscale_files(args, &files, out, any_size, models)
    })
}

/// `upscale` once its output folder `out` exists: each of `files` upscaled into it, by a model
/// of `models` for its size (made here for each new size when the upscaler takes `any_size`).
fn upscale_files(
    args: &UpscaleArgs,
    files: &[PathBuf],
    out: &Path,
    any_size: bool,
    mut models: Vec<((usize, usize), OnnxModel)>,
) -> Result<()> {
    for (file, target) in files.iter().zip(targets(files, out)?) {
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
        let [1, 1, h, w] = model
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
        // At the input's depth: a 16-bit image comes out with its 16 bits.
        Image::new(w, h, pixels)?
            .with_depth(image.depth())
            .save(&target)?;
        machine::outln!("{} -> {} ({w}x{h})", file.display(), target.display());
    }
    Ok(())
}

pub(crate) fn anomaly(args: &AnomalyArgs) -> Result<()> {
    let encoder = OnnxModel::load(&args.encoder, None).context("loading the encoder")?;
    let size = image_input(&encoder, &args.encoder)?;
    let decoder = Decoder::load(&args.decoder).context("loading the decoder")?;
    if decoder.image_size() != size {
        bail!(
            "the decoder makes {:?} images, the encoder takes {size:?}",
            decoder.image_size()
        );
    }
    // Said once, before the first image: the encoder's latent must be the decoder's (less a
    // conditional decoder's one-hot digit).
    let style = decoder.latent_dim() - decoder.classes();
    let encoded: usize = encoder
        .output_shapes()
        .first()
        .map_or(0, |s| s.iter().product());
    if encoded != style {
        let digit = match decoder.classes() {
            0 => String::new(),
            classes => format!(" (and a one-hot digit of {classes})"),
        };
        bail!(
            "the encoder makes latents of {encoded} values, the decoder takes {style}{digit}: \
             they are not from one run"
        );
    }
    machine::outln!("{:>10}  image", "score");
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
        machine::outln!(
            "{score:>10.5}  {}{looks_like}{}",
            file.display(),
            if flag { "  ANOMALY" } else { "" }
        );
    }
    if let Some(threshold) = args.threshold {
        machine::outln!("{flagged} of {} above {threshold}", files.len());
    }
    Ok(())
}
