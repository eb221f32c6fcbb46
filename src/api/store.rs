//! What intake needs of storage, in one small trait: the submissions it stored, the known DKG
//! keys, and whether the block observer has recorded a deposit.
//!
//! TEMPORARY SEAM: the deposit-submission table arrives in `storage` (the lead's
//! `DbWrite::write_deposit_submission` / `DbRead::get_deposit_submission`). Until then
//! [`StorageWithSubmissions`] keeps submissions in memory beside the real store; once it lands,
//! `SubmissionStore` is implemented for `dyn Storage` and this in-memory half goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{OutPoint, ScriptBuf, Transaction};

use crate::storage::{self, Storage};

/// Where a stored deposit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmissionSource {
    /// A wallet, through this signer's `POST /deposit` (or an Emily-style API it polls).
    Wallet,
    /// Another signer, over the peer links.
    Peer(secp256k1::PublicKey),
}

/// A deposit this signer validated against its own node and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositSubmissionRecord {
    pub outpoint: OutPoint,
    pub deposit_script: ScriptBuf,
    pub reclaim_script: ScriptBuf,
    pub transaction: Transaction,
    pub source: SubmissionSource,
}

/// Storage as intake sees it.
#[async_trait]
pub trait SubmissionStore: Send + Sync {
    /// Stores the record; true when it is new (the first write of an outpoint stands).
    async fn write_submission(&self, record: &DepositSubmissionRecord) -> storage::Result<bool>;

    async fn get_submission(
        &self,
        outpoint: &OutPoint,
    ) -> storage::Result<Option<DepositSubmissionRecord>>;

    /// The x-only aggregate keys of every DKG this signer took part in.
    async fn known_keys(&self) -> storage::Result<Vec<XOnlyPublicKey>>;

    /// Whether the block observer has recorded the deposit as confirmed.
    async fn is_recorded(&self, outpoint: &OutPoint) -> storage::Result<bool>;
}

/// The real store for keys and recorded deposits, plus submissions in memory (see the module
/// comment).
pub struct StorageWithSubmissions {
    storage: Arc<dyn Storage>,
    submissions: Mutex<HashMap<OutPoint, DepositSubmissionRecord>>,
}

impl StorageWithSubmissions {
    pub fn new(storage: Arc<dyn Storage>) -> StorageWithSubmissions {
        StorageWithSubmissions {
            storage,
            submissions: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SubmissionStore for StorageWithSubmissions {
    async fn write_submission(&self, record: &DepositSubmissionRecord) -> storage::Result<bool> {
        let mut map = self.submissions.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(&record.outpoint) {
            return Ok(false);
        }
        map.insert(record.outpoint, record.clone());
        Ok(true)
    }

    async fn get_submission(
        &self,
        outpoint: &OutPoint,
    ) -> storage::Result<Option<DepositSubmissionRecord>> {
        Ok(self
            .submissions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(outpoint)
            .cloned())
    }

    async fn known_keys(&self) -> storage::Result<Vec<XOnlyPublicKey>> {
        Ok(self
            .storage
            .get_all_dkg_shares()
            .await?
            .iter()
            .map(|s| s.shares.aggregate_key.x_only())
            .collect())
    }

    async fn is_recorded(&self, outpoint: &OutPoint) -> storage::Result<bool> {
        Ok(self.storage.get_deposit_request(outpoint).await?.is_some())
    }
}
