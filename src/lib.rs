//! `cifar-burn`: train CIFAR-10 with the techniques of CS231n's "Training
//! Neural Networks I", on Burn.
//!
//! This root package re-exports the three crates of the workspace so that
//! the top-level `examples/` and `tests/` can use them together:
//!
//! - [`data`] (`cifar-data`): loading, splits, preprocessing, augmentation, batching;
//! - [`models`] (`cifar-models`): activations, initializations, MLP and CNN modules;
//! - [`train`] (`cifar-train`): the training loop and the `train` command.
#![warn(missing_docs)]

pub use cifar_data as data;
pub use cifar_models as models;
pub use cifar_train as train;
