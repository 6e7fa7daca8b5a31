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
//! Rows go to `layers.csv` in long format: `step,layer,parameter,statistic,value`.
//! Warnings (once each) when the median ratio of the weight tensors stays
//! above 1e-2 or below 1e-4 over a window of monitor points (the ratio
//! judges the learning rate, and one layer can run hotter than the rest
//! for good reasons), naming the layers out of the band; when one weight's
//! ratio exceeds 0.5 in a single step; when more than half of a ReLU layer's
//! units are dead, or more than half of a tanh/sigmoid layer's values saturate.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use burn::optim::GradientsParams;
use burn::prelude::*;
use cifar_models::{ActivationConfig, ActivationStats, Model};
use serde::Serialize;

use crate::callbacks::{Callback, EpochEnd};
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
    /// The layer's name (`stage1.conv1`, `hidden2`).
    pub name: String,
    /// Its statistics; the histogram spans the values' own range.
    pub stats: ActivationStats,
    /// Fraction of units that are zero on every probe image.
    pub dead_fraction: f64,
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
        }
    }
}

/// Records per-layer statistics and warns about unhealthy layers.
pub struct LayerMonitor {
    settings: MonitorSettings,
    probe: Tensor<4>,
    csv: BufWriter<std::fs::File>,
    progress: Progress,
    grad_norms: BTreeMap<String, f64>,
    last_ratios: Vec<(String, f64)>,
    high_streak: usize,
    low_streak: usize,
    warned: BTreeSet<String>,
    warnings: Vec<String>,
    printed: usize,
    ratios: Vec<RatioPoint>,
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
        let (kept, ratios) = parse_layers_csv(&text, resume_at.unwrap_or(0));
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
            warned: BTreeSet::new(),
            warnings: Vec::new(),
            printed: 0,
            ratios,
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

    /// Every update/weight ratio recorded so far.
    pub fn ratios(&self) -> &[RatioPoint] {
        &self.ratios
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
            .filter(|(_, r)| !r.is_finite() || *r > threshold)
            .cloned()
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
                let [n, units] = layer.post.dims();
                let values = layer
                    .post
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .expect("float activations");
                let dead = (0..units)
                    .filter(|&u| (0..n).all(|i| values[i * units + u] == 0.0))
                    .count();
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

    /// Prints the warnings given since the last call, as `warning: ...` lines.
    pub fn print_new_warnings(&mut self) {
        for text in &self.warnings[self.printed..] {
            self.progress.line(&format!("warning: {text}"));
        }
        self.printed = self.warnings.len();
    }

    /// The lecture's ratio judges the learning rate, one number for the
    /// network: the median ratio over the weight tensors, sustained over
    /// the window, against the healthy band. (A single layer can run hotter
    /// or colder than the rest for good reasons: the output layer starts
    /// small, so its ratio starts high.)
    fn judge_learning_rate(&mut self, step: &StepInfo, in_warmup: bool) {
        let mut ratios: Vec<f64> = self
            .last_ratios
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| r.is_finite())
            .collect();
        let n = ratios.len();
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
        let layers = |this: &Self, above: bool| -> String {
            let mut named: Vec<&(String, f64)> = this
                .last_ratios
                .iter()
                .filter(|(_, r)| {
                    if above {
                        *r > HIGH_RATIO
                    } else {
                        *r < LOW_RATIO
                    }
                })
                .collect();
            // Farthest from the band first.
            if above {
                named.sort_by(|a, b| b.1.total_cmp(&a.1));
            } else {
                named.sort_by(|a, b| a.1.total_cmp(&b.1));
            }
            named
                .iter()
                .take(4)
                .map(|(name, r)| format!("{name} {r:.1e}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.high_streak >= window {
            let named = layers(self, true);
            self.warn(
                "high".into(),
                format!(
                    "the median update/weight ratio of the {n} weight tensors stayed above {HIGH_RATIO:.0e} for {window} monitor points \
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
                    "the median update/weight ratio of the {n} weight tensors stayed below {LOW_RATIO:.0e} for {window} monitor points \
                     (now {median:.2e} at step {row}; about {HEALTHY_RATIO:.0e} is healthy; lowest: {named}): \
                     the updates are too small, raise --lr (now {:.3e})",
                    step.lr
                ),
            );
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

/// The rows of a `layers.csv` text up to step `iteration` (1-based rows),
/// and the weights' update ratios among them.
fn parse_layers_csv(text: &str, iteration: usize) -> (String, Vec<RatioPoint>) {
    let mut kept = format!("{LAYERS_HEADER}\n");
    let mut ratios = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let Some(step) = fields.first().and_then(|s| s.parse::<usize>().ok()) else {
            continue;
        };
        if step > iteration {
            continue;
        }
        if fields.len() == 5 && fields[3] == "update_ratio" && fields[2] == "weight" {
            ratios.push(RatioPoint {
                iteration: step - 1,
                name: format!("{}.{}", fields[1], fields[2]),
                ratio: fields[4].parse().unwrap_or(f64::NAN),
            });
        }
        kept.push_str(line);
        kept.push('\n');
    }
    (kept, ratios)
}

/// The weights' update ratios recorded in a run's `layers.csv` (for redrawing its chart).
pub fn read_ratios(path: &std::path::Path) -> Result<Vec<RatioPoint>> {
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
            self.last_ratios.push((old.name.clone(), ratio));
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
    use crate::config::{OptimizerKind, TrainConfig};
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

    /// A monitor of every step writing into `dir`.
    fn monitor_in(dir: &std::path::Path) -> LayerMonitor {
        LayerMonitor::new(
            MonitorSettings::for_run(100, Some(1), 0, ActivationConfig::Relu),
            Tensor::<4>::zeros([2, 6, 1, 1], &Device::flex()),
            &dir.join("layers.csv"),
            None,
            Progress {
                to_stderr: true,
                bars: false,
            },
        )
        .unwrap()
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
        assert!(csv.contains("1,hidden1,activation,std,"), "{csv}");
    }

    fn snapshot(name: &str, values: &[f32], band: Option<(f32, f32)>, dead: f64) -> LayerSnapshot {
        LayerSnapshot {
            name: name.into(),
            stats: ActivationStats::of(values, band, 4),
            dead_fraction: dead,
        }
    }

    #[test]
    fn dead_relu_and_saturated_tanh_layers_warn_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut relu = monitor_in(dir.path());
        let layers = [
            snapshot("hidden1", &[0.0, 0.0, 0.0, 1.0], None, 0.75),
            snapshot("hidden2", &[0.0, 1.0, 2.0, 3.0], None, 0.25),
        ];
        relu.check_activations(&first_step(0.1), &layers);
        relu.check_activations(&first_step(0.1), &layers);
        assert_eq!(relu.warnings().len(), 1, "{:?}", relu.warnings());
        assert!(relu.warnings()[0].contains("75% of the ReLU units of hidden1 are dead"));

        let mut tanh = LayerMonitor::new(
            MonitorSettings::for_run(100, Some(1), 0, ActivationConfig::Tanh),
            Tensor::<4>::zeros([2, 6, 1, 1], &Device::flex()),
            &dir.path().join("tanh.csv"),
            None,
            Progress {
                to_stderr: true,
                bars: false,
            },
        )
        .unwrap();
        let band = ActivationConfig::Tanh.saturation_band();
        tanh.check_activations(
            &first_step(0.1),
            &[
                snapshot("hidden1", &[-1.0, 1.0, 0.999, 0.2], band, 0.0),
                snapshot("hidden2", &[-0.5, 0.5, 0.1, 0.2], band, 0.0),
            ],
        );
        assert_eq!(tanh.warnings().len(), 1, "{:?}", tanh.warnings());
        assert!(tanh.warnings()[0].contains("75% of the activations of hidden1 are saturated"));
    }

    #[test]
    fn a_sustained_high_median_warns_but_one_hot_layer_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = monitor_in(dir.path());
        let window = monitor.settings().window;
        // Only the output layer runs hot: the median (2e-3) is healthy.
        monitor.last_ratios = vec![
            ("a.weight".into(), 1e-3),
            ("b.weight".into(), 2e-3),
            ("output.weight".into(), 5e-2),
        ];
        for _ in 0..2 * window {
            monitor.judge_learning_rate(&first_step(0.1), false);
        }
        assert!(monitor.warnings().is_empty(), "{:?}", monitor.warnings());
        // Most layers hot: the warning comes after `window` points, once.
        monitor.last_ratios[0].1 = 2e-2;
        monitor.last_ratios[1].1 = 3e-2;
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
        cold.last_ratios = vec![("a.weight".into(), 1e-6)];
        for _ in 0..2 * window {
            cold.judge_learning_rate(&first_step(1e-6), true);
        }
        assert!(cold.warnings().is_empty());
        for _ in 0..window {
            cold.judge_learning_rate(&first_step(1e-6), false);
        }
        assert!(cold.warnings()[0].contains("raise --lr"));
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
