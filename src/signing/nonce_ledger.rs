//! Never reuse a nonce, even across a crash. A signer records a round in the ledger, durably,
//! BEFORE its nonces leave the process; a round already in the ledger gets no nonces and no shares.
//! Private nonces live only in memory, so after a restart the old round cannot be finished: the
//! coordinator has to start a fresh nonce round.

use std::{
    collections::HashSet,
    io::{BufRead, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;

use super::RoundId;

/// Why a round could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("nonces for round {0} were issued before; refusing to issue them again")]
    AlreadyUsed(String),
    #[error("nonce ledger {path}: {detail}; check the disk and the file's permissions")]
    Io { path: PathBuf, detail: String },
}

/// Where nonce-use markers are persisted. The lead maps this onto storage.
#[async_trait]
pub trait NonceLedger: Send + Sync {
    /// Records that nonces for `round` are about to be sent. Returns only once the marker is
    /// durable. Fails with [`LedgerError::AlreadyUsed`] if `round` was recorded before.
    async fn record(&self, round: &RoundId) -> Result<(), LedgerError>;

    /// Whether `round` has been recorded.
    async fn contains(&self, round: &RoundId) -> Result<bool, LedgerError>;
}

/// A ledger that lives as long as the process (tests, benchmarks).
#[derive(Debug, Default)]
pub struct InMemoryNonceLedger {
    rounds: Mutex<HashSet<RoundId>>,
}

#[async_trait]
impl NonceLedger for InMemoryNonceLedger {
    async fn record(&self, round: &RoundId) -> Result<(), LedgerError> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        if !rounds.insert(*round) {
            return Err(LedgerError::AlreadyUsed(round.to_string()));
        }
        Ok(())
    }

    async fn contains(&self, round: &RoundId) -> Result<bool, LedgerError> {
        let rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        Ok(rounds.contains(round))
    }
}

/// An append-only file of round ids (hex, one per line), fsynced after each append.
#[derive(Debug, Clone)]
pub struct FileNonceLedger {
    inner: Arc<Mutex<FileInner>>,
    path: PathBuf,
}

#[derive(Debug)]
struct FileInner {
    rounds: HashSet<RoundId>,
    file: std::fs::File,
}

impl FileNonceLedger {
    /// Opens (or creates) the ledger at `path` and loads the rounds recorded so far.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let io = |e: std::io::Error| LedgerError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        let mut rounds = HashSet::new();
        if path.exists() {
            let reader = std::io::BufReader::new(std::fs::File::open(&path).map_err(io)?);
            for (n, line) in reader.lines().enumerate() {
                let line = line.map_err(io)?;
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                // A torn last line (crash mid-append) was never acknowledged, so no nonce
                // went out for it; any other bad line means the file was damaged.
                match RoundId::from_hex(line) {
                    Some(r) => {
                        rounds.insert(r);
                    }
                    None => {
                        tracing::warn!(line = n + 1, path = %path.display(), "ignoring malformed nonce ledger line");
                    }
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(FileNonceLedger {
            inner: Arc::new(Mutex::new(FileInner { rounds, file })),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl NonceLedger for FileNonceLedger {
    async fn record(&self, round: &RoundId) -> Result<(), LedgerError> {
        let inner = self.inner.clone();
        let path = self.path.clone();
        let round = *round;
        let io = move |e: std::io::Error| LedgerError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            if guard.rounds.contains(&round) {
                return Err(LedgerError::AlreadyUsed(round.to_string()));
            }
            // Start on a fresh line in case a previous append was torn.
            writeln!(guard.file, "\n{round}").map_err(&io)?;
            guard.file.sync_data().map_err(&io)?;
            guard.rounds.insert(round);
            Ok(())
        })
        .await
        .map_err(|e| LedgerError::Io {
            path: self.path.clone(),
            detail: format!("ledger task failed: {e}"),
        })?
    }

    async fn contains(&self, round: &RoundId) -> Result<bool, LedgerError> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard.rounds.contains(round))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorded_round_survives_reopening_and_is_never_recorded_twice() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("ledger");
        let round = RoundId([7u8; 32]);
        let ledger = FileNonceLedger::open(&path).unwrap();
        ledger.record(&round).await.unwrap();
        assert!(matches!(
            ledger.record(&round).await,
            Err(LedgerError::AlreadyUsed(_))
        ));
        drop(ledger);

        // A torn, half-written line from a crash is skipped; the complete ones still count.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\nabcd")
            .unwrap();
        let reopened = FileNonceLedger::open(&path).unwrap();
        assert!(reopened.contains(&round).await.unwrap());
        assert!(matches!(
            reopened.record(&round).await,
            Err(LedgerError::AlreadyUsed(_))
        ));
        let fresh = RoundId([8u8; 32]);
        assert!(!reopened.contains(&fresh).await.unwrap());
        reopened.record(&fresh).await.unwrap();
        assert!(FileNonceLedger::open(&path)
            .unwrap()
            .contains(&fresh)
            .await
            .unwrap());

        let memory = InMemoryNonceLedger::default();
        memory.record(&round).await.unwrap();
        assert!(matches!(
            memory.record(&round).await,
            Err(LedgerError::AlreadyUsed(_))
        ));
    }
}
