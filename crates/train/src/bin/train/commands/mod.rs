//! What each subcommand does: checks at the level of the command line, then
//! calls into the library. One module per subcommand (or family of them).

mod bench;
mod check;
mod fit;
mod init_stats;
mod inspect;
mod lr_find;
mod report;
mod search;

pub use bench::bench_command;
pub use check::check_command;
pub use fit::fit_command;
pub use init_stats::init_stats_command;
pub use inspect::{data_command, eval_command, predict_command};
pub use lr_find::lr_find_command;
pub use report::report_command;
pub use search::search_command;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use cifar_kernels::MatmulPrecision;
use cifar_train::backend;
use cifar_train::config::{Backend, TrainConfig};
use cifar_train::dataset::{self, Prepared};
use cifar_train::progress::Progress;
use cifar_train::rundir::RunDir;

use crate::cli::TrainFlags;

/// Loads the data of `flags` and prepares it for `config` (reusing `saved` preprocessing).
fn load_prepared(
    flags: &TrainFlags,
    config: &TrainConfig,
    saved: Option<cifar_data::FittedPreprocessing>,
    progress: Progress,
) -> Result<(PathBuf, Prepared)> {
    let (dir, data) = dataset::load(flags.source.data.as_deref(), flags.source.download)?;
    progress.line(&format!(
        "data: {} ({} training images)",
        dir.display(),
        data.train.len()
    ));
    let started = Instant::now();
    let prepared = dataset::prepare(&data, &config.split, &config.preprocess, saved)?;
    progress.line(&format!(
        "{} train / {} val{} images, preprocessing {} fitted in {:.1}s",
        prepared.train.len(),
        prepared.val.len(),
        prepared
            .test
            .as_ref()
            .map(|t| format!(" / {} test", t.len()))
            .unwrap_or_default(),
        config.preprocess,
        started.elapsed().as_secs_f64()
    ));
    Ok((dir, prepared))
}

/// `runs/<prefix><YYYYmmdd-HHMMSS>` in UTC.
fn default_run_dir(prefix: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{prefix}{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    ))
}

/// Loads a run's config, preprocessing and best model on `backend` (or the run's).
fn load_run(
    dir: &Path,
    backend: Option<Backend>,
) -> Result<(RunDir, TrainConfig, Device, cifar_models::Model)> {
    let run = RunDir::open(dir)?;
    let config = run.load_config()?;
    let backend = backend.unwrap_or(config.backend);
    // The run's products where this machine runs them, f32 otherwise (a
    // model trained with bf16 products evaluates as well in f32).
    let precision = match config.matmul_precision {
        MatmulPrecision::Bf16 if backend == Backend::Flex && cifar_kernels::bf16_available() => {
            MatmulPrecision::Bf16
        }
        _ => MatmulPrecision::F32,
    };
    let device = backend::device_with(backend, Default::default(), precision)?;
    let model = run.load_best(config.model.init(&device))?;
    Ok((run, config, device, model))
}
