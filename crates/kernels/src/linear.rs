//! The affine map `x · W + b` of a linear layer, forward and backward, as
//! three matrix products on all cores.
//!
//! burn-flex runs a linear layer's products through the `gemm` crate on one
//! core for the two-layer net's shapes (the step ran as fast with one
//! thread as with two), and its bias gradient as a separate reduction. Here
//! each product is one call to faer, parallel over the cores: the output
//! `x · W` (bias rows written first, the product added to them), the weight
//! gradient `xᵀ · dY`, the input gradient `dY · Wᵀ` (skipped when the input
//! needs none, as for a first layer), and the bias gradient a column sum.
//! Output columns past a multiple of 16 (the last 4 of a 100-wide layer)
//! leave faer's products for dot products and batch sums that read the input
//! once (see [`tiled_columns`]).

use crate::{AffineBackward, NoBias, WithBias};
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn_autodiff::ops::{Backward, OpsKind};
use burn_flex::FlexTensor;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A linear layer's products, as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait LinearKernels: Backend {
    /// `x · weight + bias`: `[N, I] · [I, O] + [O] -> [N, O]`.
    fn linear_all_cores(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x · weight`, without bias.
    fn linear_all_cores_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The gradients of the input (when `input_grad`), the weight and the
    /// bias, from the output's gradient `grad`.
    fn linear_all_cores_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// `x · weight + bias`, as Burn's [`linear`](burn::tensor::module::linear):
/// the kernel on flex (with its backward on an autodiff device), Burn's
/// operation elsewhere.
///
/// # Shapes
///
/// - `x`: `[N, I]`; `weight`: `[I, O]` (Burn's `Linear` layout); `bias`: `[O]`
/// - output: `[N, O]`
pub fn linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    if crate::on_flex(&x.device()) && x.dtype() == DType::F32 {
        let (x, weight) = (x.into_dispatch(), weight.into_dispatch());
        Tensor::from_dispatch(match bias {
            Some(bias) => {
                <Dispatch as LinearKernels>::linear_all_cores(x, weight, bias.into_dispatch())
            }
            None => <Dispatch as LinearKernels>::linear_all_cores_no_bias(x, weight),
        })
    } else {
        burn::tensor::module::linear(x, weight, bias)
    }
}

fn row_major(t: &FlexTensor, rows: usize, cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(t.storage(), rows, cols)
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// Every core, through rayon's pool (faer splits the product).
fn all_cores() -> Par {
    Par::rayon(0)
}

fn forward(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let (n, i) = (x.layout().shape()[0], x.layout().shape()[1]);
    let o = weight.layout().shape()[1];
    let mut out = crate::zeros(n * o);
    let accum = match bias {
        Some(bias) => {
            let bias = bias.to_contiguous();
            let bias: &[f32] = bias.storage();
            for row in out.chunks_exact_mut(o) {
                row.copy_from_slice(&bias[..o]);
            }
            Accum::Add
        }
        None => Accum::Replace,
    };
    let (x_values, w_values): (&[f32], &[f32]) = (x.storage(), weight.storage());
    let tiled = tiled_columns(o);
    matmul(
        MatMut::from_row_major_slice_mut(&mut out, n, o).subcols_mut(0, tiled),
        accum,
        row_major(&x, n, i),
        row_major(&weight, i, o).subcols(0, tiled),
        1.0,
        all_cores(),
    );
    if tiled < o {
        remaining_output(x_values, w_values, &mut out, (i, o), tiled);
    }
    tensor(out, &[n, o])
}

/// How many of a product's `cols` output columns go to faer: a multiple of
/// 16, the width of its narrowest tile, when there are more than 16.
///
/// faer computes a row-major output transposed, its columns as the rows of
/// its tiles (96 at a time, then 16 to 80). A layer with 100 outputs left a
/// tile of 16 rows with 4 in use, which took a quarter of the two-layer
/// net's step; the last `cols % 16` columns are cheaper as dot products and
/// sums over the batch, reading the input once.
fn tiled_columns(cols: usize) -> usize {
    if cols > 16 { cols - cols % 16 } else { cols }
}

fn backward(
    x: FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    input_grad: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let (x, weight, grad) = (
        x.to_contiguous(),
        weight.to_contiguous(),
        grad.to_contiguous(),
    );
    let (n, i) = (x.layout().shape()[0], x.layout().shape()[1]);
    let o = weight.layout().shape()[1];
    let dy = row_major(&grad, n, o);
    // dW = xᵀ · dY
    let mut dw = crate::zeros(i * o);
    let tiled = tiled_columns(o);
    matmul(
        MatMut::from_row_major_slice_mut(&mut dw, i, o).subcols_mut(0, tiled),
        Accum::Replace,
        row_major(&x, n, i).transpose(),
        dy.subcols(0, tiled),
        1.0,
        all_cores(),
    );
    if tiled < o {
        remaining_weight_gradient(x.storage(), grad.storage(), &mut dw, (n, i, o), tiled);
    }
    // db = Σ over the batch of dY's rows
    let mut db = vec![0f32; o];
    for row in grad.storage::<f32>().chunks_exact(o) {
        db.iter_mut().zip(row).for_each(|(b, &g)| *b += g);
    }
    // dx = dY · Wᵀ
    let dx = input_grad.then(|| {
        let mut dx = crate::zeros(n * i);
        matmul(
            MatMut::from_row_major_slice_mut(&mut dx, n, i),
            Accum::Replace,
            dy,
            row_major(&weight, i, o).transpose(),
            1.0,
            all_cores(),
        );
        tensor(dx, &[n, i])
    });
    (dx, tensor(dw, &[i, o]), tensor(db, &[o]))
}

/// `out[:, tiled..] += x · W[:, tiled..]`, the output columns that
/// [`tiled_columns`] leaves out, as dot products of each row of `x` with
/// those columns of `W` (copied out as rows).
fn remaining_output(x: &[f32], w: &[f32], out: &mut [f32], (i, o): (usize, usize), tiled: usize) {
    struct Rows<'a> {
        x: &'a [f32],
        columns: &'a [f32],
        out: &'a mut [f32],
        i: usize,
        o: usize,
        tiled: usize,
    }
    impl pulp::WithSimd for Rows<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            for (out_row, x_row) in self
                .out
                .chunks_exact_mut(self.o)
                .zip(self.x.chunks_exact(self.i))
            {
                for (value, column) in out_row[self.tiled..]
                    .iter_mut()
                    .zip(self.columns.chunks_exact(self.i))
                {
                    *value += crate::lane_sums(x_row, column, |x, w| (x * w, 0.0)).0;
                }
            }
        }
    }
    let mut columns = Vec::with_capacity((o - tiled) * i);
    for c in tiled..o {
        columns.extend(w[c..].iter().step_by(o));
    }
    const ROWS: usize = 16;
    let arch = pulp::Arch::new();
    out.par_chunks_mut(ROWS * o)
        .zip(x.par_chunks(ROWS * i))
        .for_each(|(out, x)| {
            arch.dispatch(Rows {
                x,
                columns: &columns,
                out,
                i,
                o,
                tiled,
            });
        });
}

/// `dW[:, tiled..] = xᵀ · dY[:, tiled..]`, the weight gradient's columns that
/// [`tiled_columns`] leaves out, as sums over the batch of `dY[b, c] · x[b]`:
/// each task takes a range of inputs and keeps one row of sums per column.
fn remaining_weight_gradient(
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    (n, i, o): (usize, usize, usize),
    tiled: usize,
) {
    struct Inputs<'a> {
        x: &'a [f32],
        dy: &'a [f32],
        sums: &'a mut [f32],
        first: usize,
        width: usize,
        shape: (usize, usize, usize),
        tiled: usize,
    }
    impl pulp::WithSimd for Inputs<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let (n, i, o) = self.shape;
            for (x_row, dy_row) in self.x.chunks_exact(i).zip(self.dy.chunks_exact(o)).take(n) {
                let x_part = &x_row[self.first..self.first + self.width];
                for (row, &g) in self
                    .sums
                    .chunks_exact_mut(self.width)
                    .zip(&dy_row[self.tiled..])
                {
                    row.iter_mut().zip(x_part).for_each(|(s, &v)| *s += g * v);
                }
            }
        }
    }
    const INPUTS: usize = 256;
    let arch = pulp::Arch::new();
    dw.par_chunks_mut(INPUTS * o)
        .enumerate()
        .for_each(|(chunk, dw_rows)| {
            let first = chunk * INPUTS;
            let width = dw_rows.len() / o;
            let mut sums = vec![0f32; (o - tiled) * width];
            arch.dispatch(Inputs {
                x,
                dy,
                sums: &mut sums,
                first,
                width,
                shape: (n, i, o),
                tiled,
            });
            for (c, row) in sums.chunks_exact(width).enumerate() {
                for (k, &value) in row.iter().enumerate() {
                    dw_rows[k * o + tiled + c] = value;
                }
            }
        });
}

impl LinearKernels for Flex {
    fn linear_all_cores(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        forward(x, weight, Some(bias))
    }

    fn linear_all_cores_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        forward(x, weight, None)
    }

    fn linear_all_cores_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        backward(x, weight, grad, input_grad)
    }
}

/// What the backward pass keeps of the forward: the input and the weight.
type Saved<B> = (FloatTensor<B>, FloatTensor<B>);

/// The linear layer's backward: the inner backend's kernel.
#[derive(Debug)]
struct Linear;

impl<B: Backend + LinearKernels> AffineBackward<B> for Linear {
    type State = Saved<B>;

    fn gradients(
        (x, weight): Saved<B>,
        grad: FloatTensor<B>,
        input_grad: bool,
    ) -> (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>) {
        B::linear_all_cores_backward(x, weight, grad, input_grad)
    }
}

impl<B: Backend + LinearKernels, C: CheckpointStrategy> LinearKernels for Autodiff<B, C> {
    fn linear_all_cores(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match WithBias(Linear)
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let output = B::linear_all_cores(x.clone(), weight.clone(), bias.into_primitive());
                prep.finish((x, weight), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_all_cores(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
            )),
        }
    }

    fn linear_all_cores_no_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match NoBias(Linear)
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.into_primitive(), weight.into_primitive());
                let output = B::linear_all_cores_no_bias(x.clone(), weight.clone());
                prep.finish((x, weight), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_all_cores_no_bias(
                x.into_primitive(),
                weight.into_primitive(),
            )),
        }
    }

    fn linear_all_cores_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        input_grad: bool,
    ) -> (
        Option<FloatTensor<Self>>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        // Not differentiable itself: the autodiff path above calls the inner backend's.
        let lift = <Self as AutodiffBackend>::from_inner;
        let (dx, dweight, dbias) = B::linear_all_cores_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            input_grad,
        );
        (dx.map(lift), lift(dweight), lift(dbias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Closeness relative to the reference's largest magnitude.
    fn close<const D: usize>(ours: Tensor<D>, reference: Tensor<D>, what: &str) {
        let (a, b) = (
            ours.into_data().try_to_vec::<f32>().unwrap(),
            reference.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{what}: sizes differ");
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: {x} vs Burn's {y} (scale {scale})"
            );
        }
    }

    /// Output and every gradient against Burn's `linear` on the same device.
    fn check(device: &Device, n: usize, i: usize, o: usize, bias: bool, input_grad: bool) {
        let what = format!("[{n}, {i}] -> {o}, bias {bias}, input gradient {input_grad}");
        let tracked = device.is_autodiff();
        let x = Tensor::<2>::random([n, i], Distribution::Normal(0.0, 1.0), device);
        let x = if tracked && input_grad {
            x.require_grad()
        } else {
            x
        };
        let w = Tensor::<2>::random([i, o], Distribution::Normal(0.0, 0.3), device);
        let w = if tracked { w.require_grad() } else { w };
        let b = bias.then(|| {
            let b = Tensor::<1>::random([o], Distribution::Normal(0.0, 1.0), device);
            if tracked { b.require_grad() } else { b }
        });
        let ours = linear(x.clone(), w.clone(), b.clone());
        let theirs = burn::tensor::module::linear(x.clone(), w.clone(), b.clone());
        close(ours.clone(), theirs.clone(), &format!("{what}: output"));
        if !tracked {
            return;
        }
        // A weighting that differs per output, so every gradient is distinct.
        let weights = Tensor::<2>::random([n, o], Distribution::Default, device);
        let g1 = (ours * weights.clone()).sum().backward();
        let g2 = (theirs * weights).sum().backward();
        close(
            w.grad(&g1).unwrap(),
            w.grad(&g2).unwrap(),
            &format!("{what}: weight gradient"),
        );
        if let Some(b) = &b {
            close(
                b.grad(&g1).unwrap(),
                b.grad(&g2).unwrap(),
                &format!("{what}: bias gradient"),
            );
        }
        if input_grad {
            close(
                x.grad(&g1).unwrap(),
                x.grad(&g2).unwrap(),
                &format!("{what}: input gradient"),
            );
        } else {
            assert!(
                x.grad(&g1).is_none(),
                "{what}: an input without gradient got one"
            );
        }
    }

    #[test]
    fn output_and_gradients_equal_burns_linear() {
        let device = Device::flex().autodiff();
        // The two-layer net's shapes, odd sizes, a batch of one, no bias.
        check(&device, 256, 3072, 100, true, false);
        check(&device, 256, 100, 10, true, true);
        // Outputs past a multiple of 16, left to the dot products and sums
        // (1 and 15 columns of them, across several tasks' ranges).
        check(&device, 37, 600, 33, true, true);
        check(&device, 3, 17, 47, false, true);
        check(&device, 7, 13, 5, true, true);
        check(&device, 1, 9, 3, true, true);
        check(&device, 5, 11, 4, false, true);
    }

    #[test]
    #[allow(deprecated)]
    fn plain_flex_and_other_backends_give_burns_values() {
        for device in [Device::flex(), Device::ndarray()] {
            check(&device, 6, 10, 4, true, false);
            check(&device, 6, 10, 4, false, false);
        }
    }
}
