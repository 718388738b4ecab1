//! The MNIST families' reconstruction losses fused into one multi-threaded pass on the CPU.
//!
//! Written with Burn's tensor ops, binary cross-entropy of the logits is eight element-wise ops
//! (`relu`, `abs`, `exp`, `log1p`, ...) and the squared error of the sigmoid four, each a fresh
//! buffer, each on one thread in `flex`, and the backward pass adds as many again: Burn's
//! autodiff computes `exp` and `sigmoid` a second time there from their saved inputs. On the FC
//! VAE that was ~13% of a one-thread training step (`perf`, BENCHMARKS.md).
//!
//! [`reconstruction`] computes the loss and its gradient with respect to the logits in one pass
//! over the logits and the targets, on rayon's pool (the one `flex` and a shard use), and hands
//! the gradient to autodiff through a surrogate: `sum(logits * g)` has the gradient `g`, and
//! `surrogate - detach(surrogate) + value` has the loss's value and that gradient. The backward
//! pass is then one multiplication. Partial sums are taken over fixed chunks and added in order,
//! so the value does not depend on the number of threads. On other devices (the GPU backends)
//! the tensor ops stay ([`super::loss`]).

use burn::{
    prelude::*,
    tensor::{DType, TensorData},
};
use rayon::prelude::*;

use super::LossKind;

/// Elements per rayon task (a multiple of the 784 pixels of an image is not needed: the sums
/// are over every element).
const CHUNK: usize = 1 << 13;

/// Whether [`reconstruction`] handles `kind` for these tensors: the three losses of the sigmoid
/// output, on the CPU, in f32.
pub fn applies(kind: LossKind, logits: &Tensor<4>, targets: &Tensor<4>) -> bool {
    kind != LossKind::Mse
        && logits.device().inner() == Device::flex()
        && logits.dtype() == DType::F32
        && targets.dtype() == DType::F32
        && logits.shape() == targets.shape()
}

/// One element's loss and its derivative with respect to the logit `l`, for the target `x`.
fn element(kind: LossKind, l: f32, x: f32) -> (f32, f32) {
    // e = exp(-|l|) in (0, 1]: no overflow whatever the logit.
    let e = (-l.abs()).exp();
    let sigmoid = if l >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    match kind {
        LossKind::SseKl => {
            let d = sigmoid - x;
            (d * d, 2.0 * d * sigmoid * (1.0 - sigmoid))
        }
        // max(l, 0) - x l + log(1 + exp(-|l|)), whose derivative is sigmoid(l) - x. `ln(1 + e)`
        // rather than `ln_1p(e)`: several times faster here, and off by at most half an ulp of
        // 1 (6e-8) where e is tiny, next to terms of ~0.1.
        _ => (l.max(0.0) - x * l + (1.0 + e).ln(), sigmoid - x),
    }
}

/// The reconstruction term of [`super::loss`] for `kind`, with the gradient flowing back into
/// `logits`, where [`applies`] says so.
pub fn reconstruction(kind: LossKind, logits: &Tensor<4>, targets: Tensor<4>) -> Tensor<1> {
    let shape = logits.shape();
    let [batch, ..] = logits.dims();
    let device = logits.device();
    let (l, x) = (logits.clone().detach().into_data(), targets.into_data());
    let f32s = "checked by `applies`: f32 tensors";
    let (l, x) = (
        l.as_slice::<f32>().expect(f32s),
        x.as_slice::<f32>().expect(f32s),
    );
    let scale = match kind {
        LossKind::MeanBce => 1.0 / l.len() as f64,
        _ => 1.0 / batch as f64,
    };
    let grad_scale = scale as f32;
    let mut grad = vec![0.0f32; l.len()];
    let partial = |(g, (l, x)): (&mut [f32], (&[f32], &[f32]))| {
        let mut sum = 0.0f64;
        for ((g, &l), &x) in g.iter_mut().zip(l).zip(x) {
            let (value, slope) = element(kind, l, x);
            sum += f64::from(value);
            *g = slope * grad_scale;
        }
        sum
    };
    let sums: Vec<f64> = grad
        .par_chunks_mut(CHUNK)
        .zip(l.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .map(partial)
        .collect();
    let value = (sums.iter().sum::<f64>() * scale) as f32;
    let grad = Tensor::<4>::from_data(TensorData::new(grad, shape), &device);
    let surrogate = (logits.clone() * grad).sum();
    let value = Tensor::<1>::from_data(TensorData::new(vec![value], [1]), &device);
    surrogate.clone() - surrogate.detach() + value
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tolerance;

    use super::*;
    use crate::{model::reconstruction_ops, rng::SplitMix64};

    /// The fused pass against the tensor ops, on the autodiff CPU device: the same value and the
    /// same gradient with respect to the logits, for logits from -40 to 40 and targets in [0, 1]
    /// (exactly 0 and 1 included), over more elements than one task takes.
    #[test]
    fn fused_losses_match_the_tensor_ops() {
        let device = Device::flex().autodiff();
        let shape = [24, 1, 28, 28];
        let n = shape.iter().product::<usize>();
        assert!(n > 2 * CHUNK, "the parallel path runs");
        let mut rng = SplitMix64(3);
        let logits: Vec<f32> = (0..n)
            .map(|i| (rng.uniform() as f32 - 0.5) * if i % 5 == 0 { 80.0 } else { 8.0 })
            .collect();
        let targets: Vec<f32> = (0..n)
            .map(|i| match i % 3 {
                0 => (i % 2) as f32,
                _ => rng.uniform() as f32,
            })
            .collect();
        let tensor =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape), &device);
        for kind in [LossKind::MeanBce, LossKind::BceKl, LossKind::SseKl] {
            assert!(applies(kind, &tensor(&logits), &tensor(&targets)));
            let run = |fused: bool| {
                let l = tensor(&logits).require_grad();
                let loss = if fused {
                    reconstruction(kind, &l, tensor(&targets))
                } else {
                    reconstruction_ops(kind, l.clone(), tensor(&targets))
                };
                let grads = loss.clone().backward();
                let grad = l.grad(&grads).expect("a gradient for the logits");
                (loss.into_data(), grad.into_data())
            };
            let ((value, grad), (want_value, want_grad)) = (run(true), run(false));
            value.assert_approx_eq::<f32>(&want_value, Tolerance::rel_abs(1e-5, 1e-6));
            // The ops add three terms to get `sigmoid - x`: rounding of up to ~1e-7 of the
            // loss's scale (1 / elements or 1 / images) where the result is near 0.
            let scale = match kind {
                LossKind::MeanBce => 1.0 / n as f32,
                _ => 1.0 / shape[0] as f32,
            };
            grad.assert_approx_eq::<f32>(&want_grad, Tolerance::rel_abs(1e-4, 1e-4 * scale));
        }
        assert!(!applies(LossKind::Mse, &tensor(&logits), &tensor(&targets)));
    }

    /// At a logit of exactly 0 the cross-entropy's slope is `sigmoid(0) - x = 1/2 - x`. (The
    /// tensor ops give `-x` there: Burn takes 0 as the slope of `relu` and of `abs` at 0.)
    #[test]
    fn the_cross_entropys_slope_at_a_zero_logit_is_one_half_minus_the_target() {
        let device = Device::flex().autodiff();
        let targets = [0.0, 0.25, 1.0];
        let l = Tensor::<4>::zeros([1, 1, 1, 3], &device).require_grad();
        let x = Tensor::<4>::from_data(TensorData::new(targets.to_vec(), [1, 1, 1, 3]), &device);
        let loss = reconstruction(LossKind::BceKl, &l, x);
        let grad = l.grad(&loss.backward()).expect("a gradient for the logits");
        let want = TensorData::new(targets.map(|x| 0.5 - x).to_vec(), [1, 1, 1, 3]);
        grad.into_data()
            .assert_approx_eq::<f32>(&want, Tolerance::rel_abs(1e-6, 1e-7));
    }
}
