//! The int8 decoder as ONNX: the same integers as the q8 blob, in the standard
//! QuantizeLinear/DequantizeLinear ("QDQ") form that ONNX Runtime and tract run.
//!
//! Every layer reads the int8 activation of the layer before through `DequantizeLinear`, runs in
//! float with `DequantizeLinear`'d int8 weights (per output channel) and int32 biases (scale
//! `input scale x weight scale`), and writes its activation through `QuantizeLinear` with the q8
//! blob's output scale and zero point. The latent is clipped to +-127 steps and quantized with the
//! blob's scale; the last layer's int8 logits go through the blob's own 256-entry sigmoid table
//! (a `Gather`), so the output is the firmware's pixels divided by 255. What can differ from the
//! firmware is rounding: ONNX requantizes in float and rounds half to even (the latent too), the
//! firmware requantizes in fixed point (a Q31 multiplier) and rounds half up (the latent half away
//! from zero), so an activation can land one step away and carry that to the pixels. [`compare`]
//! measures it.
//!
//! Graph input `latent [batch, d]`, output `image [batch, 1, 28, 28]` in `[0, 1]`, batch
//! symbolic.

use std::path::Path;

use anyhow::{Context, bail};
use firmware_core::q8::{LayerKind, TABLE_LEN};
use onnx_ir::{AttributeProto, GraphProto, Message, ModelProto, NodeProto, TensorProto};
use serde::Serialize;

use crate::onnx::{IMAGE_OUTPUT, LATENT_INPUT, int_attr, ints_attr, string_attr};
use crate::quantize::QuantizedDecoder;

/// ONNX element types used here.
const FLOAT: i32 = 1;
const INT8: i32 = 3;
const INT32: i32 = 6;
const INT64: i32 = 7;

/// Opset of the files written (per-axis `DequantizeLinear` needs 13).
const OPSET: i64 = 13;

/// Builds the graph node by node, naming every value after the node that makes it.
struct Builder {
    graph: GraphProto,
}

impl Builder {
    fn node(&mut self, op: &str, name: &str, inputs: &[&str], attributes: Vec<AttributeProto>) {
        let mut node = NodeProto::new();
        node.op_type = op.into();
        node.name = name.into();
        node.input = inputs.iter().map(|s| (*s).into()).collect();
        node.output = vec![name.into()];
        node.attribute = attributes;
        self.graph.node.push(node);
    }

    fn initializer(&mut self, name: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) {
        let mut tensor = TensorProto::new();
        tensor.name = name.into();
        tensor.data_type = data_type;
        tensor.dims = dims.iter().map(|&d| d as i64).collect();
        tensor.raw_data = raw.into();
        self.graph.initializer.push(tensor);
    }

    fn floats(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, FLOAT, dims, raw);
    }

    fn int8s(&mut self, name: &str, dims: &[usize], values: &[i8]) {
        let raw = values.iter().map(|&v| v as u8).collect();
        self.initializer(name, INT8, dims, raw);
    }

    fn int32s(&mut self, name: &str, dims: &[usize], values: &[i32]) {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, INT32, dims, raw);
    }

    fn int64s(&mut self, name: &str, values: &[i64]) {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, INT64, &[values.len()], raw);
    }

    /// `QuantizeLinear` then `DequantizeLinear` of `input` with one scale and zero point: the
    /// int8 activation (named `{name}_q`) and its real value (named `name`).
    fn requantize(&mut self, name: &str, input: &str, scale: f32, zero_point: i8) {
        let (s, z) = (format!("{name}_scale"), format!("{name}_zero_point"));
        self.floats(&s, &[], &[scale]);
        // A one-element vector rather than a scalar: the same per-tensor zero point to ONNX
        // Runtime and tract, and burn-onnx 0.22's importer cannot convert a scalar int8
        // constant ("UnsupportedConversion { from: I8, to: I64 }").
        self.int8s(&z, &[1], &[zero_point]);
        let q = format!("{name}_q");
        self.node("QuantizeLinear", &q, &[input, &s, &z], vec![]);
        self.node("DequantizeLinear", name, &[&q, &s, &z], vec![]);
    }
}

/// A float graph input or output of the given dimensions (`None`: the symbolic batch).
fn value_info(name: &str, dims: &[Option<usize>]) -> onnx_ir::ValueInfoProto {
    let mut info = onnx_ir::ValueInfoProto::new();
    info.name = name.into();
    let mut ty = onnx_ir::TypeProto::new();
    let tensor = ty.mut_tensor_type();
    tensor.elem_type = FLOAT;
    let shape = tensor.shape.mut_or_insert_default();
    for d in dims {
        shape.dim.push(Default::default());
        if let Some(dim) = shape.dim.last_mut() {
            match d {
                Some(v) => dim.set_dim_value(*v as i64),
                None => dim.set_dim_param("batch".into()),
            }
        }
    }
    info.type_ = Some(ty).into();
    info
}

/// Writes `decoder` as a QDQ ONNX file (see the module docs), with `metadata` recorded.
pub fn to_onnx(
    decoder: &QuantizedDecoder,
    run_dir: &Path,
    metadata: &[(&str, String)],
) -> anyhow::Result<Vec<u8>> {
    let Some(last) = decoder.layers.last() else {
        bail!("the quantized decoder has no layers");
    };
    if decoder.layers.first().map(|l| l.spec.kind) != Some(LayerKind::Dense) {
        bail!("the int8 decoder must start with a dense layer (it takes the latent vector)");
    }
    let out = last.spec.output;
    if (out.c, out.h, out.w) != (1, 28, 28) {
        bail!("the int8 decoder must draw a 1x28x28 image, not {out:?}");
    }
    let mut b = Builder {
        graph: GraphProto::new(),
    };
    b.graph.name = "decoder_int8".into();
    let d = decoder.latent;
    b.graph
        .input
        .push(value_info(LATENT_INPUT, &[None, Some(d)]));
    b.graph.output.push(value_info(
        IMAGE_OUTPUT,
        &[None, Some(1), Some(28), Some(28)],
    ));

    // The latent, clipped to +-127 steps as the firmware clamps it, then quantized.
    let limit = 127.0 * decoder.latent_scale;
    b.floats("latent_min", &[], &[-limit]);
    b.floats("latent_max", &[], &[limit]);
    b.node(
        "Clip",
        "latent_clipped",
        &[LATENT_INPUT, "latent_min", "latent_max"],
        vec![],
    );
    b.requantize("x0", "latent_clipped", decoder.latent_scale, 0);
    let mut x = "x0".to_string();

    let count = decoder.layers.len();
    for (i, layer) in decoder.layers.iter().enumerate() {
        let spec = &layer.spec;
        let (c_out, c_in) = (spec.output.c as usize, spec.input.c as usize);
        let name = |what: &str| format!("layer{i}_{what}");
        // Weights: int8, per output channel.
        let w_scales: Vec<f32> = layer.weight_scales.iter().map(|&s| s as f32).collect();
        let per_channel = spec.weights.len() / c_out.max(1);
        let w_dims: Vec<usize> = match spec.kind {
            LayerKind::Dense => vec![c_out, per_channel],
            LayerKind::Conv { kernel, .. } => {
                let k = kernel as usize;
                vec![c_out, c_in, k, k]
            }
        };
        b.int8s(&name("w_q"), &w_dims, &spec.weights);
        b.floats(&name("w_scale"), &[c_out], &w_scales);
        b.int8s(&name("w_zero_point"), &[c_out], &vec![0; c_out]);
        b.node(
            "DequantizeLinear",
            &name("w"),
            &[&name("w_q"), &name("w_scale"), &name("w_zero_point")],
            vec![int_attr("axis", 0)],
        );
        // Biases: the q8 blob folds `-input_zero_point * sum(w)` into them; QDQ wants them plain.
        let bias: Vec<i32> = spec
            .bias
            .iter()
            .zip(spec.weights.chunks(per_channel.max(1)))
            .map(|(&b, w)| {
                let sum: i64 = w.iter().map(|&v| v as i64).sum();
                i32::try_from(b as i64 + spec.input_zero_point as i64 * sum)
            })
            .collect::<Result<_, _>>()
            .with_context(|| format!("layer {i}: bias overflows int32"))?;
        let b_scales: Vec<f32> = layer
            .weight_scales
            .iter()
            .map(|&s| (s * layer.input_scale) as f32)
            .collect();
        b.int32s(&name("b_q"), &[c_out], &bias);
        b.floats(&name("b_scale"), &[c_out], &b_scales);
        b.int32s(&name("b_zero_point"), &[c_out], &vec![0; c_out]);
        b.node(
            "DequantizeLinear",
            &name("b"),
            &[&name("b_q"), &name("b_scale"), &name("b_zero_point")],
            vec![int_attr("axis", 0)],
        );
        let y = match spec.kind {
            LayerKind::Dense => {
                b.node("Flatten", &name("flat"), &[&x], vec![int_attr("axis", 1)]);
                b.node(
                    "Gemm",
                    &name("y"),
                    &[&name("flat"), &name("w"), &name("b")],
                    vec![int_attr("transB", 1)],
                );
                // A conv layer next reads the activation as a [batch, c, h, w] map.
                match decoder.layers.get(i + 1).map(|l| l.spec.input) {
                    Some(s) if !matches!(decoder.layers[i + 1].spec.kind, LayerKind::Dense) => {
                        b.int64s(&name("map_shape"), &[0, s.c as i64, s.h as i64, s.w as i64]);
                        b.node(
                            "Reshape",
                            &name("map"),
                            &[&name("y"), &name("map_shape")],
                            vec![],
                        );
                        name("map")
                    }
                    _ => name("y"),
                }
            }
            LayerKind::Conv {
                kernel,
                padding,
                upsample,
            } => {
                let mut input = x.clone();
                if upsample > 1 {
                    let u = upsample as f32;
                    b.floats(&name("scales"), &[4], &[1.0, 1.0, u, u]);
                    b.node(
                        "Resize",
                        &name("up"),
                        &[&x, "", &name("scales")],
                        vec![
                            string_attr("mode", "nearest"),
                            string_attr("coordinate_transformation_mode", "asymmetric"),
                            string_attr("nearest_mode", "floor"),
                        ],
                    );
                    input = name("up");
                }
                let (k, p) = (kernel as i64, padding as i64);
                b.node(
                    "Conv",
                    &name("y"),
                    &[&input, &name("w"), &name("b")],
                    vec![
                        ints_attr("kernel_shape", &[k, k]),
                        ints_attr("pads", &[p, p, p, p]),
                    ],
                );
                name("y")
            }
        };
        let y = if spec.relu {
            b.node("Relu", &name("relu"), &[&y], vec![]);
            name("relu")
        } else {
            y
        };
        let next = format!("x{}", i + 1);
        b.requantize(&next, &y, layer.output_scale as f32, spec.output_zero_point);
        x = next;
        if i + 1 == count {
            // The int8 logits index the sigmoid table, as on the firmware.
            let table: Vec<f32> = decoder.table.iter().map(|&p| p as f32 / 255.0).collect();
            b.floats("sigmoid_table", &[TABLE_LEN], &table);
            b.int64s("table_offset", &[128]);
            b.node(
                "Cast",
                "logits_i64",
                &[&format!("{x}_q")],
                vec![int_attr("to", INT64 as i64)],
            );
            b.node(
                "Add",
                "table_index",
                &["logits_i64", "table_offset"],
                vec![],
            );
            b.node(
                "Gather",
                IMAGE_OUTPUT,
                &["sigmoid_table", "table_index"],
                vec![int_attr("axis", 0)],
            );
        }
    }
    // The last `DequantizeLinear` is not read (the table is); drop it.
    let last_dq = format!("x{count}");
    b.graph.node.retain(|n| n.name != last_dq);

    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.producer_name = "autoencoders-to-the-edge exporter".into();
    model.opset_import.push(Default::default());
    if let Some(opset) = model.opset_import.last_mut() {
        opset.version = OPSET;
    }
    model.graph = Some(b.graph).into();
    let source = run_dir.display().to_string();
    for (key, value) in metadata
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .chain([("source_run", source)])
    {
        model.metadata_props.push(Default::default());
        if let Some(entry) = model.metadata_props.last_mut() {
            entry.key = key.into();
            entry.value = value;
        }
    }
    model
        .write_to_bytes()
        .context("serialising the int8 ONNX decoder")
}

/// How one runtime's run of the int8 ONNX decoder compares with `firmware_core`'s int8 digits,
/// in pixel levels (`0..=255`).
#[derive(Debug, Clone, Serialize)]
pub struct Int8Parity {
    /// Runtime name.
    pub runtime: String,
    /// Latents decoded.
    pub latents: usize,
    /// Pixels compared.
    pub pixels: usize,
    /// Pixels that differ from the firmware's.
    pub differing: usize,
    /// Share of pixels equal to the firmware's.
    pub identical: f64,
    /// Largest difference, in levels.
    pub max_levels: u8,
    /// Mean difference, in levels.
    pub mean_levels: f64,
}

/// Compares `onnx_pixels` (`[0, 1]`, multiples of 1/255 from the table) with the firmware's
/// pixels (`0..=255`).
pub fn compare(runtime: &str, latents: usize, onnx_pixels: &[f32], firmware: &[u8]) -> Int8Parity {
    let mut parity = Int8Parity {
        runtime: runtime.into(),
        latents,
        pixels: firmware.len(),
        differing: firmware.len(),
        identical: 0.0,
        max_levels: u8::MAX,
        mean_levels: f64::INFINITY,
    };
    if onnx_pixels.len() != firmware.len() || firmware.is_empty() {
        return parity;
    }
    let (mut same, mut sum, mut max) = (0usize, 0u64, 0u8);
    for (&o, &f) in onnx_pixels.iter().zip(firmware) {
        let level = (o * 255.0).round();
        let d = if level.is_finite() {
            (level.clamp(0.0, 255.0) as i32 - f as i32).unsigned_abs() as u8
        } else {
            u8::MAX
        };
        same += usize::from(d == 0);
        sum += d as u64;
        max = max.max(d);
    }
    let n = firmware.len() as f64;
    parity.differing = firmware.len() - same;
    parity.identical = same as f64 / n;
    parity.max_levels = max;
    parity.mean_levels = sum as f64 / n;
    parity
}
