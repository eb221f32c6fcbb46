//! `run`: starts the signer node (custody, storage, the peer mesh, then the node's tasks) and,
//! unless `--exit-when-done`, keeps serving until Ctrl-C or SIGTERM.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    commands::{open_keys_with, CommandResult},
    config::Config,
    node::{self, RunOptions},
    storage::{self, OnOpen, StorageConfig},
};

#[derive(Debug, Args)]
pub struct Run {
    /// Signers needed to sign; default: `[peer] threshold`, else more than 70% of the signer set.
    #[arg(long)]
    threshold: Option<u32>,
    /// Sign a demo batch of K sighashes after the DKG is verified (coordinator only; 0 = none).
    #[arg(long, default_value_t = 0)]
    demo_batch: usize,
    /// Have every signer of the set sign the demo batch, not only a threshold of them.
    #[arg(long)]
    demo_all: bool,
    /// Write this signer's result (aggregate key, verification, timings, signatures) as JSON here.
    #[arg(long)]
    result_file: Option<PathBuf>,
    /// Apply pending PostgreSQL migrations at start (else a schema that is not current is refused).
    #[arg(long)]
    migrate: bool,
    /// The chain tip (64 hex) that picks the coordinator; default: bitcoind's tip when
    /// `[bitcoin]` is configured, else the devnet's fixed tip.
    #[arg(long)]
    chain_tip: Option<String>,
    /// How long to wait for links to every peer of the bootstrap set, in seconds.
    #[arg(long, default_value_t = 60)]
    connect_timeout: u64,
    /// How long one phase of a round waits for peers, in seconds.
    #[arg(long, default_value_t = 60)]
    phase_timeout: u64,
    /// File that records every signing round before its nonces go out (fsynced), so a restarted
    /// signer never answers a round it already gave nonces for.
    #[arg(long)]
    nonce_ledger: Option<PathBuf>,
    /// Allow state that does not survive a restart: in-memory storage and an in-memory nonce
    /// ledger. For tests and throwaway devnets only; a real signer refuses to start without
    /// durable state.
    #[arg(long)]
    ephemeral: bool,
    /// Exit once the session is over instead of serving until a signal (the devnet uses this).
    #[arg(long)]
    exit_when_done: bool,
    /// After the DKG session, run the peg: one tenure per Bitcoin block (the registry's key,
    /// sweeps, Stacks calls) until Ctrl-C or SIGTERM. Needs [bitcoin] and [stacks].
    #[arg(long)]
    peg: bool,
}

impl Run {
    pub async fn run(self, config: &Config) -> CommandResult {
        let chain_tip = match &self.chain_tip {
            None => crate::devnet::demo::devnet_chain_tip(),
            Some(h) => h.parse::<bitcoin::BlockHash>().map_err(|_| {
                format!("--chain-tip {h:?} is not a block hash (64 hex characters, as bitcoind prints it)")
            })?,
        };
        let peer = config.needs_peer("run")?;
        let storage_config = match (&config.storage, self.ephemeral) {
            (Some(s), _) => s.clone(),
            (None, true) => StorageConfig::memory(),
            (None, false) => {
                return Err(config.needs_storage("run").unwrap_err().into());
            }
        };
        if !self.ephemeral {
            if storage_config.url == "memory" {
                return Err(
                    "[storage] url = \"memory\" loses the signer's key shares and decisions on \
                     restart; point it at PostgreSQL, or pass --ephemeral for a throwaway node"
                        .into(),
                );
            }
            if self.nonce_ledger.is_none() {
                return Err(
                    "no --nonce-ledger FILE: without it a restarted signer could answer a \
                     signing round twice; pass one, or --ephemeral for a throwaway node"
                        .into(),
                );
            }
        }
        let on_open = if self.migrate {
            OnOpen::Migrate
        } else {
            OnOpen::CheckSchema
        };
        let storage = storage::open(&storage_config, on_open).await?;
        // Every private-key operation of the node is recorded in this store's audit log.
        let keys = open_keys_with(config, "run", Some(storage.clone())).await?;
        let stacks = match config.stacks_settings()? {
            Some(settings) => Some(node::StacksParts {
                client: std::sync::Arc::new(crate::chain::stacks::StacksRpc::new(&settings)?),
                settings,
            }),
            None => None,
        };
        let bitcoin = match &config.bitcoin {
            Some(c) => Some(node::BitcoinParts {
                client: std::sync::Arc::new(crate::chain::bitcoin::BitcoindRpc::new(c)?),
                config: c.clone(),
                api: config.api.clone(),
                stacks,
                sweep: config.sweep.resolve(c.network)?,
                policy: {
                    config.policy.validate()?;
                    config.policy.clone()
                },
            }),
            None if config.api.is_some() => {
                return Err(
                    "[api] (deposit intake) validates every deposit against this signer's own \
                     bitcoind: add a [bitcoin] section"
                        .into(),
                )
            }
            None => None,
        };
        let opts = RunOptions {
            peg: self.peg,
            chain_tip_from_node: bitcoin.is_some() && self.chain_tip.is_none(),
            threshold: self.threshold,
            demo_batch: self.demo_batch,
            result_file: self.result_file,
            chain_tip,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            phase_timeout: Duration::from_secs(self.phase_timeout),
            nonce_ledger: self.nonce_ledger,
            demo_participation: if self.demo_all {
                crate::signing::Participation::All
            } else {
                crate::signing::Participation::Threshold
            },
            exit_when_done: self.exit_when_done,
        };
        node::run(keys, storage, peer, bitcoin, opts)
            .await
            .map_err(|e| -> Box<dyn std::error::Error> { e })
    }
}
