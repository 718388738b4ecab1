//! Loads and runs the hand-built test decoder (see `common/mod.rs`) through the public API.

mod common;

use common::{ATOL, Batch, LATENT_DIM, PIXELS, SIDE, decoder_model, expected_pixels, max_abs_diff};
use edge_runtime::{Decoder, Error};
use tract_onnx::pb::ModelProto;

/// Latents covering the flat middle and both saturated ends of the sigmoid.
const LATENTS: [[f32; LATENT_DIM]; 4] = [[0.0, 0.0], [0.5, -1.2], [-3.0, 2.5], [10.0, 10.0]];

/// Writes `model` into a fresh directory and loads it.
fn load(model: &ModelProto) -> Result<Decoder, Error> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("decoder.onnx");
    common::write_model(&path, model);
    Decoder::load(&path)
}

fn check_decodes_like_reference(batch: Batch) {
    let decoder = load(&decoder_model(batch)).expect("valid decoder");
    assert_eq!(decoder.latent_dim(), LATENT_DIM);
    assert_eq!(decoder.image_size(), (SIDE, SIDE));
    for latent in LATENTS {
        let image = decoder.decode(&latent).expect("decode");
        assert_eq!((image.width(), image.height()), (SIDE, SIDE));
        assert_eq!(image.pixels().len(), PIXELS);
        let diff = max_abs_diff(image.pixels(), &expected_pixels(&latent));
        assert!(
            diff <= ATOL,
            "{batch:?} batch, latent {latent:?}: max abs diff {diff}"
        );
    }
}

#[test]
fn static_batch_decoder_matches_reference() {
    check_decodes_like_reference(Batch::Static);
}

#[test]
fn dynamic_batch_decoder_matches_reference() {
    check_decodes_like_reference(Batch::Dynamic);
}

#[test]
fn pixels_are_row_major() {
    // With latent (4, 0) only the column term varies: every row is the same ramp (up to the bias).
    let decoder = load(&decoder_model(Batch::Static)).expect("valid decoder");
    let image = decoder.decode(&[4.0, 0.0]).expect("decode");
    let first_row = &image.pixels()[..SIDE];
    assert!(
        first_row[0] < 0.01 && first_row[SIDE - 1] > 0.99,
        "{first_row:?}"
    );
}

#[test]
fn decoding_is_deterministic() {
    let decoder = load(&decoder_model(Batch::Dynamic)).expect("valid decoder");
    let a = decoder.decode(&[0.5, -1.2]).expect("decode");
    let b = decoder.decode(&[0.5, -1.2]).expect("decode");
    assert_eq!(a.pixels(), b.pixels());
}

#[test]
fn wrong_latent_length_is_rejected() {
    let decoder = load(&decoder_model(Batch::Static)).expect("valid decoder");
    for latent in [&[][..], &[1.0], &[1.0, 2.0, 3.0]] {
        let err = decoder.decode(latent).expect_err("wrong length");
        assert!(
            matches!(err, Error::LatentLength { expected: 2, actual } if actual == latent.len()),
            "{err}"
        );
        assert!(err.to_string().contains("expects 2"), "{err}");
    }
}

#[test]
fn non_finite_latent_is_rejected() {
    let decoder = load(&decoder_model(Batch::Static)).expect("valid decoder");
    for (latent, bad) in [
        ([0.0, f32::NAN], 1),
        ([f32::INFINITY, 0.0], 0),
        ([0.0, f32::NEG_INFINITY], 1),
    ] {
        let err = decoder.decode(&latent).expect_err("non-finite");
        assert!(
            matches!(err, Error::NonFiniteLatent { index, .. } if index == bad),
            "{err}"
        );
        assert!(err.to_string().contains("not a finite number"), "{err}");
    }
}

#[test]
fn a_model_output_that_is_not_a_number_is_an_error_not_a_black_pixel() {
    // The test decoder with a square root where its sigmoid was: NaN wherever the pre-activation
    // is negative, as at latent (0, 0), where it is the bias, down to -0.5.
    let mut model = decoder_model(Batch::Static);
    let graph = model.graph.as_mut().expect("graph");
    let sigmoid = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Sigmoid")
        .expect("sigmoid");
    sigmoid.op_type = "Sqrt".into();
    let decoder = load(&model).expect("loads");
    let err = decoder.decode(&[0.0, 0.0]).expect_err("NaN pixels");
    assert!(matches!(err, Error::Inference { .. }), "{err}");
    let message = format!("{:#}", anyhow::Error::new(err));
    assert!(message.contains("is NaN, not a finite number"), "{message}");

    // The same through the general runner (`upscale`, `encode`, `anomaly` run their models so).
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sqrt.onnx");
    common::write_model(&path, &common::sqrt_model());
    let runner = edge_runtime::OnnxModel::load(&path, Some(&[1, 1, 2, 2])).expect("loads");
    assert!(runner.run(&[0.6, 0.7, 0.8, 0.9]).is_ok());
    let err = runner.run(&[0.6, 0.7, 0.1, 0.9]).expect_err("NaN");
    let message = format!("{:#}", anyhow::Error::new(err));
    assert!(
        message.contains("output value #2 is NaN, not a finite number"),
        "{message}"
    );
}

/// A model whose tensors for the input asked for cannot fit in the memory the process can get
/// is refused at load time, before anything is allocated: here a 1,000,000 x 1,000,000 input
/// to the fully convolutional upscaler (its input and output alone are 20 TB, past any machine).
/// 64-bit only: a 32-bit process cannot even name such a tensor's size.
#[cfg(target_pointer_width = "64")]
#[test]
fn an_input_too_large_for_the_memory_is_refused_at_load_time() {
    if edge_runtime::available_bytes().is_none() {
        return; // Not Linux: the limits cannot be read, so nothing is refused.
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("upscaler.onnx");
    common::write_model(&path, &common::upscaler_any_size_model());
    let side = 1_000_000;
    match edge_runtime::OnnxModel::load(&path, Some(&[1, 1, side, side])) {
        Err(Error::Memory {
            what,
            needed,
            available,
        }) => {
            assert!(needed >= 20 * (side as u64).pow(2), "{needed}");
            assert!(available < needed);
            assert!(
                what.contains("upscaler.onnx on a [1, 1, 1000000, 1000000] input"),
                "{what}"
            );
        }
        other => panic!("expected Error::Memory, got {other:?}"),
    }
    // The same model on a small input loads.
    assert!(edge_runtime::OnnxModel::load(&path, Some(&[1, 1, 14, 14])).is_ok());
}

#[test]
fn truncated_model_is_rejected() {
    let bytes = prost::Message::encode_to_vec(&decoder_model(Batch::Static));
    for cut in [1, 10, bytes.len() / 2, bytes.len() - 1] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("decoder.onnx");
        std::fs::write(&path, &bytes[..cut]).expect("write truncated model");
        let err = Decoder::load(&path).expect_err("truncated model");
        assert!(
            matches!(err, Error::ParseModel { .. } | Error::NotADecoder { .. }),
            "cut at {cut}: unexpected error {err}"
        );
    }
}

#[test]
fn a_graph_output_nothing_produces_is_rejected() {
    // One corrupt byte in the output's name: tract itself would panic on it.
    let model = edited(|g| g.output[0].name.push('x'));
    let err = load(&model).expect_err("dangling output");
    assert!(matches!(err, Error::ParseModel { .. }), "{err}");
    let message = format!("{:#}", anyhow::Error::new(err));
    assert!(message.contains("is not produced by any node"), "{message}");
}

#[test]
fn a_weight_that_is_not_a_number_is_refused_at_load_time() {
    // tract's ReLU and Max read NaN as 0: a diverged model would draw a plausible picture.
    for (value, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let model = edited(|g| {
            let b = g.initializer.iter_mut().find(|t| t.name == "b").expect("b");
            b.float_data[5] = value;
        });
        let err = load(&model).expect_err("a NaN weight");
        assert!(matches!(err, Error::ParseModel { .. }), "{err}");
        let message = format!("{:#}", anyhow::Error::new(err));
        assert!(
            message.contains(&format!("holds {shown} (value 5 of 784)")),
            "{message}"
        );
    }
}

/// Loading `model` fails with [`Error::NotADecoder`] whose message contains `needle`.
fn assert_not_a_decoder(model: &ModelProto, needle: &str) {
    let err = load(model).expect_err("not a decoder");
    assert!(
        matches!(err, Error::NotADecoder { .. }),
        "unexpected error: {err}"
    );
    assert!(
        err.to_string().contains(needle),
        "`{err}` does not mention `{needle}`"
    );
}

/// The test decoder with its graph changed by `edit`.
fn edited(edit: impl FnOnce(&mut tract_onnx::pb::GraphProto)) -> ModelProto {
    let mut model = decoder_model(Batch::Static);
    edit(model.graph.as_mut().expect("graph"));
    model
}

#[test]
fn two_inputs_are_rejected() {
    let model = edited(|g| {
        g.input
            .push(common::f32_value("extra", &[common::fixed(1)]))
    });
    assert_not_a_decoder(&model, "2 inputs");
}

#[test]
fn wrong_input_rank_is_rejected() {
    let model = edited(|g| {
        g.input[0] = common::f32_value(
            "tensor_8",
            &[common::fixed(1), common::fixed(1), common::fixed(2)],
        );
    });
    assert_not_a_decoder(&model, "rank 3");
}

#[test]
fn batch_other_than_one_is_rejected() {
    let model = edited(|g| {
        g.input[0] = common::f32_value("tensor_8", &[common::fixed(4), common::fixed(2)]);
    });
    assert_not_a_decoder(&model, "batch size 4");
}

#[test]
fn wrong_output_rank_is_rejected() {
    let model = edited(|g| {
        g.initializer[2].dims = vec![3];
        g.initializer[2].int64_data = vec![-1, SIDE as i64, SIDE as i64];
        g.output[0] = common::f32_value_any_shape("image");
    });
    assert_not_a_decoder(&model, "expected [1, 1, height, width]");
}

#[test]
fn two_outputs_are_rejected() {
    let model = edited(|g| g.output.push(common::f32_value_any_shape("z")));
    assert_not_a_decoder(&model, "2 outputs");
}

/// The test decoder marked conditional: its input's last `classes` values are a one-hot digit.
fn conditional(classes: &str) -> ModelProto {
    let mut model = decoder_model(Batch::Static);
    model
        .metadata_props
        .push(tract_onnx::pb::StringStringEntryProto {
            key: "classes".into(),
            value: classes.into(),
        });
    model
}

#[test]
fn a_conditional_decoder_is_asked_for_a_digit() {
    // Two inputs: a 1-d style and a one-class one-hot "digit".
    let decoder = load(&conditional("1")).expect("valid decoder");
    assert_eq!((decoder.latent_dim(), decoder.classes()), (LATENT_DIM, 1));
    let input = decoder.with_digit(&[0.5], 0).expect("digit 0");
    assert_eq!(input, [0.5, 1.0]);
    let image = decoder.decode(&input).expect("decode");
    assert!(max_abs_diff(image.pixels(), &expected_pixels(&[0.5, 1.0])) <= ATOL);

    let err = decoder.with_digit(&[0.5], 1).expect_err("no digit 1");
    assert!(err.to_string().contains("digit 1 is not one of"), "{err}");
    let err = decoder
        .with_digit(&[0.5, 0.5], 0)
        .expect_err("style too long");
    assert!(
        matches!(
            err,
            Error::LatentLength {
                expected: 1,
                actual: 2
            }
        ),
        "{err}"
    );

    let plain = load(&decoder_model(Batch::Static)).expect("valid decoder");
    assert_eq!(plain.classes(), 0);
    let err = plain.with_digit(&[0.5], 0).expect_err("not conditional");
    assert!(err.to_string().contains("not conditional"), "{err}");
}

#[test]
fn nonsense_classes_metadata_is_rejected() {
    // The classes must leave at least one latent value, and be a number.
    for classes in ["2", "0", "ten"] {
        assert_not_a_decoder(&conditional(classes), "metadata `classes`");
    }
}
