//! Models as ONNX: exported with burn-onnx's tracing exporter, then post-processed on the protobuf
//! (stable I/O names, metadata, upsampling folded into the convolution that reads it, numbered
//! value names, symbolic axes), and checked with tract and ONNX Runtime against Burn. Decoders
//! take any batch; the camera denoiser frames of any batch, height and width; the upscaler any
//! batch and even height and width.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use anyhow::{Context, anyhow, bail};
use burn::prelude::*;
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use onnx_ir::{GraphProto, Message, ModelProto, NodeProto, TensorProto};
use trainer::model::{CameraDenoiser, ConvDecoder};

use crate::Parity;

/// Name of the decoder's input in the files we write.
pub const LATENT_INPUT: &str = "latent";
/// Name of the decoder's output in the files we write.
pub const IMAGE_OUTPUT: &str = "image";
/// Name of the denoiser's input in the files we write.
pub const NOISY_INPUT: &str = "noisy";
/// Name of the denoiser's output in the files we write.
pub const DENOISED_OUTPUT: &str = "denoised";

/// Renames the graph's inputs and outputs everywhere they are used (to `inputs` and `outputs`,
/// in order), rewrites the nearest upsampling, and records metadata.
fn post_process(
    bytes: &[u8],
    inputs: &[&str],
    outputs: &[&str],
    metadata: &[(&str, String)],
) -> anyhow::Result<Vec<u8>> {
    let mut model = ModelProto::parse_from_bytes(bytes).context("re-reading the exported ONNX")?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("exported ONNX has no graph"))?;
    if graph.input.len() != inputs.len() || graph.output.len() != outputs.len() {
        bail!(
            "expected {} inputs and {} outputs, got {} and {}",
            inputs.len(),
            outputs.len(),
            graph.input.len(),
            graph.output.len()
        );
    }
    let mut renames = Vec::new();
    for (value, &name) in graph.input.iter_mut().zip(inputs) {
        renames.push((std::mem::replace(&mut value.name, name.into()), name));
    }
    for (value, &name) in graph.output.iter_mut().zip(outputs) {
        renames.push((std::mem::replace(&mut value.name, name.into()), name));
    }
    for node in graph.node.iter_mut() {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if let Some((_, new)) = renames.iter().find(|(old, _)| old == name) {
                *name = (*new).into();
            }
        }
    }
    fold_upsampling_convs(graph)?;
    rewrite_nearest_upsampling(graph)?;
    number_values(graph);
    for (key, value) in metadata {
        model.metadata_props.push(Default::default());
        if let Some(entry) = model.metadata_props.last_mut() {
            entry.key = (*key).into();
            entry.value = value.clone();
        }
    }
    model.producer_name = "autoencoders-to-the-edge exporter".into();
    model.write_to_bytes().context("serialising the ONNX model")
}

/// Renames the values the nodes compute (other than the graph's outputs) `v0`, `v1`, ... in node
/// order, and nodes named after such a value. burn-onnx names them after process-wide tensor ids (`tensor_48`), which depend on what
/// the process traced before, so the same model exported twice would differ; numbered, every
/// export of a model is the same file.
fn number_values(graph: &mut GraphProto) {
    let outputs: std::collections::HashSet<String> =
        graph.output.iter().map(|v| v.name.clone()).collect();
    let mut names = std::collections::HashMap::new();
    for node in &graph.node {
        for output in &node.output {
            if !output.is_empty() && !outputs.contains(output) && !names.contains_key(output) {
                let name = format!("v{}", names.len());
                names.insert(output.clone(), name);
            }
        }
    }
    for node in graph.node.iter_mut() {
        // Node names too: some nodes are named after the value they compute.
        let names_of_node = std::iter::once(&mut node.name);
        for name in node
            .input
            .iter_mut()
            .chain(node.output.iter_mut())
            .chain(names_of_node)
        {
            if let Some(new) = names.get(name) {
                name.clone_from(new);
            }
        }
    }
}

/// ONNX's INT64 element type.
const ONNX_INT64: i32 = 7;
/// ONNX's FLOAT element type.
const ONNX_FLOAT: i32 = 1;

/// The int64 values of the initializer `name`, if the graph has one.
fn int64_initializer(graph: &GraphProto, name: &str) -> Option<Vec<i64>> {
    let tensor = graph.initializer.iter().find(|t| t.name == name)?;
    if tensor.data_type != ONNX_INT64 {
        return None;
    }
    if !tensor.int64_data.is_empty() {
        return Some(tensor.int64_data.clone());
    }
    let (chunks, rest) = tensor.raw_data.as_chunks::<8>();
    rest.is_empty()
        .then(|| chunks.iter().map(|c| i64::from_le_bytes(*c)).collect())
}

/// A string attribute of `node`.
fn string_attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [u8]> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.s.as_ref())
}

/// The input height and width of `node` if it is a nearest-neighbour `Resize` that doubles
/// height and width, as burn-onnx writes `Interpolate2d` x2 (`sizes` with `axes = [2, 3]`,
/// asymmetric coordinates, floor).
fn nearest_doubling(graph: &GraphProto, node: &NodeProto) -> Option<(usize, usize)> {
    let doubling = node.op_type == "Resize"
        && string_attribute(node, "mode") == Some(b"nearest")
        && string_attribute(node, "coordinate_transformation_mode") == Some(b"asymmetric")
        && string_attribute(node, "nearest_mode") == Some(b"floor")
        && node
            .attribute
            .iter()
            .any(|a| a.name == "axes" && a.ints == [2, 3])
        && node.input.len() == 4
        && node.input[1].is_empty()
        && node.input[2].is_empty()
        && node.output.len() == 1;
    let sizes = int64_initializer(graph, node.input.get(3)?).filter(|_| doubling)?;
    match sizes[..] {
        [h, w] if h > 0 && w > 0 && h % 2 == 0 && w % 2 == 0 => {
            Some(((h / 2) as usize, (w / 2) as usize))
        }
        _ => None,
    }
}

/// An int attribute list of `node`.
fn ints_attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.ints.as_slice())
}

/// The f32 values and dimensions of the initializer `name`.
fn f32_initializer(graph: &GraphProto, name: &str) -> Option<(Vec<f32>, Vec<i64>)> {
    let tensor = graph.initializer.iter().find(|t| t.name == name)?;
    if tensor.data_type != ONNX_FLOAT {
        return None;
    }
    let values = if tensor.float_data.is_empty() {
        let (chunks, rest) = tensor.raw_data.as_chunks::<4>();
        if !rest.is_empty() {
            return None;
        }
        chunks.iter().map(|c| f32::from_le_bytes(*c)).collect()
    } else {
        tensor.float_data.clone()
    };
    Some((values, tensor.dims.clone()))
}

/// How one phase `p` of an axis reads the input of a 2x nearest upsampling followed by a
/// convolution (kernel `k`, padding `pad`): output `2 m + p` reads input positions
/// `m + base .. m + base + span`, and tap `t` of the kernel lands on position `fold[t]` of them.
fn phase_taps(p: i64, k: i64, pad: i64) -> (i64, usize, Vec<usize>) {
    let base = (p - pad).div_euclid(2);
    let last = (p - pad + k - 1).div_euclid(2);
    let fold = (0..k)
        .map(|t| ((p - pad + t).div_euclid(2) - base) as usize)
        .collect();
    (base, (last - base + 1) as usize, fold)
}

/// Rewrites every 2x nearest upsampling whose only reader is a 3x3-style convolution (stride 1,
/// dilation 1, one group, symmetric padding) into one convolution of the low-resolution input
/// that computes the four output phases at once, interleaved back with `DepthToSpace`: the
/// kernel taps that land on the same input position are summed (a 3x3 kernel becomes 2x2), the
/// same sums as upsampling then convolving with 4/9 of the multiply-adds and no upsampled copy:
/// the firmware's folding (`firmware/core/src/fold.rs`) in ONNX.
///
/// Along an axis, phase `p` (outputs `2 m + p`) reads input positions `m + base_p ..` for
/// `span` positions. With equal spans the phases share one window that starts `base_0` after
/// the window's position `s`: phase `p` at output `m` is window `s = m + base_p - base_0`. When
/// the bases differ by one (odd padding), the window that gives phase 0 output `m` gives phase 1
/// output `m - 1`, row `2m - 1`: with phase 1 first in `DepthToSpace`'s channel blocks, window
/// `s` interleaves rows `2s - 1` and `2s`, and a `Slice` drops the first row (and the extra last
/// one). One convolution (one input unfolding, one matrix product for the four phases) instead
/// of four, at `((n + 1) / n)^2` more multiply-adds for an `n`-wide phase. Pairs that do not fit
/// the pattern are left alone. Returns how many were rewritten.
fn fold_upsampling_convs(graph: &mut GraphProto) -> anyhow::Result<usize> {
    let mut rewritten = 0;
    let mut index = 0;
    while index < graph.node.len() {
        let Some((h, w)) = nearest_doubling(graph, &graph.node[index]) else {
            index += 1;
            continue;
        };
        let up = graph.node[index].output[0].clone();
        let readers: Vec<usize> = (0..graph.node.len())
            .filter(|&i| graph.node[i].input.contains(&up))
            .collect();
        let outputs_read = graph.output.iter().any(|o| o.name == up);
        let conv = match readers[..] {
            [i] if !outputs_read => i,
            _ => {
                index += 1;
                continue;
            }
        };
        let c = &graph.node[conv];
        let pads = ints_attribute(c, "pads").unwrap_or(&[0, 0, 0, 0]);
        let fits = c.op_type == "Conv"
            && c.input.first() == Some(&up)
            && (2..=3).contains(&c.input.len())
            && ints_attribute(c, "strides").is_none_or(|s| s == [1, 1])
            && ints_attribute(c, "dilations").is_none_or(|d| d == [1, 1])
            && c.attribute.iter().all(|a| a.name != "group" || a.i == 1)
            && c.attribute
                .iter()
                .all(|a| a.name != "auto_pad" || a.s.is_empty() || a.s.as_ref() == b"NOTSET")
            && pads.len() == 4
            && pads.iter().all(|&p| p == pads[0]);
        let weights = f32_initializer(graph, &c.input[1]).filter(|_| fits);
        let Some((weights, dims)) = weights else {
            index += 1;
            continue;
        };
        let (pad, conv_output) = (pads[0], c.output[0].clone());
        // An empty name is ONNX's way of leaving an optional input out.
        let bias = c.input.get(2).filter(|b| !b.is_empty()).cloned();
        let [c_out, c_in, kh, kw] = dims[..] else {
            index += 1;
            continue;
        };
        let sizes_ok = [c_out, c_in, kh, kw].iter().all(|&d| d > 0)
            && weights.len() as i64 == c_out * c_in * kh * kw;
        if !sizes_ok {
            index += 1;
            continue;
        }
        // Every phase must read at or after its first input position, and all four phases must
        // give the same number of outputs (DepthToSpace interleaves equal maps).
        let out = (
            2 * h as i64 + 2 * pad - kh + 1,
            2 * w as i64 + 2 * pad - kw + 1,
        );
        let phases_y = [phase_taps(0, kh, pad), phase_taps(1, kh, pad)];
        let phases_x = [phase_taps(0, kw, pad), phase_taps(1, kw, pad)];
        let (n_y, n_x) = (out.0 / 2, out.1 / 2);
        // The padding after the input that gives a phase its n outputs (must not be negative).
        let end_pad = |n: i64, len: usize, (base, span, _): &(i64, usize, Vec<usize>)| {
            n - len as i64 + base + *span as i64 - 1
        };
        let pads_ok = phases_y.iter().all(|p| p.0 <= 0 && end_pad(n_y, h, p) >= 0)
            && phases_x.iter().all(|p| p.0 <= 0 && end_pad(n_x, w, p) >= 0);
        if out.0 <= 0 || out.1 <= 0 || out.0 % 2 != 0 || out.1 % 2 != 0 || !pads_ok {
            index += 1;
            continue;
        }
        // One window per axis for both phases (equal spans, bases at most one apart); the
        // phases' order in DepthToSpace's blocks, and the rows to drop at the start.
        let axis = |phases: &[(i64, usize, Vec<usize>); 2]| {
            let (shift, span) = (phases[1].0 - phases[0].0, phases[0].1);
            match (shift, phases[1].1 == span) {
                (0, true) => Some(([0, 1], 0i64, span)),
                (1, true) => Some(([1, 0], 1i64, span)),
                _ => None,
            }
        };
        let (Some((order_y, crop_y, sy)), Some((order_x, crop_x, sx))) =
            (axis(&phases_y), axis(&phases_x))
        else {
            index += 1;
            continue;
        };
        // Windows start at base_0; there are n + crop of them (the phase with the later base
        // needs one more), which the padding after the input provides.
        let (top, left) = (-phases_y[0].0, -phases_x[0].0);
        let bottom = n_y + crop_y + sy as i64 - 1 - h as i64 - top;
        let right = n_x + crop_x + sx as i64 - 1 - w as i64 - left;
        if top < 0 || left < 0 || bottom < 0 || right < 0 {
            // Not reachable for the phases checked above; left alone rather than mis-padded.
            index += 1;
            continue;
        }
        let bias = match bias {
            Some(b) => match f32_initializer(graph, &b) {
                Some((values, _)) if values.len() == c_out as usize => Some(values),
                _ => {
                    index += 1;
                    continue;
                }
            },
            None => None,
        };
        let input = graph.node[index].input[0].clone();
        let name = |suffix: &str| format!("folded{rewritten}_{suffix}");
        // Block (qy, qx) of the stacked output channels is phase (order_y[qy], order_x[qx]).
        let block = (c_out * c_in) as usize * sy * sx;
        let mut stacked = vec![0f32; 4 * block];
        for (qy, &py) in order_y.iter().enumerate() {
            for (qx, &px) in order_x.iter().enumerate() {
                let (fold_y, fold_x) = (&phases_y[py].2, &phases_x[px].2);
                let folded = &mut stacked[(2 * qy + qx) * block..][..block];
                for o in 0..c_out as usize {
                    for i in 0..c_in as usize {
                        for ky in 0..kh as usize {
                            for kx in 0..kw as usize {
                                let v = weights[((o * c_in as usize + i) * kh as usize + ky)
                                    * kw as usize
                                    + kx];
                                let at =
                                    ((o * c_in as usize + i) * sy + fold_y[ky]) * sx + fold_x[kx];
                                folded[at] += v;
                            }
                        }
                    }
                }
            }
        }
        let weight_name = name("w");
        graph.initializer.push(f32_tensor(
            weight_name.clone(),
            vec![4 * c_out, c_in, sy as i64, sx as i64],
            &stacked,
        ));
        let mut conv_inputs = vec![input, weight_name];
        if let Some(bias) = bias {
            let bias_name = name("b");
            graph.initializer.push(f32_tensor(
                bias_name.clone(),
                vec![4 * c_out],
                &bias.repeat(4),
            ));
            conv_inputs.push(bias_name);
        }
        let mut nodes = Vec::new();
        let mut stacked_conv = NodeProto::new();
        stacked_conv.op_type = "Conv".into();
        stacked_conv.name = name("phases");
        stacked_conv.input = conv_inputs;
        stacked_conv.output = vec![name("phases")];
        stacked_conv.attribute = vec![
            ints_attr("kernel_shape", &[sy as i64, sx as i64]),
            ints_attr("pads", &[top, left, bottom, right]),
        ];
        nodes.push(stacked_conv);
        // DCR: output channel c at (2 s + qy, 2 t + qx) is input channel (2 qy + qx) * C + c.
        let cropped = crop_y > 0 || crop_x > 0;
        let interleaved = if cropped {
            name("interleaved")
        } else {
            conv_output.clone()
        };
        let mut interleave = NodeProto::new();
        interleave.op_type = "DepthToSpace".into();
        interleave.name = interleaved.clone();
        interleave.input = vec![name("phases")];
        interleave.output = vec![interleaved.clone()];
        interleave.attribute = vec![int_attr("blocksize", 2), string_attr("mode", "DCR")];
        nodes.push(interleave);
        if cropped {
            // Drop the first row (column) and the one past the last: ends counted from the end,
            // so the slice does not depend on the image size.
            let end = |crop: i64| if crop > 0 { -crop } else { i64::MAX };
            let names = [name("starts"), name("ends"), name("axes")];
            graph.initializer.extend([
                int64_tensor(names[0].clone(), vec![crop_y, crop_x]),
                int64_tensor(names[1].clone(), vec![end(crop_y), end(crop_x)]),
                int64_tensor(names[2].clone(), vec![2, 3]),
            ]);
            let mut slice = NodeProto::new();
            slice.op_type = "Slice".into();
            slice.name = conv_output.clone();
            slice.input = vec![interleaved].into_iter().chain(names).collect();
            slice.output = vec![conv_output];
            nodes.push(slice);
        }
        // The resize and the convolution go; the folded nodes take the convolution's place.
        let (first, second) = (index.min(conv), index.max(conv));
        graph.node.remove(second);
        graph.node.remove(first);
        let at = first.min(graph.node.len());
        let count = nodes.len();
        graph.node.splice(at..at, nodes);
        index = at + count;
        rewritten += 1;
    }
    drop_unused_initializers(graph);
    Ok(rewritten)
}

/// A FLOAT tensor `name` of shape `dims` holding `values` (row-major, little-endian raw data).
fn f32_tensor(name: String, dims: Vec<i64>, values: &[f32]) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name;
    tensor.data_type = ONNX_FLOAT;
    tensor.dims = dims;
    tensor.raw_data = values
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    tensor
}

/// An INT64 tensor `name` holding `values` (one axis).
fn int64_tensor(name: String, values: Vec<i64>) -> TensorProto {
    let mut tensor = TensorProto::new();
    tensor.name = name;
    tensor.data_type = ONNX_INT64;
    tensor.dims = vec![values.len() as i64];
    tensor.int64_data = values;
    tensor
}

/// Drops the initializers no node reads any more.
fn drop_unused_initializers(graph: &mut GraphProto) {
    let used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph.initializer.retain(|t| used.contains(&t.name));
}

/// An INTS attribute.
pub(crate) fn ints_attr(name: &str, values: &[i64]) -> onnx_ir::AttributeProto {
    let mut a = onnx_ir::AttributeProto::new();
    a.name = name.into();
    a.ints = values.to_vec();
    a.type_ = onnx_ir::AttributeType::INTS.into();
    a
}

/// An INT attribute.
pub(crate) fn int_attr(name: &str, value: i64) -> onnx_ir::AttributeProto {
    let mut a = onnx_ir::AttributeProto::new();
    a.name = name.into();
    a.i = value;
    a.type_ = onnx_ir::AttributeType::INT.into();
    a
}

/// A STRING attribute.
pub(crate) fn string_attr(name: &str, value: &str) -> onnx_ir::AttributeProto {
    let mut a = onnx_ir::AttributeProto::new();
    a.name = name.into();
    a.s = value.as_bytes().to_vec().into();
    a.type_ = onnx_ir::AttributeType::STRING.into();
    a
}

/// Rewrites every nearest-neighbour `Resize` that doubles height and width (what burn-onnx writes
/// for `Interpolate2d` x2: `sizes`, `axes = [2, 3]`, asymmetric coordinates, floor) into
/// `Reshape [0, 0, H, 1, W, 1] -> Expand [1, 1, 1, 2, 1, 2] -> Reshape [0, 0, 2H, 2W]`, which
/// computes the same values. tract runs `Resize` through a generic per-element resampler that
/// took ~40% of a decode (callgrind, `edge bench`); broadcasting is a plain copy. The graph no
/// longer carries the `axes` + `sizes` form that burn-onnx's importer rejects, and the leading
/// `0`s keep the batch free. Other `Resize` nodes are left alone; the parity checks against Burn
/// catch any mistake before a file is written. Returns how many nodes were rewritten.
fn rewrite_nearest_upsampling(graph: &mut GraphProto) -> anyhow::Result<usize> {
    let mut rewritten = 0;
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut constants: Vec<(String, Vec<i64>)> = Vec::new();
    for node in std::mem::take(&mut graph.node) {
        let doubling = nearest_doubling(graph, &node);
        let Some((h, w)) = doubling else {
            nodes.push(node);
            continue;
        };
        let (h, w) = (h as i64, w as i64);
        let (input, output) = (node.input[0].clone(), node.output[0].clone());
        let name = |suffix: &str| format!("upsample{rewritten}_{suffix}");
        let mut step = |op: &str, inputs: [String; 2], out: String| {
            let mut n = NodeProto::new();
            n.op_type = op.into();
            n.name = out.clone();
            n.input = inputs.into();
            n.output = vec![out];
            nodes.push(n);
        };
        step("Reshape", [input, name("split_shape")], name("split"));
        step("Expand", [name("split"), name("copies")], name("copied"));
        step(
            "Reshape",
            [name("copied"), name("merge_shape")],
            output.clone(),
        );
        constants.push((name("split_shape"), vec![0, 0, h, 1, w, 1]));
        constants.push((name("copies"), vec![1, 1, 1, 2, 1, 2]));
        constants.push((name("merge_shape"), vec![0, 0, 2 * h, 2 * w]));
        rewritten += 1;
    }
    graph.node = nodes;
    for (name, values) in constants {
        graph.initializer.push(int64_tensor(name, values));
    }
    // Drop the `sizes` tensors nothing reads any more.
    drop_unused_initializers(graph);
    Ok(rewritten)
}

/// Exports `decoder` (`latent [batch, d]` -> `image [batch, 1, 28, 28]`, symbolic batch: traced
/// at batch 1, then [`symbolic_batch`]). A conditional decoder's input ends in `classes`
/// one-hot digit values (metadata `classes`; `latent_size` counts the latent alone).
pub fn export_decoder(
    decoder: &ConvDecoder,
    classes: usize,
    run_dir: &Path,
) -> anyhow::Result<Vec<u8>> {
    let input = decoder.latent();
    let sample = Tensor::<2>::zeros([1, input], &Device::flex());
    let mut metadata = vec![
        ("kind", "decoder".into()),
        ("latent_size", input.saturating_sub(classes).to_string()),
        ("input_shape", format!("[batch,{input}]")),
        ("output_shape", "[batch,1,28,28]".into()),
        ("pixel_range", "[0,1]".into()),
        ("source_run", run_dir.display().to_string()),
    ];
    if classes > 0 {
        metadata.push(("classes", classes.to_string()));
    }
    let bytes = export_static(
        decoder,
        sample,
        ConvDecoder::forward,
        &[LATENT_INPUT],
        &[IMAGE_OUTPUT],
        &metadata,
    )?;
    symbolic_batch(&bytes)
}

/// Re-reads an exported model, lets `edit` change its graph, drops the intermediate shapes the
/// exporter recorded (an edit of the input or output shapes makes them stale), and writes it
/// back.
fn edit_graph(
    bytes: &[u8],
    edit: impl FnOnce(&mut GraphProto) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let mut model = ModelProto::parse_from_bytes(bytes).context("re-reading the exported ONNX")?;
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("exported ONNX has no graph"))?;
    edit(graph)?;
    graph.value_info.clear();
    Ok(model.write_to_bytes()?)
}

/// The declared shape of a graph input or output, created empty if it has none.
fn value_shape(value: &mut onnx_ir::ValueInfoProto) -> &mut onnx_ir::TensorShapeProto {
    value
        .type_
        .mut_or_insert_default()
        .mut_tensor_type()
        .shape
        .mut_or_insert_default()
}

/// Makes a fully convolutional image-to-image graph traced at one size take any batch, height
/// and width: its input becomes `[batch, c, height, width]` and its output
/// `[batch, c, out_height, out_width]`. Refused for a graph with anything tied to the traced
/// size (`Reshape`, `Resize`, `Expand`, shape constants): the parity checks at other sizes catch
/// the rest.
pub fn symbolic_image(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    edit_graph(bytes, |graph| {
        if let Some(node) = graph.node.iter().find(|n| {
            matches!(
                n.op_type.as_str(),
                "Reshape" | "Resize" | "Expand" | "Shape"
            )
        }) {
            bail!(
                "the graph has a {} ({}), tied to the traced size: it cannot take any height and width",
                node.op_type,
                node.name
            );
        }
        let symbols = |prefix: &str| {
            [
                "batch".to_string(),
                String::new(),
                format!("{prefix}height"),
                format!("{prefix}width"),
            ]
        };
        for (values, prefix) in [(&mut graph.input, ""), (&mut graph.output, "out_")] {
            for value in values.iter_mut() {
                let shape = value_shape(value);
                if shape.dim.len() != 4 {
                    bail!("{} is not an image [batch, c, height, width]", value.name);
                }
                for (dim, symbol) in shape.dim.iter_mut().zip(symbols(prefix)) {
                    if !symbol.is_empty() {
                        dim.set_dim_param(symbol);
                    }
                }
            }
        }
        Ok(())
    })
}

/// Makes axis 0 of a graph traced at batch 1 the symbolic `batch`: the graph's inputs and outputs
/// declare it, and every `Reshape` of a computed value (not of a weight) to a shape starting with
/// that 1 copies the batch instead (`0`). burn-onnx's `export_dynamic` cannot follow the batch
/// through the decoders' reshapes yet ("multiple element-count-derived dimensions remain"), so
/// this is done here, on the protobuf; the parity checks at batch > 1 catch any mistake.
pub fn symbolic_batch(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    edit_graph(bytes, |graph| {
        for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
            match value_shape(value).dim.first_mut() {
                Some(dim) if dim.dim_value() == 1 => dim.set_dim_param("batch".into()),
                _ => bail!("{} does not have batch 1 on axis 0", value.name),
            }
        }
        let weights: std::collections::HashSet<String> =
            graph.initializer.iter().map(|t| t.name.clone()).collect();
        // The reshapes of computed values to a shape starting with the batch 1.
        let batched: Vec<(usize, Vec<i64>)> = graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.op_type == "Reshape" && n.input.len() == 2 && !weights.contains(&n.input[0])
            })
            .filter_map(|(i, n)| Some((i, int64_initializer(graph, &n.input[1])?)))
            .filter(|(_, shape)| shape.first() == Some(&1))
            .collect();
        for (i, mut shape) in batched {
            shape[0] = 0;
            let node = &mut graph.node[i];
            let name = format!("{}_batch", node.input[1]);
            node.input[1] = name.clone();
            // Two reshapes to the same shape share one new initializer.
            if graph.initializer.iter().any(|t| t.name == name) {
                continue;
            }
            graph.initializer.push(int64_tensor(name, shape));
        }
        // Drop the shapes nothing reads any more.
        drop_unused_initializers(graph);
        Ok(())
    })
}

/// Largest absolute difference between two equally long slices (infinite if lengths differ or a
/// value is NaN, so a broken output can never pass).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() { f32::INFINITY } else { d }
        })
        .fold(0.0, f32::max)
}

/// The denoised frame clipped to `[0, 1]`, as exported. burn-onnx cannot export `clamp`, so the
/// clip is `relu(x) - relu(x - 1)` (the same values, to rounding for x > 1).
fn denoise_clipped(model: &CameraDenoiser, noisy: Tensor<4>) -> Tensor<4> {
    use burn::tensor::activation::relu;
    let x = model.forward(noisy);
    relu(x.clone()) - relu(x.sub_scalar(1.0))
}

/// Exports the camera denoiser (`noisy [B, 1, H, W] -> denoised [B, 1, H, W]`, pixels in
/// `[0, 1]`, with symbolic `batch`, `height` and `width`: it is fully convolutional).
pub fn export_denoiser(model: &CameraDenoiser, run_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let device = Device::flex();
    let dynamic = InputSpec::new([
        AxisSpec::dynamic("batch"),
        AxisSpec::Static,
        AxisSpec::dynamic("height"),
        AxisSpec::dynamic("width"),
    ]);
    let onnx = OnnxExporter::new()
        .export_dynamic(
            model,
            Tensor::<4>::zeros([1, 1, 24, 40], &device),
            Tensor::<4>::zeros([2, 1, 32, 36], &device),
            &[dynamic],
            denoise_clipped,
        )
        .map_err(|e| anyhow!("burn-onnx export failed: {e}"))?;
    post_process(
        onnx.as_bytes(),
        &[NOISY_INPUT],
        &[DENOISED_OUTPUT],
        &[
            ("kind", "denoiser".into()),
            ("input_shape", "[batch,1,height,width]".into()),
            ("output_shape", "[batch,1,height,width]".into()),
            ("pixel_range", "[0,1]".into()),
            ("noise_sigma_range", "[5,50] of 255".into()),
            ("macs_per_pixel", model.macs_per_pixel().to_string()),
            // Mirror frames outwards by this many pixels before the model and crop after, so no
            // output pixel sees the convolutions' zero padding (the trainer measures it so).
            ("reflect_padding", model.context().to_string()),
            ("source_run", run_dir.display().to_string()),
        ],
    )
}

/// Runs an ONNX model with one input with tract on `input` of `shape`; returns output 0.
pub fn tract_once(model_bytes: &[u8], shape: &[usize], input: &[f32]) -> anyhow::Result<Vec<f32>> {
    Ok(tract_all(model_bytes, shape, input)?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// Runs an ONNX model with one input with tract on `input` of `shape`; returns every output.
pub fn tract_all(
    model_bytes: &[u8],
    shape: &[usize],
    input: &[f32],
) -> anyhow::Result<Vec<Vec<f32>>> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &model_bytes[..])?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let result = plan.run(tvec!(Tensor::from_shape(shape, input)?.into_tvalue()))?;
    result
        .iter()
        .map(|t| Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()))
        .collect()
}

/// Runs an ONNX model with one input with ONNX Runtime (loaded from `dylib`) on `input` of
/// `shape`; returns output 0.
pub fn ort_once(
    onnx: &[u8],
    shape: &[usize],
    input: &[f32],
    dylib: &Path,
) -> anyhow::Result<Vec<f32>> {
    Ok(ort_all(onnx, shape, input, dylib)?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// Runs an ONNX model with one input with ONNX Runtime on `input` of `shape`; returns every
/// output.
pub fn ort_all(
    onnx: &[u8],
    shape: &[usize],
    input: &[f32],
    dylib: &Path,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut session =
        ort::session::Session::builder(ort_environment(dylib)?)?.commit_from_memory(onnx)?;
    let input =
        ort::value::Tensor::from_array((shape.to_vec(), input.to_vec().into_boxed_slice()))?;
    let outputs = session.run(ort::inputs![input])?;
    let mut all = Vec::new();
    for (_, value) in outputs.iter() {
        let (_, values) = value.try_extract_tensor::<f32>()?;
        all.push(values.to_vec());
    }
    Ok(all)
}

/// Exports `module` as traced through `forward` on `sample` (static shapes, batch 1), with the
/// inputs and outputs renamed and `metadata` recorded.
pub fn export_static<M, I, O>(
    module: &M,
    sample: I,
    forward: impl FnOnce(&M, I) -> O,
    inputs: &[&str],
    outputs: &[&str],
    metadata: &[(&str, String)],
) -> anyhow::Result<Vec<u8>>
where
    M: burn::module::Module,
    I: burn_onnx::export::ExportInput,
    O: burn_onnx::export::ExportOutput,
{
    let model = OnnxExporter::new()
        .export(module, sample, forward)
        .map_err(|e| anyhow!("burn-onnx export failed: {e}"))?;
    post_process(model.as_bytes(), inputs, outputs, metadata)
}

/// Compares tract and (with `ort_dylib`) ONNX Runtime with Burn's `expected` outputs on each
/// input of `inputs` (row-major values of the matching `shapes`): every output, largest
/// difference.
pub fn verify_all(
    onnx: &[u8],
    shapes: &[Vec<usize>],
    inputs: &[Vec<f32>],
    expected: &[Vec<Vec<f32>>],
    ort_dylib: Option<&Path>,
) -> anyhow::Result<Vec<Parity>> {
    let worst = |got: &[Vec<f32>], want: &[Vec<f32>]| {
        if got.len() != want.len() {
            return f32::INFINITY;
        }
        got.iter()
            .zip(want)
            .map(|(g, w)| max_abs_diff(w, g))
            .fold(0.0, f32::max)
    };
    // Examples compared: the batch sizes summed.
    let examples = shapes.iter().map(|s| s.first().copied().unwrap_or(1)).sum();
    let mut parity = vec![Parity {
        runtime: "tract".into(),
        inputs: examples,
        max_abs_diff: 0.0,
    }];
    if ort_dylib.is_some() {
        parity.push(Parity {
            runtime: "onnxruntime".into(),
            inputs: examples,
            max_abs_diff: 0.0,
        });
    }
    if shapes.len() != inputs.len() || expected.len() != inputs.len() {
        bail!(
            "{} shapes and {} expected outputs for {} inputs",
            shapes.len(),
            expected.len(),
            inputs.len()
        );
    }
    for ((input, want), shape) in inputs.iter().zip(expected).zip(shapes) {
        let tract = tract_all(onnx, shape, input).context("running the ONNX file with tract")?;
        parity[0].max_abs_diff = parity[0].max_abs_diff.max(worst(&tract, want));
        if let Some(dylib) = ort_dylib {
            let ort = ort_all(onnx, shape, input, dylib)
                .context("running the ONNX file with ONNX Runtime")?;
            parity[1].max_abs_diff = parity[1].max_abs_diff.max(worst(&ort, want));
        }
    }
    Ok(parity)
}

/// Compares tract and (if `ort_dylib` is given) ONNX Runtime with Burn on each noisy frame of
/// `frames` (`[1, 1, H, W]` each, of different sizes to exercise the symbolic axes).
pub fn verify_denoiser(
    onnx: &[u8],
    model: &CameraDenoiser,
    frames: &[Tensor<4>],
    ort_dylib: Option<&Path>,
) -> anyhow::Result<Vec<Parity>> {
    let mut worst = [0.0f32; 2];
    for frame in frames {
        let shape = frame.dims();
        let expected = denoise_clipped(model, frame.clone())
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        let input = frame
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow!("{e:?}"))?;
        let tract = tract_once(onnx, &shape, &input)
            .with_context(|| format!("running the ONNX denoiser with tract on {shape:?}"))?;
        worst[0] = worst[0].max(max_abs_diff(&expected, &tract));
        if let Some(dylib) = ort_dylib {
            let ort = ort_once(onnx, &shape, &input, dylib).with_context(|| {
                format!("running the ONNX denoiser with ONNX Runtime on {shape:?}")
            })?;
            worst[1] = worst[1].max(max_abs_diff(&expected, &ort));
        }
    }
    let runtimes = if ort_dylib.is_some() { 2 } else { 1 };
    Ok(["tract", "onnxruntime"][..runtimes]
        .iter()
        .zip(worst)
        .map(|(runtime, max_abs_diff)| Parity {
            runtime: (*runtime).into(),
            inputs: frames.len(),
            max_abs_diff,
        })
        .collect())
}

/// Loads ONNX Runtime from `dylib` for the checks to come, so that a library that cannot be
/// loaded is said before the work that needs it.
///
/// # Errors
/// The library cannot be loaded, or another one was loaded before.
pub fn load_ort(dylib: &Path) -> anyhow::Result<()> {
    ort_environment(dylib).map(|_| ())
}

/// The process's ONNX Runtime environment. ORT allows one per process, so it is created on
/// first use from `dylib` and shared; asking for another library later is an error.
fn ort_environment(dylib: &Path) -> anyhow::Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<(PathBuf, Result<ort::environment::Environment, String>)> =
        OnceLock::new();
    let (loaded, env) = ENV.get_or_init(|| {
        let env = ort::init_from(dylib)
            .map_err(|e| e.to_string())
            .and_then(|builder| builder.build().map_err(|e| e.to_string()));
        (dylib.to_owned(), env)
    });
    if loaded != dylib {
        bail!("ONNX Runtime was already loaded from {}", loaded.display());
    }
    env.as_ref()
        .map_err(|e| anyhow!("cannot load ONNX Runtime from {}: {e}", dylib.display()))
}

/// Runs the ONNX decoder with ONNX Runtime (loaded from `dylib`) on each row of `latents`.
pub fn run_ort(
    onnx: &[u8],
    latents: &[f32],
    latent: usize,
    dylib: &Path,
) -> anyhow::Result<Vec<f32>> {
    let mut session =
        ort::session::Session::builder(ort_environment(dylib)?)?.commit_from_memory(onnx)?;
    let mut out = Vec::with_capacity(latents.len() / latent * 784);
    for z in latents.chunks(latent) {
        let input =
            ort::value::Tensor::from_array(([1usize, latent], z.to_vec().into_boxed_slice()))?;
        let outputs = session.run(ort::inputs![input])?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>()?;
        out.extend_from_slice(values);
    }
    Ok(out)
}

/// Compares tract and (if `ort_dylib` is given) ONNX Runtime with Burn on `latents`, all in one
/// batch, and on the first latent alone (batch 1).
pub fn verify_decoder(
    onnx: &[u8],
    decoder: &ConvDecoder,
    latents: Tensor<2>,
    ort_dylib: Option<&Path>,
) -> anyhow::Result<Vec<Parity>> {
    let [n, latent] = latents.dims();
    let values = |t: Tensor<2>| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        let expected = decoder.forward(t.clone()).into_data().try_to_vec::<f32>();
        let input = t.into_data().try_to_vec::<f32>();
        Ok((
            input.map_err(|e| anyhow!("{e:?}"))?,
            expected.map_err(|e| anyhow!("{e:?}"))?,
        ))
    };
    let (all, all_expected) = values(latents.clone())?;
    let (first, first_expected) = values(latents.slice(0..1.min(n)))?;
    let mut parity = verify_all(
        onnx,
        &[vec![n, latent]],
        &[all],
        &[vec![all_expected]],
        ort_dylib,
    )?;
    let single = verify_all(
        onnx,
        &[vec![1.min(n), latent]],
        &[first],
        &[vec![first_expected]],
        ort_dylib,
    )?;
    for (p, s) in parity.iter_mut().zip(single) {
        p.max_abs_diff = p.max_abs_diff.max(s.max_abs_diff);
        p.inputs = n;
    }
    Ok(parity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(name: &str, s: &[u8]) -> onnx_ir::AttributeProto {
        let mut a = onnx_ir::AttributeProto::new();
        a.name = name.into();
        a.s = s.to_vec().into();
        a
    }

    /// A graph with burn-onnx's nearest x2 `Resize` (8x8 -> 16x16) and one it must not touch.
    fn graph_with_resizes() -> GraphProto {
        let mut graph = GraphProto::new();
        let mut sizes = TensorProto::new();
        sizes.name = "sizes".into();
        sizes.data_type = ONNX_INT64;
        sizes.dims = vec![2];
        sizes.raw_data = [16i64, 16]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        graph.initializer.push(sizes);
        for (input, output, mode) in [("x", "y", &b"nearest"[..]), ("y", "z", b"linear")] {
            let mut node = NodeProto::new();
            node.op_type = "Resize".into();
            node.input = vec![input.into(), String::new(), String::new(), "sizes".into()];
            node.output = vec![output.into()];
            node.attribute = vec![
                attribute("mode", mode),
                attribute("coordinate_transformation_mode", b"asymmetric"),
                attribute("nearest_mode", b"floor"),
            ];
            let mut axes = onnx_ir::AttributeProto::new();
            axes.name = "axes".into();
            axes.ints = vec![2, 3];
            node.attribute.push(axes);
            graph.node.push(node);
        }
        graph
    }

    /// Upsampling x2 (burn-onnx's `Resize`) of a `[1, 3, h, w]` input, then a 3x3 convolution
    /// with `pad` to 2 channels, as an opset-18 model.
    fn upsample_conv_model((h, w): (i64, i64), pad: i64) -> ModelProto {
        let mut graph = graph_with_resizes();
        graph.node.truncate(1); // x -> y, nearest
        graph.initializer[0] = int64_tensor("sizes".into(), vec![2 * h, 2 * w]);
        let weights: Vec<f32> = (0..2 * 3 * 9)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 10.0)
            .collect();
        graph
            .initializer
            .push(f32_tensor("w".into(), vec![2, 3, 3, 3], &weights));
        graph
            .initializer
            .push(f32_tensor("b".into(), vec![2], &[0.25, -0.5]));
        let mut conv = NodeProto::new();
        conv.op_type = "Conv".into();
        conv.input = vec!["y".into(), "w".into(), "b".into()];
        conv.output = vec!["z".into()];
        conv.attribute = vec![
            ints_attr("kernel_shape", &[3, 3]),
            ints_attr("pads", &[pad, pad, pad, pad]),
        ];
        graph.node.push(conv);
        let value = |name: &str| {
            let mut v = onnx_ir::ValueInfoProto::new();
            v.name = name.into();
            // A float tensor (shape given when the model is run).
            v.type_.mut_or_insert_default().mut_tensor_type().elem_type = ONNX_FLOAT;
            v
        };
        graph.input.push(value("x"));
        graph.output.push(value("z"));
        let mut model = ModelProto::new();
        model.ir_version = 8;
        // (The opset type is not exported by onnx-ir: filled in place.)
        model.opset_import.push(Default::default());
        if let Some(opset) = model.opset_import.last_mut() {
            opset.version = 18;
        }
        model.graph = Some(graph).into();
        model
    }

    #[test]
    fn folded_upsampling_convs_compute_what_upsampling_and_convolving_does() {
        for (pad, size) in [(1, (5, 6)), (0, (4, 7)), (2, (3, 3))] {
            let model = upsample_conv_model(size, pad);
            let (mut plain, mut folded) = (model.clone(), model);
            let graph = |m: &mut ModelProto| m.graph.as_mut().expect("graph").clone();
            let mut g = graph(&mut plain);
            assert_eq!(rewrite_nearest_upsampling(&mut g).expect("rewrites"), 1);
            plain.graph = Some(g).into();
            let mut g = graph(&mut folded);
            assert_eq!(
                fold_upsampling_convs(&mut g).expect("folds"),
                1,
                "pad {pad}"
            );
            let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
            // Odd padding: the phases' windows are one apart, so a Slice crops.
            let expected: &[&str] = if pad % 2 == 1 {
                &["Conv", "DepthToSpace", "Slice"]
            } else {
                &["Conv", "DepthToSpace"]
            };
            assert_eq!(ops, expected, "pad {pad}");
            folded.graph = Some(g).into();
            let shape = [1, 3, size.0 as usize, size.1 as usize];
            let x: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|i| ((i * 13 % 7) as f32 - 3.0) / 4.0)
                .collect();
            let run = |m: &ModelProto| {
                let bytes = m.write_to_bytes().expect("serialises");
                tract_once(&bytes, &shape, &x).expect("tract runs it")
            };
            let (want, got) = (run(&plain), run(&folded));
            let side = |n: i64| (2 * n + 2 * pad - 2) as usize;
            assert_eq!(want.len(), 2 * side(size.0) * side(size.1), "pad {pad}");
            assert_eq!(got.len(), want.len(), "pad {pad}");
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "pad {pad}: max |diff| {diff}");
        }
    }

    #[test]
    fn nearest_doubling_becomes_reshape_expand_reshape() {
        let mut graph = graph_with_resizes();
        assert_eq!(rewrite_nearest_upsampling(&mut graph).expect("rewrites"), 1);
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Reshape", "Expand", "Reshape", "Resize"]);
        assert_eq!(graph.node[0].input[0], "x");
        assert_eq!(graph.node[2].output, ["y"]);
        let constant = |i: usize| int64_initializer(&graph, &graph.node[i].input[1]);
        assert_eq!(constant(0), Some(vec![0, 0, 8, 1, 8, 1]));
        assert_eq!(constant(1), Some(vec![1, 1, 1, 2, 1, 2]));
        assert_eq!(constant(2), Some(vec![0, 0, 16, 16]));
        // `sizes` is still read by the linear Resize, so it stays.
        assert!(graph.initializer.iter().any(|t| t.name == "sizes"));
    }
}
