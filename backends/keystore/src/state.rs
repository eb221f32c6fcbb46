//! The rollback mark: the highest generation of the keystore that this host has used, kept in a
//! small file outside the keystore (by default `<keystore>.state` next to it; `state_path` in
//! `[custody.keystore]` moves it).
//!
//! ```json
//! { "format": "sbtc-hsm-signer-keystore-state", "keystore_id": "<16 bytes>", "generation": 7 }
//! ```
//!
//! The keystore's generation is covered by its MAC, so an older copy of the file cannot claim a
//! newer generation; the mark is what it is compared with. The mark needs no MAC of its own: whoever
//! can lower it can also delete it, and a missing mark is started afresh (see `keystore.rs`).
//! Restoring both files together, or deleting the mark, defeats the check: it catches the common
//! mistake and the careless restore, not an attacker who controls the whole directory.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    file::{self, ReadError},
    format::ID_LEN,
};

const STATE_MAGIC: &str = "sbtc-hsm-signer-keystore-state";

/// The highest generation of one keystore (named by its id) that this host has used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub keystore_id: [u8; ID_LEN],
    pub generation: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkJson {
    format: String,
    keystore_id: String,
    generation: u64,
}

/// `<keystore file name>.state` in the keystore's directory.
pub(crate) fn default_path(keystore: &Path) -> PathBuf {
    let name = keystore
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keystore".into());
    file::parent_dir(keystore).join(format!("{name}.state"))
}

/// The mark at `path`, or None if there is no file. An unreadable or malformed file is an error
/// (as text for the caller to wrap): a mark that cannot be read must not count as no mark.
pub(crate) fn read(path: &Path) -> Result<Option<Mark>, String> {
    let bytes = match file::read_bounded(path) {
        Ok((bytes, _)) => bytes,
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(ReadError::Io(e)) => return Err(format!("cannot read {}: {e}", path.display())),
        Err(ReadError::NotAFile) => {
            return Err(format!("{} is not a regular file", path.display()))
        }
        Err(ReadError::TooLarge(n)) => {
            return Err(format!(
                "{} has {n} bytes: not a keystore state file",
                path.display()
            ))
        }
    };
    let json: MarkJson = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a keystore state file ({e})", path.display()))?;
    if json.format != STATE_MAGIC {
        return Err(format!(
            "{} has format '{}', not '{STATE_MAGIC}'",
            path.display(),
            json.format
        ));
    }
    let id = hex::decode(&json.keystore_id)
        .ok()
        .and_then(|b| <[u8; ID_LEN]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            format!(
                "{}: keystore_id is not {ID_LEN} bytes of hex",
                path.display()
            )
        })?;
    Ok(Some(Mark {
        keystore_id: id,
        generation: json.generation,
    }))
}

/// Replaces the mark atomically (mode 0600), creating its directory (0700) if needed.
pub(crate) fn write(path: &Path, mark: &Mark) -> io::Result<()> {
    let json = MarkJson {
        format: STATE_MAGIC.to_owned(),
        keystore_id: hex::encode(mark.keystore_id),
        generation: mark.generation,
    };
    let mut bytes = serde_json::to_vec_pretty(&json).map_err(io::Error::other)?;
    bytes.push(b'\n');
    file::ensure_dir(path)?;
    file::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_no_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(&dir.path().join("keystore.json"));
        assert_eq!(path, dir.path().join("keystore.json.state"));
        assert_eq!(read(&path), Ok(None));
        let mark = Mark {
            keystore_id: [9; ID_LEN],
            generation: 41,
        };
        write(&path, &mark).unwrap();
        assert_eq!(read(&path), Ok(Some(mark)));
    }

    #[test]
    fn a_damaged_mark_is_an_error_not_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ks.state");
        for bad in [
            &b""[..],
            b"{}",
            b"{\"format\":\"other\",\"keystore_id\":\"00\",\"generation\":1}",
            b"{\"format\":\"sbtc-hsm-signer-keystore-state\",\"keystore_id\":\"zz\",\"generation\":1}",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = read(&path).unwrap_err();
            assert!(e.contains("ks.state"), "{e}");
        }
    }
}
