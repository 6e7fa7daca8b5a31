//! The errors of this crate: each names the file or value at fault and what to do.

use std::path::PathBuf;

/// Everything that can go wrong while finding, reading or preparing CIFAR-10.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data folder does not exist.
    #[error(
        "CIFAR-10 folder not found: {} does not exist. Point --data (or CIFAR10_DIR) at the \
         folder holding data_batch_1.bin .. data_batch_5.bin, or pass --download to fetch the \
         official archive",
        path.display()
    )]
    FolderNotFound {
        /// Where we looked.
        path: PathBuf,
    },
    /// No folder was given and none of the usual places holds the data.
    #[error(
        "no CIFAR-10 data found; looked in: {}. Pass --data DIR, set CIFAR10_DIR, or pass \
         --download to fetch the official archive",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFoundAnywhere {
        /// Every place that was searched, in order.
        searched: Vec<PathBuf>,
    },
    /// A required file is missing from the data folder.
    #[error("{} is missing: a CIFAR-10 folder holds data_batch_1.bin .. data_batch_5.bin", path.display())]
    FileMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// A batch file's size is not a whole number of 3,073-byte records.
    #[error(
        "{} is {size} bytes, not a multiple of the 3073-byte CIFAR-10 record: the file is \
         truncated or not a CIFAR-10 binary batch; download it again",
        path.display()
    )]
    BadSize {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// `batches.meta.txt` does not name ten classes.
    #[error(
        "{} names {count} classes, but CIFAR-10 has 10 (one name a line): fix or delete the \
         file (the standard names are used without it)",
        path.display()
    )]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// How many names it holds.
        count: usize,
    },
    /// A record carries a label outside 0..=9.
    #[error(
        "{} record {index} has label {label}, but CIFAR-10 labels are 0..9: the file is \
         corrupt or from another dataset (CIFAR-100?)",
        path.display()
    )]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// The record's index within the file.
        index: usize,
        /// The label found.
        label: u8,
    },
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The archive is not a readable CIFAR-10 archive.
    #[error("{} is not a readable CIFAR-10 archive: {reason}", path.display())]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A download failed.
    #[error(
        "download of {url} failed: {reason}. Check the network, or download it by hand and pass --data"
    )]
    Download {
        /// The address.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A downloaded file does not have the expected checksum.
    #[error(
        "{url} downloaded, but its md5 is {actual}, not {expected}: the download is corrupt; try again"
    )]
    ChecksumMismatch {
        /// The address.
        url: String,
        /// The expected md5.
        expected: String,
        /// The md5 of what arrived.
        actual: String,
    },
    /// A split or preprocessing parameter is out of range.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The parameter.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A saved preprocessing does not belong to this training split.
    #[error("the saved preprocessing {0}")]
    NotFittedOn(String),
    /// A numerical routine failed.
    #[error("{0}")]
    Numerical(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        DataError::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
