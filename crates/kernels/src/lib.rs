//! Faster CPU kernels for Burn's flex backend, plugged in through Burn's
//! backend extensions (no fork of Burn): a trait marked
//! `#[backend_extension(Flex, Autodiff)]`, implemented on flex's raw
//! buffers, with an `Autodiff` implementation that records the backward pass.
//!
//! The public functions ([`conv2d`], [`linear`], [`max_pool_2x2`],
//! [`batch_norm_train`], [`relu`], [`gelu`]) take and return ordinary
//! tensors: on flex (plain or autodiff) they run the kernel, on every other
//! backend Burn's own operation, so models stay portable and results agree.
//!
//! Measured in the project's BENCHMARKS.md ("CPU speed").

mod activation;
mod conv;
mod linear;
mod norm;
mod pool;

use burn::prelude::*;

/// Whether `device` is flex, plain or autodiff: where the kernels run.
fn on_flex(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

pub use activation::{ActivationKernels, gelu, relu};
pub use conv::{ConvKernels, conv2d};
pub use linear::{LinearKernels, linear};
pub use norm::{BatchNormTrained, NormKernels, batch_norm_train};
pub use pool::{PoolKernels, max_pool_2x2};
