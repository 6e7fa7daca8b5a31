//! The same weights give the same logits on every backend.

mod common;

use burn::module::Module;
use burn::prelude::*;
use cifar_burn::models::{ActivationConfig, MlpConfig, ModelConfig};

/// A small MLP with batch norm (in eval mode) and a PReLU, saved on flex.
fn saved_mlp(dir: &std::path::Path) -> (ModelConfig, std::path::PathBuf) {
    let config = ModelConfig::Mlp(
        MlpConfig::new()
            .with_hidden_sizes(vec![32, 16])
            .with_batch_norm(true)
            .with_activation(ActivationConfig::prelu()),
    );
    let path = dir.join("mlp.bpk");
    config.init(&Device::flex()).save_file(&path).unwrap();
    (config, path)
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
}
