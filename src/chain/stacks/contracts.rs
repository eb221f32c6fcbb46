//! The contract calls the signers make (CHAIN.md §4, arguments in that order): the four single
//! calls and the two batch forms (`complete-deposits-wrapper`, `complete-withdrawals`) that settle
//! a sweep's requests with one multisig signature per signer, split by [`batch_calls`]. And the
//! checks every signer makes before it adds its signature to one: it reads the proposal, checks
//! the transaction around it (network, account, threshold, nonce, fee, post conditions), then
//! rebuilds the call (every entry of a batch) from its own view and compares field by field. It
//! never signs what the coordinator says merely because the coordinator says it; each refusal is
//! named.

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

/// One entry of `sbtc-withdrawal.complete-withdrawals`: the withdrawal was paid (the entry's
/// `status` is true) or will not be (false).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WithdrawalOutcome {
    Accept(AcceptWithdrawal),
    Reject(RejectWithdrawal),
}

impl WithdrawalOutcome {
    pub fn request_id(&self) -> u64 {
        match self {
            WithdrawalOutcome::Accept(a) => a.request_id,
            WithdrawalOutcome::Reject(r) => r.request_id,
        }
    }

    /// The single call that settles this withdrawal alone.
    pub fn into_call(self) -> SignerCall {
        match self {
            WithdrawalOutcome::Accept(a) => SignerCall::AcceptWithdrawal(a),
            WithdrawalOutcome::Reject(r) => SignerCall::RejectWithdrawal(r),
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
    /// `sbtc-deposit.complete-deposits-wrapper`: 2 to [`MAX_BATCH_DEPOSITS`] deposits, sorted by
    /// outpoint, in one call (one multisig signature per signer for all of them).
    CompleteDeposits(Vec<CompleteDeposit>),
    /// `sbtc-withdrawal.complete-withdrawals`: 2 to [`MAX_BATCH_WITHDRAWALS`] accepts and
    /// rejects, sorted by request id, in one call.
    CompleteWithdrawals(Vec<WithdrawalOutcome>),
}

/// What a call is about: the request it completes, the rotation, or a batch's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallSubject {
    Deposit(OutPoint),
    Withdrawal(u64),
    Rotation(PublicKey),
    /// The entries of a batch call, in the call's order.
    Batch(Vec<CallSubject>),
}

impl std::fmt::Display for CallSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallSubject::Deposit(o) => write!(f, "deposit {o}"),
            CallSubject::Withdrawal(id) => write!(f, "withdrawal {id}"),
            CallSubject::Rotation(k) => write!(f, "rotation to aggregate key {k}"),
            // A batch can name 600 requests: the count, the first and the last are enough to
            // find it in a log.
            CallSubject::Batch(entries) => match entries.as_slice() {
                [] => f.write_str("an empty batch"),
                [one] => write!(f, "a batch of 1: {one}"),
                [first, .., last] => {
                    write!(f, "a batch of {}: {first} … {last}", entries.len())
                }
            },
        }
    }
}

/// The most entries `complete-deposits-wrapper` takes: its argument is `(list 500 ...)`.
pub const MAX_BATCH_DEPOSITS: usize = 500;
/// The most entries `complete-withdrawals` takes: its argument is `(list 600 ...)`.
pub const MAX_BATCH_WITHDRAWALS: usize = 600;
/// The most bytes the one list argument of a batch call may serialize to. A stacks-node takes
/// transactions of up to 2 MiB and Clarity values of up to 1 MiB; a quarter of a MiB keeps a
/// batch well inside both with room for a 150-key multisig's signatures. Full batches fit under
/// it even at their largest (an entry is 255 bytes a deposit to a standard principal, 384 to a
/// 128-character contract name, 301 an accept: 500 × 384 ≈ 192 kB, 600 × 301 ≈ 181 kB), so it
/// is a guard, binding only with smaller [`BatchLimits::argument_bytes`].
pub const MAX_BATCH_ARGUMENT_BYTES: usize = 256 * 1024;

/// sbtc-deposit's error for entry `i` of a batch that failed: `(err (+ u303 u10 i))`. The whole
/// call fails; the entry's own error code is not returned.
pub const ERR_DEPOSIT_BATCH_ENTRY_BASE: u128 = 313;
/// sbtc-withdrawal's error for entry `i` of a batch that failed: `(err (+ u507 u10 i))`.
pub const ERR_WITHDRAWAL_BATCH_ENTRY_BASE: u128 = 517;

/// How [`batch_calls_with`] splits requests into calls. Values above the contracts' list limits
/// or [`MAX_BATCH_ARGUMENT_BYTES`] are lowered to them (a signer refuses a batch beyond those);
/// zero counts as one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub deposits: usize,
    pub withdrawals: usize,
    pub argument_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            deposits: MAX_BATCH_DEPOSITS,
            withdrawals: MAX_BATCH_WITHDRAWALS,
            argument_bytes: MAX_BATCH_ARGUMENT_BYTES,
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
    #[error(
        "{function}: entry {entry} ({subject}): {field} is {theirs} in the proposal, {ours} in this signer's view"
    )]
    EntryMismatch {
        function: &'static str,
        /// 1-based, as a reader counts (the contract's error code uses the 0-based index).
        entry: usize,
        subject: String,
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
/// The fields of a `complete-withdrawals` entry, in the contract's declaration order.
const WITHDRAWAL_FIELDS: [&str; 9] = [
    "request-id",
    "status",
    "signer-bitmap",
    "bitcoin-txid",
    "output-index",
    "fee",
    "burn-hash",
    "burn-height",
    "sweep-txid",
];
const DEPOSITS_ARGS: [&str; 1] = ["deposits"];
const WITHDRAWALS_ARGS: [&str; 1] = ["withdrawals"];
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

/// `complete-deposit-wrapper`'s arguments, which are also a batch entry's fields.
fn deposit_args(c: &CompleteDeposit) -> Vec<Value> {
    vec![
        buf32(to_clarity_bytes(&c.outpoint.txid)),
        uint(c.outpoint.vout),
        uint(c.amount),
        Value::Principal(c.recipient.clone()),
        buf32(to_clarity_bytes(&c.burn_hash)),
        uint(c.burn_height),
        buf32(to_clarity_bytes(&c.sweep_txid)),
    ]
}

/// A deposit's fields in the contract's declaration order (names and values).
fn deposit_fields(c: &CompleteDeposit) -> Vec<(&'static str, Value)> {
    DEPOSIT_ARGS.into_iter().zip(deposit_args(c)).collect()
}

fn deposit_tuple(c: &CompleteDeposit) -> Value {
    Value::Tuple(
        deposit_fields(c)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A withdrawal entry's fields in the contract's declaration order ([`WITHDRAWAL_FIELDS`]).
fn withdrawal_fields(w: &WithdrawalOutcome) -> Vec<(&'static str, Value)> {
    let values = match w {
        WithdrawalOutcome::Accept(a) => vec![
            uint(a.request_id),
            Value::Bool(true),
            uint(a.signer_bitmap),
            Value::some(buf32(to_clarity_bytes(&a.bitcoin_txid))),
            Value::some(uint(a.output_index)),
            Value::some(uint(a.fee)),
            buf32(to_clarity_bytes(&a.burn_hash)),
            uint(a.burn_height),
            Value::some(buf32(to_clarity_bytes(&a.sweep_txid))),
        ],
        WithdrawalOutcome::Reject(r) => vec![
            uint(r.request_id),
            Value::Bool(false),
            uint(r.signer_bitmap),
            Value::None,
            Value::None,
            Value::None,
            buf32([0; 32]),
            uint(0u8),
            Value::None,
        ],
    };
    WITHDRAWAL_FIELDS.into_iter().zip(values).collect()
}

fn withdrawal_tuple(w: &WithdrawalOutcome) -> Value {
    Value::Tuple(
        withdrawal_fields(w)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

impl SignerCall {
    pub fn contract_name(&self) -> &'static str {
        match self {
            SignerCall::CompleteDeposit(_) => SBTC_DEPOSIT,
            SignerCall::AcceptWithdrawal(_)
            | SignerCall::RejectWithdrawal(_)
            | SignerCall::CompleteWithdrawals(_) => SBTC_WITHDRAWAL,
            SignerCall::RotateKeys(_) => SBTC_BOOTSTRAP_SIGNERS,
            SignerCall::CompleteDeposits(_) => SBTC_DEPOSIT,
        }
    }

    pub fn function_name(&self) -> &'static str {
        match self {
            SignerCall::CompleteDeposit(_) => "complete-deposit-wrapper",
            SignerCall::AcceptWithdrawal(_) => "accept-withdrawal-request",
            SignerCall::RejectWithdrawal(_) => "reject-withdrawal-request",
            SignerCall::RotateKeys(_) => "rotate-keys-wrapper",
            SignerCall::CompleteDeposits(_) => "complete-deposits-wrapper",
            SignerCall::CompleteWithdrawals(_) => "complete-withdrawals",
        }
    }

    fn arg_names(&self) -> &'static [&'static str] {
        match self {
            SignerCall::CompleteDeposit(_) => &DEPOSIT_ARGS,
            SignerCall::AcceptWithdrawal(_) => &ACCEPT_ARGS,
            SignerCall::RejectWithdrawal(_) => &REJECT_ARGS,
            SignerCall::RotateKeys(_) => &ROTATE_ARGS,
            SignerCall::CompleteDeposits(_) => &DEPOSITS_ARGS,
            SignerCall::CompleteWithdrawals(_) => &WITHDRAWALS_ARGS,
        }
    }

    /// What the call is about; a batch is [`CallSubject::Batch`] of its entries' subjects.
    pub fn subject(&self) -> CallSubject {
        match self {
            SignerCall::CompleteDeposit(c) => CallSubject::Deposit(c.outpoint),
            SignerCall::AcceptWithdrawal(c) => CallSubject::Withdrawal(c.request_id),
            SignerCall::RejectWithdrawal(c) => CallSubject::Withdrawal(c.request_id),
            SignerCall::RotateKeys(c) => CallSubject::Rotation(c.new_aggregate_key),
            SignerCall::CompleteDeposits(_) | SignerCall::CompleteWithdrawals(_) => {
                CallSubject::Batch(self.subjects())
            }
        }
    }

    /// Every request or rotation the call settles, in the call's order: one for a single call,
    /// each entry's for a batch (never a [`CallSubject::Batch`]).
    pub fn subjects(&self) -> Vec<CallSubject> {
        match self {
            SignerCall::CompleteDeposits(ds) => ds
                .iter()
                .map(|d| CallSubject::Deposit(d.outpoint))
                .collect(),
            SignerCall::CompleteWithdrawals(ws) => ws
                .iter()
                .map(|w| CallSubject::Withdrawal(w.request_id()))
                .collect(),
            single => vec![single.subject()],
        }
    }

    /// Which entry of this batch a failed transaction's `(err uN)` names (0-based), if it names
    /// one: the batch contracts answer a failed entry with a code per index, and undo the whole
    /// call.
    pub fn failed_entry(&self, err_code: u128) -> Option<usize> {
        let (base, len) = match self {
            SignerCall::CompleteDeposits(ds) => (ERR_DEPOSIT_BATCH_ENTRY_BASE, ds.len()),
            SignerCall::CompleteWithdrawals(ws) => (ERR_WITHDRAWAL_BATCH_ENTRY_BASE, ws.len()),
            _ => return None,
        };
        let i = usize::try_from(err_code.checked_sub(base)?).ok()?;
        (i < len).then_some(i)
    }

    /// The arguments, in the contract's order. Txids and block hashes are `(buff 32)` in the
    /// order Bitcoin tools display them (`events::to_clarity_bytes`), as the official signer
    /// sends them and as the contracts compare burn hashes.
    ///
    /// A batch has one argument, the list of its entries' tuples (field names as the contract
    /// declares them). A reject entry carries `none` in the accept-only fields and a zero
    /// burn hash and height, which the contract does not read: one canonical form, so every
    /// signer builds the same bytes.
    pub fn args(&self) -> Vec<Value> {
        match self {
            SignerCall::CompleteDeposit(c) => deposit_args(c),
            SignerCall::CompleteDeposits(ds) => {
                vec![Value::List(ds.iter().map(deposit_tuple).collect())]
            }
            SignerCall::CompleteWithdrawals(ws) => {
                vec![Value::List(ws.iter().map(withdrawal_tuple).collect())]
            }
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
    ///
    /// A batch must be a list of 1 to the contract's limit of well-formed tuples, each request at
    /// most once, in the canonical form [`SignerCall::args`] writes (an accept with every
    /// optional field set; a reject with none of them and a zero burn block): reading and
    /// writing a call gives back its bytes, so what a signer checks is what it signs.
    pub fn from_contract_call(call: &ContractCall) -> Result<SignerCall, CallRefusal> {
        match (call.contract_name.as_str(), call.function_name.as_str()) {
            (SBTC_DEPOSIT, "complete-deposits-wrapper") => return read_deposits(call),
            (SBTC_WITHDRAWAL, "complete-withdrawals") => return read_withdrawals(call),
            _ => {}
        }
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

/// A value as a refusal quotes it: a hostile proposal's megabyte buffer must not fill the log.
fn brief(v: &Value) -> String {
    const MAX: usize = 96;
    let text = v.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let mut cut: String = text.chars().take(MAX).collect();
    cut.push('…');
    cut
}

/// A batch call's one argument, a list of `1..=max` entries.
fn batch_list<'a>(
    call: &'a ContractCall,
    function: &'static str,
    name: &str,
    max: usize,
) -> Result<&'a [Value], CallRefusal> {
    let bad = |detail: String| CallRefusal::BadArguments { function, detail };
    if call.args.len() != 1 {
        return Err(bad(format!("{} arguments, 1 expected", call.args.len())));
    }
    let Value::List(items) = &call.args[0] else {
        return Err(bad(format!(
            "argument 1 ({name}) is `{}`, not a list",
            brief(&call.args[0])
        )));
    };
    if items.is_empty() {
        return Err(bad("an empty batch: there is nothing to settle".into()));
    }
    if items.len() > max {
        return Err(bad(format!(
            "{} entries; the contract's list holds at most {max}",
            items.len()
        )));
    }
    Ok(items)
}

fn read_deposits(call: &ContractCall) -> Result<SignerCall, CallRefusal> {
    let function = "complete-deposits-wrapper";
    let items = batch_list(call, function, "deposits", MAX_BATCH_DEPOSITS)?;
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let e = Entry::open(function, i, v, &DEPOSIT_ARGS, "deposit")?;
        let d = CompleteDeposit {
            outpoint: OutPoint::new(from_clarity_bytes(e.buf32("txid")?), e.uint("vout-index")?),
            amount: e.uint("amount")?,
            recipient: e.principal("recipient")?,
            burn_hash: from_clarity_bytes(e.buf32("burn-hash")?),
            burn_height: e.uint("burn-height")?,
            sweep_txid: from_clarity_bytes(e.buf32("sweep-txid")?),
        };
        if !seen.insert(d.outpoint) {
            return Err(CallRefusal::BadArguments {
                function,
                detail: format!(
                    "entry {} repeats deposit {}: the contract would fail the whole batch as a replay",
                    i + 1,
                    d.outpoint
                ),
            });
        }
        out.push(d);
    }
    Ok(SignerCall::CompleteDeposits(out))
}

fn read_withdrawals(call: &ContractCall) -> Result<SignerCall, CallRefusal> {
    let function = "complete-withdrawals";
    let items = batch_list(call, function, "withdrawals", MAX_BATCH_WITHDRAWALS)?;
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let e = Entry::open(function, i, v, &WITHDRAWAL_FIELDS, "withdrawal")?;
        let request_id: u64 = e.uint("request-id")?;
        let signer_bitmap: u128 = e.uint("signer-bitmap")?;
        let accepted = e.boolean("status")?;
        let bitcoin_txid = e.some_buf32("bitcoin-txid")?;
        let output_index: Option<u32> = e.some_uint("output-index")?;
        let fee: Option<u64> = e.some_uint("fee")?;
        let burn_hash = e.buf32("burn-hash")?;
        let burn_height: u64 = e.uint("burn-height")?;
        let sweep_txid = e.some_buf32("sweep-txid")?;
        let refuse = |why: &str| CallRefusal::BadArguments {
            function,
            detail: format!("entry {} (withdrawal {request_id}) {why}", i + 1),
        };
        let outcome = if accepted {
            let (Some(bitcoin_txid), Some(output_index), Some(fee), Some(sweep_txid)) =
                (bitcoin_txid, output_index, fee, sweep_txid)
            else {
                return Err(refuse(
                    "accepts without all of bitcoin-txid, output-index, fee and sweep-txid: the \
                     contract would fail the batch",
                ));
            };
            WithdrawalOutcome::Accept(AcceptWithdrawal {
                request_id,
                bitcoin_txid: from_clarity_bytes(bitcoin_txid),
                signer_bitmap,
                output_index,
                fee,
                burn_hash: from_clarity_bytes(burn_hash),
                burn_height,
                sweep_txid: from_clarity_bytes(sweep_txid),
            })
        } else {
            if bitcoin_txid.is_some()
                || output_index.is_some()
                || fee.is_some()
                || sweep_txid.is_some()
                || burn_hash != [0; 32]
                || burn_height != 0
            {
                return Err(refuse(
                    "rejects but carries accept fields or a burn block; the signers send none \
                     and zeros there (the contract ignores them)",
                ));
            }
            WithdrawalOutcome::Reject(RejectWithdrawal {
                request_id,
                signer_bitmap,
            })
        };
        if !seen.insert(request_id) {
            return Err(refuse(
                "is named twice: the contract would fail the whole batch (already processed)",
            ));
        }
        out.push(outcome);
    }
    Ok(SignerCall::CompleteWithdrawals(out))
}

/// One tuple entry of a batch, with exactly the contract's field names.
struct Entry<'a> {
    function: &'static str,
    index: usize,
    fields: &'a std::collections::BTreeMap<String, Value>,
}

impl<'a> Entry<'a> {
    fn open(
        function: &'static str,
        index: usize,
        v: &'a Value,
        names: &[&str],
        what: &str,
    ) -> Result<Entry<'a>, CallRefusal> {
        match v {
            Value::Tuple(fields)
                if fields.len() == names.len() && names.iter().all(|n| fields.contains_key(*n)) =>
            {
                Ok(Entry {
                    function,
                    index,
                    fields,
                })
            }
            other => Err(CallRefusal::BadArguments {
                function,
                detail: format!(
                    "entry {} is `{}`, not a {what} tuple of exactly {}",
                    index + 1,
                    brief(other),
                    names.join(", ")
                ),
            }),
        }
    }

    fn get(&self, name: &str) -> &'a Value {
        self.fields.get(name).unwrap_or(&Value::None)
    }

    fn bad(&self, name: &str) -> CallRefusal {
        CallRefusal::BadArguments {
            function: self.function,
            detail: format!(
                "entry {} field {name} is `{}`, not of the contract's type",
                self.index + 1,
                brief(self.get(name))
            ),
        }
    }

    fn buf32(&self, name: &str) -> Result<[u8; 32], CallRefusal> {
        as_buf32(self.get(name)).ok_or_else(|| self.bad(name))
    }

    fn uint<T: TryFrom<u128>>(&self, name: &str) -> Result<T, CallRefusal> {
        as_uint(self.get(name)).ok_or_else(|| self.bad(name))
    }

    fn boolean(&self, name: &str) -> Result<bool, CallRefusal> {
        match self.get(name) {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.bad(name)),
        }
    }

    fn principal(&self, name: &str) -> Result<Principal, CallRefusal> {
        match self.get(name) {
            Value::Principal(p) => Ok(p.clone()),
            _ => Err(self.bad(name)),
        }
    }

    /// An `(optional ...)` field: None for `none`, the inner value read by `read` for `some`.
    fn optional<T>(
        &self,
        name: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, CallRefusal> {
        match self.get(name) {
            Value::None => Ok(None),
            Value::Some(inner) => read(inner).map(Some).ok_or_else(|| self.bad(name)),
            _ => Err(self.bad(name)),
        }
    }

    fn some_buf32(&self, name: &str) -> Result<Option<[u8; 32]>, CallRefusal> {
        self.optional(name, as_buf32)
    }

    fn some_uint<T: TryFrom<u128>>(&self, name: &str) -> Result<Option<T>, CallRefusal> {
        self.optional(name, as_uint)
    }
}

fn as_buf32(v: &Value) -> Option<[u8; 32]> {
    match v {
        Value::Buffer(b) => b.as_slice().try_into().ok(),
        _ => None,
    }
}

fn as_uint<T: TryFrom<u128>>(v: &Value) -> Option<T> {
    match v {
        Value::UInt(n) => T::try_from(*n).ok(),
        _ => None,
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
        SignerCall::CompleteDeposits(_) | SignerCall::CompleteWithdrawals(_) => {
            check_batch(&theirs, view).await?;
            return Ok(theirs);
        }
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

/// A batch's own rules (at least two entries, ascending order, the size cap), then every entry
/// rebuilt from `view` and compared field by field; the first entry that differs, is done, or
/// is unknown to this signer refuses the whole call, by its number and subject.
async fn check_batch(theirs: &SignerCall, view: &dyn CallView) -> Result<(), CallRefusal> {
    let function = theirs.function_name();
    let bad = |detail: String| CallRefusal::BadArguments { function, detail };
    let subjects = theirs.subjects();
    if let [only] = subjects.as_slice() {
        return Err(bad(format!(
            "a batch of one entry ({only}); the signers send the single call for one request"
        )));
    }
    let key = |s: &CallSubject| match s {
        CallSubject::Deposit(o) => (Some(*o), 0),
        CallSubject::Withdrawal(id) => (None, *id),
        _ => (None, 0),
    };
    if let Some(i) = subjects.windows(2).position(|w| key(&w[0]) >= key(&w[1])) {
        return Err(bad(format!(
            "entry {} ({}) comes after {}: entries go in ascending order (deposits by outpoint, \
             withdrawals by request id), as every signer builds them",
            i + 2,
            subjects[i + 1],
            subjects[i]
        )));
    }
    let bytes: usize = theirs.args().iter().map(|a| a.serialize().len()).sum();
    if bytes > MAX_BATCH_ARGUMENT_BYTES {
        return Err(bad(format!(
            "the list is {bytes} bytes, above the signers' cap of {MAX_BATCH_ARGUMENT_BYTES}; \
             split it into smaller batches"
        )));
    }
    let view_err = CallRefusal::View;
    match theirs {
        SignerCall::CompleteDeposits(ds) => {
            for (i, d) in ds.iter().enumerate() {
                let subject = CallSubject::Deposit(d.outpoint);
                let rebuilt = view.complete_deposit(&d.outpoint).await.map_err(view_err)?;
                let ours = ready(rebuilt, function, i, &subject)?;
                compare_entry(
                    function,
                    i,
                    &subject,
                    deposit_fields(&ours),
                    deposit_fields(d),
                )?;
            }
        }
        SignerCall::CompleteWithdrawals(ws) => {
            for (i, w) in ws.iter().enumerate() {
                let subject = CallSubject::Withdrawal(w.request_id());
                let ours = match w {
                    WithdrawalOutcome::Accept(a) => {
                        let r = view
                            .accept_withdrawal(a.request_id)
                            .await
                            .map_err(view_err)?;
                        WithdrawalOutcome::Accept(ready(r, function, i, &subject)?)
                    }
                    WithdrawalOutcome::Reject(r) => {
                        let r = view
                            .reject_withdrawal(r.request_id)
                            .await
                            .map_err(view_err)?;
                        WithdrawalOutcome::Reject(ready(r, function, i, &subject)?)
                    }
                };
                compare_entry(
                    function,
                    i,
                    &subject,
                    withdrawal_fields(&ours),
                    withdrawal_fields(w),
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What this signer rebuilt for entry `i`, or why it cannot sign the batch.
fn ready<T>(
    rebuilt: Rebuilt<T>,
    function: &str,
    i: usize,
    subject: &CallSubject,
) -> Result<T, CallRefusal> {
    let subject = || format!("{function} entry {} ({subject})", i + 1);
    match rebuilt {
        Rebuilt::Ready(t) => Ok(t),
        Rebuilt::Done(evidence) => Err(CallRefusal::AlreadyDone {
            subject: subject(),
            evidence,
        }),
        Rebuilt::Unknown(missing) => Err(CallRefusal::Unknown {
            subject: subject(),
            missing,
        }),
    }
}

/// Names the first field where entry `i` of the proposal differs from what this signer rebuilt.
fn compare_entry(
    function: &'static str,
    i: usize,
    subject: &CallSubject,
    ours: Vec<(&'static str, Value)>,
    theirs: Vec<(&'static str, Value)>,
) -> Result<(), CallRefusal> {
    for ((field, a), (_, b)) in ours.into_iter().zip(theirs) {
        if a != b {
            return Err(CallRefusal::EntryMismatch {
                function,
                entry: i + 1,
                subject: subject.to_string(),
                field,
                ours: brief(&a),
                theirs: brief(&b),
            });
        }
    }
    Ok(())
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

/// The calls that settle these requests, as the coordinator proposes them and every signer
/// expects them: [`batch_calls_with`] the contracts' limits.
pub fn batch_calls(
    deposits: Vec<CompleteDeposit>,
    outcomes: Vec<WithdrawalOutcome>,
) -> Vec<SignerCall> {
    batch_calls_with(BatchLimits::default(), deposits, outcomes)
}

/// Splits requests into calls: deposits sorted by outpoint and withdrawals by request id (one
/// entry per request: a later entry for the same request is dropped, since the contract would
/// fail the whole batch on it), each kind cut into chunks of at most `limits` entries and
/// argument bytes; a chunk of two or more becomes one batch call, a chunk of one the single call.
/// Deposit calls come first, then withdrawal calls, in order.
pub fn batch_calls_with(
    limits: BatchLimits,
    mut deposits: Vec<CompleteDeposit>,
    mut outcomes: Vec<WithdrawalOutcome>,
) -> Vec<SignerCall> {
    let bytes = limits.argument_bytes.clamp(1, MAX_BATCH_ARGUMENT_BYTES);
    deposits.sort_by_key(|d| d.outpoint);
    deposits.dedup_by_key(|d| d.outpoint);
    outcomes.sort_by_key(WithdrawalOutcome::request_id);
    outcomes.dedup_by_key(|w| w.request_id());
    let mut calls = Vec::new();
    let max = limits.deposits.clamp(1, MAX_BATCH_DEPOSITS);
    for mut chunk in chunks(deposits, max, bytes, |d| deposit_tuple(d).serialize().len()) {
        calls.push(match chunk.len() {
            1 => SignerCall::CompleteDeposit(chunk.remove(0)),
            _ => SignerCall::CompleteDeposits(chunk),
        });
    }
    let max = limits.withdrawals.clamp(1, MAX_BATCH_WITHDRAWALS);
    for mut chunk in chunks(outcomes, max, bytes, |w| {
        withdrawal_tuple(w).serialize().len()
    }) {
        calls.push(match chunk.len() {
            1 => chunk.remove(0).into_call(),
            _ => SignerCall::CompleteWithdrawals(chunk),
        });
    }
    calls
}

/// Cuts `items` in order into chunks of at most `max` items whose serialized list (5 bytes of
/// list header plus each item's `size`) stays within `max_bytes`; an item too big alone still
/// gets a chunk of its own.
fn chunks<T>(
    items: Vec<T>,
    max: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    const LIST_HEADER: usize = 5;
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = LIST_HEADER;
    for item in items {
        let n = size(&item);
        if !current.is_empty() && (current.len() >= max || bytes + n > max_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = LIST_HEADER;
        }
        bytes += n;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
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

    fn deposit_at(vout: u32) -> CompleteDeposit {
        let mut d = deposit();
        d.outpoint.vout = vout;
        d.amount = 10_000 + u64::from(vout);
        d
    }

    fn accept(id: u64) -> AcceptWithdrawal {
        AcceptWithdrawal {
            request_id: id,
            bitcoin_txid: Txid::from_byte_array([3; 32]),
            signer_bitmap: 0b10,
            output_index: 2 + id as u32,
            fee: 700,
            burn_hash: BlockHash::from_byte_array([2; 32]),
            burn_height: 120,
            sweep_txid: Txid::from_byte_array([3; 32]),
        }
    }

    fn reject(id: u64) -> RejectWithdrawal {
        RejectWithdrawal {
            request_id: id,
            signer_bitmap: 0b101,
        }
    }

    /// A view for batches: deposits at vout ≥ 10 are swept, vout 1 is completed; withdrawal
    /// ids below 100 were paid, 100 to 199 are to be rejected, the rest unknown.
    struct BatchView;

    #[async_trait::async_trait]
    impl CallView for BatchView {
        async fn complete_deposit(&self, o: &OutPoint) -> Result<Rebuilt<CompleteDeposit>, String> {
            Ok(match o.vout {
                1 => Rebuilt::Done("completed-deposit event in Stacks block 0x0b".into()),
                v if v >= 10 => Rebuilt::Ready(deposit_at(v)),
                _ => Rebuilt::Unknown("no sweep of it".into()),
            })
        }
        async fn accept_withdrawal(&self, id: u64) -> Result<Rebuilt<AcceptWithdrawal>, String> {
            Ok(match id {
                0..100 => Rebuilt::Ready(accept(id)),
                _ => Rebuilt::Unknown("no sweep pays it".into()),
            })
        }
        async fn reject_withdrawal(&self, id: u64) -> Result<Rebuilt<RejectWithdrawal>, String> {
            Ok(match id {
                100..200 => Rebuilt::Ready(reject(id)),
                _ => Rebuilt::Unknown("not expired".into()),
            })
        }
        async fn rotate_keys(&self, _: &PublicKey) -> Result<Rebuilt<RotateKeys>, String> {
            Ok(Rebuilt::Unknown(String::new()))
        }
    }

    async fn batch_verdict(call: &SignerCall) -> Result<SignerCall, CallRefusal> {
        check(&build(&ctx(), call, 1_000), &ctx(), &BatchView).await
    }

    fn deployer() -> Principal {
        Principal::Standard {
            version: 26,
            hash160: [9; 20],
        }
    }

    /// `call` with its one list argument's entries edited by `f`.
    fn edited(call: &SignerCall, f: impl FnOnce(&mut Vec<Value>)) -> ContractCall {
        let mut cc = call.to_contract_call(&deployer());
        if let Value::List(items) = &mut cc.args[0] {
            f(items);
        }
        cc
    }

    fn set_field(entry: &mut Value, name: &str, v: Value) {
        if let Value::Tuple(fields) = entry {
            fields.insert(name.to_string(), v);
        }
    }

    fn refusal_text(cc: &ContractCall) -> String {
        SignerCall::from_contract_call(cc).unwrap_err().to_string()
    }

    #[test]
    fn batches_read_back_from_their_contract_calls_byte_for_byte() {
        let deposits = SignerCall::CompleteDeposits(vec![deposit_at(10), deposit_at(11)]);
        let withdrawals = SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept(5)),
            WithdrawalOutcome::Reject(reject(150)),
        ]);
        for call in [deposits, withdrawals] {
            let cc = call.to_contract_call(&deployer());
            let read = SignerCall::from_contract_call(&cc).unwrap();
            assert_eq!(read, call);
            assert_eq!(read.to_contract_call(&deployer()), cc);
        }
        // A reject entry: status false, none in the accept-only fields, a zero burn block.
        let SignerCall::CompleteWithdrawals(ws) = batch_calls(
            vec![],
            vec![
                WithdrawalOutcome::Reject(reject(150)),
                WithdrawalOutcome::Accept(accept(5)),
            ],
        )
        .remove(0) else {
            panic!("two withdrawals make one batch")
        };
        assert_eq!(ws[0].request_id(), 5, "sorted by request id");
        assert_eq!(
            withdrawal_tuple(&ws[1]).to_string(),
            "(tuple (bitcoin-txid none) (burn-hash 0x0000000000000000000000000000000000000000000000000000000000000000) \
             (burn-height u0) (fee none) (output-index none) (request-id u150) (signer-bitmap u5) \
             (status false) (sweep-txid none))"
        );
        let accept_entry = withdrawal_tuple(&ws[0]).to_string();
        assert!(
            accept_entry.contains("(fee (some u700))")
                && accept_entry.contains("(status true)")
                && accept_entry.contains("(output-index (some u7))"),
            "{accept_entry}"
        );
    }

    #[test]
    fn a_malformed_batch_is_refused_naming_the_entry_and_field() {
        let deposits = SignerCall::CompleteDeposits(vec![deposit_at(10), deposit_at(11)]);
        let withdrawals = SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept(5)),
            WithdrawalOutcome::Reject(reject(150)),
        ]);
        assert_eq!(
            refusal_text(&edited(&deposits, |items| items.clear())),
            "complete-deposits-wrapper: an empty batch: there is nothing to settle"
        );
        let long = edited(&deposits, |items| {
            let first = items[0].clone();
            items.resize(MAX_BATCH_DEPOSITS + 1, first);
        });
        assert_eq!(
            refusal_text(&long),
            "complete-deposits-wrapper: 501 entries; the contract's list holds at most 500"
        );
        let e = refusal_text(&edited(&deposits, |items| {
            set_field(&mut items[1], "amount", Value::Int(5))
        }));
        assert_eq!(
            e,
            "complete-deposits-wrapper: entry 2 field amount is `5`, not of the contract's type"
        );
        let e = refusal_text(&edited(&deposits, |items| {
            set_field(&mut items[0], "txid", Value::Buffer(vec![1; 31]))
        }));
        assert!(e.contains("entry 1 field txid"), "{e}");
        let e = refusal_text(&edited(&deposits, |items| {
            set_field(&mut items[1], "memo", Value::None)
        }));
        assert!(e.contains("entry 2 is `(tuple"), "{e}");
        assert!(
            e.contains("not a deposit tuple of exactly txid, vout-index"),
            "{e}"
        );
        let e = refusal_text(&edited(&deposits, |items| items[1] = items[0].clone()));
        assert!(
            e.contains("entry 2 repeats deposit") && e.contains(":10"),
            "{e}"
        );
        let mut cc = deposits.to_contract_call(&deployer());
        cc.args = vec![Value::Buffer(vec![0; 100_000])];
        let e = refusal_text(&cc);
        assert!(e.contains("not a list") && e.len() < 300, "{e}");

        let e = refusal_text(&edited(&withdrawals, |items| {
            set_field(&mut items[0], "fee", Value::None)
        }));
        assert!(
            e.contains("entry 1 (withdrawal 5) accepts without all of"),
            "{e}"
        );
        let e = refusal_text(&edited(&withdrawals, |items| {
            set_field(&mut items[1], "bitcoin-txid", Value::some(buf32([3; 32])))
        }));
        assert!(
            e.contains("entry 2 (withdrawal 150) rejects but carries"),
            "{e}"
        );
        let e = refusal_text(&edited(&withdrawals, |items| {
            set_field(&mut items[1], "burn-height", Value::UInt(120))
        }));
        assert!(
            e.contains("entry 2 (withdrawal 150) rejects but carries"),
            "{e}"
        );
        let e = refusal_text(&edited(&withdrawals, |items| {
            set_field(&mut items[1], "request-id", Value::UInt(5))
        }));
        assert!(e.contains("entry 2 (withdrawal 5) is named twice"), "{e}");
        let e = refusal_text(&edited(&withdrawals, |items| {
            set_field(&mut items[0], "output-index", Value::some(Value::Int(2)))
        }));
        assert!(e.contains("entry 1 field output-index"), "{e}");
        let e = refusal_text(&edited(&withdrawals, |items| {
            set_field(&mut items[0], "status", Value::UInt(1))
        }));
        assert!(e.contains("entry 1 field status"), "{e}");
    }

    #[tokio::test]
    async fn every_entry_of_a_batch_is_rebuilt_and_the_first_difference_is_named() {
        let good =
            SignerCall::CompleteDeposits(vec![deposit_at(10), deposit_at(11), deposit_at(12)]);
        assert_eq!(batch_verdict(&good).await.unwrap(), good);
        let mixed = SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept(5)),
            WithdrawalOutcome::Accept(accept(6)),
            WithdrawalOutcome::Reject(reject(150)),
        ]);
        assert_eq!(batch_verdict(&mixed).await.unwrap(), mixed);

        // Entry 3's amount differs from this signer's view.
        let mut wrong = vec![deposit_at(10), deposit_at(11), deposit_at(12)];
        wrong[2].amount += 1;
        let e = batch_verdict(&SignerCall::CompleteDeposits(wrong))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "complete-deposits-wrapper: entry 3 (deposit {}): amount is u10013 in the \
                 proposal, u10012 in this signer's view",
                deposit_at(12).outpoint
            )
        );
        // A completed deposit in the middle: done, by entry.
        let e = batch_verdict(&SignerCall::CompleteDeposits(vec![
            deposit_at(1),
            deposit_at(10),
        ]))
        .await
        .unwrap_err();
        assert!(
            matches!(&e, CallRefusal::AlreadyDone { subject, .. } if subject.contains("entry 1 (deposit")),
            "{e:?}"
        );
        // A withdrawal the view would reject, proposed as an accept, and a wrong bitmap.
        let e = batch_verdict(&SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept(5)),
            WithdrawalOutcome::Accept(accept(150)),
        ]))
        .await
        .unwrap_err();
        assert!(
            matches!(&e, CallRefusal::Unknown { subject, .. } if subject == "complete-withdrawals entry 2 (withdrawal 150)"),
            "{e:?}"
        );
        let mut bitmap = reject(150);
        bitmap.signer_bitmap = 0;
        let e = batch_verdict(&SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept(5)),
            WithdrawalOutcome::Reject(bitmap),
        ]))
        .await
        .unwrap_err();
        assert!(
            matches!(
                &e,
                CallRefusal::EntryMismatch {
                    entry: 2,
                    field: "signer-bitmap",
                    ..
                }
            ),
            "{e:?}"
        );
        // What batch_calls never builds: out of order, or a batch of one.
        let e = batch_verdict(&SignerCall::CompleteDeposits(vec![
            deposit_at(11),
            deposit_at(10),
        ]))
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("entry 2 (deposit") && e.to_string().contains("ascending order"),
            "{e}"
        );
        let e = batch_verdict(&SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Reject(reject(150)),
        ]))
        .await
        .unwrap_err();
        assert!(e.to_string().contains("a batch of one entry"), "{e}");
    }

    #[test]
    fn requests_split_into_single_calls_batches_and_chunks() {
        assert!(batch_calls(vec![], vec![]).is_empty());
        assert_eq!(
            batch_calls(vec![deposit_at(10)], vec![]),
            vec![SignerCall::CompleteDeposit(deposit_at(10))]
        );
        assert_eq!(
            batch_calls(vec![], vec![WithdrawalOutcome::Reject(reject(150))]),
            vec![SignerCall::RejectWithdrawal(reject(150))]
        );
        // Two deposits (given out of order, one twice) and one withdrawal.
        let calls = batch_calls(
            vec![deposit_at(12), deposit_at(10), deposit_at(12)],
            vec![WithdrawalOutcome::Accept(accept(5))],
        );
        assert_eq!(
            calls,
            vec![
                SignerCall::CompleteDeposits(vec![deposit_at(10), deposit_at(12)]),
                SignerCall::AcceptWithdrawal(accept(5)),
            ]
        );
        // 1,201 withdrawals: two full batches of 600, then the single call.
        let outcomes: Vec<WithdrawalOutcome> = (0..1_201u64)
            .rev()
            .map(|id| {
                if id % 2 == 0 {
                    WithdrawalOutcome::Accept(accept(id))
                } else {
                    WithdrawalOutcome::Reject(reject(id))
                }
            })
            .collect();
        let calls = batch_calls(vec![], outcomes);
        assert_eq!(calls.len(), 3);
        let ids = |c: &SignerCall| -> Vec<u64> {
            c.subjects()
                .iter()
                .map(|s| match s {
                    CallSubject::Withdrawal(id) => *id,
                    other => panic!("{other}"),
                })
                .collect()
        };
        assert_eq!(ids(&calls[0]), (0..600).collect::<Vec<_>>());
        assert_eq!(ids(&calls[1]), (600..1_200).collect::<Vec<_>>());
        assert_eq!(calls[2], SignerCall::AcceptWithdrawal(accept(1_200)));
        // Full batches of accepts (the larger entry) stay under the byte cap, and are valid.
        let full = &calls[0];
        let bytes = full.args()[0].serialize().len();
        assert!(bytes < MAX_BATCH_ARGUMENT_BYTES, "{bytes}");
        SignerCall::from_contract_call(&full.to_contract_call(&deployer())).unwrap();
        // A byte cap cuts before the count does.
        let one = withdrawal_tuple(&WithdrawalOutcome::Accept(accept(1)))
            .serialize()
            .len();
        let limits = BatchLimits {
            argument_bytes: 5 + 3 * one,
            ..BatchLimits::default()
        };
        let outcomes = (1..=7)
            .map(|id| WithdrawalOutcome::Accept(accept(id)))
            .collect();
        let sizes: Vec<usize> = batch_calls_with(limits, vec![], outcomes)
            .iter()
            .map(|c| c.subjects().len())
            .collect();
        assert_eq!(sizes, vec![3, 3, 1]);
    }

    #[test]
    fn a_failed_batch_names_its_entry_by_the_contracts_code() {
        let deposits = SignerCall::CompleteDeposits(vec![deposit_at(10), deposit_at(11)]);
        assert_eq!(deposits.failed_entry(313), Some(0));
        assert_eq!(deposits.failed_entry(314), Some(1));
        assert_eq!(deposits.failed_entry(315), None);
        assert_eq!(
            deposits.failed_entry(304),
            None,
            "the caller check is not an entry"
        );
        let withdrawals = SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept(5)),
            WithdrawalOutcome::Reject(reject(150)),
        ]);
        assert_eq!(withdrawals.failed_entry(518), Some(1));
        assert_eq!(withdrawals.failed_entry(505), None);
        assert_eq!(
            SignerCall::RejectWithdrawal(reject(1)).failed_entry(313),
            None
        );
        assert_eq!(
            withdrawals.subject().to_string(),
            "a batch of 2: withdrawal 5 … withdrawal 150"
        );
    }
}
