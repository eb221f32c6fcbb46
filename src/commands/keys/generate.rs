use std::process::ExitCode;

use clap::Args;
use sbtc_custody::{KeyLabel, Role};

use crate::{
    commands::{open_custody, CommandResult},
    config::Config,
};

#[derive(Debug, Args)]
pub struct Generate {
    /// Which key: identity (secp256k1), tls (P-256) or seal.
    #[arg(long)]
    role: Role,
    /// Label in the backend; defaults to the `[keys]` entry for the role, else the role's name.
    #[arg(long)]
    label: Option<KeyLabel>,
}

impl Generate {
    pub async fn run(self, config: &Config) -> CommandResult {
        let label = self.label.unwrap_or_else(|| config.keys.label(self.role));
        let custody = open_custody(config, "keys generate").await?;
        let info = custody.generate(&label, self.role.kind()).await?;
        match info.public_key {
            Some(pk) => println!(
                "generated {} key '{}' ({}) public key {}",
                self.role, info.label, info.kind, pk
            ),
            None => println!(
                "generated {} key '{}' ({})",
                self.role, info.label, info.kind
            ),
        }
        Ok(ExitCode::SUCCESS)
    }
}
