//! The five sBTC contracts' public behaviour, natively (the devnet node runs no Clarity): the
//! registry's state, the token's balances, deposit completion, withdrawals and key rotation, with
//! the contracts' checks in their order and their error codes, and the registry's print events.
//! Learned from stacks-network/sbtc `contracts/contracts/*.clar`; a call that errors changes
//! nothing (the caller works on a copy and keeps it only on `(ok ...)`), as in Clarity.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bitcoin::hashes::{hash160, Hash as _};

use crate::chain::stacks::address::{
    Principal, VERSION_MAINNET_MULTISIG, VERSION_TESTNET_MULTISIG,
};
use crate::chain::stacks::clarity::Value;

pub const REGISTRY: &str = "sbtc-registry";
pub const TOKEN: &str = "sbtc-token";
pub const DEPOSIT: &str = "sbtc-deposit";
pub const WITHDRAWAL: &str = "sbtc-withdrawal";
pub const BOOTSTRAP: &str = "sbtc-bootstrap-signers";
/// The five contracts, in their deployment order.
pub const CONTRACTS: [&str; 5] = [REGISTRY, TOKEN, DEPOSIT, WITHDRAWAL, BOOTSTRAP];

const GOVERNANCE_ROLE: u8 = 0x00;
const DEPOSIT_ROLE: u8 = 0x01;
const WITHDRAWAL_ROLE: u8 = 0x02;
/// sbtc-deposit's and sbtc-withdrawal's dust limit.
pub const DUST_LIMIT: u128 = 546;

// sbtc-registry
pub const ERR_UNAUTHORIZED: u128 = 400;
pub const ERR_AGG_PUBKEY_REPLAY: u128 = 402;
// sbtc-token
pub const ERR_NOT_OWNER: u128 = 4;
const ERR_TRANSFER_INDEX_PREFIX: u128 = 1000;
// sbtc-deposit
pub const ERR_TXID_LEN: u128 = 300;
pub const ERR_DEPOSIT_REPLAY: u128 = 301;
pub const ERR_LOWER_THAN_DUST: u128 = 302;
const ERR_DEPOSIT_INDEX_PREFIX: u128 = 303;
pub const ERR_DEPOSIT_INVALID_CALLER: u128 = 304;
pub const ERR_DEPOSIT_INVALID_BURN_HASH: u128 = 305;
// sbtc-withdrawal
pub const ERR_INVALID_ADDR_VERSION: u128 = 500;
pub const ERR_INVALID_ADDR_HASHBYTES: u128 = 501;
pub const ERR_DUST_LIMIT: u128 = 502;
pub const ERR_INVALID_REQUEST: u128 = 503;
pub const ERR_WITHDRAWAL_INVALID_CALLER: u128 = 504;
pub const ERR_ALREADY_PROCESSED: u128 = 505;
pub const ERR_FEE_TOO_HIGH: u128 = 506;
const ERR_WITHDRAWAL_INDEX_PREFIX: u128 = 507;
pub const ERR_WITHDRAWAL_INVALID_BURN_HASH: u128 = 508;
// sbtc-bootstrap-signers
pub const ERR_KEY_SIZE: u128 = 200;
pub const ERR_BOOTSTRAP_INVALID_CALLER: u128 = 201;
pub const ERR_SIGNATURE_THRESHOLD: u128 = 202;
// ft-mint?, ft-burn?, ft-transfer? (Clarity's native errors)
const FT_NOT_ENOUGH: u128 = 1;
const FT_SAME_PRINCIPAL: u128 = 2;
const FT_NON_POSITIVE: u128 = 3;

/// How a call failed: an `(err ...)` response (the transaction is mined with it), or a Clarity
/// runtime error (an overflow, an `unwrap-panic`), which aborts the transaction too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abort {
    Err(Value),
    Runtime(String),
}

fn err(code: u128) -> Abort {
    Abort::Err(Value::UInt(code))
}

fn runtime(why: impl Into<String>) -> Abort {
    Abort::Runtime(why.into())
}

/// A Clarity type, enough to check the arguments of the functions below as a node does before
/// it admits a call (`BadFunctionArgument`).
#[derive(Clone, Debug)]
pub enum Ty {
    UInt,
    Bool,
    Principal,
    Buff(usize),
    Ascii(usize),
    Utf8(usize),
    Optional(Box<Ty>),
    List(usize, Box<Ty>),
    Tuple(Vec<(&'static str, Ty)>),
}

impl Ty {
    pub fn admits(&self, v: &Value) -> bool {
        match (self, v) {
            (Ty::UInt, Value::UInt(_)) | (Ty::Bool, Value::Bool(_)) => true,
            (Ty::Principal, Value::Principal(_)) => true,
            (Ty::Buff(n), Value::Buffer(b)) => b.len() <= *n,
            (Ty::Ascii(n), Value::StringAscii(s)) => s.len() <= *n,
            (Ty::Utf8(n), Value::StringUtf8(s)) => s.chars().count() <= *n,
            (Ty::Optional(_), Value::None) => true,
            (Ty::Optional(t), Value::Some(v)) => t.admits(v),
            (Ty::List(n, t), Value::List(items)) => {
                items.len() <= *n && items.iter().all(|i| t.admits(i))
            }
            (Ty::Tuple(fields), Value::Tuple(map)) => {
                map.len() == fields.len()
                    && fields
                        .iter()
                        .all(|(name, t)| map.get(*name).is_some_and(|v| t.admits(v)))
            }
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Ty::UInt => "uint".into(),
            Ty::Bool => "bool".into(),
            Ty::Principal => "principal".into(),
            Ty::Buff(n) => format!("(buff {n})"),
            Ty::Ascii(n) => format!("(string-ascii {n})"),
            Ty::Utf8(n) => format!("(string-utf8 {n})"),
            Ty::Optional(t) => format!("(optional {})", t.describe()),
            Ty::List(n, t) => format!("(list {n} {})", t.describe()),
            Ty::Tuple(fields) => {
                let inner: Vec<String> = fields
                    .iter()
                    .map(|(k, t)| format!("({k} {})", t.describe()))
                    .collect();
                format!("(tuple {})", inner.join(" "))
            }
        }
    }
}

fn recipient_ty() -> Ty {
    Ty::Tuple(vec![("version", Ty::Buff(1)), ("hashbytes", Ty::Buff(32))])
}

fn deposit_ty() -> Ty {
    Ty::Tuple(vec![
        ("txid", Ty::Buff(32)),
        ("vout-index", Ty::UInt),
        ("amount", Ty::UInt),
        ("recipient", Ty::Principal),
        ("burn-hash", Ty::Buff(32)),
        ("burn-height", Ty::UInt),
        ("sweep-txid", Ty::Buff(32)),
    ])
}

fn withdrawal_ty() -> Ty {
    Ty::Tuple(vec![
        ("request-id", Ty::UInt),
        ("status", Ty::Bool),
        ("signer-bitmap", Ty::UInt),
        ("bitcoin-txid", Ty::Optional(Box::new(Ty::Buff(32)))),
        ("output-index", Ty::Optional(Box::new(Ty::UInt))),
        ("fee", Ty::Optional(Box::new(Ty::UInt))),
        ("burn-hash", Ty::Buff(32)),
        ("burn-height", Ty::UInt),
        ("sweep-txid", Ty::Optional(Box::new(Ty::Buff(32)))),
    ])
}

/// The argument types of a public function of one of the five contracts; None: no such public
/// function.
pub fn public_signature(contract: &str, function: &str) -> Option<Vec<Ty>> {
    use Ty::*;
    let b32 = || Buff(32);
    Some(match (contract, function) {
        (DEPOSIT, "complete-deposit-wrapper") => {
            vec![b32(), UInt, UInt, Principal, b32(), UInt, b32()]
        }
        (DEPOSIT, "complete-deposits-wrapper") => vec![List(500, Box::new(deposit_ty()))],
        (WITHDRAWAL, "initiate-withdrawal-request") => vec![UInt, recipient_ty(), UInt],
        (WITHDRAWAL, "accept-withdrawal-request") => {
            vec![UInt, b32(), UInt, UInt, UInt, b32(), UInt, b32()]
        }
        (WITHDRAWAL, "reject-withdrawal-request") => vec![UInt, UInt],
        (WITHDRAWAL, "complete-withdrawals") => vec![List(600, Box::new(withdrawal_ty()))],
        (BOOTSTRAP, "rotate-keys-wrapper") => {
            vec![List(128, Box::new(Buff(33))), Buff(33), UInt]
        }
        (BOOTSTRAP, "update-protocol-contract-wrapper") => vec![Buff(1), Principal],
        (REGISTRY, "create-withdrawal-request") => {
            vec![UInt, UInt, Principal, recipient_ty(), UInt]
        }
        (REGISTRY, "complete-withdrawal-accept") => {
            vec![UInt, b32(), UInt, UInt, UInt, b32(), UInt, b32()]
        }
        (REGISTRY, "complete-withdrawal-reject") => vec![UInt, UInt],
        (REGISTRY, "complete-deposit") => vec![b32(), UInt, UInt, Principal, b32(), UInt, b32()],
        (REGISTRY, "rotate-keys") => vec![List(128, Box::new(Buff(33))), Principal, Buff(33), UInt],
        (REGISTRY, "update-protocol-contract") => vec![Buff(1), Principal],
        (TOKEN, "protocol-lock" | "protocol-unlock" | "protocol-mint" | "protocol-burn")
        | (TOKEN, "protocol-burn-locked") => vec![UInt, Principal, Buff(1)],
        (TOKEN, "protocol-set-name") => vec![Ascii(32), Buff(1)],
        (TOKEN, "protocol-set-symbol") => vec![Ascii(10), Buff(1)],
        (TOKEN, "protocol-set-token-uri") => vec![Optional(Box::new(Utf8(256))), Buff(1)],
        (TOKEN, "protocol-mint-many") => vec![
            List(
                200,
                Box::new(Tuple(vec![("amount", UInt), ("recipient", Principal)])),
            ),
            Buff(1),
        ],
        (TOKEN, "transfer") => vec![UInt, Principal, Principal, Optional(Box::new(Buff(34)))],
        (TOKEN, "transfer-many") => vec![List(
            200,
            Box::new(Tuple(vec![
                ("amount", UInt),
                ("sender", Principal),
                ("to", Principal),
                ("memo", Optional(Box::new(Buff(34)))),
            ])),
        )],
        _ => return None,
    })
}

/// The functions a multisig origin calls as the signers: the node checks their keys and
/// threshold against the registry before admitting the call.
pub fn is_signers_function(contract: &str, function: &str) -> bool {
    matches!(
        (contract, function),
        (
            DEPOSIT,
            "complete-deposit-wrapper" | "complete-deposits-wrapper"
        ) | (
            WITHDRAWAL,
            "accept-withdrawal-request" | "reject-withdrawal-request" | "complete-withdrawals"
        ) | (
            BOOTSTRAP,
            "rotate-keys-wrapper" | "update-protocol-contract-wrapper"
        )
    )
}

/// Checks `args` against a signature: the message says which argument and what was expected.
pub fn check_args(sig: &[Ty], args: &[Value]) -> Result<(), String> {
    if sig.len() != args.len() {
        return Err(format!(
            "expected {} arguments, got {}",
            sig.len(),
            args.len()
        ));
    }
    for (i, (t, v)) in sig.iter().zip(args).enumerate() {
        if !t.admits(v) {
            return Err(format!("argument {i} is {v}, expected {}", t.describe()));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalRequest {
    pub amount: u128,
    pub max_fee: u128,
    pub sender: Principal,
    pub recipient: Value,
    pub block_height: u128,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    pub sweep_txid: Vec<u8>,
    pub burn_hash: Vec<u8>,
    pub burn_height: u128,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompletedDeposit {
    pub amount: u128,
    pub recipient: Principal,
    pub sweep: Sweep,
}

/// The sBTC contracts' data: the registry's variables and maps and the token's two fungible
/// tokens (available and locked).
#[derive(Clone, Debug)]
pub struct Sbtc {
    pub deployer: Principal,
    pub mainnet: bool,
    pub signer_set: Vec<Vec<u8>>,
    pub aggregate_pubkey: Vec<u8>,
    pub signer_principal: Principal,
    pub threshold: u128,
    pub last_withdrawal_request_id: u128,
    pub withdrawal_requests: BTreeMap<u128, WithdrawalRequest>,
    pub withdrawal_status: BTreeMap<u128, bool>,
    pub completed_withdrawal_sweep: BTreeMap<u128, Sweep>,
    pub deposit_status: BTreeMap<(Vec<u8>, u128), bool>,
    pub completed_deposits: BTreeMap<(Vec<u8>, u128), CompletedDeposit>,
    pub aggregate_pubkeys: BTreeSet<Vec<u8>>,
    pub active_protocol_contracts: BTreeMap<Vec<u8>, Principal>,
    pub active_protocol_roles: HashMap<Principal, Vec<u8>>,
    pub available: HashMap<Principal, u128>,
    pub locked: HashMap<Principal, u128>,
    pub supply: u128,
    pub locked_supply: u128,
    pub token_name: String,
    pub token_symbol: String,
    pub token_uri: Option<String>,
}

/// What a call sees of the chain and who makes it.
pub struct CallContext<'a> {
    /// `tx-sender` (and, for a direct call, `contract-caller`).
    pub sender: Principal,
    /// `burn-block-height`.
    pub burn_height: u64,
    /// `get-burn-block-info? header-hash`: the Bitcoin block hash at a height, in rust-bitcoin's
    /// internal byte order, if the node knows that block.
    pub burn_header: &'a dyn Fn(u64) -> Option<[u8; 32]>,
}

/// A print event: the contract that printed and the value.
pub type Print = (Principal, Value);

fn u(v: &Value) -> u128 {
    match v {
        Value::UInt(n) => *n,
        _ => 0,
    }
}

fn buf(v: &Value) -> Vec<u8> {
    match v {
        Value::Buffer(b) => b.clone(),
        _ => Vec::new(),
    }
}

fn principal(v: &Value) -> Principal {
    match v {
        Value::Principal(p) => p.clone(),
        _ => Principal::Standard {
            version: 0,
            hash160: [0; 20],
        },
    }
}

fn field<'v>(v: &'v Value, name: &str) -> &'v Value {
    static NONE: Value = Value::None;
    match v {
        Value::Tuple(map) => map.get(name).unwrap_or(&NONE),
        _ => &NONE,
    }
}

fn add(a: u128, b: u128) -> Result<u128, Abort> {
    a.checked_add(b)
        .ok_or_else(|| runtime("arithmetic overflow"))
}

/// hash160 of the P2SH redeem script the way sbtc-bootstrap-signers builds it
/// (`pubkeys-to-spend-script`: byte 0x50+m, each key with its length byte, 0x50+n, 0xae). For
/// up to 16 keys this is [`multisig_signer_hash`](crate::chain::stacks::transaction::multisig_signer_hash);
/// above 16 the contract writes `0x50+m` where Bitcoin script (and stacks-core's address of a
/// multisig origin) pushes the number, so the two differ there. None where the contract panics
/// (`m` or `n` above 175).
pub fn contract_pubkeys_hash(keys: &[Vec<u8>], m: u128) -> Option<[u8; 20]> {
    let m = u8::try_from(m.checked_add(80)?).ok()?;
    let n = u8::try_from(keys.len().checked_add(80)?).ok()?;
    let mut script = vec![m];
    for k in keys {
        script.push(k.len() as u8);
        script.extend_from_slice(k);
    }
    script.push(n);
    script.push(0xae);
    Some(hash160::Hash::hash(&script).to_byte_array())
}

impl Sbtc {
    /// The state at deployment, with the bootstrap signer set already in the registry.
    pub fn genesis(
        deployer: Principal,
        mainnet: bool,
        signer_set: Vec<Vec<u8>>,
        signer_principal: Principal,
        threshold: u128,
    ) -> Sbtc {
        let contract = |name: &str| Principal::Contract {
            version: deployer.version(),
            hash160: *deployer.hash160(),
            name: name.to_string(),
        };
        let mut active_protocol_contracts = BTreeMap::new();
        let mut active_protocol_roles = HashMap::new();
        for (role, name) in [
            (GOVERNANCE_ROLE, BOOTSTRAP),
            (DEPOSIT_ROLE, DEPOSIT),
            (WITHDRAWAL_ROLE, WITHDRAWAL),
        ] {
            active_protocol_contracts.insert(vec![role], contract(name));
            active_protocol_roles.insert(contract(name), vec![role]);
        }
        Sbtc {
            deployer,
            mainnet,
            signer_set,
            aggregate_pubkey: vec![0x00],
            signer_principal,
            threshold,
            last_withdrawal_request_id: 0,
            withdrawal_requests: BTreeMap::new(),
            withdrawal_status: BTreeMap::new(),
            completed_withdrawal_sweep: BTreeMap::new(),
            deposit_status: BTreeMap::new(),
            completed_deposits: BTreeMap::new(),
            aggregate_pubkeys: BTreeSet::new(),
            active_protocol_contracts,
            active_protocol_roles,
            available: HashMap::new(),
            locked: HashMap::new(),
            supply: 0,
            locked_supply: 0,
            token_name: "sBTC".into(),
            token_symbol: "sBTC".into(),
            token_uri: Some(
                "https://ipfs.io/ipfs/bafkreibqnozdui4ntgoh3oo437lvhg7qrsccmbzhgumwwjf2smb3eegyqu"
                    .into(),
            ),
        }
    }

    /// `<deployer>.<name>`.
    pub fn contract(&self, name: &str) -> Principal {
        Principal::Contract {
            version: self.deployer.version(),
            hash160: *self.deployer.hash160(),
            name: name.to_string(),
        }
    }

    pub fn balance_available(&self, who: &Principal) -> u128 {
        self.available.get(who).copied().unwrap_or(0)
    }

    pub fn balance_locked(&self, who: &Principal) -> u128 {
        self.locked.get(who).copied().unwrap_or(0)
    }

    /// `get-total-supply`: available plus locked.
    pub fn total_supply(&self) -> u128 {
        self.supply.saturating_add(self.locked_supply)
    }

    /// The registry's `is-protocol-caller`.
    fn protocol_caller(&self, flag: &[u8], caller: &Principal) -> Result<(), Abort> {
        if self.active_protocol_contracts.get(flag) != Some(caller)
            || self.active_protocol_roles.get(caller).map(Vec::as_slice) != Some(flag)
        {
            return Err(err(ERR_UNAUTHORIZED));
        }
        Ok(())
    }

    fn ft_mint(&mut self, locked: bool, amount: u128, who: &Principal) -> Result<(), Abort> {
        if amount == 0 {
            return Err(err(FT_NOT_ENOUGH));
        }
        let (map, supply) = if locked {
            (&mut self.locked, &mut self.locked_supply)
        } else {
            (&mut self.available, &mut self.supply)
        };
        *supply = add(*supply, amount)?;
        let entry = map.entry(who.clone()).or_insert(0);
        *entry = add(*entry, amount)?;
        Ok(())
    }

    fn ft_burn(&mut self, locked: bool, amount: u128, who: &Principal) -> Result<(), Abort> {
        let (map, supply) = if locked {
            (&mut self.locked, &mut self.locked_supply)
        } else {
            (&mut self.available, &mut self.supply)
        };
        let have = map.get(who).copied().unwrap_or(0);
        if amount == 0 || have < amount {
            return Err(err(FT_NOT_ENOUGH));
        }
        map.insert(who.clone(), have - amount);
        *supply -= amount;
        Ok(())
    }

    fn ft_transfer(&mut self, amount: u128, from: &Principal, to: &Principal) -> Result<(), Abort> {
        if amount == 0 {
            return Err(err(FT_NON_POSITIVE));
        }
        if from == to {
            return Err(err(FT_SAME_PRINCIPAL));
        }
        let have = self.balance_available(from);
        if have < amount {
            return Err(err(FT_NOT_ENOUGH));
        }
        self.available.insert(from.clone(), have - amount);
        let entry = self.available.entry(to.clone()).or_insert(0);
        *entry = add(*entry, amount)?;
        Ok(())
    }

    fn withdrawal_request_value(&self, id: u128) -> Value {
        match self.withdrawal_requests.get(&id) {
            None => Value::None,
            Some(r) => Value::some(Value::tuple([
                ("amount", Value::UInt(r.amount)),
                ("max-fee", Value::UInt(r.max_fee)),
                ("sender", Value::Principal(r.sender.clone())),
                ("recipient", r.recipient.clone()),
                ("block-height", Value::UInt(r.block_height)),
                (
                    "status",
                    match self.withdrawal_status.get(&id) {
                        Some(s) => Value::some(Value::Bool(*s)),
                        None => Value::None,
                    },
                ),
            ])),
        }
    }

    fn signer_data(&self) -> Value {
        Value::tuple([
            ("current-signer-set", self.signer_set_value()),
            (
                "current-aggregate-pubkey",
                Value::Buffer(self.aggregate_pubkey.clone()),
            ),
            (
                "current-signer-principal",
                Value::Principal(self.signer_principal.clone()),
            ),
            ("current-signature-threshold", Value::UInt(self.threshold)),
        ])
    }

    fn signer_set_value(&self) -> Value {
        Value::List(self.signer_set.iter().cloned().map(Value::Buffer).collect())
    }

    /// A public function call by `ctx.sender`. On `Ok` the state has changed and `prints` holds
    /// the print events; on `Err` the caller drops this copy of the state.
    pub fn call_public(
        &mut self,
        ctx: &CallContext<'_>,
        contract: &str,
        function: &str,
        args: &[Value],
        prints: &mut Vec<Print>,
    ) -> Result<Value, Abort> {
        let a = |i: usize| args.get(i).cloned().unwrap_or(Value::None);
        let sender = &ctx.sender;
        match (contract, function) {
            (DEPOSIT, "complete-deposit-wrapper") => self.complete_deposit_wrapper(
                ctx,
                &buf(&a(0)),
                u(&a(1)),
                u(&a(2)),
                &principal(&a(3)),
                &buf(&a(4)),
                u(&a(5)),
                &buf(&a(6)),
                prints,
            ),
            (DEPOSIT, "complete-deposits-wrapper") => {
                if self.signer_principal != *sender {
                    return Err(err(ERR_DEPOSIT_INVALID_CALLER));
                }
                let Value::List(items) = a(0) else {
                    return Err(runtime("not a list"));
                };
                for (index, d) in items.iter().enumerate() {
                    self.complete_deposit_wrapper(
                        ctx,
                        &buf(field(d, "txid")),
                        u(field(d, "vout-index")),
                        u(field(d, "amount")),
                        &principal(field(d, "recipient")),
                        &buf(field(d, "burn-hash")),
                        u(field(d, "burn-height")),
                        &buf(field(d, "sweep-txid")),
                        prints,
                    )
                    .map_err(|e| match e {
                        Abort::Err(_) => err(ERR_DEPOSIT_INDEX_PREFIX + 10 + index as u128),
                        r => r,
                    })?;
                }
                Ok(Value::UInt(items.len() as u128))
            }
            (WITHDRAWAL, "initiate-withdrawal-request") => {
                let (amount, recipient, max_fee) = (u(&a(0)), a(1), u(&a(2)));
                let total = add(amount, max_fee)?;
                self.protocol_caller(&[WITHDRAWAL_ROLE], &self.contract(WITHDRAWAL))?;
                self.ft_burn(false, total, sender)?;
                self.ft_mint(true, total, sender)?;
                if amount <= DUST_LIMIT {
                    return Err(err(ERR_DUST_LIMIT));
                }
                validate_recipient(&recipient)?;
                let id = add(self.last_withdrawal_request_id, 1)?;
                self.last_withdrawal_request_id = id;
                self.protocol_caller(&[WITHDRAWAL_ROLE], &self.contract(WITHDRAWAL))?;
                let block_height = ctx.burn_height as u128;
                self.withdrawal_requests
                    .entry(id)
                    .or_insert(WithdrawalRequest {
                        amount,
                        max_fee,
                        sender: sender.clone(),
                        recipient: recipient.clone(),
                        block_height,
                    });
                prints.push((
                    self.contract(REGISTRY),
                    Value::tuple([
                        ("topic", Value::StringAscii("withdrawal-create".into())),
                        ("amount", Value::UInt(amount)),
                        ("request-id", Value::UInt(id)),
                        ("sender", Value::Principal(sender.clone())),
                        ("recipient", recipient),
                        ("block-height", Value::UInt(block_height)),
                        ("max-fee", Value::UInt(max_fee)),
                    ]),
                ));
                Ok(Value::UInt(id))
            }
            (WITHDRAWAL, "accept-withdrawal-request") => self.accept_withdrawal(
                ctx,
                u(&a(0)),
                a(1),
                u(&a(2)),
                u(&a(3)),
                u(&a(4)),
                a(5),
                u(&a(6)),
                a(7),
                prints,
            ),
            (WITHDRAWAL, "reject-withdrawal-request") => {
                self.reject_withdrawal(ctx, u(&a(0)), u(&a(1)), prints)
            }
            (WITHDRAWAL, "complete-withdrawals") => {
                if self.signer_principal != *sender {
                    return Err(err(ERR_WITHDRAWAL_INVALID_CALLER));
                }
                let Value::List(items) = a(0) else {
                    return Err(runtime("not a list"));
                };
                for (index, w) in items.iter().enumerate() {
                    let indexed = err(ERR_WITHDRAWAL_INDEX_PREFIX + 10 + index as u128);
                    let some = |v: &Value| match v {
                        Value::Some(inner) => Some((**inner).clone()),
                        _ => None,
                    };
                    let id = u(field(w, "request-id"));
                    let bitmap = u(field(w, "signer-bitmap"));
                    let outcome = if field(w, "status") == &Value::Bool(true) {
                        let (Some(txid), Some(index_v), Some(fee)) = (
                            some(field(w, "bitcoin-txid")),
                            some(field(w, "output-index")),
                            some(field(w, "fee")),
                        ) else {
                            return Err(indexed);
                        };
                        let Some(sweep) = some(field(w, "sweep-txid")) else {
                            return Err(runtime("unwrap-panic of a none sweep-txid"));
                        };
                        self.accept_withdrawal(
                            ctx,
                            id,
                            txid,
                            bitmap,
                            u(&index_v),
                            u(&fee),
                            field(w, "burn-hash").clone(),
                            u(field(w, "burn-height")),
                            sweep,
                            prints,
                        )
                    } else {
                        self.reject_withdrawal(ctx, id, bitmap, prints)
                    };
                    match outcome {
                        Ok(_) => {}
                        Err(Abort::Err(_)) => return Err(indexed),
                        Err(r) => return Err(r),
                    }
                }
                Ok(Value::UInt(items.len() as u128))
            }
            (BOOTSTRAP, "rotate-keys-wrapper") => {
                let Value::List(keys) = a(0) else {
                    return Err(runtime("not a list"));
                };
                let keys: Vec<Vec<u8>> = keys.iter().map(buf).collect();
                let (aggregate, threshold) = (buf(&a(1)), u(&a(2)));
                let hash = contract_pubkeys_hash(&keys, threshold)
                    .ok_or_else(|| runtime("unwrap-panic in pubkeys-to-principal"))?;
                let new_principal = Principal::Standard {
                    version: if self.mainnet {
                        VERSION_MAINNET_MULTISIG
                    } else {
                        VERSION_TESTNET_MULTISIG
                    },
                    hash160: hash,
                };
                let n = keys.len() as u128;
                if n <= 1 {
                    return Err(err(ERR_KEY_SIZE));
                }
                if !(threshold > n / 2 && threshold <= n) {
                    return Err(err(ERR_SIGNATURE_THRESHOLD));
                }
                if self.signer_principal != *sender {
                    return Err(err(ERR_BOOTSTRAP_INVALID_CALLER));
                }
                if let Some(i) = keys.iter().position(|k| k.len() != 33) {
                    return Err(err(ERR_KEY_SIZE + 10 + i as u128));
                }
                if aggregate.len() != 33 {
                    return Err(err(ERR_KEY_SIZE));
                }
                self.protocol_caller(&[GOVERNANCE_ROLE], &self.contract(BOOTSTRAP))?;
                if !self.aggregate_pubkeys.insert(aggregate.clone()) {
                    return Err(err(ERR_AGG_PUBKEY_REPLAY));
                }
                self.signer_set = keys.clone();
                self.signer_principal = new_principal.clone();
                self.threshold = threshold;
                self.aggregate_pubkey = aggregate.clone();
                prints.push((
                    self.contract(REGISTRY),
                    Value::tuple([
                        ("topic", Value::StringAscii("key-rotation".into())),
                        (
                            "new-keys",
                            Value::List(keys.into_iter().map(Value::Buffer).collect()),
                        ),
                        ("new-address", Value::Principal(new_principal)),
                        ("new-aggregate-pubkey", Value::Buffer(aggregate)),
                        ("new-signature-threshold", Value::UInt(threshold)),
                    ]),
                ));
                Ok(Value::Bool(true))
            }
            (BOOTSTRAP, "update-protocol-contract-wrapper") => {
                if self.signer_principal != *sender {
                    return Err(err(ERR_BOOTSTRAP_INVALID_CALLER));
                }
                self.protocol_caller(&[GOVERNANCE_ROLE], &self.contract(BOOTSTRAP))?;
                let (kind, new_contract) = (buf(&a(0)), principal(&a(1)));
                self.active_protocol_contracts
                    .insert(kind.clone(), new_contract.clone());
                self.active_protocol_roles
                    .insert(new_contract.clone(), kind.clone());
                prints.push((
                    self.contract(REGISTRY),
                    Value::tuple([
                        (
                            "topic",
                            Value::StringAscii("update-protocol-contract".into()),
                        ),
                        ("contract-type", Value::Buffer(kind)),
                        ("new-contract", Value::Principal(new_contract)),
                    ]),
                ));
                Ok(Value::Bool(true))
            }
            (TOKEN, "transfer") => {
                let (amount, from, to) = (u(&a(0)), principal(&a(1)), principal(&a(2)));
                if from != *sender {
                    return Err(err(ERR_NOT_OWNER));
                }
                self.ft_transfer(amount, &from, &to)?;
                if let Value::Some(memo) = a(3) {
                    prints.push((self.contract(TOKEN), *memo));
                }
                Ok(Value::Bool(true))
            }
            (TOKEN, "transfer-many") => {
                let Value::List(items) = a(0) else {
                    return Err(runtime("not a list"));
                };
                for (index, t) in items.iter().enumerate() {
                    let from = principal(field(t, "sender"));
                    let outcome = if from != *sender {
                        Err(err(ERR_NOT_OWNER))
                    } else {
                        self.ft_transfer(u(field(t, "amount")), &from, &principal(field(t, "to")))
                    };
                    match outcome {
                        Ok(()) => {
                            if let Value::Some(memo) = field(t, "memo") {
                                prints.push((self.contract(TOKEN), (**memo).clone()));
                            }
                        }
                        Err(Abort::Err(_)) => {
                            return Err(err(ERR_TRANSFER_INDEX_PREFIX + index as u128))
                        }
                        Err(r) => return Err(r),
                    }
                }
                Ok(Value::UInt(items.len() as u128))
            }
            (
                TOKEN,
                "protocol-lock"
                | "protocol-unlock"
                | "protocol-mint"
                | "protocol-burn"
                | "protocol-burn-locked",
            ) => {
                // Called directly, `contract-caller` is the sender: a protocol contract only
                // after a governance update named a standard principal.
                self.protocol_caller(&buf(&a(2)), sender)?;
                let (amount, owner) = (u(&a(0)), principal(&a(1)));
                match function {
                    "protocol-lock" => {
                        self.ft_burn(false, amount, &owner)?;
                        self.ft_mint(true, amount, &owner)?;
                    }
                    "protocol-unlock" => {
                        self.ft_burn(true, amount, &owner)?;
                        self.ft_mint(false, amount, &owner)?;
                    }
                    "protocol-mint" => self.ft_mint(false, amount, &owner)?,
                    "protocol-burn" => self.ft_burn(false, amount, &owner)?,
                    _ => self.ft_burn(true, amount, &owner)?,
                }
                Ok(Value::Bool(true))
            }
            (TOKEN, "protocol-set-name" | "protocol-set-symbol" | "protocol-set-token-uri") => {
                self.protocol_caller(&buf(&a(1)), sender)?;
                match (function, a(0)) {
                    ("protocol-set-name", Value::StringAscii(s)) => self.token_name = s,
                    ("protocol-set-symbol", Value::StringAscii(s)) => self.token_symbol = s,
                    (_, Value::Some(inner)) => {
                        if let Value::StringUtf8(s) = *inner {
                            self.token_uri = Some(s);
                        }
                    }
                    _ => self.token_uri = None,
                }
                Ok(Value::Bool(true))
            }
            (TOKEN, "protocol-mint-many") => {
                self.protocol_caller(&buf(&a(1)), sender)?;
                Err(runtime(
                    "protocol-mint-many is not supported by the devnet Stacks node",
                ))
            }
            (REGISTRY, f) => {
                // Only protocol contracts may call these; a direct call has the sender as the
                // contract-caller.
                let flag = match f {
                    "complete-deposit" => DEPOSIT_ROLE,
                    "rotate-keys" | "update-protocol-contract" => GOVERNANCE_ROLE,
                    _ => WITHDRAWAL_ROLE,
                };
                self.protocol_caller(&[flag], sender)?;
                Err(runtime(format!(
                    "direct calls of sbtc-registry.{f} are not supported by the devnet Stacks node"
                )))
            }
            _ => Err(runtime(format!("no public function {contract}.{function}"))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn complete_deposit_wrapper(
        &mut self,
        ctx: &CallContext<'_>,
        txid: &[u8],
        vout: u128,
        amount: u128,
        recipient: &Principal,
        burn_hash: &[u8],
        burn_height: u128,
        sweep_txid: &[u8],
        prints: &mut Vec<Print>,
    ) -> Result<Value, Abort> {
        if self.signer_principal != ctx.sender {
            return Err(err(ERR_DEPOSIT_INVALID_CALLER));
        }
        if amount < DUST_LIMIT {
            return Err(err(ERR_LOWER_THAN_DUST));
        }
        if txid.len() != 32 || sweep_txid.len() != 32 {
            return Err(err(ERR_TXID_LEN));
        }
        let key = (txid.to_vec(), vout);
        if self.deposit_status.contains_key(&key) {
            return Err(err(ERR_DEPOSIT_REPLAY));
        }
        if !burn_header_is(ctx, burn_height, burn_hash) {
            return Err(err(ERR_DEPOSIT_INVALID_BURN_HASH));
        }
        let deposit = self.contract(DEPOSIT);
        self.protocol_caller(&[DEPOSIT_ROLE], &deposit)?;
        self.ft_mint(false, amount, recipient)?;
        self.protocol_caller(&[DEPOSIT_ROLE], &deposit)?;
        self.deposit_status.entry(key.clone()).or_insert(true);
        self.completed_deposits
            .entry(key)
            .or_insert(CompletedDeposit {
                amount,
                recipient: recipient.clone(),
                sweep: Sweep {
                    sweep_txid: sweep_txid.to_vec(),
                    burn_hash: burn_hash.to_vec(),
                    burn_height,
                },
            });
        prints.push((
            self.contract(REGISTRY),
            Value::tuple([
                ("topic", Value::StringAscii("completed-deposit".into())),
                ("bitcoin-txid", Value::Buffer(txid.to_vec())),
                ("output-index", Value::UInt(vout)),
                ("amount", Value::UInt(amount)),
                ("burn-hash", Value::Buffer(burn_hash.to_vec())),
                ("burn-height", Value::UInt(burn_height)),
                ("sweep-txid", Value::Buffer(sweep_txid.to_vec())),
            ]),
        ));
        Ok(Value::Bool(true))
    }

    #[allow(clippy::too_many_arguments)]
    fn accept_withdrawal(
        &mut self,
        ctx: &CallContext<'_>,
        id: u128,
        bitcoin_txid: Value,
        signer_bitmap: u128,
        output_index: u128,
        fee: u128,
        burn_hash: Value,
        burn_height: u128,
        sweep_txid: Value,
        prints: &mut Vec<Print>,
    ) -> Result<Value, Abort> {
        let request = self
            .withdrawal_requests
            .get(&id)
            .cloned()
            .ok_or_else(|| err(ERR_INVALID_REQUEST))?;
        if !burn_header_is(ctx, burn_height, &buf(&burn_hash)) {
            return Err(err(ERR_WITHDRAWAL_INVALID_BURN_HASH));
        }
        if self.signer_principal != ctx.sender {
            return Err(err(ERR_WITHDRAWAL_INVALID_CALLER));
        }
        if self.withdrawal_status.contains_key(&id) {
            return Err(err(ERR_ALREADY_PROCESSED));
        }
        if fee > request.max_fee {
            return Err(err(ERR_FEE_TOO_HIGH));
        }
        let withdrawal = self.contract(WITHDRAWAL);
        self.protocol_caller(&[WITHDRAWAL_ROLE], &withdrawal)?;
        self.ft_burn(true, add(request.amount, request.max_fee)?, &request.sender)?;
        let refund = request.max_fee - fee;
        if refund != 0 {
            self.protocol_caller(&[WITHDRAWAL_ROLE], &withdrawal)?;
            self.ft_mint(false, refund, &request.sender)?;
        }
        self.protocol_caller(&[WITHDRAWAL_ROLE], &withdrawal)?;
        self.withdrawal_status.entry(id).or_insert(true);
        self.completed_withdrawal_sweep.entry(id).or_insert(Sweep {
            sweep_txid: buf(&sweep_txid),
            burn_hash: buf(&burn_hash),
            burn_height,
        });
        prints.push((
            self.contract(REGISTRY),
            Value::tuple([
                ("topic", Value::StringAscii("withdrawal-accept".into())),
                ("request-id", Value::UInt(id)),
                ("bitcoin-txid", bitcoin_txid),
                ("signer-bitmap", Value::UInt(signer_bitmap)),
                ("output-index", Value::UInt(output_index)),
                ("fee", Value::UInt(fee)),
                ("burn-hash", burn_hash),
                ("burn-height", Value::UInt(burn_height)),
                ("sweep-txid", sweep_txid),
            ]),
        ));
        Ok(Value::Bool(true))
    }

    fn reject_withdrawal(
        &mut self,
        ctx: &CallContext<'_>,
        id: u128,
        signer_bitmap: u128,
        prints: &mut Vec<Print>,
    ) -> Result<Value, Abort> {
        let request = self
            .withdrawal_requests
            .get(&id)
            .cloned()
            .ok_or_else(|| err(ERR_INVALID_REQUEST))?;
        if self.signer_principal != ctx.sender {
            return Err(err(ERR_WITHDRAWAL_INVALID_CALLER));
        }
        if self.withdrawal_status.contains_key(&id) {
            return Err(err(ERR_ALREADY_PROCESSED));
        }
        let withdrawal = self.contract(WITHDRAWAL);
        self.protocol_caller(&[WITHDRAWAL_ROLE], &withdrawal)?;
        let total = add(request.amount, request.max_fee)?;
        self.ft_burn(true, total, &request.sender)?;
        self.ft_mint(false, total, &request.sender)?;
        self.protocol_caller(&[WITHDRAWAL_ROLE], &withdrawal)?;
        self.withdrawal_status.entry(id).or_insert(false);
        prints.push((
            self.contract(REGISTRY),
            Value::tuple([
                ("topic", Value::StringAscii("withdrawal-reject".into())),
                ("request-id", Value::UInt(id)),
                ("signer-bitmap", Value::UInt(signer_bitmap)),
            ]),
        ));
        Ok(Value::Bool(true))
    }

    /// A read-only function, as `POST /v2/contracts/call-read` runs it. Err: the node's `cause`.
    pub fn call_read_only(
        &self,
        ctx: &CallContext<'_>,
        contract: &str,
        function: &str,
        args: &[Value],
    ) -> Result<Value, String> {
        use Ty::*;
        let sig: Vec<Ty> = match (contract, function) {
            (REGISTRY, "get-withdrawal-request" | "get-completed-withdrawal-sweep-data") => {
                vec![UInt]
            }
            (REGISTRY, "get-completed-deposit" | "get-deposit-status") => vec![Buff(32), UInt],
            (
                REGISTRY,
                "get-current-signer-data"
                | "get-current-aggregate-pubkey"
                | "get-current-signer-principal"
                | "get-current-signer-set",
            ) => vec![],
            (REGISTRY, "get-active-protocol") => vec![Buff(1)],
            (REGISTRY, "is-protocol-caller") => vec![Buff(1), Principal],
            (
                TOKEN,
                "get-name" | "get-symbol" | "get-decimals" | "get-total-supply" | "get-token-uri",
            ) => vec![],
            (TOKEN, "get-balance" | "get-balance-available" | "get-balance-locked") => {
                vec![Principal]
            }
            (DEPOSIT | WITHDRAWAL, "get-burn-header") => vec![UInt],
            (WITHDRAWAL, "validate-recipient") => vec![recipient_ty()],
            (BOOTSTRAP, "pubkeys-to-spend-script" | "pubkeys-to-hash" | "pubkeys-to-principal") => {
                vec![List(128, Box::new(Buff(33))), UInt]
            }
            _ => {
                return Err(format!(
                    "Unchecked(NoSuchPublicFunction(\"{}\", \"{function}\"))",
                    self.contract(contract)
                ))
            }
        };
        check_args(&sig, args).map_err(|e| format!("Unchecked(BadFunctionArgument: {e})"))?;
        let a = |i: usize| args.get(i).cloned().unwrap_or(Value::None);
        let opt = |v: Option<Value>| v.map(Value::some).unwrap_or(Value::None);
        let sweep_value = |s: &Sweep| {
            Value::tuple([
                ("sweep-txid", Value::Buffer(s.sweep_txid.clone())),
                ("sweep-burn-hash", Value::Buffer(s.burn_hash.clone())),
                ("sweep-burn-height", Value::UInt(s.burn_height)),
            ])
        };
        Ok(match (contract, function) {
            (REGISTRY, "get-withdrawal-request") => self.withdrawal_request_value(u(&a(0))),
            (REGISTRY, "get-completed-withdrawal-sweep-data") => opt(self
                .completed_withdrawal_sweep
                .get(&u(&a(0)))
                .map(sweep_value)),
            (REGISTRY, "get-completed-deposit") => opt(self
                .completed_deposits
                .get(&(buf(&a(0)), u(&a(1))))
                .map(|d| {
                    Value::tuple([
                        ("amount", Value::UInt(d.amount)),
                        ("recipient", Value::Principal(d.recipient.clone())),
                        ("sweep-txid", Value::Buffer(d.sweep.sweep_txid.clone())),
                        ("sweep-burn-hash", Value::Buffer(d.sweep.burn_hash.clone())),
                        ("sweep-burn-height", Value::UInt(d.sweep.burn_height)),
                    ])
                })),
            (REGISTRY, "get-deposit-status") => opt(self
                .deposit_status
                .get(&(buf(&a(0)), u(&a(1))))
                .map(|s| Value::Bool(*s))),
            (REGISTRY, "get-current-signer-data") => self.signer_data(),
            (REGISTRY, "get-current-aggregate-pubkey") => {
                Value::Buffer(self.aggregate_pubkey.clone())
            }
            (REGISTRY, "get-current-signer-principal") => {
                Value::Principal(self.signer_principal.clone())
            }
            (REGISTRY, "get-current-signer-set") => self.signer_set_value(),
            (REGISTRY, "get-active-protocol") => opt(self
                .active_protocol_contracts
                .get(&buf(&a(0)))
                .cloned()
                .map(Value::Principal)),
            (REGISTRY, "is-protocol-caller") => {
                match self.protocol_caller(&buf(&a(0)), &principal(&a(1))) {
                    Ok(()) => Value::ok(Value::Bool(true)),
                    Err(_) => Value::err(Value::UInt(ERR_UNAUTHORIZED)),
                }
            }
            (TOKEN, "get-name") => Value::ok(Value::StringAscii(self.token_name.clone())),
            (TOKEN, "get-symbol") => Value::ok(Value::StringAscii(self.token_symbol.clone())),
            (TOKEN, "get-decimals") => Value::ok(Value::UInt(8)),
            (TOKEN, "get-total-supply") => Value::ok(Value::UInt(self.total_supply())),
            (TOKEN, "get-token-uri") => {
                Value::ok(opt(self.token_uri.clone().map(Value::StringUtf8)))
            }
            (TOKEN, "get-balance") => {
                let who = principal(&a(0));
                Value::ok(Value::UInt(
                    self.balance_available(&who)
                        .saturating_add(self.balance_locked(&who)),
                ))
            }
            (TOKEN, "get-balance-available") => {
                Value::ok(Value::UInt(self.balance_available(&principal(&a(0)))))
            }
            (TOKEN, "get-balance-locked") => {
                Value::ok(Value::UInt(self.balance_locked(&principal(&a(0)))))
            }
            (DEPOSIT | WITHDRAWAL, "get-burn-header") => {
                opt(burn_header(ctx, u(&a(0))).map(|h| Value::Buffer(h.to_vec())))
            }
            (WITHDRAWAL, "validate-recipient") => match validate_recipient(&a(0)) {
                Ok(()) => Value::ok(Value::Bool(true)),
                Err(Abort::Err(e)) => Value::err(e),
                Err(Abort::Runtime(r)) => return Err(format!("Runtime({r})")),
            },
            (BOOTSTRAP, f) => {
                let Value::List(keys) = a(0) else {
                    return Err("Unchecked(TypeError)".into());
                };
                let keys: Vec<Vec<u8>> = keys.iter().map(buf).collect();
                let m = u(&a(1));
                let hash = contract_pubkeys_hash(&keys, m)
                    .ok_or_else(|| "Runtime(UnwrapFailure)".to_string())?;
                match f {
                    "pubkeys-to-hash" => Value::Buffer(hash.to_vec()),
                    "pubkeys-to-principal" => {
                        Value::Principal(crate::chain::stacks::address::Principal::Standard {
                            version: if self.mainnet {
                                VERSION_MAINNET_MULTISIG
                            } else {
                                VERSION_TESTNET_MULTISIG
                            },
                            hash160: hash,
                        })
                    }
                    _ => {
                        let mut script = vec![(m + 80) as u8];
                        for k in &keys {
                            script.push(k.len() as u8);
                            script.extend_from_slice(k);
                        }
                        script.push((keys.len() + 80) as u8);
                        script.push(0xae);
                        Value::Buffer(script)
                    }
                }
            }
            _ => return Err("Unchecked(NoSuchPublicFunction)".into()),
        })
    }

    /// `GET /v2/data_var`: a data variable's value; None: no such variable.
    pub fn data_var(&self, contract: &str, var: &str) -> Option<Value> {
        Some(match (contract, var) {
            (REGISTRY, "last-withdrawal-request-id") => {
                Value::UInt(self.last_withdrawal_request_id)
            }
            (REGISTRY, "current-signature-threshold") => Value::UInt(self.threshold),
            (REGISTRY, "current-signer-set") => self.signer_set_value(),
            (REGISTRY, "current-aggregate-pubkey") => Value::Buffer(self.aggregate_pubkey.clone()),
            (REGISTRY, "current-signer-principal") => {
                Value::Principal(self.signer_principal.clone())
            }
            (TOKEN, "token-name") => Value::StringAscii(self.token_name.clone()),
            (TOKEN, "token-symbol") => Value::StringAscii(self.token_symbol.clone()),
            (TOKEN, "token-uri") => match &self.token_uri {
                Some(s) => Value::some(Value::StringUtf8(s.clone())),
                None => Value::None,
            },
            _ => return None,
        })
    }

    /// `POST /v2/map_entry`: Ok(value) (None when the key is absent), Err when there is no such
    /// map or the key has the wrong type.
    pub fn map_entry(
        &self,
        contract: &str,
        map: &str,
        key: &Value,
    ) -> Result<Option<Value>, MapError> {
        let deposit_key = || -> Result<(Vec<u8>, u128), MapError> {
            let ty = Ty::Tuple(vec![("txid", Ty::Buff(32)), ("vout-index", Ty::UInt)]);
            if !ty.admits(key) {
                return Err(MapError::BadKey(ty.describe()));
            }
            Ok((buf(field(key, "txid")), u(field(key, "vout-index"))))
        };
        let uint_key = || -> Result<u128, MapError> {
            match key {
                Value::UInt(n) => Ok(*n),
                _ => Err(MapError::BadKey("uint".into())),
            }
        };
        let buff_key = |n: usize| -> Result<Vec<u8>, MapError> {
            match key {
                Value::Buffer(b) if b.len() <= n => Ok(b.clone()),
                _ => Err(MapError::BadKey(format!("(buff {n})"))),
            }
        };
        Ok(match (contract, map) {
            (REGISTRY, "withdrawal-requests") => {
                let id = uint_key()?;
                self.withdrawal_requests.get(&id).map(|r| {
                    Value::tuple([
                        ("amount", Value::UInt(r.amount)),
                        ("max-fee", Value::UInt(r.max_fee)),
                        ("sender", Value::Principal(r.sender.clone())),
                        ("recipient", r.recipient.clone()),
                        ("block-height", Value::UInt(r.block_height)),
                    ])
                })
            }
            (REGISTRY, "withdrawal-status") => self
                .withdrawal_status
                .get(&uint_key()?)
                .map(|s| Value::Bool(*s)),
            (REGISTRY, "completed-withdrawal-sweep") => {
                self.completed_withdrawal_sweep.get(&uint_key()?).map(|s| {
                    Value::tuple([
                        ("sweep-txid", Value::Buffer(s.sweep_txid.clone())),
                        ("sweep-burn-hash", Value::Buffer(s.burn_hash.clone())),
                        ("sweep-burn-height", Value::UInt(s.burn_height)),
                    ])
                })
            }
            (REGISTRY, "deposit-status") => self
                .deposit_status
                .get(&deposit_key()?)
                .map(|s| Value::Bool(*s)),
            (REGISTRY, "completed-deposits") => {
                self.completed_deposits.get(&deposit_key()?).map(|d| {
                    Value::tuple([
                        ("amount", Value::UInt(d.amount)),
                        ("recipient", Value::Principal(d.recipient.clone())),
                        ("sweep-txid", Value::Buffer(d.sweep.sweep_txid.clone())),
                        ("sweep-burn-hash", Value::Buffer(d.sweep.burn_hash.clone())),
                        ("sweep-burn-height", Value::UInt(d.sweep.burn_height)),
                    ])
                })
            }
            (REGISTRY, "aggregate-pubkeys") => self
                .aggregate_pubkeys
                .contains(&buff_key(33)?)
                .then_some(Value::Bool(true)),
            (REGISTRY, "active-protocol-contracts") => self
                .active_protocol_contracts
                .get(&buff_key(1)?)
                .cloned()
                .map(Value::Principal),
            (REGISTRY, "active-protocol-roles") => match key {
                Value::Principal(p) => self
                    .active_protocol_roles
                    .get(p)
                    .cloned()
                    .map(Value::Buffer),
                _ => return Err(MapError::BadKey("principal".into())),
            },
            _ => return Err(MapError::NoSuchMap),
        })
    }
}

/// Why a map read failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    NoSuchMap,
    BadKey(String),
}

fn burn_header(ctx: &CallContext<'_>, height: u128) -> Option<[u8; 32]> {
    let height = u64::try_from(height).ok()?;
    if height > ctx.burn_height {
        return None;
    }
    (ctx.burn_header)(height)
}

fn burn_header_is(ctx: &CallContext<'_>, height: u128, hash: &[u8]) -> bool {
    burn_header(ctx, height).is_some_and(|h| h[..] == *hash)
}

/// sbtc-withdrawal's `validate-recipient`.
fn validate_recipient(recipient: &Value) -> Result<(), Abort> {
    let version = buf(field(recipient, "version"));
    let hashbytes = buf(field(recipient, "hashbytes"));
    let version = version.first().copied().unwrap_or(0);
    if version > 6 {
        return Err(err(ERR_INVALID_ADDR_VERSION));
    }
    let want = if version <= 4 { 20 } else { 32 };
    if hashbytes.len() != want {
        return Err(err(ERR_INVALID_ADDR_HASHBYTES));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::stacks::events::{RegistryEvent, WithdrawalRecipient};
    use crate::chain::stacks::transaction::multisig_signer_hash;
    use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
    use bitcoin::{BlockHash, OutPoint, Txid};

    fn key(i: u8) -> PublicKey {
        PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[i; 32]).unwrap())
    }

    fn sbtc(keys: &[PublicKey], m: u16) -> Sbtc {
        let signer = Principal::Standard {
            version: VERSION_TESTNET_MULTISIG,
            hash160: multisig_signer_hash(keys, m),
        };
        Sbtc::genesis(
            signer.clone(),
            false,
            keys.iter().map(|k| k.serialize().to_vec()).collect(),
            signer,
            m.into(),
        )
    }

    fn user(i: u8) -> Principal {
        Principal::Standard {
            version: 26,
            hash160: [i; 20],
        }
    }

    const BURN: [u8; 32] = [0xbb; 32];

    fn ctx(sender: Principal, header: &dyn Fn(u64) -> Option<[u8; 32]>) -> CallContext<'_> {
        CallContext {
            sender,
            burn_height: 110,
            burn_header: header,
        }
    }

    fn header(h: u64) -> Option<[u8; 32]> {
        (h == 105).then_some(BURN)
    }

    fn deposit_args(txid: u8, amount: u128, to: &Principal) -> Vec<Value> {
        vec![
            Value::Buffer(vec![txid; 32]),
            Value::UInt(1),
            Value::UInt(amount),
            Value::Principal(to.clone()),
            Value::Buffer(BURN.to_vec()),
            Value::UInt(105),
            Value::Buffer(vec![9; 32]),
        ]
    }

    #[test]
    fn the_contracts_redeem_script_hash_is_the_multisig_hash_up_to_sixteen_keys() {
        for n in [2usize, 3, 15, 16] {
            let keys: Vec<PublicKey> = (1..=n as u8).map(key).collect();
            let raw: Vec<Vec<u8>> = keys.iter().map(|k| k.serialize().to_vec()).collect();
            let m = (n / 2 + 1) as u16;
            assert_eq!(
                contract_pubkeys_hash(&raw, m.into()),
                Some(multisig_signer_hash(&keys, m)),
                "{m} of {n}"
            );
        }
        let keys: Vec<PublicKey> = (1..=17).map(key).collect();
        let raw: Vec<Vec<u8>> = keys.iter().map(|k| k.serialize().to_vec()).collect();
        assert_ne!(
            contract_pubkeys_hash(&raw, 12),
            Some(multisig_signer_hash(&keys, 12)),
            "the contract writes 0x50+n, Bitcoin script pushes 17"
        );
    }

    #[test]
    fn a_deposit_mints_once_and_prints_the_registry_event() {
        let keys = [key(1), key(2), key(3)];
        let mut s = sbtc(&keys, 2);
        let signers = s.signer_principal.clone();
        let alice = user(7);
        let mut prints = Vec::new();
        let c = ctx(signers.clone(), &header);
        let args = deposit_args(5, 10_000, &alice);
        let sig = public_signature(DEPOSIT, "complete-deposit-wrapper").unwrap();
        check_args(&sig, &args).unwrap();
        let r = s.call_public(&c, DEPOSIT, "complete-deposit-wrapper", &args, &mut prints);
        assert_eq!(r, Ok(Value::Bool(true)));
        assert_eq!(s.balance_available(&alice), 10_000);
        assert_eq!(s.total_supply(), 10_000);
        let expected = RegistryEvent::CompletedDeposit {
            outpoint: OutPoint::new(Txid::from_byte_array([5; 32]), 1),
            amount: 10_000,
            burn_hash: BlockHash::from_byte_array(BURN),
            burn_height: 105,
            sweep_txid: Txid::from_byte_array([9; 32]),
        };
        assert_eq!(prints, vec![(s.contract(REGISTRY), expected.to_value())]);
        let again = s.call_public(&c, DEPOSIT, "complete-deposit-wrapper", &args, &mut prints);
        assert_eq!(again, Err(err(ERR_DEPOSIT_REPLAY)));
        let mut wrong = deposit_args(6, 10_000, &alice);
        wrong[4] = Value::Buffer(vec![0xcc; 32]);
        let r = s.call_public(&c, DEPOSIT, "complete-deposit-wrapper", &wrong, &mut prints);
        assert_eq!(r, Err(err(ERR_DEPOSIT_INVALID_BURN_HASH)));
        let dust = deposit_args(7, 545, &alice);
        let r = s.call_public(&c, DEPOSIT, "complete-deposit-wrapper", &dust, &mut prints);
        assert_eq!(r, Err(err(ERR_LOWER_THAN_DUST)));
        let by_user = ctx(alice.clone(), &header);
        let r = s.call_public(
            &by_user,
            DEPOSIT,
            "complete-deposit-wrapper",
            &deposit_args(8, 9_000, &alice),
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_DEPOSIT_INVALID_CALLER)));
    }

    #[test]
    fn withdrawals_lock_then_burn_or_unlock_as_the_contract_does() {
        let keys = [key(1), key(2), key(3)];
        let mut s = sbtc(&keys, 2);
        let signers = s.signer_principal.clone();
        let alice = user(7);
        s.ft_mint(false, 100_000, &alice).unwrap();
        let recipient = WithdrawalRecipient {
            version: 4,
            hashbytes: vec![3; 20],
        };
        let mut prints = Vec::new();
        let by_alice = ctx(alice.clone(), &header);
        let args = vec![
            Value::UInt(20_000),
            recipient.to_value(),
            Value::UInt(3_000),
        ];
        let id = s
            .call_public(
                &by_alice,
                WITHDRAWAL,
                "initiate-withdrawal-request",
                &args,
                &mut prints,
            )
            .unwrap();
        assert_eq!(id, Value::UInt(1));
        assert_eq!(s.balance_available(&alice), 77_000);
        assert_eq!(s.balance_locked(&alice), 23_000);
        assert_eq!(s.total_supply(), 100_000);
        let created = RegistryEvent::WithdrawalCreate {
            request_id: 1,
            amount: 20_000,
            sender: alice.clone(),
            recipient: recipient.clone(),
            block_height: 110,
            max_fee: 3_000,
        };
        assert_eq!(prints[0].1, created.to_value());
        // Dust and a bad recipient are refused (and the caller drops the copy).
        let mut t = s.clone();
        let dust = vec![Value::UInt(546), recipient.to_value(), Value::UInt(1)];
        let r = t.call_public(
            &by_alice,
            WITHDRAWAL,
            "initiate-withdrawal-request",
            &dust,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_DUST_LIMIT)));
        let bad = WithdrawalRecipient {
            version: 6,
            hashbytes: vec![3; 20],
        };
        let args = vec![Value::UInt(1_000), bad.to_value(), Value::UInt(1)];
        let r = t.call_public(
            &by_alice,
            WITHDRAWAL,
            "initiate-withdrawal-request",
            &args,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_INVALID_ADDR_HASHBYTES)));

        let by_signers = ctx(signers, &header);
        let accept = |fee: u128| {
            vec![
                Value::UInt(1),
                Value::Buffer(vec![4; 32]),
                Value::UInt(7),
                Value::UInt(2),
                Value::UInt(fee),
                Value::Buffer(BURN.to_vec()),
                Value::UInt(105),
                Value::Buffer(vec![4; 32]),
            ]
        };
        let mut t = s.clone();
        let r = t.call_public(
            &by_signers,
            WITHDRAWAL,
            "accept-withdrawal-request",
            &accept(3_001),
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_FEE_TOO_HIGH)));
        prints.clear();
        t.call_public(
            &by_signers,
            WITHDRAWAL,
            "accept-withdrawal-request",
            &accept(1_000),
            &mut prints,
        )
        .unwrap();
        assert_eq!(t.balance_available(&alice), 79_000);
        assert_eq!(t.balance_locked(&alice), 0);
        assert_eq!(t.total_supply(), 79_000);
        let accepted = RegistryEvent::WithdrawalAccept {
            request_id: 1,
            bitcoin_txid: Txid::from_byte_array([4; 32]),
            signer_bitmap: 7,
            output_index: 2,
            fee: 1_000,
            burn_hash: BlockHash::from_byte_array(BURN),
            burn_height: 105,
            sweep_txid: Txid::from_byte_array([4; 32]),
        };
        assert_eq!(prints, vec![(t.contract(REGISTRY), accepted.to_value())]);
        let r = t.call_public(
            &by_signers,
            WITHDRAWAL,
            "reject-withdrawal-request",
            &[Value::UInt(1), Value::UInt(7)],
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_ALREADY_PROCESSED)));

        prints.clear();
        s.call_public(
            &by_signers,
            WITHDRAWAL,
            "reject-withdrawal-request",
            &[Value::UInt(1), Value::UInt(5)],
            &mut prints,
        )
        .unwrap();
        assert_eq!(s.balance_available(&alice), 100_000);
        assert_eq!(s.balance_locked(&alice), 0);
        let rejected = RegistryEvent::WithdrawalReject {
            request_id: 1,
            signer_bitmap: 5,
        };
        assert_eq!(prints[0].1, rejected.to_value());
        let r = s.call_public(
            &by_signers,
            WITHDRAWAL,
            "reject-withdrawal-request",
            &[Value::UInt(2), Value::UInt(5)],
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_INVALID_REQUEST)));
    }

    #[test]
    fn rotation_moves_the_signer_principal_and_refuses_a_used_key() {
        let old = [key(1), key(2), key(3)];
        let mut s = sbtc(&old, 2);
        let new = [key(4), key(5), key(6), key(7)];
        let raw = |ks: &[PublicKey]| {
            Value::List(
                ks.iter()
                    .map(|k| Value::Buffer(k.serialize().to_vec()))
                    .collect(),
            )
        };
        let agg = key(9).serialize().to_vec();
        let by_old = ctx(s.signer_principal.clone(), &header);
        let mut prints = Vec::new();
        let too_low = [raw(&new), Value::Buffer(agg.clone()), Value::UInt(2)];
        let r = s.clone().call_public(
            &by_old,
            BOOTSTRAP,
            "rotate-keys-wrapper",
            &too_low,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_SIGNATURE_THRESHOLD)));
        let args = [raw(&new), Value::Buffer(agg.clone()), Value::UInt(3)];
        s.call_public(
            &by_old,
            BOOTSTRAP,
            "rotate-keys-wrapper",
            &args,
            &mut prints,
        )
        .unwrap();
        let new_principal = Principal::Standard {
            version: VERSION_TESTNET_MULTISIG,
            hash160: multisig_signer_hash(&new, 3),
        };
        assert_eq!(s.signer_principal, new_principal);
        assert_eq!(s.aggregate_pubkey, agg);
        let rotated = RegistryEvent::KeyRotation {
            new_keys: new.to_vec(),
            new_address: new_principal.clone(),
            new_aggregate_pubkey: key(9),
            new_signature_threshold: 3,
        };
        assert_eq!(prints[0].1, rotated.to_value());
        // The old set is no longer the caller; the new one cannot reuse the key.
        let r = s.clone().call_public(
            &by_old,
            BOOTSTRAP,
            "rotate-keys-wrapper",
            &args,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_BOOTSTRAP_INVALID_CALLER)));
        let by_new = ctx(new_principal, &header);
        let r = s.call_public(
            &by_new,
            BOOTSTRAP,
            "rotate-keys-wrapper",
            &args,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_AGG_PUBKEY_REPLAY)));
    }

    fn deposit_entry(txid: u8, amount: u128, to: &Principal) -> Value {
        let a = deposit_args(txid, amount, to);
        Value::tuple([
            ("txid", a[0].clone()),
            ("vout-index", a[1].clone()),
            ("amount", a[2].clone()),
            ("recipient", a[3].clone()),
            ("burn-hash", a[4].clone()),
            ("burn-height", a[5].clone()),
            ("sweep-txid", a[6].clone()),
        ])
    }

    fn withdrawal_entry(id: u128, accept: Option<u128>) -> Value {
        let some = |v: Value| Value::some(v);
        Value::tuple([
            ("request-id", Value::UInt(id)),
            ("status", Value::Bool(accept.is_some())),
            ("signer-bitmap", Value::UInt(1)),
            (
                "bitcoin-txid",
                accept.map_or(Value::None, |_| some(Value::Buffer(vec![4; 32]))),
            ),
            (
                "output-index",
                accept.map_or(Value::None, |_| some(Value::UInt(2))),
            ),
            ("fee", accept.map_or(Value::None, |f| some(Value::UInt(f)))),
            ("burn-hash", Value::Buffer(BURN.to_vec())),
            ("burn-height", Value::UInt(105)),
            (
                "sweep-txid",
                accept.map_or(Value::None, |_| some(Value::Buffer(vec![4; 32]))),
            ),
        ])
    }

    #[test]
    fn a_deposit_batch_mints_every_entry_or_none_and_names_the_failed_index() {
        let keys = [key(1), key(2), key(3)];
        let s = sbtc(&keys, 2);
        let signers = s.signer_principal.clone();
        let (alice, bob) = (user(7), user(8));
        let c = ctx(signers.clone(), &header);
        let batch = |entries: Vec<Value>| vec![Value::List(entries)];
        let sig = public_signature(DEPOSIT, "complete-deposits-wrapper").unwrap();
        let three = batch(vec![
            deposit_entry(1, 10_000, &alice),
            deposit_entry(2, 20_000, &bob),
            deposit_entry(3, 30_000, &alice),
        ]);
        check_args(&sig, &three).unwrap();
        let mut done = s.clone();
        let mut prints = Vec::new();
        let r = done.call_public(
            &c,
            DEPOSIT,
            "complete-deposits-wrapper",
            &three,
            &mut prints,
        );
        assert_eq!(r, Ok(Value::UInt(3)));
        assert_eq!(done.balance_available(&alice), 40_000);
        assert_eq!(done.balance_available(&bob), 20_000);
        assert_eq!(done.total_supply(), 60_000);
        let outpoints: Vec<OutPoint> = prints
            .iter()
            .map(|(_, v)| match RegistryEvent::from_value(v).unwrap() {
                RegistryEvent::CompletedDeposit { outpoint, .. } => outpoint,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            outpoints,
            [1u8, 2, 3].map(|t| OutPoint::new(Txid::from_byte_array([t; 32]), 1))
        );
        // Entry 2 (index 1) replays deposit 1: u303 + u10 + 1, whatever the entry's own error.
        let replay = batch(vec![
            deposit_entry(4, 10_000, &alice),
            deposit_entry(1, 10_000, &alice),
        ]);
        let r = done.clone().call_public(
            &c,
            DEPOSIT,
            "complete-deposits-wrapper",
            &replay,
            &mut prints,
        );
        assert_eq!(r, Err(err(314)));
        let mut dust = batch(vec![deposit_entry(5, 545, &alice)]);
        let r = s
            .clone()
            .call_public(&c, DEPOSIT, "complete-deposits-wrapper", &dust, &mut prints);
        assert_eq!(r, Err(err(313)));
        // The caller check comes first and is the plain code.
        let by_user = ctx(alice.clone(), &header);
        dust = batch(vec![deposit_entry(6, 1_000, &alice)]);
        let r = s.clone().call_public(
            &by_user,
            DEPOSIT,
            "complete-deposits-wrapper",
            &dust,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_DEPOSIT_INVALID_CALLER)));
        assert!(check_args(&sig, &batch(vec![deposit_entry(1, 1, &alice); 501])).is_err());
    }

    #[test]
    fn a_withdrawal_batch_accepts_and_rejects_or_fails_whole_with_the_index() {
        let keys = [key(1), key(2), key(3)];
        let mut s = sbtc(&keys, 2);
        let signers = s.signer_principal.clone();
        let alice = user(7);
        s.ft_mint(false, 100_000, &alice).unwrap();
        let recipient = WithdrawalRecipient {
            version: 4,
            hashbytes: vec![3; 20],
        };
        let by_alice = ctx(alice.clone(), &header);
        let mut prints = Vec::new();
        for (amount, max_fee) in [(20_000u128, 3_000u128), (30_000, 1_000)] {
            let args = [
                Value::UInt(amount),
                recipient.to_value(),
                Value::UInt(max_fee),
            ];
            s.call_public(
                &by_alice,
                WITHDRAWAL,
                "initiate-withdrawal-request",
                &args,
                &mut prints,
            )
            .unwrap();
        }
        assert_eq!(s.balance_available(&alice), 46_000);
        let c = ctx(signers, &header);
        let list = |entries: Vec<Value>| vec![Value::List(entries)];
        let both = list(vec![
            withdrawal_entry(1, Some(1_000)),
            withdrawal_entry(2, None),
        ]);
        check_args(
            &public_signature(WITHDRAWAL, "complete-withdrawals").unwrap(),
            &both,
        )
        .unwrap();
        let mut done = s.clone();
        prints.clear();
        let r = done.call_public(&c, WITHDRAWAL, "complete-withdrawals", &both, &mut prints);
        assert_eq!(r, Ok(Value::UInt(2)));
        // 1: 21 000 burned, 2 000 of the max fee back; 2: 31 000 unlocked.
        assert_eq!(done.balance_available(&alice), 46_000 + 2_000 + 31_000);
        assert_eq!(done.balance_locked(&alice), 0);
        let topics: Vec<&str> = prints
            .iter()
            .map(|(_, v)| RegistryEvent::from_value(v).unwrap().topic())
            .collect();
        assert_eq!(topics, ["withdrawal-accept", "withdrawal-reject"]);
        // Replaying request 1 as entry 1 of a new batch: u507 + u10 + 0.
        let r = done.clone().call_public(
            &c,
            WITHDRAWAL,
            "complete-withdrawals",
            &list(vec![withdrawal_entry(1, None)]),
            &mut prints,
        );
        assert_eq!(r, Err(err(517)));
        // An accept without its fee fails at its index; a fee above the max too.
        let mut no_fee = withdrawal_entry(2, Some(1));
        if let Value::Tuple(f) = &mut no_fee {
            f.insert("fee".into(), Value::None);
        }
        let r = s.clone().call_public(
            &c,
            WITHDRAWAL,
            "complete-withdrawals",
            &list(vec![withdrawal_entry(1, Some(1)), no_fee]),
            &mut prints,
        );
        assert_eq!(r, Err(err(518)));
        let r = s.clone().call_public(
            &c,
            WITHDRAWAL,
            "complete-withdrawals",
            &list(vec![withdrawal_entry(1, Some(3_001))]),
            &mut prints,
        );
        assert_eq!(r, Err(err(517)));
        // An accept without a sweep txid is the contract's unwrap-panic: a runtime error.
        let mut no_sweep = withdrawal_entry(1, Some(1));
        if let Value::Tuple(f) = &mut no_sweep {
            f.insert("sweep-txid".into(), Value::None);
        }
        let r = s.clone().call_public(
            &c,
            WITHDRAWAL,
            "complete-withdrawals",
            &list(vec![no_sweep]),
            &mut prints,
        );
        assert!(matches!(r, Err(Abort::Runtime(_))), "{r:?}");
        let r = s.clone().call_public(
            &by_alice,
            WITHDRAWAL,
            "complete-withdrawals",
            &both,
            &mut prints,
        );
        assert_eq!(r, Err(err(ERR_WITHDRAWAL_INVALID_CALLER)));
    }

    #[test]
    fn arguments_are_type_checked_as_a_node_does() {
        let sig = public_signature(DEPOSIT, "complete-deposit-wrapper").unwrap();
        let mut args = deposit_args(1, 1_000, &user(1));
        assert!(check_args(&sig, &args).is_ok());
        args[0] = Value::Buffer(vec![0; 33]);
        assert!(check_args(&sig, &args).unwrap_err().contains("argument 0"));
        assert!(check_args(&sig, &args[..3]).is_err());
        assert!(public_signature(DEPOSIT, "mint-me").is_none());
    }
}
