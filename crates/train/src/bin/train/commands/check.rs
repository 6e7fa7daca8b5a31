//! `train check`: the sanity checks, as a table or JSON; exit status 1 on a failure.

use std::time::Instant;

use anyhow::{Result, bail};
use cifar_train::diagnostics::check::{CheckOptions, CheckReport, Verdict, run_checks};
use cifar_train::progress::Progress;
use cifar_train::rundir::RunDir;
use cifar_train::{backend, report};

use super::load_prepared;
use crate::cli::{CheckArgs, LrArg};

/// `train check`.
pub fn check_command(args: &CheckArgs) -> Result<()> {
    if args.flags.lr == Some(LrArg::Find) {
        bail!("--lr find is for train fit; train check takes a rate such as --lr 0.01");
    }
    anyhow::ensure!(args.overfit_steps > 0, "--overfit-steps must be at least 1");
    let config = args.flags.to_config(None)?;
    let device = backend::device_with(
        config.backend,
        args.flags.device.unwrap_or_default(),
        config.matmul_precision,
    )?;
    let progress = Progress::new(args.json);
    let (_, prepared) = load_prepared(&args.flags, &config, None, progress)?;
    let options = CheckOptions {
        overfit_steps: args.overfit_steps,
        ..CheckOptions::default()
    };
    let started = Instant::now();
    let report = run_checks(&config, &prepared, &device, &options, progress)?;
    if let Some(out) = &args.out {
        let run = RunDir::create(out)?;
        cifar_train::rundir::write_atomic(
            &run.file("check.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        if run.file("config.json").is_file() {
            report::write_report(&run)?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_checks(&report, started.elapsed().as_secs_f64());
    }
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}

fn print_checks(report: &CheckReport, seconds: f64) {
    println!();
    for c in &report.checks {
        println!("{:<5} {}", c.verdict.to_string(), c.name);
        println!("      measured: {}", c.measured);
        println!("      expected: {}", c.expected);
        if !c.advice.is_empty() {
            println!("      try:      {}", c.advice);
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    let warned = report
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Warn)
        .count();
    println!(
        "\n{} checks: {} passed, {failed} failed, {warned} warned ({seconds:.0}s)",
        report.checks.len(),
        report.checks.len() - failed - warned
    );
}
