//! Everything `train fit` can be told, as one serializable config.
//!
//! `--config FILE.json` loads one; flags given on the command line override
//! its fields; the run folder keeps the result as `config.json`.

use std::str::FromStr;

use cifar_data::{Augmentation, Preprocessing, SplitConfig};
use cifar_models::ModelConfig;
use cifar_spelling::Names;
use serde::{Deserialize, Serialize};

/// Which Burn backend runs the computation: `flex` (or `cpu`), `ndarray`,
/// or `wgpu` (or `gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (`cpu`).
    #[default]
    Flex,
    /// The older ndarray CPU backend (deprecated in Burn 0.22).
    Ndarray,
    /// The GPU through wgpu (`gpu`): Vulkan, Metal or DirectX.
    Wgpu,
}

impl Backend {
    /// The names of the backends.
    pub const NAMES: Names<Backend> = Names {
        what: "backend",
        table: &[
            ("flex", Backend::Flex),
            ("cpu", Backend::Flex),
            ("ndarray", Backend::Ndarray),
            ("wgpu", Backend::Wgpu),
            ("gpu", Backend::Wgpu),
        ],
    };
}

/// The optimizer's update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// Vanilla SGD: `w -= lr * dw`.
    Sgd,
    /// SGD with momentum.
    Momentum,
    /// SGD with Nesterov momentum.
    Nesterov,
    /// Adam.
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
    /// RMSProp.
    Rmsprop,
}

impl OptimizerKind {
    /// The names of the optimizers.
    pub const NAMES: Names<OptimizerKind> = Names {
        what: "optimizer",
        table: &[
            ("sgd", OptimizerKind::Sgd),
            ("momentum", OptimizerKind::Momentum),
            ("nesterov", OptimizerKind::Nesterov),
            ("adam", OptimizerKind::Adam),
            ("adamw", OptimizerKind::Adamw),
            ("rmsprop", OptimizerKind::Rmsprop),
        ],
    };
}

/// How the learning rate changes over the run (after warmup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedule {
    /// The same rate throughout.
    Constant,
    /// Divided by 10 at 50% and again at 75% of the run.
    Step,
    /// Cosine decay to zero at the end of the run.
    Cosine,
}

impl LrSchedule {
    /// The names of the schedules.
    pub const NAMES: Names<LrSchedule> = Names {
        what: "learning-rate schedule",
        table: &[
            ("constant", LrSchedule::Constant),
            ("step", LrSchedule::Step),
            ("cosine", LrSchedule::Cosine),
        ],
    };
}

/// `Display`, `FromStr` and serde for an enum with a `NAMES` table: one
/// spelling in flags, config files and errors.
macro_rules! named {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(Self::NAMES.name(*self))
            }
        }

        impl FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::NAMES.parse(s)
            }
        }

        cifar_spelling::serde_as_text!($t);
    )*};
}

named!(Backend, OptimizerKind, LrSchedule);

/// The complete description of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainConfig {
    /// The backend.
    pub backend: Backend,
    /// The network.
    pub model: ModelConfig,
    /// Preprocessing, fitted on the training split.
    pub preprocess: Preprocessing,
    /// Training-batch augmentation (none when absent).
    pub augment: Option<Augmentation>,
    /// The update rule.
    pub optimizer: OptimizerKind,
    /// The base learning rate.
    pub lr: f64,
    /// Momentum (momentum, nesterov) or beta1 (adam, adamw); sgd and rmsprop ignore it.
    pub momentum: f64,
    /// L2 regularization strength (decoupled weight decay for adamw).
    #[serde(alias = "weight_decay")]
    pub weight_decay: f64,
    /// How the learning rate decays.
    #[serde(alias = "lr_schedule")]
    pub lr_schedule: LrSchedule,
    /// Epochs of linear warmup from 0 to `lr`.
    pub warmup: f64,
    /// Passes over the training split.
    pub epochs: usize,
    /// Examples per step.
    #[serde(alias = "batch_size")]
    pub batch_size: usize,
    /// Seed of initialization, shuffling, augmentation and dropout.
    pub seed: u64,
    /// How the training batches are split.
    pub split: SplitConfig,
}

impl Default for TrainConfig {
    /// The default run: a VGG-style CNN with batch norm, He init and ReLU,
    /// per-channel standardization, crop-and-flip augmentation, SGD with
    /// Nesterov momentum and a cosine schedule with one epoch of warmup.
    fn default() -> Self {
        Self {
            backend: Backend::Flex,
            model: ModelConfig::preset("cnn").expect("cnn preset"),
            preprocess: Preprocessing::Standardize,
            augment: Some(Augmentation::new()),
            optimizer: OptimizerKind::Nesterov,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_schedule: LrSchedule::Cosine,
            warmup: 1.0,
            epochs: 10,
            batch_size: 128,
            seed: 0,
            split: SplitConfig::new(),
        }
    }
}

impl TrainConfig {
    /// Checks the values a flag or a config file could get wrong, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: f64, flag: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{flag} must be a positive number, got {v}"))
            }
        };
        positive(self.lr, "--lr")?;
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "--weight-decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return Err(format!("--warmup must be >= 0 epochs, got {}", self.warmup));
        }
        if self.epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return Err("--batch-size must be at least 1".into());
        }
        let flat = matches!(
            self.preprocess,
            Preprocessing::Pca { .. } | Preprocessing::PcaWhiten { .. }
        );
        if flat && matches!(self.model, ModelConfig::Cnn(_)) {
            return Err(format!(
                "--preprocess {} gives flat vectors, which a CNN cannot take: use --model mlp, or zca to whiten images",
                self.preprocess
            ));
        }
        if flat && self.augment.is_some() {
            return Err(format!(
                "--augment crops and flips images, but --preprocess {} gives flat vectors: drop one of them",
                self.preprocess
            ));
        }
        let dropout = self.model.dropout();
        if !(0.0..1.0).contains(&dropout) {
            return Err(format!("--dropout must be in [0, 1), got {dropout}"));
        }
        Ok(())
    }

    /// The most warmup a run gets, as a fraction of its epochs: a run of
    /// one epoch with the default one epoch of warmup would otherwise spend
    /// all of it warming up.
    pub const MAX_WARMUP_FRACTION: f64 = 0.2;

    /// The warmup in force: `warmup`, capped at a fifth of the run.
    pub fn effective_warmup(&self) -> f64 {
        self.warmup
            .min(Self::MAX_WARMUP_FRACTION * self.epochs as f64)
    }

    /// The learning rate at `iteration` of a run of `total` iterations with
    /// `per_epoch` iterations per epoch.
    pub fn lr_at(&self, iteration: usize, total: usize, per_epoch: usize) -> f64 {
        let t = iteration as f64;
        let warmup = self.effective_warmup() * per_epoch as f64;
        let warm = if warmup > 0.0 && t < warmup {
            (t + 1.0) / warmup
        } else {
            1.0
        };
        let progress = t / total.max(1) as f64;
        let decay = match self.lr_schedule {
            LrSchedule::Constant => 1.0,
            LrSchedule::Step => {
                if progress >= 0.75 {
                    0.01
                } else if progress >= 0.5 {
                    0.1
                } else {
                    1.0
                }
            }
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.lr * warm * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `config.json` as versions before the one-spelling change wrote it.
    const OLDER_CONFIG: &str = r#"{
      "backend": "flex",
      "model": {"mlp": {"input_size": 3072, "hidden_sizes": [100], "classes": 10,
                "activation": {"LeakyRelu": {"slope": 0.02}}, "init": {"Gaussian": {"std": 0.01}},
                "batch_norm": false, "dropout": 0.0}},
      "preprocess": {"method": "pca-whiten", "components": 50, "epsilon": 0.001},
      "augment": null, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
      "weight_decay": 0.0001, "lr_schedule": "step", "warmup": 0.0, "epochs": 3,
      "batch_size": 64, "seed": 1, "split": {"val_size": 1000, "train_size": null}
    }"#;

    #[test]
    fn an_older_config_loads_and_is_written_as_the_flags_spell_it() {
        let config: TrainConfig = serde_json::from_str(OLDER_CONFIG).unwrap();
        assert_eq!(config.preprocess.to_string(), "pca-whiten:50:0.001");
        assert_eq!(config.batch_size, 64);
        let written = serde_json::to_value(&config).unwrap();
        assert_eq!(written["preprocess"], "pca-whiten:50:0.001");
        assert_eq!(written["lr-schedule"], "step");
        assert_eq!(written["weight-decay"], 0.0001);
        assert_eq!(written["split"]["val-size"], 1000);
        assert_eq!(written["model"]["mlp"]["activation"], "leaky-relu:0.02");
        assert_eq!(written["model"]["mlp"]["init"], "small");
        // Written anew, it reads back to the same config.
        let again: TrainConfig = serde_json::from_value(written).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn config_files_take_the_flag_spellings_and_name_what_is_wrong() {
        let mut written = serde_json::to_value(TrainConfig::default()).unwrap();
        written["backend"] = "cpu".into();
        written["optimizer"] = "adamw".into();
        let config: TrainConfig = serde_json::from_value(written.clone()).unwrap();
        assert_eq!(
            (config.backend, config.optimizer),
            (Backend::Flex, OptimizerKind::Adamw)
        );
        for (key, value, expected) in [
            ("optimizer", "adamax", "unknown optimizer 'adamax'"),
            (
                "backend",
                "tpu",
                "unknown backend 'tpu': expected flex (or cpu)",
            ),
            ("preprocess", "pca", "'pca' needs a number of components"),
        ] {
            let mut bad = written.clone();
            bad[key] = value.into();
            let err = serde_json::from_value::<TrainConfig>(bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{key}: {err}");
        }
        let mut typo = written.clone();
        typo["weight-decy"] = 0.1.into();
        let err = serde_json::from_value::<TrainConfig>(typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `weight-decy`"), "{err}");
    }

    #[test]
    fn schedules_by_hand() {
        let mut c = TrainConfig {
            lr: 1.0,
            warmup: 0.0,
            lr_schedule: LrSchedule::Step,
            ..TrainConfig::default()
        };
        assert_eq!(c.lr_at(0, 100, 10), 1.0);
        assert_eq!(c.lr_at(50, 100, 10), 0.1);
        assert_eq!(c.lr_at(80, 100, 10), 0.01);
        c.lr_schedule = LrSchedule::Cosine;
        assert!((c.lr_at(50, 100, 10) - 0.5).abs() < 1e-12);
        c.lr_schedule = LrSchedule::Constant;
        c.warmup = 1.0;
        assert!((c.lr_at(4, 100, 10) - 0.5).abs() < 1e-12);
        assert_eq!(c.lr_at(10, 100, 10), 1.0);
    }

    #[test]
    fn warmup_is_capped_at_a_fifth_of_the_run() {
        let c = TrainConfig {
            lr: 1.0,
            warmup: 1.0,
            epochs: 1,
            lr_schedule: LrSchedule::Constant,
            ..TrainConfig::default()
        };
        // One epoch of 100 steps: warmup ends after 20 steps, not 100.
        assert!((c.effective_warmup() - 0.2).abs() < 1e-12);
        assert!((c.lr_at(9, 100, 100) - 0.5).abs() < 1e-12);
        assert_eq!(c.lr_at(20, 100, 100), 1.0);
        let long = TrainConfig { epochs: 10, ..c };
        assert_eq!(long.effective_warmup(), 1.0);
    }

    #[test]
    fn validation_names_the_flag() {
        let bad = TrainConfig {
            lr: -1.0,
            ..TrainConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("--lr"));
        let bad = TrainConfig {
            preprocess: Preprocessing::Pca { components: 10 },
            ..TrainConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("CNN"));
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn round_trips_through_json() {
        let c = TrainConfig::default();
        let json = serde_json::to_string_pretty(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), c);
    }
}
