//! Per-DKG transport keys. Each signer makes a fresh secp256k1 key in memory for one DKG, endorses
//! it with its identity key through `Custody` (one ECDSA signature), and WSTS encrypts the private
//! polynomial shares to these keys (ECDH + AES-GCM in `wsts::util`). The identity key never does
//! ECDH, so a backend needs only ECDSA and seal/unseal.

use sha2::{Digest, Sha256};
use wsts::curve::{ecdsa, point::Point, scalar::Scalar};

use sbtc_custody::{Custody, KeyLabel, RecoverableSignature};

use super::{secret::wipe_scalar, DkgId, Result, SignerIndex, SignerSet, SigningError};

/// An ephemeral transport key. The scalar is overwritten when the value is dropped.
pub struct TransportKey {
    secret: Scalar,
    public: [u8; 33],
}

impl TransportKey {
    pub fn generate() -> Result<Self> {
        let secret = Scalar::random(&mut rand::rngs::OsRng);
        let public = ecdsa::PublicKey::new(&secret)
            .map_err(|e| SigningError::Internal(format!("transport key: {e:?}")))?
            .to_bytes();
        Ok(TransportKey { secret, public })
    }

    /// The compressed public key.
    pub fn public(&self) -> [u8; 33] {
        self.public
    }

    /// The private scalar, for WSTS' ECDH. Copies are the caller's to wipe.
    pub(crate) fn secret(&self) -> Scalar {
        self.secret
    }
}

impl Drop for TransportKey {
    fn drop(&mut self) {
        wipe_scalar(&mut self.secret);
    }
}

impl std::fmt::Debug for TransportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransportKey({})", hex::encode(self.public))
    }
}

/// The digest an identity key signs to endorse a transport key: domain, DKG id, the signer's index
/// and the transport key, so an endorsement cannot be replayed into another DKG or by another signer.
pub fn endorsement_digest(
    dkg_id: DkgId,
    signer: SignerIndex,
    transport_key: &[u8; 33],
) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"sbtc-hsm-signer/dkg-transport-key/v1")
        .chain_update(dkg_id.0.to_be_bytes())
        .chain_update(signer.to_be_bytes())
        .chain_update(transport_key)
        .finalize()
        .into()
}

/// A transport key and its endorsement by the signer's identity key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportKeyEndorsement {
    pub dkg_id: DkgId,
    pub signer: SignerIndex,
    /// Compressed secp256k1 point (33 bytes).
    pub transport_key: Vec<u8>,
    /// r || s || recovery id (65 bytes), low-S, by the identity key.
    pub signature: Vec<u8>,
}

impl TransportKeyEndorsement {
    /// Signs the endorsement through custody: one identity-key signature per DKG.
    pub async fn create(
        custody: &dyn Custody,
        identity: &KeyLabel,
        dkg_id: DkgId,
        signer: SignerIndex,
        key: &TransportKey,
    ) -> Result<Self> {
        let public = key.public();
        let digest = endorsement_digest(dkg_id, signer, &public);
        let sig = custody.sign_secp256k1_prehash(identity, &digest).await?;
        Ok(TransportKeyEndorsement {
            dkg_id,
            signer,
            transport_key: public.to_vec(),
            signature: sig.to_rsv().to_vec(),
        })
    }

    /// Checks the endorsement against the signer set and the authenticated sender, and returns the
    /// transport key as WSTS wants it.
    pub fn verify(
        &self,
        set: &SignerSet,
        dkg_id: DkgId,
        from: SignerIndex,
    ) -> Result<(ecdsa::PublicKey, Point)> {
        let bad = |detail: String| SigningError::Misbehaving {
            signer: from,
            detail,
        };
        if self.signer != from {
            return Err(bad(format!(
                "sent an endorsement for signer {} over its own link",
                self.signer
            )));
        }
        if self.dkg_id != dkg_id {
            return Err(bad(format!(
                "endorsed a transport key for DKG {} during DKG {}",
                self.dkg_id.0, dkg_id.0
            )));
        }
        let identity = set
            .key(from)
            .ok_or_else(|| bad("is not in the signer set".into()))?;
        let key: [u8; 33] = self
            .transport_key
            .as_slice()
            .try_into()
            .map_err(|_| bad("transport key is not 33 bytes".into()))?;
        let rsv: [u8; 65] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| bad("endorsement signature is not 65 bytes".into()))?;
        let sig = RecoverableSignature::from_rsv(&rsv)
            .map_err(|e| bad(format!("endorsement signature is malformed: {e}")))?;
        let digest = endorsement_digest(dkg_id, from, &key);
        if !sig.verify(&digest, identity) {
            return Err(bad(
                "transport key endorsement does not verify against its identity key".into(),
            ));
        }
        let ecdsa_key = ecdsa::PublicKey::try_from(key.as_slice())
            .map_err(|e| bad(format!("transport key is not a curve point: {e:?}")))?;
        let compressed = wsts::curve::point::Compressed::from(key);
        let point = Point::try_from(&compressed)
            .map_err(|e| bad(format!("transport key is not a curve point: {e:?}")))?;
        Ok((ecdsa_key, point))
    }
}
