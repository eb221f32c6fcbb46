//! Durable signer state: blocks, requests and votes, DKG shares (sealed), sweeps and the
//! no-equivocation guard, Stacks transactions, signer-set history, and the custody audit log.
//!
//! Two implementations of the same traits: [`postgres::PgStore`] (production) and
//! [`memory::MemoryStore`] (devnet and unit tests). One test suite (tests/storage.rs) runs against
//! both, so they keep the same semantics. Writes are idempotent (a retried write is stored once).

pub use crate::keys::audit;
pub mod audit_sink;
pub mod config;
pub mod error;
pub mod guard;
pub mod memory;
pub mod model;
pub mod postgres;
pub mod tls;

use std::sync::Arc;

use async_trait::async_trait;
use bitcoin::{secp256k1::XOnlyPublicKey, BlockHash, OutPoint, TapSighash, Txid};

pub use audit::{AuditEntry, AuditRecord, AuditVerification, ChainBreak};
pub use config::StorageConfig;
pub use error::{Error, ErrorKind, Result};
pub use guard::{Approval, GuardDecision, GuardPolicy, Refusal, SpendDecision, SpendIntent};
pub use model::*;

use crate::keys::AggregateKey;

/// Reads. Chain queries take the chain tip explicitly so a reorg is just a different tip.
#[async_trait]
pub trait DbRead: Send + Sync {
    async fn get_bitcoin_block(&self, hash: &BlockHash) -> Result<Option<BitcoinBlock>>;

    /// The tip the block observer last marked canonical ([`DbWrite::set_bitcoin_canonical_tip`]);
    /// before any mark, the highest block (between blocks of equal height, the lowest hash, so
    /// both stores agree).
    async fn get_bitcoin_canonical_tip(&self) -> Result<Option<BitcoinBlock>>;

    /// Whether `block` is `tip` or one of its ancestors.
    async fn in_canonical_chain(&self, tip: &BlockHash, block: &BlockHash) -> Result<bool>;

    async fn get_stacks_block(&self, hash: &StacksBlockHash) -> Result<Option<StacksBlock>>;

    /// The tip of the canonical Stacks chain: the highest stored Stacks block whose Bitcoin
    /// anchor is on the canonical Bitcoin chain (the chain of
    /// [`DbRead::get_bitcoin_canonical_tip`]); between equal heights, the lowest hash. The
    /// canonical Stacks chain is that block and its ancestors (by parent hash). None when no
    /// stored Stacks block is anchored there. A Stacks block that loses a fork, or whose
    /// anchor is reorged away, drops out of it with everything it printed.
    async fn get_stacks_canonical_tip(&self) -> Result<Option<StacksBlock>>;

    /// Registry events printed on the canonical Stacks chain in blocks at `height` or above,
    /// in chain order (by block height, then their place in the block).
    async fn get_registry_events_since(&self, height: u64) -> Result<Vec<StoredRegistryEvent>>;

    /// The canonical chain's events about withdrawal request `request_id` (its
    /// withdrawal-create, -accept and -reject), in chain order.
    async fn get_withdrawal_events(&self, request_id: u64) -> Result<Vec<StoredRegistryEvent>>;

    /// The canonical chain's completed-deposit events for `outpoint`, in chain order.
    async fn get_deposit_events(&self, outpoint: &OutPoint) -> Result<Vec<StoredRegistryEvent>>;

    /// The newest canonical-chain event of `topic`.
    async fn get_latest_registry_event(
        &self,
        topic: RegistryTopic,
    ) -> Result<Option<StoredRegistryEvent>>;

    async fn get_deposit_request(&self, outpoint: &OutPoint) -> Result<Option<DepositRequest>>;

    /// Deposit requests confirmed in `tip` or its `window - 1` ancestors and not yet in any
    /// recorded sweep, sorted by outpoint.
    async fn get_pending_deposit_requests(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<DepositRequest>>;

    /// Every signer's vote on a deposit, sorted by signer key.
    async fn get_deposit_votes(&self, outpoint: &OutPoint) -> Result<Vec<DepositVote>>;

    async fn get_withdrawal_request(&self, request_id: u64) -> Result<Option<WithdrawalRequest>>;

    /// Withdrawal requests made in Stacks blocks anchored to `tip` or its `window - 1`
    /// ancestors and not yet paid by any recorded sweep, sorted by request id.
    async fn get_pending_withdrawal_requests(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<WithdrawalRequest>>;

    /// Withdrawal requests made in Stacks blocks anchored to `tip` or its `window - 1`
    /// ancestors, paid or not, sorted by request id (the rolling withdrawal cap sums them).
    async fn get_withdrawal_requests_in_window(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<WithdrawalRequest>>;

    async fn get_withdrawal_votes(&self, request_id: u64) -> Result<Vec<WithdrawalVote>>;

    async fn get_dkg_shares(&self, aggregate_key: &AggregateKey)
        -> Result<Option<StoredDkgShares>>;

    /// The newest verified shares: the current aggregate key.
    async fn get_latest_verified_dkg_shares(&self) -> Result<Option<StoredDkgShares>>;

    /// Every DKG's shares, whatever their status, newest first.
    async fn get_all_dkg_shares(&self) -> Result<Vec<StoredDkgShares>>;

    /// The shares for the key that locks a UTXO: the newest shares whose aggregate key is
    /// `output_key` as a deposit's script-path key (x-only), or whose BIP-341 key-path output key
    /// without a script tree is `output_key` (the peg UTXO). Whatever their status: whether
    /// unverified or failed shares may sign is the caller's decision.
    async fn get_dkg_shares_for_output_key(
        &self,
        output_key: &XOnlyPublicKey,
    ) -> Result<Option<StoredDkgShares>> {
        // One implementation for both stores; there are a handful of DKGs, not thousands.
        Ok(self
            .get_all_dkg_shares()
            .await?
            .into_iter()
            .find(|s| s.shares.locks(output_key)))
    }

    async fn get_sweep_transaction(&self, txid: &Txid) -> Result<Option<SweepTransaction>>;

    /// Every stored block that confirmed `txid` (one per fork it appeared in).
    async fn get_transaction_blocks(&self, txid: &Txid) -> Result<Vec<BlockHash>>;

    /// Whether `txid` is confirmed in `tip` or one of its ancestors.
    async fn is_confirmed_on(&self, tip: &BlockHash, txid: &Txid) -> Result<bool> {
        for block in self.get_transaction_blocks(txid).await? {
            if self.in_canonical_chain(tip, &block).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The observed transactions among `txids` (unknown ones are left out).
    async fn get_observed_transactions(&self, txids: &[Txid]) -> Result<Vec<ObservedTransaction>>;

    /// The signers' own transactions (sweeps and donations) confirmed in `tip` or its
    /// `window - 1` ancestors, with the block that confirmed each, lowest block first (in one
    /// block, by txid: callers order a chain of sweeps by what spends what).
    async fn get_signer_transactions(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<(ObservedTransaction, BitcoinBlock)>>;

    async fn get_deposit_submission(
        &self,
        outpoint: &OutPoint,
    ) -> Result<Option<DepositSubmissionRecord>>;

    /// Every announced deposit whose transaction is one of `txids`, sorted by outpoint.
    async fn get_deposit_submissions_for_txids(
        &self,
        txids: &[Txid],
    ) -> Result<Vec<DepositSubmissionRecord>>;

    async fn get_sighash_decision(&self, sighash: &TapSighash) -> Result<Option<SighashDecision>>;

    /// What the guard recorded for an outpoint.
    async fn get_spend_decision(&self, outpoint: &OutPoint) -> Result<Option<SpendDecision>>;

    async fn get_stacks_transaction(&self, txid: &StacksTxid) -> Result<Option<StacksTransaction>>;

    /// Every rotation, oldest first.
    async fn get_signer_set_history(&self) -> Result<Vec<SignerSetRotation>>;

    /// The whole audit log, in order.
    async fn get_audit_log(&self) -> Result<Vec<AuditEntry>>;

    /// The newest audit entry's `(seq, hash)`; None for an empty log.
    async fn get_audit_head(&self) -> Result<Option<(u64, [u8; 32])>> {
        Ok(self.get_audit_log().await?.last().map(|e| (e.seq, e.hash)))
    }

    /// Walks the audit log's hash chain.
    async fn verify_audit_log(&self) -> Result<AuditVerification> {
        Ok(audit::verify(&self.get_audit_log().await?))
    }
}

/// Writes. Each is one transaction, and idempotent: writing a row whose key exists keeps the first
/// version (except `set_dkg_shares_status`, which updates).
#[async_trait]
pub trait DbWrite: Send + Sync {
    async fn write_bitcoin_block(&self, block: &BitcoinBlock) -> Result<()>;

    /// Records that `txid` was confirmed in `block` (once per fork it appears in).
    async fn write_bitcoin_transaction(&self, txid: &Txid, block: &BlockHash) -> Result<()>;

    /// Marks `tip` (a stored block) as the canonical tip: its ancestors are the canonical chain.
    /// Nothing is deleted; blocks of other forks stay, off the canonical chain.
    async fn set_bitcoin_canonical_tip(&self, tip: &BlockHash) -> Result<()>;

    /// Stores a transaction that matters to the signers (once) and that `block` confirmed it.
    async fn write_observed_transaction(
        &self,
        tx: &ObservedTransaction,
        block: &BlockHash,
    ) -> Result<()>;

    /// Stores an announced deposit; true when it is new (a repeat keeps the first).
    async fn write_deposit_submission(&self, submission: &DepositSubmissionRecord) -> Result<bool>;

    async fn write_stacks_block(&self, block: &StacksBlock) -> Result<()>;

    /// Stores a Stacks block and the registry events it printed, in one transaction. A block
    /// id names one block, so a repeat delivery carries the same events: the first version of
    /// the block and of each event (by txid and event index) stands.
    async fn write_stacks_block_events(
        &self,
        block: &StacksBlock,
        events: &[RegistryEventRecord],
    ) -> Result<()>;

    /// Stores the request and that its transaction was confirmed in `confirmed_in`.
    async fn write_deposit_request(
        &self,
        request: &DepositRequest,
        confirmed_in: &BlockHash,
    ) -> Result<()>;

    async fn write_deposit_vote(&self, vote: &DepositVote) -> Result<()>;

    async fn write_withdrawal_request(&self, request: &WithdrawalRequest) -> Result<()>;

    async fn write_withdrawal_vote(&self, vote: &WithdrawalVote) -> Result<()>;

    async fn write_dkg_shares(&self, shares: &DkgShares) -> Result<()>;

    /// Returns false if there are no shares under `aggregate_key`.
    async fn set_dkg_shares_status(
        &self,
        aggregate_key: &AggregateKey,
        status: DkgSharesStatus,
    ) -> Result<bool>;

    async fn write_sweep_transaction(&self, sweep: &SweepTransaction) -> Result<()>;

    /// The first decision for a sighash stands.
    async fn write_sighash_decision(&self, decision: &SighashDecision) -> Result<()>;

    async fn write_stacks_transaction(&self, tx: &StacksTransaction) -> Result<()>;

    async fn write_signer_set_rotation(&self, rotation: &SignerSetRotation) -> Result<()>;

    /// Appends to the audit log. Concurrent appends are serialized; an append retried with the
    /// same `entry_id` returns the stored entry instead of adding another.
    async fn append_audit(&self, record: &AuditRecord) -> Result<AuditEntry>;

    /// The no-equivocation guard (see [`guard`]): atomically records the intent for every input,
    /// or refuses it and records nothing. Call before any signature share leaves the node.
    async fn guard_spend(&self, intent: &SpendIntent) -> Result<GuardDecision>;
}

/// A complete store.
pub trait Storage: DbRead + DbWrite {}
impl<T: DbRead + DbWrite> Storage for T {}

/// Whether opening a PostgreSQL store applies pending migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOpen {
    /// Refuse a schema that is not current (the default for `run` without the flag).
    CheckSchema,
    /// Apply pending migrations first.
    Migrate,
}

/// Opens the store the config names: in memory, or PostgreSQL (waiting for the server with
/// backoff, then checking or migrating the schema).
pub async fn open(config: &StorageConfig, on_open: OnOpen) -> Result<Arc<dyn Storage>> {
    match config.target()? {
        config::Target::Memory => Ok(Arc::new(memory::MemoryStore::with_guard_policy(
            config.guard_policy()?,
        ))),
        config::Target::Postgres(pg) => {
            let store = postgres::PgStore::connect(*pg).await?;
            match on_open {
                OnOpen::Migrate => {
                    store.migrate().await?;
                }
                OnOpen::CheckSchema => {
                    store.check_schema().await?;
                }
            }
            Ok(Arc::new(store))
        }
    }
}
