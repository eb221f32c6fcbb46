//! The one path every deposit takes, whoever announced it (a wallet over HTTP, a peer over the
//! links, an Emily-style API): validate against this signer's own bitcoind, store, and, for a
//! wallet's deposit that is new here, pass it to the peers. Nothing is stored on a refusal; the
//! refusal is remembered in memory (bounded) so that `GET /deposit/{txid}/{vout}` can say why.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bitcoin::{Network, OutPoint};

use super::relay::Relay;
use crate::chain::bitcoin::deposit::{
    self, Confirmation, DepositError, DepositSubmission, ValidatedDeposit,
};
use crate::chain::bitcoin::BitcoinClient;
use crate::storage::{DepositSubmissionRecord, Storage, SubmissionSource};

/// Refusals remembered for `GET /deposit/...`.
const RECENT_REFUSALS: usize = 4096;

/// Why a deposit was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A deposit rule refused it (`rule` is the rule's stable name).
    Rule { rule: &'static str, message: String },
    /// The node could not answer: nothing was decided, try again later.
    NodeUnavailable { message: String },
    /// The store failed: nothing was decided, try again later.
    Storage { message: String },
}

impl Refusal {
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::Rule { rule, .. } => rule,
            Refusal::NodeUnavailable { .. } => "node_unavailable",
            Refusal::Storage { .. } => "storage_unavailable",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Rule { message, .. }
            | Refusal::NodeUnavailable { message }
            | Refusal::Storage { message } => message,
        }
    }

    fn from_deposit_error(e: &DepositError) -> Refusal {
        let rule = e.rule();
        // This signer could not check it (its node failed, or is on another network): no verdict.
        if e.is_signer_side() {
            Refusal::NodeUnavailable {
                message: e.to_string(),
            }
        } else {
            Refusal::Rule {
                rule,
                message: e.to_string(),
            }
        }
    }
}

/// Where a stored deposit stands, as far as this signer knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Seen in the node's mempool, not yet in a block.
    Mempool,
    /// Confirmed on the node (or recorded by the block observer), waiting for the signers.
    Confirmed,
}

/// A deposit this signer holds.
#[derive(Clone, Debug)]
pub struct Held {
    pub record: DepositSubmissionRecord,
    /// The parsed deposit; None only if a stored record no longer parses (an older release).
    pub details: Option<ValidatedDeposit>,
    pub progress: Progress,
}

/// What a submission did.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub held: Held,
    /// False when the deposit was already stored (the first one stands; nothing was relayed).
    pub new: bool,
}

/// Counters a metrics endpoint or a test can read.
#[derive(Debug, Default)]
pub struct IntakeStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    pub node_unavailable: AtomicU64,
    pub relayed: AtomicU64,
}

/// A snapshot of [`IntakeStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntakeCounts {
    pub stored: u64,
    pub duplicates: u64,
    pub refused: u64,
    pub node_unavailable: u64,
    pub relayed: u64,
}

/// The intake service: one per signer, shared by the HTTP API, the relay and the Emily poller.
pub struct Intake {
    client: Arc<dyn BitcoinClient>,
    network: Network,
    store: Arc<dyn Storage>,
    relay: Option<Relay>,
    refusals: Mutex<RecentRefusals>,
    stats: IntakeStats,
}

impl Intake {
    /// `relay`: where a wallet's new deposits go (None: a signer without peers, or tests).
    pub fn new(
        client: Arc<dyn BitcoinClient>,
        network: Network,
        store: Arc<dyn Storage>,
        relay: Option<Relay>,
    ) -> Intake {
        Intake {
            client,
            network,
            store,
            relay,
            refusals: Mutex::new(RecentRefusals::default()),
            stats: IntakeStats::default(),
        }
    }

    pub fn network(&self) -> Network {
        self.network
    }

    pub fn client(&self) -> &Arc<dyn BitcoinClient> {
        &self.client
    }

    pub fn counts(&self) -> IntakeCounts {
        let s = &self.stats;
        IntakeCounts {
            stored: s.stored.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            node_unavailable: s.node_unavailable.load(Ordering::Relaxed),
            relayed: s.relayed.load(Ordering::Relaxed),
        }
    }

    /// Validates `submission` on this signer's node and stores it. A wallet's deposit that is new
    /// here goes on to the peers; a peer's never does (no relay storms).
    pub async fn submit(
        &self,
        submission: DepositSubmission,
        source: SubmissionSource,
    ) -> Result<Accepted, Refusal> {
        let outpoint = submission.outpoint;
        if let Some(held) = self.held(&outpoint).await? {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Accepted { held, new: false });
        }
        let known_keys: Vec<_> = self
            .store
            .get_all_dkg_shares()
            .await
            .map_err(storage_refusal)?
            .iter()
            .map(|s| s.shares.aggregate_key.x_only())
            .collect();
        let (details, confirmation) = match deposit::validate_with_node(
            self.client.as_ref(),
            &submission,
            self.network,
            &known_keys,
        )
        .await
        {
            Ok(v) => v,
            Err(e) => {
                let refusal = Refusal::from_deposit_error(&e);
                match &refusal {
                    Refusal::Rule { .. } => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        self.remember_refusal(outpoint, &refusal);
                    }
                    _ => {
                        self.stats.node_unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tracing::info!(%outpoint, rule = refusal.rule(), reason = refusal.message(), ?source, "deposit refused");
                return Err(refusal);
            }
        };
        let record = DepositSubmissionRecord {
            outpoint,
            deposit_script: submission.deposit_script,
            reclaim_script: submission.reclaim_script,
            transaction: submission.transaction,
            source,
        };
        let new = self
            .store
            .write_deposit_submission(&record)
            .await
            .map_err(storage_refusal)?;
        if new {
            self.stats.stored.fetch_add(1, Ordering::Relaxed);
            self.forget_refusal(&outpoint);
            tracing::info!(%outpoint, amount = details.amount.to_sat(), ?source, "deposit stored");
            if let (SubmissionSource::Wallet, Some(relay)) = (source, &self.relay) {
                let reached = relay.announce(&record).await;
                self.stats.relayed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%outpoint, peers = reached, "deposit announced to peers");
            }
        } else {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let progress = match confirmation {
            Confirmation::Mempool => Progress::Mempool,
            Confirmation::Confirmed { .. } => Progress::Confirmed,
        };
        let fresh = Held {
            record,
            details: Some(details),
            progress,
        };
        // Whatever was stored first stands (a concurrent submission may have won); report it.
        let held = if new {
            fresh
        } else {
            self.held(&outpoint).await?.unwrap_or(fresh)
        };
        Ok(Accepted { held, new })
    }

    /// A deposit this signer holds, from storage alone (no node call).
    pub async fn held(&self, outpoint: &OutPoint) -> Result<Option<Held>, Refusal> {
        let Some(record) = self
            .store
            .get_deposit_submission(outpoint)
            .await
            .map_err(storage_refusal)?
        else {
            return Ok(None);
        };
        let recorded = self.confirmed_here(&outpoint.txid).await?;
        let submission = DepositSubmission {
            outpoint: record.outpoint,
            deposit_script: record.deposit_script.clone(),
            reclaim_script: record.reclaim_script.clone(),
            transaction: record.transaction.clone(),
        };
        let details = deposit::validate_without_node(&submission, self.network).ok();
        Ok(Some(Held {
            record,
            details,
            progress: if recorded {
                Progress::Confirmed
            } else {
                Progress::Mempool
            },
        }))
    }

    /// Whether the block observer saw `txid` confirmed on the canonical chain.
    async fn confirmed_here(&self, txid: &bitcoin::Txid) -> Result<bool, Refusal> {
        let Some(tip) = self
            .store
            .get_bitcoin_canonical_tip()
            .await
            .map_err(storage_refusal)?
        else {
            return Ok(false);
        };
        self.store
            .is_confirmed_on(&tip.hash, txid)
            .await
            .map_err(storage_refusal)
    }

    /// Why `outpoint` was refused, if it was refused lately and never stored since.
    pub fn recent_refusal(&self, outpoint: &OutPoint) -> Option<Refusal> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(outpoint)
            .cloned()
    }

    fn remember_refusal(&self, outpoint: OutPoint, refusal: &Refusal) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.map.insert(outpoint, refusal.clone()).is_none() {
            r.order.push_back(outpoint);
            while r.map.len() > RECENT_REFUSALS {
                let Some(old) = r.order.pop_front() else {
                    break;
                };
                r.map.remove(&old);
            }
        }
    }

    fn forget_refusal(&self, outpoint: &OutPoint) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.map.remove(outpoint).is_some() {
            r.order.retain(|o| o != outpoint);
        }
    }
}

#[derive(Default)]
struct RecentRefusals {
    map: HashMap<OutPoint, Refusal>,
    order: VecDeque<OutPoint>,
}

fn storage_refusal(e: crate::storage::Error) -> Refusal {
    tracing::error!(error = %e, "deposit intake: storage failed");
    Refusal::Storage {
        message: "the signer's database is unavailable; try again later".into(),
    }
}
