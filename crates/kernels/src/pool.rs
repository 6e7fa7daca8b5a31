//! 2x2 max pooling with stride 2, the pooling of every VGG-style stage.
//!
//! burn-flex runs 2D pooling through its general 3D kernel (window ranges
//! and 64-bit indices worked out per output); this one reads the four
//! values of each window directly, one image plane per task.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// 2x2 max pooling, stride 2, as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait PoolKernels: Backend {
    /// `[N, C, H, W] -> [N, C, H/2, W/2]`.
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The pooled tensor and, for each output, the index of its maximum in
    /// its input plane (`y * W + x`), as Burn's max-pool backward takes them.
    fn max_pool_2x2_with_indices(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>);
}

/// 2x2 max pooling with stride 2 of `x`: the flex kernel on flex (with its
/// backward on an autodiff device), Burn's `max_pool2d` elsewhere. The first
/// maximum of a window wins ties, as in Burn. An odd last row or column is
/// dropped (rounding down, as Burn and PyTorch do).
///
/// # Shapes
///
/// - `x`: `[N, C, H, W]`
/// - output: `[N, C, H / 2, W / 2]` (rounded down)
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if crate::on_flex(&x.device()) && h >= 2 && w >= 2 && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as PoolKernels>::max_pool_2x2(x.into_dispatch()))
    } else {
        burn::tensor::module::max_pool2d(x, burn::tensor::ops::MaxPoolOptions::new([2, 2]))
    }
}

/// The kernel on one contiguous f32 tensor; indices only when asked.
fn pool(x: FlexTensor, with_indices: bool) -> (FlexTensor, Option<FlexTensor>) {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (oh, ow) = (h / 2, w / 2);
    let src: &[f32] = x.storage();
    let plane = |p: usize, out: &mut [MaybeUninit<f32>], idx: &mut [MaybeUninit<i64>]| {
        let s = &src[p * h * w..(p + 1) * h * w];
        for (y, (rows, out_row)) in s
            .chunks_exact(2 * w)
            .zip(out.chunks_exact_mut(ow))
            .enumerate()
        {
            let (top, bottom) = rows.split_at(w);
            // Window order (0,0), (0,1), (1,0), (1,1); the first maximum
            // wins, a NaN always wins (as in burn-flex and PyTorch).
            let pick = |best: (f32, usize), v: f32, k: usize| {
                if v > best.0 || v.is_nan() {
                    (v, k)
                } else {
                    best
                }
            };
            if idx.is_empty() {
                for ((o, t), b) in out_row
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    let m = pick(pick(pick((t[0], 0), t[1], 1), b[0], 2), b[1], 3);
                    o.write(m.0);
                }
            } else {
                let idx_row = &mut idx[y * ow..(y + 1) * ow];
                for (x, (((o, i), t), b)) in out_row
                    .iter_mut()
                    .zip(idx_row.iter_mut())
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                    .enumerate()
                {
                    let (v, k) = pick(pick(pick((t[0], 0), t[1], 1), b[0], 2), b[1], 3);
                    o.write(v);
                    let (dy, dx) = (k / 2, k % 2);
                    i.write(((2 * y + dy) * w + 2 * x + dx) as i64);
                }
            }
        }
    };
    // Tasks of whole planes, about 16k outputs each: small enough to spread
    // over the cores, large enough that scheduling costs nothing.
    let per_plane = oh * ow;
    let planes = (16384 / per_plane.max(1)).max(1);
    let task = per_plane * planes;
    let len = n * c * per_plane;
    let mut idx = Vec::new();
    #[allow(unsafe_code)]
    // SAFETY: `out` (and `idx`) hold `n·c` planes of `oh` rows of `ow`
    // values; `plane` writes every row of its plane in full, one value (and
    // index) per window, and the tasks' chunks cover all planes.
    let out = unsafe {
        crate::written(len, |out| {
            if with_indices {
                idx = crate::written(len, |idx| {
                    out.par_chunks_mut(task)
                        .zip(idx.par_chunks_mut(task))
                        .enumerate()
                        .for_each(|(t, (o, i))| {
                            for (k, (o, i)) in o
                                .chunks_mut(per_plane)
                                .zip(i.chunks_mut(per_plane))
                                .enumerate()
                            {
                                plane(t * planes + k, o, i);
                            }
                        })
                });
            } else {
                out.par_chunks_mut(task).enumerate().for_each(|(t, o)| {
                    for (k, o) in o.chunks_mut(per_plane).enumerate() {
                        plane(t * planes + k, o, &mut []);
                    }
                });
            }
        })
    };
    let dims = [n, c, oh, ow];
    let output = FlexTensor::from_data(TensorData::new(out, dims));
    let indices = with_indices.then(|| FlexTensor::from_data(TensorData::new(idx, dims)));
    (output, indices)
}

impl PoolKernels for Flex {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        pool(x, false).0
    }

    fn max_pool_2x2_with_indices(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (output, indices) = pool(x, true);
        (output, indices.expect("indices were asked for"))
    }
}

impl<B: Backend + PoolKernels, C: CheckpointStrategy> PoolKernels for Autodiff<B, C> {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        /// The backward pass: each output's gradient goes to its window's maximum.
        #[derive(Debug)]
        struct MaxPool2x2;

        impl<B: Backend> Backward<B, 1> for MaxPool2x2 {
            type State = (FloatTensor<B>, IntTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (x, indices) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::max_pool2d_with_indices_backward(
                        x,
                        [2, 2],
                        [2, 2],
                        [0, 0],
                        [1, 1],
                        false,
                        grad,
                        indices,
                    )
                    .x_grad
                });
            }
        }

        let node = x.node();
        match MaxPool2x2.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let (output, indices) = B::max_pool_2x2_with_indices(input.clone());
                prep.finish((input, indices), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool_2x2(x.into_primitive())),
        }
    }

    fn max_pool_2x2_with_indices(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        // Not differentiable itself: the autodiff path above uses the inner backend's.
        let (output, indices) = B::max_pool_2x2_with_indices(x.into_primitive());
        (<Self as AutodiffBackend>::from_inner(output), indices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs with exact ties (ReLU zeros) and distinct values.
    fn input(device: &Device) -> Tensor<4> {
        input_of([3, 5, 8, 6], device)
    }

    fn input_of(shape: [usize; 4], device: &Device) -> Tensor<4> {
        let x = Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), device);
        burn::tensor::activation::relu(x)
    }

    fn burn_pool(x: Tensor<4>) -> Tensor<4> {
        burn::tensor::module::max_pool2d(x, burn::tensor::ops::MaxPoolOptions::new([2, 2]))
    }

    /// The kernel's output and input gradient on `x` equal Burn's exactly.
    fn same_as_burn(x: Tensor<4>, device: &Device) {
        let x = x.require_grad();
        let ours = max_pool_2x2(x.clone());
        let reference = burn_pool(x.clone());
        ours.clone()
            .into_data()
            .assert_eq(&reference.clone().into_data(), true);
        // A gradient that differs per output, so misrouting shows.
        let weights = Tensor::<4>::random(ours.dims(), burn::tensor::Distribution::Default, device);
        let g_ours = (ours * weights.clone()).sum().backward();
        let g_ref = (reference * weights).sum().backward();
        x.grad(&g_ours)
            .unwrap()
            .into_data()
            .assert_eq(&x.grad(&g_ref).unwrap().into_data(), true);
    }

    #[test]
    fn forward_and_gradient_equal_burns_max_pool() {
        let device = Device::flex().autodiff();
        device.seed(5);
        same_as_burn(input(&device), &device);
        // On a plain flex device too, without indices.
        let plain = Device::flex();
        let y = input(&plain);
        max_pool_2x2(y.clone())
            .into_data()
            .assert_eq(&burn_pool(y).into_data(), true);
    }

    #[test]
    fn odd_sizes_drop_the_last_row_and_column_as_burn_does() {
        let device = Device::flex().autodiff();
        device.seed(6);
        for shape in [[2, 3, 7, 5], [1, 2, 31, 31], [2, 1, 3, 4]] {
            same_as_burn(input_of(shape, &device), &device);
        }
    }

    #[test]
    #[allow(deprecated)]
    fn other_backends_use_burns_operation() {
        let device = Device::ndarray();
        let x = input(&device);
        max_pool_2x2(x.clone())
            .into_data()
            .assert_eq(&burn_pool(x).into_data(), true);
    }
}
