//! Stacks multisig signing rate of one signer, per custody backend, next to the bare backend
//! doing the signature alone in the same run:
//! - raw: `Custody::sign_secp256k1_prehash` of a 32-byte digest (the backend, through the trait;
//!   `cargo bench -p pkcs11-tests --bench custody` puts that next to raw cryptoki / yubihsm /
//!   secp256k1);
//! - ours: `multisig::sign` of a complete-deposit-wrapper call from an 11-of-15 account, as the
//!   node does it: the presign sighash (two SHA-512/256 over the transaction), the identity-key
//!   signature through the audited custody (one audit-log append to the in-memory store), and
//!   the recovery check that the signature is this signer's before it leaves; and the same
//!   without the audit log, to show what the log costs.
//!
//!   cargo bench --bench stacks
//!
//! `BENCH_SECONDS` (default 1.0) sets one measurement; each figure is the median of 5 alternating
//! rounds. Figures go to docs/performance.md ("Stacks multisig signing").

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{PublicKey, SecretKey, SECP256K1};
use bitcoin::{BlockHash, OutPoint, Txid};
use sbtc_custody::{Custody, KeyKind, KeyLabel, SecretString};
use sbtc_hsm_signer::{
    chain::stacks::{
        address::{Principal, StacksNetwork},
        contracts::{CompleteDeposit, SignerCall},
        multisig::{self, SignerAccount},
    },
    keys::{AuditedCustody, KeyLabels, Keys},
    storage::{audit_sink::StorageAuditSink, memory::MemoryStore, Storage},
};

const ROUNDS: usize = 5;

fn seconds() -> Duration {
    let s = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(s.max(0.05))
}

async fn rate<F, Fut>(dur: Duration, mut op: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..8 {
            op(n).await;
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bench(name: &str, custody: Arc<dyn Custody>) {
    let label = KeyLabel::new("identity").unwrap();
    custody.generate(&label, KeyKind::Secp256k1).await.unwrap();
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::new());
    let audited = AuditedCustody::new(custody.clone(), Arc::new(StorageAuditSink(store)));
    let keys = Keys::audited(audited, &KeyLabels::default());
    let bare = Keys::new(custody.clone(), &KeyLabels::default());
    let identity = keys.identity_key().await.unwrap();
    let mut set: Vec<PublicKey> = (1..=14u8)
        .map(|i| {
            SecretKey::from_slice(&[i; 32])
                .unwrap()
                .public_key(SECP256K1)
        })
        .collect();
    set.push(identity);
    let account = SignerAccount::new(set, 11).unwrap();
    let deployer = Principal::from_address("SN3R84XZYA63QS28932XQF3G1J8R9PC3W76P9CSQS").unwrap();
    let tx_for = |n: u64| {
        let call = SignerCall::CompleteDeposit(CompleteDeposit {
            outpoint: OutPoint::new(Txid::from_byte_array([7; 32]), n as u32),
            amount: 100_000,
            recipient: deployer.clone(),
            burn_hash: BlockHash::from_byte_array([8; 32]),
            burn_height: 900,
            sweep_txid: Txid::from_byte_array([9; 32]),
        });
        account.unsigned_call(
            StacksNetwork::Testnet,
            n,
            2_000,
            call.to_contract_call(&deployer),
        )
    };
    let dur = seconds();
    let (mut raw, mut ours, mut unaudited) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        raw.push(
            rate(dur, |n| {
                let custody = custody.clone();
                let label = label.clone();
                async move {
                    let mut d = [0x42u8; 32];
                    d[..8].copy_from_slice(&n.to_be_bytes());
                    custody.sign_secp256k1_prehash(&label, &d).await.unwrap();
                }
            })
            .await,
        );
        for (keys, out) in [(&keys, &mut ours), (&bare, &mut unaudited)] {
            out.push(
                rate(dur, |n| {
                    let tx = tx_for(n);
                    let account = &account;
                    async move {
                        multisig::sign(keys, &identity, account, &tx, "bench")
                            .await
                            .unwrap();
                    }
                })
                .await,
            );
        }
    }
    let (r, o, u) = (median(raw), median(ours), median(unaudited));
    println!(
        "{name:<18} raw {r:>7.0} sig/s   ours {o:>7.0} sig/s   ours/raw {:.3} ({:+.0} µs/sig)   without the audit log {u:>7.0} sig/s ({:+.0} µs/sig)",
        o / r,
        1e6 / o - 1e6 / r,
        1e6 / u - 1e6 / r,
    );
}

fn main() {
    // PKCS#11 is initialised once per process: the SoftHSM2 token first.
    let token = pkcs11_tests::softhsm::token();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ks = sbtc_custody_keystore::Keystore::create_with_passphrase(
            dir.path().join("bench.keystore"),
            &SecretString::new("bench passphrase".into()),
            sbtc_custody_keystore::KdfParams::insecure_for_tests(),
        )
        .await
        .unwrap();
        bench("keystore", Arc::new(ks)).await;
        let hsm = tokio::task::spawn_blocking(move || token.open())
            .await
            .unwrap();
        bench("pkcs11 (SoftHSM2)", Arc::new(hsm)).await;
        let mock = tokio::task::spawn_blocking(|| {
            sbtc_custody_yubihsm::YubiHsmBackend::with_connector(
                yubihsm::Connector::mockhsm(),
                1,
                SecretString::new("password".into()),
                sbtc_custody_yubihsm::Options::default(),
            )
        })
        .await
        .unwrap()
        .unwrap();
        bench("yubihsm (MockHsm)", Arc::new(mock)).await;
    });
}
