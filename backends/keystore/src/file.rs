//! The file on disk: bounded reads, atomic private writes, and the lock that keeps two processes
//! (the running signer and a `keys` command, say) from interleaving their writes.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Read, Write},
    os::unix::{
        fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rand::{rngs::OsRng, RngCore};

use crate::format::MAX_FILE_BYTES;

/// Identifies one version of the file: any rewrite (a new inode from rename) or chmod changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    pub(crate) fn of_path(path: &Path) -> io::Result<Self> {
        fs::metadata(path).map(|m| Fingerprint::of(&m))
    }
}

/// Why the file could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    NotAFile,
    TooLarge(u64),
}

/// Reads the whole file (at most [`MAX_FILE_BYTES`]) and the fingerprint of what was read.
pub(crate) fn read_bounded(path: &Path) -> Result<(Vec<u8>, Fingerprint), ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotAFile);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(bytes.len() as u64));
    }
    Ok((bytes, Fingerprint::of(&meta)))
}

/// The directory a path lives in ("." for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates the keystore's directory (owner-only) if it is missing.
pub(crate) fn ensure_dir(path: &Path) -> io::Result<()> {
    let dir = parent_dir(path);
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one, never a
/// mix: a mode-0600 temp file in the same directory, fsync, rename over, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        OsRng.next_u64()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only take bits away from 0600; set it exactly so the owner can rewrite it.
        file.set_permissions(Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: a leftover temp file holds only ciphertext, but should not pile up.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The lock file next to the keystore. A separate file, because the keystore itself is replaced
/// by rename on every write and a lock on the old inode would not exclude anyone.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keystore".into());
    parent_dir(path).join(format!("{name}.lock"))
}

/// Why the write lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    Io(io::Error),
    Timeout(Duration),
}

/// An advisory exclusive `flock` on the lock file, held until drop (closing the descriptor
/// releases it, also when the process dies).
pub(crate) struct WriteLock {
    _file: File,
}

impl WriteLock {
    /// Waits at most `wait` (polling), so a stuck process elsewhere gives an error, not a hang.
    pub(crate) fn acquire(path: &Path, wait: Duration) -> Result<Self, LockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(LockError::Io)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor we own for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(WriteLock { _file: file });
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                _ => return Err(LockError::Io(err)),
            }
            if Instant::now() >= deadline {
                return Err(LockError::Timeout(wait));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_0600_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ks.json")]);
    }

    #[test]
    fn a_held_lock_times_out_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_path(&dir.path().join("ks.json"));
        let held = WriteLock::acquire(&lock, Duration::from_secs(1)).unwrap();
        // flock locks belong to the open file description, so a second open in this process
        // contends exactly like another process would.
        assert!(matches!(
            WriteLock::acquire(&lock, Duration::from_millis(100)),
            Err(LockError::Timeout(_))
        ));
        drop(held);
        assert!(WriteLock::acquire(&lock, Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn oversized_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let f = File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(matches!(read_bounded(&path), Err(ReadError::TooLarge(_))));
        assert!(matches!(
            read_bounded(dir.path()),
            Err(ReadError::NotAFile) | Err(ReadError::Io(_))
        ));
    }
}
