//! The four contract calls the signers make (CHAIN.md §4, arguments in that order), and the
//! checks every signer makes before it adds its signature to one: it reads the proposal, checks
//! the transaction around it (network, account, threshold, nonce, fee, post conditions), then
//! rebuilds the call from its own view and compares argument by argument. It never signs what
//! the coordinator says merely because the coordinator says it; each refusal is named.

use bitcoin::secp256k1::PublicKey;
use bitcoin::{BlockHash, OutPoint, Txid};

use super::address::{Principal, StacksNetwork};
use super::clarity::Value;
use super::events::{from_clarity_bytes, to_clarity_bytes};
use super::multisig::SignerAccount;
use super::transaction::{ContractCall, Payload, PostConditionMode, StacksTransaction};

pub const SBTC_DEPOSIT: &str = "sbtc-deposit";
pub const SBTC_WITHDRAWAL: &str = "sbtc-withdrawal";
pub const SBTC_BOOTSTRAP_SIGNERS: &str = "sbtc-bootstrap-signers";
pub const SBTC_REGISTRY: &str = "sbtc-registry";
pub const SBTC_TOKEN: &str = "sbtc-token";

/// The mainnet deployer of the sBTC contracts.
pub const MAINNET_DEPLOYER: &str = "SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4";

/// The most signers a rotation may name and still call the contracts afterwards:
/// sbtc-bootstrap-signers derives the new signers' principal with the byte `0x50 + n` for m and n
/// (OP_1..OP_16), while a Stacks node hashes a larger count as a number push; above 16 keys the
/// two principals differ and the new set could never call the contracts.
pub const MAX_ROTATION_SIGNERS: usize = 16;

/// The default cap on the fee of one signers' transaction: 1.5 STX.
pub const DEFAULT_FEE_CAP_USTX: u64 = 1_500_000;

/// `sbtc-deposit.complete-deposit-wrapper`: mints a swept deposit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompleteDeposit {
    pub outpoint: OutPoint,
    /// What is minted: the deposit's amount less the fee it paid in the sweep.
    pub amount: u64,
    pub recipient: Principal,
    /// The Bitcoin block that confirmed the sweep.
    pub burn_hash: BlockHash,
    pub burn_height: u64,
    pub sweep_txid: Txid,
}

/// `sbtc-withdrawal.accept-withdrawal-request`: a sweep paid the withdrawal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptWithdrawal {
    pub request_id: u64,
    /// The transaction that paid it (the sweep).
    pub bitcoin_txid: Txid,
    /// Bit i set: signer i of the set voted against.
    pub signer_bitmap: u128,
    pub output_index: u32,
    /// The fee the withdrawal paid, at most its max fee.
    pub fee: u64,
    pub burn_hash: BlockHash,
    pub burn_height: u64,
    pub sweep_txid: Txid,
}

/// `sbtc-withdrawal.reject-withdrawal-request`: the withdrawal will not be paid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectWithdrawal {
    pub request_id: u64,
    pub signer_bitmap: u128,
}

/// `sbtc-bootstrap-signers.rotate-keys-wrapper`: the new signer set takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotateKeys {
    pub new_keys: Vec<PublicKey>,
    pub new_aggregate_key: PublicKey,
    pub new_threshold: u16,
}

impl RotateKeys {
    /// A rotation to `keys` (sorted here by their 33-byte form: the contract derives the new
    /// signers' principal from the keys in the order given, and the signers' account sorts them).
    pub fn new(mut keys: Vec<PublicKey>, aggregate_key: PublicKey, threshold: u16) -> RotateKeys {
        keys.sort_by_key(|k| k.serialize());
        RotateKeys {
            new_keys: keys,
            new_aggregate_key: aggregate_key,
            new_threshold: threshold,
        }
    }
}

/// One of the signers' contract calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerCall {
    CompleteDeposit(CompleteDeposit),
    AcceptWithdrawal(AcceptWithdrawal),
    RejectWithdrawal(RejectWithdrawal),
    RotateKeys(RotateKeys),
}

/// What a call is about: the request it completes, or the rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallSubject {
    Deposit(OutPoint),
    Withdrawal(u64),
    Rotation(PublicKey),
}

impl std::fmt::Display for CallSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallSubject::Deposit(o) => write!(f, "deposit {o}"),
            CallSubject::Withdrawal(id) => write!(f, "withdrawal {id}"),
            CallSubject::Rotation(k) => write!(f, "rotation to aggregate key {k}"),
        }
    }
}

/// Why this signer will not sign a proposed contract call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallRefusal {
    #[error("the transaction is for {theirs}, this signer is on {ours}")]
    WrongNetwork {
        ours: StacksNetwork,
        theirs: StacksNetwork,
    },
    #[error("the transaction is not from the signers' multisig account {expected}")]
    NotFromSignerAccount { expected: String },
    #[error("the transaction asks for {theirs} signatures, the signer set's threshold is {ours}")]
    WrongThreshold { ours: u16, theirs: u16 },
    #[error("the transaction already carries signatures or keys; a proposal is unsigned")]
    AlreadySigned,
    #[error("nonce {got}, the signers' account is at nonce {expected}")]
    WrongNonce { expected: u64, got: u64 },
    #[error("fee {fee} µSTX is above the cap of {cap} µSTX")]
    FeeAboveCap { fee: u64, cap: u64 },
    #[error("the transaction has post conditions or Deny mode; the signers send Allow with none")]
    PostConditions,
    #[error("the transaction is not a contract call")]
    NotAContractCall,
    #[error("the call goes to contracts of {got}, not the sBTC deployer {expected}")]
    WrongDeployer { expected: String, got: String },
    #[error("{contract}.{function} is not one of the signers' calls")]
    UnknownFunction { contract: String, function: String },
    #[error("{function}: {detail}")]
    BadArguments {
        function: &'static str,
        detail: String,
    },
    #[error("{subject}: nothing to do, {evidence}")]
    AlreadyDone { subject: String, evidence: String },
    #[error("{subject}: this signer cannot rebuild the call from its own view: {missing}")]
    Unknown { subject: String, missing: String },
    #[error(
        "{function}: argument {field} is {theirs} in the proposal, {ours} in this signer's view"
    )]
    Mismatch {
        function: &'static str,
        field: &'static str,
        ours: String,
        theirs: String,
    },
    #[error("this signer's view could not be read: {0}")]
    View(String),
}

/// What a signer's own view says about a call's subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebuilt<T> {
    /// The call this signer would make.
    Ready(T),
    /// Already done on the canonical chain (the evidence, e.g. the registry event).
    Done(String),
    /// Not rebuildable: what is missing (no confirmed sweep of it, unknown request, ...).
    Unknown(String),
}

/// This signer's own view of the chains, from which it rebuilds each proposed call: its storage
/// (deposits, sweeps, the registry events on the canonical Stacks chain, its DKG shares) and its
/// own nodes, never the coordinator's word.
#[async_trait::async_trait]
pub trait CallView: Send + Sync {
    async fn complete_deposit(
        &self,
        outpoint: &OutPoint,
    ) -> Result<Rebuilt<CompleteDeposit>, String>;
    async fn accept_withdrawal(&self, request_id: u64)
        -> Result<Rebuilt<AcceptWithdrawal>, String>;
    async fn reject_withdrawal(&self, request_id: u64)
        -> Result<Rebuilt<RejectWithdrawal>, String>;
    async fn rotate_keys(&self, aggregate_key: &PublicKey) -> Result<Rebuilt<RotateKeys>, String>;
}

/// What every signer checks a proposal's transaction against: its own network, the sBTC
/// deployer, the current signer set (from the registry, or the bootstrap set), the account's
/// nonce read from its own Stacks node, and the fee cap.
#[derive(Clone, Debug)]
pub struct SigningContext {
    pub network: StacksNetwork,
    pub deployer: Principal,
    pub account: SignerAccount,
    pub nonce: u64,
    pub fee_cap: u64,
}

const DEPOSIT_ARGS: [&str; 7] = [
    "txid",
    "vout-index",
    "amount",
    "recipient",
    "burn-hash",
    "burn-height",
    "sweep-txid",
];
const ACCEPT_ARGS: [&str; 8] = [
    "request-id",
    "bitcoin-txid",
    "signer-bitmap",
    "output-index",
    "fee",
    "burn-hash",
    "burn-height",
    "sweep-txid",
];
const REJECT_ARGS: [&str; 2] = ["request-id", "signer-bitmap"];
const ROTATE_ARGS: [&str; 3] = [
    "new-keys",
    "new-aggregate-pubkey",
    "new-signature-threshold",
];

fn buf32(b: [u8; 32]) -> Value {
    Value::Buffer(b.to_vec())
}

fn uint(n: impl Into<u128>) -> Value {
    Value::UInt(n.into())
}

impl SignerCall {
    pub fn contract_name(&self) -> &'static str {
        match self {
            SignerCall::CompleteDeposit(_) => SBTC_DEPOSIT,
            SignerCall::AcceptWithdrawal(_) | SignerCall::RejectWithdrawal(_) => SBTC_WITHDRAWAL,
            SignerCall::RotateKeys(_) => SBTC_BOOTSTRAP_SIGNERS,
        }
    }

    pub fn function_name(&self) -> &'static str {
        match self {
            SignerCall::CompleteDeposit(_) => "complete-deposit-wrapper",
            SignerCall::AcceptWithdrawal(_) => "accept-withdrawal-request",
            SignerCall::RejectWithdrawal(_) => "reject-withdrawal-request",
            SignerCall::RotateKeys(_) => "rotate-keys-wrapper",
        }
    }

    fn arg_names(&self) -> &'static [&'static str] {
        match self {
            SignerCall::CompleteDeposit(_) => &DEPOSIT_ARGS,
            SignerCall::AcceptWithdrawal(_) => &ACCEPT_ARGS,
            SignerCall::RejectWithdrawal(_) => &REJECT_ARGS,
            SignerCall::RotateKeys(_) => &ROTATE_ARGS,
        }
    }

    pub fn subject(&self) -> CallSubject {
        match self {
            SignerCall::CompleteDeposit(c) => CallSubject::Deposit(c.outpoint),
            SignerCall::AcceptWithdrawal(c) => CallSubject::Withdrawal(c.request_id),
            SignerCall::RejectWithdrawal(c) => CallSubject::Withdrawal(c.request_id),
            SignerCall::RotateKeys(c) => CallSubject::Rotation(c.new_aggregate_key),
        }
    }

    /// The arguments, in the contract's order. Txids and block hashes are `(buff 32)` in the
    /// order Bitcoin tools display them (`events::to_clarity_bytes`), as the official signer
    /// sends them and as the contracts compare burn hashes.
    pub fn args(&self) -> Vec<Value> {
        match self {
            SignerCall::CompleteDeposit(c) => vec![
                buf32(to_clarity_bytes(&c.outpoint.txid)),
                uint(c.outpoint.vout),
                uint(c.amount),
                Value::Principal(c.recipient.clone()),
                buf32(to_clarity_bytes(&c.burn_hash)),
                uint(c.burn_height),
                buf32(to_clarity_bytes(&c.sweep_txid)),
            ],
            SignerCall::AcceptWithdrawal(c) => vec![
                uint(c.request_id),
                buf32(to_clarity_bytes(&c.bitcoin_txid)),
                uint(c.signer_bitmap),
                uint(c.output_index),
                uint(c.fee),
                buf32(to_clarity_bytes(&c.burn_hash)),
                uint(c.burn_height),
                buf32(to_clarity_bytes(&c.sweep_txid)),
            ],
            SignerCall::RejectWithdrawal(c) => vec![uint(c.request_id), uint(c.signer_bitmap)],
            SignerCall::RotateKeys(c) => vec![
                Value::List(
                    c.new_keys
                        .iter()
                        .map(|k| Value::Buffer(k.serialize().to_vec()))
                        .collect(),
                ),
                Value::Buffer(c.new_aggregate_key.serialize().to_vec()),
                uint(c.new_threshold),
            ],
        }
    }

    /// The contract call to the sBTC contracts of `deployer`.
    pub fn to_contract_call(&self, deployer: &Principal) -> ContractCall {
        ContractCall {
            address_version: deployer.version(),
            address_hash: *deployer.hash160(),
            contract_name: self.contract_name().to_string(),
            function_name: self.function_name().to_string(),
            args: self.args(),
        }
    }

    /// Reads a contract call as one of the signers' calls, naming what does not fit.
    pub fn from_contract_call(call: &ContractCall) -> Result<SignerCall, CallRefusal> {
        let unknown = || CallRefusal::UnknownFunction {
            contract: call.contract_name.clone(),
            function: call.function_name.clone(),
        };
        let (function, names): (&'static str, &[&str]) =
            match (call.contract_name.as_str(), call.function_name.as_str()) {
                (SBTC_DEPOSIT, "complete-deposit-wrapper") => {
                    ("complete-deposit-wrapper", &DEPOSIT_ARGS)
                }
                (SBTC_WITHDRAWAL, "accept-withdrawal-request") => {
                    ("accept-withdrawal-request", &ACCEPT_ARGS)
                }
                (SBTC_WITHDRAWAL, "reject-withdrawal-request") => {
                    ("reject-withdrawal-request", &REJECT_ARGS)
                }
                (SBTC_BOOTSTRAP_SIGNERS, "rotate-keys-wrapper") => {
                    ("rotate-keys-wrapper", &ROTATE_ARGS)
                }
                _ => return Err(unknown()),
            };
        if call.args.len() != names.len() {
            return Err(CallRefusal::BadArguments {
                function,
                detail: format!("{} arguments, {} expected", call.args.len(), names.len()),
            });
        }
        let a = Args {
            function,
            names,
            values: &call.args,
        };
        Ok(match function {
            "complete-deposit-wrapper" => SignerCall::CompleteDeposit(CompleteDeposit {
                outpoint: OutPoint::new(from_clarity_bytes(a.buf32(0)?), a.uint(1)?),
                amount: a.uint(2)?,
                recipient: a.principal(3)?,
                burn_hash: from_clarity_bytes(a.buf32(4)?),
                burn_height: a.uint(5)?,
                sweep_txid: from_clarity_bytes(a.buf32(6)?),
            }),
            "accept-withdrawal-request" => SignerCall::AcceptWithdrawal(AcceptWithdrawal {
                request_id: a.uint(0)?,
                bitcoin_txid: from_clarity_bytes(a.buf32(1)?),
                signer_bitmap: a.uint(2)?,
                output_index: a.uint(3)?,
                fee: a.uint(4)?,
                burn_hash: from_clarity_bytes(a.buf32(5)?),
                burn_height: a.uint(6)?,
                sweep_txid: from_clarity_bytes(a.buf32(7)?),
            }),
            "reject-withdrawal-request" => SignerCall::RejectWithdrawal(RejectWithdrawal {
                request_id: a.uint(0)?,
                signer_bitmap: a.uint(1)?,
            }),
            _ => {
                let new_keys = match &call.args[0] {
                    Value::List(items) if items.len() <= super::multisig::MAX_SIGNERS => items
                        .iter()
                        .map(|k| match k {
                            Value::Buffer(b) => PublicKey::from_slice(b).ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| a.bad(0))?,
                    _ => return Err(a.bad(0)),
                };
                let key = match &call.args[1] {
                    Value::Buffer(b) => PublicKey::from_slice(b).map_err(|_| a.bad(1))?,
                    _ => return Err(a.bad(1)),
                };
                SignerCall::RotateKeys(RotateKeys {
                    new_keys,
                    new_aggregate_key: key,
                    new_threshold: a.uint(2)?,
                })
            }
        })
    }
}

struct Args<'a> {
    function: &'static str,
    names: &'a [&'a str],
    values: &'a [Value],
}

impl Args<'_> {
    fn bad(&self, i: usize) -> CallRefusal {
        CallRefusal::BadArguments {
            function: self.function,
            detail: format!(
                "argument {} ({}) is `{}`, not of the contract's type",
                i + 1,
                self.names[i],
                self.values[i]
            ),
        }
    }
    fn buf32(&self, i: usize) -> Result<[u8; 32], CallRefusal> {
        match &self.values[i] {
            Value::Buffer(b) => b.as_slice().try_into().map_err(|_| self.bad(i)),
            _ => Err(self.bad(i)),
        }
    }
    fn uint<T: TryFrom<u128>>(&self, i: usize) -> Result<T, CallRefusal> {
        match &self.values[i] {
            Value::UInt(n) => T::try_from(*n).map_err(|_| self.bad(i)),
            _ => Err(self.bad(i)),
        }
    }
    fn principal(&self, i: usize) -> Result<Principal, CallRefusal> {
        match &self.values[i] {
            Value::Principal(p) => Ok(p.clone()),
            _ => Err(self.bad(i)),
        }
    }
}

/// The transaction every signer builds for `call`: from the signers' account, at the context's
/// nonce, with `fee`.
pub fn build(ctx: &SigningContext, call: &SignerCall, fee: u64) -> StacksTransaction {
    ctx.account.unsigned_call(
        ctx.network,
        ctx.nonce,
        fee,
        call.to_contract_call(&ctx.deployer),
    )
}

/// The checks before signing a proposed, unsigned transaction: everything around the call, then
/// the call itself rebuilt from `view` and compared. Returns the call this signer agreed to.
pub async fn check(
    proposed: &StacksTransaction,
    ctx: &SigningContext,
    view: &dyn CallView,
) -> Result<SignerCall, CallRefusal> {
    if proposed.network != ctx.network {
        return Err(CallRefusal::WrongNetwork {
            ours: ctx.network,
            theirs: proposed.network,
        });
    }
    let expected_account = || CallRefusal::NotFromSignerAccount {
        expected: ctx
            .account
            .principal(ctx.network)
            .to_address()
            .unwrap_or_default(),
    };
    let cond = proposed.multisig().ok_or_else(expected_account)?;
    if cond.signer != ctx.account.signer_hash() {
        return Err(expected_account());
    }
    if cond.signatures_required != ctx.account.threshold() {
        return Err(CallRefusal::WrongThreshold {
            ours: ctx.account.threshold(),
            theirs: cond.signatures_required,
        });
    }
    if !cond.fields.is_empty() {
        return Err(CallRefusal::AlreadySigned);
    }
    if cond.nonce != ctx.nonce {
        return Err(CallRefusal::WrongNonce {
            expected: ctx.nonce,
            got: cond.nonce,
        });
    }
    if cond.fee > ctx.fee_cap {
        return Err(CallRefusal::FeeAboveCap {
            fee: cond.fee,
            cap: ctx.fee_cap,
        });
    }
    if proposed.post_condition_mode != PostConditionMode::Allow
        || !proposed.post_conditions.is_empty()
    {
        return Err(CallRefusal::PostConditions);
    }
    let call = match &proposed.payload {
        Payload::ContractCall(c) => c,
        Payload::SmartContract(_) => return Err(CallRefusal::NotAContractCall),
    };
    if call.address_version != ctx.deployer.version()
        || call.address_hash != *ctx.deployer.hash160()
    {
        return Err(CallRefusal::WrongDeployer {
            expected: ctx.deployer.to_address().unwrap_or_default(),
            got: Principal::Standard {
                version: call.address_version,
                hash160: call.address_hash,
            }
            .to_address()
            .unwrap_or_else(|_| "an invalid address".into()),
        });
    }
    let theirs = SignerCall::from_contract_call(call)?;
    let subject = theirs.subject().to_string();
    let view_err = |e: String| CallRefusal::View(e);
    let rebuilt = match &theirs {
        SignerCall::CompleteDeposit(c) => view
            .complete_deposit(&c.outpoint)
            .await
            .map_err(view_err)?
            .map(SignerCall::CompleteDeposit),
        SignerCall::AcceptWithdrawal(c) => view
            .accept_withdrawal(c.request_id)
            .await
            .map_err(view_err)?
            .map(SignerCall::AcceptWithdrawal),
        SignerCall::RejectWithdrawal(c) => view
            .reject_withdrawal(c.request_id)
            .await
            .map_err(view_err)?
            .map(SignerCall::RejectWithdrawal),
        SignerCall::RotateKeys(c) => {
            let n = c.new_keys.len();
            if !(2..=MAX_ROTATION_SIGNERS).contains(&n) {
                return Err(CallRefusal::BadArguments {
                    function: "rotate-keys-wrapper",
                    detail: format!(
                        "{n} new keys; the contracts take 2 to {MAX_ROTATION_SIGNERS} (more \
                         than 16 would give the new set a principal it cannot sign for)"
                    ),
                });
            }
            if c.new_keys
                .windows(2)
                .any(|w| w[0].serialize() >= w[1].serialize())
            {
                return Err(CallRefusal::BadArguments {
                    function: "rotate-keys-wrapper",
                    detail: "the new keys are not in ascending order of their 33-byte form: the \
                             contract would derive a principal the new set cannot sign for"
                        .into(),
                });
            }
            SignerAccount::new(c.new_keys.clone(), c.new_threshold).map_err(|e| {
                CallRefusal::BadArguments {
                    function: "rotate-keys-wrapper",
                    detail: e.to_string(),
                }
            })?;
            view.rotate_keys(&c.new_aggregate_key)
                .await
                .map_err(view_err)?
                .map(SignerCall::RotateKeys)
        }
    };
    let ours = match rebuilt {
        Rebuilt::Ready(ours) => ours,
        Rebuilt::Done(evidence) => return Err(CallRefusal::AlreadyDone { subject, evidence }),
        Rebuilt::Unknown(missing) => return Err(CallRefusal::Unknown { subject, missing }),
    };
    compare(&ours, &theirs)?;
    Ok(theirs)
}

/// Names the first argument where the proposal differs from what this signer rebuilt.
fn compare(ours: &SignerCall, theirs: &SignerCall) -> Result<(), CallRefusal> {
    let function = theirs.function_name();
    if ours.function_name() != function {
        return Err(CallRefusal::Mismatch {
            function,
            field: "function",
            ours: ours.function_name().into(),
            theirs: function.into(),
        });
    }
    for ((name, a), b) in theirs
        .arg_names()
        .iter()
        .zip(ours.args())
        .zip(theirs.args())
    {
        if a != b {
            return Err(CallRefusal::Mismatch {
                function,
                field: name,
                ours: a.to_string(),
                theirs: b.to_string(),
            });
        }
    }
    Ok(())
}

impl<T> Rebuilt<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Rebuilt<U> {
        match self {
            Rebuilt::Ready(t) => Rebuilt::Ready(f(t)),
            Rebuilt::Done(e) => Rebuilt::Done(e),
            Rebuilt::Unknown(m) => Rebuilt::Unknown(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::stacks::transaction::{AuthField, PostCondition};
    use bitcoin::hashes::Hash as _;
    use bitcoin::secp256k1::{Secp256k1, SecretKey};

    fn key(i: u8) -> PublicKey {
        SecretKey::from_slice(&[i; 32])
            .unwrap()
            .public_key(&Secp256k1::new())
    }

    fn deposit() -> CompleteDeposit {
        CompleteDeposit {
            outpoint: OutPoint::new(Txid::from_byte_array([1; 32]), 0),
            amount: 99_000,
            recipient: Principal::Standard {
                version: 26,
                hash160: [5; 20],
            },
            burn_hash: BlockHash::from_byte_array([2; 32]),
            burn_height: 120,
            sweep_txid: Txid::from_byte_array([3; 32]),
        }
    }

    /// A view that knows one swept deposit, one completed deposit, and nothing else.
    struct View;

    #[async_trait::async_trait]
    impl CallView for View {
        async fn complete_deposit(&self, o: &OutPoint) -> Result<Rebuilt<CompleteDeposit>, String> {
            Ok(match o.vout {
                0 => Rebuilt::Ready(deposit()),
                1 => Rebuilt::Done("completed-deposit event in Stacks block 0x0a".into()),
                _ => Rebuilt::Unknown("no sweep of it confirmed on the canonical chain".into()),
            })
        }
        async fn accept_withdrawal(&self, _: u64) -> Result<Rebuilt<AcceptWithdrawal>, String> {
            Err("storage is down".into())
        }
        async fn reject_withdrawal(&self, id: u64) -> Result<Rebuilt<RejectWithdrawal>, String> {
            Ok(Rebuilt::Ready(RejectWithdrawal {
                request_id: id,
                signer_bitmap: 0,
            }))
        }
        async fn rotate_keys(&self, k: &PublicKey) -> Result<Rebuilt<RotateKeys>, String> {
            Ok(Rebuilt::Ready(RotateKeys::new(
                vec![key(1), key(2), key(3)],
                *k,
                2,
            )))
        }
    }

    fn ctx() -> SigningContext {
        SigningContext {
            network: StacksNetwork::Testnet,
            deployer: Principal::Standard {
                version: 26,
                hash160: [9; 20],
            },
            account: SignerAccount::new(vec![key(1), key(2), key(3)], 2).unwrap(),
            nonce: 4,
            fee_cap: DEFAULT_FEE_CAP_USTX,
        }
    }

    async fn verdict(tx: &StacksTransaction) -> Result<SignerCall, CallRefusal> {
        check(tx, &ctx(), &View).await
    }

    #[tokio::test]
    async fn what_the_signer_rebuilds_itself_is_accepted() {
        let c = ctx();
        let call = SignerCall::CompleteDeposit(deposit());
        assert_eq!(verdict(&build(&c, &call, 1_000)).await.unwrap(), call);
        let rotate =
            SignerCall::RotateKeys(RotateKeys::new(vec![key(1), key(2), key(3)], key(8), 2));
        assert_eq!(verdict(&build(&c, &rotate, 1_000)).await.unwrap(), rotate);
    }

    #[tokio::test]
    async fn each_way_a_proposal_can_be_wrong_is_named() {
        let c = ctx();
        let good = build(&c, &SignerCall::CompleteDeposit(deposit()), 1_000);
        let with = |f: &dyn Fn(&mut StacksTransaction)| {
            let mut t = good.clone();
            f(&mut t);
            t
        };
        let cases: Vec<(StacksTransaction, &str)> = vec![
            (
                with(&|t| t.network = StacksNetwork::Mainnet),
                "WrongNetwork",
            ),
            (
                with(&|t| t.multisig_mut().unwrap().signer = [0; 20]),
                "NotFromSignerAccount",
            ),
            (
                with(&|t| t.multisig_mut().unwrap().signatures_required = 3),
                "WrongThreshold",
            ),
            (
                with(&|t| t.multisig_mut().unwrap().fields = vec![AuthField::PublicKey(key(1))]),
                "AlreadySigned",
            ),
            (with(&|t| t.multisig_mut().unwrap().nonce = 3), "WrongNonce"),
            (
                with(&|t| t.multisig_mut().unwrap().fee = 1_500_001),
                "FeeAboveCap",
            ),
            (
                with(&|t| t.post_condition_mode = PostConditionMode::Deny),
                "PostConditions",
            ),
            (
                with(&|t| t.post_conditions = vec![PostCondition(vec![0])]),
                "PostConditions",
            ),
            (
                with(&|t| {
                    t.payload =
                        Payload::SmartContract(crate::chain::stacks::transaction::SmartContract {
                            name: "x".into(),
                            code_body: String::new(),
                            clarity_version: None,
                        })
                }),
                "NotAContractCall",
            ),
        ];
        for (tx, want) in cases {
            let got = verdict(&tx).await.unwrap_err();
            assert!(format!("{got:?}").starts_with(want), "{want}: got {got:?}");
        }
        let call_with = |f: &dyn Fn(&mut ContractCall)| {
            let mut t = good.clone();
            if let Payload::ContractCall(cc) = &mut t.payload {
                f(cc);
            }
            t
        };
        let e = verdict(&call_with(&|cc| cc.address_hash = [8; 20]))
            .await
            .unwrap_err();
        assert!(matches!(e, CallRefusal::WrongDeployer { .. }), "{e:?}");
        let e = verdict(&call_with(&|cc| cc.function_name = "mint".into()))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "sbtc-deposit.mint is not one of the signers' calls"
        );
        let e = verdict(&call_with(&|cc| cc.args[2] = Value::Int(99_000)))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "complete-deposit-wrapper: argument 3 (amount) is `99000`, not of the contract's type"
        );
        let e = verdict(&call_with(&|cc| cc.args[2] = Value::UInt(99_500)))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "complete-deposit-wrapper: argument amount is u99500 in the proposal, u99000 in this signer's view"
        );
        let e = verdict(&call_with(&|cc| cc.args[1] = Value::UInt(1)))
            .await
            .unwrap_err();
        assert!(matches!(e, CallRefusal::AlreadyDone { .. }), "{e:?}");
        let e = verdict(&call_with(&|cc| cc.args[1] = Value::UInt(2)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no sweep of it confirmed"), "{e}");
    }

    #[tokio::test]
    async fn a_rotation_outside_the_contracts_rule_and_an_unreadable_view_are_refused() {
        let c = ctx();
        let rotate = SignerCall::RotateKeys(RotateKeys::new(
            vec![key(1), key(2), key(3), key(4)],
            key(8),
            2,
        ));
        let e = verdict(&build(&c, &rotate, 1_000)).await.unwrap_err();
        assert!(
            matches!(
                e,
                CallRefusal::BadArguments {
                    function: "rotate-keys-wrapper",
                    ..
                }
            ),
            "{e:?}"
        );
        let mut keys = RotateKeys::new(vec![key(1), key(2), key(3)], key(8), 2);
        keys.new_keys.reverse();
        let e = verdict(&build(&c, &SignerCall::RotateKeys(keys), 1_000))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not in ascending order"), "{e}");
        let accept = SignerCall::AcceptWithdrawal(AcceptWithdrawal {
            request_id: 1,
            bitcoin_txid: Txid::from_byte_array([3; 32]),
            signer_bitmap: 0,
            output_index: 1,
            fee: 10,
            burn_hash: BlockHash::from_byte_array([2; 32]),
            burn_height: 1,
            sweep_txid: Txid::from_byte_array([3; 32]),
        });
        let e = verdict(&build(&c, &accept, 1_000)).await.unwrap_err();
        assert_eq!(e, CallRefusal::View("storage is down".into()));
        // The bitmap differs: the signer says which argument.
        let reject = SignerCall::RejectWithdrawal(RejectWithdrawal {
            request_id: 3,
            signer_bitmap: 0b100,
        });
        let e = verdict(&build(&c, &reject, 1_000)).await.unwrap_err();
        assert!(
            matches!(
                e,
                CallRefusal::Mismatch {
                    field: "signer-bitmap",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn bitcoin_hashes_travel_in_display_order() {
        let txid: Txid = "0000000000000000000000000000000000000000000000000000000000000abc"
            .parse()
            .unwrap();
        let mut call = deposit();
        call.outpoint.txid = txid;
        let args = SignerCall::CompleteDeposit(call).args();
        assert_eq!(
            args[0].to_hex(),
            "0x02000000200000000000000000000000000000000000000000000000000000000000000abc"
        );
    }

    #[test]
    fn every_call_reads_back_from_its_contract_call() {
        let d = Principal::Standard {
            version: 26,
            hash160: [9; 20],
        };
        for call in [
            SignerCall::CompleteDeposit(deposit()),
            SignerCall::RejectWithdrawal(RejectWithdrawal {
                request_id: 3,
                signer_bitmap: u128::MAX,
            }),
        ] {
            assert_eq!(
                SignerCall::from_contract_call(&call.to_contract_call(&d)).unwrap(),
                call
            );
        }
    }
}
