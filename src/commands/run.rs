//! `run`: starts the signer node: custody, storage, the peer mesh; then one devnet session (DKG
//! over the peer links, verification, an optional demo batch) and, unless `--exit-when-done`,
//! keeps serving until Ctrl-C or SIGTERM.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::Args;
use sbtc_custody::Role;

use crate::{
    commands::CommandResult,
    config::Config,
    custody,
    node::{self, demo, SessionParams},
    peer::PeerNode,
    signing::DkgId,
    storage::{self, OnOpen, StorageConfig},
};

#[derive(Debug, Args)]
pub struct Run {
    /// Signers needed to sign; default: more than 70% of the signer set.
    #[arg(long)]
    threshold: Option<u32>,
    /// Sign a demo batch of K sighashes after the DKG is verified (coordinator only; 0 = none).
    #[arg(long, default_value_t = 0)]
    demo_batch: usize,
    /// Write this signer's result (aggregate key, verification, timings, signatures) as JSON here.
    #[arg(long)]
    result_file: Option<PathBuf>,
    /// Apply pending PostgreSQL migrations at start (else a schema that is not current is refused).
    #[arg(long)]
    migrate: bool,
    /// The chain tip (64 hex) that picks the coordinator; default: the devnet's fixed tip.
    #[arg(long)]
    chain_tip: Option<String>,
    /// How long to wait for links to every peer of the bootstrap set, in seconds.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
    /// How long one phase of a round waits for peers, in seconds.
    #[arg(long, default_value_t = 60)]
    phase_timeout: u64,
    /// File that records every signing round before its nonces go out (fsynced), so a restarted
    /// signer never answers a round it already gave nonces for. Without it, memory only.
    #[arg(long)]
    nonce_ledger: Option<std::path::PathBuf>,
    /// Exit once the session is over instead of serving until a signal (the devnet uses this).
    #[arg(long)]
    exit_when_done: bool,
}

/// Ctrl-C and SIGTERM, registered when made: a signal that arrives before anyone waits is kept.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    pub(crate) fn register() -> Self {
        Shutdown {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// Resolves on Ctrl-C or SIGTERM.
    pub(crate) async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Run {
    pub async fn run(self, config: &Config) -> CommandResult {
        let mut shutdown = Shutdown::register();
        let chain_tip = match &self.chain_tip {
            None => demo::devnet_chain_tip(),
            Some(h) => hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or("--chain-tip must be 64 hex characters (a block hash)")?,
        };
        if config.peer.is_none() {
            return Err(
                "no [peer] section in the config; `run` needs peer links (see docs/peer-links.md)"
                    .into(),
            );
        }
        let custody = custody::open(&config.custody).await?;
        let storage_config = config.storage.clone().unwrap_or_else(StorageConfig::memory);
        let on_open = if self.migrate {
            OnOpen::Migrate
        } else {
            OnOpen::CheckSchema
        };
        let storage = storage::open(&storage_config, on_open).await?;
        let node = Arc::new(PeerNode::from_config(config, custody.clone()).await?);
        eprintln!(
            "signer {} listening on {}",
            hex::encode(node.identity().serialize()),
            node.local_addr()
        );
        let n = u32::try_from(node.signer_set().len().max(1))?;
        // More than 70%: the smallest t with t > 0.7 n.
        let threshold = self.threshold.unwrap_or((n * 7) / 10 + 1).min(n);
        let params = SessionParams {
            custody,
            storage,
            identity_label: config.keys.label(Role::Identity),
            seal_label: config.keys.label(Role::Seal),
            threshold,
            dkg_id: DkgId(1),
            chain_tip,
            chain_height: 0,
            demo_batch: self.demo_batch,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            phase_timeout: Duration::from_secs(self.phase_timeout),
            nonce_ledger: self.nonce_ledger.clone(),
        };
        let session = node::run_session(node.clone(), params);
        let outcome = tokio::select! {
            r = session => Some(r),
            _ = shutdown.wait() => None,
        };
        let mut coordinated = false;
        let code = match outcome {
            None => {
                eprintln!("signal received; shutting down");
                stop(node).await;
                return Ok(ExitCode::from(130));
            }
            Some(Err(e)) => {
                eprintln!("error: session failed: {e}");
                ExitCode::FAILURE
            }
            Some(Ok(result)) => {
                eprintln!(
                    "session done: aggregate key {} ({}), {} demo signatures",
                    result.aggregate_key,
                    result.dkg_status,
                    result.signatures.len()
                );
                coordinated = result.signer_index == result.coordinator;
                if let Some(path) = &self.result_file {
                    write_atomically(path, &serde_json::to_vec_pretty(&result)?)?;
                }
                let batch_failed = coordinated && result.signatures_verified < self.demo_batch;
                if batch_failed {
                    eprintln!(
                        "error: demo batch: {} of {} signatures verified",
                        result.signatures_verified, self.demo_batch
                    );
                }
                if result.dkg_status == "verified" && !batch_failed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
        };
        if !self.exit_when_done {
            eprintln!("serving; stop with Ctrl-C or SIGTERM");
            shutdown.wait().await;
        } else if coordinated {
            // The others leave once they have the coordinator's `Done`: wait (bounded) for their
            // links to drop, so `Done` is not lost in a queue when this process exits.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !node.connected_peers().is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        stop(node).await;
        Ok(code)
    }
}

async fn stop(node: Arc<PeerNode>) {
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        // Someone still holds it (a task cut short by the signal): dropping stops it too.
        Err(node) => drop(node),
    }
}

/// Writes to a temporary file and renames it, so a reader never sees half a result.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
