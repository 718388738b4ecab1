//! Every MNIST family exports its ONNX files, each checked against Burn by tract (and ONNX
//! Runtime when `ORT_DYLIB_PATH` is set) before it is written; the conv VAE also its int8 decoder,
//! as a q8 blob and as QDQ ONNX; `--only` picks files; bad run directories write nothing.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use exporter::{ExportOptions, FLOAT_TOLERANCE, Kind, export_run};
use trainer::{
    data::bundled_dir,
    model::{ConvVaeConfig, ModelConfig},
    run::TrainingConfig,
    training,
};

fn options() -> ExportOptions {
    ExportOptions {
        data_dir: None,
        calibration: 64,
        check: 32,
        ort_dylib: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        only: None,
    }
}

/// A run of `family` trained on 256 images for one epoch.
fn short_run(family: &str, dir: &Path) -> PathBuf {
    short_run_of(ModelConfig::default_for(family).expect("family"), dir)
}

/// A run of `model` trained on 256 images for one epoch, in `dir/<family>`.
fn short_run_of(model: ModelConfig, dir: &Path) -> PathBuf {
    let run = dir.join(model.family());
    let config = TrainingConfig::new(model)
        .with_epochs(1)
        .with_batch_size(32)
        .with_train_subset(Some(256))
        .with_test_subset(Some(64));
    training::train(&config, &bundled_dir(), &run, &[Device::flex()], |_| {}).expect("trains");
    run
}

#[test]
fn every_mnist_family_exports_checked_onnx_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let expected: [(&str, &[&str]); 5] = [
        ("dense-ae", &["encoder.onnx", "decoder.onnx"]),
        ("conv-ae", &["encoder.onnx", "decoder.onnx"]),
        ("fc-vae", &["encoder.onnx", "decoder.onnx"]),
        ("denoising-ae", &["denoiser.onnx"]),
        ("super-res", &["upscaler.onnx"]),
    ];
    for (family, files) in expected {
        let run = short_run(family, dir.path());
        let out = dir.path().join(format!("{family}-out"));
        let report = export_run(&run, &out, &options()).expect("exports");
        let written: Vec<&str> = report.files.iter().map(|a| a.file.as_str()).collect();
        assert_eq!(written, files, "{family}");
        for file in &report.files {
            let bytes = std::fs::read(out.join(&file.file)).expect("written");
            assert_eq!(bytes.len(), file.bytes, "{}", file.file);
            assert!(!file.parity.is_empty());
            for p in &file.parity {
                assert!(p.max_abs_diff <= FLOAT_TOLERANCE, "{family} {p:?}");
                assert!(p.inputs >= 8, "{p:?}");
            }
        }
        // report.json is the returned report, field for field.
        let json = std::fs::read_to_string(out.join("report.json")).expect("report.json");
        let written: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        let returned = serde_json::to_string(&report).expect("serialises");
        assert_eq!(
            written,
            serde_json::from_str::<serde_json::Value>(&returned).expect("JSON")
        );
        assert_eq!(written["family"], family);
        if family == "super-res" {
            // Fully convolutional: any batch and even size, checked at 14x14, 14x56 and 28x28.
            assert_eq!(
                report.files[0].input_shape,
                "[batch,1,height,width] (height, width even)"
            );
            assert!(report.files[0].parity.iter().all(|p| p.inputs == 10));
        }
    }
    // A file that cannot be written: an error naming it, and none of the set written.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("decoder.onnx")).expect("mkdir");
    let err = export_run(&dir.path().join("dense-ae"), &blocked, &options()).expect_err("blocked");
    assert!(format!("{err:#}").contains("decoder.onnx"), "{err:#}");
    let left: Vec<_> = std::fs::read_dir(&blocked)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["decoder.onnx"], "only the directory in the way");
}

#[test]
fn the_check_images_come_from_the_runs_own_dataset_unless_told_otherwise() {
    use trainer::{model::CameraDenoiserConfig, natural};
    let camera = ModelConfig::CameraDenoiser(
        CameraDenoiserConfig::new()
            .with_channels(4)
            .with_patch(32)
            .with_patches_per_epoch(64),
    );
    let cases = [
        (
            ModelConfig::default_for("dense-ae").expect("family"),
            bundled_dir(),
            "decoder.onnx",
        ),
        (camera, natural::bundled_dir(), "denoiser.onnx"),
    ];
    for (model, bundled, file) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let copy = dir.path().join("my-data");
        std::fs::create_dir(&copy).expect("mkdir");
        for entry in std::fs::read_dir(&bundled).expect("bundled data") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
        }
        let run = dir.path().join("run");
        let mut config = TrainingConfig::new(model)
            .with_epochs(1)
            .with_batch_size(32)
            .with_data(Some(copy.clone()));
        if file == "decoder.onnx" {
            config = config
                .with_train_subset(Some(256))
                .with_test_subset(Some(64));
        }
        training::train(&config, &copy, &run, &[Device::flex()], |_| {}).expect("trains");

        // The run's dataset gone: the export reads it (not the bundled data) and says so.
        std::fs::remove_dir_all(&copy).expect("rm");
        let out = dir.path().join("out");
        let err = export_run(&run, &out, &options()).expect_err("the run's dataset is gone");
        assert!(format!("{err:#}").contains("my-data"), "{file}: {err:#}");
        assert!(!out.exists(), "nothing written");

        // Named explicitly, another copy of the data does.
        let given = ExportOptions {
            data_dir: Some(bundled.clone()),
            ..options()
        };
        export_run(&run, &out, &given).expect("exports with --data");
        assert!(out.join(file).exists(), "{file}");
    }
}

#[test]
fn a_broken_run_is_one_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = short_run("conv-ae", dir.path());
    let weights = run.join("model.bpk");
    let bytes = std::fs::read(&weights).expect("weights");
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).expect("truncate");
    let out = dir.path().join("out");
    let err = export_run(&run, &out, &options()).expect_err("corrupt weights");
    assert!(format!("{err:#}").contains("model.bpk"), "{err:#}");
    assert!(!out.exists(), "nothing written");

    std::fs::remove_file(&weights).expect("rm");
    let err = export_run(&run, &out, &options()).expect_err("missing weights");
    assert!(format!("{err:#}").contains("cannot read"), "{err:#}");
    let config = run.join("config.json");
    let json = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, json.replace("conv-ae", "transformer")).expect("write");
    let err = export_run(&run, &out, &options()).expect_err("unknown family");
    assert!(
        format!("{err:#}").contains("unknown model family"),
        "{err:#}"
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn the_conv_vae_exports_its_int8_decoder_as_q8_and_as_qdq_onnx_matching_the_firmware() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = short_run("conv-vae", dir.path());
    // No latents to check or calibrate on is an error, not a panic, and writes nothing.
    let none = dir.path().join("none");
    for (check, calibration) in [(0, 32), (32, 0)] {
        let options = ExportOptions {
            check,
            calibration,
            ..options()
        };
        let err = export_run(&run, &none, &options).expect_err("no latents");
        assert!(format!("{err:#}").contains("needs latents"), "{err:#}");
        assert!(!none.exists(), "nothing written");
    }
    // Nor are more latents than the dataset's images quietly cut to what it has.
    for (check, calibration, said) in [
        (
            20_002,
            32,
            "--check 20002 (half of them encodings) needs 10001 test images",
        ),
        (
            32,
            60_001,
            "--calibration 60001 needs 60001 training images",
        ),
    ] {
        let options = ExportOptions {
            check,
            calibration,
            ..options()
        };
        let err = export_run(&run, &none, &options).expect_err("too many latents");
        assert!(format!("{err:#}").contains(said), "{err:#}");
        assert!(!none.exists(), "nothing written");
    }
    check_conv_vae_export(run, dir.path(), 32);
}

#[test]
fn a_widened_conv_vae_exports_the_same_files() {
    // Other channels and a dense hidden layer on each side: two dense layers before the convs.
    let model = ConvVaeConfig::new()
        .with_channels(Some(4))
        .with_hidden(Some(24));
    let dir = tempfile::tempdir().expect("temp dir");
    let run = short_run_of(ModelConfig::ConvVae(model), dir.path());
    // An odd number of check latents: 17 test encodings and 16 samples.
    check_conv_vae_export(run, dir.path(), 33);
}

/// A conv VAE the firmware cannot hold (a latent longer than the q8 format's 64 values, or
/// channels whose maps outgrow the decoder's 4 KiB arena): a full export writes the float files
/// and names what it left out, where it had exported nothing; asked for the int8 files by name,
/// the error says why and what exports the rest.
#[test]
fn a_conv_vae_too_large_for_the_firmware_exports_its_float_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let models = [
        (
            ConvVaeConfig::new().with_latent(65),
            "longer than the 64 values",
        ),
        (
            ConvVaeConfig::new().with_channels(Some(9)),
            "bytes of working memory, the firmware's decoder has 4096",
        ),
    ];
    for (i, (model, why)) in models.into_iter().enumerate() {
        let run = short_run_of(ModelConfig::ConvVae(model), &dir.path().join(i.to_string()));
        let out = dir.path().join(format!("out{i}"));
        let report = export_run(&run, &out, &options()).expect("exports the float files");
        let written: Vec<Kind> = report.files.iter().map(|f| f.kind).collect();
        assert_eq!(written, [Kind::Encoder, Kind::Decoder]);
        assert!(
            report.not_exported.len() == 1 && report.not_exported[0].contains(why),
            "{:?}",
            report.not_exported
        );
        assert!(!out.join("decoder.q8").exists());
        let json = std::fs::read_to_string(out.join("report.json")).expect("report");
        assert!(json.contains("not_exported"), "{json}");
        let only_q8 = ExportOptions {
            only: Some(vec![Kind::Q8]),
            ..options()
        };
        let err = export_run(&run, &dir.path().join("q8"), &only_q8).expect_err("no q8");
        let message = format!("{err:#}");
        assert!(
            message.contains("decoder.q8 cannot be exported") && message.contains(why),
            "{message}"
        );
        assert!(message.contains("`--only encoder,decoder`"), "{message}");
    }
}

/// Exports a conv VAE `run` into `dir/out` and checks every file it writes.
fn check_conv_vae_export(run: PathBuf, dir: &Path, check: usize) {
    let out = dir.join("out");
    let options = ExportOptions { check, ..options() };
    let report = export_run(&run, &out, &options).expect("exports");
    let written: Vec<Kind> = report.files.iter().map(|f| f.kind).collect();
    assert_eq!(
        written,
        [Kind::Encoder, Kind::Decoder, Kind::Q8, Kind::Int8Onnx]
    );
    let q8 = report.q8.as_ref().expect("q8 report");
    assert_eq!(q8.latents, check);
    let int8 = report.file(Kind::Int8Onnx).expect("int8 onnx");
    assert!(!int8.int8_parity.is_empty());
    for p in &int8.int8_parity {
        // Only requantization rounding may differ (see `exporter::qdq`).
        assert!(p.identical > 0.9, "{p:?}");
        assert!(p.max_levels <= exporter::MAX_INT8_ONNX_LEVELS, "{p:?}");
    }
    // The QDQ file is an ordinary ONNX model with int8 weights: ops as documented.
    let bytes = std::fs::read(out.join("decoder_int8.onnx")).expect("written");
    for op in [
        "QuantizeLinear",
        "DequantizeLinear",
        "Conv",
        "Gemm",
        "Gather",
    ] {
        assert!(
            bytes.windows(op.len()).any(|w| w == op.as_bytes()),
            "{op} in the int8 ONNX"
        );
    }
}

#[test]
fn only_exports_the_named_files_and_refuses_ones_the_family_lacks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = short_run("dense-ae", dir.path());
    let out = dir.path().join("out");
    let only = ExportOptions {
        only: Some(vec![Kind::Decoder]),
        ..options()
    };
    let report = export_run(&run, &out, &only).expect("exports");
    assert_eq!(report.files.len(), 1);
    assert!(out.join("decoder.onnx").is_file());
    assert!(!out.join("encoder.onnx").exists());

    let other = dir.path().join("other");
    let wrong = ExportOptions {
        only: Some(vec![Kind::Decoder, Kind::Q8]),
        ..options()
    };
    let err = export_run(&run, &other, &wrong).expect_err("a dense AE has no q8");
    let message = format!("{err:#}");
    assert!(
        message.contains("no q8") && message.contains("encoder, decoder"),
        "{message}"
    );
    assert!(!other.exists(), "nothing written");
    assert_eq!("int8-onnx".parse::<Kind>(), Ok(Kind::Int8Onnx));
    assert!("q4".parse::<Kind>().unwrap_err().contains("one of encoder"));
}
