//! The official `cifar-10-binary.tar.gz`: read it directly, or download it.
//!
//! [`download`] fetches the archive into a cache folder with a progress bar,
//! checks its md5, and only then renames the temporary file into place and
//! unpacks it; an interrupted or corrupt download never leaves a file that
//! looks complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::cifar::{META_FILE, TEST_FILE, TRAIN_FILES, default_classes, parse_classes};
use crate::{Cifar10, DataError, ImageSet};

/// Where the official archive is published.
pub const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// The md5 of the official archive.
pub const MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The archive's file name.
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";
/// The folder the archive unpacks to.
pub const FOLDER_NAME: &str = "cifar-10-batches-bin";

/// The platform's cache folder for this project (for example
/// `~/.cache/cifar-burn` on Linux), if the platform has one.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("cifar-burn"))
}

/// Reads CIFAR-10 straight from a `cifar-10-binary.tar.gz` archive, without unpacking it.
pub fn load_archive(path: impl AsRef<Path>) -> Result<Cifar10, DataError> {
    let path = path.as_ref();
    let bad = |reason: String| DataError::BadArchive {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::FileMissing {
                path: path.to_path_buf(),
            }
        } else {
            DataError::io(path, e)
        }
    })?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut train: [Option<Vec<u8>>; 5] = Default::default();
    let mut test = None;
    let mut meta = None;
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let slot = if let Some(i) = TRAIN_FILES.iter().position(|f| *f == name) {
            &mut train[i]
        } else if name == TEST_FILE {
            &mut test
        } else if name == META_FILE {
            &mut meta
        } else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        *slot = Some(bytes);
    }
    let mut set = ImageSet::default();
    for (name, bytes) in TRAIN_FILES.iter().zip(train) {
        let bytes = bytes.ok_or_else(|| bad(format!("it holds no {name}")))?;
        set.extend_from_batch(&bytes, &path.join(name))?;
    }
    let test = match test {
        Some(bytes) => {
            let mut t = ImageSet::default();
            t.extend_from_batch(&bytes, &path.join(TEST_FILE))?;
            Some(t)
        }
        None => None,
    };
    let classes = match meta {
        Some(m) => {
            parse_classes(&String::from_utf8_lossy(&m)).map_err(|count| DataError::BadMeta {
                path: path.join(META_FILE),
                count,
            })?
        }
        None => default_classes(),
    };
    Ok(Cifar10 {
        train: set,
        test,
        classes,
    })
}

/// Downloads `url` to `dest`, checking that its md5 is `expected_md5`.
///
/// The bytes go to a temporary file beside `dest` first, with a progress bar
/// on standard error; only a verified file is renamed to `dest`.
pub fn download_file(url: &str, dest: &Path, expected_md5: &str) -> Result<(), DataError> {
    let fail = |reason: String| DataError::Download {
        url: url.to_string(),
        reason,
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let response = ureq::get(url).call().map_err(|e| fail(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("downloading CIFAR-10");
    let mut reader = response.into_body().into_reader();
    // Written beside `dest` and renamed into place only once verified.
    crate::atomic::write_with(dest, |part| {
        let mut out = std::fs::File::create(part).map_err(|e| DataError::io(part, e))?;
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| DataError::io(part, e))?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        let actual = format!("{:x}", hasher.finalize());
        if actual != expected_md5 {
            return Err(DataError::ChecksumMismatch {
                url: url.to_string(),
                expected: expected_md5.to_string(),
                actual,
            });
        }
        Ok(())
    })
}

/// Makes sure `cache_dir/cifar-10-batches-bin` holds CIFAR-10, downloading
/// and unpacking the official archive from `url` if needed, and returns that folder.
///
/// Pass [`URL`] and [`MD5`] for the official release.
pub fn download(cache_dir: &Path, url: &str, expected_md5: &str) -> Result<PathBuf, DataError> {
    let folder = cache_dir.join(FOLDER_NAME);
    if TRAIN_FILES.iter().all(|f| folder.join(f).is_file()) {
        return Ok(folder);
    }
    let archive = cache_dir.join(ARCHIVE_NAME);
    if !archive.is_file() {
        download_file(url, &archive, expected_md5)?;
    }
    unpack(&archive, &folder)?;
    Ok(folder)
}

/// Unpacks the batch files of `archive` into `folder`, through a temporary
/// folder swapped in whole at the end.
fn unpack(archive: &Path, folder: &Path) -> Result<(), DataError> {
    let data = load_archive(archive)?;
    crate::atomic::write_dir(folder, |tmp| {
        let write = |name: &str, set: &ImageSet, range: std::ops::Range<usize>| {
            let mut bytes = Vec::with_capacity(range.len() * crate::RECORD_BYTES);
            for i in range {
                bytes.push(set.label(i));
                bytes.extend_from_slice(set.image(i));
            }
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))
        };
        let per_file = data.train.len() / TRAIN_FILES.len();
        for (i, name) in TRAIN_FILES.iter().enumerate() {
            let end = if i + 1 == TRAIN_FILES.len() {
                data.train.len()
            } else {
                (i + 1) * per_file
            };
            write(name, &data.train, i * per_file..end)?;
        }
        if let Some(test) = &data.test {
            write(TEST_FILE, test, 0..test.len())?;
        }
        let meta = tmp.join(META_FILE);
        std::fs::write(&meta, data.classes.join("\n") + "\n").map_err(|e| DataError::io(&meta, e))
    })
}
