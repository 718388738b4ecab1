//! The `exporter` binary's checks before it starts its work.

use std::process::Command;

/// An ONNX Runtime library that cannot be loaded is said first, before the run is read or
/// exported (it had been said after the whole export, a minute on a large run), and nothing is
/// written.
#[test]
fn an_onnx_runtime_that_cannot_be_loaded_is_said_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_exporter"))
        .arg(dir.path().join("no-such-run"))
        .arg("--out")
        .arg(&out)
        .arg("--ort-dylib")
        .arg(dir.path().join("libonnxruntime.so"))
        .output()
        .expect("run exporter");
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("cannot load ONNX Runtime from"),
        "{message}"
    );
    assert!(!message.contains("config.json"), "{message}");
    assert!(!out.exists());
}
