//! Looking inside a forward pass: every hidden layer's values and their summaries.
//!
//! This is what the lecture's activation-statistics plots are made of: the
//! mean and std of each layer's outputs, how many units are exactly zero
//! (dead ReLUs) or saturated (tanh/sigmoid near their bounds), and a histogram.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// One hidden layer's values from a forward pass, flattened per example.
#[derive(Debug, Clone)]
pub struct LayerActivations {
    /// The layer's name, such as `hidden3` or `stage2.conv1`.
    pub name: String,
    /// `[N, units]` values before the activation (after batch norm, if any).
    pub pre: Tensor<2>,
    /// `[N, units]` values after the activation.
    pub post: Tensor<2>,
}

impl LayerActivations {
    /// Keeps detached copies of `pre` and `post`, flattened to `[N, units]`.
    pub(crate) fn new<const D: usize>(name: String, pre: Tensor<D>, post: Tensor<D>) -> Self {
        let flat = |t: Tensor<D>| -> Tensor<2> {
            let dims = t.dims();
            t.detach().reshape([dims[0], dims[1..].iter().product()])
        };
        Self {
            name,
            pre: flat(pre),
            post: flat(post),
        }
    }
}

/// A histogram of values over `[min, max]` in equal-width bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Lower edge of the first bin.
    pub min: f64,
    /// Upper edge of the last bin.
    pub max: f64,
    /// Values per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// Counts `values` in `bins` bins over `[min, max]`; values outside are clamped into the end bins.
    pub fn new(values: &[f32], bins: usize, min: f64, max: f64) -> Self {
        assert!(bins > 0, "a histogram needs at least one bin");
        let mut counts = vec![0u64; bins];
        let width = (max - min).max(f64::MIN_POSITIVE);
        for &v in values {
            let b = (((v as f64 - min) / width) * bins as f64).floor();
            let b = if b.is_nan() {
                0
            } else {
                (b.max(0.0) as usize).min(bins - 1)
            };
            counts[b] += 1;
        }
        Self { min, max, counts }
    }
}

/// Summary statistics of one layer's activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationStats {
    /// Mean over all examples and units.
    pub mean: f64,
    /// Standard deviation over all examples and units.
    pub std: f64,
    /// Fraction of values exactly zero (dead or inactive ReLU units).
    pub zero_fraction: f64,
    /// Fraction of values outside the saturation band (0 when none is given).
    pub saturated_fraction: f64,
    /// Histogram of the values over their own range.
    pub histogram: Histogram,
}

impl ActivationStats {
    /// Summarizes `values`; `saturation` is the band `(low, high)` outside of
    /// which a value counts as saturated, as in
    /// [`ActivationConfig::saturation_band`](crate::ActivationConfig::saturation_band).
    pub fn of(values: &[f32], saturation: Option<(f32, f32)>, bins: usize) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let zeros = values.iter().filter(|&&v| v == 0.0).count() as f64;
        let saturated = match saturation {
            Some((lo, hi)) => values.iter().filter(|&&v| v < lo || v > hi).count() as f64,
            None => 0.0,
        };
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v as f64), b.max(v as f64))
            });
        let (min, max) = if values.is_empty() {
            (0.0, 0.0)
        } else {
            (min, max)
        };
        Self {
            mean,
            std: var.sqrt(),
            zero_fraction: zeros / n,
            saturated_fraction: saturated / n,
            histogram: Histogram::new(values, bins, min, max),
        }
    }

    /// Summarizes a tensor (read back to the host).
    pub fn of_tensor<const D: usize>(
        tensor: Tensor<D>,
        saturation: Option<(f32, f32)>,
        bins: usize,
    ) -> Self {
        let values = tensor
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor");
        Self::of(&values, saturation, bins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_by_hand() {
        // mean 0.25, population std sqrt(((−1.25)² + (−0.25)² + (0.75)² + (0.75)²)/4) = sqrt(0.6875)
        let s = ActivationStats::of(&[-1.0, 0.0, 1.0, 1.0], Some((-0.99, 0.99)), 2);
        assert!((s.mean - 0.25).abs() < 1e-12);
        assert!((s.std - 0.6875f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.zero_fraction, 0.25);
        assert_eq!(s.saturated_fraction, 0.75);
        // Two bins over [-1, 1]: [-1, 0) holds -1; [0, 1] holds 0, 1, 1.
        assert_eq!(s.histogram.counts, vec![1, 3]);
    }
}
