//! The devnet's sample work: a batch of sighashes every signer can derive on its own from the DKG,
//! the approver that signs only those (through the storage's no-equivocation guard), and the JSON
//! result a `run` writes.
//!
//! The real approver rebuilds each sweep from its own view of Bitcoin and Stacks and calls the
//! guard with the sweep's actual inputs; here the "transactions" are synthetic, one per sighash,
//! each spending its own synthetic outpoint.

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use bitcoin::{hashes::Hash as _, OutPoint, Txid};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    signing::{signing_key, Approver, DkgId, SighashRequest, SignerIndex, SpendKind},
    storage::{SpendIntent, Storage},
};

/// The fixed chain tip of a devnet without a Bitcoin chain: it picks the coordinator.
pub fn devnet_chain_tip() -> bitcoin::BlockHash {
    use bitcoin::hashes::Hash as _;
    bitcoin::BlockHash::from_byte_array(
        Sha256::digest(b"sbtc-hsm-signer/devnet/chain-tip/v1").into(),
    )
}

/// The `i`-th demo sighash for this DKG: even ones are key spends of the tap-tweaked aggregate key
/// (the peg UTXO), odd ones script-path spends under the untweaked key (deposit leaves).
pub fn demo_requests(
    dkg_id: DkgId,
    aggregate_key: &secp256k1::PublicKey,
    count: usize,
) -> Vec<SighashRequest> {
    (0..count as u64)
        .map(|i| SighashRequest {
            sighash: Sha256::new()
                .chain_update(b"sbtc-hsm-signer/devnet-demo-sighash/v1")
                .chain_update(dkg_id.0.to_be_bytes())
                .chain_update(aggregate_key.serialize())
                .chain_update(i.to_be_bytes())
                .finalize()
                .into(),
            kind: if i % 2 == 0 {
                SpendKind::KeySpend { merkle_root: None }
            } else {
                SpendKind::ScriptPath
            },
        })
        .collect()
}

/// The synthetic transaction a demo sighash stands for: it spends one synthetic outpoint.
fn demo_intent(sighash: &[u8; 32]) -> SpendIntent {
    let outpoint: [u8; 32] = Sha256::new()
        .chain_update(b"sbtc-hsm-signer/devnet-demo-utxo/v1")
        .chain_update(sighash)
        .finalize()
        .into();
    SpendIntent {
        txid: Txid::from_byte_array(*sighash),
        spends: vec![OutPoint {
            txid: Txid::from_byte_array(outpoint),
            vout: 0,
        }],
        deposits: Vec::new(),
        withdrawals: Vec::new(),
        change: Vec::new(),
        fee: bitcoin::Amount::ZERO,
        weight: bitcoin::Weight::from_wu(4),
    }
}

/// Approves exactly the sighashes this signer derived itself; demo spends go through
/// `guard_spend` first, so a conflicting spend of the same outpoint would be refused.
pub struct DevnetApprover {
    storage: Arc<dyn Storage>,
    /// Request (sighash, spend kind and tweak) -> whether it goes through the guard (the DKG
    /// verification spend does not: it spends nothing real). A known sighash asked for under
    /// another spend kind or merkle root is not in here, so it is refused.
    expected: HashMap<SighashRequest, bool>,
}

impl DevnetApprover {
    pub fn new(
        storage: Arc<dyn Storage>,
        verification: SighashRequest,
        demo: &[SighashRequest],
    ) -> Self {
        let mut expected = HashMap::new();
        expected.insert(verification, false);
        for r in demo {
            expected.insert(*r, true);
        }
        DevnetApprover { storage, expected }
    }
}

#[async_trait]
impl Approver for DevnetApprover {
    async fn approve(
        &self,
        coordinator: SignerIndex,
        _: DkgId,
        sighashes: &[SighashRequest],
    ) -> Vec<bool> {
        let mut answers = Vec::with_capacity(sighashes.len());
        for r in sighashes {
            let ok = match self.expected.get(r) {
                None => {
                    tracing::warn!(coordinator, sighash = %hex::encode(r.sighash), kind = kind_name(r.kind), "refusing a sighash (or spend kind and tweak) this signer did not derive");
                    false
                }
                Some(false) => true,
                Some(true) => match self.storage.guard_spend(&demo_intent(&r.sighash)).await {
                    Ok(decision) if decision.is_approved() => true,
                    Ok(decision) => {
                        tracing::warn!(?decision, "the no-equivocation guard refused a spend");
                        false
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the no-equivocation guard failed; refusing");
                        false
                    }
                },
            };
            answers.push(ok);
        }
        answers
    }
}

/// One demo signature in the result file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoSignature {
    pub sighash: String,
    /// "key_spend" (tap-tweaked key) or "script_path" (untweaked x-only key).
    pub kind: String,
    pub signature: String,
}

/// What a signer read from the sBTC registry on its Stacks node at start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StacksReading {
    pub tip_height: u64,
    /// The registry's current signer set (hex, as the registry holds them).
    pub signer_set: Vec<String>,
    pub threshold: Option<u16>,
    pub aggregate_key: Option<String>,
    pub signer_principal: String,
}

/// What `run --result-file` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub signer_index: u32,
    /// The Bitcoin tip the session ran on (bitcoind's when `[bitcoin]` is configured).
    #[serde(default)]
    pub chain_tip: String,
    #[serde(default)]
    pub chain_height: u64,
    pub signers: u32,
    pub threshold: u32,
    pub coordinator: u32,
    /// The DKG whose key signed (derived from the chain tip and the signer set).
    pub dkg_id: u64,
    /// Whether the key shares came from this run's DKG or from storage (a restarted signer).
    pub shares_from_storage: bool,
    pub identity: String,
    pub aggregate_key: String,
    /// `verified` or `failed` (or `unverified` if no decision arrived).
    pub dkg_status: String,
    pub dkg_failure: Option<String>,
    pub connect_ms: u64,
    pub dkg_ms: u64,
    pub verification_ms: Option<u64>,
    pub batch_ms: Option<u64>,
    pub signatures: Vec<DemoSignature>,
    pub signatures_verified: usize,
    /// Private-key operations this signer's audited custody made, by audit-log operation name,
    /// counted until the process stopped.
    #[serde(default)]
    pub custody_calls: std::collections::BTreeMap<String, u64>,
    /// The sBTC registry as this signer read it at start, when `[stacks]` is configured.
    #[serde(default)]
    pub stacks: Option<StacksReading>,
    /// What the peg did (`run --peg`).
    #[serde(default)]
    pub peg: Option<crate::coordination::tenure::PegReport>,
}

pub fn kind_name(kind: SpendKind) -> &'static str {
    match kind {
        SpendKind::KeySpend { .. } => "key_spend",
        SpendKind::ScriptPath => "script_path",
    }
}

/// Checks a demo signature with libsecp256k1 against the key its kind signs under.
pub fn verify_demo_signature(
    aggregate_key: &secp256k1::PublicKey,
    sig: &DemoSignature,
) -> Result<(), String> {
    let sighash: [u8; 32] = hex::decode(&sig.sighash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("sighash is not 32 bytes of hex")?;
    let kind = match sig.kind.as_str() {
        "key_spend" => SpendKind::KeySpend { merkle_root: None },
        "script_path" => SpendKind::ScriptPath,
        other => return Err(format!("unknown spend kind {other}")),
    };
    let signature = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| secp256k1::schnorr::Signature::from_slice(&b).ok())
        .ok_or("signature is not a 64-byte BIP-340 signature")?;
    secp256k1::Secp256k1::verification_only()
        .verify_schnorr(
            &signature,
            &secp256k1::Message::from_digest(sighash),
            &signing_key(aggregate_key, kind),
        )
        .map_err(|e| format!("signature does not verify: {e}"))
}
