//! `edge bench`: latency percentiles of a decoder (digits per second) or a denoiser (frames per
//! second) with tract and, built with the `ort` feature, ONNX Runtime on the same inputs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edge_runtime::{Decoder, Denoiser, OnnxModel, bench, latents};

use crate::parse_size;

pub(crate) const BENCH_EXAMPLES: &str = "\
Examples:
  edge bench --model out/conv-vae/decoder.onnx --runs 500

  # tract and ONNX Runtime side by side (build with --features ort):
  ORT_DYLIB_PATH=/path/to/libonnxruntime.so edge bench --model out/conv-vae/decoder.onnx";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
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

/// The `bench` table's header; `input` names the second column, `rate` the last.
fn print_header(input: &str, rate: &str) {
    machine::outln!(
        "{:<12} {input:>8} {:>6} {:>9} {:>9} {:>9} {:>9} {rate:>10}",
        "runtime",
        "runs",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms"
    );
}

/// One row of the `bench` table: `runtime` on `input` (a batch size or a frame size); each call
/// handles `items` digits or frames.
fn print_row(runtime: &str, input: &str, stats: &bench::Stats, items: usize) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    machine::outln!(
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
    machine::outln!(
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
        if denoiser.strip_rows() < height {
            // The whole frame's tensors do not fit in the memory: tract runs it in strips.
            machine::outln!(
                "  (tract: {width}x{height} in strips of {} rows, the whole frame would not fit \
                 in memory)",
                denoiser.strip_rows()
            );
        }
        #[cfg(feature = "ort")]
        if let Some(dylib) = &args.ort_dylib {
            // The model's input as tract gets it, reflect padding included: the same work. (The
            // tract row also times the 8-bit conversions, the mirroring and the crop, and in
            // strips the context rows each strip repeats.)
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

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    // Without the feature `--ort-dylib` does not exist, and the variable would go unread.
    #[cfg(not(feature = "ort"))]
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        machine::errln!(
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
    machine::outln!(
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
