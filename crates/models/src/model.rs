//! Either network behind one type, for programs that pick the model at run time.

use std::str::FromStr;

use burn::prelude::*;

use crate::{ActivationConfig, Cnn, CnnConfig, Init, LayerActivations, Mlp, MlpConfig};

/// An MLP or a CNN configuration. Read from a file, a field it does not
/// have (at any depth) is an error that names it, so a typo is not ignored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelConfig {
    /// A fully connected network.
    Mlp(MlpConfig),
    /// A convolutional network.
    Cnn(CnnConfig),
}

impl<'de> serde::Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        enum Written {
            Mlp(MlpConfig),
            Cnn(CnnConfig),
        }
        // Burn's `Config` derive ignores unknown fields: compare the keys
        // read with the keys of the config they made.
        let read = serde_json::Value::deserialize(deserializer)?;
        let config = match Written::deserialize(&read).map_err(D::Error::custom)? {
            Written::Mlp(c) => ModelConfig::Mlp(c),
            Written::Cnn(c) => ModelConfig::Cnn(c),
        };
        let made = serde_json::to_value(&config).map_err(D::Error::custom)?;
        match unknown_key(&read, &made, "model") {
            Some((path, key)) => Err(D::Error::custom(format!(
                "unknown field `{key}` in {path}: expected one of {}",
                expected_keys(&made, &path)
            ))),
            None => Ok(config),
        }
    }
}

/// The first key of `read` (at any depth) that `made` lacks, with the path of its object.
fn unknown_key(
    read: &serde_json::Value,
    made: &serde_json::Value,
    path: &str,
) -> Option<(String, String)> {
    use serde_json::Value;
    match (read, made) {
        (Value::Object(r), Value::Object(m)) => {
            r.iter().find_map(|(key, value)| match m.get(key) {
                None => Some((path.to_string(), key.clone())),
                Some(inner) => unknown_key(value, inner, &format!("{path}.{key}")),
            })
        }
        (Value::Array(r), Value::Array(m)) => r
            .iter()
            .zip(m)
            .enumerate()
            .find_map(|(i, (a, b))| unknown_key(a, b, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The keys of the object at `path` in `made`, for an error message.
fn expected_keys(made: &serde_json::Value, path: &str) -> String {
    let mut value = made;
    for part in path.split('.').skip(1) {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        value = &value[key];
        if let Some(i) = index {
            value = &value[i];
        }
    }
    value
        .as_object()
        .map(|o| {
            o.keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

impl ModelConfig {
    /// Whether the configuration can be built (see [`MlpConfig::check`] and
    /// [`CnnConfig::check`]): what [`init`](Self::init) would panic on, as an error.
    pub fn check(&self) -> Result<(), String> {
        match self {
            ModelConfig::Mlp(c) => c.check(),
            ModelConfig::Cnn(c) => c.check(),
        }
    }

    /// Builds the model on `device`.
    pub fn init(&self, device: &Device) -> Model {
        match self {
            ModelConfig::Mlp(c) => Model::Mlp(c.init(device)),
            ModelConfig::Cnn(c) => Model::Cnn(c.init(device)),
        }
    }

    /// The names accepted by [`preset`](Self::preset).
    pub const PRESETS: [&'static str; 8] = [
        "mlp",
        "two-layer",
        "three-layer",
        "small-cnn",
        "cnn",
        "vgg",
        "resnet9",
        "airbench",
    ];

    /// A named preset: `mlp` or `two-layer` (3072-100-10 ReLU), `three-layer`
    /// (CS231n's convnet), `small-cnn`, `cnn` (a narrow VGG-style net with
    /// batch norm, the default), `vgg` (VGG-style with batch norm),
    /// `resnet9` (ResNet-9 style) or `airbench` (the fast-record network with
    /// patch whitening, see [`CnnConfig::airbench`]).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "mlp" | "two-layer" => ModelConfig::Mlp(MlpConfig::new()),
            "three-layer" => ModelConfig::Cnn(CnnConfig::three_layer()),
            "small-cnn" => ModelConfig::Cnn(CnnConfig::small()),
            "cnn" => ModelConfig::Cnn(CnnConfig::vgg_with_widths([32, 64, 128])),
            "vgg" => ModelConfig::Cnn(CnnConfig::vgg()),
            "resnet9" => ModelConfig::Cnn(CnnConfig::resnet9()),
            "airbench" => ModelConfig::Cnn(CnnConfig::airbench()),
            _ => return None,
        })
    }
}

impl FromStr for ModelConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::preset(s).ok_or_else(|| {
            format!(
                "unknown model '{s}': expected one of {}",
                Self::PRESETS.join(", ")
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
// A few hundred bytes of handles, one value per trainer: boxing the CNN
// would cost every match an indirection for nothing.
#[allow(clippy::large_enum_variant)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_field_at_any_depth_is_named() {
        let mut written = serde_json::to_value(ModelConfig::preset("cnn").unwrap()).unwrap();
        written["cnn"]["stages"][1]["widht"] = serde_json::json!([8, 8]);
        let err = serde_json::from_value::<ModelConfig>(written)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `widht` in model.cnn.stages[1]: expected one of")
                && err.contains("`widths`"),
            "{err}"
        );
        let mut written = serde_json::to_value(ModelConfig::preset("mlp").unwrap()).unwrap();
        written["mlp"]["hiden_sizes"] = serde_json::json!([5]);
        let err = serde_json::from_value::<ModelConfig>(written)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `hiden_sizes` in model.mlp"),
            "{err}"
        );
        // Written and read back as it is.
        let cnn = ModelConfig::preset("resnet9").unwrap();
        let back: ModelConfig =
            serde_json::from_value(serde_json::to_value(&cnn).unwrap()).unwrap();
        assert_eq!(back, cnn);
    }
}
