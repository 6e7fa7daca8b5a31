//! `train check`, `train lr-find`, the layer monitor, the charts and the
//! report, end to end on generated data.

use std::path::Path;

use serde_json::Value;

mod common;

use common::{dataset, json, ok, run, small_fit, stderr, stdout, with_lr};

/// `train check --json` on the generated data with `extra` flags: (exit code, report).
fn check(data: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "check",
        "--data",
        data.to_str().unwrap(),
        "--val-size",
        "50",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let text = stdout(&out);
    assert!(
        !stderr(&out).contains("panicked"),
        "check panicked:\n{}",
        stderr(&out)
    );
    let report: Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}\n{}", stderr(&out)));
    (out.status.code().unwrap_or(-1), report)
}

fn verdict<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))["verdict"]
        .as_str()
        .unwrap()
}

const MLP: &[&str] = &[
    "--model",
    "mlp",
    "--hidden",
    "64",
    "--optimizer",
    "momentum",
    "--lr",
    "0.05",
    "--batch-size",
    "50",
];

#[test]
fn check_passes_a_healthy_mlp_and_prints_a_table() {
    let (_tmp, data) = dataset();
    let (code, report) = check(&data, MLP);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["passed"], true);
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "loss-at-init",
            "regularization",
            "overfit",
            "gradient-check",
            "data",
            "lr-extremes"
        ]
    );
    for c in checks {
        for field in ["measured", "expected", "advice"] {
            assert!(c[field].is_string(), "{c}");
        }
        assert_ne!(c["verdict"], "fail", "{c}");
    }
    assert_eq!(verdict(&report, "loss-at-init"), "pass");
    assert_eq!(verdict(&report, "overfit"), "pass");
    let mut args = vec![
        "check",
        "--data",
        data.to_str().unwrap(),
        "--val-size",
        "50",
    ];
    args.extend_from_slice(MLP);
    let text = ok(&args);
    assert!(text.contains("PASS  overfit"), "{text}");
    assert!(text.contains("measured:"), "{text}");
}

#[test]
fn check_fails_zero_initialization() {
    let (_tmp, data) = dataset();
    let mut args = MLP.to_vec();
    args.extend_from_slice(&["--init", "zeros"]);
    let (code, report) = check(&data, &args);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["passed"], false);
    assert_eq!(verdict(&report, "overfit"), "fail");
    assert_eq!(verdict(&report, "regularization"), "fail");
    let overfit = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "overfit")
        .unwrap();
    assert!(
        overfit["advice"].as_str().unwrap().contains("--init zeros"),
        "{overfit}"
    );
}

#[test]
fn check_fails_a_deep_sigmoid_net_with_small_weights() {
    let (_tmp, data) = dataset();
    let (code, report) = check(
        &data,
        &[
            "--model",
            "mlp",
            "--hidden",
            "100,100,100,100,100,100,100,100,100,100",
            "--activation",
            "sigmoid",
            "--init",
            "small",
            "--optimizer",
            "sgd",
            "--lr",
            "0.05",
            "--batch-size",
            "50",
            "--overfit-steps",
            "150",
        ],
    );
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(verdict(&report, "overfit"), "fail");
}

#[test]
fn check_fails_a_huge_initialization_at_the_first_check() {
    let (_tmp, data) = dataset();
    let mut args = MLP.to_vec();
    args.extend_from_slice(&["--init", "large"]);
    let (_, report) = check(&data, &args);
    assert_eq!(verdict(&report, "loss-at-init"), "fail");
    let first = &report["checks"][0];
    assert!(
        first["advice"]
            .as_str()
            .unwrap()
            .contains("logits start too large"),
        "{first}"
    );
}

#[test]
fn lr_find_writes_its_sweep_and_stops_on_divergence() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("finder");
    let result = json(&ok(&[
        "lr-find",
        "--data",
        data.to_str().unwrap(),
        "--val-size",
        "50",
        "--model",
        "mlp",
        "--hidden",
        "64",
        "--preprocess",
        "mean-image",
        "--augment",
        "false",
        "--optimizer",
        "sgd",
        "--batch-size",
        "25",
        "--end",
        "1000",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    for name in ["steepest", "valley", "minimum"] {
        let lr = result["suggestions"][name].as_f64().unwrap();
        assert!(lr > 1e-7 && lr < 1000.0, "{name} {lr}");
    }
    assert_eq!(result["chosen"], "valley");
    assert_eq!(result["lr"], result["suggestions"]["valley"]);
    assert!(
        result["points"].as_u64().unwrap() < 100,
        "the sweep to 1000 should stop early: {result}"
    );
    let csv = std::fs::read_to_string(out.join("lr-find.csv")).unwrap();
    assert!(csv.starts_with("lr,loss,smoothed_loss\n"));
    assert!(out.join("lr-find.png").is_file());
}

#[test]
fn fit_writes_monitor_charts_and_report() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let summary = json(&ok(&small_fit(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        "flex",
        "2",
    )));
    assert_eq!(summary["status"], "finished");
    for file in [
        "layers.csv",
        "loss.png",
        "accuracy.png",
        "lr.png",
        "update-ratio.png",
        "activations.png",
        "confusion-val.png",
        "init-stats.png",
        "report.html",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let layers = std::fs::read_to_string(out.join("layers.csv")).unwrap();
    assert!(layers.starts_with("step,layer,parameter,statistic,value\n"));
    for stat in [
        "weight_norm",
        "grad_norm",
        "update_ratio",
        "mean",
        "std",
        "zero_fraction",
        "saturated_fraction",
    ] {
        assert!(layers.contains(&format!(",{stat},")), "{stat} missing");
    }
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("data:image/png;base64,"));
    assert!(report.contains("best validation accuracy"));
    // `train report` rebuilds it, here with a log-scale loss chart.
    std::fs::remove_file(out.join("report.html")).unwrap();
    std::fs::remove_file(out.join("update-ratio.png")).unwrap();
    ok(&["report", "--run", out.to_str().unwrap(), "--log-loss"]);
    assert!(out.join("report.html").is_file());
    assert!(
        out.join("update-ratio.png").is_file(),
        "redrawn from layers.csv"
    );
}

#[test]
fn tiny_learning_rate_warns_that_updates_are_too_small() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let args = with_lr(
        small_fit(data.to_str().unwrap(), out.to_str().unwrap(), "flex", "3"),
        "1e-6",
    );
    let summary = json(&ok(&args));
    let warnings = summary["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("too small, raise --lr")),
        "{warnings:?}"
    );
}

#[test]
fn diverging_run_names_the_layers_and_keeps_its_metrics() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let args = with_lr(
        small_fit(data.to_str().unwrap(), out.to_str().unwrap(), "flex", "3"),
        "1000",
    );
    let result = run(&args);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("training diverged"), "{err}");
    assert!(err.contains("Lower the learning rate"), "{err}");
    assert!(err.contains("update/weight ratio was far above"), "{err}");
    assert!(
        err.contains("output.weight") || err.contains("hidden"),
        "{err}"
    );
    assert!(err.contains("warning: the update/weight ratio"), "{err}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "diverged");
    assert!(out.join("layers.csv").is_file());
}

#[test]
fn batch_norm_rescues_a_small_initialization_in_init_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("h.png");
    let stats = |bn: &str| {
        json(&ok(&[
            "init-stats",
            "--activation",
            "tanh",
            "--init",
            "small",
            "--layers",
            "10",
            "--width",
            "200",
            "--samples",
            "300",
            "--batch-norm",
            bn,
            "--png",
            png.to_str().unwrap(),
            "--json",
        ]))
    };
    let with = stats("true");
    for layer in with.as_array().unwrap() {
        let std = layer["std"].as_f64().unwrap();
        assert!(
            std > 0.3,
            "with batch norm, layer {} std {std}",
            layer["layer"]
        );
    }
    let without = stats("false");
    let last = without[9]["std"].as_f64().unwrap();
    assert!(last < 1e-3, "without batch norm, layer 10 std {last}");
}

/// Chromium on this machine, if any.
fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Renders `report.html` in headless Chromium: every image must load and the
/// screenshot must not be blank. Skipped without Chromium unless
/// `CIFAR_BURN_REQUIRE_BROWSER` is set (CI sets it and installs Chromium).
#[test]
fn report_renders_in_a_real_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CIFAR_BURN_REQUIRE_BROWSER").is_none(),
            "CIFAR_BURN_REQUIRE_BROWSER is set but no chromium is on PATH"
        );
        eprintln!("skipping the browser test: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    ok(&small_fit(
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        "flex",
        "1",
    ));
    let page = format!("file://{}", out.join("report.html").display());
    let profile = tmp.path().join("profile");
    let browse = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(&browser);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&page);
        let output = cmd.output().expect("chromium runs");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    assert!(
        dom.contains("data-images=\"loaded\""),
        "not every image loaded:\n{}",
        &dom[..dom.len().min(2000)]
    );
    let count: usize = dom
        .split("data-image-count=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(count >= 6, "only {count} images in the page");
    let shot = tmp.path().join("report.png");
    browse(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1100,2400",
    ]);
    let img = image::open(&shot).expect("a screenshot").to_rgb8();
    let inked = img
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    assert!(
        inked > (img.width() * img.height() / 50) as usize,
        "the screenshot is nearly blank ({inked} inked pixels)"
    );
}

#[test]
fn fit_with_lr_find_trains_at_the_suggested_rate() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("run");
    let args = with_lr(
        small_fit(data.to_str().unwrap(), out.to_str().unwrap(), "flex", "1"),
        "find",
    );
    let summary = json(&ok(&args));
    assert_eq!(summary["status"], "finished");
    let found: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lr-find.json")).unwrap()).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["lr"], found["lr"]);
    assert_eq!(found["lr"], found["suggestions"]["valley"]);
    assert!(out.join("lr-find.png").is_file());
    assert!(
        std::fs::read_to_string(out.join("report.html"))
            .unwrap()
            .contains("lr-find.png")
    );
}
