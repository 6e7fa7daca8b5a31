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
    /// The layer's name, such as `hidden.2` or `stages.1.convs.0`.
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
        let per_unit = bins as f64 / (max - min).max(f64::MIN_POSITIVE);
        for &v in values {
            // A float-to-integer cast saturates: values below `min` land in
            // bin 0, as does NaN; for the others it is the floor.
            let b = ((v as f64 - min) * per_unit) as usize;
            counts[b.min(bins - 1)] += 1;
        }
        Self { min, max, counts }
    }

    /// The lower and upper edge of bin `b`.
    pub fn bin_edges(&self, b: usize) -> (f64, f64) {
        let width = (self.max - self.min) / self.counts.len().max(1) as f64;
        (
            self.min + b as f64 * width,
            self.min + (b + 1) as f64 * width,
        )
    }
}

/// `Σ f(v)` over `values`: chunks of 4,096 values summed in f32 by
/// [`cifar_kernels::lane_sums`] (partial sums the compiler keeps in vector
/// registers; one running sum waits on each addition), the chunks added in
/// f64.
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    values
        .chunks(4096)
        .map(|chunk| cifar_kernels::lane_sums(chunk, chunk, |v, _| (f(v), 0.0)).0 as f64)
        .sum()
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
        let (lo, hi) = saturation.unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
        // Counts and range in lanes as well, so that the loop is vectorized.
        const LANES: usize = cifar_kernels::LANES;
        let (mut zeros, mut saturated) = ([0u32; LANES], [0u32; LANES]);
        let (mut min, mut max) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
        // The last partial chunk is padded with NaN, which counts as neither
        // zero nor saturated and which `min` and `max` pass over.
        let (full, rest) = values.as_chunks::<LANES>();
        let mut tail = [f32::NAN; LANES];
        tail[..rest.len()].copy_from_slice(rest);
        for chunk in full.iter().chain([&tail]) {
            for (l, &v) in chunk.iter().enumerate() {
                zeros[l] += u32::from(v == 0.0);
                saturated[l] += u32::from(v < lo || v > hi);
                min[l] = min[l].min(v);
                max[l] = max[l].max(v);
            }
        }
        let count = |lanes: [u32; LANES]| lanes.iter().map(|&c| c as usize).sum::<usize>();
        let (zeros, saturated) = (count(zeros), count(saturated));
        let min = min.iter().fold(f32::INFINITY, |a, &b| a.min(b));
        let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mean = lane_sum(values, |v| v) / n;
        let mu = mean as f32;
        let var = lane_sum(values, |v| (v - mu) * (v - mu)) / n;
        let (min, max) = if values.is_empty() {
            (0.0, 0.0)
        } else {
            (min as f64, max as f64)
        };
        Self {
            mean,
            std: var.sqrt(),
            zero_fraction: zeros as f64 / n,
            saturated_fraction: saturated as f64 / n,
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

    #[test]
    fn histogram_bins_clamp_the_outside_and_nan_into_the_end_bins() {
        // Four bins of width 0.5 over [0, 2]: 2.0 (the upper edge) and 7
        // fall in the last bin, -3 and NaN in the first.
        let values = [0.1, 0.5, 0.99, 1.0, 1.6, 2.0, 7.0, -3.0, f32::NAN];
        let h = Histogram::new(&values, 4, 0.0, 2.0);
        assert_eq!(h.counts, vec![3, 2, 1, 3]);
    }

    #[test]
    fn long_inputs_sum_in_lanes_like_a_plain_sum() {
        // 10,007 values (two chunks and a partial one, and a tail of 7 past
        // the 16 lanes): mean and std against a plain f64 computation.
        let values: Vec<f32> = (0..10_007)
            .map(|i| ((i * 37) % 101) as f32 * 0.5 - 20.0)
            .collect();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let s = ActivationStats::of(&values, None, 10);
        assert!(
            (s.mean - mean).abs() < 1e-5 * mean.abs().max(1.0),
            "{} vs {mean}",
            s.mean
        );
        assert!(
            (s.std - var.sqrt()).abs() < 1e-5 * var.sqrt(),
            "{} vs {}",
            s.std,
            var.sqrt()
        );
        assert_eq!(s.histogram.counts.iter().sum::<u64>(), 10_007);
    }
}
