//! What a signing round is about: its id, the sighashes it signs and how each input is spent,
//! and the verified signatures it returns.

use std::fmt;

use rand::RngCore as _;

/// Most sighashes one batch may carry (a sweep has at most a few thousand inputs).
pub const MAX_BATCH: usize = 10_000;

/// A signing round, chosen at random by its coordinator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoundId(pub [u8; 32]);

impl RoundId {
    pub fn random() -> Self {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        RoundId(id)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(RoundId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoundId({})", hex::encode(&self.0[..8]))
    }
}

/// How an input is spent, which decides the key its signature must verify under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpendKind {
    /// Key path: BIP-341 tap-tweaked aggregate key (the peg UTXO; `merkle_root` None = no scripts).
    KeySpend { merkle_root: Option<[u8; 32]> },
    /// Script path: the untweaked x-only aggregate key in `<key> OP_CHECKSIG` (deposit leaves).
    ScriptPath,
}

/// One sighash to sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SighashRequest {
    pub sighash: [u8; 32],
    pub kind: SpendKind,
}

/// A verified BIP-340 signature for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedSighash {
    pub request: SighashRequest,
    pub signature: secp256k1::schnorr::Signature,
}
