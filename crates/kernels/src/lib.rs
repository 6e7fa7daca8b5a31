//! Faster CPU kernels for Burn's flex backend, plugged in through Burn's
//! backend extensions (no fork of Burn): a trait marked
//! `#[backend_extension(Flex, Autodiff)]`, implemented on flex's raw
//! buffers, with an `Autodiff` implementation that records the backward pass.
//!
//! The public functions ([`conv2d`], [`linear`], [`max_pool_2x2`],
//! [`batch_norm_train`], [`batch_norm_relu_train`], [`batch_norm_gelu_train`], [`batch_norm_activated_train`], [`relu`], [`gelu`], [`sgd_momentum_step`]) take and return ordinary
//! tensors: on flex (plain or autodiff) they run the kernel, on every other
//! backend Burn's own operation, so models stay portable and results agree.
//!
//! Measured in the project's BENCHMARKS.md ("CPU speed").

mod activation;
mod bf16;
mod conv;
mod linear;
mod norm;
mod pool;
mod sgd;

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::prelude::*;
use burn_autodiff::NodeId;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// Whether `device` is flex, plain or autodiff: where the kernels run.
fn on_flex(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

/// Values summed side by side in [`lane_sums`]: four vectors of SSE, one of
/// AVX-512.
pub const LANES: usize = 16;

/// `(Σ f(a[i], b[i]).0, Σ f(a[i], b[i]).1)` over two slices of the same
/// length, in [`LANES`] partial sums per total that the compiler keeps in
/// vector registers. A plain `iter().sum()` adds one value at a time, each
/// addition waiting for the previous one, because float addition is not
/// associative and the compiler may not reorder it; the partial sums
/// reorder it on purpose (the earlier kernel summed that way, or in f64,
/// and its passes took 2-4 times as long).
#[inline(always)]
pub fn lane_sums(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    lane_sums3(a, b, b, |a, b, _| f(a, b))
}

/// As [`lane_sums`], over three slices of the same length.
#[inline(always)]
pub fn lane_sums3(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f32, f32) {
    assert!(
        a.len() == b.len() && b.len() == c.len(),
        "summed slices' lengths"
    );
    let (mut first, mut second) = ([0f32; LANES], [0f32; LANES]);
    let (a_chunks, b_chunks) = (a.as_chunks::<LANES>(), b.as_chunks::<LANES>());
    let c_chunks = c.as_chunks::<LANES>();
    for ((a, b), c) in a_chunks.0.iter().zip(b_chunks.0).zip(c_chunks.0) {
        for l in 0..LANES {
            let (u, v) = f(a[l], b[l], c[l]);
            first[l] += u;
            second[l] += v;
        }
    }
    let rest = a_chunks.1.iter().zip(b_chunks.1).zip(c_chunks.1);
    for (l, ((&a, &b), &c)) in rest.enumerate() {
        let (u, v) = f(a, b, c);
        first[l] += u;
        second[l] += v;
    }
    (first.iter().sum(), second.iter().sum())
}

/// `Σ a[i]` in [`LANES`] partial sums (see [`lane_sums`]).
#[inline(always)]
fn lane_sum(a: &[f32]) -> f32 {
    lane_sums(a, a, |v, _| (v, 0.0)).0
}

/// Two tasks' (weight, bias) gradient sums added up.
pub(crate) fn add_gradients(
    (mut weight, mut bias): (Vec<f32>, Vec<f32>),
    (other_weight, other_bias): (Vec<f32>, Vec<f32>),
) -> (Vec<f32>, Vec<f32>) {
    weight
        .iter_mut()
        .zip(&other_weight)
        .for_each(|(a, b)| *a += b);
    bias.iter_mut().zip(&other_bias).for_each(|(a, b)| *a += b);
    (weight, bias)
}

/// The `n` values of a contiguous tensor.
fn values(x: &FlexTensor) -> &[f32] {
    let (start, n) = (x.layout().start_offset(), x.layout().num_elements());
    &x.storage()[start..start + n]
}

/// `x` laid out contiguously from the start of its buffer, without a second
/// handle on that buffer. flex's `to_contiguous` takes `&self` and returns a
/// clone when the layout is already contiguous, so `let x =
/// x.to_contiguous()` keeps the shadowed original alive: the buffer then
/// looks shared, and every activation copied its operand before the
/// in-place pass (about 3% of the default CNN's training step).
fn contiguous(x: FlexTensor) -> FlexTensor {
    let whole = x.storage::<f32>().len() == x.layout().num_elements();
    if x.is_contiguous() && x.layout().start_offset() == 0 && whole {
        x
    } else {
        x.to_contiguous()
    }
}

/// `x` as one contiguous buffer that it alone owns, for a kernel to write
/// into: `x` itself when it already is (no copy), a copy of its values
/// otherwise (a buffer another tensor shares must not change).
fn owned(x: FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    if x.is_unique() && x.layout().start_offset() == 0 {
        return x;
    }
    FlexTensor::from_data(TensorData::new(
        values(&x).to_vec(),
        x.layout().shape().to_vec(),
    ))
}

/// `n` zeros, written by all cores.
///
/// `vec![0; n]` of a large buffer that the allocator reuses is one `memset`
/// on the calling thread while the other cores wait (5-6% of the default
/// CNN's training step in a `perf` profile, all of it in mimalloc's zeroing
/// of reused pages). rayon's `par_extend` writes the zeros into the
/// buffer's reserved capacity from every core instead. Small buffers keep
/// `vec!`, whose one call costs less than waking the cores.
fn zeros<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    const SERIAL: usize = 1 << 16;
    if n < SERIAL {
        return vec![T::default(); n];
    }
    let mut values = Vec::with_capacity(n);
    values.par_extend(rayon::iter::repeat_n(T::default(), n));
    values
}

/// `n` values written in full by `write`, into a buffer that is not zeroed
/// first.
///
/// An output computed value by value from its inputs (batch norm's, a
/// shifted convolution's copy-out) was written twice with [`zeros`]: once
/// with zeros, once with its values. On VGG the zeroing of those buffers
/// was about 4% of a step, all of it memory traffic (BENCHMARKS.md, "Ninth
/// round").
///
/// # Safety
///
/// `write` must initialize every one of the `n` values it is given
/// (`MaybeUninit::write`, `write_copy_of_slice`) before it returns. When it
/// panics instead, nothing is read: the buffer is freed as empty.
#[allow(unsafe_code)]
unsafe fn written<T>(n: usize, write: impl FnOnce(&mut [std::mem::MaybeUninit<T>])) -> Vec<T> {
    let mut values = Vec::with_capacity(n);
    write(&mut values.spare_capacity_mut()[..n]);
    // SAFETY: the first `n` values are initialized: the caller's promise.
    unsafe { values.set_len(n) };
    values
}

/// Planes per parallel task for a kernel that works plane by plane on
/// planes of `per_plane` values: tasks of about 16k values, small enough to
/// spread over the cores, large enough that scheduling costs nothing.
fn planes_per_task(per_plane: usize) -> usize {
    (16384 / per_plane.max(1)).max(1)
}

/// `values` as the initialized values they are, once a kernel has written
/// every one of them.
///
/// # Safety
///
/// Every value of `values` must have been written.
#[allow(unsafe_code)]
unsafe fn assume_written(values: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller
    // promises that every value is initialized.
    unsafe { &mut *(values as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// A layer whose backward pass yields its input, weight and bias gradients
/// from what it saved of the forward pass: the convolution and the linear
/// layer. [`WithBias`] and [`NoBias`] turn one into Burn's `Backward` for
/// the layer with and without bias.
trait AffineBackward<B: Backend>: Send + std::fmt::Debug + 'static {
    /// What the forward pass keeps for the backward.
    type State: Clone + Send + std::fmt::Debug + 'static;

    /// The input gradient (only when `input_grad`), the weight gradient and
    /// the bias gradient, from the output's gradient `grad`.
    fn gradients(
        state: Self::State,
        grad: FloatTensor<B>,
        input_grad: bool,
    ) -> (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>);
}

/// The backward pass of layer `L` with a bias: three parents.
#[derive(Debug)]
struct WithBias<L>(L);

/// The backward pass of layer `L` without bias: input and weight only.
#[derive(Debug)]
struct NoBias<L>(L);

impl<B: Backend, L: AffineBackward<B>> Backward<B, 3> for WithBias<L> {
    type State = L::State;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let ids = ops.parents.map(|node| node.map(|node| node.id));
        register_gradients::<B, L>(ops.state, grad, ids, grads);
    }
}

impl<B: Backend, L: AffineBackward<B>> Backward<B, 2> for NoBias<L> {
    type State = L::State;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_id, weight_id] = ops.parents.map(|node| node.map(|node| node.id));
        register_gradients::<B, L>(ops.state, grad, [x_id, weight_id, None], grads);
    }
}

/// Runs `L`'s backward on the output's gradient `grad` and registers each
/// gradient whose parent asked for one (an input gradient is computed only
/// when asked; a missing bias has no id).
fn register_gradients<B: Backend, L: AffineBackward<B>>(
    state: L::State,
    grad: FloatTensor<B>,
    ids: [Option<NodeId>; 3],
    grads: &mut Gradients,
) {
    let (dx, dweight, dbias) = L::gradients(state, grad, ids[0].is_some());
    for (id, gradient) in ids.into_iter().zip([dx, Some(dweight), Some(dbias)]) {
        if let (Some(id), Some(gradient)) = (id, gradient) {
            grads.register::<B>(id, gradient);
        }
    }
}

pub use activation::{ActivationKernels, gelu, relu};
pub use bf16::{
    Bf16Unavailable, MatmulPrecision, bf16_available, matmul_precision, round_to_bf16,
    set_matmul_precision,
};
pub use conv::{ConvKernels, conv2d};
pub use linear::{LinearKernels, linear};
pub use norm::{
    BatchNormTrained, FusedActivation, NormKernels, batch_norm_activated_train,
    batch_norm_gelu_train, batch_norm_relu_train, batch_norm_train,
};
pub use pool::{PoolKernels, max_pool_2x2};
pub use sgd::{SgdKernels, SgdStep, sgd_momentum_step};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_has_the_asked_length_on_both_sides_of_the_serial_limit() {
        for n in [0, 1, 65_535, 65_536, 65_537, 1_000_003] {
            let values = zeros::<f32>(n);
            assert_eq!(values.len(), n);
            assert!(values.iter().all(|&v| v == 0.0), "{n} values");
        }
        assert!(zeros::<i64>(70_000).iter().all(|&v| v == 0));
    }
}
