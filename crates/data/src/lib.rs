//! CIFAR-10 for Burn: loading, splits, preprocessing, augmentation and batching.
//!
//! The pipeline follows CS231n's "Training Neural Networks I":
//!
//! 1. [`Cifar10::load`] reads the official binary batches (or the official
//!    `cifar-10-binary.tar.gz`, see [`archive`]) into memory once, as `u8`
//!    pixels in `[N, 3, 32, 32]` order plus labels.
//! 2. [`SplitConfig::split`] holds out a validation split from the training
//!    batches (the last 1,000 images by default, as CS231n does).
//! 3. A [`Preprocessing`] (mean image, per-channel mean, standardization, PCA,
//!    whitening) is fitted on the training split only, giving a serializable
//!    [`FittedPreprocessing`] that transforms every split the same way.
//! 4. [`CifarBatcher`] turns indices into Burn tensors on any `Device`, with
//!    optional [`Augmentation`] (random crop with padding, horizontal flip),
//!    and [`EpochOrder`] reshuffles the indices each epoch from a seed.
//!
//! ```no_run
//! use cifar_data::{Cifar10, Preprocessing, SplitConfig};
//!
//! let data = Cifar10::load("data/cifar-10-batches-bin")?;
//! let splits = SplitConfig::new().split(&data)?;
//! let fitted = Preprocessing::Standardize.fit(&splits.train)?;
//! let train = fitted.transform(&splits.train);
//! assert_eq!(train.len(), 49_000);
//! # Ok::<(), cifar_data::DataError>(())
//! ```
#![warn(missing_docs)]

pub mod archive;
pub mod atomic;
mod augment;
mod batcher;
mod cifar;
mod error;
mod features;
mod preprocess;
mod split;
pub mod synthetic;
mod whiten;

pub use augment::Augmentation;
pub use batcher::{CifarBatch, CifarBatcher, EpochOrder, mix_seed};
pub use cifar::{
    CHANNELS, CLASSES, Cifar10, HEIGHT, IMAGE_BYTES, ImageSet, RECORD_BYTES, WIDTH, find_data_dir,
};
pub use error::DataError;
pub use features::{FeatureShape, Features};
pub use preprocess::{FittedPreprocessing, Preprocessing};
pub use split::{SplitConfig, Splits};
pub use whiten::{FittedPatchWhitening, PatchWhitening};
