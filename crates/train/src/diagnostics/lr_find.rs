//! `train lr-find`: the learning-rate range test (Smith, 2015; fastai's
//! `lr_find`, Lightning's `Tuner.lr_find`).
//!
//! One step per rate on fresh batches, the rate growing exponentially from
//! `start` to `end`; the loss is smoothed with a bias-corrected exponential
//! moving average (beta 0.98) and the sweep stops when the smoothed loss
//! exceeds 4x its minimum or becomes NaN. Three suggestions, side by side:
//!
//! - **steepest**: where the smoothed loss falls fastest against log10(lr),
//!   skipping the first 10% of points;
//! - **valley**: the middle of the longest descending stretch of the
//!   smoothed loss (fastai's default since 2.5);
//! - **minimum**: the rate of the lowest smoothed loss, divided by 10.
//!
//! `train fit --lr find` trains with the valley.

use anyhow::Result;
use burn::prelude::*;
use cifar_data::{CifarBatcher, EpochOrder, mix_seed};
use serde::Serialize;

use crate::config::{LrSchedule, TrainConfig};
use crate::dataset::Prepared;
use crate::progress::Progress;
use crate::trainer::{StepInfo, StepOutcome, Trainer};

/// The sweep's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindConfig {
    /// First rate.
    pub start: f64,
    /// Last rate.
    pub end: f64,
    /// Rates tried (one step each).
    pub steps: usize,
    /// Smoothing of the loss.
    pub beta: f64,
    /// Stop when the smoothed loss exceeds this many times its minimum.
    pub stop_factor: f64,
    /// Fraction of the first points the steepest-descent suggestion skips.
    pub skip_start: f64,
}

impl Default for LrFindConfig {
    fn default() -> Self {
        Self {
            start: 1e-7,
            end: 10.0,
            steps: 100,
            beta: 0.98,
            stop_factor: 4.0,
            skip_start: 0.1,
        }
    }
}

impl LrFindConfig {
    /// Checks the settings, naming the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.start.is_finite() && self.start > 0.0) {
            return Err(format!(
                "--start must be a positive rate, got {}",
                self.start
            ));
        }
        if !(self.end.is_finite() && self.end > self.start) {
            return Err(format!(
                "--end must be a rate above --start ({}), got {}",
                self.start, self.end
            ));
        }
        if self.steps < 5 {
            return Err(format!("--steps must be at least 5, got {}", self.steps));
        }
        Ok(())
    }

    /// The rate of step `i`.
    pub fn lr_at(&self, i: usize) -> f64 {
        let t = i as f64 / (self.steps - 1).max(1) as f64;
        self.start * (self.end / self.start).powf(t)
    }
}

/// One rate of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LrPoint {
    /// The rate.
    pub lr: f64,
    /// The step's loss.
    pub loss: f64,
    /// The bias-corrected moving average of the loss.
    pub smoothed: f64,
}

/// The three suggested rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Suggestions {
    /// Steepest descent of the smoothed loss against log10(lr).
    pub steepest: f64,
    /// The middle of the longest descending stretch.
    pub valley: f64,
    /// The rate of the minimum smoothed loss, divided by 10.
    pub minimum: f64,
}

/// The sweep and its suggestions, as `--json` prints them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LrFindResult {
    /// The three suggestions.
    pub suggestions: Suggestions,
    /// The one `train fit --lr find` uses.
    pub chosen: &'static str,
    /// Its rate.
    pub lr: f64,
    /// Why the sweep ended.
    pub stopped: String,
    /// Every point of the sweep.
    pub points: Vec<LrPoint>,
}

/// Bias-corrected exponential moving averages of `losses`.
pub fn smooth(losses: &[f64], beta: f64) -> Vec<f64> {
    let mut avg = 0.0;
    losses
        .iter()
        .enumerate()
        .map(|(i, &loss)| {
            avg = beta * avg + (1.0 - beta) * loss;
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// The three suggestions for a sweep (`None` with fewer than 5 finite points).
pub fn suggest(points: &[LrPoint], skip_start: f64) -> Option<Suggestions> {
    let points: Vec<LrPoint> = points
        .iter()
        .copied()
        .filter(|p| p.smoothed.is_finite())
        .collect();
    let n = points.len();
    if n < 5 {
        return None;
    }
    let x: Vec<f64> = points.iter().map(|p| p.lr.log10()).collect();
    let y: Vec<f64> = points.iter().map(|p| p.smoothed).collect();
    // Minimum.
    let min_index = (0..n).min_by(|&a, &b| y[a].total_cmp(&y[b]))?;
    let minimum = points[min_index].lr / 10.0;
    // Steepest: the most negative central-difference slope, skipping the start.
    let first = ((n as f64 * skip_start).ceil() as usize).clamp(1, n - 2);
    let steepest_index = (first..n - 1)
        .min_by(|&a, &b| {
            let slope = |i: usize| (y[i + 1] - y[i - 1]) / (x[i + 1] - x[i - 1]);
            slope(a).total_cmp(&slope(b))
        })
        .unwrap_or(first);
    // Valley: the middle of the longest run of strictly falling smoothed losses.
    let (mut best_start, mut best_len) = (0, 0);
    let mut run_start = 0;
    for i in 1..n {
        if y[i] >= y[i - 1] {
            run_start = i;
        }
        if i - run_start > best_len {
            best_len = i - run_start;
            best_start = run_start;
        }
    }
    let valley_index = best_start + best_len / 2;
    Some(Suggestions {
        steepest: points[steepest_index].lr,
        valley: points[valley_index].lr,
        minimum,
    })
}

/// Runs the sweep on a freshly initialized model of `config` (its
/// optimizer, batch size and augmentation; no schedule, no warmup).
pub fn lr_find(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    finder: &LrFindConfig,
    progress: Progress,
) -> Result<LrFindResult> {
    finder.validate().map_err(anyhow::Error::msg)?;
    let mut config = config.clone();
    config.lr_schedule = LrSchedule::Constant;
    config.warmup = 0.0;
    let mut trainer = Trainer::for_data(&config, device, &data.train)?;
    // The sweep has its own stopping rule.
    trainer.divergence_factor = f64::INFINITY;
    let batcher = CifarBatcher::new(data.train.clone()).with_augmentation(config.augment);
    let order = EpochOrder::new(data.train.len(), config.seed);
    let per_epoch = data.train.len().div_ceil(config.batch_size);
    let mut losses = Vec::new();
    let mut points = Vec::new();
    let mut best = f64::INFINITY;
    let mut stopped = format!("reached --end {:.0e}", finder.end);
    let mut bar = progress.task_bar("lr-find", finder.steps);
    let mut batches = Vec::new();
    for i in 0..finder.steps {
        let epoch = i / per_epoch;
        if i % per_epoch == 0 {
            batches = order.batches(epoch, config.batch_size);
        }
        let indices = batches[i % per_epoch].clone();
        batcher.reseed(mix_seed(config.seed ^ 0x1f1f, i as u64));
        trainer.device().seed(mix_seed(config.seed, i as u64));
        let lr = finder.lr_at(i);
        let info = StepInfo {
            epoch,
            iteration: i,
            loss: f64::NAN,
            lr,
        };
        let loss =
            match trainer.step(batcher.batch(indices, trainer.device()), lr, info, &mut [])? {
                StepOutcome::Updated { loss } => loss,
                StepOutcome::Diverged(d) => d.loss,
            };
        losses.push(loss);
        let smoothed = *smooth(&losses, finder.beta).last().expect("a loss");
        points.push(LrPoint { lr, loss, smoothed });
        bar.step(&format!("lr {lr:.2e}, smoothed loss {smoothed:.4}"));
        if !smoothed.is_finite() || !loss.is_finite() {
            stopped = format!("the loss became {loss} at lr {lr:.2e}");
            break;
        }
        best = best.min(smoothed);
        if smoothed > finder.stop_factor * best {
            stopped = format!(
                "the smoothed loss {smoothed:.3} exceeded {}x its minimum {best:.3} at lr {lr:.2e}",
                finder.stop_factor
            );
            break;
        }
    }
    bar.finish();
    let suggestions = suggest(&points, finder.skip_start).ok_or_else(|| {
        anyhow::anyhow!(
            "the sweep stopped after {} points ({stopped}): too few to suggest a rate; \
             lower --start or raise --steps",
            points.len()
        )
    })?;
    Ok(LrFindResult {
        lr: suggestions.valley,
        chosen: "valley",
        suggestions,
        stopped,
        points,
    })
}

/// Writes the sweep as CSV: `lr,loss,smoothed_loss`.
pub fn write_csv(result: &LrFindResult, path: &std::path::Path) -> Result<()> {
    let mut text = String::from("lr,loss,smoothed_loss\n");
    for p in &result.points {
        text.push_str(&format!("{:.6e},{:.6},{:.6}\n", p.lr, p.loss, p.smoothed));
    }
    crate::rundir::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A curve with a known answer: flat at 2.3 up to lr 1e-3, a half-cosine
    /// descent to 1.0 at lr 1e-1 (steepest at its middle, 1e-2), then a rise.
    fn synthetic() -> Vec<LrPoint> {
        (0..=160)
            .map(|i| {
                let x = -6.0 + i as f64 * 0.05; // log10(lr) from -6 to 2
                let y = if x < -3.0 {
                    2.3
                } else if x <= -1.0 {
                    2.3 - 1.3 * (1.0 - (std::f64::consts::PI * (x + 3.0) / 2.0).cos()) / 2.0
                } else {
                    1.0 + (x + 1.0).powi(2)
                };
                LrPoint {
                    lr: 10f64.powf(x),
                    loss: y,
                    smoothed: y,
                }
            })
            .collect()
    }

    #[test]
    fn suggestions_on_a_known_curve() {
        let s = suggest(&synthetic(), 0.1).unwrap();
        let near = |lr: f64, target: f64| (lr.log10() - target).abs() <= 0.1;
        assert!(near(s.steepest, -2.0), "steepest {}", s.steepest);
        assert!(near(s.valley, -2.0), "valley {}", s.valley);
        assert!(near(s.minimum, -2.0), "minimum {}", s.minimum);
    }

    #[test]
    fn smoothing_is_bias_corrected() {
        // A constant loss smooths to itself from the first point.
        for v in smooth(&[2.0, 2.0, 2.0], 0.98) {
            assert!((v - 2.0).abs() < 1e-12);
        }
        // By hand: avg1 = 0.02 * 1 = 0.02 -> 1; avg2 = 0.98 * 0.02 + 0.02 * 3 = 0.0796,
        // corrected by 1 - 0.98^2 = 0.0396 -> 2.0101...
        let s = smooth(&[1.0, 3.0], 0.98);
        assert!((s[1] - 0.0796 / 0.0396).abs() < 1e-12);
    }

    #[test]
    fn rates_grow_exponentially() {
        let c = LrFindConfig::default();
        assert!((c.lr_at(0) - 1e-7).abs() < 1e-20);
        assert!((c.lr_at(99) - 10.0).abs() < 1e-9);
        assert!((c.lr_at(1) / c.lr_at(0) - c.lr_at(2) / c.lr_at(1)).abs() < 1e-9);
        assert!(
            LrFindConfig {
                end: 1e-8,
                ..c.clone()
            }
            .validate()
            .unwrap_err()
            .contains("--end")
        );
    }
}
