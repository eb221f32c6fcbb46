//! Deposit scripts (CHAIN.md section 1): parse, build and validate the deposit leaf, the reclaim
//! leaf and the P2TR output they lock, with one error per rule, then the checks against the
//! signer's own bitcoind. Used by deposit intake (`api`), `deposit inspect` and the observer.
//!
//! Every parse ends by rebuilding the leaf from what it read and comparing bytes, so a leaf
//! this module accepts is exactly the leaf the signers will rebuild when they spend it.

use std::fmt;
use std::sync::LazyLock;

use bitcoin::opcodes::all::{
    OP_CHECKSIG, OP_CSV, OP_DROP, OP_PUSHBYTES_32, OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4,
};
use bitcoin::opcodes::{Class, ClassifyContext};
use bitcoin::script::{Builder, Instruction, PushBytesBuf};
use bitcoin::secp256k1::{XOnlyPublicKey, SECP256K1};
use bitcoin::taproot::{TaprootBuilder, TaprootSpendInfo};
use bitcoin::{Amount, Network, OutPoint, Script, ScriptBuf, Transaction, Txid};

use super::client::{self, BitcoinClient};
use crate::chain::stacks::address::{Principal, PrincipalError, StacksNetwork};

/// The BIP-341 "nothing up my sleeve" point H (x-only), the deposit output's internal key: it
/// is `lift_x(SHA256(G uncompressed))`, so nobody knows its discrete log and the output has no
/// key path.
pub const NUMS_INTERNAL_KEY_BYTES: [u8; 32] = [
    0x50, 0x92, 0x9b, 0x74, 0xc1, 0xa0, 0x49, 0x54, 0xb7, 0x8b, 0x4b, 0x60, 0x35, 0xe9, 0x7a, 0x5e,
    0x07, 0x8a, 0x5a, 0x0f, 0x28, 0xec, 0x96, 0xd5, 0x47, 0xbf, 0xee, 0x9a, 0xce, 0x80, 0x3a, 0xc0,
];

/// [`NUMS_INTERNAL_KEY_BYTES`] as a key.
pub static NUMS_INTERNAL_KEY: LazyLock<XOnlyPublicKey> = LazyLock::new(|| {
    XOnlyPublicKey::from_slice(&NUMS_INTERNAL_KEY_BYTES)
        .expect("the BIP-341 NUMS point is on the curve (checked by a test)")
});

/// `OP_DROP OP_PUSHBYTES_32 <key> OP_CHECKSIG`: the deposit leaf's fixed tail.
const DEPOSIT_TAIL_LEN: usize = 35;
/// Max fee (8 bytes) and the shortest principal (standard: 22 bytes).
const DEPOSIT_DATA_MIN: usize = 8 + 22;
/// Max fee and the longest principal (contract with a 128-byte name): 159, so N < 160.
const DEPOSIT_DATA_MAX: usize = 8 + 23 + crate::chain::stacks::address::CONTRACT_NAME_MAX_LEN;
/// A standard-principal deposit leaf: 66 bytes.
pub const DEPOSIT_SCRIPT_MIN_LEN: usize = 1 + DEPOSIT_DATA_MIN + DEPOSIT_TAIL_LEN;
/// The longest deposit leaf: OP_PUSHDATA1, its length byte, 159 bytes of data, the tail.
pub const DEPOSIT_SCRIPT_MAX_LEN: usize = 2 + DEPOSIT_DATA_MAX + DEPOSIT_TAIL_LEN;
/// The longest user script a reclaim leaf may carry.
pub const MAX_USER_SCRIPT_LEN: usize = 2048;
/// BIP-68: set, the relative lock time is disabled.
const SEQUENCE_DISABLE_FLAG: i64 = 1 << 31;
/// BIP-68: set, the relative lock time counts 512-second units, not blocks.
const SEQUENCE_TYPE_FLAG: i64 = 1 << 22;
/// BIP-68: the block count.
const SEQUENCE_MASK: i64 = 0xffff;

/// A deposit as the wallet announces it (`POST /deposit`), already decoded from JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositSubmission {
    pub outpoint: OutPoint,
    pub deposit_script: ScriptBuf,
    pub reclaim_script: ScriptBuf,
    /// The whole deposit transaction (its txid must be `outpoint.txid`).
    pub transaction: Transaction,
}

/// The parsed deposit leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepositLeaf {
    pub max_fee: Amount,
    /// The recipient as a Clarity principal (standard or contract).
    pub recipient: crate::chain::stacks::address::Principal,
    pub signers_key: XOnlyPublicKey,
}

/// The parsed reclaim leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReclaimLeaf {
    /// Relative lock time in blocks (BIP-68 block-based).
    pub lock_time: u16,
    /// The depositor's script after `OP_CHECKSEQUENCEVERIFY`.
    pub user_script: ScriptBuf,
}

/// Everything the no-node checks establish about a deposit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedDeposit {
    pub outpoint: OutPoint,
    pub amount: Amount,
    pub deposit: DepositLeaf,
    pub reclaim: ReclaimLeaf,
    pub deposit_script: ScriptBuf,
    pub reclaim_script: ScriptBuf,
}

/// Where the output stands on the signer's node, from `gettxout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// In the mempool only.
    Mempool,
    /// Confirmed with this many confirmations.
    Confirmed { confirmations: u64 },
}

/// Which of the two leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Deposit,
    Reclaim,
}

impl fmt::Display for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Leaf::Deposit => "deposit",
            Leaf::Reclaim => "reclaim",
        })
    }
}

/// One error per rule; `rule()` is its stable machine name (for JSON and exit codes). Every
/// variant but [`DepositError::Node`] refuses the deposit itself; `Node` says this signer could
/// not check it, which is not the depositor's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DepositError {
    #[error(
        "transactionHex hashes to txid {actual}, not the bitcoinTxid {claimed} it was sent with: \
         send the transaction that created the deposit output, with its own txid"
    )]
    TxidMismatch { claimed: Txid, actual: Txid },

    #[error(
        "output index {vout} does not exist: the transaction has {outputs} outputs (0 to {}); \
         send the index of the deposit output",
        .outputs.saturating_sub(1)
    )]
    OutputIndexOutOfRange { vout: u32, outputs: usize },

    #[error(
        "the deposit script is {len} bytes; a deposit leaf is {min} to {max} bytes (66 for a \
         standard recipient): build it with the sBTC wallet library",
        min = DEPOSIT_SCRIPT_MIN_LEN,
        max = DEPOSIT_SCRIPT_MAX_LEN
    )]
    DepositScriptLength { len: usize },

    #[error(
        "the deposit script is not `<max fee ‖ recipient> OP_DROP <signers' key> OP_CHECKSIG`: \
         {why}; build it with the sBTC wallet library"
    )]
    DepositScriptShape { why: String },

    #[error(
        "the deposit script pushes its {len} data bytes with {used}, not the minimal {minimal}: \
         nodes would not relay the signers' spend; rebuild the deposit with minimal pushes"
    )]
    NonMinimalPush {
        len: usize,
        used: &'static str,
        minimal: &'static str,
    },

    #[error(
        "the signers' key {key} in the deposit script is not a valid x-only public key: the \
         signers could never spend this deposit; fetch the current key with \
         sbtc-registry.get-current-aggregate-pubkey and build the deposit again"
    )]
    BadSignersKey { key: String },

    #[error(
        "the recipient in the deposit script is not a valid Stacks principal: {0}; give the \
         wallet a Stacks address (SP…, ST…, or a contract SP….name)"
    )]
    BadPrincipal(PrincipalError),

    #[error(
        "the reclaim script is not `<lock time> OP_CHECKSEQUENCEVERIFY <user script>`: {why}; \
         build it with the sBTC wallet library"
    )]
    ReclaimScriptShape { why: String },

    #[error(
        "the reclaim script's lock time is pushed as {found}, not as the minimal {minimal}: \
         nodes would not relay a reclaim; rebuild the deposit with a minimally encoded lock time"
    )]
    LockTimeNotMinimal { found: String, minimal: String },

    #[error(
        "the reclaim script's lock time {value} is negative, so the reclaim path can never be \
         spent; build the deposit again with a lock time in blocks (1 to 65535)"
    )]
    LockTimeNegative { value: i64 },

    #[error(
        "the reclaim script's lock time {value:#x} has bit 22 set, so it counts time, not \
         blocks; sBTC takes block-based lock times only: build the deposit again with a lock time \
         in blocks (1 to 65535)"
    )]
    LockTimeTimeBased { value: i64 },

    #[error(
        "the reclaim script's lock time {value:#x} has bit 31 set, which disables it: anyone \
         holding the reclaim key could take the deposit back at once; build the deposit again with \
         a lock time in blocks (1 to 65535)"
    )]
    LockTimeDisabled { value: i64 },

    #[error(
        "the reclaim script's lock time is 0 blocks: the depositor could reclaim the deposit in \
         the block that confirms it, before the signers can sweep it; build the deposit again \
         with a lock time of some blocks"
    )]
    LockTimeZero,

    #[error(
        "the reclaim script's user script is {len} bytes, more than the {max} allowed; use a \
         shorter reclaim condition",
        max = MAX_USER_SCRIPT_LEN
    )]
    UserScriptTooLong { len: usize },

    #[error(
        "the reclaim script contains OP_SUCCESS{opcode} (0x{opcode:02x}) at byte {offset}: it \
         would let anyone spend the deposit at once; use a reclaim condition without \
         OP_SUCCESSx opcodes"
    )]
    OpSuccess { opcode: u8, offset: usize },

    #[error(
        "the {leaf} script does not rebuild to the same bytes from what it says (given {given}, \
         rebuilt {rebuilt}): it carries something this signer does not read (e.g. reserved \
         lock-time bits), and the signers could not spend an output they cannot rebuild; build \
         the deposit again with the sBTC wallet library"
    )]
    ScriptMismatch {
        leaf: Leaf,
        given: String,
        rebuilt: String,
    },

    #[error(
        "output {vout} pays {found:x}, not {expected:x}, the P2TR output of these two scripts with the \
         NUMS internal key: the scripts belong to another output or another transaction; send \
         the scripts the wallet built for this output"
    )]
    OutputMismatch {
        vout: u32,
        found: ScriptBuf,
        expected: ScriptBuf,
    },

    #[error(
        "the recipient {recipient} is a {recipient_network} address, but this signer is on \
         Bitcoin {network} ({expected}): sBTC would be minted on the wrong network; use a {} \
         address ({})",
        .expected, .expected.prefixes(),
        network = network_name(*.network)
    )]
    WrongNetwork {
        recipient: String,
        recipient_network: StacksNetwork,
        network: Network,
        expected: StacksNetwork,
    },

    #[error(
        "output {outpoint} is not an unspent output on this signer's bitcoind (gettxout finds \
         nothing): it was never broadcast, was replaced, or is already spent; broadcast the \
         deposit transaction and submit it again"
    )]
    OutputMissingOrSpent { outpoint: OutPoint },

    #[error(
        "output {outpoint} is a coinbase output; deposits must come from ordinary \
         transactions: send the deposit from a wallet"
    )]
    Coinbase { outpoint: OutPoint },

    #[error(
        "this signer's bitcoind is on {} but the signer is configured for {}: fix [bitcoin] \
         network or point rpc_url at the right node (not the depositor's fault)",
        network_name(*.node), network_name(*.ours)
    )]
    NodeWrongNetwork { node: Network, ours: Network },

    #[error(
        "the signers' key {key} in the deposit script is none of this signer's DKG keys: the \
         signers could not spend it; fetch the current key with \
         sbtc-registry.get-current-aggregate-pubkey and build the deposit again"
    )]
    UnknownSignersKey { key: XOnlyPublicKey },

    #[error(
        "this signer could not check the deposit with its bitcoind: {0}. This is not the \
         depositor's fault: check that bitcoind is running and synced at [bitcoin] rpc_url, then \
         try again"
    )]
    Node(#[from] client::Error),
}

impl DepositError {
    /// Stable machine-readable name of the rule, e.g. `non_minimal_push`.
    pub fn rule(&self) -> &'static str {
        match self {
            DepositError::TxidMismatch { .. } => "txid_mismatch",
            DepositError::OutputIndexOutOfRange { .. } => "output_index_out_of_range",
            DepositError::DepositScriptLength { .. } => "deposit_script_length",
            DepositError::DepositScriptShape { .. } => "deposit_script_shape",
            DepositError::NonMinimalPush { .. } => "non_minimal_push",
            DepositError::BadSignersKey { .. } => "bad_signers_key",
            DepositError::BadPrincipal(_) => "bad_principal",
            DepositError::ReclaimScriptShape { .. } => "reclaim_script_shape",
            DepositError::LockTimeNotMinimal { .. } => "lock_time_not_minimal",
            DepositError::LockTimeNegative { .. } => "lock_time_negative",
            DepositError::LockTimeTimeBased { .. } => "lock_time_time_based",
            DepositError::LockTimeDisabled { .. } => "lock_time_disabled",
            DepositError::LockTimeZero => "lock_time_zero",
            DepositError::UserScriptTooLong { .. } => "user_script_too_long",
            DepositError::OpSuccess { .. } => "op_success",
            DepositError::ScriptMismatch { .. } => "script_mismatch",
            DepositError::OutputMismatch { .. } => "output_mismatch",
            DepositError::WrongNetwork { .. } => "wrong_network",
            DepositError::OutputMissingOrSpent { .. } => "output_missing_or_spent",
            DepositError::Coinbase { .. } => "coinbase",
            DepositError::NodeWrongNetwork { .. } => "node_wrong_network",
            DepositError::UnknownSignersKey { .. } => "unknown_signers_key",
            DepositError::Node(_) => "node_error",
        }
    }

    /// True when this signer could not check the deposit (its node failed or is on another
    /// network): not a verdict on the deposit, so an API answers 5xx and a CLI exits 2.
    pub fn is_signer_side(&self) -> bool {
        matches!(
            self,
            DepositError::Node(_) | DepositError::NodeWrongNetwork { .. }
        )
    }
}

/// The rules [`check_on_node`] applies, by name (what `deposit inspect` skips without a node).
pub const NODE_RULES: &[&str] = &["node_wrong_network", "output_missing_or_spent", "coinbase"];
/// The rule [`check_signers_key`] applies (skipped without our DKG keys).
pub const KEY_RULE: &str = "unknown_signers_key";

/// The operator's name of a Bitcoin network.
fn network_name(network: Network) -> &'static str {
    match network {
        Network::Bitcoin => "mainnet",
        Network::Testnet => "testnet",
        Network::Testnet4 => "testnet4",
        Network::Signet => "signet",
        _ => "regtest",
    }
}

/// The deposit leaf: `<max_fee (8 bytes BE) ‖ recipient> OP_DROP <signers' key> OP_CHECKSIG`,
/// with the minimal push for the data (OP_PUSHBYTES_N below 76 bytes, OP_PUSHDATA1 above).
pub fn build_deposit_leaf(
    max_fee: Amount,
    recipient: &Principal,
    signers_key: XOnlyPublicKey,
) -> ScriptBuf {
    let mut data = max_fee.to_sat().to_be_bytes().to_vec();
    data.extend_from_slice(&recipient.serialize());
    let data = PushBytesBuf::try_from(data)
        .expect("8 + at most 23 + 255 bytes, under the 520-byte push limit");
    Builder::new()
        .push_slice(data)
        .push_opcode(OP_DROP)
        .push_x_only_key(&signers_key)
        .push_opcode(OP_CHECKSIG)
        .into_script()
}

/// The reclaim leaf: `<lock_time as minimal CScriptNum> OP_CHECKSEQUENCEVERIFY <user script>`.
pub fn build_reclaim_leaf(lock_time: u16, user_script: &Script) -> ScriptBuf {
    let mut bytes = Builder::new()
        .push_int(i64::from(lock_time))
        .push_opcode(OP_CSV)
        .into_script()
        .into_bytes();
    bytes.extend_from_slice(user_script.as_bytes());
    ScriptBuf::from_bytes(bytes)
}

/// The user script the sBTC wallet library writes: `OP_DROP <x-only key> OP_CHECKSIG` (the
/// drop removes the lock time OP_CHECKSEQUENCEVERIFY leaves on the stack).
pub fn standard_user_script(reclaim_key: XOnlyPublicKey) -> ScriptBuf {
    Builder::new()
        .push_opcode(OP_DROP)
        .push_x_only_key(&reclaim_key)
        .push_opcode(OP_CHECKSIG)
        .into_script()
}

/// The taproot tree of a deposit output: the NUMS internal key and the two leaves (the
/// signers need it for the control block when they spend the deposit leaf).
pub fn deposit_spend_info(deposit_leaf: &Script, reclaim_leaf: &Script) -> TaprootSpendInfo {
    TaprootBuilder::new()
        .add_leaf(1, deposit_leaf.to_owned())
        .and_then(|b| b.add_leaf(1, reclaim_leaf.to_owned()))
        .expect("two leaves at depth 1 make a complete tree")
        .finalize(SECP256K1, *NUMS_INTERNAL_KEY)
        .expect("two leaves at depth 1 make a complete tree")
}

/// The deposit output's scriptPubKey: P2TR(NUMS, tree of the two leaves).
pub fn deposit_output_script(deposit_leaf: &Script, reclaim_leaf: &Script) -> ScriptBuf {
    ScriptBuf::new_p2tr_tweaked(deposit_spend_info(deposit_leaf, reclaim_leaf).output_key())
}

/// Parses a deposit leaf.
pub fn parse_deposit_leaf(script: &Script) -> Result<DepositLeaf, DepositError> {
    let bytes = script.as_bytes();
    if !(DEPOSIT_SCRIPT_MIN_LEN..=DEPOSIT_SCRIPT_MAX_LEN).contains(&bytes.len()) {
        return Err(DepositError::DepositScriptLength { len: bytes.len() });
    }
    let (head, tail) = bytes.split_at(bytes.len() - DEPOSIT_TAIL_LEN);
    let shape = |why: String| Err(DepositError::DepositScriptShape { why });
    let key = match tail {
        [drop, push32, key @ .., checksig]
            if *drop == OP_DROP.to_u8()
                && *push32 == OP_PUSHBYTES_32.to_u8()
                && *checksig == OP_CHECKSIG.to_u8() =>
        {
            key
        }
        _ => {
            return shape(format!(
                "its last 35 bytes are {}, not OP_DROP OP_PUSHBYTES_32 <32-byte key> OP_CHECKSIG",
                hex::encode(tail)
            ))
        }
    };
    let data = push_data(head)?;
    if data.len() < DEPOSIT_DATA_MIN {
        return shape(format!(
            "it pushes {} bytes before OP_DROP; the max fee and a recipient take at least {DEPOSIT_DATA_MIN}",
            data.len()
        ));
    }
    let (fee, recipient) = data.split_at(8);
    let max_fee = Amount::from_sat(u64::from_be_bytes(
        fee.try_into().expect("split at 8 bytes"),
    ));
    let recipient = Principal::deserialize(recipient).map_err(DepositError::BadPrincipal)?;
    let signers_key = XOnlyPublicKey::from_slice(key).map_err(|_| DepositError::BadSignersKey {
        key: hex::encode(key),
    })?;
    let leaf = DepositLeaf {
        max_fee,
        recipient,
        signers_key,
    };
    let rebuilt = build_deposit_leaf(leaf.max_fee, &leaf.recipient, leaf.signers_key);
    same_bytes(Leaf::Deposit, script, &rebuilt)?;
    Ok(leaf)
}

/// The data of the single push that makes up `head`, refusing a push that is not minimal.
fn push_data(head: &[u8]) -> Result<&[u8], DepositError> {
    let shape = |why: String| DepositError::DepositScriptShape { why };
    let mismatch = |said: usize, got: usize| {
        shape(format!(
            "its first push says {said} bytes but {got} bytes come before OP_DROP"
        ))
    };
    let non_minimal = |len: usize, used| DepositError::NonMinimalPush {
        len,
        used,
        minimal: if len < 76 {
            "OP_PUSHBYTES_N"
        } else {
            "OP_PUSHDATA1"
        },
    };
    let (&op, rest) = head
        .split_first()
        .ok_or_else(|| shape("it is empty before OP_DROP".into()))?;
    if op == 0 {
        return Err(shape(
            "it starts with OP_0, not a push of the max fee and recipient".into(),
        ));
    }
    if op <= 75 {
        return if rest.len() == op as usize {
            Ok(rest)
        } else {
            Err(mismatch(op as usize, rest.len()))
        };
    }
    let (width, used) = match op {
        o if o == OP_PUSHDATA1.to_u8() => (1, "OP_PUSHDATA1"),
        o if o == OP_PUSHDATA2.to_u8() => (2, "OP_PUSHDATA2"),
        o if o == OP_PUSHDATA4.to_u8() => (4, "OP_PUSHDATA4"),
        o => {
            return Err(shape(format!(
                "it starts with opcode 0x{o:02x}, not a push of the max fee and recipient"
            )))
        }
    };
    if rest.len() < width {
        return Err(shape(format!("its {used} has no length")));
    }
    let (len, data) = rest.split_at(width);
    let mut le = [0u8; 4];
    le[..width].copy_from_slice(len);
    let said = u32::from_le_bytes(le) as usize;
    if data.len() != said {
        return Err(mismatch(said, data.len()));
    }
    if width != 1 || said < 76 {
        return Err(non_minimal(said, used));
    }
    Ok(data)
}

fn same_bytes(leaf: Leaf, given: &Script, rebuilt: &Script) -> Result<(), DepositError> {
    if given.as_bytes() == rebuilt.as_bytes() {
        return Ok(());
    }
    Err(DepositError::ScriptMismatch {
        leaf,
        given: hex::encode(given.as_bytes()),
        rebuilt: hex::encode(rebuilt.as_bytes()),
    })
}

/// A script number of at most 5 bytes (OP_CHECKSEQUENCEVERIFY's limit): little-endian,
/// sign in the top bit of the last byte. Minimality is checked by the caller.
fn script_num(bytes: &[u8]) -> i64 {
    let Some((&last, _)) = bytes.split_last() else {
        return 0;
    };
    let mut value: i64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        value |= i64::from(*b) << (8 * i);
    }
    if last & 0x80 != 0 {
        -(value & !(0x80_i64 << (8 * (bytes.len() - 1))))
    } else {
        value
    }
}

/// Parses a reclaim leaf.
pub fn parse_reclaim_leaf(script: &Script) -> Result<ReclaimLeaf, DepositError> {
    let shape = |why: String| Err(DepositError::ReclaimScriptShape { why });
    let mut instructions = script.instruction_indices();
    let lock = match instructions.next() {
        None => return shape("it is empty".into()),
        Some(Err(_)) => return shape("its first push runs past the end of the script".into()),
        Some(Ok((_, Instruction::PushBytes(push)))) => {
            if push.len() > 5 {
                return shape(format!(
                    "its lock time is a {}-byte number; OP_CHECKSEQUENCEVERIFY reads at most 5",
                    push.len()
                ));
            }
            script_num(push.as_bytes())
        }
        Some(Ok((_, Instruction::Op(op)))) => match op.classify(ClassifyContext::TapScript) {
            Class::PushNum(n) => i64::from(n),
            _ => return shape(format!("it starts with {op}, not a lock time")),
        },
    };
    let csv_at = match instructions.next() {
        Some(Ok((at, Instruction::Op(op)))) if op == OP_CSV => at,
        _ => return shape("its lock time is not followed by OP_CHECKSEQUENCEVERIFY".into()),
    };
    let lock_bytes = &script.as_bytes()[..csv_at];
    let minimal = Builder::new().push_int(lock).into_script();
    if lock_bytes != minimal.as_bytes() {
        return Err(DepositError::LockTimeNotMinimal {
            found: hex::encode(lock_bytes),
            minimal: hex::encode(minimal.as_bytes()),
        });
    }
    if lock < 0 {
        return Err(DepositError::LockTimeNegative { value: lock });
    }
    if lock & SEQUENCE_DISABLE_FLAG != 0 {
        return Err(DepositError::LockTimeDisabled { value: lock });
    }
    if lock & SEQUENCE_TYPE_FLAG != 0 {
        return Err(DepositError::LockTimeTimeBased { value: lock });
    }
    // BIP-68 counts only the low 16 bits; other bits are reserved and the rebuild below
    // refuses a leaf that sets them.
    let lock_time = (lock & SEQUENCE_MASK) as u16;
    if lock_time == 0 {
        return Err(DepositError::LockTimeZero);
    }
    let user_script = ScriptBuf::from_bytes(script.as_bytes()[csv_at + 1..].to_vec());
    if user_script.len() > MAX_USER_SCRIPT_LEN {
        return Err(DepositError::UserScriptTooLong {
            len: user_script.len(),
        });
    }
    // Bitcoin Core decodes a tapscript from its start: an OP_SUCCESSx before the first
    // undecodable byte makes the script succeed unconditionally, lock time or not.
    for instruction in instructions {
        match instruction {
            Err(_) => {
                return shape(
                    "its user script does not decode (a push runs past the end), so the \
                     depositor could never reclaim"
                        .into(),
                )
            }
            Ok((offset, Instruction::Op(op)))
                if op.classify(ClassifyContext::TapScript) == Class::SuccessOp =>
            {
                return Err(DepositError::OpSuccess {
                    opcode: op.to_u8(),
                    offset,
                })
            }
            Ok(_) => {}
        }
    }
    let leaf = ReclaimLeaf {
        lock_time,
        user_script,
    };
    let rebuilt = build_reclaim_leaf(leaf.lock_time, &leaf.user_script);
    same_bytes(Leaf::Reclaim, script, &rebuilt)?;
    Ok(leaf)
}

/// The checks that need no node: parse both leaves, rebuild them to the same bytes, the output
/// exists in `transaction` and pays P2TR(NUMS, tree of the two leaves), the recipient is on the
/// Stacks network matching `network`. In that order; the first refusal is returned.
pub fn validate_without_node(
    submission: &DepositSubmission,
    network: Network,
) -> Result<ValidatedDeposit, DepositError> {
    let actual = submission.transaction.compute_txid();
    if actual != submission.outpoint.txid {
        return Err(DepositError::TxidMismatch {
            claimed: submission.outpoint.txid,
            actual,
        });
    }
    let vout = submission.outpoint.vout;
    let output = usize::try_from(vout)
        .ok()
        .and_then(|i| submission.transaction.output.get(i))
        .ok_or(DepositError::OutputIndexOutOfRange {
            vout,
            outputs: submission.transaction.output.len(),
        })?;
    let deposit = parse_deposit_leaf(&submission.deposit_script)?;
    let reclaim = parse_reclaim_leaf(&submission.reclaim_script)?;
    let expected = deposit_output_script(&submission.deposit_script, &submission.reclaim_script);
    if output.script_pubkey != expected {
        return Err(DepositError::OutputMismatch {
            vout,
            found: output.script_pubkey.clone(),
            expected,
        });
    }
    let ours = StacksNetwork::for_bitcoin(network);
    // Parsing refused unknown versions, so the recipient has a network.
    let recipient_network = deposit.recipient.network();
    if recipient_network != Some(ours) {
        return Err(DepositError::WrongNetwork {
            recipient: deposit.recipient.to_string(),
            recipient_network: recipient_network.unwrap_or(StacksNetwork::Mainnet),
            network,
            expected: ours,
        });
    }
    Ok(ValidatedDeposit {
        outpoint: submission.outpoint,
        amount: output.value,
        deposit,
        reclaim,
        deposit_script: submission.deposit_script.clone(),
        reclaim_script: submission.reclaim_script.clone(),
    })
}

/// The signers' key in the deposit leaf is one of `known_keys` (the x-only aggregate keys of
/// our DKGs).
pub fn check_signers_key(
    deposit: &DepositLeaf,
    known_keys: &[XOnlyPublicKey],
) -> Result<(), DepositError> {
    if known_keys.contains(&deposit.signers_key) {
        Ok(())
    } else {
        Err(DepositError::UnknownSignersKey {
            key: deposit.signers_key,
        })
    }
}

/// The checks against the node: it is on `network`, and the output exists and is unspent
/// (mempool included) and not coinbase. Returns where the output stands.
pub async fn check_on_node(
    client: &dyn BitcoinClient,
    outpoint: &OutPoint,
    network: Network,
) -> Result<Confirmation, DepositError> {
    let info = client.get_blockchain_info().await?;
    if info.network != network {
        return Err(DepositError::NodeWrongNetwork {
            node: info.network,
            ours: network,
        });
    }
    let out =
        client
            .get_tx_out(outpoint, true)
            .await?
            .ok_or(DepositError::OutputMissingOrSpent {
                outpoint: *outpoint,
            })?;
    if out.coinbase {
        return Err(DepositError::Coinbase {
            outpoint: *outpoint,
        });
    }
    Ok(match out.confirmations {
        0 => Confirmation::Mempool,
        confirmations => Confirmation::Confirmed { confirmations },
    })
}

/// Every check: [`validate_without_node`], the signers' key is one of `known_keys` (the x-only
/// aggregate keys of our DKGs; before the node, so junk costs no RPC), then against the node
/// ([`check_on_node`]). Returns where the output stands.
pub async fn validate_with_node(
    client: &dyn BitcoinClient,
    submission: &DepositSubmission,
    network: Network,
    known_keys: &[XOnlyPublicKey],
) -> Result<(ValidatedDeposit, Confirmation), DepositError> {
    let validated = validate_without_node(submission, network)?;
    check_signers_key(&validated.deposit, known_keys)?;
    let confirmation = check_on_node(client, &validated.outpoint, network).await?;
    Ok((validated, confirmation))
}

/// Deposits built the way the wallet library builds them, for tests here and elsewhere.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use bitcoin::absolute::LockTime;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{Keypair, SecretKey};
    use bitcoin::transaction::Version;
    use bitcoin::{Block, BlockHash, FeeRate, Sequence, TxIn, TxOut, Witness};

    use super::*;
    use crate::chain::bitcoin::client::{
        BlockHeaderInfo, BlockchainInfo, MempoolAcceptance, MempoolEntry, NetworkInfo,
        TransactionInfo, TxOutInfo,
    };

    /// A key from a one-byte seed (1 to 255).
    pub fn x_only_key(seed: u8) -> XOnlyPublicKey {
        let secret = SecretKey::from_slice(&[seed; 32]).expect("a seed of 1 to 255 is a key");
        Keypair::from_secret_key(SECP256K1, &secret)
            .x_only_public_key()
            .0
    }

    /// A transaction whose output 1 is the deposit (output 0 is change), with its submission.
    pub fn submission(
        amount: Amount,
        deposit_script: ScriptBuf,
        reclaim_script: ScriptBuf,
    ) -> DepositSubmission {
        let script_pubkey = deposit_output_script(&deposit_script, &reclaim_script);
        let transaction = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array([7; 32]), 0),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::from_slice(&[[1u8; 64]]),
            }],
            output: vec![
                TxOut {
                    value: Amount::from_sat(12_345),
                    script_pubkey: ScriptBuf::new_p2tr(SECP256K1, x_only_key(9), None),
                },
                TxOut {
                    value: amount,
                    script_pubkey,
                },
            ],
        };
        DepositSubmission {
            outpoint: OutPoint::new(transaction.compute_txid(), 1),
            deposit_script,
            reclaim_script,
            transaction,
        }
    }

    /// A deposit as the wallet library builds it: `recipient`, signers' key `signers`, max fee,
    /// lock time, and the library's user script for the reclaim key.
    pub fn wallet_submission(
        amount: Amount,
        max_fee: Amount,
        recipient: &Principal,
        signers: XOnlyPublicKey,
        lock_time: u16,
    ) -> DepositSubmission {
        let deposit = build_deposit_leaf(max_fee, recipient, signers);
        let reclaim = build_reclaim_leaf(lock_time, &standard_user_script(x_only_key(8)));
        submission(amount, deposit, reclaim)
    }

    /// A node double for the deposit checks: it answers `getblockchaininfo` with `network`,
    /// `gettxout` with `txout` and `getrawtransaction` with `transaction` (or fails every call
    /// with `fail`); the other calls fail as unsupported.
    pub struct FakeNode {
        pub network: Network,
        pub txout: Option<TxOutInfo>,
        pub transaction: Option<TransactionInfo>,
        pub fail: Option<client::Error>,
    }

    impl FakeNode {
        /// A regtest node whose `gettxout` answers `txout`.
        pub fn with(txout: Option<TxOutInfo>) -> FakeNode {
            FakeNode {
                network: Network::Regtest,
                txout,
                transaction: None,
                fail: None,
            }
        }

        fn answer<T>(&self, value: T) -> client::Result<T> {
            match &self.fail {
                Some(e) => Err(e.clone()),
                None => Ok(value),
            }
        }
    }

    fn unsupported<T>(method: &'static str) -> client::Result<T> {
        Err(client::Error::new(
            method,
            client::ErrorKind::BadResponse,
            "FakeNode does not serve this call",
        ))
    }

    #[async_trait::async_trait]
    impl BitcoinClient for FakeNode {
        async fn get_best_block_hash(&self) -> client::Result<BlockHash> {
            unsupported("getbestblockhash")
        }
        async fn get_block_header(&self, _: &BlockHash) -> client::Result<Option<BlockHeaderInfo>> {
            unsupported("getblockheader")
        }
        async fn get_block(&self, _: &BlockHash) -> client::Result<Option<Block>> {
            unsupported("getblock")
        }
        async fn get_block_hash(&self, _: u64) -> client::Result<Option<BlockHash>> {
            unsupported("getblockhash")
        }
        async fn get_raw_transaction(
            &self,
            txid: &Txid,
            _: Option<&BlockHash>,
        ) -> client::Result<Option<TransactionInfo>> {
            let found = self
                .transaction
                .clone()
                .filter(|t| t.tx.compute_txid() == *txid);
            self.answer(found)
        }
        async fn get_tx_out(
            &self,
            _: &OutPoint,
            mempool: bool,
        ) -> client::Result<Option<TxOutInfo>> {
            assert!(mempool, "deposits in the mempool count");
            self.answer(self.txout.clone())
        }
        async fn estimate_smart_fee(&self, _: u16) -> client::Result<Option<FeeRate>> {
            unsupported("estimatesmartfee")
        }
        async fn get_tx_spending_prevout(&self, _: &OutPoint) -> client::Result<Option<Txid>> {
            unsupported("gettxspendingprevout")
        }
        async fn get_mempool_entry(&self, _: &Txid) -> client::Result<Option<MempoolEntry>> {
            unsupported("getmempoolentry")
        }
        async fn get_mempool_descendants(&self, _: &Txid) -> client::Result<Vec<Txid>> {
            unsupported("getmempooldescendants")
        }
        async fn send_raw_transaction(&self, _: &Transaction) -> client::Result<Txid> {
            unsupported("sendrawtransaction")
        }
        async fn test_mempool_accept(
            &self,
            _: &[Transaction],
        ) -> client::Result<Vec<MempoolAcceptance>> {
            unsupported("testmempoolaccept")
        }
        async fn get_blockchain_info(&self) -> client::Result<BlockchainInfo> {
            self.answer(BlockchainInfo {
                network: self.network,
                blocks: 100,
                best_block_hash: BlockHash::all_zeros(),
                initial_block_download: false,
                pruned: false,
            })
        }
        async fn get_network_info(&self) -> client::Result<NetworkInfo> {
            unsupported("getnetworkinfo")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::chain::bitcoin::client::TxOutInfo;
    use bitcoin::hashes::{sha256, Hash};
    use bitcoin::BlockHash;

    fn testnet_recipient() -> Principal {
        Principal::standard(26, [0x11; 20]).unwrap()
    }

    fn good() -> DepositSubmission {
        wallet_submission(
            Amount::from_sat(100_000),
            Amount::from_sat(5_000),
            &testnet_recipient(),
            x_only_key(1),
            144,
        )
    }

    /// A submission whose deposit or reclaim script is replaced by raw bytes, with the output
    /// rebuilt to match, so only the script rule under test can refuse it.
    fn with_scripts(deposit: Vec<u8>, reclaim: Vec<u8>) -> DepositSubmission {
        submission(
            Amount::from_sat(100_000),
            ScriptBuf::from_bytes(deposit),
            ScriptBuf::from_bytes(reclaim),
        )
    }

    fn good_deposit_bytes() -> Vec<u8> {
        good().deposit_script.into_bytes()
    }

    fn good_reclaim_bytes() -> Vec<u8> {
        good().reclaim_script.into_bytes()
    }

    fn refusal(s: &DepositSubmission) -> DepositError {
        validate_without_node(s, Network::Regtest).unwrap_err()
    }

    fn reclaim_with_lock(lock: &[u8]) -> Vec<u8> {
        let mut bytes = lock.to_vec();
        bytes.push(OP_CSV.to_u8());
        bytes.extend_from_slice(standard_user_script(x_only_key(8)).as_bytes());
        bytes
    }

    #[test]
    fn the_nums_key_is_bip341s_h() {
        // H = lift_x(SHA256(uncompressed G)).
        let g = hex::decode(
            "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
             483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
        )
        .unwrap();
        assert_eq!(
            sha256::Hash::hash(&g).to_byte_array(),
            NUMS_INTERNAL_KEY_BYTES
        );
        assert_eq!(NUMS_INTERNAL_KEY.serialize(), NUMS_INTERNAL_KEY_BYTES);
    }

    #[test]
    fn a_wallet_deposit_is_accepted_and_round_trips() {
        let s = good();
        assert_eq!(
            s.deposit_script.len(),
            66,
            "CHAIN.md: N = 30, script 66 bytes"
        );
        assert_eq!(s.deposit_script.as_bytes()[0], 30);
        let v = validate_without_node(&s, Network::Regtest).unwrap();
        assert_eq!(v.amount, Amount::from_sat(100_000));
        assert_eq!(v.deposit.max_fee, Amount::from_sat(5_000));
        assert_eq!(v.deposit.recipient, testnet_recipient());
        assert_eq!(v.deposit.signers_key, x_only_key(1));
        assert_eq!(v.reclaim.lock_time, 144);
        assert_eq!(v.reclaim.user_script, standard_user_script(x_only_key(8)));
        // Every test network maps to Stacks testnet.
        for n in [Network::Testnet, Network::Testnet4, Network::Signet] {
            validate_without_node(&s, n).unwrap();
        }
    }

    #[test]
    fn contract_recipients_and_every_push_size_round_trip() {
        for (name_len, push) in [(1, 32u8), (45, 76), (128, 159)] {
            let recipient = Principal::contract(26, [0x22; 20], "c".repeat(name_len)).unwrap();
            let deposit = build_deposit_leaf(Amount::from_sat(u64::MAX), &recipient, x_only_key(2));
            let b = deposit.as_bytes();
            let n = 8 + 23 + name_len;
            assert_eq!(n, push as usize);
            if n < 76 {
                assert_eq!(b[0] as usize, n);
            } else {
                assert_eq!((b[0], b[1] as usize), (OP_PUSHDATA1.to_u8(), n));
            }
            let leaf = parse_deposit_leaf(&deposit).unwrap();
            assert_eq!(leaf.recipient, recipient);
            assert_eq!(leaf.max_fee, Amount::from_sat(u64::MAX));
        }
        for lock in [1u16, 16, 17, 127, 128, 255, 256, 32767, 32768, 65535] {
            let reclaim = build_reclaim_leaf(lock, &standard_user_script(x_only_key(3)));
            assert_eq!(
                parse_reclaim_leaf(&reclaim).unwrap().lock_time,
                lock,
                "{lock}"
            );
        }
        // The empty user script is the depositor's business, not ours.
        let bare = build_reclaim_leaf(10, Script::new());
        assert!(parse_reclaim_leaf(&bare).unwrap().user_script.is_empty());
    }

    #[test]
    fn txid_mismatch() {
        let mut s = good();
        s.transaction.lock_time = bitcoin::absolute::LockTime::from_consensus(1);
        assert_eq!(refusal(&s).rule(), "txid_mismatch");
    }

    #[test]
    fn output_index_out_of_range() {
        let mut s = good();
        s.outpoint.vout = 2;
        let err = refusal(&s);
        assert_eq!(err.rule(), "output_index_out_of_range");
        assert!(err.to_string().contains("has 2 outputs"), "{err}");
    }

    #[test]
    fn deposit_script_length() {
        let mut short = good_deposit_bytes();
        short.remove(5);
        short[0] = 29;
        assert_eq!(
            refusal(&with_scripts(short, good_reclaim_bytes())).rule(),
            "deposit_script_length"
        );
        let mut long = vec![OP_PUSHDATA1.to_u8(), 160];
        long.extend_from_slice(&[0; 160]);
        long.extend_from_slice(&good_deposit_bytes()[31..]);
        assert_eq!(long.len(), DEPOSIT_SCRIPT_MAX_LEN + 1);
        assert_eq!(
            refusal(&with_scripts(long, good_reclaim_bytes())).rule(),
            "deposit_script_length"
        );
    }

    #[test]
    fn deposit_script_shape() {
        // OP_CHECKSIGVERIFY instead of OP_CHECKSIG.
        let mut tail = good_deposit_bytes();
        *tail.last_mut().unwrap() = 0xad;
        let err = refusal(&with_scripts(tail, good_reclaim_bytes()));
        assert_eq!(err.rule(), "deposit_script_shape");
        // The push says 31 bytes where 30 come.
        let mut push = good_deposit_bytes();
        push[0] = 31;
        assert_eq!(
            refusal(&with_scripts(push, good_reclaim_bytes())).rule(),
            "deposit_script_shape"
        );
    }

    #[test]
    fn non_minimal_push() {
        let good = good_deposit_bytes();
        let data = &good[1..31];
        for prefix in [
            vec![OP_PUSHDATA1.to_u8(), 30],
            vec![OP_PUSHDATA2.to_u8(), 30, 0],
            vec![OP_PUSHDATA4.to_u8(), 30, 0, 0, 0],
        ] {
            let mut script = prefix;
            script.extend_from_slice(data);
            script.extend_from_slice(&good[31..]);
            let err = refusal(&with_scripts(script, good_reclaim_bytes()));
            assert_eq!(err.rule(), "non_minimal_push", "{err}");
        }
        // 76 bytes or more: OP_PUSHDATA1 is minimal, OP_PUSHDATA2 is not.
        let recipient = Principal::contract(26, [0x22; 20], "c".repeat(60)).unwrap();
        let long = build_deposit_leaf(Amount::ZERO, &recipient, x_only_key(1)).into_bytes();
        let mut script = vec![OP_PUSHDATA2.to_u8(), long[1], 0];
        script.extend_from_slice(&long[2..]);
        let err = refusal(&with_scripts(script, good_reclaim_bytes()));
        assert_eq!(err.rule(), "non_minimal_push");
        assert!(err.to_string().contains("OP_PUSHDATA1"), "{err}");
    }

    #[test]
    fn bad_signers_key() {
        let mut script = good_deposit_bytes();
        let at = script.len() - 33;
        script[at..at + 32].copy_from_slice(&[0xff; 32]);
        assert_eq!(
            refusal(&with_scripts(script, good_reclaim_bytes())).rule(),
            "bad_signers_key"
        );
    }

    #[test]
    fn bad_principal() {
        // Unknown address version 31, a 0x07 type byte, a contract name starting with a digit.
        let mut version = good_deposit_bytes();
        version[10] = 31;
        let mut kind = good_deposit_bytes();
        kind[9] = 0x07;
        let mut name = vec![8 + 23 + 5];
        name.extend_from_slice(&[0; 8]);
        name.extend_from_slice(&[0x06, 26]);
        name.extend_from_slice(&[0x33; 20]);
        name.push(5);
        name.extend_from_slice(b"1abcd");
        name.extend_from_slice(&good_deposit_bytes()[31..]);
        for script in [version, kind, name] {
            let err = refusal(&with_scripts(script, good_reclaim_bytes()));
            assert_eq!(err.rule(), "bad_principal", "{err}");
        }
    }

    #[test]
    fn lock_time_not_minimal() {
        // 5 as a one-byte push (OP_5 is minimal), 10 in two bytes, 144 in three (two are
        // minimal: 0x90 needs a sign byte), 0 as a byte (OP_0 is minimal), OP_PUSHDATA1.
        for lock in [
            &[0x01, 0x05][..],
            &[0x02, 0x0a, 0x00],
            &[0x03, 0x90, 0x00, 0x00],
            &[0x01, 0x00],
            &[OP_PUSHDATA1.to_u8(), 0x01, 0x90],
        ] {
            let err = refusal(&with_scripts(good_deposit_bytes(), reclaim_with_lock(lock)));
            assert_eq!(err.rule(), "lock_time_not_minimal", "{lock:?}: {err}");
        }
    }

    #[test]
    fn lock_time_negative() {
        for lock in [&[0x4f][..], &[0x01, 0x85]] {
            let err = refusal(&with_scripts(good_deposit_bytes(), reclaim_with_lock(lock)));
            assert_eq!(err.rule(), "lock_time_negative", "{err}");
        }
    }

    #[test]
    fn lock_time_time_based() {
        // 10 with bit 22 set: 0x40000a.
        let err = refusal(&with_scripts(
            good_deposit_bytes(),
            reclaim_with_lock(&[0x03, 0x0a, 0x00, 0x40]),
        ));
        assert_eq!(err.rule(), "lock_time_time_based");
    }

    #[test]
    fn lock_time_disabled() {
        // 10 with bit 31 set needs a fifth byte to stay positive.
        let err = refusal(&with_scripts(
            good_deposit_bytes(),
            reclaim_with_lock(&[0x05, 0x0a, 0x00, 0x00, 0x80, 0x00]),
        ));
        assert_eq!(err.rule(), "lock_time_disabled");
    }

    #[test]
    fn lock_time_zero() {
        let err = refusal(&with_scripts(
            good_deposit_bytes(),
            reclaim_with_lock(&[0x00]),
        ));
        assert_eq!(err.rule(), "lock_time_zero");
    }

    #[test]
    fn user_script_too_long() {
        let ok = build_reclaim_leaf(10, &ScriptBuf::from_bytes(vec![0x61; MAX_USER_SCRIPT_LEN]));
        parse_reclaim_leaf(&ok).unwrap();
        let long = build_reclaim_leaf(
            10,
            &ScriptBuf::from_bytes(vec![0x61; MAX_USER_SCRIPT_LEN + 1]),
        );
        let err = refusal(&with_scripts(good_deposit_bytes(), long.into_bytes()));
        assert_eq!(err.rule(), "user_script_too_long");
    }

    #[test]
    fn op_success() {
        // OP_RESERVED (0x50) is OP_SUCCESS80 in tapscript; 0xbb the first of the high range.
        for op in [0x50u8, 0x7e, 0xbb, 0xfe] {
            let mut user = standard_user_script(x_only_key(8)).into_bytes();
            user.push(op);
            let reclaim = build_reclaim_leaf(10, &ScriptBuf::from_bytes(user));
            let err = refusal(&with_scripts(good_deposit_bytes(), reclaim.into_bytes()));
            assert_eq!(err.rule(), "op_success", "0x{op:02x}");
        }
        // Inside a push it is data, not an opcode.
        let user = Builder::new()
            .push_slice([0x50u8, 0xbb])
            .push_opcode(OP_DROP)
            .into_script();
        parse_reclaim_leaf(&build_reclaim_leaf(10, &user)).unwrap();
    }

    #[test]
    fn reclaim_script_shape() {
        let no_csv = {
            let mut b = good_reclaim_bytes();
            assert_eq!(b[..4], [0x02, 0x90, 0x00, OP_CSV.to_u8()], "lock time 144");
            b[3] = OP_CHECKSIG.to_u8();
            b
        };
        let truncated = {
            let mut b = good_reclaim_bytes();
            b.extend_from_slice(&[0x05, 0x01]);
            b
        };
        for reclaim in [vec![], no_csv, truncated, vec![0x76, OP_CSV.to_u8()]] {
            let err = refusal(&with_scripts(good_deposit_bytes(), reclaim));
            assert_eq!(err.rule(), "reclaim_script_shape", "{err}");
        }
    }

    #[test]
    fn script_mismatch() {
        // 5 blocks with reserved bit 16 set (0x010005): minimal, block-based, consensus reads 5
        // blocks; rebuilt from lock time 5 the leaf, and so its hash, would differ.
        let err = refusal(&with_scripts(
            good_deposit_bytes(),
            reclaim_with_lock(&[0x03, 0x05, 0x00, 0x01]),
        ));
        assert_eq!(err.rule(), "script_mismatch");
        assert!(err.to_string().contains("reclaim script"), "{err}");
    }

    #[test]
    fn output_mismatch() {
        let mut s = good();
        // The deposit output pays the tree with another reclaim leaf.
        s.transaction.output[1].script_pubkey = deposit_output_script(
            &s.deposit_script,
            &build_reclaim_leaf(145, &standard_user_script(x_only_key(8))),
        );
        s.outpoint.txid = s.transaction.compute_txid();
        assert_eq!(refusal(&s).rule(), "output_mismatch");
        // Or the scripts point at the change output.
        let mut s = good();
        s.outpoint.vout = 0;
        assert_eq!(refusal(&s).rule(), "output_mismatch");
    }

    #[test]
    fn wrong_network() {
        let amount = Amount::from_sat(100_000);
        let fee = Amount::from_sat(1_000);
        for (version, network, refused) in [
            (22, Network::Regtest, true),
            (20, Network::Testnet, true),
            (26, Network::Bitcoin, true),
            (21, Network::Bitcoin, true),
            (22, Network::Bitcoin, false),
            (20, Network::Bitcoin, false),
            (21, Network::Signet, false),
        ] {
            let recipient = Principal::standard(version, [3; 20]).unwrap();
            let s = wallet_submission(amount, fee, &recipient, x_only_key(1), 10);
            let result = validate_without_node(&s, network);
            assert_eq!(
                result.as_ref().err().map(|e| e.rule()),
                refused.then_some("wrong_network"),
                "version {version} on {network}"
            );
        }
    }

    #[test]
    fn unknown_signers_key() {
        let v = validate_without_node(&good(), Network::Regtest).unwrap();
        check_signers_key(&v.deposit, &[x_only_key(4), x_only_key(1)]).unwrap();
        let err = check_signers_key(&v.deposit, &[x_only_key(4)]).unwrap_err();
        assert_eq!(err.rule(), "unknown_signers_key");
        assert_eq!(
            check_signers_key(&v.deposit, &[]).unwrap_err().rule(),
            "unknown_signers_key"
        );
    }

    #[test]
    fn the_signers_can_spend_the_deposit_leaf() {
        // The witness CHAIN.md describes, checked by Bitcoin Core's verifier: proof that the
        // output, the tree and the NUMS key fit together.
        use bitcoin::secp256k1::{Keypair, Message, SecretKey};
        use bitcoin::sighash::{Prevouts, SighashCache};
        use bitcoin::taproot::{LeafVersion, TapLeafHash};
        use bitcoin::TapSighashType;
        let s = good();
        let prevout = s.transaction.output[1].clone();
        let mut spend = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn {
                previous_output: s.outpoint,
                ..Default::default()
            }],
            output: vec![bitcoin::TxOut {
                value: Amount::from_sat(90_000),
                script_pubkey: ScriptBuf::new_p2tr(SECP256K1, x_only_key(5), None),
            }],
        };
        let leaf_hash = TapLeafHash::from_script(&s.deposit_script, LeafVersion::TapScript);
        let sighash = SighashCache::new(&spend)
            .taproot_script_spend_signature_hash(
                0,
                &Prevouts::All(std::slice::from_ref(&prevout)),
                leaf_hash,
                TapSighashType::All,
            )
            .unwrap();
        let keypair =
            Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[1; 32]).unwrap());
        let sig = SECP256K1.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &keypair);
        let control = deposit_spend_info(&s.deposit_script, &s.reclaim_script)
            .control_block(&(s.deposit_script.clone(), LeafVersion::TapScript))
            .unwrap();
        let mut sig_bytes = sig.serialize().to_vec();
        sig_bytes.push(TapSighashType::All as u8);
        spend.input[0].witness = bitcoin::Witness::from_slice(&[
            sig_bytes,
            s.deposit_script.to_bytes(),
            control.serialize(),
        ]);
        let raw = bitcoin::consensus::serialize(&spend);
        let script = prevout.script_pubkey.as_bytes();
        let utxo = bitcoinconsensus::Utxo {
            script_pubkey: script.as_ptr(),
            script_pubkey_len: script.len() as u32,
            value: prevout.value.to_sat() as i64,
        };
        let verify = |raw: &[u8]| {
            bitcoinconsensus::verify_with_flags(
                script,
                prevout.value.to_sat(),
                raw,
                Some(std::slice::from_ref(&utxo)),
                0,
                bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT,
            )
        };
        verify(&raw).unwrap();
        // And the verifier does check it: a signature by another key fails.
        let other = Keypair::from_secret_key(SECP256K1, &SecretKey::from_slice(&[2; 32]).unwrap());
        let bad = SECP256K1.sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &other);
        let mut bad_bytes = bad.serialize().to_vec();
        bad_bytes.push(TapSighashType::All as u8);
        spend.input[0].witness = bitcoin::Witness::from_slice(&[
            bad_bytes,
            s.deposit_script.to_bytes(),
            control.serialize(),
        ]);
        assert!(verify(&bitcoin::consensus::serialize(&spend)).is_err());
    }

    fn out(confirmations: u64, coinbase: bool) -> TxOutInfo {
        TxOutInfo {
            best_block: BlockHash::all_zeros(),
            confirmations,
            value: Amount::from_sat(100_000),
            script_pubkey: good().transaction.output[1].script_pubkey.clone(),
            coinbase,
        }
    }

    async fn with_node(node: &FakeNode) -> Result<Confirmation, DepositError> {
        validate_with_node(node, &good(), Network::Regtest, &[x_only_key(1)])
            .await
            .map(|(_, c)| c)
    }

    #[tokio::test]
    async fn node_checks() {
        assert_eq!(
            with_node(&FakeNode::with(Some(out(3, false)))).await,
            Ok(Confirmation::Confirmed { confirmations: 3 })
        );
        assert_eq!(
            with_node(&FakeNode::with(Some(out(0, false)))).await,
            Ok(Confirmation::Mempool)
        );
        let err = with_node(&FakeNode::with(None)).await.unwrap_err();
        assert_eq!(err.rule(), "output_missing_or_spent");
        let err = with_node(&FakeNode::with(Some(out(101, true))))
            .await
            .unwrap_err();
        assert_eq!(err.rule(), "coinbase");
        let mut testnet = FakeNode::with(Some(out(3, false)));
        testnet.network = Network::Testnet;
        let err = with_node(&testnet).await.unwrap_err();
        assert_eq!(err.rule(), "node_wrong_network");
        assert!(err.is_signer_side());
        // The key is checked before the node is asked.
        let err = validate_with_node(
            &FakeNode::with(None),
            &good(),
            Network::Regtest,
            &[x_only_key(2)],
        )
        .await
        .unwrap_err();
        assert_eq!(err.rule(), "unknown_signers_key");
    }

    #[tokio::test]
    async fn a_node_failure_is_not_the_depositors_fault() {
        let mut down = FakeNode::with(Some(out(3, false)));
        down.fail = Some(client::Error::new(
            "getblockchaininfo",
            client::ErrorKind::Unreachable,
            "connection refused",
        ));
        let err = with_node(&down).await.unwrap_err();
        assert_eq!(err.rule(), "node_error");
        assert!(err.is_signer_side());
        let text = err.to_string();
        assert!(
            text.contains("connection refused") && text.contains("not the depositor's fault"),
            "{text}"
        );
        assert!(!refusal(&{
            let mut s = good();
            s.outpoint.vout = 9;
            s
        })
        .is_signer_side());
    }
}
