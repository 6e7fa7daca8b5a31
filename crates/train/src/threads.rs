//! Where a training run's own code runs: on one of the compute threads.
//!
//! The kernels split their work with rayon. Called from a thread outside
//! rayon's pool (the program's main thread), every parallel operation is
//! handed to the pool's threads while the caller sleeps, then handed back:
//! two thread wake-ups per operation, a few dozen per training step. Run
//! from one of the pool's own threads, the caller does its share of the
//! work itself and only the other threads are woken. On the two-layer net
//! (3072-100-10, batch 256, two cores) the step got faster by about a tenth
//! (BENCHMARKS.md, "Ninth round").

/// Stack size of the compute threads: the size of a program's main thread
/// on Linux, since the whole program runs on one of them.
const STACK_BYTES: usize = 8 << 20;

/// Runs `f` on a thread of rayon's global pool (as many threads as cores,
/// 8 MiB stacks) and returns its result; the calling thread waits.
///
/// Call it once, from `main`, around everything else: the pool takes its
/// settings from the first caller, and a pool that another part of the
/// program already started keeps its own.
pub fn run_on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // An error means the pool already runs, which leaves it as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_BYTES)
        .build_global();
    // `scope` runs its body on one of the pool's threads when called from
    // outside the pool, and blocks until it returns.
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_pool_thread_and_returns_its_value() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "tests run off the pool"
        );
        let index = run_on_compute_threads(rayon::current_thread_index);
        assert!(index.is_some(), "ran outside rayon's pool");
        let sum: u64 = run_on_compute_threads(|| {
            use rayon::prelude::*;
            (1..=100u64).into_par_iter().sum()
        });
        assert_eq!(sum, 5050);
    }
}
