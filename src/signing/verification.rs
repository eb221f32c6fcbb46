//! DKG verification: before a new key is trusted, every signer signs a mock taproot key-spend of
//! it, and Bitcoin Core's own script verifier (`bitcoinconsensus`, taproot on) must accept the
//! transaction. Only then may the shares be marked `verified`.

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
    coordinator::{BatchCoordinator, Participation},
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

/// Coordinator side: runs the all-signer round over the mock spend and checks the result.
/// A round that cannot complete (a signer down, a bad share) is `Failed`, not an error: the new
/// key must then not be used.
pub async fn verify_dkg<T: Transport + ?Sized>(
    coordinator: &BatchCoordinator,
    own: &mut BatchSigner,
    transport: &mut T,
) -> Result<DkgVerification> {
    let public = own.public().clone();
    let key = public.aggregate_public_key()?;
    let spend = MockKeySpend::new(public.dkg_id, &key);
    let request = spend.request()?;
    let signed = match coordinator
        .sign(own, transport, &[request], Participation::All)
        .await
    {
        Ok(s) => s,
        Err(
            e @ (SigningError::Custody(_) | SigningError::Transport(_) | SigningError::Internal(_)),
        ) => return Err(e),
        Err(e) => return Ok(DkgVerification::Failed(e.to_string())),
    };
    if !signed.excluded.is_empty() {
        return Ok(DkgVerification::Failed(format!(
            "signers were excluded: {:?}",
            signed.excluded
        )));
    }
    match signed.signatures.first() {
        Some(s) => Ok(spend.check(&s.signature)),
        None => Ok(DkgVerification::Failed("no signature".into())),
    }
}
