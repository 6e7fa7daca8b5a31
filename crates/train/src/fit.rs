//! The training loop: epochs of [`Trainer::step`]s, with the callbacks
//! around them.
//!
//! Each step: gather a batch (reseeding augmentation and dropout from the
//! step number), the learning rate of the schedule, one trainer step, then
//! the step callbacks (metrics, progress). Each epoch: evaluation on the
//! validation split and a training sample, then the epoch callbacks
//! (progress line, metrics and charts, best model and checkpoint, layer
//! monitor).
//!
//! Every random draw depends only on the seed and the step number, so a run
//! resumed from a checkpoint continues exactly as it would have run. A run
//! ends [`RunStatus::Finished`], [`RunStatus::Diverged`] (the loss became
//! NaN or exceeded 3x its initial value) or [`RunStatus::Interrupted`]
//! (Ctrl-C, after writing a checkpoint); the caller decides what each means.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use cifar_data::{CifarBatcher, EpochOrder, mix_seed};
use serde::Serialize;

use crate::callbacks::{Callback, Checkpointer, EpochEnd, EpochSummary, MetricsLog};
use crate::config::TrainConfig;
use crate::dataset::Prepared;
use crate::evaluate::{Tta, evaluate, evaluate_indices};
use crate::monitor::{LayerMonitor, MonitorSettings, RotationalEquilibrium};
use crate::progress::{Progress, ProgressReport};
use crate::rundir::{RunDir, TrainState};
use crate::trainer::{Divergence, StepInfo, StepObserver, StepOutcome, Trainer};

/// Salt that separates the augmentation's random stream from dropout's.
const AUGMENT_SALT: u64 = 0xA5A5_5A5A_F00D_CAFE;
/// Training examples scored for the per-epoch training accuracy.
const TRAIN_ACCURACY_SAMPLE: usize = 1000;
/// Validation images in the layer monitor's probe batch.
const PROBE_IMAGES: usize = 64;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum RunStatus {
    /// Every epoch was trained.
    Finished,
    /// The loss diverged; the run stopped before that step's update.
    Diverged {
        /// 1-based epoch of the step.
        epoch: usize,
        /// 1-based step in the run.
        step: usize,
        /// The losses involved.
        divergence: Divergence,
        /// The weights whose update/weight ratio at the last monitor point
        /// was far above the healthy 1e-3 (above 1e-2), largest first.
        layers: Vec<(String, f64)>,
    },
    /// Stopped after the epoch asked for (`FitOptions::stop_after_epoch`),
    /// with a checkpoint to continue from.
    Paused {
        /// Epochs trained.
        epoch: usize,
    },
    /// Stopped by Ctrl-C after writing a checkpoint.
    Interrupted {
        /// 1-based epoch of the last step.
        epoch: usize,
        /// Steps of that epoch done.
        step: usize,
    },
}

/// The result of a run, as `--json` prints it and `summary.json` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run folder.
    pub run_dir: String,
    /// How the run ended.
    #[serde(flatten)]
    pub status: RunStatus,
    /// Epochs trained.
    pub epochs: usize,
    /// The first step's loss (the lecture: about ln 10 = 2.303).
    pub initial_loss: Option<f64>,
    /// Mean training loss of the last epoch.
    pub final_training_loss: f64,
    /// Best validation accuracy.
    pub val_accuracy: f64,
    /// Accuracy of the best model on the test split, when there is one.
    pub test_accuracy: Option<f64>,
    /// Mean training throughput.
    pub images_per_sec: f64,
    /// Seconds of training.
    pub seconds: f64,
    /// The layer monitor's warnings.
    pub warnings: Vec<String>,
    /// The layer monitor's notes: readings the lecture's rules of thumb
    /// would flag, explained (weights at their rotational equilibrium).
    pub notes: Vec<String>,
}

/// Options of one `fit` call that are not part of the run's config.
pub struct FitOptions {
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Set (by Ctrl-C) to stop after the current step.
    pub interrupt: Arc<AtomicBool>,
    /// Where progress goes.
    pub progress: Progress,
    /// Layer-monitor interval in steps: `None` for about 20 points per
    /// epoch, `Some(0)` for no monitor.
    pub monitor_every: Option<usize>,
    /// Stop (with a checkpoint) once this many epochs are trained, before
    /// `config.epochs`; the schedule stays that of the whole run.
    pub stop_after_epoch: Option<usize>,
    /// Also checkpoint in the middle of an epoch when this much time has
    /// passed since the last checkpoint (`None`: at epoch ends only).
    pub checkpoint_every: Option<std::time::Duration>,
}

impl FitOptions {
    /// A fresh run, progress to standard error, default monitor, no Ctrl-C handling.
    pub fn quiet() -> Self {
        Self {
            resume: false,
            interrupt: Arc::new(AtomicBool::new(false)),
            progress: Progress {
                to_stderr: true,
                bars: false,
            },
            monitor_every: None,
            stop_after_epoch: None,
            checkpoint_every: None,
        }
    }
}

/// Trains `config.model` on `data` into `run`, on `device` (a plain device; autodiff is added here).
pub fn fit(
    config: &TrainConfig,
    data: &Prepared,
    run: &RunDir,
    device: &Device,
    options: FitOptions,
) -> Result<RunSummary> {
    // A resumed run's data-fitted layers come from its checkpoint.
    let mut trainer = if options.resume {
        Trainer::new(config, device)
    } else {
        Trainer::for_data(config, device, &data.train)?
    };
    let mut state = TrainState {
        epoch: 0,
        batch: 0,
        iteration: 0,
        initial_loss: None,
        best_val_accuracy: None,
        seconds: 0.0,
        epoch_loss_sum: 0.0,
    };
    if options.resume {
        let (loaded, saved) = run.load_checkpoint(trainer)?;
        anyhow::ensure!(
            saved.epoch < config.epochs,
            "--resume: the run already trained {} epochs; pass a larger --epochs to train longer",
            saved.epoch
        );
        trainer = loaded;
        trainer.set_initial_loss(saved.initial_loss);
        state = saved;
    }

    let n = data.train.len();
    let per_epoch = n.div_ceil(config.batch_size);
    let total = per_epoch * config.epochs;
    let order = EpochOrder::new(n, config.seed);
    let batcher = CifarBatcher::new(data.train.clone()).with_augmentation(config.augment);
    let sample: Vec<usize> = (0..n.min(TRAIN_ACCURACY_SAMPLE))
        .map(|i| i * n / n.min(TRAIN_ACCURACY_SAMPLE))
        .collect();

    let mut metrics = MetricsLog::open(run, options.resume, state.iteration)?;
    let mut progress = ProgressReport::new(options.progress, config.epochs, config.batch_size);
    let mut checkpoints = Checkpointer::new(run);
    // A fixed batch of validation images for the activation statistics.
    let probe: Vec<usize> = (0..data.val.len().min(PROBE_IMAGES)).collect();
    let val_batcher = CifarBatcher::new(data.val.clone());
    let mut monitor = match options.monitor_every {
        Some(0) => None,
        every => {
            let probe = val_batcher.batch(probe.clone(), device).images;
            let settings = MonitorSettings::for_run(
                per_epoch,
                every,
                (config.effective_warmup() * per_epoch as f64).ceil() as usize,
                config.model.activation(),
            )
            .with_equilibrium(RotationalEquilibrium::of(config));
            Some(LayerMonitor::new(
                settings,
                probe,
                &run.file("layers.csv"),
                options.resume.then_some(state.iteration),
                options.progress,
            )?)
        }
    };

    if !options.resume {
        // The lecture's initialization figure, for this run's own network.
        crate::charts::model_init_stats_chart(
            &run.file("init-stats.png"),
            trainer.model(),
            val_batcher.batch(probe, trainer.device()).images,
            &format!(
                "Activations at initialization, init {}",
                config.model.weight_init()
            ),
        )?;
    }

    let mut last_epoch_loss = f64::NAN;
    let mut images_trained = 0usize;
    let run_start = Instant::now();
    let seconds_before = state.seconds;
    let mut last_checkpoint = Instant::now();
    let mut status = RunStatus::Finished;

    'epochs: while state.epoch < config.epochs {
        let epoch = state.epoch;
        let batches = order.batches(epoch, config.batch_size);
        let epoch_start = Instant::now();
        let mut images = 0usize;
        let mut lr = config.lr_at(state.iteration, total, per_epoch);
        batcher.set_epoch(epoch, config.seed);
        progress.on_epoch_start(epoch, batches.len(), state.batch);
        metrics.on_epoch_start(epoch, batches.len(), state.batch);
        for indices in &batches[state.batch..] {
            let iteration = state.iteration;
            batcher.reseed(mix_seed(config.seed ^ AUGMENT_SALT, iteration as u64));
            trainer
                .device()
                .seed(mix_seed(config.seed, iteration as u64));
            let batch = batcher.batch(indices.clone(), trainer.device());
            lr = config.lr_at(iteration, total, per_epoch);
            let info = StepInfo {
                epoch,
                iteration,
                loss: f64::NAN,
                lr,
            };
            let mut observers: Vec<&mut dyn StepObserver> = Vec::new();
            if let Some(m) = monitor.as_mut() {
                observers.push(m);
            }
            let first = trainer.initial_loss().is_none();
            let outcome = trainer.step(batch, lr, info, &mut observers)?;
            if first && let Some(initial) = trainer.initial_loss() {
                // The lecture's first sanity check: with small weights the
                // softmax is near uniform, so the loss starts near ln(classes).
                options.progress.line(&format!(
                    "loss at initialization: {initial:.4} (ln 10 = {:.4} is what a uniform guess over 10 classes scores)",
                    10f64.ln()
                ));
                state.initial_loss = Some(initial);
            }
            if let Some(m) = monitor.as_mut() {
                m.print_new_warnings();
            }
            let loss = match outcome {
                StepOutcome::Updated { loss } => loss,
                StepOutcome::Diverged(divergence) => {
                    status = RunStatus::Diverged {
                        epoch: epoch + 1,
                        step: iteration + 1,
                        divergence,
                        layers: monitor
                            .as_ref()
                            .map(|m| m.ratios_above(crate::monitor::HIGH_RATIO))
                            .unwrap_or_default(),
                    };
                    break 'epochs;
                }
            };
            let info = StepInfo { loss, ..info };
            state.epoch_loss_sum += loss;
            images += indices.len();
            state.iteration += 1;
            state.batch += 1;
            trainer.after_steps(state.iteration, total);
            let running = state.epoch_loss_sum / state.batch as f64;
            metrics.on_step(&info, running)?;
            progress.on_step(&info, running)?;
            if options.interrupt.load(Ordering::SeqCst) {
                state.seconds = seconds_before + run_start.elapsed().as_secs_f64();
                run.save_checkpoint(&trainer, &state)?;
                status = RunStatus::Interrupted {
                    epoch: epoch + 1,
                    step: state.batch,
                };
                break 'epochs;
            }
            // A long epoch is checkpointed on the way, exactly as Ctrl-C does.
            if options
                .checkpoint_every
                .is_some_and(|every| last_checkpoint.elapsed() >= every)
                && state.batch < batches.len()
            {
                state.seconds = seconds_before + run_start.elapsed().as_secs_f64();
                run.save_checkpoint(&trainer, &state)?;
                last_checkpoint = Instant::now();
            }
        }
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        images_trained += images;
        let eval_model = trainer.model().valid();
        let val = evaluate(&eval_model, &data.val, 500, device, config.tta);
        let train_eval =
            evaluate_indices(&eval_model, &data.train, &sample, 500, device, Tta::None);
        last_epoch_loss = state.epoch_loss_sum / state.batch.max(1) as f64;
        state.epoch += 1;
        state.batch = 0;
        state.epoch_loss_sum = 0.0;
        state.seconds = seconds_before + run_start.elapsed().as_secs_f64();
        let summary = EpochSummary {
            epoch: state.epoch,
            train_loss: last_epoch_loss,
            train_accuracy: train_eval.accuracy,
            val_accuracy: val.accuracy,
            val_loss: val.loss,
            lr,
            images_per_sec: images as f64 / train_seconds.max(1e-9),
            seconds: state.seconds,
        };
        let is_best = state
            .best_val_accuracy
            .is_none_or(|best| val.accuracy > best);
        if is_best {
            state.best_val_accuracy = Some(val.accuracy);
            // The best model's confusion matrix is this epoch's evaluation.
            crate::charts::confusion_chart(
                &run.file("confusion-val.png"),
                &val.confusion,
                &cifar_data::CLASSES,
                &format!(
                    "Validation confusion matrix of the best model (epoch {}, accuracy {:.3})",
                    state.epoch, val.accuracy
                ),
            )?;
        }
        let end = EpochEnd {
            summary: &summary,
            trainer: &trainer,
            state: &state,
            is_best,
        };
        progress.on_epoch_end(&end)?;
        metrics.on_epoch_end(&end)?;
        checkpoints.on_epoch_end(&end)?;
        last_checkpoint = Instant::now();
        if let Some(m) = monitor.as_mut() {
            m.on_epoch_end(&end)?;
        }
        crate::charts::training_charts(run, &metrics, monitor.as_ref())?;
        if options
            .stop_after_epoch
            .is_some_and(|stop| state.epoch >= stop && state.epoch < config.epochs)
        {
            status = RunStatus::Paused { epoch: state.epoch };
            break;
        }
    }
    drop(progress);
    // A run stopped mid-epoch has steps the epoch-end charts have not shown.
    if matches!(
        status,
        RunStatus::Diverged { .. } | RunStatus::Interrupted { .. }
    ) {
        crate::charts::training_charts(run, &metrics, monitor.as_ref())?;
    }

    let test_accuracy = match (&data.test, &status) {
        (Some(test), RunStatus::Finished) => {
            let best = run.load_best(config.model.init(device))?;
            Some(evaluate(&best, test, 500, device, config.tta).accuracy)
        }
        _ => None,
    };
    let seconds = run_start.elapsed().as_secs_f64();
    let summary = RunSummary {
        run_dir: run.path().display().to_string(),
        status,
        epochs: state.epoch,
        initial_loss: state.initial_loss,
        final_training_loss: last_epoch_loss,
        val_accuracy: state.best_val_accuracy.unwrap_or(0.0),
        test_accuracy,
        images_per_sec: images_trained as f64 / seconds.max(1e-9),
        seconds: state.seconds,
        warnings: monitor
            .as_ref()
            .map(|m| m.warnings().to_vec())
            .unwrap_or_default(),
        notes: monitor
            .as_ref()
            .map(|m| m.notes().to_vec())
            .unwrap_or_default(),
    };
    crate::rundir::write_atomic(
        &run.file("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// Sets `flag` on the first Ctrl-C; a second Ctrl-C exits at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing this step and writing a checkpoint (press again to quit now)"
        );
    });
    flag
}
