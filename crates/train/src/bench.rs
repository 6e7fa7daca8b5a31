//! `train bench`: the figures of BENCHMARKS.md.

use std::time::Instant;

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use burn::prelude::*;
use cifar_data::{
    Augmentation, CifarBatch, CifarBatcher, EpochOrder, FeatureShape, Features, Preprocessing,
    SplitConfig,
};
use cifar_kernels::MatmulPrecision;
use cifar_models::ModelConfig;

use crate::config::{Backend, OptimizerKind, TrainConfig};
use crate::monitor::{LayerMonitor, MonitorSettings};
use crate::progress::Progress;

/// The learning rate of the timed training steps (SGD with momentum 0.9).
const BENCH_LR: f64 = 0.001;
use crate::trainer::{StepInfo, StepObserver, StepOutcome, Trainer};

/// Median of `runs` timings of `f`, in seconds.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.expect("at least one run"))
}

/// Loading, statistics, PCA and batch assembly on the real data.
pub fn data(data: Option<&Path>, download: bool) -> Result<()> {
    let (dir, _) = crate::dataset::load(data, download)?;
    let (load, data) = time(5, || cifar_data::Cifar10::load(&dir));
    let data = data?;
    println!(
        "load {} training images (warm, median of 5): {:.3} s",
        data.train.len(),
        load
    );
    let splits = SplitConfig::new().split(&data)?;
    let (stats, _) = time(5, || Preprocessing::Standardize.fit(&splits.train));
    println!(
        "fit per-channel mean and std on {} images (median of 5): {:.3} s",
        splits.train.len(),
        stats
    );
    let (mean_image, _) = time(5, || Preprocessing::MeanImage.fit(&splits.train));
    println!("fit the mean image (median of 5): {:.3} s", mean_image);
    let (pca, fitted) = time(1, || {
        Preprocessing::Pca { components: 100 }.fit(&splits.train)
    });
    fitted?;
    println!(
        "fit PCA on {} x 3072 (covariance + eigendecomposition, once): {:.1} s",
        splits.train.len(),
        pca
    );
    let fitted = Preprocessing::Standardize.fit(&splits.train)?;
    let (transform, features) = time(3, || fitted.transform(&splits.train));
    println!(
        "standardize {} images (median of 3): {:.3} s",
        features.len(),
        transform
    );
    let features = Arc::new(features);
    let device = Device::flex();
    let order = EpochOrder::new(features.len(), 0).batches(0, 128);
    for augment in [None, Some(Augmentation::new())] {
        let batcher = CifarBatcher::new(features.clone()).with_augmentation(augment);
        let start = Instant::now();
        let mut images = 0;
        for indices in order.iter().take(200) {
            let batch = batcher.batch(indices.clone(), &device);
            images += batch.targets.dims()[0];
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "batch assembly to flex tensors, batch 128, {}: {:.0} images/s",
            if augment.is_some() {
                "with crop+flip"
            } else {
                "no augmentation"
            },
            images as f64 / secs
        );
    }
    Ok(())
}

/// Training steps (forward, cross-entropy, backward, SGD momentum 0.9) on
/// random data, through the same [`Trainer::step`] as `train fit`; with
/// `monitor_every`, the layer monitor watches the steps as it does in `fit`;
/// the convolutions' products run at `precision`. Prints one line of text, or with `json` one JSON object
/// (`{"images_per_sec": ...}`); returns the images per second.
pub fn train(
    model: &ModelConfig,
    backend: Backend,
    batch_size: usize,
    steps: usize,
    monitor_every: Option<usize>,
    precision: MatmulPrecision,
    json: bool,
) -> Result<f64> {
    anyhow::ensure!(
        steps > 0 && batch_size > 0,
        "--steps and --batch-size must be positive"
    );
    let device = crate::backend::device_with(backend, Default::default(), precision)?;
    // A small rate keeps the loss on one repeated random batch from diverging
    // (PyTorch's reference uses 0.01 on fresh batches); the work per step is
    // the same at any rate.
    let config = TrainConfig {
        model: model.clone(),
        optimizer: OptimizerKind::Momentum,
        lr: BENCH_LR,
        weight_decay: 0.0,
        ..TrainConfig::default()
    };
    let input_dims = match model {
        ModelConfig::Mlp(m) => [m.input_size, 1, 1],
        ModelConfig::Cnn(_) => [3, 32, 32],
    };
    let [c, h, w] = input_dims;
    // A whitening layer is fitted on the images, as `fit` does: left at its
    // zero filters it would feed the network constant maps, which batch
    // norm with a tiny epsilon blows up.
    let mut trainer = match model {
        ModelConfig::Cnn(cnn) if cnn.whiten > 0 => {
            let images = Tensor::<4>::random(
                [batch_size, c, h, w],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let sample = Features {
                values: images
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .expect("float images"),
                labels: vec![0; batch_size],
                shape: FeatureShape::Image {
                    channels: c,
                    height: h,
                    width: w,
                },
            };
            Trainer::for_data(&config, &device, &sample)?
        }
        _ => Trainer::new(&config, &device),
    };
    let random_batch = |device: &Device| CifarBatch {
        images: Tensor::<4>::random(
            [batch_size, c, h, w],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        ),
        targets: Tensor::<1, Int>::from_data(
            TensorData::new(
                (0..batch_size as i64).map(|i| i % 10).collect::<Vec<_>>(),
                [batch_size],
            ),
            device,
        ),
    };
    let batch = random_batch(trainer.device());
    let scratch = tempfile_path("layers.csv");
    let mut monitor = match monitor_every {
        Some(every) => Some(LayerMonitor::new(
            MonitorSettings::for_run(
                // Past the early steps that are all monitored, as in a long epoch.
                steps.max(1) * 20,
                Some(every),
                0,
                config.model.activation(),
            ),
            random_batch(&device).images.slice(0..batch_size.min(64)),
            &scratch,
            None,
            Progress {
                to_stderr: true,
                bars: false,
            },
        )?),
        None => None,
    };
    let warmup = crate::monitor::EARLY_STEPS;
    let mut timed = monitor.as_mut().map(|m| Timed {
        inner: m,
        seconds: 0.0,
        points: 0,
    });
    let step = |trainer: &mut Trainer,
                timed: &mut Option<Timed<'_>>,
                iteration: usize|
     -> Result<()> {
        let mut observers: Vec<&mut dyn StepObserver> = Vec::new();
        if let Some(t) = timed.as_mut() {
            observers.push(t);
        }
        let info = StepInfo {
            epoch: 0,
            iteration,
            loss: f64::NAN,
            lr: BENCH_LR,
        };
        match trainer.step(batch.clone(), BENCH_LR, info, &mut observers)? {
            StepOutcome::Updated { .. } => Ok(()),
            StepOutcome::Diverged(d) => anyhow::bail!(
                "the benchmark's loss diverged on its random batch ({}); the timing would not be a training step's",
                d.describe()
            ),
        }
    };
    // Warm up past the monitor's every-step phase, then time.
    for i in 0..warmup {
        step(&mut trainer, &mut timed, i)?;
    }
    let start = Instant::now();
    let mut inside_before = 0.0;
    let mut points_before = 0;
    for i in 0..steps {
        if i == 0
            && let Some(t) = timed.as_ref()
        {
            (inside_before, points_before) = (t.seconds, t.points);
        }
        step(&mut trainer, &mut timed, warmup + i)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&scratch);
    let monitored = match (monitor_every, timed.as_ref()) {
        (Some(every), Some(t)) => {
            let inside = t.seconds - inside_before;
            format!(
                ", layer monitor every {every} steps ({} points, {inside:.3} s inside the monitor = {:.1}% of the timed steps)",
                t.points - points_before,
                100.0 * inside / secs
            )
        }
        _ => String::new(),
    };
    let images_per_sec = (steps * batch_size) as f64 / secs;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "images_per_sec": images_per_sec,
                "backend": backend.to_string(),
                "batch_size": batch_size,
                "steps": steps,
                "seconds": secs,
            })
        );
    } else {
        println!(
            "{backend} training, batch {batch_size}, {steps} steps after {warmup} warmup{monitored}: {images_per_sec:.0} images/s"
        );
    }
    Ok(images_per_sec)
}

/// Times another observer's callbacks.
struct Timed<'a> {
    inner: &'a mut LayerMonitor,
    seconds: f64,
    points: usize,
}

impl StepObserver for Timed<'_> {
    fn observes(&self, iteration: usize) -> bool {
        self.inner.observes(iteration)
    }

    fn on_gradients(
        &mut self,
        step: &StepInfo,
        model: &cifar_models::Model,
        grads: &burn::optim::GradientsParams,
    ) -> Result<()> {
        let start = Instant::now();
        let result = self.inner.on_gradients(step, model, grads);
        self.seconds += start.elapsed().as_secs_f64();
        result
    }

    fn on_update(
        &mut self,
        step: &StepInfo,
        before: &cifar_models::Model,
        after: &cifar_models::Model,
    ) -> Result<()> {
        let start = Instant::now();
        let result = self.inner.on_update(step, before, after);
        self.seconds += start.elapsed().as_secs_f64();
        self.points += 1;
        result
    }
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cifar-burn-bench-{}-{name}", std::process::id()))
}
