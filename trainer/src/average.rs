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
//! The sums are kept in host memory, in f64 (one per weight: in f32, a step's share of a weight,
//! `(1 - d)` times its change, falls below the sum's rounding step at decays near 1), and updated
//! with rayon's pool; on a GPU every step reads the weights back to the host.

use std::collections::HashMap;

use burn::{
    module::{ModuleMapper, ModuleVisitor, Param, ParamId},
    prelude::*,
    tensor::TensorData,
};
use rayon::prelude::*;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// An exponential moving average of a model's weights (see the module's documentation).
pub struct WeightAverage {
    decay: f64,
    /// Steps averaged.
    steps: u64,
    /// `sum_i (1 - d) d^(t - i) w_i`, per parameter.
    sums: HashMap<ParamId, Vec<f64>>,
}

impl WeightAverage {
    /// An average of no steps yet, with `decay` per step.
    ///
    /// # Errors
    /// A decay that is not above 0 and below 1.
    pub fn new(decay: f64) -> anyhow::Result<Self> {
        if !(decay > 0.0 && decay < 1.0) {
            anyhow::bail!("a weight average's decay must be above 0 and below 1, not {decay}");
        }
        Ok(Self {
            decay,
            steps: 0,
            sums: HashMap::new(),
        })
    }

    /// The average of a run that has taken `steps` steps, whose average weights were `average`
    /// (a resumed run's saved weights).
    ///
    /// # Errors
    /// A bad decay ([`WeightAverage::new`]), weights that cannot be read.
    pub fn resume<M: Module>(decay: f64, steps: u64, average: &M) -> anyhow::Result<Self> {
        let mut this = Self::new(decay)?;
        this.steps = steps;
        let scale = this.normaliser();
        let mut read = Read {
            sums: &mut this.sums,
            error: None,
        };
        average.visit(&mut read);
        if let Some(e) = read.error {
            return Err(e);
        }
        for sum in this.sums.values_mut() {
            sum.iter_mut().for_each(|w| *w *= scale);
        }
        Ok(this)
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
    /// the trained model itself). Before the first step, and for parameters never averaged,
    /// `model`'s own.
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

/// Reads average weights into sums ([`WeightAverage::resume`], which scales them).
struct Read<'a> {
    sums: &'a mut HashMap<ParamId, Vec<f64>>,
    error: Option<anyhow::Error>,
}

impl ModuleVisitor for Read<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        match values(param) {
            Ok(v) => {
                self.sums
                    .insert(param.id, v.into_iter().map(f64::from).collect());
            }
            Err(e) => self.error = Some(e),
        }
    }
}

/// `sum = d * sum + (1 - d) * w` for every parameter ([`WeightAverage::update`]).
struct Blend<'a> {
    sums: &'a mut HashMap<ParamId, Vec<f64>>,
    decay: f64,
    /// The first step: the sums are made (zeros) as the parameters come.
    first: bool,
    error: Option<anyhow::Error>,
}

impl ModuleVisitor for Blend<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let w = match values(param) {
            Ok(w) => w,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        if self.first {
            self.sums.insert(param.id, vec![0.0; w.len()]);
        }
        let Some(sum) = self.sums.get_mut(&param.id).filter(|s| s.len() == w.len()) else {
            self.error = Some(anyhow::anyhow!(
                "parameter {} ({} values) is not among those averaged: the weights are another \
                 run's",
                param.id,
                w.len()
            ));
            return;
        };
        let d = self.decay;
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
}

/// Replaces every averaged parameter's values with its average ([`WeightAverage::weights`]).
struct Write<'a> {
    sums: &'a HashMap<ParamId, Vec<f64>>,
    scale: f64,
}

impl ModuleMapper for Write<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(sum) = self.sums.get(&param.id) else {
            return param;
        };
        let scale = self.scale;
        param.map(|t| {
            let (shape, device, dtype) = (t.shape(), t.device(), t.dtype());
            let average: Vec<f32> = sum.iter().map(|s| (s * scale) as f32).collect();
            Tensor::from_data(
                TensorData::new(average, shape).convert_dtype(dtype),
                &device,
            )
        })
    }
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

    /// The weights after steps 1, 2, 3 (all 1, then 2, then 3) at decay 0.5: factors 1/8, 1/4,
    /// 1/2 over their sum 7/8; after one step, that step's weights.
    #[test]
    fn the_average_is_bias_corrected() {
        let layer = LinearConfig::new(3, 2).init(&Device::flex());
        let mut average = WeightAverage::new(0.5).unwrap();
        average.update(&filled(&layer, 1.0)).unwrap();
        assert_all(&average.weights(layer.clone()), 1.0);
        average.update(&filled(&layer, 2.0)).unwrap();
        average.update(&filled(&layer, 3.0)).unwrap();
        assert_all(
            &average.weights(layer.clone()),
            (1.0 / 8.0 + 2.0 / 4.0 + 3.0 / 2.0) / (7.0 / 8.0),
        );
    }

    /// Weights of other parameters than those averaged (another run's: other ids) are refused,
    /// and so is a decay that is not one.
    #[test]
    fn another_models_weights_and_bad_decays_are_refused() {
        let device = Device::flex();
        let layer = LinearConfig::new(3, 2).init(&device);
        let mut average = WeightAverage::new(0.5).unwrap();
        average.update(&layer).unwrap();
        let other = LinearConfig::new(3, 2).init(&device);
        let err = average.update(&other).expect_err("another layer");
        assert!(err.to_string().contains("another run's"), "{err}");
        assert!(average.check(&layer).is_ok());
        for decay in [0.0, 1.0, f64::NAN, -0.5] {
            assert!(WeightAverage::new(decay).is_err(), "{decay}");
        }
    }

    /// A run resumed from its saved average goes on as the straight run.
    #[test]
    fn a_resumed_average_goes_on_as_the_straight_one() {
        let layer = LinearConfig::new(40_000, 1).init(&Device::flex());
        let mut straight = WeightAverage::new(0.9).unwrap();
        for value in [0.5, -1.0] {
            straight.update(&filled(&layer, value)).unwrap();
        }
        let saved = straight.weights(layer.clone());
        let mut resumed = WeightAverage::resume(0.9, 2, &saved).unwrap();
        for average in [&mut straight, &mut resumed] {
            average.update(&filled(&layer, 4.0)).unwrap();
        }
        let (a, b) = (
            values(&straight.weights(layer.clone())),
            values(&resumed.weights(layer)),
        );
        assert!(a.iter().zip(&b).all(|(a, b)| (a - b).abs() < 1e-5));
        // Steps 0.5, -1, 4 at factors 0.081, 0.09, 0.1 over 0.271.
        assert!(
            (a[0] - (0.081 * 0.5 - 0.09 + 0.4) / 0.271).abs() < 1e-5,
            "{}",
            a[0]
        );
    }
}
