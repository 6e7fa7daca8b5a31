//! Progress: a bar inside each epoch on a terminal, plain lines otherwise,
//! and one summary line per epoch.

use std::io::IsTerminal;
use std::sync::Mutex;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::callbacks::{Callback, EpochEnd, EpochSummary};
use crate::trainer::StepInfo;

/// The bar on screen, if any: lines printed while it is drawn go above it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn set_active(bar: Option<&ProgressBar>) {
    if let Ok(mut active) = ACTIVE_BAR.lock() {
        *active = bar.cloned();
    }
}

/// Where progress is reported.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Human-readable lines go to standard error (so standard output holds only `--json`).
    pub to_stderr: bool,
    /// Draw bars (standard error is a terminal).
    pub bars: bool,
}

impl Progress {
    /// Bars when standard error is a terminal; lines to standard error when `json`.
    pub fn new(json: bool) -> Self {
        Self {
            to_stderr: json,
            bars: std::io::stderr().is_terminal(),
        }
    }

    /// Prints one line where human-readable output goes (above the bar, if one is drawn).
    pub fn line(&self, text: &str) {
        let print = || {
            if self.to_stderr {
                eprintln!("{text}");
            } else {
                println!("{text}");
            }
        };
        let active = ACTIVE_BAR.lock().ok().and_then(|bar| bar.clone());
        match active {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// A bar for one epoch of `steps` steps, `done` of them already done.
    pub fn epoch_bar(&self, epoch: usize, epochs: usize, steps: usize, done: usize) -> EpochBar {
        let bar = if self.bars {
            let bar =
                ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{epoch}/{epochs}"));
            bar.set_position(done as u64);
            set_active(Some(&bar));
            Some(bar)
        } else {
            None
        };
        EpochBar {
            bar,
            progress: *self,
            epoch,
            steps,
            done,
            every: (steps / 5).max(1),
        }
    }

    /// A bar for a task of `steps` steps other than an epoch (on a terminal;
    /// otherwise a line every fifth of the way).
    pub fn task_bar(&self, name: &str, steps: usize) -> TaskBar {
        let bar = self.bars.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            set_active(Some(&bar));
            bar
        });
        TaskBar {
            bar,
            progress: *self,
            name: name.to_string(),
            steps,
            done: 0,
        }
    }

    /// The line after each epoch.
    pub fn epoch_line(&self, s: &EpochSummary, epochs: usize) {
        self.line(&format!(
            "epoch {}/{epochs}: loss {:.4}, train acc {:.3}, val acc {:.3}, lr {:.2e}, {:.0} img/s, {:.0}s",
            s.epoch, s.train_loss, s.train_accuracy, s.val_accuracy, s.lr, s.images_per_sec, s.seconds
        ));
    }
}

/// Progress within one epoch.
pub struct EpochBar {
    bar: Option<ProgressBar>,
    progress: Progress,
    epoch: usize,
    steps: usize,
    done: usize,
    every: usize,
}

impl EpochBar {
    /// One more step done, with the running mean loss and throughput.
    pub fn step(&mut self, loss: f64, images_per_sec: f64) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("loss {loss:.4} {images_per_sec:.0} img/s"));
                bar.inc(1);
            }
            None if self.done.is_multiple_of(self.every) && self.done < self.steps => {
                self.progress.line(&format!(
                    "  epoch {} step {}/{}: loss {loss:.4}, {images_per_sec:.0} img/s",
                    self.epoch, self.done, self.steps
                ));
            }
            None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            set_active(None);
            bar.finish_and_clear();
        }
    }
}

/// Progress of a task other than an epoch.
pub struct TaskBar {
    bar: Option<ProgressBar>,
    progress: Progress,
    name: String,
    steps: usize,
    done: usize,
}

impl TaskBar {
    /// One more step done; `message` says where it stands.
    pub fn step(&mut self, message: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_message(message.to_string());
                bar.inc(1);
            }
            None if self.done.is_multiple_of((self.steps / 5).max(1)) => {
                self.progress.line(&format!(
                    "  {} {}/{}: {message}",
                    self.name, self.done, self.steps
                ));
            }
            None => {}
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            set_active(None);
            bar.finish_and_clear();
        }
    }
}

/// Progress as a training callback: a bar per epoch and a line after it.
pub struct ProgressReport {
    progress: Progress,
    epochs: usize,
    bar: Option<EpochBar>,
    images: usize,
    started: std::time::Instant,
    batch_size: usize,
}

impl ProgressReport {
    /// Reports a run of `epochs` epochs of `batch_size` examples per step.
    pub fn new(progress: Progress, epochs: usize, batch_size: usize) -> Self {
        Self {
            progress,
            epochs,
            bar: None,
            images: 0,
            started: std::time::Instant::now(),
            batch_size,
        }
    }
}

impl Callback for ProgressReport {
    fn on_epoch_start(&mut self, epoch: usize, steps: usize, done: usize) {
        self.bar = Some(self.progress.epoch_bar(epoch + 1, self.epochs, steps, done));
        self.images = 0;
        self.started = std::time::Instant::now();
    }

    fn on_step(&mut self, _step: &StepInfo, epoch_loss: f64) -> Result<()> {
        self.images += self.batch_size;
        let rate = self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &mut self.bar {
            bar.step(epoch_loss, rate);
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, end: &EpochEnd<'_>) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        self.progress.epoch_line(end.summary, self.epochs);
        Ok(())
    }
}

impl Drop for ProgressReport {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
