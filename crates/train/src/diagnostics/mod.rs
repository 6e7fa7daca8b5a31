//! Babysitting the learning process, with verdicts instead of raw logs.
//!
//! - [`check`]: the sanity checks of CS231n's notes and of Karpathy's
//!   "recipe for training neural networks" (`train check`).
//! - [`lr_find`]: the learning-rate finder of fastai and Lightning (`train lr-find`).
//!
//! The per-layer statistics recorded during training are the [`monitor`](crate::monitor).

pub mod check;
pub mod lr_find;
