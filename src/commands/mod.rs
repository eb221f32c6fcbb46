//! The command line: one subcommand per file.

mod audit;
mod deposit;
mod devnet;
mod keys;
mod migrate;
mod peer;
mod regtest;
mod run;
mod stacks_node;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "sbtc-hsm-signer", version, about)]
pub struct Cli {
    /// The signer's TOML config file.
    #[arg(long, global = true, env = "SBTC_HSM_SIGNER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list and check the signer's long-term keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// This signer's peer-link identity (`peer card`).
    #[command(subcommand)]
    Peer(peer::PeerCommand),
    /// Apply the storage schema migrations embedded in this binary.
    Migrate(migrate::Migrate),
    /// Check the custody audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the signer node: peer links, DKG over them, verification, an optional demo batch.
    Run(run::Run),
    /// Start a local devnet of signers (one `run` process each) and report the threshold key.
    Devnet(devnet::Devnet),
    /// Inspect a deposit: what it says and whether this signer accepts it.
    #[command(subcommand)]
    Deposit(deposit::DepositCommand),
    /// Run the devnet's regtest Bitcoin node (bitcoind's JSON-RPC on loopback) until Ctrl-C.
    RegtestNode(regtest::RegtestNodeCmd),
    /// Run the devnet's Stacks node (the stacks-node v2 RPC subset and event observers, the
    /// sBTC contracts natively) following a Bitcoin node, until Ctrl-C.
    StacksNode(stacks_node::StacksNodeCmd),
}

/// What a command failed with, for the operator.
pub type CommandResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Opens the `[custody]` backend for a command that uses no private key (listing, generating).
pub(crate) async fn open_custody(
    config: &Config,
    command: &'static str,
) -> Result<std::sync::Arc<dyn sbtc_custody::Custody>, Box<dyn std::error::Error>> {
    Ok(crate::keys::open(config.needs_custody(command)?).await?)
}

/// Opens the `[custody]` backend for `command`, wrapped in the audit log: every private-key
/// operation is written to `[storage]`'s audit log before its result is released. Without a
/// `[storage]` section there is no log; the command says so on stderr and goes on (a key check
/// before the database exists), and `run` refuses to start that way.
pub(crate) async fn open_keys(
    config: &Config,
    command: &'static str,
) -> Result<crate::keys::Keys, Box<dyn std::error::Error>> {
    let store = match &config.storage {
        Some(storage) => {
            Some(crate::storage::open(storage, crate::storage::OnOpen::CheckSchema).await?)
        }
        None => None,
    };
    open_keys_with(config, command, store).await
}

/// [`open_keys`] with a store the command opened itself (`run` may migrate it first).
pub(crate) async fn open_keys_with(
    config: &Config,
    command: &'static str,
    store: Option<std::sync::Arc<dyn crate::storage::Storage>>,
) -> Result<crate::keys::Keys, Box<dyn std::error::Error>> {
    let raw = crate::keys::open(config.needs_custody(command)?).await?;
    let audited = match store {
        Some(store) => crate::keys::AuditedCustody::new(
            raw,
            std::sync::Arc::new(crate::storage::audit_sink::StorageAuditSink(store)),
        ),
        None => {
            eprintln!(
                "note: no [storage] section, so `{command}` writes its key operations to no audit log"
            );
            crate::keys::AuditedCustody::unrecorded(raw)
        }
    };
    Ok(crate::keys::Keys::audited(audited, &config.keys))
}

/// Signs the audit log's head at the end of a command that used keys.
pub(crate) async fn close_keys(
    keys: &crate::keys::Keys,
    command: &'static str,
) -> Result<(), Box<dyn std::error::Error>> {
    keys.sign_audit_head(&format!("end of `{command}`")).await?;
    Ok(())
}
impl Cli {
    pub async fn run(self) -> CommandResult {
        // The devnet writes its own configs.
        if let Command::Devnet(cmd) = self.command {
            return cmd.run().await;
        }
        // `deposit inspect` works without a config (given --network).
        if let Command::Deposit(cmd) = self.command {
            return cmd.run(self.config.as_deref()).await;
        }
        if let Command::RegtestNode(cmd) = self.command {
            return cmd.run().await;
        }
        if let Command::StacksNode(cmd) = self.command {
            return cmd.run().await;
        }
        let config = self.load_config()?;
        match self.command {
            Command::Keys(cmd) => cmd.run(&config).await,
            Command::Peer(cmd) => cmd.run(&config).await,
            Command::Migrate(cmd) => cmd.run(&config).await,
            Command::Audit(cmd) => cmd.run(&config).await,
            Command::Run(cmd) => cmd.run(&config).await,
            Command::Devnet(_) => Err("unreachable: devnet is handled above".into()),
            Command::Deposit(_) => Err("unreachable: deposit is handled above".into()),
            Command::RegtestNode(_) => Err("unreachable: regtest-node is handled above".into()),
            Command::StacksNode(_) => Err("unreachable: stacks-node is handled above".into()),
        }
    }

    fn load_config(&self) -> Result<Config, Box<dyn std::error::Error>> {
        let path = self
            .config
            .as_ref()
            .ok_or("no config file: pass --config FILE or set SBTC_HSM_SIGNER_CONFIG")?;
        Ok(Config::load(path)?)
    }
}
