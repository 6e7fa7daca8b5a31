//! The `train` command's library: everything but the command line.
//!
//! - [`trainer`]: one training step ([`Trainer::step`]), shared by every
//!   command that trains, with [`StepObserver`]s that see the gradients
//!   and the update.
//! - [`fit`]: the training loop, and around it the [`callbacks`] (metrics
//!   log, checkpoints), [`progress`] and the layer [`monitor`].
//! - [`diagnostics`]: the lecture's sanity checks (`train check`) and the
//!   learning-rate finder (`train lr-find`).
//! - [`charts`] and [`report`]: the PNG charts and the run's `report.html`.
//! - [`search`]: random hyperparameter search (its space and pruning rules).
//! - [`images`]: reading a user's PNG or JPEG safely for `train predict`.
//! - [`fused_sgd`]: SGD with momentum, each parameter's step one fused
//!   pass on flex (the optimizer of the SGD family's momentum settings).
//! - [`lookahead`]: the slow average of the weights that training is
//!   pulled back to every few steps (the fast recipe's).
//! - [`allocator`]: the memory allocator's setting for training.
//! - [`config`], [`dataset`], [`evaluate`], [`rundir`], [`backend`],
//!   [`params`], [`bench`](mod@bench): configuration, data, evaluation, the run folder,
//!   devices, named parameters and benchmarks.
//!
//! The binary (`src/bin/train`) parses the command line and calls into this
//! library; the library never depends on it.
#![warn(missing_docs)]

pub mod allocator;
pub mod backend;
pub mod bench;
pub mod callbacks;
pub mod charts;
pub mod config;
pub mod dataset;
pub mod diagnostics;
pub mod evaluate;
pub mod fit;
pub mod fused_sgd;
pub mod images;
pub mod lookahead;
pub mod monitor;
pub mod params;
pub mod progress;
pub mod report;
pub mod rundir;
pub mod search;
pub mod threads;
pub mod trainer;

pub use callbacks::{Callback, EpochSummary};
pub use config::{Backend, LrSchedule, OptimizerKind, TrainConfig};
pub use fit::{FitOptions, RunStatus, RunSummary};
pub use trainer::{StepInfo, StepObserver, StepOutcome, Trainer};
