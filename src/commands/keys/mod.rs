//! `keys`: the signer's long-term keys in the configured custody backend.

mod check;
mod generate;
mod init;
mod list;

use clap::Subcommand;

use super::CommandResult;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a keystore file, or check that an HSM token or device is usable.
    Init(init::Init),
    /// Generate a role's key inside the backend (non-extractable).
    Generate(generate::Generate),
    /// List the keys in the backend.
    List(list::List),
    /// Report the backend and self-test each role's key (sign+verify, seal+unseal).
    Check(check::Check),
}

impl KeysCommand {
    pub async fn run(self, config: &Config) -> CommandResult {
        match self {
            KeysCommand::Init(c) => c.run(config).await,
            KeysCommand::Generate(c) => c.run(config).await,
            KeysCommand::List(c) => c.run(config).await,
            KeysCommand::Check(c) => c.run(config).await,
        }
    }
}
