use std::process::ExitCode;

use clap::Args;

use crate::{
    commands::{open_custody, CommandResult},
    config::Config,
};

#[derive(Debug, Args)]
pub struct List {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl List {
    pub async fn run(self, config: &Config) -> CommandResult {
        let custody = open_custody(config, "keys list").await?;
        let mut keys = custody.list().await?;
        keys.sort_by(|a, b| a.label.cmp(&b.label));
        if self.json {
            println!("{}", serde_json::to_string_pretty(&keys)?);
            return Ok(ExitCode::SUCCESS);
        }
        if keys.is_empty() {
            println!("no keys; create them with `sbtc-hsm-signer keys generate --role identity|tls|seal`");
        }
        for k in keys {
            let pk = k
                .public_key
                .map(|p| p.to_hex())
                .unwrap_or_else(|| "-".into());
            println!("{:<24} {:<10} {}", k.label, k.kind, pk);
        }
        Ok(ExitCode::SUCCESS)
    }
}
