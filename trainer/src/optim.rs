//! Adam with each parameter's update fused into one multi-threaded pass on the CPU.
//!
//! Burn's [`Adam`] updates a parameter with about a dozen element-wise tensor ops (scale and add
//! each moment, square, square root, divide, ...), each a fresh buffer, and `flex` runs
//! element-wise ops on one thread: on the dense models that was ~18% of a training step
//! (BENCHMARKS.md). [`FusedAdam`] computes the same update (Burn's formula, so the same
//! numbers up to float rounding) in one pass over the parameter, its gradient and its two moments,
//! in place, on rayon's pool (the one `flex` uses).
//!
//! Its state is Burn's [`AdamState`], so the optimizer checkpoints (`optimizer-<epoch>.bpk`)
//! are the same files as before. On other devices (the GPU backends) it is Burn's [`Adam`].

use burn::{
    optim::{
        Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer,
        Optimizer,
    },
    prelude::*,
    tensor::{DType, TensorData},
};
use rayon::prelude::*;

/// Adam's hyper-parameters: Burn's defaults ([`AdamConfig::new`]).
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Elements per rayon task: big enough that a task's start is noise next to its work.
const CHUNK: usize = 1 << 14;

/// Adam, fused on the CPU (see the module's documentation).
#[derive(Clone)]
pub struct FusedAdam {
    /// Burn's implementation, for devices the fused pass does not run on.
    fallback: Adam,
}

/// The optimizer every training run (and `trainer bench`) uses: [`FusedAdam`] with Burn's
/// default hyper-parameters.
pub fn adam() -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdam {
        fallback: AdamConfig::new()
            .with_beta_1(BETA_1)
            .with_beta_2(BETA_2)
            .with_epsilon(EPSILON)
            .build(),
    })
}

/// The per-step constants of Burn's update `m * c / (sqrt(v) + e)` at step `time` (from 1).
struct Step {
    lr: f32,
    scale: f32,
    epsilon: f32,
}

impl Step {
    fn new(lr: LearningRate, time: usize) -> Self {
        let t = i32::try_from(time).unwrap_or(i32::MAX);
        let correction_2 = (1.0 - BETA_2.powi(t)).sqrt();
        Self {
            lr: lr as f32,
            scale: correction_2 / (1.0 - BETA_1.powi(t)),
            epsilon: EPSILON * correction_2,
        }
    }

    /// Updates the moments and the parameters of one slice, in place.
    fn apply(&self, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
            *m = BETA_1 * *m + (1.0 - BETA_1) * g;
            *v = BETA_2 * *v + (1.0 - BETA_2) * (g * g);
            *p -= self.lr * (*m * self.scale / (v.sqrt() + self.epsilon));
        }
    }
}

/// The f32 values of `data`, to update in place. (`into_data` moves a tensor's values out
/// without a copy on the CPU when the tensor is their only owner, and `from_data` moves them
/// back: the update writes into the parameter's and the moments' own buffers.) The callers have
/// checked that the tensors hold f32.
fn slice_mut(data: &mut TensorData) -> &mut [f32] {
    data.as_mut_slice::<f32>()
        .expect("an f32 tensor's values read as f32")
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let f32 = |t: &Tensor<D>| t.dtype() == DType::F32;
        let fused = device == Device::flex()
            && f32(&tensor)
            && f32(&grad)
            && state.as_ref().is_none_or(|s| {
                let s = &s.momentum;
                s.max_moment_2.is_none() && f32(&s.moment_1) && f32(&s.moment_2)
            });
        if !fused {
            return self.fallback.step(lr, tensor, grad, state);
        }
        let shape = tensor.shape();
        let (time, mut m, mut v) = match state {
            Some(AdamState { momentum: s }) => {
                (s.time, s.moment_1.into_data(), s.moment_2.into_data())
            }
            None => (
                0,
                TensorData::zeros::<f32, _>(shape.clone()),
                TensorData::zeros::<f32, _>(shape.clone()),
            ),
        };
        let (mut p, g) = (tensor.into_data(), grad.into_data());
        let g = g
            .as_slice::<f32>()
            .expect("an f32 tensor's values read as f32");
        let (ps, ms, vs) = (slice_mut(&mut p), slice_mut(&mut m), slice_mut(&mut v));
        let step = Step::new(lr, time + 1);
        if ps.len() >= 2 * CHUNK {
            ps.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(ms.par_chunks_mut(CHUNK))
                .zip(vs.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| step.apply(p, g, m, v));
        } else {
            step.apply(ps, g, ms, vs);
        }
        let tensor = |data: TensorData| Tensor::from_data(data, &device);
        let momentum = AdaptiveMomentumState::new(time + 1, tensor(m), tensor(v));
        (tensor(p), Some(AdamState::new(momentum)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        nn::{Linear, LinearConfig},
        optim::GradientsParams,
        tensor::Distribution,
    };

    use super::*;

    /// A layer with more weights than one rayon task takes (the parallel path) and a bias
    /// smaller than one (the serial path).
    const IN: usize = 200;
    const OUT: usize = 180;
    const _: () = assert!(
        IN * OUT >= 2 * CHUNK && OUT < CHUNK,
        "both paths are covered"
    );

    /// The gradients of a squared error on the batch `x`.
    fn grads(layer: &Linear, x: Tensor<2>, target: f32) -> GradientsParams {
        let [batch, _] = x.dims();
        let y = Tensor::<2>::ones([batch, OUT], &x.device()).mul_scalar(target);
        let loss = (layer.forward(x) - y).powi_scalar(2).mean();
        GradientsParams::from_grads(loss.backward(), layer)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 values")
    }

    fn weights(layer: &Linear) -> Vec<f32> {
        let mut w = values(layer.weight.val());
        w.extend(values(layer.bias.as_ref().expect("a bias").val()));
        w
    }

    /// The fused update is Burn's Adam: the same parameters, step after step (float rounding
    /// apart; here they come out bit-identical), on the first step, on later ones, and after a
    /// checkpoint.
    #[test]
    fn fused_adam_takes_burns_adam_steps() {
        let device = Device::flex().autodiff();
        device.seed(7);
        let layer = LinearConfig::new(IN, OUT).init(&device);
        let start = weights(&layer);
        let (mut ours, mut burns) = (layer.clone(), layer);
        let mut fused = adam();
        let mut reference = AdamConfig::new().init();
        for step in 0..6 {
            // A checkpoint: our state saved and read back, and Burn's Adam's read by ours (an
            // `optimizer-<epoch>.bpk` written before the fused update existed).
            match step {
                2 => fused = adam().load_record(fused.to_record()),
                4 => fused = adam().load_record(reference.to_record()),
                _ => {}
            }
            let x = Tensor::<2>::random([8, IN], Distribution::Normal(0.0, 1.0), &device);
            let target = step as f32 * 0.3;
            let g = grads(&ours, x.clone(), target);
            ours = fused.step(1e-2, ours, g);
            let g = grads(&burns, x, target);
            burns = reference.step(1e-2, burns, g);
            let (a, b) = (weights(&ours), weights(&burns));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-6,
                "step {step}: fused Adam is {worst:e} from Burn's"
            );
        }
        let moved = start
            .iter()
            .zip(weights(&ours))
            .filter(|(a, b)| *a != b)
            .count();
        assert!(
            moved > start.len() * 9 / 10,
            "{moved} of {} moved",
            start.len()
        );
    }
}
