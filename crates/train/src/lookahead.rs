//! Lookahead of the weights (Zhang et al., 2019, "Lookahead Optimizer: k
//! steps forward, 1 step back"), scheduled as in the airbench94 record.
//!
//! Every [`Lookahead::EVERY`] steps the trained weights are pulled back to a
//! slow exponential average of themselves, and training goes on from the
//! average:
//!
//! ```text
//! average <- d · average + (1 - d) · w;   w <- average;   d = 0.95^5 · (t / T)^3
//! ```
//!
//! at step `t` of `T`. Early in the run `d` is near 0 and the pull does
//! nothing; as the rate anneals, the average reaches further back, which
//! smooths the end of the run as an EMA of the weights does, except that the
//! network evaluated and trained on is the average itself. Only trained
//! parameters take part: frozen ones (a whitening layer, a fixed batch norm
//! scale) and batch norm's running statistics are left as they are.
//! (airbench also averages the running statistics. Burn keeps a running
//! state's latest update pending per thread, and the next read replaces
//! the stored value with it, so a module mapper's write to that value
//! would not last past the next step.)

use std::collections::HashMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

/// The slow average of a module's trained parameters, flattened, by id.
#[derive(Clone)]
pub struct Lookahead {
    average: HashMap<ParamId, Tensor<1>>,
}

impl Lookahead {
    /// Steps between two pulls (airbench's 5).
    pub const EVERY: usize = 5;
    /// The decay per step at the end of the run (airbench's 0.95).
    pub const DECAY_PER_STEP: f64 = 0.95;

    /// An average that starts at `module`'s weights.
    pub fn new<M: Module>(module: &M) -> Self {
        /// Collects the trained parameters.
        struct Collect(HashMap<ParamId, Tensor<1>>);

        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if param.is_require_grad() {
                    self.0.insert(param.id, flat(param.val()));
                }
            }
        }

        let mut collect = Collect(HashMap::new());
        module.visit(&mut collect);
        Self { average: collect.0 }
    }

    /// Whether the pull is due once `done` of the run's `total` steps are
    /// done: every [`EVERY`](Self::EVERY) steps, and after the last one (so
    /// that the run ends on the average).
    pub fn is_due(done: usize, total: usize) -> bool {
        done > 0 && (done.is_multiple_of(Self::EVERY) || done == total)
    }

    /// The average's decay `d` once `done` of `total` steps are done:
    /// `0.95^5 · (done / total)^3`.
    pub fn decay(done: usize, total: usize) -> f64 {
        let progress = done as f64 / total.max(1) as f64;
        Self::DECAY_PER_STEP.powi(Self::EVERY as i32) * progress.powi(3)
    }

    /// Moves the average toward `module`'s weights by `1 - decay` and returns
    /// `module` with its trained weights replaced by the new average.
    ///
    /// # Panics
    ///
    /// If `decay` is outside `[0, 1]`.
    pub fn pull<M: Module>(&mut self, module: M, decay: f64) -> M {
        assert!(
            (0.0..=1.0).contains(&decay),
            "the average's decay must be in [0, 1], got {decay}"
        );
        module.map(&mut Pull {
            average: &mut self.average,
            decay,
        })
    }

    /// `module` with its trained weights replaced by the average, which
    /// stays as it is (to save it with a checkpoint).
    pub fn average_of<M: Module>(&self, module: M) -> M {
        self.clone().pull(module, 1.0)
    }
}

/// `tensor` detached from the graph and flattened.
fn flat<const D: usize>(tensor: Tensor<D>) -> Tensor<1> {
    let n = tensor.shape().num_elements();
    tensor.detach().reshape([n])
}

/// The mapper behind [`Lookahead::pull`].
struct Pull<'a> {
    average: &'a mut HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Pull<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !param.is_require_grad() {
            return param;
        }
        let id = param.id;
        param.map(|weights| {
            let shape = weights.shape();
            let current = flat(weights);
            let average = match self.average.get(&id) {
                Some(average) if self.decay == 1.0 => average.clone(),
                Some(average) => average
                    .clone()
                    .mul_scalar(self.decay)
                    .add(current.mul_scalar(1.0 - self.decay)),
                // A parameter the average has not seen starts it.
                None => current,
            };
            self.average.insert(id, average.clone());
            average.reshape(shape).detach().require_grad()
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{BatchNormConfig, LinearConfig};

    use super::*;

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn pulls_every_fifth_step_and_at_the_end_with_a_cubic_decay() {
        let due: Vec<usize> = (0..=12).filter(|&t| Lookahead::is_due(t, 12)).collect();
        assert_eq!(due, [5, 10, 12]);
        // airbench94: alpha_schedule = 0.95**5 * (arange(T + 1) / T)**3.
        assert_eq!(Lookahead::decay(0, 480), 0.0);
        assert!((Lookahead::decay(480, 480) - 0.773_780_937_5).abs() < 1e-12);
        assert!((Lookahead::decay(240, 480) - 0.773_780_937_5 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn the_weights_become_the_average_and_frozen_ones_stay() {
        let device = Device::flex().autodiff();
        let linear = LinearConfig::new(2, 1).init(&device);
        let mut lookahead = Lookahead::new(&linear);
        let start = values(linear.weight.val());
        // Training moves the weight to 1, 1.
        let mut moved = linear.clone();
        moved.weight = moved
            .weight
            .map(|w| Tensor::ones_like(&w).detach().require_grad());
        let pulled = lookahead.pull(moved, 0.25);
        // 0.25 · start + 0.75 · 1, by hand.
        let want: Vec<f32> = start.iter().map(|s| 0.25 * s + 0.75).collect();
        let got = values(pulled.weight.val());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} instead of {want:?}");
        }
        assert!(pulled.weight.val().is_require_grad(), "still trained");
        // The average moved too: with decay 1 the weights return to it.
        let mut far = pulled.clone();
        far.weight = far
            .weight
            .map(|w| w.mul_scalar(10.0).detach().require_grad());
        assert_eq!(values(lookahead.average_of(far).weight.val()), got);
        // And `average_of` left the average where it was.
        assert_eq!(values(lookahead.average_of(pulled).weight.val()), got);

        // Frozen parameters and running statistics are not averaged.
        let mut norm = BatchNormConfig::new(2).init(&device);
        norm.gamma = norm.gamma.set_require_grad(false);
        let mut lookahead = Lookahead::new(&norm);
        let mut changed = norm.clone();
        changed.gamma = changed.gamma.map(|g| g.mul_scalar(3.0));
        changed.beta = changed
            .beta
            .map(|b| b.add_scalar(2.0).detach().require_grad());
        let pulled = lookahead.pull(changed, 0.5);
        assert_eq!(values(pulled.gamma.val()), [3.0, 3.0]);
        assert_eq!(values(pulled.beta.val()), [1.0, 1.0]);
    }
}
