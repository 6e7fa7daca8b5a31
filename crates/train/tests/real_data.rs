//! Training on the real CIFAR-10; runs when `CIFAR10_DIR` points at the
//! `cifar-10-batches-bin` folder and passes trivially otherwise.

use cifar_data::Preprocessing;
use cifar_models::{MlpConfig, ModelConfig};
use cifar_train::config::{LrSchedule, OptimizerKind};
use cifar_train::fit::{FitOptions, fit};
use cifar_train::rundir::RunDir;
use cifar_train::{TrainConfig, dataset};

#[test]
fn two_layer_net_beats_35_percent_after_one_epoch() {
    let Some(dir) = std::env::var_os("CIFAR10_DIR") else {
        eprintln!("CIFAR10_DIR not set: skipping the real-data training check");
        return;
    };
    // The CS231n two-layer net: 3072-100-10, ReLU, mean-image preprocessing, plain SGD.
    let config = TrainConfig {
        model: ModelConfig::Mlp(MlpConfig::new()),
        preprocess: Preprocessing::MeanImage,
        augment: None,
        optimizer: OptimizerKind::Sgd,
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        lr_schedule: LrSchedule::Constant,
        warmup: 0.0,
        epochs: 1,
        batch_size: 100,
        ..TrainConfig::default()
    };
    let (_, data) = dataset::load(Some(std::path::Path::new(&dir)), false).unwrap();
    let prepared = dataset::prepare(&data, &config.split, &config.preprocess, None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = RunDir::create(out.path()).unwrap();
    let summary = fit(
        &config,
        &prepared,
        &run,
        &burn::prelude::Device::flex(),
        FitOptions::quiet(),
    )
    .unwrap();
    eprintln!(
        "two-layer net, one epoch: val accuracy {:.4}",
        summary.val_accuracy
    );
    assert!(
        summary.val_accuracy > 0.35,
        "val accuracy {}",
        summary.val_accuracy
    );
}
