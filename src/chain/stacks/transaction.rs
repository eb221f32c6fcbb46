//! SIP-005 transactions: what the signers send (contract calls from their multisig account, whose
//! spending condition is SIP-027's order-independent P2SH multisig, hash mode 0x05), the
//! smart-contract deploys of the devnet, and the single-signature contract calls of ordinary
//! accounts (a user's withdrawal request) that the devnet's Stacks node must read. This is the
//! codec and the origin check only: it never sees a key. Signatures are added by the signing
//! layer, which gets them from `Custody`.

use bitcoin::hashes::{hash160, Hash as _};
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, PublicKey};
use sha2::{Digest, Sha512_256};

use super::address::StacksNetwork;
use super::clarity::{ClarityError, Value};

/// Single-signature P2PKH: an ordinary account.
pub const HASH_MODE_P2PKH: u8 = 0x00;
/// Order-independent ("non-sequential") P2SH multisig: SIP-027.
pub const HASH_MODE_P2SH_NON_SEQUENTIAL: u8 = 0x05;
const AUTH_STANDARD: u8 = 0x04;
/// Anchor mode "any": on chain or in a microblock, what the signers and the library send.
pub const ANCHOR_ANY: u8 = 0x03;
const PAYLOAD_SMART_CONTRACT: u8 = 0x01;
const PAYLOAD_CONTRACT_CALL: u8 = 0x02;
const PAYLOAD_VERSIONED_SMART_CONTRACT: u8 = 0x06;
const FIELD_PUBKEY_COMPRESSED: u8 = 0x00;
const FIELD_SIGNATURE_COMPRESSED: u8 = 0x02;
const KEY_ENCODING_COMPRESSED: u8 = 0x00;
/// The most auth fields (signers) a multisig condition may carry here.
pub const MAX_MULTISIG_FIELDS: usize = 256;
/// The largest transaction this codec reads (a stacks-node refuses larger ones too).
pub const MAX_TRANSACTION_BYTES: usize = 2 << 20;

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

/// An ordinary account's spending condition (P2PKH, compressed key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinglesigCondition {
    /// hash160 of the account's compressed public key.
    pub signer: [u8; 20],
    pub nonce: u64,
    pub fee: u64,
    /// `v || r || s` over the presign sighash; all zero before signing.
    pub signature: [u8; 65],
}

/// Who pays and signs: the origin's spending condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpendingCondition {
    Singlesig(SinglesigCondition),
    Multisig(MultisigCondition),
}

impl SpendingCondition {
    pub fn nonce(&self) -> u64 {
        match self {
            SpendingCondition::Singlesig(c) => c.nonce,
            SpendingCondition::Multisig(c) => c.nonce,
        }
    }
    pub fn fee(&self) -> u64 {
        match self {
            SpendingCondition::Singlesig(c) => c.fee,
            SpendingCondition::Multisig(c) => c.fee,
        }
    }
    /// The hash160 the origin's address is made of.
    pub fn signer(&self) -> [u8; 20] {
        match self {
            SpendingCondition::Singlesig(c) => c.signer,
            SpendingCondition::Multisig(c) => c.signer,
        }
    }
    pub fn hash_mode(&self) -> u8 {
        match self {
            SpendingCondition::Singlesig(_) => HASH_MODE_P2PKH,
            SpendingCondition::Multisig(_) => HASH_MODE_P2SH_NON_SEQUENTIAL,
        }
    }
    fn set_nonce_fee(&mut self, nonce: u64, fee: u64) {
        match self {
            SpendingCondition::Singlesig(c) => (c.nonce, c.fee) = (nonce, fee),
            SpendingCondition::Multisig(c) => (c.nonce, c.fee) = (nonce, fee),
        }
    }
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

/// A contract deploy's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartContract {
    pub name: String,
    pub code_body: String,
    /// The Clarity version of a versioned deploy (payload type 6); `None` for type 1.
    pub clarity_version: Option<u8>,
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    ContractCall(ContractCall),
    SmartContract(SmartContract),
}

/// Whether post conditions not listed are allowed (the signers list none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostConditionMode {
    Allow = 0x01,
    Deny = 0x02,
}

/// One post condition, kept as its bytes: read so that its end is known, not interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostCondition(pub Vec<u8>);

/// A Stacks transaction of the kinds above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StacksTransaction {
    pub network: StacksNetwork,
    pub auth: SpendingCondition,
    /// 1 on-chain only, 2 off-chain only, 3 any (what the signers and the library send).
    pub anchor_mode: u8,
    pub post_condition_mode: PostConditionMode,
    pub post_conditions: Vec<PostCondition>,
    pub payload: Payload,
}

/// Why bytes are not a transaction this codec reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("transaction truncated at byte {0}")]
    Truncated(usize),
    #[error("transaction of {0} bytes is larger than {MAX_TRANSACTION_BYTES}")]
    TooLarge(usize),
    #[error("unsupported {what} {value:#04x}: this codec reads contract calls and deploys from single-signature P2PKH or order-independent multisig accounts")]
    Unsupported { what: &'static str, value: u64 },
    #[error("bad public key or name in the transaction")]
    Malformed,
    #[error("{0} trailing bytes after the transaction")]
    Trailing(usize),
    #[error("contract-call argument: {0}")]
    Argument(#[from] ClarityError),
}

/// Why a transaction's origin signatures do not authorize it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("signature {0} is not a valid recoverable secp256k1 signature")]
    BadSignature(usize),
    #[error("signature {0} is high-S; Stacks accepts low-S signatures only")]
    HighS(usize),
    #[error("{got} signatures, {required} required")]
    TooFewSignatures { got: usize, required: usize },
    #[error("the keys and signatures do not hash to the origin's signer hash (wrong key or wrong digest signed)")]
    SignerHashMismatch,
    #[error("a multisig condition needs 1 ≤ required ≤ keys (got {required} of {keys})")]
    BadThreshold { required: usize, keys: usize },
}

/// The keys that authorized a transaction, in the order of its spending condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedOrigin {
    /// Every key of the condition (recovered for signatures), in order.
    pub keys: Vec<PublicKey>,
    /// Whether `keys[i]` signed.
    pub signed: Vec<bool>,
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
    hash160::Hash::hash(&redeem_script(keys, signatures_required)).to_byte_array()
}

fn redeem_script(keys: &[PublicKey], signatures_required: u16) -> Vec<u8> {
    // Counts as Bitcoin script pushes them: OP_1..OP_16, then minimal number pushes.
    let mut b = bitcoin::script::Builder::new().push_int(signatures_required.into());
    for k in keys {
        b = b.push_slice(k.serialize());
    }
    b.push_int(keys.len() as i64)
        .push_opcode(bitcoin::opcodes::all::OP_CHECKMULTISIG)
        .into_script()
        .into_bytes()
}

/// hash160 of a compressed public key: a single-signature account's signer hash.
pub fn singlesig_signer_hash(key: &PublicKey) -> [u8; 20] {
    hash160::Hash::hash(&key.serialize()).to_byte_array()
}

/// Recovers the key that made `vrs` over `digest`, refusing high-S.
pub fn recover(digest: &[u8; 32], vrs: &[u8; 65], index: usize) -> Result<PublicKey, OriginError> {
    let id = RecoveryId::from_i32(vrs[0] as i32).map_err(|_| OriginError::BadSignature(index))?;
    let sig = RecoverableSignature::from_compact(&vrs[1..], id)
        .map_err(|_| OriginError::BadSignature(index))?;
    let mut normal = sig.to_standard();
    normal.normalize_s();
    if normal.serialize_compact()[..] != vrs[1..] {
        return Err(OriginError::HighS(index));
    }
    bitcoin::secp256k1::SECP256K1
        .recover_ecdsa(&Message::from_digest(*digest), &sig)
        .map_err(|_| OriginError::BadSignature(index))
}

fn name(out: &mut Vec<u8>, s: &str) {
    out.push(s.len().min(u8::MAX as usize) as u8);
    out.extend_from_slice(s.as_bytes());
}

impl MultisigCondition {
    /// Fills the fields in the order of `set` (the order of the keys in the redeem script):
    /// each signer's signature where `signature_of` has one, else its public key. Signatures
    /// are `v || r || s`, recoverable, low-S, over the transaction's presign sighash.
    pub fn set_fields(
        &mut self,
        set: &[PublicKey],
        mut signature_of: impl FnMut(&PublicKey) -> Option<[u8; 65]>,
    ) {
        self.fields = set
            .iter()
            .map(|k| match signature_of(k) {
                Some(sig) => AuthField::Signature(sig),
                None => AuthField::PublicKey(*k),
            })
            .collect();
    }
}

impl Payload {
    /// The payload's bytes alone: what `POST /v2/fees/transaction` estimates.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Payload::ContractCall(call) => {
                out.push(PAYLOAD_CONTRACT_CALL);
                out.push(call.address_version);
                out.extend_from_slice(&call.address_hash);
                name(out, &call.contract_name);
                name(out, &call.function_name);
                out.extend_from_slice(&(call.args.len() as u32).to_be_bytes());
                for a in &call.args {
                    out.extend_from_slice(&a.serialize());
                }
            }
            Payload::SmartContract(sc) => {
                match sc.clarity_version {
                    Some(v) => {
                        out.push(PAYLOAD_VERSIONED_SMART_CONTRACT);
                        out.push(v);
                    }
                    None => out.push(PAYLOAD_SMART_CONTRACT),
                }
                name(out, &sc.name);
                out.extend_from_slice(&(sc.code_body.len() as u32).to_be_bytes());
                out.extend_from_slice(sc.code_body.as_bytes());
            }
        }
    }
}

impl StacksTransaction {
    /// A contract call from the signers' multisig account, post-condition mode Allow, anchor
    /// mode any: what the signers send.
    pub fn multisig_call(
        network: StacksNetwork,
        auth: MultisigCondition,
        call: ContractCall,
    ) -> StacksTransaction {
        StacksTransaction {
            network,
            auth: SpendingCondition::Multisig(auth),
            anchor_mode: ANCHOR_ANY,
            post_condition_mode: PostConditionMode::Allow,
            post_conditions: Vec::new(),
            payload: Payload::ContractCall(call),
        }
    }

    /// The contract call, if this is one.
    pub fn contract_call(&self) -> Option<&ContractCall> {
        match &self.payload {
            Payload::ContractCall(c) => Some(c),
            Payload::SmartContract(_) => None,
        }
    }

    /// The multisig condition, if the origin is a multisig account.
    pub fn multisig(&self) -> Option<&MultisigCondition> {
        match &self.auth {
            SpendingCondition::Multisig(m) => Some(m),
            SpendingCondition::Singlesig(_) => None,
        }
    }

    pub fn multisig_mut(&mut self) -> Option<&mut MultisigCondition> {
        match &mut self.auth {
            SpendingCondition::Multisig(m) => Some(m),
            SpendingCondition::Singlesig(_) => None,
        }
    }

    pub fn serialize(&self) -> Vec<u8> {
        let (version, chain_id) = network_bytes(self.network);
        let mut out = Vec::with_capacity(256);
        out.push(version);
        out.extend_from_slice(&chain_id.to_be_bytes());
        out.push(AUTH_STANDARD);
        out.push(self.auth.hash_mode());
        out.extend_from_slice(&self.auth.signer());
        out.extend_from_slice(&self.auth.nonce().to_be_bytes());
        out.extend_from_slice(&self.auth.fee().to_be_bytes());
        match &self.auth {
            SpendingCondition::Singlesig(c) => {
                out.push(KEY_ENCODING_COMPRESSED);
                out.extend_from_slice(&c.signature);
            }
            SpendingCondition::Multisig(c) => {
                out.extend_from_slice(&(c.fields.len() as u32).to_be_bytes());
                for f in &c.fields {
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
                out.extend_from_slice(&c.signatures_required.to_be_bytes());
            }
        }
        out.push(self.anchor_mode);
        out.push(self.post_condition_mode as u8);
        out.extend_from_slice(&(self.post_conditions.len() as u32).to_be_bytes());
        for pc in &self.post_conditions {
            out.extend_from_slice(&pc.0);
        }
        self.payload.write(&mut out);
        out
    }

    /// The txid: SHA-512/256 of the serialized transaction, as the Stacks node and explorers
    /// show it (hex, in this byte order).
    pub fn txid(&self) -> [u8; 32] {
        Sha512_256::digest(self.serialize()).into()
    }

    /// The sighash before any signature: the txid of this transaction with its spending
    /// condition cleared (fee and nonce 0, no fields or signature).
    pub fn initial_sighash(&self) -> [u8; 32] {
        let mut cleared = self.clone();
        cleared.auth.set_nonce_fee(0, 0);
        match &mut cleared.auth {
            SpendingCondition::Singlesig(c) => c.signature = [0; 65],
            SpendingCondition::Multisig(c) => c.fields.clear(),
        }
        cleared.txid()
    }

    /// What a single-signature origin signs, and what every signer of an order-independent
    /// multisig signs (the same digest for all, so signatures can be made in any order and in
    /// parallel): SHA-512/256 of the initial sighash, the auth type, the fee and the nonce.
    pub fn presign_sighash(&self) -> [u8; 32] {
        let mut h = Sha512_256::new();
        h.update(self.initial_sighash());
        h.update([AUTH_STANDARD]);
        h.update(self.auth.fee().to_be_bytes());
        h.update(self.auth.nonce().to_be_bytes());
        h.finalize().into()
    }

    /// Checks the origin's signatures as a Stacks node does: each signature recovers to a key
    /// over the presign sighash (low-S only), a multisig has at least its threshold of them, and
    /// the keys hash to the condition's signer hash. Returns the keys in condition order.
    pub fn verify_origin(&self) -> Result<VerifiedOrigin, OriginError> {
        let digest = self.presign_sighash();
        match &self.auth {
            SpendingCondition::Singlesig(c) => {
                let key = recover(&digest, &c.signature, 0)?;
                if singlesig_signer_hash(&key) != c.signer {
                    return Err(OriginError::SignerHashMismatch);
                }
                Ok(VerifiedOrigin {
                    keys: vec![key],
                    signed: vec![true],
                })
            }
            SpendingCondition::Multisig(c) => {
                let required = c.signatures_required as usize;
                if required == 0 || required > c.fields.len() {
                    return Err(OriginError::BadThreshold {
                        required,
                        keys: c.fields.len(),
                    });
                }
                let mut keys = Vec::with_capacity(c.fields.len());
                let mut signed = Vec::with_capacity(c.fields.len());
                for (i, f) in c.fields.iter().enumerate() {
                    match f {
                        AuthField::PublicKey(k) => {
                            keys.push(*k);
                            signed.push(false);
                        }
                        AuthField::Signature(s) => {
                            keys.push(recover(&digest, s, i)?);
                            signed.push(true);
                        }
                    }
                }
                let got = signed.iter().filter(|s| **s).count();
                if got < required {
                    return Err(OriginError::TooFewSignatures { got, required });
                }
                if multisig_signer_hash(&keys, c.signatures_required) != c.signer {
                    return Err(OriginError::SignerHashMismatch);
                }
                Ok(VerifiedOrigin { keys, signed })
            }
        }
    }

    pub fn deserialize(bytes: &[u8]) -> Result<StacksTransaction, TransactionError> {
        if bytes.len() > MAX_TRANSACTION_BYTES {
            return Err(TransactionError::TooLarge(bytes.len()));
        }
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
        let hash_mode = r.byte()?;
        let signer: [u8; 20] = r.array()?;
        let nonce = r.u64()?;
        let fee = r.u64()?;
        let auth = match hash_mode {
            HASH_MODE_P2PKH => {
                r.expect("key encoding", KEY_ENCODING_COMPRESSED)?;
                SpendingCondition::Singlesig(SinglesigCondition {
                    signer,
                    nonce,
                    fee,
                    signature: r.array()?,
                })
            }
            HASH_MODE_P2SH_NON_SEQUENTIAL => {
                let n = r.u32()? as usize;
                if n > MAX_MULTISIG_FIELDS {
                    return Err(TransactionError::Unsupported {
                        what: "field count",
                        value: n as u64,
                    });
                }
                let mut fields = Vec::with_capacity(n);
                for _ in 0..n {
                    fields.push(match r.byte()? {
                        FIELD_PUBKEY_COMPRESSED => AuthField::PublicKey(
                            PublicKey::from_slice(r.take(33)?)
                                .map_err(|_| TransactionError::Malformed)?,
                        ),
                        FIELD_SIGNATURE_COMPRESSED => AuthField::Signature(r.array()?),
                        other => {
                            return Err(TransactionError::Unsupported {
                                what: "auth field type",
                                value: other.into(),
                            })
                        }
                    });
                }
                let signatures_required = u16::from_be_bytes(r.array()?);
                SpendingCondition::Multisig(MultisigCondition {
                    signer,
                    nonce,
                    fee,
                    fields,
                    signatures_required,
                })
            }
            other => {
                return Err(TransactionError::Unsupported {
                    what: "hash mode",
                    value: other.into(),
                })
            }
        };
        let anchor_mode = match r.byte()? {
            m @ 1..=3 => m,
            m => {
                return Err(TransactionError::Unsupported {
                    what: "anchor mode",
                    value: m.into(),
                })
            }
        };
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
        let pcs = r.u32()? as usize;
        let mut post_conditions = Vec::with_capacity(pcs.min(64));
        for _ in 0..pcs {
            let start = r.at;
            r.post_condition()?;
            post_conditions.push(PostCondition(bytes[start..r.at].to_vec()));
        }
        let payload = match r.byte()? {
            PAYLOAD_CONTRACT_CALL => {
                let address_version = r.byte()?;
                let address_hash: [u8; 20] = r.array()?;
                let contract_name = r.name()?;
                let function_name = r.name()?;
                let argc = r.u32()? as usize;
                let mut args = Vec::with_capacity(argc.min(64));
                for _ in 0..argc {
                    args.push(r.value()?);
                }
                Payload::ContractCall(ContractCall {
                    address_version,
                    address_hash,
                    contract_name,
                    function_name,
                    args,
                })
            }
            t @ (PAYLOAD_SMART_CONTRACT | PAYLOAD_VERSIONED_SMART_CONTRACT) => {
                let clarity_version = (t == PAYLOAD_VERSIONED_SMART_CONTRACT)
                    .then(|| r.byte())
                    .transpose()?;
                let name = r.name()?;
                let len = r.u32()? as usize;
                let code_body = String::from_utf8(r.take(len)?.to_vec())
                    .map_err(|_| TransactionError::Malformed)?;
                Payload::SmartContract(SmartContract {
                    name,
                    code_body,
                    clarity_version,
                })
            }
            other => {
                return Err(TransactionError::Unsupported {
                    what: "payload type",
                    value: other.into(),
                })
            }
        };
        if r.at != bytes.len() {
            return Err(TransactionError::Trailing(bytes.len() - r.at));
        }
        Ok(StacksTransaction {
            network,
            auth,
            anchor_mode,
            post_condition_mode,
            post_conditions,
            payload,
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
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TransactionError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn byte(&mut self) -> Result<u8, TransactionError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, TransactionError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, TransactionError> {
        Ok(u64::from_be_bytes(self.array()?))
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
    /// One Clarity value: its end is found by decoding it.
    fn value(&mut self) -> Result<Value, TransactionError> {
        let (v, used) = Value::deserialize_prefix(&self.bytes[self.at..])?;
        self.at += used;
        Ok(v)
    }
    /// Skips one post condition (STX, fungible or non-fungible), checking its shape.
    fn post_condition(&mut self) -> Result<(), TransactionError> {
        let kind = self.byte()?;
        match self.byte()? {
            0x01 => {}
            0x02 => {
                self.take(21)?;
            }
            0x03 => {
                self.take(21)?;
                self.name()?;
            }
            p => {
                return Err(TransactionError::Unsupported {
                    what: "post-condition principal",
                    value: p.into(),
                })
            }
        }
        let asset_info = |r: &mut Self| -> Result<(), TransactionError> {
            r.take(21)?;
            r.name()?;
            r.name()?;
            Ok(())
        };
        match kind {
            0x00 => {
                self.take(1 + 8)?;
            }
            0x01 => {
                asset_info(self)?;
                self.take(1 + 8)?;
            }
            0x02 => {
                asset_info(self)?;
                self.value()?;
                self.take(1)?;
            }
            k => {
                return Err(TransactionError::Unsupported {
                    what: "post-condition type",
                    value: k.into(),
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    fn call() -> ContractCall {
        ContractCall {
            address_version: 22,
            address_hash: [4; 20],
            contract_name: "c".into(),
            function_name: "f".into(),
            args: vec![Value::None],
        }
    }

    #[test]
    fn what_this_codec_does_not_read_is_named() {
        let mut tx = StacksTransaction::multisig_call(
            StacksNetwork::Mainnet,
            MultisigCondition {
                signer: [1; 20],
                nonce: 1,
                fee: 2,
                fields: vec![AuthField::Signature([3; 65])],
                signatures_required: 1,
            },
            call(),
        );
        tx.post_condition_mode = PostConditionMode::Deny;
        let bytes = tx.serialize();
        assert_eq!(StacksTransaction::deserialize(&bytes).unwrap(), tx);
        for cut in [0, 5, 30, bytes.len() - 1] {
            assert!(
                StacksTransaction::deserialize(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut sequential = bytes.clone();
        sequential[6] = 0x01; // hash mode P2SH (sequential multisig)
        assert_eq!(
            StacksTransaction::deserialize(&sequential),
            Err(TransactionError::Unsupported {
                what: "hash mode",
                value: 1
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            StacksTransaction::deserialize(&longer),
            Err(TransactionError::Trailing(1))
        );
    }

    #[test]
    fn a_single_signature_deploy_signs_and_verifies_and_a_changed_fee_does_not() {
        let secp = Secp256k1::new();
        let secret = SecretKey::from_slice(&[7; 32]).unwrap();
        let key = PublicKey::from_secret_key(&secp, &secret);
        let mut tx = StacksTransaction {
            network: StacksNetwork::Testnet,
            auth: SpendingCondition::Singlesig(SinglesigCondition {
                signer: singlesig_signer_hash(&key),
                nonce: 0,
                fee: 300,
                signature: [0; 65],
            }),
            anchor_mode: 3,
            post_condition_mode: PostConditionMode::Allow,
            post_conditions: Vec::new(),
            payload: Payload::SmartContract(SmartContract {
                name: "sbtc-registry".into(),
                code_body: "(define-read-only (f) u1)".into(),
                clarity_version: Some(3),
            }),
        };
        let digest = tx.presign_sighash();
        let sig = secp.sign_ecdsa_recoverable(&Message::from_digest(digest), &secret);
        let (id, rs) = sig.serialize_compact();
        let mut vrs = [0u8; 65];
        vrs[0] = id.to_i32() as u8;
        vrs[1..].copy_from_slice(&rs);
        if let SpendingCondition::Singlesig(c) = &mut tx.auth {
            c.signature = vrs;
        }
        let back = StacksTransaction::deserialize(&tx.serialize()).unwrap();
        assert_eq!(back, tx);
        assert_eq!(back.verify_origin().unwrap().keys, vec![key]);
        let mut other = tx.clone();
        other.auth.set_nonce_fee(0, 301);
        assert_eq!(other.verify_origin(), Err(OriginError::SignerHashMismatch));
    }

    #[test]
    fn post_conditions_are_read_to_their_end() {
        // A fungible-token condition (standard principal, asset sbtc-token::sbtc, "sent ≤ 5").
        let mut pc = vec![0x01, 0x02, 26];
        pc.extend_from_slice(&[9; 20]);
        pc.push(22);
        pc.extend_from_slice(&[4; 20]);
        pc.push(10);
        pc.extend_from_slice(b"sbtc-token");
        pc.push(4);
        pc.extend_from_slice(b"sbtc");
        pc.push(0x05);
        pc.extend_from_slice(&5u64.to_be_bytes());
        let mut tx = StacksTransaction::multisig_call(
            StacksNetwork::Testnet,
            MultisigCondition {
                signer: [1; 20],
                nonce: 1,
                fee: 2,
                fields: Vec::new(),
                signatures_required: 1,
            },
            call(),
        );
        tx.post_conditions = vec![PostCondition(pc)];
        assert_eq!(StacksTransaction::deserialize(&tx.serialize()).unwrap(), tx);
    }
}
