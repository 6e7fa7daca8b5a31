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
use burn::tensor::DType;
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
        progress.line(&format!("  {} {}", result.verdict, result.name));
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
    let trainer = Trainer::for_data(config, device, &data.train)?;
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
    let trainer = Trainer::for_data(config, device, &data.train)?;
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
    let mut trainer = Trainer::for_data(config, device, &data.train)?;
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
    delta: f64,
}

impl ModuleMapper for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.id != self.id {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let mut delta = vec![0.0f64; dims.iter().product()];
        delta[self.index] = self.delta;
        let delta = Tensor::<D>::from_data(TensorData::new(delta, dims), &tensor.device())
            .cast(tensor.dtype());
        Param::from_mapped_value(id, tensor + delta, mapper)
    }
}

/// Casts every parameter (and buffer) to f64, keeping trained parameters leaves of the graph.
struct ToF64 {
    path: Vec<String>,
}

impl ModuleMapper for ToF64 {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let running = self.path.last().is_some_and(|n| n.starts_with("running_"));
        let (id, tensor, mapper) = param.consume();
        let cast = tensor.cast(DType::F64).detach();
        let cast = if running { cast } else { cast.require_grad() };
        Param::from_mapped_value(id, cast, mapper)
    }
}

/// The model and batch in f64, when the device computes in f64.
fn in_f64(model: &Model, batch: &CifarBatch) -> Option<(Model, CifarBatch)> {
    if !batch.images.device().supports_dtype(DType::F64) {
        return None;
    }
    let model = model.clone().map(&mut ToF64 { path: Vec::new() });
    let batch = CifarBatch {
        images: batch.images.clone().cast(DType::F64),
        targets: batch.targets.clone(),
    };
    Some((model, batch))
}

/// One layer's worst relative error in the gradient check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerGradError {
    /// The parameter tensor.
    pub name: String,
    /// The largest relative error among its sampled elements, leaving out
    /// probes that straddled a kink.
    pub error: f64,
    /// Probes that count in `error`.
    pub tested: usize,
    /// Probes whose finite difference straddled a kink (see [`straddles_kink`]).
    pub kinks: usize,
    /// Probes whose relative error is above the warning threshold but whose
    /// gap is within the finite difference's rounding: the gradient is too
    /// small to test (vanishing gradients end up here).
    pub at_noise: usize,
}

/// What one finite-difference probe says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Probe {
    /// The relative error between analytic and numeric gradient.
    Tested(f64),
    /// A miss explained by a kink (see [`straddles_kink`]).
    Kink,
    /// A miss smaller than the finite difference's rounding error.
    AtNoise,
}

/// Judges the analytic gradient `analytic` against the losses at `w - h`,
/// `w` and `w + h`.
pub fn judge_probe(
    analytic: f64,
    [minus, base, plus]: [f64; 3],
    h: f64,
    precision: Precision,
) -> Probe {
    let numeric = (plus - minus) / (2.0 * h);
    let error = relative_error(analytic, numeric);
    if error <= precision.warn {
        return Probe::Tested(error);
    }
    // Rounding in the two losses limits what a finite difference can
    // resolve: a gap below that floor says nothing about the gradient.
    if (analytic - numeric).abs() <= precision.noise_floor(base, h) {
        return Probe::AtNoise;
    }
    if straddles_kink(analytic, (plus - base) / h, (base - minus) / h) {
        return Probe::Kink;
    }
    Probe::Tested(error)
}

/// Whether a probe's miss is a kink between `w - h` and `w + h` rather than
/// a wrong gradient: with a kink on one side, the one-sided differences
/// `forward = (L(w+h) - L(w)) / h` and `backward = (L(w) - L(w-h)) / h`
/// disagree with each other at least as much as the central difference
/// disagrees with the analytic gradient, and one of them agrees with it
/// better. A wrong gradient moves all three away from the analytic value
/// together.
pub fn straddles_kink(analytic: f64, forward: f64, backward: f64) -> bool {
    let central = (forward + backward) / 2.0;
    let miss = (central - analytic).abs();
    let sides_apart = (forward - backward).abs();
    let best_side = (forward - analytic).abs().min((backward - analytic).abs());
    sides_apart >= miss && best_side < miss
}

/// `|a - n| / max(|a|, |n|)`, 0 when both are zero.
pub fn relative_error(analytic: f64, numeric: f64) -> f64 {
    let scale = analytic.abs().max(numeric.abs());
    if scale == 0.0 {
        0.0
    } else {
        (analytic - numeric).abs() / scale
    }
}

/// The arithmetic of a gradient check, with its step and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Precision {
    /// `f64` or `f32`.
    pub name: &'static str,
    /// Relative error above which the check warns.
    pub warn: f64,
    /// Relative error above which it fails.
    pub fail: f64,
}

impl Precision {
    /// Double precision: CS231n's thresholds.
    pub const F64: Precision = Precision {
        name: "f64",
        warn: 1e-7,
        fail: 1e-5,
    };
    /// Single precision: a finite difference is only good to about 1e-3.
    pub const F32: Precision = Precision {
        name: "f32",
        warn: 1e-2,
        fail: 1e-1,
    };

    /// The rounding error of a centered difference of losses near `loss`
    /// with step `h`: ten times machine epsilon times the loss, over `h`.
    fn noise_floor(&self, loss: f64, h: f64) -> f64 {
        let epsilon = if self.name == "f64" {
            f64::EPSILON
        } else {
            f32::EPSILON as f64
        };
        10.0 * epsilon * loss.abs().max(1.0) / h
    }

    /// The finite-difference step for a weight of magnitude `w`.
    fn step(&self, w: f64) -> f64 {
        if self.name == "f64" {
            1e-5
        } else {
            1e-3f64.max(1e-2 * w.abs())
        }
    }
}

/// Check 4: analytic gradients against centered finite differences.
pub fn gradient_check(
    config: &TrainConfig,
    data: &Prepared,
    device: &Device,
    options: &CheckOptions,
) -> Result<CheckResult> {
    let trainer = Trainer::for_data(config, device, &data.train)?;
    let batch = first_examples(&data.train, options.grad_batch, trainer.device());
    let (errors, precision) =
        layer_grad_errors(trainer.model(), &batch, options.grad_samples, config.seed);
    let worst = errors
        .iter()
        .map(|e| e.error)
        .fold(0.0f64, |a, b| if b.is_nan() { f64::NAN } else { a.max(b) });
    let verdict = if worst.is_nan() || worst > precision.fail {
        Verdict::Fail
    } else if worst > precision.warn {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    let kinks: usize = errors.iter().map(|e| e.kinks).sum();
    let probes = errors.len() * options.grad_samples;
    // Kinks explain a few misses; many mean the probes tell little.
    let verdict = if kinks * 4 > probes {
        verdict.max(Verdict::Warn)
    } else {
        verdict
    };
    let listed: Vec<String> = errors
        .iter()
        .map(|e| {
            let mut notes = Vec::new();
            if e.kinks > 0 {
                notes.push(format!("{} at a kink", e.kinks));
            }
            if e.at_noise > 0 {
                notes.push(format!("{} too small to test", e.at_noise));
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            if e.tested == 0 {
                format!("{} -{notes}", e.name)
            } else {
                format!("{} {:.1e}{notes}", e.name, e.error)
            }
        })
        .collect();
    let at_noise: usize = errors.iter().map(|e| e.at_noise).sum();
    let noise_note = match at_noise {
        0 => String::new(),
        k => format!(
            "; {k} of {probes} probes had gradients too small for a finite difference to \
             resolve (below its rounding error: vanishing gradients?) and are left out"
        ),
    };
    let kink_note = match kinks {
        0 => String::new(),
        k => format!(
            "; {k} of {probes} probes straddled a kink (ReLU, max pool or Maxout: the one-sided \
             differences disagree, so the analytic gradient is right there) and are left out"
        ),
    };
    let mut advice = String::from(
        "a large error means the backward pass disagrees with the forward pass: a custom layer's \
         gradient is wrong, or the loss is not differentiable where it was probed",
    );
    if config.model.has_kinks() {
        advice.push_str(
            "; this model has kinks (ReLU, max pool or Maxout): a finite difference that \
             crosses one disagrees with the analytic gradient, so an isolated miss in one tensor is expected",
        );
    }
    Ok(result(
        "gradient-check",
        verdict,
        format!(
            "worst relative error {worst:.1e} over {} tensors x {} elements ({}, {} examples){kink_note}{noise_note}; per tensor: {}",
            errors.len(),
            options.grad_samples,
            precision.name,
            options.grad_batch,
            listed.join(", ")
        ),
        format!(
            "relative error below {:.0e} ({}; warn above, fail above {:.0e})",
            precision.warn, precision.name, precision.fail
        ),
        advice,
    ))
}

/// The worst relative error of each parameter tensor of `model` (in training
/// mode, on an autodiff device) on `batch`, over `samples` elements each,
/// drawn at random among the elements whose gradient is at least the
/// tensor's median (so that the finite difference is above its noise).
/// Computes in f64 when the device can, in f32 otherwise.
pub fn layer_grad_errors(
    model: &Model,
    batch: &CifarBatch,
    samples: usize,
    seed: u64,
) -> (Vec<LayerGradError>, Precision) {
    let (model, batch, precision) = match in_f64(model, batch) {
        Some((m, b)) => (m, b, Precision::F64),
        None => (model.clone(), batch.clone(), Precision::F32),
    };
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&batch.images.device());
    let loss_of = |m: &Model| -> f64 {
        let logits = m.forward(batch.images.clone());
        loss_fn
            .forward(logits, batch.targets.clone())
            .into_scalar::<f64>()
    };
    let logits = model.forward(batch.images.clone());
    let loss = loss_fn.forward(logits, batch.targets.clone());
    let base = loss.clone().into_scalar::<f64>();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut rng_state = cifar_data::mix_seed(seed, 0x6772_6164);
    let mut next = move |n: usize| {
        rng_state = cifar_data::mix_seed(rng_state, 1);
        (rng_state % n.max(1) as u64) as usize
    };
    let mut out = Vec::new();
    for p in parameters(&model, Some(&grads)) {
        let grad = p
            .grad
            .clone()
            .expect("parameters were given gradients")
            .into_data()
            .try_into_vec_as::<f64>()
            .expect("float gradient");
        let values = p
            .value
            .clone()
            .into_data()
            .try_into_vec_as::<f64>()
            .expect("float parameter");
        let mut magnitudes: Vec<f64> = grad.iter().map(|g| g.abs()).collect();
        magnitudes.sort_by(f64::total_cmp);
        let median = magnitudes[magnitudes.len() / 2];
        let candidates: Vec<usize> = (0..grad.len())
            .filter(|&i| grad[i].abs() >= median)
            .collect();
        let mut worst = 0.0f64;
        let mut kinks = 0;
        let mut at_noise = 0;
        let mut tested = 0;
        for _ in 0..samples.min(candidates.len()) {
            let index = candidates[next(candidates.len())];
            let h = precision.step(values[index]);
            let nudged = |delta: f64| {
                model.clone().map(&mut Nudge {
                    id: p.id,
                    index,
                    delta,
                })
            };
            let plus = loss_of(&nudged(h));
            let minus = loss_of(&nudged(-h));
            match judge_probe(grad[index], [minus, base, plus], h, precision) {
                Probe::AtNoise => at_noise += 1,
                Probe::Kink => kinks += 1,
                Probe::Tested(error) => {
                    tested += 1;
                    worst = if error.is_nan() {
                        f64::NAN
                    } else {
                        worst.max(error)
                    };
                }
            }
        }
        out.push(LayerGradError {
            name: p.name.clone(),
            error: worst,
            tested,
            kinks,
            at_noise,
        });
    }
    (out, precision)
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
            "{} training examples; mean/std per {}: {}; {} to {} examples per class; {non_finite} non-finite values",
            train.len(),
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

/// Whether the tiny rate moved the loss by under 1% (`moved` is the relative
/// change), and whether the huge one diverged or drove the loss above 3x
/// chance (`worst` is its highest loss, `chance` is ln(classes)).
pub fn extremes_ok(moved: f64, diverged: bool, worst: f64, chance: f64) -> (bool, bool) {
    (moved < 0.01, diverged || worst > 3.0 * chance)
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
    let mut trainer = Trainer::for_data(config, device, &data.train)?;
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
    let mut trainer = Trainer::for_data(config, device, &data.train)?;
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
    let (tiny_ok, huge_ok) = extremes_ok(moved, exploded.is_some(), worst, chance);
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
    fn a_kink_is_told_apart_from_a_wrong_gradient() {
        // relu(x) at x = 0.3e-5 with h = 1e-5: the backward side crosses the
        // kink. Forward difference 1 (right), backward 0.65, analytic 1.
        assert!(straddles_kink(1.0, 1.0, 0.65));
        // A gradient off by 10%: both sides agree with each other, not with it.
        assert!(!straddles_kink(1.1, 1.0, 1.0));
        // Both sides off in the same direction, slightly apart: still a wrong gradient.
        assert!(!straddles_kink(1.5, 1.01, 0.99));
    }

    #[test]
    fn a_wrong_gradient_fails_and_a_right_one_passes() {
        // L(w) = w^2 at w = 1: dL/dw = 2. Exact losses at 1 - h, 1, 1 + h.
        let h = 1e-5;
        let losses = [(1.0f64 - h).powi(2), 1.0, (1.0 + h).powi(2)];
        let p = Precision::F64;
        match judge_probe(2.0, losses, h, p) {
            Probe::Tested(e) => assert!(e < p.warn, "{e}"),
            other => panic!("{other:?}"),
        }
        // A backward pass that forgot the factor 2: error 0.5, far above the fail line.
        match judge_probe(1.0, losses, h, p) {
            Probe::Tested(e) => assert!(e > p.fail && (e - 0.5).abs() < 1e-6, "{e}"),
            other => panic!("{other:?}"),
        }
        // |w| at w = 0.3h: the backward side crosses the kink at 0.
        let w = 0.3 * h;
        let abs = [(w - h).abs(), w, w + h];
        assert_eq!(judge_probe(1.0, abs, h, p), Probe::Kink);
        // A gradient of 1e-12 against a difference that resolves only ~1e-10.
        let flat = [2.3, 2.3 + 1e-16, 2.3];
        assert_eq!(judge_probe(1e-12, flat, h, p), Probe::AtNoise);
    }

    #[test]
    fn extremes_fail_when_the_rate_is_ignored() {
        let chance = 10f64.ln();
        assert_eq!(extremes_ok(0.001, true, 0.0, chance), (true, true));
        // The tiny rate moved the loss by 30%: the update is not scaled by the rate.
        assert!(!extremes_ok(0.3, true, 0.0, chance).0);
        // The huge rate left the loss at chance: no gradient reaches the weights.
        assert!(!extremes_ok(0.0, false, 2.31, chance).1);
        // Far above chance without NaN still counts as blowing up.
        assert!(extremes_ok(0.0, false, 50.0, chance).1);
    }

    #[test]
    fn data_with_nan_fails_and_uncentered_data_warns() {
        use cifar_data::FeatureShape;
        let config = TrainConfig::default();
        let labels: Vec<u8> = (0..20).map(|i| (i % 10) as u8).collect();
        let mut values = vec![0.5f32; 20 * 3072];
        values[7] = f32::NAN;
        let bad = Features {
            values,
            labels: labels.clone(),
            shape: FeatureShape::IMAGE,
        };
        let r = data_check(&config, &bad, 10);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.advice.contains("NaN"), "{r:?}");
        // Centered data passes; the same data under --preprocess none warns.
        let good = Features {
            values: (0..20 * 3072)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
            labels,
            shape: FeatureShape::IMAGE,
        };
        assert_eq!(data_check(&config, &good, 10).verdict, Verdict::Pass);
        let none = TrainConfig {
            preprocess: Preprocessing::None,
            ..TrainConfig::default()
        };
        let r = data_check(&none, &good, 10);
        assert_eq!(r.verdict, Verdict::Warn, "{r:?}");
        assert!(r.advice.contains("zero-centered"), "{r:?}");
    }

    #[test]
    fn relative_error_by_hand() {
        assert_eq!(relative_error(1.0, 1.0), 0.0);
        assert!((relative_error(1.0, 0.9) - 0.1).abs() < 1e-12);
        assert!((relative_error(-2.0, 2.0) - 2.0).abs() < 1e-12);
        assert_eq!(relative_error(0.0, 0.0), 0.0);
        assert_eq!(relative_error(0.0, 1e-12), 1.0);
    }
}
