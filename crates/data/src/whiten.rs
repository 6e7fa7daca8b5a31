//! Patch whitening: the lecture's PCA whitening applied to every `k x k`
//! patch of an image instead of to the whole image, as the weights of a
//! frozen first convolution.
//!
//! The fast CIFAR-10 training records (Page's "How to train your ResNet",
//! hlb-CIFAR10, Keller Jordan's airbench) start their networks this way: the
//! covariance of the training images' 2x2 patches (12 values) is
//! eigendecomposed, and the convolution's filters are the eigenvectors
//! scaled by `1 / sqrt(eigenvalue + epsilon)`, each also negated so that a
//! ReLU or GELU after it loses nothing. Its outputs on the training patches
//! have zero mean and (near) identity covariance.
//!
//! ```
//! use cifar_data::{Features, FeatureShape, PatchWhitening};
//!
//! // Two 3x4x4 images.
//! let values = (0..96).map(|v| ((v * 37) % 11) as f32).collect();
//! let shape = FeatureShape::Image { channels: 3, height: 4, width: 4 };
//! let train = Features { values, labels: vec![0, 1], shape };
//! let fitted = PatchWhitening::new().fit(&train)?;
//! assert_eq!(fitted.filter_shape(), [24, 3, 2, 2]);
//! # Ok::<(), cifar_data::DataError>(())
//! ```

use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

use crate::{DataError, FeatureShape, Features};

/// Unfitted patch whitening: the patch size and the eigenvalue floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchWhitening {
    /// Patches are `patch x patch` pixels.
    pub patch: usize,
    /// Added to each eigenvalue before the inverse square root, so that
    /// directions of almost no variance are not blown up (airbench: 5e-4).
    pub epsilon: f64,
    /// Fit on at most this many images, the first ones (airbench: 5,000;
    /// 961 patches each is plenty for a 12x12 covariance).
    pub max_images: usize,
}

impl Default for PatchWhitening {
    fn default() -> Self {
        Self::new()
    }
}

impl PatchWhitening {
    /// 2x2 patches, epsilon 5e-4, the first 5,000 images, as in airbench.
    pub fn new() -> Self {
        Self {
            patch: 2,
            epsilon: 5e-4,
            max_images: 5_000,
        }
    }

    /// With patches of `patch x patch` pixels.
    pub fn with_patch(self, patch: usize) -> Self {
        Self { patch, ..self }
    }

    /// With the eigenvalue floor `epsilon`.
    pub fn with_epsilon(self, epsilon: f64) -> Self {
        Self { epsilon, ..self }
    }

    /// Fitting on at most `max_images` images.
    pub fn with_max_images(self, max_images: usize) -> Self {
        Self { max_images, ..self }
    }

    /// Fits the filters on every patch (stride 1, no padding) of the first
    /// [`max_images`](Self::max_images) images of `train`, which should be
    /// the preprocessed training split.
    pub fn fit(&self, train: &Features) -> Result<FittedPatchWhitening, DataError> {
        let FeatureShape::Image {
            channels,
            height,
            width,
        } = train.shape
        else {
            return Err(DataError::invalid(
                "patch whitening",
                "needs images, not flat features (PCA): pick another preprocessing",
            ));
        };
        let k = self.patch;
        if k == 0 || k > height || k > width {
            return Err(DataError::invalid(
                "whitening patch size",
                format!("{k} is not between 1 and the image size {height}x{width}"),
            ));
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return Err(DataError::invalid(
                "whitening epsilon",
                format!("{} is not a finite number >= 0", self.epsilon),
            ));
        }
        if train.is_empty() || self.max_images == 0 {
            return Err(DataError::invalid(
                "patch whitening",
                "cannot fit on an empty training split",
            ));
        }
        let images = train.len().min(self.max_images);
        let d = channels * k * k;
        let image = channels * height * width;
        let (rows, cols) = (height - k + 1, width - k + 1);
        // Sums of the patch values and their products, in f64, image by image.
        let mut sum = vec![0f64; d];
        let mut products = vec![0f64; d * d];
        let mut patch = vec![0f64; d];
        for pixels in train.values.chunks_exact(image).take(images) {
            for y in 0..rows {
                for x in 0..cols {
                    for c in 0..channels {
                        for i in 0..k {
                            let row = (c * height + y + i) * width + x;
                            for j in 0..k {
                                patch[(c * k + i) * k + j] = pixels[row + j] as f64;
                            }
                        }
                    }
                    for (a, &pa) in patch.iter().enumerate() {
                        sum[a] += pa;
                        for (p, &pb) in products[a * d..=a * d + a].iter_mut().zip(&patch) {
                            *p += pa * pb;
                        }
                    }
                }
            }
        }
        let count = (images * rows * cols) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let covariance = Mat::<f64>::from_fn(d, d, |a, b| {
            let (a, b) = (a.max(b), a.min(b));
            products[a * d + b] / count - mean[a] * mean[b]
        });
        let evd = covariance
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| DataError::Numerical(format!("patch covariance: {e:?}")))?;
        let (values, vectors) = (evd.S().column_vector(), evd.U());
        // Largest eigenvalue first; each filter is u / sqrt(λ + ε), then its negation.
        let eigenvalues: Vec<f64> = (0..d).rev().map(|j| values[j]).collect();
        let mut filters = vec![0f32; 2 * d * d];
        for (f, j) in (0..d).rev().enumerate() {
            let scale = 1.0 / (values[j].max(0.0) + self.epsilon).sqrt();
            for a in 0..d {
                let w = vectors[(a, j)] * scale;
                filters[f * d + a] = w as f32;
                filters[(d + f) * d + a] = -w as f32;
            }
        }
        // The bias centres the outputs: -(filter · mean).
        let bias = filters
            .chunks_exact(d)
            .map(|f| {
                -f.iter()
                    .zip(&mean)
                    .map(|(&w, &m)| w as f64 * m)
                    .sum::<f64>() as f32
            })
            .collect();
        Ok(FittedPatchWhitening {
            patch: k,
            channels,
            epsilon: self.epsilon,
            eigenvalues,
            filters,
            bias,
            fitted_on: images,
        })
    }
}

/// Fitted patch whitening: the filters and bias of a `2·d`-output convolution
/// (`d = channels · patch²`), with the eigenvalues they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPatchWhitening {
    /// Patches are `patch x patch` pixels.
    pub patch: usize,
    /// Input channels.
    pub channels: usize,
    /// The eigenvalue floor used.
    pub epsilon: f64,
    /// The patch covariance's eigenvalues, largest first (`d` of them).
    pub eigenvalues: Vec<f64>,
    /// `[2·d, channels, patch, patch]` row-major: the `d` whitening filters,
    /// largest eigenvalue first, then their negations.
    pub filters: Vec<f32>,
    /// One per filter: minus the filter applied to the mean patch.
    pub bias: Vec<f32>,
    /// Number of training images the statistics came from.
    pub fitted_on: usize,
}

impl FittedPatchWhitening {
    /// The shape of [`filters`](Self::filters), as a convolution weight.
    pub fn filter_shape(&self) -> [usize; 4] {
        let d = self.channels * self.patch * self.patch;
        [2 * d, self.channels, self.patch, self.patch]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images whose channels are correlated (the second is mostly the
    /// first), as in natural images, from a fixed pseudo-random sequence.
    fn correlated(n: usize) -> Features {
        let (c, h, w) = (3, 6, 5);
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
        };
        let mut values = Vec::with_capacity(n * c * h * w);
        for _ in 0..n {
            let base: Vec<f32> = (0..h * w).map(|_| next()).collect();
            for ch in 0..c {
                for &b in &base {
                    values.push(b * (ch as f32 + 1.0) + 0.3 * next() + ch as f32);
                }
            }
        }
        Features {
            values,
            labels: vec![0; n],
            shape: FeatureShape::Image {
                channels: c,
                height: h,
                width: w,
            },
        }
    }

    /// The outputs of the first `d` filters (plus bias) on every patch.
    fn whitened(fitted: &FittedPatchWhitening, set: &Features) -> Vec<Vec<f64>> {
        let FeatureShape::Image {
            channels,
            height,
            width,
        } = set.shape
        else {
            unreachable!()
        };
        let k = fitted.patch;
        let d = channels * k * k;
        let mut out = Vec::new();
        for pixels in set.values.chunks_exact(channels * height * width) {
            for y in 0..=height - k {
                for x in 0..=width - k {
                    let patch: Vec<f64> = (0..d)
                        .map(|a| {
                            let (c, i, j) = (a / (k * k), (a / k) % k, a % k);
                            pixels[(c * height + y + i) * width + x + j] as f64
                        })
                        .collect();
                    out.push(
                        (0..d)
                            .map(|f| {
                                fitted.filters[f * d..(f + 1) * d]
                                    .iter()
                                    .zip(&patch)
                                    .map(|(&w, p)| w as f64 * p)
                                    .sum::<f64>()
                                    + fitted.bias[f] as f64
                            })
                            .collect(),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn outputs_on_the_training_patches_are_white() {
        let train = correlated(40);
        let fitted = PatchWhitening::new().with_epsilon(0.0).fit(&train).unwrap();
        assert_eq!(fitted.filter_shape(), [24, 3, 2, 2]);
        let out = whitened(&fitted, &train);
        let n = out.len() as f64;
        for a in 0..12 {
            let mean = out.iter().map(|o| o[a]).sum::<f64>() / n;
            assert!(mean.abs() < 1e-4, "output {a} has mean {mean}");
            for b in 0..12 {
                let cov = out.iter().map(|o| o[a] * o[b]).sum::<f64>() / n;
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!(
                    (cov - expected).abs() < 1e-3,
                    "covariance of outputs {a} and {b} is {cov}, not {expected}"
                );
            }
        }
    }

    #[test]
    fn filters_come_in_negated_pairs_largest_eigenvalue_first() {
        let fitted = PatchWhitening::new().fit(&correlated(10)).unwrap();
        let d = 12;
        for f in 0..d {
            for a in 0..d {
                assert_eq!(fitted.filters[(d + f) * d + a], -fitted.filters[f * d + a]);
            }
            assert_eq!(fitted.bias[d + f], -fitted.bias[f]);
        }
        assert!(fitted.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
        // The epsilon floor shrinks the filters of the smallest eigenvalues.
        let floored = PatchWhitening::new()
            .with_epsilon(1.0)
            .fit(&correlated(10))
            .unwrap();
        let norm = |f: &FittedPatchWhitening, i: usize| {
            f.filters[i * d..(i + 1) * d]
                .iter()
                .map(|w| w * w)
                .sum::<f32>()
        };
        assert!(norm(&floored, d - 1) < norm(&fitted, d - 1));
    }

    #[test]
    fn bad_settings_and_flat_features_are_refused() {
        let train = correlated(2);
        for bad in [
            PatchWhitening::new().with_patch(0),
            PatchWhitening::new().with_patch(7),
            PatchWhitening::new().with_epsilon(f64::NAN),
        ] {
            assert!(bad.fit(&train).is_err(), "{bad:?} was accepted");
        }
        let flat = Features {
            values: vec![0.0; 20],
            labels: vec![0, 1],
            shape: FeatureShape::Flat(10),
        };
        let err = PatchWhitening::new().fit(&flat).unwrap_err().to_string();
        assert!(err.contains("flat features"), "{err}");
    }
}
