//! The building blocks: an affine layer and a conv layer, each followed by
//! optional batch norm and an activation.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use crate::{Activation, ActivationConfig, Init, LayerActivations};

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
        let x = self.linear.forward(input);
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
/// Burn updates them.
fn batch_norm<const D: usize>(norm: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if D != 4 || !(x.device().is_autodiff() && norm.training.is_enabled()) {
        return norm.forward(x);
    }
    let device = x.device();
    let dims = x.dims();
    let d: Vec<usize> = dims.to_vec();
    let r = cifar_kernels::batch_norm_train(
        x.reshape([d[0], d[1], d[2], d[3]]),
        norm.gamma.val(),
        norm.beta.val(),
        norm.epsilon,
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
    r.output.reshape(dims)
}

/// Batch norm (if any), then the activation; pushes the values before and
/// after the activation to `observed` when given.
fn norm_then_activate<const D: usize>(
    x: Tensor<D>,
    norm: Option<&BatchNorm>,
    activation: &Activation,
    observed: Option<(&mut Vec<LayerActivations>, String)>,
) -> Tensor<D> {
    let x = match norm {
        Some(norm) => batch_norm(norm, x),
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

/// A same-padded Conv2d, then batch norm (optional), then activation.
#[derive(Module, Debug)]
pub struct ConvBlock {
    /// The convolution (`pieces x channels` outputs for Maxout).
    pub conv: Conv2d,
    /// Batch norm between the convolution and the activation.
    pub norm: Option<BatchNorm>,
    /// The nonlinearity.
    pub activation: Activation,
}

impl ConvBlock {
    /// A block of `channels` output channels; the conv has a bias only without batch norm.
    pub fn new(
        in_channels: usize,
        channels: usize,
        kernel: usize,
        activation: &ActivationConfig,
        init: &Init,
        batch_norm: bool,
        device: &Device,
    ) -> Self {
        let width = channels * activation.width_multiplier();
        Self {
            conv: init.conv2d(in_channels, width, kernel, !batch_norm, device),
            norm: batch_norm.then(|| BatchNormConfig::new(width).init(device)),
            activation: activation.init(channels, device),
        }
    }

    /// # Shapes
    ///
    /// - input: `[N, in_channels, H, W]`
    /// - output: `[N, channels, H, W]`
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
        let x = self.conv.forward(input);
        norm_then_activate(x, self.norm.as_ref(), &self.activation, observed)
    }
}
