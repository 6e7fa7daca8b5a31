//! 2x2 max pooling with stride 2, the pooling of every VGG-style stage.
//!
//! burn-flex runs 2D pooling through its general 3D kernel (window ranges
//! and 64-bit indices worked out per output); this one reads the four
//! values of each window directly, one image plane per task. For the
//! backward pass it keeps one byte per output, which of the window's four
//! values won, where Burn keeps an 8-byte index (twice the output's own
//! size) and the input besides; its backward writes each input plane once,
//! the gradient where the maximum was and zeros elsewhere, where Burn's
//! zeroes the whole input gradient and then scatters into it.

use burn::backend::TensorMetadata;
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

    /// The pooled tensor and, for each output, which value of its window
    /// was the maximum: 0 and 1 along the window's top row, 2 and 3 along
    /// its bottom one (an `i8` tensor of the output's shape).
    fn max_pool_2x2_with_windows(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>);

    /// The gradient of a `[N, C, height, width]` input from the output's
    /// gradient `grad` and the forward pass's `windows`: each output's
    /// gradient at its window's maximum, zero elsewhere.
    fn max_pool_2x2_backward(
        windows: IntTensor<Self>,
        grad: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self>;
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

/// One input plane of `w` columns pooled into `out` (rows of `w / 2`), with
/// the winning windows in `won` unless it is empty.
fn pool_plane(s: &[f32], w: usize, out: &mut [MaybeUninit<f32>], won: &mut [MaybeUninit<i8>]) {
    let ow = w / 2;
    for (y, (rows, out_row)) in s
        .chunks_exact(2 * w)
        .zip(out.chunks_exact_mut(ow))
        .enumerate()
    {
        let (top, bottom) = rows.split_at(w);
        // Window order (0,0), (0,1), (1,0), (1,1); the first maximum
        // wins, a NaN always wins (as in burn-flex and PyTorch).
        let pick = |best: (f32, i8), v: f32, k: i8| {
            if v > best.0 || v.is_nan() {
                (v, k)
            } else {
                best
            }
        };
        let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        if won.is_empty() {
            for (o, (t, b)) in out_row.iter_mut().zip(windows) {
                let m = pick(pick(pick((t[0], 0), t[1], 1), b[0], 2), b[1], 3);
                o.write(m.0);
            }
        } else {
            let won_row = &mut won[y * ow..(y + 1) * ow];
            for ((o, k), (t, b)) in out_row.iter_mut().zip(won_row.iter_mut()).zip(windows) {
                let (v, which) = pick(pick(pick((t[0], 0), t[1], 1), b[0], 2), b[1], 3);
                o.write(v);
                k.write(which);
            }
        }
    }
}

/// The kernel on one contiguous f32 tensor; the winning windows only when
/// asked.
fn pool(x: FlexTensor, with_windows: bool) -> (FlexTensor, Option<FlexTensor>) {
    let x = x.to_contiguous();
    let shape = x.layout().shape().clone();
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (oh, ow) = (h / 2, w / 2);
    let src: &[f32] = x.storage();
    let plane = |p: usize, out: &mut [MaybeUninit<f32>], won: &mut [MaybeUninit<i8>]| {
        pool_plane(&src[p * h * w..(p + 1) * h * w], w, out, won)
    };
    let per_plane = oh * ow;
    let planes = crate::planes_per_task(per_plane);
    let task = per_plane * planes;
    let len = n * c * per_plane;
    let mut won = Vec::new();
    #[allow(unsafe_code)]
    // SAFETY: `out` (and `won`) hold `n·c` planes of `oh` rows of `ow`
    // values; `plane` writes every row of its plane in full, one value (and
    // window) per window, and the tasks' chunks cover all planes.
    let out = unsafe {
        crate::written(len, |out| {
            if with_windows {
                won = crate::written(len, |won| {
                    out.par_chunks_mut(task)
                        .zip(won.par_chunks_mut(task))
                        .enumerate()
                        .for_each(|(t, (o, k))| {
                            for (i, (o, k)) in o
                                .chunks_mut(per_plane)
                                .zip(k.chunks_mut(per_plane))
                                .enumerate()
                            {
                                plane(t * planes + i, o, k);
                            }
                        })
                });
            } else {
                out.par_chunks_mut(task).enumerate().for_each(|(t, o)| {
                    for (i, o) in o.chunks_mut(per_plane).enumerate() {
                        plane(t * planes + i, o, &mut []);
                    }
                });
            }
        })
    };
    let dims = [n, c, oh, ow];
    let output = FlexTensor::from_data(TensorData::new(out, dims));
    let won = with_windows.then(|| FlexTensor::from_data(TensorData::new(won, dims)));
    (output, won)
}

/// The input gradient of [`pool`]: each input plane written once, row pair
/// by row pair, from the output gradient's row and the winning windows
/// (zeros in an odd last row or column, which no window covers).
fn pool_backward(windows: FlexTensor, grad: FlexTensor, h: usize, w: usize) -> FlexTensor {
    let (windows, grad) = (windows.to_contiguous(), grad.to_contiguous());
    let shape = grad.layout().shape().clone();
    let (n, c, oh, ow) = (shape[0], shape[1], shape[2], shape[3]);
    assert!(
        oh == h / 2 && ow == w / 2,
        "max pool gradient {oh}x{ow} for an input of {h}x{w}"
    );
    let (won, dy): (&[i8], &[f32]) = (windows.storage(), grad.storage());
    assert_eq!(won.len(), dy.len(), "max pool windows and gradient sizes");
    let per_plane = oh * ow;
    let planes = crate::planes_per_task(per_plane);
    #[allow(unsafe_code)]
    // SAFETY: `dx` holds `n·c` planes of `h·w` values, and each task writes
    // its planes in full: every row pair of the windows, then the odd last
    // row when there is one; in each row of a pair, every window's two
    // values, then the odd last value when there is one.
    let dx = unsafe {
        crate::written(n * c * h * w, |dx| {
            dx.par_chunks_mut(h * w * planes)
                .zip(dy.par_chunks(per_plane * planes))
                .zip(won.par_chunks(per_plane * planes))
                .for_each(|((dx, dy), won)| {
                    for ((dx, dy), won) in dx
                        .chunks_mut(h * w)
                        .zip(dy.chunks(per_plane))
                        .zip(won.chunks(per_plane))
                    {
                        let (pairs, odd_row) = dx.split_at_mut(2 * w * oh);
                        for ((rows, dy), won) in pairs
                            .chunks_exact_mut(2 * w)
                            .zip(dy.chunks_exact(ow))
                            .zip(won.chunks_exact(ow))
                        {
                            let (top, bottom) = rows.split_at_mut(w);
                            for (half, row) in [(0, top), (2, bottom)] {
                                let (windows, odd) = row.split_at_mut(2 * ow);
                                for ((pair, &g), &k) in windows.chunks_exact_mut(2).zip(dy).zip(won)
                                {
                                    pair[0].write(if k == half { g } else { 0.0 });
                                    pair[1].write(if k == half + 1 { g } else { 0.0 });
                                }
                                odd.iter_mut().for_each(|v| {
                                    v.write(0.0);
                                });
                            }
                        }
                        odd_row.iter_mut().for_each(|v| {
                            v.write(0.0);
                        });
                    }
                })
        })
    };
    FlexTensor::from_data(TensorData::new(dx, [n, c, h, w]))
}

impl PoolKernels for Flex {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        pool(x, false).0
    }

    fn max_pool_2x2_with_windows(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        let (output, windows) = pool(x, true);
        (output, windows.expect("windows were asked for"))
    }

    fn max_pool_2x2_backward(
        windows: IntTensor<Self>,
        grad: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        pool_backward(windows, grad, height, width)
    }
}

impl<B: Backend + PoolKernels, C: CheckpointStrategy> PoolKernels for Autodiff<B, C> {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        /// The backward pass: each output's gradient goes to its window's maximum.
        #[derive(Debug)]
        struct MaxPool2x2;

        impl<B: Backend + PoolKernels> Backward<B, 1> for MaxPool2x2 {
            /// The winning windows and the input's height and width.
            type State = (IntTensor<B>, [usize; 2]);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (windows, [h, w]) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::max_pool_2x2_backward(windows, grad, h, w)
                });
            }
        }

        let node = x.node();
        match MaxPool2x2.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let shape = input.shape();
                let size = [shape[2], shape[3]];
                let (output, windows) = B::max_pool_2x2_with_windows(input);
                prep.finish((windows, size), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool_2x2(x.into_primitive())),
        }
    }

    fn max_pool_2x2_with_windows(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        // Not differentiable itself: the autodiff path above uses the inner backend's.
        let (output, windows) = B::max_pool_2x2_with_windows(x.into_primitive());
        (<Self as AutodiffBackend>::from_inner(output), windows)
    }

    fn max_pool_2x2_backward(
        windows: IntTensor<Self>,
        grad: FloatTensor<Self>,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        // Not differentiable itself, as above.
        let dx = B::max_pool_2x2_backward(windows, grad.into_primitive(), height, width);
        <Self as AutodiffBackend>::from_inner(dx)
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
