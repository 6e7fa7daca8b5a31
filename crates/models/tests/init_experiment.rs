//! The lecture's weight-initialization experiment: 10 layers of 500 units,
//! input 1000 x 500 standard normal, and the std of each layer's output.

use burn::prelude::*;
use cifar_models::{ActivationConfig, ActivationStats, Init, MlpConfig};

fn layer_stats(activation: ActivationConfig, init: Init) -> Vec<ActivationStats> {
    let device = Device::flex();
    device.seed(0);
    let mlp = MlpConfig::new()
        .with_input_size(500)
        .with_hidden_sizes(vec![500; 10])
        .with_activation(activation)
        .with_init(init)
        .init(&device);
    let x = Tensor::<2>::random(
        [1000, 500],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let (_, layers) = mlp.forward_observed(x);
    assert_eq!(layers.len(), 10);
    layers
        .into_iter()
        .map(|l| ActivationStats::of_tensor(l.post, activation.saturation_band(), 20))
        .collect()
}

fn stds(stats: &[ActivationStats]) -> Vec<f64> {
    stats.iter().map(|s| s.std).collect()
}

#[test]
fn small_weights_shrink_activations_to_zero() {
    let s = stds(&layer_stats(ActivationConfig::Tanh, Init::SMALL));
    // Each layer multiplies the std by about 0.01 * sqrt(500) = 0.22.
    for w in s.windows(2) {
        let ratio = w[1] / w[0];
        assert!((0.15..0.3).contains(&ratio), "ratio {ratio} in {s:?}");
    }
    assert!(s[9] < 1e-5, "last layer std {}", s[9]);
}

#[test]
fn large_weights_saturate_tanh() {
    let stats = layer_stats(ActivationConfig::Tanh, Init::LARGE);
    for (i, s) in stats.iter().enumerate() {
        assert!(
            s.saturated_fraction > 0.85,
            "layer {i}: {} saturated",
            s.saturated_fraction
        );
        assert!(s.std > 0.9, "layer {i}: std {}", s.std);
    }
}

#[test]
fn xavier_keeps_tanh_activations_nicely_scaled() {
    // The lecture's claim: with Xavier, every layer's activations stay
    // spread out, neither collapsing to zero (as with small weights, which
    // shrink the std by 0.22 a layer) nor saturating (as with large ones).
    // Measured here: std 0.63 in the first layer, 0.23 in the tenth.
    let stats = layer_stats(ActivationConfig::Tanh, Init::Xavier);
    let s = stds(&stats);
    assert!(s.iter().all(|&v| v > 0.2), "{s:?}");
    for w in s.windows(2) {
        let ratio = w[1] / w[0];
        assert!(ratio > 0.75, "ratio {ratio}: the std collapses, {s:?}");
    }
    for (i, st) in stats.iter().enumerate() {
        assert!(
            st.saturated_fraction < 0.02,
            "layer {i}: {} saturated",
            st.saturated_fraction
        );
    }
}

#[test]
fn he_keeps_relu_stable_where_xavier_halves_it() {
    let he = stds(&layer_stats(ActivationConfig::Relu, Init::He));
    let (lo, hi) = he
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(hi / lo < 2.0, "He: {he:?}");

    let xavier = stds(&layer_stats(ActivationConfig::Relu, Init::Xavier));
    // ReLU halves the variance at every layer: the std falls by about 1/sqrt(2).
    for w in xavier.windows(2) {
        let ratio = w[1] / w[0];
        assert!((0.6..0.8).contains(&ratio), "ratio {ratio} in {xavier:?}");
    }
    assert!(xavier[9] / xavier[0] < 0.1, "{xavier:?}");
}
