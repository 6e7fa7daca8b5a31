//! The run folder: everything `eval` and `predict` need, written so that a
//! crash never leaves a half-written file behind.
//!
//! ```text
//! runs/NAME/
//!   config.json        the full TrainConfig
//!   data.json          the data folder it trains on
//!   preprocess.bin     the fitted preprocessing
//!   metrics.csv        loss per iteration, accuracies per epoch
//!   loss.png           the loss curve
//!   checkpoint/        model.bpk, optimizer.bpk, state.json (latest, for --resume)
//!   best.bpk           the model with the best validation accuracy
//!   summary.json       final figures
//!   confusion-val.png  written by `train eval`
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use cifar_data::FittedPreprocessing;
use cifar_models::Model;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::trainer::Trainer;

/// Where a checkpoint stands in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch being trained (0-based).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batch: usize,
    /// Steps taken in the whole run.
    pub iteration: usize,
    /// Loss of the first step (for the divergence check).
    pub initial_loss: Option<f64>,
    /// Best validation accuracy so far.
    pub best_val_accuracy: Option<f64>,
    /// Seconds spent training so far.
    pub seconds: f64,
    /// Sum of the losses of the steps of this epoch done so far (for the
    /// epoch's mean loss when resuming mid-epoch).
    #[serde(default)]
    pub epoch_loss_sum: f64,
}

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Opens (and creates) the folder.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create run folder {}", root.display()))?;
        cifar_data::atomic::remove_leftovers(&root);
        Ok(Self { root })
    }

    /// Opens an existing run folder, checking it has a config.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        anyhow::ensure!(
            root.join("config.json").is_file(),
            "{} is not a run folder (it has no config.json): pass the --out folder of a `train fit` run",
            root.display()
        );
        Ok(Self { root })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A file in the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `config.json`.
    pub fn save_config(&self, config: &TrainConfig) -> Result<()> {
        write_atomic(
            &self.file("config.json"),
            serde_json::to_string_pretty(config)?.as_bytes(),
        )
    }

    /// Reads `config.json`.
    pub fn load_config(&self) -> Result<TrainConfig> {
        let path = self.file("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid run config", path.display()))
    }

    /// Records the data folder the run trains on (`data.json`), so that
    /// `eval` and `--resume` find it without `--data`.
    pub fn save_data_dir(&self, data: &Path) -> Result<()> {
        let absolute = std::path::absolute(data).unwrap_or_else(|_| data.to_path_buf());
        write_atomic(
            &self.file("data.json"),
            serde_json::to_string_pretty(&serde_json::json!({ "data": absolute }))?.as_bytes(),
        )
    }

    /// The data folder the run recorded, if it still exists.
    pub fn data_dir(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(self.file("data.json")).ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let dir = PathBuf::from(value["data"].as_str()?);
        dir.is_dir().then_some(dir)
    }

    /// Writes the fitted preprocessing.
    pub fn save_preprocessing(&self, fitted: &FittedPreprocessing) -> Result<()> {
        Ok(fitted.save(self.file("preprocess.bin"))?)
    }

    /// Reads the fitted preprocessing.
    pub fn load_preprocessing(&self) -> Result<FittedPreprocessing> {
        Ok(FittedPreprocessing::load(self.file("preprocess.bin"))?)
    }

    /// Saves `model` as the best model so far.
    pub fn save_best(&self, model: &Model) -> Result<()> {
        save_module(model, &self.file("best.bpk"))
    }

    /// Loads the best model into `model` (built from the run's config on the target device).
    pub fn load_best(&self, model: Model) -> Result<Model> {
        let path = self.file("best.bpk");
        model.try_load_file(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot load {}: {e:?}; was the run stopped before its first epoch ended?",
                path.display()
            )
        })
    }

    /// Writes a checkpoint: model, optimizer state, the lookahead's average
    /// (in runs with `--lookahead`) and training state, in a temporary
    /// folder that replaces the previous checkpoint only when complete.
    pub fn save_checkpoint(&self, trainer: &Trainer, state: &TrainState) -> Result<()> {
        let (model, optim) = (trainer.model(), trainer.optimizer());
        let average = trainer.lookahead_average();
        // One rename puts the complete folder (model, optimizer and state,
        // with the best accuracy so far) in place. `best.bpk` is written
        // before it: a crash in between replays that epoch on resume and
        // writes the same best model again.
        cifar_data::atomic::write_dir(&self.file("checkpoint"), |tmp| -> Result<()> {
            write_model(model.clone(), &tmp.join("model.bpk"))?;
            optim.save(tmp.join("optimizer.bpk")).map_err(|e| {
                anyhow::anyhow!(
                    "cannot write {}: {e:?}",
                    tmp.join("optimizer.bpk").display()
                )
            })?;
            if let Some(average) = average {
                write_model(average, &tmp.join("lookahead.bpk"))?;
            }
            let state_file = tmp.join("state.json");
            std::fs::write(&state_file, serde_json::to_string_pretty(state)?)
                .with_context(|| format!("cannot write {}", state_file.display()))
        })
        .with_context(|| format!("cannot write the checkpoint in {}", self.root.display()))
    }

    /// The latest complete checkpoint folder, if any.
    pub fn checkpoint_dir(&self) -> Option<PathBuf> {
        let current = self.file("checkpoint");
        // A crash while a new checkpoint was swapped in leaves the previous one here.
        let previous = cifar_data::atomic::old_name(&current);
        [current, previous]
            .into_iter()
            .find(|d| d.join("state.json").is_file())
    }

    /// Loads the latest checkpoint into `trainer` (a fresh one of the run's config).
    pub fn load_checkpoint(&self, trainer: Trainer) -> Result<(Trainer, TrainState)> {
        let dir = self.checkpoint_dir().with_context(|| {
            format!(
                "--resume: {} has no checkpoint; start the run without --resume",
                self.root.display()
            )
        })?;
        let state: TrainState =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
                .with_context(|| format!("{} is corrupt", dir.join("state.json").display()))?;
        let mut trainer = trainer;
        let model = read_model(trainer.model().clone(), &dir.join("model.bpk"))?;
        let optim = trainer
            .optimizer()
            .clone()
            .load(dir.join("optimizer.bpk"))
            .map_err(|e| {
                anyhow::anyhow!("cannot load {}: {e:?}", dir.join("optimizer.bpk").display())
            })?;
        trainer.restore(model, optim);
        if trainer.has_lookahead() {
            let average = read_model(trainer.model().clone(), &dir.join("lookahead.bpk"))?;
            trainer.restore_lookahead(&average);
        }
        Ok((trainer, state))
    }
}

/// Writes `model` to `path` (inside a folder that is swapped in whole).
fn write_model(model: Model, path: &Path) -> Result<()> {
    model
        .save_file(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e:?}", path.display()))
}

/// Reads the weights at `path` into `model` (of the same architecture).
fn read_model(model: Model, path: &Path) -> Result<Model> {
    model
        .try_load_file(path)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e:?}", path.display()))
}

/// Saves a module to `path` atomically (see [`cifar_data::atomic`]).
pub fn save_module<M: Module + Clone>(module: &M, path: &Path) -> Result<()> {
    cifar_data::atomic::write_with(path, |tmp| -> Result<()> {
        module
            .clone()
            .save_file(tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e:?}", path.display()))
    })
}

/// Writes `bytes` to `path` atomically and durably (see [`cifar_data::atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    cifar_data::atomic::write_file(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
