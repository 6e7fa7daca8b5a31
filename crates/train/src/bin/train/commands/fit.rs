//! `train fit`: train a run, `--lr find` first if asked, and say how it ended.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use cifar_train::config::{Backend, TrainConfig};
use cifar_train::diagnostics::lr_find::{LrFindConfig, lr_find};
use cifar_train::fit::{FitOptions, RunStatus, RunSummary, fit, interrupt_flag};
use cifar_train::progress::Progress;
use cifar_train::rundir::RunDir;
use cifar_train::{backend, report};

use super::lr_find::{print_suggestions, write_lr_find};
use super::{default_run_dir, load_prepared};
use crate::cli::{FitArgs, LrArg, TrainFlags};

/// Set by `train search` for its trials, to the search's process id: a
/// trial whose search process dies writes a checkpoint and stops, instead of
/// running on unattended, and one whose search is already gone does not start.
pub(super) const STOP_WITH_PARENT: &str = "CIFAR_BURN_STOP_WITH_PARENT";

/// The file a search's trial keeps in its run folder while it trains (its process id).
const TRAINING_MARKER: &str = cifar_train::search::runner::TRAINING_MARKER;

/// The search process this trial belongs to, from [`STOP_WITH_PARENT`].
fn search_parent() -> Option<u32> {
    std::env::var(STOP_WITH_PARENT).ok()?.parse().ok()
}

/// The Ctrl-C flag, also raised when the search that started this trial
/// goes away (a dead parent's children are adopted, so the parent id changes).
fn stop_flag(search: Option<u32>) -> Arc<AtomicBool> {
    let flag = interrupt_flag();
    #[cfg(unix)]
    if let Some(parent) = search {
        let watched = flag.clone();
        std::thread::spawn(move || {
            while std::os::unix::process::parent_id() == parent {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            watched.store(true, Ordering::SeqCst);
        });
    }
    #[cfg(not(unix))]
    let _ = search;
    flag
}

/// What `--resume` finds in a run folder.
enum ResumePoint {
    /// No run: no `config.json`.
    Nothing,
    /// A run stopped before its first checkpoint.
    NoCheckpoint(TrainConfig),
    /// A run with a checkpoint to continue from.
    Checkpoint(TrainConfig),
}

fn resume_point(out: &Path) -> Result<ResumePoint> {
    if !out.join("config.json").is_file() {
        return Ok(ResumePoint::Nothing);
    }
    let run = RunDir::open(out).context("--resume")?;
    let config = run.load_config()?;
    Ok(match run.checkpoint_dir() {
        Some(_) => ResumePoint::Checkpoint(config),
        None => ResumePoint::NoCheckpoint(config),
    })
}

/// A resumed run's config: its own (or `--config FILE`'s, when that agrees
/// with it), then the flags; a flag or file that would change what was
/// already trained is refused, naming it and the run's value.
fn resumed_config(run_config: &TrainConfig, flags: &TrainFlags, out: &Path) -> Result<TrainConfig> {
    let advice = |flag: &str| {
        format!(
            "Leave {flag} out to continue the run in {}, or start a new run with another --out",
            out.display()
        )
    };
    let base = match &flags.config {
        Some(path) => {
            let file = TrainFlags {
                config: Some(path.clone()),
                ..TrainFlags::default()
            }
            .to_config(None)?;
            if let Some(c) = run_config.resume_conflict(&file) {
                bail!(
                    "--config {}: {c}. Make the file agree with {}, or start a new run with another --out",
                    path.display(),
                    out.join("config.json").display()
                );
            }
            file
        }
        None => run_config.clone(),
    };
    let config = TrainFlags {
        config: None,
        ..flags.clone()
    }
    .to_config(Some(base))?;
    if let Some(c) = run_config.resume_conflict(&config) {
        bail!("{c}. {}", advice(&c.flag));
    }
    Ok(config)
}

/// The run's `summary.json` when it finished and `config` asks for no more epochs.
fn finished_summary(out: &Path, config: &TrainConfig) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("summary.json")).ok()?;
    let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
    let epochs = summary["epochs"].as_u64()? as usize;
    (summary["status"] == "finished" && epochs >= config.epochs).then_some(summary)
}

/// `train fit`.
pub fn fit_command(args: &FitArgs) -> Result<()> {
    // A search's trial: mark the folder as being trained, and stop with the search.
    let search = search_parent();
    #[cfg(unix)]
    if let Some(parent) = search
        && std::os::unix::process::parent_id() != parent
    {
        bail!("the search (process {parent}) that started this trial is gone; not training");
    }
    if search.is_some()
        && let Some(out) = &args.out
    {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        std::fs::write(out.join(TRAINING_MARKER), std::process::id().to_string())
            .with_context(|| format!("cannot write {}", out.join(TRAINING_MARKER).display()))?;
    }
    let interrupt = stop_flag(search);
    if args.resume && args.out.is_none() {
        bail!("--resume continues the run in --out DIR: pass the folder of the run to continue");
    }
    let out = args.out.clone().unwrap_or_else(|| default_run_dir(""));
    let progress = Progress::new(args.json);
    // What --resume finds: a scheduler may rerun the same command after any kill.
    let (resume, run_config) = match args.resume.then(|| resume_point(&out)).transpose()? {
        None => (false, None),
        Some(ResumePoint::Nothing) => {
            progress.line(&format!(
                "--resume: {} holds no run yet; starting it",
                out.display()
            ));
            (false, None)
        }
        Some(ResumePoint::NoCheckpoint(config)) => {
            progress.line(&format!(
                "--resume: {} has no checkpoint (it stopped during its first epoch); starting the run again from the beginning",
                out.display()
            ));
            (false, Some(config))
        }
        Some(ResumePoint::Checkpoint(config)) => (true, Some(config)),
    };
    let mut config = match &run_config {
        Some(run_config) => resumed_config(run_config, &args.flags, &out)?,
        None => args.flags.to_config(None)?,
    };
    if resume && let Some(summary) = finished_summary(&out, &config) {
        // Nothing left to train: say how the run ended, as its first end did.
        if args.json {
            println!("{summary}");
        }
        progress.line(&format!(
            "{} already finished its {} epochs: best val acc {:.4}; pass a larger --epochs to train longer",
            out.display(),
            summary["epochs"],
            summary["val_accuracy"].as_f64().unwrap_or(0.0)
        ));
        return Ok(());
    }
    if !resume && run_config.is_none() && out.join("checkpoint").exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or another --out",
            out.display()
        );
    }
    anyhow::ensure!(
        args.checkpoint_every.is_finite() && args.checkpoint_every >= 0.0,
        "--checkpoint-every must be a number of minutes (0 or more), got {}",
        args.checkpoint_every
    );
    if let Some(n) = args.until_epoch {
        anyhow::ensure!(n > 0, "--until-epoch must be at least 1");
    }
    let find_lr = args.flags.lr == Some(LrArg::Find);
    if find_lr && resume {
        bail!(
            "--lr find picks the rate of a new run; a resumed run keeps its own (--lr {})",
            config.lr
        );
    }
    let device = backend::device_with(
        config.backend,
        args.flags.device.unwrap_or_default(),
        config.matmul_precision,
    )?;
    if config.backend == Backend::Wgpu {
        progress.line(&format!(
            "training on wgpu, adapter {}",
            args.flags.device.unwrap_or_default()
        ));
    }
    // A resumed run keeps the preprocessing it was fitted with, on the same images.
    let saved = if resume {
        Some(RunDir::open(&out)?.load_preprocessing()?)
    } else {
        None
    };
    // A resumed run trains on the data it started with, unless --data says otherwise.
    let mut flags = args.flags.clone();
    if run_config.is_some()
        && flags.source.data.is_none()
        && let Some(dir) = RunDir::open(&out).ok().and_then(|r| r.data_dir())
    {
        flags.source.data = Some(dir);
    }
    let (data_dir, prepared) = load_prepared(&flags, &config, saved, progress).map_err(|e| {
        if e.downcast_ref::<cifar_data::DataError>()
            .is_some_and(|d| matches!(d, cifar_data::DataError::NotFittedOn(_)))
        {
            e.context(format!(
                "--resume: {}",
                out.join("preprocess.bin").display()
            ))
        } else {
            e
        }
    })?;
    let run = RunDir::create(&out)?;
    if find_lr {
        progress.line("--lr find: running the learning-rate finder first");
        let result = lr_find(
            &config,
            &prepared,
            &device,
            &LrFindConfig::default(),
            progress,
        )?;
        write_lr_find(&result, &run)?;
        print_suggestions(&result, progress);
        config.lr = result.lr;
        progress.line(&format!(
            "training a freshly initialized model with the {} suggestion, --lr {:.3e}",
            result.chosen, result.lr
        ));
    }
    run.save_config(&config)?;
    run.save_data_dir(&data_dir)?;
    run.save_preprocessing(&prepared.fitted)?;
    if config.effective_warmup() < config.warmup {
        progress.line(&format!(
            "note: --warmup {} is capped at a fifth of the {} epochs: {} epochs of warmup",
            config.warmup,
            config.epochs,
            // 0.6, not 0.6000000000000001.
            (config.effective_warmup() * 1e6).round() / 1e6
        ));
    }
    progress.line(&format!(
        "run folder: {}, backend {}",
        run.path().display(),
        config.backend
    ));
    // The trial's mark (written above, and by the search when it started
    // the trial) goes when it stops, so that a resumed search need not wait.
    let marker = search.map(|_| run.file(TRAINING_MARKER));
    let summary = fit(
        &config,
        &prepared,
        &run,
        &device,
        FitOptions {
            resume,
            interrupt,
            progress,
            monitor_every: args.monitor_every,
            stop_after_epoch: args.until_epoch,
            checkpoint_every: (args.checkpoint_every > 0.0)
                .then(|| std::time::Duration::from_secs_f64(args.checkpoint_every * 60.0)),
        },
    );
    if let Some(marker) = &marker {
        let _ = std::fs::remove_file(marker);
    }
    let summary = summary?;
    let report = report::write_report(&run)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    finish_message(&summary, &config, progress, &report)
}

/// The closing line of a run, or the error that says why it stopped.
fn finish_message(
    summary: &RunSummary,
    config: &TrainConfig,
    progress: Progress,
    report: &Path,
) -> Result<()> {
    match &summary.status {
        RunStatus::Finished => {
            progress.line(&format!(
                "done: best val acc {:.4}{}, {:.0} img/s, {:.0}s; run folder {}, report {}",
                summary.val_accuracy,
                summary
                    .test_accuracy
                    .map(|a| format!(", test acc {a:.4}"))
                    .unwrap_or_default(),
                summary.images_per_sec,
                summary.seconds,
                summary.run_dir,
                report.display()
            ));
            Ok(())
        }
        RunStatus::Diverged {
            epoch,
            step,
            divergence,
            layers,
        } => {
            let layers = if layers.is_empty() {
                String::new()
            } else {
                let named: Vec<String> = layers
                    .iter()
                    .take(5)
                    .map(|(name, ratio)| format!("{name} {ratio:.1e}"))
                    .collect();
                format!(
                    " The update/weight ratio was far above the healthy 1e-3 at the last monitor point in: {}.",
                    named.join(", ")
                )
            };
            bail!(
                "training diverged at step {step} of epoch {epoch}: {}.{layers} \
                 Lower the learning rate (--lr {} now; try {}), or add warmup (--warmup 1). \
                 Metrics and charts so far are in {}",
                divergence.describe(),
                config.lr,
                config.lr / 10.0,
                summary.run_dir
            )
        }
        RunStatus::Paused { epoch } => {
            progress.line(&format!(
                "paused after epoch {epoch} of {} (--until-epoch): best val acc {:.4}; continue with `train fit --out {} --resume`",
                config.epochs, summary.val_accuracy, summary.run_dir
            ));
            Ok(())
        }
        RunStatus::Interrupted { epoch, step } => bail!(
            "interrupted at step {step} of epoch {epoch}: checkpoint written to {}/checkpoint; \
             continue with `train fit --out {} --resume`",
            summary.run_dir,
            summary.run_dir
        ),
    }
}
