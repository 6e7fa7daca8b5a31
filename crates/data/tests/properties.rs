//! Property tests: whatever bytes the loaders are given (random, truncated,
//! bit-flipped), they return a value or an error with a message, never
//! panic, and an error leaves the caller's data set as it was.
//!
//! 10,000 cases per property by default; `PROPTEST_CASES=N` changes it.

use std::path::Path;

use cifar_data::{Cifar10, FittedPreprocessing, Preprocessing, RECORD_BYTES, synthetic};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A valid batch of `n` records.
fn batch(n: usize) -> Vec<u8> {
    synthetic::batch_bytes(&synthetic::images(n, 7))
}

/// A saved PCA preprocessing (header and projection), as bytes (fitted once).
fn saved_preprocessing() -> Vec<u8> {
    static SAVED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SAVED.get_or_init(fit_and_save).clone()
}

fn fit_and_save() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocess.bin");
    Preprocessing::Pca { components: 2 }
        .fit(&synthetic::images(20, 3))
        .unwrap()
        .save(&path)
        .unwrap();
    std::fs::read(path).unwrap()
}

/// Damage to a valid file: cut at `cut` (a fraction of its length), then
/// flip `flips` bits at positions given as fractions.
fn damage(mut bytes: Vec<u8>, cut: f64, flips: &[(f64, u8)]) -> Vec<u8> {
    bytes.truncate((bytes.len() as f64 * cut) as usize);
    if !bytes.is_empty() {
        for &(at, bit) in flips {
            let i = ((bytes.len() - 1) as f64 * at) as usize;
            bytes[i] ^= 1 << (bit % 8);
        }
    }
    bytes
}

fn check_batch(bytes: &[u8]) {
    let mut set = synthetic::images(2, 1);
    let before = set.clone();
    match set.extend_from_batch(bytes, Path::new("data_batch_1.bin")) {
        Ok(()) => {
            assert!(!bytes.is_empty() && bytes.len().is_multiple_of(RECORD_BYTES));
            assert_eq!(set.len(), 2 + bytes.len() / RECORD_BYTES);
        }
        Err(e) => {
            assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
            assert_eq!(set, before, "an error appended part of the batch");
        }
    }
}

fn check_preprocessing(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocess.bin");
    std::fs::write(&path, bytes).unwrap();
    match FittedPreprocessing::load(&path) {
        // What loads must be usable.
        Ok(fitted) => {
            let out = fitted.transform_pixels(&vec![128u8; 3072]);
            assert_eq!(out.len(), fitted.output_shape().size());
        }
        Err(e) => assert!(e.to_string().contains("preprocess.bin"), "{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_as_a_batch(bytes in proptest::collection::vec(any::<u8>(), 0..8000)) {
        check_batch(&bytes);
    }

    #[test]
    fn a_damaged_batch(
        cut in 0.0..=1.0f64,
        flips in proptest::collection::vec((0.0..=1.0f64, any::<u8>()), 0..4),
    ) {
        check_batch(&damage(batch(3), cut, &flips));
    }

    #[test]
    fn a_damaged_preprocessing_file(
        cut in 0.0..=1.0f64,
        flips in proptest::collection::vec((0.0..=1.0f64, any::<u8>()), 0..4),
    ) {
        check_preprocessing(&damage(saved_preprocessing(), cut, &flips));
    }

    #[test]
    fn random_bytes_as_a_preprocessing_file(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        magic in any::<bool>(),
    ) {
        // With the right magic, so that the parser gets past the first check.
        let mut file = if magic { b"CIFARPP1".to_vec() } else { Vec::new() };
        file.extend(bytes);
        check_preprocessing(&file);
    }

    #[test]
    fn random_bytes_as_an_archive(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cifar-10-binary.tar.gz");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = cifar_data::archive::load_archive(&path) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn any_text_as_a_preprocessing_method(text in ".{0,40}") {
        if let Ok(method) = text.parse::<Preprocessing>() {
            // What parses prints back to text that parses to the same.
            prop_assert_eq!(method.to_string().parse::<Preprocessing>().unwrap(), method);
        }
    }
}

#[test]
fn a_damaged_folder_loads_or_fails_cleanly() {
    // A whole folder with one damaged batch, through the public loader.
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 4, 2, 5).unwrap();
    let path = dir.path().join("data_batch_4.bin");
    let valid = std::fs::read(&path).unwrap();
    for k in 0..200u64 {
        let cut = (k as f64 * 0.618).fract();
        std::fs::write(&path, damage(valid.clone(), cut, &[(cut, k as u8)])).unwrap();
        match Cifar10::load(dir.path()) {
            Ok(data) => assert!(data.train.len() <= 20),
            Err(e) => assert!(e.to_string().contains("data_batch_4.bin"), "{e}"),
        }
    }
}
