//! The PostgreSQL store: tokio-postgres behind a deadpool pool, schema `sbtc_signer`.
//!
//! Every operation runs in [`PgStore::run`], which retries through connection loss (a server
//! restart, a failover) with backoff until `operation_retry` runs out. That is safe because every
//! write is idempotent: rows are keyed by what they describe and inserted with
//! `ON CONFLICT DO NOTHING`, the audit log dedups on `entry_id`, and the guard answers a repeat of
//! the same decision with `Repeat`. So an acknowledged write is never lost, and a write whose
//! acknowledgement was lost is never stored twice.

pub mod migrations;

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use bitcoin::{
    hashes::Hash as _, secp256k1::PublicKey, Amount, BlockHash, OutPoint, ScriptBuf, TapSighash,
    Txid,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use sbtc_custody::SealedBlob;
use tokio_postgres::{error::SqlState, NoTls, Row};

use super::{
    audit::{self, AuditEntry, AuditRecord},
    config::PgSettings,
    guard::{self, Check, GuardDecision, Proposal, SpendDecision, SpendIntent},
    model::*,
    tls::{self, TlsPolicy, Verify},
    DbRead, DbWrite, Error, ErrorKind, Result,
};
use crate::{keys::AggregateKey, signing::DkgId};

pub use migrations::{MigrationReport, MIGRATIONS};

const AUDIT_LOCK: i64 = 0x5342_5443_4155_4454; // "SBTCAUDT"
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why one attempt failed: worth retrying (the connection), or not (everything else).
pub(crate) enum Failure {
    Transient(String),
    Fatal(ErrorKind, String),
}

type Attempt<T> = std::result::Result<T, Failure>;

/// A one-line description of a tokio-postgres error, with the server's message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", db.message(), db.severity(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        // 08: connection exceptions; 57P01-3: admin/crash shutdown, cannot connect now;
        // 40001/40P01: serialization failure, deadlock (the transaction is safe to rerun).
        return c.starts_with("08")
            || code == &SqlState::ADMIN_SHUTDOWN
            || code == &SqlState::CRASH_SHUTDOWN
            || code == &SqlState::CANNOT_CONNECT_NOW
            || code == &SqlState::T_R_SERIALIZATION_FAILURE
            || code == &SqlState::T_R_DEADLOCK_DETECTED;
    }
    // No server error code: an I/O error, a refused or timed-out connection.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("timeout") || e.to_string().contains("connect")
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_transient(&e) {
            Failure::Transient(describe(&e))
        } else {
            Failure::Fatal(ErrorKind::Query, describe(&e))
        }
    }
}

fn pool_failure(e: deadpool_postgres::PoolError) -> Failure {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => Failure::from(e),
        PoolError::Timeout(_) => Failure::Transient("timed out waiting for a connection".into()),
        other => Failure::Fatal(ErrorKind::Unavailable, other.to_string()),
    }
}

fn range(what: &str) -> Failure {
    Failure::Fatal(
        ErrorKind::OutOfRange,
        format!("{what} does not fit in BIGINT"),
    )
}

fn i64_of(v: u64, what: &str) -> Attempt<i64> {
    i64::try_from(v).map_err(|_| range(what))
}

fn corrupt(what: &str) -> Failure {
    Failure::Fatal(
        ErrorKind::Query,
        format!("the database holds an invalid {what}; was the row edited by hand?"),
    )
}

/// Typed column readers: a wrong length or a negative amount is a clear error, not a panic.
trait RowExt {
    fn bytes(&self, col: &str) -> Attempt<Vec<u8>>;
    fn fixed<T>(&self, col: &str, f: fn(&[u8]) -> Option<T>) -> Attempt<T>;
    fn u64(&self, col: &str) -> Attempt<u64>;
    fn amount(&self, col: &str) -> Attempt<Amount>;
    fn script(&self, col: &str) -> Attempt<ScriptBuf>;
    fn get_as<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, col: &str) -> Attempt<T>;
}

impl RowExt for Row {
    fn bytes(&self, col: &str) -> Attempt<Vec<u8>> {
        self.get_as(col)
    }
    fn fixed<T>(&self, col: &str, f: fn(&[u8]) -> Option<T>) -> Attempt<T> {
        let b: &[u8] = self.get_as(col)?;
        f(b).ok_or_else(|| corrupt(col))
    }
    fn u64(&self, col: &str) -> Attempt<u64> {
        let v: i64 = self.get_as(col)?;
        u64::try_from(v).map_err(|_| corrupt(col))
    }
    fn amount(&self, col: &str) -> Attempt<Amount> {
        self.u64(col).map(Amount::from_sat)
    }
    fn script(&self, col: &str) -> Attempt<ScriptBuf> {
        self.bytes(col).map(ScriptBuf::from_bytes)
    }
    fn get_as<'a, T: tokio_postgres::types::FromSql<'a>>(&'a self, col: &str) -> Attempt<T> {
        self.try_get(col)
            .map_err(|e| Failure::Fatal(ErrorKind::Query, format!("column {col}: {e}")))
    }
}

// Column decoders for `RowExt::fixed`. Hashes are stored in internal byte order.
fn parse_block_hash(b: &[u8]) -> Option<BlockHash> {
    b.try_into().ok().map(BlockHash::from_byte_array)
}

fn parse_txid(b: &[u8]) -> Option<Txid> {
    b.try_into().ok().map(Txid::from_byte_array)
}

fn parse_sighash(b: &[u8]) -> Option<TapSighash> {
    b.try_into().ok().map(TapSighash::from_byte_array)
}

/// A compressed (33-byte) secp256k1 key; an uncompressed one is not what we write.
fn parse_public_key(b: &[u8]) -> Option<PublicKey> {
    (b.len() == 33)
        .then(|| PublicKey::from_slice(b).ok())
        .flatten()
}

fn parse_aggregate_key(b: &[u8]) -> Option<AggregateKey> {
    AggregateKey::from_slice(b).ok()
}

fn outpoint(row: &Row, txid_col: &str, vout_col: &str) -> Attempt<OutPoint> {
    let vout = row.u64(vout_col)?;
    Ok(OutPoint {
        txid: row.fixed(txid_col, parse_txid)?,
        vout: u32::try_from(vout).map_err(|_| corrupt(vout_col))?,
    })
}

fn keys(row: &Row, col: &str) -> Attempt<Vec<PublicKey>> {
    let raw: Vec<Vec<u8>> = row.get_as(col)?;
    raw.iter()
        .map(|k| parse_public_key(k).ok_or_else(|| corrupt(col)))
        .collect()
}

/// A signer set as the BYTEA[] column holds it: compressed keys.
fn key_column(keys: &[PublicKey]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.serialize().to_vec()).collect()
}

fn u16_of(row: &Row, col: &str) -> Attempt<u16> {
    let v: i32 = row.get_as(col)?;
    u16::try_from(v).map_err(|_| corrupt(col))
}

/// Prepares (once per connection) and runs a statement.
macro_rules! query {
    ($c:expr, $sql:expr, $params:expr) => {{
        let st = $c.prepare_cached($sql).await?;
        $c.query(&st, $params).await?
    }};
}
macro_rules! query_opt {
    ($c:expr, $sql:expr, $params:expr) => {{
        let st = $c.prepare_cached($sql).await?;
        $c.query_opt(&st, $params).await?
    }};
}
macro_rules! execute {
    ($c:expr, $sql:expr, $params:expr) => {{
        let st = $c.prepare_cached($sql).await?;
        $c.execute(&st, $params).await?
    }};
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; the pool is internal.
pub struct PgStore {
    pool: Pool,
    settings: PgSettings,
    /// Attempts retried after a connection failure (for metrics and the restart test).
    retries: AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.settings.redacted_url)
            .finish()
    }
}

impl PgStore {
    /// Builds the pool and waits for the server: while it is unreachable, logs why and retries
    /// with backoff until `connect_retry` runs out, then fails with a clear error. Does not touch
    /// the schema (see [`PgStore::migrate`] and [`PgStore::check_schema`]).
    pub async fn connect(settings: PgSettings) -> Result<PgStore> {
        let manager_config = || ManagerConfig {
            // Fast: a connection the server closed is detected and replaced on checkout.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match settings.tls.client_config()? {
            None => Manager::from_config(settings.pg.clone(), NoTls, manager_config()),
            Some(tls) => Manager::from_config(
                settings.pg.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config(),
            ),
        };
        if matches!(
            settings.tls,
            TlsPolicy::Required {
                verify: Verify::Nothing,
                ..
            }
        ) {
            tracing::warn!(
                url = %settings.redacted_url,
                "sslmode=prefer/require without sslrootcert: the connection is encrypted but the \
                 server's certificate is not checked, so an active attacker can stand in for it; \
                 use sslmode=verify-full with sslrootcert"
            );
        }
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, "connect", e.to_string()))?;
        let store = PgStore {
            pool,
            settings,
            retries: AtomicU64::new(0),
        };
        let deadline = Instant::now() + store.settings.connect_retry;
        let mut delay = Duration::from_millis(100);
        loop {
            match store.pool.get().await {
                Ok(_) => {
                    tracing::info!(url = %store.settings.redacted_url, tls = %store.settings.tls.describe(), "connected to PostgreSQL");
                    return Ok(store);
                }
                Err(e) => {
                    let detail = match store.pool_failure(e) {
                        Failure::Transient(d) => d,
                        Failure::Fatal(ErrorKind::Tls, d) => {
                            return Err(Error::new(
                                ErrorKind::Tls,
                                "connect",
                                format!(
                                    "cannot talk to PostgreSQL at {} safely: {d}",
                                    store.settings.redacted_url
                                ),
                            ));
                        }
                        Failure::Fatal(_, d) => {
                            // Wrong password, unknown database or user: retrying will not help.
                            return Err(Error::new(
                                ErrorKind::Unavailable,
                                "connect",
                                format!(
                                    "PostgreSQL at {} refused us: {d}",
                                    store.settings.redacted_url
                                ),
                            ));
                        }
                    };
                    if Instant::now() + delay > deadline {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            "connect",
                            format!(
                                "cannot reach PostgreSQL at {} after trying for {:?}: {detail}",
                                store.settings.redacted_url, store.settings.connect_retry
                            ),
                        ));
                    }
                    tracing::warn!(
                        url = %store.settings.redacted_url,
                        error = %detail,
                        retry_in = ?delay,
                        "PostgreSQL is unreachable; is the server running? retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A failure to get a connection; a TLS failure is not retried (it does not go away).
    fn pool_failure(&self, e: deadpool_postgres::PoolError) -> Failure {
        if let deadpool_postgres::PoolError::Backend(e) = &e {
            if let Some(why) = tls::explain(e, &self.settings.tls) {
                return Failure::Fatal(ErrorKind::Tls, why);
            }
        }
        pool_failure(e)
    }

    /// Whether the server sees this store's session as TLS, and with which protocol version
    /// (from `pg_stat_ssl`): what the operator can check against `sslmode`.
    pub async fn session_tls(&self) -> Result<Option<String>> {
        self.run("session_tls", |c| async move {
            let row = query_opt!(
                c,
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[]
            );
            Ok(match row {
                Some(r) if r.get_as::<bool>("ssl")? => {
                    Some(r.get_as::<Option<String>>("version")?.unwrap_or_default())
                }
                _ => None,
            })
        })
        .await
    }

    /// How many operation attempts were retried after a connection failure since connect.
    pub fn retry_count(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The url, without any password.
    pub fn redacted_url(&self) -> &str {
        &self.settings.redacted_url
    }

    /// Applies this binary's pending migrations.
    pub async fn migrate(&self) -> Result<MigrationReport> {
        self.migrate_with(MIGRATIONS).await
    }

    /// Applies `list` (tests use it to exercise a failing migration).
    pub async fn migrate_with(&self, list: &[migrations::Migration]) -> Result<MigrationReport> {
        let mut client = self.client("migrate").await?;
        migrations::migrate(&mut client, list).await
    }

    /// Refuses a schema older or newer than this binary's.
    pub async fn check_schema(&self) -> Result<i32> {
        let client = self.client("schema check").await?;
        migrations::check(&client).await
    }

    async fn client(&self, op: &'static str) -> Result<Object> {
        self.run(op, |c| async move { Ok(c) }).await
    }

    /// Runs one attempt per pooled connection until it succeeds, fails for a reason other than
    /// the connection, or `operation_retry` runs out.
    async fn run<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(Object) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.settings.operation_retry;
        let mut delay = Duration::from_millis(50);
        loop {
            let outcome = match self.pool.get().await {
                Ok(client) => attempt(client).await,
                Err(e) => Err(self.pool_failure(e)),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(kind, detail)) => return Err(Error::new(kind, op, detail)),
                Err(Failure::Transient(detail)) => {
                    if Instant::now() + delay > deadline {
                        return Err(Error::new(
                            ErrorKind::Unavailable,
                            op,
                            format!(
                                "PostgreSQL at {} stayed unreachable for {:?}: {detail}",
                                self.settings.redacted_url, self.settings.operation_retry
                            ),
                        ));
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(operation = op, error = %detail, retry_in = ?delay, "database operation failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

const WINDOW_CTE: &str = "WITH RECURSIVE chain AS (
        SELECT block_hash, parent_hash, 1::BIGINT AS depth
          FROM sbtc_signer.bitcoin_blocks WHERE block_hash = $1
        UNION ALL
        SELECT b.block_hash, b.parent_hash, c.depth + 1
          FROM sbtc_signer.bitcoin_blocks b JOIN chain c ON b.block_hash = c.parent_hash
         WHERE c.depth < $2
    )";

const STACKS_BLOCK_COLUMNS: &str =
    "block_hash, block_height, parent_hash, bitcoin_anchor, bitcoin_anchor_height";

fn stacks_block(r: &Row) -> Attempt<StacksBlock> {
    Ok(StacksBlock {
        hash: r.fixed("block_hash", StacksBlockHash::from_slice)?,
        height: r.u64("block_height")?,
        parent_hash: r.fixed("parent_hash", StacksBlockHash::from_slice)?,
        bitcoin_anchor: r.fixed("bitcoin_anchor", parse_block_hash)?,
        bitcoin_anchor_height: r.u64("bitcoin_anchor_height")?,
    })
}

async fn insert_stacks_block<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    block: &StacksBlock,
) -> Attempt<()> {
    let height = i64_of(block.height, "block height")?;
    let anchor_height = i64_of(block.bitcoin_anchor_height, "anchor height")?;
    execute!(
        c,
        "INSERT INTO sbtc_signer.stacks_blocks (block_hash, block_height, parent_hash, \
         bitcoin_anchor, bitcoin_anchor_height) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &[
            &block.hash.as_bytes().as_slice(),
            &height,
            &block.parent_hash.as_bytes().as_slice(),
            &block.bitcoin_anchor.as_byte_array().as_slice(),
            &anchor_height
        ]
    );
    Ok(())
}

/// Which registry events a query wants (see [`canonical_events`]).
enum EventFilter {
    Since(u64),
    Request(u64),
    Deposit(OutPoint),
    Topic(RegistryTopic),
}

/// See `DbRead::get_stacks_canonical_tip`. Stacks blocks are tried highest first; each one's
/// anchor is checked by walking the canonical Bitcoin chain down to the anchor's height only,
/// so the usual case (the highest block is canonical) costs a few rows, however long the
/// stored chains are.
async fn stacks_canonical_tip<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
) -> Attempt<Option<StacksBlock>> {
    let bitcoin_tip = query_opt!(
        c,
        "SELECT b.block_hash FROM sbtc_signer.bitcoin_canonical_tip t \
           JOIN sbtc_signer.bitcoin_blocks b ON b.block_hash = t.block_hash \
         UNION ALL \
         (SELECT block_hash FROM sbtc_signer.bitcoin_blocks \
           WHERE NOT EXISTS (SELECT 1 FROM sbtc_signer.bitcoin_canonical_tip) \
           ORDER BY block_height DESC, block_hash ASC LIMIT 1)",
        &[]
    );
    let Some(bitcoin_tip) = bitcoin_tip else {
        return Ok(None);
    };
    let bitcoin_tip: Vec<u8> = bitcoin_tip.bytes("block_hash")?;
    let mut verdicts: std::collections::HashMap<Vec<u8>, bool> = Default::default();
    const PAGE: i64 = 64;
    let mut offset = 0i64;
    loop {
        let rows = query!(
            c,
            "SELECT s.block_hash, s.block_height, s.parent_hash, s.bitcoin_anchor, \
                    s.bitcoin_anchor_height, b.block_height AS anchor_stored_height \
               FROM sbtc_signer.stacks_blocks s \
               JOIN sbtc_signer.bitcoin_blocks b ON b.block_hash = s.bitcoin_anchor \
              ORDER BY s.block_height DESC, s.block_hash ASC LIMIT $1 OFFSET $2",
            &[&PAGE, &offset]
        );
        if rows.is_empty() {
            return Ok(None);
        }
        for r in &rows {
            let anchor = r.bytes("bitcoin_anchor")?;
            let canonical = match verdicts.get(&anchor) {
                Some(v) => *v,
                None => {
                    let anchor_height: i64 = r.get_as("anchor_stored_height")?;
                    let found = query!(
                        c,
                        "WITH RECURSIVE chain AS (
                            SELECT block_hash, parent_hash, block_height
                              FROM sbtc_signer.bitcoin_blocks WHERE block_hash = $1
                            UNION -- not ALL: a repeated row ends the walk
                            SELECT b.block_hash, b.parent_hash, b.block_height
                              FROM sbtc_signer.bitcoin_blocks b JOIN chain c ON b.block_hash = c.parent_hash
                             WHERE c.block_height > $3
                         )
                         SELECT 1 FROM chain WHERE block_hash = $2",
                        &[&bitcoin_tip, &anchor, &anchor_height]
                    );
                    let v = !found.is_empty();
                    verdicts.insert(anchor, v);
                    v
                }
            };
            if canonical {
                return stacks_block(r).map(Some);
            }
        }
        offset += PAGE;
    }
}

/// The canonical Stacks chain's registry events that `filter` selects, in chain order: the
/// chain is walked from the tip down to the lowest block holding a candidate event, no further.
async fn canonical_events<C: deadpool_postgres::GenericClient + Sync>(
    c: &C,
    filter: EventFilter,
) -> Attempt<Vec<StoredRegistryEvent>> {
    let Some(tip) = stacks_canonical_tip(c).await? else {
        return Ok(Vec::new());
    };
    let (condition, key): (
        &str,
        Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>,
    ) = match &filter {
        EventFilter::Since(h) => ("TRUE", vec![Box::new(i64_of(*h, "height")?)]),
        EventFilter::Request(id) => (
            "e.request_id = $3",
            vec![Box::new(i64_of(*id, "request id")?)],
        ),
        EventFilter::Deposit(op) => (
            "e.deposit_txid = $3 AND e.deposit_output_index = $4",
            vec![
                Box::new(op.txid.as_byte_array().to_vec()),
                Box::new(i64::from(op.vout)),
            ],
        ),
        EventFilter::Topic(t) => ("e.topic = $3", vec![Box::new(t.as_str().to_owned())]),
    };
    let floor: i64 = match filter {
        EventFilter::Since(h) => i64_of(h, "height")?,
        _ => {
            // The lowest block holding a candidate; none: nothing to walk to.
            let sql = format!(
                "SELECT min(b.block_height) AS floor FROM sbtc_signer.stacks_registry_events e \
                   JOIN sbtc_signer.stacks_blocks b ON b.block_hash = e.block_hash \
                  WHERE {}",
                condition.replace("$3", "$1").replace("$4", "$2")
            );
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                key.iter().map(|k| &**k as _).collect();
            let row = query_opt!(c, &sql, &params);
            match row
                .map(|r| r.get_as::<Option<i64>>("floor"))
                .transpose()?
                .flatten()
            {
                Some(f) => f,
                None => return Ok(Vec::new()),
            }
        }
    };
    let sql = format!(
        "WITH RECURSIVE chain AS (
            SELECT block_hash, parent_hash, block_height
              FROM sbtc_signer.stacks_blocks WHERE block_hash = $1
            UNION -- not ALL: a repeated row ends the walk
            SELECT s.block_hash, s.parent_hash, s.block_height
              FROM sbtc_signer.stacks_blocks s JOIN chain c ON s.block_hash = c.parent_hash
             WHERE c.block_height > $2
         )
         SELECT e.block_hash, e.txid, e.event_index, e.position, e.topic, e.request_id,
                e.deposit_txid, e.deposit_output_index, e.raw_value, c.block_height
           FROM chain c JOIN sbtc_signer.stacks_registry_events e ON e.block_hash = c.block_hash
          WHERE c.block_height >= $2 AND {}
          ORDER BY c.block_height, e.position, e.txid, e.event_index",
        if matches!(filter, EventFilter::Since(_)) {
            "TRUE"
        } else {
            condition
        }
    );
    let tip_hash = tip.hash.as_bytes().to_vec();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&tip_hash, &floor];
    if !matches!(filter, EventFilter::Since(_)) {
        params.extend(
            key.iter()
                .map(|k| &**k as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
    }
    let rows = query!(c, &sql, &params);
    rows.iter().map(registry_event).collect()
}

fn registry_event(r: &Row) -> Attempt<StoredRegistryEvent> {
    let topic: String = r.get_as("topic")?;
    let request_id: Option<i64> = r.get_as("request_id")?;
    let deposit_txid: Option<&[u8]> = r.get_as("deposit_txid")?;
    let deposit_vout: Option<i64> = r.get_as("deposit_output_index")?;
    let u32_of =
        |col: &str| -> Attempt<u32> { u32::try_from(r.u64(col)?).map_err(|_| corrupt(col)) };
    Ok(StoredRegistryEvent {
        event: RegistryEventRecord {
            block_hash: r.fixed("block_hash", StacksBlockHash::from_slice)?,
            txid: r.fixed("txid", StacksTxid::from_slice)?,
            event_index: u32_of("event_index")?,
            position: u32_of("position")?,
            topic: RegistryTopic::parse(&topic).ok_or_else(|| corrupt("topic"))?,
            request_id: request_id
                .map(|id| u64::try_from(id).map_err(|_| corrupt("request_id")))
                .transpose()?,
            deposit: match (deposit_txid, deposit_vout) {
                (Some(t), Some(v)) => Some(OutPoint {
                    txid: parse_txid(t).ok_or_else(|| corrupt("deposit_txid"))?,
                    vout: u32::try_from(v).map_err(|_| corrupt("deposit_output_index"))?,
                }),
                (None, None) => None,
                _ => return Err(corrupt("deposit outpoint")),
            },
            raw_value: r.bytes("raw_value")?,
        },
        block_height: r.u64("block_height")?,
    })
}

fn bitcoin_block(r: &Row) -> Attempt<BitcoinBlock> {
    Ok(BitcoinBlock {
        hash: r.fixed("block_hash", parse_block_hash)?,
        height: r.u64("block_height")?,
        parent_hash: r.fixed("parent_hash", parse_block_hash)?,
    })
}

fn deposit(r: &Row) -> Attempt<DepositRequest> {
    Ok(DepositRequest {
        outpoint: outpoint(r, "txid", "output_index")?,
        amount: r.amount("amount")?,
        max_fee: r.amount("max_fee")?,
        recipient: r.get_as("recipient")?,
        deposit_script: r.script("deposit_script")?,
        reclaim_script: r.script("reclaim_script")?,
        signers_public_key: r.fixed("signers_public_key", parse_aggregate_key)?,
    })
}

fn transaction(r: &Row, col: &str) -> Attempt<bitcoin::Transaction> {
    let raw: &[u8] = r.get_as(col)?;
    bitcoin::consensus::deserialize(raw).map_err(|_| corrupt(col))
}

fn submission(r: &Row) -> Attempt<DepositSubmissionRecord> {
    let peer: Option<&[u8]> = r.get_as("source_peer")?;
    Ok(DepositSubmissionRecord {
        outpoint: outpoint(r, "txid", "output_index")?,
        deposit_script: r.script("deposit_script")?,
        reclaim_script: r.script("reclaim_script")?,
        transaction: transaction(r, "tx")?,
        source: match peer {
            None => SubmissionSource::Wallet,
            Some(k) => {
                SubmissionSource::Peer(parse_public_key(k).ok_or_else(|| corrupt("source_peer"))?)
            }
        },
    })
}

fn withdrawal(r: &Row) -> Attempt<WithdrawalRequest> {
    Ok(WithdrawalRequest {
        request_id: r.u64("request_id")?,
        stacks_txid: r.fixed("txid", StacksTxid::from_slice)?,
        stacks_block_hash: r.fixed("block_hash", StacksBlockHash::from_slice)?,
        recipient: r.script("recipient")?,
        amount: r.amount("amount")?,
        max_fee: r.amount("max_fee")?,
        sender: r.get_as("sender_address")?,
    })
}

fn dkg(r: &Row) -> Attempt<StoredDkgShares> {
    let status: String = r.get_as("status")?;
    let dkg_id: i64 = r.get_as("dkg_id")?;
    let signer_index: i32 = r.get_as("signer_index")?;
    Ok(StoredDkgShares {
        shares: DkgShares {
            aggregate_key: r.fixed("aggregate_key", parse_aggregate_key)?,
            dkg_id: DkgId(
                u64::try_from(dkg_id)
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| corrupt("dkg_id"))?,
            ),
            signer_index: u32::try_from(signer_index).map_err(|_| corrupt("signer_index"))?,
            sealed_private_shares: SealedBlob::from_bytes(r.bytes("encrypted_private_shares")?),
            public_shares: r.bytes("public_shares")?,
            signer_set: keys(r, "signer_set_public_keys")?,
            threshold: u16_of(r, "signature_share_threshold")?,
            status: DkgSharesStatus::parse(&status).ok_or_else(|| corrupt("dkg_shares_status"))?,
            started_at_block_hash: r.fixed("started_at_bitcoin_block_hash", parse_block_hash)?,
            started_at_block_height: r.u64("started_at_bitcoin_block_height")?,
        },
        created_at: r.get_as::<SystemTime>("created_at")?,
    })
}

const DKG_COLUMNS: &str =
    "aggregate_key, dkg_id, signer_index, encrypted_private_shares, public_shares, \
    signer_set_public_keys, signature_share_threshold, dkg_shares_status::TEXT AS status, \
    started_at_bitcoin_block_hash, started_at_bitcoin_block_height, created_at";

fn audit_entry(r: &Row) -> Attempt<AuditEntry> {
    let fixed32 = |col: &str| r.fixed(col, |b| <[u8; 32]>::try_from(b).ok());
    Ok(AuditEntry {
        seq: r.u64("seq")?,
        record: AuditRecord {
            entry_id: r.fixed("entry_id", |b| <[u8; 16]>::try_from(b).ok())?,
            at: r.get_as::<SystemTime>("at")?,
            key_label: r.get_as("key_label")?,
            operation: r.get_as("operation")?,
            message: r.bytes("message")?,
            reason: r.get_as("reason")?,
            outcome: r.get_as("outcome")?,
        },
        prev_hash: fixed32("prev_hash")?,
        hash: fixed32("hash")?,
    })
}

const AUDIT_COLUMNS: &str =
    "seq, entry_id, at, key_label, operation, message, reason, outcome, prev_hash, hash";

#[async_trait]
impl DbRead for PgStore {
    async fn get_bitcoin_block(&self, hash: &BlockHash) -> Result<Option<BitcoinBlock>> {
        self.run("get_bitcoin_block", |c| async move {
            let row = query_opt!(
                c,
                "SELECT block_hash, block_height, parent_hash FROM sbtc_signer.bitcoin_blocks WHERE block_hash = $1",
                &[&hash.as_byte_array().as_slice()]
            );
            row.as_ref().map(bitcoin_block).transpose()
        })
        .await
    }

    async fn get_bitcoin_canonical_tip(&self) -> Result<Option<BitcoinBlock>> {
        self.run("get_bitcoin_canonical_tip", |c| async move {
            // The marked tip if there is one, else the highest block.
            let row = query_opt!(
                c,
                "SELECT b.block_hash, b.block_height, b.parent_hash \
                   FROM sbtc_signer.bitcoin_canonical_tip t \
                   JOIN sbtc_signer.bitcoin_blocks b ON b.block_hash = t.block_hash \
                 UNION ALL \
                 (SELECT block_hash, block_height, parent_hash FROM sbtc_signer.bitcoin_blocks \
                   WHERE NOT EXISTS (SELECT 1 FROM sbtc_signer.bitcoin_canonical_tip) \
                   ORDER BY block_height DESC, block_hash ASC LIMIT 1)",
                &[]
            );
            row.as_ref().map(bitcoin_block).transpose()
        })
        .await
    }

    async fn in_canonical_chain(&self, tip: &BlockHash, block: &BlockHash) -> Result<bool> {
        self.run("in_canonical_chain", |c| async move {
            let rows = query!(
                c,
                "WITH RECURSIVE chain AS (
                    SELECT block_hash, parent_hash FROM sbtc_signer.bitcoin_blocks WHERE block_hash = $1
                    UNION -- not ALL: a repeated row ends the walk, so a cycle cannot loop forever
                    SELECT b.block_hash, b.parent_hash
                      FROM sbtc_signer.bitcoin_blocks b JOIN chain c ON b.block_hash = c.parent_hash
                     WHERE c.block_hash <> $2
                 )
                 SELECT 1 FROM chain WHERE block_hash = $2",
                &[&tip.as_byte_array().as_slice(), &block.as_byte_array().as_slice()]
            );
            Ok(!rows.is_empty())
        })
        .await
    }

    async fn get_stacks_block(&self, hash: &StacksBlockHash) -> Result<Option<StacksBlock>> {
        self.run("get_stacks_block", |c| async move {
            let row = query_opt!(
                c,
                &format!("SELECT {STACKS_BLOCK_COLUMNS} FROM sbtc_signer.stacks_blocks WHERE block_hash = $1"),
                &[&hash.as_bytes().as_slice()]
            );
            row.as_ref().map(stacks_block).transpose()
        })
        .await
    }

    async fn get_stacks_canonical_tip(&self) -> Result<Option<StacksBlock>> {
        self.run("get_stacks_canonical_tip", |c| async move {
            stacks_canonical_tip(&c).await
        })
        .await
    }

    async fn get_registry_events_since(&self, height: u64) -> Result<Vec<StoredRegistryEvent>> {
        self.run("get_registry_events_since", |c| async move {
            canonical_events(&c, EventFilter::Since(height)).await
        })
        .await
    }

    async fn get_withdrawal_events(&self, request_id: u64) -> Result<Vec<StoredRegistryEvent>> {
        self.run("get_withdrawal_events", |c| async move {
            canonical_events(&c, EventFilter::Request(request_id)).await
        })
        .await
    }

    async fn get_deposit_events(&self, outpoint: &OutPoint) -> Result<Vec<StoredRegistryEvent>> {
        self.run("get_deposit_events", |c| async move {
            canonical_events(&c, EventFilter::Deposit(*outpoint)).await
        })
        .await
    }

    async fn get_latest_registry_event(
        &self,
        topic: RegistryTopic,
    ) -> Result<Option<StoredRegistryEvent>> {
        self.run("get_latest_registry_event", |c| async move {
            Ok(canonical_events(&c, EventFilter::Topic(topic)).await?.pop())
        })
        .await
    }

    async fn get_deposit_request(&self, op: &OutPoint) -> Result<Option<DepositRequest>> {
        self.run("get_deposit_request", |c| async move {
            let row = query_opt!(
                c,
                "SELECT * FROM sbtc_signer.deposit_requests WHERE txid = $1 AND output_index = $2",
                &[&op.txid.as_byte_array().as_slice(), &i64::from(op.vout)]
            );
            row.as_ref().map(deposit).transpose()
        })
        .await
    }

    async fn get_pending_deposit_requests(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<DepositRequest>> {
        if window == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "{WINDOW_CTE}
             SELECT DISTINCT dr.* FROM chain
               JOIN sbtc_signer.bitcoin_transactions bt ON bt.block_hash = chain.block_hash
               JOIN sbtc_signer.deposit_requests dr ON dr.txid = bt.txid
              WHERE NOT EXISTS (
                    SELECT 1 FROM sbtc_signer.swept_deposits sd
                     WHERE sd.deposit_txid = dr.txid AND sd.deposit_output_index = dr.output_index)
              ORDER BY dr.txid, dr.output_index"
        );
        let sql = sql.as_str();
        self.run("get_pending_deposit_requests", |c| async move {
            let rows = query!(
                c,
                sql,
                &[&tip.as_byte_array().as_slice(), &i64::from(window)]
            );
            rows.iter().map(deposit).collect()
        })
        .await
    }

    async fn get_deposit_votes(&self, op: &OutPoint) -> Result<Vec<DepositVote>> {
        self.run("get_deposit_votes", |c| async move {
            let rows = query!(
                c,
                "SELECT * FROM sbtc_signer.deposit_signers WHERE txid = $1 AND output_index = $2 ORDER BY signer_pub_key",
                &[&op.txid.as_byte_array().as_slice(), &i64::from(op.vout)]
            );
            rows.iter()
                .map(|r| {
                    Ok(DepositVote {
                        outpoint: outpoint(r, "txid", "output_index")?,
                        signer: r.fixed("signer_pub_key", parse_public_key)?,
                        can_accept: r.get_as("can_accept")?,
                        can_sign: r.get_as("can_sign")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn get_withdrawal_request(&self, request_id: u64) -> Result<Option<WithdrawalRequest>> {
        self.run("get_withdrawal_request", |c| async move {
            let id = i64_of(request_id, "request_id")?;
            let row = query_opt!(
                c,
                "SELECT * FROM sbtc_signer.withdrawal_requests WHERE request_id = $1",
                &[&id]
            );
            row.as_ref().map(withdrawal).transpose()
        })
        .await
    }

    async fn get_pending_withdrawal_requests(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<WithdrawalRequest>> {
        if window == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "{WINDOW_CTE}
             SELECT DISTINCT wr.* FROM chain
               JOIN sbtc_signer.stacks_blocks sb ON sb.bitcoin_anchor = chain.block_hash
               JOIN sbtc_signer.withdrawal_requests wr ON wr.block_hash = sb.block_hash
              WHERE NOT EXISTS (
                    SELECT 1 FROM sbtc_signer.swept_withdrawals sw WHERE sw.request_id = wr.request_id)
              ORDER BY wr.request_id"
        );
        let sql = sql.as_str();
        self.run("get_pending_withdrawal_requests", |c| async move {
            let rows = query!(
                c,
                sql,
                &[&tip.as_byte_array().as_slice(), &i64::from(window)]
            );
            rows.iter().map(withdrawal).collect()
        })
        .await
    }

    async fn get_withdrawal_requests_in_window(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<WithdrawalRequest>> {
        if window == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "{WINDOW_CTE}
             SELECT DISTINCT wr.* FROM chain
               JOIN sbtc_signer.stacks_blocks sb ON sb.bitcoin_anchor = chain.block_hash
               JOIN sbtc_signer.withdrawal_requests wr ON wr.block_hash = sb.block_hash
              ORDER BY wr.request_id"
        );
        let sql = sql.as_str();
        self.run("get_withdrawal_requests_in_window", |c| async move {
            let rows = query!(
                c,
                sql,
                &[&tip.as_byte_array().as_slice(), &i64::from(window)]
            );
            rows.iter().map(withdrawal).collect()
        })
        .await
    }

    async fn get_withdrawal_votes(&self, request_id: u64) -> Result<Vec<WithdrawalVote>> {
        self.run("get_withdrawal_votes", |c| async move {
            let id = i64_of(request_id, "request_id")?;
            let rows = query!(
                c,
                "SELECT * FROM sbtc_signer.withdrawal_signers WHERE request_id = $1 ORDER BY signer_pub_key",
                &[&id]
            );
            rows.iter()
                .map(|r| {
                    Ok(WithdrawalVote {
                        request_id: r.u64("request_id")?,
                        signer: r.fixed("signer_pub_key", parse_public_key)?,
                        is_accepted: r.get_as("is_accepted")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn get_dkg_shares(&self, key: &AggregateKey) -> Result<Option<StoredDkgShares>> {
        let sql =
            format!("SELECT {DKG_COLUMNS} FROM sbtc_signer.dkg_shares WHERE aggregate_key = $1");
        let sql = sql.as_str();
        self.run("get_dkg_shares", |c| async move {
            let row = query_opt!(c, sql, &[&key.serialize().as_slice()]);
            row.as_ref().map(dkg).transpose()
        })
        .await
    }

    async fn get_latest_verified_dkg_shares(&self) -> Result<Option<StoredDkgShares>> {
        let sql = format!(
            "SELECT {DKG_COLUMNS} FROM sbtc_signer.dkg_shares WHERE dkg_shares_status = 'verified' \
             ORDER BY created_at DESC LIMIT 1"
        );
        let sql = sql.as_str();
        self.run("get_latest_verified_dkg_shares", |c| async move {
            let row = query_opt!(c, sql, &[]);
            row.as_ref().map(dkg).transpose()
        })
        .await
    }

    async fn get_all_dkg_shares(&self) -> Result<Vec<StoredDkgShares>> {
        let sql = format!(
            "SELECT {DKG_COLUMNS} FROM sbtc_signer.dkg_shares ORDER BY created_at DESC, aggregate_key"
        );
        let sql = sql.as_str();
        self.run("get_all_dkg_shares", |c| async move {
            let rows = query!(c, sql, &[]);
            rows.iter().map(dkg).collect()
        })
        .await
    }

    async fn get_sweep_transaction(&self, txid: &Txid) -> Result<Option<SweepTransaction>> {
        self.run("get_sweep_transaction", |c| async move {
            let t = txid.as_byte_array().as_slice();
            let Some(row) = query_opt!(
                c,
                "SELECT * FROM sbtc_signer.sweep_transactions WHERE txid = $1",
                &[&t]
            ) else {
                return Ok(None);
            };
            let deposits = query!(
                c,
                "SELECT deposit_txid, deposit_output_index FROM sbtc_signer.swept_deposits WHERE sweep_txid = $1 ORDER BY position",
                &[&t]
            );
            let withdrawals = query!(
                c,
                "SELECT request_id, recipient, amount FROM sbtc_signer.swept_withdrawals WHERE sweep_txid = $1 ORDER BY position",
                &[&t]
            );
            Ok(Some(SweepTransaction {
                txid: row.fixed("txid", parse_txid)?,
                signers_prevout: outpoint(&row, "signers_prevout_txid", "signers_prevout_output_index")?,
                deposits: deposits
                    .iter()
                    .map(|r| outpoint(r, "deposit_txid", "deposit_output_index"))
                    .collect::<Attempt<_>>()?,
                withdrawals: withdrawals
                    .iter()
                    .map(|r| {
                        Ok(WithdrawalPayment {
                            request_id: r.u64("request_id")?,
                            recipient: r.script("recipient")?,
                            amount: r.amount("amount")?,
                        })
                    })
                    .collect::<Attempt<_>>()?,
                fee: row.amount("fee")?,
                chain_tip: row.fixed("chain_tip", parse_block_hash)?,
            }))
        })
        .await
    }

    async fn get_transaction_blocks(&self, txid: &Txid) -> Result<Vec<BlockHash>> {
        self.run("get_transaction_blocks", |c| async move {
            let rows = query!(
                c,
                "SELECT block_hash FROM sbtc_signer.bitcoin_transactions WHERE txid = $1 ORDER BY block_hash",
                &[&txid.as_byte_array().as_slice()]
            );
            rows.iter()
                .map(|r| r.fixed("block_hash", parse_block_hash))
                .collect()
        })
        .await
    }

    async fn get_observed_transactions(&self, txids: &[Txid]) -> Result<Vec<ObservedTransaction>> {
        let wanted: Vec<&[u8]> = txids.iter().map(|t| t.as_byte_array().as_slice()).collect();
        let wanted = &wanted;
        self.run("get_observed_transactions", |c| async move {
            let rows = query!(
                c,
                "SELECT kind::TEXT AS kind, tx FROM sbtc_signer.observed_transactions WHERE txid = ANY($1)",
                &[wanted]
            );
            rows.iter()
                .map(|r| {
                    let kind: String = r.get_as("kind")?;
                    Ok(ObservedTransaction {
                        kind: ObservedKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
                        tx: transaction(r, "tx")?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn get_signer_transactions(
        &self,
        tip: &BlockHash,
        window: u32,
    ) -> Result<Vec<(ObservedTransaction, BitcoinBlock)>> {
        if window == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "{WINDOW_CTE}
             SELECT ot.kind::TEXT AS kind, ot.tx, b.block_hash, b.block_height, b.parent_hash
               FROM chain
               JOIN sbtc_signer.bitcoin_blocks b ON b.block_hash = chain.block_hash
               JOIN sbtc_signer.bitcoin_transactions bt ON bt.block_hash = chain.block_hash
               JOIN sbtc_signer.observed_transactions ot ON ot.txid = bt.txid
              WHERE ot.kind IN ('sweep', 'donation')
              ORDER BY b.block_height, ot.txid"
        );
        let sql = sql.as_str();
        self.run("get_signer_transactions", |c| async move {
            let rows = query!(
                c,
                sql,
                &[&tip.as_byte_array().as_slice(), &i64::from(window)]
            );
            rows.iter()
                .map(|r| {
                    let kind: String = r.get_as("kind")?;
                    let observed = ObservedTransaction {
                        kind: ObservedKind::parse(&kind).ok_or_else(|| corrupt("kind"))?,
                        tx: transaction(r, "tx")?,
                    };
                    Ok((observed, bitcoin_block(r)?))
                })
                .collect()
        })
        .await
    }

    async fn get_deposit_submission(
        &self,
        op: &OutPoint,
    ) -> Result<Option<DepositSubmissionRecord>> {
        self.run("get_deposit_submission", |c| async move {
            let row = query_opt!(
                c,
                "SELECT * FROM sbtc_signer.deposit_submissions WHERE txid = $1 AND output_index = $2",
                &[&op.txid.as_byte_array().as_slice(), &i64::from(op.vout)]
            );
            row.as_ref().map(submission).transpose()
        })
        .await
    }

    async fn get_deposit_submissions_for_txids(
        &self,
        txids: &[Txid],
    ) -> Result<Vec<DepositSubmissionRecord>> {
        let wanted: Vec<&[u8]> = txids.iter().map(|t| t.as_byte_array().as_slice()).collect();
        let wanted = &wanted;
        self.run("get_deposit_submissions_for_txids", |c| async move {
            let rows = query!(
                c,
                "SELECT * FROM sbtc_signer.deposit_submissions WHERE txid = ANY($1)",
                &[wanted]
            );
            let mut out: Vec<DepositSubmissionRecord> =
                rows.iter().map(submission).collect::<Attempt<_>>()?;
            out.sort_by_key(|d| d.outpoint);
            Ok(out)
        })
        .await
    }

    async fn get_sighash_decision(&self, sighash: &TapSighash) -> Result<Option<SighashDecision>> {
        self.run("get_sighash_decision", |c| async move {
            let row = query_opt!(
                c,
                "SELECT * FROM sbtc_signer.sighash_decisions WHERE sighash = $1",
                &[&sighash.as_byte_array().as_slice()]
            );
            row.map(|r| {
                Ok(SighashDecision {
                    sighash: r.fixed("sighash", parse_sighash)?,
                    txid: r.fixed("txid", parse_txid)?,
                    prevout: outpoint(&r, "prevout_txid", "prevout_output_index")?,
                    will_sign: r.get_as("will_sign")?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn get_spend_decision(&self, op: &OutPoint) -> Result<Option<SpendDecision>> {
        self.run("get_spend_decision", |c| async move {
            let t = op.txid.as_byte_array().as_slice();
            let v = i64::from(op.vout);
            let Some(row) = query_opt!(
                c,
                "SELECT txid, payment_fingerprint, change_scripts FROM sbtc_signer.spend_decisions \
                 WHERE prevout_txid = $1 AND prevout_output_index = $2",
                &[&t, &v]
            ) else {
                return Ok(None);
            };
            let approvals = query!(
                c,
                "SELECT txid, fee FROM sbtc_signer.spend_approvals \
                 WHERE prevout_txid = $1 AND prevout_output_index = $2 ORDER BY seq",
                &[&t, &v]
            );
            let recorded = recorded(&row, &approvals, None)?;
            Ok(Some(SpendDecision {
                outpoint: *op,
                txid: recorded.txid,
                fingerprint: recorded.fingerprint,
                change_scripts: recorded.change_scripts,
                highest_fee: recorded.highest_fee,
                approved_txids: approvals
                    .iter()
                    .map(|r| r.fixed("txid", parse_txid))
                    .collect::<Attempt<_>>()?,
            }))
        })
        .await
    }

    async fn get_stacks_transaction(&self, txid: &StacksTxid) -> Result<Option<StacksTransaction>> {
        self.run("get_stacks_transaction", |c| async move {
            let row = query_opt!(
                c,
                "SELECT * FROM sbtc_signer.stacks_transactions WHERE txid = $1",
                &[&txid.as_bytes().as_slice()]
            );
            row.map(|r| {
                Ok(StacksTransaction {
                    txid: r.fixed("txid", StacksTxid::from_slice)?,
                    kind: r.get_as("kind")?,
                    nonce: r.u64("nonce")?,
                    raw: r.bytes("raw")?,
                    bitcoin_chain_tip: r.fixed("bitcoin_chain_tip", parse_block_hash)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn get_signer_set_history(&self) -> Result<Vec<SignerSetRotation>> {
        self.run("get_signer_set_history", |c| async move {
            let rows = query!(
                c,
                "SELECT * FROM sbtc_signer.signer_set_rotations ORDER BY id",
                &[]
            );
            rows.iter()
                .map(|r| {
                    Ok(SignerSetRotation {
                        aggregate_key: r.fixed("aggregate_key", parse_aggregate_key)?,
                        signer_set: keys(r, "signer_set")?,
                        threshold: u16_of(r, "signature_threshold")?,
                        stacks_txid: r.fixed("stacks_txid", StacksTxid::from_slice)?,
                        bitcoin_block_hash: r.fixed("bitcoin_block_hash", parse_block_hash)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn get_audit_log(&self) -> Result<Vec<AuditEntry>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM sbtc_signer.audit_log ORDER BY seq");
        let sql = sql.as_str();
        self.run("get_audit_log", |c| async move {
            let rows = query!(c, sql, &[]);
            rows.iter().map(audit_entry).collect()
        })
        .await
    }

    async fn get_audit_head(&self) -> Result<Option<(u64, [u8; 32])>> {
        self.run("get_audit_head", |c| async move {
            let row = query_opt!(
                c,
                "SELECT seq, hash FROM sbtc_signer.audit_log ORDER BY seq DESC LIMIT 1",
                &[]
            );
            match row {
                Some(r) => Ok(Some((
                    r.u64("seq")?,
                    r.fixed("hash", |b| <[u8; 32]>::try_from(b).ok())?,
                ))),
                None => Ok(None),
            }
        })
        .await
    }
}

#[async_trait]
impl DbWrite for PgStore {
    async fn set_bitcoin_canonical_tip(&self, tip: &BlockHash) -> Result<()> {
        self.run("set_bitcoin_canonical_tip", |c| async move {
            let known = query_opt!(
                c,
                "SELECT 1 FROM sbtc_signer.bitcoin_blocks WHERE block_hash = $1",
                &[&tip.as_byte_array().as_slice()]
            );
            if known.is_none() {
                return Err(Failure::Fatal(
                    ErrorKind::InvalidInput,
                    format!("block {tip} is not stored; write it first"),
                ));
            }
            execute!(
                c,
                "INSERT INTO sbtc_signer.bitcoin_canonical_tip (singleton, block_hash) VALUES (TRUE, $1) \
                 ON CONFLICT (singleton) DO UPDATE SET block_hash = EXCLUDED.block_hash, updated_at = now()",
                &[&tip.as_byte_array().as_slice()]
            );
            Ok(())
        })
        .await
    }

    async fn write_observed_transaction(
        &self,
        observed: &ObservedTransaction,
        block: &BlockHash,
    ) -> Result<()> {
        let txid = observed.txid();
        let raw = bitcoin::consensus::serialize(&observed.tx);
        let raw = raw.as_slice();
        self.run("write_observed_transaction", |mut c| async move {
            let t = txid.as_byte_array().as_slice();
            let tx = c.transaction().await?;
            execute!(
                tx,
                "INSERT INTO sbtc_signer.observed_transactions (txid, kind, tx) \
                 VALUES ($1, $2::TEXT::sbtc_signer.observed_kind, $3) ON CONFLICT DO NOTHING",
                &[&t, &observed.kind.as_str(), &raw]
            );
            execute!(
                tx,
                "INSERT INTO sbtc_signer.bitcoin_transactions (txid, block_hash) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&t, &block.as_byte_array().as_slice()]
            );
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn write_deposit_submission(&self, d: &DepositSubmissionRecord) -> Result<bool> {
        let raw = bitcoin::consensus::serialize(&d.transaction);
        let raw = raw.as_slice();
        let peer = match d.source {
            SubmissionSource::Wallet => None,
            SubmissionSource::Peer(key) => Some(key.serialize().to_vec()),
        };
        let peer = &peer;
        self.run("write_deposit_submission", |c| async move {
            let n = execute!(
                c,
                "INSERT INTO sbtc_signer.deposit_submissions (txid, output_index, deposit_script, \
                 reclaim_script, tx, source_peer) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &d.outpoint.txid.as_byte_array().as_slice(),
                    &i64::from(d.outpoint.vout),
                    &d.deposit_script.as_bytes(),
                    &d.reclaim_script.as_bytes(),
                    &raw,
                    peer
                ]
            );
            Ok(n == 1)
        })
        .await
    }

    async fn write_bitcoin_block(&self, block: &BitcoinBlock) -> Result<()> {
        self.run("write_bitcoin_block", |c| async move {
            let height = i64_of(block.height, "block height")?;
            execute!(
                c,
                "INSERT INTO sbtc_signer.bitcoin_blocks (block_hash, block_height, parent_hash) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[
                    &block.hash.as_byte_array().as_slice(),
                    &height,
                    &block.parent_hash.as_byte_array().as_slice()
                ]
            );
            Ok(())
        })
        .await
    }

    async fn write_bitcoin_transaction(&self, txid: &Txid, block: &BlockHash) -> Result<()> {
        self.run("write_bitcoin_transaction", |c| async move {
            execute!(
                c,
                "INSERT INTO sbtc_signer.bitcoin_transactions (txid, block_hash) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[
                    &txid.as_byte_array().as_slice(),
                    &block.as_byte_array().as_slice()
                ]
            );
            Ok(())
        })
        .await
    }

    async fn write_stacks_block(&self, block: &StacksBlock) -> Result<()> {
        self.run("write_stacks_block", |c| async move {
            insert_stacks_block(&c, block).await
        })
        .await
    }

    async fn write_stacks_block_events(
        &self,
        block: &StacksBlock,
        events: &[RegistryEventRecord],
    ) -> Result<()> {
        for e in events {
            e.check(block, "write_stacks_block_events")?;
        }
        self.run("write_stacks_block_events", |mut c| async move {
            let tx = c.transaction().await?;
            insert_stacks_block(&tx, block).await?;
            for e in events {
                let request_id = e.request_id.map(|id| i64_of(id, "request id")).transpose()?;
                let (deposit_txid, deposit_vout) = match &e.deposit {
                    Some(op) => (
                        Some(op.txid.as_byte_array().to_vec()),
                        Some(i64::from(op.vout)),
                    ),
                    None => (None, None),
                };
                execute!(
                    tx,
                    "INSERT INTO sbtc_signer.stacks_registry_events (block_hash, txid, event_index, \
                     position, topic, request_id, deposit_txid, deposit_output_index, raw_value) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                    &[
                        &e.block_hash.as_bytes().as_slice(),
                        &e.txid.as_bytes().as_slice(),
                        &i64::from(e.event_index),
                        &i64::from(e.position),
                        &e.topic.as_str(),
                        &request_id,
                        &deposit_txid,
                        &deposit_vout,
                        &e.raw_value.as_slice()
                    ]
                );
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn write_deposit_request(
        &self,
        request: &DepositRequest,
        confirmed_in: &BlockHash,
    ) -> Result<()> {
        let amount = storable_sats(request.amount, "amount", "write_deposit_request")?;
        let max_fee = storable_sats(request.max_fee, "max_fee", "write_deposit_request")?;
        let signers_key = request.signers_public_key.serialize();
        let signers_key = signers_key.as_slice();
        self.run("write_deposit_request", |mut c| async move {
            let txid = request.outpoint.txid.as_byte_array().as_slice();
            let tx = c.transaction().await?;
            execute!(
                tx,
                "INSERT INTO sbtc_signer.deposit_requests (txid, output_index, amount, max_fee, \
                 recipient, deposit_script, reclaim_script, signers_public_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[
                    &txid,
                    &i64::from(request.outpoint.vout),
                    &amount,
                    &max_fee,
                    &request.recipient,
                    &request.deposit_script.as_bytes(),
                    &request.reclaim_script.as_bytes(),
                    &signers_key
                ]
            );
            execute!(
                tx,
                "INSERT INTO sbtc_signer.bitcoin_transactions (txid, block_hash) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&txid, &confirmed_in.as_byte_array().as_slice()]
            );
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn write_deposit_vote(&self, vote: &DepositVote) -> Result<()> {
        self.run("write_deposit_vote", |c| async move {
            execute!(
                c,
                "INSERT INTO sbtc_signer.deposit_signers (txid, output_index, signer_pub_key, can_accept, can_sign) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &vote.outpoint.txid.as_byte_array().as_slice(),
                    &i64::from(vote.outpoint.vout),
                    &vote.signer.serialize().as_slice(),
                    &vote.can_accept,
                    &vote.can_sign
                ]
            );
            Ok(())
        })
        .await
    }

    async fn write_withdrawal_request(&self, w: &WithdrawalRequest) -> Result<()> {
        let amount = storable_sats(w.amount, "amount", "write_withdrawal_request")?;
        let max_fee = storable_sats(w.max_fee, "max_fee", "write_withdrawal_request")?;
        self.run("write_withdrawal_request", |c| async move {
            let id = i64_of(w.request_id, "request_id")?;
            execute!(
                c,
                "INSERT INTO sbtc_signer.withdrawal_requests (request_id, txid, block_hash, recipient, \
                 amount, max_fee, sender_address) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                &[
                    &id,
                    &w.stacks_txid.as_bytes().as_slice(),
                    &w.stacks_block_hash.as_bytes().as_slice(),
                    &w.recipient.as_bytes(),
                    &amount,
                    &max_fee,
                    &w.sender
                ]
            );
            Ok(())
        })
        .await
    }

    async fn write_withdrawal_vote(&self, vote: &WithdrawalVote) -> Result<()> {
        self.run("write_withdrawal_vote", |c| async move {
            let id = i64_of(vote.request_id, "request_id")?;
            execute!(
                c,
                "INSERT INTO sbtc_signer.withdrawal_signers (request_id, signer_pub_key, is_accepted) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&id, &vote.signer.serialize().as_slice(), &vote.is_accepted]
            );
            Ok(())
        })
        .await
    }

    async fn write_dkg_shares(&self, s: &DkgShares) -> Result<()> {
        let (dkg_id, signer_index) = s.storable_ids("write_dkg_shares")?;
        let signers = key_column(&s.signer_set);
        let signers = &signers;
        self.run("write_dkg_shares", |c| async move {
            let height = i64_of(s.started_at_block_height, "block height")?;
            execute!(
                c,
                "INSERT INTO sbtc_signer.dkg_shares (aggregate_key, dkg_id, signer_index, \
                 encrypted_private_shares, public_shares, \
                 signer_set_public_keys, signature_share_threshold, dkg_shares_status, \
                 started_at_bitcoin_block_hash, started_at_bitcoin_block_height) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::TEXT::sbtc_signer.dkg_shares_status, $9, $10) \
                 ON CONFLICT DO NOTHING",
                &[
                    &s.aggregate_key.serialize().as_slice(),
                    &dkg_id,
                    &signer_index,
                    &s.sealed_private_shares.as_bytes(),
                    &s.public_shares,
                    &signers,
                    &i32::from(s.threshold),
                    &s.status.as_str(),
                    &s.started_at_block_hash.as_byte_array().as_slice(),
                    &height
                ]
            );
            Ok(())
        })
        .await
    }

    async fn set_dkg_shares_status(
        &self,
        key: &AggregateKey,
        status: DkgSharesStatus,
    ) -> Result<bool> {
        self.run("set_dkg_shares_status", |c| async move {
            let n = execute!(
                c,
                "UPDATE sbtc_signer.dkg_shares SET dkg_shares_status = $2::TEXT::sbtc_signer.dkg_shares_status \
                 WHERE aggregate_key = $1",
                &[&key.serialize().as_slice(), &status.as_str()]
            );
            Ok(n > 0)
        })
        .await
    }

    async fn write_sweep_transaction(&self, sweep: &SweepTransaction) -> Result<()> {
        let fee = storable_sats(sweep.fee, "fee", "write_sweep_transaction")?;
        let amounts = sweep
            .withdrawals
            .iter()
            .map(|w| storable_sats(w.amount, "withdrawal amount", "write_sweep_transaction"))
            .collect::<Result<Vec<i64>>>()?;
        let amounts = amounts.as_slice();
        self.run("write_sweep_transaction", |mut c| async move {
            let txid = sweep.txid.as_byte_array().as_slice();
            let tx = c.transaction().await?;
            let inserted = execute!(
                tx,
                "INSERT INTO sbtc_signer.sweep_transactions (txid, signers_prevout_txid, \
                 signers_prevout_output_index, fee, chain_tip) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &txid,
                    &sweep.signers_prevout.txid.as_byte_array().as_slice(),
                    &i64::from(sweep.signers_prevout.vout),
                    &fee,
                    &sweep.chain_tip.as_byte_array().as_slice()
                ]
            );
            if inserted == 1 {
                for (i, d) in sweep.deposits.iter().enumerate() {
                    let pos = i32::try_from(i).map_err(|_| range("deposit position"))?;
                    execute!(
                        tx,
                        "INSERT INTO sbtc_signer.swept_deposits (sweep_txid, position, deposit_txid, deposit_output_index) \
                         VALUES ($1, $2, $3, $4)",
                        &[&txid, &pos, &d.txid.as_byte_array().as_slice(), &i64::from(d.vout)]
                    );
                }
                for (i, (w, amount)) in sweep.withdrawals.iter().zip(amounts).enumerate() {
                    let pos = i32::try_from(i).map_err(|_| range("withdrawal position"))?;
                    let id = i64_of(w.request_id, "request_id")?;
                    execute!(
                        tx,
                        "INSERT INTO sbtc_signer.swept_withdrawals (sweep_txid, position, request_id, recipient, amount) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&txid, &pos, &id, &w.recipient.as_bytes(), amount]
                    );
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn write_sighash_decision(&self, d: &SighashDecision) -> Result<()> {
        self.run("write_sighash_decision", |c| async move {
            execute!(
                c,
                "INSERT INTO sbtc_signer.sighash_decisions (sighash, txid, prevout_txid, prevout_output_index, will_sign) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &d.sighash.as_byte_array().as_slice(),
                    &d.txid.as_byte_array().as_slice(),
                    &d.prevout.txid.as_byte_array().as_slice(),
                    &i64::from(d.prevout.vout),
                    &d.will_sign
                ]
            );
            Ok(())
        })
        .await
    }

    async fn write_stacks_transaction(&self, t: &StacksTransaction) -> Result<()> {
        self.run("write_stacks_transaction", |c| async move {
            let nonce = i64_of(t.nonce, "nonce")?;
            execute!(
                c,
                "INSERT INTO sbtc_signer.stacks_transactions (txid, kind, nonce, raw, bitcoin_chain_tip) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &t.txid.as_bytes().as_slice(),
                    &t.kind,
                    &nonce,
                    &t.raw,
                    &t.bitcoin_chain_tip.as_byte_array().as_slice()
                ]
            );
            Ok(())
        })
        .await
    }

    async fn write_signer_set_rotation(&self, r: &SignerSetRotation) -> Result<()> {
        let signers = key_column(&r.signer_set);
        let signers = &signers;
        self.run("write_signer_set_rotation", |c| async move {
            execute!(
                c,
                "INSERT INTO sbtc_signer.signer_set_rotations (stacks_txid, aggregate_key, signer_set, \
                 signature_threshold, bitcoin_block_hash) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &r.stacks_txid.as_bytes().as_slice(),
                    &r.aggregate_key.serialize().as_slice(),
                    &signers,
                    &i32::from(r.threshold),
                    &r.bitcoin_block_hash.as_byte_array().as_slice()
                ]
            );
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<AuditEntry> {
        let select_by_id =
            format!("SELECT {AUDIT_COLUMNS} FROM sbtc_signer.audit_log WHERE entry_id = $1");
        let select_by_id = select_by_id.as_str();
        self.run("append_audit", |mut c| async move {
            let tx = c.transaction().await?;
            // One appender at a time, so two appends never claim the same predecessor.
            execute!(tx, "SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK]);
            if let Some(row) = query_opt!(tx, select_by_id, &[&record.entry_id.as_slice()]) {
                // A retry of an append whose commit we did not see: it is already there.
                return audit_entry(&row);
            }
            let head = query_opt!(
                tx,
                "SELECT seq, hash FROM sbtc_signer.audit_log ORDER BY seq DESC LIMIT 1",
                &[]
            );
            let head = match head {
                Some(r) => Some((r.u64("seq")?, r.fixed("hash", |b| <[u8; 32]>::try_from(b).ok())?)),
                None => None,
            };
            let e = audit::next_entry(head, record);
            let seq = i64_of(e.seq, "audit seq")?;
            execute!(
                tx,
                "INSERT INTO sbtc_signer.audit_log (seq, entry_id, at, key_label, operation, message, \
                 reason, outcome, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &seq,
                    &e.record.entry_id.as_slice(),
                    &e.record.at,
                    &e.record.key_label,
                    &e.record.operation,
                    &e.record.message,
                    &e.record.reason,
                    &e.record.outcome,
                    &e.prev_hash.as_slice(),
                    &e.hash.as_slice()
                ]
            );
            tx.commit().await?;
            Ok(e)
        })
        .await
    }

    async fn guard_spend(&self, intent: &SpendIntent) -> Result<GuardDecision> {
        intent.validate()?;
        let proposal = Proposal::new(intent);
        if let Some(refused) = proposal.precheck(&self.settings.guard) {
            return Ok(refused);
        }
        let fee = storable_sats(intent.fee, "fee", "guard_spend")?;
        let change: Vec<&[u8]> = proposal
            .change_scripts
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        let (spends, change, proposal) = (intent.sorted_spends(), &change, &proposal);
        let spends = spends.as_slice();
        self.run("guard_spend", |mut c| async move {
            let txid = intent.txid.as_byte_array().as_slice();
            let fp = proposal.fingerprint.as_bytes().as_slice();
            let tx = c.transaction().await?;
            let mut outcomes = Vec::with_capacity(spends.len());
            // Inputs in sorted order: concurrent decisions lock rows in the same order, so they
            // cannot deadlock. ON CONFLICT waits for a concurrent insert of the same outpoint to
            // commit, then the SELECT ... FOR UPDATE sees (and locks) the winner's row, so the
            // approvals of one outpoint (and their fees) are decided one at a time.
            for op in spends {
                let t = op.txid.as_byte_array().as_slice();
                let v = i64::from(op.vout);
                let inserted = execute!(
                    tx,
                    "INSERT INTO sbtc_signer.spend_decisions (prevout_txid, prevout_output_index, txid, \
                     payment_fingerprint, change_scripts) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&t, &v, &txid, &fp, change]
                );
                if inserted == 1 {
                    outcomes.push((*op, Check::Free));
                    continue;
                }
                let Some(row) = query_opt!(
                    tx,
                    "SELECT txid, payment_fingerprint, change_scripts FROM sbtc_signer.spend_decisions \
                     WHERE prevout_txid = $1 AND prevout_output_index = $2 FOR UPDATE",
                    &[&t, &v]
                ) else {
                    return Err(Failure::Transient("spend decision vanished; retrying".into()));
                };
                let approvals = query!(
                    tx,
                    "SELECT txid, fee FROM sbtc_signer.spend_approvals \
                     WHERE prevout_txid = $1 AND prevout_output_index = $2 ORDER BY seq",
                    &[&t, &v]
                );
                let r = recorded(&row, &approvals, Some(&intent.txid))?;
                outcomes.push((
                    *op,
                    proposal.check(
                        *op,
                        &guard::Recorded {
                            txid: r.txid,
                            fingerprint: r.fingerprint,
                            change_scripts: r.change_scripts.as_deref(),
                            highest_fee: r.highest_fee,
                            already_approved: r.already_approved,
                        },
                    ),
                ));
            }
            let decision = guard::combine(&outcomes);
            if !decision.is_approved() {
                tx.rollback().await?;
                return Ok(decision);
            }
            for (op, check) in &outcomes {
                if matches!(check, Check::Free | Check::FeeBump(_)) {
                    execute!(
                        tx,
                        "INSERT INTO sbtc_signer.spend_approvals (prevout_txid, prevout_output_index, txid, fee) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&op.txid.as_byte_array().as_slice(), &i64::from(op.vout), &txid, &fee]
                    );
                }
            }
            tx.commit().await?;
            Ok(decision)
        })
        .await
    }
}

/// One outpoint's decision as the tables hold it.
struct RecordedRows {
    txid: Txid,
    fingerprint: PaymentFingerprint,
    change_scripts: Option<Vec<ScriptBuf>>,
    highest_fee: Option<Amount>,
    already_approved: bool,
}

/// Reads a `spend_decisions` row and its `spend_approvals` rows (in order). Rows from before
/// migration 4 have no change scripts or fee: those stay None, and the guard refuses bumps.
fn recorded(row: &Row, approvals: &[Row], intent: Option<&Txid>) -> Attempt<RecordedRows> {
    let change: Option<Vec<Vec<u8>>> = row.get_as("change_scripts")?;
    let mut highest_fee = Some(Amount::ZERO);
    let mut already_approved = false;
    for a in approvals {
        let fee: Option<i64> = a.get_as("fee")?;
        let fee = match fee {
            Some(f) => Some(Amount::from_sat(
                u64::try_from(f).map_err(|_| corrupt("fee"))?,
            )),
            None => None,
        };
        highest_fee = match (highest_fee, fee) {
            (Some(h), Some(f)) => Some(h.max(f)),
            _ => None,
        };
        if intent == Some(&a.fixed("txid", parse_txid)?) {
            already_approved = true;
        }
    }
    if approvals.is_empty() {
        // A decision row is always written with its approval; without one, nothing is known.
        highest_fee = None;
    }
    Ok(RecordedRows {
        txid: row.fixed("txid", parse_txid)?,
        fingerprint: row.fixed("payment_fingerprint", PaymentFingerprint::from_slice)?,
        change_scripts: change.map(|c| c.into_iter().map(ScriptBuf::from_bytes).collect()),
        highest_fee,
        already_approved,
    })
}
