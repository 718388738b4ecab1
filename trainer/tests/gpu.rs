//! The GPU path (`--features wgpu`) against the CPU, on whatever wgpu adapter the machine has.
//! CI has no GPU: it runs these on Mesa's lavapipe, a Vulkan driver that runs on the CPU
//! (`scripts/deps.sh` installs it), which compiles and runs the same compute shaders a GPU
//! would. Without the feature this file is empty.
//!
//! Burn draws initial weights with each backend's own generator, so a GPU run started from a seed
//! is not the CPU's run. These tests start both from the same checkpoint instead (one epoch
//! trained on the CPU, resumed for a second): the GPU's second epoch must end where the CPU's
//! ends, up to float rounding (the GPU takes other code paths: Burn's Adam instead of
//! [`trainer::optim::FusedAdam`], the loss as tensor ops instead of the CPU's fused pass, its own
//! convolution and reduction kernels).
#![cfg(feature = "wgpu")]

use std::path::Path;

use burn::{prelude::*, tensor::DeviceKind};
use trainer::{
    model::ModelConfig,
    run::TrainingConfig,
    training::{self, EpochMetrics, Progress},
};

/// Relative difference allowed between two runs of one epoch from the same checkpoint. (On
/// lavapipe the GPU's losses are within 8e-6 of the CPU's, most within 1e-7.)
const TOLERANCE: f64 = 1e-4;

/// One epoch of `family` on 512 examples (batch 64: 8 Adam steps), tested on 128 (the camera
/// denoiser: 512 patches, tested on the held-out photographs).
fn short_run(family: &str) -> TrainingConfig {
    let model = match ModelConfig::default_for(family).expect("a known family") {
        ModelConfig::CameraDenoiser(c) => {
            ModelConfig::CameraDenoiser(c.with_patches_per_epoch(512))
        }
        other => other,
    };
    TrainingConfig::new(model)
        .with_epochs(1)
        .with_batch_size(64)
        .with_train_subset(Some(512))
        .with_test_subset(Some(128))
}

/// Trains the first epoch of `config` on the CPU into `dir`.
fn first_epoch_on_the_cpu(config: &TrainingConfig, dir: &Path) -> EpochMetrics {
    let data = training::bundled_data_dir(&config.model);
    let mut last = None;
    training::train(config, &data, dir, &[Device::flex()], |p| {
        if let Progress::Epoch(m) = p {
            last = Some(*m);
        }
    })
    .expect("the first epoch trains on the CPU");
    last.expect("an epoch was reported")
}

/// A copy of the run in `from`, resumed on `devices` for a second epoch: that epoch's metrics.
fn second_epoch(from: &Path, config: &TrainingConfig, devices: &[Device]) -> EpochMetrics {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(from).expect("the run") {
        let path = entry.expect("an entry").path();
        std::fs::copy(
            &path,
            dir.path().join(path.file_name().expect("a file name")),
        )
        .expect("copy");
    }
    let mut last = None;
    training::resume(
        dir.path(),
        &training::bundled_data_dir(&config.model),
        devices,
        Some(2),
        |p| {
            if let Progress::Epoch(m) = p {
                last = Some(*m);
            }
        },
    )
    .expect("the second epoch trains");
    let m = last.expect("an epoch was reported");
    assert_eq!(m.epoch, 2);
    m
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * a.abs().max(b.abs())
}

/// `second` matches `reference` (the CPU's second epoch) in every loss, and the epoch moved the
/// losses by more than the tolerance (so the match says something about the optimizer step).
fn assert_same_epoch(
    what: &str,
    first: &EpochMetrics,
    reference: &EpochMetrics,
    second: &EpochMetrics,
) {
    let losses = |m: &EpochMetrics| {
        [
            m.train_loss,
            m.train_reconstruction,
            m.train_kl,
            m.test_loss,
            m.test_reconstruction,
            m.test_kl,
            m.test_mse,
        ]
    };
    for (r, s) in losses(reference).into_iter().zip(losses(second)) {
        assert!(
            s.is_finite() && close(r, s),
            "{what}: second epoch\n{second:?}\nvs the CPU's\n{reference:?}"
        );
    }
    assert!(
        !close(first.test_loss, reference.test_loss),
        "{what}: the second epoch did not move the test loss ({} -> {})",
        first.test_loss,
        reference.test_loss
    );
}

/// Every family's second epoch on the GPU ends where the CPU's does.
#[test]
fn the_gpu_trains_every_family_like_the_cpu() {
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    for family in ModelConfig::FAMILIES {
        let config = short_run(family);
        let run = tempfile::tempdir().expect("temp dir");
        let first = first_epoch_on_the_cpu(&config, run.path());
        let cpu = second_epoch(run.path(), &config, &[Device::flex()]);
        let on_gpu = second_epoch(run.path(), &config, std::slice::from_ref(&gpu));
        assert_same_epoch(family, &first, &cpu, &on_gpu);
    }
}

/// Weight averaging (`--ema`): the GPU keeps its average on the device (f32 sums with a
/// compensation term), the CPU in host memory (f64 sums); the averaged weights, which the test
/// losses are measured on, end the same.
#[test]
fn the_gpu_averages_the_weights_like_the_cpu() {
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    for family in ["conv-ae", "fc-vae"] {
        let config = short_run(family).with_ema_decay(Some(0.9));
        let run = tempfile::tempdir().expect("temp dir");
        let first = first_epoch_on_the_cpu(&config, run.path());
        let cpu = second_epoch(run.path(), &config, &[Device::flex()]);
        let on_gpu = second_epoch(run.path(), &config, std::slice::from_ref(&gpu));
        assert_same_epoch(&format!("{family} --ema 0.9"), &first, &cpu, &on_gpu);
    }
}

/// The average's f32 sums on the GPU keep their Kahan compensation (a shader compiler that
/// reassociated `(t - s) - y` to zero would drop it): they end where the host's f64 sums do in
/// a case where uncompensated sums end ~2e-6 high ([`trainer::average::compensation_case`]).
#[test]
fn the_gpus_average_keeps_its_compensation() {
    let (host, gpu) = trainer::average::compensation_case(&Device::wgpu(DeviceKind::DefaultDevice));
    assert!((host - gpu).abs() < 3e-7, "host {host}, gpu {gpu}");
}

/// Two GPUs, data parallel (`--devices 2`): the shards run on distinct devices one after the
/// other and their gradients meet on the first (`gradients` in `training.rs`), unlike the CPU's
/// shards, which share its one device. The second device is the first other one wgpu lists:
/// with one adapter (lavapipe in CI) Burn's default device and the adapter's own entry are two
/// devices on it, each its own queue and memory, the same code path as two GPUs. The run must
/// match one device's.
#[test]
fn two_gpu_devices_train_like_one() {
    let default = Device::wgpu(DeviceKind::DefaultDevice);
    let other = Device::enumerate(burn::tensor::DeviceType::Wgpu)
        .iter()
        .find(|d| **d != default)
        .cloned()
        .expect("wgpu lists a device other than the default one");
    let devices = [default, other];
    for family in ["conv-ae", "fc-vae"] {
        let config = short_run(family);
        let run = tempfile::tempdir().expect("temp dir");
        let first = first_epoch_on_the_cpu(&config, run.path());
        let one = second_epoch(run.path(), &config, &devices[..1]);
        let two = second_epoch(run.path(), &config, &devices);
        assert_same_epoch(family, &first, &one, &two);
    }
}
