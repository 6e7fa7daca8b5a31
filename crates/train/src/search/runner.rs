//! Running a search: stages of trials, each trial a `train fit` in its own
//! process and its own run folder (`DIR/trials/NNN/`), several at once.
//!
//! The state (the space, each stage's ranges, every trial's parameters,
//! status, accuracies and worker) lives in the search's database
//! ([`Store`]), shared by every worker process of the search. The trials'
//! run folders are the ground truth a trial is continued from: one whose
//! `summary.json` is current is recorded as it stopped, one with a
//! checkpoint is continued from it, any other is started again. Trial parameters depend on (seed, trial number)
//! and the stage's ranges alone, so a resumed search runs the same trials.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::prune::{Asha, MedianRule};
use super::space::{Param, Value, draw, narrow};
use super::store::Store;
use crate::callbacks::MetricsLog;
use crate::config::TrainConfig;
use crate::progress::Progress;
use crate::rundir::RunDir;

/// One stage: `trials` trials of `epochs` epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Epochs of each trial.
    pub epochs: usize,
    /// Trials of the stage.
    pub trials: usize,
}

/// Parses `--stages 1x20,5x5` (20 trials of 1 epoch, then 5 of 5 epochs).
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, String> {
    let stages: Result<Vec<Stage>, String> = text
        .split(',')
        .map(|part| {
            let (e, t) = part.trim().split_once('x').ok_or_else(|| {
                format!("--stages '{text}': '{part}' is not EPOCHSxTRIALS, such as 1x20")
            })?;
            let epochs: usize = e
                .parse()
                .map_err(|_| format!("--stages '{text}': '{e}' is not a number of epochs"))?;
            let trials: usize = t
                .parse()
                .map_err(|_| format!("--stages '{text}': '{t}' is not a number of trials"))?;
            if epochs == 0 || trials == 0 {
                return Err(format!(
                    "--stages '{text}': '{part}' needs at least 1 epoch and 1 trial"
                ));
            }
            Ok(Stage { epochs, trials })
        })
        .collect();
    stages
}

/// When trials stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Every trial runs its epochs (divergence still stops it).
    None,
    /// Stop a trial below the median of earlier trials at the same epoch.
    Median,
    /// Asynchronous successive halving over epochs (reduction factor 3).
    Asha,
}

impl Prune {
    /// The names of the pruning rules.
    pub const NAMES: cifar_spelling::Names<Prune> = cifar_spelling::Names {
        what: "--prune rule",
        table: &[
            ("none", Prune::None),
            ("median", Prune::Median),
            ("asha", Prune::Asha),
        ],
    };
}

cifar_spelling::named_text!(Prune);

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialStatus {
    /// Not started.
    Queued,
    /// A process is training it.
    Running,
    /// Waiting at an ASHA rung for a promotion.
    Paused,
    /// Trained every epoch.
    Finished,
    /// Its loss diverged (NaN, or above 3x its initial value).
    Diverged,
    /// Stopped by the pruning rule.
    Pruned,
    /// Its process failed for another reason (see `error`).
    Failed,
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// 0-based trial number over the whole search.
    pub trial: usize,
    /// 0-based stage.
    pub stage: usize,
    /// The drawn values, by option name.
    pub params: Vec<(String, Value)>,
    /// Where it stands.
    pub status: TrialStatus,
    /// Validation accuracy after each epoch.
    pub accuracies: Vec<f64>,
    /// Seconds of training.
    pub seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// The worker that trains it (or trained it last): `host:pid`.
    #[serde(default)]
    pub worker: Option<String>,
    /// When that worker last said it was alive (seconds since 1970).
    #[serde(default)]
    pub heartbeat: Option<f64>,
}

impl Trial {
    /// The best validation accuracy reached.
    pub fn best(&self) -> Option<f64> {
        self.accuracies
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .reduce(f64::max)
    }

    /// Whether the trial is over (finished, diverged, pruned or failed).
    pub fn is_done(&self) -> bool {
        !matches!(
            self.status,
            TrialStatus::Queued | TrialStatus::Running | TrialStatus::Paused
        )
    }
}

/// The whole search, as its database ([`Store`]) keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    /// The configuration every trial starts from.
    pub base: TrainConfig,
    /// The space as given.
    pub space: Vec<Param>,
    /// The stages.
    pub stages: Vec<Stage>,
    /// The seed of every draw.
    pub seed: u64,
    /// When trials stop early.
    pub prune: Prune,
    /// The ranges of each stage started so far (the first is `space`).
    pub stage_spaces: Vec<Vec<Param>>,
    /// Every trial started so far.
    pub trials: Vec<Trial>,
}

impl SearchState {
    /// `trials.csv`: one row per trial.
    pub fn csv(&self) -> String {
        let names: Vec<&str> = self.space.iter().map(|p| p.name.as_str()).collect();
        let mut out = format!(
            "trial,stage,status,{},val_accuracy,epochs,seconds\n",
            names.join(",")
        );
        for t in &self.trials {
            let values: Vec<String> = names
                .iter()
                .map(|n| {
                    t.params
                        .iter()
                        .find(|(name, _)| name == n)
                        .map(|(_, v)| v.to_string())
                        .unwrap_or_default()
                })
                .collect();
            out.push_str(&format!(
                "{},{},{},{},{},{},{:.1}\n",
                t.trial,
                t.stage + 1,
                t.status,
                values.join(","),
                t.best().map(|a| format!("{a:.4}")).unwrap_or_default(),
                t.accuracies.len(),
                t.seconds
            ));
        }
        out
    }

    /// Trials ranked by best accuracy (those without one last).
    pub fn ranked(&self) -> Vec<&Trial> {
        let mut ranked: Vec<&Trial> = self.trials.iter().collect();
        ranked.sort_by(|a, b| {
            b.best()
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.best().unwrap_or(f64::NEG_INFINITY))
        });
        ranked
    }
}

/// Builds a trial's config from the base, the drawn values and the epochs.
pub type MakeConfig<'a> =
    dyn Fn(&TrainConfig, &[(String, Value)], usize) -> Result<TrainConfig> + 'a;

/// Builds the command that trains a run folder: (folder, resume, until
/// epoch, job slot in `0..jobs`).
pub type Launch<'a> = dyn Fn(&Path, bool, Option<usize>, usize) -> Command + 'a;

/// What a search needs from its caller.
pub struct SearchRun<'a> {
    /// The search folder.
    pub dir: PathBuf,
    /// Trials at once in this worker.
    pub jobs: usize,
    /// Where progress goes.
    pub progress: Progress,
    /// The full config of a trial: the base with these values and epochs
    /// (fails when `train fit` would reject them).
    pub make_config: &'a MakeConfig<'a>,
    /// The command that trains a run folder (`train fit --config FILE --out
    /// DIR`, or `--resume`), up to an epoch (`--until-epoch`) when given.
    pub launch: &'a Launch<'a>,
}

struct Running {
    index: usize,
    trial: usize,
    /// Epochs of it recorded in the store so far.
    recorded: usize,
    /// The job slot it occupies (0..jobs; with `--devices`, its device).
    slot: usize,
    child: Child,
    dir: PathBuf,
    started: Instant,
    pruned: bool,
}

/// The file a trial's process keeps in its run folder while it trains,
/// holding its process id.
pub const TRAINING_MARKER: &str = "training.pid";

/// A worker that does not renew its trials' heartbeats for this long is
/// taken for dead, and its trials go back to the queue.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a worker renews the heartbeats of its trials.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Seconds since 1970.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One process working on a search: `host:pid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    host: String,
    pid: u32,
}

impl Worker {
    /// This process.
    pub fn this() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && !h.contains(':'))
            .unwrap_or_else(|| "localhost".into());
        Self {
            host,
            pid: std::process::id(),
        }
    }

    /// How the database names it.
    pub fn id(&self) -> String {
        format!("{}:{}", self.host, self.pid)
    }

    /// Whether the worker `id`, last heard of at `heartbeat`, still works:
    /// on this host, whether its process exists; elsewhere, whether its
    /// heartbeat is recent.
    pub fn sees_alive(&self, id: Option<&str>, heartbeat: Option<f64>, now: f64) -> bool {
        let Some((host, pid)) = id.and_then(|id| id.rsplit_once(':')) else {
            return false;
        };
        if host == self.host && Path::new("/proc/self").exists() {
            return pid == self.pid.to_string() || Path::new("/proc").join(pid).exists();
        }
        heartbeat.is_some_and(|beat| now - beat < HEARTBEAT_TIMEOUT.as_secs_f64())
    }
}

/// Waits (up to a minute) until no process trains in `run`: after a
/// `kill -9` of the search, its orphaned trials write a checkpoint and stop
/// on their own; continuing a trial before that would mix two runs.
fn wait_for_orphan(run: &Path, progress: Progress) {
    let marker = run.join(TRAINING_MARKER);
    let Ok(pid) = std::fs::read_to_string(&marker) else {
        return;
    };
    let alive = || Path::new("/proc").join(pid.trim()).exists() && marker.exists();
    if !Path::new("/proc/self").exists() || !alive() {
        return;
    }
    progress.line(&format!(
        "waiting for process {} (an earlier run of this trial) to stop",
        pid.trim()
    ));
    let start = Instant::now();
    while alive() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The folder of trial `t`.
pub fn trial_dir(dir: &Path, t: usize) -> PathBuf {
    dir.join("trials").join(format!("{t:03}"))
}

/// Validation accuracies of the epochs a run folder has finished, from its `metrics.csv`.
fn epoch_accuracies(run: &Path) -> Vec<f64> {
    RunDir::open(run)
        .and_then(|run| MetricsLog::read(&run))
        .map(|m| m.epochs().iter().map(|(_, e)| e.val_accuracy).collect())
        .unwrap_or_default()
}

/// The status a stopped process left in its run folder, with its seconds;
/// `None` while it trains, and when the summary is older than its last
/// epoch (a paused trial that was continued).
fn outcome(run: &Path) -> Option<(TrialStatus, f64)> {
    let text = std::fs::read_to_string(run.join("summary.json")).ok()?;
    let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
    let status = match summary["status"].as_str()? {
        "finished" => TrialStatus::Finished,
        "diverged" => TrialStatus::Diverged,
        "paused" => TrialStatus::Paused,
        _ => return None,
    };
    let epochs = summary["epochs"].as_u64()? as usize;
    if status != TrialStatus::Diverged && epochs != epoch_accuracies(run).len() {
        return None;
    }
    Some((status, summary["seconds"].as_f64().unwrap_or(0.0)))
}

fn describe(params: &[(String, Value)]) -> String {
    params
        .iter()
        .map(|(n, v)| format!("{n}={}", v.short()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A trial a worker takes: its index in the state, the epoch it trains up
/// to, and its status before (paused: a promotion).
struct Claim {
    index: usize,
    target: usize,
    was: TrialStatus,
}

/// The trial this worker trains next in stage `s`, marked running under
/// its name: trials of dead workers go back to the queue first; then an
/// ASHA promotion comes before a queued trial (lowest number first).
fn claim(
    st: &mut SearchState,
    s: usize,
    asha: Option<&Asha>,
    worker: &Worker,
    now: f64,
) -> Option<Claim> {
    requeue_abandoned(st, s, worker, now);
    let epochs = st.stages[s].epochs;
    let job = asha.and_then(|a| promotion(a, st, s)).or_else(|| {
        let i = st
            .trials
            .iter()
            .position(|t| t.stage == s && t.status == TrialStatus::Queued)?;
        // A trial continued after a crash trains to the rung it was headed for.
        let done = st.trials[i].accuracies.len();
        Some((i, asha.map_or(epochs, |a| a.next_rung(done))))
    })?;
    let (index, target) = job;
    let trial = &mut st.trials[index];
    let was = trial.status;
    trial.status = TrialStatus::Running;
    trial.worker = Some(worker.id());
    trial.heartbeat = Some(now);
    Some(Claim { index, target, was })
}

/// Running trials of stage `s` whose worker is gone go back to the queue.
fn requeue_abandoned(st: &mut SearchState, s: usize, worker: &Worker, now: f64) {
    for t in st.trials.iter_mut() {
        if t.stage == s
            && t.status == TrialStatus::Running
            && !worker.sees_alive(t.worker.as_deref(), t.heartbeat, now)
        {
            t.status = TrialStatus::Queued;
        }
    }
}

/// Records a trial's new epochs, and its end once its process exits.
fn record_epochs(trial: &mut Trial, accuracies: Vec<f64>, worker: &Worker) {
    trial.accuracies = accuracies;
    trial.worker = Some(worker.id());
    trial.heartbeat = Some(now());
}

/// Runs (or resumes, or joins as one more worker) the search in `store`.
///
/// Several workers may run the same search at once (each `train search
/// --resume` on the folder is one): each claims trials in a transaction,
/// renews their heartbeats while they train, and waits at the end of a
/// stage until every worker's trials of that stage are over, so the next
/// stage's ranges are narrowed once, from all of them.
pub fn run_search(run: &SearchRun<'_>, store: &mut Store) -> Result<SearchState> {
    std::fs::create_dir_all(run.dir.join("trials"))
        .with_context(|| format!("cannot create {}", run.dir.display()))?;
    let worker = Worker::this();
    let median = MedianRule::default();
    let setup = store.state()?;
    let base = setup.base.clone();
    let mut first = 0;
    for (s, stage) in setup.stages.iter().enumerate() {
        let numbers = first..first + stage.trials;
        first += stage.trials;
        if s > 0 {
            wait_for_stage(store, s - 1, &worker, run.progress)?;
        }
        // The stage's ranges (narrowed once, by the first worker here) and its trials.
        let narrowed = store.update(|st| {
            let mut narrowed = None;
            if st.stage_spaces.len() <= s {
                let previous: Vec<(Vec<(String, Value)>, f64)> = st
                    .trials
                    .iter()
                    .filter(|t| t.stage + 1 == s)
                    .filter_map(|t| Some((t.params.clone(), t.best()?)))
                    .collect();
                let space = narrow(&st.stage_spaces[s - 1], &previous, 0.25, 0.1);
                narrowed = Some(space.clone());
                st.stage_spaces.push(space);
            }
            for t in numbers.clone() {
                if st.trials.iter().all(|x| x.trial != t) {
                    let params = draw(&st.stage_spaces[s], st.seed, t as u64);
                    st.trials.push(Trial {
                        trial: t,
                        stage: s,
                        params,
                        status: TrialStatus::Queued,
                        accuracies: Vec::new(),
                        seconds: 0.0,
                        error: None,
                        worker: None,
                        heartbeat: None,
                    });
                }
            }
            Ok(narrowed)
        })?;
        if let Some(space) = narrowed {
            run.progress.line(&format!(
                "stage {}: ranges narrowed around the best quarter of stage {s}: {}",
                s + 1,
                space
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        run.progress.line(&format!(
            "stage {} of {}: {} trials of {} epoch{}",
            s + 1,
            setup.stages.len(),
            stage.trials,
            stage.epochs,
            if stage.epochs == 1 { "" } else { "s" }
        ));
        run_stage(run, store, s, &base, &worker, &median)?;
    }
    store.state()
}

/// Waits until every trial of stage `s` is over (other workers may still
/// train some), then marks the trials left waiting at an ASHA rung pruned.
fn wait_for_stage(store: &mut Store, s: usize, worker: &Worker, progress: Progress) -> Result<()> {
    let mut said = false;
    loop {
        let over = store.update(|st| {
            requeue_abandoned(st, s, worker, now());
            let asha = (st.prune == Prune::Asha).then(|| Asha::new(st.stages[s].epochs));
            let busy = st.trials.iter().any(|t| {
                t.stage == s && matches!(t.status, TrialStatus::Running | TrialStatus::Queued)
            });
            if busy || asha.is_some_and(|a| promotion(&a, st, s).is_some()) {
                return Ok(false);
            }
            // Trials still waiting at a rung were never promoted: ASHA stopped them.
            for t in st.trials.iter_mut().filter(|t| t.stage == s) {
                if t.status == TrialStatus::Paused {
                    t.status = TrialStatus::Pruned;
                }
            }
            Ok(true)
        })?;
        if over {
            return Ok(());
        }
        if !said {
            progress.line(&format!(
                "waiting for other workers to finish stage {}",
                s + 1
            ));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// This worker's share of stage `s`: claims and trains trials, `run.jobs`
/// at once, until no trial of the stage is left to claim.
fn run_stage(
    run: &SearchRun<'_>,
    store: &mut Store,
    s: usize,
    base: &TrainConfig,
    worker: &Worker,
    median: &MedianRule,
) -> Result<()> {
    let setup = store.state()?;
    let stage = setup.stages[s];
    let asha = (setup.prune == Prune::Asha).then(|| Asha::new(stage.epochs));
    let mut running: Vec<Running> = Vec::new();
    let mut beat = Instant::now();
    loop {
        while running.len() < run.jobs.max(1) {
            let Some((job, trial)) = store.update(|st| {
                Ok(claim(st, s, asha.as_ref(), worker, now()).map(|job| {
                    let trial = st.trials[job.index].clone();
                    (job, trial)
                }))
            })?
            else {
                break;
            };
            let dir = trial_dir(&run.dir, trial.trial);
            std::fs::create_dir_all(&dir)?;
            wait_for_orphan(&dir, run.progress);
            // Stopped on its own before its worker was: record it, do not rerun it.
            if job.was != TrialStatus::Paused
                && let Some((status, seconds)) = outcome(&dir)
            {
                store.update(|st| {
                    let t = &mut st.trials[job.index];
                    t.status = status;
                    t.seconds = seconds;
                    t.accuracies = epoch_accuracies(&dir);
                    Ok(())
                })?;
                continue;
            }
            let resume = RunDir::open(&dir).is_ok_and(|r| r.checkpoint_dir().is_some());
            if !resume {
                let config =
                    (run.make_config)(base, &trial.params, stage.epochs).with_context(|| {
                        format!("trial {} ({})", trial.trial, describe(&trial.params))
                    })?;
                crate::rundir::write_atomic(
                    &dir.join("config.json"),
                    serde_json::to_string_pretty(&config)?.as_bytes(),
                )?;
            }
            let slot = (0..run.jobs.max(1))
                .find(|k| running.iter().all(|r| r.slot != *k))
                .unwrap_or(0);
            let until = (job.target < stage.epochs).then_some(job.target);
            let log = std::fs::File::create(dir.join("train.log"))?;
            let child = (run.launch)(&dir, resume, until, slot)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .context("cannot start a trial process")?;
            // The trial removes this when it stops.
            std::fs::write(dir.join(TRAINING_MARKER), child.id().to_string())?;
            let verb = match (job.was, resume) {
                (TrialStatus::Paused, _) => "is promoted",
                (_, true) => "resumes",
                _ => "starts",
            };
            run.progress.line(&format!(
                "trial {:03} {verb}{}: {}",
                trial.trial,
                until
                    .map(|u| format!(" (to epoch {u})"))
                    .unwrap_or_default(),
                describe(&trial.params)
            ));
            running.push(Running {
                index: job.index,
                trial: trial.trial,
                recorded: trial.accuracies.len(),
                slot,
                child,
                dir,
                started: Instant::now(),
                pruned: false,
            });
        }
        if running.is_empty() {
            // Nothing left to claim here; other workers may still promote
            // or continue trials of this stage.
            return wait_for_stage(store, s, worker, run.progress);
        }
        std::thread::sleep(Duration::from_millis(100));
        if beat.elapsed() > HEARTBEAT_EVERY {
            let mine: Vec<usize> = running.iter().map(|r| r.index).collect();
            store.update(|st| {
                for &i in &mine {
                    st.trials[i].heartbeat = Some(now());
                }
                Ok(())
            })?;
            beat = Instant::now();
        }
        let mut k = 0;
        while k < running.len() {
            let r = &mut running[k];
            let accuracies = epoch_accuracies(&r.dir);
            let i = r.index;
            if accuracies.len() > r.recorded {
                r.recorded = accuracies.len();
                let epoch = accuracies.len();
                let acc = accuracies[epoch - 1];
                let prune_it = store.update(|st| {
                    let best = st.trials.iter().filter_map(Trial::best).fold(acc, f64::max);
                    let earlier: Vec<Vec<f64>> = st
                        .trials
                        .iter()
                        .filter(|t| t.stage == s && t.trial < r.trial)
                        .map(|t| t.accuracies.clone())
                        .collect();
                    record_epochs(&mut st.trials[i], accuracies, worker);
                    let prune_it = st.prune == Prune::Median
                        && epoch < stage.epochs
                        && !r.pruned
                        && median.prunes(&earlier, epoch, acc);
                    Ok((prune_it, best))
                })?;
                run.progress.line(&format!(
                    "trial {:03} epoch {epoch}/{}: val acc {acc:.4} (best of the search {:.4})",
                    r.trial, stage.epochs, prune_it.1
                ));
                if prune_it.0 {
                    // Ctrl-C: the trial writes a checkpoint and stops.
                    let _ = Command::new("kill")
                        .args(["-INT", &r.child.id().to_string()])
                        .status();
                    r.pruned = true;
                    run.progress.line(&format!(
                        "trial {:03} pruned after epoch {epoch}: below the median of earlier trials",
                        r.trial
                    ));
                }
            }
            let Some(exit) = r.child.try_wait()? else {
                k += 1;
                continue;
            };
            let r = running.swap_remove(k);
            let trial = store.update(|st| {
                let trial = &mut st.trials[r.index];
                record_epochs(trial, epoch_accuracies(&r.dir), worker);
                match (outcome(&r.dir), r.pruned) {
                    (_, true) => trial.status = TrialStatus::Pruned,
                    (Some((status, seconds)), false) => {
                        trial.status = status;
                        trial.seconds = seconds;
                    }
                    (None, false) => {
                        let log =
                            std::fs::read_to_string(r.dir.join("train.log")).unwrap_or_default();
                        let last = log
                            .lines()
                            .rev()
                            .find(|l| l.starts_with("error:"))
                            .unwrap_or("no error message")
                            .to_string();
                        trial.status = TrialStatus::Failed;
                        trial.error = Some(format!("{exit}: {last}"));
                    }
                }
                if trial.seconds == 0.0 {
                    trial.seconds = r.started.elapsed().as_secs_f64();
                }
                Ok(trial.clone())
            })?;
            run.progress.line(&format!(
                "trial {:03} {}: best val acc {}{}",
                trial.trial,
                trial.status,
                trial
                    .best()
                    .map(|a| format!("{a:.4}"))
                    .unwrap_or_else(|| "-".into()),
                trial
                    .error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
}

/// The next ASHA promotion of stage `s`: a waiting trial among the best
/// third at its rung, with the epoch it continues to.
fn promotion(asha: &Asha, st: &SearchState, s: usize) -> Option<(usize, usize)> {
    for &rung in asha.rungs().iter().rev() {
        let mut reached = Vec::new();
        let mut promoted = Vec::new();
        for (i, t) in st.trials.iter().enumerate() {
            if t.stage != s || t.accuracies.len() < rung {
                continue;
            }
            reached.push((i, t.accuracies[rung - 1]));
            // Running, or past the rung, or over: not waiting for a promotion.
            if t.accuracies.len() > rung || t.status != TrialStatus::Paused {
                promoted.push(i);
            }
        }
        if let Some(&i) = asha.promotable(&reached, &promoted).first() {
            return Some((i, asha.next_rung(rung)));
        }
    }
    None
}

/// Writes the best trial's config to `dir/best.json`, ready for `train fit --config`.
pub fn write_best(state: &SearchState, dir: &Path) -> Result<Option<(PathBuf, usize)>> {
    let Some(best) = state.ranked().into_iter().find(|t| t.best().is_some()) else {
        return Ok(None);
    };
    let source = trial_dir(dir, best.trial).join("config.json");
    let config =
        std::fs::read(&source).with_context(|| format!("cannot read {}", source.display()))?;
    let path = dir.join("best.json");
    crate::rundir::write_atomic(&path, &config)?;
    Ok(Some((path, best.trial)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_fail_with_the_text() {
        assert_eq!(
            parse_stages("1x20,5x5").unwrap(),
            [
                Stage {
                    epochs: 1,
                    trials: 20
                },
                Stage {
                    epochs: 5,
                    trials: 5
                }
            ]
        );
        for (text, expected) in [
            ("20", "is not EPOCHSxTRIALS"),
            ("ax2", "'a' is not a number of epochs"),
            ("1x", "'' is not a number of trials"),
            ("0x5", "at least 1 epoch"),
        ] {
            let err = parse_stages(text).unwrap_err();
            assert!(
                err.contains(expected) && err.contains(text),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn csv_has_a_column_per_parameter_named_as_its_flag() {
        let state = SearchState {
            base: TrainConfig::default(),
            space: vec![
                "lr=log:1e-4:1".parse().unwrap(),
                "hidden=int:10:100".parse().unwrap(),
            ],
            stages: vec![Stage {
                epochs: 1,
                trials: 1,
            }],
            seed: 0,
            prune: Prune::None,
            stage_spaces: Vec::new(),
            trials: vec![Trial {
                trial: 0,
                stage: 0,
                params: vec![
                    ("lr".into(), Value::Float(0.01)),
                    ("hidden".into(), Value::Int(50)),
                ],
                status: TrialStatus::Finished,
                accuracies: vec![0.3, 0.45],
                seconds: 2.0,
                error: None,
                worker: None,
                heartbeat: None,
            }],
        };
        assert_eq!(
            state.csv(),
            "trial,stage,status,lr,hidden,val_accuracy,epochs,seconds\n0,1,finished,1e-2,50,0.4500,2,2.0\n"
        );
    }

    fn asha_state(trials: Vec<Trial>) -> SearchState {
        SearchState {
            base: TrainConfig::default(),
            space: vec!["lr=log:1e-4:1".parse().unwrap()],
            stages: vec![Stage {
                epochs: 9,
                trials: 2,
            }],
            seed: 0,
            prune: Prune::Asha,
            stage_spaces: Vec::new(),
            trials,
        }
    }

    fn trial(n: usize, status: TrialStatus, accuracies: Vec<f64>) -> Trial {
        Trial {
            trial: n,
            stage: 0,
            params: Vec::new(),
            status,
            accuracies,
            seconds: 0.0,
            error: None,
            worker: None,
            heartbeat: None,
        }
    }

    #[test]
    fn a_dead_workers_trial_is_claimed_again_up_to_the_rung_it_was_headed_for() {
        let me = Worker::this();
        let asha = Asha::new(9);
        // Trial 0 was promoted past rung 1 (heading for rung 3) by a worker
        // on another host that has been silent for two minutes.
        let mut running = trial(0, TrialStatus::Running, vec![0.5, 0.55]);
        running.worker = Some("elsewhere:42".into());
        running.heartbeat = Some(1000.0);
        let mut st = asha_state(vec![running, trial(1, TrialStatus::Queued, Vec::new())]);
        let job = claim(&mut st, 0, Some(&asha), &me, 1120.0).unwrap();
        assert_eq!(
            (job.index, job.target, job.was),
            (0, 3, TrialStatus::Queued)
        );
        assert_eq!(st.trials[0].worker, Some(me.id()));
        assert_eq!(st.trials[0].status, TrialStatus::Running);

        // Heard from 10 seconds ago: still its worker's; the queued trial
        // starts instead, up to the first rung.
        let mut running = trial(0, TrialStatus::Running, vec![0.5, 0.55]);
        running.worker = Some("elsewhere:42".into());
        running.heartbeat = Some(1110.0);
        let mut st = asha_state(vec![running, trial(1, TrialStatus::Queued, Vec::new())]);
        let job = claim(&mut st, 0, Some(&asha), &me, 1120.0).unwrap();
        assert_eq!((job.index, job.target), (1, 1));
        assert_eq!(st.trials[0].worker.as_deref(), Some("elsewhere:42"));
        assert!(claim(&mut st, 0, Some(&asha), &me, 1120.0).is_none());
    }

    #[test]
    fn a_promotion_comes_before_a_queued_trial() {
        let me = Worker::this();
        let asha = Asha::new(9);
        // Three trials reached rung 1: the best (0.6) is promoted to rung 3.
        let mut st = asha_state(vec![
            trial(0, TrialStatus::Paused, vec![0.4]),
            trial(1, TrialStatus::Paused, vec![0.6]),
            trial(2, TrialStatus::Paused, vec![0.5]),
            trial(3, TrialStatus::Queued, Vec::new()),
        ]);
        let job = claim(&mut st, 0, Some(&asha), &me, 0.0).unwrap();
        assert_eq!(
            (job.index, job.target, job.was),
            (1, 3, TrialStatus::Paused)
        );
        let next = claim(&mut st, 0, Some(&asha), &me, 0.0).unwrap();
        assert_eq!((next.index, next.target), (3, 1));
    }
}
