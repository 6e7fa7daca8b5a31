//! Fixtures shared by the top-level integration tests.

#![allow(dead_code)]

use burn::prelude::*;
use cifar_burn::data::{Features, Preprocessing, SplitConfig, synthetic};

/// Deterministic pseudo-random inputs in [-1, 1].
pub fn inputs(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[n, 3, 32, 32]` batch of those inputs on `device`.
pub fn image_batch(n: usize, seed: u64, device: &Device) -> Tensor<4> {
    Tensor::from_data(
        TensorData::new(inputs(n * 3072, seed), [n, 3, 32, 32]),
        device,
    )
}

/// Generated images, split and standardized: (train, val).
pub fn synthetic_features(per_batch: usize, val: usize) -> (Features, Features) {
    let data = cifar_burn::data::Cifar10 {
        train: synthetic::images(per_batch * 5, 1),
        test: None,
        classes: cifar_burn::data::CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let splits = SplitConfig::new().with_val_size(val).split(&data).unwrap();
    let fitted = Preprocessing::Standardize.fit(&splits.train).unwrap();
    (
        fitted.transform(&splits.train),
        fitted.transform(&splits.val),
    )
}

/// The wgpu device, or `None` (with a note) when there is no adapter and
/// `CIFAR_BURN_REQUIRE_WGPU` is not set; CI sets it, so there a missing adapter fails.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<Device> {
    match cifar_burn::train::backend::device(cifar_burn::train::Backend::Wgpu) {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("CIFAR_BURN_REQUIRE_WGPU").is_none() => {
            eprintln!("skipping the wgpu check: {e:#}");
            None
        }
        Err(e) => panic!("CIFAR_BURN_REQUIRE_WGPU is set but wgpu is unusable: {e:#}"),
    }
}
