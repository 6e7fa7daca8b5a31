//! Checks on the real CIFAR-10 training set; they run when `CIFAR10_DIR`
//! points at a `cifar-10-batches-bin` folder and pass trivially otherwise,
//! unless `CIFAR_BURN_REQUIRE_DATA` is set (as in CI), where a missing
//! folder fails them.

use cifar_data::{Cifar10, Preprocessing, SplitConfig};

fn real_data() -> Option<Cifar10> {
    let Some(dir) = std::env::var_os("CIFAR10_DIR") else {
        assert!(
            std::env::var_os("CIFAR_BURN_REQUIRE_DATA").is_none(),
            "CIFAR_BURN_REQUIRE_DATA is set but CIFAR10_DIR is not: point it at cifar-10-batches-bin"
        );
        return None;
    };
    Some(Cifar10::load(dir).expect("CIFAR10_DIR is set but does not hold CIFAR-10"))
}

#[test]
fn real_training_set_has_known_counts_and_statistics() {
    let Some(data) = real_data() else {
        eprintln!("CIFAR10_DIR not set: skipping the real-data check");
        return;
    };
    assert_eq!(data.train.len(), 50_000);
    assert_eq!(data.train.class_counts(), [5000; 10]);

    // The well-known statistics of the 50,000 training images, on the 0-1 scale.
    let fitted = Preprocessing::Standardize.fit(&data.train).unwrap();
    let means = [0.4914, 0.4822, 0.4465];
    let stds = [0.2470, 0.2435, 0.2616];
    for c in 0..3 {
        assert!(
            (fitted.mean[c] as f64 - means[c]).abs() < 1e-3,
            "mean {c}: {}",
            fitted.mean[c]
        );
        let std = 1.0 / fitted.scale[c] as f64;
        assert!((std - stds[c]).abs() < 1e-3, "std {c}: {std}");
    }

    let splits = SplitConfig::new().split(&data).unwrap();
    assert_eq!(splits.train.len(), 49_000);
    assert_eq!(splits.val.len(), 1_000);
    assert_eq!(splits.val.image(999), data.train.image(49_999));
}
