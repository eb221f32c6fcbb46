//! `keys check`: what backend this is, and whether each role's key works right now.

use std::{process::ExitCode, time::Instant};

use clap::Args;
use sbtc_custody::{BackendInfo, Custody, Health, KeyLabel, PublicKey, Role};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    commands::{close_keys, open_keys, CommandResult},
    config::Config,
};

#[derive(Debug, Args)]
pub struct Check {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    info: BackendInfo,
    health: Health,
    roles: Vec<RoleReport>,
}

#[derive(Debug, Serialize)]
struct RoleReport {
    role: Role,
    label: KeyLabel,
    ok: bool,
    public_key: Option<PublicKey>,
    /// What was tested and how it went.
    self_test: String,
    millis: f64,
}

impl Check {
    pub async fn run(self, config: &Config) -> CommandResult {
        let keys = open_keys(config, "keys check").await?;
        let custody = keys.custody.clone();
        let info = custody.info().await?;
        let health = custody.health().await?;
        let mut roles = Vec::new();
        for role in Role::ALL {
            let label = config.keys.label(role);
            let started = Instant::now();
            let test = self_test(custody.as_ref(), role, &label);
            let reason = format!("keys check: self-test of the {role} key");
            let (ok, public_key, self_test) = match crate::keys::with_reason(reason, test).await {
                Ok((pk, what)) => (true, pk, what),
                Err(e) => (false, None, format!("FAILED: {e}")),
            };
            roles.push(RoleReport {
                role,
                label,
                ok,
                public_key,
                self_test,
                millis: started.elapsed().as_secs_f64() * 1e3,
            });
        }
        if roles.iter().any(|r| r.role == Role::Identity && r.ok) {
            if let Err(e) = close_keys(&keys, "keys check").await {
                eprintln!("warning: the audit log's head was not signed: {e}");
            }
        }
        let report = Report {
            ok: health.ok && roles.iter().all(|r| r.ok),
            info,
            health,
            roles,
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_text(&report);
        }
        Ok(if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

fn print_text(r: &Report) {
    let i = &r.info;
    println!("backend:      {}", i.backend);
    println!(
        "device:       {} {} serial {} version {}",
        i.manufacturer, i.model, i.serial, i.version
    );
    let c = &i.capabilities;
    println!(
        "capabilities: secp256k1={} p256={} seal={} ({}) key_backup={} concurrency={}",
        c.secp256k1, c.p256, c.seal, c.seal_method, c.key_backup, c.max_concurrency
    );
    println!(
        "health:       {} {}",
        if r.health.ok { "ok" } else { "FAILED" },
        r.health.detail
    );
    for role in &r.roles {
        println!(
            "{:<9} '{}': {} ({:.1} ms){}",
            role.role,
            role.label,
            role.self_test,
            role.millis,
            role.public_key
                .map(|p| format!(" public key {p}"))
                .unwrap_or_default()
        );
    }
    println!(
        "{}",
        if r.ok {
            "all checks passed"
        } else {
            "some checks FAILED"
        }
    );
}

/// A random digest, so that a replayed or cached answer cannot pass.
fn fresh_digest(role: Role) -> [u8; 32] {
    let nonce: [u8; 32] = rand::random();
    Sha256::new()
        .chain_update(b"sbtc-hsm-signer keys check ")
        .chain_update(role.as_str())
        .chain_update(nonce)
        .finalize()
        .into()
}

async fn self_test(
    custody: &dyn Custody,
    role: Role,
    label: &KeyLabel,
) -> Result<(Option<PublicKey>, String), Box<dyn std::error::Error>> {
    match role {
        Role::Identity => {
            let PublicKey::Secp256k1(pk) = custody.public_key(label).await? else {
                return Err(format!("key '{label}' is not a secp256k1 key").into());
            };
            let digest = fresh_digest(role);
            let sig = custody.sign_secp256k1_prehash(label, &digest).await?;
            if !sig.verify(&digest, &pk) || sig.recover(&digest)? != pk {
                return Err("the signature does not verify against the public key".into());
            }
            Ok((
                Some(PublicKey::Secp256k1(pk)),
                "sign+verify+recover ok".into(),
            ))
        }
        Role::Tls => {
            let PublicKey::P256(pk) = custody.public_key(label).await? else {
                return Err(format!("key '{label}' is not a P-256 key").into());
            };
            let digest = fresh_digest(role);
            let sig = custody.sign_p256_prehash(label, &digest).await?;
            if !sig.verify(&digest, &pk) {
                return Err("the signature does not verify against the public key".into());
            }
            Ok((Some(PublicKey::P256(pk)), "sign+verify ok".into()))
        }
        Role::Seal => {
            let plain = fresh_digest(role);
            let aad = b"sbtc-hsm-signer keys check";
            let sealed = custody.seal(label, &plain, aad).await?;
            if custody.unseal(label, &sealed, aad).await?.expose() != plain {
                return Err("unsealed bytes differ from the sealed ones".into());
            }
            if custody
                .unseal(label, &sealed, b"another context")
                .await
                .is_ok()
            {
                return Err("unseal accepted a wrong AAD".into());
            }
            Ok((None, "seal+unseal ok, wrong AAD refused".into()))
        }
    }
}
