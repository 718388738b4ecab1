//! A tiny ONNX decoder built by hand, so the load/check/run path is tested without any exporter.
//!
//! The graph is `image = Reshape(Sigmoid(latent @ W + b), [-1, 1, 28, 28])` with
//! `latent: f32 [batch, 2]`, `W: [2, 784]`, `b: [784]` given by closed formulas below, so the
//! expected pixels are computed independently in f64 by [`expected_pixels`].
#![allow(dead_code)] // each test crate uses a different part of this module

use std::path::Path;

use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto, type_proto,
};

/// Latent size of the test decoder.
pub const LATENT_DIM: usize = 2;
/// Side of the square images it produces.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;

/// Tolerance between tract's f32 output and the f64 reference (tract approximates the sigmoid).
pub const ATOL: f32 = 1e-5;

/// How the batch axis of the input and output is declared.
#[derive(Debug, Clone, Copy)]
pub enum Batch {
    /// `1`.
    Static,
    /// A symbolic `dim_param`, as exporters write for a dynamic batch.
    Dynamic,
}

/// `W[k][j]`: input `k` pushes the pixel at column `j % 28` (k = 0) or row `j / 28` (k = 1).
pub fn weight(k: usize, j: usize) -> f32 {
    let coordinate = if k == 0 { j % SIDE } else { j / SIDE };
    (coordinate as f32 - 13.5) / 7.0
}

/// `b[j]`: a small pseudo-random offset in `[-0.5, 0.5]`.
pub fn bias(j: usize) -> f32 {
    ((j * 37) % 11) as f32 * 0.1 - 0.5
}

/// The pixels the test decoder must produce for `latent`, computed in f64.
pub fn expected_pixels(latent: &[f32; LATENT_DIM]) -> Vec<f32> {
    (0..PIXELS)
        .map(|j| {
            let z: f64 = (0..LATENT_DIM)
                .map(|k| f64::from(latent[k]) * f64::from(weight(k, j)))
                .sum::<f64>()
                + f64::from(bias(j));
            (1.0 / (1.0 + (-z).exp())) as f32
        })
        .collect()
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f32::max)
}

/// The test decoder as an ONNX model (opset 13); its input is named like burn-onnx's.
pub fn decoder_model(batch: Batch) -> ModelProto {
    let weights: Vec<f32> = (0..LATENT_DIM)
        .flat_map(|k| (0..PIXELS).map(move |j| weight(k, j)))
        .collect();
    let biases: Vec<f32> = (0..PIXELS).map(bias).collect();
    let graph = GraphProto {
        name: "test_decoder".into(),
        node: vec![
            node("MatMul", &["tensor_8", "W"], "h"),
            node("Add", &["h", "b"], "z"),
            node("Sigmoid", &["z"], "s"),
            node("Reshape", &["s", "image_shape"], "image"),
        ],
        initializer: vec![
            f32_tensor("W", &[LATENT_DIM, PIXELS], weights),
            f32_tensor("b", &[PIXELS], biases),
            TensorProto {
                name: "image_shape".into(),
                dims: vec![4],
                data_type: DataType::Int64 as i32,
                int64_data: vec![-1, 1, SIDE as i64, SIDE as i64],
                ..Default::default()
            },
        ],
        input: vec![f32_value(
            "tensor_8",
            &[batch_dim(batch), fixed(LATENT_DIM)],
        )],
        output: vec![f32_value(
            "image",
            &[batch_dim(batch), fixed(1), fixed(SIDE), fixed(SIDE)],
        )],
        ..Default::default()
    };
    opset13(graph)
}

/// Encodes `model` into `path`.
pub fn write_model(path: &Path, model: &ModelProto) {
    std::fs::write(path, model.encode_to_vec()).expect("write test model");
}

/// A graph input or output `f32 [dims]`.
pub fn f32_value(name: &str, dims: &[Dimension]) -> ValueInfoProto {
    f32_value_with_shape(name, Some(TensorShapeProto { dim: dims.to_vec() }))
}

/// A graph input or output `f32` whose shape is left to inference.
pub fn f32_value_any_shape(name: &str) -> ValueInfoProto {
    f32_value_with_shape(name, None)
}

fn f32_value_with_shape(name: &str, shape: Option<TensorShapeProto>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A dimension of fixed size.
pub fn fixed(size: usize) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimValue(size as i64)),
        ..Default::default()
    }
}

fn batch_dim(batch: Batch) -> Dimension {
    match batch {
        Batch::Static => fixed(1),
        Batch::Dynamic => Dimension {
            value: Some(dimension::Value::DimParam("batch".into())),
            ..Default::default()
        },
    }
}

fn node(op_type: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: format!("{op_type}_{output}"),
        op_type: op_type.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        float_data: values,
        ..Default::default()
    }
}

/// A stand-in camera denoiser: a 3x3 box blur (`Conv` with weights 1/9, zero padding 1) on
/// `noisy: f32 [batch, 1, height, width]`, every axis but the channel symbolic, like the
/// exporter's `denoiser.onnx`.
pub fn box_blur_model() -> ModelProto {
    box_blur_with(None)
}

/// The same blur declared for `(height, width)` frames only, as the MNIST denoising AE's
/// `denoiser.onnx` is for 28x28 digits.
pub fn box_blur_model_for(height: usize, width: usize) -> ModelProto {
    box_blur_with(Some((height, width)))
}

fn box_blur_with(size: Option<(usize, usize)>) -> ModelProto {
    let symbol = |name: &str| Dimension {
        value: Some(dimension::Value::DimParam(name.into())),
        ..Default::default()
    };
    let dims = match size {
        None => [symbol("batch"), fixed(1), symbol("height"), symbol("width")],
        Some((h, w)) => [symbol("batch"), fixed(1), fixed(h), fixed(w)],
    };
    let mut conv = node("Conv", &["noisy", "W"], "denoised");
    conv.attribute = vec![tract_onnx::pb::AttributeProto {
        name: "pads".into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
        ints: vec![1, 1, 1, 1],
        ..Default::default()
    }];
    let graph = GraphProto {
        name: "box_blur".into(),
        node: vec![conv],
        initializer: vec![f32_tensor("W", &[1, 1, 3, 3], vec![1.0 / 9.0; 9])],
        input: vec![f32_value("noisy", &dims)],
        output: vec![f32_value("denoised", &dims)],
        ..Default::default()
    };
    opset13(graph)
}

/// A "denoiser" that is slow on purpose: three 3x3 convolutions, 1 -> `channels` -> `channels`
/// -> 1 (about `9 * channels^2` multiply-adds per pixel), so that a test can act while a frame
/// is being denoised.
pub fn slow_model(channels: usize) -> ModelProto {
    let symbol = |name: &str| Dimension {
        value: Some(dimension::Value::DimParam(name.into())),
        ..Default::default()
    };
    let dims = [symbol("batch"), fixed(1), symbol("height"), symbol("width")];
    let pads = tract_onnx::pb::AttributeProto {
        name: "pads".into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
        ints: vec![1, 1, 1, 1],
        ..Default::default()
    };
    let conv = |input: &str, weights: &str, output: &str| {
        let mut n = node("Conv", &[input, weights], output);
        n.attribute = vec![pads.clone()];
        n
    };
    let weights = |name: &str, c_out: usize, c_in: usize| {
        let scale = 1.0 / (9 * c_in) as f32;
        f32_tensor(name, &[c_out, c_in, 3, 3], vec![scale; c_out * c_in * 9])
    };
    let graph = GraphProto {
        name: "slow".into(),
        node: vec![
            conv("noisy", "W1", "a"),
            conv("a", "W2", "b"),
            conv("b", "W3", "denoised"),
        ],
        initializer: vec![
            weights("W1", channels, 1),
            weights("W2", channels, channels),
            weights("W3", 1, channels),
        ],
        input: vec![f32_value("noisy", &dims)],
        output: vec![f32_value("denoised", &dims)],
        ..Default::default()
    };
    opset13(graph)
}

/// A "denoiser" whose output is `sqrt(x - 0.5)`: not a number wherever a pixel is below 128.
pub fn sqrt_model() -> ModelProto {
    let symbol = |name: &str| Dimension {
        value: Some(dimension::Value::DimParam(name.into())),
        ..Default::default()
    };
    let dims = [symbol("batch"), fixed(1), symbol("height"), symbol("width")];
    let graph = GraphProto {
        name: "sqrt".into(),
        node: vec![
            node("Sub", &["noisy", "half"], "shifted"),
            node("Sqrt", &["shifted"], "denoised"),
        ],
        initializer: vec![f32_tensor("half", &[], vec![0.5])],
        input: vec![f32_value("noisy", &dims)],
        output: vec![f32_value("denoised", &dims)],
        ..Default::default()
    };
    opset13(graph)
}

/// A "decoder" of any declared latent and image size, holding no weights: the mean of its
/// latent `z: f32 [1, latent]`, spread over an `f32 [1, 1, side, side]` image. For sizes too
/// large to run.
pub fn mean_spread_decoder_model(latent: i64, side: usize) -> ModelProto {
    let mut mean = node("ReduceMean", &["z"], "m");
    mean.attribute = vec![tract_onnx::pb::AttributeProto {
        name: "axes".into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Ints as i32,
        ints: vec![1],
        ..Default::default()
    }];
    let int64s = |name: &str, values: Vec<i64>| TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: values,
        ..Default::default()
    };
    let graph = GraphProto {
        name: "mean_spread".into(),
        node: vec![
            mean,
            node("Reshape", &["m", "pixel"], "p"),
            node("Expand", &["p", "image_shape"], "image"),
        ],
        initializer: vec![
            int64s("pixel", vec![1, 1, 1, 1]),
            int64s("image_shape", vec![1, 1, side as i64, side as i64]),
        ],
        input: vec![f32_value(
            "z",
            &[
                fixed(1),
                Dimension {
                    value: Some(dimension::Value::DimValue(latent)),
                    ..Default::default()
                },
            ],
        )],
        output: vec![f32_value(
            "image",
            &[fixed(1), fixed(1), fixed(side), fixed(side)],
        )],
        ..Default::default()
    };
    opset13(graph)
}

/// What [`box_blur_model`] makes of an 8-bit frame, rounded to 8 bits, computed in f64.
pub fn box_blur_reference(frame: &[u8], width: usize, height: usize) -> Vec<u8> {
    box_blur(frame, width, height, false)
}

/// [`box_blur_reference`] of the frame mirrored outwards about its edge pixels (as a model with
/// `reflect_padding` in its metadata is run), cropped back.
pub fn box_blur_mirrored_reference(frame: &[u8], width: usize, height: usize) -> Vec<u8> {
    box_blur(frame, width, height, true)
}

/// The box blur of `frame`, reading zero (or, `mirrored`, the pixel mirrored about the edge)
/// outside it.
fn box_blur(frame: &[u8], width: usize, height: usize, mirrored: bool) -> Vec<u8> {
    let mirror = |i: isize, n: usize| -> isize {
        let last = n as isize - 1;
        if i < 0 {
            -i
        } else if i > last {
            2 * last - i
        } else {
            i
        }
    };
    let at = |x: isize, y: isize| -> f64 {
        let (x, y) = if mirrored {
            (mirror(x, width), mirror(y, height))
        } else {
            (x, y)
        };
        if x < 0 || y < 0 || x >= width as isize || y >= height as isize {
            0.0
        } else {
            frame[y as usize * width + x as usize] as f64 / 255.0
        }
    };
    (0..height as isize)
        .flat_map(|y| (0..width as isize).map(move |x| (x, y)))
        .map(|(x, y)| {
            let sum: f64 = (-1..=1)
                .flat_map(|dy| (-1..=1).map(move |dx| (dx, dy)))
                .map(|(dx, dy)| at(x + dx, y + dy))
                .sum();
            ((sum / 9.0).clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// `graph` as an opset-13 ONNX model.
fn opset13(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: 8,
        producer_name: "edge-runtime tests".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// A stand-in encoder `image [1, 1, 28, 28] -> code [1, 2]`: code k = sum of pixels times
/// [`weight`]`(k, j)` / 784 (see [`encoder_reference`]).
pub fn encoder_model() -> ModelProto {
    let weights: Vec<f32> = (0..PIXELS)
        .flat_map(|j| (0..LATENT_DIM).map(move |k| weight(k, j) / PIXELS as f32))
        .collect();
    opset13(GraphProto {
        name: "test_encoder".into(),
        node: vec![
            node("Reshape", &["image", "flat_shape"], "flat"),
            node("MatMul", &["flat", "W"], "code"),
        ],
        initializer: vec![
            f32_tensor("W", &[PIXELS, LATENT_DIM], weights),
            int64_tensor("flat_shape", &[1, PIXELS as i64]),
        ],
        input: vec![f32_value(
            "image",
            &[fixed(1), fixed(1), fixed(SIDE), fixed(SIDE)],
        )],
        output: vec![f32_value("code", &[fixed(1), fixed(LATENT_DIM)])],
        ..Default::default()
    })
}

/// What [`encoder_model`] gives for `pixels`, in f64.
pub fn encoder_reference(pixels: &[f32]) -> [f32; LATENT_DIM] {
    core::array::from_fn(|k| {
        (pixels
            .iter()
            .enumerate()
            .map(|(j, &p)| f64::from(p) * f64::from(weight(k, j)))
            .sum::<f64>()
            / PIXELS as f64) as f32
    })
}

/// A stand-in upscaler `low_res [1, 1, 14, 14] -> image [1, 1, 28, 28]`: nearest-neighbour x2,
/// written the way the exporter writes it (Reshape, Expand, Reshape).
pub fn upscaler_model() -> ModelProto {
    let half = (SIDE / 2) as i64;
    opset13(GraphProto {
        name: "test_upscaler".into(),
        node: vec![
            node("Reshape", &["low_res", "split"], "a"),
            node("Expand", &["a", "copies"], "b"),
            node("Reshape", &["b", "merge"], "image"),
        ],
        initializer: vec![
            int64_tensor("split", &[1, 1, half, 1, half, 1]),
            int64_tensor("copies", &[1, 1, 1, 2, 1, 2]),
            int64_tensor("merge", &[1, 1, SIDE as i64, SIDE as i64]),
        ],
        input: vec![f32_value(
            "low_res",
            &[fixed(1), fixed(1), fixed(SIDE / 2), fixed(SIDE / 2)],
        )],
        output: vec![f32_value(
            "image",
            &[fixed(1), fixed(1), fixed(SIDE), fixed(SIDE)],
        )],
        ..Default::default()
    })
}

/// A stand-in for the exporter's fully convolutional upscaler: `low_res [batch, 1, height,
/// width] -> image [batch, 1, 2 height, 2 width]`, nearest-neighbour x2 with no size in the graph
/// (the input four times, interleaved by `DepthToSpace`, as the exporter's folded convolutions
/// end).
pub fn upscaler_any_size_model() -> ModelProto {
    let symbol = |name: &str| Dimension {
        value: Some(dimension::Value::DimParam(name.into())),
        ..Default::default()
    };
    let int_attribute = |name: &str, value: i64| tract_onnx::pb::AttributeProto {
        name: name.into(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    };
    let mut concat = node("Concat", &["low_res"; 4], "copies");
    concat.attribute = vec![int_attribute("axis", 1)];
    let mut interleave = node("DepthToSpace", &["copies"], "image");
    interleave.attribute = vec![int_attribute("blocksize", 2)];
    opset13(GraphProto {
        name: "test_upscaler_any_size".into(),
        node: vec![concat, interleave],
        input: vec![f32_value(
            "low_res",
            &[symbol("batch"), fixed(1), symbol("height"), symbol("width")],
        )],
        output: vec![f32_value(
            "image",
            &[
                symbol("batch"),
                fixed(1),
                symbol("out_height"),
                symbol("out_width"),
            ],
        )],
        ..Default::default()
    })
}
