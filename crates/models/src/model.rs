//! Either network behind one type, for programs that pick the model at run time.

use std::str::FromStr;

use burn::prelude::*;

use crate::{ActivationConfig, Cnn, CnnConfig, Init, LayerActivations, Mlp, MlpConfig};

/// An MLP or a CNN configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelConfig {
    /// A fully connected network.
    Mlp(MlpConfig),
    /// A convolutional network.
    Cnn(CnnConfig),
}

impl ModelConfig {
    /// Builds the model on `device`.
    pub fn init(&self, device: &Device) -> Model {
        match self {
            ModelConfig::Mlp(c) => Model::Mlp(c.init(device)),
            ModelConfig::Cnn(c) => Model::Cnn(c.init(device)),
        }
    }

    /// The names accepted by [`preset`](Self::preset).
    pub const PRESETS: [&'static str; 7] = [
        "mlp",
        "two-layer",
        "three-layer",
        "small-cnn",
        "cnn",
        "vgg",
        "resnet9",
    ];

    /// A named preset: `mlp` or `two-layer` (3072-100-10 ReLU), `three-layer`
    /// (CS231n's convnet), `small-cnn`, `cnn` (a narrow VGG-style net with
    /// batch norm, the default), `vgg` (VGG-style with batch norm) or
    /// `resnet9` (ResNet-9 style).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "mlp" | "two-layer" => ModelConfig::Mlp(MlpConfig::new()),
            "three-layer" => ModelConfig::Cnn(CnnConfig::three_layer()),
            "small-cnn" => ModelConfig::Cnn(CnnConfig::small()),
            "cnn" => ModelConfig::Cnn(CnnConfig::vgg_with_widths([32, 64, 128])),
            "vgg" => ModelConfig::Cnn(CnnConfig::vgg()),
            "resnet9" => ModelConfig::Cnn(CnnConfig::resnet9()),
            _ => return None,
        })
    }
}

impl FromStr for ModelConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::preset(s).ok_or_else(|| {
            format!(
                "unknown model '{s}': expected mlp, two-layer, three-layer, small-cnn, cnn, vgg or resnet9"
            )
        })
    }
}

/// The settings that every layer of either network shares, borrowed from a
/// [`ModelConfig`] to read or change them in one place.
#[derive(Debug)]
pub struct LayerSettings<'a> {
    /// The activation of every hidden layer.
    pub activation: &'a mut ActivationConfig,
    /// The weight initialization.
    pub init: &'a mut Init,
    /// Batch norm before each activation.
    pub batch_norm: &'a mut bool,
    /// Dropout probability.
    pub dropout: &'a mut f64,
}

impl ModelConfig {
    /// The dropout probability of the network.
    pub fn dropout(&self) -> f64 {
        match self {
            ModelConfig::Mlp(m) => m.dropout,
            ModelConfig::Cnn(c) => c.dropout,
        }
    }

    /// The activation of the hidden layers.
    pub fn activation(&self) -> ActivationConfig {
        match self {
            ModelConfig::Mlp(m) => m.activation,
            ModelConfig::Cnn(c) => c.activation,
        }
    }

    /// The weight initialization.
    pub fn weight_init(&self) -> Init {
        match self {
            ModelConfig::Mlp(m) => m.init,
            ModelConfig::Cnn(c) => c.init,
        }
    }

    /// Output classes.
    pub fn classes(&self) -> usize {
        match self {
            ModelConfig::Mlp(m) => m.classes,
            ModelConfig::Cnn(c) => c.classes,
        }
    }

    /// Whether the network has kinks, points where its gradient jumps: a
    /// piecewise-linear activation (ReLU, Leaky ReLU, PReLU, Maxout) or a
    /// max pool. A finite-difference gradient check that straddles one
    /// disagrees with the analytic gradient there.
    pub fn has_kinks(&self) -> bool {
        let (activation, pools) = match self {
            ModelConfig::Mlp(m) => (m.activation, false),
            ModelConfig::Cnn(c) => (
                c.activation,
                c.stages.iter().any(|s| s.pool) || c.pooling == crate::HeadPooling::Max,
            ),
        };
        pools
            || matches!(
                activation,
                ActivationConfig::Relu
                    | ActivationConfig::LeakyRelu { .. }
                    | ActivationConfig::PRelu { .. }
                    | ActivationConfig::Maxout { .. }
            )
    }

    /// The shared layer settings of this configuration.
    pub fn layer_settings(&mut self) -> LayerSettings<'_> {
        match self {
            ModelConfig::Mlp(m) => LayerSettings {
                activation: &mut m.activation,
                init: &mut m.init,
                batch_norm: &mut m.batch_norm,
                dropout: &mut m.dropout,
            },
            ModelConfig::Cnn(c) => LayerSettings {
                activation: &mut c.activation,
                init: &mut c.init,
                batch_norm: &mut c.batch_norm,
                dropout: &mut c.dropout,
            },
        }
    }
}

/// An [`Mlp`] or a [`Cnn`].
#[derive(Module, Debug)]
#[allow(missing_docs)]
pub enum Model {
    Mlp(Mlp),
    Cnn(Cnn),
}

impl Model {
    /// Computes class scores.
    ///
    /// # Shapes
    ///
    /// - input: `[N, C, H, W]` (`[N, D, 1, 1]` for flat features, MLP only)
    /// - output: `[N, classes]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward(input),
            Model::Cnn(m) => m.forward(input),
        }
    }

    /// As [`forward`](Self::forward), also returning every hidden layer's values.
    pub fn forward_observed(&self, input: Tensor<4>) -> (Tensor<2>, Vec<LayerActivations>) {
        match self {
            Model::Mlp(m) => m.forward_observed(input),
            Model::Cnn(m) => m.forward_observed(input),
        }
    }
}
