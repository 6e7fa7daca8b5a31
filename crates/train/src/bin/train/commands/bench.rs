//! `train bench`: the figures of BENCHMARKS.md.

use anyhow::Result;

use crate::cli::BenchArgs;

/// `train bench`.
pub fn bench_command(args: &BenchArgs) -> Result<()> {
    match args.what.as_str() {
        "data" => cifar_train::bench::data(args.source.data.as_deref(), args.source.download),
        _ => cifar_train::bench::train(
            &args.model,
            args.backend,
            args.batch_size,
            args.steps,
            args.monitor_every,
            args.matmul_precision,
            args.json,
        )
        .map(|_| ()),
    }
}
