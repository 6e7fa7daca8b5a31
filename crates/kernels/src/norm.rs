//! Batch normalization in training mode (batch statistics), fused: one pass
//! over memory for the statistics and one for the output, and two for the
//! backward pass, where Burn's default composes a dozen tensor operations,
//! each a pass over the activation and a fresh buffer.
//!
//! The activation right after it can join the same passes
//! ([`batch_norm_relu_train`], [`batch_norm_gelu_train`]): the output pass
//! applies it, and the backward passes find its slope from what they read
//! anyway (ReLU's output; GELU's input, recomputed from the input and the
//! statistics), instead of a separate activation reading and writing the
//! whole tensor once forward and once backward, and keeping a copy of it.

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
use std::mem::MaybeUninit;

use crate::activation::{gelu_backward_in_place, gelu_in_place};
use crate::{lane_sum, lane_sums, lane_sums3, planes_per_task};

/// The activation that batch norm's kernel applies to its own output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedActivation {
    /// None: the normalized, scaled and shifted values themselves.
    Identity,
    /// `max(y, 0)`.
    Relu,
    /// `y Φ(y)`, the exact GELU (as [`crate::gelu`]).
    Gelu,
}

/// Batch normalization with batch statistics, as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait NormKernels: Backend {
    /// The normalized output with `activation` applied, and the per-channel
    /// mean and biased variance (of the input).
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        activation: FusedActivation,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of the input, `gamma` and `beta`, from the gradient
    /// `grad` of the output of a forward pass with
    /// [`FusedActivation::Identity`].
    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// As [`fused_batch_norm_train_backward`](Self::fused_batch_norm_train_backward),
    /// for a forward pass with [`FusedActivation::Relu`] whose output was
    /// `output`: the gradient flows only where that output is positive.
    fn fused_batch_norm_relu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// As [`fused_batch_norm_train_backward`](Self::fused_batch_norm_train_backward),
    /// for a forward pass with [`FusedActivation::Gelu`]: the gradient is
    /// first multiplied by GELU's slope at its input, which is recomputed
    /// from `x`, the statistics, `gamma` and `beta`.
    fn fused_batch_norm_gelu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The output of [`batch_norm_train`].
pub struct BatchNormTrained {
    /// The normalized, scaled and shifted input (then activated, for the
    /// fused variants).
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
    batch_norm_activated_train(x, gamma, beta, epsilon, FusedActivation::Identity)
}

/// Batch normalization of `x` with its batch statistics, then ReLU, in the
/// same passes: the fused kernel on flex, Burn's `batch_norm_train` and
/// `relu` elsewhere. The mean and variance are the batch's, before ReLU.
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]`; `gamma`, `beta`: `[C]`
/// - output: `[N, C, H, W]`; mean, variance: `[C]`
pub fn batch_norm_relu_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BatchNormTrained {
    batch_norm_activated_train(x, gamma, beta, epsilon, FusedActivation::Relu)
}

/// Batch normalization of `x` with its batch statistics, then GELU, in the
/// same passes: the fused kernel on flex, Burn's `batch_norm_train` and
/// `gelu` elsewhere. The mean and variance are the batch's, before GELU.
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]`; `gamma`, `beta`: `[C]`
/// - output: `[N, C, H, W]`; mean, variance: `[C]`
pub fn batch_norm_gelu_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BatchNormTrained {
    batch_norm_activated_train(x, gamma, beta, epsilon, FusedActivation::Gelu)
}

/// Batch normalization of `x` with its batch statistics, then
/// `activation`, in the same passes: [`batch_norm_train`],
/// [`batch_norm_relu_train`] or [`batch_norm_gelu_train`], chosen by value
/// (for a model whose activation is a setting).
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]`; `gamma`, `beta`: `[C]`
/// - output: `[N, C, H, W]`; mean, variance: `[C]`
pub fn batch_norm_activated_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    activation: FusedActivation,
) -> BatchNormTrained {
    if crate::on_flex(&x.device()) && x.dtype() == DType::F32 {
        let (output, mean, variance) = <Dispatch as NormKernels>::fused_batch_norm_train(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
            activation,
        );
        BatchNormTrained {
            output: Tensor::from_dispatch(output),
            mean: Tensor::from_dispatch(mean),
            variance: Tensor::from_dispatch(variance),
        }
    } else {
        let r = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        BatchNormTrained {
            output: match activation {
                FusedActivation::Identity => r.output,
                FusedActivation::Relu => burn::tensor::activation::relu(r.output),
                FusedActivation::Gelu => burn::tensor::activation::gelu(r.output),
            },
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

/// Per-plane pairs of sums (plane `p` of channel `p % channels`) added per
/// channel in f64, in plane order: the same result on any number of cores.
fn per_channel(planes: &[(f32, f32)], channels: usize) -> Vec<(f64, f64)> {
    let mut sums = vec![(0f64, 0f64); channels];
    for (p, &(u, v)) in planes.iter().enumerate() {
        let sum = &mut sums[p % channels];
        sum.0 += u as f64;
        sum.1 += v as f64;
    }
    sums
}

/// The per-channel mean and biased variance of `[N, C, plane]` data, in
/// one pass over memory: each plane's mean, then its centered sum of
/// squares while the plane is still in cache, combined per channel in f64
/// by the pairwise update of Chan, Golub and LeVeque (1979) for groups of
/// equal size: `M2 = Σ M2ᵢ + plane · Σ (meanᵢ - mean)²`. Both terms are
/// sums of squares, so nothing cancels as in `E[x²] - E[x]²`. (Two passes,
/// one for the mean and one for the centered squares, read the whole
/// activation from memory twice.)
fn statistics(data: &[f32], channels: usize, plane: usize) -> (Vec<f64>, Vec<f64>) {
    let planes: Vec<(f32, f32)> = data
        .par_chunks(plane)
        .map(|p| {
            let mean = lane_sum(p) / plane as f32;
            (
                mean,
                lane_sums(p, p, |v, _| ((v - mean) * (v - mean), 0.0)).0,
            )
        })
        .collect();
    let images = (planes.len() / channels) as f64;
    let mean: Vec<f64> = per_channel(&planes, channels)
        .into_iter()
        .map(|(sum, _)| sum / images)
        .collect();
    let mut squares = vec![0f64; channels];
    for (p, &(plane_mean, plane_squares)) in planes.iter().enumerate() {
        let d = plane_mean as f64 - mean[p % channels];
        squares[p % channels] += plane_squares as f64 + plane as f64 * d * d;
    }
    let count = images * plane as f64;
    (mean, squares.into_iter().map(|s| s / count).collect())
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// One plane of the forward output: `x · s + t`, clamped at zero when
/// `RELU` (a constant, so that each loop compiles without a branch).
#[inline(always)]
fn affine_plane<const RELU: bool>(out: &mut [MaybeUninit<f32>], x: &[f32], s: f32, t: f32) {
    for (o, &x) in out.iter_mut().zip(x) {
        let y = x * s + t;
        o.write(if RELU { y.max(0.0) } else { y });
    }
}

/// The planes of one task of whole planes of `plane` values, the first of
/// them plane `first` of the tensor (of channel `first % C`), each through
/// [`affine_plane`] with its channel's `scale` and `shift` (`[C]` each).
#[inline(always)]
fn affine_planes<const RELU: bool>(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    (plane, first): (usize, usize),
    scale: &[f32],
    shift: &[f32],
) {
    let c = scale.len();
    for (p, (out, x)) in out.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
        let ch = (first + p) % c;
        affine_plane::<RELU>(out, x, scale[ch], shift[ch]);
    }
}

/// The gradient `g` of the output, as it reaches batch norm: behind ReLU
/// (`RELU`), `g` where the output `y` is positive and zero elsewhere (as
/// Burn's ReLU backward); `g` itself otherwise.
#[inline(always)]
fn relu_gradient<const RELU: bool>(g: f32, y: f32) -> f32 {
    if RELU && y <= 0.0 { 0.0 } else { g }
}

/// One plane of the input gradient, `a · g - b · x + t` with `g` the
/// gradient reaching batch norm ([`relu_gradient`]).
#[inline(always)]
fn input_gradient_plane<const RELU: bool>(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    g: &[f32],
    y: &[f32],
    [a, b, t]: [f32; 3],
) {
    for (((o, &x), &g), &y) in out.iter_mut().zip(x).zip(g).zip(y) {
        o.write(a * relu_gradient::<RELU>(g, y) - b * x + t);
    }
}

/// The per-channel statistics that both backward passes start from.
struct Statistics {
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f64>,
}

impl Statistics {
    fn new(gamma: &FlexTensor, mean: &FlexTensor, variance: &FlexTensor, epsilon: f64) -> Self {
        let inv_std = values(variance)
            .iter()
            .map(|&v| 1.0 / (v as f64 + epsilon).sqrt())
            .collect();
        Self {
            gamma: values(gamma),
            mean: values(mean),
            inv_std,
        }
    }

    /// The input gradient of channel `ch` as an affine function of the
    /// gradient `g` reaching batch norm and of `x`: `[a, b, t]` with
    /// `dx = a g - b x + t`, from the channel's `Σ g` and `Σ g x̂` over
    /// its `m` values. (`dx = γ/σ (g - Σg/m - x̂ Σ(g x̂)/m)`.)
    fn input_gradient(&self, ch: usize, (g_sum, g_xhat_sum): (f64, f64), m: f64) -> [f32; 3] {
        let (mu, is) = (self.mean[ch] as f64, self.inv_std[ch]);
        let k = self.gamma[ch] as f64 * is;
        let b = k * is * g_xhat_sum / m;
        [k as f32, b as f32, (b * mu - k * g_sum / m) as f32]
    }
}

impl NormKernels for Flex {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        activation: FusedActivation,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = x.to_contiguous();
        let shape = x.layout().shape().clone();
        let (n, c) = (shape[0], shape[1]);
        let plane = shape.num_elements() / (n * c);
        let data: &[f32] = x.storage();
        let (gamma, beta) = (values(&gamma), values(&beta));
        let (mean, variance) = statistics(data, c, plane);
        // y = x * scale + shift, per channel, then the activation.
        let scale: Vec<f32> = (0..c)
            .map(|ch| (gamma[ch] as f64 / (variance[ch] + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..c)
            .map(|ch| (beta[ch] as f64 - mean[ch] * scale[ch] as f64) as f32)
            .collect();
        // Tasks of whole planes: the affine map plane by plane, then GELU
        // over the whole task's values at once while they are in cache (a
        // plane of the last stage is 9 values, too few for a vector loop).
        let task = plane * planes_per_task(plane);
        let arch = pulp::Arch::new();
        #[allow(unsafe_code)]
        // SAFETY: `out` has `data`'s length; each of its planes is written
        // in full from the plane of `data` beside it (before GELU reads it).
        let out = unsafe {
            crate::written(data.len(), |out| {
                out.par_chunks_mut(task)
                    .zip(data.par_chunks(task))
                    .enumerate()
                    .for_each(|(t, (out, x))| {
                        let planes = (plane, t * (task / plane));
                        match activation {
                            FusedActivation::Relu => {
                                affine_planes::<true>(out, x, planes, &scale, &shift)
                            }
                            _ => affine_planes::<false>(out, x, planes, &scale, &shift),
                        }
                        if activation == FusedActivation::Gelu {
                            // Every plane of the task is written: see above.
                            gelu_in_place(arch, crate::assume_written(out));
                        }
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
        let saved = Statistics::new(&gamma, &mean, &variance, epsilon);
        backward(x, saved, None, grad)
    }

    fn fused_batch_norm_relu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let saved = Statistics::new(&gamma, &mean, &variance, epsilon);
        backward(x, saved, Some(output), grad)
    }

    fn fused_batch_norm_gelu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let saved = Statistics::new(&gamma, &mean, &variance, epsilon);
        gelu_backward(x, saved, values(&beta), grad)
    }
}

/// The flex backward pass: with `relu_output` (the output of a forward
/// pass with ReLU), the gradient flows only where it is positive.
fn backward(
    x: FlexTensor,
    saved: Statistics,
    relu_output: Option<FlexTensor>,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let grad = grad.to_contiguous();
    let relu_output = relu_output.map(|y| y.to_contiguous());
    let shape = x.layout().shape().clone();
    let (n, c) = (shape[0], shape[1]);
    let plane = shape.num_elements() / (n * c);
    let m = (n * plane) as f64;
    let (xs, dy): (&[f32], &[f32]) = (x.storage(), grad.storage());
    // Behind ReLU, the gradient reaching batch norm is `dy` where the
    // output is positive, zero elsewhere; without it, `dy` itself (the
    // output slice is then `dy` again, and unread).
    let ys: &[f32] = relu_output.as_ref().map_or(dy, |y| y.storage());
    assert_eq!(ys.len(), dy.len(), "batch norm output and gradient sizes");
    // Per channel: Σ dy and Σ dy (x - μ), in one pass over both; then
    // Σ dy x̂ = Σ dy (x - μ) / σ.
    let relu = relu_output.is_some();
    let sums: Vec<(f64, f64)> = channel_sums(n, c, plane, |ch, at| {
        let (x, g, y) = (
            &xs[at..at + plane],
            &dy[at..at + plane],
            &ys[at..at + plane],
        );
        let mu = saved.mean[ch];
        match relu {
            true => lane_sums3(g, x, y, |g, x, y| {
                let g = relu_gradient::<true>(g, y);
                (g, g * (x - mu))
            }),
            false => lane_sums(g, x, |g, x| (g, g * (x - mu))),
        }
    })
    .into_iter()
    .zip(&saved.inv_std)
    .map(|((dy_sum, dy_centered), is)| (dy_sum, dy_centered * is))
    .collect();
    #[allow(unsafe_code)]
    // SAFETY: `dx` has the length of `xs`, `dy` and `ys` (one shape);
    // each of its planes is written in full from the planes beside it.
    let dx = unsafe {
        crate::written(xs.len(), |dx| {
            dx.par_chunks_mut(plane)
                .zip(xs.par_chunks(plane))
                .zip(dy.par_chunks(plane).zip(ys.par_chunks(plane)))
                .enumerate()
                .for_each(|(p, ((o, x), (g, y)))| {
                    let affine = saved.input_gradient(p % c, sums[p % c], m);
                    match relu {
                        true => input_gradient_plane::<true>(o, x, g, y, affine),
                        false => input_gradient_plane::<false>(o, x, g, y, affine),
                    }
                })
        })
    };
    parameter_gradients(dx, &shape, &sums)
}

/// The flex backward pass behind GELU: a first pass over memory writes the
/// gradient reaching batch norm, `dy · gelu'(x · s + t)`, with its
/// per-plane sums; a second turns it into the input gradient in place.
fn gelu_backward(
    x: FlexTensor,
    saved: Statistics,
    beta: Vec<f32>,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let x = x.to_contiguous();
    let grad = grad.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, c) = (shape[0], shape[1]);
    let plane = shape.num_elements() / (n * c);
    let m = (n * plane) as f64;
    let (xs, dy): (&[f32], &[f32]) = (x.storage(), grad.storage());
    assert_eq!(xs.len(), dy.len(), "batch norm input and gradient sizes");
    // GELU's input, as the forward pass computed it (to rounding: the
    // variance comes back in f32).
    let scale: Vec<f32> = (0..c)
        .map(|ch| (saved.gamma[ch] as f64 * saved.inv_std[ch]) as f32)
        .collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| (beta[ch] as f64 - saved.mean[ch] as f64 * scale[ch] as f64) as f32)
        .collect();
    // Tasks of whole planes, as in the forward pass: GELU's input plane by
    // plane, then `dy` times its slope over the whole task, then each
    // plane's sums.
    let task = plane * planes_per_task(plane);
    let arch = pulp::Arch::new();
    let mut task_sums: Vec<Vec<(f32, f32)>> = Vec::new();
    #[allow(unsafe_code)]
    // SAFETY: `g` has the length of `xs` and `dy`; each of its planes is
    // written in full from the plane of `xs` beside it (before it is read).
    let mut g = unsafe {
        crate::written(xs.len(), |g| {
            task_sums = g
                .par_chunks_mut(task)
                .zip(xs.par_chunks(task).zip(dy.par_chunks(task)))
                .enumerate()
                .map(|(t, (g, (x, dy)))| {
                    let first = t * (task / plane);
                    affine_planes::<false>(g, x, (plane, first), &scale, &shift);
                    // Every plane of the task is written: see above.
                    let g = crate::assume_written(g);
                    gelu_backward_in_place(arch, g, dy);
                    g.chunks(plane)
                        .zip(x.chunks(plane))
                        .enumerate()
                        .map(|(p, (g, x))| {
                            let mu = saved.mean[(first + p) % c];
                            lane_sums(g, x, |g, x| (g, g * (x - mu)))
                        })
                        .collect()
                })
                .collect();
        })
    };
    let plane_sums: Vec<(f32, f32)> = task_sums.into_iter().flatten().collect();
    let sums: Vec<(f64, f64)> = per_channel(&plane_sums, c)
        .into_iter()
        .zip(&saved.inv_std)
        .map(|((g_sum, g_centered), is)| (g_sum, g_centered * is))
        .collect();
    g.par_chunks_mut(plane)
        .zip(xs.par_chunks(plane))
        .enumerate()
        .for_each(|(p, (g, x))| {
            let [a, b, t] = saved.input_gradient(p % c, sums[p % c], m);
            for (g, &x) in g.iter_mut().zip(x) {
                *g = a * *g - b * x + t;
            }
        });
    parameter_gradients(g, &shape, &sums)
}

/// The input gradient as a tensor of `shape`, with the gradients of
/// `gamma` (`Σ g x̂`) and `beta` (`Σ g`) from the per-channel sums.
fn parameter_gradients(
    dx: Vec<f32>,
    shape: &[usize],
    sums: &[(f64, f64)],
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let c = sums.len();
    let dgamma = sums.iter().map(|s| s.1 as f32).collect();
    let dbeta = sums.iter().map(|s| s.0 as f32).collect();
    (tensor(dx, shape), tensor(dgamma, &[c]), tensor(dbeta, &[c]))
}

/// What the autodiff pass keeps of a fused forward pass for its backward,
/// beside the input and the statistics.
#[derive(Clone, Debug)]
enum Kept<B: Backend> {
    /// Nothing more, for [`FusedActivation::Identity`].
    Nothing,
    /// The output, whose signs say where ReLU passed the gradient.
    ReluOutput(FloatTensor<B>),
    /// `beta`, to recompute GELU's input.
    Beta(FloatTensor<B>),
}

impl<B: Backend + NormKernels, C: CheckpointStrategy> NormKernels for Autodiff<B, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        activation: FusedActivation,
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
                Kept<B>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, mean, variance, epsilon, kept) = ops.state;
                let (dx, dgamma, dbeta) = match kept {
                    Kept::Nothing => {
                        B::fused_batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad)
                    }
                    Kept::ReluOutput(output) => B::fused_batch_norm_relu_train_backward(
                        x, gamma, mean, variance, epsilon, output, grad,
                    ),
                    Kept::Beta(beta) => B::fused_batch_norm_gelu_train_backward(
                        x, gamma, beta, mean, variance, epsilon, grad,
                    ),
                };
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
                let kept = match activation {
                    FusedActivation::Gelu => Kept::Beta(beta.clone()),
                    _ => Kept::Nothing,
                };
                let (output, mean, variance) =
                    B::fused_batch_norm_train(x.clone(), gamma.clone(), beta, epsilon, activation);
                let kept = match activation {
                    FusedActivation::Relu => Kept::ReluOutput(output.clone()),
                    _ => kept,
                };
                let state = (x, gamma, mean.clone(), variance.clone(), epsilon, kept);
                (prep.finish(state, output), lift(mean), lift(variance))
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = B::fused_batch_norm_train(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                    activation,
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

    fn fused_batch_norm_relu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiable itself, as above.
        let lift = <Self as AutodiffBackend>::from_inner;
        let (dx, dgamma, dbeta) = B::fused_batch_norm_relu_train_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            epsilon,
            output.into_primitive(),
            grad.into_primitive(),
        );
        (lift(dx), lift(dgamma), lift(dbeta))
    }

    fn fused_batch_norm_gelu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Not differentiable itself, as above.
        let lift = <Self as AutodiffBackend>::from_inner;
        let (dx, dgamma, dbeta) = B::fused_batch_norm_gelu_train_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
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
    /// Burn's `batch_norm_train` (then Burn's `relu` or `gelu`), on values
    /// of mean `offset` and spread 2.
    fn check(shape: [usize; 4], offset: f32, activation: FusedActivation) {
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
        let mut theirs =
            burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        let normalize = match activation {
            FusedActivation::Identity => batch_norm_train,
            FusedActivation::Relu => {
                theirs.output = burn::tensor::activation::relu(theirs.output);
                batch_norm_relu_train
            }
            FusedActivation::Gelu => {
                theirs.output = burn::tensor::activation::gelu(theirs.output);
                batch_norm_gelu_train
            }
        };
        let ours = normalize(x.clone(), gamma.clone(), beta.clone(), 1e-5);
        if activation != FusedActivation::Identity {
            // Some of the input to the activation is negative, some not:
            // both sides of ReLU's kink and GELU's curve are exercised.
            let positive: i64 = ours
                .output
                .clone()
                .greater_elem(0.0)
                .int()
                .sum()
                .into_scalar();
            let all = shape.iter().product::<usize>() as i64;
            assert!(
                positive > all / 5 && positive < all * 4 / 5,
                "{positive} of {all} positive"
            );
        }
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
        check([4, 3, 5, 6], 0.7, FusedActivation::Identity);
    }

    #[test]
    fn large_odd_planes_away_from_zero_equal_burns_batch_norm() {
        // Planes of 31x33 values (not a multiple of 16), a mean of 5: the
        // partial sums' rounding and the centered variance are exercised.
        check([3, 4, 31, 33], 5.0, FusedActivation::Identity);
    }

    #[test]
    fn batch_norm_then_relu_equals_burns_batch_norm_then_relu() {
        check([4, 3, 5, 6], 0.7, FusedActivation::Relu);
        check([3, 4, 31, 33], 5.0, FusedActivation::Relu);
        // One image: the statistics come from a single image's planes.
        check([1, 5, 7, 9], -1.0, FusedActivation::Relu);
    }

    #[test]
    fn batch_norm_then_gelu_equals_burns_batch_norm_then_gelu() {
        check([4, 3, 5, 6], 0.7, FusedActivation::Gelu);
        // Planes longer than one round of partial sums, with a remainder.
        check([3, 4, 31, 33], 5.0, FusedActivation::Gelu);
        check([1, 5, 7, 9], -1.0, FusedActivation::Gelu);
        // Planes of 3x3 (the recipe network's last block): all remainder.
        check([8, 6, 3, 3], 2.0, FusedActivation::Gelu);
    }
}
