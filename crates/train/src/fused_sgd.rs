//! SGD with momentum (plain or Nesterov) and L2 weight decay, each
//! parameter's step one pass of [`cifar_kernels::sgd_momentum_step`] on
//! flex (Burn's tensor operations elsewhere).
//!
//! A drop-in for Burn's `Sgd` with momentum and no dampening: the same
//! arithmetic in the same order, so the same weights step by step, and the
//! same state under the same names (`momentum.velocity`), so checkpoints
//! written by either load into the other.

use burn::optim::{
    LearningRate, ModuleOptimizer, Optimizer, RecordState, StateSink, StateSource, join_path,
};
use burn::prelude::*;
use cifar_kernels::SgdStep;

/// The optimizer: momentum μ, weight decay and Nesterov's look-ahead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedSgd {
    /// The velocity's decay μ.
    pub momentum: f64,
    /// The L2 penalty (0 for none).
    pub weight_decay: f64,
    /// Nesterov's look-ahead.
    pub nesterov: bool,
}

impl FusedSgd {
    /// As a [`ModuleOptimizer`], the type the trainer and checkpoints use.
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// A parameter's state: its velocity, the running sum of (decayed)
/// gradients. Recorded as `momentum.velocity`, the name Burn's `SgdState`
/// gives it.
#[derive(Clone)]
pub struct FusedSgdState<const D: usize> {
    /// None until the first step.
    pub velocity: Option<Tensor<D>>,
}

impl<const D: usize> RecordState for FusedSgdState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(velocity) = &self.velocity {
            out.push_tensor(
                &join_path(prefix, "momentum"),
                "velocity",
                velocity.to_data(),
            );
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let velocity = src
            .take_tensor(&join_path(prefix, "momentum"), "velocity")
            .map(|data| Tensor::from_data(data, device));
        Some(Self { velocity })
    }
}

impl Optimizer for FusedSgd {
    type State<const D: usize> = FusedSgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let velocity = state.and_then(|s| s.velocity);
        let step = SgdStep {
            lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            nesterov: self.nesterov,
        };
        let (tensor, velocity) = cifar_kernels::sgd_momentum_step(tensor, grad, velocity, step);
        let state = FusedSgdState {
            velocity: Some(velocity),
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        FusedSgdState {
            velocity: state.velocity.map(|v| v.to_device(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{GradientsParams, SgdConfig};

    /// Burn's `Sgd` with the same settings.
    fn burn_sgd(optimizer: &FusedSgd) -> ModuleOptimizer {
        let decay = (optimizer.weight_decay > 0.0)
            .then(|| WeightDecayConfig::new(optimizer.weight_decay as f32));
        let momentum = MomentumConfig::new()
            .with_momentum(optimizer.momentum)
            .with_dampening(0.0)
            .with_nesterov(optimizer.nesterov);
        SgdConfig::new()
            .with_weight_decay(decay)
            .with_momentum(Some(momentum))
            .init()
    }

    /// Steps `first..last` of `optim` on `layer`, each on its own inputs
    /// (computed, not drawn: flex's random numbers are shared by the tests
    /// running in parallel) at its own learning rate; the weights after
    /// each step.
    fn train(
        optim: &mut ModuleOptimizer,
        mut layer: Linear,
        steps: std::ops::Range<usize>,
    ) -> (Linear, Vec<Vec<f32>>) {
        let device = layer.weight.device();
        let mut weights = Vec::new();
        for step in steps {
            let values = (0..8 * 40)
                .map(|i| ((i * 7 + step * 13) % 17) as f32 / 8.0 - 1.0)
                .collect::<Vec<_>>();
            let x = Tensor::<2>::from_data(TensorData::new(values, [8, 40]), &device);
            let loss = layer.forward(x).powi_scalar(2).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(0.01 * (step + 1) as f64, layer, grads);
            weights.push(layer.weight.val().into_data().try_to_vec::<f32>().unwrap());
        }
        (layer, weights)
    }

    /// Nesterov with decay, the default recipe's settings.
    const NESTEROV: FusedSgd = FusedSgd {
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: true,
    };

    #[test]
    fn steps_equal_burns_sgd_with_and_without_nesterov_and_decay() {
        let start = LinearConfig::new(40, 30).init(&Device::flex().autodiff());
        for (nesterov, weight_decay) in [(false, 0.0), (true, 0.0), (true, 5e-4), (false, 5e-2)] {
            let ours = FusedSgd {
                momentum: 0.9,
                weight_decay,
                nesterov,
            };
            // The clones share their weights' buffers with `start`, which
            // must not change: the step copies a shared buffer.
            let (_, fused) = train(&mut ours.init(), start.clone(), 0..4);
            let (_, reference) = train(&mut burn_sgd(&ours), start.clone(), 0..4);
            assert_eq!(
                fused, reference,
                "nesterov {nesterov}, weight decay {weight_decay}"
            );
        }
    }

    #[test]
    #[allow(deprecated)]
    fn other_backends_take_burns_operations_with_the_same_result() {
        let start = LinearConfig::new(40, 30).init(&Device::ndarray().autodiff());
        let (_, fused) = train(&mut NESTEROV.init(), start.clone(), 0..3);
        let (_, reference) = train(&mut burn_sgd(&NESTEROV), start, 0..3);
        assert_eq!(fused, reference);
    }

    #[test]
    fn the_velocity_carries_over_to_burns_sgd_and_back() {
        let start = LinearConfig::new(40, 30).init(&Device::flex().autodiff());
        let (_, reference) = train(&mut burn_sgd(&NESTEROV), start.clone(), 0..4);
        // Two steps with ours, then two with Burn's from our record.
        let mut fused = NESTEROV.init();
        let (middle, _) = train(&mut fused, start.clone(), 0..2);
        let mut burns = burn_sgd(&NESTEROV).load_record(fused.to_record());
        let (_, handed_over) = train(&mut burns, middle, 2..4);
        assert_eq!(handed_over, reference[2..]);
        // And the other way round.
        let mut burns = burn_sgd(&NESTEROV);
        let (middle, _) = train(&mut burns, start.clone(), 0..2);
        let mut fused = NESTEROV.init().load_record(burns.to_record());
        let (_, handed_back) = train(&mut fused, middle, 2..4);
        assert_eq!(handed_back, reference[2..]);
        // Without the velocity, the last two steps differ.
        let (middle, _) = train(&mut NESTEROV.init(), start, 0..2);
        let (_, forgetful) = train(&mut NESTEROV.init(), middle, 2..4);
        assert_ne!(forgetful, reference[2..]);
    }
}
