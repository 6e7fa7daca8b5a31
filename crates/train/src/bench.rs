//! `train bench`: the figures of BENCHMARKS.md.

use std::time::Instant;

use anyhow::Result;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, SgdConfig, momentum::MomentumConfig};
use burn::prelude::*;
use cifar_data::{Augmentation, CifarBatcher, EpochOrder, Preprocessing, SplitConfig};
use cifar_models::ModelConfig;
use std::sync::Arc;

use crate::cli::DataSource;
use crate::config::Backend;

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
pub fn data(source: &DataSource) -> Result<()> {
    let (dir, _) = crate::dataset::load(source.data.as_deref(), source.download)?;
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

/// Training steps (forward, cross-entropy, backward, SGD momentum 0.9) on random data.
pub fn train(model: &ModelConfig, backend: Backend, batch_size: usize, steps: usize) -> Result<()> {
    anyhow::ensure!(
        steps > 0 && batch_size > 0,
        "--steps and --batch-size must be positive"
    );
    let device = crate::backend::device(backend)?.autodiff();
    device.seed(0);
    let mut net = model.init(&device);
    let mut optim = SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let input_dims = match model {
        ModelConfig::Mlp(m) => [m.input_size, 1, 1],
        ModelConfig::Cnn(_) => [3, 32, 32],
    };
    let [c, h, w] = input_dims;
    let x = Tensor::<4>::random(
        [batch_size, c, h, w],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let y = Tensor::<1, Int>::from_data(
        TensorData::new(
            (0..batch_size as i64).map(|i| i % 10).collect::<Vec<_>>(),
            [batch_size],
        ),
        &device,
    );
    let mut step = |net: cifar_models::Model| {
        let loss = loss_fn.forward(net.forward(x.clone()), y.clone());
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        (optim.step(0.01, net, grads), value)
    };
    for _ in 0..3 {
        net = step(net).0;
    }
    let start = Instant::now();
    for _ in 0..steps {
        net = step(net).0;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{backend} training, batch {batch_size}, {steps} steps after 3 warmup: {:.0} images/s",
        (steps * batch_size) as f64 / secs
    );
    Ok(())
}
