//! SIP-005 transactions, the part the signers send: contract calls from the signers' multisig
//! account, whose spending condition is SIP-027's order-independent P2SH multisig (hash mode
//! 0x05). This is the codec only: it never sees a key. Signatures are added to `fields` by the
//! signing layer, which gets them from `Custody`.

use bitcoin::hashes::{hash160, Hash as _};
use bitcoin::secp256k1::PublicKey;
use sha2::{Digest, Sha512_256};

use super::address::StacksNetwork;
use super::clarity::{ClarityError, Value};

/// Order-independent ("non-sequential") P2SH multisig: SIP-027.
pub const HASH_MODE_P2SH_NON_SEQUENTIAL: u8 = 0x05;
const AUTH_STANDARD: u8 = 0x04;
const ANCHOR_ANY: u8 = 0x03;
const PAYLOAD_CONTRACT_CALL: u8 = 0x02;
const FIELD_PUBKEY_COMPRESSED: u8 = 0x00;
const FIELD_SIGNATURE_COMPRESSED: u8 = 0x02;

/// One entry of a multisig spending condition: a signer's key, or its signature (the key is
/// recovered from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthField {
    PublicKey(PublicKey),
    /// Recoverable secp256k1 signature as Stacks writes it: recovery id, then r and s.
    Signature([u8; 65]),
}

/// The signers' spending condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultisigCondition {
    /// hash160 of the P2SH redeem script of the signer set (see [`multisig_signer_hash`]).
    pub signer: [u8; 20],
    pub nonce: u64,
    pub fee: u64,
    pub fields: Vec<AuthField>,
    pub signatures_required: u16,
}

/// A contract call's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractCall {
    /// The deployer: address version and hash160.
    pub address_version: u8,
    pub address_hash: [u8; 20],
    pub contract_name: String,
    pub function_name: String,
    pub args: Vec<Value>,
}

/// Whether post conditions not listed are allowed (the signers list none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostConditionMode {
    Allow = 0x01,
    Deny = 0x02,
}

/// A contract call from the signers' multisig account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultisigContractCall {
    pub network: StacksNetwork,
    pub auth: MultisigCondition,
    pub post_condition_mode: PostConditionMode,
    pub payload: ContractCall,
}

/// Why bytes are not a transaction this codec reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("transaction truncated at byte {0}")]
    Truncated(usize),
    #[error("unexpected {what} {value:#04x}: this codec reads the signers' multisig contract calls only")]
    Unsupported { what: &'static str, value: u64 },
    #[error("bad public key or name in the transaction")]
    Malformed,
    #[error("{0} trailing bytes after the transaction")]
    Trailing(usize),
    #[error("contract-call argument: {0}")]
    Argument(#[from] ClarityError),
}

fn network_bytes(network: StacksNetwork) -> (u8, u32) {
    match network {
        StacksNetwork::Mainnet => (0x00, 0x0000_0001),
        StacksNetwork::Testnet => (0x80, 0x8000_0000),
    }
}

/// hash160 of the P2SH multisig redeem script `OP_m <key>... OP_n OP_CHECKMULTISIG`: the signer
/// field of the signers' spending condition, and the hash of their multisig address.
pub fn multisig_signer_hash(keys: &[PublicKey], signatures_required: u16) -> [u8; 20] {
    let small = |n: usize| 0x50 + n as u8; // OP_1 = 0x51 ... OP_16 = 0x60
    let mut script = Vec::with_capacity(3 + keys.len() * 34);
    script.push(small(signatures_required as usize));
    for k in keys {
        script.push(33);
        script.extend_from_slice(&k.serialize());
    }
    script.push(small(keys.len()));
    script.push(0xae); // OP_CHECKMULTISIG
    hash160::Hash::hash(&script).to_byte_array()
}

fn name(out: &mut Vec<u8>, s: &str) {
    out.push(s.len().min(u8::MAX as usize) as u8);
    out.extend_from_slice(s.as_bytes());
}

impl MultisigContractCall {
    pub fn serialize(&self) -> Vec<u8> {
        let (version, chain_id) = network_bytes(self.network);
        let mut out = Vec::with_capacity(256);
        out.push(version);
        out.extend_from_slice(&chain_id.to_be_bytes());
        out.push(AUTH_STANDARD);
        out.push(HASH_MODE_P2SH_NON_SEQUENTIAL);
        out.extend_from_slice(&self.auth.signer);
        out.extend_from_slice(&self.auth.nonce.to_be_bytes());
        out.extend_from_slice(&self.auth.fee.to_be_bytes());
        out.extend_from_slice(&(self.auth.fields.len() as u32).to_be_bytes());
        for f in &self.auth.fields {
            match f {
                AuthField::PublicKey(k) => {
                    out.push(FIELD_PUBKEY_COMPRESSED);
                    out.extend_from_slice(&k.serialize());
                }
                AuthField::Signature(s) => {
                    out.push(FIELD_SIGNATURE_COMPRESSED);
                    out.extend_from_slice(s);
                }
            }
        }
        out.extend_from_slice(&self.auth.signatures_required.to_be_bytes());
        out.push(ANCHOR_ANY);
        out.push(self.post_condition_mode as u8);
        out.extend_from_slice(&0u32.to_be_bytes()); // no post conditions
        out.push(PAYLOAD_CONTRACT_CALL);
        out.push(self.payload.address_version);
        out.extend_from_slice(&self.payload.address_hash);
        name(&mut out, &self.payload.contract_name);
        name(&mut out, &self.payload.function_name);
        out.extend_from_slice(&(self.payload.args.len() as u32).to_be_bytes());
        for a in &self.payload.args {
            out.extend_from_slice(&a.serialize());
        }
        out
    }

    /// The txid: SHA-512/256 of the serialized transaction, as the Stacks node and explorers
    /// show it (hex, in this byte order).
    pub fn txid(&self) -> [u8; 32] {
        Sha512_256::digest(self.serialize()).into()
    }

    /// SIP-027's sighash before any signature: the txid of this transaction with its spending
    /// condition cleared (fee and nonce 0, no fields).
    pub fn initial_sighash(&self) -> [u8; 32] {
        let mut cleared = self.clone();
        cleared.auth.fee = 0;
        cleared.auth.nonce = 0;
        cleared.auth.fields.clear();
        cleared.txid()
    }

    /// What every signer of an order-independent multisig signs (the same digest for all, so
    /// signatures can be made in any order and in parallel): SHA-512/256 of the initial sighash,
    /// the auth type, the fee and the nonce.
    pub fn presign_sighash(&self) -> [u8; 32] {
        let mut h = Sha512_256::new();
        h.update(self.initial_sighash());
        h.update([AUTH_STANDARD]);
        h.update(self.auth.fee.to_be_bytes());
        h.update(self.auth.nonce.to_be_bytes());
        h.finalize().into()
    }

    /// Fills the spending condition's fields in the order of `set` (the order of the keys in the
    /// multisig redeem script): each signer's signature where `signature_of` has one, else its
    /// public key. Signatures are `v || r || s`, recoverable, low-S, over
    /// [`presign_sighash`](Self::presign_sighash).
    pub fn set_fields(
        &mut self,
        set: &[PublicKey],
        mut signature_of: impl FnMut(&PublicKey) -> Option<[u8; 65]>,
    ) {
        self.auth.fields = set
            .iter()
            .map(|k| match signature_of(k) {
                Some(sig) => AuthField::Signature(sig),
                None => AuthField::PublicKey(*k),
            })
            .collect();
    }

    pub fn deserialize(bytes: &[u8]) -> Result<MultisigContractCall, TransactionError> {
        let mut r = Reader { bytes, at: 0 };
        let network = match (r.byte()?, r.u32()?) {
            (0x00, 0x0000_0001) => StacksNetwork::Mainnet,
            (0x80, 0x8000_0000) => StacksNetwork::Testnet,
            (v, _) => {
                return Err(TransactionError::Unsupported {
                    what: "version",
                    value: v.into(),
                })
            }
        };
        r.expect("auth type", AUTH_STANDARD)?;
        r.expect("hash mode", HASH_MODE_P2SH_NON_SEQUENTIAL)?;
        let signer: [u8; 20] = r.take(20)?.try_into().expect("20");
        let nonce = r.u64()?;
        let fee = r.u64()?;
        let n = r.u32()? as usize;
        if n > 256 {
            return Err(TransactionError::Unsupported {
                what: "field count",
                value: n as u64,
            });
        }
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push(match r.byte()? {
                FIELD_PUBKEY_COMPRESSED => AuthField::PublicKey(
                    PublicKey::from_slice(r.take(33)?).map_err(|_| TransactionError::Malformed)?,
                ),
                FIELD_SIGNATURE_COMPRESSED => {
                    AuthField::Signature(r.take(65)?.try_into().expect("65"))
                }
                other => {
                    return Err(TransactionError::Unsupported {
                        what: "auth field type",
                        value: other.into(),
                    })
                }
            });
        }
        let signatures_required = u16::from_be_bytes(r.take(2)?.try_into().expect("2"));
        r.expect("anchor mode", ANCHOR_ANY)?;
        let post_condition_mode = match r.byte()? {
            0x01 => PostConditionMode::Allow,
            0x02 => PostConditionMode::Deny,
            v => {
                return Err(TransactionError::Unsupported {
                    what: "post-condition mode",
                    value: v.into(),
                })
            }
        };
        let pcs = r.u32()?;
        if pcs != 0 {
            return Err(TransactionError::Unsupported {
                what: "post-condition count",
                value: pcs.into(),
            });
        }
        r.expect("payload type", PAYLOAD_CONTRACT_CALL)?;
        let address_version = r.byte()?;
        let address_hash: [u8; 20] = r.take(20)?.try_into().expect("20");
        let contract_name = r.name()?;
        let function_name = r.name()?;
        let argc = r.u32()? as usize;
        let mut args = Vec::with_capacity(argc.min(64));
        for _ in 0..argc {
            // Each argument is one Clarity value: find its end by decoding the rest greedily.
            let (v, used) = Value::deserialize_prefix(&bytes[r.at..])?;
            r.at += used;
            args.push(v);
        }
        if r.at != bytes.len() {
            return Err(TransactionError::Trailing(bytes.len() - r.at));
        }
        Ok(MultisigContractCall {
            network,
            auth: MultisigCondition {
                signer,
                nonce,
                fee,
                fields,
                signatures_required,
            },
            post_condition_mode,
            payload: ContractCall {
                address_version,
                address_hash,
                contract_name,
                function_name,
                args,
            },
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TransactionError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or(TransactionError::Truncated(self.bytes.len()))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, TransactionError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, TransactionError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, TransactionError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn expect(&mut self, what: &'static str, want: u8) -> Result<(), TransactionError> {
        match self.byte()? {
            b if b == want => Ok(()),
            b => Err(TransactionError::Unsupported {
                what,
                value: b.into(),
            }),
        }
    }
    fn name(&mut self) -> Result<String, TransactionError> {
        let n = self.byte()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| TransactionError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_this_codec_does_not_read_is_named() {
        let tx = MultisigContractCall {
            network: StacksNetwork::Mainnet,
            auth: MultisigCondition {
                signer: [1; 20],
                nonce: 1,
                fee: 2,
                fields: vec![AuthField::Signature([3; 65])],
                signatures_required: 1,
            },
            post_condition_mode: PostConditionMode::Deny,
            payload: ContractCall {
                address_version: 22,
                address_hash: [4; 20],
                contract_name: "c".into(),
                function_name: "f".into(),
                args: vec![Value::None],
            },
        };
        let bytes = tx.serialize();
        assert_eq!(MultisigContractCall::deserialize(&bytes).unwrap(), tx);
        for cut in [0, 5, 30, bytes.len() - 1] {
            assert!(
                MultisigContractCall::deserialize(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut single_sig = bytes.clone();
        single_sig[6] = 0x00; // hash mode P2PKH
        assert_eq!(
            MultisigContractCall::deserialize(&single_sig),
            Err(TransactionError::Unsupported {
                what: "hash mode",
                value: 0
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(MultisigContractCall::deserialize(&longer).is_err());
    }
}
