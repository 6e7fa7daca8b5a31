//! Random hyperparameter search, the lecture's last technique: candidates
//! drawn at random (in log space for scale parameters), run briefly, the
//! ranges narrowed around the best, then run longer.
//!
//! - [`space`]: parsing `--space NAME=KIND:ARGS`, drawing candidates from
//!   (seed, trial) alone, narrowing between stages, edge warnings.
//! - [`prune`]: the median rule and asynchronous successive halving (ASHA).
//! - [`runner`]: stages of trials, each a `train fit` process with its own
//!   run folder, several at once, from one or several worker processes.
//! - [`store`]: the state in one SQLite file, `search.db`, shared safely by
//!   the workers.

pub mod prune;
pub mod runner;
pub mod space;
pub mod store;
