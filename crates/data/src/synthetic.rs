//! Small generated datasets in the official CIFAR-10 layout, for tests and demos.
//!
//! Each class has its own color and stripe pattern plus noise, so a model can
//! learn it quickly; the files are byte-for-byte in the official format.

use std::io::Write;
use std::path::Path;

use rand::{RngExt, SeedableRng};

use crate::cifar::{META_FILE, TEST_FILE, TRAIN_FILES};
use crate::{CLASSES, IMAGE_BYTES, ImageSet};

/// Generates `n` labelled images (labels cycle through the ten classes) from `seed`.
pub fn images(n: usize, seed: u64) -> ImageSet {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 10) as u8;
        labels.push(label);
        let l = label as f32;
        for c in 0..3 {
            let base = 40.0 + 18.0 * ((l + 3.0 * c as f32) % 10.0);
            for y in 0..32 {
                for x in 0..32 {
                    let stripe =
                        if (x + y * (label as usize % 3)).is_multiple_of(2 + label as usize % 4) {
                            30.0
                        } else {
                            0.0
                        };
                    let noise: f32 = rng.random_range(-25.0..25.0);
                    pixels.push((base + stripe + noise).clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    ImageSet::new(pixels, labels)
}

/// The bytes of a binary batch holding `set`.
pub fn batch_bytes(set: &ImageSet) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(set.len() * crate::RECORD_BYTES);
    for i in 0..set.len() {
        bytes.push(set.label(i));
        bytes.extend_from_slice(set.image(i));
    }
    bytes
}

/// Writes a CIFAR-10 folder into `dir`: five training batches of
/// `per_batch` images each, `test` test images (no test file if 0), and
/// `batches.meta.txt`. Returns the training images, in order.
pub fn write_folder(
    dir: &Path,
    per_batch: usize,
    test: usize,
    seed: u64,
) -> std::io::Result<ImageSet> {
    std::fs::create_dir_all(dir)?;
    let all = images(per_batch * TRAIN_FILES.len(), seed);
    for (i, name) in TRAIN_FILES.iter().enumerate() {
        let part = crate::split::subset(&all, i * per_batch..(i + 1) * per_batch);
        std::fs::write(dir.join(name), batch_bytes(&part))?;
    }
    if test > 0 {
        std::fs::write(dir.join(TEST_FILE), batch_bytes(&images(test, seed ^ 1)))?;
    }
    std::fs::write(dir.join(META_FILE), CLASSES.join("\n") + "\n")?;
    Ok(all)
}

/// Writes the folder of [`write_folder`] as a `cifar-10-binary.tar.gz` archive
/// (entries under `cifar-10-batches-bin/`, as in the official one).
pub fn write_archive(
    path: &Path,
    per_batch: usize,
    test: usize,
    seed: u64,
) -> std::io::Result<ImageSet> {
    let dir = tempdir_near(path)?;
    let all = write_folder(&dir, per_batch, test, seed)?;
    let file = std::fs::File::create(path)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    let mut names: Vec<&str> = TRAIN_FILES.to_vec();
    names.push(META_FILE);
    if test > 0 {
        names.push(TEST_FILE);
    }
    for name in names {
        tar.append_path_with_name(dir.join(name), format!("cifar-10-batches-bin/{name}"))?;
    }
    tar.into_inner()?.finish()?.flush()?;
    std::fs::remove_dir_all(&dir)?;
    Ok(all)
}

fn tempdir_near(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = path.with_extension("staging");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
