//! An in-process regtest Bitcoin node behind bitcoind's JSON-RPC (bitcoind itself cannot be
//! installed on our machines): blocks on demand, a UTXO set, a mempool with bitcoind's policy,
//! every input checked by Bitcoin Core's script verifier, reorgs through `invalidateblock` /
//! `reconsiderblock`, and a small wallet to fund devnet depositors. The signer's RPC client talks
//! to it as to a real bitcoind ≥ 25; tests and the devnet also drive it through [`RegtestNode`].
//!
//! - [`chain`]: blocks, the best chain, the UTXO set, reorgs, block building;
//! - [`mempool`]: acceptance policy, BIP-125, package limits, block assembly;
//! - [`verify`]: transaction checks shared by both, and the script verifier;
//! - [`wallet`]: in-memory keys, P2WPKH / P2TR, signing;
//! - [`rpc`]: the HTTP JSON-RPC server; [`json`]: bitcoind's JSON shapes.

pub mod chain;
pub mod json;
pub mod mempool;
pub mod rpc;
pub mod verify;
pub mod wallet;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::{
    absolute, transaction, Address, Amount, BlockHash, FeeRate, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxOut, Txid, Witness,
};

use crate::chain::bitcoin::client::{RPC_MISC_ERROR, RPC_WALLET_INSUFFICIENT_FUNDS};
use chain::{BlockError, Chain};
use mempool::{AcceptOptions, Mempool};
use wallet::Wallet;

pub use mempool::Accepted;
pub use rpc::{RpcError, SET_FEE_RATE_METHOD};
pub use verify::{Coin, Reject};
pub use wallet::AddressKind;

/// bitcoind's default `-minrelaytxfee` and `-incrementalrelayfee`: 1 sat/vB.
pub const MIN_RELAY_FEE: FeeRate = FeeRate::from_sat_per_kwu(250);
pub const INCREMENTAL_RELAY_FEE: FeeRate = FeeRate::from_sat_per_kwu(250);
/// `sendrawtransaction`'s and `testmempoolaccept`'s default `maxfeerate`: 0.10 BTC/kvB.
pub const DEFAULT_MAX_FEE_RATE: FeeRate = FeeRate::from_sat_per_kwu(2_500_000);
/// Bodies larger than this are refused (413) before they are parsed.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The whole node: chain, mempool, wallet and settings. Reached through [`RegtestNode::with_state`]
/// or the RPC server; every operation runs under one lock.
pub struct NodeState {
    pub chain: Chain,
    pub mempool: Mempool,
    pub wallet: Wallet,
    /// What `estimatesmartfee` answers; None: "Insufficient data", as a fresh bitcoind says.
    pub fee_rate: Option<FeeRate>,
    pub full_rbf: bool,
}

/// A wallet output and how deep it is.
#[derive(Clone, Debug)]
pub struct WalletCoin {
    pub outpoint: OutPoint,
    pub coin: Coin,
    /// 0 for an output of a mempool transaction.
    pub confirmations: u32,
    /// Confirmed, or the output of a mempool transaction that spends only wallet coins (the
    /// wallet's own change): bitcoind's "trusted", which it spends and counts in its balance.
    pub safe: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl NodeState {
    pub fn new(fee_rate: Option<FeeRate>, full_rbf: bool) -> NodeState {
        NodeState {
            chain: Chain::new(),
            mempool: Mempool::default(),
            wallet: Wallet::default(),
            fee_rate,
            full_rbf,
        }
    }

    fn accept_options(&self, test_only: bool, max_fee_rate: Option<FeeRate>) -> AcceptOptions {
        AcceptOptions {
            test_only,
            bypass_limits: false,
            max_fee_rate,
            full_rbf: self.full_rbf,
            min_relay_fee: MIN_RELAY_FEE,
            incremental_fee: INCREMENTAL_RELAY_FEE,
            now: now_secs(),
        }
    }

    /// `sendrawtransaction`: refused when already confirmed (-27); a transaction already in the
    /// mempool is answered with its txid, as bitcoind does.
    pub fn submit(
        &mut self,
        tx: &Transaction,
        max_fee_rate: Option<FeeRate>,
    ) -> Result<Txid, Reject> {
        let txid = tx.compute_txid();
        if (0..tx.output.len() as u32).any(|v| self.chain.utxo(&OutPoint::new(txid, v)).is_some()) {
            return Err(Reject::already_in_chain());
        }
        if self.mempool.contains(&txid) {
            return Ok(txid);
        }
        let opts = self.accept_options(false, max_fee_rate);
        let accepted = self.mempool.accept(&self.chain, tx, opts)?;
        if !accepted.replaced.is_empty() {
            tracing::debug!(%txid, replaced = accepted.replaced.len(), "regtest: replacement accepted");
        }
        Ok(txid)
    }

    /// `testmempoolaccept` for one transaction.
    pub fn test_accept(
        &self,
        tx: &Transaction,
        max_fee_rate: Option<FeeRate>,
    ) -> Result<Accepted, Reject> {
        self.mempool
            .check(&self.chain, tx, self.accept_options(true, max_fee_rate))
    }

    /// `testmempoolaccept` for a package: each transaction is checked with the earlier ones
    /// accepted (so a child may spend its parent), nothing changes.
    pub fn test_accept_package(
        &self,
        txs: &[Transaction],
        max_fee_rate: Option<FeeRate>,
    ) -> Vec<Result<Accepted, Reject>> {
        let mut scratch = self.mempool.clone();
        let mut opts = self.accept_options(false, max_fee_rate);
        opts.test_only = false;
        txs.iter()
            .map(|tx| scratch.accept(&self.chain, tx, opts))
            .collect()
    }

    /// Mines `n` blocks paying `payout`, each with the mempool's best transactions.
    pub fn mine(&mut self, n: u32, payout: &ScriptBuf) -> Vec<BlockHash> {
        let mut hashes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            // Room for the coinbase.
            let (txs, fees) = self
                .mempool
                .select_for_block(chain::MAX_BLOCK_WEIGHT - 4_000);
            let block = self.chain.build_block(payout, txs, fees, now_secs() as u32);
            match self.add_block(block) {
                Ok(hash) => hashes.push(hash),
                Err(e) => {
                    // Mempool transactions were all checked on entry; a refusal here is a bug.
                    tracing::error!(reason = %e, "regtest: a mined block was refused");
                    break;
                }
            }
        }
        hashes
    }

    /// `generateblock`: one block with exactly `txs` (after the coinbase), in that order.
    pub fn generate_block(
        &mut self,
        payout: &ScriptBuf,
        txs: Vec<Transaction>,
    ) -> Result<BlockHash, BlockError> {
        let fees = self.fees_of(&txs);
        let block = self.chain.build_block(payout, txs, fees, now_secs() as u32);
        self.add_block(block)
    }

    /// Builds `generateblock`'s block without adding it (`submit=false`).
    pub fn build_block(&self, payout: &ScriptBuf, txs: Vec<Transaction>) -> bitcoin::Block {
        let fees = self.fees_of(&txs);
        self.chain.build_block(payout, txs, fees, now_secs() as u32)
    }

    /// The fees a list of transactions pays, each input looked up in the UTXO set or an earlier
    /// transaction of the list (0 for a transaction whose inputs are missing: the block is then
    /// refused for the missing input, not for its coinbase).
    fn fees_of(&self, txs: &[Transaction]) -> Amount {
        let mut outputs = std::collections::HashMap::new();
        let mut total = Amount::ZERO;
        for tx in txs {
            let mut value_in = Some(Amount::ZERO);
            for input in &tx.input {
                let v = outputs.get(&input.previous_output).copied().or_else(|| {
                    self.chain
                        .utxo(&input.previous_output)
                        .map(|c| c.output.value)
                });
                value_in = match (value_in, v) {
                    (Some(a), Some(b)) => a.checked_add(b),
                    _ => None,
                };
            }
            let out: Amount = tx.output.iter().map(|o| o.value).sum();
            if let Some(fee) = value_in.and_then(|v| v.checked_sub(out)) {
                total += fee;
            }
            let txid = tx.compute_txid();
            for (i, o) in tx.output.iter().enumerate() {
                outputs.insert(OutPoint::new(txid, i as u32), o.value);
            }
        }
        total
    }

    /// `submitblock`, and the path every new block takes.
    pub fn add_block(&mut self, block: bitcoin::Block) -> Result<BlockHash, BlockError> {
        let (hash, reorg) = self.chain.add_block(block)?;
        self.apply_reorg(reorg);
        Ok(hash)
    }

    /// After the best chain moved: confirmed transactions leave the mempool; after a
    /// disconnection, the disconnected blocks' transactions come back when still valid, as in
    /// bitcoind (without fee or package limits), followed by the old mempool.
    fn apply_reorg(&mut self, reorg: chain::Reorg) {
        if reorg.disconnected.is_empty() {
            for block in &reorg.connected {
                self.mempool.remove_for_block(block);
            }
            return;
        }
        let confirmed: std::collections::HashSet<Txid> = reorg
            .connected
            .iter()
            .flat_map(|b| b.txdata.iter().map(|t| t.compute_txid()))
            .collect();
        let old = self.mempool.drain();
        let mut candidates: Vec<Transaction> = reorg
            .disconnected
            .iter()
            .rev()
            .flat_map(|b| b.txdata.iter().skip(1).cloned())
            .collect();
        candidates.extend(old);
        let mut opts = self.accept_options(false, None);
        opts.bypass_limits = true;
        for tx in candidates {
            if confirmed.contains(&tx.compute_txid()) {
                continue;
            }
            if let Err(r) = self.mempool.accept(&self.chain, &tx, opts) {
                tracing::debug!(txid = %tx.compute_txid(), reason = %r, "regtest: dropped after reorg");
            }
        }
    }

    pub fn invalidate(&mut self, hash: &BlockHash) -> Result<(), Reject> {
        let reorg = self.chain.invalidate(hash)?;
        self.apply_reorg(reorg);
        Ok(())
    }

    pub fn reconsider(&mut self, hash: &BlockHash) -> Result<(), Reject> {
        let reorg = self.chain.reconsider(hash)?;
        self.apply_reorg(reorg);
        Ok(())
    }

    /// The wallet's unspent outputs (not spent in the mempool, coinbases only once mature) with
    /// at least `minconf` confirmations.
    pub fn wallet_coins(&self, minconf: u32) -> Vec<WalletCoin> {
        let tip = self.chain.tip_height();
        let mut coins: Vec<WalletCoin> = self
            .chain
            .utxos()
            .filter(|(_, c)| self.wallet.owns(&c.output.script_pubkey))
            .filter(|(op, _)| self.mempool.spender(op).is_none())
            // bitcoind's wallet counts a coinbase once it is 101 deep (`GetBlocksToMaturity`), one
            // more than consensus needs, hence 50 BTC after 101 blocks.
            .filter(|(_, c)| !c.coinbase || tip + 1 - c.height > verify::COINBASE_MATURITY)
            .map(|(op, c)| WalletCoin {
                outpoint: *op,
                coin: c.clone(),
                confirmations: tip + 1 - c.height,
                safe: true,
            })
            .collect();
        if minconf == 0 {
            for e in self.mempool.entries() {
                let trusted = e.tx.input.iter().all(|i| {
                    self.mempool
                        .coin(&self.chain, &i.previous_output)
                        .is_some_and(|c| self.wallet.owns(&c.output.script_pubkey))
                });
                for (vout, out) in e.tx.output.iter().enumerate() {
                    let op = OutPoint::new(e.txid, vout as u32);
                    if self.wallet.owns(&out.script_pubkey) && self.mempool.spender(&op).is_none() {
                        coins.push(WalletCoin {
                            outpoint: op,
                            coin: Coin {
                                output: out.clone(),
                                height: tip + 1,
                                coinbase: false,
                            },
                            confirmations: 0,
                            safe: trusted,
                        });
                    }
                }
            }
        }
        coins.retain(|c| c.confirmations >= minconf);
        coins.sort_by(|a, b| {
            b.confirmations
                .cmp(&a.confirmations)
                .then(a.outpoint.cmp(&b.outpoint))
        });
        coins
    }

    /// `sendtoaddress`: pays `amount` to `script`; see [`NodeState::send_outputs`].
    pub fn send_to_script(
        &mut self,
        script: &ScriptBuf,
        amount: Amount,
        fee_rate: Option<FeeRate>,
    ) -> Result<Txid, RpcError> {
        self.send_outputs(&[(script.clone(), amount)], fee_rate)
    }

    /// `sendtoaddress` / `sendmany`: pays each `(script, amount)` from the wallet's coins
    /// (confirmed ones first, largest first, then its own unconfirmed change), change to a new
    /// wallet address, at `fee_rate` (default: the `estimatesmartfee` rate; at least the minimum
    /// relay fee), through the mempool's usual checks.
    pub fn send_outputs(
        &mut self,
        payments: &[(ScriptBuf, Amount)],
        fee_rate: Option<FeeRate>,
    ) -> Result<Txid, RpcError> {
        let rate = fee_rate
            .or(self.fee_rate)
            .unwrap_or(MIN_RELAY_FEE)
            .max(MIN_RELAY_FEE);
        if payments.is_empty() {
            return Err(RpcError::new(
                -4,
                "Transaction must have at least one recipient",
            ));
        }
        if payments.iter().any(|(s, a)| *a < s.minimal_non_dust()) {
            return Err(RpcError::new(-4, "Transaction amount too small"));
        }
        let amount: Amount = payments.iter().map(|(_, a)| *a).sum();
        let mut coins: Vec<WalletCoin> = self
            .wallet_coins(0)
            .into_iter()
            .filter(|c| c.safe)
            .collect();
        coins.sort_by_key(|c| (c.confirmations == 0, std::cmp::Reverse(c.coin.output.value)));
        let change_script = self.wallet.new_address(AddressKind::P2wpkh).script_pubkey();
        let outputs_vsize: u64 = payments
            .iter()
            .map(|(s, _)| 9 + s.len() as u64)
            .sum::<u64>()
            + 31;
        let mut selected: Vec<WalletCoin> = Vec::new();
        let mut total = Amount::ZERO;
        for coin in coins {
            total += coin.coin.output.value;
            selected.push(coin);
            // A generous per-input allowance; the exact fee is computed after signing.
            let estimate = fee_rate_fee(rate, 11 + 69 * selected.len() as u64 + outputs_vsize);
            if total >= amount + estimate {
                break;
            }
        }
        let insufficient = || RpcError::new(RPC_WALLET_INSUFFICIENT_FUNDS, "Insufficient funds");
        let prevouts: Vec<TxOut> = selected.iter().map(|c| c.coin.output.clone()).collect();
        let build = |fee: Amount, with_change: bool| -> Option<Transaction> {
            let mut output: Vec<TxOut> = payments
                .iter()
                .map(|(script, value)| TxOut {
                    value: *value,
                    script_pubkey: script.clone(),
                })
                .collect();
            let change = total.checked_sub(amount)?.checked_sub(fee)?;
            if with_change {
                output.push(TxOut {
                    value: change,
                    script_pubkey: change_script.clone(),
                });
            }
            Some(Transaction {
                version: transaction::Version::TWO,
                lock_time: absolute::LockTime::ZERO,
                input: selected
                    .iter()
                    .map(|c| TxIn {
                        previous_output: c.outpoint,
                        script_sig: ScriptBuf::new(),
                        sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                        witness: Witness::new(),
                    })
                    .collect(),
                output,
            })
        };
        let sign = |tx: &mut Transaction| {
            self.wallet
                .sign(tx, &prevouts)
                .map_err(|e| RpcError::new(RPC_MISC_ERROR, e))
        };
        // Measure with change, then settle the fee (dropping dust change into the fee).
        let mut tx = build(Amount::ZERO, true).ok_or_else(insufficient)?;
        sign(&mut tx)?;
        let margin = selected.len() as u64; // signatures may be a byte longer on the second pass
        let fee = fee_rate_fee(rate, tx.vsize() as u64 + margin);
        let change = total
            .checked_sub(amount)
            .and_then(|r| r.checked_sub(fee))
            .ok_or_else(insufficient)?;
        let mut tx =
            build(fee, change >= change_script.minimal_non_dust()).ok_or_else(insufficient)?;
        sign(&mut tx)?;
        self.submit(&tx, None)
            .map_err(|r| RpcError::new(r.code, r.message()))
    }
}

fn fee_rate_fee(rate: FeeRate, vsize: u64) -> Amount {
    Amount::from_sat(rate.to_sat_per_kwu() * 4 * vsize)
        .checked_div(1000)
        .unwrap_or(Amount::ZERO)
        + Amount::from_sat(1)
}

/// How RPC clients authenticate: a user and password (bitcoind's `-rpcuser`/`-rpcpassword`),
/// a cookie file (`__cookie__:<random hex>`, written 0600 at start and removed at stop), or both.
#[derive(Clone, Default)]
pub struct RpcAuth {
    pub user_password: Option<(String, String)>,
    pub cookie_file: Option<PathBuf>,
}

impl fmt::Debug for RpcAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcAuth")
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field(
                "password",
                &self.user_password.as_ref().map(|_| "<redacted>"),
            )
            .field("cookie_file", &self.cookie_file)
            .finish()
    }
}

/// How to start a [`RegtestNode`].
#[derive(Clone, Debug)]
pub struct RegtestOptions {
    /// Where the RPC server listens: a loopback address only (127.0.0.0/8 or ::1); port 0 picks
    /// a free port ([`RegtestNode::rpc_addr`] tells which).
    pub rpc_bind: SocketAddr,
    pub auth: RpcAuth,
    /// `estimatesmartfee`'s answer at start (None: no estimate, as a fresh bitcoind).
    pub fee_rate: Option<FeeRate>,
    /// Every mempool transaction is replaceable (bitcoind v28's `mempoolfullrbf=1`); false:
    /// only those that signal BIP-125, others give `txn-mempool-conflict`.
    pub full_rbf: bool,
    pub max_body_bytes: usize,
}

impl Default for RegtestOptions {
    fn default() -> Self {
        RegtestOptions {
            rpc_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: RpcAuth::default(),
            fee_rate: Some(FeeRate::from_sat_per_kwu(250)),
            full_rbf: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Why the node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("regtest node: rpc bind address {0} is not a loopback address; use 127.0.0.1 (the node has no TLS and a devnet-grade wallet)")]
    NotLoopback(SocketAddr),
    #[error("regtest node: no RPC credentials; set a user and password, a cookie file, or both")]
    NoAuth,
    #[error("regtest node: cannot write the cookie file {path}: {source}")]
    Cookie {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("regtest node: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running regtest node: the RPC server on loopback and direct access to its state.
pub struct RegtestNode {
    state: Arc<Mutex<NodeState>>,
    addr: SocketAddr,
    cookie_file: Option<PathBuf>,
    cookie: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    mining_script: ScriptBuf,
}

impl fmt::Debug for RegtestNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegtestNode")
            .field("addr", &self.addr)
            .field("cookie_file", &self.cookie_file)
            .finish()
    }
}

fn lock(state: &Mutex<NodeState>) -> MutexGuard<'_, NodeState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RegtestNode {
    /// Starts the node (genesis only) and its RPC server. Must run inside a tokio runtime.
    pub async fn start(options: RegtestOptions) -> Result<RegtestNode, StartError> {
        if !options.rpc_bind.ip().is_loopback() {
            return Err(StartError::NotLoopback(options.rpc_bind));
        }
        if options.auth.user_password.is_none() && options.auth.cookie_file.is_none() {
            return Err(StartError::NoAuth);
        }
        let mut credentials = Vec::new();
        if let Some((user, password)) = &options.auth.user_password {
            credentials.push(format!("{user}:{password}"));
        }
        let mut cookie = None;
        if let Some(path) = &options.auth.cookie_file {
            let value = write_cookie(path).map_err(|source| StartError::Cookie {
                path: path.clone(),
                source,
            })?;
            credentials.push(value.clone());
            cookie = Some(value);
        }
        let listener = tokio::net::TcpListener::bind(options.rpc_bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: options.rpc_bind,
                source,
            });
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                if let Some(path) = &options.auth.cookie_file {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: options.rpc_bind,
            source,
        })?;
        let mut node_state = NodeState::new(options.fee_rate, options.full_rbf);
        let mining_script = node_state
            .wallet
            .new_address(AddressKind::P2wpkh)
            .script_pubkey();
        let state = Arc::new(Mutex::new(node_state));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = rpc::serve(
            listener,
            state.clone(),
            credentials,
            options.max_body_bytes,
            rx,
        );
        tracing::info!(%addr, "regtest node: RPC listening");
        Ok(RegtestNode {
            state,
            addr,
            cookie_file: options.auth.cookie_file.clone(),
            cookie,
            shutdown: Some(tx),
            server: Some(tokio::spawn(server)),
            mining_script,
        })
    }

    /// The RPC server's address (the port chosen when the bind port was 0).
    pub fn rpc_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `[bitcoin] rpc_url`.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cookie_file(&self) -> Option<&Path> {
        self.cookie_file.as_deref()
    }

    /// The cookie's `user:password`, when a cookie file is in use.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Runs `f` on the node's state under its lock: direct access for assertions and setup.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Mines `n` blocks to the node wallet (the first address it made), with mempool transactions.
    pub fn mine(&self, n: u32) -> Vec<BlockHash> {
        let script = self.mining_script.clone();
        self.mine_to(n, &script)
    }

    /// Mines `n` blocks paying `script`.
    pub fn mine_to(&self, n: u32, script: &ScriptBuf) -> Vec<BlockHash> {
        lock(&self.state).mine(n, script)
    }

    /// Sets what `estimatesmartfee` answers (None: no estimate).
    pub fn set_fee_rate(&self, rate: Option<FeeRate>) {
        lock(&self.state).fee_rate = rate;
    }

    /// The best chain's height and tip.
    pub fn tip(&self) -> (u32, BlockHash) {
        let s = lock(&self.state);
        (s.chain.tip_height(), s.chain.tip_hash())
    }

    /// A new wallet address.
    pub fn new_address(&self, kind: AddressKind) -> Address {
        lock(&self.state).wallet.new_address(kind)
    }

    /// `sendtoaddress` from the node wallet.
    pub fn send_to_address(&self, address: &Address, amount: Amount) -> Result<Txid, RpcError> {
        lock(&self.state).send_to_script(&address.script_pubkey(), amount, None)
    }

    /// `sendmany` from the node wallet: one transaction paying every address.
    pub fn send_many(&self, payments: &[(Address, Amount)]) -> Result<Txid, RpcError> {
        let payments: Vec<(ScriptBuf, Amount)> = payments
            .iter()
            .map(|(a, v)| (a.script_pubkey(), *v))
            .collect();
        lock(&self.state).send_outputs(&payments, None)
    }

    /// `sendrawtransaction` with the default `maxfeerate`.
    pub fn submit(&self, tx: &Transaction) -> Result<Txid, Reject> {
        lock(&self.state).submit(tx, Some(DEFAULT_MAX_FEE_RATE))
    }

    /// `testmempoolaccept` for one transaction.
    pub fn test_accept(&self, tx: &Transaction) -> Result<Accepted, Reject> {
        lock(&self.state).test_accept(tx, Some(DEFAULT_MAX_FEE_RATE))
    }

    pub fn invalidate_block(&self, hash: &BlockHash) -> Result<(), Reject> {
        lock(&self.state).invalidate(hash)
    }

    pub fn reconsider_block(&self, hash: &BlockHash) -> Result<(), Reject> {
        lock(&self.state).reconsider(hash)
    }

    /// An unspent output of the best chain.
    pub fn utxo(&self, outpoint: &OutPoint) -> Option<Coin> {
        lock(&self.state).chain.utxo(outpoint).cloned()
    }

    /// Whether a transaction is in the mempool.
    pub fn in_mempool(&self, txid: &Txid) -> bool {
        lock(&self.state).mempool.contains(txid)
    }

    /// Stops the RPC server and removes the cookie file.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.remove_cookie();
    }

    fn remove_cookie(&mut self) {
        if let (Some(path), Some(_)) = (&self.cookie_file, self.cookie.take()) {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "regtest node: could not remove the cookie file");
            }
        }
    }
}

impl Drop for RegtestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.remove_cookie();
    }
}

/// Writes `__cookie__:<64 hex>` with mode 0600 (replacing a stale cookie) and returns it.
fn write_cookie(path: &Path) -> std::io::Result<String> {
    use rand::RngCore;
    use std::io::Write;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let value = format!("__cookie__:{}", hex::encode(secret));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(value.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    Ok(value)
}

/// Parses an RPC's address argument as a regtest address.
pub fn parse_address(s: &str) -> Option<Address> {
    s.parse::<Address<bitcoin::address::NetworkUnchecked>>()
        .ok()?
        .require_network(bitcoin::Network::Regtest)
        .ok()
}
