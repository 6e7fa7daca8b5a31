//! `train lr-find`: the learning-rate range test and its three suggestions.

use anyhow::{Result, bail};
use cifar_train::backend;
use cifar_train::charts;
use cifar_train::diagnostics::lr_find::{LrFindConfig, LrFindResult, lr_find, write_csv};
use cifar_train::progress::Progress;
use cifar_train::rundir::RunDir;
use serde_json::json;

use super::{default_run_dir, load_prepared};
use crate::cli::{LrArg, LrFindArgs};

pub(super) fn write_lr_find(result: &LrFindResult, run: &RunDir) -> Result<()> {
    write_csv(result, &run.file("lr-find.csv"))?;
    charts::lr_find_chart(&run.file("lr-find.png"), result)?;
    cifar_train::rundir::write_atomic(
        &run.file("lr-find.json"),
        serde_json::to_string_pretty(result)?.as_bytes(),
    )
}

pub(super) fn print_suggestions(result: &LrFindResult, progress: Progress) {
    let s = result.suggestions;
    progress.line(&format!(
        "learning-rate finder: {} rates, stopped because {}",
        result.points.len(),
        result.stopped
    ));
    for (name, lr) in [
        ("steepest", s.steepest),
        ("valley", s.valley),
        ("minimum", s.minimum),
    ] {
        let mark = if name == result.chosen {
            "  <- train fit --lr find uses this"
        } else {
            ""
        };
        let what = match name {
            "steepest" => "steepest descent of the smoothed loss",
            "valley" => "middle of the longest descending stretch",
            _ => "lowest smoothed loss / 10",
        };
        progress.line(&format!("  {name:<9} {lr:.2e}  ({what}){mark}"));
    }
}

/// `train lr-find`.
pub fn lr_find_command(args: &LrFindArgs) -> Result<()> {
    if args.flags.lr == Some(LrArg::Find) {
        bail!("--lr is what train lr-find searches for: leave it out");
    }
    let finder = LrFindConfig {
        start: args.start,
        end: args.end,
        steps: args.steps,
        ..LrFindConfig::default()
    };
    finder.validate().map_err(anyhow::Error::msg)?;
    let config = args.flags.to_config(None)?;
    let device = backend::device_with(
        config.backend,
        args.flags.device.unwrap_or_default(),
        config.matmul_precision,
    )?;
    let progress = Progress::new(args.json);
    let (_, prepared) = load_prepared(&args.flags, &config, None, progress)?;
    let run = RunDir::create(
        args.out
            .clone()
            .unwrap_or_else(|| default_run_dir("lr-find-")),
    )?;
    let result = lr_find(&config, &prepared, &device, &finder, progress)?;
    write_lr_find(&result, &run)?;
    print_suggestions(&result, progress);
    progress.line(&format!(
        "wrote {} and {}",
        run.file("lr-find.csv").display(),
        run.file("lr-find.png").display()
    ));
    if args.json {
        println!(
            "{}",
            json!({
                "suggestions": result.suggestions, "chosen": result.chosen, "lr": result.lr,
                "stopped": result.stopped, "points": result.points.len(),
                "csv": run.file("lr-find.csv").display().to_string(),
                "png": run.file("lr-find.png").display().to_string(),
            })
        );
    }
    Ok(())
}
