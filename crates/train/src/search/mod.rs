//! Random hyperparameter search, the lecture's last technique: candidates
//! drawn at random (in log space for scale parameters), run briefly, the
//! ranges narrowed around the best, then run longer.
//!
//! - [`space`]: parsing `--space NAME=KIND:ARGS`, drawing candidates from
//!   (seed, trial) alone, narrowing between stages, edge warnings.
//! - [`prune`]: the median rule and asynchronous successive halving.
//!
//! The `train search` command that runs trials on top of these is not
//! built yet.

pub mod prune;
pub mod space;
