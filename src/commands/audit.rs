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
    /// The identity public key (66 hex) that must have signed the log's heads. Default: the
    /// `[custody]` section's identity key if the config has one, else the key the log itself names
    /// (which proves the log is consistent, not whose it is).
    #[arg(long, value_name = "KEY")]
    identity: Option<String>,
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
    /// The key the heads must be signed by, and where it came from.
    async fn expected_identity(
        &self,
        config: &Config,
    ) -> Result<Option<(secp256k1::PublicKey, String)>, Box<dyn std::error::Error>> {
        if let Some(text) = &self.identity {
            let key = hex::decode(text.trim())
                .ok()
                .and_then(|b| secp256k1::PublicKey::from_slice(&b).ok())
                .ok_or_else(|| {
                    format!("--identity {text:?} is not a compressed secp256k1 public key (66 hex)")
                })?;
            return Ok(Some((key, "given with --identity".into())));
        }
        let Some(custody) = &config.custody else {
            return Ok(None);
        };
        let keys = crate::keys::Keys::new(crate::keys::open(custody).await?, &config.keys);
        let key = keys.identity_key().await?;
        Ok(Some((
            key,
            format!("the identity key '{}' in [custody]", keys.identity),
        )))
    }

    pub async fn run(self, config: &Config) -> CommandResult {
        let storage = config.needs_storage("audit verify")?;
        let expected = self.expect_head.as_deref().map(parse_head).transpose()?;
        let identity = self.expected_identity(config).await?;
        let store = storage::open(storage, OnOpen::CheckSchema).await?;
        let log = store.get_audit_log().await?;
        let report = storage::audit::verify(&log);
        match &report.first_break {
            None => {
                let heads = storage::audit::verify_heads(&log, identity.as_ref().map(|(k, _)| k));
                if let Some(problem) = &heads.problem {
                    println!(
                        "audit log BROKEN: {problem}. Preserve the database as evidence and \
                         investigate who changed it."
                    );
                    return Ok(ExitCode::FAILURE);
                }
                match (&heads.signer, &identity) {
                    (None, _) => println!(
                        "no signed head yet: the log is protected by its hash chain only"
                    ),
                    (Some(k), Some((_, source))) => println!(
                        "{} signed heads, the newest covering entry #{}, all signed by identity key {} ({source})",
                        heads.signed_heads,
                        heads.last_signed_seq,
                        hex::encode(k.serialize())
                    ),
                    (Some(k), None) => println!(
                        "{} signed heads, the newest covering entry #{}, all signed by identity key {}: \
                         the key the log itself names; pass --identity KEY or a config with [custody] \
                         to check that it is this signer's key",
                        heads.signed_heads,
                        heads.last_signed_seq,
                        hex::encode(k.serialize())
                    ),
                }
                let unsigned = report.entries.saturating_sub(heads.last_signed_seq);
                if heads.signer.is_some() && unsigned > 0 {
                    println!(
                        "{unsigned} entries after #{} are not yet under a signed head (the node \
                         signs at the end of each round and on shutdown; a crash leaves such a tail)",
                        heads.last_signed_seq
                    );
                }
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
