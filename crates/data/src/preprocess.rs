//! Data preprocessing as CS231n teaches it, fitted on the training split only.
//!
//! Pixels are first scaled to `[0, 1]`; then, per [`Preprocessing`]:
//!
//! | method | what it does | output |
//! |---|---|---|
//! | `none` | nothing more | `[3, 32, 32]` |
//! | `mean-image` | subtract the mean image (AlexNet) | `[3, 32, 32]` |
//! | `channel-mean` | subtract the per-channel mean (VGG) | `[3, 32, 32]` |
//! | `standardize` | per channel, subtract the mean and divide by the std | `[3, 32, 32]` |
//! | `pca:K` | center, project on the top `K` principal components | `[K]` |
//! | `pca-whiten:K` | as `pca:K`, then divide each component by `sqrt(eigenvalue + eps)` | `[K]` |
//! | `zca` | whiten, then rotate back (`U diag(1/sqrt(S + eps)) Uᵀ`) | `[3, 32, 32]` |
//!
//! Statistics are computed in `f64`. The covariance is `XᵀX / N` of the
//! centered training data (as in the lecture's `np.dot(X.T, X) / X.shape[0]`),
//! and its eigendecomposition comes from `faer`.

use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{BlockStructure, matmul as tri_matmul};
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use serde::{Deserialize, Serialize};

use crate::{CHANNELS, DataError, FeatureShape, Features, IMAGE_BYTES, ImageSet};

const PIXELS_PER_CHANNEL: usize = IMAGE_BYTES / CHANNELS;
/// The default whitening epsilon, as in the lecture's `Xrot / np.sqrt(S + 1e-5)`.
pub const DEFAULT_EPSILON: f64 = 1e-5;
/// Rows per block when streaming the data through matrix products.
const BLOCK_ROWS: usize = 2048;

/// A preprocessing method, before it is fitted; written (on the command line
/// and in config files alike) as `none`, `mean-image`, `channel-mean`,
/// `standardize`, `pca:K`, `pca-whiten:K[:EPS]` or `zca[:EPS]`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Preprocessing {
    /// Pixels scaled to `[0, 1]`, nothing more.
    None,
    /// Subtract the mean image (one mean per pixel and channel).
    MeanImage,
    /// Subtract one mean per channel.
    ChannelMean,
    /// Subtract the per-channel mean and divide by the per-channel std.
    #[default]
    Standardize,
    /// Project the centered data onto its top `components` principal components.
    Pca {
        /// How many components to keep.
        components: usize,
    },
    /// PCA, then scale each component to unit variance.
    PcaWhiten {
        /// How many components to keep.
        components: usize,
        /// Added to each eigenvalue before the square root.
        epsilon: f64,
    },
    /// ZCA whitening: PCA whitening rotated back to pixel space, keeping the image shape.
    Zca {
        /// Added to each eigenvalue before the square root.
        epsilon: f64,
    },
}

impl std::fmt::Display for Preprocessing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Preprocessing::None => write!(f, "none"),
            Preprocessing::MeanImage => write!(f, "mean-image"),
            Preprocessing::ChannelMean => write!(f, "channel-mean"),
            Preprocessing::Standardize => write!(f, "standardize"),
            Preprocessing::Pca { components } => write!(f, "pca:{components}"),
            Preprocessing::PcaWhiten {
                components,
                epsilon,
            } => write!(f, "pca-whiten:{components}:{epsilon}"),
            Preprocessing::Zca { epsilon } => write!(f, "zca:{epsilon}"),
        }
    }
}

impl FromStr for Preprocessing {
    type Err = String;

    /// Parses `none`, `mean-image`, `channel-mean`, `standardize`, `pca:K`,
    /// `pca-whiten:K[:EPS]` or `zca[:EPS]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let components = |args: &[&str]| -> Result<usize, String> {
            let k = args.first().ok_or_else(|| {
                format!("'{name}' needs a number of components, as in {name}:100")
            })?;
            match k.parse::<usize>() {
                Ok(k) if (1..=IMAGE_BYTES).contains(&k) => Ok(k),
                _ => Err(format!(
                    "'{k}' is not a number of components between 1 and {IMAGE_BYTES}"
                )),
            }
        };
        let epsilon = |arg: Option<&&str>| -> Result<f64, String> {
            match arg {
                None => Ok(DEFAULT_EPSILON),
                Some(e) => match e.parse::<f64>() {
                    Ok(e) if e >= 0.0 && e.is_finite() => Ok(e),
                    _ => Err(format!("'{e}' is not a non-negative epsilon")),
                },
            }
        };
        let method = match (name, args.len()) {
            ("none", 0) => Preprocessing::None,
            ("mean-image", 0) => Preprocessing::MeanImage,
            ("channel-mean", 0) => Preprocessing::ChannelMean,
            ("standardize", 0) => Preprocessing::Standardize,
            ("pca", 1) => Preprocessing::Pca {
                components: components(&args)?,
            },
            ("pca-whiten", 1 | 2) => Preprocessing::PcaWhiten {
                components: components(&args)?,
                epsilon: epsilon(args.get(1))?,
            },
            ("zca", 0 | 1) => Preprocessing::Zca {
                epsilon: epsilon(args.first())?,
            },
            ("pca" | "pca-whiten", 0) => return Err(components(&args).unwrap_err()),
            _ => {
                return Err(format!(
                    "unknown preprocessing '{s}': expected {}",
                    Self::SPELLINGS
                ));
            }
        };
        Ok(method)
    }
}

/// How serde's derive wrote a [`Preprocessing`] before it was written as text.
#[derive(Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
enum OlderPreprocessing {
    None,
    MeanImage,
    ChannelMean,
    Standardize,
    Pca { components: usize },
    PcaWhiten { components: usize, epsilon: f64 },
    Zca { epsilon: f64 },
}

impl cifar_spelling::Upgrade<Preprocessing> for OlderPreprocessing {
    fn upgrade(self) -> Preprocessing {
        match self {
            OlderPreprocessing::None => Preprocessing::None,
            OlderPreprocessing::MeanImage => Preprocessing::MeanImage,
            OlderPreprocessing::ChannelMean => Preprocessing::ChannelMean,
            OlderPreprocessing::Standardize => Preprocessing::Standardize,
            OlderPreprocessing::Pca { components } => Preprocessing::Pca { components },
            OlderPreprocessing::PcaWhiten {
                components,
                epsilon,
            } => Preprocessing::PcaWhiten {
                components,
                epsilon,
            },
            OlderPreprocessing::Zca { epsilon } => Preprocessing::Zca { epsilon },
        }
    }
}

cifar_spelling::serde_as_text!(Preprocessing, older = OlderPreprocessing);

/// A fitted preprocessing: the statistics of a training split, applied to any split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedPreprocessing {
    /// The method that was fitted.
    pub method: Preprocessing,
    /// Subtracted from each value: one per pixel (length 3072) or per channel (length 3).
    pub mean: Vec<f32>,
    /// Each value is multiplied by this after centering (per channel; empty for none).
    pub scale: Vec<f32>,
    /// The principal-component eigenvalues kept, largest first (PCA and whitening only).
    pub eigenvalues: Vec<f64>,
    /// The `[3072, out]` row-major projection for PCA and whitening; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projection: Vec<f32>,
    /// Number of training images the statistics came from.
    pub fitted_on: usize,
    /// [`ImageSet::fingerprint`] of those images (absent in files written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Preprocessing {
    /// How methods are written, for `--help` and errors alike.
    pub const SPELLINGS: &'static str = "none, mean-image, channel-mean, standardize, pca:K, \
        pca-whiten:K[:EPS] or zca[:EPS]";

    /// Fits this method on `train`: the statistics come from these images alone.
    pub fn fit(&self, train: &ImageSet) -> Result<FittedPreprocessing, DataError> {
        if train.is_empty() {
            return Err(DataError::invalid(
                "preprocessing",
                "cannot fit on an empty training split",
            ));
        }
        let n = train.len();
        let mut fitted = FittedPreprocessing {
            method: *self,
            mean: Vec::new(),
            scale: Vec::new(),
            eigenvalues: Vec::new(),
            projection: Vec::new(),
            fitted_on: n,
            fingerprint: Some(train.fingerprint()),
        };
        match *self {
            Preprocessing::None => {}
            Preprocessing::ChannelMean => {
                let (mean, _) = channel_stats(train);
                fitted.mean = mean.iter().map(|&m| m as f32).collect();
            }
            Preprocessing::Standardize => {
                let (mean, std) = channel_stats(train);
                fitted.mean = mean.iter().map(|&m| m as f32).collect();
                fitted.scale = std.iter().map(|&s| (1.0 / s.max(1e-12)) as f32).collect();
            }
            Preprocessing::MeanImage => {
                fitted.mean = pixel_mean(train).iter().map(|&m| m as f32).collect();
            }
            Preprocessing::Pca { components } | Preprocessing::PcaWhiten { components, .. } => {
                check_components(components)?;
                let mean = pixel_mean(train);
                let (values, vectors) = eigen(train, &mean)?;
                let epsilon = match *self {
                    Preprocessing::PcaWhiten { epsilon, .. } => Some(epsilon),
                    _ => None,
                };
                let mut projection = vec![0f32; IMAGE_BYTES * components];
                for j in 0..components {
                    let col = IMAGE_BYTES - 1 - j; // eigenvalues come in increasing order
                    let scale = epsilon.map_or(1.0, |e| 1.0 / (values[col].max(0.0) + e).sqrt());
                    for i in 0..IMAGE_BYTES {
                        projection[i * components + j] = (vectors[(i, col)] * scale) as f32;
                    }
                }
                fitted.eigenvalues = (0..components)
                    .map(|j| values[IMAGE_BYTES - 1 - j])
                    .collect();
                fitted.mean = mean.iter().map(|&m| m as f32).collect();
                fitted.projection = projection;
            }
            Preprocessing::Zca { epsilon } => {
                let mean = pixel_mean(train);
                let (values, vectors) = eigen(train, &mean)?;
                // W = U diag(1 / sqrt(S + eps)) Uᵀ, symmetric, so row-major == column-major.
                let scaled = Mat::<f64>::from_fn(IMAGE_BYTES, IMAGE_BYTES, |i, j| {
                    vectors[(i, j)] / (values[j].max(0.0) + epsilon).sqrt()
                });
                let mut w = Mat::<f64>::zeros(IMAGE_BYTES, IMAGE_BYTES);
                matmul(
                    w.as_mut(),
                    Accum::Replace,
                    scaled.as_ref(),
                    vectors.transpose(),
                    1.0,
                    Par::rayon(0),
                );
                fitted.projection = (0..IMAGE_BYTES * IMAGE_BYTES)
                    .map(|k| w[(k / IMAGE_BYTES, k % IMAGE_BYTES)] as f32)
                    .collect();
                fitted.eigenvalues = values.iter().rev().copied().collect();
                fitted.mean = mean.iter().map(|&m| m as f32).collect();
            }
        }
        Ok(fitted)
    }
}

fn check_components(components: usize) -> Result<(), DataError> {
    if components == 0 || components > IMAGE_BYTES {
        return Err(DataError::invalid(
            "number of PCA components",
            format!("{components} is not between 1 and {IMAGE_BYTES}"),
        ));
    }
    Ok(())
}

/// Per-channel mean and (population) std on the `[0, 1]` scale.
fn channel_stats(set: &ImageSet) -> ([f64; 3], [f64; 3]) {
    let mut sum = [0u64; 3];
    let mut sum_sq = [0u64; 3];
    for image in set.pixels().chunks_exact(IMAGE_BYTES) {
        for (c, channel) in image.chunks_exact(PIXELS_PER_CHANNEL).enumerate() {
            let (mut s, mut q) = (0u64, 0u64);
            for &p in channel {
                s += p as u64;
                q += (p as u64) * (p as u64);
            }
            sum[c] += s;
            sum_sq[c] += q;
        }
    }
    let count = (set.len() * PIXELS_PER_CHANNEL) as f64;
    let mut mean = [0.0; 3];
    let mut std = [0.0; 3];
    for c in 0..3 {
        let m = sum[c] as f64 / count;
        let var = (sum_sq[c] as f64 / count - m * m).max(0.0);
        mean[c] = m / 255.0;
        std[c] = var.sqrt() / 255.0;
    }
    (mean, std)
}

/// The mean image on the `[0, 1]` scale.
fn pixel_mean(set: &ImageSet) -> Vec<f64> {
    let mut sum = vec![0u64; IMAGE_BYTES];
    for image in set.pixels().chunks_exact(IMAGE_BYTES) {
        for (s, &p) in sum.iter_mut().zip(image) {
            *s += p as u64;
        }
    }
    let n = set.len() as f64 * 255.0;
    sum.into_iter().map(|s| s as f64 / n).collect()
}

/// Eigenvalues (increasing) and eigenvectors (columns) of the covariance of
/// the centered data.
fn eigen(set: &ImageSet, mean: &[f64]) -> Result<(Vec<f64>, Mat<f64>), DataError> {
    let d = IMAGE_BYTES;
    let mut cov = Mat::<f64>::zeros(d, d);
    let mut block = Mat::<f64>::zeros(BLOCK_ROWS, d);
    let images: Vec<&[u8]> = set.pixels().chunks_exact(d).collect();
    for chunk in images.chunks(BLOCK_ROWS) {
        let rows = chunk.len();
        for (r, image) in chunk.iter().enumerate() {
            for (c, (&p, &m)) in image.iter().zip(mean).enumerate() {
                block[(r, c)] = p as f64 / 255.0 - m;
            }
        }
        let x = block.as_ref().subrows(0, rows);
        tri_matmul(
            cov.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            x.transpose(),
            BlockStructure::Rectangular,
            x,
            BlockStructure::Rectangular,
            1.0,
            Par::rayon(0),
        );
    }
    let n = set.len() as f64;
    for i in 0..d {
        for j in 0..=i {
            cov[(i, j)] /= n;
        }
    }
    let evd = cov.self_adjoint_eigen(Side::Lower).map_err(|e| {
        DataError::Numerical(format!(
            "eigendecomposition of the covariance failed: {e:?}"
        ))
    })?;
    let values = evd.S().column_vector().iter().copied().collect();
    Ok((values, evd.U().to_owned()))
}

impl FittedPreprocessing {
    /// Checks that this is `method` fitted on `train` (the same images in the
    /// same order); the error says how they differ. Files without a
    /// fingerprint are checked by method and image count alone.
    pub fn check_fitted_on(
        &self,
        method: &Preprocessing,
        train: &ImageSet,
    ) -> Result<(), DataError> {
        if self.method != *method {
            return Err(DataError::NotFittedOn(format!(
                "is {}, but the run asks for --preprocess {method}",
                self.method
            )));
        }
        let here = train.fingerprint();
        let same = match &self.fingerprint {
            Some(saved) => *saved == here,
            None => self.fitted_on == train.len(),
        };
        if same {
            return Ok(());
        }
        let short = |f: &str| f.chars().take(12).collect::<String>();
        Err(DataError::NotFittedOn(format!(
            "was fitted on another training split: {} images (fingerprint {}), where this one \
             has {} (fingerprint {}); the data folder or the split (--val-size, --train-size) \
             differ from the run's",
            self.fitted_on,
            self.fingerprint
                .as_deref()
                .map_or("not recorded".into(), short),
            train.len(),
            short(&here)
        )))
    }

    /// The shape of one transformed example.
    pub fn output_shape(&self) -> FeatureShape {
        match self.method {
            Preprocessing::Pca { components } | Preprocessing::PcaWhiten { components, .. } => {
                FeatureShape::Flat(components)
            }
            _ => FeatureShape::IMAGE,
        }
    }

    /// Transforms every image of `set`.
    pub fn transform(&self, set: &ImageSet) -> Features {
        Features {
            values: self.transform_pixels(set.pixels()),
            labels: set.labels().to_vec(),
            shape: self.output_shape(),
        }
    }

    /// Transforms raw pixels (`[N, 3, 32, 32]` bytes, `N >= 0`) into `N * output_shape().size()` values.
    pub fn transform_pixels(&self, pixels: &[u8]) -> Vec<f32> {
        assert_eq!(
            pixels.len() % IMAGE_BYTES,
            0,
            "pixels must hold whole images"
        );
        let n = pixels.len() / IMAGE_BYTES;
        match self.method {
            Preprocessing::None | Preprocessing::ChannelMean | Preprocessing::Standardize => {
                // One 256-entry table per channel: value = (p / 255 - mean) * scale.
                let tables: Vec<[f32; 256]> = (0..CHANNELS)
                    .map(|c| {
                        let m = self.mean.get(c).copied().unwrap_or(0.0);
                        let s = self.scale.get(c).copied().unwrap_or(1.0);
                        std::array::from_fn(|p| (p as f32 / 255.0 - m) * s)
                    })
                    .collect();
                let mut out = vec![0f32; pixels.len()];
                // Consecutive 1024-value planes cycle through R, G, B.
                for (i, (dst, src)) in out
                    .chunks_exact_mut(PIXELS_PER_CHANNEL)
                    .zip(pixels.chunks_exact(PIXELS_PER_CHANNEL))
                    .enumerate()
                {
                    let table = &tables[i % CHANNELS];
                    dst.iter_mut()
                        .zip(src)
                        .for_each(|(d, &p)| *d = table[p as usize]);
                }
                out
            }
            Preprocessing::MeanImage => {
                let mut out = vec![0f32; pixels.len()];
                for (dst, src) in out
                    .chunks_exact_mut(IMAGE_BYTES)
                    .zip(pixels.chunks_exact(IMAGE_BYTES))
                {
                    for ((d, &p), m) in dst.iter_mut().zip(src).zip(&self.mean) {
                        *d = p as f32 / 255.0 - m;
                    }
                }
                out
            }
            Preprocessing::Pca { .. }
            | Preprocessing::PcaWhiten { .. }
            | Preprocessing::Zca { .. } => {
                let mut scaled: Vec<f32> = pixels.iter().map(|&p| p as f32 / 255.0).collect();
                for image in scaled.chunks_exact_mut(IMAGE_BYTES) {
                    image.iter_mut().zip(&self.mean).for_each(|(v, m)| *v -= m);
                }
                let out = self.output_shape().size();
                let mut result = vec![0f32; n * out];
                let projection = MatRef::from_row_major_slice(&self.projection, IMAGE_BYTES, out);
                for (x, y) in scaled
                    .chunks(BLOCK_ROWS * IMAGE_BYTES)
                    .zip(result.chunks_mut(BLOCK_ROWS * out))
                {
                    let rows = x.len() / IMAGE_BYTES;
                    let x = MatRef::from_row_major_slice(x, rows, IMAGE_BYTES);
                    let y = MatMut::from_row_major_slice_mut(y, rows, out);
                    matmul(y, Accum::Replace, x, projection, 1.0, Par::rayon(0));
                }
                result
            }
        }
    }

    /// Writes this preprocessing to one file: a JSON header, then the
    /// projection as little-endian `f32`. Written to a temporary file, then renamed.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        let header = FittedPreprocessing {
            projection: Vec::new(),
            ..self.clone()
        };
        let json = serde_json::to_vec(&header).expect("preprocessing serializes");
        let mut bytes = Vec::with_capacity(16 + json.len() + 4 * self.projection.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        for v in &self.projection {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        crate::atomic::write_file(path, &bytes)
    }

    /// Reads a file written by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let corrupt = |reason: &str| DataError::BadArchive {
            path: path.to_path_buf(),
            reason: format!("not a saved preprocessing ({reason})"),
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| DataError::io(path, e))?;
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(corrupt("bad header"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(16))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let json = &bytes[16..end];
        let mut fitted: FittedPreprocessing =
            serde_json::from_slice(json).map_err(|e| corrupt(&e.to_string()))?;
        // The statistics must have the shapes the method uses.
        let (means, scales) = match fitted.method {
            Preprocessing::None => (0, 0),
            Preprocessing::ChannelMean => (CHANNELS, 0),
            Preprocessing::Standardize => (CHANNELS, CHANNELS),
            _ => (IMAGE_BYTES, 0),
        };
        if fitted.mean.len() != means || fitted.scale.len() != scales {
            return Err(corrupt("statistics of the wrong length"));
        }
        if !fitted
            .mean
            .iter()
            .chain(&fitted.scale)
            .all(|v| v.is_finite())
        {
            return Err(corrupt("statistics that are not finite"));
        }
        let rest = &bytes[end..];
        let expected = match fitted.method {
            Preprocessing::Pca { .. }
            | Preprocessing::PcaWhiten { .. }
            | Preprocessing::Zca { .. } => IMAGE_BYTES * fitted.output_shape().size(),
            _ => 0,
        };
        if rest.len() != 4 * expected {
            return Err(corrupt("truncated projection"));
        }
        fitted.projection = rest
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Ok(fitted)
    }
}

const MAGIC: &[u8; 8] = b"CIFARPP1";

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic set: `n` images with correlated pixels, so PCA has structure.
    fn synthetic(n: usize, seed: u64) -> ImageSet {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
        for _ in 0..n {
            let base: f32 = rng.random_range(40.0..200.0);
            let tilt: f32 = rng.random_range(-1.0..1.0);
            for c in 0..3 {
                for p in 0..PIXELS_PER_CHANNEL {
                    let noise: f32 = rng.random_range(-30.0..30.0);
                    let v = base + tilt * (p as f32 / 20.0) + 10.0 * c as f32 + noise;
                    pixels.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        ImageSet::new(pixels, labels)
    }

    fn column_stats(f: &Features) -> (Vec<f64>, Vec<f64>) {
        let d = f.shape.size();
        let n = f.len() as f64;
        let mut mean = vec![0.0; d];
        for x in f.values.chunks_exact(d) {
            mean.iter_mut()
                .zip(x)
                .for_each(|(m, &v)| *m += v as f64 / n);
        }
        let mut var = vec![0.0; d];
        for x in f.values.chunks_exact(d) {
            for k in 0..d {
                var[k] += (x[k] as f64 - mean[k]).powi(2) / n;
            }
        }
        (mean, var.into_iter().map(f64::sqrt).collect())
    }

    fn channel_of(f: &Features, c: usize) -> Vec<f64> {
        f.values
            .chunks_exact(IMAGE_BYTES)
            .flat_map(|x| x[c * PIXELS_PER_CHANNEL..(c + 1) * PIXELS_PER_CHANNEL].iter())
            .map(|&v| v as f64)
            .collect()
    }

    fn mean_std(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (
            m,
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt(),
        )
    }

    #[test]
    fn parses_every_method() {
        assert_eq!("none".parse(), Ok(Preprocessing::None));
        assert_eq!(
            "pca:100".parse(),
            Ok(Preprocessing::Pca { components: 100 })
        );
        assert_eq!(
            "pca-whiten:10:0.1".parse(),
            Ok(Preprocessing::PcaWhiten {
                components: 10,
                epsilon: 0.1
            })
        );
        assert_eq!(
            "zca".parse(),
            Ok(Preprocessing::Zca {
                epsilon: DEFAULT_EPSILON
            })
        );
        assert!(
            "pca"
                .parse::<Preprocessing>()
                .unwrap_err()
                .contains("pca:100")
        );
        assert!("pca:0".parse::<Preprocessing>().is_err());
        assert!(
            "whiten"
                .parse::<Preprocessing>()
                .unwrap_err()
                .contains("unknown preprocessing")
        );
        for m in [
            "mean-image",
            "channel-mean",
            "standardize",
            "pca:7",
            "pca-whiten:3:0.5",
            "zca:0.01",
        ] {
            let p: Preprocessing = m.parse().unwrap();
            assert_eq!(p.to_string().parse::<Preprocessing>(), Ok(p));
        }
    }

    #[test]
    fn mean_image_centers_every_feature() {
        let set = synthetic(200, 1);
        let f = Preprocessing::MeanImage.fit(&set).unwrap().transform(&set);
        let (mean, _) = column_stats(&f);
        assert!(
            mean.iter().all(|m| m.abs() < 1e-6),
            "max {:?}",
            mean.iter().cloned().fold(0.0f64, |a, b| a.max(b.abs()))
        );
    }

    #[test]
    fn channel_mean_and_standardize() {
        let set = synthetic(200, 2);
        let centered = Preprocessing::ChannelMean
            .fit(&set)
            .unwrap()
            .transform(&set);
        let standard = Preprocessing::Standardize
            .fit(&set)
            .unwrap()
            .transform(&set);
        for c in 0..3 {
            let (m, _) = mean_std(&channel_of(&centered, c));
            assert!(m.abs() < 1e-6, "channel {c} mean {m}");
            let (m, s) = mean_std(&channel_of(&standard, c));
            assert!(m.abs() < 1e-6, "channel {c} mean {m}");
            assert!((s - 1.0).abs() < 1e-5, "channel {c} std {s}");
        }
    }

    #[test]
    fn statistics_come_from_the_training_split_only() {
        let train = synthetic(100, 3);
        let other = synthetic(100, 4);
        let fitted = Preprocessing::MeanImage.fit(&train).unwrap();
        assert_eq!(fitted, Preprocessing::MeanImage.fit(&train).unwrap());
        assert_ne!(
            fitted.mean,
            Preprocessing::MeanImage.fit(&other).unwrap().mean
        );
        assert_eq!(fitted.fitted_on, 100);
        // Transforming another split uses the training mean, so that split is not centered.
        let (mean, _) = column_stats(&fitted.transform(&other));
        assert!(mean.iter().any(|m| m.abs() > 1e-3));
    }

    #[test]
    fn pca_whitening_gives_identity_covariance() {
        let set = synthetic(400, 5);
        let k = 20;
        let fitted = Preprocessing::PcaWhiten {
            components: k,
            epsilon: 1e-12,
        }
        .fit(&set)
        .unwrap();
        let f = fitted.transform(&set);
        assert_eq!(f.shape, FeatureShape::Flat(k));
        let n = f.len() as f64;
        for a in 0..k {
            for b in 0..k {
                let cov: f64 = f
                    .values
                    .chunks_exact(k)
                    .map(|x| x[a] as f64 * x[b] as f64)
                    .sum::<f64>()
                    / n;
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!((cov - expected).abs() < 1e-3, "cov[{a}][{b}] = {cov}");
            }
        }
        // Eigenvalues come largest first.
        assert!(fitted.eigenvalues.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn pca_keeps_variance_in_order() {
        let set = synthetic(300, 6);
        let fitted = Preprocessing::Pca { components: 5 }.fit(&set).unwrap();
        let f = fitted.transform(&set);
        let (mean, std) = column_stats(&f);
        assert!(mean.iter().all(|m| m.abs() < 1e-4), "{mean:?}");
        // The variance of each projected component is its eigenvalue.
        for (s, l) in std.iter().zip(&fitted.eigenvalues) {
            assert!((s * s - l).abs() < 1e-3 * l.max(1e-3), "{} vs {l}", s * s);
        }
    }

    #[test]
    fn zca_keeps_the_image_shape() {
        let set = synthetic(100, 7);
        let fitted = Preprocessing::Zca { epsilon: 1e-2 }.fit(&set).unwrap();
        let f = fitted.transform(&set);
        assert_eq!(f.shape, FeatureShape::IMAGE);
        assert_eq!(f.values.len(), 100 * IMAGE_BYTES);
        let (mean, _) = column_stats(&f);
        assert!(mean.iter().all(|m| m.abs() < 1e-4));
    }

    #[test]
    fn zca_whitens_the_covariance() {
        // ZCA maps the covariance C = U diag(S) Uᵀ to U diag(S / (S + eps)) Uᵀ:
        // identity on the directions the data spans (S >> eps), zero
        // elsewhere. With 100 images the whitened covariance has rank 99; its
        // nonzero eigenvalues equal those of the 100 x 100 Gram matrix
        // G = Xw Xwᵀ / n, so trace(G) = Σ S/(S+eps) and ||G||² = Σ (S/(S+eps))².
        // An identity transform would leave trace(G) = Σ S instead.
        let set = synthetic(100, 7);
        let epsilon = 1e-4;
        let fitted = Preprocessing::Zca { epsilon }.fit(&set).unwrap();
        let f = fitted.transform(&set);
        let n = 100;
        let rows: Vec<&[f32]> = f.values.chunks_exact(IMAGE_BYTES).collect();
        let mut gram = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = rows[i]
                    .iter()
                    .zip(rows[j])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                gram[i * n + j] = dot / n as f64;
            }
        }
        let trace: f64 = (0..n).map(|i| gram[i * n + i]).sum();
        let frobenius: f64 = gram.iter().map(|g| g * g).sum();
        let mu: Vec<f64> = fitted
            .eigenvalues
            .iter()
            .map(|&s| s.max(0.0) / (s.max(0.0) + epsilon))
            .collect();
        let expected_trace: f64 = mu.iter().sum();
        let expected_frobenius: f64 = mu.iter().map(|m| m * m).sum();
        assert!(
            (trace / expected_trace - 1.0).abs() < 1e-3,
            "{trace} vs {expected_trace}"
        );
        assert!(
            (frobenius / expected_frobenius - 1.0).abs() < 2e-3,
            "{frobenius} vs {expected_frobenius}"
        );
        // Whitened: nearly all of the 99 directions have unit variance.
        let whitened = mu.iter().filter(|&&m| m > 0.9).count();
        assert!(whitened >= 90, "only {whitened} directions whitened");
        assert!((trace - 99.0).abs() < 10.0, "trace {trace}");
    }

    #[test]
    fn save_and_load_round_trip() {
        let set = synthetic(50, 8);
        let dir = tempfile::tempdir().unwrap();
        for method in [
            Preprocessing::Standardize,
            Preprocessing::Pca { components: 4 },
        ] {
            let fitted = method.fit(&set).unwrap();
            let path = dir.path().join("pre.bin");
            fitted.save(&path).unwrap();
            assert_eq!(FittedPreprocessing::load(&path).unwrap(), fitted);
        }
        std::fs::write(dir.path().join("bad.bin"), b"CIFARPP1\x05").unwrap();
        let err = FittedPreprocessing::load(dir.path().join("bad.bin")).unwrap_err();
        assert!(err.to_string().contains("bad.bin"), "{err}");
    }
}
