//! The CIFAR-10 binary format, read into memory once.

use std::path::{Path, PathBuf};

use crate::DataError;

/// Channels per image (red, green, blue).
pub const CHANNELS: usize = 3;
/// Image height in pixels.
pub const HEIGHT: usize = 32;
/// Image width in pixels.
pub const WIDTH: usize = 32;
/// Bytes of pixels per image: 3 x 32 x 32.
pub const IMAGE_BYTES: usize = CHANNELS * HEIGHT * WIDTH;
/// Bytes per record in a binary batch: one label byte, then the pixels.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// The class names, in label order (as in `batches.meta.txt`).
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The five training batches, in order.
pub(crate) const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The official test batch (optional).
pub(crate) const TEST_FILE: &str = "test_batch.bin";
/// The class names file.
pub(crate) const META_FILE: &str = "batches.meta.txt";

/// Images and labels held in memory: pixels as `u8` in `[N, 3, 32, 32]` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSet {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl ImageSet {
    /// Builds a set from pixels (`labels.len() * 3072` bytes, `[N, 3, 32, 32]` order) and
    /// labels (each 0..=9).
    ///
    /// # Panics
    ///
    /// Panics if the lengths disagree or a label is above 9.
    pub fn new(pixels: Vec<u8>, labels: Vec<u8>) -> Self {
        assert_eq!(
            pixels.len(),
            labels.len() * IMAGE_BYTES,
            "ImageSet needs {IMAGE_BYTES} pixel bytes per label"
        );
        assert!(labels.iter().all(|&l| l < 10), "labels must be 0..9");
        Self { pixels, labels }
    }

    /// Parses the records of one binary batch, appending them to this set.
    /// The batch is checked whole first: on error nothing is appended.
    ///
    /// `path` only names the source in errors.
    pub fn extend_from_batch(&mut self, bytes: &[u8], path: &Path) -> Result<(), DataError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
            return Err(DataError::BadSize {
                path: path.to_path_buf(),
                size: bytes.len() as u64,
            });
        }
        if let Some((index, record)) = bytes
            .chunks_exact(RECORD_BYTES)
            .enumerate()
            .find(|(_, record)| record[0] > 9)
        {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                index,
                label: record[0],
            });
        }
        let count = bytes.len() / RECORD_BYTES;
        self.pixels.reserve(count * IMAGE_BYTES);
        self.labels.reserve(count);
        for record in bytes.chunks_exact(RECORD_BYTES) {
            self.labels.push(record[0]);
            self.pixels.extend_from_slice(&record[1..]);
        }
        Ok(())
    }

    /// The md5 of the set's labels and pixels, in order, as hex: two sets
    /// have the same fingerprint when they hold the same images in the same
    /// order (what a fitted preprocessing records of its training split).
    pub fn fingerprint(&self) -> String {
        use md5::{Digest, Md5};
        let mut hash = Md5::new();
        hash.update((self.labels.len() as u64).to_le_bytes());
        hash.update(&self.labels);
        hash.update(&self.pixels);
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 3,072 pixel bytes of image `index`, channel-major (`[3, 32, 32]`).
    pub fn image(&self, index: usize) -> &[u8] {
        &self.pixels[index * IMAGE_BYTES..(index + 1) * IMAGE_BYTES]
    }

    /// The label (0..=9) of image `index`.
    pub fn label(&self, index: usize) -> u8 {
        self.labels[index]
    }

    /// All pixels, `[N, 3, 32, 32]` order.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Images per class, indexed by label.
    pub fn class_counts(&self) -> [usize; 10] {
        let mut counts = [0; 10];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

/// The CIFAR-10 dataset in memory: the training batches, and the test batch when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cifar10 {
    /// The five training batches, concatenated in order.
    pub train: ImageSet,
    /// The official test batch, when `test_batch.bin` was present.
    pub test: Option<ImageSet>,
    /// The class names, in label order.
    pub classes: Vec<String>,
}

impl Cifar10 {
    /// Loads every batch of a folder in the official binary layout
    /// (`data_batch_1.bin` .. `data_batch_5.bin`, optional `test_batch.bin` and
    /// `batches.meta.txt`).
    ///
    /// Each file's record count is its size / 3073.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(DataError::FolderNotFound {
                path: dir.to_path_buf(),
            });
        }
        let mut train = ImageSet::default();
        for name in TRAIN_FILES {
            let path = dir.join(name);
            let bytes = read_file(&path)?;
            train.extend_from_batch(&bytes, &path)?;
        }
        let test_path = dir.join(TEST_FILE);
        let test = if test_path.exists() {
            let mut test = ImageSet::default();
            test.extend_from_batch(&read_file(&test_path)?, &test_path)?;
            Some(test)
        } else {
            None
        };
        let meta_path = dir.join(META_FILE);
        let classes = if meta_path.exists() {
            let text =
                std::fs::read_to_string(&meta_path).map_err(|e| DataError::io(&meta_path, e))?;
            parse_classes(&text).map_err(|count| DataError::BadMeta {
                path: meta_path.clone(),
                count,
            })?
        } else {
            default_classes()
        };
        Ok(Self {
            train,
            test,
            classes,
        })
    }
}

/// Reads a whole file, telling a missing file from an unreadable one.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::FileMissing {
                path: path.to_path_buf(),
            }
        } else {
            DataError::io(path, e)
        }
    })
}

/// Class names from `batches.meta.txt`: one a line, blank lines ignored;
/// the number of names found when it is not ten.
pub(crate) fn parse_classes(text: &str) -> Result<Vec<String>, usize> {
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() == 10 {
        Ok(names)
    } else {
        Err(names.len())
    }
}

pub(crate) fn default_classes() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}

/// Finds the data folder: `explicit` if given, else `$CIFAR10_DIR`, else
/// `./data/cifar-10-batches-bin`, else the download cache
/// ([`archive::default_cache_dir`](crate::archive::default_cache_dir)).
///
/// A folder given explicitly (or by `CIFAR10_DIR`) must exist; the others are
/// tried in turn.
pub fn find_data_dir(explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    if let Some(dir) = explicit {
        return existing(dir);
    }
    if let Some(dir) = std::env::var_os("CIFAR10_DIR").filter(|d| !d.is_empty()) {
        return existing(Path::new(&dir));
    }
    let mut searched = vec![PathBuf::from("data").join("cifar-10-batches-bin")];
    if let Some(cache) = crate::archive::default_cache_dir() {
        searched.push(cache.join("cifar-10-batches-bin"));
    }
    searched
        .iter()
        .find(|d| d.join(TRAIN_FILES[0]).is_file())
        .cloned()
        .ok_or(DataError::NotFoundAnywhere { searched })
}

fn existing(dir: &Path) -> Result<PathBuf, DataError> {
    if dir.is_dir() {
        Ok(dir.to_path_buf())
    } else {
        Err(DataError::FolderNotFound {
            path: dir.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend((0..IMAGE_BYTES).map(|i| fill.wrapping_add(i as u8)));
        r
    }

    #[test]
    fn parses_records_exactly() {
        let mut bytes = record(3, 10);
        bytes.extend(record(9, 200));
        let mut set = ImageSet::default();
        set.extend_from_batch(&bytes, Path::new("x.bin")).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.labels(), &[3, 9]);
        assert_eq!(set.image(0), &record(3, 10)[1..]);
        assert_eq!(set.image(1)[0], 200);
        assert_eq!(set.image(1)[1], 201);
        assert_eq!(set.class_counts()[3], 1);
    }

    #[test]
    fn size_error_names_file_and_size() {
        let mut set = ImageSet::default();
        let err = set
            .extend_from_batch(&vec![0u8; 3075], Path::new("data_batch_2.bin"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("data_batch_2.bin"), "{msg}");
        assert!(msg.contains("3075 bytes"), "{msg}");
        assert!(msg.contains("3073"), "{msg}");
    }

    #[test]
    fn label_error_names_file_and_index() {
        let mut bytes = record(1, 0);
        bytes.extend(record(12, 0));
        let err = ImageSet::default()
            .extend_from_batch(&bytes, Path::new("b.bin"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("b.bin record 1 has label 12"), "{msg}");
    }

    #[test]
    fn classes_need_ten_names() {
        assert_eq!(parse_classes("a\nb\n"), Err(2));
        let ten = (0..10).map(|i| format!("c{i}\n\n")).collect::<String>();
        assert_eq!(parse_classes(&ten).unwrap()[9], "c9");
    }

    #[test]
    fn a_bad_batch_appends_nothing() {
        let mut set = ImageSet::default();
        set.extend_from_batch(&record(1, 0), Path::new("a.bin"))
            .unwrap();
        let mut bad = record(2, 0);
        bad.extend(record(3, 0));
        bad.extend(record(10, 0));
        assert!(set.extend_from_batch(&bad, Path::new("b.bin")).is_err());
        assert_eq!(set.len(), 1);
        let empty = set.extend_from_batch(&[], Path::new("c.bin")).unwrap_err();
        assert!(empty.to_string().contains("c.bin is 0 bytes"), "{empty}");
        assert_eq!(set.len(), 1);
    }
}
