//! DKG verification: before a new key is trusted, the signers sign a mock taproot key-spend of
//! it, and Bitcoin Core's own script verifier (`bitcoinconsensus`, taproot on) must accept the
//! transaction. Only then may the shares be marked `verified`, by the coordinator and by every
//! other signer, each running the script verifier itself over the signature it is sent.

use bitcoin::{
    absolute::LockTime,
    consensus::serialize,
    hashes::{sha256, Hash as _},
    key::UntweakedPublicKey,
    sighash::{Prevouts, SighashCache, TapSighashType},
    transaction::Version,
    Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};

use super::{
    coordinator::{BatchCoordinator, Exclusion, Participation},
    round::{SighashRequest, SpendKind},
    signer::BatchSigner,
    transport::Transport,
    DkgId, Result, SigningError,
};

/// The outcome of the verification round, as the storage layer records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DkgVerification {
    Verified,
    Failed(String),
}

const MOCK_VALUE: Amount = Amount::from_sat(100_000);

/// A transaction spending a P2TR output of the tap-tweaked aggregate key, derived only from the
/// DKG id and the key, so every signer builds (and approves) exactly the same one.
#[derive(Clone, Debug)]
pub struct MockKeySpend {
    tx: Transaction,
    prevout: TxOut,
}

impl MockKeySpend {
    pub fn new(dkg_id: DkgId, aggregate_key: &secp256k1::PublicKey) -> Self {
        let secp = secp256k1::Secp256k1::verification_only();
        let internal: UntweakedPublicKey = aggregate_key.x_only_public_key().0;
        let script = ScriptBuf::new_p2tr(&secp, internal, None);
        let mut seed = Vec::with_capacity(64);
        seed.extend_from_slice(b"sbtc-hsm-signer/dkg-verification/v1");
        seed.extend_from_slice(&dkg_id.0.to_be_bytes());
        seed.extend_from_slice(&aggregate_key.serialize());
        let txid = Txid::from_byte_array(sha256::Hash::hash(&seed).to_byte_array());
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint { txid, vout: 0 },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: vec![TxOut {
                value: MOCK_VALUE - Amount::from_sat(1_000),
                script_pubkey: script.clone(),
            }],
        };
        MockKeySpend {
            tx,
            prevout: TxOut {
                value: MOCK_VALUE,
                script_pubkey: script,
            },
        }
    }

    /// The BIP-341 key-spend sighash (SIGHASH_DEFAULT) the signers sign.
    pub fn request(&self) -> Result<SighashRequest> {
        let sighash = SighashCache::new(&self.tx)
            .taproot_key_spend_signature_hash(
                0,
                &Prevouts::All(&[&self.prevout]),
                TapSighashType::Default,
            )
            .map_err(|e| SigningError::Internal(format!("mock spend sighash: {e}")))?;
        Ok(SighashRequest {
            sighash: sighash.to_byte_array(),
            kind: SpendKind::KeySpend { merkle_root: None },
        })
    }

    /// Puts `signature` into the witness and runs Bitcoin Core's script verifier with taproot on.
    pub fn check(&self, signature: &secp256k1::schnorr::Signature) -> DkgVerification {
        let mut tx = self.tx.clone();
        tx.input[0].witness = Witness::p2tr_key_spend(&bitcoin::taproot::Signature {
            signature: *signature,
            sighash_type: TapSighashType::Default,
        });
        let raw = serialize(&tx);
        let script = self.prevout.script_pubkey.as_bytes();
        let utxo = bitcoinconsensus::Utxo {
            script_pubkey: script.as_ptr(),
            script_pubkey_len: script.len() as u32,
            value: self.prevout.value.to_sat() as i64,
        };
        match bitcoinconsensus::verify_with_flags(
            script,
            self.prevout.value.to_sat(),
            &raw,
            Some(&[utxo]),
            0,
            bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
        ) {
            Ok(()) => DkgVerification::Verified,
            Err(e) => DkgVerification::Failed(format!("bitcoinconsensus rejects the spend: {e:?}")),
        }
    }
}

/// What the coordinator's verification round found: the verdict, the signature it checked (sent
/// to every signer, which checks it again itself), and the signers left out along the way.
#[derive(Clone, Debug)]
pub struct VerificationOutcome {
    pub verdict: DkgVerification,
    pub signature: Option<secp256k1::schnorr::Signature>,
    pub excluded: Vec<Exclusion>,
}

/// Coordinator side: asks every signer to sign the mock spend and checks the result with
/// Bitcoin Core's script verifier. A signer whose nonce or share is broken is named and the
/// round is retried without it while a threshold remains, so one bad packet does not fail a
/// good key; who was left out is reported. A round that cannot reach the threshold is `Failed`,
/// not an error: the new key must then not be used.
pub async fn verify_dkg<T: Transport + ?Sized>(
    coordinator: &BatchCoordinator,
    own: &mut BatchSigner,
    transport: &mut T,
) -> Result<VerificationOutcome> {
    let public = own.public().clone();
    let key = public.aggregate_public_key()?;
    let spend = MockKeySpend::new(public.dkg_id, &key);
    let request = spend.request()?;
    let failed = |why: String, excluded: Vec<Exclusion>| VerificationOutcome {
        verdict: DkgVerification::Failed(why),
        signature: None,
        excluded,
    };
    let signed = match coordinator
        .sign(own, transport, &[request], Participation::Threshold)
        .await
    {
        Ok(s) => s,
        Err(
            e @ (SigningError::Custody(_) | SigningError::Transport(_) | SigningError::Internal(_)),
        ) => return Err(e),
        Err(e) => return Ok(failed(e.to_string(), Vec::new())),
    };
    for e in &signed.excluded {
        tracing::warn!(signer = e.signer, reason = %e.reason, "left out of the DKG verification");
    }
    match signed.signatures.first() {
        Some(s) => Ok(VerificationOutcome {
            verdict: spend.check(&s.signature),
            signature: Some(s.signature),
            excluded: signed.excluded,
        }),
        None => Ok(failed("no signature".into(), signed.excluded)),
    }
}

/// A signer's own check of the coordinator's verification: rebuilds the mock spend from its own
/// DKG id and key and runs Bitcoin Core's script verifier over the signature the coordinator
/// sent. Only `Verified` from here may mark the shares verified.
pub fn check_verification(
    dkg_id: DkgId,
    aggregate_key: &secp256k1::PublicKey,
    signature: Option<&[u8]>,
) -> DkgVerification {
    let Some(bytes) = signature else {
        return DkgVerification::Failed("the decision carries no verification signature".into());
    };
    let Ok(signature) = secp256k1::schnorr::Signature::from_slice(bytes) else {
        return DkgVerification::Failed(format!(
            "the decision's verification signature is {} bytes, not a BIP-340 signature",
            bytes.len()
        ));
    };
    MockKeySpend::new(dkg_id, aggregate_key).check(&signature)
}
