//! What the signer asks of a Bitcoin node: the [`BitcoinClient`] trait (the calls of CHAIN.md
//! section 5), its answers as rust-bitcoin types, and one error type that says which call failed
//! and what the operator can do. [`super::rpc::BitcoindRpc`] implements it over bitcoind's
//! JSON-RPC; the devnet's regtest node serves the same RPC, so the same client talks to both.

use async_trait::async_trait;
use bitcoin::{Amount, Block, BlockHash, FeeRate, Network, OutPoint, ScriptBuf, Transaction, Txid};

/// A block header as the node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeaderInfo {
    pub hash: BlockHash,
    pub height: u64,
    /// None for the genesis block.
    pub previous: Option<BlockHash>,
    /// Confirmations on the node's best chain; -1 when the block is not on it (a stale fork).
    pub confirmations: i64,
    pub time: u32,
}

/// An unspent output as `gettxout` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxOutInfo {
    /// The best block the answer is relative to.
    pub best_block: BlockHash,
    /// 0 for an output only in the mempool.
    pub confirmations: u64,
    pub value: Amount,
    pub script_pubkey: ScriptBuf,
    pub coinbase: bool,
}

/// A transaction and where it was found (`getrawtransaction` with a block hash, or the mempool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionInfo {
    pub tx: Transaction,
    /// The block it was found in; None when it is in the mempool.
    pub block_hash: Option<BlockHash>,
    pub confirmations: u64,
}

/// A mempool entry (`getmempoolentry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolEntry {
    pub vsize: u64,
    /// The transaction's own fee.
    pub fee: Amount,
    /// Fee of the transaction and its in-mempool ancestors.
    pub ancestor_fee: Amount,
    pub ancestor_vsize: u64,
    pub descendant_fee: Amount,
    pub descendant_vsize: u64,
    pub height: u64,
    pub bip125_replaceable: bool,
}

/// One transaction's verdict in `testmempoolaccept`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolAcceptance {
    pub txid: Txid,
    pub allowed: bool,
    /// bitcoind's reject reason when not allowed (e.g. `min relay fee not met`).
    pub reject_reason: Option<String>,
    pub vsize: Option<u64>,
    pub fee: Option<Amount>,
}

/// `getblockchaininfo`, the fields the signer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockchainInfo {
    pub network: Network,
    pub blocks: u64,
    pub best_block_hash: BlockHash,
    pub initial_block_download: bool,
    pub pruned: bool,
}

/// `getnetworkinfo`, the fields the signer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInfo {
    /// e.g. 280000 for v28.0.0.
    pub version: u64,
    pub subversion: String,
    pub relay_fee: FeeRate,
    pub incremental_fee: FeeRate,
}

/// What went wrong talking to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The node could not be reached (connection refused, DNS, timeout): is bitcoind running,
    /// and is `[bitcoin] rpc_url` right?
    Unreachable,
    /// 401/403: wrong user/password or a stale cookie.
    Unauthorized,
    /// bitcoind answered with an RPC error (code and message as it sent them).
    Rpc { code: i64, message: String },
    /// The answer did not parse as what the call returns.
    BadResponse,
    /// The node is on another network than the config says.
    WrongNetwork,
}

/// An error from one call to the node: which call, and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bitcoind {method}: {detail}")]
pub struct Error {
    pub method: &'static str,
    pub kind: ErrorKind,
    pub detail: String,
}

impl Error {
    pub fn new(method: &'static str, kind: ErrorKind, detail: impl Into<String>) -> Error {
        Error {
            method,
            kind,
            detail: detail.into(),
        }
    }

    /// bitcoind's RPC error code, if it sent one.
    pub fn rpc_code(&self) -> Option<i64> {
        match &self.kind {
            ErrorKind::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Worth retrying: the node was unreachable, or it is still warming up (-28).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Unreachable) || self.rpc_code() == Some(RPC_IN_WARMUP)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// bitcoind's RPC error codes the signer tells apart (src/rpc/protocol.h).
pub const RPC_MISC_ERROR: i64 = -1;
pub const RPC_TYPE_ERROR: i64 = -3;
pub const RPC_INVALID_ADDRESS_OR_KEY: i64 = -5;
pub const RPC_INVALID_PARAMETER: i64 = -8;
pub const RPC_DESERIALIZATION_ERROR: i64 = -22;
pub const RPC_VERIFY_ERROR: i64 = -25;
pub const RPC_VERIFY_REJECTED: i64 = -26;
pub const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
pub const RPC_IN_WARMUP: i64 = -28;
pub const RPC_METHOD_NOT_FOUND: i64 = -32601;
pub const RPC_WALLET_INSUFFICIENT_FUNDS: i64 = -6;

/// The node calls the signer makes (CHAIN.md section 5). "Not found" (-5) is `Ok(None)`; every
/// other failure is an [`Error`].
#[async_trait]
pub trait BitcoinClient: Send + Sync {
    async fn get_best_block_hash(&self) -> Result<BlockHash>;

    async fn get_block_header(&self, hash: &BlockHash) -> Result<Option<BlockHeaderInfo>>;

    /// The whole block (`getblock` verbosity 0, decoded with rust-bitcoin).
    async fn get_block(&self, hash: &BlockHash) -> Result<Option<Block>>;

    /// The hash of the best chain's block at `height`; None above the tip.
    async fn get_block_hash(&self, height: u64) -> Result<Option<BlockHash>>;

    /// A transaction in the mempool or, with `block`, in that block (no txindex needed).
    async fn get_raw_transaction(
        &self,
        txid: &Txid,
        block: Option<&BlockHash>,
    ) -> Result<Option<TransactionInfo>>;

    /// An unspent output; with `include_mempool`, outputs of mempool transactions count and
    /// outputs spent in the mempool do not.
    async fn get_tx_out(
        &self,
        outpoint: &OutPoint,
        include_mempool: bool,
    ) -> Result<Option<TxOutInfo>>;

    /// The fee rate for confirmation within `conf_target` blocks; None when the node has no
    /// estimate yet.
    async fn estimate_smart_fee(&self, conf_target: u16) -> Result<Option<FeeRate>>;

    /// The mempool transaction spending `outpoint`, if any.
    async fn get_tx_spending_prevout(&self, outpoint: &OutPoint) -> Result<Option<Txid>>;

    async fn get_mempool_entry(&self, txid: &Txid) -> Result<Option<MempoolEntry>>;

    /// In-mempool descendants of `txid` (empty when it has none or is not in the mempool).
    async fn get_mempool_descendants(&self, txid: &Txid) -> Result<Vec<Txid>>;

    async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid>;

    async fn test_mempool_accept(&self, txs: &[Transaction]) -> Result<Vec<MempoolAcceptance>>;

    async fn get_blockchain_info(&self) -> Result<BlockchainInfo>;

    async fn get_network_info(&self) -> Result<NetworkInfo>;
}
