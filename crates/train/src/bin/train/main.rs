//! `train`: train and inspect CIFAR-10 classifiers. See `train --help`.

mod cli;
mod commands;

use clap::Parser;
use cli::{Cli, Command};

/// mimalloc keeps freed buffers for reuse, where glibc returns large ones to
/// the system and takes page faults to get them back (see BENCHMARKS.md);
/// `main` tells it to keep them for good.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    cifar_train::allocator::keep_freed_memory();
    // `train ... | head` closes the pipe early: end quietly rather than panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Fit(args) => commands::fit_command(args),
        Command::Check(args) => commands::check_command(args),
        Command::LrFind(args) => commands::lr_find_command(args),
        Command::Report(args) => commands::report_command(args),
        Command::Search(args) => commands::search_command(args),
        Command::Eval(args) => commands::eval_command(args),
        Command::Predict(args) => commands::predict_command(args),
        Command::Data(args) => commands::data_command(args),
        Command::InitStats(args) => commands::init_stats_command(args),
        Command::Bench(args) => commands::bench_command(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
