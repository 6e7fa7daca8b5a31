//! The `train` binary end to end, on a generated dataset of a few hundred images.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

mod common;

use common::{TRAIN, dataset, json, metric_rows, ok, run, small_fit, stderr, stdout};

/// Two runs that must have ended alike: the same accuracy and loss, and the
/// same metrics row for row (timings aside).
fn assert_same_run(a: &Value, b: &Value, dir_a: &Path, dir_b: &Path) {
    assert_eq!(a["epochs"], b["epochs"]);
    assert_eq!(a["val_accuracy"], b["val_accuracy"]);
    let (la, lb) = (
        a["final_training_loss"].as_f64().unwrap(),
        b["final_training_loss"].as_f64().unwrap(),
    );
    assert!((la - lb).abs() < 1e-5 * la.abs().max(1.0), "{la} vs {lb}");
    let (ra, rb) = (metric_rows(dir_a), metric_rows(dir_b));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x, y, "metrics rows differ");
    }
}

fn check_run_folder(run: &Path) {
    for file in [
        "config.json",
        "preprocess.bin",
        "metrics.csv",
        "best.bpk",
        "summary.json",
        "checkpoint/model.bpk",
        "checkpoint/optimizer.bpk",
        "checkpoint/state.json",
        "loss.png",
    ] {
        assert!(
            run.join(file).is_file(),
            "{file} missing from the run folder"
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(metrics.starts_with("kind,epoch,iteration,loss"));
    assert!(metrics.lines().any(|l| l.starts_with("step,1,1,")));
    assert!(metrics.lines().any(|l| l.starts_with("epoch,1,")));
}

#[test]
fn fit_on_flex_then_eval_and_predict() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let summary = json(&ok(&small_fit(d, o, "cpu", "1")));
    assert_eq!(summary["epochs"], 1);
    assert!(summary["final_training_loss"].as_f64().unwrap().is_finite());
    assert!(
        summary["test_accuracy"].as_f64().is_some(),
        "the generated data has a test batch"
    );
    check_run_folder(&out);

    let eval = json(&ok(&["eval", "--run", o, "--data", d, "--json"]));
    assert_eq!(eval["examples"], 50);
    assert_eq!(eval["accuracy"], summary["val_accuracy"]);
    assert_eq!(eval["per_class"].as_array().unwrap().len(), 10);
    let text = ok(&["eval", "--run", o, "--data", d, "--split", "test"]);
    assert!(text.contains("test split: 30 images"), "{text}");
    assert!(text.contains("confusion matrix"), "{text}");
    assert!(out.join("confusion-test.png").is_file());

    // Predict on a 32x32 PNG and on a larger JPEG (resized).
    let png = tmp.path().join("cat.png");
    image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 128]))
        .save(&png)
        .unwrap();
    let jpg = tmp.path().join("big.jpg");
    image::RgbImage::from_fn(64, 48, |x, _| image::Rgb([x as u8, 200, 30]))
        .save(&jpg)
        .unwrap();
    let predicted = json(&ok(&[
        "predict",
        "--run",
        o,
        png.to_str().unwrap(),
        jpg.to_str().unwrap(),
        "--json",
    ]));
    let predictions = predicted.as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    let top = predictions[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let p: Vec<f64> = top
        .iter()
        .map(|t| t["probability"].as_f64().unwrap())
        .collect();
    assert!(p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0);
}

#[test]
fn fit_on_ndarray() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let summary = json(&ok(&small_fit(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        "ndarray",
        "1",
    )));
    assert_eq!(summary["epochs"], 1);
    check_run_folder(&out);
}

#[test]
fn fit_default_cnn_with_augmentation() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let summary = json(&ok(&[
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--channels",
        "4,8",
        "--batch-norm",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--val-size",
        "50",
        "--json",
    ]));
    assert_eq!(summary["epochs"], 1);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    // Every setting is written as its flag is.
    assert_eq!(config["preprocess"], "standardize");
    assert_eq!(config["optimizer"], "nesterov");
    assert_eq!(config["lr-schedule"], "cosine");
    assert_eq!(config["model"]["cnn"]["activation"], "relu");
    assert_eq!(config["model"]["cnn"]["init"], "he");
    assert_eq!(config["model"]["cnn"]["pooling"], "average");
    assert!(config["augment"].is_object());
    assert_eq!(config["model"]["cnn"]["batch_norm"], true);
    assert_eq!(
        config["model"]["cnn"]["stages"][1]["widths"],
        serde_json::json!([8, 8])
    );
}

#[test]
fn resume_gives_the_same_final_metrics() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let straight = tmp.path().join("straight");
    let a = json(&ok(&small_fit(d, straight.to_str().unwrap(), "flex", "2")));

    let resumed = tmp.path().join("resumed");
    let r = resumed.to_str().unwrap();
    ok(&small_fit(d, r, "flex", "1"));
    // Without a display's runtime folder, as on a server: the GPU driver
    // would complain there if loading the optimizer started it.
    let out = Command::new(TRAIN)
        .args([
            "fit", "--data", d, "--out", r, "--resume", "--epochs", "2", "--json",
        ])
        .env_remove("CIFAR10_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("BURN_DEVICE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("error"),
        "a CPU run's resume starts no GPU: {}",
        stderr(&out)
    );
    let b = json(&stdout(&out));
    assert_eq!(b["epochs"], 2);
    assert_same_run(&a, &b, &straight, &resumed);
}

/// The lookahead's average is part of the checkpoint: a paused run whose
/// epoch ends between two pulls resumes exactly.
#[test]
fn resume_with_lookahead_gives_the_same_final_metrics() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    fn with_lookahead<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
        let mut args = small_fit(data, out, "flex", epochs);
        // 250 training images in batches of 30: 9 steps per epoch.
        let at = args.iter().position(|a| *a == "--batch-size").unwrap();
        args[at + 1] = "30";
        args.extend(["--lookahead", "true"]);
        args
    }
    let straight = tmp.path().join("straight");
    let a = json(&ok(&with_lookahead(d, straight.to_str().unwrap(), "2")));
    let steps = metric_rows(&straight)
        .iter()
        .filter(|row| row.starts_with("step,1,"))
        .count();
    assert_ne!(steps % 5, 0, "the first epoch ends between two pulls");

    let resumed = tmp.path().join("resumed");
    let r = resumed.to_str().unwrap();
    let mut first = with_lookahead(d, r, "2");
    first.extend(["--until-epoch", "1"]);
    ok(&first);
    assert!(resumed.join("checkpoint/lookahead.bpk").is_file());
    let b = json(&ok(&["fit", "--data", d, "--out", r, "--resume", "--json"]));
    assert_same_run(&a, &b, &straight, &resumed);

    // The pulls change the run.
    let plain = tmp.path().join("plain");
    ok(&small_fit(d, plain.to_str().unwrap(), "flex", "2"));
    assert_ne!(metric_rows(&plain), metric_rows(&straight));
}

#[test]
fn config_file_round_trip() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let first = tmp.path().join("first");
    ok(&small_fit(d, first.to_str().unwrap(), "flex", "1"));
    // The saved config, passed back with --config, reproduces the run; flags still override it.
    let second = tmp.path().join("second");
    let config = first.join("config.json");
    ok(&[
        "fit",
        "--data",
        d,
        "--out",
        second.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--seed",
        "5",
        "--json",
    ]);
    let a: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let mut b: Value =
        serde_json::from_str(&std::fs::read_to_string(second.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(b["seed"], 5);
    b["seed"] = a["seed"].clone();
    assert_eq!(a, b);
}

#[test]
fn invalid_flag_values_fail_cleanly() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--backend", "tpu"], "unknown backend 'tpu'"),
        (&["--activation", "swish"], "unknown activation 'swish'"),
        (&["--init", "orthogonal"], "unknown init 'orthogonal'"),
        (
            &["--preprocess", "whiten"],
            "unknown preprocessing 'whiten'",
        ),
        (&["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
        (
            &["--lr-schedule", "linear"],
            "unknown learning-rate schedule",
        ),
        (&["--model", "transformer"], "unknown model 'transformer'"),
        (&["--lr=-1"], "--lr must be a positive number"),
        (
            &["--matmul-precision", "f16"],
            "unknown matmul precision 'f16'",
        ),
        (
            &["--backend", "ndarray", "--matmul-precision", "bf16"],
            "--matmul-precision bf16 runs the flex backend's convolutions",
        ),
        (&["--epochs", "0"], "--epochs must be at least 1"),
        (&["--batch-size", "0"], "--batch-size must be at least 1"),
        (&["--momentum", "1.5"], "--momentum must be in [0, 1)"),
        (&["--dropout", "1"], "--dropout must be in [0, 1)"),
        (
            &["--model", "cnn", "--hidden", "10"],
            "--hidden sets MLP layer sizes",
        ),
        (
            &[
                "--model",
                "cnn",
                "--preprocess",
                "pca:10",
                "--augment",
                "false",
            ],
            "a CNN cannot take",
        ),
        (&["--val-size", "400"], "--val-size"),
        (
            &["--batch-norm", "maybe"],
            "invalid value 'maybe' for '--batch-norm",
        ),
        (
            &["--val-size", "50", "--train-size", "5000"],
            "invalid training size (--train-size): 5000 asked",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["fit", "--data", d, "--out", o];
        args.extend_from_slice(extra);
        let out = run(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(
            err.contains(expected),
            "{extra:?}: expected '{expected}' in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{extra:?} panicked:\n{err}");
    }
}

#[test]
fn bad_data_folders_fail_cleanly() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    let check = |args: &[&str], expected: &str| {
        let out = run(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expected), "expected '{expected}' in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
    };
    check(
        &["fit", "--data", "/no/such/folder", "--out", o],
        "/no/such/folder does not exist",
    );
    let truncated = data.join("data_batch_5.bin");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    check(
        &["fit", "--data", data.to_str().unwrap(), "--out", o],
        "not a multiple of the 3073-byte",
    );
    std::fs::remove_file(data.join("data_batch_2.bin")).unwrap();
    check(
        &["data", "--data", data.to_str().unwrap()],
        "data_batch_2.bin is missing",
    );
    check(
        &["eval", "--run", tmp.path().to_str().unwrap()],
        "is not a run folder",
    );
}

#[test]
fn data_command_reports_counts_and_statistics() {
    let (_tmp, data) = dataset();
    let report = json(&ok(&[
        "data",
        "--data",
        data.to_str().unwrap(),
        "--val-size",
        "100",
        "--json",
    ]));
    assert_eq!(report["splits"]["train"]["images"], 200);
    assert_eq!(report["splits"]["val"]["images"], 100);
    assert_eq!(report["splits"]["test"]["images"], 30);
    assert_eq!(report["splits"]["train"]["per_class"][0], 20);
    assert_eq!(report["train_channel_mean"].as_array().unwrap().len(), 3);
    let text = ok(&[
        "data",
        "--data",
        data.to_str().unwrap(),
        "--val-size",
        "100",
    ]);
    assert!(text.contains("training-split channel mean"), "{text}");
}

#[test]
fn init_stats_reproduces_the_lecture() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("h.png");
    let init_stats = |extra: &[&str]| {
        let mut args = vec![
            "init-stats",
            "--layers",
            "4",
            "--width",
            "200",
            "--samples",
            "300",
        ];
        args.extend_from_slice(&["--png", png.to_str().unwrap()]);
        args.extend_from_slice(extra);
        ok(&args)
    };
    let text = init_stats(&[]);
    assert!(text.contains("hidden layer 3 had mean"), "{text}");
    assert!(png.is_file());
    let layers = json(&init_stats(&["--init", "xavier", "--json"]));
    let layers = layers.as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for l in layers {
        let std = l["std"].as_f64().unwrap();
        assert!(std > 0.1 && std < 1.0, "xavier tanh std {std}");
    }
    let small = json(&init_stats(&["--json"]));
    assert!(small[3]["std"].as_f64().unwrap() < 0.01, "{small}");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_finishes_the_same_run() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let straight = tmp.path().join("straight");
    let a = json(&ok(&small_fit(
        d,
        straight.to_str().unwrap(),
        "flex",
        "100",
    )));

    let stopped = tmp.path().join("stopped");
    let s = stopped.to_str().unwrap();
    let child = Command::new(TRAIN)
        .args(small_fit(d, s, "flex", "100"))
        .env_remove("CIFAR10_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first step, then press Ctrl-C.
    let metrics = stopped.join("metrics.csv");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\nstep,")) {
        assert!(start.elapsed().as_secs() < 120, "no step was logged");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the interrupted run exited 0");
    let err = stderr(&out);
    assert!(err.contains("interrupted at step"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(stopped.join("checkpoint/state.json").is_file());

    let b = json(&ok(&["fit", "--data", d, "--out", s, "--resume", "--json"]));
    assert_same_run(&a, &b, &straight, &stopped);
}

/// `fit` on wgpu (in CI, Mesa's software Vulkan driver); skipped where no
/// adapter exists unless `CIFAR_BURN_REQUIRE_WGPU` is set.
#[cfg(feature = "wgpu")]
#[test]
fn fit_on_wgpu() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let result = run(&small_fit(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        "gpu",
        "1",
    ));
    let err = stderr(&result);
    if !result.status.success()
        && err.contains("no usable GPU adapter")
        && std::env::var_os("CIFAR_BURN_REQUIRE_WGPU").is_none()
    {
        eprintln!("skipping: {err}");
        return;
    }
    assert!(result.status.success(), "{}\n{err}", stdout(&result));
    let summary = json(&stdout(&result));
    assert_eq!(summary["epochs"], 1);
    assert!(summary["final_training_loss"].as_f64().unwrap().is_finite());
    check_run_folder(&out);
}

/// A run's `config.json`, fed back with `--config`, gives the same run; it
/// spells every setting as the flags do.
#[test]
fn a_runs_config_fed_back_gives_the_same_run() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let first = tmp.path().join("first");
    let mut args = small_fit(d, first.to_str().unwrap(), "flex", "2");
    args.extend_from_slice(&["--activation", "leaky-relu:0.05", "--init", "gaussian:0.02"]);
    let a = json(&ok(&args));
    let config_text = std::fs::read_to_string(first.join("config.json")).unwrap();
    let config: Value = serde_json::from_str(&config_text).unwrap();
    assert_eq!(config["model"]["mlp"]["activation"], "leaky-relu:0.05");
    assert_eq!(config["model"]["mlp"]["init"], "gaussian:0.02");
    assert_eq!(config["preprocess"], "mean-image");
    assert_eq!(config["lr-schedule"], "constant");

    let second = tmp.path().join("second");
    let b = json(&ok(&[
        "fit",
        "--data",
        d,
        "--config",
        first.join("config.json").to_str().unwrap(),
        "--out",
        second.to_str().unwrap(),
        "--json",
    ]));
    assert_same_run(&a, &b, &first, &second);
    assert_eq!(
        std::fs::read_to_string(second.join("config.json")).unwrap(),
        config_text
    );
}

/// `--resume` continues the run it finds and refuses to mix another into it.
#[test]
fn resume_refuses_what_would_change_the_run_and_reruns_safely() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let mut first = small_fit(d, o, "flex", "3");
    first.extend_from_slice(&["--until-epoch", "1"]);
    ok(&first);
    let resume = |extra: &[&str]| {
        let mut args = vec!["fit", "--data", d, "--out", o, "--resume"];
        args.extend_from_slice(extra);
        run(&args)
    };
    for (extra, expected) in [
        (
            &["--hidden", "50"][..],
            "--hidden 50: the run was started with --hidden 32",
        ),
        (
            &["--seed", "5"],
            "--seed 5: the run was started with --seed 0",
        ),
        (
            &["--optimizer", "adam"],
            "--optimizer adam: the run was started with --optimizer momentum",
        ),
        (
            &["--val-size", "40"],
            "--val-size 40: the run was started with --val-size 50",
        ),
        (
            &["--preprocess", "standardize"],
            "the run was started with --preprocess mean-image",
        ),
    ] {
        let result = resume(extra);
        let err = stderr(&result);
        assert!(!result.status.success(), "{extra:?} was accepted");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(err.contains("start a new run with another --out"), "{err}");
    }
    // A --config file that disagrees is refused the same way.
    let mut other: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    other["batch-size"] = 10.into();
    let file = tmp.path().join("other.json");
    std::fs::write(&file, other.to_string()).unwrap();
    let result = resume(&["--config", file.to_str().unwrap()]);
    let err = stderr(&result);
    assert!(
        err.contains("--config")
            && err.contains("--batch-size 10: the run was started with --batch-size 25"),
        "{err}"
    );
    // Preprocessing statistics of other images are refused, not refitted.
    let other_data = tmp.path().join("other-data");
    cifar_data::synthetic::write_folder(&other_data, 60, 30, 4).unwrap();
    let result = run(&[
        "fit",
        "--data",
        other_data.to_str().unwrap(),
        "--out",
        o,
        "--resume",
    ]);
    let err = stderr(&result);
    assert!(
        err.contains("preprocess.bin") && err.contains("another training split"),
        "{err}"
    );
    // What may change does, and a rerun of the finished run says so and succeeds.
    let done = json(&stdout(&resume(&["--lr", "0.02", "--json"])));
    assert_eq!(done["status"], "finished");
    assert_eq!(done["epochs"], 3);
    let again = resume(&["--json"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(json(&stdout(&again))["val_accuracy"], done["val_accuracy"]);
    assert!(stderr(&again).contains("already finished its 3 epochs"));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["lr"], 0.02);
}

/// A scheduler's rerun of `train fit --out DIR --resume`: on an empty
/// folder, and on a run killed before its first checkpoint, the run starts.
#[test]
fn resume_starts_a_run_that_has_no_checkpoint_yet() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let out = tmp.path().join("fresh");
    let o = out.to_str().unwrap();
    let mut args = small_fit(d, o, "flex", "1");
    args.push("--resume");
    let first = run(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("holds no run yet; starting it")
            || stdout(&first).contains("holds no run yet; starting it")
    );
    // Killed during its first epoch: a config, no checkpoint.
    std::fs::remove_dir_all(out.join("checkpoint")).unwrap();
    std::fs::remove_file(out.join("summary.json")).unwrap();
    let again = run(&args);
    let text = format!("{}{}", stdout(&again), stderr(&again));
    assert!(again.status.success(), "{text}");
    assert!(
        text.contains("starting the run again from the beginning"),
        "{text}"
    );
    assert_eq!(json(&stdout(&again))["epochs"], 1);
}

/// `train eval --run DIR` finds the data the run was trained on.
#[test]
fn eval_finds_the_runs_data_folder() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    ok(&small_fit(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        "flex",
        "1",
    ));
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("data.json")).unwrap()).unwrap();
    assert_eq!(
        Path::new(recorded["data"].as_str().unwrap()),
        std::path::absolute(&data).unwrap()
    );
    let eval = json(&ok(&[
        "eval",
        "--run",
        out.to_str().unwrap(),
        "--split",
        "val",
        "--json",
    ]));
    assert_eq!(eval["examples"], 50, "{eval}");
}

#[test]
fn fast_recipe_trains_with_every_ingredient_switchable() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let base = [
        "fit",
        "--data",
        data.to_str().unwrap(),
        "--recipe",
        "fast",
        "--channels",
        "4,8",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--val-size",
        "50",
        "--json",
    ];
    let mut args = base.to_vec();
    args.extend(["--out", out.to_str().unwrap()]);
    let summary = json(&ok(&args));
    assert_eq!(summary["epochs"], 1);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let cnn = &config["model"]["cnn"];
    assert_eq!(cnn["whiten"], 2);
    assert_eq!(cnn["norm_scale"], false);
    assert_eq!(cnn["identity_init"], true);
    assert_eq!(
        cnn["stages"][1]["early_pool"], true,
        "--channels keeps the early pool"
    );
    assert_eq!(config["label-smoothing"], 0.2);
    assert_eq!(config["norm-shift-lr-scale"], 64.0);
    assert_eq!(config["lookahead"], true);
    assert_eq!(config["tta"], "flip-shift");
    assert_eq!(config["augment"]["pad"], 2);
    assert_eq!(config["augment"]["alternate_flip"], true);
    assert_eq!(config["augment"]["reflect"], true);
    assert_eq!(config["lr-schedule"], "triangle");
    assert_eq!(cnn["init"], "pytorch");
    assert_eq!(cnn["norm_momentum"], 0.4);
    assert_eq!(cnn["norm_epsilon"], 1e-12);
    // The saved run evaluates, with another test-time augmentation too.
    let eval = json(&ok(&[
        "eval",
        "--run",
        out.to_str().unwrap(),
        "--tta",
        "flip",
        "--json",
    ]));
    assert_eq!(eval["examples"], 50);
    // Each ingredient off, by its flag.
    let off = tmp.path().join("off");
    let mut args = base.to_vec();
    args.extend([
        "--out",
        off.to_str().unwrap(),
        "--whiten",
        "0",
        "--norm-scale",
        "true",
        "--identity-init",
        "false",
        "--label-smoothing",
        "0",
        "--norm-shift-lr-scale",
        "1",
        "--lookahead",
        "false",
        "--tta",
        "none",
        "--crop-pad",
        "4",
        "--flip",
        "random",
        "--crop-pad-mode",
        "zeros",
        "--lr-schedule",
        "cosine",
        "--warmup",
        "1",
        "--init",
        "he",
        "--norm-momentum",
        "0.1",
        "--norm-epsilon",
        "1e-5",
    ]);
    json(&ok(&args));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(off.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["cnn"]["whiten"], 0);
    assert_eq!(config["model"]["cnn"]["norm_scale"], true);
    assert_eq!(config["tta"], "none");
    assert_eq!(config["norm-shift-lr-scale"], 1.0);
    assert_eq!(config["lookahead"], false);
    assert!(config["augment"].get("alternate_flip").is_none());
    assert!(config["augment"].get("reflect").is_none());
    assert_eq!(config["lr-schedule"], "cosine");
    assert_eq!(config["model"]["cnn"]["init"], "he");
    assert_eq!(config["model"]["cnn"]["norm_momentum"], 0.1);
    // Flags that make no sense say so.
    let out = run(&["fit", "--recipe", "fastest"]);
    assert!(stderr(&out).contains("--recipe fastest: expected one of default, fast"));
    let out = run(&["fit", "--model", "mlp", "--whiten", "2"]);
    assert!(
        stderr(&out).contains("--whiten sets a CNN's layers"),
        "{}",
        stderr(&out)
    );
    let out = run(&["fit", "--augment", "false", "--flip", "alternate"]);
    assert!(stderr(&out).contains("--augment false"), "{}", stderr(&out));
    let out = run(&["fit", "--recipe", "fast", "--optimizer", "adam"]);
    assert!(
        stderr(&out)
            .contains("--norm-shift-lr-scale 64 scales gradients, which adam's steps ignore"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bf16_products_train_where_amx_is_and_are_refused_with_the_reason_elsewhere() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("bf16");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "fit",
        "--data",
        d,
        "--out",
        o,
        "--model",
        "small-cnn",
        "--epochs",
        "1",
        "--batch-size",
        "25",
        "--val-size",
        "50",
        "--lr",
        "0.01",
        "--matmul-precision",
        "bf16",
        "--json",
    ];
    let result = run(&args);
    if cifar_kernels::bf16_available() {
        assert!(result.status.success(), "{}", stderr(&result));
        let summary = json(&stdout(&result));
        assert!(
            summary["final_training_loss"].as_f64().unwrap().is_finite(),
            "{summary}"
        );
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["matmul-precision"], "bf16");
        // Evaluation follows the run's products: the same accuracy.
        let eval = json(&ok(&["eval", "--run", o, "--data", d, "--json"]));
        assert_eq!(eval["accuracy"], summary["val_accuracy"]);
    } else {
        let err = stderr(&result);
        assert!(!result.status.success(), "bf16 without AMX succeeded");
        assert!(
            err.contains("--matmul-precision bf16") && err.contains("AMX"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bench_prints_images_per_second_as_json() {
    let line = json(&ok(&[
        "bench",
        "train",
        "--model",
        "small-cnn",
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--json",
    ]));
    assert!(line["images_per_sec"].as_f64().unwrap() > 0.0, "{line}");
    assert_eq!(line["backend"], "flex");
}

#[test]
fn bench_times_the_airbench_network_with_its_whitening_fitted() {
    // Unfitted, the whitening layer's zero filters feed the stages constant
    // maps, and batch norm's epsilon of 1e-12 turned the loss into NaN.
    let line = json(&ok(&[
        "bench",
        "train",
        "--model",
        "airbench",
        "--batch-size",
        "8",
        "--steps",
        "1",
        "--json",
    ]));
    assert!(line["images_per_sec"].as_f64().unwrap() > 0.0, "{line}");
}
