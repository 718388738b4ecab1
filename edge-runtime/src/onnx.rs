//! What every model type of this crate does the same way: read an ONNX file with a precise error,
//! and take its execution state back after a panic in another thread.

use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tract_onnx::prelude::*;

use crate::Error;

/// Reads and parses the ONNX file at `path`.
///
/// # Errors
/// [`Error::ReadModel`] when the file is missing or unreadable (tract would report it as a parse
/// failure, so the file is opened first), [`Error::ParseModel`] when it is not ONNX tract knows.
pub(crate) fn read(path: &Path) -> Result<InferenceModel, Error> {
    let file = File::open(path).map_err(|source| Error::ReadModel {
        path: path.into(),
        source,
    })?;
    let parse_error = |e: TractError| Error::ParseModel {
        path: path.into(),
        source: e.into(),
    };
    // Said plainly: tract's own words for these are an OS error ("No such device") and "model
    // proto does not contain a graph".
    match file.metadata() {
        Ok(m) if m.is_dir() => return Err(parse_error(anyhow::anyhow!("it is a directory"))),
        Ok(m) if m.len() == 0 => return Err(parse_error(anyhow::anyhow!("the file is empty"))),
        _ => {}
    }
    // tract's `model_for_path`, in its steps, with one check between them: tract panics on a
    // graph output that nothing defines (a corrupt or hand-edited file). `DepthToSpace` is this
    // crate's own, faster form.
    let mut onnx = tract_onnx::onnx();
    crate::depth_to_space::register(&mut onnx);
    let proto = onnx.proto_model_for_path(path).map_err(parse_error)?;
    if let Some(graph) = &proto.graph {
        let defined = |name: &str| {
            graph.input.iter().any(|i| i.name == name)
                || graph.initializer.iter().any(|t| t.name == name)
                || graph
                    .node
                    .iter()
                    .any(|n| n.output.iter().any(|o| o == name))
        };
        if let Some(output) = graph.output.iter().find(|o| !defined(&o.name)) {
            return Err(parse_error(anyhow::anyhow!(
                "graph output `{}` is not produced by any node, input or initializer",
                output.name
            )));
        }
    }
    let parsed = onnx
        .parse(&proto, path.parent().and_then(Path::to_str))
        .map_err(parse_error)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(parse_error(anyhow::anyhow!(
            "could not resolve inputs {:?}",
            parsed.unresolved_inputs
        )));
    }
    // A NaN or infinite weight (a training that diverged, a damaged file): tract's ReLU reads
    // NaN as 0, so such a model would make a plausible picture, not an error.
    for node in parsed.model.nodes() {
        let Some(constant) = node.op_as::<tract_onnx::tract_core::ops::konst::Const>() else {
            continue;
        };
        let Ok(values) = constant.val().to_plain_array_view::<f32>() else {
            continue; // not f32: integers are always finite; our exporters write f32 weights
        };
        if let Some((at, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(parse_error(anyhow::anyhow!(
                "its constant `{}` holds {v} (value {at} of {}): a model's weights must be finite",
                node.name,
                values.len()
            )));
        }
    }
    Ok(parsed.model)
}

/// The model's ONNX metadata entry `key` read as a count: `None` without the entry, `Some(None)`
/// when it is not a non-negative integer.
pub(crate) fn metadata_count(model: &InferenceModel, key: &str) -> Option<Option<usize>> {
    let value = model
        .properties
        .get(&format!("onnx.metadata_props.{key}"))?;
    Some(
        value
            .to_plain_array_view::<String>()
            .ok()
            .and_then(|v| v.iter().next().and_then(|v| v.parse().ok())),
    )
}

/// The values of `view` in logical (row-major) order: one copy when they lie that way in memory
/// (tract's outputs do), else element by element (~25 instructions each, 4% of a decode).
pub(crate) fn row_major<D: tract_ndarray::Dimension>(
    view: &tract_ndarray::ArrayView<'_, f32, D>,
) -> Vec<f32> {
    match view.as_slice() {
        Some(values) => values.to_vec(),
        None => view.iter().copied().collect(),
    }
}

/// `values`, a model's output, or [`Error::Inference`] naming the first value that is not a
/// finite number: a NaN would otherwise come out as a black pixel, or as `NaN` in a CSV, without
/// a word.
pub(crate) fn finite(values: Vec<f32>) -> Result<Vec<f32>, Error> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(values),
        Some(at) => Err(Error::Inference {
            source: format!(
                "the model's output value #{at} is {}, not a finite number",
                values[at]
            )
            .into(),
        }),
    }
}

/// Runs `call`, an inference (tract and the copies around it), with a panic inside it turned into
/// [`Error::Inference`] carrying the panic's message: tract panics where its own buffers cannot
/// be allocated (a frame too large for the memory, say), and a library returns errors. The state
/// the call had locked is then poisoned, and [`lock_state`] replaces it on the next call. (An
/// allocation through `Vec` that fails still aborts the process, as Rust's allocations do; the
/// panic hook still prints the panic.)
pub(crate) fn catch_inference_panic<T>(
    call: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Error::Inference {
            source: format!("the inference panicked: {message}").into(),
        })
    })
}

/// Locks `state`. After a panic inside tract in another thread's run the state may be half-way
/// through a run: it is replaced by `fresh()` (when that succeeds) and the poison cleared.
pub(crate) fn lock_state<'a, S>(
    state: &'a Mutex<S>,
    fresh: impl FnOnce() -> Option<S>,
) -> MutexGuard<'a, S> {
    state.lock().unwrap_or_else(|poisoned| {
        let mut guard = poisoned.into_inner();
        if let Some(new) = fresh() {
            *guard = new;
            state.clear_poison();
        }
        guard
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_reads_any_layout_in_logical_order() {
        let a = tract_ndarray::Array2::from_shape_vec((2, 3), vec![1.0f32, 2., 3., 4., 5., 6.])
            .expect("shape");
        assert_eq!(row_major(&a.view()), [1.0, 2., 3., 4., 5., 6.]);
        // A transposed view is not laid out row by row: read element by element.
        assert_eq!(row_major(&a.t()), [1.0, 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn a_non_finite_output_is_an_error_naming_it() {
        assert_eq!(finite(vec![0.5, 1.0]).ok(), Some(vec![0.5, 1.0]));
        for (bad, shown) in [(f32::NAN, "NaN"), (f32::NEG_INFINITY, "-inf")] {
            let message = finite(vec![0.5, bad, 1.0])
                .expect_err("not finite")
                .to_string();
            assert!(message.contains("inference"), "{message}");
            let source = match finite(vec![0.5, bad]) {
                Err(Error::Inference { source }) => source.to_string(),
                other => panic!("expected an inference error, got {other:?}"),
            };
            assert_eq!(
                source,
                format!("the model's output value #1 is {shown}, not a finite number")
            );
        }
    }

    #[test]
    fn a_panic_inside_tract_is_an_error_and_the_state_it_held_is_replaced() {
        let state = Mutex::new("in use");
        let result: Result<(), Error> = catch_inference_panic(|| {
            let _held = lock_state(&state, || Some("fresh"));
            panic!("failed to allocate 2058252800 bytes");
        });
        let message = match result {
            Err(Error::Inference { source }) => source.to_string(),
            other => panic!("expected an inference error, got {other:?}"),
        };
        assert_eq!(
            message,
            "the inference panicked: failed to allocate 2058252800 bytes"
        );
        // The state may have been left half-way through a run: the next call gets a fresh one.
        assert_eq!(*lock_state(&state, || Some("fresh")), "fresh");
        assert_eq!(catch_inference_panic(|| Ok(3)).ok(), Some(3));
    }
}
