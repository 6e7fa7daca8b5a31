//! What each subcommand does: parse-level checks, then calls into the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use cifar_data::{CLASSES, IMAGE_BYTES, Preprocessing, SplitConfig};
use cifar_models::{ActivationStats, Histogram, MlpConfig};
use cifar_train::charts::{self, InitLayer};
use cifar_train::config::TrainConfig;
use cifar_train::dataset::Prepared;
use cifar_train::diagnostics::check::{CheckOptions, CheckReport, run_checks};
use cifar_train::diagnostics::lr_find::{LrFindConfig, LrFindResult, lr_find, write_csv};
use cifar_train::fit::{FitOptions, RunStatus, RunSummary, fit, interrupt_flag};
use cifar_train::progress::Progress;
use cifar_train::rundir::RunDir;
use cifar_train::{backend, dataset, report};
use serde_json::json;

use crate::cli::{
    BenchArgs, CheckArgs, DataArgs, EvalArgs, FitArgs, InitStatsArgs, LrArg, LrFindArgs,
    PredictArgs, ReportArgs, SearchArgs, TrainFlags,
};

/// Loads the data of `flags` and prepares it for `config` (reusing `saved` preprocessing).
fn load_prepared(
    flags: &TrainFlags,
    config: &TrainConfig,
    saved: Option<cifar_data::FittedPreprocessing>,
    progress: Progress,
) -> Result<Prepared> {
    let (dir, data) = dataset::load(flags.source.data.as_deref(), flags.source.download)?;
    progress.line(&format!(
        "data: {} ({} training images)",
        dir.display(),
        data.train.len()
    ));
    let started = Instant::now();
    let prepared = dataset::prepare(&data, &config.split, &config.preprocess, saved)?;
    progress.line(&format!(
        "{} train / {} val{} images, preprocessing {} fitted in {:.1}s",
        prepared.train.len(),
        prepared.val.len(),
        prepared
            .test
            .as_ref()
            .map(|t| format!(" / {} test", t.len()))
            .unwrap_or_default(),
        config.preprocess,
        started.elapsed().as_secs_f64()
    ));
    Ok(prepared)
}

/// Set by `train search` for its trials: a trial whose search process dies
/// writes a checkpoint and stops, instead of running on unattended.
const STOP_WITH_PARENT: &str = "CIFAR_BURN_STOP_WITH_PARENT";

/// The file a search's trial keeps in its run folder while it trains (its process id).
const TRAINING_MARKER: &str = cifar_train::search::runner::TRAINING_MARKER;

/// The Ctrl-C flag, also raised when the parent process goes away (with
/// [`STOP_WITH_PARENT`] set; a dead parent's children are adopted, so the
/// parent id changes).
fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = interrupt_flag();
    #[cfg(unix)]
    if std::env::var_os(STOP_WITH_PARENT).is_some() {
        let parent = std::os::unix::process::parent_id();
        let watched = flag.clone();
        std::thread::spawn(move || {
            while std::os::unix::process::parent_id() == parent {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            watched.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    flag
}

/// `train fit`.
pub fn fit_command(args: &FitArgs) -> Result<()> {
    // First, so that a search's trial whose search dies while it loads the data stops too.
    let interrupt = stop_flag();
    if args.resume && args.out.is_none() {
        bail!("--resume continues the run in --out DIR: pass the folder of the run to continue");
    }
    let out = args.out.clone().unwrap_or_else(|| default_run_dir(""));
    let base = if args.resume {
        Some(RunDir::open(&out).context("--resume")?.load_config()?)
    } else {
        None
    };
    let mut config = args.flags.to_config(base)?;
    if !args.resume && out.join("checkpoint").exists() {
        bail!(
            "{} already holds a run: pass --resume to continue it, or another --out",
            out.display()
        );
    }
    if let Some(n) = args.until_epoch {
        anyhow::ensure!(n > 0, "--until-epoch must be at least 1");
    }
    let find_lr = args.flags.lr == Some(LrArg::Find);
    if find_lr && args.resume {
        bail!(
            "--lr find picks the rate of a new run; a resumed run keeps its own (--lr {})",
            config.lr
        );
    }
    let device = backend::device(config.backend)?;
    let progress = Progress::new(args.json);
    // A resumed run keeps the preprocessing it was fitted with.
    let saved = if args.resume {
        Some(RunDir::open(&out)?.load_preprocessing()?)
    } else {
        None
    };
    let prepared = load_prepared(&args.flags, &config, saved, progress)?;
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
    run.save_preprocessing(&prepared.fitted)?;
    progress.line(&format!(
        "run folder: {}, backend {}",
        run.path().display(),
        config.backend
    ));
    // A search writes its trial's process id into the folder when it starts
    // it (so that a resumed search waits for an orphaned trial); the trial
    // removes the mark when it stops.
    let marker = std::env::var_os(STOP_WITH_PARENT).map(|_| run.file(TRAINING_MARKER));
    let summary = fit(
        &config,
        &prepared,
        &run,
        &device,
        FitOptions {
            resume: args.resume,
            interrupt,
            progress,
            monitor_every: args.monitor_every,
            stop_after_epoch: args.until_epoch,
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

/// `train check`.
pub fn check_command(args: &CheckArgs) -> Result<()> {
    if args.flags.lr == Some(LrArg::Find) {
        bail!("--lr find is for train fit; train check takes a rate such as --lr 0.01");
    }
    anyhow::ensure!(args.overfit_steps > 0, "--overfit-steps must be at least 1");
    let config = args.flags.to_config(None)?;
    let device = backend::device(config.backend)?;
    let progress = Progress::new(args.json);
    let prepared = load_prepared(&args.flags, &config, None, progress)?;
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
        .filter(|c| c.verdict == cifar_train::diagnostics::check::Verdict::Fail)
        .count();
    let warned = report
        .checks
        .iter()
        .filter(|c| c.verdict == cifar_train::diagnostics::check::Verdict::Warn)
        .count();
    println!(
        "\n{} checks: {} passed, {failed} failed, {warned} warned ({seconds:.0}s)",
        report.checks.len(),
        report.checks.len() - failed - warned
    );
}

fn write_lr_find(result: &LrFindResult, run: &RunDir) -> Result<()> {
    write_csv(result, &run.file("lr-find.csv"))?;
    charts::lr_find_chart(&run.file("lr-find.png"), result)?;
    cifar_train::rundir::write_atomic(
        &run.file("lr-find.json"),
        serde_json::to_string_pretty(result)?.as_bytes(),
    )
}

fn print_suggestions(result: &LrFindResult, progress: Progress) {
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
    let device = backend::device(config.backend)?;
    let progress = Progress::new(args.json);
    let prepared = load_prepared(&args.flags, &config, None, progress)?;
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

/// `train report`.
pub fn report_command(args: &ReportArgs) -> Result<()> {
    let run = RunDir::open(&args.run)?;
    let metrics_path = run.file("metrics.csv");
    if metrics_path.is_file() {
        // Redraw the metrics charts from metrics.csv (and layers.csv).
        let metrics = cifar_train::callbacks::MetricsLog::read(&run)?;
        let ends: Vec<usize> = metrics.epochs().iter().map(|(s, _)| *s).collect();
        charts::loss_chart(&run.file("loss.png"), metrics.steps(), &ends, args.log_loss)?;
        charts::accuracy_chart(&run.file("accuracy.png"), metrics.epochs())?;
        charts::lr_chart(&run.file("lr.png"), metrics.steps())?;
    }
    let path = report::write_report(&run)?;
    println!("{}", path.display());
    Ok(())
}

/// `runs/<prefix><YYYYmmdd-HHMMSS>` in UTC.
fn default_run_dir(prefix: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{prefix}{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

/// Loads a run's config, preprocessing and best model on `backend` (or the run's).
fn load_run(
    dir: &std::path::Path,
    backend: Option<cifar_train::config::Backend>,
) -> Result<(RunDir, TrainConfig, Device, cifar_models::Model)> {
    let run = RunDir::open(dir)?;
    let config = run.load_config()?;
    let device = backend::device(backend.unwrap_or(config.backend))?;
    let model = run.load_best(config.model.init(&device))?;
    Ok((run, config, device, model))
}

/// `train eval`.
pub fn eval_command(args: &EvalArgs) -> Result<()> {
    let (run, config, device, model) = load_run(&args.run, args.backend)?;
    let fitted = run.load_preprocessing()?;
    let (_, data) = dataset::load(args.source.data.as_deref(), args.source.download)?;
    let splits = config.split.split(&data)?;
    let set = match args.split.as_str() {
        "train" => &splits.train,
        "val" => &splits.val,
        _ => splits
            .test
            .as_ref()
            .context("--split test: this data folder has no test_batch.bin; use --split val")?,
    };
    let features = Arc::new(fitted.transform(set));
    let eval = cifar_train::evaluate::evaluate(&model, &features, 500, &device);
    let png = run.file(&format!("confusion-{}.png", args.split));
    charts::confusion_chart(
        &png,
        &eval.confusion,
        &CLASSES,
        &format!(
            "Confusion matrix, {} split ({} images, accuracy {:.3})",
            args.split, eval.examples, eval.accuracy
        ),
    )?;
    if args.json {
        println!(
            "{}",
            json!({
                "split": args.split, "examples": eval.examples, "accuracy": eval.accuracy,
                "loss": eval.loss, "per_class": eval.per_class(), "confusion": eval.confusion,
                "confusion_png": png.display().to_string(),
            })
        );
        return Ok(());
    }
    println!(
        "{} split: {} images, accuracy {:.4}, loss {:.4}",
        args.split, eval.examples, eval.accuracy, eval.loss
    );
    println!("\nper-class accuracy:");
    for (name, acc) in CLASSES.iter().zip(eval.per_class()) {
        println!("  {name:<10} {acc:.3}");
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted):");
    print!("{:>10}", "");
    for name in CLASSES {
        print!(" {:>5}", &name[..5.min(name.len())]);
    }
    println!();
    for (name, row) in CLASSES.iter().zip(&eval.confusion) {
        print!("{name:>10}");
        for count in row {
            print!(" {count:>5}");
        }
        println!();
    }
    println!("\nheat map: {}", png.display());
    Ok(())
}

/// `train predict`.
pub fn predict_command(args: &PredictArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=10).contains(&args.top),
        "--top must be between 1 and 10, got {}",
        args.top
    );
    let (run, _config, device, model) = load_run(&args.run, args.backend)?;
    let fitted = run.load_preprocessing()?;
    let mut pixels = Vec::with_capacity(args.images.len() * IMAGE_BYTES);
    for path in &args.images {
        let img = image::open(path)
            .with_context(|| format!("cannot read {} as a PNG or JPEG image", path.display()))?
            .to_rgb8();
        let img = if img.dimensions() == (32, 32) {
            img
        } else {
            image::imageops::resize(&img, 32, 32, image::imageops::FilterType::Triangle)
        };
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    pixels.push(img.get_pixel(x, y)[c]);
                }
            }
        }
    }
    let values = fitted.transform_pixels(&pixels);
    let [c, h, w] = fitted.output_shape().dims();
    let input = Tensor::<4>::from_data(
        TensorData::new(values, [args.images.len(), c, h, w]),
        &device,
    );
    let probs = burn::tensor::activation::softmax(model.forward(input), 1)
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("floats");
    let mut results = Vec::new();
    for (path, p) in args.images.iter().zip(probs.chunks(10)) {
        let mut ranked: Vec<(usize, f32)> = p.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(args.top);
        if !args.json {
            let text: Vec<String> = ranked
                .iter()
                .map(|(k, p)| format!("{} {:.1}%", CLASSES[*k], p * 100.0))
                .collect();
            println!("{}: {}", path.display(), text.join(", "));
        }
        results.push(json!({
            "image": path.display().to_string(),
            "top": ranked.iter().map(|(k, p)| json!({"class": CLASSES[*k], "probability": p})).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(())
}

/// `train data`.
pub fn data_command(args: &DataArgs) -> Result<()> {
    let (dir, data) = dataset::load(args.source.data.as_deref(), args.source.download)?;
    let splits = SplitConfig::new()
        .with_val_size(args.val_size)
        .split(&data)?;
    let fitted = Preprocessing::Standardize.fit(&splits.train)?;
    let std: Vec<f64> = fitted.scale.iter().map(|s| 1.0 / *s as f64).collect();
    let mut report = json!({
        "folder": dir.display().to_string(),
        "classes": data.classes,
        "splits": {
            "train": {"images": splits.train.len(), "per_class": splits.train.class_counts()},
            "val": {"images": splits.val.len(), "per_class": splits.val.class_counts()},
        },
        "train_channel_mean": fitted.mean,
        "train_channel_std": std,
    });
    if let Some(test) = &splits.test {
        report["splits"]["test"] = json!({"images": test.len(), "per_class": test.class_counts()});
    }
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("folder: {}", dir.display());
    println!(
        "{:<10} {:>7}  per class ({})",
        "split",
        "images",
        data.classes.join(", ")
    );
    let show = |name: &str, set: &cifar_data::ImageSet| {
        let counts: Vec<String> = set.class_counts().iter().map(|c| c.to_string()).collect();
        println!("{name:<10} {:>7}  {}", set.len(), counts.join(" "));
    };
    show("train", &splits.train);
    show("val", &splits.val);
    match &splits.test {
        Some(test) => show("test", test),
        None => println!("test       (no test_batch.bin)"),
    }
    println!(
        "training-split channel mean (R, G, B, 0-1 scale): {:.4} {:.4} {:.4}",
        fitted.mean[0], fitted.mean[1], fitted.mean[2]
    );
    println!(
        "training-split channel std:                      {:.4} {:.4} {:.4}",
        std[0], std[1], std[2]
    );
    Ok(())
}

/// `train init-stats`.
pub fn init_stats_command(args: &InitStatsArgs) -> Result<()> {
    anyhow::ensure!(args.layers > 0, "--layers must be at least 1");
    anyhow::ensure!(args.width > 0, "--width must be at least 1");
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    // Batch norm normalizes with the batch's statistics only in training
    // mode, which Burn gives modules on an autodiff device; on a plain device
    // it would use its initial running statistics (mean 0, variance 1) and
    // change nothing. The experiment is one forward pass: nothing is trained.
    let device = backend::device(args.backend)?.autodiff();
    device.seed(args.seed);
    let input: Tensor<2> = if args.input == "cifar" {
        let (_, data) = dataset::load(args.source.data.as_deref(), args.source.download)?;
        let n = args.samples.min(data.train.len());
        let set = cifar_data::ImageSet::new(
            data.train.pixels()[..n * IMAGE_BYTES].to_vec(),
            data.train.labels()[..n].to_vec(),
        );
        let features = Preprocessing::Standardize.fit(&data.train)?.transform(&set);
        Tensor::from_data(TensorData::new(features.values, [n, IMAGE_BYTES]), &device)
    } else {
        Tensor::random(
            [args.samples, args.width],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let input_size = input.dims()[1];
    let mlp = MlpConfig::new()
        .with_input_size(input_size)
        .with_hidden_sizes(vec![args.width; args.layers])
        .with_activation(args.activation)
        .with_init(args.init)
        .with_batch_norm(args.batch_norm)
        .init(&device);
    let (_, layers) = mlp.forward_observed(input.clone());
    let input_stats = ActivationStats::of_tensor(input, None, 1);
    if !args.json {
        println!(
            "input layer had mean {:.6} and std {:.6}",
            input_stats.mean, input_stats.std
        );
    }
    let values: Vec<Vec<f32>> = layers
        .into_iter()
        .map(|l| l.post.into_data().try_into_vec_as::<f32>().expect("floats"))
        .collect();
    // One range for every layer, as in the lecture's plots, so that a
    // collapsing or saturating distribution shows as such.
    let (lo, hi) = values
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| {
            (a.min(v as f64), b.max(v as f64))
        });
    let mut report = Vec::new();
    let mut chart_layers = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut s = ActivationStats::of(v, args.activation.saturation_band(), 30);
        s.histogram = Histogram::new(v, 30, lo, hi);
        if !args.json {
            println!(
                "hidden layer {} had mean {:.6} and std {:.6} ({:.1}% zero, {:.1}% saturated)",
                i + 1,
                s.mean,
                s.std,
                100.0 * s.zero_fraction,
                100.0 * s.saturated_fraction
            );
        }
        chart_layers.push(InitLayer {
            layer: i + 1,
            mean: s.mean,
            std: s.std,
            counts: s.histogram.counts.clone(),
        });
        report.push(json!({
            "layer": i + 1, "mean": s.mean, "std": s.std, "zero_fraction": s.zero_fraction,
            "saturated_fraction": s.saturated_fraction, "histogram": s.histogram,
        }));
    }
    let title = format!(
        "{} layers of {} {} units, init {}{}",
        args.layers,
        args.width,
        args.activation,
        args.init,
        if args.batch_norm { ", batch norm" } else { "" }
    );
    charts::init_stats_chart(&args.png, &title, &chart_layers, (lo, hi))?;
    if args.json {
        println!("{}", serde_json::Value::Array(report));
    } else {
        println!(
            "chart (mean and std per layer, histograms all over [{lo:.3}, {hi:.3}]): {}",
            args.png.display()
        );
    }
    Ok(())
}

/// `train bench`.
pub fn bench_command(args: &BenchArgs) -> Result<()> {
    match args.what.as_str() {
        "data" => cifar_train::bench::data(args.source.data.as_deref(), args.source.download),
        _ => cifar_train::bench::train(
            &args.model,
            args.backend,
            args.batch_size,
            args.steps,
            args.monitor_every,
        ),
    }
}

/// The trial config: `base` with `params` set as their flags would, and `epochs` epochs.
fn trial_config(
    base: &TrainConfig,
    params: &[(String, cifar_train::search::space::Value)],
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
    use cifar_train::search::runner::{
        Prune, SearchRun, SearchState, Stage, parse_stages, run_search,
    };
    use cifar_train::search::space::{Param, Range, Value, validate};

    let progress = Progress::new(args.json);
    if args.summary {
        let state = SearchState::load(&args.out)?;
        return print_search(&state, &args.out, args.json, progress);
    }
    let state = if args.resume {
        let state = SearchState::load(&args.out).context("--resume")?;
        progress.line(&format!(
            "resuming the search in {}: {} trials recorded",
            args.out.display(),
            state.trials.len()
        ));
        state
    } else {
        if SearchState::path(&args.out).exists() {
            bail!(
                "{} already holds a search: pass --resume to continue it, --summary to see it, or another --out",
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
        SearchState {
            base,
            stage_spaces: vec![space.clone()],
            space,
            stages,
            seed,
            trials: Vec::new(),
        }
    };
    let prune: Prune = args.prune.parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
    // Each trial process gets its share of the cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / args.jobs).max(1).to_string();
    let exe = std::env::current_exe().context("cannot find the train executable")?;
    let source = args.flags.source.clone();
    let launch = |dir: &Path, resume: bool, until: Option<usize>| {
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
        if let Some(data) = &source.data {
            cmd.arg("--data").arg(data);
        }
        if source.download {
            cmd.arg("--download");
        }
        cmd.env("RAYON_NUM_THREADS", &threads)
            .env(STOP_WITH_PARENT, "1");
        cmd
    };
    let make_config = |base: &TrainConfig, params: &[(String, Value)], epochs: usize| {
        trial_config(base, params, epochs)
    };
    let run = SearchRun {
        dir: args.out.clone(),
        jobs: args.jobs,
        prune,
        progress,
        make_config: &make_config,
        launch: &launch,
    };
    let started = Instant::now();
    let state = run_search(&run, state)?;
    progress.line(&format!(
        "search done in {:.0}s: {} trials",
        started.elapsed().as_secs_f64(),
        state.trials.len()
    ));
    print_search(&state, &args.out, args.json, progress)
}

/// The ranked table, the best configuration, edge warnings and charts of a search.
fn print_search(
    state: &cifar_train::search::runner::SearchState,
    dir: &Path,
    json: bool,
    progress: Progress,
) -> Result<()> {
    use cifar_train::search::runner::write_best;
    use cifar_train::search::space::edge_warnings;

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
    let scored: Vec<(Vec<(String, cifar_train::search::space::Value)>, f64)> = state
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
        "trials.csv, search charts (search-*.png) and search.json are in {}",
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
            json!({"best": best_json, "trials": state.trials, "warnings": warnings})
        );
    }
    Ok(())
}
