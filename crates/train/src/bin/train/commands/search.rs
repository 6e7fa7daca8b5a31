//! `train search`: random hyperparameter search, its table, best configuration and charts.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cifar_train::backend::Adapter;
use cifar_train::charts;
use cifar_train::config::TrainConfig;
use cifar_train::progress::Progress;
use cifar_train::search::runner::{
    Prune, SearchRun, SearchState, Stage, parse_stages, run_search, write_best,
};
use cifar_train::search::space::{Param, Range, Value, edge_warnings, validate};
use cifar_train::search::store::Store;
use serde_json::json;

use super::fit::STOP_WITH_PARENT;
use crate::cli::{LrArg, SearchArgs, TrainFlags};

/// The trial config: `base` with `params` set as their flags would, and `epochs` epochs.
fn trial_config(
    base: &TrainConfig,
    params: &[(String, Value)],
    epochs: usize,
) -> Result<TrainConfig> {
    let mut flags = TrainFlags::default();
    for (name, value) in params {
        flags.set(name, &value.to_string())?;
    }
    flags.epochs = Some(epochs);
    flags.to_config(Some(base.clone()))
}

/// `train search`.
pub fn search_command(args: &SearchArgs) -> Result<()> {
    let progress = Progress::new(args.json);
    if args.summary {
        let state = Store::open(&args.out)?.state()?;
        return print_search(&state, &args.out, args.json, progress);
    }
    // A new search is created only once every flag has been checked.
    let (existing, fresh) = if args.resume {
        let store = Store::open(&args.out).context("--resume")?;
        let state = store.state()?;
        if let Some(prune) = args.prune
            && prune != state.prune
        {
            bail!(
                "--prune {prune}: the search in {} was started with --prune {}; leave --prune out to continue it",
                args.out.display(),
                state.prune
            );
        }
        let done = state.trials.iter().filter(|t| t.is_done()).count();
        progress.line(&format!(
            "continuing the search in {} (with any other worker on it): {} of {} trials recorded are over",
            args.out.display(),
            done,
            state.trials.len()
        ));
        (Some(store), None)
    } else {
        if Store::path(&args.out).exists() {
            bail!(
                "{} already holds a search: pass --resume to continue it (or to add a worker), --summary to see it, or another --out",
                args.out.display()
            );
        }
        let mut specs = args.space.clone();
        if let Some(file) = &args.space_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--space-file {}", file.display()))?;
            let more: Vec<String> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "--space-file {}: expected a JSON array of strings such as [\"lr=log:1e-5:1e-1\"]",
                    file.display()
                )
            })?;
            specs.extend(more);
        }
        let space: Vec<Param> = specs
            .iter()
            .map(|s| s.parse::<Param>())
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        validate(&space).map_err(anyhow::Error::msg)?;
        let stages = match &args.stages {
            Some(text) => parse_stages(text).map_err(anyhow::Error::msg)?,
            None => vec![Stage {
                epochs: args.flags.epochs.unwrap_or(1),
                trials: args.trials.unwrap_or(20),
            }],
        };
        anyhow::ensure!(
            stages.iter().all(|s| s.trials > 0),
            "--trials must be at least 1"
        );
        if args.flags.lr == Some(LrArg::Find) {
            bail!("--lr find picks one rate; search the rate with --space lr=log:LOW:HIGH");
        }
        let base = args.flags.to_config(None)?;
        // Every end of every range must give a config `train fit` accepts.
        for (param, spec) in space.iter().zip(&specs) {
            let ends: Vec<Value> = match &param.range {
                Range::Log { low, high } | Range::Uniform { low, high } => {
                    vec![Value::Float(*low), Value::Float(*high)]
                }
                Range::Int { low, high, .. } => vec![Value::Int(*low), Value::Int(*high)],
                Range::Choice { values } => values.iter().cloned().map(Value::Text).collect(),
            };
            for end in ends {
                trial_config(&base, &[(param.name.clone(), end.clone())], 1).map_err(|e| {
                    anyhow::anyhow!(
                        "--space '{spec}': train fit rejects {}={end}: {e:#}",
                        param.name
                    )
                })?;
            }
        }
        let seed = args.flags.seed.unwrap_or(0);
        let state = SearchState {
            base,
            stage_spaces: vec![space.clone()],
            space,
            stages,
            seed,
            prune: args.prune.unwrap_or(Prune::None),
            trials: Vec::new(),
        };
        (None, Some(state))
    };
    // Where the trials train: one job per listed adapter with --devices.
    let placement: Vec<Adapter> = match (&args.devices, args.flags.device) {
        (Some(devices), _) => {
            anyhow::ensure!(!devices.is_empty(), "--devices needs at least one adapter");
            if let Some(jobs) = args.jobs
                && jobs != devices.len()
            {
                bail!(
                    "--jobs {jobs} with --devices {}: one trial runs on each listed adapter; \
                     leave --jobs out (or list an adapter twice to run two trials on it)",
                    devices.len()
                );
            }
            devices.clone()
        }
        (None, Some(device)) => vec![device],
        (None, None) => Vec::new(),
    };
    let jobs = match &args.devices {
        Some(devices) => devices.len(),
        None => args.jobs.unwrap_or(1),
    };
    anyhow::ensure!(jobs > 0, "--jobs must be at least 1");
    let backend = match (&existing, &fresh) {
        (Some(store), _) => store.state()?.base.backend,
        (None, Some(state)) => state.base.backend,
        (None, None) => unreachable!("a search is either continued or new"),
    };
    for adapter in &placement {
        // A wrong adapter fails here, before any trial starts.
        cifar_train::backend::device_on(backend, *adapter)
            .with_context(|| format!("--devices {adapter}"))?;
    }
    let mut store = match (existing, fresh) {
        (Some(store), _) => store,
        (None, Some(state)) => Store::create(&args.out, &state)?,
        (None, None) => unreachable!("a search is either continued or new"),
    };
    // Each trial process gets its share of the cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs).max(1).to_string();
    let exe = std::env::current_exe().context("cannot find the train executable")?;
    let source = args.flags.source.clone();
    let launch = |dir: &Path, resume: bool, until: Option<usize>, slot: usize| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("fit");
        if resume {
            cmd.arg("--resume");
        } else {
            cmd.arg("--config").arg(dir.join("config.json"));
        }
        if let Some(epoch) = until {
            cmd.arg("--until-epoch").arg(epoch.to_string());
        }
        cmd.arg("--out").arg(dir).arg("--json");
        if let Some(adapter) = placement.get(slot).or(placement.first()) {
            cmd.arg("--device").arg(adapter.to_string());
        }
        if let Some(data) = &source.data {
            cmd.arg("--data").arg(data);
        }
        if source.download {
            cmd.arg("--download");
        }
        cmd.env("RAYON_NUM_THREADS", &threads)
            .env(STOP_WITH_PARENT, std::process::id().to_string());
        cmd
    };
    let make_config = |base: &TrainConfig, params: &[(String, Value)], epochs: usize| {
        trial_config(base, params, epochs)
    };
    let run = SearchRun {
        dir: args.out.clone(),
        jobs,
        progress,
        make_config: &make_config,
        launch: &launch,
    };
    let started = Instant::now();
    let state = run_search(&run, &mut store)?;
    progress.line(&format!(
        "search done in {:.0}s: {} trials",
        started.elapsed().as_secs_f64(),
        state.trials.len()
    ));
    print_search(&state, &args.out, args.json, progress)
}

/// The ranked table, the best configuration, edge warnings and charts of a search.
fn print_search(state: &SearchState, dir: &Path, json: bool, progress: Progress) -> Result<()> {
    let names: Vec<&str> = state.space.iter().map(|p| p.name.as_str()).collect();
    let ranked = state.ranked();
    progress.line(&format!(
        "\n{:>5}  {:>5}  {:<9} {}  {:>7}  {:>6}",
        "trial",
        "stage",
        "status",
        names
            .iter()
            .map(|n| format!("{n:>12}"))
            .collect::<Vec<_>>()
            .join(" "),
        "val acc",
        "epochs"
    ));
    for t in &ranked {
        let values: Vec<String> = names
            .iter()
            .map(|n| {
                let v = t
                    .params
                    .iter()
                    .find(|(name, _)| name == n)
                    .map(|(_, v)| v.short())
                    .unwrap_or_default();
                format!("{v:>12}")
            })
            .collect();
        progress.line(&format!(
            "{:>5}  {:>5}  {:<9} {}  {:>7}  {:>6}",
            t.trial,
            t.stage + 1,
            t.status.to_string(),
            values.join(" "),
            t.best()
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "-".into()),
            t.accuracies.len()
        ));
    }
    let scored: Vec<(Vec<(String, Value)>, f64)> = state
        .trials
        .iter()
        .filter_map(|t| Some((t.params.clone(), t.best()?)))
        .collect();
    let warnings = edge_warnings(&state.space, &scored, 0.25);
    for w in &warnings {
        progress.line(&format!("warning: {w}"));
    }
    charts::search_charts(dir, state)?;
    let best = write_best(state, dir)?;
    match &best {
        Some((path, trial)) => progress.line(&format!(
            "best: trial {trial:03}; train it longer with `train fit --config {}`",
            path.display()
        )),
        None => progress.line("no trial has a validation accuracy yet"),
    }
    progress.line(&format!(
        "trials.csv, search charts (search-*.png) and the search database search.db are in {}",
        dir.display()
    ));
    if json {
        let best_json = best.as_ref().and_then(|(path, trial)| {
            let t = state.trials.iter().find(|t| t.trial == *trial)?;
            Some(json!({
                "trial": trial, "val_accuracy": t.best(),
                "params": t.params.iter().map(|(n, v)| (n.clone(), serde_json::to_value(v).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
                "config": path.display().to_string(),
            }))
        });
        println!(
            "{}",
            json!({
                "best": best_json,
                "trials": state.trials,
                "stage_spaces": state
                    .stage_spaces
                    .iter()
                    .map(|space| space.iter().map(|p| p.to_string()).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
                "warnings": warnings,
            })
        );
    }
    Ok(())
}
