//! Training and diagnostics on the real CIFAR-10; runs when `CIFAR10_DIR`
//! points at the `cifar-10-batches-bin` folder and passes trivially
//! otherwise, unless `CIFAR_BURN_REQUIRE_DATA` is set (as in CI), where a
//! missing folder fails it.

use std::path::Path;

use cifar_data::Preprocessing;
use cifar_models::{MlpConfig, ModelConfig};
use cifar_train::config::{LrSchedule, OptimizerKind};
use cifar_train::fit::{FitOptions, fit};
use cifar_train::rundir::RunDir;
use cifar_train::{TrainConfig, dataset};
use serde_json::Value;

mod common;

/// The real data folder, or `None` (with a note) when `CIFAR10_DIR` is not set.
fn real_data() -> Option<String> {
    match std::env::var("CIFAR10_DIR") {
        Ok(dir) => Some(dir),
        Err(_) => {
            assert!(
                std::env::var_os("CIFAR_BURN_REQUIRE_DATA").is_none(),
                "CIFAR_BURN_REQUIRE_DATA is set but CIFAR10_DIR is not: point it at cifar-10-batches-bin"
            );
            eprintln!("CIFAR10_DIR not set: skipping this real-data check");
            None
        }
    }
}

#[test]
fn two_layer_net_beats_35_percent_after_one_epoch() {
    let Some(dir) = real_data() else { return };
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

/// The default CNN passes every sanity check. (How long `train check`
/// takes is a benchmark's business: a timed assertion fails on a busy
/// machine.)
#[test]
fn default_cnn_passes_every_check() {
    let Some(data) = real_data() else { return };
    let out = common::run(&["check", "--data", &data, "--json"]);
    let report = common::json(&common::stdout(&out));
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["verdict"], "pass", "{check:#}");
    }
    assert_eq!(out.status.code(), Some(0));
}

/// The CS231n two-layer net trains at 0.1: the finder's suggestions must lie in [1e-3, 1].
#[test]
fn lr_find_suggests_sensible_rates_for_the_two_layer_net() {
    let Some(data) = real_data() else { return };
    let out = tempfile::tempdir().unwrap();
    let result = common::json(&common::ok(&[
        "lr-find",
        "--data",
        &data,
        "--model",
        "two-layer",
        "--preprocess",
        "mean-image",
        "--out",
        out.path().to_str().unwrap(),
        "--json",
    ]));
    for name in ["steepest", "valley", "minimum"] {
        let lr = result["suggestions"][name].as_f64().unwrap();
        assert!((1e-3..=1.0).contains(&lr), "{name}: {lr} ({result})");
    }
    assert!(
        result["points"].as_u64().unwrap() < 100,
        "no early stop: {result}"
    );
}

fn two_layer(data: &str, out: &Path, lr: &str, epochs: &str) -> Vec<String> {
    [
        "fit",
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
        "--model",
        "two-layer",
        "--preprocess",
        "mean-image",
        "--augment",
        "false",
        "--optimizer",
        "sgd",
        "--lr",
        lr,
        "--weight-decay",
        "0",
        "--lr-schedule",
        "constant",
        "--warmup",
        "0",
        "--batch-size",
        "100",
        "--epochs",
        epochs,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `--lr 5` warns about the update ratio before the run diverges, and the
/// error names the layers; `--lr 1e-5` warns that the updates are too small.
#[test]
fn update_ratio_warnings_at_both_extremes() {
    let Some(data) = real_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let args = two_layer(&data, &tmp.path().join("high"), "5", "2");
    let out = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = common::stderr(&out);
    let warned = err.find("warning: the update/weight ratio").expect(&err);
    let diverged = err.find("training diverged").expect(&err);
    assert!(warned < diverged, "{err}");
    assert!(err.contains("output.weight"), "{err}");

    let args = two_layer(&data, &tmp.path().join("low"), "1e-5", "1");
    let summary: Value = common::json(&common::ok(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("too small, raise --lr")),
        "{warnings:?}"
    );
}

/// An MLP with batch norm under Nesterov SGD with weight decay: its hidden
/// weights turn by about 5e-2 per step, fifty times the lecture's 1e-3, and
/// the monitor explains it (their rotational equilibrium, reached within
/// about 100 steps at this decay) in a note instead of advising a lower
/// rate.
#[test]
fn weights_feeding_batch_norm_get_a_note_not_a_warning() {
    let Some(data) = real_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let summary: Value = common::json(&common::ok(&[
        "fit",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--model",
        "mlp",
        "--hidden",
        "200,200",
        "--batch-norm",
        "--optimizer",
        "nesterov",
        "--momentum",
        "0.9",
        "--lr",
        "0.1",
        "--weight-decay",
        "2e-2",
        "--lr-schedule",
        "constant",
        "--epochs",
        "3",
        "--train-size",
        "20000",
        "--json",
    ]));
    let notes = summary["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("2 weight tensors that feed batch norm")),
        "{summary:#}"
    );
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(
        !warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("lower --lr")),
        "{summary:#}"
    );
    let layers = std::fs::read_to_string(out.join("layers.csv")).unwrap();
    assert!(layers.contains(",batch_norm_inputs,weight,equilibrium_ratio,"));
}
