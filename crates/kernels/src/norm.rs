//! Batch normalization in training mode (batch statistics), fused: one pass
//! for the mean, one for the variance and one for the output, and two for
//! the backward pass, where Burn's default composes a dozen tensor
//! operations, each a pass over the activation and a fresh buffer.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::{lane_sum, lane_sums};

/// Batch normalization with batch statistics, as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait NormKernels: Backend {
    /// The normalized output, and the per-channel mean and biased variance.
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of the input, `gamma` and `beta`.
    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The output of [`batch_norm_train`].
pub struct BatchNormTrained {
    /// The normalized, scaled and shifted input.
    pub output: Tensor<4>,
    /// The per-channel batch mean.
    pub mean: Tensor<1>,
    /// The per-channel biased batch variance.
    pub variance: Tensor<1>,
}

/// Batch normalization of `x` with its batch statistics: the fused kernel
/// on flex, Burn's `batch_norm_train` elsewhere.
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]`; `gamma`, `beta`: `[C]`
/// - output: `[N, C, H, W]`; mean, variance: `[C]`
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BatchNormTrained {
    if crate::on_flex(&x.device()) && x.dtype() == DType::F32 {
        let (output, mean, variance) = <Dispatch as NormKernels>::fused_batch_norm_train(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        );
        BatchNormTrained {
            output: Tensor::from_dispatch(output),
            mean: Tensor::from_dispatch(mean),
            variance: Tensor::from_dispatch(variance),
        }
    } else {
        let r = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        BatchNormTrained {
            output: r.output,
            mean: r.mean,
            variance: r.variance,
        }
    }
}

fn values(t: &FlexTensor) -> Vec<f32> {
    t.to_contiguous().storage::<f32>().to_vec()
}

/// Per-channel sums over `[N, C, plane]` data of `images` (`N`) images:
/// `f(channel, start)` for each of the channel's `N` planes, where `start` is
/// the plane's first index, added in f64 (one plane's sum is in f32).
///
/// Each task reads a range of whole images, front to back, and keeps a sum
/// per channel; the tasks' sums are then added in task order, so that the
/// result does not depend on scheduling. (A task per channel, reading its
/// `N` planes a whole image apart, took twice as long on the VGG-style
/// net's 32x32 maps: a plane is one 4 KiB page, where the hardware
/// prefetcher stops.)
fn channel_sums(
    images: usize,
    channels: usize,
    plane: usize,
    f: impl Fn(usize, usize) -> (f32, f32) + Sync,
) -> Vec<(f64, f64)> {
    let per_task = images.div_ceil(4 * rayon::current_num_threads()).max(1);
    let partial: Vec<Vec<(f64, f64)>> = (0..images.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let mut sums = vec![(0f64, 0f64); channels];
            for b in task * per_task..((task + 1) * per_task).min(images) {
                for (c, sum) in sums.iter_mut().enumerate() {
                    let (u, v) = f(c, (b * channels + c) * plane);
                    sum.0 += u as f64;
                    sum.1 += v as f64;
                }
            }
            sums
        })
        .collect();
    partial
        .into_iter()
        .fold(vec![(0f64, 0f64); channels], |mut total, part| {
            for (t, p) in total.iter_mut().zip(part) {
                t.0 += p.0;
                t.1 += p.1;
            }
            total
        })
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

impl NormKernels for Flex {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = x.to_contiguous();
        let shape = x.layout().shape().clone();
        let (n, c) = (shape[0], shape[1]);
        let plane = shape.num_elements() / (n * c);
        let m = (n * plane) as f64;
        let data: &[f32] = x.storage();
        let (gamma, beta) = (values(&gamma), values(&beta));
        let plane_at = |start: usize| &data[start..start + plane];
        let mean: Vec<f64> = channel_sums(n, c, plane, |_, at| (lane_sum(plane_at(at)), 0.0))
            .into_iter()
            .map(|s| s.0 / m)
            .collect();
        let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        // Centered, in a second pass: no cancellation in E[x²] - E[x]².
        let variance: Vec<f64> = channel_sums(n, c, plane, |ch, at| {
            let (p, mu) = (plane_at(at), mean32[ch]);
            lane_sums(p, p, |v, _| ((v - mu) * (v - mu), 0.0))
        })
        .into_iter()
        .map(|s| s.0 / m)
        .collect();
        // y = x * scale + shift, per channel.
        let scale: Vec<f32> = (0..c)
            .map(|ch| (gamma[ch] as f64 / (variance[ch] + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| (beta[ch] as f64 - mean[ch] * scale[ch] as f64) as f32)
            .collect();
        #[allow(unsafe_code)]
        // SAFETY: `out` has `data`'s length; each of its planes is written
        // in full from the plane of `data` beside it.
        let out = unsafe {
            crate::written(data.len(), |out| {
                out.par_chunks_mut(plane)
                    .zip(data.par_chunks(plane))
                    .enumerate()
                    .for_each(|(p, (o, x))| {
                        let (s, t) = (scale[p % c], shift[p % c]);
                        o.iter_mut().zip(x).for_each(|(o, &x)| {
                            o.write(x * s + t);
                        });
                    })
            })
        };
        let stat = |v: Vec<f64>| tensor(v.into_iter().map(|v| v as f32).collect(), &[c]);
        (tensor(out, shape.as_slice()), stat(mean), stat(variance))
    }

    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = x.to_contiguous();
        let grad = grad.to_contiguous();
        let shape = x.layout().shape().clone();
        let (n, c) = (shape[0], shape[1]);
        let plane = shape.num_elements() / (n * c);
        let m = (n * plane) as f64;
        let (xs, dy): (&[f32], &[f32]) = (x.storage(), grad.storage());
        let (gamma, mean, variance) = (values(&gamma), values(&mean), values(&variance));
        let inv_std: Vec<f64> = variance
            .iter()
            .map(|&v| 1.0 / (v as f64 + epsilon).sqrt())
            .collect();
        // Per channel: Σ dy and Σ dy (x - μ), in one pass over both; then
        // Σ dy x̂ = Σ dy (x - μ) / σ.
        let sums: Vec<(f64, f64)> = channel_sums(n, c, plane, |ch, at| {
            let (x, g) = (&xs[at..at + plane], &dy[at..at + plane]);
            let mu = mean[ch];
            lane_sums(g, x, |g, x| (g, g * (x - mu)))
        })
        .into_iter()
        .zip(&inv_std)
        .map(|((dy_sum, dy_centered), is)| (dy_sum, dy_centered * is))
        .collect();
        // dx = γ/σ (dy - Σdy/M - x̂ Σ(dy x̂)/M), per channel an affine
        // function of dy and x: dx = a dy - b x + t.
        #[allow(unsafe_code)]
        // SAFETY: `dx` has the length of `xs` and `dy` (one shape); each of
        // its planes is written in full from the planes beside it.
        let dx = unsafe {
            crate::written(xs.len(), |dx| {
                dx.par_chunks_mut(plane)
                    .zip(xs.par_chunks(plane).zip(dy.par_chunks(plane)))
                    .enumerate()
                    .for_each(|(p, (o, (x, g)))| {
                        let ch = p % c;
                        let (mu, is) = (mean[ch] as f64, inv_std[ch]);
                        let k = gamma[ch] as f64 * is;
                        let (mean_dy, mean_dy_xhat) = (sums[ch].0 / m, sums[ch].1 / m);
                        let b = k * is * mean_dy_xhat;
                        let (a, t) = (k as f32, (b * mu - k * mean_dy) as f32);
                        let b = b as f32;
                        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                            o.write(a * g - b * x + t);
                        }
                    })
            })
        };
        let dgamma = sums.iter().map(|s| s.1 as f32).collect();
        let dbeta = sums.iter().map(|s| s.0 as f32).collect();
        (
            tensor(dx, shape.as_slice()),
            tensor(dgamma, &[c]),
            tensor(dbeta, &[c]),
        )
    }
}

impl<B: Backend + NormKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        /// The backward pass: the fused gradient kernel of the inner backend.
        #[derive(Debug)]
        struct FusedBatchNorm;

        impl<B: Backend + NormKernels> Backward<B, 3> for FusedBatchNorm {
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, mean, variance, epsilon) = ops.state;
                let (dx, dgamma, dbeta) =
                    B::fused_batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_gamma {
                    grads.register::<B>(node.id, dgamma);
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, dbeta);
                }
            }
        }

        let nodes = [x.node(), gamma.node(), beta.node()];
        let lift = <Self as AutodiffBackend>::from_inner;
        match FusedBatchNorm
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma, beta) = (
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                );
                let (output, mean, variance) =
                    B::fused_batch_norm_train(x.clone(), gamma.clone(), beta, epsilon);
                let state = (x, gamma, mean.clone(), variance.clone(), epsilon);
                (prep.finish(state, output), lift(mean), lift(variance))
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = B::fused_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (prep.finish(output), lift(mean), lift(variance))
            }
        }
    }

    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiable itself: the autodiff path above calls the inner backend's.
        let lift = <Self as AutodiffBackend>::from_inner;
        let (dx, dgamma, dbeta) = B::fused_batch_norm_train_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            epsilon,
            grad.into_primitive(),
        );
        (lift(dx), lift(dgamma), lift(dbeta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Tensor<4>, b: Tensor<4>, what: &str) {
        let (a, b) = (
            a.into_data().try_to_vec::<f32>().unwrap(),
            b.into_data().try_to_vec::<f32>().unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{what}: {x} vs {y}");
        }
    }

    /// Output, statistics and all three gradients of the kernel against
    /// Burn's `batch_norm_train`, on values of mean `offset` and spread 2.
    fn check(shape: [usize; 4], offset: f32) {
        let device = Device::flex().autodiff();
        device.seed(9);
        let x = (Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device)
            * 2.0
            + offset)
            .require_grad();
        let c = shape[1];
        let gamma =
            Tensor::<1>::random([c], burn::tensor::Distribution::Uniform(-1.5, 1.5), &device)
                .require_grad();
        let beta =
            Tensor::<1>::random([c], burn::tensor::Distribution::Uniform(-0.5, 0.5), &device)
                .require_grad();
        // The output gradient (these weights) centered on zero: with all of
        // it positive (uniform in [0, 1)), Σ dy is about M/2 and the gamma
        // gradient Σ dy (x - μ) / σ moves by Σ dy · ulp(μ) / σ, more than
        // the tolerance, whenever the two kernels' f32 means differ in
        // their last bit (as two summation orders may).
        let weights =
            Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let ours = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let theirs =
            burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        close(ours.output.clone(), theirs.output.clone(), "output");
        let per_channel = |t: Tensor<1>| t.reshape([1, c, 1, 1]);
        close(
            per_channel(ours.mean.clone()),
            per_channel(theirs.mean),
            "mean",
        );
        close(
            per_channel(ours.variance.clone()),
            per_channel(theirs.variance),
            "variance",
        );
        let g1 = (ours.output * weights.clone()).sum().backward();
        let g2 = (theirs.output * weights).sum().backward();
        close(x.grad(&g1).unwrap(), x.grad(&g2).unwrap(), "input gradient");
        close(
            per_channel(gamma.grad(&g1).unwrap()),
            per_channel(gamma.grad(&g2).unwrap()),
            "gamma gradient",
        );
        close(
            per_channel(beta.grad(&g1).unwrap()),
            per_channel(beta.grad(&g2).unwrap()),
            "beta gradient",
        );
    }

    #[test]
    fn output_statistics_and_gradients_equal_burns_batch_norm() {
        // Planes of 30 values: fewer than two rounds of the 16 partial sums.
        check([4, 3, 5, 6], 0.7);
    }

    #[test]
    fn large_odd_planes_away_from_zero_equal_burns_batch_norm() {
        // Planes of 31x33 values (not a multiple of 16), a mean of 5: the
        // partial sums' rounding and the centered variance are exercised.
        check([3, 4, 31, 33], 5.0);
    }
}
