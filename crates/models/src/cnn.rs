//! A configurable convolutional network and the presets of the lecture and beyond.

use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;
use cifar_spelling::Names;

use crate::layers::check_dropout;
use crate::layers::dense_stack;
use crate::{
    Activation, ActivationConfig, ConvBlock, ConvBlockConfig, DenseBlock, Init, LayerActivations,
    Whiten, WhitenConfig,
};

/// One stage: convolutions, then an optional 2x2 max pool, then an optional
/// residual block (two convolutions of the same width added to their input).
#[derive(Config, Debug, PartialEq)]
pub struct StageConfig {
    /// Output channels of each convolution of the stage.
    pub widths: Vec<usize>,
    /// A 2x2 max pool (stride 2) after the convolutions.
    #[config(default = true)]
    pub pool: bool,
    /// With `pool`: pool right after the first convolution, before its batch
    /// norm and activation, instead of after the last (airbench's order: the
    /// later convolutions of the stage work on a quarter of the positions).
    #[config(default = false)]
    pub early_pool: bool,
    /// A residual block after the pool: `x + conv(conv(x))`.
    #[config(default = false)]
    pub residual: bool,
}

/// How the classifier head turns feature maps into a vector: `average`,
/// `max` or `flatten`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadPooling {
    /// Global average pooling: `[N, C, H, W] -> [N, C]`.
    #[default]
    Average,
    /// Global max pooling: `[N, C, H, W] -> [N, C]`.
    Max,
    /// Flatten: `[N, C, H, W] -> [N, C * H * W]`.
    Flatten,
}

impl HeadPooling {
    /// The names of the head poolings.
    pub const NAMES: Names<HeadPooling> = Names {
        what: "head pooling",
        table: &[
            ("average", HeadPooling::Average),
            ("max", HeadPooling::Max),
            ("flatten", HeadPooling::Flatten),
        ],
    };
}

/// How serde's derive wrote a [`HeadPooling`] before it was written as text.
#[derive(serde::Deserialize)]
enum OlderHeadPooling {
    Average,
    Max,
    Flatten,
}

impl cifar_spelling::Upgrade<HeadPooling> for OlderHeadPooling {
    fn upgrade(self) -> HeadPooling {
        match self {
            OlderHeadPooling::Average => HeadPooling::Average,
            OlderHeadPooling::Max => HeadPooling::Max,
            OlderHeadPooling::Flatten => HeadPooling::Flatten,
        }
    }
}

cifar_spelling::named_text!(HeadPooling, older = OlderHeadPooling);

impl CnnConfig {
    /// The height and width of the maps the first stage sees: the image,
    /// less the `whiten - 1` pixels a whitening convolution without padding
    /// takes off (0 for patches larger than the image, which `check` refuses).
    fn stage_input_size(&self) -> usize {
        (self.image_size + 1).saturating_sub(self.whiten.max(1))
    }

    /// Whether the configuration can be built: at least one stage, each
    /// with positive widths, an odd kernel, no more pooling stages than the
    /// input size allows, positive sizes, a dropout in `[0, 1)`, a finite
    /// positive logit scale, valid activation and initialization parameters.
    pub fn check(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("a CNN needs at least one stage".into());
        }
        if self
            .stages
            .iter()
            .any(|s| s.widths.is_empty() || s.widths.contains(&0))
        {
            return Err("every CNN stage needs at least one convolution, of positive width".into());
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(format!("kernel_size must be odd, got {}", self.kernel_size));
        }
        if self.in_channels == 0 || self.classes == 0 || self.head_hidden.contains(&0) {
            return Err("a CNN needs positive in_channels, classes and head_hidden sizes".into());
        }
        if self.whiten > self.image_size {
            return Err(format!(
                "whitening patches of {} pixels do not fit a {}x{} input",
                self.whiten, self.image_size, self.image_size
            ));
        }
        let pools = self.stages.iter().filter(|s| s.pool).count();
        let size = self.stage_input_size();
        if pools >= usize::BITS as usize || size >> pools == 0 {
            let after = if self.whiten > 0 {
                format!(
                    " (the {0}x{0} maps left by {1}x{1} whitening)",
                    size, self.whiten
                )
            } else {
                String::new()
            };
            return Err(format!(
                "{pools} pooling stages are too many for a {}x{} input{after}",
                self.image_size, self.image_size
            ));
        }
        if !(self.logit_scale.is_finite() && self.logit_scale > 0.0) {
            return Err(format!(
                "logit_scale must be a positive number, got {}",
                self.logit_scale
            ));
        }
        if self.whiten > 0 && self.activation.width_multiplier() != 1 {
            return Err(
                "patch whitening feeds its channels straight to the activation, so it \
                 cannot be combined with maxout"
                    .into(),
            );
        }
        if !(self.norm_momentum.is_finite() && (0.0..=1.0).contains(&self.norm_momentum)) {
            return Err(format!(
                "norm_momentum must be in [0, 1], got {}",
                self.norm_momentum
            ));
        }
        if !(self.output_gain.is_finite() && self.output_gain >= 0.0) {
            return Err(format!(
                "output_gain must be a number >= 0, got {}",
                self.output_gain
            ));
        }
        if !(self.norm_epsilon.is_finite() && self.norm_epsilon > 0.0) {
            return Err(format!(
                "norm_epsilon must be a positive number, got {}",
                self.norm_epsilon
            ));
        }
        check_dropout(self.dropout)?;
        self.activation.check()?;
        self.init.check()
    }
}

/// Configuration of a [`Cnn`].
#[derive(Config, Debug, PartialEq)]
pub struct CnnConfig {
    /// The convolutional stages, in order.
    pub stages: Vec<StageConfig>,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Input height and width (needed to size a flattening head).
    #[config(default = 32)]
    pub image_size: usize,
    /// Convolution kernel size (odd; same padding).
    #[config(default = 3)]
    pub kernel_size: usize,
    /// How the head reduces the feature maps.
    #[config(default = "HeadPooling::Average")]
    pub pooling: HeadPooling,
    /// Hidden affine layers of the head, before the output layer.
    #[config(default = "vec![]")]
    pub head_hidden: Vec<usize>,
    /// Output classes.
    #[config(default = 10)]
    pub classes: usize,
    /// The activation of every conv and hidden layer.
    #[config(default = "ActivationConfig::Relu")]
    pub activation: ActivationConfig,
    /// The weight initialization of every layer.
    #[config(default = "Init::He")]
    pub init: Init,
    /// Batch norm after every convolution (and hidden head layer).
    #[config(default = true)]
    pub batch_norm: bool,
    /// Dropout probability before the output layer (0: none).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Multiplies the logits (ResNet-9 uses 0.125).
    #[config(default = 1.0)]
    pub logit_scale: f64,
    /// A frozen patch-whitening convolution before the stages, on patches of
    /// this size (0: none); its filters come from the training data (see
    /// [`Whiten`]) and the network's activation follows it.
    #[config(default = 0)]
    pub whiten: usize,
    /// Whether batch norm learns its scale (otherwise it stays 1).
    #[config(default = true)]
    pub norm_scale: bool,
    /// Start every convolution of the stages (and of residual blocks) as the
    /// identity on its first `min(in, out)` output channels (PyTorch's
    /// `dirac_`, as airbench does), the other channels from `init`.
    #[config(default = false)]
    pub identity_init: bool,
    /// Batch norm's running statistics move this far toward each batch's
    /// (Burn's and PyTorch's `momentum`; airbench: 0.4).
    #[config(default = 0.1)]
    pub norm_momentum: f64,
    /// Added to batch norm's variance before the square root (airbench: 1e-12).
    #[config(default = 1e-5)]
    pub norm_epsilon: f64,
    /// The factor on the output layer's initial weights: a tenth
    /// ([`Init::OUTPUT_GAIN`]) starts the loss near ln(classes); airbench
    /// keeps PyTorch's plain initialization (1), its logit scale of 1/9
    /// doing the same.
    #[config(default = 0.1)]
    pub output_gain: f64,
}

impl CnnConfig {
    /// CS231n's three-layer convnet: conv(32, 7x7) - relu - 2x2 max pool -
    /// affine(100) - relu - affine(10). No batch norm.
    pub fn three_layer() -> Self {
        Self::new(vec![StageConfig::new(vec![32])])
            .with_kernel_size(7)
            .with_pooling(HeadPooling::Flatten)
            .with_head_hidden(vec![100])
            .with_batch_norm(false)
    }

    /// A small convnet: conv32-relu-pool, conv64-relu-pool, affine(4096 -> 10).
    pub fn small() -> Self {
        Self::new(vec![StageConfig::new(vec![32]), StageConfig::new(vec![64])])
            .with_pooling(HeadPooling::Flatten)
            .with_batch_norm(false)
    }

    /// A VGG-style net with batch norm: `[64, 64, M, 128, 128, M, 256, 256, M]`
    /// 3x3 conv + BN + ReLU, global average pool, affine.
    pub fn vgg() -> Self {
        Self::vgg_with_widths([64, 128, 256])
    }

    /// The VGG-style net with other widths: two 3x3 conv + BN + ReLU per
    /// stage, a 2x2 max pool after each, global average pool, affine. The
    /// default `cnn` preset is `[32, 64, 128]`, a quarter of the VGG's compute.
    pub fn vgg_with_widths(widths: [usize; 3]) -> Self {
        Self::new(
            widths
                .iter()
                .map(|&w| StageConfig::new(vec![w, w]))
                .collect(),
        )
    }

    /// A ResNet-9-style net for high accuracy (after Page's DAWNBench
    /// entry): prep conv 64; conv 128, pool, residual; conv 256, pool; conv
    /// 512, pool, residual; global max pool; affine; logits scaled by 0.125.
    pub fn resnet9() -> Self {
        Self::new(vec![
            StageConfig::new(vec![64]).with_pool(false),
            StageConfig::new(vec![128]).with_residual(true),
            StageConfig::new(vec![256]),
            StageConfig::new(vec![512]).with_residual(true),
        ])
        .with_pooling(HeadPooling::Max)
        .with_logit_scale(0.125)
    }

    /// The network of the fast CIFAR-10 records (Keller Jordan's airbench94,
    /// after Page's "How to train your ResNet" and hlb-CIFAR10): a frozen
    /// 2x2 patch-whitening convolution (3 -> 24 channels) and GELU; three
    /// stages of two 3x3 convolutions of widths 64, 256 and 256, each
    /// pooling right after its first convolution; batch norm with a fixed
    /// scale, running statistics of momentum 0.4 and epsilon 1e-12; every
    /// convolution starting as the identity on its first channels, the rest
    /// from PyTorch's default initialization (the output layer's too, at
    /// full scale); global max pooling; logits scaled by 1/9. Fit the
    /// whitening filters on the training data before training
    /// ([`Cnn::with_whitening`]).
    pub fn airbench() -> Self {
        Self::new(
            [64, 256, 256]
                .iter()
                .map(|&w| StageConfig::new(vec![w, w]).with_early_pool(true))
                .collect(),
        )
        .with_whiten(2)
        .with_activation(ActivationConfig::Gelu)
        .with_norm_scale(false)
        .with_identity_init(true)
        .with_init(Init::Pytorch)
        .with_norm_momentum(0.4)
        .with_norm_epsilon(1e-12)
        .with_output_gain(1.0)
        .with_pooling(HeadPooling::Max)
        .with_logit_scale(1.0 / 9.0)
    }

    /// Builds the network on `device` (build it on an autodiff device to train it).
    ///
    /// Panics if the configuration is invalid ([`check`](Self::check)).
    pub fn init(&self, device: &Device) -> Cnn {
        if let Err(e) = self.check() {
            panic!("{e}");
        }
        let block = |cin, cout| {
            ConvBlockConfig::new(cin, cout)
                .with_kernel(self.kernel_size)
                .with_activation(self.activation)
                .with_init(self.init)
                .with_batch_norm(self.batch_norm)
                .with_norm_scale(self.norm_scale)
                .with_norm_momentum(self.norm_momentum)
                .with_norm_epsilon(self.norm_epsilon)
        };
        let whiten = (self.whiten > 0).then(|| {
            WhitenConfig::new()
                .with_patch(self.whiten)
                .with_in_channels(self.in_channels)
        });
        let mut channels = whiten
            .as_ref()
            .map_or(self.in_channels, WhitenConfig::out_channels);
        let mut size = self.stage_input_size();
        let mut stages = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let early = stage.pool && stage.early_pool;
            let convs = stage
                .widths
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let b = block(channels, w)
                        .with_pool(early && i == 0)
                        .with_identity(self.identity_init)
                        .init(device);
                    channels = w;
                    b
                })
                .collect();
            if stage.pool {
                size /= 2;
            }
            let residual = if stage.residual {
                (0..2)
                    .map(|_| {
                        block(channels, channels)
                            .with_identity(self.identity_init)
                            .init(device)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            stages.push(Stage {
                convs,
                pool: (stage.pool && !early).then(|| MaxPool2dConfig::new([2, 2]).init()),
                residual,
            });
        }
        let features = match self.pooling {
            HeadPooling::Flatten => channels * size * size,
            _ => channels,
        };
        let (hidden, features) = dense_stack(
            features,
            &self.head_hidden,
            &self.activation,
            &self.init,
            self.batch_norm,
            0.0,
            device,
        );
        Cnn {
            whiten_activation: whiten
                .as_ref()
                .map(|w| self.activation.init(w.out_channels(), device)),
            whiten: whiten.map(|w| w.init(device)),
            stages,
            pooling: self.pooling,
            hidden,
            dropout: (self.dropout > 0.0).then(|| DropoutConfig::new(self.dropout).init()),
            output: self
                .init
                .scaled_linear(self.output_gain, features, self.classes, device),
            logit_scale: self.logit_scale,
        }
    }
}

/// One stage of a [`Cnn`].
#[derive(Module, Debug)]
pub struct Stage {
    /// The convolutions.
    pub convs: Vec<ConvBlock>,
    /// The pool after them.
    pub pool: Option<MaxPool2d>,
    /// The residual branch (empty: none).
    pub residual: Vec<ConvBlock>,
}

/// A convolutional network; build one with [`CnnConfig::init`].
#[derive(Module, Debug)]
pub struct Cnn {
    /// The frozen patch-whitening layer, if any.
    pub whiten: Option<Whiten>,
    /// The activation after it.
    pub whiten_activation: Option<Activation>,
    /// The convolutional stages.
    pub stages: Vec<Stage>,
    /// How the head reduces the feature maps.
    #[module(skip)]
    pub pooling: HeadPooling,
    /// Hidden head layers.
    pub hidden: Vec<DenseBlock>,
    /// Dropout before the output layer.
    pub dropout: Option<Dropout>,
    /// The output layer.
    pub output: Linear,
    /// Factor applied to the logits.
    pub logit_scale: f64,
}

impl Cnn {
    /// This network with the whitening layer's filters and bias set (fitted
    /// with `cifar_data::PatchWhitening`, say); see [`Whiten::with_filters`].
    ///
    /// Panics if the network has no whitening layer or a shape differs.
    pub fn with_whitening(mut self, filters: Tensor<4>, bias: Tensor<1>) -> Self {
        let whiten = self
            .whiten
            .take()
            .expect("this network has no whitening layer (CnnConfig::whiten is 0)");
        self.whiten = Some(whiten.with_filters(filters, bias));
        self
    }

    /// Computes class scores (logits).
    ///
    /// # Shapes
    ///
    /// - input: `[N, in_channels, image_size, image_size]`
    /// - output: `[N, classes]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        self.run(input, None)
    }

    /// As [`forward`](Self::forward), also returning every conv and hidden
    /// layer's values, named by their module path as the parameters are
    /// (`stages.0.convs.0`, `stages.1.residual.0`, `hidden.0`, ...).
    pub fn forward_observed(&self, input: Tensor<4>) -> (Tensor<2>, Vec<LayerActivations>) {
        let mut observed = Vec::new();
        let logits = self.run(input, Some(&mut observed));
        (logits, observed)
    }

    fn run(&self, input: Tensor<4>, mut observed: Option<&mut Vec<LayerActivations>>) -> Tensor<2> {
        let mut x = input;
        if let Some(whiten) = &self.whiten {
            x = whiten.forward(x);
            if let Some(activation) = &self.whiten_activation {
                x = activation.forward(x);
            }
        }
        for (s, stage) in self.stages.iter().enumerate() {
            for (c, conv) in stage.convs.iter().enumerate() {
                let obs = observed
                    .as_deref_mut()
                    .map(|o| (o, format!("stages.{s}.convs.{c}")));
                x = conv.forward_observed(x, obs);
            }
            if stage.pool.is_some() {
                // The stage's 2x2 max pool, through flex's faster kernel where it applies.
                x = cifar_kernels::max_pool_2x2(x);
            }
            if !stage.residual.is_empty() {
                let mut branch = x.clone();
                for (r, conv) in stage.residual.iter().enumerate() {
                    let obs = observed
                        .as_deref_mut()
                        .map(|o| (o, format!("stages.{s}.residual.{r}")));
                    branch = conv.forward_observed(branch, obs);
                }
                x = x + branch;
            }
        }
        let mut x: Tensor<2> = match self.pooling {
            HeadPooling::Average => x.mean_dim(3).mean_dim(2).flatten(1, 3),
            HeadPooling::Max => x.max_dim(3).max_dim(2).flatten(1, 3),
            HeadPooling::Flatten => x.flatten(1, 3),
        };
        for (i, block) in self.hidden.iter().enumerate() {
            let obs = observed.as_deref_mut().map(|o| (o, format!("hidden.{i}")));
            x = block.forward_observed(x, obs);
        }
        if let Some(dropout) = &self.dropout {
            x = dropout.forward(x);
        }
        let logits = crate::apply_linear(&self.output, x);
        if self.logit_scale == 1.0 {
            logits
        } else {
            logits.mul_scalar(self.logit_scale)
        }
    }
}
