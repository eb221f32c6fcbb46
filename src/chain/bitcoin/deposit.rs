//! Deposit scripts (CHAIN.md section 1): parse, build and validate the deposit leaf, the reclaim
//! leaf and the P2TR output they lock, with one error per rule, then the checks against the
//! signer's own bitcoind. Used by deposit intake (`api`), `deposit inspect` and the observer.
//!
//! INTERFACE SKELETON: the bodies arrive with the deposit-scripts work; the names and signatures
//! below are what the intake API and the CLI call.

use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{Amount, Network, OutPoint, Script, ScriptBuf, Transaction};

use super::client::BitcoinClient;

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

/// One error per rule; `rule()` is its stable machine name (for JSON and exit codes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DepositError {
    #[error("placeholder: {0}")]
    Placeholder(String),
}

impl DepositError {
    /// Stable machine-readable name of the rule, e.g. `non_minimal_push`.
    pub fn rule(&self) -> &'static str {
        "placeholder"
    }
}

/// The checks that need no node: parse both leaves, rebuild them to the same bytes, the output
/// exists in `transaction` and pays P2TR(NUMS, tree of the two leaves), the recipient is on the
/// Stacks network matching `network`.
pub fn validate_without_node(
    submission: &DepositSubmission,
    network: Network,
) -> Result<ValidatedDeposit, DepositError> {
    let _ = (submission, network);
    Err(DepositError::Placeholder("not implemented yet".into()))
}

/// Parses a deposit leaf.
pub fn parse_deposit_leaf(script: &Script) -> Result<DepositLeaf, DepositError> {
    let _ = script;
    Err(DepositError::Placeholder("not implemented yet".into()))
}

/// Parses a reclaim leaf.
pub fn parse_reclaim_leaf(script: &Script) -> Result<ReclaimLeaf, DepositError> {
    let _ = script;
    Err(DepositError::Placeholder("not implemented yet".into()))
}

/// Every check: [`validate_without_node`], then against the node (the output exists and is
/// unspent, not coinbase, on the node's network), and the signers' key is one of `known_keys`
/// (the x-only aggregate keys of our DKGs). Returns where the output stands.
pub async fn validate_with_node(
    client: &dyn BitcoinClient,
    submission: &DepositSubmission,
    network: Network,
    known_keys: &[XOnlyPublicKey],
) -> Result<(ValidatedDeposit, Confirmation), DepositError> {
    let _ = (client, submission, network, known_keys);
    Err(DepositError::Placeholder("not implemented yet".into()))
}
