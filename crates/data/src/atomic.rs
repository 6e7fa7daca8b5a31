//! Files and folders written whole or not at all: the one way this project
//! writes anything a crash must not leave half-written.
//!
//! The content goes to a temporary name beside the destination, is synced
//! to the disk (`fsync`), and is renamed over the destination; then the
//! parent folder is synced so that the rename itself survives a power
//! loss. A crash at any point leaves either the old file or the new one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::DataError;

/// A hidden temporary name beside `path`, unique to this call (process id
/// and a counter), with the same extension (writers such as Burn's
/// recorders set the extension).
fn temporary(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{stem}.{}-{call}.tmp{ext}", std::process::id()))
}

/// Syncs a folder's entries (the names in it) to the disk.
pub fn sync_dir(dir: &Path) -> Result<(), DataError> {
    // Folders cannot be opened for syncing on every platform; Unix is where it matters.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataError::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    write_with(path, |tmp| {
        let mut file = File::create(tmp).map_err(|e| DataError::io(tmp, e))?;
        file.write_all(bytes).map_err(|e| DataError::io(tmp, e))
    })
}

/// Lets `write` create the file at a temporary path (for writers that take a
/// path, such as Burn's recorders), then syncs it and renames it to `path`.
/// On error the temporary file is removed and `path` is untouched.
pub fn write_with<E>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E>
where
    E: From<DataError>,
{
    let tmp = temporary(path);
    let result = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| DataError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
        Ok(sync_dir(parent(path))?)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Fills a fresh temporary folder with `write`, syncs every file in it and
/// the folder itself, then puts it at `dest` with one rename (an existing
/// `dest` is first renamed to `dest` + `.old` and removed after, so a crash
/// in between leaves the old folder under that name).
pub fn write_dir<E>(dest: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E>
where
    E: From<DataError>,
{
    let tmp = temporary(dest);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let result = write(&tmp).and_then(|()| Ok(replace_dir(&tmp, dest)?));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn replace_dir(tmp: &Path, dest: &Path) -> Result<(), DataError> {
    for entry in std::fs::read_dir(tmp).map_err(|e| DataError::io(tmp, e))? {
        let path = entry.map_err(|e| DataError::io(tmp, e))?.path();
        if path.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| DataError::io(&path, e))?;
        }
    }
    sync_dir(tmp)?;
    let old = old_name(dest);
    let _ = std::fs::remove_dir_all(&old);
    if dest.exists() {
        std::fs::rename(dest, &old).map_err(|e| DataError::io(dest, e))?;
    }
    std::fs::rename(tmp, dest).map_err(|e| DataError::io(dest, e))?;
    sync_dir(parent(dest))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Removes the temporary files and folders that writers killed mid-write
/// left in `dir` (their names start with `.` and hold `.tmp`). Call it only
/// where no other process writes into `dir`.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp") {
            let path = entry.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

/// Where [`write_dir`] keeps the previous folder while it swaps in the new one.
pub fn old_name(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".old");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_a_failed_write_leaves_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let failed: Result<(), DataError> = write_with(&path, |t| {
            std::fs::write(t, b"half").unwrap();
            Err(DataError::io(t, std::io::Error::other("disk full")))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_folder_is_swapped_in_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("checkpoint");
        for round in ["a", "b"] {
            write_dir(&dest, |d| -> Result<(), DataError> {
                std::fs::write(d.join("model"), round).unwrap();
                std::fs::write(d.join("state"), round).unwrap();
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(std::fs::read(dest.join("model")).unwrap(), b"b");
        assert!(!old_name(&dest).exists());
        let failed = write_dir(&dest, |d| -> Result<(), DataError> {
            std::fs::write(d.join("model"), "c").unwrap();
            Err(DataError::io(d, std::io::Error::other("disk full")))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(dest.join("state")).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
