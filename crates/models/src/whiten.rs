//! A frozen patch-whitening convolution: the first layer of the fast
//! CIFAR-10 records (Page's "How to train your ResNet", hlb-CIFAR10,
//! airbench), the lecture's PCA whitening applied to every small patch.
//!
//! Its filters come from the training data, not from training: fit them
//! with `cifar_data::PatchWhitening` (or any source of a `[2·d, C, k, k]`
//! weight) and set them with [`Whiten::with_filters`]. They are parameters
//! that do not ask for gradients, so an optimizer (and its weight decay)
//! leaves them alone, and they are saved and loaded with the model.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;

/// Configuration of a [`Whiten`] layer.
#[derive(Config, Debug, PartialEq)]
pub struct WhitenConfig {
    /// Patches are `patch x patch` pixels (2 in the records).
    #[config(default = 2)]
    pub patch: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_channels: usize,
}

impl WhitenConfig {
    /// Output channels: each of the `in_channels · patch²` whitening filters
    /// and its negation.
    pub fn out_channels(&self) -> usize {
        2 * self.in_channels * self.patch * self.patch
    }

    /// A layer of zero filters and bias, frozen; set the fitted ones with
    /// [`Whiten::with_filters`].
    pub fn init(&self, device: &Device) -> Whiten {
        assert!(self.patch > 0, "the whitening patch size must be positive");
        assert!(
            self.in_channels > 0,
            "the whitening layer needs input channels"
        );
        let k = self.patch;
        Whiten {
            weight: frozen(Tensor::zeros(
                [self.out_channels(), self.in_channels, k, k],
                device,
            )),
            bias: frozen(Tensor::zeros([self.out_channels()], device)),
        }
    }
}

fn frozen<const D: usize>(tensor: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(tensor).set_require_grad(false)
}

/// A `patch x patch` convolution without padding whose weights are set from
/// data and never trained.
#[derive(Module, Debug)]
pub struct Whiten {
    /// `[2·d, C, k, k]` filters (`d = C·k²`), frozen.
    pub weight: Param<Tensor<4>>,
    /// `[2·d]` bias, frozen.
    pub bias: Param<Tensor<1>>,
}

impl Whiten {
    /// This layer with `filters` and `bias` (of the shapes it was built
    /// with), still frozen.
    ///
    /// Panics if a shape differs.
    pub fn with_filters(self, filters: Tensor<4>, bias: Tensor<1>) -> Self {
        assert_eq!(
            filters.dims(),
            self.weight.dims(),
            "whitening filters of the wrong shape"
        );
        assert_eq!(
            bias.dims(),
            self.bias.dims(),
            "whitening bias of the wrong shape"
        );
        let device = self.weight.device();
        Self {
            weight: frozen(filters.to_device(&device)),
            bias: frozen(bias.to_device(&device)),
        }
    }

    /// # Shapes
    ///
    /// - input: `[N, C, H, W]`
    /// - output: `[N, 2·C·k², H - k + 1, W - k + 1]`
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        cifar_kernels::conv2d(
            input,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{GradientsParams, SgdConfig};

    fn fitted(device: &Device) -> Whiten {
        let config = WhitenConfig::new();
        let filters = Tensor::<4>::random(
            [24, 3, 2, 2],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        );
        let bias = Tensor::<1>::random([24], burn::tensor::Distribution::Default, device);
        config.init(device).with_filters(filters, bias)
    }

    #[test]
    fn output_shape_and_values_are_a_valid_convolution() {
        let device = Device::flex();
        let layer = fitted(&device);
        let x = Tensor::<4>::random([2, 3, 5, 6], burn::tensor::Distribution::Default, &device);
        let y = layer.forward(x.clone());
        assert_eq!(y.dims(), [2, 24, 4, 5]);
        // Output (0, f, 0, 0) by hand: filter f on the top-left 2x2 patch, plus bias.
        let w = layer.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let b = layer.bias.val().into_data().try_to_vec::<f32>().unwrap();
        let xs = x.into_data().try_to_vec::<f32>().unwrap();
        let ys = y.into_data().try_to_vec::<f32>().unwrap();
        for f in [0, 7, 23] {
            let mut expected = b[f];
            for c in 0..3 {
                for i in 0..2 {
                    for j in 0..2 {
                        expected += w[((f * 3 + c) * 2 + i) * 2 + j] * xs[(c * 5 + i) * 6 + j];
                    }
                }
            }
            let got = ys[f * 4 * 5];
            assert!(
                (got - expected).abs() < 1e-5,
                "filter {f}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn training_leaves_the_frozen_filters_unchanged() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let layer = fitted(&device);
        let before = layer.weight.val().into_data();
        let mut optimizer = SgdConfig::new()
            .with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(0.1)))
            .init();
        let mut layer = layer.train();
        for _ in 0..2 {
            let x = Tensor::<4>::random([2, 3, 4, 4], burn::tensor::Distribution::Default, &device)
                .require_grad();
            let loss = layer.forward(x).powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optimizer.step(0.5, layer, grads);
        }
        assert!(
            !layer.weight.is_require_grad(),
            "the filters ask for gradients"
        );
        layer.weight.val().into_data().assert_eq(&before, true);
        layer
            .valid()
            .weight
            .val()
            .into_data()
            .assert_eq(&before, true);
    }
}
