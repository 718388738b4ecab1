//! Burn -> ONNX -> Burn: the ONNX files our exporter writes load back into Burn through
//! burn-onnx's importer (its code generator, run by this crate's build script on the files in
//! `fixtures/roundtrip/`) and the generated models compute what the trainer's models compute.
//!
//! The fixtures are a conv VAE, a camera denoiser and a super-resolution AE trained for one short
//! epoch (quality does not matter here) and their exported encoder, decoder (float; int8 as QDQ
//! ONNX, checked against the q8 blob run by `firmware-core`), denoiser and upscaler (both at
//! several frame sizes). The last test re-exports
//! the three runs and checks that the exporter still writes exactly those graphs, so a change to
//! the exporter cannot leave the round trip proven on stale files:
//! `scripts/update-roundtrip-fixtures.sh` refreshes them.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::Distribution;
use exporter::{ExportOptions, FLOAT_TOLERANCE, Kind, export_run};
use trainer::{data, model::Model, natural, rng::SplitMix64, run::load_run};

#[allow(dead_code)] // the generated `from_bytes`
mod conv_vae_encoder {
    include!(concat!(env!("OUT_DIR"), "/roundtrip/conv_vae_encoder.rs"));
}
#[allow(dead_code)] // the generated `from_bytes`
mod conv_vae_decoder {
    include!(concat!(env!("OUT_DIR"), "/roundtrip/conv_vae_decoder.rs"));
}
#[allow(dead_code)] // the generated `from_bytes`
mod conv_vae_decoder_int8 {
    include!(concat!(
        env!("OUT_DIR"),
        "/roundtrip/conv_vae_decoder_int8.rs"
    ));
}
#[allow(dead_code)] // the generated `from_bytes`
mod camera_denoiser {
    include!(concat!(env!("OUT_DIR"), "/roundtrip/camera_denoiser.rs"));
}
#[allow(dead_code)] // the generated `from_bytes`
mod super_res_upscaler {
    include!(concat!(env!("OUT_DIR"), "/roundtrip/super_res_upscaler.rs"));
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/roundtrip")
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("f32 tensor")
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

fn conv_vae(device: &Device) -> Model {
    load_run(&fixtures().join("conv-vae"), device)
        .expect("the conv VAE fixture run")
        .1
}

#[test]
fn the_conv_vae_decoder_comes_back_through_burn_import() {
    let device = Device::default();
    let model = conv_vae(&device);
    let imported = conv_vae_decoder::Model::default();
    // A batch of 16 (the exported decoder's batch is symbolic) and a single latent.
    for n in [16, 1] {
        device.seed(n as u64);
        let latents = Tensor::<2>::random([n, 2], Distribution::Normal(0.0, 1.5), &device);
        let want = model.decode(latents.clone()).expect("a decoder");
        let diff = max_abs_diff(imported.forward(latents), want);
        assert!(diff <= FLOAT_TOLERANCE, "batch {n}: {diff}");
    }
}

#[test]
fn the_int8_decoder_comes_back_through_burn_import_and_draws_the_firmwares_pixels() {
    let device = Device::default();
    let imported = conv_vae_decoder_int8::Model::default();
    let blob = std::fs::read(fixtures().join("conv_vae_decoder.q8")).expect("q8 fixture");
    device.seed(64);
    let latents = Tensor::<2>::random([64, 2], Distribution::Normal(0.0, 1.5), &device);
    let firmware =
        exporter::quantize::decode_int8(&blob, &values(latents.clone()), 2).expect("int8 decode");
    let burn = values(imported.forward(latents));
    let parity = exporter::qdq::compare("burn", 64, &burn, &firmware);
    // Burn requantizes in float like ONNX Runtime and tract: only rounding ties may differ.
    assert!(parity.identical > 0.99, "{parity:?}");
    assert!(
        parity.max_levels <= exporter::MAX_INT8_ONNX_LEVELS,
        "{parity:?}"
    );
}

#[test]
fn the_conv_vae_encoder_comes_back_through_burn_import() {
    let device = Device::default();
    let model = conv_vae(&device);
    let imported = conv_vae_encoder::Model::default();
    let mut test = data::Mnist::load(&data::bundled_dir(), data::Split::Test).expect("MNIST");
    test.truncate(8);
    for i in 0..test.len() {
        let image = test.batch(&[i], &device);
        let want = model.encoder_outputs(image.clone());
        let (mean, log_var) = imported.forward(image);
        assert_eq!(want.len(), 2, "mean and log-variance");
        let diffs = [
            max_abs_diff(mean, want[0].clone()),
            max_abs_diff(log_var, want[1].clone()),
        ];
        assert!(
            diffs.iter().all(|&d| d <= FLOAT_TOLERANCE),
            "image {i}: {diffs:?}"
        );
    }
}

#[test]
fn the_camera_denoiser_comes_back_through_burn_import_at_any_frame_size() {
    let device = Device::default();
    let (_, model) = load_run(&fixtures().join("camera-denoiser"), &device).expect("fixture run");
    let Model::CameraDenoiser(model) = model else {
        panic!("the fixture is a camera denoiser");
    };
    let imported = camera_denoiser::Model::default();
    let photo = &natural::load(&natural::bundled_dir(), &["camera.png"]).expect("photo")[0];
    let mut rng = SplitMix64(3);
    for (w, h) in [(96, 64), (33, 47)] {
        let crop: Vec<f32> = (0..h)
            .flat_map(|y| photo.pixels[y * photo.width..][..w].to_vec())
            .collect();
        let noisy = natural::add_noise(&crop, 25.0, &mut rng);
        let frame = Tensor::<1>::from_floats(noisy.as_slice(), &device).reshape([1, 1, h, w]);
        // The exported graph clips the output to [0, 1].
        let want = model.forward(frame.clone()).clamp(0.0, 1.0);
        let diff = max_abs_diff(imported.forward(frame), want);
        assert!(diff <= FLOAT_TOLERANCE, "{w}x{h}: {diff}");
    }
}

#[test]
fn the_upscaler_comes_back_through_burn_import_at_any_even_size() {
    let device = Device::default();
    let (config, model) = load_run(&fixtures().join("super-res"), &device).expect("fixture run");
    let imported = super_res_upscaler::Model::default();
    let mut test = data::Mnist::load(&data::bundled_dir(), data::Split::Test).expect("MNIST");
    test.truncate(4);
    let mut rng = SplitMix64(1);
    let low: Vec<Tensor<4>> = (0..test.len())
        .map(|i| {
            let clean = test.batch(&[i], &device);
            config.model.corruption().apply(clean, &mut rng)
        })
        .collect();
    // 14x14 digits, and a 14x56 strip of four.
    for input in [low[0].clone(), Tensor::cat(low, 3)] {
        let want = model.reconstruct(input.clone(), None);
        let diff = max_abs_diff(imported.forward(input.clone()), want);
        assert!(diff <= FLOAT_TOLERANCE, "{:?}: {diff}", input.dims());
    }
}

/// The ONNX model in `bytes` without its metadata (which names the run directory).
fn graph_only(bytes: &[u8]) -> onnx_ir::ModelProto {
    use onnx_ir::Message;
    let mut model = onnx_ir::ModelProto::parse_from_bytes(bytes).expect("an ONNX model");
    model.metadata_props.clear();
    model
}

#[test]
fn the_fixtures_are_what_the_exporter_writes_today() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = [
        ("conv-vae", Kind::Encoder, "conv_vae_encoder.onnx"),
        ("conv-vae", Kind::Decoder, "conv_vae_decoder.onnx"),
        ("conv-vae", Kind::Int8Onnx, "conv_vae_decoder_int8.onnx"),
        ("conv-vae", Kind::Q8, "conv_vae_decoder.q8"),
        ("camera-denoiser", Kind::Denoiser, "camera_denoiser.onnx"),
        ("super-res", Kind::Upscaler, "super_res_upscaler.onnx"),
    ];
    for (run, kind, fixture) in files {
        let out = dir.path().join(fixture);
        let options = ExportOptions {
            data_dir: None,
            // The exporter's default, which the fixtures were made with (it sets the int8 scales).
            calibration: 1000,
            check: 16,
            ort_dylib: None,
            only: Some(vec![kind]),
        };
        export_run(&fixtures().join(run), &out, &options).expect("export");
        let fresh = std::fs::read(out.join(kind.file())).expect("exported");
        let committed = std::fs::read(fixtures().join(fixture)).expect("fixture");
        let same = if kind == Kind::Q8 {
            fresh == committed
        } else {
            graph_only(&fresh) == graph_only(&committed)
        };
        assert!(
            same,
            "{fixture} is not what the exporter writes today: run scripts/update-roundtrip-fixtures.sh"
        );
    }
}
