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
    default_device_on_the_cpu();
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
    let result = cifar_train::threads::run_on_compute_threads(|| match &cli.command {
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
    });
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// Makes Burn's default device flex unless `BURN_DEVICE` names another.
///
/// Every tensor of a run goes to the device of its `--backend`, but Burn
/// loads a checkpoint's optimizer state onto `Device::default()` (and moves
/// it to the parameters' device at the next step). In a build with the wgpu
/// feature that default is the GPU: a resumed CPU run would start the GPU
/// driver for nothing, which on a machine without a display prints
/// "XDG_RUNTIME_DIR is invalid" four times.
fn default_device_on_the_cpu() {
    if std::env::var_os("BURN_DEVICE").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: the second statement of `main`, before any other thread
        // exists, so no thread can read the environment while it changes.
        unsafe {
            std::env::set_var("BURN_DEVICE", "flex");
        }
    }
}
