//! The signers' aggregate key: the one type for the key a DKG produces, whatever form a caller
//! needs (compressed, x-only for taproot, WSTS point, hex).

use std::{fmt, str::FromStr};

use bitcoin::{
    key::{TapTweak as _, TweakedPublicKey},
    secp256k1::{self, PublicKey, XOnlyPublicKey},
    TapNodeHash,
};

/// The aggregate public key of one DKG (a full point, so its parity is known).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateKey(PublicKey);

/// Why bytes or text are not an aggregate key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an aggregate key: {0}")]
pub struct InvalidAggregateKey(&'static str);

impl AggregateKey {
    pub fn new(key: PublicKey) -> Self {
        AggregateKey(key)
    }

    /// From the 33-byte compressed encoding (a database column, a peer message).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidAggregateKey> {
        if bytes.len() != 33 {
            return Err(InvalidAggregateKey("expected 33 bytes (compressed point)"));
        }
        PublicKey::from_slice(bytes)
            .map(AggregateKey)
            .map_err(|_| InvalidAggregateKey("not a point on secp256k1"))
    }

    /// From a WSTS point (the DKG's result).
    pub fn from_point(point: &wsts::curve::point::Point) -> Result<Self, InvalidAggregateKey> {
        Self::from_slice(point.compress().as_bytes())
    }

    /// As a WSTS point (for the round arithmetic).
    pub fn to_point(&self) -> wsts::curve::point::Point {
        // A valid secp256k1 point always converts.
        wsts::curve::point::Point::try_from(&wsts::curve::point::Compressed::from(self.serialize()))
            .unwrap_or_default()
    }

    pub fn public_key(&self) -> PublicKey {
        self.0
    }

    pub fn serialize(&self) -> [u8; 33] {
        self.0.serialize()
    }

    /// The x-only key: what a deposit script's `<key> OP_CHECKSIG` names.
    pub fn x_only(&self) -> XOnlyPublicKey {
        self.0.x_only_public_key().0
    }

    /// The BIP-341 output key of a key-path spend (the peg UTXO: no script tree).
    pub fn tap_tweaked(&self, merkle_root: Option<TapNodeHash>) -> TweakedPublicKey {
        self.x_only().tap_tweak(secp256k1::SECP256K1, merkle_root).0
    }
}

impl From<PublicKey> for AggregateKey {
    fn from(key: PublicKey) -> Self {
        AggregateKey(key)
    }
}

impl fmt::Display for AggregateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.serialize()))
    }
}

impl fmt::Debug for AggregateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AggregateKey({self})")
    }
}

impl FromStr for AggregateKey {
    type Err = InvalidAggregateKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|_| InvalidAggregateKey("not hex"))?;
        Self::from_slice(&bytes)
    }
}

impl serde::Serialize for AggregateKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for AggregateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_every_form() {
        let sk = secp256k1::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let key = AggregateKey::new(sk.public_key(secp256k1::SECP256K1));
        assert_eq!(AggregateKey::from_slice(&key.serialize()).unwrap(), key);
        assert_eq!(key.to_string().parse::<AggregateKey>().unwrap(), key);
        assert_eq!(AggregateKey::from_point(&key.to_point()).unwrap(), key);
        assert_eq!(key.x_only().serialize(), key.serialize()[1..]);
        assert!(AggregateKey::from_slice(&[2u8; 32]).is_err());
        assert!(AggregateKey::from_slice(&[9u8; 33]).is_err());
    }
}
