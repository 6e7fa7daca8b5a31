//! Stopping unpromising trials early: the median rule (Optuna's
//! `MedianPruner`) and asynchronous successive halving (ASHA, Li et al.,
//! "A System for Massively Parallel Hyperparameter Tuning", 2018).
//!
//! Both decide from validation accuracies alone (higher is better), so they
//! are plain functions of a trial history and tested against hand-made ones.

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty. Sorts `values`.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The median rule: after `startup_trials` trials have reported an epoch,
/// a trial whose accuracy at that epoch is below their median stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianRule {
    /// Trials that must have reported an epoch before any is stopped there.
    pub startup_trials: usize,
    /// Epochs every trial runs before the rule applies.
    pub warmup_epochs: usize,
}

impl Default for MedianRule {
    fn default() -> Self {
        Self {
            startup_trials: 5,
            warmup_epochs: 0,
        }
    }
}

impl MedianRule {
    /// Whether a trial with `accuracy` after 1-based `epoch` stops, given the
    /// per-epoch accuracies of earlier trials (`earlier[t][e - 1]`).
    pub fn prunes(&self, earlier: &[Vec<f64>], epoch: usize, accuracy: f64) -> bool {
        if epoch == 0 || epoch <= self.warmup_epochs {
            return false;
        }
        let mut at_epoch: Vec<f64> = earlier
            .iter()
            .filter_map(|h| h.get(epoch - 1).copied())
            .filter(|v| v.is_finite())
            .collect();
        if at_epoch.len() < self.startup_trials.max(1) {
            return false;
        }
        median(&mut at_epoch).is_some_and(|m| accuracy < m)
    }
}

/// Asynchronous successive halving over epochs.
///
/// Rungs sit at `min_epochs * eta^k` epochs (below `max_epochs`). A trial
/// that finishes a rung waits there; whenever it is among the best
/// `1/eta` of all trials that reached that rung and has not been promoted
/// yet, it is promoted: it continues from its checkpoint to the next rung.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Asha {
    /// The reduction factor (3 by default).
    pub eta: usize,
    /// Epochs of the first rung.
    pub min_epochs: usize,
    /// Epochs of a trial that is never stopped.
    pub max_epochs: usize,
}

impl Asha {
    /// ASHA with reduction factor 3 and a first rung after one epoch.
    pub fn new(max_epochs: usize) -> Self {
        Self {
            eta: 3,
            min_epochs: 1,
            max_epochs,
        }
    }

    /// The epochs at which trials are compared: `min_epochs * eta^k` below `max_epochs`.
    pub fn rungs(&self) -> Vec<usize> {
        let mut rungs = Vec::new();
        let mut r = self.min_epochs.max(1);
        while r < self.max_epochs {
            rungs.push(r);
            r *= self.eta.max(2);
        }
        rungs
    }

    /// The rung after the one at `epochs` (or `max_epochs`).
    pub fn next_rung(&self, epochs: usize) -> usize {
        self.rungs()
            .into_iter()
            .find(|&r| r > epochs)
            .unwrap_or(self.max_epochs)
    }

    /// The trials to promote from one rung: of `reached` (trial, accuracy
    /// at the rung), the best `floor(n / eta)` that are not in `promoted`.
    pub fn promotable(&self, reached: &[(usize, f64)], promoted: &[usize]) -> Vec<usize> {
        let mut ranked: Vec<(usize, f64)> = reached
            .iter()
            .copied()
            .filter(|(_, v)| v.is_finite())
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top = reached.len() / self.eta.max(2);
        ranked
            .into_iter()
            .take(top)
            .map(|(t, _)| t)
            .filter(|t| !promoted.contains(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_rule_by_hand() {
        let rule = MedianRule {
            startup_trials: 3,
            warmup_epochs: 0,
        };
        // Epoch-1 accuracies of earlier trials: 0.30, 0.40, 0.50 -> median 0.40.
        let earlier = vec![vec![0.30, 0.45], vec![0.40], vec![0.50, 0.55]];
        assert!(rule.prunes(&earlier, 1, 0.35));
        assert!(
            !rule.prunes(&earlier, 1, 0.40),
            "equal to the median continues"
        );
        assert!(!rule.prunes(&earlier, 1, 0.45));
        // Only two trials reported epoch 2: fewer than the startup count, nobody stops.
        assert!(!rule.prunes(&earlier, 2, 0.0));
        // An even count takes the mean of the middle two: (0.30 + 0.40) / 2 = 0.35.
        let four = vec![vec![0.2], vec![0.3], vec![0.4], vec![0.9]];
        assert!(rule.prunes(&four, 1, 0.34));
        assert!(!rule.prunes(&four, 1, 0.36));
        let warm = MedianRule {
            startup_trials: 3,
            warmup_epochs: 1,
        };
        assert!(!warm.prunes(&earlier, 1, 0.0), "warmup epochs never prune");
    }

    #[test]
    fn asha_rungs_and_promotions_by_hand() {
        let asha = Asha::new(27);
        assert_eq!(asha.rungs(), [1, 3, 9]);
        assert_eq!(asha.next_rung(1), 3);
        assert_eq!(asha.next_rung(9), 27);
        // Two trials at rung 1: floor(2 / 3) = 0, nobody is promoted yet.
        assert!(asha.promotable(&[(0, 0.3), (1, 0.5)], &[]).is_empty());
        // Three: the best one (trial 1) goes up.
        let three = [(0, 0.3), (1, 0.5), (2, 0.4)];
        assert_eq!(asha.promotable(&three, &[]), [1]);
        // Six: the best two; trial 1 already went up, so trial 4 follows.
        let six = [(0, 0.3), (1, 0.5), (2, 0.4), (3, 0.1), (4, 0.45), (5, 0.2)];
        assert_eq!(asha.promotable(&six, &[1]), [4]);
        // A late strong trial is promoted as soon as it ranks in the top third,
        // even though a weaker one went up first.
        let late = [(0, 0.3), (1, 0.5), (2, 0.4), (3, 0.9)];
        assert_eq!(asha.promotable(&late, &[1]), [3]);
        // With both promoted, six trials' top two are taken: nobody new goes up.
        let full = [(0, 0.3), (1, 0.5), (2, 0.4), (3, 0.9), (4, 0.1), (5, 0.2)];
        assert!(asha.promotable(&full, &[1, 3]).is_empty());
    }
}
