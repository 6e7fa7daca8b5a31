//! `train`: train and inspect CIFAR-10 classifiers. See `train --help`.

use cifar_train::cli::{Cli, Command};
use cifar_train::commands;
use clap::Parser;

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Fit(args) => commands::fit_command(args),
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
