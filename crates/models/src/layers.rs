//! The building blocks: an affine layer and a conv layer, each followed by
//! optional batch norm and an activation.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

use crate::{Activation, ActivationConfig, Init, LayerActivations};
use cifar_kernels::FusedActivation;

/// Linear, then batch norm (optional), then activation, then dropout (optional).
#[derive(Module, Debug)]
pub struct DenseBlock {
    /// The affine map (`pieces x units` outputs for Maxout).
    pub linear: Linear,
    /// Batch norm between the affine map and the activation.
    pub norm: Option<BatchNorm>,
    /// The nonlinearity.
    pub activation: Activation,
    /// Dropout after the activation.
    pub dropout: Option<Dropout>,
}

impl DenseBlock {
    /// A block of `units` outputs.
    pub fn new(
        inputs: usize,
        units: usize,
        activation: &ActivationConfig,
        init: &Init,
        batch_norm: bool,
        dropout: f64,
        device: &Device,
    ) -> Self {
        if let Err(e) = check_dropout(dropout) {
            panic!("{e}");
        }
        let width = units * activation.width_multiplier();
        Self {
            linear: init.linear(inputs, width, device),
            norm: batch_norm.then(|| BatchNormConfig::new(width).init(device)),
            activation: activation.init(units, device),
            dropout: (dropout > 0.0).then(|| DropoutConfig::new(dropout).init()),
        }
    }

    /// # Shapes
    ///
    /// - input: `[N, inputs]`
    /// - output: `[N, units]`
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        self.forward_observed(input, None)
    }

    /// As [`forward`](Self::forward), pushing the pre-activation (after batch
    /// norm) and post-activation values to `observed` when given.
    pub fn forward_observed(
        &self,
        input: Tensor<2>,
        observed: Option<(&mut Vec<LayerActivations>, String)>,
    ) -> Tensor<2> {
        let x = apply_linear(&self.linear, input);
        let mut y = norm_then_activate(x, self.norm.as_ref(), &self.activation, observed);
        if let Some(dropout) = &self.dropout {
            y = dropout.forward(y);
        }
        y
    }
}

/// Whether `dropout` is a probability in `[0, 1)`.
pub(crate) fn check_dropout(dropout: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&dropout) {
        Ok(())
    } else {
        Err(format!("--dropout must be in [0, 1), got {dropout}"))
    }
}

/// `norm` applied to `x`, as `BatchNorm::forward` does: on 4-D activations
/// in training mode through the fused kernel of `cifar_kernels` (on flex;
/// Burn's own operation elsewhere), with the running statistics updated as
/// Burn updates them. That kernel applies `then` to its output in the same
/// passes ([`cifar_kernels::batch_norm_activated_train`]).
///
/// Returns the output and whether `then` was applied: only where the
/// kernel ran, so the caller applies its activation otherwise.
fn batch_norm<const D: usize>(
    norm: &BatchNorm,
    x: Tensor<D>,
    then: FusedActivation,
) -> (Tensor<D>, bool) {
    if D != 4 || !(x.device().is_autodiff() && norm.training.is_enabled()) {
        return (norm.forward(x), false);
    }
    let device = x.device();
    let dims = x.dims();
    let d: Vec<usize> = dims.to_vec();
    let r = cifar_kernels::batch_norm_activated_train(
        x.reshape([d[0], d[1], d[2], d[3]]),
        norm.gamma.val(),
        norm.beta.val(),
        norm.epsilon,
        then,
    );
    let update = |running: Tensor<1>, batch: Tensor<1>| {
        running
            .to_device(&device)
            .mul_scalar(1.0 - norm.momentum)
            .add(batch.detach().mul_scalar(norm.momentum))
            .detach()
    };
    norm.running_mean
        .update(update(norm.running_mean.value_sync(), r.mean));
    norm.running_var
        .update(update(norm.running_var.value_sync(), r.variance));
    (r.output.reshape(dims), then != FusedActivation::Identity)
}

/// Batch norm (if any), then the activation; pushes the values before and
/// after the activation to `observed` when given.
///
/// Batch norm and a ReLU or GELU after it run as one kernel when no one
/// observes the values between them (the default CNN's training step about
/// 3% faster with ReLU, BENCHMARKS.md "Tenth round"; the recipe network's
/// with GELU, "Batch norm and GELU in one kernel").
fn norm_then_activate<const D: usize>(
    x: Tensor<D>,
    norm: Option<&BatchNorm>,
    activation: &Activation,
    observed: Option<(&mut Vec<LayerActivations>, String)>,
) -> Tensor<D> {
    let x = match norm {
        Some(norm) => {
            let then = match activation {
                _ if observed.is_some() => FusedActivation::Identity,
                Activation::Relu(_) => FusedActivation::Relu,
                Activation::Gelu(_) => FusedActivation::Gelu,
                _ => FusedActivation::Identity,
            };
            match batch_norm(norm, x, then) {
                (y, true) => return y,
                (x, false) => x,
            }
        }
        None => x,
    };
    let pre = observed.is_some().then(|| x.clone());
    let y = activation.forward(x);
    if let (Some((out, name)), Some(pre)) = (observed, pre) {
        out.push(LayerActivations::new(name, pre, y.clone()));
    }
    y
}

/// Hidden layers of `sizes` units on top of `inputs` features; returns them
/// and the width of the last one (`inputs` when `sizes` is empty).
pub(crate) fn dense_stack(
    inputs: usize,
    sizes: &[usize],
    activation: &ActivationConfig,
    init: &Init,
    batch_norm: bool,
    dropout: f64,
    device: &Device,
) -> (Vec<DenseBlock>, usize) {
    let mut width = inputs;
    let blocks = sizes
        .iter()
        .map(|&units| {
            let block =
                DenseBlock::new(width, units, activation, init, batch_norm, dropout, device);
            width = units;
            block
        })
        .collect();
    (blocks, width)
}

/// Configuration of a [`ConvBlock`].
#[derive(Config, Debug, PartialEq)]
pub struct ConvBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (after the activation).
    pub channels: usize,
    /// Odd kernel size; same padding.
    #[config(default = 3)]
    pub kernel: usize,
    /// The nonlinearity.
    #[config(default = "ActivationConfig::Relu")]
    pub activation: ActivationConfig,
    /// The weight initialization.
    #[config(default = "Init::He")]
    pub init: Init,
    /// Batch norm between the convolution and the activation (the
    /// convolution then has no bias).
    #[config(default = true)]
    pub batch_norm: bool,
    /// Whether batch norm learns its scale γ; when not, γ stays 1 and only
    /// the shift β learns (the fast CIFAR-10 records do this).
    #[config(default = true)]
    pub norm_scale: bool,
    /// A 2x2 max pool right after the convolution, before batch norm and
    /// the activation (airbench's order: the layers after it work on a
    /// quarter of the positions).
    #[config(default = false)]
    pub pool: bool,
    /// Initialize the convolution as the identity on its first
    /// `min(in, out)` output channels (PyTorch's `dirac_`), the rest from
    /// `init`: the block starts out passing its input through.
    #[config(default = false)]
    pub identity: bool,
    /// Batch norm's momentum: how far its running statistics move toward
    /// each batch's.
    #[config(default = 0.1)]
    pub norm_momentum: f64,
    /// Batch norm's epsilon, added to the variance.
    #[config(default = 1e-5)]
    pub norm_epsilon: f64,
}

impl ConvBlockConfig {
    /// Builds the block on `device`.
    ///
    /// Panics if the kernel size is even or a size is zero.
    pub fn init(&self, device: &Device) -> ConvBlock {
        assert!(
            self.in_channels > 0 && self.channels > 0,
            "a conv block needs positive channel counts, got {} -> {}",
            self.in_channels,
            self.channels
        );
        let width = self.channels * self.activation.width_multiplier();
        let mut conv = self.init.conv2d(
            self.in_channels,
            width,
            self.kernel,
            !self.batch_norm,
            device,
        );
        if self.identity {
            conv.weight = burn::module::Param::from_tensor(dirac(conv.weight.val()).detach());
        }
        let norm = self.batch_norm.then(|| {
            let mut norm = BatchNormConfig::new(width)
                .with_momentum(self.norm_momentum)
                .with_epsilon(self.norm_epsilon)
                .init(device);
            if !self.norm_scale {
                norm.gamma = norm.gamma.set_require_grad(false);
            }
            norm
        });
        ConvBlock {
            conv,
            norm,
            activation: self.activation.init(self.channels, device),
            pool: self.pool,
        }
    }
}

/// `weight` `[CO, C, K, K]` with its first `min(CO, C)` output channels
/// replaced by the identity: a 1 at the kernel's centre on the matching
/// input channel.
fn dirac(weight: Tensor<4>) -> Tensor<4> {
    let [co, c, kh, kw] = weight.dims();
    let n = co.min(c);
    let mut identity = vec![0f32; n * c * kh * kw];
    for o in 0..n {
        identity[((o * c + o) * kh + kh / 2) * kw + kw / 2] = 1.0;
    }
    let identity =
        Tensor::<4>::from_data(TensorData::new(identity, [n, c, kh, kw]), &weight.device());
    weight.slice_assign([0..n, 0..c, 0..kh, 0..kw], identity)
}

/// A same-padded Conv2d, then (optionally) a 2x2 max pool, then batch norm
/// (optional), then activation.
#[derive(Module, Debug)]
pub struct ConvBlock {
    /// The convolution (`pieces x channels` outputs for Maxout).
    pub conv: Conv2d,
    /// Batch norm between the convolution and the activation.
    pub norm: Option<BatchNorm>,
    /// The nonlinearity.
    pub activation: Activation,
    /// A 2x2 max pool right after the convolution.
    #[module(skip)]
    pub pool: bool,
}

impl ConvBlock {
    /// # Shapes
    ///
    /// - input: `[N, in_channels, H, W]`
    /// - output: `[N, channels, H, W]` (`[N, channels, H / 2, W / 2]` with `pool`)
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        self.forward_observed(input, None)
    }

    /// As [`forward`](Self::forward), pushing the pre- and post-activation
    /// values to `observed` when given.
    pub fn forward_observed(
        &self,
        input: Tensor<4>,
        observed: Option<(&mut Vec<LayerActivations>, String)>,
    ) -> Tensor<4> {
        let mut x = convolve(&self.conv, input);
        if self.pool {
            x = cifar_kernels::max_pool_2x2(x);
        }
        norm_then_activate(x, self.norm.as_ref(), &self.activation, observed)
    }
}

/// `conv` applied to `input`, as [`Conv2d::forward`], through
/// [`cifar_kernels::conv2d`]: the faster kernel on flex, Burn's operation
/// elsewhere. "Same" padding, which depends on the input size, stays with
/// Burn's module.
///
/// # Shapes
///
/// - input: `[N, C, H, W]`
/// - output: `[N, CO, OH, OW]`
pub fn convolve(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => return conv.forward(input),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    cifar_kernels::conv2d(
        input,
        conv.weight.val(),
        conv.bias.as_ref().map(|bias| bias.val()),
        options,
    )
}

/// `linear`'s affine map of `input`, as [`Linear::forward`] computes it,
/// through [`cifar_kernels::linear`]: the products on every core on flex,
/// Burn's operation elsewhere.
///
/// # Shapes
///
/// - input: `[N, d_input]`
/// - output: `[N, d_output]`
pub fn apply_linear(linear: &Linear, input: Tensor<2>) -> Tensor<2> {
    cifar_kernels::linear(
        input,
        linear.weight.val(),
        linear.bias.as_ref().map(|bias| bias.val()),
    )
}
