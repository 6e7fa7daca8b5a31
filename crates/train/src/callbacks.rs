//! Epoch-level work around the training step: the metrics log, checkpoints
//! and the best model. Progress output (`progress.rs`) and the layer
//! monitor (`monitor.rs`) are callbacks too.
//!
//! `fit` calls every [`Callback`] at the start of each epoch, after each
//! step, and after each epoch's evaluation.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::rundir::{RunDir, TrainState};
use crate::trainer::{StepInfo, Trainer};

/// What one epoch did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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

/// The state of the run at the end of an epoch, for callbacks that save it.
pub struct EpochEnd<'a> {
    /// The epoch's figures.
    pub summary: &'a EpochSummary,
    /// Model and optimizer.
    pub trainer: &'a Trainer,
    /// Where the run stands (already counting this epoch).
    pub state: &'a TrainState,
    /// Whether this epoch's validation accuracy is the best so far.
    pub is_best: bool,
}

/// Work around the training steps. Every method has a default that does nothing.
pub trait Callback {
    /// An epoch of `steps` steps starts (`done` of them already done, when resuming).
    fn on_epoch_start(&mut self, _epoch: usize, _steps: usize, _done: usize) {}
    /// A step was taken; `epoch_loss` is the running mean loss of the epoch.
    fn on_step(&mut self, _step: &StepInfo, _epoch_loss: f64) -> Result<()> {
        Ok(())
    }
    /// The epoch ended and was evaluated.
    fn on_epoch_end(&mut self, _end: &EpochEnd<'_>) -> Result<()> {
        Ok(())
    }
}

/// `metrics.csv`: one row per step (loss, lr) and one per epoch (accuracies).
pub struct MetricsLog {
    file: Option<std::fs::File>,
    steps: Vec<StepInfo>,
    epochs: Vec<(usize, EpochSummary)>,
}

/// The columns of `metrics.csv`.
pub const METRICS_HEADER: &str =
    "kind,epoch,iteration,loss,lr,train_accuracy,val_accuracy,val_loss,images_per_sec,seconds";

impl MetricsLog {
    /// Opens `metrics.csv` in `run`; when resuming, keeps the rows up to
    /// step `iteration` (the checkpoint's) and drops the rest.
    pub fn open(run: &RunDir, resume: bool, iteration: usize) -> Result<Self> {
        let path = run.file("metrics.csv");
        let text = if resume {
            std::fs::read_to_string(&path).unwrap_or_default()
        } else {
            String::new()
        };
        let (kept, steps, epochs) = Self::parse(&text, iteration);
        crate::rundir::write_atomic(&path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        Ok(Self {
            file: Some(file),
            steps,
            epochs,
        })
    }

    /// Reads a run's `metrics.csv` without changing it (for `train report`).
    pub fn read(run: &RunDir) -> Result<Self> {
        let path = run.file("metrics.csv");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(
            text.starts_with("kind,"),
            "{} is not a metrics file of this program",
            path.display()
        );
        let (_, steps, epochs) = Self::parse(&text, usize::MAX);
        Ok(Self {
            file: None,
            steps,
            epochs,
        })
    }

    /// The rows of `text` up to step `iteration`: the kept text, steps and epochs.
    #[allow(clippy::type_complexity)]
    fn parse(text: &str, iteration: usize) -> (String, Vec<StepInfo>, Vec<(usize, EpochSummary)>) {
        let mut kept = String::from(METRICS_HEADER);
        kept.push('\n');
        let mut steps = Vec::new();
        let mut epochs = Vec::new();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let num = |i: usize| -> f64 {
                fields
                    .get(i)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let step = fields
                .get(2)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(usize::MAX);
            if step > iteration {
                continue;
            }
            let epoch = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
            match fields.first() {
                Some(&"step") => steps.push(StepInfo {
                    epoch: epoch - 1,
                    iteration: step - 1,
                    loss: num(3),
                    lr: num(4),
                }),
                Some(&"epoch") => epochs.push((
                    step,
                    EpochSummary {
                        epoch,
                        train_loss: num(3),
                        lr: num(4),
                        train_accuracy: num(5),
                        val_accuracy: num(6),
                        val_loss: num(7),
                        images_per_sec: num(8),
                        seconds: num(9),
                    },
                )),
                _ => {}
            }
            kept.push_str(line);
            kept.push('\n');
        }
        (kept, steps, epochs)
    }

    /// Every step so far.
    pub fn steps(&self) -> &[StepInfo] {
        &self.steps
    }

    /// Every epoch so far, with the step count at its end.
    pub fn epochs(&self) -> &[(usize, EpochSummary)] {
        &self.epochs
    }
}

impl Callback for MetricsLog {
    fn on_step(&mut self, s: &StepInfo, _epoch_loss: f64) -> Result<()> {
        self.steps.push(*s);
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        // Step rows count from 1, so the epoch row after step k also reads k.
        writeln!(
            file,
            "step,{},{},{:.6},{:.6e},,,,,",
            s.epoch + 1,
            s.iteration + 1,
            s.loss,
            s.lr
        )?;
        Ok(())
    }

    fn on_epoch_end(&mut self, end: &EpochEnd<'_>) -> Result<()> {
        let s = end.summary;
        self.epochs.push((end.state.iteration, *s));
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        writeln!(
            file,
            "epoch,{},{},{:.6},{:.6e},{:.4},{:.4},{:.6},{:.1},{:.1}",
            s.epoch,
            end.state.iteration,
            s.train_loss,
            s.lr,
            s.train_accuracy,
            s.val_accuracy,
            s.val_loss,
            s.images_per_sec,
            s.seconds
        )?;
        file.flush()?;
        Ok(())
    }
}

/// Saves the best model (by validation accuracy) and a checkpoint after every epoch.
pub struct Checkpointer<'a> {
    run: &'a RunDir,
}

impl<'a> Checkpointer<'a> {
    /// Checkpoints into `run`.
    pub fn new(run: &'a RunDir) -> Self {
        Self { run }
    }
}

impl Callback for Checkpointer<'_> {
    fn on_epoch_end(&mut self, end: &EpochEnd<'_>) -> Result<()> {
        if end.is_best {
            self.run.save_best(end.trainer.model())?;
        }
        self.run.save_checkpoint(end.trainer, end.state)
    }
}
