//! The devnet's Stacks node (stacks-node cannot be installed on our machines): the stacks-node v2
//! RPC subset the signer and the `sbtc` library use, behind the same JSON shapes, so the signer
//! runs unchanged against a real node. Transactions are decoded and their origins verified; the
//! five sBTC contracts run natively ([`contracts`]); Stacks blocks follow the Bitcoin node (one
//! per Bitcoin block, rewound on a Bitcoin reorg so observers see a Stacks fork), and every
//! block goes to the event observers as `/new_block`.
//!
//! - [`chain`]: accounts, mempool, blocks, snapshots, forks;
//! - [`contracts`]: sbtc-registry, -token, -deposit, -withdrawal, -bootstrap-signers;
//! - [`rpc`]: the HTTP server; [`observer`]: `/new_block` delivery.

pub mod chain;
pub mod contracts;
pub mod observer;
pub mod rpc;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use bitcoin::BlockHash;

use crate::chain::bitcoin::client::BitcoinClient;
use crate::chain::stacks::address::{
    Principal, StacksNetwork, VERSION_MAINNET_MULTISIG, VERSION_TESTNET_MULTISIG,
};
use crate::chain::stacks::clarity::Value;
use crate::chain::stacks::transaction::multisig_signer_hash;
use chain::{BurnChain, Deployed, Ledger, NodeState};
pub use chain::{Rejection, StacksBlock};

/// Bodies larger than this are refused (413) before they are parsed.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Bitcoin blocks read back at start (a longer chain's older blocks are unknown to
/// `get-burn-block-info?`).
pub const MAX_BURN_BACKFILL: usize = 10_000;

/// How to start a [`StacksNode`].
#[derive(Clone)]
pub struct StacksNodeOptions {
    /// Loopback only; port 0 picks a free one ([`StacksNode::rpc_addr`]).
    pub rpc_bind: SocketAddr,
    /// Testnet for devnet and regtest.
    pub network: StacksNetwork,
    /// The Bitcoin node the Stacks blocks follow (the regtest node speaks its RPC).
    pub bitcoin: Arc<dyn BitcoinClient>,
    /// The sBTC contracts' deployer; None: the bootstrap signers' multisig (as the official
    /// devnet does).
    pub deployer: Option<Principal>,
    /// The bootstrap signer set (sorted by their 33-byte form at genesis, as SIP-027 signers
    /// order them) and its threshold: the registry's current set and signer principal before
    /// the first rotation.
    pub signers: Vec<PublicKey>,
    pub threshold: u16,
    /// STX (µSTX) at genesis.
    pub balances: Vec<(Principal, u128)>,
    /// Event observer base URLs (`/new_block` is appended).
    pub observers: Vec<String>,
    /// How often the Bitcoin node's best block is polled.
    pub poll_interval: Duration,
    /// Minimum fee per transaction byte (stacks-node: 1 µSTX).
    pub min_fee_per_byte: u64,
    /// What `POST /v2/fees/transaction` quotes per byte, low / middle / high.
    pub fee_rates: [u64; 3],
    pub max_body_bytes: usize,
    /// Blocks an observer may fall behind before it is dropped.
    pub observer_queue: usize,
}

impl StacksNodeOptions {
    /// Options for a testnet node following `bitcoin`, with these bootstrap signers.
    pub fn new(
        bitcoin: Arc<dyn BitcoinClient>,
        signers: Vec<PublicKey>,
        threshold: u16,
    ) -> StacksNodeOptions {
        StacksNodeOptions {
            rpc_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            network: StacksNetwork::Testnet,
            bitcoin,
            deployer: None,
            signers,
            threshold,
            balances: Vec::new(),
            observers: Vec::new(),
            poll_interval: Duration::from_millis(500),
            min_fee_per_byte: 1,
            fee_rates: [1, 2, 4],
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            observer_queue: observer::DEFAULT_QUEUE,
        }
    }
}

impl fmt::Debug for StacksNodeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StacksNodeOptions")
            .field("rpc_bind", &self.rpc_bind)
            .field("network", &self.network)
            .field("deployer", &self.deployer)
            .field("signers", &self.signers.len())
            .field("threshold", &self.threshold)
            .field("observers", &self.observers)
            .finish()
    }
}

/// Why the node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("stacks node: rpc bind address {0} is not a loopback address; use 127.0.0.1")]
    NotLoopback(SocketAddr),
    #[error("stacks node: {0}")]
    Genesis(String),
    #[error("stacks node: cannot read the Bitcoin chain: {0}; is the Bitcoin node running and are its credentials right?")]
    Bitcoin(String),
    #[error("stacks node: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("stacks node: {0}")]
    Observer(String),
}

/// What went wrong following the Bitcoin node.
#[derive(Debug, thiserror::Error)]
#[error("stacks node: following Bitcoin: {0}")]
pub struct FollowError(String);

pub(crate) struct Shared {
    pub state: Mutex<NodeState>,
    pub observers: observer::Observers,
    pub bitcoin: Arc<dyn BitcoinClient>,
    pub fee_rates: [u64; 3],
    /// One follower step at a time (the poller and [`StacksNode::sync`]).
    follow: tokio::sync::Mutex<()>,
}

pub(crate) fn lock(state: &Mutex<NodeState>) -> MutexGuard<'_, NodeState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running Stacks node: the RPC server on loopback, the Bitcoin follower, and direct access to
/// its state.
pub struct StacksNode {
    shared: Arc<Shared>,
    addr: SocketAddr,
    deployer: Principal,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for StacksNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StacksNode")
            .field("addr", &self.addr)
            .field("deployer", &self.deployer)
            .finish()
    }
}

/// The multisig principal of `keys` (in this order) with `threshold`.
pub fn multisig_principal(network: StacksNetwork, keys: &[PublicKey], threshold: u16) -> Principal {
    Principal::Standard {
        version: match network {
            StacksNetwork::Mainnet => VERSION_MAINNET_MULTISIG,
            StacksNetwork::Testnet => VERSION_TESTNET_MULTISIG,
        },
        hash160: multisig_signer_hash(keys, threshold),
    }
}

fn genesis(options: &StacksNodeOptions) -> Result<Ledger, StartError> {
    let n = options.signers.len();
    let m = options.threshold as usize;
    if n == 0 || m == 0 || m > n {
        return Err(StartError::Genesis(format!(
            "the bootstrap signer set needs 1 ≤ threshold ≤ signers (got {m} of {n})"
        )));
    }
    if n > 128 {
        return Err(StartError::Genesis(format!(
            "{n} bootstrap signers; sbtc-registry holds at most 128"
        )));
    }
    let mut keys = options.signers.clone();
    keys.sort_by_key(|k| k.serialize());
    keys.dedup();
    if keys.len() != n {
        return Err(StartError::Genesis(
            "a bootstrap signer key is listed twice".into(),
        ));
    }
    let signer_principal = multisig_principal(options.network, &keys, options.threshold);
    let deployer = options
        .deployer
        .clone()
        .unwrap_or_else(|| signer_principal.clone());
    if deployer.contract_name().is_some() {
        return Err(StartError::Genesis(format!(
            "the deployer {deployer} is a contract; give a standard address"
        )));
    }
    if deployer.network() != Some(options.network) {
        return Err(StartError::Genesis(format!(
            "the deployer {deployer} is not a {} address ({})",
            options.network,
            options.network.prefixes()
        )));
    }
    let sbtc = contracts::Sbtc::genesis(
        deployer.clone(),
        options.network == StacksNetwork::Mainnet,
        keys.iter().map(|k| k.serialize().to_vec()).collect(),
        signer_principal,
        options.threshold.into(),
    );
    let mut accounts = HashMap::new();
    for (who, ustx) in &options.balances {
        if who.network() != Some(options.network) {
            return Err(StartError::Genesis(format!(
                "funded account {who} is not a {} address ({})",
                options.network,
                options.network.prefixes()
            )));
        }
        let a: &mut chain::Account = accounts.entry(who.clone()).or_default();
        a.balance = a.balance.saturating_add(*ustx);
    }
    let mut deployed = HashMap::new();
    for name in contracts::CONTRACTS {
        deployed.insert(
            sbtc.contract(name),
            Deployed {
                source: None,
                clarity_version: Some(3),
            },
        );
    }
    Ok(Ledger {
        accounts,
        contracts: deployed,
        sbtc,
    })
}

/// Reads the Bitcoin best chain back from its tip until it meets `known` (or `limit` blocks):
/// the new blocks, oldest first, and the height of the known block it met.
async fn read_new_blocks(
    bitcoin: &dyn BitcoinClient,
    known: &BurnChain,
    limit: usize,
) -> Result<(Vec<(u64, BlockHash, u32)>, Option<u64>), FollowError> {
    let e = |e: crate::chain::bitcoin::client::Error| FollowError(e.to_string());
    let tip = bitcoin.get_best_block_hash().await.map_err(e)?;
    let mut out = Vec::new();
    let mut met = None;
    let mut next = Some(tip);
    while let Some(hash) = next {
        if out.len() >= limit {
            break;
        }
        let header = bitcoin
            .get_block_header(&hash)
            .await
            .map_err(e)?
            .ok_or_else(|| FollowError(format!("block {hash} vanished while reading the chain")))?;
        if known.get(&header.height).map(|(h, _)| *h) == Some(hash) {
            met = Some(header.height);
            break;
        }
        out.push((header.height, hash, header.time));
        next = header.previous;
    }
    out.reverse();
    Ok((out, met))
}

impl StacksNode {
    /// Starts the node: genesis at the Bitcoin node's current tip, the RPC server, and the
    /// follower. Must run inside a tokio runtime.
    pub async fn start(options: StacksNodeOptions) -> Result<StacksNode, StartError> {
        if !options.rpc_bind.ip().is_loopback() {
            return Err(StartError::NotLoopback(options.rpc_bind));
        }
        let ledger = genesis(&options)?;
        let deployer = ledger.sbtc.deployer.clone();
        let (blocks, _) = read_new_blocks(&*options.bitcoin, &BurnChain::new(), MAX_BURN_BACKFILL)
            .await
            .map_err(|e| StartError::Bitcoin(e.0))?;
        let burn: BurnChain = blocks.into_iter().map(|(h, b, t)| (h, (b, t))).collect();
        let state = NodeState::new(options.network, ledger, burn, options.min_fee_per_byte);
        let observers = observer::Observers::new(options.observer_queue);
        for url in &options.observers {
            observers.add(url).map_err(StartError::Observer)?;
        }
        let listener = tokio::net::TcpListener::bind(options.rpc_bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: options.rpc_bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: options.rpc_bind,
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            observers,
            bitcoin: options.bitcoin.clone(),
            fee_rates: options.fee_rates,
            follow: tokio::sync::Mutex::new(()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(rpc::serve(
            listener,
            shared.clone(),
            options.max_body_bytes,
            rx,
        ));
        let follower = {
            let shared = shared.clone();
            let interval = options.poll_interval.max(Duration::from_millis(10));
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick is immediate; genesis has just read the chain.
                ticker.tick().await;
                let mut failing = false;
                loop {
                    ticker.tick().await;
                    match follow(&shared).await {
                        Ok(_) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "stacks node: cannot follow the Bitcoin node; retrying");
                        }
                        Err(_) => {}
                    }
                }
            })
        };
        tracing::info!(%addr, %deployer, "stacks node: RPC listening");
        Ok(StacksNode {
            shared,
            addr,
            deployer,
            shutdown: Some(tx),
            server: Some(server),
            follower: Some(follower),
        })
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for the signer's `[stacks]` endpoint.
    pub fn rpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sBTC contracts' deployer.
    pub fn deployer(&self) -> &Principal {
        &self.deployer
    }

    /// `<deployer>.<name>`.
    pub fn contract(&self, name: &str) -> Principal {
        self.with_state(|s| s.ledger().sbtc.contract(name))
    }

    /// Runs `f` on the node's state under its lock.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        f(&mut lock(&self.shared.state))
    }

    /// Registers an event observer from now on.
    pub fn add_observer(&self, url: &str) -> Result<(), String> {
        self.shared.observers.add(url)
    }

    /// Reads the Bitcoin node now (as the poller does): mines a Stacks block per new Bitcoin
    /// block, after rewinding past reorged ones. Returns the blocks mined.
    pub async fn sync(&self) -> Result<usize, FollowError> {
        follow(&self.shared).await
    }

    /// Mines one Stacks block anchored to the Bitcoin tip the node knows (another block in the
    /// same tenure) and sends it to the observers.
    pub fn mine(&self) -> StacksBlock {
        let (block, body) = {
            let mut s = lock(&self.shared.state);
            let height = s.burn_tip().0;
            let block = s.mine_at(height).clone();
            let parent = s.blocks.get(s.blocks.len().wrapping_sub(2)).cloned();
            let body = chain::new_block_json(&block, parent.as_ref());
            (block, body)
        };
        self.shared.observers.dispatch(body);
        block
    }

    /// Test helper: abandons the Stacks blocks above `height`, so the next block forks from it.
    #[cfg(any(test, feature = "testing"))]
    pub fn fork_from(&self, height: u64) -> usize {
        lock(&self.shared.state).rewind_to(height)
    }

    /// The tip's height and block hash.
    pub fn tip(&self) -> (u64, [u8; 32]) {
        let s = lock(&self.shared.state);
        (s.tip().height, s.tip().block_hash)
    }

    /// A read-only call at the tip, as `call-read` answers it.
    pub fn read_only(
        &self,
        contract: &str,
        function: &str,
        args: &[Value],
    ) -> Result<Value, String> {
        let s = lock(&self.shared.state);
        let id = s.ledger().sbtc.contract(contract);
        s.call_read_only(&id, function, args, self.deployer.clone())
    }

    /// An account at the tip.
    pub fn account(&self, who: &Principal) -> chain::Account {
        lock(&self.shared.state).ledger().account(who)
    }

    /// Stops the server and the follower.
    pub async fn stop(mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for StacksNode {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// One follower step: new Bitcoin blocks (after a reorg, the Stacks blocks anchored at or above
/// the fork are abandoned first), then one Stacks block per new Bitcoin block.
async fn follow(shared: &Shared) -> Result<usize, FollowError> {
    let _one = shared.follow.lock().await;
    let known = lock(&shared.state).burn.clone();
    let (new, met) = read_new_blocks(&*shared.bitcoin, &known, MAX_BURN_BACKFILL).await?;
    let fork_height = match (met, new.first()) {
        (Some(h), _) => h + 1,
        (None, Some(first)) => first.0,
        (None, None) => return Ok(0),
    };
    let mut bodies = Vec::new();
    {
        let mut s = lock(&shared.state);
        if s.burn != known {
            // The chain moved under us between the read and the lock: the next step sees it.
            return Ok(0);
        }
        if s.burn.keys().next_back().is_some_and(|h| *h >= fork_height) {
            let survivors = s
                .blocks
                .iter()
                .rposition(|b| b.burn_height < fork_height)
                .unwrap_or(0);
            let gone = s.rewind_to(survivors as u64);
            tracing::info!(
                fork_height,
                abandoned = gone,
                "stacks node: Bitcoin reorg; Stacks blocks anchored to the old branch abandoned"
            );
            s.burn.split_off(&fork_height);
        }
        for (height, hash, time) in &new {
            s.burn.insert(*height, (*hash, *time));
        }
        for (height, _, _) in &new {
            let block = s.mine_at(*height).clone();
            let parent = s.blocks.get(s.blocks.len().wrapping_sub(2)).cloned();
            bodies.push(chain::new_block_json(&block, parent.as_ref()));
        }
    }
    let n = bodies.len();
    for body in bodies {
        shared.observers.dispatch(body);
    }
    Ok(n)
}
