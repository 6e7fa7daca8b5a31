//! Batches on any Burn `Device`, in an order reshuffled each epoch from a seed.

use std::sync::{Arc, Mutex};

use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::{Augmentation, Features};

/// One batch: inputs and integer class targets.
#[derive(Debug, Clone)]
pub struct CifarBatch {
    /// `[N, C, H, W]` images, or `[N, D, 1, 1]` flat features.
    pub images: Tensor<4>,
    /// `[N]` labels in `0..10`.
    pub targets: Tensor<1, Int>,
}

/// Turns example indices into a [`CifarBatch`], augmenting if asked.
///
/// The augmentation draws from a random generator seeded by
/// [`reseed`](Self::reseed); reseed it at each epoch start for runs that are
/// reproducible and resumable.
pub struct CifarBatcher {
    features: Arc<Features>,
    augmentation: Option<Augmentation>,
    rng: Mutex<StdRng>,
    /// The epoch and seed of the alternating flip.
    epoch: Mutex<(usize, u64)>,
}

impl CifarBatcher {
    /// A batcher over `features`, without augmentation.
    pub fn new(features: Arc<Features>) -> Self {
        Self {
            features,
            augmentation: None,
            rng: Mutex::new(StdRng::seed_from_u64(0)),
            epoch: Mutex::new((0, 0)),
        }
    }

    /// Augments every batch with `augmentation` (`None`: no augmentation).
    ///
    /// # Panics
    ///
    /// Panics if the features are flat (PCA), which cannot be cropped or flipped.
    pub fn with_augmentation(mut self, augmentation: Option<Augmentation>) -> Self {
        if augmentation.is_some() {
            assert!(
                matches!(self.features.shape, crate::FeatureShape::Image { .. }),
                "augmentation needs image-shaped features, not flat PCA features"
            );
        }
        self.augmentation = augmentation;
        self
    }

    /// Restarts the augmentation's random stream from `seed`.
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().expect("rng lock") = StdRng::seed_from_u64(seed);
    }

    /// Sets the epoch (and the run's seed) that an alternating flip
    /// ([`Augmentation::alternate_flip`]) follows.
    pub fn set_epoch(&self, epoch: usize, seed: u64) {
        *self.epoch.lock().expect("epoch lock") = (epoch, seed);
    }

    /// The features batched.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Gathers (and augments) the examples of `indices` into one buffer, `[N, C, H, W]` order.
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let size = self.features.shape.size();
        let dims = self.features.shape.dims();
        let mut values = vec![0f32; indices.len() * size];
        match &self.augmentation {
            None => {
                for (dst, &i) in values.chunks_exact_mut(size).zip(indices) {
                    dst.copy_from_slice(self.features.example(i));
                }
            }
            Some(aug) if aug.alternate_flip => {
                let mut rng = self.rng.lock().expect("rng lock");
                let (epoch, seed) = *self.epoch.lock().expect("epoch lock");
                for (dst, &i) in values.chunks_exact_mut(size).zip(indices) {
                    let flip = Augmentation::alternating_flip(i, epoch, seed);
                    aug.apply_flipped(self.features.example(i), dst, dims, &mut *rng, flip);
                }
            }
            Some(aug) => {
                let mut rng = self.rng.lock().expect("rng lock");
                for (dst, &i) in values.chunks_exact_mut(size).zip(indices) {
                    aug.apply(self.features.example(i), dst, dims, &mut *rng);
                }
            }
        }
        values
    }
}

impl CifarBatcher {
    /// The batch of the examples at `indices`, on `device` (the same shape
    /// as Burn's `Batcher::batch`, without pulling in Burn's dataset crate).
    pub fn batch(&self, indices: Vec<usize>, device: &Device) -> CifarBatch {
        let [c, h, w] = self.features.shape.dims();
        let n = indices.len();
        let values = self.gather(&indices);
        let labels: Vec<i64> = indices
            .iter()
            .map(|&i| self.features.labels[i] as i64)
            .collect();
        CifarBatch {
            images: Tensor::from_data(TensorData::new(values, [n, c, h, w]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// The order in which an epoch visits the examples: a permutation of
/// `0..len` that depends only on the seed and the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochOrder {
    len: usize,
    seed: u64,
}

impl EpochOrder {
    /// An order over `len` examples.
    pub fn new(len: usize, seed: u64) -> Self {
        Self { len, seed }
    }

    /// The shuffled indices of `epoch`.
    pub fn indices(&self, epoch: usize) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..self.len).collect();
        let mut rng = StdRng::seed_from_u64(mix_seed(self.seed, epoch as u64));
        indices.shuffle(&mut rng);
        indices
    }

    /// The batches of `epoch`: chunks of `batch_size` shuffled indices, the last one possibly smaller.
    pub fn batches(&self, epoch: usize, batch_size: usize) -> Vec<Vec<usize>> {
        assert!(batch_size > 0, "batch size must be positive");
        self.indices(epoch)
            .chunks(batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Mixes a seed and a counter into a new seed (SplitMix64's finalizer).
pub fn mix_seed(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FeatureShape;

    fn features(n: usize) -> Arc<Features> {
        let shape = FeatureShape::Image {
            channels: 3,
            height: 4,
            width: 4,
        };
        Arc::new(Features {
            values: (0..n * 48).map(|v| v as f32).collect(),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
            shape,
        })
    }

    #[test]
    fn batch_holds_the_indexed_examples() {
        let device = Device::flex();
        let batcher = CifarBatcher::new(features(5));
        let batch = batcher.batch(vec![3, 1], &device);
        assert_eq!(batch.images.dims(), [2, 3, 4, 4]);
        let images = batch.images.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(images[0], 3.0 * 48.0);
        assert_eq!(images[48], 48.0);
        let targets = batch.targets.into_data().try_into_vec_as::<i64>().unwrap();
        assert_eq!(targets, vec![3, 1]);
    }

    #[test]
    fn epochs_reshuffle_deterministically() {
        let order = EpochOrder::new(100, 7);
        assert_eq!(order.indices(0), order.indices(0));
        assert_ne!(order.indices(0), order.indices(1));
        assert_ne!(order.indices(0), EpochOrder::new(100, 8).indices(0));
        let mut sorted = order.indices(3);
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let batches = order.batches(0, 32);
        assert_eq!(batches.len(), 4);
        assert_eq!(batches[3].len(), 4);
    }

    #[test]
    fn augmented_batches_follow_the_seed() {
        let batcher = CifarBatcher::new(features(4)).with_augmentation(Some(Augmentation::new()));
        batcher.reseed(1);
        let a = batcher.gather(&[0, 1, 2, 3]);
        batcher.reseed(1);
        assert_eq!(a, batcher.gather(&[0, 1, 2, 3]));
    }
}
