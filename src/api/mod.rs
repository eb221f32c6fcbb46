//! The signer's own HTTP API: deposit intake without a central API (CHAIN.md sections 1 and 8).
//! Each signer serves the depositor wallet's interface itself, validates every deposit against
//! its own bitcoind before storing anything, and passes what it stored to its peers over the
//! authenticated links, where each peer validates it again on its own node.
//!
//! - [`server`]: the HTTP server and its limits (connections, per-client rate, body size, time).
//! - [`deposit`]: `POST /deposit`, `GET /deposit/{txid}/{vout}`, `GET /health`.
//! - [`intake`]: the one validate-and-store path every deposit takes.
//! - [`relay`]: deposits to and from peers; [`emily`]: an optional Emily-style source.
//! - [`new_block`]: the Stacks event observer (`POST /new_block`), when `[stacks]` is set.
//!
//! Floor: uses `chain`, `peer` and `storage`; never `coordination`, `node` or `commands`.

pub mod config;
pub mod deposit;
pub mod emily;
pub mod error;
pub mod intake;
pub mod limits;
pub mod new_block;
pub mod relay;
pub mod server;

use std::sync::Arc;

use bitcoin::Network;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::ApiConfig;
pub use error::ApiError;
pub use intake::{Accepted, Held, Intake, IntakeCounts, Progress, Refusal};
pub use relay::{DepositSink, PeerDeposits, Relay, RelayStats};
pub use server::{ApiServer, ApiStartError};

use crate::chain::bitcoin::BitcoinClient;
use crate::chain::stacks::StacksSettings;
use crate::peer::PeerNode;
use crate::storage::Storage;

/// Everything intake runs: the server, the peers' deposits and the Emily poller.
pub struct RunningApi {
    pub server: ApiServer,
    pub intake: Arc<Intake>,
    /// Give it to `coordination::PeerTransport::with_deposit_sink`: peers' announcements flow
    /// from the links through it to the intake.
    pub deposit_sink: DepositSink,
    pub relay_stats: Arc<RelayStats>,
    pub emily_stats: Option<Arc<emily::EmilyStats>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts intake: the HTTP server on `config.listen`, the consumer of peers' deposit
/// announcements, and the Emily poller when `emily_url` is set. With `peers`, a wallet's new
/// deposits are announced to every linked signer.
pub async fn start(
    config: &ApiConfig,
    client: Arc<dyn BitcoinClient>,
    network: Network,
    store: Arc<dyn Storage>,
    peers: Option<Arc<PeerNode>>,
) -> Result<RunningApi, ApiStartError> {
    start_with_observer(config, client, network, store, peers, None).await
}

/// [`start`], and with `stacks` the Stacks event observer (`POST /new_block` and the other
/// observer paths) on the same listener, storing into `store`.
pub async fn start_with_observer(
    config: &ApiConfig,
    client: Arc<dyn BitcoinClient>,
    network: Network,
    store: Arc<dyn Storage>,
    peers: Option<Arc<PeerNode>>,
    stacks: Option<&StacksSettings>,
) -> Result<RunningApi, ApiStartError> {
    config.check().map_err(ApiStartError::Config)?;
    let observer = stacks.map(|s| new_block::router(s, store.clone()));
    let emily = match &config.emily_url {
        Some(url) => {
            Some(emily::EmilyClient::new(url).map_err(|e| ApiStartError::Config(e.to_string()))?)
        }
        None => None,
    };
    let relay = peers.map(|node| Relay::new(node, client.clone()));
    let intake = Arc::new(Intake::new(client, network, store, relay));
    let server = ApiServer::start(config, intake.clone(), observer).await?;
    let shutdown = CancellationToken::new();
    let (deposit_sink, peer_deposits) = relay::channel(relay::DEFAULT_QUEUE);
    let relay_stats = peer_deposits.stats();
    let mut tasks = vec![tokio::spawn(peer_deposits.run(
        intake.clone(),
        config.relay_per_minute,
        shutdown.clone(),
    ))];
    let emily_stats = emily.as_ref().map(|e| e.stats());
    if let Some(e) = emily {
        tasks.push(tokio::spawn(e.run(
            intake.clone(),
            config.emily_poll_interval(),
            shutdown.clone(),
        )));
    }
    Ok(RunningApi {
        server,
        intake,
        deposit_sink,
        relay_stats,
        emily_stats,
        shutdown,
        tasks,
    })
}

impl RunningApi {
    /// Stops the server (letting requests in flight finish) and the background tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.server.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
