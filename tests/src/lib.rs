//! Helpers for the end-to-end tests: named tolerances, one comparison function, and where the
//! cross-built artifacts live.
#![warn(missing_docs)]

use std::path::PathBuf;

pub use exporter::onnx::max_abs_diff;

pub mod firmware;
pub mod readme;

/// How close two float outputs must be.
#[derive(Debug, Clone, Copy)]
pub enum Tolerance {
    /// Two float runtimes on the same graph: max abs diff <= [`exporter::FLOAT_TOLERANCE`]
    /// (1e-4, pixels in `[0, 1]`), the bound the exporter itself enforces.
    FloatRuntime,
}

impl Tolerance {
    fn max_abs(self) -> f32 {
        match self {
            Tolerance::FloatRuntime => exporter::FLOAT_TOLERANCE,
        }
    }
}

/// Panics with both names and the observed difference unless `actual` is within `tolerance` of
/// `expected`; returns the difference so tests can print it.
pub fn assert_close(what: &str, expected: &[f32], actual: &[f32], tolerance: Tolerance) -> f32 {
    let d = max_abs_diff(expected, actual);
    assert!(
        d <= tolerance.max_abs(),
        "{what}: max |diff| {d:e} exceeds {tolerance:?} ({:e}); lengths {} and {}",
        tolerance.max_abs(),
        expected.len(),
        actual.len()
    );
    d
}

/// PSNR in dB of `u8` pixels against float pixels in `[0, 1]`.
pub fn psnr_u8_vs_float(pixels: &[u8], reference: &[f32]) -> f64 {
    assert_eq!(pixels.len(), reference.len(), "PSNR of different sizes");
    let mse = pixels
        .iter()
        .zip(reference)
        .map(|(&p, &r)| (p as f64 / 255.0 - r as f64).powi(2))
        .sum::<f64>()
        / pixels.len() as f64;
    10.0 * (1.0 / mse.max(1e-12)).log10()
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A fresh scratch directory under the target directory.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("e2e").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}
