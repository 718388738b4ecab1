//! `edge denoise`: camera frames (a raw stream on stdin, a file or a V4L2 camera) or image files
//! through the camera-frame denoiser.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::Args;
use edge_runtime::frames::{self, FrameFormat};
use edge_runtime::{Denoiser, Depth, Image, ImageFormat, latents};

use crate::files::{canonical, folder_of, image_files, into_output_folder, targets};
use crate::signals::{delete_on_second_interrupt, interruptible, stop_on_interrupt};
use crate::{parse_size, positive};

pub(crate) const DENOISE_EXAMPLES: &str = "\
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

  # Image files (PNG or PGM, 8 or 16 bits, written back at their depth; color PNGs become
  # grayscale), or every image in a folder:
  edge denoise --model denoiser.onnx photo.png scans/ --out denoised/";

#[derive(Debug, Args)]
pub(crate) struct DenoiseArgs {
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
    #[arg(
        long,
        requires = "device",
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
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
    // Clap's conflicts ignore the default: only a --threads given with images is refused.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=64),
        conflicts_with = "images"
    )]
    threads: u32,
}

/// Refuses a stream's output (`written`: its metadata; `name`: how the user named it) that is a
/// file the run reads: its input, also when that is stdin redirected from the file (`<
/// clean.y8`), or its model. The same device and inode, so links and other names of one file
/// are caught too, as is stdout appending to the input (`>> clip.y8`), which would read its own
/// frames back for ever.
fn refuse_to_overwrite_what_is_read(
    args: &DenoiseArgs,
    written: &std::fs::Metadata,
    name: &str,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let same = |m: &std::fs::Metadata| m.dev() == written.dev() && m.ino() == written.ino();
    let input = if args.device.is_some() {
        None
    } else if args.input() == Path::new("-") {
        descriptor_metadata(&std::io::stdin())
    } else {
        std::fs::metadata(args.input()).ok()
    };
    if input.is_some_and(|m| same(&m)) {
        let stdin = if args.input() == Path::new("-") {
            " (stdin)"
        } else {
            ""
        };
        bail!("{name} is also the input{stdin}");
    }
    if std::fs::metadata(&args.model).is_ok_and(|m| same(&m)) {
        bail!("{name} is the model: writing it would destroy it");
    }
    Ok(())
}

/// One of the process's standard streams as a `File` of its own (a duplicated descriptor).
fn descriptor_file(stream: &impl std::os::fd::AsFd) -> std::io::Result<std::fs::File> {
    Ok(std::fs::File::from(stream.as_fd().try_clone_to_owned()?))
}

/// The metadata of the file behind one of the process's standard streams.
fn descriptor_metadata(stream: &impl std::os::fd::AsFd) -> Option<std::fs::Metadata> {
    descriptor_file(stream)
        .and_then(|file| file.metadata())
        .ok()
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

pub(crate) fn run(args: &DenoiseArgs) -> Result<()> {
    let Some((width, height)) = args.size else {
        return denoise_images(args);
    };
    let denoiser = Denoiser::load_for_workers(&args.model, width, height, args.threads as usize)
        .context("loading the denoiser")?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("-"));
    // A file output is written to a temporary file beside it and renamed when the stream ends:
    // a failed run never leaves half a frame. After a short final frame, or a frame that could
    // not be read or denoised, the frames before it are kept (renamed) and the error reported;
    // after a Ctrl-C, every frame read before it. A failed write removes the file, as does a
    // failure or an end of the input before the first frame was written (an existing output
    // stays as it was; an input without a frame is an error, to a file or not). An existing
    // output that is not a regular file (a FIFO, /dev/null, a device) is written in place:
    // renaming over it would replace it; a link's file is replaced, the link stays.
    let to_stdout = out.as_os_str() == "-";
    let destination = (!to_stdout).then(|| machine::destination(&out));
    let special = destination == Some(machine::Destination::WriteInto);
    let renamed_to = match destination {
        Some(machine::Destination::Replace(file)) => Some(file),
        _ => None,
    };
    let temporary = renamed_to.as_deref().map(machine::temporary_path);
    if to_stdout {
        // Only a regular file can be the input or the model (`> clip.y8`, `>> clip.y8`).
        if let Some(stdout) = descriptor_metadata(&std::io::stdout()).filter(|m| m.is_file()) {
            refuse_to_overwrite_what_is_read(args, &stdout, "stdout")?;
        }
    }
    if let Some(file) = &renamed_to {
        // Not there yet: nothing to destroy.
        if let Ok(written) = std::fs::metadata(file) {
            let name = format!("--out {}", out.display());
            refuse_to_overwrite_what_is_read(args, &written, &name)?;
        }
        // Said now, not by the rename after the whole stream.
        if out.is_dir() {
            bail!(
                "--out {} is a folder: name the file to write",
                out.display()
            );
        }
        folder_of(&out)?;
        // What streams killed before their rename left behind (`kill -9`) goes first.
        machine::remove_stale_temporaries(machine::parent_folder(file));
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
        // leaves a broken file. A stream of no frames leaves an existing output as it was.
        use edge_runtime::Error::{Frame, ReadFrame, ShortFrame};
        let keep = match &result {
            Ok(summary) => summary.frames > 0,
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
            let file = renamed_to.as_deref().unwrap_or(&out);
            std::fs::rename(tmp, file)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        } else {
            std::fs::remove_file(tmp).ok();
        }
    }
    match result {
        // An input that ends before its first frame is most likely a camera pipeline that
        // failed (`rpicam-vid ... | edge denoise ...`): said, with a failing status.
        Ok(summary) if summary.frames == 0 && !summary.stopped => bail!(
            "the input ended before its first frame (a {width}x{height} frame is {} bytes): \
             nothing was written",
            args.format().frame_bytes(width, height)
        ),
        Ok(summary) => {
            // A frame too large for the memory whole is denoised in strips: say so.
            let strips = match denoiser.strip_rows() {
                rows if rows < height => format!(", in strips of {rows} rows"),
                _ => String::new(),
            };
            machine::errln!(
                "denoised {} frames of {width}x{height}{strips} in {seconds:.2}s ({:.1} frames/s){}",
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
        // A reader of stdout that has gone (`| head -c ...`) ends the run quietly, with
        // SIGPIPE's status, as the other commands' output does (`machine::outln!`).
        Err(edge_runtime::Error::Stream { what, source })
            if to_stdout
                && what.starts_with("writing")
                && source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            std::process::exit(141)
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
            machine::errln!(
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
/// cannot see ([`crate::signals::interruptible`]); frames are read whole, so the buffer saves
/// nothing.
#[cfg(unix)]
fn unbuffered_stdin() -> Result<std::fs::File> {
    descriptor_file(&std::io::stdin()).context("reading standard input")
}

#[cfg(not(unix))]
fn unbuffered_stdin() -> Result<std::io::Stdin> {
    Ok(std::io::stdin())
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
    into_output_folder(&out, "denoised", |out| denoise_files(args, &files, out))
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
    // (Distinct targets give distinct noisy names: the extension is kept as spelled.)
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
                machine::errln!("skipped: {e}");
                skipped += 1;
                continue;
            }
        };
        let noisy_image = match args.add_noise {
            Some(sigma) => Some(with_noise(&original, sigma, index as u64)?),
            None => None,
        };
        let image = noisy_image.as_ref().unwrap_or(&original);
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
            .denoise(image)
            .with_context(|| format!("denoising {}", file.display()))?;
        // The denoised image and its noisy copy as a pair: both or neither.
        let mut pair = vec![(target.clone(), clean.encode_for(&target)?)];
        if let Some(noisy_path) = noisy.get(index) {
            pair.push((noisy_path.clone(), image.encode_for(noisy_path)?));
        }
        machine::write_files(&pair)?;
        if let Some(noisy_path) = noisy.get(index) {
            machine::outln!(
                "{} -> {} ({:.2} dB) and {} ({:.2} dB), PSNR against the original",
                file.display(),
                noisy_path.display(),
                psnr(image, &original),
                target.display(),
                psnr(&clean, &original)
            );
        } else {
            machine::outln!("{} -> {}", file.display(), target.display());
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
/// `<name>_noisy.<ext>` beside it, `<ext>` spelled as the target's (`a.PNG` and `a.png` are two
/// files on Linux, and so are their copies).
fn noisy_path(target: &Path) -> Result<PathBuf> {
    ImageFormat::from_path(target)?;
    let mut name = target.file_stem().unwrap_or_default().to_os_string();
    name.push("_noisy.");
    name.push(target.extension().unwrap_or_default());
    Ok(target.with_file_name(name))
}

/// `image` plus Gaussian noise of standard deviation `sigma` (8-bit units), seeded and clipped;
/// an 8-bit image's rounded to its levels, as a camera frame would be.
fn with_noise(image: &Image, sigma: f32, seed: u64) -> Result<Image> {
    let noise = latents::random_normal(1, image.pixels().len(), seed)
        .pop()
        .unwrap_or_default();
    let pixels = image
        .pixels()
        .iter()
        .zip(noise)
        .map(|(&p, n)| {
            let level = (p * 255.0 + sigma * n).clamp(0.0, 255.0);
            // An 8-bit image stays on its 256 levels; a 16-bit one is written at its own.
            match image.depth() {
                Depth::Eight => level.round() / 255.0,
                Depth::Sixteen => level / 255.0,
            }
        })
        .collect();
    Ok(Image::new(image.width(), image.height(), pixels)?.with_depth(image.depth()))
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
