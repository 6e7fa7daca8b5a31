//! Running a search: stages of trials, each trial a `train fit` in its own
//! process and its own run folder (`DIR/trials/NNN/`), several at once.
//!
//! The search folder's `search.json` is the state (the space, each stage's
//! ranges, every trial's parameters, status and accuracies), written
//! atomically by this process alone; the trials' run folders are the ground
//! truth it is rebuilt from on `--resume`: a trial with a finished
//! `summary.json` is kept, one with a checkpoint is continued from it, any
//! other is started again. Trial parameters depend on (seed, trial number)
//! and the stage's ranges alone, so a resumed search runs the same trials.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::prune::{Asha, MedianRule};
use super::space::{Param, Value, draw, narrow};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prune {
    /// Every trial runs its epochs (divergence still stops it).
    None,
    /// Stop a trial below the median of earlier trials at the same epoch.
    Median,
    /// Asynchronous successive halving over epochs (reduction factor 3).
    Asha,
}

impl FromStr for Prune {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Prune::None),
            "median" => Ok(Prune::Median),
            "asha" => Ok(Prune::Asha),
            _ => Err(format!(
                "unknown --prune '{s}': expected none, median or asha"
            )),
        }
    }
}

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

/// The whole search, as `search.json` keeps it.
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
    /// The ranges of each stage started so far (the first is `space`).
    pub stage_spaces: Vec<Vec<Param>>,
    /// Every trial started so far.
    pub trials: Vec<Trial>,
}

impl SearchState {
    /// The file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("search.json")
    }

    /// Reads `dir/search.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is {} the --out folder of a train search?",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }

    /// Writes `dir/search.json` and `dir/trials.csv`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::rundir::write_atomic(
            &Self::path(dir),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        crate::rundir::write_atomic(&dir.join("trials.csv"), self.csv().as_bytes())
    }

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

/// Builds the command that trains a run folder: (folder, resume, until epoch).
pub type Launch<'a> = dyn Fn(&Path, bool, Option<usize>) -> Command + 'a;

/// What a search needs from its caller.
pub struct SearchRun<'a> {
    /// The search folder.
    pub dir: PathBuf,
    /// Trials at once.
    pub jobs: usize,
    /// The pruning rule.
    pub prune: Prune,
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
    /// The epoch it trains up to.
    target: usize,
    child: Child,
    dir: PathBuf,
    started: Instant,
    pruned: bool,
}

/// The file a trial's process keeps in its run folder while it trains,
/// holding its process id.
pub const TRAINING_MARKER: &str = "training.pid";

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

/// The status a finished process left in its run folder.
fn outcome(run: &Path) -> Option<(TrialStatus, f64)> {
    let text = std::fs::read_to_string(run.join("summary.json")).ok()?;
    let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
    let status = match summary["status"].as_str()? {
        "finished" => TrialStatus::Finished,
        "diverged" => TrialStatus::Diverged,
        "paused" => TrialStatus::Paused,
        _ => return None,
    };
    Some((status, summary["seconds"].as_f64().unwrap_or(0.0)))
}

fn describe(params: &[(String, Value)]) -> String {
    params
        .iter()
        .map(|(n, v)| format!("{n}={}", v.short()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs (or resumes) the search in `run.dir` with `state` (fresh or loaded).
pub fn run_search(run: &SearchRun<'_>, mut state: SearchState) -> Result<SearchState> {
    std::fs::create_dir_all(run.dir.join("trials"))
        .with_context(|| format!("cannot create {}", run.dir.display()))?;
    let median = MedianRule::default();
    let base = state.base.clone();
    let mut first = 0;
    for (s, stage) in state.stages.clone().iter().enumerate() {
        if state.stage_spaces.len() <= s {
            let previous: Vec<(Vec<(String, Value)>, f64)> = state
                .trials
                .iter()
                .filter(|t| t.stage + 1 == s)
                .filter_map(|t| Some((t.params.clone(), t.best()?)))
                .collect();
            let narrowed = narrow(&state.stage_spaces[s - 1], &previous, 0.25, 0.1);
            run.progress.line(&format!(
                "stage {}: ranges narrowed around the best quarter of stage {}: {}",
                s + 1,
                s,
                narrowed
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            state.stage_spaces.push(narrowed);
            state.save(&run.dir)?;
        }
        let space = state.stage_spaces[s].clone();
        run.progress.line(&format!(
            "stage {} of {}: {} trials of {} epoch{}",
            s + 1,
            state.stages.len(),
            stage.trials,
            stage.epochs,
            if stage.epochs == 1 { "" } else { "s" }
        ));
        let numbers: Vec<usize> = (first..first + stage.trials).collect();
        first += stage.trials;
        // Record every trial of the stage (drawn from seed and number alone).
        for &t in &numbers {
            if state.trials.iter().all(|x| x.trial != t) {
                state.trials.push(Trial {
                    trial: t,
                    stage: s,
                    params: draw(&space, state.seed, t as u64),
                    status: TrialStatus::Queued,
                    accuracies: Vec::new(),
                    seconds: 0.0,
                    error: None,
                });
            }
        }
        let mut queue: Vec<usize> = numbers
            .iter()
            .filter_map(|&t| state.trials.iter().position(|x| x.trial == t))
            .filter(|&i| state.trials[i].status != TrialStatus::Paused)
            .filter(|&i| !state.trials[i].is_done())
            .collect();
        queue.reverse();
        let asha = (run.prune == Prune::Asha).then(|| Asha::new(stage.epochs));
        let first_target = asha
            .as_ref()
            .and_then(|a| a.rungs().first().copied())
            .unwrap_or(stage.epochs);
        let mut running: Vec<Running> = Vec::new();
        loop {
            while running.len() < run.jobs.max(1) {
                // ASHA promotes a waiting trial before it starts a new one.
                let job = asha
                    .as_ref()
                    .and_then(|a| promotion(a, &state, s, &running))
                    .or_else(|| queue.pop().map(|i| (i, first_target)));
                let Some((i, target)) = job else { break };
                let trial = &mut state.trials[i];
                let dir = trial_dir(&run.dir, trial.trial);
                std::fs::create_dir_all(&dir)?;
                wait_for_orphan(&dir, run.progress);
                // Finished before the search was stopped: record it, do not rerun it.
                if trial.status != TrialStatus::Paused
                    && let Some((status, seconds)) = outcome(&dir)
                {
                    trial.status = status;
                    trial.seconds = seconds;
                    trial.accuracies = epoch_accuracies(&dir);
                    state.save(&run.dir)?;
                    continue;
                }
                let resume = dir.join("checkpoint").join("state.json").is_file()
                    || dir.join("checkpoint.old").join("state.json").is_file();
                if !resume {
                    let config = (run.make_config)(&base, &trial.params, stage.epochs)
                        .with_context(|| {
                            format!("trial {} ({})", trial.trial, describe(&trial.params))
                        })?;
                    crate::rundir::write_atomic(
                        &dir.join("config.json"),
                        serde_json::to_string_pretty(&config)?.as_bytes(),
                    )?;
                }
                let until = (target < stage.epochs).then_some(target);
                let log = std::fs::File::create(dir.join("train.log"))?;
                let child = (run.launch)(&dir, resume, until)
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(log))
                    .spawn()
                    .context("cannot start a trial process")?;
                // The trial removes this when it stops.
                std::fs::write(dir.join(TRAINING_MARKER), child.id().to_string())?;
                let verb = match (trial.status, resume) {
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
                trial.status = TrialStatus::Running;
                running.push(Running {
                    index: i,
                    target,
                    child,
                    dir,
                    started: Instant::now(),
                    pruned: false,
                });
                state.save(&run.dir)?;
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut k = 0;
            while k < running.len() {
                let r = &mut running[k];
                let accuracies = epoch_accuracies(&r.dir);
                let i = r.index;
                if accuracies.len() > state.trials[i].accuracies.len() {
                    let epoch = accuracies.len();
                    let acc = accuracies[epoch - 1];
                    let best = state
                        .trials
                        .iter()
                        .filter_map(Trial::best)
                        .fold(acc, f64::max);
                    run.progress.line(&format!(
                        "trial {:03} epoch {epoch}/{}: val acc {acc:.4} (best of the search {best:.4})",
                        state.trials[i].trial, stage.epochs
                    ));
                    if run.prune == Prune::Median && epoch < stage.epochs && !r.pruned {
                        let earlier: Vec<Vec<f64>> = state
                            .trials
                            .iter()
                            .filter(|t| t.stage == s && t.trial != state.trials[i].trial)
                            .filter(|t| t.trial < state.trials[i].trial)
                            .map(|t| t.accuracies.clone())
                            .collect();
                        if median.prunes(&earlier, epoch, acc) {
                            // Ctrl-C: the trial writes a checkpoint and stops.
                            let _ = Command::new("kill")
                                .args(["-INT", &r.child.id().to_string()])
                                .status();
                            r.pruned = true;
                            run.progress.line(&format!(
                                "trial {:03} pruned after epoch {epoch}: below the median of earlier trials",
                                state.trials[i].trial
                            ));
                        }
                    }
                    state.trials[i].accuracies = accuracies;
                    state.save(&run.dir)?;
                }
                match r.child.try_wait()? {
                    None => k += 1,
                    Some(exit) => {
                        let r = running.swap_remove(k);
                        let trial = &mut state.trials[r.index];
                        trial.accuracies = epoch_accuracies(&r.dir);
                        match (outcome(&r.dir), r.pruned) {
                            (_, true) => trial.status = TrialStatus::Pruned,
                            (Some((status, seconds)), false) => {
                                trial.status = status;
                                trial.seconds = seconds;
                            }
                            (None, false) => {
                                let log = std::fs::read_to_string(r.dir.join("train.log"))
                                    .unwrap_or_default();
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
                        state.save(&run.dir)?;
                    }
                }
            }
        }
        // Trials still waiting at a rung were never promoted: ASHA stopped them.
        for t in state.trials.iter_mut().filter(|t| t.stage == s) {
            if t.status == TrialStatus::Paused {
                t.status = TrialStatus::Pruned;
            }
        }
        state.save(&run.dir)?;
    }
    state.save(&run.dir)?;
    Ok(state)
}

/// The next ASHA promotion of stage `s`: a waiting trial among the best
/// third at its rung, with the epoch it continues to.
fn promotion(
    asha: &Asha,
    state: &SearchState,
    s: usize,
    running: &[Running],
) -> Option<(usize, usize)> {
    for &rung in asha.rungs().iter().rev() {
        let mut reached = Vec::new();
        let mut promoted = Vec::new();
        for (i, t) in state.trials.iter().enumerate() {
            if t.stage != s || t.accuracies.len() < rung {
                continue;
            }
            reached.push((i, t.accuracies[rung - 1]));
            let beyond = t.accuracies.len() > rung
                || running.iter().any(|r| r.index == i && r.target > rung);
            if beyond || t.status != TrialStatus::Paused {
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
            }],
        };
        assert_eq!(
            state.csv(),
            "trial,stage,status,lr,hidden,val_accuracy,epochs,seconds\n0,1,finished,1e-2,50,0.4500,2,2.0\n"
        );
    }
}
