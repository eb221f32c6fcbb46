//! Deposits between signers, over the authenticated peer links and with no HSM signature per
//! deposit: a signer that stored a wallet's new deposit announces it to every peer
//! ([`Relay::announce`]); each peer validates it on its own bitcoind before storing it
//! ([`PeerDeposits::run`]) and never passes a peer's deposit on (no relay storms). Announcements
//! from one peer are rate limited; beyond the rate they are dropped and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bitcoin::hashes::Hash as _;
use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::intake::{Intake, Refusal};
use super::limits::RateLimiter;
use crate::chain::bitcoin::deposit::DepositSubmission;
use crate::chain::bitcoin::BitcoinClient;
use crate::peer::message::{Body, ChainTip, DepositAnnouncement, Envelope, VERSION};
use crate::peer::{Inbound, PeerNode};
use crate::storage::{DepositSubmissionRecord, SubmissionSource};

/// Announcements waiting for the intake; beyond this they are dropped and counted.
pub const DEFAULT_QUEUE: usize = 1024;

/// Domain of the envelope's round id for a deposit (the links need one; deposits have no round).
const ROUND_ID_DOMAIN: &[u8] = b"sbtc-hsm-signer/deposit-announcement/v1";

/// The outbound half: announces stored wallet deposits to every linked peer.
#[derive(Clone)]
pub struct Relay {
    node: Arc<PeerNode>,
    client: Arc<dyn BitcoinClient>,
}

impl Relay {
    /// `client` gives the chain tip the envelope carries.
    pub fn new(node: Arc<PeerNode>, client: Arc<dyn BitcoinClient>) -> Relay {
        Relay { node, client }
    }

    /// Queues the deposit to every linked peer; returns to how many. A full queue drops it for
    /// that peer (counted by the peer layer): the peer can still learn it from the wallet, from
    /// another signer, or when the block observer sees the deposit.
    pub async fn announce(&self, record: &DepositSubmissionRecord) -> usize {
        let tip = match self.client.get_blockchain_info().await {
            Ok(info) => ChainTip {
                height: info.blocks,
                block_hash: Bytes::copy_from_slice(info.best_block_hash.as_byte_array()),
            },
            // The receiver does not use the tip for deposits; zeros say "unknown".
            Err(_) => ChainTip {
                height: 0,
                block_hash: Bytes::from_static(&[0u8; 32]),
            },
        };
        match self.node.broadcast(&envelope(tip, record)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(outpoint = %record.outpoint, error = %e, "deposit not announced");
                0
            }
        }
    }
}

/// The peer envelope announcing `record`.
pub fn envelope(tip: ChainTip, record: &DepositSubmissionRecord) -> Envelope {
    Envelope {
        version: VERSION,
        chain_tip: Some(tip),
        round_id: Bytes::copy_from_slice(&round_id(&record.outpoint)),
        body: Some(Body::Deposit(DepositAnnouncement {
            txid: Bytes::copy_from_slice(record.outpoint.txid.as_byte_array()),
            vout: record.outpoint.vout,
            deposit_script: Bytes::copy_from_slice(record.deposit_script.as_bytes()),
            reclaim_script: Bytes::copy_from_slice(record.reclaim_script.as_bytes()),
            transaction: Bytes::from(bitcoin::consensus::serialize(&record.transaction)),
        })),
    }
}

fn round_id(outpoint: &OutPoint) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(ROUND_ID_DOMAIN)
        .chain_update(outpoint.txid.as_byte_array())
        .chain_update(outpoint.vout.to_be_bytes())
        .finalize()
        .into()
}

/// Why an announcement did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAnnouncement {
    #[error("txid is not 32 bytes")]
    Txid,
    #[error("transaction does not decode")]
    Transaction,
    #[error("transaction's txid is not the announced txid")]
    TxidMismatch,
}

/// The submission an announcement carries.
pub fn decode(a: &DepositAnnouncement) -> Result<DepositSubmission, BadAnnouncement> {
    let txid = Txid::from_slice(&a.txid).map_err(|_| BadAnnouncement::Txid)?;
    let transaction: Transaction = bitcoin::consensus::deserialize(&a.transaction)
        .map_err(|_| BadAnnouncement::Transaction)?;
    if transaction.compute_txid() != txid {
        return Err(BadAnnouncement::TxidMismatch);
    }
    Ok(DepositSubmission {
        outpoint: OutPoint { txid, vout: a.vout },
        deposit_script: ScriptBuf::from_bytes(a.deposit_script.to_vec()),
        reclaim_script: ScriptBuf::from_bytes(a.reclaim_script.to_vec()),
        transaction,
    })
}

/// What became of peers' announcements.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub received: AtomicU64,
    /// Dropped because the intake's queue was full.
    pub queue_full: AtomicU64,
    /// Dropped because the sending peer exceeded `relay_per_minute`.
    pub rate_limited: AtomicU64,
    pub malformed: AtomicU64,
    pub stored: AtomicU64,
    /// Already held here (from the wallet, or from another peer).
    pub duplicates: AtomicU64,
    /// The node could not be asked; not stored.
    pub node_unavailable: AtomicU64,
    /// Refused by this signer's own validation, per rule; not stored.
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl RelayStats {
    fn refuse(&self, rule: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rule)
            .or_default() += 1;
    }

    /// Refusals per rule name.
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The sending end the peer side feeds (see `coordination::PeerTransport::with_deposit_sink`).
#[derive(Clone)]
pub struct DepositSink {
    tx: mpsc::Sender<Inbound>,
    stats: Arc<RelayStats>,
}

impl DepositSink {
    /// Queues a deposit envelope without waiting; a full queue drops it (counted).
    pub fn offer(&self, inbound: Inbound) {
        if self.tx.try_send(inbound).is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("deposit announcement dropped: intake queue full");
        }
    }
}

/// The receiving end: run it with [`PeerDeposits::run`].
pub struct PeerDeposits {
    rx: mpsc::Receiver<Inbound>,
    stats: Arc<RelayStats>,
}

/// A bounded queue of peers' deposit announcements (`capacity` envelopes).
pub fn channel(capacity: usize) -> (DepositSink, PeerDeposits) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(RelayStats::default());
    (
        DepositSink {
            tx,
            stats: stats.clone(),
        },
        PeerDeposits { rx, stats },
    )
}

impl PeerDeposits {
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Validates and stores peers' announcements one at a time until `shutdown` or until every
    /// sink is gone. At most `per_minute` a minute from one peer (burst twice that).
    pub async fn run(mut self, intake: Arc<Intake>, per_minute: u32, shutdown: CancellationToken) {
        let limiter = RateLimiter::<[u8; 33]>::new(per_minute, per_minute.saturating_mul(2), 1024);
        loop {
            let inbound = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = self.rx.recv() => match next {
                    Some(i) => i,
                    None => return,
                },
            };
            self.handle(&intake, &limiter, inbound).await;
        }
    }

    async fn handle(&self, intake: &Intake, limiter: &RateLimiter<[u8; 33]>, inbound: Inbound) {
        let stats = &self.stats;
        stats.received.fetch_add(1, Ordering::Relaxed);
        let from = inbound.from;
        let peer = hex::encode(from.serialize());
        if limiter.check(&from.serialize()).is_err() {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "deposit announcement dropped: peer over relay_per_minute");
            return;
        }
        let Some(Body::Deposit(a)) = &inbound.envelope.body else {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let submission = match decode(a) {
            Ok(s) => s,
            Err(e) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "malformed deposit announcement dropped");
                return;
            }
        };
        match intake
            .submit(submission, SubmissionSource::Peer(from))
            .await
        {
            Ok(a) if a.new => {
                stats.stored.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Err(Refusal::Rule { rule, .. }) => stats.refuse(rule),
            Err(_) => {
                stats.node_unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
