//! The command line: one subcommand per file.

mod keys;

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
}

/// What a command failed with, for the operator.
pub type CommandResult = Result<ExitCode, Box<dyn std::error::Error>>;

impl Cli {
    pub async fn run(self) -> CommandResult {
        let config = self.load_config()?;
        match self.command {
            Command::Keys(cmd) => cmd.run(&config).await,
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
