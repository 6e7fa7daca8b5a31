//! `train search` end to end on generated data: trials, table, best
//! configuration, charts, bad spaces, and a `kill -9` then `--resume`.

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
        "search.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // Stage 2 ran 2 epochs, inside the narrowed ranges, in normal run folders.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("search.json")).unwrap()).unwrap();
    assert_eq!(state["stage_spaces"].as_array().unwrap().len(), 2);
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
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("search.json")).unwrap())
            .unwrap();

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
    let state_file = killed.join("search.json");
    let start = Instant::now();
    while !std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("\"finished\"")) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no trial finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
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
    let resumed: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
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
