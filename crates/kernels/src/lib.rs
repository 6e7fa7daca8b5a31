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

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use burn_autodiff::NodeId;
use burn_autodiff::grads::Gradients;

/// Whether `device` is flex, plain or autodiff: where the kernels run.
fn on_flex(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

/// Registers each gradient whose parent asked for one: the backward passes
/// of the convolution and linear kernels, with their input, weight and
/// bias parents (an input gradient is computed only when asked; a missing
/// bias has no id).
fn register_gradients<B: Backend>(
    grads: &mut Gradients,
    ids: [Option<NodeId>; 3],
    gradients: [Option<FloatTensor<B>>; 3],
) {
    for (id, gradient) in ids.into_iter().zip(gradients) {
        if let (Some(id), Some(gradient)) = (id, gradient) {
            grads.register::<B>(id, gradient);
        }
    }
}

pub use activation::{ActivationKernels, gelu, relu};
pub use conv::{ConvKernels, conv2d};
pub use linear::{LinearKernels, linear};
pub use norm::{BatchNormTrained, NormKernels, batch_norm_train};
pub use pool::{PoolKernels, max_pool_2x2};
