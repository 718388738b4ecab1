//! The decoder as ONNX: exported with burn-onnx's tracing exporter, given stable I/O names and
//! metadata, and checked with tract and ONNX Runtime against Burn.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, anyhow, bail};
use burn::prelude::*;
use burn_onnx::export::OnnxExporter;
use onnx_ir::{Message, ModelProto};
use trainer::model::ConvDecoder;

use crate::Parity;

/// Name of the decoder's input in the files we write.
pub const LATENT_INPUT: &str = "latent";
/// Name of the decoder's output in the files we write.
pub const IMAGE_OUTPUT: &str = "image";

/// Renames graph input 0 and output 0 everywhere they are used, and records metadata.
fn post_process(bytes: &[u8], metadata: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let mut model = ModelProto::parse_from_bytes(bytes).context("re-reading the exported ONNX")?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("exported ONNX has no graph"))?;
    if graph.input.len() != 1 || graph.output.len() != 1 {
        bail!(
            "expected one input and one output, got {} and {}",
            graph.input.len(),
            graph.output.len()
        );
    }
    let renames = [
        (
            std::mem::replace(&mut graph.input[0].name, LATENT_INPUT.into()),
            LATENT_INPUT,
        ),
        (
            std::mem::replace(&mut graph.output[0].name, IMAGE_OUTPUT.into()),
            IMAGE_OUTPUT,
        ),
    ];
    for node in graph.node.iter_mut() {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if let Some((_, new)) = renames.iter().find(|(old, _)| old == name) {
                *name = (*new).into();
            }
        }
    }
    for (key, value) in metadata {
        model.metadata_props.push(Default::default());
        if let Some(entry) = model.metadata_props.last_mut() {
            entry.key = (*key).into();
            entry.value = value.clone();
        }
    }
    model.producer_name = "autoencoders-to-the-edge exporter".into();
    model.write_to_bytes().context("serialising the ONNX model")
}

/// Exports `decoder` (static batch 1: `latent [1, d]` -> `image [1, 1, 28, 28]`).
pub fn export_decoder(decoder: &ConvDecoder, run_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let latent = decoder.latent();
    let sample = Tensor::<2>::zeros([1, latent], &Device::flex());
    let model = OnnxExporter::new()
        .export(decoder, sample, ConvDecoder::forward)
        .map_err(|e| anyhow!("burn-onnx export failed: {e}"))?;
    post_process(
        model.as_bytes(),
        &[
            ("kind", "decoder".into()),
            ("latent_size", latent.to_string()),
            ("input_shape", format!("[1,{latent}]")),
            ("output_shape", "[1,1,28,28]".into()),
            ("pixel_range", "[0,1]".into()),
            ("source_run", run_dir.display().to_string()),
        ],
    )
}

/// Largest absolute difference between two equally long slices (infinite if lengths differ or a
/// value is NaN, so a broken output can never pass).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f32::INFINITY } else { d }
        })
        .fold(0.0, f32::max)
}

/// Runs the ONNX decoder with tract on each row of `latents`; returns all outputs concatenated.
pub fn run_tract(model_bytes: &[u8], latents: &[f32], latent: usize) -> anyhow::Result<Vec<f32>> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &model_bytes[..])?
        .into_optimized()?
        .into_runnable()?;
    let mut out = Vec::with_capacity(latents.len() / latent * 784);
    for z in latents.chunks(latent) {
        let input = Tensor::from_shape(&[1, latent], z)?;
        let result = plan.run(tvec!(input.into_tvalue()))?;
        out.extend(result[0].to_plain_array_view::<f32>()?.iter().copied());
    }
    Ok(out)
}

/// The process's ONNX Runtime environment. ORT allows one per process, so it is created on
/// first use from `dylib` and shared; asking for another library later is an error.
fn ort_environment(dylib: &Path) -> anyhow::Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<(PathBuf, Result<ort::environment::Environment, String>)> =
        OnceLock::new();
    let (loaded, env) = ENV.get_or_init(|| {
        let env = ort::init_from(dylib)
            .map_err(|e| e.to_string())
            .and_then(|builder| builder.build().map_err(|e| e.to_string()));
        (dylib.to_owned(), env)
    });
    if loaded != dylib {
        bail!("ONNX Runtime was already loaded from {}", loaded.display());
    }
    env.as_ref()
        .map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", dylib.display()))
}

/// Runs the ONNX decoder with ONNX Runtime (loaded from `dylib`) on each row of `latents`.
pub fn run_ort(
    onnx: &[u8],
    latents: &[f32],
    latent: usize,
    dylib: &Path,
) -> anyhow::Result<Vec<f32>> {
    let mut session =
        ort::session::Session::builder(ort_environment(dylib)?)?.commit_from_memory(onnx)?;
    let mut out = Vec::with_capacity(latents.len() / latent * 784);
    for z in latents.chunks(latent) {
        let input =
            ort::value::Tensor::from_array(([1usize, latent], z.to_vec().into_boxed_slice()))?;
        let outputs = session.run(ort::inputs![input])?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>()?;
        out.extend_from_slice(values);
    }
    Ok(out)
}

/// Compares tract and (if `ort_dylib` is given) ONNX Runtime with Burn on `latents`.
pub fn verify_decoder(
    onnx: &[u8],
    decoder: &ConvDecoder,
    latents: Tensor<2>,
    ort_dylib: Option<&Path>,
) -> anyhow::Result<Vec<Parity>> {
    let [n, latent] = latents.dims();
    let expected = decoder
        .forward(latents.clone())
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow!("{e:?}"))?;
    let z = latents
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow!("{e:?}"))?;
    let mut parity = vec![Parity {
        runtime: "tract".into(),
        latents: n,
        max_abs_diff: max_abs_diff(
            &expected,
            &run_tract(onnx, &z, latent).context("running the ONNX decoder with tract")?,
        ),
    }];
    if let Some(dylib) = ort_dylib {
        parity.push(Parity {
            runtime: "onnxruntime".into(),
            latents: n,
            max_abs_diff: max_abs_diff(
                &expected,
                &run_ort(onnx, &z, latent, dylib)
                    .context("running the ONNX decoder with ONNX Runtime")?,
            ),
        });
    }
    Ok(parity)
}
