//! Helpers shared by the binary's integration tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

pub const TRAIN: &str = env!("CARGO_BIN_EXE_train");

/// A generated CIFAR-10 folder: 5 batches of 60 images, and 30 test images.
pub fn dataset() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar-10-batches-bin");
    cifar_data::synthetic::write_folder(&data, 60, 30, 3).unwrap();
    (dir, data)
}

pub fn run(args: &[&str]) -> Output {
    Command::new(TRAIN)
        .args(args)
        .env_remove("CIFAR10_DIR")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("the train binary runs")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "train {args:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The first 8 columns (the deterministic ones: no speed, no time) of each
/// row of a run's `metrics.csv`.
pub fn metric_rows(run: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(8).collect::<Vec<_>>().join(","))
        .collect()
}

/// The last line of stdout, as JSON.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text.lines().last().expect("a line")).expect("JSON")
}

/// A small, fast run: an MLP on 200 images.
pub fn small_fit<'a>(
    data: &'a str,
    out: &'a str,
    backend: &'a str,
    epochs: &'a str,
) -> Vec<&'a str> {
    vec![
        "fit",
        "--data",
        data,
        "--out",
        out,
        "--backend",
        backend,
        "--model",
        "mlp",
        "--hidden",
        "32",
        "--preprocess",
        "mean-image",
        "--augment",
        "false",
        "--optimizer",
        "momentum",
        "--lr",
        "0.01",
        "--lr-schedule",
        "constant",
        "--warmup",
        "0",
        "--epochs",
        epochs,
        "--batch-size",
        "25",
        "--val-size",
        "50",
        "--json",
    ]
}

/// `args` with the learning rate `0.01` of [`small_fit`] replaced by `lr`.
pub fn with_lr<'a>(mut args: Vec<&'a str>, lr: &'a str) -> Vec<&'a str> {
    let at = args.iter().position(|a| *a == "0.01").expect("a --lr 0.01");
    args[at] = lr;
    args
}
