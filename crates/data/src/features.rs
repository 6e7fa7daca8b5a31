//! Preprocessed inputs: `f32` features, ready to batch.

use crate::{CHANNELS, HEIGHT, WIDTH};

/// The shape of one example after preprocessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FeatureShape {
    /// An image, `[channels, height, width]`.
    Image {
        /// Channels.
        channels: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
    /// A flat vector (after PCA), batched as `[N, dim, 1, 1]`.
    Flat(usize),
}

impl FeatureShape {
    /// A CIFAR-10 image: `[3, 32, 32]`.
    pub const IMAGE: FeatureShape = FeatureShape::Image {
        channels: CHANNELS,
        height: HEIGHT,
        width: WIDTH,
    };

    /// The per-example dimensions as a batch tensor holds them: `[C, H, W]`,
    /// or `[dim, 1, 1]` for flat features.
    pub fn dims(&self) -> [usize; 3] {
        match *self {
            FeatureShape::Image {
                channels,
                height,
                width,
            } => [channels, height, width],
            FeatureShape::Flat(d) => [d, 1, 1],
        }
    }

    /// Values per example.
    pub fn size(&self) -> usize {
        self.dims().iter().product()
    }
}

/// Preprocessed examples and their labels, contiguous in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `len() * shape.size()` values, example after example.
    pub values: Vec<f32>,
    /// One label (0..=9) per example.
    pub labels: Vec<u8>,
    /// The shape of one example.
    pub shape: FeatureShape,
}

impl Features {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The values of example `index`.
    pub fn example(&self, index: usize) -> &[f32] {
        let size = self.shape.size();
        &self.values[index * size..(index + 1) * size]
    }
}
