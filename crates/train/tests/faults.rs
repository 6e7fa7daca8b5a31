//! Fault injection: `kill -9` of `train fit` at seeded moments (checkpoint
//! writes included), each followed by a rerun of the same `--resume`
//! command, and a full disk during a checkpoint.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{TRAIN, dataset, json, metric_rows, ok, run, small_fit, stderr};

/// A small xorshift generator: the kill moments depend on the seed alone.
struct Moments(u64);

impl Moments {
    fn next_fraction(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn kill_9_at_20_seeded_moments_then_resume_gives_the_same_run() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    // A checkpoint after nearly every step, so that kills land in checkpoint writes too.
    let often = ["--checkpoint-every", "0.00001"];
    let straight = tmp.path().join("straight");
    let mut args = small_fit(d, straight.to_str().unwrap(), "flex", "4");
    args.extend_from_slice(&often);
    let started = Instant::now();
    let expected = json(&ok(&args));
    let duration = started.elapsed();
    assert_eq!(expected["status"], "finished");

    let killed = tmp.path().join("killed");
    let k = killed.to_str().unwrap();
    // The same command every time, as a job scheduler reruns it.
    let mut args = small_fit(d, k, "flex", "4");
    args.extend_from_slice(&often);
    args.push("--resume");
    // Kill points: after a seeded number of logged steps (0: during start-up)
    // and a seeded delay of up to 4 ms, which often lands in a checkpoint write.
    let total_steps = metric_rows(&straight)
        .iter()
        .filter(|r| r.starts_with("step,"))
        .count();
    let mut moments = Moments(0x5eed_cafe);
    let mut targets: Vec<usize> = (0..20)
        .map(|_| (moments.next_fraction() * total_steps as f64 * 0.95) as usize)
        .collect();
    targets.sort_unstable();
    let steps_logged = || {
        std::fs::read_to_string(killed.join("metrics.csv"))
            .map(|t| t.lines().filter(|l| l.starts_with("step,")).count())
            .unwrap_or(0)
    };
    let (mut kills, mut mid_write) = (0, 0);
    for &target in &targets {
        let mut child = Command::new(TRAIN)
            .args(&args)
            .env_remove("CIFAR10_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while steps_logged() < target && child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < duration * 20 + Duration::from_secs(30),
                "stuck"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_secs_f64(0.004 * moments.next_fraction()));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        // A temporary checkpoint left behind: the kill landed in a write.
        let leftovers = std::fs::read_dir(&killed)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp"))
            })
            .unwrap_or(false);
        mid_write += usize::from(leftovers);
    }
    eprintln!("{kills} kills, {mid_write} of them during a write");
    let last = run(&args);
    assert!(last.status.success(), "{}", stderr(&last));
    let summary = json(&String::from_utf8_lossy(&last.stdout));
    assert!(
        kills >= 18,
        "only {kills} of 20 kills landed before the run ended"
    );
    assert!(mid_write >= 1, "no kill landed in a write");
    assert_eq!(summary["epochs"], expected["epochs"]);
    assert_eq!(summary["val_accuracy"], expected["val_accuracy"]);
    let (a, b) = (metric_rows(&straight), metric_rows(&killed));
    assert_eq!(a.len(), b.len(), "metrics.csv rows");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "after {kills} kills");
    }
    // Nothing half-written is left behind.
    for entry in std::fs::read_dir(&killed).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp") && !name.ends_with(".old"),
            "{name} left behind"
        );
    }
}

/// A disk that fills up during a checkpoint: a clear error naming the file,
/// the previous checkpoint intact, and the run finishes the same once there
/// is room again.
#[cfg(unix)]
#[test]
fn a_full_disk_during_a_checkpoint_keeps_the_previous_one() {
    let (tmp, data) = dataset();
    let d = data.to_str().unwrap();
    let straight = tmp.path().join("straight");
    let expected = json(&ok(&small_fit(d, straight.to_str().unwrap(), "flex", "2")));

    let full = tmp.path().join("full");
    let f = full.to_str().unwrap();
    let mut first = small_fit(d, f, "flex", "2");
    first.extend_from_slice(&["--until-epoch", "1"]);
    ok(&first);
    // Files may not grow past 64 KiB (the model is about 400 KB); SIGXFSZ is
    // ignored so that the write fails with EFBIG instead of killing the process.
    let resume = format!(
        "trap '' XFSZ; ulimit -f 64; exec {TRAIN} fit --data {d} --out {f} --resume --checkpoint-every 0"
    );
    let result = Command::new("sh")
        .args(["-c", &resume])
        .env_remove("CIFAR10_DIR")
        .output()
        .unwrap();
    let err = stderr(&result);
    assert!(!result.status.success(), "the run ignored a full disk");
    assert!(err.contains("cannot write"), "{err}");
    assert!(err.contains("File too large"), "{err}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["epoch"], 1, "the epoch-1 checkpoint was damaged");
    let done = json(&ok(&["fit", "--data", d, "--out", f, "--resume", "--json"]));
    assert_eq!(done["val_accuracy"], expected["val_accuracy"]);
    assert_eq!(metric_rows(&straight), metric_rows(&full));
}
