//! Everything `train fit` can be told, as one serializable config.
//!
//! `--config FILE.json` loads one; flags given on the command line override
//! its fields; the run folder keeps the result as `config.json`.

use cifar_data::{Augmentation, Preprocessing, SplitConfig};
use cifar_kernels::MatmulPrecision;
use cifar_models::ModelConfig;
use cifar_spelling::Names;
use serde::{Deserialize, Serialize};

use crate::evaluate::Tta;

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
    /// The fast records' one cycle (airbench94's `triangle`): linear from
    /// a fifth of the rate up to the rate at 23% of the run, then linear
    /// down to 7% of it at the end. It is its own warmup: `warmup` is not
    /// applied on top.
    Triangle,
}

impl LrSchedule {
    /// [`Triangle`](Self::Triangle)'s factor on the rate at the start.
    pub const TRIANGLE_START: f64 = 0.2;
    /// The fraction of the run after which [`Triangle`](Self::Triangle) peaks.
    pub const TRIANGLE_PEAK: f64 = 0.23;
    /// [`Triangle`](Self::Triangle)'s factor on the rate at the end.
    pub const TRIANGLE_END: f64 = 0.07;

    /// The names of the schedules.
    pub const NAMES: Names<LrSchedule> = Names {
        what: "learning-rate schedule",
        table: &[
            ("constant", LrSchedule::Constant),
            ("step", LrSchedule::Step),
            ("cosine", LrSchedule::Cosine),
            ("triangle", LrSchedule::Triangle),
        ],
    };
}

// One spelling in flags, config files and errors.
cifar_spelling::named_text!(Backend);
cifar_spelling::named_text!(OptimizerKind);
cifar_spelling::named_text!(LrSchedule);

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
    /// Label smoothing of the cross-entropy targets: the true class gets
    /// `1 - α + α/10`, every other `α/10` (0: none).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Test-time augmentation of the validation (and test) predictions.
    #[serde(default)]
    pub tta: Tta,
    /// Batch norm's shifts β learn this many times faster than the other
    /// weights, with the same decay per step (airbench's `bias_scaler`;
    /// SGD-family optimizers only).
    #[serde(default = "no_scale")]
    pub norm_shift_lr_scale: f64,
    /// Every 5 steps, pull the weights back to a slow average of themselves
    /// ([`Lookahead`](crate::lookahead::Lookahead), airbench's schedule).
    #[serde(default)]
    pub lookahead: bool,
    /// The precision of the convolutions' matrix products on flex: f32, or
    /// bf16 inputs with f32 sums on CPUs with AMX
    /// ([`cifar_kernels::set_matmul_precision`]).
    #[serde(default)]
    pub matmul_precision: MatmulPrecision,
}

/// The default of [`TrainConfig::norm_shift_lr_scale`] (for config files
/// written before it existed).
fn no_scale() -> f64 {
    1.0
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
            label_smoothing: 0.0,
            tta: Tta::None,
            norm_shift_lr_scale: 1.0,
            lookahead: false,
            matmul_precision: MatmulPrecision::F32,
        }
    }
}

impl TrainConfig {
    /// The names accepted by [`recipe`](Self::recipe).
    pub const RECIPES: [&'static str; 2] = ["default", "fast"];

    /// A named recipe: `default` ([`TrainConfig::default`]) or `fast`, the
    /// training of the CIFAR-10 speed records (Keller Jordan's airbench94,
    /// after Page's "How to train your ResNet") on the `airbench` network:
    /// 2-pixel crops of the reflect-padded image with alternating flips,
    /// SGD with Nesterov momentum 0.85 and batch 1,024 (airbench's rates
    /// rescaled to a mean loss: rate 1.5, weight decay 0.002 per step,
    /// i.e. 0.0013 as an L2 strength), label smoothing 0.2, batch norm shifts learning 64 times faster than
    /// the other weights (with the same decay per step), lookahead of the
    /// weights, 10 epochs on airbench's triangle schedule (up from a fifth
    /// of the rate over 23% of the run, then down to 7% of it), and
    /// flip-and-shift test-time augmentation. Every setting stays a flag,
    /// so each ingredient can be switched off.
    pub fn recipe(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::default()),
            "fast" => Some(Self {
                model: ModelConfig::preset("airbench").expect("airbench preset"),
                preprocess: Preprocessing::Standardize,
                augment: Some(Augmentation {
                    pad: 2,
                    flip: true,
                    alternate_flip: true,
                    reflect: true,
                }),
                optimizer: OptimizerKind::Nesterov,
                lr: 1.5,
                momentum: 0.85,
                weight_decay: 0.002 / 1.5,
                lr_schedule: LrSchedule::Triangle,
                warmup: 0.0,
                epochs: 10,
                batch_size: 1024,
                label_smoothing: 0.2,
                tta: Tta::FlipShift,
                norm_shift_lr_scale: 64.0,
                lookahead: true,
                ..Self::default()
            }),
            _ => None,
        }
    }

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
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        positive(self.norm_shift_lr_scale, "--norm-shift-lr-scale")?;
        let sgd_family = matches!(
            self.optimizer,
            OptimizerKind::Sgd | OptimizerKind::Momentum | OptimizerKind::Nesterov
        );
        if self.norm_shift_lr_scale != 1.0 && !sgd_family {
            return Err(format!(
                "--norm-shift-lr-scale {} scales gradients, which {}'s steps ignore: use --optimizer sgd, momentum or nesterov, or --norm-shift-lr-scale 1",
                self.norm_shift_lr_scale, self.optimizer
            ));
        }
        if let Some(augment) = &self.augment
            && augment.reflect
            && augment.pad >= cifar_data::WIDTH
        {
            return Err(format!(
                "--crop-pad-mode reflect mirrors the image across its border, which needs --crop-pad below {}, got {}",
                cifar_data::WIDTH,
                augment.pad
            ));
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
        self.model.check()?;
        // The network's input and output must fit the data.
        let features = match self.preprocess {
            Preprocessing::Pca { components } | Preprocessing::PcaWhiten { components, .. } => {
                components
            }
            _ => cifar_data::IMAGE_BYTES,
        };
        match &self.model {
            ModelConfig::Mlp(m) if m.input_size != features => {
                return Err(format!(
                    "the MLP takes {} inputs, but --preprocess {} gives {features}",
                    m.input_size, self.preprocess
                ));
            }
            ModelConfig::Cnn(c) if c.in_channels != 3 || c.image_size != 32 => {
                return Err(format!(
                    "the CNN takes {}x{}x{} images, but CIFAR-10 images are 3x32x32",
                    c.in_channels, c.image_size, c.image_size
                ));
            }
            _ => {}
        }
        let classes = match &self.model {
            ModelConfig::Mlp(m) => m.classes,
            ModelConfig::Cnn(c) => c.classes,
        };
        if classes != 10 {
            return Err(format!(
                "the network has {classes} outputs, but CIFAR-10 has 10 classes"
            ));
        }
        Ok(())
    }

    /// The most warmup a run gets, as a fraction of its epochs: a run of
    /// one epoch with the default one epoch of warmup would otherwise spend
    /// all of it warming up.
    pub const MAX_WARMUP_FRACTION: f64 = 0.2;

    /// The warmup in force, in epochs: `warmup`, capped at a fifth of the
    /// run, or the climb to the peak of the triangle schedule.
    pub fn effective_warmup(&self) -> f64 {
        if self.lr_schedule == LrSchedule::Triangle {
            return LrSchedule::TRIANGLE_PEAK * self.epochs as f64;
        }
        self.warmup
            .min(Self::MAX_WARMUP_FRACTION * self.epochs as f64)
    }

    /// The learning rate at `iteration` of a run of `total` iterations with
    /// `per_epoch` iterations per epoch.
    pub fn lr_at(&self, iteration: usize, total: usize, per_epoch: usize) -> f64 {
        let t = iteration as f64;
        if self.lr_schedule == LrSchedule::Triangle {
            // airbench94: np.interp(t, [0, int(0.23 T), T], [0.2, 1, 0.07]).
            let total = total.max(1) as f64;
            let peak = (LrSchedule::TRIANGLE_PEAK * total).floor().max(1.0);
            let factor = if t < peak {
                LrSchedule::TRIANGLE_START + (1.0 - LrSchedule::TRIANGLE_START) * t / peak
            } else {
                let down = ((t - peak) / (total - peak).max(1.0)).min(1.0);
                1.0 + (LrSchedule::TRIANGLE_END - 1.0) * down
            };
            return self.lr * factor;
        }
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
            LrSchedule::Triangle => unreachable!("handled above"),
        };
        self.lr * warm * decay
    }
}

/// A setting that a resumed run would change although it cannot: the
/// model, the data split, the preprocessing, the augmentation, the batch
/// size, the seed or the optimizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeConflict {
    /// The flag that sets it (`--hidden`, `--seed`, ...).
    pub flag: String,
    /// Its value in the run.
    pub started: String,
    /// The value asked for now.
    pub given: String,
}

impl std::fmt::Display for ResumeConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: the run was started with {} {}, and a resumed run keeps its model, data \
             split, preprocessing, augmentation, batch size, seed and optimizer",
            self.flag, self.given, self.flag, self.started
        )
    }
}

/// The settings of [`TrainConfig`] that a resumed run cannot change (its
/// config keys); the others (epochs, learning rate and its schedule,
/// momentum, weight decay, backend) may change on resume.
pub const FIXED_ON_RESUME: [&str; 7] = [
    "model",
    "preprocess",
    "augment",
    "optimizer",
    "batch-size",
    "seed",
    "split",
];

impl TrainConfig {
    /// The first setting fixed on resume ([`FIXED_ON_RESUME`]) where
    /// `given` differs from this run's config.
    pub fn resume_conflict(&self, given: &TrainConfig) -> Option<ResumeConflict> {
        let (started, asked) = (
            serde_json::to_value(self).ok()?,
            serde_json::to_value(given).ok()?,
        );
        FIXED_ON_RESUME.iter().find_map(|key| {
            let (path, a, b) = first_difference(&started[*key], &asked[*key], key)?;
            let flag = flag_of(&path);
            let text = |v: &serde_json::Value| match (path.as_str(), v) {
                // The flags' spellings: `--augment true|false`, `--model mlp|cnn`,
                // `--hidden 100,100`, `--channels 32,64`.
                ("augment", v) => (!v.is_null()).to_string(),
                (_, serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|item| match (flag.as_str(), item) {
                        ("--channels", stage) => stage["widths"][0].to_string(),
                        (_, item) => item.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                ("model", serde_json::Value::Object(m)) => m.keys().cloned().collect(),
                (_, serde_json::Value::String(s)) => s.clone(),
                (_, serde_json::Value::Null) => "none".into(),
                (_, other) => other.to_string(),
            };
            Some(ResumeConflict {
                flag: flag.clone(),
                started: text(&a),
                given: text(&b),
            })
        })
    }
}

/// The first place where `a` and `b` differ: its path and both values.
fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    path: &str,
) -> Option<(String, serde_json::Value, serde_json::Value)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if x.len() == y.len() && x.keys().eq(y.keys()) => x
            .iter()
            .find_map(|(k, v)| first_difference(v, &y[k], &format!("{path}.{k}"))),
        _ if a == b => None,
        _ => Some((path.to_string(), a.clone(), b.clone())),
    }
}

/// The flag that sets the config value at `path` (`model.mlp.hidden_sizes` -> `--hidden`).
fn flag_of(path: &str) -> String {
    let last = path.rsplit('.').next().unwrap_or(path);
    let flag = match (path.split('.').next(), last) {
        (Some("model"), "hidden_sizes") => "hidden",
        (Some("model"), "stages") => "channels",
        (Some("model"), "activation") => "activation",
        (Some("model"), "init") => "init",
        (Some("model"), "batch_norm") => "batch-norm",
        (Some("model"), "dropout") => "dropout",
        (Some("model"), _) => "model",
        (Some("augment"), _) => "augment",
        (_, key) => key,
    };
    format!("--{flag}")
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
        // airbench94's triangle(100, start=0.2, end=0.07, peak=0.23): up from
        // 0.2 to 1 over 23 steps, down to 0.07 over the other 77; warmup
        // plays no part.
        c.lr_schedule = LrSchedule::Triangle;
        assert!((c.lr_at(0, 100, 10) - 0.2).abs() < 1e-12);
        assert!((c.lr_at(10, 100, 10) - (0.2 + 0.8 * 10.0 / 23.0)).abs() < 1e-12);
        assert!((c.lr_at(23, 100, 10) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(62, 100, 10) - (1.0 - 0.93 * 39.0 / 77.0)).abs() < 1e-12);
        assert!((c.lr_at(100, 100, 10) - 0.07).abs() < 1e-12);
        c.epochs = 10;
        assert!((c.effective_warmup() - 2.3).abs() < 1e-12);
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

    #[test]
    fn a_resume_conflict_names_the_flag_and_both_values() {
        use cifar_models::Init;
        let run = TrainConfig {
            model: ModelConfig::preset("mlp").unwrap(),
            ..TrainConfig::default()
        };
        // What may change on resume.
        let allowed = TrainConfig {
            epochs: 40,
            lr: 0.001,
            weight_decay: 0.1,
            lr_schedule: LrSchedule::Step,
            backend: Backend::Ndarray,
            ..run.clone()
        };
        assert_eq!(run.resume_conflict(&allowed), None);
        let conflict = |change: &dyn Fn(&mut TrainConfig)| {
            let mut given = run.clone();
            change(&mut given);
            let c = run.resume_conflict(&given).expect("a conflict");
            (c.flag, c.started, c.given)
        };
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            conflict(&|c| *c.model.layer_settings().init = Init::Xavier),
            s("--init", "he", "xavier")
        );
        assert_eq!(
            conflict(&|c| c.model = ModelConfig::preset("cnn").unwrap()),
            s("--model", "mlp", "cnn")
        );
        assert_eq!(
            conflict(&|c| {
                if let ModelConfig::Mlp(m) = &mut c.model {
                    m.hidden_sizes = vec![50]
                }
            }),
            s("--hidden", "100", "50")
        );
        assert_eq!(conflict(&|c| c.seed = 3), s("--seed", "0", "3"));
        assert_eq!(
            conflict(&|c| c.batch_size = 64),
            s("--batch-size", "128", "64")
        );
        assert_eq!(
            conflict(&|c| c.augment = None),
            s("--augment", "true", "false")
        );
        assert_eq!(
            conflict(&|c| c.split.val_size = 500),
            s("--val-size", "1000", "500")
        );
        assert_eq!(
            conflict(&|c| c.preprocess = Preprocessing::MeanImage),
            s("--preprocess", "standardize", "mean-image")
        );
        assert_eq!(
            conflict(&|c| c.optimizer = OptimizerKind::Adam),
            s("--optimizer", "nesterov", "adam")
        );
    }
}
