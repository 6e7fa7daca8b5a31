//! `train report`: rebuild a run folder's charts and `report.html`.

use anyhow::Result;
use cifar_train::rundir::RunDir;
use cifar_train::{charts, report};

use crate::cli::ReportArgs;

/// `train report`.
pub fn report_command(args: &ReportArgs) -> Result<()> {
    let run = RunDir::open(&args.run)?;
    let metrics_path = run.file("metrics.csv");
    if metrics_path.is_file() {
        // Redraw the metrics charts from metrics.csv, and the update ratios from layers.csv.
        let metrics = cifar_train::callbacks::MetricsLog::read(&run)?;
        let ends: Vec<usize> = metrics.epochs().iter().map(|(s, _)| *s).collect();
        charts::loss_chart(&run.file("loss.png"), metrics.steps(), &ends, args.log_loss)?;
        charts::accuracy_chart(&run.file("accuracy.png"), metrics.epochs())?;
        charts::lr_chart(&run.file("lr.png"), metrics.steps())?;
    }
    if run.file("layers.csv").is_file() {
        let ratios = cifar_train::monitor::read_ratios(&run.file("layers.csv"))?;
        charts::update_ratio_chart(&run.file("update-ratio.png"), &ratios)?;
    }
    let path = report::write_report(&run)?;
    println!("{}", path.display());
    Ok(())
}
