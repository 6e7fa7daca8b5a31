//! Per-layer statistics during training: the lecture's update/weight ratio
//! and activation statistics, recorded through the shared training step.
//!
//! Every `every` steps (and every step during the first [`EARLY_STEPS`], so
//! that a run that diverges at once still has numbers) the [`LayerMonitor`]
//! records, for every parameter tensor, the weight norm, the gradient norm
//! and the update/weight ratio `||ΔW|| / ||W||` of that step (about 1e-3 is
//! healthy); and for every hidden layer, on a fixed probe batch of
//! validation images in eval mode, the activations' mean, std, fraction of
//! exact zeros, fraction of dead units (zero on every probe image) and
//! fraction saturated (tanh/sigmoid near their bounds).
//!
//! Rows go to `layers.csv` in long format: `step,layer,parameter,statistic,value`
//! (with the equilibrium ratio, when there is one, as layer
//! `batch_norm_inputs`, statistic `equilibrium_ratio`).
//! Warnings (once each) when the median ratio of the weight tensors stays
//! above 1e-2 or below 1e-4 over a window of monitor points (the ratio
//! judges the learning rate, and one layer can run hotter than the rest
//! for good reasons), naming the layers out of the band; when one weight's
//! ratio exceeds 0.5 in a single step; when more than half of a ReLU layer's
//! units are dead, or more than half of a tanh/sigmoid layer's values saturate.
//!
//! Weights that feed batch norm are judged apart: batch norm undoes their
//! scale, and with SGD and weight decay their ratio settles where the
//! [`RotationalEquilibrium`] puts it, whatever the lecture's rule says.
//! When they sit there, the monitor says so in a note instead of a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use burn::optim::GradientsParams;
use burn::prelude::*;
use cifar_models::{ActivationConfig, ActivationStats, Model};
use serde::Serialize;

use crate::callbacks::{Callback, EpochEnd};
use crate::config::{OptimizerKind, TrainConfig};
use crate::params::{parameters, squared_norm};
use crate::progress::Progress;
use crate::trainer::{StepInfo, StepObserver};

/// Steps at the start of a run that are all monitored.
pub const EARLY_STEPS: usize = 10;
/// A healthy update/weight ratio, the lecture's rule of thumb.
pub const HEALTHY_RATIO: f64 = 1e-3;
/// Ratios above this, sustained, mean the learning rate is too high.
pub const HIGH_RATIO: f64 = 1e-2;
/// Ratios below this, sustained, mean the learning rate is too low.
pub const LOW_RATIO: f64 = 1e-4;
/// A ratio above this warns at once: the step moved the weights by half their norm.
pub const FAR_RATIO: f64 = 0.5;
/// Monitor points in a row that make a sustained ratio.
pub const WINDOW: usize = 10;
/// Bins of the activation histograms.
const BINS: usize = 40;

/// The update/weight ratio of one parameter at one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioPoint {
    /// 0-based step.
    pub iteration: usize,
    /// The parameter's name.
    pub name: String,
    /// `||ΔW|| / ||W||`.
    pub ratio: f64,
}

/// One hidden layer's activations on the probe batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSnapshot {
    /// The layer's name (`stages.0.convs.0`, `hidden.1`).
    pub name: String,
    /// Its statistics; the histogram spans the values' own range.
    pub stats: ActivationStats,
    /// Fraction of units that are zero on every probe image.
    pub dead_fraction: f64,
}

/// Where SGD with weight decay holds the update/weight ratio of a weight
/// that feeds batch norm.
///
/// Batch norm makes the loss blind to such a weight's scale, so its
/// gradient is orthogonal to it and shrinks as the weight grows: each step
/// turns the weight and lengthens it a little, and weight decay shortens
/// it. The two balance at the norm where each step turns the weight by
/// `sqrt(2 · lr · weight_decay · k)` radians: the "spherical motion
/// dynamics" of Wan et al. (NeurIPS 2021), the "rotational equilibrium" of
/// Kosson et al. (ICML 2024). Here `lr` multiplies the momentum buffer
/// (PyTorch's and Burn's SGD) and `k` depends on the momentum `m`. With the
/// update `u_t = Σ c_j g_{t-j}` a filter of past gradients, balancing the
/// norm's growth against the decay gives `k = Σ c_j² / Σ c_j`: 1 for plain
/// SGD, `1 / (1 + m)` for heavy-ball momentum (Kosson et al., Table 1) and
/// `(1 - m)(1 + m)² + m⁴ / (1 + m)` for Nesterov's (`c_0 = 1 + m`,
/// `c_j = m^(j+1)`). A test checks all three against a simulation.
///
/// At equilibrium the ratio says nothing about whether `lr` alone is too
/// high: lowering `lr` lowers it only by a square root.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationalEquilibrium {
    /// The optimizer's L2 weight decay, added to the gradient.
    pub weight_decay: f64,
    /// The momentum coefficient (0 for plain SGD).
    pub momentum: f64,
    /// Nesterov's momentum rather than heavy-ball.
    pub nesterov: bool,
}

impl RotationalEquilibrium {
    /// The equilibrium of `config`'s optimizer: SGD, with or without
    /// (Nesterov) momentum, with weight decay. `None` for the adaptive
    /// optimizers and without weight decay.
    pub fn of(config: &TrainConfig) -> Option<Self> {
        let (momentum, nesterov) = match config.optimizer {
            OptimizerKind::Sgd => (0.0, false),
            OptimizerKind::Momentum => (config.momentum, false),
            OptimizerKind::Nesterov => (config.momentum, true),
            OptimizerKind::Adam | OptimizerKind::Adamw | OptimizerKind::Rmsprop => return None,
        };
        (config.weight_decay > 0.0).then_some(Self {
            weight_decay: config.weight_decay,
            momentum,
            nesterov,
        })
    }

    /// The momentum's factor `k` (see the type's doc).
    pub fn momentum_factor(&self) -> f64 {
        let m = self.momentum;
        if self.nesterov {
            (1.0 - m) * (1.0 + m).powi(2) + m.powi(4) / (1.0 + m)
        } else {
            1.0 / (1.0 + m)
        }
    }

    /// The update/weight ratio per step at learning rate `lr`.
    pub fn ratio(&self, lr: f64) -> f64 {
        (2.0 * lr * self.weight_decay * self.momentum_factor()).sqrt()
    }

    /// A measured ratio this close to [`Self::ratio`] is at equilibrium
    /// (within a factor of 2 either way).
    fn holds(&self, lr: f64, measured: f64) -> bool {
        let predicted = self.ratio(lr);
        predicted > 0.0 && (0.5..=2.0).contains(&(measured / predicted))
    }

    /// The formula with this run's numbers, for a note.
    fn explain(&self, lr: f64) -> String {
        let momentum = match (self.momentum, self.nesterov) {
            (0.0, _) => "plain SGD".to_string(),
            (m, true) => format!("Nesterov momentum {m}"),
            (m, false) => format!("momentum {m}"),
        };
        format!(
            "sqrt(2 * lr * weight-decay * k) = sqrt(2 * {lr:.3e} * {:.3e} * {:.3}) = {:.2e}, with k = {:.3} for {momentum}",
            self.weight_decay,
            self.momentum_factor(),
            self.ratio(lr),
            self.momentum_factor(),
        )
    }
}

/// What the monitor needs to know about the run.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// Monitor every this many steps (after the first [`EARLY_STEPS`]).
    pub every: usize,
    /// Monitor points in a row that make a sustained ratio (at most [`WINDOW`]).
    pub window: usize,
    /// Steps of learning-rate warmup: a small ratio during warmup is expected.
    pub warmup_steps: usize,
    /// The hidden layers' activation.
    pub activation: ActivationConfig,
    /// The equilibrium of weights that feed batch norm, for SGD (with or
    /// without momentum) with weight decay; `None` for other optimizers or
    /// without weight decay, where those weights are judged like the rest.
    pub equilibrium: Option<RotationalEquilibrium>,
}

impl MonitorSettings {
    /// About 20 monitor points per epoch of `steps_per_epoch` steps, and a
    /// window of 10 points (or an epoch's worth, if fewer).
    pub fn for_run(
        steps_per_epoch: usize,
        every: Option<usize>,
        warmup_steps: usize,
        activation: ActivationConfig,
    ) -> Self {
        let every = every.unwrap_or((steps_per_epoch / 20).max(1)).max(1);
        Self {
            every,
            window: WINDOW.min((steps_per_epoch / every).max(1)),
            warmup_steps,
            activation,
            equilibrium: None,
        }
    }

    /// Judges the weights that feed batch norm against `equilibrium`.
    pub fn with_equilibrium(mut self, equilibrium: Option<RotationalEquilibrium>) -> Self {
        self.equilibrium = equilibrium;
        self
    }
}

/// The update/weight ratio of one weight tensor at the last monitor point.
#[derive(Debug, Clone)]
struct LastRatio {
    name: String,
    ratio: f64,
    feeds_batch_norm: bool,
}

/// Records per-layer statistics and warns about unhealthy layers.
pub struct LayerMonitor {
    settings: MonitorSettings,
    probe: Tensor<4>,
    csv: BufWriter<std::fs::File>,
    progress: Progress,
    grad_norms: BTreeMap<String, f64>,
    last_ratios: Vec<LastRatio>,
    high_streak: usize,
    low_streak: usize,
    equilibrium_streak: usize,
    warned: BTreeSet<String>,
    warnings: Vec<String>,
    notes: Vec<String>,
    printed: usize,
    printed_notes: usize,
    ratios: Vec<RatioPoint>,
    equilibrium_points: Vec<(usize, f64)>,
    snapshots: Vec<(usize, Vec<LayerSnapshot>)>,
}

/// The columns of `layers.csv`.
pub const LAYERS_HEADER: &str = "step,layer,parameter,statistic,value";

impl LayerMonitor {
    /// A monitor writing to `path` (`layers.csv`), with `probe` images (on a
    /// plain device) for the activation statistics. When resuming, rows past
    /// step `iteration` are dropped and the ratio history is read back.
    pub fn new(
        settings: MonitorSettings,
        probe: Tensor<4>,
        path: &std::path::Path,
        resume_at: Option<usize>,
        progress: Progress,
    ) -> Result<Self> {
        let text = match resume_at {
            Some(_) => std::fs::read_to_string(path).unwrap_or_default(),
            None => String::new(),
        };
        let (kept, history) = parse_layers_csv(&text, resume_at.unwrap_or(0));
        crate::rundir::write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        Ok(Self {
            settings,
            probe,
            csv: BufWriter::new(file),
            progress,
            grad_norms: BTreeMap::new(),
            last_ratios: Vec::new(),
            high_streak: 0,
            low_streak: 0,
            equilibrium_streak: 0,
            warned: BTreeSet::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            printed: 0,
            printed_notes: 0,
            ratios: history.ratios,
            equilibrium_points: history.equilibrium,
            snapshots: Vec::new(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    /// Every warning given so far.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Notes so far: readings that look alarming by the lecture's rule of
    /// thumb but are explained (weights at their rotational equilibrium).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Every update/weight ratio recorded so far.
    pub fn ratios(&self) -> &[RatioPoint] {
        &self.ratios
    }

    /// Every update/weight ratio recorded so far, with the equilibrium
    /// ratio of the weights that feed batch norm when there is one.
    pub fn history(&self) -> RatioHistory {
        RatioHistory {
            ratios: self.ratios.clone(),
            equilibrium: self.equilibrium_points.clone(),
        }
    }

    /// The activation snapshots taken at the end of each epoch: (epoch, layers).
    pub fn snapshots(&self) -> &[(usize, Vec<LayerSnapshot>)] {
        &self.snapshots
    }

    /// The weights whose ratio at the last monitor point exceeded `threshold`, largest first.
    pub fn ratios_above(&self, threshold: f64) -> Vec<(String, f64)> {
        let mut above: Vec<(String, f64)> = self
            .last_ratios
            .iter()
            .filter(|r| !r.ratio.is_finite() || r.ratio > threshold)
            .map(|r| (r.name.clone(), r.ratio))
            .collect();
        above.sort_by(|a, b| b.1.total_cmp(&a.1));
        above
    }

    /// The hidden layers' activations on the probe batch, in eval mode.
    pub fn probe_layers(&self, model: &Model) -> Vec<LayerSnapshot> {
        let model = model.valid();
        let (_, layers) = model.forward_observed(self.probe.clone());
        let band = self.settings.activation.saturation_band();
        layers
            .into_iter()
            .map(|layer| {
                let units = layer.post.dims()[1];
                let values = layer
                    .post
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .expect("float activations");
                let dead = dead_units(&values, units);
                LayerSnapshot {
                    name: layer.name,
                    stats: ActivationStats::of(&values, band, BINS),
                    dead_fraction: dead as f64 / units.max(1) as f64,
                }
            })
            .collect()
    }

    fn warn(&mut self, key: String, text: String) {
        if self.warned.insert(key) {
            self.warnings.push(text);
        }
    }

    /// Prints the warnings and notes given since the last call, as
    /// `warning: ...` and `note: ...` lines.
    pub fn print_new_warnings(&mut self) {
        for text in &self.warnings[self.printed..] {
            self.progress.line(&format!("warning: {text}"));
        }
        self.printed = self.warnings.len();
        for text in &self.notes[self.printed_notes..] {
            self.progress.line(&format!("note: {text}"));
        }
        self.printed_notes = self.notes.len();
    }

    /// The lecture's ratio judges the learning rate, one number for the
    /// network: the median ratio over the weight tensors, sustained over
    /// the window, against the healthy band. (A single layer can run hotter
    /// or colder than the rest for good reasons: the output layer starts
    /// small, so its ratio starts high.) Weights that feed batch norm are
    /// left out of that median when SGD's weight decay holds them at an
    /// equilibrium; [`Self::judge_equilibrium`] judges them instead. The
    /// median needs two tensors or more after that.
    fn judge_learning_rate(&mut self, step: &StepInfo, in_warmup: bool) {
        let apart = self.settings.equilibrium.is_some();
        let judged = move |r: &LastRatio| !(r.feeds_batch_norm && apart);
        let mut ratios: Vec<f64> = self
            .last_ratios
            .iter()
            .filter(|r| judged(r) && r.ratio.is_finite())
            .map(|r| r.ratio)
            .collect();
        let n = ratios.len();
        // One tensor's ratio is that layer's reading, not the network's:
        // when batch norm's inputs are judged apart and only the output
        // layer is left, the rule has nothing to say.
        if apart && n < 2 && n < self.last_ratios.len() {
            return;
        }
        let Some(median) = crate::search::prune::median(&mut ratios) else {
            return;
        };
        self.high_streak = if median > HIGH_RATIO {
            self.high_streak + 1
        } else {
            0
        };
        self.low_streak = if median < LOW_RATIO && !in_warmup {
            self.low_streak + 1
        } else {
            0
        };
        let window = self.settings.window;
        let row = step.iteration + 1;
        let which = if self.last_ratios.iter().all(&judged) {
            ""
        } else {
            " that do not feed batch norm"
        };
        let layers = |this: &Self, above: bool| -> String {
            let mut named: Vec<&LastRatio> = this
                .last_ratios
                .iter()
                .filter(|r| judged(r))
                .filter(|r| {
                    if above {
                        r.ratio > HIGH_RATIO
                    } else {
                        r.ratio < LOW_RATIO
                    }
                })
                .collect();
            // Farthest from the band first.
            if above {
                named.sort_by(|a, b| b.ratio.total_cmp(&a.ratio));
            } else {
                named.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
            }
            named
                .iter()
                .take(4)
                .map(|r| format!("{} {:.1e}", r.name, r.ratio))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.high_streak >= window {
            let named = layers(self, true);
            self.warn(
                "high".into(),
                format!(
                    "the median update/weight ratio of the {n} weight tensors{which} stayed above {HIGH_RATIO:.0e} for {window} monitor points \
                     (now {median:.2e} at step {row}; about {HEALTHY_RATIO:.0e} is healthy; highest: {named}): \
                     the updates are too large, lower --lr (now {:.3e})",
                    step.lr
                ),
            );
        }
        if self.low_streak >= window {
            let named = layers(self, false);
            self.warn(
                "low".into(),
                format!(
                    "the median update/weight ratio of the {n} weight tensors{which} stayed below {LOW_RATIO:.0e} for {window} monitor points \
                     (now {median:.2e} at step {row}; about {HEALTHY_RATIO:.0e} is healthy; lowest: {named}): \
                     the updates are too small, raise --lr (now {:.3e})",
                    step.lr
                ),
            );
        }
    }

    /// The weights that feed batch norm, against their rotational
    /// equilibrium: once their median ratio has sat within a factor of 2 of
    /// it for the window (after warmup), a note says why the lecture's
    /// rule does not judge them.
    fn judge_equilibrium(&mut self, step: &StepInfo, in_warmup: bool) {
        let Some(equilibrium) = self.settings.equilibrium else {
            return;
        };
        let mut ratios: Vec<f64> = self
            .last_ratios
            .iter()
            .filter(|r| r.feeds_batch_norm && r.ratio.is_finite())
            .map(|r| r.ratio)
            .collect();
        let n = ratios.len();
        let Some(median) = crate::search::prune::median(&mut ratios) else {
            return;
        };
        let predicted = equilibrium.ratio(step.lr);
        let row = step.iteration + 1;
        self.record(
            row,
            EQUILIBRIUM_LAYER,
            "weight",
            EQUILIBRIUM_STATISTIC,
            predicted,
        );
        self.equilibrium_points.push((step.iteration, predicted));
        self.equilibrium_streak = if !in_warmup && equilibrium.holds(step.lr, median) {
            self.equilibrium_streak + 1
        } else {
            0
        };
        let window = self.settings.window;
        if self.equilibrium_streak >= window && self.warned.insert("equilibrium".into()) {
            let lecture = if median > HIGH_RATIO {
                format!(", far above the lecture's {HEALTHY_RATIO:.0e}")
            } else {
                String::new()
            };
            let lagging = if median < 0.8 * predicted {
                " (below the equilibrium while the weights' norm is still settling, \
                 or the rate falls faster than it can follow)"
            } else {
                ""
            };
            self.notes.push(format!(
                "the {n} weight tensors that feed batch norm turn by a median {median:.2e} per step at step {row}{lecture}: \
                 {:.2} of the rotational equilibrium of SGD with weight decay, {}. \
                 Batch norm undoes their scale, so --lr and --weight-decay together set this ratio{lagging}; \
                 it does not mean the learning rate is too high",
                median / predicted,
                equilibrium.explain(step.lr)
            ));
        }
    }

    fn record(&mut self, step: usize, layer: &str, parameter: &str, stat: &str, value: f64) {
        // A write error surfaces at the flush at the epoch's end.
        let _ = writeln!(self.csv, "{step},{layer},{parameter},{stat},{value:.6e}");
    }

    fn check_activations(&mut self, step: &StepInfo, layers: &[LayerSnapshot]) {
        let relu = matches!(self.settings.activation, ActivationConfig::Relu);
        let saturating = self.settings.activation.saturation_band().is_some();
        for layer in layers {
            if relu && layer.dead_fraction > 0.5 {
                self.warn(
                    format!("dead:{}", layer.name),
                    format!(
                        "{:.0}% of the ReLU units of {} are dead (zero on every probe image) at step {}: \
                         lower --lr, or use --init he, --batch-norm or --activation leaky-relu",
                        100.0 * layer.dead_fraction,
                        layer.name,
                        step.iteration + 1
                    ),
                );
            }
            if saturating && layer.stats.saturated_fraction > 0.5 {
                self.warn(
                    format!("saturated:{}", layer.name),
                    format!(
                        "{:.0}% of the activations of {} are saturated at step {}: their gradients vanish; \
                         use --init xavier, --batch-norm, or --activation relu",
                        100.0 * layer.stats.saturated_fraction,
                        layer.name,
                        step.iteration + 1
                    ),
                );
            }
        }
    }
}

/// The `layer` and `statistic` of the rows that hold the rotational
/// equilibrium's ratio (the weights that feed batch norm as one).
const EQUILIBRIUM_LAYER: &str = "batch_norm_inputs";
const EQUILIBRIUM_STATISTIC: &str = "equilibrium_ratio";

/// The update ratios of a run, for its chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RatioHistory {
    /// Each weight tensor's ratio at each monitor point.
    pub ratios: Vec<RatioPoint>,
    /// (0-based step, ratio) of the [`RotationalEquilibrium`] of the
    /// weights that feed batch norm; empty when there is none.
    pub equilibrium: Vec<(usize, f64)>,
}

/// The units (columns of `[N, units]` row-major `values`) that are zero in
/// every row. Read row by row: a unit at a time strides through memory.
fn dead_units(values: &[f32], units: usize) -> usize {
    let mut alive = vec![false; units];
    for row in values.chunks_exact(units.max(1)) {
        for (a, &v) in alive.iter_mut().zip(row) {
            *a |= v != 0.0;
        }
    }
    alive.iter().filter(|&&a| !a).count()
}

/// The rows of a `layers.csv` text up to step `iteration` (1-based rows),
/// and the weights' update ratios among them.
fn parse_layers_csv(text: &str, iteration: usize) -> (String, RatioHistory) {
    let mut kept = format!("{LAYERS_HEADER}\n");
    let mut history = RatioHistory::default();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let Some(step) = fields.first().and_then(|s| s.parse::<usize>().ok()) else {
            continue;
        };
        if step > iteration {
            continue;
        }
        if fields.len() == 5 && fields[2] == "weight" {
            let value = fields[4].parse().unwrap_or(f64::NAN);
            if fields[3] == "update_ratio" {
                history.ratios.push(RatioPoint {
                    iteration: step - 1,
                    name: format!("{}.{}", fields[1], fields[2]),
                    ratio: value,
                });
            } else if fields[1] == EQUILIBRIUM_LAYER && fields[3] == EQUILIBRIUM_STATISTIC {
                history.equilibrium.push((step - 1, value));
            }
        }
        kept.push_str(line);
        kept.push('\n');
    }
    (kept, history)
}

/// The update ratios recorded in a run's `layers.csv` (for redrawing its chart).
pub fn read_ratios(path: &std::path::Path) -> Result<RatioHistory> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_layers_csv(&text, usize::MAX).1)
}

impl StepObserver for LayerMonitor {
    fn observes(&self, iteration: usize) -> bool {
        iteration < EARLY_STEPS || iteration.is_multiple_of(self.settings.every)
    }

    fn on_gradients(
        &mut self,
        _step: &StepInfo,
        model: &Model,
        grads: &GradientsParams,
    ) -> Result<()> {
        self.grad_norms = parameters(model, Some(grads))
            .into_iter()
            .filter_map(|p| Some((p.name.clone(), squared_norm(p.grad.as_ref()?).sqrt())))
            .collect();
        Ok(())
    }

    fn on_update(&mut self, step: &StepInfo, before: &Model, after: &Model) -> Result<()> {
        let row = step.iteration + 1;
        let after_params = parameters(after, None);
        let before_params = parameters(before, None);
        self.last_ratios.clear();
        let in_warmup = step.iteration < self.settings.warmup_steps;
        for (old, new) in before_params.iter().zip(&after_params) {
            let weight = squared_norm(&old.value).sqrt();
            let update = squared_norm(&(new.value.clone() - old.value.clone())).sqrt();
            let ratio = if weight > 0.0 {
                update / weight
            } else {
                f64::NAN
            };
            let (layer, kind) = (old.layer(), old.kind());
            self.record(row, layer, kind, "weight_norm", weight);
            if let Some(g) = self.grad_norms.get(&old.name).copied() {
                self.record(row, layer, kind, "grad_norm", g);
            }
            self.record(row, layer, kind, "update_ratio", ratio);
            if !old.is_weight() {
                continue;
            }
            self.ratios.push(RatioPoint {
                iteration: step.iteration,
                name: old.name.clone(),
                ratio,
            });
            self.last_ratios.push(LastRatio {
                name: old.name.clone(),
                ratio,
                feeds_batch_norm: old.feeds_batch_norm,
            });
            // A ratio this far off needs no window: the next steps may diverge.
            if ratio > FAR_RATIO {
                self.warn(
                    format!("far:{}", old.name),
                    format!(
                        "the update/weight ratio of {} is {ratio:.2e} at step {row} (more than {FAR_RATIO} in one step; \
                         about {HEALTHY_RATIO:.0e} is healthy): the updates are too large, lower --lr (now {:.3e})",
                        old.name, step.lr
                    ),
                );
            }
        }
        self.judge_learning_rate(step, in_warmup);
        self.judge_equilibrium(step, in_warmup);
        let layers = self.probe_layers(after);
        for layer in &layers {
            let s = &layer.stats;
            for (stat, value) in [
                ("mean", s.mean),
                ("std", s.std),
                ("zero_fraction", s.zero_fraction),
                ("dead_fraction", layer.dead_fraction),
                ("saturated_fraction", s.saturated_fraction),
            ] {
                self.record(row, &layer.name, "activation", stat, value);
            }
        }
        self.check_activations(step, &layers);
        self.csv.flush().context("cannot write layers.csv")?;
        Ok(())
    }
}

impl Callback for LayerMonitor {
    fn on_epoch_end(&mut self, end: &EpochEnd<'_>) -> Result<()> {
        self.csv.flush().context("cannot write layers.csv")?;
        let layers = self.probe_layers(end.trainer.model());
        self.snapshots.push((end.summary.epoch, layers));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::parameters;
    use crate::trainer::Trainer;
    use cifar_data::CifarBatch;
    use cifar_models::{MlpConfig, ModelConfig};

    /// A 6-5-10 MLP under plain SGD (no momentum, no decay).
    fn tiny_trainer() -> Trainer {
        let config = TrainConfig {
            model: ModelConfig::Mlp(
                MlpConfig::new()
                    .with_input_size(6)
                    .with_hidden_sizes(vec![5]),
            ),
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            ..TrainConfig::default()
        };
        Trainer::new(&config, &Device::flex())
    }

    /// The same four examples every call (a graph's tape is consumed by its
    /// backward pass, so each use needs its own copy).
    fn tiny_batch(device: &Device) -> CifarBatch {
        let values: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        CifarBatch {
            images: Tensor::<4>::from_data(TensorData::new(values, [4, 6, 1, 1]), device),
            targets: Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), device),
        }
    }

    /// A monitor with `settings` writing to `path`.
    fn monitor_with(path: &std::path::Path, settings: MonitorSettings) -> LayerMonitor {
        LayerMonitor::new(
            settings,
            Tensor::<4>::zeros([2, 6, 1, 1], &Device::flex()),
            path,
            None,
            Progress {
                to_stderr: true,
                bars: false,
            },
        )
        .unwrap()
    }

    /// A monitor of every step of a ReLU network writing into `dir`.
    fn monitor_in(dir: &std::path::Path) -> LayerMonitor {
        monitor_with(
            &dir.join("layers.csv"),
            MonitorSettings::for_run(100, Some(1), 0, ActivationConfig::Relu),
        )
    }

    fn first_step(lr: f64) -> StepInfo {
        StepInfo {
            epoch: 0,
            iteration: 0,
            loss: f64::NAN,
            lr,
        }
    }

    /// With plain SGD the update is `-lr * g`, so the ratio must equal
    /// `lr * ||g|| / ||W||` computed from the gradient and the weights
    /// before the step.
    #[test]
    fn update_ratio_is_lr_times_grad_over_weight_under_plain_sgd() {
        let mut trainer = tiny_trainer();
        let device = trainer.device().clone();
        let lr = 0.1;
        // The expected ratios, by hand from the gradients of the same batch.
        let model = trainer.model().clone();
        let copy = tiny_batch(&device);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&device)
            .forward(model.forward(copy.images), copy.targets);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        let expected: Vec<(String, f64)> = parameters(&model, Some(&grads))
            .into_iter()
            .filter(|p| p.is_weight())
            .map(|p| {
                let g = squared_norm(p.grad.as_ref().unwrap()).sqrt();
                let w = squared_norm(&p.value).sqrt();
                (p.name.clone(), lr * g / w)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = monitor_in(dir.path());
        trainer
            .step(tiny_batch(&device), lr, first_step(lr), &mut [&mut monitor])
            .unwrap();
        assert_eq!(monitor.ratios().len(), expected.len());
        for (point, (name, ratio)) in monitor.ratios().iter().zip(&expected) {
            assert_eq!(&point.name, name);
            assert!(
                (point.ratio / ratio - 1.0).abs() < 1e-3,
                "{name}: monitor {} vs hand {ratio}",
                point.ratio
            );
        }
        let csv = std::fs::read_to_string(dir.path().join("layers.csv")).unwrap();
        assert!(csv.starts_with(LAYERS_HEADER));
        assert!(csv.contains("1,output,weight,update_ratio,"), "{csv}");
        assert!(csv.contains("1,hidden.0,activation,std,"), "{csv}");
    }

    fn snapshot(name: &str, values: &[f32], band: Option<(f32, f32)>, dead: f64) -> LayerSnapshot {
        LayerSnapshot {
            name: name.into(),
            stats: ActivationStats::of(values, band, 4),
            dead_fraction: dead,
        }
    }

    #[test]
    fn dead_units_are_zero_in_every_row() {
        // 3 rows of 4 units: units 1 and 3 are zero throughout; unit 0 is
        // zero in two rows only, unit 2 in none.
        let values = [
            0.0, 0.0, 1.0, 0.0, //
            0.0, 0.0, 2.0, 0.0, //
            5.0, 0.0, 3.0, 0.0,
        ];
        assert_eq!(dead_units(&values, 4), 2);
        assert_eq!(dead_units(&[], 4), 4);
    }

    #[test]
    fn dead_relu_and_saturated_tanh_layers_warn_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut relu = monitor_in(dir.path());
        let layers = [
            snapshot("hidden.0", &[0.0, 0.0, 0.0, 1.0], None, 0.75),
            snapshot("hidden.1", &[0.0, 1.0, 2.0, 3.0], None, 0.25),
        ];
        relu.check_activations(&first_step(0.1), &layers);
        relu.check_activations(&first_step(0.1), &layers);
        assert_eq!(relu.warnings().len(), 1, "{:?}", relu.warnings());
        assert!(relu.warnings()[0].contains("75% of the ReLU units of hidden.0 are dead"));

        let mut tanh = monitor_with(
            &dir.path().join("tanh.csv"),
            MonitorSettings::for_run(100, Some(1), 0, ActivationConfig::Tanh),
        );
        let band = ActivationConfig::Tanh.saturation_band();
        tanh.check_activations(
            &first_step(0.1),
            &[
                snapshot("hidden.0", &[-1.0, 1.0, 0.999, 0.2], band, 0.0),
                snapshot("hidden.1", &[-0.5, 0.5, 0.1, 0.2], band, 0.0),
            ],
        );
        assert_eq!(tanh.warnings().len(), 1, "{:?}", tanh.warnings());
        assert!(tanh.warnings()[0].contains("75% of the activations of hidden.0 are saturated"));
    }

    fn last(name: &str, ratio: f64) -> LastRatio {
        LastRatio {
            name: name.into(),
            ratio,
            feeds_batch_norm: false,
        }
    }

    #[test]
    fn a_sustained_high_median_warns_but_one_hot_layer_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = monitor_in(dir.path());
        let window = monitor.settings().window;
        // Only the output layer runs hot: the median (2e-3) is healthy.
        monitor.last_ratios = vec![
            last("a.weight", 1e-3),
            last("b.weight", 2e-3),
            last("output.weight", 5e-2),
        ];
        for _ in 0..2 * window {
            monitor.judge_learning_rate(&first_step(0.1), false);
        }
        assert!(monitor.warnings().is_empty(), "{:?}", monitor.warnings());
        // Most layers hot: the warning comes after `window` points, once.
        monitor.last_ratios[0].ratio = 2e-2;
        monitor.last_ratios[1].ratio = 3e-2;
        for i in 0..2 * window {
            monitor.judge_learning_rate(&first_step(0.1), false);
            assert_eq!(monitor.warnings().len(), usize::from(i + 1 >= window));
        }
        let w = &monitor.warnings()[0];
        assert!(
            w.contains("median update/weight ratio of the 3 weight tensors stayed above 1e-2"),
            "{w}"
        );
        assert!(
            w.contains("highest: output.weight 5.0e-2, b.weight 3.0e-2, a.weight 2.0e-2"),
            "{w}"
        );
        // Too small during warmup does not count; after it, it does.
        let mut cold = monitor_in(dir.path());
        cold.last_ratios = vec![last("a.weight", 1e-6)];
        for _ in 0..2 * window {
            cold.judge_learning_rate(&first_step(1e-6), true);
        }
        assert!(cold.warnings().is_empty());
        for _ in 0..window {
            cold.judge_learning_rate(&first_step(1e-6), false);
        }
        assert!(cold.warnings()[0].contains("raise --lr"));
    }

    /// SGD on a weight the loss cannot see the scale of: each step's
    /// gradient is a random direction orthogonal to `w` with norm
    /// `sqrt(d) / ||w||` (the noise-driven regime of the derivation), plus weight
    /// decay, through the optimizer's momentum exactly as Burn applies it.
    /// Returns the mean update/weight ratio over the last 1,000 steps.
    fn simulated_ratio(lr: f64, equilibrium: RotationalEquilibrium) -> f64 {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut normal = move || {
            // Box-Muller.
            let (u, v): (f64, f64) = (rng.random(), rng.random());
            (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let d = 1000;
        let (m, wd) = (equilibrium.momentum, equilibrium.weight_decay);
        let mut w: Vec<f64> = (0..d).map(|_| normal()).collect();
        let mut velocity = vec![0.0; d];
        let (steps, kept) = (6000, 1000);
        let mut sum = 0.0;
        for step in 0..steps {
            let mut g: Vec<f64> = (0..d).map(|_| normal()).collect();
            let (ww, gw) = (dot(&w, &w), dot(&g, &w));
            let scale = (d as f64).sqrt() / (dot(&g, &g) - gw * gw / ww).sqrt() / ww.sqrt();
            for (gi, wi) in g.iter_mut().zip(&w) {
                *gi = (*gi - gw / ww * wi) * scale + wd * wi;
            }
            let mut moved = 0.0;
            for i in 0..d {
                velocity[i] = m * velocity[i] + g[i];
                let update = if equilibrium.nesterov {
                    g[i] + m * velocity[i]
                } else {
                    velocity[i]
                };
                moved += (lr * update).powi(2);
                w[i] -= lr * update;
            }
            if step >= steps - kept {
                sum += moved.sqrt() / ww.sqrt();
            }
        }
        sum / kept as f64
    }

    #[test]
    fn the_rotational_equilibrium_matches_a_simulation() {
        // k by hand: Nesterov 0.9 gives 0.1 * 1.9^2 + 0.9^4 / 1.9 = 0.361 + 0.345316.
        let nesterov = RotationalEquilibrium {
            weight_decay: 5e-3,
            momentum: 0.9,
            nesterov: true,
        };
        assert!((nesterov.momentum_factor() - 0.706_316).abs() < 1e-6);
        for (lr, equilibrium) in [
            (
                0.1,
                RotationalEquilibrium {
                    momentum: 0.0,
                    nesterov: false,
                    ..nesterov
                },
            ),
            (
                0.1,
                RotationalEquilibrium {
                    nesterov: false,
                    ..nesterov
                },
            ),
            (0.1, nesterov),
            // The recipe's optimizer at its peak rate.
            (
                1.5,
                RotationalEquilibrium {
                    weight_decay: 1.333e-3,
                    momentum: 0.85,
                    nesterov: true,
                },
            ),
        ] {
            let predicted = equilibrium.ratio(lr);
            let simulated = simulated_ratio(lr, equilibrium);
            assert!(
                (simulated / predicted - 1.0).abs() < 0.03,
                "{equilibrium:?} at lr {lr}: simulated {simulated:.4e}, predicted {predicted:.4e}"
            );
        }
        // Heavy-ball and Nesterov differ by more than the tolerance, so the
        // test tells them apart.
        let heavy = RotationalEquilibrium {
            nesterov: false,
            ..nesterov
        };
        assert!(nesterov.ratio(0.1) / heavy.ratio(0.1) > 1.1);
    }

    #[test]
    fn the_equilibrium_applies_to_sgd_with_weight_decay_only() {
        let config = |optimizer, weight_decay| TrainConfig {
            optimizer,
            weight_decay,
            momentum: 0.85,
            ..TrainConfig::default()
        };
        let nesterov = RotationalEquilibrium::of(&config(OptimizerKind::Nesterov, 1e-3)).unwrap();
        assert!(nesterov.nesterov && nesterov.momentum == 0.85);
        let sgd = RotationalEquilibrium::of(&config(OptimizerKind::Sgd, 1e-3)).unwrap();
        assert_eq!(sgd.momentum, 0.0);
        // k = 1: sqrt(2 * 0.5 * 1e-3) by hand.
        assert!((sgd.ratio(0.5) - 0.031_622_8).abs() < 1e-7);
        assert!(RotationalEquilibrium::of(&config(OptimizerKind::Nesterov, 0.0)).is_none());
        assert!(RotationalEquilibrium::of(&config(OptimizerKind::Adamw, 1e-3)).is_none());
    }

    #[test]
    fn weights_at_their_equilibrium_get_a_note_and_no_warning() {
        let equilibrium = RotationalEquilibrium {
            weight_decay: 1.333e-3,
            momentum: 0.85,
            nesterov: true,
        };
        let lr = 1.36;
        // The recipe at step 97: convolutions that feed batch norm turn by
        // about 4.4e-2 per step (the equilibrium is 5.4e-2), the output layer by 5e-3.
        let recipe = |fed_ratio: f64| -> Vec<LastRatio> {
            let mut ratios: Vec<LastRatio> = (0..6)
                .map(|i| LastRatio {
                    name: format!("stages.{i}.conv.weight"),
                    ratio: fed_ratio * (1.0 + 0.05 * i as f64),
                    feeds_batch_norm: true,
                })
                .collect();
            ratios.push(last("output.weight", 5e-3));
            ratios
        };
        let dir = tempfile::tempdir().unwrap();
        let settings = MonitorSettings::for_run(100, Some(1), 10, ActivationConfig::Gelu)
            .with_equilibrium(Some(equilibrium));
        let mut monitor = monitor_with(&dir.path().join("layers.csv"), settings.clone());
        let window = monitor.settings().window;
        let at = |iteration| StepInfo {
            iteration,
            ..first_step(lr)
        };
        monitor.last_ratios = recipe(4.4e-2);
        // In warmup nothing is concluded; after it, the note comes once after the window.
        for i in 0..10 {
            monitor.judge_learning_rate(&at(i), true);
            monitor.judge_equilibrium(&at(i), true);
        }
        assert!(monitor.notes().is_empty());
        for i in 10..10 + 2 * window {
            monitor.judge_learning_rate(&at(i), false);
            monitor.judge_equilibrium(&at(i), false);
        }
        assert!(monitor.warnings().is_empty(), "{:?}", monitor.warnings());
        assert_eq!(monitor.notes().len(), 1, "{:?}", monitor.notes());
        let note = &monitor.notes()[0];
        assert!(
            note.contains("the 6 weight tensors that feed batch norm"),
            "{note}"
        );
        assert!(note.contains("far above the lecture's 1e-3"), "{note}");
        // The median of 4.4e-2 x (1.10, 1.15) against 5.37e-2.
        assert!(
            note.contains("0.92 of the rotational equilibrium"),
            "{note}"
        );
        assert!(
            note.contains("= 5.37e-2, with k = 0.796 for Nesterov momentum 0.85"),
            "{note}"
        );
        monitor.csv.flush().unwrap();
        let history = read_ratios(&dir.path().join("layers.csv")).unwrap();
        assert_eq!(history.equilibrium.len(), 10 + 2 * window);
        assert!((history.equilibrium[0].1 - equilibrium.ratio(lr)).abs() < 1e-7);

        // Far from the equilibrium (ten times above it): no note.
        let mut hot = monitor_with(&dir.path().join("hot.csv"), settings.clone());
        hot.last_ratios = recipe(0.5);
        for i in 10..10 + 2 * window {
            hot.judge_equilibrium(&at(i), false);
        }
        assert!(hot.notes().is_empty());

        // Without the equilibrium (Adam, or no weight decay) the same
        // ratios are the lecture's business: the median is too high.
        let mut plain = monitor_in(dir.path());
        plain.last_ratios = recipe(4.4e-2);
        for i in 10..10 + 2 * window {
            plain.judge_learning_rate(&at(i), false);
            plain.judge_equilibrium(&at(i), false);
        }
        assert!(plain.notes().is_empty());
        assert!(
            plain.warnings()[0].contains("ratio of the 7 weight tensors stayed above 1e-2"),
            "{:?}",
            plain.warnings()
        );

        // With it, a hot output layer alone is one layer's reading: no warning.
        let mut output = monitor_with(&dir.path().join("output.csv"), settings);
        output.last_ratios = recipe(4.4e-2);
        output.last_ratios[6].ratio = 3e-2;
        for i in 10..10 + 2 * window {
            output.judge_learning_rate(&at(i), false);
        }
        assert!(output.warnings().is_empty(), "{:?}", output.warnings());
        // Two hot layers that do not feed batch norm are judged, and named as such.
        output.last_ratios.push(last("head.weight", 2e-2));
        for i in 10..10 + 2 * window {
            output.judge_learning_rate(&at(i), false);
        }
        assert!(
            output.warnings()[0].contains(
                "ratio of the 2 weight tensors that do not feed batch norm stayed above 1e-2"
            ),
            "{:?}",
            output.warnings()
        );
    }

    #[test]
    fn a_far_too_large_ratio_warns_at_once_and_names_the_flag() {
        let mut trainer = tiny_trainer();
        let device = trainer.device().clone();
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = monitor_in(dir.path());
        trainer
            .step(
                tiny_batch(&device),
                50.0,
                first_step(50.0),
                &mut [&mut monitor],
            )
            .unwrap();
        assert!(
            monitor.warnings().iter().any(|w| w.contains("lower --lr")),
            "{:?}",
            monitor.warnings()
        );
        assert!(!monitor.ratios_above(HIGH_RATIO).is_empty());
    }
}
