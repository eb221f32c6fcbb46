//! What the signer asks of a Stacks node: the [`StacksClient`] trait (the stacks-node v2 RPC
//! calls of CHAIN.md section 4), its answers as typed values, the sBTC reads every signer makes
//! (built on `call_read`, so every implementation gets them), and one error type that says
//! which endpoint failed and what the operator can do. [`super::rpc::StacksRpc`] implements it
//! over HTTP; the devnet's Stacks node serves the same endpoints.
//!
//! Bitcoin txids go into Clarity arguments as `(buff 32)` in the order Bitcoin tools display them
//! (`events::to_clarity_bytes`), as the official signer sends them and the contracts store them.

use async_trait::async_trait;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{Amount, OutPoint};
use sha2::{Digest, Sha512_256};

use super::address::Principal;
use super::clarity::Value;
use super::transaction::{Payload, StacksTransaction};
use crate::storage::{StacksBlockHash, StacksTxid};

/// The sBTC contracts the signer reads, by name (deployed by `[stacks] deployer`).
pub const REGISTRY_CONTRACT: &str = "sbtc-registry";
pub const TOKEN_CONTRACT: &str = "sbtc-token";

/// `GET /v2/info`, the fields the signer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The Bitcoin height the node has processed.
    pub burn_block_height: u64,
    pub stacks_tip_height: u64,
    /// The tip's block header hash (not its block id; see [`NodeInfo::stacks_tip_id`]).
    pub stacks_tip: [u8; 32],
    /// The consensus hash of the tip's tenure.
    pub stacks_tip_consensus_hash: [u8; 20],
    /// The chain id: 0x00000001 on mainnet, 0x80000000 on testnet.
    pub network_id: u32,
    pub server_version: String,
    /// None when the node does not say.
    pub is_fully_synced: Option<bool>,
}

impl NodeInfo {
    /// The tip's block id (the `index_block_hash` of `/new_block`):
    /// SHA-512/256(block hash ‖ consensus hash), as stacks-node computes it.
    pub fn stacks_tip_id(&self) -> StacksBlockHash {
        let mut h = Sha512_256::new();
        h.update(self.stacks_tip);
        h.update(self.stacks_tip_consensus_hash);
        StacksBlockHash(h.finalize().into())
    }
}

/// `GET /v2/accounts/{principal}`: amounts in micro-STX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountInfo {
    /// The whole balance, locked (stacked) micro-STX included.
    pub balance: u128,
    pub locked: u128,
    /// The nonce the account's next transaction must carry.
    pub nonce: u64,
}

/// One fee estimate of `POST /v2/fees/transaction`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeeEstimate {
    /// micro-STX per unit of cost, as the node reports it.
    pub fee_rate: f64,
    /// The fee for the whole transaction, in micro-STX.
    pub fee: u64,
}

/// The node's estimates, sorted by fee: low, medium (the middle one), high.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeeEstimates {
    pub low: FeeEstimate,
    pub medium: FeeEstimate,
    pub high: FeeEstimate,
}

impl FeeEstimates {
    /// The medium fee, never above `cap` (`[stacks] fee_cap_ustx`).
    pub fn medium_capped(&self, cap: u64) -> u64 {
        self.medium.fee.min(cap)
    }
}

/// `sbtc-registry.get-current-signer-data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerData {
    /// The signers' keys; empty before the first rotation.
    pub signer_set: Vec<PublicKey>,
    /// None before the first rotation (the contract holds `0x00`).
    pub aggregate_key: Option<PublicKey>,
    /// The principal the signers' multisig spends from.
    pub signer_principal: Principal,
    /// None when the contract has no threshold field, or holds u0 (before the first rotation).
    pub threshold: Option<u16>,
}

/// What went wrong talking to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The node could not be reached (connection refused, DNS, timeout), even after retries.
    Unreachable,
    /// The node answered with an HTTP error status (after retries, for 5xx).
    Status { code: u16 },
    /// The node refused a transaction (`POST /v2/transactions` 400): its reason
    /// (`BadNonce`, `FeeTooLow`, `NotEnoughFunds`, ...) and reason data as it sent them.
    Rejected {
        reason: String,
        reason_data: Option<serde_json::Value>,
    },
    /// The node has no fee estimate (a new or quiet chain, or no estimator configured): fall
    /// back to a configured fee.
    NoFeeEstimate,
    /// A read-only call ran and failed (`{okay: false, cause}`): the cause as the node sent it.
    CallFailed { cause: String },
    /// The answer did not parse as what the endpoint returns, or was larger than allowed.
    BadResponse,
    /// The node is on another network than `[bitcoin] network` implies.
    WrongNetwork,
}

/// An error from one call to the node: which endpoint, what kind, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stacks-node {endpoint}: {detail}")]
pub struct Error {
    /// e.g. `GET /v2/info`.
    pub endpoint: &'static str,
    pub kind: ErrorKind,
    pub detail: String,
}

impl Error {
    pub fn new(endpoint: &'static str, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error {
            endpoint,
            kind,
            detail: detail.into(),
        }
    }

    /// Worth trying again later: unreachable, or a server-side (5xx) failure.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::Unreachable => true,
            ErrorKind::Status { code } => code >= 500,
            _ => false,
        }
    }

    fn bad(endpoint: &'static str, detail: impl Into<String>) -> Error {
        Error::new(endpoint, ErrorKind::BadResponse, detail)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

const CALL_READ: &str = "POST /v2/contracts/call-read";

/// The stacks-node calls the signer makes. Every failure is an [`Error`].
#[async_trait]
pub trait StacksClient: Send + Sync {
    /// `GET /v2/info`.
    async fn get_info(&self) -> Result<NodeInfo>;

    /// `GET /v2/accounts/{principal}?proof=0`.
    async fn get_account(&self, principal: &Principal) -> Result<AccountInfo>;

    /// `POST /v2/contracts/call-read/{deployer}/{contract}/{function}`: runs a read-only function
    /// as `sender` and returns its result. A call that fails in Clarity is
    /// [`ErrorKind::CallFailed`].
    async fn call_read(
        &self,
        deployer: &Principal,
        contract: &str,
        function: &str,
        args: &[Value],
        sender: &Principal,
    ) -> Result<Value>;

    /// `POST /v2/fees/transaction`: fee estimates for `payload` in a transaction of about
    /// `estimated_len` bytes. A node without estimates is [`ErrorKind::NoFeeEstimate`].
    async fn estimate_fee(&self, payload: &Payload, estimated_len: u64) -> Result<FeeEstimates>;

    /// `POST /v2/transactions`: submits the transaction; returns its txid as the node accepted
    /// it (checked to be ours). A refusal is [`ErrorKind::Rejected`].
    async fn submit_transaction(&self, tx: &StacksTransaction) -> Result<StacksTxid>;

    /// `GET /v2/data_var/{deployer}/{contract}/{var}?proof=0`.
    async fn get_data_var(&self, deployer: &Principal, contract: &str, var: &str) -> Result<Value>;

    /// `POST /v2/map_entry/{deployer}/{contract}/{map}?proof=0`: the entry under `key`, None
    /// when the map holds none.
    async fn get_map_entry(
        &self,
        deployer: &Principal,
        contract: &str,
        map: &str,
        key: &Value,
    ) -> Result<Option<Value>>;

    /// `sbtc-registry.get-current-aggregate-pubkey`: None before the first rotation.
    async fn get_current_aggregate_pubkey(
        &self,
        deployer: &Principal,
    ) -> Result<Option<PublicKey>> {
        let v = self
            .call_read(
                deployer,
                REGISTRY_CONTRACT,
                "get-current-aggregate-pubkey",
                &[],
                deployer,
            )
            .await?;
        aggregate_key_of(&v)
            .map_err(|why| Error::bad(CALL_READ, format!("get-current-aggregate-pubkey: {why}")))
    }

    /// `sbtc-registry.get-current-signer-data`.
    async fn get_current_signer_data(&self, deployer: &Principal) -> Result<SignerData> {
        let v = self
            .call_read(
                deployer,
                REGISTRY_CONTRACT,
                "get-current-signer-data",
                &[],
                deployer,
            )
            .await?;
        signer_data_of(&v)
            .map_err(|why| Error::bad(CALL_READ, format!("get-current-signer-data: {why}")))
    }

    /// `sbtc-registry.get-deposit-status(txid, vout)`: whether the registry records the
    /// deposit as completed (minted).
    async fn get_deposit_status(&self, deployer: &Principal, outpoint: &OutPoint) -> Result<bool> {
        let args = [
            Value::Buffer(super::events::to_clarity_bytes(&outpoint.txid).to_vec()),
            Value::UInt(outpoint.vout.into()),
        ];
        let v = self
            .call_read(
                deployer,
                REGISTRY_CONTRACT,
                "get-deposit-status",
                &args,
                deployer,
            )
            .await?;
        match v {
            Value::None => Ok(false),
            Value::Some(inner) => match *inner {
                Value::Bool(b) => Ok(b),
                other => Err(Error::bad(
                    CALL_READ,
                    format!("get-deposit-status: (some {other}) is not (optional bool)"),
                )),
            },
            other => Err(Error::bad(
                CALL_READ,
                format!("get-deposit-status: {other} is not (optional bool)"),
            )),
        }
    }

    /// `sbtc-token.get-total-supply`: all sBTC in existence, locked included.
    async fn get_total_supply(&self, deployer: &Principal) -> Result<Amount> {
        let v = self
            .call_read(deployer, TOKEN_CONTRACT, "get-total-supply", &[], deployer)
            .await?;
        ok_sats(&v).map_err(|why| Error::bad(CALL_READ, format!("get-total-supply: {why}")))
    }

    /// `sbtc-token.get-balance(who)`: `who`'s sBTC, locked included.
    async fn get_balance(&self, deployer: &Principal, who: &Principal) -> Result<Amount> {
        let v = self
            .call_read(
                deployer,
                TOKEN_CONTRACT,
                "get-balance",
                &[Value::Principal(who.clone())],
                deployer,
            )
            .await?;
        ok_sats(&v).map_err(|why| Error::bad(CALL_READ, format!("get-balance: {why}")))
    }
}

/// A `(buff 33)` aggregate key, or `0x00` before the first rotation.
pub fn aggregate_key_of(v: &Value) -> Result<Option<PublicKey>, String> {
    match v {
        Value::Buffer(b) if b.as_slice() == [0u8] || b.is_empty() => Ok(None),
        Value::Buffer(b) if b.len() == 33 => PublicKey::from_slice(b)
            .map(Some)
            .map_err(|e| format!("0x{} is not a secp256k1 key: {e}", hex::encode(b))),
        other => Err(format!("{other} is not a (buff 33) key or 0x00")),
    }
}

fn signer_data_of(v: &Value) -> Result<SignerData, String> {
    let Value::Tuple(fields) = v else {
        return Err(format!("{v} is not a tuple"));
    };
    let field = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| format!("the tuple has no `{name}`"))
    };
    let signer_set = match field("current-signer-set")? {
        Value::List(items) => items
            .iter()
            .map(|k| match k {
                Value::Buffer(b) => PublicKey::from_slice(b)
                    .map_err(|e| format!("signer key 0x{} is not a key: {e}", hex::encode(b))),
                other => Err(format!("signer key {other} is not a buffer")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("current-signer-set {other} is not a list")),
    };
    let aggregate_key = aggregate_key_of(field("current-aggregate-pubkey")?)?;
    let signer_principal = match field("current-signer-principal")? {
        Value::Principal(p) => p.clone(),
        other => {
            return Err(format!(
                "current-signer-principal {other} is not a principal"
            ))
        }
    };
    let threshold = match fields.get("current-signature-threshold") {
        None | Some(Value::UInt(0)) => None,
        Some(Value::UInt(t)) => Some(
            u16::try_from(*t).map_err(|_| format!("current-signature-threshold {t} is too big"))?,
        ),
        Some(other) => return Err(format!("current-signature-threshold {other} is not a uint")),
    };
    Ok(SignerData {
        signer_set,
        aggregate_key,
        signer_principal,
        threshold,
    })
}

/// `(ok uint)` in satoshis.
fn ok_sats(v: &Value) -> Result<Amount, String> {
    match v {
        Value::ResponseOk(inner) => match inner.as_ref() {
            Value::UInt(n) => u64::try_from(*n)
                .map(Amount::from_sat)
                .map_err(|_| format!("{n} sats is more than a u64")),
            other => Err(format!("(ok {other}) is not (ok uint)")),
        },
        other => Err(format!("{other} is not (ok uint)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_keys_read_as_the_registry_holds_them() {
        assert_eq!(aggregate_key_of(&Value::Buffer(vec![0])).unwrap(), None);
        let secp = bitcoin::secp256k1::Secp256k1::new();
        let sk = bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).unwrap();
        let pk = PublicKey::from_secret_key(&secp, &sk);
        assert_eq!(
            aggregate_key_of(&Value::Buffer(pk.serialize().to_vec())).unwrap(),
            Some(pk)
        );
        // x = 2^256 - 1 is above the field prime: no point has it.
        let mut not_a_point = vec![0xff; 33];
        not_a_point[0] = 0x02;
        let err = aggregate_key_of(&Value::Buffer(not_a_point)).unwrap_err();
        assert!(err.contains("not a secp256k1 key"), "{err}");
        let err = aggregate_key_of(&Value::UInt(1)).unwrap_err();
        assert!(err.contains("(buff 33)"), "{err}");
    }
}
