//! What the signer remembers, as typed values. Hashes and keys are fixed-size newtypes so a block
//! hash is never passed where a txid is expected, and amounts are satoshis in [`Amount`].

use std::{fmt, time::SystemTime};

use sbtc_custody::SealedBlob;

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
    /// A Bitcoin block hash (internal byte order).
    BitcoinBlockHash, 32
);
bytes_newtype!(
    /// A Bitcoin transaction id (internal byte order).
    BitcoinTxid, 32
);
bytes_newtype!(
    /// A Stacks block id.
    StacksBlockHash, 32
);
bytes_newtype!(
    /// A Stacks transaction id.
    StacksTxid, 32
);
bytes_newtype!(
    /// A Bitcoin signature hash (what a signer signs for one input).
    Sighash, 32
);
bytes_newtype!(
    /// A compressed secp256k1 public key: a signer's key or an aggregate key.
    PublicKeyBytes, 33
);
bytes_newtype!(
    /// SHA-256 over the requests a sweep pays and the outputs paying them (see `guard`).
    PaymentFingerprint, 32
);

/// An amount in satoshis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Amount(pub u64);

impl Amount {
    pub fn from_sat(sat: u64) -> Self {
        Amount(sat)
    }

    pub fn to_sat(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sat", self.0)
    }
}

/// A Bitcoin output: transaction id and output index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutPoint {
    pub txid: BitcoinTxid,
    pub vout: u32,
}

impl fmt::Display for OutPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.txid, self.vout)
    }
}

/// A Bitcoin output script (scriptPubKey or a redeem/tap script).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Script(pub Vec<u8>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitcoinBlock {
    pub hash: BitcoinBlockHash,
    pub height: u64,
    pub parent_hash: BitcoinBlockHash,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StacksBlock {
    pub hash: StacksBlockHash,
    pub height: u64,
    pub parent_hash: StacksBlockHash,
    /// The Bitcoin block this Stacks block is anchored to.
    pub bitcoin_anchor: BitcoinBlockHash,
}

/// A deposit request: a Bitcoin output locked to the signers' aggregate key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositRequest {
    pub outpoint: OutPoint,
    pub amount: Amount,
    pub max_fee: Amount,
    /// The Stacks principal that receives sBTC.
    pub recipient: String,
    pub deposit_script: Script,
    pub reclaim_script: Script,
    /// The aggregate key the deposit is locked to.
    pub signers_public_key: PublicKeyBytes,
}

/// One signer's view of one deposit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositVote {
    pub outpoint: OutPoint,
    pub signer: PublicKeyBytes,
    pub can_accept: bool,
    pub can_sign: bool,
}

/// A withdrawal request made on Stacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalRequest {
    pub request_id: u64,
    pub stacks_txid: StacksTxid,
    pub stacks_block_hash: StacksBlockHash,
    pub recipient: Script,
    pub amount: Amount,
    pub max_fee: Amount,
    /// The Stacks principal that asked for the withdrawal.
    pub sender: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalVote {
    pub request_id: u64,
    pub signer: PublicKeyBytes,
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

/// The outcome of one DKG round. The private shares are sealed by `Custody`: storage only ever
/// holds ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkgShares {
    pub aggregate_key: PublicKeyBytes,
    pub sealed_private_shares: SealedBlob,
    /// The round's public shares, encoded by the DKG layer.
    pub public_shares: Vec<u8>,
    pub signer_set: Vec<PublicKeyBytes>,
    pub threshold: u16,
    pub status: DkgSharesStatus,
    pub started_at_block_hash: BitcoinBlockHash,
    pub started_at_block_height: u64,
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
    pub recipient: Script,
    pub amount: Amount,
}

/// A sweep transaction the signers built: it spends the signers' UTXO and the deposits, and pays
/// the withdrawals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepTransaction {
    pub txid: BitcoinTxid,
    pub signers_prevout: OutPoint,
    pub deposits: Vec<OutPoint>,
    pub withdrawals: Vec<WithdrawalPayment>,
    pub fee: Amount,
    /// The Bitcoin chain tip the sweep was built on.
    pub chain_tip: BitcoinBlockHash,
}

/// This signer's decision for one sighash of a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SighashDecision {
    pub sighash: Sighash,
    pub txid: BitcoinTxid,
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
    pub bitcoin_chain_tip: BitcoinBlockHash,
}

/// One signer-set rotation, in the order they were recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerSetRotation {
    pub aggregate_key: PublicKeyBytes,
    pub signer_set: Vec<PublicKeyBytes>,
    pub threshold: u16,
    pub stacks_txid: StacksTxid,
    pub bitcoin_block_hash: BitcoinBlockHash,
}
