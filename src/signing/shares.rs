//! Key shares: the secret part a DKG leaves with each signer, sealed by the custody backend for the
//! database, and the public part (polynomial commitments) every coordinator needs to check shares.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wsts::{
    common::PolyCommitment,
    curve::{
        point::{Compressed, Point},
        scalar::Scalar,
    },
};
use zeroize::Zeroizing;

use sbtc_custody::{Custody, KeyLabel, SealedBlob};

use crate::keys::AggregateKey;

use super::{secret::wipe_scalar, DkgId, Result, SignerIndex, SigningError};

const MAGIC: &[u8; 8] = b"SBTCWSTS";
const VERSION: u8 = 1;

/// This signer's private key shares of one DKG. Scalars are overwritten on drop; `Debug` shows
/// no secret.
pub struct KeyShares {
    dkg_id: DkgId,
    signer: SignerIndex,
    aggregate_key: Point,
    private_keys: Vec<(u32, Scalar)>,
}

impl KeyShares {
    pub(crate) fn new(
        dkg_id: DkgId,
        signer: SignerIndex,
        aggregate_key: Point,
        private_keys: Vec<(u32, Scalar)>,
    ) -> Self {
        KeyShares {
            dkg_id,
            signer,
            aggregate_key,
            private_keys,
        }
    }

    pub fn dkg_id(&self) -> DkgId {
        self.dkg_id
    }

    pub fn signer(&self) -> SignerIndex {
        self.signer
    }

    pub fn aggregate_key(&self) -> Point {
        self.aggregate_key
    }

    pub(crate) fn private_keys(&self) -> &[(u32, Scalar)] {
        &self.private_keys
    }

    /// The plaintext that gets sealed, secret scalars included (zeroized on drop). For tests that
    /// prove the sealed form hides it, and for backup tooling; never log it.
    pub fn expose_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.encode()
    }

    /// The plaintext that gets sealed (zeroized on drop).
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(60 + 36 * self.private_keys.len()));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.dkg_id.0.to_be_bytes());
        out.extend_from_slice(&self.signer.to_be_bytes());
        out.extend_from_slice(self.aggregate_key.compress().as_bytes());
        out.extend_from_slice(&(self.private_keys.len() as u32).to_be_bytes());
        for (key_id, scalar) in &self.private_keys {
            out.extend_from_slice(&key_id.to_be_bytes());
            let bytes = Zeroizing::new(scalar.to_bytes());
            out.extend_from_slice(bytes.as_ref());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad =
            |what: &str| SigningError::Shares(format!("unsealed shares are malformed: {what}"));
        let mut r = Reader(bytes);
        if r.take(8)? != MAGIC {
            return Err(bad("not a key-share record"));
        }
        let version = r.take(1)?[0];
        if version != VERSION {
            return Err(bad(&format!("unknown version {version}")));
        }
        let dkg_id = DkgId(u64::from_be_bytes(r.array()?));
        let signer = u32::from_be_bytes(r.array()?);
        let key: [u8; 33] = r.array()?;
        let aggregate_key = Point::try_from(&Compressed::from(key))
            .map_err(|_| bad("aggregate key is not a point"))?;
        let count = u32::from_be_bytes(r.array()?) as usize;
        if count > r.0.len() / 36 {
            return Err(bad("key count larger than the record"));
        }
        let mut private_keys = Vec::with_capacity(count);
        for _ in 0..count {
            let key_id = u32::from_be_bytes(r.array()?);
            let raw = Zeroizing::new(r.array::<32>()?);
            private_keys.push((key_id, Scalar::from(*raw)));
        }
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(KeyShares::new(dkg_id, signer, aggregate_key, private_keys))
    }

    /// Seals the shares under the seal key `label`, bound to this DKG, aggregate key and signer.
    pub async fn seal(&self, custody: &dyn Custody, label: &KeyLabel) -> Result<SealedShares> {
        let aggregate_key = AggregateKey::from_point(&self.aggregate_key)
            .map_err(|e| SigningError::Internal(format!("the DKG's aggregate key: {e}")))?;
        let aad = shares_aad(self.dkg_id, &aggregate_key.serialize(), self.signer);
        let plaintext = self.encode();
        let blob = custody.seal(label, &plaintext, &aad).await?;
        Ok(SealedShares {
            dkg_id: self.dkg_id,
            signer: self.signer,
            aggregate_key,
            blob: blob.into_bytes(),
        })
    }
}

impl Drop for KeyShares {
    fn drop(&mut self) {
        for (_, s) in self.private_keys.iter_mut() {
            wipe_scalar(s);
        }
    }
}

impl std::fmt::Debug for KeyShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyShares")
            .field("dkg_id", &self.dkg_id)
            .field("signer", &self.signer)
            .field(
                "aggregate_key",
                &hex::encode(compressed(&self.aggregate_key)),
            )
            .field("private_keys", &"[redacted]")
            .finish()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(SigningError::Shares(
                "unsealed shares are malformed: record ends early".into(),
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

pub(crate) fn compressed(p: &Point) -> [u8; 33] {
    let mut out = [0u8; 33];
    out.copy_from_slice(p.compress().as_bytes());
    out
}

/// What the sealed blob is bound to: a blob moved to another DKG, key or signer fails to unseal.
pub fn shares_aad(dkg_id: DkgId, aggregate_key: &[u8; 33], signer: SignerIndex) -> Vec<u8> {
    let mut aad = Vec::with_capacity(80);
    aad.extend_from_slice(b"sbtc-hsm-signer/dkg-shares/v1");
    aad.extend_from_slice(&dkg_id.0.to_be_bytes());
    aad.extend_from_slice(aggregate_key);
    aad.extend_from_slice(&signer.to_be_bytes());
    aad
}

/// Sealed key shares as the storage layer keeps them (`dkg_shares.encrypted_shares`, status
/// `unverified` until the verification round passes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShares {
    pub dkg_id: DkgId,
    pub signer: SignerIndex,
    pub aggregate_key: AggregateKey,
    /// The custody backend's sealed blob.
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for SealedShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedShares")
            .field("dkg_id", &self.dkg_id)
            .field("signer", &self.signer)
            .field("aggregate_key", &self.aggregate_key)
            .field("blob_len", &self.blob.len())
            .finish()
    }
}

impl SealedShares {
    /// Unseals for the length of one round; the caller drops the result (which wipes it) when the
    /// round ends.
    pub async fn unseal(&self, custody: &dyn Custody, label: &KeyLabel) -> Result<KeyShares> {
        let key = self.aggregate_key.serialize();
        let aad = shares_aad(self.dkg_id, &key, self.signer);
        let plain = custody
            .unseal(label, &SealedBlob::from_bytes(self.blob.clone()), &aad)
            .await?;
        let shares = KeyShares::decode(plain.expose())?;
        if shares.dkg_id != self.dkg_id
            || shares.signer != self.signer
            || compressed(&shares.aggregate_key) != key
        {
            return Err(SigningError::Shares(
                "unsealed shares belong to another DKG, key or signer".into(),
            ));
        }
        Ok(shares)
    }
}

/// The public outcome of a DKG: the aggregate key and every party's polynomial commitment, which a
/// coordinator needs to check signature shares and name a signer who sends a bad one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicShares {
    pub dkg_id: DkgId,
    pub threshold: u32,
    pub aggregate_key: Point,
    /// Party id -> commitment.
    pub commitments: BTreeMap<u32, PolyCommitment>,
}

impl PublicShares {
    /// The aggregate key as a secp256k1 key (for taproot outputs and verification).
    pub fn aggregate_public_key(&self) -> Result<secp256k1::PublicKey> {
        Ok(self.key()?.public_key())
    }

    /// The aggregate key, in the one type the rest of the signer uses.
    pub fn key(&self) -> Result<AggregateKey> {
        AggregateKey::from_point(&self.aggregate_key)
            .map_err(|e| SigningError::Internal(format!("aggregate key: {e}")))
    }

    pub(crate) fn aggregator(&self) -> Result<wsts::v2::Aggregator> {
        use wsts::traits::Aggregator as _;
        let n = self.commitments.len() as u32;
        let mut agg = wsts::v2::Aggregator::new(n, self.threshold);
        let comms: hashbrown::HashMap<u32, PolyCommitment> = self
            .commitments
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        agg.init(&comms)
            .map_err(|e| SigningError::Internal(format!("aggregator init: {e:?}")))?;
        Ok(agg)
    }
}
