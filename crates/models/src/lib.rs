//! Burn modules for CIFAR-10 classifiers, built the way CS231n's "Training
//! Neural Networks I" teaches.
//!
//! - [`ActivationConfig`] / [`Activation`]: sigmoid, tanh, ReLU, Leaky ReLU,
//!   PReLU, ELU, Maxout, GELU and SiLU.
//! - [`Init`]: zeros, small and large Gaussian, Xavier, He, and the uniform
//!   Glorot and Kaiming variants, for Linear and Conv2d layers.
//! - [`MlpConfig`] / [`Mlp`] and [`CnnConfig`] / [`Cnn`]: configurable
//!   networks with optional batch norm and dropout, and presets (the CS231n
//!   three-layer convnet, a VGG-style net, a ResNet-9-style net).
//! - [`ModelConfig`] / [`Model`]: either of them behind one type.
//! - [`LayerActivations`] and [`ActivationStats`]: every hidden layer's values
//!   from one forward pass, and their summaries (mean, std, fraction zero,
//!   fraction saturated, histogram).
//!
//! ```no_run
//! use burn::prelude::*;
//! use cifar_models::{ActivationConfig, Init, MlpConfig};
//!
//! let device = Device::flex();
//! let mlp = MlpConfig::new()
//!     .with_hidden_sizes(vec![100])
//!     .with_activation(ActivationConfig::Relu)
//!     .with_init(Init::He)
//!     .init(&device);
//! let logits = mlp.forward(Tensor::<4>::zeros([8, 3, 32, 32], &device));
//! assert_eq!(logits.dims(), [8, 10]);
//! ```
#![warn(missing_docs)]

mod activation;
mod cnn;
mod init;
mod layers;
mod mlp;
mod model;
mod observe;
mod whiten;

pub use activation::{Activation, ActivationConfig, Maxout};
pub use cnn::{Cnn, CnnConfig, HeadPooling, StageConfig};
pub use init::Init;
pub use layers::{ConvBlock, ConvBlockConfig, DenseBlock, apply_linear, convolve};
pub use mlp::{Mlp, MlpConfig};
pub use model::{LayerSettings, Model, ModelConfig};
pub use observe::{ActivationStats, Histogram, LayerActivations};
pub use whiten::{Whiten, WhitenConfig};
