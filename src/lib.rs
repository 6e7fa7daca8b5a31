//! `cifar-burn`: train CIFAR-10 with the techniques of CS231n's "Training
//! Neural Networks I", on Burn.
//!
//! This root package re-exports the three crates of the workspace so that
//! the top-level `examples/` and `tests/` can use them together:
//!
//! - [`data`] (`cifar-data`): loading, splits, preprocessing, augmentation, batching;
//! - [`models`] (`cifar-models`): activations, initializations, MLP and CNN modules;
//! - [`train`] (`cifar-train`): the training loop and the `train` command.
//!
//! The README's example of the crates in another Burn project, kept
//! compiling here:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use burn::prelude::*;
//! use cifar_data::{Augmentation, Cifar10, CifarBatcher, EpochOrder, Preprocessing, SplitConfig};
//! use cifar_models::{ActivationConfig, CnnConfig, Init};
//!
//! let device = Device::flex().autodiff();
//! let data = Cifar10::load("data/cifar-10-batches-bin")?;
//! let splits = SplitConfig::new().split(&data)?;
//! let fitted = Preprocessing::Standardize.fit(&splits.train)?; // training split only
//! let train = std::sync::Arc::new(fitted.transform(&splits.train));
//! let batcher = CifarBatcher::new(train.clone()).with_augmentation(Some(Augmentation::new()));
//! let model = CnnConfig::vgg()
//!     .with_activation(ActivationConfig::elu())
//!     .with_init(Init::He)
//!     .init(&device);
//! for indices in EpochOrder::new(train.len(), 0).batches(0, 128) {
//!     let batch = batcher.batch(indices, &device);
//!     let logits = model.forward(batch.images); // [128, 10]
//!     // loss, backward, optimizer step...
//! #   let _ = logits;
//! }
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub use cifar_data as data;
pub use cifar_models as models;
pub use cifar_train as train;
