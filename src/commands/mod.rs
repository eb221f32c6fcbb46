//! The command line: one subcommand per file.

mod audit;
mod devnet;
mod keys;
mod migrate;
mod peer;
mod run;

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
}

/// What a command failed with, for the operator.
pub type CommandResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Opens the `[custody]` backend for `command`, or says that the section is missing.
pub(crate) async fn open_custody(
    config: &Config,
    command: &'static str,
) -> Result<std::sync::Arc<dyn sbtc_custody::Custody>, Box<dyn std::error::Error>> {
    Ok(crate::keys::open(config.needs_custody(command)?).await?)
}

/// The custody backend and the `[keys]` labels, for commands that sign.
pub(crate) async fn open_keys(
    config: &Config,
    command: &'static str,
) -> Result<crate::keys::Keys, Box<dyn std::error::Error>> {
    Ok(crate::keys::Keys::new(
        open_custody(config, command).await?,
        &config.keys,
    ))
}

impl Cli {
    pub async fn run(self) -> CommandResult {
        // The devnet writes its own configs.
        if let Command::Devnet(cmd) = self.command {
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
