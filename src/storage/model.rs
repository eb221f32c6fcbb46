//! What the signer remembers, as typed values. Bitcoin values are rust-bitcoin's types
//! ([`BlockHash`], [`Txid`], [`OutPoint`], [`Amount`], [`ScriptBuf`], [`TapSighash`]) so a block
//! hash is never passed where a txid is expected and satoshis are never a bare u64; signer keys
//! are secp256k1 [`PublicKey`]s and aggregate keys [`AggregateKey`]. Only what rust-bitcoin has
//! no type for (Stacks hashes, the guard's fingerprint) is a newtype here.

use std::{fmt, time::SystemTime};

use bitcoin::{
    secp256k1::{PublicKey, XOnlyPublicKey},
    Amount, BlockHash, OutPoint, ScriptBuf, TapSighash, Txid,
};
use sbtc_custody::SealedBlob;

use crate::{
    keys::AggregateKey,
    signing::{DkgId, SealedShares, SignerIndex},
};

macro_rules! bytes_newtype {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Reads the value from a database column or a peer message.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }
    };
}

bytes_newtype!(
    /// A Stacks block id.
    StacksBlockHash, 32
);
bytes_newtype!(
    /// A Stacks transaction id.
    StacksTxid, 32
);
bytes_newtype!(
    /// SHA-256 over the requests a sweep pays and the outputs paying them (see `guard`).
    PaymentFingerprint, 32
);

/// The largest amount either store accepts: PostgreSQL keeps satoshis in a BIGINT.
pub const MAX_STORABLE_AMOUNT: Amount = Amount::from_sat(i64::MAX as u64);

/// An amount as the BIGINT column holds it; above [`MAX_STORABLE_AMOUNT`] is refused (by both
/// stores, so they accept the same writes).
pub(crate) fn storable_sats(
    amount: Amount,
    what: &str,
    operation: &'static str,
) -> super::Result<i64> {
    i64::try_from(amount.to_sat()).map_err(|_| {
        super::Error::new(
            super::ErrorKind::OutOfRange,
            operation,
            format!(
                "{what} of {} sat is above the largest amount storage keeps ({} sat, i64::MAX);                  nothing was written",
                amount.to_sat(),
                MAX_STORABLE_AMOUNT.to_sat()
            ),
        )
        .hint(
            "no real Bitcoin amount is this large (21 million BTC is 2.1e15 sat): the value              came from a bug or a malformed request; report it",
        )
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitcoinBlock {
    pub hash: BlockHash,
    pub height: u64,
    pub parent_hash: BlockHash,
}

/// A Stacks block as the event observer saw it. `hash` is the block id (`index_block_hash`,
/// unique across forks), `parent_hash` the parent's block id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StacksBlock {
    pub hash: StacksBlockHash,
    pub height: u64,
    pub parent_hash: StacksBlockHash,
    /// The Bitcoin block this Stacks block is anchored to (`burn_block_hash`).
    pub bitcoin_anchor: BlockHash,
    /// That Bitcoin block's height (`burn_block_height`).
    pub bitcoin_anchor_height: u64,
}

/// The sbtc-registry print topics the event observer keeps (CHAIN.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegistryTopic {
    CompletedDeposit,
    WithdrawalCreate,
    WithdrawalAccept,
    WithdrawalReject,
    KeyRotation,
}

impl RegistryTopic {
    /// The topic as the contract prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryTopic::CompletedDeposit => "completed-deposit",
            RegistryTopic::WithdrawalCreate => "withdrawal-create",
            RegistryTopic::WithdrawalAccept => "withdrawal-accept",
            RegistryTopic::WithdrawalReject => "withdrawal-reject",
            RegistryTopic::KeyRotation => "key-rotation",
        }
    }

    pub fn parse(text: &str) -> Option<RegistryTopic> {
        [
            RegistryTopic::CompletedDeposit,
            RegistryTopic::WithdrawalCreate,
            RegistryTopic::WithdrawalAccept,
            RegistryTopic::WithdrawalReject,
            RegistryTopic::KeyRotation,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

impl fmt::Display for RegistryTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One kept sbtc-registry print event: where it was printed, the keys queries find it by, and
/// the Clarity tuple as printed (`chain::stacks::events::RegistryEvent` reads it; storage keeps
/// the bytes so that one type describes the events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryEventRecord {
    /// The block that printed it.
    pub block_hash: StacksBlockHash,
    pub txid: StacksTxid,
    /// Its index among its transaction's events, as the node numbers them.
    pub event_index: u32,
    /// Its place among the block's events as the node sent them: chain order within the block.
    pub position: u32,
    pub topic: RegistryTopic,
    /// The withdrawal request it is about (withdrawal-create, -accept, -reject).
    pub request_id: Option<u64>,
    /// The deposit it completed (completed-deposit).
    pub deposit: Option<OutPoint>,
    /// The printed Clarity value, consensus-serialized.
    pub raw_value: Vec<u8>,
}

impl RegistryEventRecord {
    /// Both stores refuse what PostgreSQL cannot hold (a request id above i64::MAX), so they
    /// accept the same writes.
    pub(crate) fn check(&self, block: &StacksBlock, operation: &'static str) -> super::Result<()> {
        if self.block_hash != block.hash {
            return Err(super::Error::new(
                super::ErrorKind::InvalidInput,
                operation,
                format!(
                    "event {}:{} names block {}, not the block written with it ({})",
                    self.txid, self.event_index, self.block_hash, block.hash
                ),
            ));
        }
        if let Some(id) = self.request_id {
            if i64::try_from(id).is_err() {
                return Err(super::Error::new(
                    super::ErrorKind::OutOfRange,
                    operation,
                    format!(
                        "withdrawal request id {id} does not fit in BIGINT; nothing was written"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A stored event with the height of the block that printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRegistryEvent {
    pub event: RegistryEventRecord,
    pub block_height: u64,
}

/// A deposit request: a Bitcoin output locked to the signers' aggregate key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositRequest {
    pub outpoint: OutPoint,
    pub amount: Amount,
    pub max_fee: Amount,
    /// The Stacks principal that receives sBTC.
    pub recipient: String,
    pub deposit_script: ScriptBuf,
    pub reclaim_script: ScriptBuf,
    /// The aggregate key the deposit is locked to.
    pub signers_public_key: AggregateKey,
}

/// One signer's view of one deposit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositVote {
    pub outpoint: OutPoint,
    pub signer: PublicKey,
    pub can_accept: bool,
    pub can_sign: bool,
}

/// A withdrawal request made on Stacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalRequest {
    pub request_id: u64,
    pub stacks_txid: StacksTxid,
    pub stacks_block_hash: StacksBlockHash,
    pub recipient: ScriptBuf,
    pub amount: Amount,
    pub max_fee: Amount,
    /// The Stacks principal that asked for the withdrawal.
    pub sender: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalVote {
    pub request_id: u64,
    pub signer: PublicKey,
    pub is_accepted: bool,
}

/// The column `dkg_shares_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DkgSharesStatus {
    Unverified,
    Verified,
    Failed,
}

impl DkgSharesStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DkgSharesStatus::Unverified => "unverified",
            DkgSharesStatus::Verified => "verified",
            DkgSharesStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unverified" => Some(DkgSharesStatus::Unverified),
            "verified" => Some(DkgSharesStatus::Verified),
            "failed" => Some(DkgSharesStatus::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for DkgSharesStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one DKG round: everything a restarted signer needs to sign under the key
/// again. The private shares are sealed by `Custody`: storage only ever holds ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkgShares {
    pub aggregate_key: AggregateKey,
    /// The round's id: the seal is bound to it (see `signing::shares_aad`).
    pub dkg_id: DkgId,
    /// This signer's index in the round's signer set: the seal is bound to it too.
    pub signer_index: SignerIndex,
    pub sealed_private_shares: SealedBlob,
    /// The round's public shares, encoded by the DKG layer.
    pub public_shares: Vec<u8>,
    pub signer_set: Vec<PublicKey>,
    pub threshold: u16,
    pub status: DkgSharesStatus,
    pub started_at_block_hash: BlockHash,
    pub started_at_block_height: u64,
}

impl DkgShares {
    /// The sealed shares to unseal for a signing round: the one mapping between this row and
    /// [`SealedShares`].
    pub fn sealed_shares(&self) -> SealedShares {
        SealedShares {
            dkg_id: self.dkg_id,
            signer: self.signer_index,
            aggregate_key: self.aggregate_key,
            blob: self.sealed_private_shares.as_bytes().to_vec(),
        }
    }

    /// The DKG id and signer index as their columns hold them (BIGINT > 0, INTEGER >= 0).
    /// Both stores refuse what does not fit, so they accept the same rows.
    pub(crate) fn storable_ids(&self, operation: &'static str) -> super::Result<(i64, i32)> {
        if self.dkg_id.0 == 0 {
            return Err(super::Error::new(
                super::ErrorKind::InvalidInput,
                operation,
                format!(
                    "shares for aggregate key {} have DKG id 0, which no DKG has (ids start at 1)",
                    self.aggregate_key
                ),
            ));
        }
        let dkg_id = i64::try_from(self.dkg_id.0).map_err(|_| {
            super::Error::new(
                super::ErrorKind::OutOfRange,
                operation,
                format!("DKG id {} does not fit in BIGINT", self.dkg_id.0),
            )
        })?;
        let signer_index = i32::try_from(self.signer_index).map_err(|_| {
            super::Error::new(
                super::ErrorKind::OutOfRange,
                operation,
                format!("signer index {} does not fit in INTEGER", self.signer_index),
            )
        })?;
        Ok((dkg_id, signer_index))
    }

    /// Whether these shares sign for a UTXO locked to `output_key`: a deposit's script-path key
    /// (the x-only aggregate key) or the peg UTXO's key-path output key (BIP-341 tweak, no
    /// script tree).
    pub fn locks(&self, output_key: &XOnlyPublicKey) -> bool {
        self.aggregate_key.x_only() == *output_key
            || self.aggregate_key.tap_tweaked(None).to_x_only_public_key() == *output_key
    }
}

/// [`DkgShares`] as stored, with the time the store recorded them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDkgShares {
    pub shares: DkgShares,
    pub created_at: SystemTime,
}

/// A withdrawal paid by a sweep: which request, to which script, how much.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WithdrawalPayment {
    pub request_id: u64,
    pub recipient: ScriptBuf,
    pub amount: Amount,
}

/// A sweep transaction the signers built: it spends the signers' UTXO and the deposits, and pays
/// the withdrawals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepTransaction {
    pub txid: Txid,
    pub signers_prevout: OutPoint,
    pub deposits: Vec<OutPoint>,
    pub withdrawals: Vec<WithdrawalPayment>,
    pub fee: Amount,
    /// The Bitcoin chain tip the sweep was built on.
    pub chain_tip: BlockHash,
}

/// This signer's decision for one sighash of a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SighashDecision {
    pub sighash: TapSighash,
    pub txid: Txid,
    pub prevout: OutPoint,
    pub will_sign: bool,
}

/// A Stacks transaction the signer set submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StacksTransaction {
    pub txid: StacksTxid,
    /// `complete-deposit`, `accept-withdrawal`, `reject-withdrawal`, `rotate-keys`, ...
    pub kind: String,
    pub nonce: u64,
    pub raw: Vec<u8>,
    pub bitcoin_chain_tip: BlockHash,
}

/// One signer-set rotation, in the order they were recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerSetRotation {
    pub aggregate_key: AggregateKey,
    pub signer_set: Vec<PublicKey>,
    pub threshold: u16,
    pub stacks_txid: StacksTxid,
    pub bitcoin_block_hash: BlockHash,
}

/// Why the block observer kept a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObservedKind {
    /// It pays a deposit output that a wallet or a peer announced.
    Deposit,
    /// Its first input spends an output of the signers (the peg UTXO chain).
    Sweep,
    /// It pays the signers' key-path script without being a sweep.
    Donation,
}

impl ObservedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedKind::Deposit => "deposit",
            ObservedKind::Sweep => "sweep",
            ObservedKind::Donation => "donation",
        }
    }

    pub fn parse(text: &str) -> Option<ObservedKind> {
        match text {
            "deposit" => Some(ObservedKind::Deposit),
            "sweep" => Some(ObservedKind::Sweep),
            "donation" => Some(ObservedKind::Donation),
            _ => None,
        }
    }
}

/// A transaction that matters to the signers, as the block observer found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedTransaction {
    pub kind: ObservedKind,
    pub tx: bitcoin::Transaction,
}

impl ObservedTransaction {
    pub fn txid(&self) -> Txid {
        self.tx.compute_txid()
    }
}

/// Who announced a deposit to this signer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmissionSource {
    /// A depositor's wallet, through this signer's `POST /deposit` (or an Emily-style API).
    Wallet,
    /// Another signer, over the peer links.
    Peer(PublicKey),
}

/// A deposit as it was announced and validated at intake, before (or after) it confirms. The
/// block observer turns it into a [`DepositRequest`] in each block that confirms it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositSubmissionRecord {
    pub outpoint: OutPoint,
    pub deposit_script: ScriptBuf,
    pub reclaim_script: ScriptBuf,
    pub transaction: bitcoin::Transaction,
    pub source: SubmissionSource,
}
