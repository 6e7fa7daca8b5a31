//! The affine map `x · W + b` of a linear layer, forward and backward, as
//! three matrix products on all cores.
//!
//! burn-flex runs a linear layer's products through the `gemm` crate on one
//! core for the two-layer net's shapes (the step ran as fast with one
//! thread as with two), and its bias gradient as a separate reduction. Here
//! each product's output rows are split across the cores (see
//! [`split_rows`]): the output `x · W` (bias rows written first, the product
//! added to them), the weight gradient `xᵀ · dY`, the input gradient
//! `dY · Wᵀ` (skipped when the input needs none, as for a first layer), and
//! the bias gradient a column sum. Output columns past a multiple of 16 (the
//! last 4 of a 100-wide layer) leave faer's products for dot products and
//! batch sums, computed by each core on its own rows right after its
//! product (see [`tiled_columns`]).

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

/// Multiply-adds below which a layer's product runs on the calling core:
/// waking another costs more than it saves (the two-layer net's second
/// layer, 256 x 100 x 10, is a tenth of this).
const SERIAL_WORK: usize = 1 << 20;

/// `work(rows, first)` for consecutive ranges of the rows of `out` (row-major,
/// `width` wide), one range per core: the rows split in halves, recursively,
/// at multiples of 16, joined through rayon; `first` is the range's first
/// row. Each range runs one-core faer products (and the tail columns of
/// [`tiled_columns`]) on its rows, while they are in its cache.
///
/// faer's own parallel product (`Par::rayon`) synchronizes its threads at
/// barriers inside the product; on the two-layer net's small products its
/// waiting (`sched_yield`, futex wake-ups) took about a tenth of the step,
/// and splitting the rows made the step 8-10% faster (BENCHMARKS.md, "Eighth
/// round"). `work_size` (multiply-adds) below [`SERIAL_WORK`] keeps it all
/// on the calling core.
fn split_rows(
    out: &mut [f32],
    width: usize,
    work_size: usize,
    work: &(impl Fn(&mut [f32], usize) + Sync),
) {
    let parts = if work_size < SERIAL_WORK {
        1
    } else {
        rayon::current_num_threads()
    };
    split_rows_in(out, width, parts, 0, work);
}

fn split_rows_in(
    out: &mut [f32],
    width: usize,
    parts: usize,
    first: usize,
    work: &(impl Fn(&mut [f32], usize) + Sync),
) {
    let rows = out.len() / width.max(1);
    if parts <= 1 || rows < 32 {
        work(out, first);
        return;
    }
    let mid = (rows / 2).next_multiple_of(16).min(rows);
    let (top, bottom) = out.split_at_mut(mid * width);
    rayon::join(
        || split_rows_in(top, width, parts / 2, first, work),
        || split_rows_in(bottom, width, parts - parts / 2, first + mid, work),
    );
}

/// `dst (+)= lhs · rhs` on the calling core.
fn product(dst: MatMut<'_, f32>, accum: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    matmul(dst, accum, lhs, rhs, 1.0, Par::Seq);
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
    let tail = (tiled < o).then(|| tail_columns(w_values, (i, o), tiled));
    let arch = pulp::Arch::new();
    split_rows(&mut out, o, n * i * o, &|out, first| {
        let rows = out.len() / o;
        let x_rows = &x_values[first * i..(first + rows) * i];
        product(
            MatMut::from_row_major_slice_mut(out, rows, o).subcols_mut(0, tiled),
            accum,
            MatRef::from_row_major_slice(x_rows, rows, i),
            row_major(&weight, i, o).subcols(0, tiled),
        );
        if let Some(columns) = &tail {
            arch.dispatch(TailOutput {
                x: x_rows,
                columns,
                out,
                i,
                o,
                tiled,
            });
        }
    });
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
    let tiled = tiled_columns(o);
    // dW = xᵀ · dY, split over the inputs (dW's rows)
    let mut dw = crate::zeros(i * o);
    let dy_tail = (tiled < o).then(|| padded_tail(grad.storage(), (n, o), tiled));
    let x_values: &[f32] = x.storage();
    let arch = pulp::Arch::new();
    split_rows(&mut dw, o, n * i * o, &|dw, first| {
        let rows = dw.len() / o;
        product(
            MatMut::from_row_major_slice_mut(dw, rows, o).subcols_mut(0, tiled),
            Accum::Replace,
            row_major(&x, n, i).transpose().subrows(first, rows),
            dy.subcols(0, tiled),
        );
        if let Some(dy_tail) = &dy_tail {
            arch.dispatch(TailWeightGradient {
                x: x_values,
                dy: dy_tail,
                dw,
                first,
                shape: (n, i, o),
                tiled,
            });
        }
    });
    // db = Σ over the batch of dY's rows
    let mut db = vec![0f32; o];
    for row in grad.storage::<f32>().chunks_exact(o) {
        db.iter_mut().zip(row).for_each(|(b, &g)| *b += g);
    }
    // dx = dY · Wᵀ, split over the batch
    let dx = input_grad.then(|| {
        let mut dx = crate::zeros(n * i);
        let weight_t = row_major(&weight, i, o).transpose();
        split_rows(&mut dx, i, n * i * o, &|dx, first| {
            let rows = dx.len() / i;
            product(
                MatMut::from_row_major_slice_mut(dx, rows, i),
                Accum::Replace,
                dy.subrows(first, rows),
                weight_t,
            );
        });
        tensor(dx, &[n, i])
    });
    (dx, tensor(dw, &[i, o]), tensor(db, &[o]))
}

/// Columns of the tail that [`tiled_columns`] leaves out, computed together:
/// the tail is zero-padded to a multiple of this.
const TAIL_GROUP: usize = 4;

/// Rows of `x` (forward) or vectors of inputs (weight gradient) computed
/// together with one [`TAIL_GROUP`] of columns: 4 x 4 vectors of partial
/// sums, which stay in 16 of AVX-512's 32 registers. Written with plain
/// arrays of lanes instead of pulp's vector types, the compiler kept the
/// sums in memory (and the step got slower than with one dot product at a
/// time).
const TAIL_BLOCK: usize = 4;

/// `out[:, tiled..] += x · W[:, tiled..]` for some rows of `x` and `out`:
/// the output columns that [`tiled_columns`] leaves out, as dot products of
/// the rows of `x` with those columns of `W` (copied out as rows by
/// [`tail_columns`]). Each pass reads [`TAIL_BLOCK`] rows and a group of
/// columns, and keeps their 16 sums in registers: a product that loads two
/// values per multiply-add (one row, one column) was bound by the loads.
struct TailOutput<'a> {
    /// Rows of the input, `[rows, i]`.
    x: &'a [f32],
    /// From [`tail_columns`].
    columns: &'a [f32],
    /// The same rows of the output, `[rows, o]`.
    out: &'a mut [f32],
    i: usize,
    o: usize,
    tiled: usize,
}

impl pulp::WithSimd for TailOutput<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let (i, o, tiled) = (self.i, self.o, self.tiled);
        let rows = self.x.len() / i;
        let mut first = 0;
        while first < rows {
            let block = if rows - first >= TAIL_BLOCK {
                TAIL_BLOCK
            } else {
                1
            };
            for (g, columns) in self.columns.chunks_exact(TAIL_GROUP * i).enumerate() {
                let columns: [&[f32]; TAIL_GROUP] =
                    std::array::from_fn(|c| &columns[c * i..(c + 1) * i]);
                let row = |r: usize| &self.x[(first + r) * i..(first + r + 1) * i];
                let used = (o - tiled - g * TAIL_GROUP).min(TAIL_GROUP);
                let mut add = |r: usize, sums: [f32; TAIL_GROUP]| {
                    let at = (first + r) * o + tiled + g * TAIL_GROUP;
                    for (value, sum) in self.out[at..at + used].iter_mut().zip(sums) {
                        *value += sum;
                    }
                };
                if block == TAIL_BLOCK {
                    let sums = block_dots::<S, TAIL_BLOCK>(simd, std::array::from_fn(row), columns);
                    sums.into_iter().enumerate().for_each(|(r, s)| add(r, s));
                } else {
                    add(0, block_dots::<S, 1>(simd, [row(0)], columns)[0]);
                }
            }
            first += block;
        }
    }
}

/// The columns of `w` (`[i, o]`) from `tiled` on, each as a row, zero rows
/// added up to a multiple of [`TAIL_GROUP`].
fn tail_columns(w: &[f32], (i, o): (usize, usize), tiled: usize) -> Vec<f32> {
    let groups = (o - tiled).div_ceil(TAIL_GROUP);
    let mut columns = vec![0f32; groups * TAIL_GROUP * i];
    for (c, column) in (tiled..o).zip(columns.chunks_exact_mut(i)) {
        for (to, &from) in column.iter_mut().zip(w[c..].iter().step_by(o)) {
            *to = from;
        }
    }
    columns
}

/// The `R x TAIL_GROUP` dot products of `R` rows with a group of columns, all
/// of the same length, in one vector of partial sums each.
#[inline(always)]
fn block_dots<S: pulp::Simd, const R: usize>(
    simd: S,
    rows: [&[f32]; R],
    columns: [&[f32]; TAIL_GROUP],
) -> [[f32; TAIL_GROUP]; R] {
    let x: [_; R] = std::array::from_fn(|r| S::as_simd_f32s(rows[r]));
    let w: [_; TAIL_GROUP] = std::array::from_fn(|c| S::as_simd_f32s(columns[c]));
    let len = w[0].0.len();
    // Cut to one length, so that the loop below checks no bounds.
    let xv: [&[S::f32s]; R] = std::array::from_fn(|r| &x[r].0[..len]);
    let wv: [&[S::f32s]; TAIL_GROUP] = std::array::from_fn(|c| &w[c].0[..len]);
    let mut sums = [[simd.splat_f32s(0.0); TAIL_GROUP]; R];
    for k in 0..len {
        for r in 0..R {
            for c in 0..TAIL_GROUP {
                sums[r][c] = simd.mul_add_e_f32s(xv[r][k], wv[c][k], sums[r][c]);
            }
        }
    }
    let mut dots = [[0f32; TAIL_GROUP]; R];
    for r in 0..R {
        for c in 0..TAIL_GROUP {
            let rest: f32 = x[r].1.iter().zip(w[c].1).map(|(a, b)| a * b).sum();
            dots[r][c] = simd.reduce_sum_f32s(sums[r][c]) + rest;
        }
    }
    dots
}

/// `dW[first.., tiled..] = xᵀ · dY[:, tiled..]` for some rows of `dW` (a
/// range of inputs): the weight gradient's columns that [`tiled_columns`]
/// leaves out, as sums over the batch of `dY[b, c] · x[b]`. Each pass over
/// the batch keeps the sums of [`TAIL_BLOCK`] vectors of inputs for a group
/// of columns in registers.
struct TailWeightGradient<'a> {
    /// The whole input, `[n, i]`.
    x: &'a [f32],
    /// `dY`'s tail columns, from [`padded_tail`].
    dy: &'a [f32],
    /// Rows `first..` of the weight gradient, `[rows, o]`.
    dw: &'a mut [f32],
    first: usize,
    shape: (usize, usize, usize),
    tiled: usize,
}

impl pulp::WithSimd for TailWeightGradient<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let lanes = std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
        let wide = TAIL_BLOCK * lanes;
        let (n, i, o) = self.shape;
        let padded = self.dy.len() / n;
        let width = self.dw.len() / o;
        let rows = || self.x.chunks_exact(i).zip(self.dy.chunks_exact(padded));
        for g in 0..padded / TAIL_GROUP {
            let used = (o - self.tiled - g * TAIL_GROUP).min(TAIL_GROUP);
            let column = |c: usize| self.tiled + g * TAIL_GROUP + c;
            let mut k = 0;
            while k + wide <= width {
                let from = self.first + k;
                let mut sums = [[simd.splat_f32s(0.0); TAIL_BLOCK]; TAIL_GROUP];
                for (x_row, dy_row) in rows() {
                    let x = S::as_simd_f32s(&x_row[from..from + wide]).0;
                    for (c, sums) in sums.iter_mut().enumerate() {
                        let g_value = simd.splat_f32s(dy_row[g * TAIL_GROUP + c]);
                        for (sum, &x) in sums.iter_mut().zip(x) {
                            *sum = simd.mul_add_e_f32s(g_value, x, *sum);
                        }
                    }
                }
                for (c, sums) in sums.iter().enumerate().take(used) {
                    // Room for 4 vectors of AVX-512's 16 lanes, the widest.
                    let mut values = [0f32; TAIL_BLOCK * 16];
                    let values = &mut values[..wide];
                    for (to, &sum) in values.chunks_exact_mut(lanes).zip(sums) {
                        simd.partial_store_f32s(to, sum);
                    }
                    for (l, &value) in values.iter().enumerate() {
                        self.dw[(k + l) * o + column(c)] = value;
                    }
                }
                k += wide;
            }
            for k in k..width {
                for c in 0..used {
                    let sum = rows()
                        .map(|(x_row, dy_row)| dy_row[g * TAIL_GROUP + c] * x_row[self.first + k])
                        .sum();
                    self.dw[k * o + column(c)] = sum;
                }
            }
        }
    }
}

/// The columns of `dy` (`[n, o]`) from `tiled` on, row by row, each row
/// zero-padded to a multiple of [`TAIL_GROUP`].
fn padded_tail(dy: &[f32], (n, o): (usize, usize), tiled: usize) -> Vec<f32> {
    let padded = (o - tiled).div_ceil(TAIL_GROUP) * TAIL_GROUP;
    let mut tail = vec![0f32; n * padded];
    for (to, from) in tail.chunks_exact_mut(padded).zip(dy.chunks_exact(o)) {
        to[..o - tiled].copy_from_slice(&from[tiled..]);
    }
    tail
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
        // Split across the cores (over SERIAL_WORK multiply-adds) at rows
        // that are not halves, with tail columns and an input gradient.
        check(&device, 300, 700, 20, true, true);
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
