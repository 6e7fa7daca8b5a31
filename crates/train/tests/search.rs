//! `train search` end to end on generated data: trials, table, best
//! configuration, charts, bad spaces, a `kill -9` then `--resume`, and two
//! worker processes sharing one search.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{TRAIN, dataset, json, ok, run, stderr};

/// `train search` arguments: an MLP on the generated data, the given space and stages.
fn search_args<'a>(
    data: &'a str,
    out: &'a str,
    stages: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "search",
        "--data",
        data,
        "--out",
        out,
        "--val-size",
        "50",
        "--model",
        "mlp",
        "--preprocess",
        "mean-image",
        "--augment",
        "false",
        "--optimizer",
        "momentum",
        "--batch-size",
        "25",
        "--space",
        "lr=log:1e-3:1e-1",
        "--space",
        "hidden=int-log:8:64",
        "--stages",
        stages,
    ];
    args.extend_from_slice(extra);
    args
}

/// The search in `out`, as `train search --summary --json` prints it.
fn summary(out: &Path) -> Value {
    json(&ok(&[
        "search",
        "--out",
        out.to_str().unwrap(),
        "--summary",
        "--json",
    ]))
}

fn trial_params(state: &Value) -> Vec<(u64, String)> {
    let mut trials: Vec<(u64, String)> = state["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["trial"].as_u64().unwrap(), t["params"].to_string()))
        .collect();
    trials.sort();
    trials
}

#[test]
fn search_runs_stages_and_writes_table_best_config_and_charts() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("search");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let result = json(&ok(&search_args(
        d,
        o,
        "1x4,2x2",
        &["--jobs", "2", "--json"],
    )));
    let trials = result["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    for t in trials {
        assert_eq!(t["status"], "finished", "{t}");
    }
    assert!(result["best"]["val_accuracy"].as_f64().unwrap() > 0.0);
    let csv = std::fs::read_to_string(out.join("trials.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "trial,stage,status,lr,hidden,val_accuracy,epochs,seconds"
    );
    assert_eq!(lines.count(), 6);
    for file in [
        "best.json",
        "search-params.png",
        "search-progress.png",
        "search.db",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // Stage 2 ran 2 epochs, inside the narrowed ranges, in normal run folders.
    assert_eq!(result["stage_spaces"].as_array().unwrap().len(), 2);
    assert!(out.join("trials/005/summary.json").is_file());
    assert!(out.join("trials/005/report.html").is_file());
    assert_eq!(trials[5]["accuracies"].as_array().unwrap().len(), 2);
    // The best configuration trains as it is.
    let best = out.join("best.json");
    let again = tmp.path().join("again");
    ok(&[
        "fit",
        "--data",
        d,
        "--config",
        best.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    // --summary reads the search back without running anything.
    let summary = json(&ok(&["search", "--out", o, "--summary", "--json"]));
    assert_eq!(summary["best"], result["best"]);
}

#[test]
fn a_bad_space_fails_before_any_trial_runs() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("search");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    for (space, expected) in [
        ("dropout=uniform:0:1.5", "train fit rejects dropout=1.5"),
        ("speed=log:1:2", "unknown parameter 'speed'"),
        ("lr=log:0:1", "log ranges need positive bounds"),
        (
            "activation=choice:relu,swish",
            "train fit rejects activation=swish",
        ),
    ] {
        let mut args = search_args(d, o, "1x2", &[]);
        args.extend_from_slice(&["--space", space]);
        let result = run(&args);
        let err = stderr(&result);
        assert!(!result.status.success(), "{space} was accepted");
        assert!(
            err.contains(expected),
            "{space}: expected '{expected}' in:\n{err}"
        );
        assert!(
            err.contains(space),
            "{space}: the error should quote it:\n{err}"
        );
        assert!(!out.join("trials").exists(), "{space}: a trial ran");
    }
}

#[test]
fn kill_9_then_resume_runs_the_same_trials() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    // Uninterrupted.
    let straight = tmp.path().join("straight");
    ok(&search_args(d, straight.to_str().unwrap(), "3x5", &[]));
    let expected = summary(&straight);

    // Killed (SIGKILL) once a trial has finished, then resumed.
    let killed = tmp.path().join("killed");
    let k = killed.to_str().unwrap();
    let mut child = Command::new(TRAIN)
        .args(search_args(d, k, "3x5", &[]))
        .env_remove("CIFAR10_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let table = killed.join("trials.csv");
    let start = Instant::now();
    while !std::fs::read_to_string(&table).is_ok_and(|s| s.contains(",finished,")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no trial finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = summary(&killed);
    let done = partial["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "finished")
        .count();
    assert!(done < 5, "the search finished before it was killed");
    // The orphaned trial notices its search is gone and stops at a
    // checkpoint; the resumed search waits for it.
    ok(&["search", "--out", k, "--data", d, "--resume"]);
    let resumed = summary(&killed);
    assert_eq!(trial_params(&resumed), trial_params(&expected));
    for t in resumed["trials"].as_array().unwrap() {
        assert_eq!(t["status"], "finished", "{t}");
        assert_eq!(t["accuracies"].as_array().unwrap().len(), 3, "{t}");
    }
    assert!(Path::new(&killed.join("trials/004/summary.json")).is_file());
}

#[test]
fn asha_promotes_the_best_third_and_continues_from_checkpoints() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("asha");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    // Rungs at 1 and 3 epochs of 9. Six trials reach rung 1; the best third
    // (two) go on to epoch 3; two at rung 3 promote nobody (floor(2 / 3) = 0).
    let result = json(&ok(&search_args(
        d,
        o,
        "9x6",
        &["--prune", "asha", "--json"],
    )));
    let trials = result["trials"].as_array().unwrap();
    let epochs: Vec<usize> = trials
        .iter()
        .map(|t| t["accuracies"].as_array().unwrap().len())
        .collect();
    assert_eq!(epochs.iter().filter(|&&e| e == 1).count(), 4, "{epochs:?}");
    assert_eq!(epochs.iter().filter(|&&e| e == 3).count(), 2, "{epochs:?}");
    for t in trials {
        assert_eq!(t["status"], "pruned", "{t}");
    }
    // The promoted trials continued their runs: one metrics file, three epoch rows.
    let promoted = trials
        .iter()
        .find(|t| t["accuracies"].as_array().unwrap().len() == 3)
        .unwrap();
    let dir = out.join(format!("trials/{:03}", promoted["trial"].as_u64().unwrap()));
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.starts_with("epoch,")).count(),
        3
    );
    // The best at rung 1 were the ones promoted.
    let mut at_rung: Vec<(f64, usize)> = trials
        .iter()
        .map(|t| {
            (
                t["accuracies"][0].as_f64().unwrap(),
                t["accuracies"].as_array().unwrap().len(),
            )
        })
        .collect();
    at_rung.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(at_rung[0].1 == 3, "{at_rung:?}");
}

#[test]
fn two_workers_share_one_search_and_train_each_trial_once() {
    let (tmp, data) = dataset();
    let out = tmp.path().join("shared");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let spawn = |args: &[&str]| {
        Command::new(TRAIN)
            .args(args)
            .env_remove("CIFAR10_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The first worker creates the search; the second joins it with --resume.
    let first = spawn(&search_args(d, o, "1x8,2x2", &[]));
    let start = Instant::now();
    while !out.join("trials.csv").is_file() {
        assert!(start.elapsed() < Duration::from_secs(60), "no search.db");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = spawn(&["search", "--out", o, "--data", d, "--resume"]);
    let mut logs = Vec::new();
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "a worker failed:\n{log}\n{err}");
        logs.push(log);
    }
    let state = summary(&out);
    let trials = state["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 10);
    for t in trials {
        assert_eq!(t["status"], "finished", "{t}");
    }
    // Every trial was started by exactly one worker, and both worked.
    for t in 0..10 {
        let starts = logs
            .iter()
            .map(|log| log.matches(&format!("trial {t:03} starts")).count())
            .sum::<usize>();
        assert_eq!(starts, 1, "trial {t}:\n{}\n---\n{}", logs[0], logs[1]);
    }
    let workers: std::collections::BTreeSet<&str> = trials
        .iter()
        .map(|t| t["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    // Stage 2 was narrowed once, after all of stage 1, from both workers' trials.
    assert_eq!(state["stage_spaces"].as_array().unwrap().len(), 2);
    for t in &trials[8..] {
        assert_eq!(t["accuracies"].as_array().unwrap().len(), 2, "{t}");
    }
}

/// `--devices` on wgpu (in CI, Mesa's software Vulkan driver): one trial at
/// a time on each listed adapter; skipped where no adapter exists unless
/// `CIFAR_BURN_REQUIRE_WGPU` is set.
#[cfg(feature = "wgpu")]
#[test]
fn devices_place_one_trial_per_adapter_and_a_wrong_one_fails_first() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let out = tmp.path().join("gpu");
    let o = out.to_str().unwrap();
    let wrong = tmp.path().join("wrong");
    let w = wrong.to_str().unwrap();
    let gpu = ["--backend", "wgpu", "--hidden", "8"];

    let mut args = search_args(d, w, "1x2", &gpu);
    args.extend_from_slice(&["--devices", "default,discrete:99"]);
    let result = run(&args);
    let err = stderr(&result);
    assert!(!result.status.success());
    assert!(
        err.contains("--devices discrete:99") || err.contains("--devices default"),
        "{err}"
    );
    assert!(!wrong.join("search.db").exists(), "a search was created");
    if err.contains("--devices default") && std::env::var_os("CIFAR_BURN_REQUIRE_WGPU").is_none() {
        eprintln!("skipping: {err}");
        return;
    }

    let mut args = search_args(d, o, "1x2", &gpu);
    args.extend_from_slice(&["--devices", "default,default", "--json"]);
    let result = json(&ok(&args));
    for t in result["trials"].as_array().unwrap() {
        assert_eq!(t["status"], "finished", "{t}");
        let n = t["trial"].as_u64().unwrap();
        let log = std::fs::read_to_string(out.join(format!("trials/{n:03}/train.log"))).unwrap();
        assert!(log.contains("training on wgpu, adapter default"), "{log}");
    }
}
