//! Weight averaging (`train --ema DECAY`): an exponential moving average of the weights a run
//! trains, which is what the run then saves and evaluates.
//!
//! Adam's iterates keep wandering around a minimum by about the size of their steps; their
//! average over the last ~`1 / (1 - d)` steps sits closer to it. On the lesson's FC VAE (decay
//! 0.999) this lowers the test loss by ~0.4-0.5 in the same epochs (RESULTS.md).
//!
//! The average after step `t` is `sum_i (1 - d) d^(t - i) w_i / (1 - d^t)`: weights `w_i` after
//! each step `i`, decay `d`, divided by the sum of those factors (as Adam corrects its moments),
//! so it is an average from the first step on, not pulled towards zero.
//!
//! In f32, a step's share of a weight, `(1 - d)` times its change, falls below the sum's rounding
//! step at decays near 1, so the sums are kept more precisely, where the weights are ([`Keep`]):
//! - on the CPU (Burn's `flex` backend), in host memory, in f64, updated with rayon's pool;
//! - on any other backend (GPUs; also the deprecated `ndarray` CPU backend), on the device, in
//!   f32 with a Kahan compensation term (GPUs seldom have f64), so no step reads the weights back
//!   to the host: that copy halved the FC VAE's training speed on an H200 through wgpu
//!   (BENCHMARKS.md, "Weight averaging on a GPU").

use std::collections::HashMap;

use burn::{
    module::{ModuleMapper, ModuleVisitor, Param, ParamId},
    prelude::*,
    tensor::{DType, TensorData},
};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// Where a [`WeightAverage`] keeps its sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// In host memory, in f64.
    Host,
    /// On the weights' device, in f32 with a Kahan compensation term.
    Device,
}

impl Keep {
    /// Where the weights are: the host for Burn's `flex` CPU backend, else their device.
    pub fn for_device(device: &Device) -> Self {
        if device.clone().inner() == Device::flex() {
            Self::Host
        } else {
            Self::Device
        }
    }
}

/// One parameter's `sum_i (1 - d) d^(t - i) w_i`, flattened.
#[expect(
    clippy::large_enum_variant,
    reason = "one per parameter: a model has a dozen at most"
)]
enum Sum {
    Host(Vec<f64>),
    /// On the device: the sum and the part of it the f32 `sum` lost to rounding, with the sign
    /// flipped (Kahan's compensation).
    Device {
        sum: Tensor<1>,
        lost: Tensor<1>,
    },
}

impl Sum {
    fn len(&self) -> usize {
        match self {
            Sum::Host(sum) => sum.len(),
            Sum::Device { sum, .. } => sum.shape().num_elements(),
        }
    }
}

/// An exponential moving average of a model's weights (see the module's documentation).
pub struct WeightAverage {
    decay: f64,
    keep: Keep,
    /// Steps averaged.
    steps: u64,
    /// Per parameter.
    sums: HashMap<ParamId, Sum>,
}

impl WeightAverage {
    /// An average of no steps yet, with `decay` per step, its sums kept as `keep` says.
    ///
    /// # Errors
    /// A decay that is not above 0 and below 1.
    pub fn new(decay: f64, keep: Keep) -> anyhow::Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            anyhow::bail!("a weight average's decay must be above 0 and below 1, not {decay}");
        }
        Ok(Self {
            decay,
            keep,
            steps: 0,
            sums: HashMap::new(),
        })
    }

    /// The average of a run that has taken `steps` steps, whose average weights were `average`
    /// (a resumed run's saved weights).
    ///
    /// # Errors
    /// A bad decay ([`WeightAverage::new`]), weights that cannot be read.
    pub fn resume<M: Module>(
        decay: f64,
        keep: Keep,
        steps: u64,
        average: &M,
    ) -> anyhow::Result<Self> {
        let mut this = Self::new(decay, keep)?;
        this.steps = steps;
        let scale = this.normaliser();
        let mut read = Read {
            sums: &mut this.sums,
            keep,
            scale,
            error: None,
        };
        average.visit(&mut read);
        match read.error {
            Some(e) => Err(e),
            None => Ok(this),
        }
    }

    /// `1 - d^t`: the sum of the factors of the steps averaged.
    fn normaliser(&self) -> f64 {
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        1.0 - self.decay.powi(t)
    }

    /// Checks that `model` has the averaged parameters: the same ids (Burn's, which the weights
    /// files keep), each of the same size. Before the first step any model has.
    ///
    /// # Errors
    /// What differs.
    pub fn check<M: Module>(&self, model: &M) -> anyhow::Result<()> {
        if self.steps == 0 {
            return Ok(());
        }
        let mut sizes = Sizes(HashMap::new());
        model.visit(&mut sizes);
        let ours: HashMap<ParamId, usize> =
            self.sums.iter().map(|(id, sum)| (*id, sum.len())).collect();
        if sizes.0 != ours {
            let shared = sizes.0.keys().filter(|id| ours.contains_key(id)).count();
            anyhow::bail!(
                "they have {} parameters, {shared} of them among the {} averaged (or of another \
                 size): they are another run's",
                sizes.0.len(),
                ours.len()
            );
        }
        Ok(())
    }

    /// Adds the weights after one more step: `model` must have the averaged parameters.
    ///
    /// # Errors
    /// Weights that cannot be read, or a parameter that is not averaged or of another size (the
    /// whole model is checked once, on resume, by [`WeightAverage::check`]).
    pub fn update<M: Module>(&mut self, model: &M) -> anyhow::Result<()> {
        let mut step = Blend {
            sums: &mut self.sums,
            decay: self.decay,
            keep: self.keep,
            first: self.steps == 0,
            error: None,
        };
        model.visit(&mut step);
        match step.error {
            Some(e) => Err(e),
            None => {
                self.steps += 1;
                Ok(())
            }
        }
    }

    /// `model` with the average weights (a model of the same parameters as the averaged one:
    /// the trained model itself), on `model`'s devices. Before the first step, and for
    /// parameters never averaged (or averaged at another size), `model`'s own. The average's
    /// weights are for saving and evaluating: they do not ask for gradients.
    pub fn weights<M: Module>(&self, model: M) -> M {
        if self.steps == 0 {
            return model;
        }
        let scale = 1.0 / self.normaliser();
        model.map(&mut Write {
            sums: &self.sums,
            scale,
        })
    }
}

/// A parameter's values as f32 (whatever its float type).
fn values<const D: usize>(param: &Param<Tensor<D>>) -> anyhow::Result<Vec<f32>> {
    param
        .val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading parameter {} back: {e:?}", param.id))
}

/// Each parameter's number of values ([`WeightAverage::check`]).
struct Sizes(HashMap<ParamId, usize>);

impl ModuleVisitor for Sizes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.insert(param.id, param.val().shape().num_elements());
    }
}

/// A parameter's values as a flat f32 tensor on its device, without autodiff.
fn flat<const D: usize>(param: &Param<Tensor<D>>) -> Tensor<1> {
    let t = param.val().inner();
    let n = t.shape().num_elements();
    t.reshape([n]).cast(DType::F32)
}

/// Reads average weights, times `scale`, into sums ([`WeightAverage::resume`]).
struct Read<'a> {
    sums: &'a mut HashMap<ParamId, Sum>,
    keep: Keep,
    scale: f64,
    error: Option<anyhow::Error>,
}

impl ModuleVisitor for Read<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let sum = match self.keep {
            Keep::Host => match values(param) {
                Ok(v) => Sum::Host(v.into_iter().map(|w| f64::from(w) * self.scale).collect()),
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            },
            Keep::Device => {
                let sum = flat(param).mul_scalar(self.scale);
                Sum::Device {
                    lost: sum.zeros_like(),
                    sum,
                }
            }
        };
        self.sums.insert(param.id, sum);
    }
}

/// `sum = d * sum + (1 - d) * w` for every parameter ([`WeightAverage::update`]).
struct Blend<'a> {
    sums: &'a mut HashMap<ParamId, Sum>,
    decay: f64,
    keep: Keep,
    /// The first step: the sums are made (zeros) as the parameters come.
    first: bool,
    error: Option<anyhow::Error>,
}

impl ModuleVisitor for Blend<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.val().shape().num_elements();
        if self.first {
            let sum = match self.keep {
                Keep::Host => Sum::Host(vec![0.0; n]),
                Keep::Device => {
                    let zeros = flat(param).zeros_like();
                    Sum::Device {
                        sum: zeros.clone(),
                        lost: zeros,
                    }
                }
            };
            self.sums.insert(param.id, sum);
        }
        let Some(sum) = self.sums.get_mut(&param.id).filter(|s| s.len() == n) else {
            self.error = Some(anyhow::anyhow!(
                "parameter {} ({n} values) is not among those averaged: the weights are another \
                 run's",
                param.id,
            ));
            return;
        };
        let d = self.decay;
        match sum {
            Sum::Host(sum) => {
                let w = match values(param) {
                    Ok(w) => w,
                    Err(e) => {
                        self.error = Some(e);
                        return;
                    }
                };
                let blend = |(s, w): (&mut [f64], &[f32])| {
                    for (s, &w) in s.iter_mut().zip(w) {
                        *s = d * *s + (1.0 - d) * f64::from(w);
                    }
                };
                if sum.len() >= 2 * CHUNK {
                    sum.par_chunks_mut(CHUNK)
                        .zip(w.par_chunks(CHUNK))
                        .for_each(blend);
                } else {
                    blend((sum, &w));
                }
            }
            Sum::Device { sum, lost } => {
                // sum + (1 - d) * (w - sum), the addition compensated (Kahan): `lost` carries
                // what the last addition rounded away, negated, into the next one.
                let step = flat(param)
                    .sub(sum.clone())
                    .mul_scalar(1.0 - d)
                    .sub(lost.clone());
                let next = sum.clone().add(step.clone());
                *lost = next.clone().sub(sum.clone()).sub(step);
                *sum = next;
            }
        }
    }
}

/// Replaces every averaged parameter's values with its average ([`WeightAverage::weights`]).
struct Write<'a> {
    sums: &'a HashMap<ParamId, Sum>,
    scale: f64,
}

impl ModuleMapper for Write<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let n = param.val().shape().num_elements();
        let Some(sum) = self.sums.get(&param.id).filter(|s| s.len() == n) else {
            return param;
        };
        let scale = self.scale;
        param.map(|t| {
            let (shape, device, dtype) = (t.shape(), t.device(), t.dtype());
            match sum {
                Sum::Host(sum) => {
                    let average: Vec<f32> = sum.iter().map(|s| (s * scale) as f32).collect();
                    Tensor::from_data(
                        TensorData::new(average, shape).convert_dtype(dtype),
                        &device,
                    )
                }
                Sum::Device { sum, lost } => {
                    let average = sum
                        .clone()
                        .sub(lost.clone())
                        .mul_scalar(scale)
                        .reshape(shape)
                        .cast(dtype)
                        .to_device(&device);
                    match t.is_autodiff() {
                        true => average.autodiff(),
                        false => average,
                    }
                }
            }
        })
    }
}

/// A case where f32 sums need their compensation, run on `device`: an average of weights at 1
/// (taken over a million steps, so it is 1, bias correction and all) fed 100 steps of weights
/// at 1.001 at decay 0.9999. Each step's share, 1e-4 x 0.001, is ~0.84 of f32's rounding step
/// at 1: uncompensated sums round it up every step and end ~2e-6 (~17 of those steps) high.
/// Returns the first averaged weight from f64 host sums and from `device`'s compensated ones;
/// both should be `1 + 0.001 (1 - 0.9999^100)`. Public for the GPU tests.
pub fn compensation_case(device: &Device) -> (f32, f32) {
    let layer = burn::nn::LinearConfig::new(2, 2).init(device);
    let set = |value: f32| {
        let mut layer = layer.clone();
        layer.weight = layer.weight.map(|t| t.ones_like().mul_scalar(value));
        layer
    };
    let first = |layer: burn::nn::Linear| -> f32 {
        layer
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_or(f32::NAN, |v| v[0])
    };
    let [host, on_device] = [Keep::Host, Keep::Device].map(|keep| {
        let Ok(mut average) = WeightAverage::resume(0.9999, keep, 1_000_000, &set(1.0)) else {
            return f32::NAN;
        };
        for _ in 0..100 {
            if average.update(&set(1.001)).is_err() {
                return f32::NAN;
            }
        }
        first(average.weights(layer.clone()))
    });
    (host, on_device)
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};

    use super::*;

    fn values(layer: &Linear) -> Vec<f32> {
        let mut w = layer.weight.val().into_data().try_to_vec::<f32>().unwrap();
        w.extend(
            layer
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        w
    }

    /// `layer` (its parameters, their ids) with every weight and bias set to `value`.
    fn filled(layer: &Linear, value: f32) -> Linear {
        let mut layer = layer.clone();
        layer.weight = layer.weight.map(|t| t.ones_like().mul_scalar(value));
        layer.bias = layer
            .bias
            .map(|b| b.map(|t| t.ones_like().mul_scalar(value)));
        layer
    }

    fn assert_all(layer: &Linear, expected: f32) {
        for v in values(layer) {
            assert!((v - expected).abs() < 1e-6, "{v} != {expected}");
        }
    }

    const KEEPS: [Keep; 2] = [Keep::Host, Keep::Device];

    /// The weights after steps 1, 2, 3 (all 1, then 2, then 3) at decay 0.5: factors 1/8, 1/4,
    /// 1/2 over their sum 7/8; after one step, that step's weights.
    #[test]
    fn the_average_is_bias_corrected() {
        let layer = LinearConfig::new(3, 2).init(&Device::flex());
        for keep in KEEPS {
            let mut average = WeightAverage::new(0.5, keep).unwrap();
            average.update(&filled(&layer, 1.0)).unwrap();
            assert_all(&average.weights(layer.clone()), 1.0);
            average.update(&filled(&layer, 2.0)).unwrap();
            average.update(&filled(&layer, 3.0)).unwrap();
            assert_all(
                &average.weights(layer.clone()),
                (1.0 / 8.0 + 2.0 / 4.0 + 3.0 / 2.0) / (7.0 / 8.0),
            );
        }
    }

    /// Weights of other parameters than those averaged (another run's: other ids) are refused,
    /// and so is a decay that is not one.
    #[test]
    fn another_models_weights_and_bad_decays_are_refused() {
        let device = Device::flex();
        let layer = LinearConfig::new(3, 2).init(&device);
        for keep in KEEPS {
            let mut average = WeightAverage::new(0.5, keep).unwrap();
            average.update(&layer).unwrap();
            let other = LinearConfig::new(3, 2).init(&device);
            let err = average.update(&other).expect_err("another layer");
            assert!(err.to_string().contains("another run's"), "{err}");
            assert!(average.check(&layer).is_ok());
            assert!(average.check(&other).is_err());
            for decay in [0.0, 1.0, f64::NAN, -0.5] {
                assert!(WeightAverage::new(decay, keep).is_err(), "{decay}");
            }
        }
    }

    /// A run resumed from its saved average goes on as the straight run.
    #[test]
    fn a_resumed_average_goes_on_as_the_straight_one() {
        let layer = LinearConfig::new(40_000, 1).init(&Device::flex());
        for keep in KEEPS {
            let mut straight = WeightAverage::new(0.9, keep).unwrap();
            for value in [0.5, -1.0] {
                straight.update(&filled(&layer, value)).unwrap();
            }
            let saved = straight.weights(layer.clone());
            let mut resumed = WeightAverage::resume(0.9, keep, 2, &saved).unwrap();
            for average in [&mut straight, &mut resumed] {
                average.update(&filled(&layer, 4.0)).unwrap();
            }
            let (a, b) = (
                values(&straight.weights(layer.clone())),
                values(&resumed.weights(layer.clone())),
            );
            assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5));
            // Steps 0.5, -1, 4 at factors 0.081, 0.09, 0.1 over 0.271.
            assert!(
                (a[0] - (0.081 * 0.5 - 0.09 + 0.4) / 0.271).abs() < 1e-5,
                "{keep:?}: {}",
                a[0]
            );
        }
    }

    /// At a decay near 1 the device's f32 sums, compensated, end where the host's f64 ones do
    /// ([`compensation_case`]).
    #[test]
    fn the_devices_f32_sums_keep_up_with_the_hosts_f64_ones() {
        let (host, device) = compensation_case(&Device::flex());
        assert!((host - device).abs() < 3e-7, "host {host}, device {device}");
    }
}
