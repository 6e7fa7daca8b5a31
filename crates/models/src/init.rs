//! Weight initialization by name, for Linear and Conv2d layers.
//!
//! | name | weights drawn from | the lecture's verdict |
//! |---|---|---|
//! | `zeros` | 0 | every unit computes the same thing: symmetry is never broken |
//! | `small` | N(0, 0.01²) | activations shrink to zero in deep nets |
//! | `large` | N(0, 1) | tanh units saturate, gradients vanish |
//! | `gaussian:S` | N(0, S²) | |
//! | `xavier` | N(0, 1/fan_in) | keeps tanh activations in range |
//! | `he` | N(0, 2/fan_in) | keeps ReLU activations in range |
//! | `glorot-uniform` | U(-a, a), a = sqrt(6/(fan_in+fan_out)) | |
//! | `kaiming-uniform` | U(-a, a), a = sqrt(6/fan_in) | |
//! | `pytorch` | U(-a, a), a = 1/sqrt(fan_in) | PyTorch's (and Burn's) default for Linear and Conv2d |
//!
//! `fan_in` is the number of inputs of a unit: `d_in` for Linear,
//! `in_channels x kh x kw` for Conv2d. Biases start at zero.

use std::str::FromStr;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

/// A weight initialization scheme.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Init {
    /// All weights zero.
    Zeros,
    /// Zero-mean Gaussian with the given standard deviation.
    Gaussian {
        /// The standard deviation.
        std: f64,
    },
    /// Gaussian with std `1/sqrt(fan_in)`, as the lecture writes Xavier.
    Xavier,
    /// Gaussian with std `sqrt(2/fan_in)` (He et al., 2015).
    #[default]
    He,
    /// Uniform Glorot: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    GlorotUniform,
    /// Uniform Kaiming: `U(-a, a)`, `a = sqrt(6 / fan_in)`.
    KaimingUniform,
    /// PyTorch's default for Linear and Conv2d (Burn's too):
    /// `U(-a, a)`, `a = 1 / sqrt(fan_in)`, a standard deviation of
    /// `1 / sqrt(3 · fan_in)`. The fast CIFAR-10 records were tuned with it.
    Pytorch,
}

impl Init {
    /// How initializations are written, for `--help` and errors alike.
    pub const SPELLINGS: &'static str = "zeros, small (N(0, 0.01²)), large (N(0, 1)), \
        gaussian:STD, xavier, he, glorot-uniform, kaiming-uniform or pytorch";

    /// Whether its parameter is in range: a finite, non-negative standard deviation.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Init::Gaussian { std } if !(std.is_finite() && std >= 0.0) => Err(format!(
                "--init gaussian:{std}: the standard deviation must be a finite number >= 0"
            )),
            _ => Ok(()),
        }
    }

    /// The lecture's "small random numbers": N(0, 0.01²).
    pub const SMALL: Init = Init::Gaussian { std: 0.01 };
    /// The lecture's "large" weights: N(0, 1).
    pub const LARGE: Init = Init::Gaussian { std: 1.0 };

    /// Burn's initializer for this scheme (given fan-in and fan-out by the layer).
    pub fn initializer(&self) -> Initializer {
        self.scaled_initializer(1.0)
    }

    /// Burn's initializer for this scheme with every weight multiplied by `factor`.
    pub fn scaled_initializer(&self, factor: f64) -> Initializer {
        match *self {
            Init::Zeros => Initializer::Zeros,
            Init::Gaussian { std } => Initializer::Normal {
                mean: 0.0,
                std: std * factor,
            },
            Init::Xavier => Initializer::KaimingNormal {
                gain: factor,
                fan_out_only: false,
            },
            Init::He => Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2 * factor,
                fan_out_only: false,
            },
            Init::GlorotUniform => Initializer::XavierUniform { gain: factor },
            Init::KaimingUniform => Initializer::KaimingUniform {
                gain: std::f64::consts::SQRT_2 * factor,
                fan_out_only: false,
            },
            // Burn's bound is gain · sqrt(3 / fan_in).
            Init::Pytorch => Initializer::KaimingUniform {
                gain: factor / 3f64.sqrt(),
                fan_out_only: false,
            },
        }
    }

    /// The standard deviation of the weights this scheme draws for a layer.
    pub fn std(&self, fan_in: usize, fan_out: usize) -> f64 {
        let (fi, fo) = (fan_in as f64, fan_out as f64);
        match *self {
            Init::Zeros => 0.0,
            Init::Gaussian { std } => std,
            Init::Xavier => (1.0 / fi).sqrt(),
            Init::He => (2.0 / fi).sqrt(),
            // U(-a, a) has std a / sqrt(3).
            Init::GlorotUniform => (6.0 / (fi + fo)).sqrt() / 3f64.sqrt(),
            Init::KaimingUniform => (6.0 / fi).sqrt() / 3f64.sqrt(),
            Init::Pytorch => (1.0 / fi).sqrt() / 3f64.sqrt(),
        }
    }

    /// A Linear layer `d_input -> d_output` with weights from this scheme and zero bias.
    pub fn linear(&self, d_input: usize, d_output: usize, device: &Device) -> Linear {
        self.linear_with(self.initializer(), d_input, d_output, device)
    }

    fn linear_with(
        &self,
        initializer: Initializer,
        d_input: usize,
        d_output: usize,
        device: &Device,
    ) -> Linear {
        assert!(
            d_input > 0 && d_output > 0,
            "Linear layer sizes must be positive, got {d_input} -> {d_output}"
        );
        let mut layer = LinearConfig::new(d_input, d_output)
            .with_initializer(initializer)
            .with_bias(false)
            .init(device);
        layer.bias = Some(Initializer::Zeros.init([d_output], device));
        layer
    }

    /// The output (logit) layer `d_input -> d_output`: weights from this
    /// scheme scaled by [`OUTPUT_GAIN`](Self::OUTPUT_GAIN), zero bias.
    ///
    /// The lecture's first sanity check wants the loss at initialization near
    /// ln(classes), which needs near-zero logits. He or Xavier weights on the
    /// last layer give logits with a standard deviation near 1 (the default
    /// CNN then starts at a loss of about 3.4); a tenth of that starts it at
    /// about 2.31, while the output layer still breaks symmetry.
    pub fn output_linear(&self, d_input: usize, d_output: usize, device: &Device) -> Linear {
        self.scaled_linear(Self::OUTPUT_GAIN, d_input, d_output, device)
    }

    /// A Linear layer `d_input -> d_output` with weights from this scheme
    /// multiplied by `gain`, and zero bias.
    pub fn scaled_linear(
        &self,
        gain: f64,
        d_input: usize,
        d_output: usize,
        device: &Device,
    ) -> Linear {
        self.linear_with(self.scaled_initializer(gain), d_input, d_output, device)
    }

    /// The factor on the output layer's initial weights (see [`output_linear`](Self::output_linear)).
    pub const OUTPUT_GAIN: f64 = 0.1;

    /// A `kernel x kernel` Conv2d layer with "same" padding, weights from this
    /// scheme, and a zero bias when `bias`.
    pub fn conv2d(
        &self,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        bias: bool,
        device: &Device,
    ) -> Conv2d {
        assert!(
            kernel % 2 == 1,
            "kernel size must be odd for same padding, got {kernel}"
        );
        let mut layer = Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
            .with_padding(PaddingConfig2d::Explicit(
                kernel / 2,
                kernel / 2,
                kernel / 2,
                kernel / 2,
            ))
            .with_initializer(self.initializer())
            .with_bias(false)
            .init(device);
        if bias {
            layer.bias = Some(Initializer::Zeros.init([out_channels], device));
        }
        layer
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Init::Zeros => write!(f, "zeros"),
            Init::SMALL => write!(f, "small"),
            Init::LARGE => write!(f, "large"),
            Init::Gaussian { std } => write!(f, "gaussian:{std}"),
            Init::Xavier => write!(f, "xavier"),
            Init::He => write!(f, "he"),
            Init::GlorotUniform => write!(f, "glorot-uniform"),
            Init::KaimingUniform => write!(f, "kaiming-uniform"),
            Init::Pytorch => write!(f, "pytorch"),
        }
    }
}

impl FromStr for Init {
    type Err = String;

    /// Parses `zeros`, `small`, `large`, `gaussian:STD`, `xavier`, `he`,
    /// `glorot-uniform`, `kaiming-uniform` or `pytorch`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "zeros" => Init::Zeros,
            "small" => Init::SMALL,
            "large" => Init::LARGE,
            "xavier" => Init::Xavier,
            "he" | "kaiming" => Init::He,
            "glorot-uniform" => Init::GlorotUniform,
            "kaiming-uniform" => Init::KaimingUniform,
            "pytorch" => Init::Pytorch,
            _ => match s.strip_prefix("gaussian:") {
                Some(std) => Init::Gaussian {
                    std: std
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .ok_or_else(|| {
                            format!("'{std}' is not a non-negative standard deviation")
                        })?,
                },
                None => {
                    return Err(format!("unknown init '{s}': expected {}", Self::SPELLINGS));
                }
            },
        })
    }
}

/// How serde's derive wrote an [`Init`] before it was written as text.
#[derive(serde::Deserialize)]
enum OlderInit {
    Zeros,
    Gaussian { std: f64 },
    Xavier,
    He,
    GlorotUniform,
    KaimingUniform,
}

impl cifar_spelling::Upgrade<Init> for OlderInit {
    fn upgrade(self) -> Init {
        match self {
            OlderInit::Zeros => Init::Zeros,
            OlderInit::Gaussian { std } => Init::Gaussian { std },
            OlderInit::Xavier => Init::Xavier,
            OlderInit::He => Init::He,
            OlderInit::GlorotUniform => Init::GlorotUniform,
            OlderInit::KaimingUniform => Init::KaimingUniform,
        }
    }
}

cifar_spelling::serde_as_text!(Init, older = OlderInit);

#[cfg(test)]
mod tests {
    use super::*;

    fn measured_std(t: Tensor<2>) -> f64 {
        let v = t.into_data().try_into_vec_as::<f32>().unwrap();
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt()
    }

    #[test]
    fn measured_std_matches_formula() {
        let device = Device::flex();
        for init in [
            Init::SMALL,
            Init::LARGE,
            Init::Xavier,
            Init::He,
            Init::GlorotUniform,
            Init::KaimingUniform,
            Init::Pytorch,
        ] {
            let layer = init.linear(500, 500, &device);
            let std = measured_std(layer.weight.val());
            let expected = init.std(500, 500);
            assert!(
                (std / expected - 1.0).abs() < 0.05,
                "{init}: {std} vs {expected}"
            );
            let bias = layer.bias.unwrap().val().abs().max().into_scalar::<f32>();
            assert_eq!(bias, 0.0, "{init}: bias not zero");
        }
        // Conv fan-in is in_channels x kh x kw = 32 x 3 x 3.
        let conv = Init::He.conv2d(32, 64, 3, true, &device);
        let std = measured_std(conv.weight.val().reshape([64, 288]));
        assert!((std / (2.0f64 / 288.0).sqrt() - 1.0).abs() < 0.05, "{std}");
    }

    #[test]
    fn output_layer_is_a_tenth_of_the_scheme() {
        let device = Device::flex();
        let layer = Init::He.output_linear(500, 500, &device);
        let expected = 0.1 * (2.0f64 / 500.0).sqrt();
        let std = measured_std(layer.weight.val());
        assert!((std / expected - 1.0).abs() < 0.05, "{std} vs {expected}");
    }

    #[test]
    fn zeros_give_every_unit_of_a_layer_the_same_gradient() {
        // The lecture's symmetry problem, in the gradients: with all-zero
        // weights every hidden unit computes the same value (sigmoid(0) =
        // 0.5), so each gets the same gradient, the update keeps them equal,
        // and the layer never learns more than one feature.
        let device = Device::flex().autodiff();
        let mlp = crate::MlpConfig::new()
            .with_input_size(20)
            .with_hidden_sizes(vec![8])
            .with_activation(crate::ActivationConfig::Sigmoid)
            .with_init(Init::Zeros)
            .init(&device);
        let x = Tensor::<2>::random(
            [16, 20],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let targets =
            Tensor::<1, Int>::from_data([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5], &device);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(mlp.forward(x), targets);
        let grads = loss.backward();
        let rows = |t: Tensor<2>| -> Vec<Vec<f32>> {
            let [rows, cols] = t.dims();
            let v = t.into_data().try_into_vec_as::<f32>().unwrap();
            (0..rows)
                .map(|r| v[r * cols..(r + 1) * cols].to_vec())
                .collect()
        };
        // Output weights are [hidden, classes]: one row per hidden unit,
        // all equal and not zero.
        let output = rows(mlp.output.weight.val().grad(&grads).unwrap());
        assert!(output[0].iter().any(|&g| g.abs() > 1e-4), "{:?}", output[0]);
        assert!(output.iter().all(|r| r == &output[0]), "{output:?}");
        // Hidden weights are [inputs, hidden]: within each row, every unit's
        // gradient is the same.
        let hidden = rows(mlp.hidden[0].linear.weight.val().grad(&grads).unwrap());
        for r in &hidden {
            assert!(r.iter().all(|&g| g == r[0]), "{r:?}");
        }
        // With He initialization the units differ from the first step.
        let he = crate::MlpConfig::new()
            .with_input_size(20)
            .with_hidden_sizes(vec![8])
            .init(&device);
        let x = Tensor::<2>::random(
            [16, 20],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let t =
            Tensor::<1, Int>::from_data([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5], &device);
        let grads = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(he.forward(x), t)
            .backward();
        let output = rows(he.output.weight.val().grad(&grads).unwrap());
        assert!(output.iter().any(|r| r != &output[0]));
    }

    #[test]
    fn zeros_makes_every_unit_identical() {
        // The symmetry problem: with all-zero weights every unit of a layer
        // computes the same output, whatever the input.
        let device = Device::flex();
        let layer = Init::Zeros.linear(20, 8, &device);
        let x = Tensor::<2>::random(
            [4, 20],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let y = layer
            .forward(x)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        for row in y.chunks(8) {
            assert!(row.iter().all(|&v| v == row[0]));
        }
    }

    #[test]
    fn parses_and_prints() {
        for s in [
            "zeros",
            "small",
            "large",
            "gaussian:0.05",
            "xavier",
            "he",
            "glorot-uniform",
            "kaiming-uniform",
            "pytorch",
        ] {
            assert_eq!(s.parse::<Init>().unwrap().to_string(), s);
        }
        assert!("gaussian:-1".parse::<Init>().is_err());
        assert!(
            "orthogonal"
                .parse::<Init>()
                .unwrap_err()
                .contains("unknown init")
        );
    }
}
