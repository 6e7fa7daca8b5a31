//! One step of SGD with momentum (plain or Nesterov) and L2 weight decay,
//! as a single pass over each parameter.
//!
//! Burn's `Sgd` builds the step from tensor operations: the decay term, the
//! velocity's two terms and their sum, the Nesterov look-ahead, the step
//! times the learning rate and the subtraction, each a pass over memory and
//! most of them a fresh buffer. On the two-layer net, whose 300k weights
//! are large next to its cheap forward pass, that was about 8% of the
//! training step. Here each value is read once and the parameter and its
//! velocity are updated in place when their buffers are not shared.
//!
//! The arithmetic is Burn's, in its order, so the results are identical:
//! `g' = p·wd + g`, `v = g' + v·μ`, `u = v` (or `v·μ + g'` for Nesterov),
//! `p = p - u·lr`.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// The hyperparameters of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    /// The learning rate.
    pub lr: f64,
    /// The velocity's decay μ.
    pub momentum: f64,
    /// The L2 penalty added to the gradient (`p·wd`); 0 for none.
    pub weight_decay: f64,
    /// Nesterov's look-ahead: step by `v·μ + g'` instead of `v`.
    pub nesterov: bool,
}

/// The SGD step as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait SgdKernels: Backend {
    /// The updated parameter and velocity.
    fn sgd_momentum_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        velocity: FloatTensor<Self>,
        step: SgdStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// One SGD step of `param` with gradient `grad` and the previous
/// `velocity` (`None` on the first step, which starts it at the gradient
/// as Burn does): the updated parameter and velocity. On flex, one fused
/// pass; elsewhere Burn's tensor operations in the same order.
///
/// # Shapes
///
/// - `param`, `grad`, `velocity` and both outputs: the parameter's shape
pub fn sgd_momentum_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    velocity: Option<Tensor<D>>,
    step: SgdStep,
) -> (Tensor<D>, Tensor<D>) {
    let device = param.device();
    if crate::on_flex(&device) && param.dtype() == DType::F32 && grad.dtype() == DType::F32 {
        // Starting from zero velocity gives `v = g'`, Burn's first step.
        let velocity = velocity.unwrap_or_else(|| Tensor::zeros(param.shape(), &device));
        let (param, velocity) = <Dispatch as SgdKernels>::sgd_momentum_step(
            param.into_dispatch(),
            grad.into_dispatch(),
            velocity.into_dispatch(),
            step,
        );
        return (
            Tensor::from_dispatch(param),
            Tensor::from_dispatch(velocity),
        );
    }
    let grad = if step.weight_decay > 0.0 {
        param.clone().mul_scalar(step.weight_decay).add(grad)
    } else {
        grad
    };
    let velocity = match velocity {
        Some(velocity) => grad.clone().add(velocity.mul_scalar(step.momentum)),
        None => grad.clone(),
    };
    let update = if step.nesterov {
        velocity.clone().mul_scalar(step.momentum).add(grad)
    } else {
        velocity.clone()
    };
    (param - update.mul_scalar(step.lr), velocity)
}

fn fused_step(
    param: FlexTensor,
    grad: FlexTensor,
    velocity: FlexTensor,
    step: SgdStep,
) -> (FlexTensor, FlexTensor) {
    let (mut param, mut velocity) = (crate::owned(param), crate::owned(velocity));
    let grad = crate::contiguous(grad);
    let n = param.layout().num_elements();
    assert_eq!(
        grad.layout().num_elements(),
        n,
        "gradient and parameter sizes"
    );
    assert_eq!(
        velocity.layout().num_elements(),
        n,
        "velocity and parameter sizes"
    );
    let grads = crate::values(&grad);
    /// One task's values, for [`pulp::Arch::dispatch`].
    struct Task<'a> {
        params: &'a mut [f32],
        velocities: &'a mut [f32],
        grads: &'a [f32],
        step: SgdStep,
    }

    impl pulp::WithSimd for Task<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let s = self.step;
            let (lr, mu, wd) = (s.lr as f32, s.momentum as f32, s.weight_decay as f32);
            let values = self.params.iter_mut().zip(self.velocities.iter_mut());
            for ((p, v), &g) in values.zip(self.grads) {
                let g = if wd > 0.0 { *p * wd + g } else { g };
                *v = g + *v * mu;
                let u = if s.nesterov { *v * mu + g } else { *v };
                *p -= u * lr;
            }
        }
    }

    /// Values per parallel task.
    const CHUNK: usize = 1 << 14;
    let arch = pulp::Arch::new();
    param.storage_mut::<f32>()[..n]
        .par_chunks_mut(CHUNK)
        .zip(velocity.storage_mut::<f32>()[..n].par_chunks_mut(CHUNK))
        .zip(grads.par_chunks(CHUNK))
        .for_each(|((params, velocities), grads)| {
            arch.dispatch(Task {
                params,
                velocities,
                grads,
                step,
            })
        });
    (param, velocity)
}

impl SgdKernels for Flex {
    fn sgd_momentum_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        velocity: FloatTensor<Self>,
        step: SgdStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        fused_step(param, grad, velocity, step)
    }
}

impl<B: Backend + SgdKernels, C: CheckpointStrategy> SgdKernels for Autodiff<B, C> {
    fn sgd_momentum_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        velocity: FloatTensor<Self>,
        step: SgdStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiable: optimizers update the inner (plain) tensors.
        let lift = <Self as AutodiffBackend>::from_inner;
        let (param, velocity) = B::sgd_momentum_step(
            param.into_primitive(),
            grad.into_primitive(),
            velocity.into_primitive(),
            step,
        );
        (lift(param), lift(velocity))
    }
}
