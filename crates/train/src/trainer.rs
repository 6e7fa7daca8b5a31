//! One training step, shared by every command that trains: `fit`, `bench`,
//! `check`, `lr-find` and the hyperparameter search.
//!
//! A [`Trainer`] owns the model (on an autodiff device), the optimizer and
//! the loss. [`Trainer::step`] runs forward, cross-entropy, backward and the
//! optimizer update on one batch, and shows the gradients to
//! [`StepObserver`]s before the optimizer consumes them (batch norm shifts'
//! already multiplied by `--norm-shift-lr-scale`), and the weights
//! before and after the update once it has. A loss that is not finite, or
//! that exceeds [`Trainer::divergence_factor`] times the first step's loss,
//! is a [`StepOutcome::Diverged`]: the update is skipped and the caller
//! decides what to do.

use anyhow::{Context, Result};
use burn::module::{ModuleVisitor, Param, ParamId};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{
    AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, RmsPropConfig, SgdConfig,
    decay::WeightDecayConfig,
};
use burn::prelude::*;
use cifar_data::{CifarBatch, Features, PatchWhitening};
use cifar_models::Model;
use serde::Serialize;

use crate::config::{OptimizerKind, TrainConfig};
use crate::fused_sgd::FusedSgd;
use crate::lookahead::Lookahead;

/// `model` with the layers whose weights come from data statistics rather
/// than training fitted on `train`: a CNN's patch whitening
/// ([`PatchWhitening`], on the first 5,000 images as airbench does).
/// Other models come back unchanged.
pub fn fit_data_layers(model: Model, train: &Features) -> Result<Model> {
    let Model::Cnn(cnn) = model else {
        return Ok(model);
    };
    let Some(whiten) = &cnn.whiten else {
        return Ok(Model::Cnn(cnn));
    };
    let [_, _, patch, _] = whiten.weight.dims();
    let fitted = PatchWhitening::new()
        .with_patch(patch)
        .fit(train)
        .context("fitting the whitening layer on the training images")?;
    let device = whiten.weight.device();
    let filters = Tensor::<4>::from_data(
        TensorData::new(fitted.filters.clone(), fitted.filter_shape()),
        &device,
    );
    let bias = Tensor::<1>::from_data(
        TensorData::new(fitted.bias.clone(), [fitted.bias.len()]),
        &device,
    );
    Ok(Model::Cnn(cnn.with_whitening(filters, bias)))
}

/// Where a step stands in its run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step in the whole run.
    pub iteration: usize,
    /// The batch's mean loss (filled in by the step).
    pub loss: f64,
    /// The learning rate of the step.
    pub lr: f64,
}

/// Sees inside each step. Every method has a default that does nothing.
pub trait StepObserver {
    /// Whether this observer wants step `iteration`'s gradients and update
    /// (the trainer keeps the weights from before the update only then).
    fn observes(&self, _iteration: usize) -> bool {
        false
    }
    /// The gradients of the step, before the optimizer uses them.
    fn on_gradients(
        &mut self,
        _step: &StepInfo,
        _model: &Model,
        _grads: &GradientsParams,
    ) -> Result<()> {
        Ok(())
    }
    /// The model before and after the update.
    fn on_update(&mut self, _step: &StepInfo, _before: &Model, _after: &Model) -> Result<()> {
        Ok(())
    }
}

/// Why a step was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Divergence {
    /// The step's loss (NaN or infinite, or too large).
    pub loss: f64,
    /// The first step's loss.
    pub initial_loss: f64,
    /// The factor over the initial loss that counts as divergence.
    pub factor: f64,
}

impl Divergence {
    /// "the loss is NaN" or "the loss is 9.1, more than 3 times its initial 2.3".
    pub fn describe(&self) -> String {
        if self.loss.is_finite() {
            format!(
                "the loss is {:.4}, more than {} times its initial {:.4}",
                self.loss, self.factor, self.initial_loss
            )
        } else {
            format!("the loss is {}", self.loss)
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepOutcome {
    /// The weights were updated; the batch's loss before the update.
    Updated {
        /// The batch's mean loss.
        loss: f64,
    },
    /// The loss diverged; the weights were left as they were.
    Diverged(Divergence),
}

/// Builds the optimizer of `config`.
pub fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let decay =
        (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32));
    match config.optimizer {
        OptimizerKind::Sgd => SgdConfig::new().with_weight_decay(decay).init(),
        OptimizerKind::Momentum | OptimizerKind::Nesterov => FusedSgd {
            momentum: config.momentum,
            weight_decay: config.weight_decay,
            nesterov: config.optimizer == OptimizerKind::Nesterov,
        }
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

/// The ids of the shifts β of every [`BatchNorm`](burn::nn::BatchNorm) in
/// `module`, in any model (Burn's visitor names each field and the struct
/// that holds it).
pub fn norm_shift_ids<M: Module>(module: &M) -> Vec<ParamId> {
    /// Follows the visitor's path of (field, container) pairs.
    #[derive(Default)]
    struct Shifts {
        path: Vec<(String, String)>,
        ids: Vec<ParamId>,
    }

    impl ModuleVisitor for Shifts {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.push((name.to_owned(), container_type.to_owned()));
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }

        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some((field, container)) = self.path.last()
                && field == "beta"
                && container == "Struct:BatchNorm"
            {
                self.ids.push(param.id);
            }
        }
    }

    let mut shifts = Shifts::default();
    module.visit(&mut shifts);
    shifts.ids
}

/// Multiplies the gradients of `ids` (1-D parameters) by `factor`. For the
/// SGD family this multiplies their learning rate while their L2 term, added
/// by the optimizer afterwards, keeps its decay per step: airbench's
/// `lr = lr * bias_scaler, weight_decay = wd / lr` for batch norm biases.
pub fn scale_gradients(grads: &mut GradientsParams, ids: &[ParamId], factor: f64) {
    for &id in ids {
        if let Some(grad) = grads.remove::<1>(id) {
            grads.register(id, grad.mul_scalar(factor));
        }
    }
}

/// Model, optimizer and loss on an autodiff device.
pub struct Trainer {
    model: Option<Model>,
    optim: ModuleOptimizer,
    device: Device,
    loss: CrossEntropyLoss,
    initial_loss: Option<f64>,
    /// The learning-rate factor of batch norm shifts (1: none).
    norm_shift_lr_scale: f64,
    /// The slow average the weights are pulled back to (`--lookahead`).
    lookahead: Option<Lookahead>,
    /// A loss above this many times the first step's loss is a divergence.
    pub divergence_factor: f64,
}

impl Trainer {
    /// The loss above `DIVERGENCE_FACTOR` times its initial value stops a run, as the lecture advises.
    pub const DIVERGENCE_FACTOR: f64 = 3.0;

    /// A freshly initialized model of `config` and its optimizer on `device`
    /// (a plain device: autodiff is added here), seeded with `config.seed`.
    pub fn new(config: &TrainConfig, device: &Device) -> Self {
        let device = device.clone().autodiff();
        device.seed(config.seed);
        let model = config.model.init(&device);
        Self::from_parts(config, model, optimizer(config), &device)
    }

    /// As [`new`](Self::new), with the model's data-fitted layers (a CNN's
    /// patch whitening) fitted on `train`, the preprocessed training split.
    pub fn for_data(config: &TrainConfig, device: &Device, train: &Features) -> Result<Self> {
        let mut trainer = Self::new(config, device);
        let model = trainer
            .model
            .take()
            .expect("a trainer always holds its model");
        let model = fit_data_layers(model, train)?;
        if trainer.lookahead.is_some() {
            trainer.lookahead = Some(Lookahead::new(&model));
        }
        trainer.model = Some(model);
        Ok(trainer)
    }

    /// A trainer around an existing model (built on, or moved to, an autodiff device) and optimizer.
    pub fn from_parts(
        config: &TrainConfig,
        model: Model,
        optim: ModuleOptimizer,
        device: &Device,
    ) -> Self {
        let device = device.clone().autodiff();
        let lookahead = config.lookahead.then(|| Lookahead::new(&model));
        Self {
            loss: CrossEntropyLossConfig::new()
                .with_smoothing(
                    (config.label_smoothing > 0.0).then_some(config.label_smoothing as f32),
                )
                .init(&device),
            model: Some(model),
            optim,
            device,
            initial_loss: None,
            norm_shift_lr_scale: config.norm_shift_lr_scale,
            lookahead,
            divergence_factor: Self::DIVERGENCE_FACTOR,
        }
    }

    /// The autodiff device batches go to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        self.model
            .as_ref()
            .expect("the trainer always holds a model")
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// Replaces model and optimizer (when resuming from a checkpoint).
    pub fn restore(&mut self, model: Model, optim: ModuleOptimizer) {
        self.model = Some(model);
        self.optim = optim;
    }

    /// Whether the run pulls its weights back to a slow average (`--lookahead`).
    pub fn has_lookahead(&self) -> bool {
        self.lookahead.is_some()
    }

    /// The model with its trained weights replaced by the lookahead's
    /// average, when the run has one (for checkpoints).
    pub fn lookahead_average(&self) -> Option<Model> {
        let lookahead = self.lookahead.as_ref()?;
        Some(lookahead.average_of(self.model().clone()))
    }

    /// Restarts the lookahead's average from `average`'s trained weights
    /// (when resuming); nothing happens in a run without lookahead.
    pub fn restore_lookahead(&mut self, average: &Model) {
        if self.lookahead.is_some() {
            self.lookahead = Some(Lookahead::new(average));
        }
    }

    /// Once `done` of the run's `total` steps are done: the lookahead's pull
    /// when it is due (nothing in a run without lookahead).
    pub fn after_steps(&mut self, done: usize, total: usize) {
        if let Some(lookahead) = self.lookahead.as_mut()
            && Lookahead::is_due(done, total)
        {
            let model = self.model.take().expect("the trainer always holds a model");
            self.model = Some(lookahead.pull(model, Lookahead::decay(done, total)));
        }
    }

    /// The first step's loss, the reference of the divergence check.
    pub fn initial_loss(&self) -> Option<f64> {
        self.initial_loss
    }

    /// Sets the reference loss (a resumed run keeps its first loss).
    pub fn set_initial_loss(&mut self, loss: Option<f64>) {
        self.initial_loss = loss;
    }

    /// Mean cross-entropy of the current model on `batch`, without a backward pass.
    pub fn loss_of(&self, batch: CifarBatch) -> f64 {
        let logits = self.model().forward(batch.images);
        self.loss
            .forward(logits, batch.targets)
            .into_scalar::<f32>() as f64
    }

    /// One step on `batch` (on [`device`](Self::device)) at learning rate `lr`.
    ///
    /// `step` says where the step stands (its `loss` is ignored and filled in
    /// for the observers).
    pub fn step(
        &mut self,
        batch: CifarBatch,
        lr: f64,
        step: StepInfo,
        observers: &mut [&mut dyn StepObserver],
    ) -> Result<StepOutcome> {
        let model = self.model.take().expect("the trainer always holds a model");
        let logits = model.forward(batch.images);
        let loss = self.loss.forward(logits, batch.targets);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let initial = *self.initial_loss.get_or_insert(value);
        if !value.is_finite() || value > self.divergence_factor * initial {
            self.model = Some(model);
            return Ok(StepOutcome::Diverged(Divergence {
                loss: value,
                initial_loss: initial,
                factor: self.divergence_factor,
            }));
        }
        let info = StepInfo {
            loss: value,
            lr,
            ..step
        };
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if self.norm_shift_lr_scale != 1.0 {
            let shifts = norm_shift_ids(&model);
            scale_gradients(&mut grads, &shifts, self.norm_shift_lr_scale);
        }
        let watched = observers.iter().any(|o| o.observes(info.iteration));
        let before = if watched {
            for observer in observers.iter_mut() {
                if observer.observes(info.iteration) {
                    observer.on_gradients(&info, &model, &grads)?;
                }
            }
            Some(model.clone())
        } else {
            None
        };
        let model = self.optim.step(lr, model, grads);
        if let Some(before) = &before {
            for observer in observers.iter_mut() {
                if observer.observes(info.iteration) {
                    observer.on_update(&info, before, &model)?;
                }
            }
        }
        self.model = Some(model);
        Ok(StepOutcome::Updated { loss: value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cifar_data::FeatureShape;
    use cifar_models::{CnnConfig, ModelConfig, StageConfig};

    /// Every trained parameter of `model`, by id (not batch norm's running
    /// statistics, which the clones of a model share).
    fn parameters(model: &Model) -> Vec<(ParamId, Vec<f32>)> {
        struct All(Vec<(ParamId, Vec<f32>)>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if !param.is_require_grad() {
                    return;
                }
                let values = param.val().into_data().try_to_vec().unwrap();
                self.0.push((param.id, values));
            }
        }
        let mut all = All(Vec::new());
        model.visit(&mut all);
        all.0
    }

    #[test]
    fn norm_shifts_learn_faster_by_their_factor_and_nothing_else_changes() {
        let config = TrainConfig {
            model: ModelConfig::Cnn(
                CnnConfig::new(vec![StageConfig::new(vec![4, 4])])
                    .with_image_size(8)
                    .with_batch_norm(true),
            ),
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.01,
            ..TrainConfig::default()
        };
        let device = Device::flex().autodiff();
        // One model for both runs: the seed is shared by every test in the process.
        let model = config.model.init(&device);
        let shifts = norm_shift_ids(&model);
        assert_eq!(shifts.len(), 2, "one shift per convolution's batch norm");
        // A fixed batch, so that both runs see the same gradients.
        let batch = || CifarBatch {
            images: Tensor::<4>::from_data(
                TensorData::new(
                    (0..4 * 3 * 8 * 8)
                        .map(|v| ((v * 7919) % 101) as f32 / 50.0 - 1.0)
                        .collect::<Vec<_>>(),
                    [4, 3, 8, 8],
                ),
                &device,
            ),
            targets: Tensor::<1, Int>::from_data(
                TensorData::new(vec![0i64, 3, 5, 9], [4]),
                &device,
            ),
        };
        let step = |factor: f64| {
            let config = TrainConfig {
                norm_shift_lr_scale: factor,
                ..config.clone()
            };
            let mut trainer =
                Trainer::from_parts(&config, model.clone(), optimizer(&config), &device);
            let info = StepInfo {
                epoch: 0,
                iteration: 0,
                loss: 0.0,
                lr: 0.1,
            };
            trainer.step(batch(), 0.1, info, &mut []).unwrap();
            parameters(trainer.model())
        };
        let before = parameters(&model);
        let (plain, scaled) = (step(1.0), step(8.0));
        for (((id, w), (_, a)), (_, b)) in before.iter().zip(&plain).zip(&scaled) {
            let factor = if shifts.contains(id) { 8.0 } else { 1.0 };
            for ((w, a), b) in w.iter().zip(a).zip(b) {
                // SGD with L2 λ: w - lr λ w - factor lr g, where the plain
                // step gives lr g = w - a - lr λ w.
                let decay = 0.1 * 0.01 * w;
                let want = w - decay - factor * (w - a - decay);
                assert!((b - want).abs() < 1e-5, "{id:?}: {b} instead of {want}");
            }
        }
        // The shifts did move, so the check above compared real updates.
        let moved = before
            .iter()
            .zip(&plain)
            .filter(|((id, w), (_, a))| shifts.contains(id) && w != a);
        assert_eq!(moved.count(), 2);
    }

    #[test]
    fn a_whitened_cnn_gets_the_filters_fitted_on_the_training_images() {
        let values: Vec<f32> = (0..6 * 3 * 8 * 8)
            .map(|v| ((v * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let train = Features {
            values,
            labels: vec![0; 6],
            shape: FeatureShape::Image {
                channels: 3,
                height: 8,
                width: 8,
            },
        };
        let config = TrainConfig {
            model: ModelConfig::Cnn(
                CnnConfig::new(vec![StageConfig::new(vec![4])])
                    .with_image_size(8)
                    .with_whiten(2),
            ),
            ..TrainConfig::default()
        };
        let trainer = Trainer::for_data(&config, &Device::flex(), &train).unwrap();
        let Model::Cnn(cnn) = trainer.model() else {
            panic!("a CNN")
        };
        let weights = cnn.whiten.as_ref().unwrap().weight.val().into_data();
        let expected = PatchWhitening::new().fit(&train).unwrap();
        let shape = expected.filter_shape();
        weights.assert_eq(&TensorData::new(expected.filters, shape), true);
        // Without whitening, the model is left as it was built.
        let plain = Trainer::for_data(&TrainConfig::default(), &Device::flex(), &train).unwrap();
        assert!(matches!(plain.model(), Model::Cnn(c) if c.whiten.is_none()));
    }
}
