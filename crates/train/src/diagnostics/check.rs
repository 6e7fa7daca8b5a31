//! `train check`: the lecture's sanity checks, each with a verdict.
//!
//! 1. Loss at initialization against ln(classes).
//! 2. Regularization raises the loss (an explicit L2 penalty, λ = 1e3).
//! 3. Overfitting 20 training examples.
//! 4. Gradient check: analytic against centered finite differences.
//! 5. The data as the network sees it.
//! 6. Learning-rate extremes: 1e-6 barely moves the loss, 1e6 blows it up.
//!
//! Each check measures something, compares it with what a healthy setup
//! gives, and says PASS, WARN or FAIL, with what to try on a failure.

use anyhow::Result;
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use cifar_data::{CifarBatch, CifarBatcher, EpochOrder, Features, Preprocessing};
use cifar_models::Model;
use serde::Serialize;

use crate::config::{LrSchedule, TrainConfig};
use crate::dataset::Prepared;
use crate::params::{parameters, squared_norm};
use crate::progress::Progress;
use crate::trainer::{StepInfo, StepOutcome, Trainer};

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As expected.
    Pass,
    /// Suspicious; training may still work.
    Warn,
    /// Broken: fix this before training.
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// The check's name, such as `loss-at-init`.
    pub name: String,
    /// PASS, WARN or FAIL.
    pub verdict: Verdict,
    /// What was measured.
    pub measured: String,
    /// What a healthy setup gives.
    pub expected: String,
    /// What to try (empty on a pass).
    pub advice: String,
}

/// Every check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// The checks, in order.
    pub checks: Vec<CheckResult>,
    /// Whether no check failed.
    pub passed: bool,
}

/// Budgets of the checks.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Batches averaged for the loss at initialization.
    pub init_batches: usize,
    /// Examples of the overfitting check.
    pub overfit_examples: usize,
    /// Step budget of the overfitting check.
    pub overfit_steps: usize,
    /// Parameters sampled per tensor by the gradient check.
    pub grad_samples: usize,
    /// Examples in the gradient check's batch.
    pub grad_batch: usize,
    /// Steps at each learning-rate extreme.
    pub extreme_steps: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            init_batches: 4,
            overfit_examples: 20,
            overfit_steps: 300,
            grad_samples: 3,
            grad_batch: 8,
            extreme_steps: 20,
        }
    }
}

/// The L2 strength of the regularization check (the lecture's 1e3).
pub const LARGE_LAMBDA: f64 = 1e3;
/// The overfitting check's target loss.
pub const OVERFIT_LOSS: f64 = 0.05;
/// Relative gradient error above which the gradient check warns (f32 arithmetic).
pub const GRAD_WARN: f64 = 1e-2;
/// Relative gradient error above which the gradient check fails.
pub const GRAD_FAIL: f64 = 1e-1;

/// Runs every check on `config` (model, optimizer, data handling) with `data`.
pub fn run_checks(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &CheckOptions,
    progress: Progress,
) -> Result<CheckReport> {
    let classes = config.model.classes();
    let mut checks = Vec::new();
    let mut run = |name: &str, f: &mut dyn FnMut() -> Result<CheckResult>| -> Result<()> {
        progress.line(&format!("checking {name}..."));
        let result = f()?;
        progress.line(&format!(
            "  {} {}: {}",
            result.verdict, result.name, result.measured
        ));
        checks.push(result);
        Ok(())
    };
    // The checks run without regularization, augmentation or dropout.
    let plain = plain_config(config);
    run("loss at initialization", &mut || {
        loss_at_init(&plain, data, device, options, classes)
    })?;
    run("regularization", &mut || {
        regularization(&plain, data, device)
    })?;
    run("overfitting a tiny subset", &mut || {
        overfit(&plain, data, device, options)
    })?;
    run("gradient check", &mut || {
        gradient_check(&plain, data, device, options)
    })?;
    run("data", &mut || Ok(data_check(config, &data.train, classes)))?;
    run("learning-rate extremes", &mut || {
        lr_extremes(&plain, data, device, options, classes)
    })?;
    let passed = checks.iter().all(|c| c.verdict != Verdict::Fail);
    Ok(CheckReport { checks, passed })
}

/// `config` without weight decay, augmentation, dropout or schedule.
fn plain_config(config: &TrainConfig) -> TrainConfig {
    let mut plain = config.clone();
    plain.weight_decay = 0.0;
    plain.augment = None;
    plain.lr_schedule = LrSchedule::Constant;
    plain.warmup = 0.0;
    *plain.model.layer_settings().dropout = 0.0;
    plain
}

fn result(
    name: &str,
    verdict: Verdict,
    measured: String,
    expected: impl Into<String>,
    advice: impl Into<String>,
) -> CheckResult {
    CheckResult {
        name: name.into(),
        verdict,
        measured,
        expected: expected.into(),
        advice: if verdict == Verdict::Pass {
            String::new()
        } else {
            advice.into()
        },
    }
}

/// The first `n` training examples as one batch on `device`.
fn first_examples(features: &std::sync::Arc<Features>, n: usize, device: &Device) -> CifarBatch {
    let n = n.min(features.len());
    CifarBatcher::new(features.clone()).batch((0..n).collect(), device)
}

/// Check 1: the mean loss of a few batches of a fresh model, against ln(classes).
pub fn loss_at_init(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &CheckOptions,
    classes: usize,
) -> Result<CheckResult> {
    let trainer = Trainer::new(config, device);
    let batcher = CifarBatcher::new(data.train.clone());
    let batches = EpochOrder::new(data.train.len(), config.seed).batches(0, config.batch_size);
    let used: Vec<f64> = batches
        .into_iter()
        .take(options.init_batches.max(1))
        .map(|indices| trainer.loss_of(batcher.batch(indices, trainer.device())))
        .collect();
    let loss = used.iter().sum::<f64>() / used.len() as f64;
    let expected = (classes as f64).ln();
    let gap = loss - expected;
    let verdict = if !loss.is_finite() || gap.abs() > 0.5 {
        Verdict::Fail
    } else if gap.abs() > 0.15 {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    let advice = if gap > 0.0 || !loss.is_finite() {
        "the logits start too large, so the softmax is confident before it has learned anything: \
         use a smaller initialization (--init he or xavier rather than large or gaussian:STD), \
         or scale down the output layer or the logits"
    } else {
        "the loss starts below chance, which a random model should not do: check the labels and the loss"
    };
    Ok(result(
        "loss-at-init",
        verdict,
        format!(
            "{loss:.4} (mean of {} batches of {}, no regularization)",
            used.len(),
            config.batch_size
        ),
        format!("about ln({classes}) = {expected:.4} (within 0.15)"),
        advice,
    ))
}

/// Lambda/2 times the sum of squared weights (not biases or norm parameters).
pub fn l2_penalty(model: &Model, lambda: f64) -> f64 {
    let sum: f64 = parameters(model, None)
        .iter()
        .filter(|p| p.is_weight())
        .map(|p| squared_norm(&p.value))
        .sum();
    lambda / 2.0 * sum
}

/// Check 2: the loss plus an explicit L2 penalty with λ = 1e3 exceeds the plain loss.
pub fn regularization(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
) -> Result<CheckResult> {
    let trainer = Trainer::new(config, device);
    let batch = first_examples(&data.train, config.batch_size, trainer.device());
    let loss = trainer.loss_of(batch);
    let penalty = l2_penalty(trainer.model(), LARGE_LAMBDA);
    let total = loss + penalty;
    let verdict = if total > loss && penalty.is_finite() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Ok(result(
        "regularization",
        verdict,
        format!("data loss {loss:.4}, with L2 penalty (λ = {LARGE_LAMBDA:.0e}) {total:.4}"),
        "the regularized loss above the data loss",
        "the L2 penalty adds nothing: every weight is zero (--init zeros?), so regularization \
         cannot act and the units cannot differ; use --init he or xavier",
    ))
}

/// Check 3: overfit a handful of training examples with no regularization.
pub fn overfit(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &CheckOptions,
) -> Result<CheckResult> {
    let mut trainer = Trainer::new(config, device);
    trainer.divergence_factor = f64::INFINITY;
    let n = options.overfit_examples.min(data.train.len());
    let batch = first_examples(&data.train, n, trainer.device());
    let mut steps = 0;
    for step in 0..options.overfit_steps {
        steps = step + 1;
        let info = StepInfo {
            epoch: 0,
            iteration: step,
            loss: f64::NAN,
            lr: config.lr,
        };
        match trainer.step(batch.clone(), config.lr, info, &mut [])? {
            // The loss is of the weights before this step: confirm with the accuracy after it.
            StepOutcome::Updated { loss } => {
                if loss < OVERFIT_LOSS && batch_accuracy(trainer.model(), &batch) == 1.0 {
                    break;
                }
            }
            StepOutcome::Diverged(_) => break,
        }
    }
    let after = trainer.loss_of(batch.clone());
    let accuracy = batch_accuracy(trainer.model(), &batch);
    let verdict = if accuracy == 1.0 && after < OVERFIT_LOSS {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Ok(result(
        "overfit",
        verdict,
        format!(
            "training accuracy {:.0}%, loss {after:.4} after {steps} steps on {n} examples (lr {:.3e})",
            100.0 * accuracy,
            config.lr
        ),
        format!(
            "100% and a loss below {OVERFIT_LOSS} within {} steps",
            options.overfit_steps
        ),
        "a model that cannot memorize 20 examples is broken or cannot learn: all-equal weights \
         (--init zeros) never break symmetry, tiny weights in a deep sigmoid/tanh net vanish \
         (--init xavier or he, --batch-norm), and a wrong learning rate stalls (try --lr 10x higher or lower)",
    ))
}

/// Fraction of `batch` the model classifies correctly (in training mode, as it was trained).
fn batch_accuracy(model: &Model, batch: &CifarBatch) -> f64 {
    let predicted = model
        .forward(batch.images.clone())
        .argmax(1)
        .into_data()
        .try_into_vec_as::<i64>()
        .expect("ints");
    let truth = batch
        .targets
        .clone()
        .into_data()
        .try_into_vec_as::<i64>()
        .expect("ints");
    let correct = predicted.iter().zip(&truth).filter(|(a, b)| a == b).count();
    correct as f64 / truth.len().max(1) as f64
}

/// Adds `delta` to element `index` of the parameter `id`.
struct Nudge {
    id: ParamId,
    index: usize,
    delta: f32,
}

impl ModuleMapper for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.id != self.id {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let device = tensor.device();
        let mut values = tensor
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float parameter");
        values[self.index] += self.delta;
        let nudged = Tensor::<D>::from_data(TensorData::new(values, dims), &device);
        Param::from_mapped_value(id, nudged, mapper)
    }
}

/// One layer's worst relative error in the gradient check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerGradError {
    /// The parameter tensor.
    pub name: String,
    /// The largest relative error among its sampled elements.
    pub error: f64,
}

/// `|a - n| / max(|a|, |n|)`, 0 when both are (nearly) zero.
pub fn relative_error(analytic: f64, numeric: f64) -> f64 {
    let scale = analytic.abs().max(numeric.abs());
    if scale < 1e-8 {
        0.0
    } else {
        (analytic - numeric).abs() / scale
    }
}

/// Check 4: analytic gradients against centered finite differences.
pub fn gradient_check(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &CheckOptions,
) -> Result<CheckResult> {
    let trainer = Trainer::new(config, device);
    let batch = first_examples(&data.train, options.grad_batch, trainer.device());
    let errors = layer_grad_errors(trainer.model(), &batch, options.grad_samples, config.seed);
    let worst = errors
        .iter()
        .map(|e| e.error)
        .fold(0.0f64, |a, b| if b.is_nan() { f64::NAN } else { a.max(b) });
    let verdict = if !(worst <= GRAD_FAIL) {
        Verdict::Fail
    } else if worst > GRAD_WARN {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    let listed: Vec<String> = errors
        .iter()
        .map(|e| format!("{} {:.1e}", e.name, e.error))
        .collect();
    let kinked = config.model.has_kinks();
    let mut advice = String::from(
        "a large error means the backward pass disagrees with the forward pass: a custom layer's \
         gradient is wrong, or the loss is not differentiable where it was probed",
    );
    if kinked {
        advice.push_str(
            "; this model has kinks (ReLU, max pool or Maxout): a finite difference that \
             crosses one disagrees with the analytic gradient, so an isolated miss is expected",
        );
    }
    Ok(result(
        "gradient-check",
        verdict,
        format!(
            "worst relative error {worst:.1e} over {} tensors x {} elements (f32); per tensor: {}",
            errors.len(),
            options.grad_samples,
            listed.join(", ")
        ),
        format!(
            "relative error below {GRAD_WARN:.0e} (f32; warn above, fail above {GRAD_FAIL:.0e})"
        ),
        advice,
    ))
}

/// The worst relative error of each parameter tensor of `model` (in training
/// mode, on an autodiff device) on `batch`, over `samples` elements each,
/// drawn at random among the elements whose gradient is at least the
/// tensor's median (where a finite difference in f32 is above its noise).
pub fn layer_grad_errors(
    model: &Model,
    batch: &CifarBatch,
    samples: usize,
    seed: u64,
) -> Vec<LayerGradError> {
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&batch.images.device());
    let loss_of = |m: &Model| -> f64 {
        let logits = m.forward(batch.images.clone());
        loss_fn
            .forward(logits, batch.targets.clone())
            .into_scalar::<f32>() as f64
    };
    let logits = model.forward(batch.images.clone());
    let loss = loss_fn.forward(logits, batch.targets.clone());
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let mut rng_state = cifar_data::mix_seed(seed, 0x6772_6164);
    let mut next = move |n: usize| {
        rng_state = cifar_data::mix_seed(rng_state, 1);
        (rng_state % n.max(1) as u64) as usize
    };
    let mut out = Vec::new();
    for p in parameters(model, Some(&grads)) {
        let grad = p
            .grad
            .clone()
            .expect("parameters were given gradients")
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float gradient");
        let values = p
            .value
            .clone()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("float parameter");
        let mut magnitudes: Vec<f32> = grad.iter().map(|g| g.abs()).collect();
        magnitudes.sort_by(f32::total_cmp);
        let median = magnitudes[magnitudes.len() / 2];
        let candidates: Vec<usize> = (0..grad.len())
            .filter(|&i| grad[i].abs() >= median)
            .collect();
        let mut worst = 0.0f64;
        for _ in 0..samples.min(candidates.len()) {
            let index = candidates[next(candidates.len())];
            let h = 1e-3f32.max(1e-2 * values[index].abs());
            let nudged = |delta: f32| {
                model.clone().map(&mut Nudge {
                    id: p.id,
                    index,
                    delta,
                })
            };
            let plus = loss_of(&nudged(h));
            let minus = loss_of(&nudged(-h));
            let numeric = (plus - minus) / (2.0 * h as f64);
            let error = relative_error(grad[index] as f64, numeric);
            worst = if error.is_nan() {
                f64::NAN
            } else {
                worst.max(error)
            };
        }
        out.push(LayerGradError {
            name: p.name.clone(),
            error: worst,
        });
    }
    out
}

/// Check 5: per-channel mean and std of the preprocessed training split, label counts, finiteness.
pub fn data_check(config: &TrainConfig, train: &Features, classes: usize) -> CheckResult {
    let non_finite = train.values.iter().filter(|v| !v.is_finite()).count();
    let [c, h, w] = train.shape.dims();
    let per_example = c * h * w;
    let channels = if h * w > 1 { c } else { 1 };
    let per_channel = per_example / channels;
    let mut sums = vec![(0.0f64, 0.0f64, 0usize); channels];
    for example in train.values.chunks(per_example) {
        for (ch, values) in example.chunks(per_channel).enumerate() {
            let s = &mut sums[ch];
            for &v in values.iter().filter(|v| v.is_finite()) {
                s.0 += v as f64;
                s.1 += (v as f64) * (v as f64);
                s.2 += 1;
            }
        }
    }
    let stats: Vec<(f64, f64)> = sums
        .iter()
        .map(|&(s, sq, n)| {
            let n = n.max(1) as f64;
            let mean = s / n;
            (mean, (sq / n - mean * mean).max(0.0).sqrt())
        })
        .collect();
    let mut counts = vec![0usize; classes];
    for &l in &train.labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let centered = !matches!(config.preprocess, Preprocessing::None);
    let unit = matches!(
        config.preprocess,
        Preprocessing::Standardize | Preprocessing::PcaWhiten { .. } | Preprocessing::Zca { .. }
    );
    let (min_count, max_count) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    let mut problems = Vec::new();
    let mut verdict = Verdict::Pass;
    if non_finite > 0 {
        verdict = Verdict::Fail;
        problems.push(format!(
            "{non_finite} values are NaN or infinite: the preprocessing divided by zero (try a larger epsilon)"
        ));
    }
    if min_count == 0 {
        verdict = verdict.max(Verdict::Warn);
        problems.push("some class has no training example: use a larger --train-size".into());
    } else if max_count > 2 * min_count {
        verdict = verdict.max(Verdict::Warn);
        problems.push(format!(
            "the classes are unbalanced ({min_count} to {max_count} examples)"
        ));
    }
    if centered && stats.iter().any(|(m, _)| m.abs() > 0.1) {
        verdict = verdict.max(Verdict::Warn);
        problems.push(format!(
            "--preprocess {} should center the data but a channel mean is off zero",
            config.preprocess
        ));
    }
    if !centered {
        verdict = verdict.max(Verdict::Warn);
        problems.push(
            "the data is not zero-centered (--preprocess none): the lecture centers it, \
             for example with --preprocess standardize"
                .into(),
        );
    }
    if unit && stats.iter().any(|(_, s)| !(0.5..=2.0).contains(s)) {
        verdict = verdict.max(Verdict::Warn);
        problems.push(format!(
            "--preprocess {} should give unit variance but a channel's std is far from 1",
            config.preprocess
        ));
    }
    let shown: Vec<String> = stats
        .iter()
        .map(|(m, s)| format!("{m:+.3}/{s:.3}"))
        .collect();
    CheckResult {
        name: "data".into(),
        verdict,
        measured: format!(
            "{} training examples, {} per {} (mean/std): {}; {} to {} per class; {non_finite} non-finite values",
            train.len(),
            if channels > 1 {
                "channel"
            } else {
                "feature set"
            },
            if channels > 1 { "channel" } else { "vector" },
            shown.join(" "),
            min_count,
            max_count
        ),
        expected: if unit {
            "mean about 0 and std about 1, every class present, no NaN".into()
        } else if centered {
            "mean about 0, every class present, no NaN".into()
        } else {
            "zero-centered data, every class present, no NaN".into()
        },
        advice: problems.join("; "),
    }
}

/// Check 6: a tiny rate barely moves the loss; a huge one makes it blow up, and the run says so.
pub fn lr_extremes(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &CheckOptions,
    classes: usize,
) -> Result<CheckResult> {
    const TINY: f64 = 1e-6;
    const HUGE: f64 = 1e6;
    let steps = options.extreme_steps.max(1);
    let size = config.batch_size.min(64);
    // Tiny: the same batch before and after, so only the weights change.
    let mut trainer = Trainer::new(config, device);
    let batch = first_examples(&data.train, size, trainer.device());
    let before = trainer.loss_of(batch.clone());
    for step in 0..steps {
        let info = StepInfo {
            epoch: 0,
            iteration: step,
            loss: f64::NAN,
            lr: TINY,
        };
        trainer.step(batch.clone(), TINY, info, &mut [])?;
    }
    let after = trainer.loss_of(batch.clone());
    let moved = (after - before).abs() / before.abs().max(1e-12);
    // Huge: fresh batches, stopped by the same divergence rule as `train fit`.
    let mut trainer = Trainer::new(config, device);
    let batcher = CifarBatcher::new(data.train.clone());
    let order = EpochOrder::new(data.train.len(), config.seed);
    let mut exploded = None;
    let mut worst: f64 = 0.0;
    'outer: for epoch in 0.. {
        for (i, indices) in order.batches(epoch, size).into_iter().enumerate() {
            let step = epoch * data.train.len().div_ceil(size) + i;
            if step >= steps {
                break 'outer;
            }
            let info = StepInfo {
                epoch: 0,
                iteration: step,
                loss: f64::NAN,
                lr: HUGE,
            };
            match trainer.step(
                batcher.batch(indices, trainer.device()),
                HUGE,
                info,
                &mut [],
            )? {
                StepOutcome::Updated { loss } => worst = worst.max(loss),
                StepOutcome::Diverged(d) => {
                    exploded = Some((step + 1, d));
                    break 'outer;
                }
            }
        }
    }
    let chance = (classes as f64).ln();
    let tiny_ok = moved < 0.01;
    let huge_ok = exploded.is_some() || worst > 3.0 * chance;
    let verdict = if tiny_ok && huge_ok {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let huge_text = match &exploded {
        Some((step, d)) => format!("lr {HUGE:.0e}: diverged at step {step} ({})", d.describe()),
        None => format!("lr {HUGE:.0e}: highest loss {worst:.3} over {steps} steps, no divergence"),
    };
    let mut advice = Vec::new();
    if !tiny_ok {
        advice.push(format!(
            "at lr {TINY:.0e} the loss moved {:.1}% in {steps} steps: the updates are not scaled by the learning rate \
             (an adaptive optimizer with a tiny epsilon, or a bug in the update)",
            100.0 * moved
        ));
    }
    if !huge_ok {
        advice.push(format!(
            "at lr {HUGE:.0e} the loss stayed near chance: the gradients may be zero (dead units, \
             --init zeros) or the update ignores the learning rate"
        ));
    }
    Ok(result(
        "lr-extremes",
        verdict,
        format!(
            "lr {TINY:.0e}: loss {before:.4} -> {after:.4} after {steps} steps ({:.3}% change); {huge_text}",
            100.0 * moved
        ),
        format!(
            "lr {TINY:.0e} moves the loss under 1%; lr {HUGE:.0e} makes it NaN or far above ln({classes})"
        ),
        advice.join("; "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_by_hand() {
        assert_eq!(relative_error(1.0, 1.0), 0.0);
        assert!((relative_error(1.0, 0.9) - 0.1).abs() < 1e-12);
        assert!((relative_error(-2.0, 2.0) - 2.0).abs() < 1e-12);
        assert_eq!(relative_error(0.0, 1e-12), 0.0);
    }
}
