//! Where a training step of the small CNN (conv32-pool-conv64-pool-fc,
//! batch 128) spends its time on flex: each operation's forward, and its
//! forward plus backward, timed alone on the step's shapes.
//!
//! `cargo run --release -p cifar-train --example profile_small_cnn`; add
//! `-- --pool` to compare the max-pool kernels, `-- --batch-norm` for the
//! default CNN's batch norms, `-- --conv` for the convolutions of the
//! reference models (`-- --conv --only 32->` for those with 32 input
//! channels, with the project's kernels only), `-- --airbench` for those
//! of `--model airbench` (`-- --airbench-step` for its whole step),
//! `-- --burn` for the step with Burn's own operations.

use std::time::Instant;

use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::prelude::*;

/// The `train` binary's allocator, so the times match its steps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Median milliseconds of `reps` runs of `f`, after 2 unmeasured ones.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

/// Times `op` on an input of `shape`: forward alone, then forward and backward.
fn profile(name: &str, shape: [usize; 4], op: impl Fn(Tensor<4>) -> Tensor<4>) -> (f64, f64) {
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let forward = median_ms(7, || {
        let _ = op(x.clone()).sum().into_scalar::<f32>();
    });
    let both = median_ms(7, || {
        let x = x.clone().require_grad();
        let _ = op(x.clone()).sum().backward();
    });
    println!(
        "{name:<34} forward {forward:7.2} ms   backward {:7.2} ms   total {both:7.2} ms",
        both - forward
    );
    (forward, both)
}

fn main() {
    cifar_train::allocator::keep_freed_memory();
    let device = Device::flex().autodiff();
    let n = 128;
    // Same padding, written out: the kernels take explicit padding.
    let conv = |cin, cout| {
        Conv2dConfig::new([cin, cout], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device)
    };
    let pool = MaxPool2dConfig::new([2, 2]).init();
    let fc = LinearConfig::new(64 * 8 * 8, 10).init(&device);
    println!("small CNN, batch {n}, flex, {} threads", rayon_threads());
    if std::env::args().any(|a| a == "--batch-norm") {
        // The default CNN's batch norms (training mode: batch statistics).
        for (c, size) in [(32, 32), (64, 16), (128, 8)] {
            let norm = burn::nn::BatchNormConfig::new(c).init(&device);
            profile(
                &format!("burn batch norm {c}x{size}x{size}"),
                [n, c, size, size],
                |x| norm.forward(x),
            );
            profile(
                &format!("fused batch norm {c}x{size}x{size}"),
                [n, c, size, size],
                |x| {
                    cifar_kernels::batch_norm_train(x, norm.gamma.val(), norm.beta.val(), 1e-5)
                        .output
                },
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "--pool") {
        for shape in [[n, 32, 32, 32], [n, 64, 16, 16]] {
            profile("burn-flex max pool 2x2", shape, |x| pool.forward(x));
            profile(
                "cifar-kernels max pool 2x2",
                shape,
                cifar_kernels::max_pool_2x2,
            );
        }
        return;
    }
    if std::env::args().any(|a| a == "--conv") {
        // The convolutions of the small CNN, then of the default CNN
        // (32-64-128), then of the VGG-style net (64-128-256).
        let only = std::env::args().skip_while(|a| a != "--only").nth(1);
        let shapes = [
            (3, 32, 32),
            (32, 64, 16),
            (32, 32, 32),
            (64, 64, 16),
            (64, 128, 8),
            (128, 128, 8),
            (3, 64, 32),
            (64, 64, 32),
            (64, 128, 16),
            (128, 128, 16),
            (128, 256, 8),
            (256, 256, 8),
        ];
        for (cin, cout, size) in shapes {
            let layer = conv(cin, cout);
            let shape = [n, cin, size, size];
            let name = format!("{cin}->{cout} ({size}x{size})");
            if only.as_ref().is_some_and(|o| !name.starts_with(o.as_str())) {
                continue;
            }
            if only.is_none() {
                profile(&format!("burn-flex conv {name}"), shape, |x| {
                    layer.forward(x)
                });
            }
            profile(&format!("cifar-kernels conv {name}"), shape, |x| {
                cifar_models::convolve(&layer, x)
            });
        }
        return;
    }
    if std::env::args().any(|a| a == "--airbench-step") {
        // A whole training step of `--model airbench` (batch 256): forward,
        // backward, no optimizer.
        let model = cifar_models::CnnConfig::airbench().init(&device);
        profile("airbench step (batch 256)", [256, 3, 32, 32], |x| {
            model.forward(x).unsqueeze::<4>()
        });
        return;
    }
    if std::env::args().any(|a| a == "--airbench") {
        // The convolutions of `--model airbench` at its batch of 256, after
        // the whitening layer (24 channels, 31x31), with the project's kernels.
        let n = 256;
        let shapes = [
            (24, 64, 31),
            (64, 64, 15),
            (64, 256, 15),
            (256, 256, 7),
            (256, 256, 3),
        ];
        let mut total = 0.0;
        for (cin, cout, size) in shapes {
            let layer = conv(cin, cout);
            let name = format!("conv {cin}->{cout} ({size}x{size}), batch {n}");
            total += profile(&name, [n, cin, size, size], |x| {
                cifar_models::convolve(&layer, x)
            })
            .1;
        }
        println!("sum of the distinct convolutions: {total:.1} ms");
        for (c, size) in [(24, 31), (64, 15), (256, 7), (256, 3)] {
            let shape = [n, c, size, size];
            profile(
                &format!("burn-flex gelu {c}x{size}x{size}"),
                shape,
                burn::tensor::activation::gelu,
            );
            profile(
                &format!("cifar-kernels gelu {c}x{size}x{size}"),
                shape,
                cifar_kernels::gelu,
            );
            let norm = burn::nn::BatchNormConfig::new(c).init(&device);
            profile(&format!("batch norm {c}x{size}x{size}"), shape, |x| {
                cifar_kernels::batch_norm_train(x, norm.gamma.val(), norm.beta.val(), 1e-5).output
            });
        }
        for (c, size) in [(64, 31), (256, 15), (256, 7)] {
            let name = format!("max pool 2x2 {c}x{size}x{size}");
            profile(&name, [n, c, size, size], cifar_kernels::max_pool_2x2);
        }
        return;
    }
    // The step with the project's kernels, or (`--burn`) with Burn's own operations.
    let burn = std::env::args().any(|a| a == "--burn");
    let convolve = |layer: &burn::nn::conv::Conv2d, x| {
        if burn {
            layer.forward(x)
        } else {
            cifar_models::convolve(layer, x)
        }
    };
    let max_pool = |x| {
        if burn {
            pool.forward(x)
        } else {
            cifar_kernels::max_pool_2x2(x)
        }
    };
    let relu = |x| {
        if burn {
            burn::tensor::activation::relu(x)
        } else {
            cifar_kernels::relu(x)
        }
    };
    let (conv1, conv2) = (conv(3, 32), conv(32, 64));
    let mut total = 0.0;
    total += profile("conv 3->32 (32x32)", [n, 3, 32, 32], |x| {
        convolve(&conv1, x)
    })
    .1;
    total += profile("relu (32x32x32)", [n, 32, 32, 32], relu).1;
    total += profile("max pool 2x2 (32x32x32)", [n, 32, 32, 32], max_pool).1;
    total += profile("conv 32->64 (16x16)", [n, 32, 16, 16], |x| {
        convolve(&conv2, x)
    })
    .1;
    total += profile("relu (64x16x16)", [n, 64, 16, 16], relu).1;
    total += profile("max pool 2x2 (64x16x16)", [n, 64, 16, 16], max_pool).1;
    total += profile("linear 4096->10", [n, 64, 8, 8], |x| {
        fc.forward(x.flatten::<2>(1, 3)).unsqueeze::<4>()
    })
    .1;
    println!(
        "sum of the operations: {total:.1} ms a step = {:.0} img/s",
        n as f64 / total * 1e3
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
