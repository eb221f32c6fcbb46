//! `migrate`: applies the storage schema migrations embedded in this binary.

use std::process::ExitCode;

use clap::Args;

use crate::{
    commands::CommandResult,
    config::Config,
    storage::{config::Target, postgres::PgStore},
};

#[derive(Debug, Args)]
pub struct Migrate {
    /// Only check: report the schema version and fail if migrations are pending or the
    /// database is newer than this binary.
    #[arg(long)]
    check: bool,
}

impl Migrate {
    pub async fn run(self, config: &Config) -> CommandResult {
        let storage = config.needs_storage("migrate")?;
        let settings = match storage.target()? {
            Target::Memory => {
                println!(
                    "[storage] url = \"memory\": the in-memory store has no schema to migrate"
                );
                return Ok(ExitCode::SUCCESS);
            }
            Target::Postgres(settings) => *settings,
        };
        let store = PgStore::connect(settings).await?;
        if self.check {
            let version = store.check_schema().await?;
            println!(
                "schema sbtc_signer at {} is current (version {version})",
                store.redacted_url()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let report = store.migrate().await?;
        for (version, name) in &report.applied {
            println!("applied migration {version} ({name})");
        }
        let version = report
            .applied
            .last()
            .map(|(v, _)| *v)
            .unwrap_or(report.version);
        if report.applied.is_empty() {
            println!(
                "schema sbtc_signer at {} is already current (version {version})",
                store.redacted_url()
            );
        } else {
            println!(
                "schema sbtc_signer at {} is now at version {version}",
                store.redacted_url()
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
