//! Schema migrations, embedded in the binary, applied in order, each in its own transaction
//! together with its row in `sbtc_signer.schema_migrations`, so a failed migration leaves nothing
//! behind and a finished one is never applied twice. An advisory lock keeps two signers (or two
//! `migrate` runs) from migrating at once.

use sha2::{Digest, Sha256};
use tokio_postgres::{error::SqlState, Client, GenericClient};

use crate::storage::{Error, ErrorKind, Result};

/// One migration: `version` orders them (1, 2, 3, ...).
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> Vec<u8> {
        Sha256::digest(self.sql.as_bytes()).to_vec()
    }
}

/// This binary's migrations.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "dkg_shares_signer_position",
        sql: include_str!("../migrations/0002_dkg_shares_signer_position.sql"),
    },
    Migration {
        version: 3,
        name: "audit_outcome",
        sql: include_str!("../migrations/0003_audit_outcome.sql"),
    },
    Migration {
        version: 4,
        name: "whole_transaction_guard",
        sql: include_str!("../migrations/0004_whole_transaction_guard.sql"),
    },
    Migration {
        version: 5,
        name: "chain_observer",
        sql: include_str!("../migrations/0005_chain_observer.sql"),
    },
    Migration {
        version: 6,
        name: "stacks_events",
        sql: include_str!("../migrations/0006_stacks_events.sql"),
    },
];

/// The schema version this binary needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

const MIGRATION_LOCK: i64 = 0x5342_5443_4d49_4752; // "SBTCMIGR"

const BOOTSTRAP: &str = "
    CREATE SCHEMA IF NOT EXISTS sbtc_signer;
    CREATE TABLE IF NOT EXISTS sbtc_signer.schema_migrations (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        checksum BYTEA NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );";

/// What `migrate` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<(i32, &'static str)>,
    /// The schema version afterwards.
    pub version: i32,
}

fn db(op: &'static str, kind: ErrorKind, what: &str, e: tokio_postgres::Error) -> Error {
    Error::new(kind, op, format!("{what}: {}", super::describe(&e)))
}

/// The applied migrations (version, name, checksum); empty if the schema was never migrated.
pub async fn applied<C: GenericClient>(client: &C) -> Result<Vec<(i32, String, Vec<u8>)>> {
    let rows = match client
        .query(
            "SELECT version, name, checksum FROM sbtc_signer.schema_migrations ORDER BY version",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => {
            return Err(db(
                "schema check",
                ErrorKind::Unavailable,
                "cannot read sbtc_signer.schema_migrations",
                e,
            ))
        }
    };
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(|e| bad_row(&e))?,
                r.try_get(1).map_err(|e| bad_row(&e))?,
                r.try_get(2).map_err(|e| bad_row(&e))?,
            ))
        })
        .collect()
}

fn bad_row(e: &tokio_postgres::Error) -> Error {
    Error::new(
        ErrorKind::Query,
        "schema check",
        format!("unreadable row in sbtc_signer.schema_migrations: {e}"),
    )
}

/// Compares what the database has applied with `migrations`: refuses a database that is newer
/// than them or that applied a different migration under the same version. Returns the pending
/// ones.
pub fn pending<'m>(
    op: &'static str,
    applied: &[(i32, String, Vec<u8>)],
    migrations: &'m [Migration],
) -> Result<Vec<&'m Migration>> {
    let known = migrations.last().map(|m| m.version).unwrap_or(0);
    if let Some((v, name, _)) = applied.iter().find(|(v, _, _)| *v > known) {
        return Err(Error::new(
            ErrorKind::SchemaTooNew,
            op,
            format!(
                "the database has schema version {v} ({name}) but this binary knows versions up \
                 to {known}; refusing to use it"
            ),
        ));
    }
    for (v, name, checksum) in applied {
        match migrations.iter().find(|m| m.version == *v) {
            Some(m) if &m.checksum() == checksum => {}
            Some(m) => {
                return Err(Error::new(
                    ErrorKind::SchemaMismatch,
                    op,
                    format!(
                        "migration {v} in the database ({name}) differs from this binary's \
                         migration {v} ({})",
                        m.name
                    ),
                ))
            }
            None => {
                return Err(Error::new(
                    ErrorKind::SchemaMismatch,
                    op,
                    format!("the database applied migration {v} ({name}), unknown to this binary"),
                ))
            }
        }
    }
    Ok(migrations
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version))
        .collect())
}

/// Applies every pending migration of `migrations` (normally [`MIGRATIONS`]; tests pass others).
pub async fn migrate(client: &mut Client, migrations: &[Migration]) -> Result<MigrationReport> {
    const OP: &str = "migrate";
    let unavailable = |what: &'static str| {
        move |e: tokio_postgres::Error| db(OP, ErrorKind::Unavailable, what, e)
    };
    {
        let tx = client
            .transaction()
            .await
            .map_err(unavailable("cannot begin a transaction"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(unavailable("cannot take the migration lock"))?;
        tx.batch_execute(BOOTSTRAP).await.map_err(|e| {
            db(
                OP,
                ErrorKind::Migration,
                "cannot create schema sbtc_signer and its migrations table (does the user have \
                 CREATE on the database?)",
                e,
            )
        })?;
        tx.commit()
            .await
            .map_err(unavailable("cannot commit the migrations table"))?;
    }
    let mut report = MigrationReport {
        applied: Vec::new(),
        version: 0,
    };
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(unavailable("cannot begin a transaction"))?;
        // Re-read under the lock: another process may have migrated meanwhile.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(unavailable("cannot take the migration lock"))?;
        let done = applied(&tx).await?;
        let todo = pending(OP, &done, migrations)?;
        report.version = done.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
        let Some(m) = todo.first() else {
            // Nothing left; the empty transaction just releases the lock.
            tx.commit()
                .await
                .map_err(unavailable("cannot release the migration lock"))?;
            return Ok(report);
        };
        let failed = |e: tokio_postgres::Error| {
            Error::new(
                ErrorKind::Migration,
                OP,
                format!(
                    "migration {} ({}) failed and was rolled back: {}",
                    m.version,
                    m.name,
                    super::describe(&e)
                ),
            )
        };
        // Dropping `tx` on error rolls everything in it back.
        tx.batch_execute(m.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO sbtc_signer.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        report.applied.push((m.version, m.name));
    }
}

/// Checks that the schema is exactly this binary's: not older (run `migrate`), not newer.
pub async fn check(client: &Client) -> Result<i32> {
    const OP: &str = "schema check";
    let done = applied(client).await?;
    let todo = pending(OP, &done, MIGRATIONS)?;
    let version = done.iter().map(|(v, _, _)| *v).max().unwrap_or(0);
    if let Some(first) = todo.first() {
        return Err(Error::new(
            ErrorKind::SchemaTooOld,
            OP,
            format!(
                "the database schema is at version {version} but this binary needs {}; \
                 migration {} ({}) and later are not applied",
                latest_version(),
                first.version,
                first.name
            ),
        )
        .hint("run `sbtc-hsm-signer migrate` (or start with migrations enabled) to apply them"));
    }
    Ok(version)
}
