//! A fully connected network: the CS231n two-layer net and its deeper kin.

use burn::nn::Linear;
use burn::prelude::*;

use crate::layers::check_dropout;
use crate::layers::dense_stack;
use crate::{ActivationConfig, DenseBlock, Init, LayerActivations};

/// Configuration of an [`Mlp`]: `input -> hidden... -> classes`.
#[derive(Config, Debug, PartialEq)]
pub struct MlpConfig {
    /// Input features (3072 for a flattened CIFAR-10 image).
    #[config(default = 3072)]
    pub input_size: usize,
    /// Units of each hidden layer (the CS231n two-layer net: `[100]`).
    #[config(default = "vec![100]")]
    pub hidden_sizes: Vec<usize>,
    /// Output classes.
    #[config(default = 10)]
    pub classes: usize,
    /// The hidden layers' activation.
    #[config(default = "ActivationConfig::Relu")]
    pub activation: ActivationConfig,
    /// The weight initialization of every layer.
    #[config(default = "Init::He")]
    pub init: Init,
    /// Batch norm between each hidden affine layer and its activation.
    #[config(default = false)]
    pub batch_norm: bool,
    /// Dropout probability after each hidden activation (0: none).
    #[config(default = 0.0)]
    pub dropout: f64,
}

/// A multi-layer perceptron; build one with [`MlpConfig::init`].
#[derive(Module, Debug)]
pub struct Mlp {
    /// The hidden layers.
    pub hidden: Vec<DenseBlock>,
    /// The output layer (logits).
    pub output: Linear,
}

impl MlpConfig {
    /// Whether the configuration can be built: positive sizes, a dropout
    /// in `[0, 1)`, valid activation and initialization parameters.
    pub fn check(&self) -> Result<(), String> {
        if self.input_size == 0 || self.classes == 0 {
            return Err(format!(
                "an MLP needs positive input_size and classes, got {} and {}",
                self.input_size, self.classes
            ));
        }
        if self.hidden_sizes.contains(&0) {
            return Err(format!(
                "--hidden sizes must be positive, got {:?}",
                self.hidden_sizes
            ));
        }
        check_dropout(self.dropout)?;
        self.activation.check()?;
        self.init.check()
    }

    /// Builds the network on `device` (build it on an autodiff device to train it).
    ///
    /// Panics if the configuration is invalid ([`check`](Self::check)).
    pub fn init(&self, device: &Device) -> Mlp {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        let (hidden, inputs) = dense_stack(
            self.input_size,
            &self.hidden_sizes,
            &self.activation,
            &self.init,
            self.batch_norm,
            self.dropout,
            device,
        );
        Mlp {
            hidden,
            output: self.init.output_linear(inputs, self.classes, device),
        }
    }
}

impl Mlp {
    /// Computes class scores (logits).
    ///
    /// # Shapes
    ///
    /// - input: `[N, 3, 32, 32]`, `[N, D, 1, 1]` or `[N, D]` (flattened to `[N, input_size]`)
    /// - output: `[N, classes]`
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<2> {
        self.run(input, None)
    }

    /// As [`forward`](Self::forward), also returning every hidden layer's
    /// values, named by their module path as the parameters are (`hidden.0`,
    /// `hidden.1`, ...).
    pub fn forward_observed<const D: usize>(
        &self,
        input: Tensor<D>,
    ) -> (Tensor<2>, Vec<LayerActivations>) {
        let mut observed = Vec::with_capacity(self.hidden.len());
        let logits = self.run(input, Some(&mut observed));
        (logits, observed)
    }

    fn run<const D: usize>(
        &self,
        input: Tensor<D>,
        mut observed: Option<&mut Vec<LayerActivations>>,
    ) -> Tensor<2> {
        let dims = input.dims();
        let mut x: Tensor<2> = input.reshape([dims[0], dims[1..].iter().product()]);
        for (i, block) in self.hidden.iter().enumerate() {
            let obs = observed.as_deref_mut().map(|o| (o, format!("hidden.{i}")));
            x = block.forward_observed(x, obs);
        }
        crate::apply_linear(&self.output, x)
    }
}
