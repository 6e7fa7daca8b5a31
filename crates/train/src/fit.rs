//! The training loop.
//!
//! One step: gather a batch, forward, cross-entropy, backward, optimizer
//! step. Around it: the learning-rate schedule, the divergence check,
//! progress, `metrics.csv`, a checkpoint at each epoch end (and on Ctrl-C),
//! and the best model by validation accuracy.
//!
//! Every random draw depends only on the seed and the step number, so a run
//! resumed from a checkpoint continues exactly as it would have run.
//! [`StepObserver`]s see the model before and after each step and at each
//! epoch end: the diagnostics plug in there.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{
    AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, RmsPropConfig, SgdConfig,
    decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::prelude::*;
use cifar_data::{CifarBatcher, EpochOrder, mix_seed};
use cifar_models::Model;
use serde::Serialize;

use crate::config::{OptimizerKind, TrainConfig};
use crate::dataset::Prepared;
use crate::evaluate::{evaluate, evaluate_indices};
use crate::progress::Progress;
use crate::rundir::{RunDir, TrainState};

/// Salt that separates the augmentation's random stream from dropout's.
const AUGMENT_SALT: u64 = 0xA5A5_5A5A_F00D_CAFE;
/// Training examples scored for the per-epoch training accuracy.
const TRAIN_ACCURACY_SAMPLE: usize = 1000;

/// What one step did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step in the whole run.
    pub iteration: usize,
    /// The batch's mean loss.
    pub loss: f64,
    /// The learning rate used.
    pub lr: f64,
}

/// What one epoch did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EpochSummary {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Accuracy on a sample of training examples (eval mode, no augmentation).
    pub train_accuracy: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// The learning rate at the epoch's last step.
    pub lr: f64,
    /// Training throughput over the epoch.
    pub images_per_sec: f64,
    /// Seconds of training so far.
    pub seconds: f64,
}

/// Sees the training as it happens; diagnostics implement this.
pub trait StepObserver {
    /// Called after each step with the model before and after the update.
    fn after_step(&mut self, _info: &StepInfo, _before: &Model, _after: &Model) -> Result<()> {
        Ok(())
    }
    /// Called after each epoch's evaluation.
    fn after_epoch(&mut self, _summary: &EpochSummary, _model: &Model) -> Result<()> {
        Ok(())
    }
}

/// The result of a run, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run folder.
    pub run_dir: String,
    /// Epochs trained.
    pub epochs: usize,
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
}

/// Builds the optimizer of `config`.
pub fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    let momentum = |nesterov| {
        MomentumConfig::new()
            .with_momentum(config.momentum)
            .with_dampening(0.0)
            .with_nesterov(nesterov)
    };
    match config.optimizer {
        OptimizerKind::Sgd => SgdConfig::new().with_weight_decay(decay).init(),
        OptimizerKind::Momentum => SgdConfig::new()
            .with_weight_decay(decay)
            .with_momentum(Some(momentum(false)))
            .init(),
        OptimizerKind::Nesterov => SgdConfig::new()
            .with_weight_decay(decay)
            .with_momentum(Some(momentum(true)))
            .init(),
        OptimizerKind::Adam => AdamConfig::new()
            .with_beta_1(config.momentum as f32)
            .with_epsilon(1e-8)
            .with_weight_decay(decay)
            .init(),
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_beta_1(config.momentum as f32)
            .with_epsilon(1e-8)
            .with_weight_decay(config.weight_decay as f32)
            .init(),
        OptimizerKind::Rmsprop => RmsPropConfig::new()
            .with_momentum(0.0)
            .with_epsilon(1e-8)
            .with_weight_decay(decay)
            .init(),
    }
}

/// Options of one `fit` call that are not part of the run's config.
pub struct FitOptions<'a> {
    /// Continue from the run folder's checkpoint.
    pub resume: bool,
    /// Set (by Ctrl-C) to stop after the current step.
    pub interrupt: Arc<AtomicBool>,
    /// Where progress goes.
    pub progress: Progress,
    /// Observers of every step.
    pub observers: Vec<&'a mut dyn StepObserver>,
}

/// Trains `config.model` on `data` into `run`, on `device` (a plain device; autodiff is added here).
pub fn fit(
    config: &TrainConfig,
    data: &Prepared,
    run: &RunDir,
    device: &Device,
    mut options: FitOptions<'_>,
) -> Result<RunSummary> {
    let train_device = device.clone().autodiff();
    train_device.seed(config.seed);
    let mut model = config.model.init(&train_device);
    let mut optim = optimizer(config);
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
        let (m, o, s) = run.load_checkpoint(model, optim)?;
        (model, optim, state) = (m, o, s);
        anyhow::ensure!(
            state.epoch < config.epochs,
            "--resume: the run already trained {} epochs; pass a larger --epochs to train longer",
            state.epoch
        );
    }
    let mut metrics = Metrics::open(run, options.resume, state.iteration)?;

    let n = data.train.len();
    let per_epoch = n.div_ceil(config.batch_size);
    let total = per_epoch * config.epochs;
    let order = EpochOrder::new(n, config.seed);
    let batcher = CifarBatcher::new(data.train.clone()).with_augmentation(config.augment);
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let sample: Vec<usize> = (0..n.min(TRAIN_ACCURACY_SAMPLE))
        .map(|i| i * n / n.min(TRAIN_ACCURACY_SAMPLE))
        .collect();
    let mut last_epoch_loss = f64::NAN;
    let mut images_trained = 0usize;
    let run_start = Instant::now();
    let seconds_before = state.seconds;

    while state.epoch < config.epochs {
        let epoch = state.epoch;
        let batches = order.batches(epoch, config.batch_size);
        let epoch_start = Instant::now();
        let mut images = 0usize;
        let mut lr = config.lr_at(state.iteration, total, per_epoch);
        let mut bar =
            options
                .progress
                .epoch_bar(epoch + 1, config.epochs, batches.len(), state.batch);
        for indices in &batches[state.batch..] {
            let iteration = state.iteration;
            batcher.reseed(mix_seed(config.seed ^ AUGMENT_SALT, iteration as u64));
            train_device.seed(mix_seed(config.seed, iteration as u64));
            let batch = batcher.batch(indices.clone(), &train_device);
            let logits = model.forward(batch.images);
            let loss = loss_fn.forward(logits, batch.targets);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            let initial = match state.initial_loss {
                Some(initial) => initial,
                None => {
                    // The lecture's first sanity check: with small weights the
                    // softmax is near uniform, so the loss starts near ln(classes).
                    options.progress.line(&format!(
                        "loss at initialization: {loss_value:.4} (ln 10 = {:.4} is what a uniform guess over 10 classes scores)",
                        10f64.ln()
                    ));
                    *state.initial_loss.insert(loss_value)
                }
            };
            if !loss_value.is_finite() || loss_value > 3.0 * initial {
                bail!(
                    "training diverged at step {} of epoch {}: the loss is {loss_value:.4}, more than 3 times its initial {initial:.4}. \
                     Lower the learning rate (--lr {} now; try {}), or add warmup (--warmup 1)",
                    iteration + 1,
                    epoch + 1,
                    config.lr,
                    config.lr / 10.0
                );
            }
            lr = config.lr_at(iteration, total, per_epoch);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let before = (!options.observers.is_empty()).then(|| model.clone());
            model = optim.step(lr, model, grads);
            let info = StepInfo {
                epoch,
                iteration,
                loss: loss_value,
                lr,
            };
            if let Some(before) = &before {
                for observer in options.observers.iter_mut() {
                    observer.after_step(&info, before, &model)?;
                }
            }
            metrics.iteration(&info)?;
            state.epoch_loss_sum += loss_value;
            images += indices.len();
            state.iteration += 1;
            state.batch += 1;
            let elapsed = epoch_start.elapsed().as_secs_f64();
            bar.step(
                state.epoch_loss_sum / state.batch as f64,
                images as f64 / elapsed.max(1e-9),
            );
            if options.interrupt.load(Ordering::SeqCst) {
                bar.finish();
                state.seconds = seconds_before + run_start.elapsed().as_secs_f64();
                run.save_checkpoint(&model, &optim, &state)?;
                bail!(
                    "interrupted at step {} of epoch {}: checkpoint written to {}; continue with `train fit --out {} --resume`",
                    state.batch,
                    epoch + 1,
                    run.file("checkpoint").display(),
                    run.path().display()
                );
            }
        }
        bar.finish();
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        images_trained += images;
        let eval_model = model.valid();
        let val = evaluate(&eval_model, &data.val, 500, device);
        let train_eval = evaluate_indices(&eval_model, &data.train, &sample, 500, device);
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
        options.progress.epoch_line(&summary, config.epochs);
        metrics.epoch(&summary, state.iteration)?;
        metrics.plot(run)?;
        if state
            .best_val_accuracy
            .is_none_or(|best| val.accuracy > best)
        {
            state.best_val_accuracy = Some(val.accuracy);
            run.save_best(&model)?;
        }
        run.save_checkpoint(&model, &optim, &state)?;
        for observer in options.observers.iter_mut() {
            observer.after_epoch(&summary, &model)?;
        }
    }

    let test_accuracy = match &data.test {
        Some(test) => {
            let best = run.load_best(config.model.init(device))?;
            Some(evaluate(&best, test, 500, device).accuracy)
        }
        None => None,
    };
    let seconds = run_start.elapsed().as_secs_f64();
    let summary = RunSummary {
        run_dir: run.path().display().to_string(),
        epochs: state.epoch,
        final_training_loss: last_epoch_loss,
        val_accuracy: state.best_val_accuracy.unwrap_or(0.0),
        test_accuracy,
        images_per_sec: images_trained as f64 / seconds.max(1e-9),
        seconds: state.seconds,
    };
    crate::rundir::write_atomic(
        &run.file("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// `metrics.csv`: one row per step (loss, lr) and one per epoch (accuracies).
struct Metrics {
    file: std::fs::File,
    /// Every step's loss so far, for `loss.png`.
    losses: Vec<f64>,
}

const METRICS_HEADER: &str =
    "kind,epoch,iteration,loss,lr,train_accuracy,val_accuracy,val_loss,images_per_sec,seconds";

impl Metrics {
    /// Opens the file; when resuming, drops the rows past the checkpoint's step.
    fn open(run: &RunDir, resume: bool, iteration: usize) -> Result<Self> {
        let path = run.file("metrics.csv");
        let mut losses = Vec::new();
        let mut kept = String::from(METRICS_HEADER);
        kept.push('\n');
        if resume && let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines().skip(1) {
                let step: usize = line
                    .split(',')
                    .nth(2)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                if step <= iteration {
                    if line.starts_with("step,") {
                        losses.push(
                            line.split(',')
                                .nth(3)
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(f64::NAN),
                        );
                    }
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
        crate::rundir::write_atomic(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        Ok(Self { file, losses })
    }

    fn iteration(&mut self, s: &StepInfo) -> Result<()> {
        self.losses.push(s.loss);
        // Iteration rows count steps from 1, so the epoch row after step k also reads k.
        writeln!(
            self.file,
            "step,{},{},{:.6},{:.6e},,,,,",
            s.epoch + 1,
            s.iteration + 1,
            s.loss,
            s.lr
        )?;
        Ok(())
    }

    fn epoch(&mut self, s: &EpochSummary, iteration: usize) -> Result<()> {
        writeln!(
            self.file,
            "epoch,{},{},{:.6},{:.6e},{:.4},{:.4},{:.6},{:.1},{:.1}",
            s.epoch,
            iteration,
            s.train_loss,
            s.lr,
            s.train_accuracy,
            s.val_accuracy,
            s.val_loss,
            s.images_per_sec,
            s.seconds
        )?;
        self.file.flush()?;
        Ok(())
    }

    /// Draws the loss of every step so far (and its running mean) to `loss.png`.
    fn plot(&self, run: &RunDir) -> Result<()> {
        crate::plot::curve_png(&self.losses, 50, &run.file("loss.png"))
    }
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
