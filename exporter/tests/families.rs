//! Every MNIST family exports its ONNX files, each checked against Burn by tract (and ONNX
//! Runtime when `ORT_DYLIB_PATH` is set) before it is written; bad run directories write nothing.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use exporter::{ExportOptions, Exported, FLOAT_TOLERANCE, export_run};
use trainer::{data::bundled_dir, model::ModelConfig, run::TrainingConfig, training};

fn options() -> ExportOptions {
    ExportOptions {
        data_dir: bundled_dir(),
        calibration: 64,
        check: 32,
        ort_dylib: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
    }
}

/// A run of `family` trained on 256 images for one epoch.
fn short_run(family: &str, dir: &Path) -> PathBuf {
    let run = dir.join(family);
    let config = TrainingConfig::new(ModelConfig::default_for(family).expect("family"))
        .with_epochs(1)
        .with_batch_size(32)
        .with_train_subset(Some(256))
        .with_test_subset(Some(64));
    training::train(&config, &bundled_dir(), &run, &Device::flex(), |_| {}).expect("trains");
    run
}

#[test]
fn every_mnist_family_exports_checked_onnx_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let expected: [(&str, &[&str]); 4] = [
        ("dense-ae", &["encoder.onnx", "decoder.onnx"]),
        ("fc-vae", &["encoder.onnx", "decoder.onnx"]),
        ("denoising-ae", &["denoiser.onnx"]),
        ("super-res", &["upscaler.onnx"]),
    ];
    for (family, files) in expected {
        let run = short_run(family, dir.path());
        let out = dir.path().join(format!("{family}-out"));
        let Exported::Onnx(report) = export_run(&run, &out, &options()).expect("exports") else {
            panic!("{family}: an ONNX-only export");
        };
        let written: Vec<&str> = report.artifacts.iter().map(|a| a.file.as_str()).collect();
        assert_eq!(written, files, "{family}");
        for artifact in &report.artifacts {
            assert!(out.join(&artifact.file).is_file(), "{}", artifact.file);
            assert!(!artifact.onnx_parity.is_empty());
            for p in &artifact.onnx_parity {
                assert!(p.max_abs_diff <= FLOAT_TOLERANCE, "{family} {p:?}");
                assert!(p.inputs >= 8, "{p:?}");
            }
        }
        assert!(out.join("report.json").is_file());
        if family == "super-res" {
            assert_eq!(report.artifacts[0].input_shape, [1, 1, 14, 14]);
        }
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
