//! Shared by the storage tests: a fresh PostgreSQL database per test on the server named by
//! SBTC_TEST_PG_URL (scripts/pg.sh starts one), dropped at the end, and sample rows.
#![allow(dead_code)]

use std::time::Duration;

use bitcoin::hashes::Hash as _;
use bitcoin::{secp256k1::PublicKey, Amount, BlockHash, OutPoint, ScriptBuf, Txid};
use sbtc_hsm_signer::keys::AggregateKey;
use sbtc_hsm_signer::storage::{
    config::{PgSettings, Target},
    postgres::PgStore,
    *,
};

/// A test that cannot run here: a failure where everything must run (`scripts/test.sh` sets
/// SBTC_TEST_REQUIRE=1; CI=true too), else a skip that the run's output shows (written to the
/// process's stderr directly, past the test harness's capture).
pub fn skip_or_fail(test: &str, why: &str) {
    let required = std::env::var("SBTC_TEST_REQUIRE").as_deref() == Ok("1")
        || std::env::var("CI").as_deref() == Ok("true");
    if required {
        panic!("{test} must run here (SBTC_TEST_REQUIRE=1 or CI=true), but {why}");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// The test server's URL, or None after [`skip_or_fail`] said why there is none.
pub fn pg_url_or_skip(test: &str) -> Option<String> {
    match std::env::var("SBTC_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip_or_fail(
                test,
                "SBTC_TEST_PG_URL is not set; start a server with `eval \"$(scripts/pg.sh start)\"` (see README)",
            );
            None
        }
    }
}

/// A database of its own, dropped (forcibly) when this goes out of scope.
pub struct TestDb {
    pub url: String,
    pub name: String,
    admin_url: String,
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to SBTC_TEST_PG_URL {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    /// None: skip (no server configured outside CI).
    pub async fn create(test: &str) -> Option<TestDb> {
        let admin_url = pg_url_or_skip(test)?;
        let name = format!("test_{}", hex::encode(rand::random::<[u8; 8]>()));
        admin(&admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("SBTC_TEST_PG_URL looks like postgresql://user@host:port/db");
        Some(TestDb {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        })
    }

    pub fn settings(&self) -> PgSettings {
        let mut config = StorageConfig::postgres(self.url.clone());
        config.connect_retry_secs = Some(5);
        config.operation_retry_secs = Some(60);
        match config.target().expect("test url parses") {
            Target::Postgres(s) => *s,
            Target::Memory => unreachable!(),
        }
    }

    /// A store on this database, migrated.
    pub async fn store(&self) -> PgStore {
        let store = PgStore::connect(self.settings()).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }

    /// A plain client, for poking at the tables the way an attacker or an operator would.
    pub async fn client(&self) -> tokio_postgres::Client {
        admin(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(Ok((client, conn))) = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls),
                )
                .await
                {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn h(n: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b
}

pub fn bh(n: u64) -> BlockHash {
    BlockHash::from_byte_array(h(n))
}

pub fn txid(n: u64) -> Txid {
    Txid::from_byte_array(h(n))
}

pub fn block(n: u64, height: u64, parent: u64) -> BitcoinBlock {
    BitcoinBlock {
        hash: bh(n),
        height,
        parent_hash: bh(parent),
    }
}

/// A valid public key whose compressed encoding starts `02 n`, so keys sort by `n` (as the
/// stores sort signers: by compressed encoding).
pub fn key(n: u8) -> PublicKey {
    let mut b = [0u8; 33];
    b[0] = 0x02;
    b[1] = n;
    // About half of all x coordinates are on the curve; the first one found is fixed.
    for i in 0..=u16::MAX {
        b[31..].copy_from_slice(&i.to_be_bytes());
        if let Ok(k) = PublicKey::from_slice(&b) {
            return k;
        }
    }
    unreachable!("no point with x = {n:02x}00..")
}

pub fn agg(n: u8) -> AggregateKey {
    AggregateKey::new(key(n))
}

pub fn outpoint(n: u64, vout: u32) -> OutPoint {
    OutPoint {
        txid: txid(n),
        vout,
    }
}

pub fn script(bytes: &[u8]) -> ScriptBuf {
    ScriptBuf::from_bytes(bytes.to_vec())
}

pub fn deposit(n: u64, vout: u32) -> DepositRequest {
    DepositRequest {
        outpoint: outpoint(n, vout),
        amount: Amount::from_sat(100_000 + n),
        max_fee: Amount::from_sat(5_000),
        recipient: format!("ST000000000000000000002AMW42H.contract-{n}"),
        deposit_script: script(&[0x20, n as u8, 0xac]),
        reclaim_script: script(&[0x51, vout as u8]),
        signers_public_key: agg(7),
    }
}

pub fn payment(id: u64, amount: u64) -> WithdrawalPayment {
    WithdrawalPayment {
        request_id: id,
        recipient: script(&[0x00, 0x14, id as u8]),
        amount: Amount::from_sat(amount),
    }
}
