//! The `train` command's library: configuration, the training loop, the run
//! folder, evaluation and the other subcommands. `main.rs` only parses the
//! command line and reports errors.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dataset;
pub mod evaluate;
pub mod fit;
pub mod plot;
pub mod progress;
pub mod rundir;

pub use config::{Backend, LrSchedule, OptimizerKind, TrainConfig};
pub use fit::{EpochSummary, RunSummary, StepInfo, StepObserver};
