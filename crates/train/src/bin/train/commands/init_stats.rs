//! `train init-stats`: the lecture's initialization experiment.

use anyhow::Result;
use burn::prelude::*;
use cifar_data::{IMAGE_BYTES, Preprocessing};
use cifar_models::{ActivationStats, Histogram, MlpConfig};
use cifar_train::charts::{self, InitLayer};
use cifar_train::{backend, dataset};
use serde_json::json;

use crate::cli::InitStatsArgs;

/// `train init-stats`.
pub fn init_stats_command(args: &InitStatsArgs) -> Result<()> {
    anyhow::ensure!(args.layers > 0, "--layers must be at least 1");
    anyhow::ensure!(args.width > 0, "--width must be at least 1");
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    // Batch norm normalizes with the batch's statistics only in training
    // mode, which Burn gives modules on an autodiff device; on a plain device
    // it would use its initial running statistics (mean 0, variance 1) and
    // change nothing. The experiment is one forward pass: nothing is trained.
    let device = backend::device(args.backend)?.autodiff();
    device.seed(args.seed);
    let input: Tensor<2> = if args.input == "cifar" {
        let (_, data) = dataset::load(args.source.data.as_deref(), args.source.download)?;
        let n = args.samples.min(data.train.len());
        let set = cifar_data::ImageSet::new(
            data.train.pixels()[..n * IMAGE_BYTES].to_vec(),
            data.train.labels()[..n].to_vec(),
        );
        let features = Preprocessing::Standardize.fit(&data.train)?.transform(&set);
        Tensor::from_data(TensorData::new(features.values, [n, IMAGE_BYTES]), &device)
    } else {
        Tensor::random(
            [args.samples, args.width],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let input_size = input.dims()[1];
    let mlp = MlpConfig::new()
        .with_input_size(input_size)
        .with_hidden_sizes(vec![args.width; args.layers])
        .with_activation(args.activation)
        .with_init(args.init)
        .with_batch_norm(args.batch_norm)
        .init(&device);
    let (_, layers) = mlp.forward_observed(input.clone());
    let input_stats = ActivationStats::of_tensor(input, None, 1);
    if !args.json {
        println!(
            "input layer had mean {:.6} and std {:.6}",
            input_stats.mean, input_stats.std
        );
    }
    let values: Vec<Vec<f32>> = layers
        .into_iter()
        .map(|l| l.post.into_data().try_into_vec_as::<f32>().expect("floats"))
        .collect();
    // One range for every layer, as in the lecture's plots, so that a
    // collapsing or saturating distribution shows as such.
    let (lo, hi) = values
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| {
            (a.min(v as f64), b.max(v as f64))
        });
    let mut report = Vec::new();
    let mut chart_layers = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut s = ActivationStats::of(v, args.activation.saturation_band(), 30);
        s.histogram = Histogram::new(v, 30, lo, hi);
        if !args.json {
            println!(
                "hidden layer {} had mean {:.6} and std {:.6} ({:.1}% zero, {:.1}% saturated)",
                i + 1,
                s.mean,
                s.std,
                100.0 * s.zero_fraction,
                100.0 * s.saturated_fraction
            );
        }
        chart_layers.push(InitLayer {
            layer: i + 1,
            name: format!("hidden{}", i + 1),
            mean: s.mean,
            std: s.std,
            counts: s.histogram.counts.clone(),
        });
        report.push(json!({
            "layer": i + 1, "mean": s.mean, "std": s.std, "zero_fraction": s.zero_fraction,
            "saturated_fraction": s.saturated_fraction, "histogram": s.histogram,
        }));
    }
    let title = format!(
        "{} layers of {} {} units, init {}{}",
        args.layers,
        args.width,
        args.activation,
        args.init,
        if args.batch_norm { ", batch norm" } else { "" }
    );
    charts::init_stats_chart(&args.png, &title, &chart_layers, (lo, hi))?;
    if args.json {
        println!("{}", serde_json::Value::Array(report));
    } else {
        println!(
            "chart (mean and std per layer, histograms all over [{lo:.3}, {hi:.3}]): {}",
            args.png.display()
        );
    }
    Ok(())
}
