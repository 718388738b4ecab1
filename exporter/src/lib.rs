//! Turns a trained run into deployable artifacts that are proven to compute what the Burn model
//! computes, before they are written:
//!
//! - [`onnx`]: the decoder as ONNX (stable I/O names, metadata), run with tract and with ONNX
//!   Runtime on real latents and compared with Burn;
//! - [`quantize`]: the decoder as an int8 q8 blob for the firmware, evaluated with
//!   `firmware-core` itself (the one int8 implementation) against the float decoder.
//!
//! [`export_run`] writes, for a conv VAE run, `encoder.onnx`, `decoder.onnx`, `decoder.q8` and
//! `report.json`; for a camera-denoiser run, `denoiser.onnx` (any frame size); for the other
//! MNIST families, their `encoder.onnx` + `decoder.onnx`, `denoiser.onnx` or `upscaler.onnx`;
//! always with `report.json`.
#![warn(missing_docs)]

pub mod onnx;
pub mod quantize;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::*;
use serde::Serialize;
use trainer::{
    data::{Mnist, Split},
    model::{ConvVae, Model},
    run::{load_run, write_atomic},
};

/// Largest difference allowed between Burn and a float ONNX runtime on the same latent, in
/// output units (pixels in `[0, 1]`).
pub const FLOAT_TOLERANCE: f32 = 1e-4;
/// Lowest PSNR (dB) of the int8 decoder against the float one that the exporter accepts (the
/// firmware issue's bar for the conv VAE decoder).
pub const MIN_INT8_PSNR_DB: f64 = 35.0;

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Directory with MNIST (for calibration and check latents).
    pub data_dir: PathBuf,
    /// Training images encoded to calibrate the int8 activations.
    pub calibration: usize,
    /// Latents each artifact is checked on (half test-set encodings, half N(0, I) samples).
    pub check: usize,
    /// ONNX Runtime shared library; `None` skips the ORT check (tract still runs).
    pub ort_dylib: Option<PathBuf>,
}

/// Parity of one float runtime with Burn.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    /// Runtime name.
    pub runtime: String,
    /// Inputs compared (latents, or frames for the denoiser).
    pub inputs: usize,
    /// Largest absolute difference from Burn.
    pub max_abs_diff: f32,
}

/// What `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run directory exported.
    pub run: String,
    /// Latent size.
    pub latent: usize,
    /// ONNX decoder file name.
    pub onnx_decoder: String,
    /// Float runtimes checked against Burn.
    pub onnx_parity: Vec<Parity>,
    /// Tolerance those checks used.
    pub float_tolerance: f32,
    /// q8 decoder file name.
    pub q8_decoder: String,
    /// Quantization error and size.
    pub q8: quantize::Q8Report,
    /// The encoder (`image -> mean, log_var`) as ONNX, when exported.
    pub onnx_encoder: Option<Artifact>,
}

/// What [`export_run`] wrote.
#[derive(Debug, Clone)]
pub enum Exported {
    /// A conv VAE's decoder, as ONNX and as int8 q8 (and its encoder as ONNX).
    Decoder(Report),
    /// The camera-frame denoiser, as ONNX.
    Denoiser(DenoiserReport),
    /// The ONNX files of another MNIST family.
    Onnx(OnnxReport),
}

/// One ONNX file of an export and how it was checked.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    /// File name.
    pub file: String,
    /// `encoder`, `decoder`, `denoiser` or `upscaler`.
    pub kind: String,
    /// Input shape (batch 1).
    pub input_shape: Vec<usize>,
    /// Float runtimes checked against Burn.
    pub onnx_parity: Vec<Parity>,
}

/// `report.json` of a family exported as ONNX files only.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxReport {
    /// Run directory exported.
    pub run: String,
    /// Model family.
    pub family: String,
    /// The files written.
    pub artifacts: Vec<Artifact>,
    /// Tolerance of the parity checks.
    pub float_tolerance: f32,
}

/// Check inputs for the ONNX files of an MNIST run: 8 test images as the model sees them
/// (corrupted with a fixed seed for denoising and super-resolution) and 16 latents (8 encodings of
/// those images, 8 samples of N(0, I)).
struct CheckInputs {
    images: Vec<Tensor<4>>,
    latents: Vec<Tensor<2>>,
}

fn check_inputs(
    model: &Model,
    config: &trainer::model::ModelConfig,
    data_dir: &Path,
    device: &Device,
) -> anyhow::Result<CheckInputs> {
    let mut test = Mnist::load(data_dir, Split::Test)?;
    test.truncate(8);
    let mut rng = trainer::rng::SplitMix64(8);
    let clean: Vec<Tensor<4>> = (0..test.len()).map(|i| test.batch(&[i], device)).collect();
    let images = clean
        .iter()
        .map(|c| config.corruption().apply(c.clone(), &mut rng))
        .collect();
    let mut latents: Vec<Tensor<2>> = clean
        .iter()
        .filter_map(|c| model.encode(c.clone()))
        .collect();
    if let Some(latent) = config.latent() {
        latents.extend((0..8).map(|i| normal_samples(1, latent, 100 + i, device)));
    }
    Ok(CheckInputs { images, latents })
}

/// Exports one ONNX file of `model` (static shapes, batch 1) and checks it on `inputs`.
#[allow(clippy::too_many_arguments)]
fn export_checked<const D: usize, const E: usize>(
    model: &Model,
    kind: &str,
    forward: fn(&Model, Tensor<D>) -> Vec<Tensor<E>>,
    names: (&[&str], &[&str]),
    inputs: &[Tensor<D>],
    run_dir: &Path,
    options: &ExportOptions,
) -> anyhow::Result<(Artifact, Vec<u8>)> {
    let sample = inputs
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no inputs to check the {kind} on"))?;
    let shape = sample.dims().to_vec();
    let bytes = onnx::export_static(
        model,
        sample,
        forward,
        names.0,
        names.1,
        &[
            ("kind", kind.into()),
            ("input_shape", format!("{shape:?}")),
            ("pixel_range", "[0,1]".into()),
            ("source_run", run_dir.display().to_string()),
        ],
    )
    .with_context(|| format!("exporting the {kind} to ONNX"))?;
    let values = |t: Tensor<E>| -> anyhow::Result<Vec<f32>> {
        t.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let mut flat_inputs = Vec::new();
    let mut expected = Vec::new();
    for input in inputs {
        flat_inputs.push(
            input
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
        expected.push(
            forward(model, input.clone())
                .into_iter()
                .map(values)
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
    }
    let parity = onnx::verify_all(
        &bytes,
        &shape,
        &flat_inputs,
        &expected,
        options.ort_dylib.as_deref(),
    )?;
    check_parity(kind, &parity)?;
    Ok((
        Artifact {
            file: format!("{kind}.onnx"),
            kind: kind.into(),
            input_shape: shape,
            onnx_parity: parity,
        },
        bytes,
    ))
}

fn encoder_forward(m: &Model, images: Tensor<4>) -> Vec<Tensor<2>> {
    m.encoder_outputs(images)
}

fn decoder_forward(m: &Model, latent: Tensor<2>) -> Vec<Tensor<4>> {
    m.decode(latent).into_iter().collect()
}

fn image_forward(m: &Model, input: Tensor<4>) -> Vec<Tensor<4>> {
    vec![m.reconstruct(input)]
}

/// The encoder, decoder, denoiser or upscaler ONNX files of a run, checked (with
/// `only_encoder`, just the encoder of a family that has one).
fn export_onnx_files(
    run_dir: &Path,
    model: &Model,
    config: &trainer::model::ModelConfig,
    options: &ExportOptions,
    only_encoder: bool,
) -> anyhow::Result<Vec<(Artifact, Vec<u8>)>> {
    use trainer::model::Corruption;
    let device = Device::flex();
    let inputs = check_inputs(model, config, &options.data_dir, &device)?;
    let mut files = Vec::new();
    let encoder_names: &[&str] = if config.is_variational() {
        &["mean", "log_var"]
    } else {
        &["code"]
    };
    match config.corruption() {
        Corruption::None => {
            files.push(export_checked(
                model,
                "encoder",
                encoder_forward,
                (&["image"], encoder_names),
                &inputs.images,
                run_dir,
                options,
            )?);
            if only_encoder {
                return Ok(files);
            }
            files.push(export_checked(
                model,
                "decoder",
                decoder_forward,
                (&[onnx::LATENT_INPUT], &[onnx::IMAGE_OUTPUT]),
                &inputs.latents,
                run_dir,
                options,
            )?);
        }
        Corruption::Noise { .. } => files.push(export_checked(
            model,
            "denoiser",
            image_forward,
            (&[onnx::NOISY_INPUT], &[onnx::DENOISED_OUTPUT]),
            &inputs.images,
            run_dir,
            options,
        )?),
        Corruption::Downsample => files.push(export_checked(
            model,
            "upscaler",
            image_forward,
            (&["low_res"], &[onnx::IMAGE_OUTPUT]),
            &inputs.images,
            run_dir,
            options,
        )?),
    }
    Ok(files)
}

impl Exported {
    /// The decoder report, if a decoder was exported.
    pub fn into_decoder(self) -> Option<Report> {
        match self {
            Exported::Decoder(r) => Some(r),
            Exported::Denoiser(_) | Exported::Onnx(_) => None,
        }
    }
}

/// `report.json` of a camera-denoiser export.
#[derive(Debug, Clone, Serialize)]
pub struct DenoiserReport {
    /// Run directory exported.
    pub run: String,
    /// ONNX denoiser file name.
    pub onnx_denoiser: String,
    /// Frame sizes (height, width) the file was checked on.
    pub checked_sizes: Vec<[usize; 2]>,
    /// Float runtimes checked against Burn.
    pub onnx_parity: Vec<Parity>,
    /// Tolerance those checks used.
    pub float_tolerance: f32,
    /// Multiply-accumulates per pixel.
    pub macs_per_pixel: usize,
}

/// Noisy crops of the held-out photographs (sigma 25), of several sizes, for the parity checks.
fn denoiser_check_frames(device: &Device) -> anyhow::Result<Vec<Tensor<4>>> {
    use trainer::natural;
    let images = natural::load(&natural::bundled_dir(), &natural::HELD_OUT)?;
    let mut rng = trainer::rng::SplitMix64(25);
    let mut frames = Vec::new();
    for (image, (h, w)) in images.iter().zip([(480, 512), (64, 96), (33, 47)]) {
        let (h, w) = (h.min(image.height), w.min(image.width));
        let crop: Vec<f32> = (0..h)
            .flat_map(|y| image.pixels[y * image.width..][..w].to_vec())
            .collect();
        let noisy = natural::add_noise(&crop, 25.0, &mut rng);
        frames.push(Tensor::<1>::from_floats(noisy.as_slice(), device).reshape([1, 1, h, w]));
    }
    Ok(frames)
}

/// Checks every runtime's parity against the tolerance.
fn check_parity(what: &str, parity: &[Parity]) -> anyhow::Result<()> {
    for p in parity {
        if p.max_abs_diff.is_nan() || p.max_abs_diff > FLOAT_TOLERANCE {
            bail!(
                "{} differs from Burn by {} (> {FLOAT_TOLERANCE}) on the ONNX {what}; nothing written",
                p.runtime,
                p.max_abs_diff
            );
        }
    }
    Ok(())
}

/// Exports a camera-denoiser run.
fn export_denoiser_run(
    run_dir: &Path,
    out_dir: &Path,
    model: &trainer::model::CameraDenoiser,
    options: &ExportOptions,
) -> anyhow::Result<DenoiserReport> {
    let device = Device::flex();
    let bytes = onnx::export_denoiser(model, run_dir).context("exporting the denoiser to ONNX")?;
    let frames = denoiser_check_frames(&device)?;
    let parity = onnx::verify_denoiser(&bytes, model, &frames, options.ort_dylib.as_deref())?;
    check_parity("denoiser", &parity)?;
    let report = DenoiserReport {
        run: run_dir.display().to_string(),
        onnx_denoiser: "denoiser.onnx".into(),
        checked_sizes: frames
            .iter()
            .map(|f| {
                let [_, _, h, w] = f.dims();
                [h, w]
            })
            .collect(),
        onnx_parity: parity,
        float_tolerance: FLOAT_TOLERANCE,
        macs_per_pixel: model.macs_per_pixel(),
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_atomic(&out_dir.join(&report.onnx_denoiser), &bytes)?;
    write_atomic(
        &out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Latents from encoding `n` images of `split` (the means), `[n, latent]`.
fn encode(
    model: &ConvVae,
    data_dir: &Path,
    split: Split,
    n: usize,
    device: &Device,
) -> anyhow::Result<Tensor<2>> {
    let mut data = Mnist::load(data_dir, split)?;
    data.truncate(n);
    let indices: Vec<usize> = (0..data.len()).collect();
    let means = indices
        .chunks(500)
        .map(|chunk| model.encoder.forward(data.batch(chunk, device)).0)
        .collect();
    Ok(Tensor::cat(means, 0))
}

/// Deterministic N(0, I) samples, `[n, latent]`.
fn normal_samples(n: usize, latent: usize, seed: u64, device: &Device) -> Tensor<2> {
    device.seed(seed);
    Tensor::random(
        [n, latent],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    )
}

/// Exports the run in `run_dir` into `out_dir`. Nothing is written unless every check passes.
pub fn export_run(
    run_dir: &Path,
    out_dir: &Path,
    options: &ExportOptions,
) -> anyhow::Result<Exported> {
    let device = Device::flex();
    let (config, model) = load_run(run_dir, &device)?;
    match &model {
        Model::ConvVae(vae) => {
            // The encoder is checked before anything is written, like every file.
            let encoder = export_onnx_files(run_dir, &model, &config.model, options, true)?
                .into_iter()
                .find(|(a, _)| a.kind == "encoder");
            let mut report = export_decoder_run(run_dir, out_dir, vae, options)?;
            if let Some((artifact, bytes)) = encoder {
                write_atomic(&out_dir.join(&artifact.file), &bytes)?;
                report.onnx_encoder = Some(artifact);
                write_atomic(
                    &out_dir.join("report.json"),
                    serde_json::to_string_pretty(&report)?.as_bytes(),
                )?;
            }
            Ok(Exported::Decoder(report))
        }
        Model::CameraDenoiser(denoiser) => {
            export_denoiser_run(run_dir, out_dir, denoiser, options).map(Exported::Denoiser)
        }
        _ => {
            let files = export_onnx_files(run_dir, &model, &config.model, options, false)?;
            let report = OnnxReport {
                run: run_dir.display().to_string(),
                family: config.model.family().into(),
                artifacts: files.iter().map(|(a, _)| a.clone()).collect(),
                float_tolerance: FLOAT_TOLERANCE,
            };
            std::fs::create_dir_all(out_dir)
                .with_context(|| format!("creating {}", out_dir.display()))?;
            for (artifact, bytes) in &files {
                write_atomic(&out_dir.join(&artifact.file), bytes)?;
            }
            write_atomic(
                &out_dir.join("report.json"),
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
            Ok(Exported::Onnx(report))
        }
    }
}

/// Exports a conv VAE run: the decoder as ONNX and as int8 q8.
fn export_decoder_run(
    run_dir: &Path,
    out_dir: &Path,
    model: &ConvVae,
    options: &ExportOptions,
) -> anyhow::Result<Report> {
    let device = Device::flex();
    let latent = model.decoder.latent();

    let half = options.check.div_ceil(2);
    let check = Tensor::cat(
        vec![
            encode(model, &options.data_dir, Split::Test, half, &device)?,
            normal_samples(half, latent, 7, &device),
        ],
        0,
    );
    let calibration = Tensor::cat(
        vec![
            encode(
                model,
                &options.data_dir,
                Split::Train,
                options.calibration,
                &device,
            )?,
            normal_samples(options.calibration, latent, 11, &device),
        ],
        0,
    );

    let onnx_bytes =
        onnx::export_decoder(&model.decoder, run_dir).context("exporting the decoder to ONNX")?;
    let onnx_parity = onnx::verify_decoder(
        &onnx_bytes,
        &model.decoder,
        check.clone(),
        options.ort_dylib.as_deref(),
    )?;
    check_parity("decoder", &onnx_parity)?;

    let (blob, q8) = quantize::quantize_decoder(&model.decoder, calibration, check)?;
    if q8.psnr_db.is_nan() || q8.psnr_db < MIN_INT8_PSNR_DB {
        bail!(
            "int8 decoder PSNR {:.2} dB is below {MIN_INT8_PSNR_DB} dB; nothing written",
            q8.psnr_db
        );
    }

    let report = Report {
        run: run_dir.display().to_string(),
        latent,
        onnx_decoder: "decoder.onnx".into(),
        onnx_parity,
        float_tolerance: FLOAT_TOLERANCE,
        q8_decoder: "decoder.q8".into(),
        q8,
        onnx_encoder: None,
    };
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_atomic(&out_dir.join(&report.onnx_decoder), &onnx_bytes)?;
    write_atomic(&out_dir.join(&report.q8_decoder), &blob)?;
    write_atomic(
        &out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}
