//! Loading CIFAR-10 from generated files in the official layout: the exact
//! round trip, every error case, the archive, and the download.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use cifar_data::{Cifar10, DataError, archive, synthetic};

#[test]
fn folder_round_trips_pixels_and_labels_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let written = synthetic::write_folder(dir.path(), 7, 3, 11).unwrap();
    let data = Cifar10::load(dir.path()).unwrap();
    assert_eq!(data.train, written);
    assert_eq!(data.train.len(), 35);
    assert_eq!(data.test.as_ref().unwrap().len(), 3);
    assert_eq!(data.test.unwrap(), synthetic::images(3, 11 ^ 1));
    assert_eq!(data.classes[9], "truck");
}

#[test]
fn test_batch_is_optional_and_counts_come_from_file_sizes() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 4, 0, 1).unwrap();
    // A shorter last batch: the count is size / 3073, not a fixed 10,000.
    let last = dir.path().join("data_batch_5.bin");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..2 * 3073]).unwrap();
    let data = Cifar10::load(dir.path()).unwrap();
    assert!(data.test.is_none());
    assert_eq!(data.train.len(), 18);
}

#[test]
fn missing_folder_says_where_it_looked_and_what_to_do() {
    let err = Cifar10::load("/no/such/cifar").unwrap_err();
    assert!(matches!(err, DataError::FolderNotFound { .. }));
    let msg = err.to_string();
    assert!(msg.contains("/no/such/cifar"), "{msg}");
    assert!(msg.contains("--download"), "{msg}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 2, 0, 1).unwrap();
    std::fs::remove_file(dir.path().join("data_batch_3.bin")).unwrap();
    let msg = Cifar10::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("data_batch_3.bin is missing"), "{msg}");
}

#[test]
fn truncated_file_names_file_and_size() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 2, 0, 1).unwrap();
    let path = dir.path().join("data_batch_4.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let msg = Cifar10::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("data_batch_4.bin is 6046 bytes"), "{msg}");
    assert!(msg.contains("not a multiple of the 3073-byte"), "{msg}");
}

#[test]
fn bad_label_names_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 3, 0, 1).unwrap();
    let path = dir.path().join("data_batch_2.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 3073] = 42;
    std::fs::write(&path, bytes).unwrap();
    let msg = Cifar10::load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("data_batch_2.bin record 2 has label 42"),
        "{msg}"
    );
}

#[test]
fn unreadable_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 2, 0, 1).unwrap();
    // A folder where a file should be cannot be read as one.
    let path = dir.path().join("data_batch_1.bin");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = Cifar10::load(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
}

#[test]
fn archive_is_read_directly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cifar-10-binary.tar.gz");
    let written = synthetic::write_archive(&path, 3, 2, 5).unwrap();
    let data = archive::load_archive(&path).unwrap();
    assert_eq!(data.train, written);
    assert_eq!(data.test.unwrap().len(), 2);

    std::fs::write(dir.path().join("junk.tar.gz"), b"not gzip").unwrap();
    let msg = archive::load_archive(dir.path().join("junk.tar.gz"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("junk.tar.gz is not a readable CIFAR-10 archive"),
        "{msg}"
    );
}

/// Serves `body` once per connection on 127.0.0.1, for `connections` connections.
fn serve(body: Vec<u8>, connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/cifar-10-binary.tar.gz")
}

fn md5_of(path: &Path) -> String {
    use md5::Digest;
    format!("{:x}", md5::Md5::digest(std::fs::read(path).unwrap()))
}

#[test]
fn download_verifies_renames_and_unpacks() {
    let src = tempfile::tempdir().unwrap();
    let archive_path = src.path().join("a.tar.gz");
    let written = synthetic::write_archive(&archive_path, 2, 0, 9).unwrap();
    let md5 = md5_of(&archive_path);
    let url = serve(std::fs::read(&archive_path).unwrap(), 1);

    let cache = tempfile::tempdir().unwrap();
    let folder = archive::download(cache.path(), &url, &md5).unwrap();
    assert_eq!(folder, cache.path().join("cifar-10-batches-bin"));
    assert!(cache.path().join("cifar-10-binary.tar.gz").is_file());
    // Only the archive and the folder: no temporary file is left.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
    assert_eq!(Cifar10::load(&folder).unwrap().train, written);
    // A second call finds the data and does not download again (the server is gone).
    assert_eq!(archive::download(cache.path(), &url, &md5).unwrap(), folder);
}

#[test]
fn download_with_wrong_checksum_leaves_no_file() {
    let url = serve(b"corrupted bytes".to_vec(), 1);
    let cache = tempfile::tempdir().unwrap();
    let err = archive::download(cache.path(), &url, archive::MD5).unwrap_err();
    assert!(matches!(err, DataError::ChecksumMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(archive::MD5), "{err}");
    // Nothing is left in the cache: no archive, no temporary file.
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}

#[test]
fn download_network_failure_is_clear() {
    // A server that hangs up without answering (the listener stays ours,
    // so no other process can take the port in between).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x.tar.gz", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            drop(stream);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let msg = archive::download(cache.path(), &url, archive::MD5)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("download of"), "{msg}");
    assert!(msg.contains("--data"), "{msg}");
}

#[test]
fn empty_batch_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 2, 0, 1).unwrap();
    std::fs::write(dir.path().join("data_batch_3.bin"), b"").unwrap();
    let err = Cifar10::load(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::BadSize { size: 0, .. }), "{err:?}");
    assert!(
        err.to_string().contains("data_batch_3.bin is 0 bytes"),
        "{err}"
    );
}

#[test]
fn meta_file_with_other_than_ten_names_is_named() {
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_folder(dir.path(), 2, 0, 1).unwrap();
    let meta = dir.path().join("batches.meta.txt");
    std::fs::write(&meta, "cat\ndog\n").unwrap();
    let err = Cifar10::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("batches.meta.txt names 2 classes, but CIFAR-10 has 10"),
        "{msg}"
    );
    // Blank lines around ten names are fine.
    let ten: String = (0..10).map(|i| format!("\nclass{i}\n")).collect();
    std::fs::write(&meta, ten).unwrap();
    assert_eq!(Cifar10::load(dir.path()).unwrap().classes[3], "class3");
}
