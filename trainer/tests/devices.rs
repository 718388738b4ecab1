//! Data-parallel training (`--devices`) against one device.

use burn::prelude::*;
use trainer::{
    data::{Mnist, Split, bundled_dir},
    model::ModelConfig,
    run::TrainingConfig,
    training::{self, Progress},
};

/// Data parallel training (`--devices`): each batch split between two devices whose weighted
/// gradients are added on the first. On the CPU the "two devices" are the same one, whose
/// shards train at once on threads of their own; the run must match the single-device run up to
/// float summation order: same losses after an epoch of optimizer steps. The denoising AE's
/// input noise and the FC VAE's latent samples must be the numbers one device draws. (Several
/// GPUs take the same code path, their shards one after the other; none here.)
#[test]
fn two_devices_train_like_one() {
    for family in ["conv-ae", "denoising-ae", "fc-vae"] {
        shards_train_like_one_device(family);
    }
}

fn shards_train_like_one_device(family: &str) {
    let model = ModelConfig::default_for(family).expect("a known family");
    let config = TrainingConfig::new(model)
        .with_epochs(1)
        .with_batch_size(64)
        .with_train_subset(Some(1024))
        .with_test_subset(Some(128));
    let metrics = |devices: &[Device]| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut epochs = Vec::new();
        training::train(&config, &bundled_dir(), dir.path(), devices, |p| {
            if let Progress::Epoch(m) = p {
                epochs.push(*m);
            }
        })
        .expect("trains");
        epochs[0]
    };
    let one = metrics(&[Device::flex()]);
    let two = metrics(&[Device::flex(), Device::flex()]);
    // An odd split (the last shard smaller) takes the same path.
    let three = metrics(&[Device::flex(), Device::flex(), Device::flex()]);
    // The shards run on threads of their own, yet a run repeats exactly (what `resume` needs).
    let again = metrics(&[Device::flex(), Device::flex(), Device::flex()]);
    assert_eq!(
        [three.train_loss, three.test_loss],
        [again.train_loss, again.test_loss],
        "{family}"
    );
    for other in [two, three] {
        for (a, b) in [
            (one.train_loss, other.train_loss),
            (one.test_loss, other.test_loss),
        ] {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{family}: {one:?}\nvs\n{other:?}"
            );
        }
    }
    // And training did something (the comparison is not between two untouched models).
    let untrained = {
        let device = Device::flex();
        let model = training::init_model(&config.model, config.seed, &device);
        let mut test = Mnist::load(&bundled_dir(), Split::Test).expect("bundled MNIST");
        test.truncate(128);
        training::evaluate_images(&model, &config.model, &test, 64, &device)
            .expect("evaluates")
            .loss
    };
    assert!(
        one.test_loss < untrained,
        "{family}: {} vs {untrained}",
        one.test_loss
    );
}
