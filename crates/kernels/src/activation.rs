//! ReLU and GELU, forward and backward, on every core.
//!
//! burn-flex applies its activations on one core, GELU through a scalar
//! `erff` call per value; in the recipe network (`--model airbench`) GELU
//! took about a quarter of the training step. Here each pass is one loop
//! over chunks spread across the cores, in branch-free arithmetic that the
//! compiler turns into vector instructions: the normal CDF from a rational
//! approximation of `erfc` and an exponential from a polynomial, both to a
//! few units in the last place of f32 (checked against Burn below).

use crate::{contiguous, owned, values};
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// ReLU and GELU with their backward passes, as a backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait ActivationKernels: Backend {
    /// `max(x, 0)`, any shape.
    fn relu_all_cores(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x Φ(x)` (the exact, erf-based GELU), any shape.
    fn gelu_all_cores(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `grad` where `output > 0`, zero elsewhere.
    fn relu_backward_all_cores(
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `grad · (Φ(x) + x φ(x))`.
    fn gelu_backward_all_cores(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// ReLU of `x`, as Burn's [`relu`](burn::tensor::activation::relu): the
/// multi-core kernel on flex (f32), Burn's operation elsewhere.
///
/// # Shapes
///
/// - `x`: any; output: the same
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if crate::on_flex(&x.device()) && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as ActivationKernels>::relu_all_cores(
            x.into_dispatch(),
        ))
    } else {
        burn::tensor::activation::relu(x)
    }
}

/// GELU of `x`, `x Φ(x)` with `Φ` the standard normal CDF, as Burn's
/// [`gelu`](burn::tensor::activation::gelu): the multi-core kernel on flex
/// (f32), Burn's operation elsewhere.
///
/// # Shapes
///
/// - `x`: any; output: the same
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if crate::on_flex(&x.device()) && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as ActivationKernels>::gelu_all_cores(
            x.into_dispatch(),
        ))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

/// Values per parallel task: large enough that scheduling is free, small
/// enough that both cores get work on the smallest activations.
const CHUNK: usize = 1 << 14;

/// A function of one value and, for two-operand passes, its partner in a
/// second tensor (0 otherwise), applied value by value by [`update`].
///
/// A trait with an `#[inline(always)]` method rather than a closure: the
/// compiler may decline to inline a large closure (GELU's slope: two
/// exponentials and a division) into the vector loop, which then calls it
/// once per value in scalar code. A `perf` profile of the recipe network's
/// step found exactly that: GELU's backward, scalar, at 14% of the step
/// (BENCHMARKS.md, "Fifth round").
trait Pointwise: Copy + Send + Sync {
    fn apply(self, value: f32, other: f32) -> f32;
}

/// `max(x, 0)`.
#[derive(Clone, Copy)]
struct Relu;

impl Pointwise for Relu {
    #[inline(always)]
    fn apply(self, x: f32, _: f32) -> f32 {
        x.max(0.0)
    }
}

/// `x Φ(x)`.
#[derive(Clone, Copy)]
struct Gelu;

impl Pointwise for Gelu {
    #[inline(always)]
    fn apply(self, x: f32, _: f32) -> f32 {
        gelu_value(x)
    }
}

/// The gradient where ReLU's output (the partner) is positive.
#[derive(Clone, Copy)]
struct ReluBackward;

impl Pointwise for ReluBackward {
    #[inline(always)]
    fn apply(self, grad: f32, output: f32) -> f32 {
        if output > 0.0 { grad } else { 0.0 }
    }
}

/// GELU's slope at the input times the gradient (the partner): as
/// [`GeluBackward`], the operands the other way round.
#[derive(Clone, Copy)]
struct SlopeTimesGradient;

impl Pointwise for SlopeTimesGradient {
    #[inline(always)]
    fn apply(self, x: f32, grad: f32) -> f32 {
        grad * gelu_slope(x)
    }
}

/// The gradient times GELU's slope at the input (the partner).
#[derive(Clone, Copy)]
struct GeluBackward;

impl Pointwise for GeluBackward {
    #[inline(always)]
    fn apply(self, grad: f32, x: f32) -> f32 {
        grad * gelu_slope(x)
    }
}

/// One task's loop for [`pulp::Arch::dispatch`]: `values[i] = f(values[i],
/// others[i])` (`f(values[i], 0)` without `others`), compiled for the CPU's
/// widest vector instructions (AVX-512 where there is one; pulp's run-time
/// dispatch, as in faer).
struct Task<'a, F> {
    values: &'a mut [f32],
    others: Option<&'a [f32]>,
    f: F,
}

impl<F: Pointwise> pulp::WithSimd for Task<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let f = self.f;
        match self.others {
            Some(others) => {
                for (v, &o) in self.values.iter_mut().zip(others) {
                    *v = f.apply(*v, o);
                }
            }
            None => self.values.iter_mut().for_each(|v| *v = f.apply(*v, 0.0)),
        }
    }
}

/// `values[i] = f(values[i], others[i])` (`f(values[i], 0)` without
/// `others`) over all cores, each task's loop a [`Task`].
fn update<F: Pointwise>(values: &mut [f32], others: Option<&[f32]>, f: F) {
    let arch = pulp::Arch::new();
    match others {
        Some(others) => {
            assert_eq!(values.len(), others.len(), "elementwise operands' sizes");
            values
                .par_chunks_mut(CHUNK)
                .zip(others.par_chunks(CHUNK))
                .for_each(|(values, others)| {
                    let others = Some(others);
                    arch.dispatch(Task { values, others, f })
                });
        }
        None => values.par_chunks_mut(CHUNK).for_each(|values| {
            arch.dispatch(Task {
                values,
                others: None,
                f,
            })
        }),
    }
}

/// `values[i] = gelu(values[i])` on the calling thread, in vector
/// instructions: for kernels that apply GELU inside their own parallel
/// tasks (batch norm's).
pub(crate) fn gelu_in_place(arch: pulp::Arch, values: &mut [f32]) {
    let f = Gelu;
    arch.dispatch(Task {
        values,
        others: None,
        f,
    })
}

/// `inputs[i] = grad[i] · gelu'(inputs[i])`, GELU's backward from its
/// input, on the calling thread, in vector instructions (as
/// [`gelu_in_place`]).
pub(crate) fn gelu_backward_in_place(arch: pulp::Arch, inputs: &mut [f32], grad: &[f32]) {
    assert_eq!(inputs.len(), grad.len(), "GELU input and gradient sizes");
    let f = SlopeTimesGradient;
    arch.dispatch(Task {
        values: inputs,
        others: Some(grad),
        f,
    })
}

/// `f(y[i], x[i])` for every value, written into `y`'s buffer when `y` owns
/// it (a fresh buffer otherwise).
fn zip_into_second(x: FlexTensor, y: FlexTensor, f: impl Pointwise) -> FlexTensor {
    let (x, mut y) = (contiguous(x), owned(y));
    let n = x.layout().num_elements();
    assert_eq!(y.layout().num_elements(), n, "elementwise operands' sizes");
    update(&mut y.storage_mut::<f32>()[..n], Some(values(&x)), f);
    y
}

/// `f` applied to every value of `x`, in place when `x` owns its buffer.
fn map(x: FlexTensor, f: impl Pointwise) -> FlexTensor {
    let mut x = owned(x);
    let n = x.layout().num_elements();
    update(&mut x.storage_mut::<f32>()[..n], None, f);
    x
}

/// `e^x` for `x` in `[-87, 88]` (clamped outside), to about 2 units in the
/// last place: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, Cephes' `expf`
/// polynomial for `e^r`, and `2^n` built in the exponent bits.
///
/// `n` never passes through an integer conversion: `n as i32` is Rust's
/// saturating cast (NaN to 0, out of range to the nearest bound), which the
/// compiler does not vectorize, so each vector of 16 values went through 16
/// scalar conversions with their compares (a third of GELU's time in a
/// `perf` profile). The rounding sum `x log₂e + 1.5·2²³` already holds `n`
/// in its low mantissa bits, exactly, and integer arithmetic on its bits
/// vectorizes.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // `rounded`'s bits are those of 1.5·2²³ plus `n` (|n| ≤ 127, far
    // inside its 22 free mantissa bits): `n + 127`, the biased exponent
    // of `2^n`, is in 1..=254, a normal number.
    let biased = rounded
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    e * f32::from_bits(biased << 23)
}

/// `erfc(z)` for `z ≥ 0`, with fractional error under 1.2e-7 everywhere
/// (the Chebyshev fit `erfcc` of Numerical Recipes, section 6.2).
#[inline(always)]
fn erfc(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77_f32;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    t * exp(-z * z - 1.265_512_2 + p * t)
}

/// Beyond this distance from 0, `Φ(x)` is 0 or 1 to well within f32's
/// precision (`Φ(-10) ≈ 7.6e-24`): GELU is taken as exactly 0 or `x` there,
/// and its slope as 0 or 1. Computing the far tail instead would produce
/// subnormal numbers, which every later matrix product then multiplies at a
/// small fraction of its normal speed.
const SATURATED: f32 = 10.0;

/// The standard normal CDF `Φ(x)` for `|x| ≤` [`SATURATED`], from `erfc` of
/// `|x|/√2` so that the left tail keeps its relative precision.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let tail = 0.5 * erfc(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x < 0.0 { tail } else { 1.0 - tail }
}

#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    let inside = x.clamp(-SATURATED, SATURATED);
    let value = inside * normal_cdf(inside);
    if x < -SATURATED {
        0.0
    } else if x > SATURATED {
        x
    } else {
        value
    }
}

#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let inside = x.clamp(-SATURATED, SATURATED);
    let slope = normal_cdf(inside) + inside * INV_SQRT_2PI * exp(-0.5 * inside * inside);
    if x < -SATURATED {
        0.0
    } else if x > SATURATED {
        1.0
    } else {
        slope
    }
}

impl ActivationKernels for Flex {
    fn relu_all_cores(x: FloatTensor<Self>) -> FloatTensor<Self> {
        map(x, Relu)
    }

    fn gelu_all_cores(x: FloatTensor<Self>) -> FloatTensor<Self> {
        map(x, Gelu)
    }

    fn relu_backward_all_cores(
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        zip_into_second(output, grad, ReluBackward)
    }

    fn gelu_backward_all_cores(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        zip_into_second(x, grad, GeluBackward)
    }
}

impl<B: Backend + ActivationKernels, C: CheckpointStrategy> ActivationKernels for Autodiff<B, C> {
    fn relu_all_cores(x: FloatTensor<Self>) -> FloatTensor<Self> {
        /// The backward pass: the gradient where the output is positive.
        #[derive(Debug)]
        struct Relu;

        impl<B: Backend + ActivationKernels> Backward<B, 1> for Relu {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let output = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::relu_backward_all_cores(output, grad)
                });
            }
        }

        let node = x.node();
        match Relu.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let output = B::relu_all_cores(x.into_primitive());
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::relu_all_cores(x.into_primitive())),
        }
    }

    fn gelu_all_cores(x: FloatTensor<Self>) -> FloatTensor<Self> {
        /// The backward pass: the gradient times GELU's slope at the input.
        #[derive(Debug)]
        struct Gelu;

        impl<B: Backend + ActivationKernels> Backward<B, 1> for Gelu {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let input = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::gelu_backward_all_cores(input, grad)
                });
            }
        }

        let node = x.node();
        match Gelu.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                let output = B::gelu_all_cores(input.clone());
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_all_cores(x.into_primitive())),
        }
    }

    fn relu_backward_all_cores(
        output: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // Not differentiable itself: used by the backward pass above.
        let dx = B::relu_backward_all_cores(output.into_primitive(), grad.into_primitive());
        <Self as AutodiffBackend>::from_inner(dx)
    }

    fn gelu_backward_all_cores(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let dx = B::gelu_backward_all_cores(x.into_primitive(), grad.into_primitive());
        <Self as AutodiffBackend>::from_inner(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_the_tensor_owns_is_updated_in_place_and_a_shared_one_is_not() {
        let x = FlexTensor::from_data(TensorData::new(vec![-1.0f32, 2.0, -3.0, 4.0], [2, 2]));
        let buffer = x.storage::<f32>().as_ptr();
        let y = map(x, Relu);
        assert_eq!(y.storage::<f32>(), &[0.0, 2.0, 0.0, 4.0]);
        assert_eq!(
            y.storage::<f32>().as_ptr(),
            buffer,
            "ReLU copied an owned buffer"
        );

        let grad = FlexTensor::from_data(TensorData::new(vec![5.0f32, 6.0, 7.0, 8.0], [2, 2]));
        let kept = grad.clone();
        let dx = zip_into_second(y, grad, ReluBackward);
        assert_eq!(dx.storage::<f32>(), &[0.0, 6.0, 0.0, 8.0]);
        assert_eq!(
            kept.storage::<f32>(),
            &[5.0, 6.0, 7.0, 8.0],
            "a shared buffer changed"
        );
    }

    /// Largest difference between `a` and `b`, relative to `b`'s largest
    /// value when that is above 1, absolute otherwise. Burn's GELU,
    /// `x (1 + erf(x/√2)) / 2`, loses its relative precision in the left
    /// tail (`1 + erf` cancels), so a single small value (the `[1, 1, 1, 1]`
    /// case: its draw depends on which other tests share the process-wide
    /// seed) can only be compared absolutely.
    fn relative_gap(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let a: Vec<f32> = a.into_data().try_to_vec().unwrap();
        let b: Vec<f32> = b.into_data().try_to_vec().unwrap();
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Values spread over GELU's whole range, both tails included, and
    /// exact zeros (where ReLU's gradient switches).
    fn input(shape: [usize; 4], device: &Device) -> Tensor<4> {
        let x = Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 3.0), device);
        let zeros = Tensor::<4>::random(shape, burn::tensor::Distribution::Bernoulli(0.1), device);
        x.mask_fill(zeros.equal_elem(1.0), 0.0)
    }

    /// Forward values and input gradients of `ours` and `reference` agree to
    /// `tolerance` of the largest value, with a gradient that differs per value.
    fn same_as_burn(
        ours: fn(Tensor<4>) -> Tensor<4>,
        reference: fn(Tensor<4>) -> Tensor<4>,
        tolerance: f32,
    ) {
        let device = Device::flex().autodiff();
        device.seed(17);
        // Odd sizes, a single value, and more values than one task's chunk.
        for shape in [[3, 5, 7, 9], [1, 1, 1, 1], [2, 8, 33, 31]] {
            let x = input(shape, &device).require_grad();
            let weights = Tensor::<4>::random(shape, burn::tensor::Distribution::Default, &device);
            let (a, b) = (ours(x.clone()), reference(x.clone()));
            let forward = relative_gap(a.clone(), b.clone());
            assert!(forward < tolerance, "forward {shape:?}: {forward}");
            let ga = x.grad(&(a * weights.clone()).sum().backward()).unwrap();
            let gb = x.grad(&(b * weights).sum().backward()).unwrap();
            let backward = relative_gap(ga, gb);
            assert!(backward < tolerance, "backward {shape:?}: {backward}");
        }
    }

    #[test]
    fn relu_equals_burns_exactly() {
        same_as_burn(relu, burn::tensor::activation::relu, 1e-12);
    }

    #[test]
    fn gelu_and_its_gradient_equal_burns() {
        same_as_burn(gelu, burn::tensor::activation::gelu, 1e-6);
    }

    #[test]
    fn gelu_matches_reference_values() {
        // x Φ(x) = x erfc(-x/√2) / 2 in double precision (Python's math.erfc).
        let cases = [
            (-6.0f32, -5.919_525_9e-9_f32),
            (-3.0, -4.049_694e-3),
            (-1.0, -0.158_655_25),
            (-0.5, -0.154_268_77),
            (0.0, 0.0),
            (0.5, 0.345_731_23),
            (1.0, 0.841_344_8),
            (3.0, 2.995_950_3),
            (10.0, 10.0),
        ];
        for (x, want) in cases {
            let got = gelu_value(x);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "gelu({x}) = {got}, want {want}"
            );
        }
        // The left tail keeps its relative precision.
        assert!((gelu_value(-6.0) / -5.919_525_9e-9 - 1.0).abs() < 1e-5);
    }

    #[test]
    fn exponential_is_within_a_few_units_in_the_last_place_of_f64s() {
        // Every 1/64 across the whole range, both ends (2^-126 and 2^127
        // built in the exponent bits) included, against Rust's f64 `exp`.
        let mut worst = 0f64;
        for i in -87 * 64..=88 * 64 {
            let x = i as f32 / 64.0;
            let want = (x as f64).exp();
            let error = (exp(x) as f64 - want).abs() / want;
            worst = worst.max(error);
        }
        // 2 units in the last place of f32: 2 · 2^-24 relative, about 1.2e-7.
        assert!(worst < 2.4e-7, "largest relative error {worst:e}");
        // Clamped outside the range, never infinite or zero.
        assert_eq!(exp(1000.0), exp(88.0));
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(88.0).is_finite() && exp(-87.0).is_normal());
    }

    #[test]
    fn far_tails_give_exact_zeros_and_ones_never_subnormals() {
        for x in [-1e30f32, -300.0, -20.0, -12.0, -10.5, 10.5, 20.0, 1e30] {
            let (value, slope) = (gelu_value(x), gelu_slope(x));
            assert!(value == 0.0 || value.is_normal(), "gelu({x}) = {value:e}");
            assert!(slope == 0.0 || slope.is_normal(), "slope({x}) = {slope:e}");
            let (want, want_slope) = if x < 0.0 { (0.0, 0.0) } else { (x, 1.0) };
            assert_eq!((value, slope), (want, want_slope), "at {x}");
        }
        // Inside the range, every value and slope is normal (or zero at 0).
        for i in -1000..=1000 {
            let x = i as f32 / 100.0;
            for v in [gelu_value(x), gelu_slope(x)] {
                assert!(v == 0.0 || v.is_normal(), "at {x}: {v:e}");
            }
        }
    }

    #[test]
    fn plain_flex_and_other_backends_agree_with_burn() {
        #[allow(deprecated)]
        for device in [Device::flex(), Device::ndarray()] {
            let x = input([2, 3, 4, 5], &device);
            let gap = relative_gap(gelu(x.clone()), burn::tensor::activation::gelu(x.clone()));
            assert!(gap < 1e-6, "{device:?}: {gap}");
            relu(x.clone())
                .into_data()
                .assert_eq(&burn::tensor::activation::relu(x).into_data(), true);
        }
    }
}
