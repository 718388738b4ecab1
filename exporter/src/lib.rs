//! Turns a trained run into deployable artifacts that are proven to compute what the Burn model
//! computes, before they are written:
//!
//! - [`onnx`]: every family's encoder, decoder, denoiser or upscaler as ONNX (burn-onnx's
//!   exporter, then stable I/O names, metadata, folded upsampling and symbolic axes), run with
//!   tract and with ONNX Runtime on real inputs and compared with Burn;
//! - [`quantize`]: the conv VAE's decoder as an int8 q8 blob for the firmware, evaluated with
//!   `firmware-core` itself (the one int8 implementation) against the float decoder;
//! - [`qdq`]: the same int8 decoder as QDQ ONNX, run by tract and ONNX Runtime and compared with
//!   `firmware-core`'s pixels.
//!
//! [`export_run`] writes the files of [`Kind::of_family`] (or of `--only`) and `report.json`:
//! for a conv VAE run `encoder.onnx`, `decoder.onnx`, `decoder.q8` and `decoder_int8.onnx`; for
//! a camera-denoiser run `denoiser.onnx` (any frame size); for the other MNIST families their
//! `encoder.onnx` + `decoder.onnx`, `denoiser.onnx` or `upscaler.onnx`. Nothing is written
//! unless every check passes.
#![warn(missing_docs)]

pub mod onnx;
pub mod qdq;
pub mod quantize;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::prelude::*;
use serde::Serialize;
use trainer::{
    data::{Mnist, Split},
    model::{ConvVae, Model, ModelConfig, one_hot, with_condition},
    run::load_run,
};

/// Largest difference allowed between Burn and a float ONNX runtime on the same latent, in
/// output units (pixels in `[0, 1]`).
pub const FLOAT_TOLERANCE: f32 = 1e-4;
/// Lowest PSNR (dB) of the int8 decoder against the float one that the exporter accepts (the
/// firmware issue's bar for the conv VAE decoder).
pub const MIN_INT8_PSNR_DB: f64 = 35.0;

/// Parity of one float runtime with Burn.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    /// Runtime name.
    pub runtime: String,
    /// Inputs compared (latents, images or frames).
    pub inputs: usize,
    /// Largest absolute difference from Burn.
    pub max_abs_diff: f32,
}

/// What a run can be exported as: one file each (the names `--only` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `encoder.onnx`: image -> code (VAEs: mean and log-variance).
    Encoder,
    /// `decoder.onnx`: latent -> image.
    Decoder,
    /// `denoiser.onnx`: noisy image -> clean image.
    Denoiser,
    /// `upscaler.onnx`: 14x14 image -> 28x28 image.
    Upscaler,
    /// `decoder.q8`: the int8 decoder blob for the firmware.
    Q8,
    /// `decoder_int8.onnx`: the same int8 decoder as QDQ ONNX.
    Int8Onnx,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Encoder,
        Kind::Decoder,
        Kind::Denoiser,
        Kind::Upscaler,
        Kind::Q8,
        Kind::Int8Onnx,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Encoder => "encoder",
            Kind::Decoder => "decoder",
            Kind::Denoiser => "denoiser",
            Kind::Upscaler => "upscaler",
            Kind::Q8 => "q8",
            Kind::Int8Onnx => "int8-onnx",
        }
    }

    /// The file written.
    pub fn file(self) -> &'static str {
        match self {
            Kind::Encoder => "encoder.onnx",
            Kind::Decoder => "decoder.onnx",
            Kind::Denoiser => "denoiser.onnx",
            Kind::Upscaler => "upscaler.onnx",
            Kind::Q8 => "decoder.q8",
            Kind::Int8Onnx => "decoder_int8.onnx",
        }
    }

    /// What a run of this model family exports, in the order it is done.
    pub fn of_family(config: &ModelConfig) -> Vec<Kind> {
        use trainer::model::Corruption;
        match (config, config.corruption()) {
            (ModelConfig::ConvVae(_), _) => {
                vec![Kind::Encoder, Kind::Decoder, Kind::Q8, Kind::Int8Onnx]
            }
            (ModelConfig::CameraDenoiser(_), _) | (_, Corruption::Noise { .. }) => {
                vec![Kind::Denoiser]
            }
            (_, Corruption::Downsample) => vec![Kind::Upscaler],
            (_, Corruption::None) => vec![Kind::Encoder, Kind::Decoder],
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown artifact '{s}' (one of {})", names.join(", "))
            })
    }
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Dataset directory: MNIST for the calibration and check images, the photographs for the
    /// camera denoiser's check frames; `None` is the dataset the run was trained on (its
    /// `config.json`), else the family's bundled one.
    pub data_dir: Option<PathBuf>,
    /// Training images encoded to calibrate the int8 activations (more than the dataset has is an
    /// error).
    pub calibration: usize,
    /// Latents the conv VAE's decoders are checked on (half test-set encodings, half N(0, I)
    /// samples; more encodings than the dataset has test images is an error).
    pub check: usize,
    /// ONNX Runtime shared library; `None` skips the ORT check (tract still runs).
    pub ort_dylib: Option<PathBuf>,
    /// Export only these (all of the family's when `None`).
    pub only: Option<Vec<Kind>>,
}

/// One file of an export and how it was checked.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// File name.
    pub file: String,
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub bytes: usize,
    /// Input shape (`batch`, `height`, `width`: any size).
    pub input_shape: String,
    /// Float files: each runtime against Burn.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parity: Vec<Parity>,
    /// The int8 ONNX file: each runtime against `firmware-core`'s int8 decoder.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub int8_parity: Vec<qdq::Int8Parity>,
    /// One line saying how it was checked, for the summary table.
    pub checked: String,
}

/// What `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run directory exported.
    pub run: String,
    /// Model family.
    pub family: String,
    /// Latent size, for families with one.
    pub latent: Option<usize>,
    /// Digits a conditional decoder takes after the latent (one-hot), 0 for the others.
    pub classes: usize,
    /// Largest difference allowed between a float ONNX runtime and Burn.
    pub float_tolerance: f32,
    /// The files written, in order.
    pub files: Vec<FileReport>,
    /// The int8 decoder against the float one (conv VAE, when `decoder.q8` or
    /// `decoder_int8.onnx` is exported).
    pub q8: Option<quantize::Q8Report>,
    /// The camera denoiser's multiply-accumulates per pixel.
    pub macs_per_pixel: Option<usize>,
    /// Files of the family a full export (no `--only`) left out, each with why: the int8
    /// decoder of a conv VAE the firmware cannot hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_exported: Vec<String>,
}

impl Report {
    /// The report of the file of `kind`, if it was exported.
    pub fn file(&self, kind: Kind) -> Option<&FileReport> {
        self.files.iter().find(|f| f.kind == kind)
    }
}

/// Where an export stands, for a progress display: step `step` of `steps` is `what`.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Steps done before this one.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// What this step does.
    pub what: &'a str,
}

/// Exports the run in `run_dir` into `out_dir` (see [`export_run_with_progress`]).
pub fn export_run(
    run_dir: &Path,
    out_dir: &Path,
    options: &ExportOptions,
) -> anyhow::Result<Report> {
    export_run_with_progress(run_dir, out_dir, options, &mut |_| {})
}

/// Exports the run in `run_dir` into `out_dir`: every file of [`Kind::of_family`] (or of
/// `options.only`), then `report.json`. Every file is checked before anything is written; on any
/// failure nothing is. `progress` hears of each step.
pub fn export_run_with_progress(
    run_dir: &Path,
    out_dir: &Path,
    options: &ExportOptions,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Report> {
    // Said now, not after the exports and their checks.
    machine::check_output_folder(out_dir)?;
    if let Some(dylib) = options.ort_dylib.as_deref() {
        onnx::load_ort(dylib)?;
    }
    let device = Device::flex();
    let (config, model) = load_run(run_dir, &device)?;
    let data = trainer::training::data_dir(&config, options.data_dir.clone());
    let family = config.model.family();
    let available = Kind::of_family(&config.model);
    let wanted: Vec<Kind> = match &options.only {
        None => available.clone(),
        Some(only) => {
            if let Some(k) = only.iter().find(|k| !available.contains(k)) {
                let names: Vec<&str> = available.iter().map(|k| k.name()).collect();
                bail!(
                    "a {family} run has no {k} to export (it has: {})",
                    names.join(", ")
                );
            }
            available.into_iter().filter(|k| only.contains(k)).collect()
        }
    };
    if wanted.is_empty() {
        bail!("nothing to export: --only names no artifact");
    }
    let steps = wanted.len() + 1;
    let mut report = Report {
        run: run_dir.display().to_string(),
        family: family.into(),
        latent: config.model.latent(),
        classes: config.model.classes(),
        float_tolerance: FLOAT_TOLERANCE,
        files: Vec::new(),
        q8: None,
        macs_per_pixel: None,
        not_exported: Vec::new(),
    };
    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut int8: Option<(quantize::QuantizedDecoder, Vec<u8>)> = None;
    // The conv VAE's decoders (float and int8) are all checked on the same latents.
    let mut decoder_check: Option<Tensor<2>> = None;
    for (step, &kind) in wanted.iter().enumerate() {
        let what = format!("{} (export and check)", kind.file());
        progress(Progress {
            step,
            steps,
            what: &what,
        });
        let (file, bytes) = match (&model, kind) {
            (Model::CameraDenoiser(denoiser), _) => {
                report.macs_per_pixel = Some(denoiser.macs_per_pixel());
                export_camera_denoiser(run_dir, denoiser, &data, options)?
            }
            (Model::ConvVae(vae), Kind::Decoder) => {
                if decoder_check.is_none() {
                    decoder_check = Some(decoder_check_latents(vae, &data, options, &device)?);
                }
                let check = decoder_check.clone().context("no check latents")?;
                export_conv_vae_decoder(run_dir, vae, check, options)?
            }
            (Model::ConvVae(vae), Kind::Q8 | Kind::Int8Onnx) => {
                if decoder_check.is_none() {
                    decoder_check = Some(decoder_check_latents(vae, &data, options, &device)?);
                }
                let check = decoder_check.clone().context("no check latents")?;
                // Quantized once for both int8 files; `not_exported` (only ever the int8 pair)
                // holds the reason when the first of them found the decoder too large.
                if int8.is_none() && report.not_exported.is_empty() {
                    match quantize_conv_vae(vae, &data, check.clone(), options) {
                        Ok((quantized, blob, q8)) => {
                            report.q8 = Some(q8);
                            int8 = Some((quantized, blob));
                        }
                        // A decoder the firmware cannot hold: a full export writes the float
                        // files and says what it left out; asked for by name, it is an error.
                        Err(e) => match firmware_misfit(&e) {
                            Some(why) if options.only.is_none() => {
                                report.not_exported.push(format!(
                                    "{} and {}: {why}",
                                    Kind::Q8.file(),
                                    Kind::Int8Onnx.file()
                                ));
                                continue;
                            }
                            Some(why) => bail!(
                                "{} cannot be exported: {why}; `--only encoder,decoder` exports \
                                 the float models",
                                kind.file()
                            ),
                            None => return Err(e),
                        },
                    }
                }
                let Some((quantized, blob)) = int8.as_ref() else {
                    continue; // left out above (both int8 files)
                };
                match kind {
                    Kind::Q8 => q8_file(blob, report.q8.as_ref()),
                    _ => export_int8_onnx(run_dir, quantized, blob, check, options)?,
                }
            }
            (_, kind) => export_mnist_file(run_dir, &model, &config.model, kind, &data, options)?,
        };
        report.files.push(file);
        contents.push(bytes);
    }

    progress(Progress {
        step: steps - 1,
        steps,
        what: "writing the files",
    });
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json = serde_json::to_string_pretty(&report)?;
    let files: Vec<(PathBuf, &[u8])> = report
        .files
        .iter()
        .zip(&contents)
        .map(|(file, bytes)| (out_dir.join(&file.file), bytes.as_slice()))
        .chain([(out_dir.join("report.json"), json.as_bytes())])
        .collect();
    machine::write_files(&files)?;
    progress(Progress {
        step: steps,
        steps,
        what: "done",
    });
    Ok(report)
}

/// One line for the summary table: each runtime's largest difference from Burn.
fn parity_line(parity: &[Parity]) -> String {
    let runtimes: Vec<String> = parity
        .iter()
        .map(|p| format!("{} {:.1e}", p.runtime, p.max_abs_diff))
        .collect();
    let inputs = parity.first().map_or(0, |p| p.inputs);
    format!(
        "max |diff| vs Burn over {inputs} inputs: {}",
        runtimes.join(", ")
    )
}

/// An encoder, decoder, denoiser or upscaler of an MNIST family (not the conv VAE's decoder).
fn export_mnist_file(
    run_dir: &Path,
    model: &Model,
    config: &ModelConfig,
    kind: Kind,
    data: &Path,
    options: &ExportOptions,
) -> anyhow::Result<(FileReport, Vec<u8>)> {
    let device = Device::flex();
    let inputs = check_inputs(model, config, data, &device)?;
    let encoder_names: &[&str] = if config.is_variational() {
        &["mean", "log_var"]
    } else {
        &["code"]
    };
    match kind {
        Kind::Encoder => export_checked(
            model,
            kind,
            encoder_forward,
            (&["image"], encoder_names),
            &inputs.images,
            (run_dir, config.latent()),
            options,
        ),
        Kind::Decoder => export_checked(
            model,
            kind,
            decoder_forward,
            (&[onnx::LATENT_INPUT], &[onnx::IMAGE_OUTPUT]),
            // All latents in one batch, then the first alone.
            &[
                Tensor::cat(inputs.latents.clone(), 0),
                inputs
                    .latents
                    .first()
                    .cloned()
                    .context("no check latents")?,
            ],
            (run_dir, config.latent()),
            options,
        ),
        Kind::Denoiser => export_checked(
            model,
            kind,
            image_forward,
            (&[onnx::NOISY_INPUT], &[onnx::DENOISED_OUTPUT]),
            &inputs.images,
            (run_dir, config.latent()),
            options,
        ),
        Kind::Upscaler => export_checked(
            model,
            kind,
            image_forward,
            (&["low_res"], &[onnx::IMAGE_OUTPUT]),
            // The 14x14 digits, then images of other sizes made of them: 14x56 and 28x28.
            &upscaler_check_images(&inputs.images)?,
            (run_dir, config.latent()),
            options,
        ),
        Kind::Q8 | Kind::Int8Onnx => bail!("only the conv VAE has an int8 decoder"),
    }
}

/// The upscaler's check inputs: the 14x14 low-resolution digits, then a 14x56 strip of four of
/// them and a 28x28 square of four more (the upscaler takes any even size).
fn upscaler_check_images(images: &[Tensor<4>]) -> anyhow::Result<Vec<Tensor<4>>> {
    let [a, b, c, d, e, f, g, h] = images
        .get(..8)
        .and_then(|i| <&[_; 8]>::try_from(i).ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the upscaler is checked on 8 test images, the data has {}",
                images.len()
            )
        })?;
    let strip = Tensor::cat(vec![a.clone(), b.clone(), c.clone(), d.clone()], 3);
    let square = Tensor::cat(
        vec![
            Tensor::cat(vec![e.clone(), f.clone()], 3),
            Tensor::cat(vec![g.clone(), h.clone()], 3),
        ],
        2,
    );
    Ok([images.to_vec(), vec![strip, square]].concat())
}

/// The camera denoiser, checked on the held-out photographs in `data` at several sizes.
fn export_camera_denoiser(
    run_dir: &Path,
    model: &trainer::model::CameraDenoiser,
    data: &Path,
    options: &ExportOptions,
) -> anyhow::Result<(FileReport, Vec<u8>)> {
    let device = Device::flex();
    let bytes = onnx::export_denoiser(model, run_dir).context("exporting the denoiser to ONNX")?;
    let frames = denoiser_check_frames(data, &device)?;
    let parity = onnx::verify_denoiser(&bytes, model, &frames, options.ort_dylib.as_deref())?;
    check_parity("denoiser", &parity)?;
    let sizes: Vec<String> = frames
        .iter()
        .map(|f| {
            let [_, _, h, w] = f.dims();
            format!("{w}x{h}")
        })
        .collect();
    let checked = format!("{} (frames {})", parity_line(&parity), sizes.join(", "));
    Ok((
        FileReport {
            file: Kind::Denoiser.file().into(),
            kind: Kind::Denoiser,
            bytes: bytes.len(),
            input_shape: "[batch,1,height,width]".into(),
            parity,
            int8_parity: Vec::new(),
            checked,
        },
        bytes,
    ))
}

/// The latents the conv VAE's decoders are checked on: `options.check` in all, half encodings of
/// test images of `data`, half N(0, I) samples.
fn decoder_check_latents(
    model: &ConvVae,
    data: &Path,
    options: &ExportOptions,
    device: &Device,
) -> anyhow::Result<Tensor<2>> {
    anyhow::ensure!(
        options.check > 0,
        "the decoders' check needs latents: --check 0"
    );
    // The encodings take the odd one: `--check 3` is 2 encodings and 1 sample.
    let (encodings, samples) = (options.check.div_ceil(2), options.check / 2);
    let asked_by = format!("--check {} (half of them encodings)", options.check);
    let mut latents = vec![encode(
        model,
        (data, Split::Test),
        encodings,
        &asked_by,
        device,
    )?];
    if samples > 0 {
        latents.push(prior_samples(model, samples, 7, device));
    }
    Ok(Tensor::cat(latents, 0))
}

/// The conv VAE's float decoder, checked on `check` latents.
fn export_conv_vae_decoder(
    run_dir: &Path,
    model: &ConvVae,
    check: Tensor<2>,
    options: &ExportOptions,
) -> anyhow::Result<(FileReport, Vec<u8>)> {
    let bytes = onnx::export_decoder(&model.decoder, model.classes(), run_dir)
        .context("exporting the decoder to ONNX")?;
    let parity = onnx::verify_decoder(&bytes, &model.decoder, check, options.ort_dylib.as_deref())?;
    check_parity("decoder", &parity)?;
    Ok((
        FileReport {
            file: Kind::Decoder.file().into(),
            kind: Kind::Decoder,
            bytes: bytes.len(),
            input_shape: format!("[batch,{}]", model.decoder.latent()),
            checked: parity_line(&parity),
            parity,
            int8_parity: Vec::new(),
        },
        bytes,
    ))
}

/// Quantizes the conv VAE's decoder (calibrated on encodings of training images and as many
/// N(0, I) samples) and measures the int8 digits against the float ones on `check`; refuses a
/// decoder below [`MIN_INT8_PSNR_DB`].
fn quantize_conv_vae(
    model: &ConvVae,
    data: &Path,
    check: Tensor<2>,
    options: &ExportOptions,
) -> anyhow::Result<(quantize::QuantizedDecoder, Vec<u8>, quantize::Q8Report)> {
    anyhow::ensure!(
        options.calibration > 0,
        "the int8 decoder's calibration needs latents: --calibration 0"
    );
    let device = Device::flex();
    let calibration = Tensor::cat(
        vec![
            encode(
                model,
                (data, Split::Train),
                options.calibration,
                &format!("--calibration {}", options.calibration),
                &device,
            )?,
            prior_samples(model, options.calibration, 11, &device),
        ],
        0,
    );
    let quantized = quantize::quantize_decoder(&model.decoder, model.classes(), calibration)?;
    let blob = quantized.blob()?;
    let q8 = quantize::evaluate(&model.decoder, &blob, check)?;
    if q8.psnr_db.is_nan() || q8.psnr_db < MIN_INT8_PSNR_DB {
        bail!(
            "int8 decoder PSNR {:.2} dB is below {MIN_INT8_PSNR_DB} dB; nothing written",
            q8.psnr_db
        );
    }
    Ok((quantized, blob, q8))
}

/// The q8 blob's entry in the report.
fn q8_file(blob: &[u8], q8: Option<&quantize::Q8Report>) -> (FileReport, Vec<u8>) {
    let checked = q8.map_or_else(String::new, |q| {
        format!(
            "PSNR {:.2} dB vs the float decoder over {} latents (max |diff| {:.4}), {} MACs",
            q.psnr_db, q.latents, q.max_abs_diff, q.macs
        )
    });
    (
        FileReport {
            file: Kind::Q8.file().into(),
            kind: Kind::Q8,
            bytes: blob.len(),
            input_shape: String::new(),
            parity: Vec::new(),
            int8_parity: Vec::new(),
            checked,
        },
        blob.to_vec(),
    )
}

/// Largest pixel difference, in levels of 255, allowed between a runtime running the int8 ONNX
/// decoder and `firmware-core`'s decoder (they round requantization differently, see [`qdq`]).
pub const MAX_INT8_ONNX_LEVELS: u8 = 16;

/// The int8 decoder as QDQ ONNX, run by tract and ONNX Runtime on `check` and compared with
/// `firmware-core`'s int8 digits.
fn export_int8_onnx(
    run_dir: &Path,
    quantized: &quantize::QuantizedDecoder,
    blob: &[u8],
    check: Tensor<2>,
    options: &ExportOptions,
) -> anyhow::Result<(FileReport, Vec<u8>)> {
    let d = quantized.latent;
    // The same interface metadata as the float decoder's (`onnx::export_decoder`): a conditional
    // decoder's input ends in `classes` one-hot values that `latent_size` does not count.
    let mut metadata = vec![
        ("kind", "decoder".into()),
        ("precision", "int8 (QDQ)".into()),
        (
            "latent_size",
            d.saturating_sub(quantized.classes).to_string(),
        ),
        ("input_shape", format!("[batch,{d}]")),
        ("output_shape", "[batch,1,28,28]".into()),
        ("pixel_range", "[0,1]".into()),
    ];
    if quantized.classes > 0 {
        metadata.push(("classes", quantized.classes.to_string()));
    }
    let bytes = qdq::to_onnx(quantized, run_dir, &metadata)?;
    let [n, _] = check.dims();
    let z = check
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let firmware = quantize::decode_int8(blob, &z, d)?;
    let shape = [n, d];
    let tract =
        onnx::tract_once(&bytes, &shape, &z).context("running the int8 ONNX decoder with tract")?;
    let mut parity = vec![qdq::compare("tract", n, &tract, &firmware)];
    if let Some(dylib) = options.ort_dylib.as_deref() {
        let ort = onnx::ort_once(&bytes, &shape, &z, dylib)
            .context("running the int8 ONNX decoder with ONNX Runtime")?;
        parity.push(qdq::compare("onnxruntime", n, &ort, &firmware));
    }
    for p in &parity {
        if p.max_levels > MAX_INT8_ONNX_LEVELS {
            bail!(
                "{} runs the int8 ONNX decoder up to {} levels away from firmware-core's \
                 (> {MAX_INT8_ONNX_LEVELS}); nothing written",
                p.runtime,
                p.max_levels
            );
        }
    }
    let runtimes: Vec<String> = parity
        .iter()
        .map(|p| {
            format!(
                "{} {} differ (max {} levels)",
                p.runtime, p.differing, p.max_levels
            )
        })
        .collect();
    let pixels = parity.first().map_or(0, |p| p.pixels);
    let checked = format!(
        "{pixels} pixels ({n} latents) vs firmware-core: {}",
        runtimes.join(", ")
    );
    Ok((
        FileReport {
            file: Kind::Int8Onnx.file().into(),
            kind: Kind::Int8Onnx,
            bytes: bytes.len(),
            input_shape: format!("[batch,{d}]"),
            parity: Vec::new(),
            int8_parity: parity,
            checked,
        },
        bytes,
    ))
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

/// Exports one ONNX file of `model` (traced at batch 1; decoders then take any batch) and checks
/// it on `inputs`.
#[allow(clippy::too_many_arguments)]
fn export_checked<const D: usize, const E: usize>(
    model: &Model,
    kind: Kind,
    forward: fn(&Model, Tensor<D>) -> Vec<Tensor<E>>,
    names: (&[&str], &[&str]),
    inputs: &[Tensor<D>],
    (run_dir, latent): (&Path, Option<usize>),
    options: &ExportOptions,
) -> anyhow::Result<(FileReport, Vec<u8>)> {
    let sample = inputs
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no inputs to check the {kind} on"))?;
    let shape = sample.dims().to_vec();
    // Decoders take any batch (see `onnx::symbolic_batch`); the upscaler, fully convolutional,
    // any batch and any even height and width (`onnx::symbolic_image`); the rest batch 1.
    let batch = kind == Kind::Decoder;
    let image = kind == Kind::Upscaler;
    let compact = |dims: &[usize]| {
        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let rest = dims.get(1..).unwrap_or_default().join(",");
        match (batch, dims.first()) {
            (true, Some(_)) => format!("[batch,{rest}]"),
            _ => format!("[{}]", dims.join(",")),
        }
    };
    let output_shapes: Vec<String> = if image {
        vec!["[batch,1,2*height,2*width]".into()]
    } else {
        forward(model, sample.clone())
            .iter()
            .map(|t| compact(&t.dims()))
            .collect()
    };
    let input_shape = if image {
        "[batch,1,height,width] (height, width even)".to_string()
    } else {
        compact(&shape)
    };
    let mut metadata = vec![
        ("kind", kind.name().to_string()),
        ("input_shape", input_shape.clone()),
        ("output_shape", output_shapes.join(",")),
        ("pixel_range", "[0,1]".into()),
        ("source_run", run_dir.display().to_string()),
    ];
    if let Some(latent) = latent {
        metadata.push(("latent_size", latent.to_string()));
    }
    let bytes = onnx::export_static(
        model,
        sample.slice_dim(0, 0..1),
        forward,
        names.0,
        names.1,
        &metadata,
    )
    .with_context(|| format!("exporting the {kind} to ONNX"))?;
    let bytes = if batch {
        onnx::symbolic_batch(&bytes)?
    } else if image {
        onnx::symbolic_image(&bytes)?
    } else {
        bytes
    };
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
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.dims().to_vec()).collect();
    let parity = onnx::verify_all(
        &bytes,
        &shapes,
        &flat_inputs,
        &expected,
        options.ort_dylib.as_deref(),
    )?;
    check_parity(kind.name(), &parity)?;
    Ok((
        FileReport {
            file: kind.file().into(),
            kind,
            bytes: bytes.len(),
            input_shape,
            checked: parity_line(&parity),
            parity,
            int8_parity: Vec::new(),
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
    vec![m.reconstruct(input, None)]
}

/// Noisy crops of the held-out photographs in `data` (sigma 25), of several sizes, for the parity
/// checks.
fn denoiser_check_frames(data: &Path, device: &Device) -> anyhow::Result<Vec<Tensor<4>>> {
    use trainer::natural;
    let images = natural::load(data, &natural::HELD_OUT)?;
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

/// Decoder inputs from encoding `n` images of `split` (the means; a conditional decoder's with
/// each image's one-hot digit appended), `[n, latent + classes]`.
fn encode(
    model: &ConvVae,
    (data_dir, split): (&Path, Split),
    n: usize,
    asked_by: &str,
    device: &Device,
) -> anyhow::Result<Tensor<2>> {
    let mut data = Mnist::load(data_dir, split)?;
    // Fewer than asked would check or calibrate on less than the user thinks: said, not shrunk.
    anyhow::ensure!(
        n <= data.len(),
        "{asked_by} needs {n} {} images; {} has {}",
        match split {
            Split::Train => "training",
            Split::Test => "test",
        },
        data_dir.display(),
        data.len()
    );
    data.truncate(n);
    let indices: Vec<usize> = (0..data.len()).collect();
    let means = indices
        .chunks(500)
        .map(|chunk| {
            let mean = model.encoder.forward(data.batch(chunk, device)).0;
            with_condition(mean, condition(model, &data.digits(chunk), device))
        })
        .collect();
    Ok(Tensor::cat(means, 0))
}

/// Why the firmware cannot hold the int8 decoder, when that is what `e` (from
/// [`quantize_conv_vae`]) says: its input is longer than the q8 format's latent, or it needs
/// more working memory than the decoder's arena. `None` for any other failure.
fn firmware_misfit(e: &anyhow::Error) -> Option<String> {
    use firmware_core::{decoder, q8};
    e.chain().find_map(|cause| {
        if let Some(q8::Error::BadHeader("latent size")) = cause.downcast_ref::<q8::Error>() {
            return Some(format!(
                "its input is longer than the {} values the firmware's q8 format takes",
                q8::MAX_LATENT
            ));
        }
        match cause.downcast_ref::<decoder::Error>() {
            Some(decoder::Error::ScratchTooSmall { needed }) => Some(format!(
                "it needs {needed} bytes of working memory, the firmware's decoder has {}",
                decoder::SCRATCH_BYTES
            )),
            _ => None,
        }
    })
}

/// The one-hot rows of `digits` for a conditional decoder, `None` for an unconditional one.
fn condition(model: &ConvVae, digits: &[u8], device: &Device) -> Option<Tensor<2>> {
    let classes = model.classes();
    (classes > 0).then(|| one_hot(digits, classes, device))
}

/// Deterministic decoder inputs from the prior: N(0, I) latents, `[n, latent + classes]` (a
/// conditional decoder's with the digits 0..9 in turn appended).
fn prior_samples(model: &ConvVae, n: usize, seed: u64, device: &Device) -> Tensor<2> {
    let z = normal_samples(n, model.decoder.latent() - model.classes(), seed, device);
    let digits: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    with_condition(z, condition(model, &digits, device))
}

/// Deterministic N(0, I) samples, `[n, latent]` (from the trainer's generator, not Burn's
/// process-wide one, which a training running beside the export would also draw from).
fn normal_samples(n: usize, latent: usize, seed: u64, device: &Device) -> Tensor<2> {
    let values = trainer::rng::SplitMix64(seed).normals(n * latent);
    Tensor::from_data(TensorData::new(values, [n, latent]), device)
}
