//! Signatures per second for each custody backend, next to the raw library doing the same work
//! (sign, low-S normalisation, recovery id) in the same run, and the PKCS#11 session pool with 1
//! task vs 4 tasks. Run: `cargo bench -p pkcs11-tests --bench custody`. `BENCH_SECONDS` sets the
//! length of one measurement (default 1.0); each figure is the median of 5 alternating rounds.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cryptoki::{
    mechanism::Mechanism,
    object::{Attribute, ObjectClass},
};
use sbtc_custody::{normalize_secp256k1, Custody, KeyKind, KeyLabel, PublicKey, SecretString};
use secp256k1::{Message, SecretKey, SECP256K1};
use sha2::{Digest, Sha256};

const ROUNDS: usize = 5;

fn seconds() -> Duration {
    let s = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(s.max(0.05))
}

fn digest(i: u64) -> [u8; 32] {
    Sha256::digest(i.to_le_bytes()).into()
}

/// Runs `op` repeatedly for about `dur`; returns operations per second.
fn rate(dur: Duration, mut op: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..16 {
            op(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Alternates raw and ours so that drift in machine load hits both alike.
fn compare(name: &str, mut raw: impl FnMut(u64), mut ours: impl FnMut(u64)) {
    let dur = seconds();
    let (mut r, mut o) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        r.push(rate(dur, &mut raw));
        o.push(rate(dur, &mut ours));
    }
    let (r, o) = (median(r), median(o));
    println!(
        "{name:<34} raw {r:>9.0} sig/s   ours {o:>9.0} sig/s   ours/raw {:.3}   overhead {:+.1}%",
        o / r,
        (r / o - 1.0) * 100.0
    );
}

fn secp_key(pk: Option<PublicKey>) -> secp256k1::PublicKey {
    match pk {
        Some(PublicKey::Secp256k1(k)) => k,
        other => panic!("expected a secp256k1 public key, got {other:?}"),
    }
}

fn bench_keystore(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pass = SecretString::new("bench passphrase".into());
    let ks = rt
        .block_on(sbtc_custody_keystore::Keystore::create_with_passphrase(
            dir.path().join("keystore"),
            &pass,
            sbtc_custody_keystore::KdfParams::insecure_for_tests(),
        ))
        .expect("create keystore");
    let label = KeyLabel::new("identity").expect("label");
    rt.block_on(ks.generate(&label, KeyKind::Secp256k1))
        .expect("generate");
    // The raw side: the secp256k1 crate with a key in memory, low-S and recovery id included.
    let sk = SecretKey::from_slice(&[0x42; 32]).expect("key");
    compare(
        "keystore vs secp256k1 crate",
        |i| {
            let sig = SECP256K1.sign_ecdsa_recoverable(&Message::from_digest(digest(i)), &sk);
            std::hint::black_box(sig.serialize_compact());
        },
        |i| {
            let sig = rt
                .block_on(ks.sign_secp256k1_prehash(&label, &digest(i)))
                .expect("sign");
            std::hint::black_box(sig);
        },
    );
}

fn bench_pkcs11(rt: &tokio::runtime::Runtime) {
    let token = pkcs11_tests::softhsm::token();
    let backend = Arc::new(token.open());
    let label = token.key_label("bench-identity");
    let pk = secp_key(
        rt.block_on(backend.generate(&label, KeyKind::Secp256k1))
            .expect("generate")
            .public_key,
    );

    // The raw side: one session of the same initialised module, C_SignInit + C_Sign, then the same
    // low-S normalisation and recovery-id search.
    let session = backend
        .context()
        .open_rw_session(backend.slot())
        .expect("raw session (the backend is logged in, so it is too)");
    let handle = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_str().as_bytes().to_vec()),
        ])
        .expect("find key")
        .pop()
        .expect("the key exists");
    compare(
        "pkcs11 (SoftHSM2) vs raw cryptoki",
        |i| {
            let d = digest(i);
            let raw = session.sign(&Mechanism::Ecdsa, handle, &d).expect("C_Sign");
            std::hint::black_box(normalize_secp256k1(&raw, &d, &pk).expect("normalise"));
        },
        |i| {
            let sig = rt
                .block_on(backend.sign_secp256k1_prehash(&label, &digest(i)))
                .expect("sign");
            std::hint::black_box(sig);
        },
    );
    drop(session);

    // The session pool: total signatures per second with 1 task and with 4 tasks.
    let dur = seconds();
    let tasks_rate = |tasks: u64| {
        rt.block_on(async {
            let start = Instant::now();
            let mut handles = Vec::new();
            for t in 0..tasks {
                let backend = backend.clone();
                let label = label.clone();
                handles.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        backend
                            .sign_secp256k1_prehash(&label, &digest(t << 32 | n))
                            .await
                            .expect("sign");
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0;
            for h in handles {
                total += h.await.expect("task");
            }
            total as f64 / start.elapsed().as_secs_f64()
        })
    };
    let (mut one, mut four) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        one.push(tasks_rate(1));
        four.push(tasks_rate(4));
    }
    let (one, four) = (median(one), median(four));
    println!(
        "{:<34} 1 task {one:>9.0} sig/s   4 tasks {four:>9.0} sig/s   4/1 {:.2}x   (cores: {})",
        "pkcs11 session pool (4 sessions)",
        four / one,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn bench_mockhsm(rt: &tokio::runtime::Runtime) {
    use yubihsm::{asymmetric, object, Capability, Client, Connector, Credentials, Domain};
    let connector = Connector::mockhsm();
    let backend = sbtc_custody_yubihsm::YubiHsmBackend::with_connector(
        connector.clone(),
        1,
        SecretString::new("password".into()),
        sbtc_custody_yubihsm::Options::default(),
    )
    .expect("open MockHsm backend");
    let label = KeyLabel::new("identity").expect("label");
    rt.block_on(backend.generate(&label, KeyKind::Secp256k1))
        .expect("generate");

    // The raw side: the yubihsm client on its own key, DER to r || s, the same normalisation.
    let client = Client::open(connector, Credentials::default(), true).expect("raw client");
    let id: object::Id = 0x0abc;
    client
        .generate_asymmetric_key(
            id,
            object::Label::from("raw-bench"),
            Domain::DOM1,
            Capability::SIGN_ECDSA,
            asymmetric::Algorithm::EcK256,
        )
        .expect("raw generate");
    let pk = {
        let raw = client.get_public_key(id).expect("public key");
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(raw.as_ref());
        secp256k1::PublicKey::from_slice(&sec1).expect("secp256k1 point")
    };
    compare(
        "yubihsm (MockHsm) vs raw yubihsm",
        |i| {
            let d = digest(i);
            let der = client.sign_ecdsa_prehash_raw(id, d).expect("sign");
            let rs = secp256k1::ecdsa::Signature::from_der(&der)
                .expect("DER")
                .serialize_compact();
            std::hint::black_box(normalize_secp256k1(&rs, &d, &pk).expect("normalise"));
        },
        |i| {
            let sig = rt
                .block_on(backend.sign_secp256k1_prehash(&label, &digest(i)))
                .expect("sign");
            std::hint::black_box(sig);
        },
    );
}

fn main() {
    // cargo bench passes --bench; anything else (cargo test --benches) gets a quick smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        std::env::set_var("BENCH_SECONDS", "0.05");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    println!("custody signing benchmark: secp256k1 prehash signatures, median of {ROUNDS} rounds of {:?}", seconds());
    bench_keystore(&rt);
    bench_pkcs11(&rt);
    bench_mockhsm(&rt);
}
