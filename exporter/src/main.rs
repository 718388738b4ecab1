//! `exporter`: turns a trained run into verified ONNX and int8 artifacts.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use exporter::{ExportOptions, Exported, export_run};

/// Exports a run directory, every file checked with tract and ONNX Runtime against Burn first:
/// conv VAE: encoder.onnx, decoder.onnx and decoder.q8 (int8, checked against the float
/// decoder); camera denoiser: denoiser.onnx (any frame size); dense/conv AE and FC VAE:
/// encoder.onnx and decoder.onnx; denoising AE: denoiser.onnx; super-resolution AE:
/// upscaler.onnx; and report.json.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example:\n  ORT_DYLIB_PATH=/path/to/libonnxruntime.so exporter runs/conv-vae --out out/conv-vae"
)]
struct Cli {
    /// Run directory written by `trainer train`.
    run: PathBuf,
    /// Directory to write the artifacts into.
    #[arg(long)]
    out: PathBuf,
    /// Training images encoded to calibrate the int8 activations (plus as many N(0, I) samples).
    #[arg(long, default_value_t = 1000)]
    calibration: usize,
    /// Latents each artifact is checked on (half test encodings, half N(0, I) samples).
    #[arg(long, default_value_t = 1000)]
    check: usize,
    /// Directory with the MNIST files.
    #[arg(long, default_value_os_t = trainer::data::bundled_dir())]
    data: PathBuf,
    /// ONNX Runtime shared library for the reference check.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
    /// Skip the ONNX Runtime check (tract still checks every file).
    #[arg(long)]
    no_ort: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ort_dylib = match (cli.no_ort, cli.ort_dylib) {
        (true, _) => None,
        (false, Some(p)) => Some(p),
        (false, None) => anyhow::bail!(
            "ONNX Runtime is needed for the reference check: set ORT_DYLIB_PATH to libonnxruntime.so \
             (e.g. from `pip install onnxruntime`) or pass --no-ort"
        ),
    };
    let options = ExportOptions {
        data_dir: cli.data,
        calibration: cli.calibration,
        check: cli.check,
        ort_dylib,
    };
    let exported = export_run(&cli.run, &cli.out, &options)
        .with_context(|| format!("exporting {}", cli.run.display()))?;
    println!("{:<24} {:>12}", "check", "result");
    let mut checked: Vec<(String, &exporter::Parity)> = Vec::new();
    match &exported {
        Exported::Decoder(r) => {
            checked.extend(r.onnx_parity.iter().map(|p| ("decoder".into(), p)));
            if let Some(a) = &r.onnx_encoder {
                checked.extend(a.onnx_parity.iter().map(|p| (a.kind.clone(), p)));
            }
        }
        Exported::Denoiser(r) => {
            checked.extend(r.onnx_parity.iter().map(|p| ("denoiser".into(), p)))
        }
        Exported::Onnx(r) => {
            for a in &r.artifacts {
                checked.extend(a.onnx_parity.iter().map(|p| (a.kind.clone(), p)));
            }
        }
    }
    for (kind, p) in checked {
        println!(
            "{:<24} {:>12.2e}  max |diff| vs Burn over {} inputs",
            format!("{kind}: {}", p.runtime),
            p.max_abs_diff,
            p.inputs
        );
    }
    match &exported {
        Exported::Decoder(report) => println!(
            "{:<24} {:>9.2} dB  max |diff| {:.4}, {} bytes, {} MACs",
            "int8 decoder PSNR",
            report.q8.psnr_db,
            report.q8.max_abs_diff,
            report.q8.bytes,
            report.q8.macs
        ),
        Exported::Denoiser(report) => println!(
            "{:<24} {:>12}  frame sizes checked {:?}",
            "denoiser MACs/pixel", report.macs_per_pixel, report.checked_sizes
        ),
        Exported::Onnx(report) => {
            let files: Vec<&str> = report.artifacts.iter().map(|a| a.file.as_str()).collect();
            println!("{} files: {}", report.family, files.join(", "));
        }
    }
    println!("wrote {}", cli.out.display());
    Ok(())
}
