//! Storage benchmark: 1,000 Bitcoin blocks and 100,000 deposit requests, then the "pending
//! requests within the last N blocks" query and the no-equivocation guard under 8 concurrent
//! tasks. Runs against PostgreSQL (a fresh database on SBTC_BENCH_PG_URL or SBTC_TEST_PG_URL,
//! dropped afterwards) and against the in-memory store.
//!
//!   eval "$(scripts/pg.sh start)"; cargo bench --bench storage
//!
//! Figures go to docs/performance.md ("Storage").

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use bitcoin::{hashes::Hash as _, Amount, BlockHash, OutPoint, ScriptBuf, Txid};
use sbtc_hsm_signer::{
    keys::AggregateKey,
    storage::{
        config::Target, memory::MemoryStore, postgres::PgStore, BitcoinBlock, DepositRequest,
        SpendIntent, Storage, StorageConfig, WithdrawalPayment,
    },
};

const BLOCKS: u64 = 1_000;
const DEPOSITS: u64 = 100_000;
const TASKS: u64 = 8;
const GUARD_PER_TASK: u64 = 1_000;

fn h(tag: u8, n: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = tag;
    b[1..9].copy_from_slice(&n.to_be_bytes());
    b
}

/// Any valid key will do (the generator point); decoded once, not per deposit.
fn signers_key() -> AggregateKey {
    static KEY: OnceLock<AggregateKey> = OnceLock::new();
    *KEY.get_or_init(|| {
        "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
            .parse()
            .expect("the generator point is a valid key")
    })
}

fn deposit(n: u64) -> DepositRequest {
    DepositRequest {
        outpoint: OutPoint {
            txid: Txid::from_byte_array(h(2, n)),
            vout: 0,
        },
        amount: Amount::from_sat(100_000 + n),
        max_fee: Amount::from_sat(10_000),
        recipient: format!("ST000000000000000000002AMW42H.r{n}"),
        deposit_script: ScriptBuf::from_bytes(vec![0x20; 70]),
        reclaim_script: ScriptBuf::from_bytes(vec![0x51; 40]),
        signers_public_key: signers_key(),
    }
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:>10.0}/s", n as f64 / d.as_secs_f64())
}

async fn run(name: &str, store: Arc<dyn Storage>) {
    println!("== {name}");
    let t = Instant::now();
    for i in 1..=BLOCKS {
        store
            .write_bitcoin_block(&BitcoinBlock {
                hash: BlockHash::from_byte_array(h(1, i)),
                height: i,
                parent_hash: BlockHash::from_byte_array(h(1, i - 1)),
            })
            .await
            .expect("block");
    }
    println!(
        "blocks: {BLOCKS} in {:?} ({} sequential)",
        t.elapsed(),
        rate(BLOCKS, t.elapsed())
    );

    // 100 deposits per block, written by 8 tasks at once.
    let t = Instant::now();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut n = task;
            while n < DEPOSITS {
                let block = BlockHash::from_byte_array(h(1, n / (DEPOSITS / BLOCKS) + 1));
                s.write_deposit_request(&deposit(n), &block)
                    .await
                    .expect("deposit");
                n += TASKS;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    let d = t.elapsed();
    println!(
        "deposit requests: {DEPOSITS} in {d:?} ({} with {TASKS} tasks)",
        rate(DEPOSITS, d)
    );

    let tip = BlockHash::from_byte_array(h(1, BLOCKS));
    for window in [6u32, 100, 1_000] {
        let runs = if window >= 1_000 { 3 } else { 20 };
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..runs {
            let t = Instant::now();
            rows = store
                .get_pending_deposit_requests(&tip, window)
                .await
                .expect("query")
                .len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "pending deposits, last {window:>4} blocks: {rows:>6} rows, median {:?} (min {:?})",
            times[times.len() / 2],
            times[0]
        );
    }

    // The guard: 8 tasks, each deciding 1,000 two-input sweeps on fresh outpoints.
    let t = Instant::now();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..GUARD_PER_TASK {
                let n = task * 1_000_000 + i;
                let intent = SpendIntent {
                    txid: Txid::from_byte_array(h(3, n)),
                    spends: vec![
                        OutPoint {
                            txid: Txid::from_byte_array(h(4, n)),
                            vout: 0,
                        },
                        OutPoint {
                            txid: Txid::from_byte_array(h(4, n)),
                            vout: 1,
                        },
                    ],
                    deposits: vec![],
                    withdrawals: vec![WithdrawalPayment {
                        request_id: n,
                        recipient: ScriptBuf::from_bytes(vec![0; 22]),
                        amount: Amount::from_sat(50_000),
                    }],
                    change: vec![],
                    fee: Amount::from_sat(1_000),
                    weight: bitcoin::Weight::from_wu(800),
                };
                assert!(s.guard_spend(&intent).await.expect("guard").is_approved());
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    let n = TASKS * GUARD_PER_TASK;
    println!(
        "guard, fresh outpoints: {n} decisions in {:?} ({} with {TASKS} tasks)",
        t.elapsed(),
        rate(n, t.elapsed())
    );

    // Contended: all 8 tasks race on the same 1,000 outpoints with conflicting transactions.
    let t = Instant::now();
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut approved = 0u64;
            for i in 0..GUARD_PER_TASK {
                let intent = SpendIntent {
                    txid: Txid::from_byte_array(h(5, task * 1_000_000 + i)),
                    spends: vec![OutPoint {
                        txid: Txid::from_byte_array(h(6, i)),
                        vout: 0,
                    }],
                    deposits: vec![],
                    withdrawals: vec![WithdrawalPayment {
                        request_id: task,
                        recipient: ScriptBuf::from_bytes(vec![task as u8; 22]),
                        amount: Amount::from_sat(1_000),
                    }],
                    change: vec![],
                    fee: Amount::from_sat(1_000),
                    weight: bitcoin::Weight::from_wu(800),
                };
                approved += u64::from(s.guard_spend(&intent).await.expect("guard").is_approved());
            }
            approved
        }));
    }
    let mut approved = 0;
    for handle in handles {
        approved += handle.await.expect("task");
    }
    assert_eq!(
        approved, GUARD_PER_TASK,
        "exactly one approval per outpoint"
    );
    println!(
        "guard, contended: {n} decisions ({approved} approved) in {:?} ({} with {TASKS} tasks)",
        t.elapsed(),
        rate(n, t.elapsed())
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run("in-memory", Arc::new(MemoryStore::new())).await;

        let Some(admin_url) = std::env::var("SBTC_BENCH_PG_URL")
            .or_else(|_| std::env::var("SBTC_TEST_PG_URL"))
            .ok()
        else {
            println!("PostgreSQL skipped: set SBTC_BENCH_PG_URL or SBTC_TEST_PG_URL (scripts/pg.sh start)");
            return;
        };
        let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the benchmark server");
        tokio::spawn(conn);
        let name = format!("bench_{}", hex::encode(rand::random::<[u8; 6]>()));
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create db");
        let (base, _) = admin_url.rsplit_once('/').expect("url with a database");
        let mut config = StorageConfig::postgres(format!("{base}/{name}"));
        config.pool_size = Some(TASKS as usize);
        let Ok(Target::Postgres(settings)) = config.target() else {
            panic!("bad benchmark url")
        };
        let store = PgStore::connect(*settings).await.expect("connect");
        store.migrate().await.expect("migrate");
        let version: String = admin
            .query_one("SHOW server_version", &[])
            .await
            .expect("version")
            .get(0);
        run(&format!("PostgreSQL {version}, pool of {TASKS}"), Arc::new(store)).await;
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .expect("drop db");
    });
}
