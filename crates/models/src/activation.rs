//! The lecture's activation functions, as one config enum and one module.

use std::str::FromStr;

use burn::nn::activation::SiLU;
use burn::nn::{
    Elu, EluConfig, Gelu, LeakyRelu, LeakyReluConfig, PRelu, PReluConfig, Relu, Sigmoid, Tanh,
};
use burn::prelude::*;

/// Which activation a layer uses. Parse one from text with [`FromStr`]:
/// `sigmoid`, `tanh`, `relu`, `leaky-relu[:SLOPE]`, `prelu`, `prelu-shared`,
/// `elu[:ALPHA]`, `maxout[:PIECES]`, `gelu`, `silu`; config files hold the
/// same text.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ActivationConfig {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `max(0, x)`.
    #[default]
    Relu,
    /// `max(slope * x, x)`.
    LeakyRelu {
        /// The slope for negative inputs (default 0.01).
        slope: f64,
    },
    /// `max(alpha * x, x)` with a learned `alpha`.
    PRelu {
        /// One slope per channel (`true`) or one shared by all units.
        per_channel: bool,
        /// The slope's initial value (default 0.25).
        initial: f64,
    },
    /// `x` for `x > 0`, `alpha * (e^x - 1)` otherwise.
    Elu {
        /// The saturation value for negative inputs (default 1.0).
        alpha: f64,
    },
    /// The max of `pieces` affine maps: the layer before computes `pieces`
    /// times as many units, and Maxout keeps the max of each group.
    Maxout {
        /// Affine maps per unit (default 2).
        pieces: usize,
    },
    /// Gaussian error linear unit.
    Gelu,
    /// `x * sigmoid(x)`.
    Silu,
}

impl ActivationConfig {
    /// How activations are written, for `--help` and errors alike.
    pub const SPELLINGS: &'static str = "sigmoid, tanh, relu, leaky-relu[:SLOPE], \
        prelu[:INITIAL], prelu-shared[:INITIAL], elu[:ALPHA], maxout[:PIECES], gelu or silu";

    /// Whether its parameters are in range: a finite, non-negative slope,
    /// alpha or initial value, and at least 2 Maxout pieces.
    pub fn check(&self) -> Result<(), String> {
        let non_negative = |v: f64, what: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "activation {self}: the {what} must be a finite number >= 0, got {v}"
                ))
            }
        };
        match *self {
            ActivationConfig::LeakyRelu { slope } => non_negative(slope, "slope"),
            ActivationConfig::Elu { alpha } => non_negative(alpha, "alpha"),
            ActivationConfig::PRelu { initial, .. } => non_negative(initial, "initial slope"),
            ActivationConfig::Maxout { pieces } if pieces < 2 => Err(format!(
                "activation maxout needs at least 2 pieces, got {pieces}"
            )),
            _ => Ok(()),
        }
    }

    /// Leaky ReLU with the usual slope, 0.01.
    pub fn leaky_relu() -> Self {
        ActivationConfig::LeakyRelu { slope: 0.01 }
    }

    /// PReLU with one slope per channel, starting at 0.25.
    pub fn prelu() -> Self {
        ActivationConfig::PRelu {
            per_channel: true,
            initial: 0.25,
        }
    }

    /// ELU with alpha 1.
    pub fn elu() -> Self {
        ActivationConfig::Elu { alpha: 1.0 }
    }

    /// Maxout with 2 pieces.
    pub fn maxout() -> Self {
        ActivationConfig::Maxout { pieces: 2 }
    }

    /// How many units the layer before this activation must produce per
    /// output unit: `pieces` for Maxout, 1 otherwise.
    pub fn width_multiplier(&self) -> usize {
        match self {
            ActivationConfig::Maxout { pieces } => *pieces,
            _ => 1,
        }
    }

    /// For squashing activations, the band outside of which a unit counts as
    /// saturated (its local gradient nearly zero): `|tanh| > 0.99`,
    /// `sigmoid < 0.01 or > 0.99`.
    pub fn saturation_band(&self) -> Option<(f32, f32)> {
        match self {
            ActivationConfig::Tanh => Some((-0.99, 0.99)),
            ActivationConfig::Sigmoid => Some((0.01, 0.99)),
            _ => None,
        }
    }

    /// Builds the activation for a layer of `channels` output units or channels.
    ///
    /// # Panics
    ///
    /// Panics if a parameter is out of range ([`check`](Self::check)).
    pub fn init(&self, channels: usize, device: &Device) -> Activation {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        match *self {
            ActivationConfig::Sigmoid => Activation::Sigmoid(Sigmoid::new()),
            ActivationConfig::Tanh => Activation::Tanh(Tanh::new()),
            ActivationConfig::Relu => Activation::Relu(Relu::new()),
            ActivationConfig::LeakyRelu { slope } => {
                Activation::LeakyRelu(LeakyReluConfig::new().with_negative_slope(slope).init())
            }
            ActivationConfig::PRelu {
                per_channel,
                initial,
            } => {
                let n = if per_channel { channels } else { 1 };
                Activation::PRelu(
                    PReluConfig::new()
                        .with_num_parameters(n)
                        .with_alpha(initial)
                        .init(device),
                )
            }
            ActivationConfig::Elu { alpha } => {
                Activation::Elu(EluConfig::new().with_alpha(alpha).init())
            }
            ActivationConfig::Maxout { pieces } => Activation::Maxout(Maxout { pieces }),
            ActivationConfig::Gelu => Activation::Gelu(Gelu::new()),
            ActivationConfig::Silu => Activation::Silu(SiLU::new()),
        }
    }
}

impl std::fmt::Display for ActivationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationConfig::Sigmoid => write!(f, "sigmoid"),
            ActivationConfig::Tanh => write!(f, "tanh"),
            ActivationConfig::Relu => write!(f, "relu"),
            ActivationConfig::LeakyRelu { slope } => write!(f, "leaky-relu:{slope}"),
            ActivationConfig::PRelu {
                per_channel,
                initial,
            } => {
                f.write_str(if *per_channel {
                    "prelu"
                } else {
                    "prelu-shared"
                })?;
                if *initial != 0.25 {
                    write!(f, ":{initial}")?;
                }
                Ok(())
            }
            ActivationConfig::Elu { alpha } => write!(f, "elu:{alpha}"),
            ActivationConfig::Maxout { pieces } => write!(f, "maxout:{pieces}"),
            ActivationConfig::Gelu => write!(f, "gelu"),
            ActivationConfig::Silu => write!(f, "silu"),
        }
    }
}

impl FromStr for ActivationConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let number = |default: f64| -> Result<f64, String> {
            match arg {
                None => Ok(default),
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| format!("'{a}' in '{s}' is not a non-negative number")),
            }
        };
        let no_arg = |config: ActivationConfig| match arg {
            None => Ok(config),
            Some(_) => Err(format!("'{name}' takes no parameter")),
        };
        match name {
            "sigmoid" => no_arg(ActivationConfig::Sigmoid),
            "tanh" => no_arg(ActivationConfig::Tanh),
            "relu" => no_arg(ActivationConfig::Relu),
            "gelu" => no_arg(ActivationConfig::Gelu),
            "silu" => no_arg(ActivationConfig::Silu),
            "prelu" | "prelu-shared" => Ok(ActivationConfig::PRelu {
                per_channel: name == "prelu",
                initial: number(0.25)?,
            }),
            "leaky-relu" => Ok(ActivationConfig::LeakyRelu {
                slope: number(0.01)?,
            }),
            "elu" => Ok(ActivationConfig::Elu {
                alpha: number(1.0)?,
            }),
            "maxout" => {
                let pieces = match arg {
                    None => 2,
                    Some(a) => a
                        .parse::<usize>()
                        .ok()
                        .filter(|p| *p >= 2)
                        .ok_or_else(|| format!("maxout needs 2 or more pieces, got '{a}'"))?,
                };
                Ok(ActivationConfig::Maxout { pieces })
            }
            _ => Err(format!(
                "unknown activation '{s}': expected {}",
                Self::SPELLINGS
            )),
        }
    }
}

/// How serde's derive wrote an [`ActivationConfig`] before it was written as text.
#[derive(serde::Deserialize)]
enum OlderActivation {
    Sigmoid,
    Tanh,
    Relu,
    LeakyRelu { slope: f64 },
    PRelu { per_channel: bool, initial: f64 },
    Elu { alpha: f64 },
    Maxout { pieces: usize },
    Gelu,
    Silu,
}

impl cifar_spelling::Upgrade<ActivationConfig> for OlderActivation {
    fn upgrade(self) -> ActivationConfig {
        match self {
            OlderActivation::Sigmoid => ActivationConfig::Sigmoid,
            OlderActivation::Tanh => ActivationConfig::Tanh,
            OlderActivation::Relu => ActivationConfig::Relu,
            OlderActivation::LeakyRelu { slope } => ActivationConfig::LeakyRelu { slope },
            OlderActivation::PRelu {
                per_channel,
                initial,
            } => ActivationConfig::PRelu {
                per_channel,
                initial,
            },
            OlderActivation::Elu { alpha } => ActivationConfig::Elu { alpha },
            OlderActivation::Maxout { pieces } => ActivationConfig::Maxout { pieces },
            OlderActivation::Gelu => ActivationConfig::Gelu,
            OlderActivation::Silu => ActivationConfig::Silu,
        }
    }
}

cifar_spelling::serde_as_text!(ActivationConfig, older = OlderActivation);

/// Maxout: the elementwise max over groups of `pieces` consecutive units (or channels).
///
/// Paired with a layer of `pieces * C` outputs it computes
/// `max(w_1ᵀx + b_1, ..., w_kᵀx + b_k)` for each of `C` units.
#[derive(Module, Debug)]
pub struct Maxout {
    /// Units per group.
    pub pieces: usize,
}

impl Maxout {
    /// Applies Maxout along dimension 1.
    ///
    /// # Shapes
    ///
    /// - input: `[N, pieces * C, ...]`
    /// - output: `[N, C, ...]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        let dims = input.dims();
        let k = self.pieces;
        assert!(
            dims[1].is_multiple_of(k),
            "Maxout with {k} pieces needs a multiple of {k} units, got {}",
            dims[1]
        );
        let rest: usize = dims[2..].iter().product();
        let grouped: Tensor<4> = input.reshape([dims[0], dims[1] / k, k, rest]);
        let mut out = dims;
        out[1] = dims[1] / k;
        grouped.max_dim(2).reshape(out)
    }
}

/// An activation layer; build one with [`ActivationConfig::init`].
#[derive(Module, Debug)]
#[allow(missing_docs)]
pub enum Activation {
    Sigmoid(Sigmoid),
    Tanh(Tanh),
    Relu(Relu),
    LeakyRelu(LeakyRelu),
    PRelu(PRelu),
    Elu(Elu),
    Maxout(Maxout),
    Gelu(Gelu),
    Silu(SiLU),
}

impl Activation {
    /// Applies the activation (ReLU and GELU through
    /// [`cifar_kernels`]: all cores on flex, Burn's operation elsewhere).
    ///
    /// # Shapes
    ///
    /// - input: `[N, C, ...]` (`[N, pieces * C, ...]` for Maxout)
    /// - output: `[N, C, ...]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Sigmoid(a) => a.forward(input),
            Activation::Tanh(a) => a.forward(input),
            Activation::Relu(_) => cifar_kernels::relu(input),
            Activation::LeakyRelu(a) => a.forward(input),
            Activation::PRelu(a) => a.forward(input),
            Activation::Elu(a) => a.forward(input),
            Activation::Maxout(a) => a.forward(input),
            Activation::Gelu(_) => cifar_kernels::gelu(input),
            Activation::Silu(a) => a.forward(input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(config: ActivationConfig, xs: &[f32]) -> Vec<f32> {
        let device = Device::flex();
        let act = config.init(1, &device);
        let x = Tensor::<2>::from_data(TensorData::new(xs.to_vec(), [1, xs.len()]), &device);
        act.forward(x).into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} != {b:?}");
        }
    }

    // Expected values computed by hand (and checked with Python's math module).
    #[test]
    fn values_at_chosen_points() {
        let xs = [-2.0, -0.5, 0.0, 1.5];
        close(
            &apply(ActivationConfig::Sigmoid, &xs),
            &[0.119_202_92, 0.377_540_67, 0.5, 0.817_574_5],
        );
        close(
            &apply(ActivationConfig::Tanh, &xs),
            &[-0.964_027_6, -0.462_117_16, 0.0, 0.905_148_25],
        );
        close(&apply(ActivationConfig::Relu, &xs), &[0.0, 0.0, 0.0, 1.5]);
        close(
            &apply(ActivationConfig::leaky_relu(), &xs),
            &[-0.02, -0.005, 0.0, 1.5],
        );
        close(
            &apply(ActivationConfig::prelu(), &xs),
            &[-0.5, -0.125, 0.0, 1.5],
        );
        close(
            &apply(ActivationConfig::elu(), &xs),
            &[-0.864_664_7, -0.393_469_34, 0.0, 1.5],
        );
        // GELU(x) = x * Phi(x); SiLU(x) = x * sigmoid(x).
        close(
            &apply(ActivationConfig::Gelu, &xs),
            &[-0.045_500_26, -0.154_268_56, 0.0, 1.399_795],
        );
        close(
            &apply(ActivationConfig::Silu, &xs),
            &[-0.238_405_84, -0.188_770_33, 0.0, 1.226_361_8],
        );
    }

    #[test]
    fn maxout_is_the_max_of_its_pieces() {
        // Two units of three pieces each.
        let ys = apply(
            ActivationConfig::Maxout { pieces: 3 },
            &[1.0, -4.0, 2.5, -1.0, -3.0, -0.5],
        );
        close(&ys, &[2.5, -0.5]);
    }

    #[test]
    fn parses_and_prints() {
        for s in [
            "sigmoid",
            "tanh",
            "relu",
            "leaky-relu:0.1",
            "prelu",
            "prelu-shared",
            "elu:0.5",
            "maxout:3",
            "gelu",
            "silu",
        ] {
            let config: ActivationConfig = s.parse().unwrap();
            assert_eq!(config.to_string(), s);
        }
        assert_eq!(
            "leaky-relu".parse(),
            Ok(ActivationConfig::LeakyRelu { slope: 0.01 })
        );
        assert!(
            "maxout:1"
                .parse::<ActivationConfig>()
                .unwrap_err()
                .contains("2 or more")
        );
        assert!(
            "swish"
                .parse::<ActivationConfig>()
                .unwrap_err()
                .contains("unknown activation")
        );
    }
}
