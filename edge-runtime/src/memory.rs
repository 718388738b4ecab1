//! What a plan's tensors need, checked against what memory the process can still get
//! ([`machine::available_bytes`]), so that a frame too large for the machine is an error at
//! load time instead of the kernel's OOM killer ending the process without a word.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::memory::eval_tmp_memory_usage;
use tract_onnx::tract_core::ops::konst::Const;

use crate::Error;
pub(crate) use machine::{available_bytes, human};

/// The most bytes the plan's tensors hold at once while it runs: at each step, the outputs of
/// the steps before it that a later step still reads, its inputs and its own outputs (tract frees
/// a tensor after its last reader). Weights and the ops' scratch buffers are not counted, so it
/// is a lower bound of what a run takes on top of the loaded model. `None` when a tensor's size
/// is not a number.
pub(crate) fn plan_tensor_bytes(plan: &TypedRunnableModel) -> Option<u64> {
    let usage = eval_tmp_memory_usage(plan.model(), plan.order_without_consts(), |node| {
        !node.op_is::<Const>()
    })
    .ok()?;
    usage
        .iter()
        .map(|(_, bytes)| bytes.to_i64().ok().and_then(|b| u64::try_from(b).ok()))
        .try_fold(0u64, |peak, bytes| Some(peak.max(bytes?)))
}

/// Refuses work that needs `needed` bytes when the process cannot get that much
/// ([`available_bytes`]); does nothing where the limits cannot be read.
///
/// # Errors
/// [`Error::Memory`], naming `what`.
pub(crate) fn ensure_fits(needed: u64, what: impl FnOnce() -> String) -> Result<(), Error> {
    match available_bytes() {
        Some(available) if needed > available => Err(Error::Memory {
            what: what(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}
