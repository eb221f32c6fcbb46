//! `audit`: the custody audit log.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::{
    commands::CommandResult,
    config::Config,
    storage::{self, OnOpen},
};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit log's hash chain and name the first edited, deleted or reordered entry.
    Verify(Verify),
}

impl AuditCommand {
    pub async fn run(self, config: &Config) -> CommandResult {
        match self {
            AuditCommand::Verify(c) => c.run(config).await,
        }
    }
}

#[derive(Debug, Args)]
pub struct Verify {
    /// The `SEQ:HASH` an earlier `audit verify` printed: fails if that entry is gone or
    /// different, which catches deletion of the newest entries (the chain alone cannot).
    #[arg(long, value_name = "SEQ:HASH")]
    expect_head: Option<String>,
}

/// Parses `SEQ:HASH` (HASH: 64 hex digits).
fn parse_head(text: &str) -> Result<(u64, [u8; 32]), String> {
    let bad =
        || format!("--expect-head {text:?} is not SEQ:HASH (a number, a colon, 64 hex digits)");
    let (seq, hash) = text.split_once(':').ok_or_else(bad)?;
    let seq = seq.parse().map_err(|_| bad())?;
    let hash = hex::decode(hash)
        .ok()
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .ok_or_else(bad)?;
    Ok((seq, hash))
}

impl Verify {
    pub async fn run(self, config: &Config) -> CommandResult {
        let storage = config.needs_storage("audit verify")?;
        let expected = self.expect_head.as_deref().map(parse_head).transpose()?;
        let store = storage::open(storage, OnOpen::CheckSchema).await?;
        let log = store.get_audit_log().await?;
        let report = storage::audit::verify(&log);
        match &report.first_break {
            None => {
                if let Some((seq, hash)) = expected {
                    // Entries up to `report.entries` are intact, so entry `seq` is at index seq - 1.
                    let found = usize::try_from(seq)
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                        .and_then(|i| log.get(i));
                    match found {
                        None => {
                            println!(
                                "audit log BROKEN: entry #{seq} is missing: the log has only {} \
                                 entries, so the newest entries were deleted. Preserve the \
                                 database as evidence and investigate who changed it.",
                                report.entries
                            );
                            return Ok(ExitCode::FAILURE);
                        }
                        Some(e) if e.hash != hash => {
                            println!(
                                "audit log BROKEN: entry #{seq} has hash {}, not the expected {}: \
                                 the log was rewritten from there on. Preserve the database as \
                                 evidence and investigate who changed it.",
                                hex::encode(e.hash),
                                hex::encode(hash)
                            );
                            return Ok(ExitCode::FAILURE);
                        }
                        Some(_) => println!("entry #{seq} matches the expected head"),
                    }
                }
                println!(
                    "audit log intact: {} entries, head {}:{}",
                    report.entries,
                    report.entries,
                    hex::encode(report.head_hash)
                );
                println!(
                    "keep that head (SEQ:HASH) somewhere else and pass it as --expect-head next \
                     time: deleting the newest entries is caught only that way"
                );
                Ok(ExitCode::SUCCESS)
            }
            Some(b) => {
                println!(
                    "audit log BROKEN: {b}. The {} entries before it are intact (last good hash {}). \
                     Preserve the database as evidence and investigate who changed it.",
                    report.entries,
                    hex::encode(report.head_hash)
                );
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
