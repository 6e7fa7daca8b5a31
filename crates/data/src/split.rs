//! Train / validation / test splits, and deterministic subsets.

use serde::{Deserialize, Serialize};

use crate::{Cifar10, DataError, ImageSet};

/// How to split the training batches: the last `val_size` images are held out
/// for validation (as CS231n does), and the first `train_size` of the rest
/// (all of them by default) are used for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SplitConfig {
    /// Images held out from the end of the training batches for validation.
    #[serde(alias = "val_size")]
    pub val_size: usize,
    /// Training images to keep (the first ones); `None` keeps all.
    #[serde(alias = "train_size")]
    pub train_size: Option<usize>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The three splits, each its own copy of the images it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// The training split: the only one statistics are fitted on.
    pub train: ImageSet,
    /// The validation split, held out from the training batches.
    pub val: ImageSet,
    /// The official test batch, when the data has one.
    pub test: Option<ImageSet>,
}

impl SplitConfig {
    /// The CS231n split: 1,000 validation images, every other training image.
    pub fn new() -> Self {
        Self {
            val_size: 1000,
            train_size: None,
        }
    }

    /// Sets the number of validation images.
    pub fn with_val_size(mut self, val_size: usize) -> Self {
        self.val_size = val_size;
        self
    }

    /// Keeps only the first `train_size` training images (for example 20, to
    /// check that a model can overfit a tiny subset).
    pub fn with_train_size(mut self, train_size: Option<usize>) -> Self {
        self.train_size = train_size;
        self
    }

    /// Splits `data`.
    pub fn split(&self, data: &Cifar10) -> Result<Splits, DataError> {
        let total = data.train.len();
        if self.val_size >= total {
            return Err(DataError::invalid(
                "validation size (--val-size)",
                format!(
                    "{} images held out leaves none of the {total} for training; hold out fewer",
                    self.val_size
                ),
            ));
        }
        let available = total - self.val_size;
        let train_size = self.train_size.unwrap_or(available);
        if train_size == 0 || train_size > available {
            return Err(DataError::invalid(
                "training size (--train-size)",
                format!(
                    "{train_size} asked, but {available} images remain after holding out {} for validation",
                    self.val_size
                ),
            ));
        }
        Ok(Splits {
            train: subset(&data.train, 0..train_size),
            val: subset(&data.train, available..total),
            test: data.test.clone(),
        })
    }
}

/// Copies the images of `range` into a new set.
pub(crate) fn subset(set: &ImageSet, range: std::ops::Range<usize>) -> ImageSet {
    let bytes = crate::IMAGE_BYTES;
    ImageSet::new(
        set.pixels()[range.start * bytes..range.end * bytes].to_vec(),
        set.labels()[range].to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Cifar10 {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let pixels = (0..n * crate::IMAGE_BYTES)
            .map(|i| (i / crate::IMAGE_BYTES) as u8)
            .collect();
        Cifar10 {
            train: ImageSet::new(pixels, labels),
            test: None,
            classes: crate::cifar::default_classes(),
        }
    }

    #[test]
    fn holds_out_the_last_images() {
        let s = SplitConfig::new()
            .with_val_size(10)
            .split(&data(50))
            .unwrap();
        assert_eq!(s.train.len(), 40);
        assert_eq!(s.val.len(), 10);
        assert_eq!(s.val.image(0)[0], 40);
        assert_eq!(s.train.image(39)[0], 39);
    }

    #[test]
    fn tiny_subset_is_the_first_images() {
        let s = SplitConfig::new()
            .with_val_size(10)
            .with_train_size(Some(20))
            .split(&data(50))
            .unwrap();
        assert_eq!(s.train.len(), 20);
        assert_eq!(s.train.labels()[..3], [0, 1, 2]);
    }

    #[test]
    fn rejects_impossible_sizes() {
        let err = SplitConfig::new()
            .with_val_size(50)
            .split(&data(50))
            .unwrap_err();
        assert!(err.to_string().contains("--val-size"), "{err}");
        let err = SplitConfig::new()
            .with_val_size(10)
            .with_train_size(Some(41))
            .split(&data(50))
            .unwrap_err();
        assert!(err.to_string().contains("41 asked"), "{err}");
    }
}
