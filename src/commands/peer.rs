//! `peer`: the signer's peer-link identity.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::{
    commands::{close_keys, open_keys, CommandResult},
    config::Config,
    peer::card,
};

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Print what other operators need to admit this signer: identity key, endpoint, certificate
    /// fingerprint and SPKI pin. Makes the certificate (through custody) if none is kept.
    Card(Card),
}

#[derive(Debug, Args)]
pub struct Card {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Print a `[[peer.bootstrap]]` entry to paste into the other signers' configs.
    #[arg(long, conflicts_with = "json")]
    toml: bool,
}

impl PeerCommand {
    pub async fn run(self, config: &Config) -> CommandResult {
        match self {
            PeerCommand::Card(c) => {
                let peer = config.needs_peer("peer card")?;
                let keys = open_keys(config, "peer card").await?;
                let card =
                    crate::keys::with_reason("peer card: certificate", card::card(peer, &keys))
                        .await?;
                close_keys(&keys, "peer card").await?;
                if c.json {
                    println!("{}", serde_json::to_string_pretty(&card)?);
                } else if c.toml {
                    print!("{}", card.to_bootstrap_toml());
                } else {
                    print!("{}", card.to_text());
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
