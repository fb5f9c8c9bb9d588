//! Writing files so that a crash, a kill or a full disk never leaves a torn one: the new
//! contents go to a temporary file beside the old, are flushed to the disk, and replace it in
//! one rename. A reader sees the old file or the new one, never half of either.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary file `path`'s new contents are written to before the rename.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TEMPORARY_SUFFIX);
    path.with_file_name(name)
}

/// What a temporary file's name ends with (left behind only by a writer that was killed).
pub const TEMPORARY_SUFFIX: &str = ".partial";

/// Writes `contents` to `path` atomically (see the module docs).
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace_atomically(path, |temporary| {
        let mut file = std::fs::File::create(temporary)?;
        file.write_all(contents)?;
        Ok(())
    })
}

/// Has `write` write the new contents of `path` to the temporary path it is given, then flushes
/// them to the disk and renames them over `path`. On an error the temporary file is removed
/// and `path` is as it was.
pub fn replace_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let temporary = temporary_path(path);
    let written = write(&temporary)
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    // The rename itself is durable once the directory is flushed (not every platform lets a
    // directory be opened; where it cannot, the rename is as durable as the system makes it).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when the test is done with it.
    fn scratch(name: &str) -> tempfile::TempDir {
        let prefix = format!("zoo-files-{name}-");
        tempfile::Builder::new().prefix(&prefix).tempdir().unwrap()
    }

    #[test]
    fn a_file_is_replaced_whole() {
        let dir = scratch("whole");
        let path = dir.path().join("a.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert!(!temporary_path(&path).exists());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = scratch("failed");
        let path = dir.path().join("a.json");
        write_atomically(&path, b"old").unwrap();
        let error = replace_atomically(&path, |temporary| {
            std::fs::write(temporary, b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temporary_path(&path).exists());
    }

    #[test]
    fn a_full_device_is_an_error() {
        // /dev/full answers every write with ENOSPC (Linux).
        if !Path::new("/dev/full").exists() {
            return;
        }
        let dir = scratch("full");
        let path = dir.path().join("a.bin");
        let error = replace_atomically(&path, |_| {
            let mut full = std::fs::OpenOptions::new().write(true).open("/dev/full")?;
            full.write_all(&[0; 4096])?;
            full.flush()
        })
        .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "{error}");
        assert!(!path.exists());
    }
}
