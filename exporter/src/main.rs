//! `exporter`: turns a trained run into verified ONNX and int8 artifacts.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use exporter::{ExportOptions, Kind, Progress, export_run_with_progress};

/// Exports a run directory, every file checked before anything is written: ONNX files with tract
/// and ONNX Runtime against Burn, the int8 decoder against the float one and its ONNX form
/// against firmware-core. conv VAE: encoder.onnx, decoder.onnx, decoder.q8 (int8 for the
/// firmware) and decoder_int8.onnx (the same int8 model, QDQ); camera denoiser: denoiser.onnx
/// (any frame size); dense/conv AE and FC VAE: encoder.onnx and decoder.onnx; denoising AE:
/// denoiser.onnx; super-resolution AE: upscaler.onnx; always report.json.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  ORT_DYLIB_PATH=/path/to/libonnxruntime.so exporter runs/conv-vae --out out/conv-vae\n  \
                  exporter runs/conv-vae --out out/q8 --only q8,int8-onnx --no-ort"
)]
struct Cli {
    /// Run directory written by `trainer train`.
    run: PathBuf,
    /// Directory to write the artifacts into.
    #[arg(long)]
    out: PathBuf,
    /// Export only these (comma-separated): encoder, decoder, denoiser, upscaler, q8, int8-onnx.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<Kind>>,
    /// Training images encoded to calibrate the int8 activations (plus as many N(0, I) samples),
    /// at most MNIST's 60,000.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    calibration: u32,
    /// Latents the conv VAE's decoders are checked on (half test encodings, half N(0, I)
    /// samples), at most 20,000 (the 10,000 test images' encodings and as many samples).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    check: u32,
    /// Dataset directory: MNIST (calibration and check images) or, for a camera denoiser, the
    /// photographs (check frames) [default: the one the run was trained on, else the bundled one].
    #[arg(long)]
    data: Option<PathBuf>,
    /// ONNX Runtime shared library for the reference check.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
    /// Skip the ONNX Runtime check (tract still checks every file).
    #[arg(long)]
    no_ort: bool,
}

/// Draws `[####----] step/steps what` on stderr: redrawn in place on a terminal, one line per
/// step otherwise (logs, CI).
fn show(progress: Progress) {
    const WIDTH: usize = 20;
    let filled = (WIDTH * progress.step / progress.steps.max(1)).min(WIDTH);
    let line = format!(
        "[{}{}] {}/{} {}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        progress.step,
        progress.steps,
        progress.what
    );
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let end = if progress.step == progress.steps {
            "\n"
        } else {
            ""
        };
        let _ = write!(err, "\r\x1b[2K{line}{end}");
        let _ = err.flush();
    } else {
        let _ = writeln!(err, "{line}");
    }
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
        calibration: cli.calibration as usize,
        check: cli.check as usize,
        ort_dylib,
        only: cli.only,
    };
    let report = export_run_with_progress(&cli.run, &cli.out, &options, &mut show)
        .with_context(|| format!("exporting {}", cli.run.display()))?;
    let name_width = report
        .files
        .iter()
        .map(|f| f.file.len())
        .max()
        .unwrap_or(0)
        .max("file".len());
    machine::outln!("{:<name_width$}  {:>9}  checked", "file", "bytes");
    for file in &report.files {
        machine::outln!(
            "{:<name_width$}  {:>9}  {}",
            file.file,
            file.bytes,
            file.checked
        );
    }
    for note in &report.not_exported {
        machine::outln!("not exported: {note}");
    }
    machine::outln!("wrote {} (and report.json)", cli.out.display());
    Ok(())
}

#[cfg(test)]
#[macro_use]
#[path = "../../tests/src/readme.rs"]
mod readme;

#[cfg(test)]
readme_commands_parse!(super::Cli, "exporter", "exporter", 3, []);
