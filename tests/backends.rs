//! The same weights give the same logits on every backend: in eval mode
//! with batch-norm running statistics that training has moved away from
//! their initial values, and in training mode (batch statistics), with the
//! same gradients.

mod common;

use burn::module::Module;
use burn::prelude::*;
use cifar_burn::models::{ActivationConfig, MlpConfig, Model, ModelConfig};

/// A small MLP with batch norm and a PReLU, saved on flex after a few
/// training-mode forward passes have moved its running statistics.
fn saved_mlp(dir: &std::path::Path) -> (ModelConfig, std::path::PathBuf) {
    let config = ModelConfig::Mlp(
        MlpConfig::new()
            .with_hidden_sizes(vec![32, 16])
            .with_batch_norm(true)
            .with_activation(ActivationConfig::prelu()),
    );
    let device = Device::flex().autodiff();
    let model = config.init(&device);
    for seed in 0..5 {
        // Shifted and scaled inputs, so the statistics move far from 0 and 1.
        let x = common::image_batch(16, 100 + seed, &device) * 3.0 + 0.5;
        let _ = model.forward(x);
    }
    let Model::Mlp(mlp) = &model else {
        unreachable!()
    };
    let norm = mlp.hidden[0].norm.as_ref().unwrap();
    let mean = norm
        .running_mean
        .value()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert!(
        mean.iter().any(|m| m.abs() > 0.05),
        "running mean stayed at 0: {mean:?}"
    );
    let path = dir.join("mlp.bpk");
    model.valid().save_file(&path).unwrap();
    (config, path)
}

/// Training mode on `device` (autodiff added): the logits, the gradient of
/// the first layer's weights and the gradient of the input.
fn training_step(
    config: &ModelConfig,
    weights: &std::path::Path,
    device: &Device,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let device = device.clone().autodiff();
    let model = config.init(&device).load_file(weights);
    let x = common::image_batch(8, 11, &device).require_grad();
    let logits = model.forward(x.clone());
    let targets = Tensor::<1, Int>::from_data([0, 1, 2, 3, 4, 5, 6, 7], &device);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits.clone(), targets);
    let grads = loss.backward();
    let Model::Mlp(mlp) = &model else {
        unreachable!()
    };
    let weight = mlp.hidden[0].linear.weight.val().grad(&grads).unwrap();
    let input = x.grad(&grads).unwrap();
    let values = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    (
        values(logits),
        values(weight),
        input.into_data().try_to_vec::<f32>().unwrap(),
    )
}

fn assert_same_training_step(
    a: &(Vec<f32>, Vec<f32>, Vec<f32>),
    b: &(Vec<f32>, Vec<f32>, Vec<f32>),
    what: &str,
) {
    assert_close(&a.0, &b.0, &format!("{what} training-mode logits"));
    assert_close(&a.1, &b.1, &format!("{what} weight gradient"));
    assert_close(&a.2, &b.2, &format!("{what} input gradient"));
    assert!(
        a.1.iter().any(|g| g.abs() > 1e-6),
        "the gradients are all zero"
    );
}

fn logits(config: &ModelConfig, weights: &std::path::Path, device: &Device) -> Vec<f32> {
    let model = config.init(device).load_file(weights);
    model
        .forward(common::image_batch(4, 7, device))
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}");
    }
}

#[test]
#[allow(deprecated)]
fn flex_and_ndarray_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = saved_mlp(dir.path());
    assert_close(
        &logits(&config, &path, &Device::flex()),
        &logits(&config, &path, &Device::ndarray()),
        "ndarray",
    );
    assert_same_training_step(
        &training_step(&config, &path, &Device::flex()),
        &training_step(&config, &path, &Device::ndarray()),
        "ndarray",
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_gives_the_same_logits() {
    let Some(device) = common::wgpu_device() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = saved_mlp(dir.path());
    assert_close(
        &logits(&config, &path, &Device::flex()),
        &logits(&config, &path, &device),
        "wgpu",
    );
    assert_same_training_step(
        &training_step(&config, &path, &Device::flex()),
        &training_step(&config, &path, &device),
        "wgpu",
    );
}
