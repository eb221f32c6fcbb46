//! The sbtc-registry's print events: what the Stacks node's event observer keeps, and what the
//! devnet's Stacks node emits. Each is a Clarity tuple whose `topic` names it (CHAIN.md §4); the
//! field names are the contract's. Bitcoin txids and block hashes travel as `(buff 32)` in the
//! order Bitcoin tools display them ([`to_clarity_bytes`]).

use std::collections::BTreeMap;

use bitcoin::hashes::Hash;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{BlockHash, OutPoint, Txid};

use super::address::Principal;
use super::clarity::Value;

/// A Bitcoin txid or block hash as a Clarity `(buff 32)`: in the order Bitcoin tools display it,
/// the reverse of rust-bitcoin's internal `to_byte_array`. The official signer writes them so, and
/// Clarity's `get-burn-block-info? header-hash` returns burn hashes so: a burn hash in the other
/// order fails the deposit and withdrawal contracts' check.
pub fn to_clarity_bytes<H: Hash<Bytes = [u8; 32]>>(h: &H) -> [u8; 32] {
    let mut b = h.to_byte_array();
    b.reverse();
    b
}

/// The inverse of [`to_clarity_bytes`].
pub fn from_clarity_bytes<H: Hash<Bytes = [u8; 32]>>(mut b: [u8; 32]) -> H {
    b.reverse();
    H::from_byte_array(b)
}

/// A withdrawal's Bitcoin recipient as the contracts hold it: `{version: (buff 1), hashbytes:
/// (buff 32)}` (version 0 P2PKH, 1–3 P2SH, 4 P2WPKH, 5 P2WSH, 6 P2TR).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalRecipient {
    pub version: u8,
    pub hashbytes: Vec<u8>,
}

impl WithdrawalRecipient {
    pub fn to_value(&self) -> Value {
        Value::tuple([
            ("version", Value::Buffer(vec![self.version])),
            ("hashbytes", Value::Buffer(self.hashbytes.clone())),
        ])
    }

    pub fn from_value(v: &Value) -> Result<Self, EventError> {
        let t = Fields::of(v)?;
        let version = t.buffer("version")?;
        let hashbytes = t.buffer("hashbytes")?;
        if version.len() != 1 || hashbytes.len() > 32 {
            return Err(EventError::Field("recipient"));
        }
        Ok(WithdrawalRecipient {
            version: version[0],
            hashbytes: hashbytes.to_vec(),
        })
    }
}

/// One sbtc-registry print event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    /// `complete-deposit-wrapper` minted a deposit.
    CompletedDeposit {
        outpoint: OutPoint,
        amount: u64,
        burn_hash: BlockHash,
        burn_height: u64,
        sweep_txid: Txid,
    },
    /// A user asked for a withdrawal: `amount` and `max_fee` are locked.
    WithdrawalCreate {
        request_id: u64,
        amount: u64,
        sender: Principal,
        recipient: WithdrawalRecipient,
        /// The Bitcoin height when it was asked.
        block_height: u64,
        max_fee: u64,
    },
    WithdrawalAccept {
        request_id: u64,
        bitcoin_txid: Txid,
        signer_bitmap: u128,
        output_index: u32,
        fee: u64,
        burn_hash: BlockHash,
        burn_height: u64,
        sweep_txid: Txid,
    },
    WithdrawalReject {
        request_id: u64,
        signer_bitmap: u128,
    },
    KeyRotation {
        new_keys: Vec<PublicKey>,
        new_address: Principal,
        new_aggregate_pubkey: PublicKey,
        new_signature_threshold: u16,
    },
}

/// Why a print event is not one of the registry events we keep.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not a tuple with a `topic`")]
    NotATuple,
    #[error("topic `{0}` is not one the signer keeps")]
    OtherTopic(String),
    #[error("field `{0}` is missing or of the wrong type")]
    Field(&'static str),
}

impl RegistryEvent {
    /// The event's topic, as printed.
    pub fn topic(&self) -> &'static str {
        match self {
            RegistryEvent::CompletedDeposit { .. } => "completed-deposit",
            RegistryEvent::WithdrawalCreate { .. } => "withdrawal-create",
            RegistryEvent::WithdrawalAccept { .. } => "withdrawal-accept",
            RegistryEvent::WithdrawalReject { .. } => "withdrawal-reject",
            RegistryEvent::KeyRotation { .. } => "key-rotation",
        }
    }

    /// The tuple the contract prints.
    pub fn to_value(&self) -> Value {
        let topic = Value::StringAscii(self.topic().to_string());
        let buf32 = |b: [u8; 32]| Value::Buffer(b.to_vec());
        let txid = |t: &Txid| buf32(to_clarity_bytes(t));
        let hash = |h: &BlockHash| buf32(to_clarity_bytes(h));
        match self {
            RegistryEvent::CompletedDeposit {
                outpoint,
                amount,
                burn_hash,
                burn_height,
                sweep_txid,
            } => Value::tuple([
                ("topic", topic),
                ("bitcoin-txid", txid(&outpoint.txid)),
                ("output-index", Value::UInt(outpoint.vout.into())),
                ("amount", Value::UInt((*amount).into())),
                ("burn-hash", hash(burn_hash)),
                ("burn-height", Value::UInt((*burn_height).into())),
                ("sweep-txid", txid(sweep_txid)),
            ]),
            RegistryEvent::WithdrawalCreate {
                request_id,
                amount,
                sender,
                recipient,
                block_height,
                max_fee,
            } => Value::tuple([
                ("topic", topic),
                ("amount", Value::UInt((*amount).into())),
                ("request-id", Value::UInt((*request_id).into())),
                ("sender", Value::Principal(sender.clone())),
                ("recipient", recipient.to_value()),
                ("block-height", Value::UInt((*block_height).into())),
                ("max-fee", Value::UInt((*max_fee).into())),
            ]),
            RegistryEvent::WithdrawalAccept {
                request_id,
                bitcoin_txid,
                signer_bitmap,
                output_index,
                fee,
                burn_hash,
                burn_height,
                sweep_txid,
            } => Value::tuple([
                ("topic", topic),
                ("request-id", Value::UInt((*request_id).into())),
                ("bitcoin-txid", txid(bitcoin_txid)),
                ("signer-bitmap", Value::UInt(*signer_bitmap)),
                ("output-index", Value::UInt((*output_index).into())),
                ("fee", Value::UInt((*fee).into())),
                ("burn-hash", hash(burn_hash)),
                ("burn-height", Value::UInt((*burn_height).into())),
                ("sweep-txid", txid(sweep_txid)),
            ]),
            RegistryEvent::WithdrawalReject {
                request_id,
                signer_bitmap,
            } => Value::tuple([
                ("topic", topic),
                ("request-id", Value::UInt((*request_id).into())),
                ("signer-bitmap", Value::UInt(*signer_bitmap)),
            ]),
            RegistryEvent::KeyRotation {
                new_keys,
                new_address,
                new_aggregate_pubkey,
                new_signature_threshold,
            } => Value::tuple([
                ("topic", topic),
                (
                    "new-keys",
                    Value::List(
                        new_keys
                            .iter()
                            .map(|k| Value::Buffer(k.serialize().to_vec()))
                            .collect(),
                    ),
                ),
                ("new-address", Value::Principal(new_address.clone())),
                (
                    "new-aggregate-pubkey",
                    Value::Buffer(new_aggregate_pubkey.serialize().to_vec()),
                ),
                (
                    "new-signature-threshold",
                    Value::UInt((*new_signature_threshold).into()),
                ),
            ]),
        }
    }

    /// Reads a printed tuple. Topics the signer does not keep (for example
    /// `update-protocol-contract`) are [`EventError::OtherTopic`].
    pub fn from_value(v: &Value) -> Result<RegistryEvent, EventError> {
        let t = Fields::of(v)?;
        let topic = match t.0.get("topic") {
            Some(Value::StringAscii(s)) => s.as_str(),
            _ => return Err(EventError::NotATuple),
        };
        Ok(match topic {
            "completed-deposit" => RegistryEvent::CompletedDeposit {
                outpoint: OutPoint::new(
                    from_clarity_bytes(t.buf32("bitcoin-txid")?),
                    t.uint("output-index")?,
                ),
                amount: t.uint("amount")?,
                burn_hash: from_clarity_bytes(t.buf32("burn-hash")?),
                burn_height: t.uint("burn-height")?,
                sweep_txid: from_clarity_bytes(t.buf32("sweep-txid")?),
            },
            "withdrawal-create" => RegistryEvent::WithdrawalCreate {
                request_id: t.uint("request-id")?,
                amount: t.uint("amount")?,
                sender: t.principal("sender")?,
                recipient: WithdrawalRecipient::from_value(t.get("recipient")?)
                    .map_err(|_| EventError::Field("recipient"))?,
                block_height: t.uint("block-height")?,
                max_fee: t.uint("max-fee")?,
            },
            "withdrawal-accept" => RegistryEvent::WithdrawalAccept {
                request_id: t.uint("request-id")?,
                bitcoin_txid: from_clarity_bytes(t.buf32("bitcoin-txid")?),
                signer_bitmap: t.uint("signer-bitmap")?,
                output_index: t.uint("output-index")?,
                fee: t.uint("fee")?,
                burn_hash: from_clarity_bytes(t.buf32("burn-hash")?),
                burn_height: t.uint("burn-height")?,
                sweep_txid: from_clarity_bytes(t.buf32("sweep-txid")?),
            },
            "withdrawal-reject" => RegistryEvent::WithdrawalReject {
                request_id: t.uint("request-id")?,
                signer_bitmap: t.uint("signer-bitmap")?,
            },
            "key-rotation" => {
                let keys = match t.get("new-keys")? {
                    Value::List(items) => items
                        .iter()
                        .map(|k| match k {
                            Value::Buffer(b) => PublicKey::from_slice(b).ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or(EventError::Field("new-keys"))?,
                    _ => return Err(EventError::Field("new-keys")),
                };
                RegistryEvent::KeyRotation {
                    new_keys: keys,
                    new_address: t.principal("new-address")?,
                    new_aggregate_pubkey: PublicKey::from_slice(t.buffer("new-aggregate-pubkey")?)
                        .map_err(|_| EventError::Field("new-aggregate-pubkey"))?,
                    new_signature_threshold: t.uint("new-signature-threshold")?,
                }
            }
            other => return Err(EventError::OtherTopic(other.to_string())),
        })
    }
}

/// A tuple's fields, read by name.
struct Fields<'a>(&'a BTreeMap<String, Value>);

impl<'a> Fields<'a> {
    fn of(v: &'a Value) -> Result<Self, EventError> {
        match v {
            Value::Tuple(t) => Ok(Fields(t)),
            _ => Err(EventError::NotATuple),
        }
    }
    fn get(&self, name: &'static str) -> Result<&'a Value, EventError> {
        self.0.get(name).ok_or(EventError::Field(name))
    }
    fn buffer(&self, name: &'static str) -> Result<&'a [u8], EventError> {
        match self.get(name)? {
            Value::Buffer(b) => Ok(b),
            _ => Err(EventError::Field(name)),
        }
    }
    fn buf32(&self, name: &'static str) -> Result<[u8; 32], EventError> {
        self.buffer(name)?
            .try_into()
            .map_err(|_| EventError::Field(name))
    }
    fn uint<T: TryFrom<u128>>(&self, name: &'static str) -> Result<T, EventError> {
        match self.get(name)? {
            Value::UInt(n) => T::try_from(*n).map_err(|_| EventError::Field(name)),
            _ => Err(EventError::Field(name)),
        }
    }
    fn principal(&self, name: &'static str) -> Result<Principal, EventError> {
        match self.get(name)? {
            Value::Principal(p) => Ok(p.clone()),
            _ => Err(EventError::Field(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    fn key(i: u8) -> PublicKey {
        PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[i; 32]).unwrap())
    }

    #[test]
    fn every_kept_event_reads_back_from_its_clarity_bytes() {
        let principal = Principal::Standard {
            version: 26,
            hash160: [7; 20],
        };
        let events = [
            RegistryEvent::CompletedDeposit {
                outpoint: OutPoint::new(Txid::from_byte_array([1; 32]), 3),
                amount: 99_000,
                burn_hash: BlockHash::from_byte_array([2; 32]),
                burn_height: 812,
                sweep_txid: Txid::from_byte_array([3; 32]),
            },
            RegistryEvent::WithdrawalCreate {
                request_id: 5,
                amount: 10_000,
                sender: principal.clone(),
                recipient: WithdrawalRecipient {
                    version: 6,
                    hashbytes: vec![4; 32],
                },
                block_height: 900,
                max_fee: 2_000,
            },
            RegistryEvent::WithdrawalAccept {
                request_id: 5,
                bitcoin_txid: Txid::from_byte_array([5; 32]),
                signer_bitmap: 0b111,
                output_index: 2,
                fee: 1_500,
                burn_hash: BlockHash::from_byte_array([6; 32]),
                burn_height: 906,
                sweep_txid: Txid::from_byte_array([5; 32]),
            },
            RegistryEvent::WithdrawalReject {
                request_id: 6,
                signer_bitmap: 0b1011,
            },
            RegistryEvent::KeyRotation {
                new_keys: vec![key(1), key(2), key(3)],
                new_address: principal,
                new_aggregate_pubkey: key(9),
                new_signature_threshold: 2,
            },
        ];
        for e in events {
            let bytes = e.to_value().serialize();
            let back = RegistryEvent::from_value(&Value::deserialize(&bytes).unwrap()).unwrap();
            assert_eq!(back, e, "{}", e.topic());
        }
    }

    #[test]
    fn other_topics_and_wrong_fields_are_named() {
        let other = Value::tuple([(
            "topic",
            Value::StringAscii("update-protocol-contract".into()),
        )]);
        assert_eq!(
            RegistryEvent::from_value(&other),
            Err(EventError::OtherTopic("update-protocol-contract".into()))
        );
        let wrong = Value::tuple([
            ("topic", Value::StringAscii("withdrawal-reject".into())),
            ("request-id", Value::Int(1)),
            ("signer-bitmap", Value::UInt(1)),
        ]);
        assert_eq!(
            RegistryEvent::from_value(&wrong),
            Err(EventError::Field("request-id"))
        );
        assert_eq!(
            RegistryEvent::from_value(&Value::UInt(1)),
            Err(EventError::NotATuple)
        );
    }
}
