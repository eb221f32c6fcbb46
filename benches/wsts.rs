//! Threshold signing floor: the same WSTS work in one process, no network, no HSM, one thread per
//! signer. For each signer-set size it measures
//!
//! - ours: this crate's round logic (`run_dkg`, `BatchCoordinator`/`BatchSigner`) over the
//!   in-process tokio channels, each signer on its own OS thread with its own runtime, custody in
//!   a software keystore (one endorsement signature per DKG, one unseal per batch per signer);
//! - bare: the wsts calls alone (FIRE coordinator + v2 signers fed message lists directly for DKG;
//!   `v2::Party::sign_taproot`/`sign_schnorr` and `v2::Aggregator` per message for signing), one
//!   thread per signer per phase;
//!
//! and prints wall time, peak RSS (VmHWM, reset before each step) and ours/bare.
//!
//! `cargo bench --bench wsts` (N=15 and N=150); `-- 15` or `-- 150` runs one size only.

#[path = "support/mod.rs"]
mod support;

use bitcoin::hashes::Hash as _;
use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};
use support::{on_threads, requests};

use hashbrown::{HashMap, HashSet};
use sbtc_custody::{KeyKind, KeyLabel};
use sbtc_hsm_signer::signing::{
    run_dkg, ApproveAll, BatchCoordinator, BatchSigner, DkgId, DkgOutcome, InMemoryNonceLedger,
    InProcessTransport, LocalCluster, Participation, SighashRequest, SpendKind,
};
use wsts::{
    common::{Nonce, PublicNonce, SignatureShare},
    curve::{ecdsa, point::Point, scalar::Scalar},
    net::{Message, Packet},
    state_machine::{
        coordinator::{fire::Coordinator as Fire, Config, Coordinator as _},
        signer::Signer as WstsSigner,
        OperationResult, PublicKeys,
    },
    traits::{Aggregator as _, Signer as _, SignerState},
    v2,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let small = !args.iter().any(|a| a == "150");
    let large = !args.iter().any(|a| a == "15");
    let mut rows = Vec::new();
    if small {
        bench_set(15, 11, &[1, 100, 1000], &mut rows);
    }
    if large {
        bench_set(150, 105, &[100], &mut rows);
    }
    println!();
    println!(
        "| N / t | step | bare wall | ours wall | ours/bare | bare peak (start) RSS | ours peak (start) RSS |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}

fn bench_set(n: usize, t: u32, batches: &[usize], rows: &mut Vec<String>) {
    eprintln!("== N={n} t={t}");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = rt.block_on(async {
        let identity = KeyLabel::new("identity").expect("label");
        let seal = KeyLabel::new("seal").expect("label");
        let custodies = support::keystores(
            dir.path(),
            n,
            &[(&identity, KeyKind::Secp256k1), (&seal, KeyKind::Seal)],
        )
        .await;
        LocalCluster::new(custodies, &identity, &seal, t, Duration::from_secs(3600))
            .await
            .expect("cluster")
    });

    // DKG.
    reset_peak();
    let bare_dkg_start = rss_kib();
    let started = Instant::now();
    let bare = bare_dkg(n as u32, t);
    let bare_dkg_time = started.elapsed();
    let bare_dkg_peak = peak_kib();
    eprintln!("bare DKG {bare_dkg_time:?}");

    reset_peak();
    let ours_dkg_start = rss_kib();
    let started = Instant::now();
    let outcomes = ours_dkg(&cluster);
    let ours_dkg_time = started.elapsed();
    let ours_dkg_peak = peak_kib();
    eprintln!("ours DKG {ours_dkg_time:?}");
    rows.push(row(
        n,
        t,
        "DKG",
        bare_dkg_time,
        ours_dkg_time,
        (bare_dkg_start, bare_dkg_peak),
        (ours_dkg_start, ours_dkg_peak),
        "",
    ));

    for &m in batches {
        let requests = requests(m);
        // Bare signing of large sets recompresses every nonce for every party for every message
        // (quadratic in N); time a sample of messages and scale linearly to the batch.
        let sample = if n >= 100 { m.min(4) } else { m };
        reset_peak();
        let bare_start = rss_kib();
        let started = Instant::now();
        bare_sign(&bare, &requests[..sample]);
        let bare_time = started.elapsed().mul_f64(m as f64 / sample as f64);
        let bare_peak = peak_kib();
        eprintln!("bare sign {m}: {bare_time:?}");

        reset_peak();
        let ours_start = rss_kib();
        let started = Instant::now();
        ours_sign(&cluster, &outcomes, &requests);
        let ours_time = started.elapsed();
        let ours_peak = peak_kib();
        eprintln!("ours sign {m}: {ours_time:?}");
        let note = if sample < m {
            format!(" (bare: {sample} of {m} timed, scaled)")
        } else {
            String::new()
        };
        rows.push(row(
            n,
            t,
            &format!("batch of {m}"),
            bare_time,
            ours_time,
            (bare_start, bare_peak),
            (ours_start, ours_peak),
            &note,
        ));
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    n: usize,
    t: u32,
    step: &str,
    bare: Duration,
    ours: Duration,
    bare_mem: (u64, u64),
    ours_mem: (u64, u64),
    note: &str,
) -> String {
    let line = format!(
        "| {n} / {t} | {step}{note} | {:.3} s | {:.3} s | {:.2} | {} ({}) MiB | {} ({}) MiB |",
        bare.as_secs_f64(),
        ours.as_secs_f64(),
        ours.as_secs_f64() / bare.as_secs_f64(),
        bare_mem.1 / 1024,
        bare_mem.0 / 1024,
        ours_mem.1 / 1024,
        ours_mem.0 / 1024,
    );
    eprintln!("{line}");
    line
}

fn ours_dkg(cluster: &LocalCluster) -> Vec<DkgOutcome> {
    let coordinator = cluster
        .set
        .coordinator_for(&bitcoin::BlockHash::from_byte_array([1u8; 32]));
    let (transports, _) = cluster.network();
    let inputs: Vec<_> = cluster
        .signers
        .iter()
        .map(|s| s.ctx.clone())
        .zip(transports)
        .collect();
    on_threads(inputs, move |(ctx, mut transport)| async move {
        run_dkg(&ctx, &mut transport, DkgId(1), coordinator)
            .await
            .expect("DKG")
    })
}

fn ours_sign(cluster: &LocalCluster, outcomes: &[DkgOutcome], requests: &[SighashRequest]) {
    let coordinator = cluster
        .set
        .coordinator_for(&bitcoin::BlockHash::from_byte_array([2u8; 32]));
    let n = cluster.signers.len();
    let m = requests.len();
    let (transports, _) = cluster.network();
    let signers = cluster.batch_signers(
        coordinator,
        outcomes,
        (0..n)
            .map(|_| Arc::new(InMemoryNonceLedger::default()) as _)
            .collect(),
        (0..n).map(|_| Arc::new(ApproveAll) as _).collect(),
    );
    let coord = BatchCoordinator::new(
        cluster.signers[coordinator as usize].ctx.clone(),
        Arc::new(outcomes[coordinator as usize].public.clone()),
    )
    .expect("coordinator");
    let coord = Arc::new(coord);
    let requests = Arc::new(requests.to_vec());
    let inputs: Vec<(BatchSigner, InProcessTransport)> =
        signers.into_iter().zip(transports).collect();
    let results = on_threads(inputs, move |(mut signer, mut transport)| {
        let coord = coord.clone();
        let requests = requests.clone();
        async move {
            if signer.me() == coordinator {
                let got = coord
                    .sign(
                        &mut signer,
                        &mut transport,
                        &requests,
                        Participation::Threshold,
                    )
                    .await
                    .expect("batch");
                coord.finish(&mut transport).await;
                Some(got.signatures.len())
            } else {
                signer.serve(&mut transport).await;
                None
            }
        }
    });
    let signed: usize = results.into_iter().flatten().sum();
    assert_eq!(signed, m, "every sighash signed");
}

struct BareKeys {
    states: Vec<SignerState>,
    aggregator: v2::Aggregator,
}

fn bare_dkg(n: u32, t: u32) -> BareKeys {
    let mut rng = rand::rngs::OsRng;
    let keys: Vec<Scalar> = (0..n).map(|_| Scalar::random(&mut rng)).collect();
    let mut public_keys = PublicKeys::default();
    let mut signer_key_ids: HashMap<u32, HashSet<u32>> = HashMap::new();
    let mut points: HashMap<u32, Point> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let i = i as u32;
        let pk = ecdsa::PublicKey::new(k).expect("key");
        public_keys.signers.insert(i, pk);
        public_keys.key_ids.insert(i + 1, pk);
        signer_key_ids.insert(i, [i + 1].into_iter().collect());
        points.insert(i, Point::from(k));
    }
    public_keys.signer_key_ids = signer_key_ids.clone();
    let mut signers: Vec<WstsSigner<v2::Party>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            WstsSigner::new(
                t,
                n,
                n,
                n,
                i as u32,
                vec![i as u32 + 1],
                *k,
                public_keys.clone(),
                &mut rng,
            )
            .expect("signer")
        })
        .collect();
    let config = Config::with_timeouts(
        n,
        n,
        t,
        n,
        keys[0],
        None,
        None,
        None,
        None,
        None,
        signer_key_ids,
        points,
    );
    let mut coord = Fire::<v2::Aggregator>::new(config);
    let begin = coord.start_dkg_round().expect("start").msg;

    let public_shares = phase(&mut signers, &[begin]);
    let private_begin = feed(&mut coord, &public_shares).expect("private begin");
    let mut inbound = public_shares;
    inbound.push(private_begin);
    let private_shares = phase(&mut signers, &inbound);
    let end_begin = feed(&mut coord, &private_shares).expect("end begin");
    let mut inbound = private_shares;
    inbound.push(end_begin);
    let ends = phase(&mut signers, &inbound);
    let mut key = None;
    for m in ends {
        let (_, result) = coord
            .process_message(&Packet {
                msg: m,
                sig: vec![],
            })
            .expect("coordinator");
        if let Some(OperationResult::Dkg(k)) = result {
            key = Some(k);
        }
    }
    let key = key.expect("DKG result");
    let states: Vec<SignerState> = signers.iter().map(|s| s.signer.save()).collect();
    assert!(states.iter().all(|s| s.group_key == key));
    let comms: HashMap<u32, _> = signers[0]
        .commitments
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let mut aggregator = v2::Aggregator::new(n, t);
    aggregator.init(&comms).expect("aggregator");
    BareKeys { states, aggregator }
}

/// Every signer processes `inbound` on its own thread; returns everything they sent.
fn phase(signers: &mut [WstsSigner<v2::Party>], inbound: &[Message]) -> Vec<Message> {
    thread::scope(|scope| {
        let handles: Vec<_> = signers
            .iter_mut()
            .map(|s| {
                scope.spawn(move || {
                    let mut rng = rand::rngs::OsRng;
                    let mut out = Vec::new();
                    for m in inbound {
                        out.extend(s.process(m, &mut rng).expect("signer"));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    })
}

fn feed(coord: &mut Fire<v2::Aggregator>, msgs: &[Message]) -> Option<Message> {
    let mut next = None;
    for m in msgs {
        let (out, _) = coord
            .process_message(&Packet {
                msg: m.clone(),
                sig: vec![],
            })
            .expect("coordinator");
        if let Some(p) = out {
            next = Some(p.msg);
        }
    }
    next
}

fn bare_sign(keys: &BareKeys, requests: &[SighashRequest]) {
    let n = keys.states.len();
    let party_ids: Vec<u32> = (0..n as u32).collect();
    let key_ids: Vec<u32> = party_ids.iter().map(|p| p + 1).collect();
    // Nonces, one thread per signer.
    let nonces: Vec<Vec<Nonce>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    let mut rng = rand::rngs::OsRng;
                    (0..requests.len())
                        .map(|_| Nonce::random(&mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let public: Vec<Vec<PublicNonce>> = (0..requests.len())
        .map(|j| nonces.iter().map(|ns| PublicNonce::from(&ns[j])).collect())
        .collect();
    // Shares, one thread per signer.
    let shares: Vec<Vec<SignatureShare>> = thread::scope(|scope| {
        let handles: Vec<_> =
            keys.states
                .iter()
                .zip(&nonces)
                .map(|(state, my_nonces)| {
                    let public = &public;
                    let party_ids = &party_ids;
                    let key_ids = &key_ids;
                    scope.spawn(move || {
                        requests
                            .iter()
                            .enumerate()
                            .map(|(j, r)| {
                                let mut st = state.clone();
                                st.parties[0].1.nonce = my_nonces[j].clone();
                                let party = v2::Party::load(&st);
                                let mut s = match r.kind {
                                    SpendKind::KeySpend { merkle_root } => party.sign_taproot(
                                        &r.sighash,
                                        party_ids,
                                        key_ids,
                                        &public[j],
                                        merkle_root,
                                    ),
                                    SpendKind::ScriptPath => party
                                        .sign_schnorr(&r.sighash, party_ids, key_ids, &public[j]),
                                };
                                s.remove(0)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    // Aggregation by the coordinator.
    let mut agg = keys.aggregator.clone();
    for (j, r) in requests.iter().enumerate() {
        let sig_shares: Vec<SignatureShare> = shares.iter().map(|s| s[j].clone()).collect();
        let ok = match r.kind {
            SpendKind::KeySpend { merkle_root } => agg
                .sign_taproot(&r.sighash, &public[j], &sig_shares, &key_ids, merkle_root)
                .is_ok(),
            SpendKind::ScriptPath => agg
                .sign_schnorr(&r.sighash, &public[j], &sig_shares, &key_ids)
                .is_ok(),
        };
        assert!(ok, "bare signature {j} failed");
    }
}

/// Resets the peak RSS counter (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Resident memory when a step starts: heap left over from earlier steps (glibc keeps freed
/// memory) counts in the next step's peak, so the table shows both.
fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
