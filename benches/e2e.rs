//! Threshold signing end to end over real mTLS links, divided by the floor measured in the same run.
//!
//! - floor: `LocalCluster`, the whole signer set in one process over in-process tokio channels, the
//!   same round code (`run_dkg`, `BatchCoordinator`/`BatchSigner`), custody in a software keystore;
//! - e2e: the same signers (the same keystores, keys and signer set) over N real `PeerNode`s on
//!   127.0.0.1 (mutual TLS 1.3, tonic gRPC, protobuf round messages in peer envelopes) through
//!   `PeerTransport`.
//!
//! Both sides run each signer on its own OS thread with its own current-thread runtime (a signer
//! process each, in miniature), on the same 2 cores; the peer nodes' link tasks share one 2-worker
//! runtime. Floor and e2e alternate step by step, each step repeated (`E2E_ROUNDS`, default 3), and
//! the table shows medians. Peak RSS is VmHWM, reset before each step. Beside wall time, each step
//! reports the CPU time (user + system) it took, the bench's own process for the floor and the N=15
//! e2e, the sum over the 150 processes for N=150: other tenants of the machine stretch wall time
//! but hardly change what a step costs in CPU, so the CPU ratio says what the links cost even in a
//! noisy run.
//!
//! `cargo bench --bench e2e` runs N=15, t=11 (DKG, batches of 1, 100 and 1,000 sighashes).
//! `cargo bench --bench e2e -- 150` runs N=150, t=105 instead: the in-process floor (150 signer
//! threads, as `cargo bench --bench wsts -- 150`) against 150 `sbtc-hsm-signer run` processes set
//! up as `devnet` sets them up (one process holding a 150-node mesh needs 44,700 descriptors, over
//! this machine's hard limit of 20,000), DKG plus one batch of 100 with every signer signing, with
//! wall time and the children's memory read from /proc while they run. `-- all` runs both.

#[path = "support/mod.rs"]
mod support;

use bitcoin::hashes::Hash as _;
use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};
use support::{on_threads, requests};

use sbtc_custody::{Custody, KeyKind, KeyLabel, PublicKey, Role};
use sbtc_hsm_signer::{
    config::Config,
    coordination::{wire, PeerTransport},
    devnet::{demo, demo::RunResult},
    keys as custody,
    peer::{self, cert, Limits, Member, NodeParams, PeerNode},
    signing::{
        run_dkg, ApproveAll, BatchCoordinator, BatchNonceResponse, BatchShareRequest, BatchSigner,
        DkgId, DkgOutcome, InMemoryNonceLedger, LocalCluster, Participation, RoundId, RoundMessage,
        SighashRequest, SignerContext, Transport,
    },
};

use wsts::{
    common::PublicNonce,
    curve::{point::Point, scalar::Scalar},
};

const N: usize = 15;
const T: u32 = 11;
const BATCHES: [usize; 3] = [1, 100, 1000];
/// The chain tip the rounds are stamped with (it picks the coordinator).
fn tip() -> bitcoin::BlockHash {
    bitcoin::BlockHash::from_byte_array([2u8; 32])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let large = args.iter().any(|a| a == "150" || a == "all");
    let small = !args.iter().any(|a| a == "150");
    if small {
        small_set();
    }
    if large {
        large_set();
    }
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).expect("label")
}

/// One measured step: wall time and peak RSS (KiB) with the RSS at its start.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    /// CPU time (user + system) of this process during the step: what the step cost, whatever
    /// else ran on the machine meanwhile.
    cpu: Duration,
    peak_kib: u64,
    start_kib: u64,
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, Sample) {
    reset_peak();
    let start_kib = rss_kib();
    let cpu_start = self_cpu();
    let started = Instant::now();
    let r = f();
    let wall = started.elapsed();
    (
        r,
        Sample {
            wall,
            cpu: self_cpu().saturating_sub(cpu_start),
            peak_kib: peak_kib(),
            start_kib,
        },
    )
}

fn median(samples: &[Sample]) -> Sample {
    let mut s = samples.to_vec();
    s.sort_by_key(|x| x.wall);
    s[s.len() / 2]
}

fn median_cpu(samples: &[Sample]) -> Duration {
    let mut s: Vec<Duration> = samples.iter().map(|x| x.cpu).collect();
    s.sort();
    s[s.len() / 2]
}

/// User + system CPU time of this process so far.
fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn small_set() {
    let rounds: usize = std::env::var("E2E_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 20);
    eprintln!("== N={N} t={T}, {rounds} rounds");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let identity = label("identity");
    let tls = label("tls");
    let seal = label("seal");

    // The same keystores (cheap KDF) serve both sides.
    let custodies = rt.block_on(support::keystores(
        dir.path(),
        N,
        &[
            (&identity, KeyKind::Secp256k1),
            (&tls, KeyKind::P256),
            (&seal, KeyKind::Seal),
        ],
    ));
    let cluster = rt
        .block_on(LocalCluster::new(
            custodies.clone(),
            &identity,
            &seal,
            T,
            Duration::from_secs(120),
        ))
        .expect("cluster");

    // The mesh, with the message size limit raised as the devnet does (a share request carries
    // every chosen signer's nonces for every sighash).
    let max_batch = BATCHES.iter().copied().max().unwrap_or(1);
    let limits = Limits {
        max_message_bytes: (max_batch * N * 400 + (1 << 20)).min(64 << 20),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Limits::default()
    };
    let mesh_started = Instant::now();
    let nodes: Vec<Arc<PeerNode>> = rt.block_on(async {
        let mut nodes = Vec::new();
        for c in &custodies {
            let certificate = cert::generate(c, &tls, &identity, Duration::from_secs(86_400))
                .await
                .expect("certificate");
            let node = PeerNode::start(NodeParams {
                custody: c.clone(),
                identity_label: identity.clone(),
                tls_label: tls.clone(),
                certificate,
                listen: "127.0.0.1:0".parse().expect("address"),
                set: peer::SignerSet::default(),
                limits: limits.clone(),
            })
            .await
            .expect("node");
            nodes.push(node);
        }
        let set: peer::SignerSet = nodes
            .iter()
            .map(|n| {
                (
                    n.identity(),
                    Member {
                        endpoint: Some(n.local_addr().to_string()),
                        spki_pin: None,
                    },
                )
            })
            .collect();
        for n in &nodes {
            n.set_signer_set(set.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !nodes.iter().all(|n| n.connected_peers().len() == N - 1) {
            assert!(Instant::now() < deadline, "the mesh did not form in 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nodes.into_iter().map(Arc::new).collect()
    });
    let mesh_time = mesh_started.elapsed();
    eprintln!("mesh of {N} formed in {mesh_time:?}");

    // One transport per signer for the whole run (it owns the node's inbox), by signer index.
    let mut transports: Vec<Option<PeerTransport>> = (0..N).map(|_| None).collect();
    for node in &nodes {
        let t =
            PeerTransport::new(node.clone(), cluster.set.clone(), tip(), 812).expect("transport");
        let me = t.me() as usize;
        transports[me] = Some(t);
    }
    let mut transports: Vec<PeerTransport> = transports
        .into_iter()
        .map(|t| t.expect("every signer has a node"))
        .collect();

    let mut floor: HashMap<String, Vec<Sample>> = HashMap::new();
    let mut e2e: HashMap<String, Vec<Sample>> = HashMap::new();
    let mut floor_outcomes = Vec::new();
    let mut e2e_outcomes = Vec::new();
    for round in 0..rounds {
        let dkg_id = DkgId(round as u64 + 1);
        let (o, s) = measure(|| floor_dkg(&cluster, dkg_id));
        eprintln!("round {round}: floor DKG {:?}", s.wall);
        floor.entry("DKG".into()).or_default().push(s);
        floor_outcomes = o;
        let ((o, t), s) = measure(|| e2e_dkg(&cluster, transports, dkg_id));
        eprintln!("round {round}: e2e   DKG {:?}", s.wall);
        e2e.entry("DKG".into()).or_default().push(s);
        e2e_outcomes = o;
        transports = t;
    }
    for &m in &BATCHES {
        let requests = requests(m);
        let step = format!("batch of {m}");
        for round in 0..rounds {
            let ((), s) = measure(|| floor_sign(&cluster, &floor_outcomes, &requests));
            eprintln!("round {round}: floor {step} {:?}", s.wall);
            floor.entry(step.clone()).or_default().push(s);
            let (t, s) = measure(|| e2e_sign(&cluster, &e2e_outcomes, transports, &requests));
            eprintln!("round {round}: e2e   {step} {:?}", s.wall);
            e2e.entry(step.clone()).or_default().push(s);
            transports = t;
        }
    }

    let dropped: u64 = nodes
        .iter()
        .map(|n| {
            let m = n.metrics();
            m.malformed + m.oversized + m.rate_limited + m.inbox_full + m.queue_full
        })
        .sum();
    println!();
    println!("N={N}, t={T}: mesh of {N} real mTLS nodes formed in {mesh_time:.2?}; median of {rounds} alternating rounds; links dropped {dropped} messages");
    println!("| step | floor (in-process) | e2e (mTLS) | e2e/floor | all e2e/floor | CPU floor / e2e | CPU e2e/floor | floor peak (start) RSS | e2e peak (start) RSS |");
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|");
    let steps =
        std::iter::once("DKG".to_string()).chain(BATCHES.iter().map(|m| format!("batch of {m}")));
    for step in steps {
        let (Some(f), Some(e)) = (floor.get(&step), e2e.get(&step)) else {
            continue;
        };
        let (fm, em) = (median(f), median(e));
        let each: Vec<String> = f
            .iter()
            .zip(e)
            .map(|(f, e)| format!("{:.2}", e.wall.as_secs_f64() / f.wall.as_secs_f64()))
            .collect();
        let (fc, ec) = (median_cpu(f), median_cpu(e));
        println!(
            "| {step} | {:.3} s | {:.3} s | {:.2}x | {} | {:.2} s / {:.2} s | {:.2}x | {} ({}) MiB | {} ({}) MiB |",
            fm.wall.as_secs_f64(),
            em.wall.as_secs_f64(),
            em.wall.as_secs_f64() / fm.wall.as_secs_f64(),
            each.join(", "),
            fc.as_secs_f64(),
            ec.as_secs_f64(),
            ec.as_secs_f64() / fc.as_secs_f64(),
            fm.peak_kib / 1024,
            fm.start_kib / 1024,
            em.peak_kib / 1024,
            em.start_kib / 1024,
        );
    }
    // The coordinator waits for every signer's nonces, so all N are in the request.
    wire_cost(N, N, max_batch);
    drop(transports);
    rt.block_on(async {
        for n in nodes {
            if let Ok(n) = Arc::try_unwrap(n) {
                n.shutdown().await;
            }
        }
    });
}

/// What the links add per share request: the protobuf encoding once at the coordinator, and the
/// decoding (every nonce point checked to be on the curve) at each of the other N-1 signers.
fn wire_cost(n: usize, t: usize, m: usize) {
    let mut rng = rand::rngs::OsRng;
    let point = |rng: &mut rand::rngs::OsRng| Point::from(Scalar::random(rng));
    let share_request = BatchShareRequest {
        dkg_id: DkgId(1),
        round: RoundId([1u8; 32]),
        sighashes: requests(m),
        nonce_responses: (0..t as u32)
            .map(|signer| BatchNonceResponse {
                round: RoundId([1u8; 32]),
                signer,
                nonces: (0..m)
                    .map(|_| {
                        Some(PublicNonce {
                            D: point(&mut rng),
                            E: point(&mut rng),
                        })
                    })
                    .collect(),
            })
            .collect(),
    };
    let request = RoundMessage::ShareRequest(share_request.clone());
    let started = Instant::now();
    let bytes = wire::encode_round_bytes(&request).expect("encode");
    let encode = started.elapsed();
    let started = Instant::now();
    let decoded = wire::decode_round_bytes(bytes.clone(), n).expect("decode");
    let decode = started.elapsed();
    assert!(
        matches!(&decoded, RoundMessage::ShareRequest(r) if *r == share_request),
        "round trip"
    );
    println!(
        "share request for {m} sighashes with the nonces of {t} signers: {:.2} MB of protobuf, encoded once in {:.1} ms, decoded in {:.1} ms by each of the other {} signers ({:.2} s of CPU in all)",
        bytes.len() as f64 / 1e6,
        encode.as_secs_f64() * 1e3,
        decode.as_secs_f64() * 1e3,
        n - 1,
        decode.as_secs_f64() * (n - 1) as f64,
    );
}

fn contexts(cluster: &LocalCluster) -> Vec<SignerContext> {
    cluster.signers.iter().map(|s| s.ctx.clone()).collect()
}

async fn dkg_on<X: Transport>(
    ctx: SignerContext,
    mut transport: X,
    id: DkgId,
    coordinator: u32,
) -> (DkgOutcome, X) {
    let outcome = run_dkg(&ctx, &mut transport, id, coordinator)
        .await
        .expect("DKG");
    (outcome, transport)
}

fn floor_dkg(cluster: &LocalCluster, id: DkgId) -> Vec<DkgOutcome> {
    let coordinator = cluster.set.coordinator_for(&tip());
    let (transports, _) = cluster.network();
    let inputs: Vec<_> = contexts(cluster).into_iter().zip(transports).collect();
    on_threads(inputs, move |(ctx, t)| dkg_on(ctx, t, id, coordinator))
        .into_iter()
        .map(|(o, _)| o)
        .collect()
}

fn e2e_dkg(
    cluster: &LocalCluster,
    transports: Vec<PeerTransport>,
    id: DkgId,
) -> (Vec<DkgOutcome>, Vec<PeerTransport>) {
    let coordinator = cluster.set.coordinator_for(&tip());
    let inputs: Vec<_> = contexts(cluster).into_iter().zip(transports).collect();
    on_threads(inputs, move |(ctx, t)| dkg_on(ctx, t, id, coordinator))
        .into_iter()
        .unzip()
}

/// One batch with every signer on its own thread; returns the transports and the signatures made.
fn sign_on<X: Transport + Send + 'static>(
    cluster: &LocalCluster,
    outcomes: &[DkgOutcome],
    transports: Vec<X>,
    requests: &[SighashRequest],
) -> Vec<X> {
    let coordinator = cluster.set.coordinator_for(&tip());
    let n = cluster.signers.len();
    let m = requests.len();
    let signers = cluster.batch_signers(
        coordinator,
        outcomes,
        (0..n)
            .map(|_| Arc::new(InMemoryNonceLedger::default()) as _)
            .collect(),
        (0..n).map(|_| Arc::new(ApproveAll) as _).collect(),
    );
    let coord = Arc::new(
        BatchCoordinator::new(
            cluster.signers[coordinator as usize].ctx.clone(),
            Arc::new(outcomes[coordinator as usize].public.clone()),
        )
        .expect("coordinator"),
    );
    let requests = Arc::new(requests.to_vec());
    let inputs: Vec<(BatchSigner, X)> = signers.into_iter().zip(transports).collect();
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
                (transport, got.signatures.len())
            } else {
                signer.serve(&mut transport).await;
                (transport, 0)
            }
        }
    });
    let signed: usize = results.iter().map(|(_, s)| s).sum();
    assert_eq!(signed, m, "every sighash signed");
    results.into_iter().map(|(t, _)| t).collect()
}

fn floor_sign(cluster: &LocalCluster, outcomes: &[DkgOutcome], requests: &[SighashRequest]) {
    let (transports, _) = cluster.network();
    sign_on(cluster, outcomes, transports, requests);
}

fn e2e_sign(
    cluster: &LocalCluster,
    outcomes: &[DkgOutcome],
    transports: Vec<PeerTransport>,
    requests: &[SighashRequest],
) -> Vec<PeerTransport> {
    sign_on(cluster, outcomes, transports, requests)
}

/// N=150, t=105: the in-process floor and 150 `sbtc-hsm-signer run` processes, alternating
/// (`E2E_ROUNDS_150=k` rounds of floor then processes, default 1), with the ratios of DKG and a
/// batch of 100 (every signer signing) against the floor of the same run.
fn large_set() {
    let (n, t, batch) = (150usize, 105u32, 100usize);
    let rounds: usize = std::env::var("E2E_ROUNDS_150")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 5);
    eprintln!("== N={n} t={t}, batch of {batch}, {rounds} rounds");
    let mut floors = Vec::new();
    let mut runs = Vec::new();
    for round in 0..rounds {
        let floor = large_floor(n, t, batch);
        eprintln!(
            "round {round}: floor DKG {:?}, batch {:?}",
            floor.dkg.wall, floor.batch.wall
        );
        floors.push(floor);
        match large_e2e(n, t, batch) {
            Ok(run) => {
                eprintln!(
                    "round {round}: e2e   DKG {:?} (coordinator {:?}), batch {:?}",
                    run.dkg, run.dkg_coordinator, run.batch
                );
                runs.push(run);
            }
            Err(why) => {
                println!("N={n}, t={t}: round {round} FAILED: {why}");
                return;
            }
        }
    }
    // Each round's floor and processes run minutes apart at most, so the headline ratio is the
    // median of the rounds' own ratios (other tenants' builds come and go on this machine).
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let k = v.len();
        if k % 2 == 1 {
            v[k / 2]
        } else {
            (v[k / 2 - 1] + v[k / 2]) / 2.0
        }
    };
    let secs = |d: Duration| d.as_secs_f64();
    let last = runs.last().expect("at least one round");
    type Pick<T> = fn(&T) -> Duration;
    let row = |step: &str,
               (f, fc): (Pick<LargeFloor>, Option<Pick<LargeFloor>>),
               (e, ec): (Pick<LargeRun>, Option<Pick<LargeRun>>),
               mem: String| {
        let ratios: Vec<f64> = floors
            .iter()
            .zip(&runs)
            .map(|(fl, r)| secs(e(r)) / secs(f(fl)))
            .collect();
        let cpu = match (fc, ec) {
            (Some(fc), Some(ec)) => {
                let cpu_ratios: Vec<f64> = floors
                    .iter()
                    .zip(&runs)
                    .map(|(fl, r)| secs(ec(r)) / secs(fc(fl)))
                    .collect();
                format!(
                    "{:.1} s / {:.1} s | {:.2}x",
                    mid(floors.iter().map(|fl| secs(fc(fl))).collect()),
                    mid(runs.iter().map(|r| secs(ec(r))).collect()),
                    mid(cpu_ratios),
                )
            }
            _ => " | ".to_string(),
        };
        println!(
            "| {step} | {:.3} s | {:.3} s | {:.2}x | {} | {cpu} | {mem} |",
            mid(floors.iter().map(|fl| secs(f(fl))).collect()),
            mid(runs.iter().map(|r| secs(e(r))).collect()),
            mid(ratios.clone()),
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    };
    let peak = |s: &Sample| format!("{} ({}) MiB", s.peak_kib / 1024, s.start_kib / 1024);
    println!();
    println!(
        "N={n}, t={t}: floor = {n} signers in this process over in-process channels; e2e = {n} `run` processes over real mTLS; {rounds} alternating rounds, medians (e2e/floor: median of the rounds' ratios)"
    );
    println!("| step | floor (in-process) | e2e (150 processes) | e2e/floor | each round's e2e/floor | CPU floor / e2e | CPU e2e/floor | floor peak (start) RSS; e2e sum of peak RSS |");
    println!("|---|---:|---:|---:|---|---:|---:|---:|");
    row(
        "DKG, from the last signer's start",
        (|f| f.dkg.wall, Some(|f| f.dkg.cpu)),
        (|r| r.dkg, Some(|r| r.dkg_cpu)),
        format!(
            "{}; {} MiB",
            peak(&floors[floors.len() - 1].dkg),
            last.sum_hwm_kib / 1024
        ),
    );
    row(
        "DKG, coordinator's clock (waits for the last signer's mesh)",
        (|f| f.dkg.wall, None),
        (|r| r.dkg_coordinator, None),
        String::new(),
    );
    row(
        &format!("batch of {batch}, all {n} signing"),
        (|f| f.batch.wall, Some(|f| f.batch.cpu)),
        (|r| r.batch, Some(|r| r.batch_cpu)),
        peak(&floors[floors.len() - 1].batch),
    );
    println!(
        "last round: {n} processes done {:.1} s after the first start; mesh {:.1} s at the coordinator, {:.1} s at the slowest signer; DKG verification {:.1} s; DKG verified by {}/{n}, signatures valid {}/{batch}",
        last.wall.as_secs_f64(),
        last.mesh_coordinator.as_secs_f64(),
        last.mesh_slowest.as_secs_f64(),
        last.verification.as_secs_f64(),
        last.verified,
        last.valid,
    );
    println!(
        "memory: sum of the {n} processes' peak RSS (VmHWM) {} MiB (largest {} MiB, mean {} MiB); largest sum of RSS at one instant {} MiB (at {:.0} s)",
        last.sum_hwm_kib / 1024,
        last.max_hwm_kib / 1024,
        last.sum_hwm_kib / 1024 / n as u64,
        last.peak_sum_rss_kib / 1024,
        last.peak_sum_at.as_secs_f64(),
    );
    let (json_time, json_len) = floors[floors.len() - 1].public_shares_json;
    println!(
        "storing the public shares after the DKG (src/devnet/session.rs, JSON), which the floor does not: {:.1} MB and {:.0} ms per signer ({:.1} s of CPU for all {n})",
        json_len as f64 / 1e6,
        json_time.as_secs_f64() * 1e3,
        json_time.as_secs_f64() * n as f64,
    );
    wire_cost(n, n, batch);
}

/// The floor at N=150: the same round code with every signer on its own thread in this process.
struct LargeFloor {
    dkg: Sample,
    batch: Sample,
    /// What every e2e signer does after its DKG and the floor does not: encode its public shares
    /// for storage (src/devnet/session.rs stores them as JSON); time and bytes for one signer.
    public_shares_json: (Duration, usize),
}

fn large_floor(n: usize, t: u32, batch: usize) -> LargeFloor {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let identity = label("identity");
    let seal = label("seal");
    let cluster = rt.block_on(async {
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
    let (outcomes, dkg) = measure(|| floor_dkg(&cluster, DkgId(1)));
    let started = Instant::now();
    let json = serde_json::to_vec(&outcomes[0].public).expect("public shares as JSON");
    let public_shares_json = (started.elapsed(), json.len());
    let requests = requests(batch);
    let ((), batch) = measure(|| floor_sign(&cluster, &outcomes, &requests));
    LargeFloor {
        dkg,
        batch,
        public_shares_json,
    }
}

/// One run of 150 signer processes.
struct LargeRun {
    wall: Duration,
    mesh_coordinator: Duration,
    mesh_slowest: Duration,
    /// From the moment the last signer started its DKG to the coordinator's "DKG done".
    dkg: Duration,
    /// The coordinator's own DKG time, from its start (it waits for the slowest mesh).
    dkg_coordinator: Duration,
    verification: Duration,
    batch: Duration,
    /// CPU time (user + system) of all 150 processes during the DKG (same window as `dkg`) and
    /// during the batch (from the coordinator's end of verification to its signed batch).
    dkg_cpu: Duration,
    batch_cpu: Duration,
    verified: usize,
    valid: usize,
    sum_hwm_kib: u64,
    max_hwm_kib: u64,
    peak_sum_rss_kib: u64,
    peak_sum_at: Duration,
}

/// 150 `sbtc-hsm-signer run` processes over real mTLS on 127.0.0.1, set up as
/// `sbtc-hsm-signer devnet` does (keystore with a cheap KDF per signer, config with every signer in
/// the bootstrap set, in-memory storage, the devnet's demo batch and checks), but with the `run`
/// timeouts raised: the devnet leaves `run --connect-timeout` at 60 s, and 150 processes starting
/// at once on 2 cores need longer than that to complete all 22,350 handshakes. Memory is read
/// from /proc every 250 ms; the DKG start of every signer and the coordinator's end of DKG come
/// from the timestamps of their logs.
fn large_e2e(n: usize, t: u32, batch: usize) -> Result<LargeRun, String> {
    let connect_timeout = 900u64;
    let phase_timeout = 300u64;
    let overall = Duration::from_secs(1500);
    let work = tempfile::TempDir::new().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let setup = Instant::now();
    let ports: Vec<u16> = {
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("port"))
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().expect("port").port())
            .collect()
    };
    let max_message_bytes = (batch * n * 400 + (1 << 20)).min(64 << 20);
    let mut identities = Vec::with_capacity(n);
    for i in 0..n {
        let dir = work.path().join(format!("signer-{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let passphrase = dir.join("passphrase");
        std::fs::write(&passphrase, format!("bench passphrase {i}")).expect("write");
        // The keystore refuses a passphrase file others may read.
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let custody = custody_section(&dir);
        let config = Config::parse(&config_text(&custody, &dir, 0, &[], 1 << 20)).expect("config");
        let identity = rt.block_on(async {
            custody::init(config.custody.as_ref().expect("[custody]"))
                .await
                .expect("keystore");
            let c = custody::open(config.custody.as_ref().expect("[custody]"))
                .await
                .expect("keystore");
            let mut identity = None;
            for role in Role::ALL {
                let info = c
                    .generate(&config.keys.label(role), role.kind())
                    .await
                    .expect("key");
                if let (Role::Identity, Some(PublicKey::Secp256k1(k))) = (role, info.public_key) {
                    identity = Some(hex::encode(k.serialize()));
                }
            }
            identity.expect("identity key")
        });
        identities.push((custody, identity));
    }
    let bootstrap: Vec<(String, u16)> = identities
        .iter()
        .zip(&ports)
        .map(|((_, id), p)| (id.clone(), *p))
        .collect();
    for (i, (custody, _)) in identities.iter().enumerate() {
        let dir = work.path().join(format!("signer-{i}"));
        std::fs::write(
            dir.join("signer.toml"),
            config_text(custody, &dir, ports[i], &bootstrap, max_message_bytes),
        )
        .expect("config");
    }
    eprintln!("keys and configs for {n} signers in {:?}", setup.elapsed());

    // Spawning 150 processes one after the other takes 6 to 9 s here while the first ones already
    // dial and handshake, and the DKG would wait for the last one. So every child first waits at a
    // gate (one line from a FIFO each) and they all start together once the last is spawned, as
    // the floor's signers all exist before its clock starts.
    let gate = work.path().join("start-gate");
    let gate_c = std::ffi::CString::new(gate.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(gate_c.as_ptr(), 0o600) }, 0, "mkfifo");
    // Read-write, so that opening it does not block and readers never see it without a writer.
    let mut gate_writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gate)
        .expect("gate");
    let spawning = Instant::now();
    let mut children = Children(Vec::with_capacity(n));
    for i in 0..n {
        let dir = work.path().join(format!("signer-{i}"));
        let log = std::fs::File::create(dir.join("signer.log")).expect("log");
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"read _ < "$0"; exec "$@""#)
            .arg(&gate)
            .arg(env!("CARGO_BIN_EXE_sbtc-hsm-signer"))
            .arg("--config")
            .arg(dir.join("signer.toml"))
            .arg("run")
            .args(["--threshold", &t.to_string()])
            .args(["--demo-batch", &batch.to_string()])
            .arg("--result-file")
            .arg(dir.join("result.json"))
            .arg("--exit-when-done")
            .arg("--ephemeral")
            .args(["--connect-timeout", &connect_timeout.to_string()])
            .args(["--phase-timeout", &phase_timeout.to_string()])
            .env(
                "SBTC_LOG",
                std::env::var("E2E_SIGNER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("signer process");
        children.0.push(child);
    }
    eprintln!("{n} signer processes spawned in {:?}", spawning.elapsed());
    let started = Instant::now();
    std::io::Write::write_all(&mut gate_writer, &vec![b'\n'; n]).expect("open the gate");
    // Each signer's VmHWM, last read (it only grows), and the largest sum of VmRSS seen at once;
    // each signer's CPU time, last read, and their sum over time (wall clock, to match the logs).
    let mut hwm: HashMap<u32, u64> = HashMap::new();
    let mut cpu: HashMap<u32, Duration> = HashMap::new();
    let mut cpu_series: Vec<(f64, Duration)> = Vec::new();
    let mut peak_sum_rss = 0u64;
    let mut peak_sum_at = Duration::ZERO;
    let deadline = started + overall;
    let mut failed = None;
    loop {
        let mut running = 0;
        let mut sum = 0;
        for (i, child) in children.0.iter_mut().enumerate() {
            let pid = child.id();
            if let Some((rss, peak)) = memory_of(pid) {
                sum += rss;
                let e = hwm.entry(pid).or_default();
                *e = (*e).max(peak);
            }
            if let Some(c) = cpu_of(pid) {
                cpu.insert(pid, c);
            }
            match child.try_wait() {
                Ok(None) => running += 1,
                Ok(Some(s)) if s.success() => {}
                Ok(Some(s)) => {
                    failed.get_or_insert(format!("signer {i} exited with {s}"));
                }
                Err(e) => {
                    failed.get_or_insert(format!("cannot wait for signer {i}: {e}"));
                }
            }
        }
        if sum > peak_sum_rss {
            peak_sum_rss = sum;
            peak_sum_at = started.elapsed();
        }
        cpu_series.push((unix_now(), cpu.values().sum()));
        if running == 0 || failed.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            failed = Some(format!("{running} signers still running after {overall:?}"));
            break;
        }
        thread::sleep(Duration::from_millis(250));
    }
    let wall = started.elapsed();
    children.stop_all();
    if let Some(why) = failed {
        let logs = work.keep();
        return Err(format!("{why}; logs kept in {}", logs.display()));
    }
    let checked = check_results(work.path(), n, batch)?;
    let phases = phases(work.path(), n, checked.coordinator)?;
    let dkg = Duration::from_secs_f64((phases.dkg_done - phases.last_dkg_start).max(0.0));
    let cpu_between =
        |from: f64, to: f64| cpu_at(&cpu_series, to).saturating_sub(cpu_at(&cpu_series, from));
    if std::env::var_os("E2E_KEEP_LOGS").is_some() {
        eprintln!("signer logs kept in {}", work.keep().display());
    }
    let ms = Duration::from_millis;
    Ok(LargeRun {
        wall,
        mesh_coordinator: ms(checked.coordinator_result.connect_ms),
        mesh_slowest: ms(checked.slowest_connect_ms),
        dkg,
        dkg_coordinator: ms(checked.coordinator_result.dkg_ms),
        verification: ms(checked.coordinator_result.verification_ms.unwrap_or(0)),
        batch: ms(checked.coordinator_result.batch_ms.unwrap_or(0)),
        dkg_cpu: cpu_between(phases.last_dkg_start, phases.dkg_done),
        batch_cpu: cpu_between(phases.verification_done, phases.batch_done),
        verified: checked.verified,
        valid: checked.valid,
        sum_hwm_kib: hwm.values().sum(),
        max_hwm_kib: hwm.values().copied().max().unwrap_or(0),
        peak_sum_rss_kib: peak_sum_rss,
        peak_sum_at,
    })
}

/// When the phases began and ended, by the log timestamps (seconds since the epoch): the last
/// signer's "starting DKG" (from then on every signer is ready, as in the floor), and the
/// coordinator's "DKG done", "DKG verification done" and "demo batch signed".
struct Phases {
    last_dkg_start: f64,
    dkg_done: f64,
    verification_done: f64,
    batch_done: f64,
}

fn phases(work: &Path, n: usize, coordinator: usize) -> Result<Phases, String> {
    let log = |i: usize| {
        let path = work.join(format!("signer-{i}")).join("signer.log");
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut last_dkg_start = f64::MIN;
    for i in 0..n {
        let at = log_time(&log(i)?, "starting DKG")
            .ok_or_else(|| format!("signer {i}: no \"starting DKG\" in its log"))?;
        last_dkg_start = last_dkg_start.max(at);
    }
    let coordinator_log = log(coordinator)?;
    let at = |what: &str| {
        log_time(&coordinator_log, what).ok_or(format!("the coordinator's log has no \"{what}\""))
    };
    Ok(Phases {
        last_dkg_start,
        dkg_done: at("DKG done")?,
        verification_done: at("DKG verification done")?,
        batch_done: at("demo batch signed")?,
    })
}

/// The summed CPU time of the signers at `t` (seconds since the epoch), interpolated between the
/// readings around it.
fn cpu_at(series: &[(f64, Duration)], t: f64) -> Duration {
    let after = series.partition_point(|(at, _)| *at < t);
    match (after.checked_sub(1).map(|i| series[i]), series.get(after)) {
        (Some((t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
            let f = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0);
            c0 + c1.saturating_sub(c0).mul_f64(f)
        }
        (Some((_, c)), _) | (None, Some(&(_, c))) => c,
        (None, None) => Duration::ZERO,
    }
}

/// User + system CPU time of process `pid` (fields 14 and 15 of /proc/pid/stat, in clock ticks).
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the epoch of the first log line containing `what` (tracing's RFC 3339 UTC
/// timestamp, `2026-11-21T20:21:20.123456Z`, at the start of the line).
fn log_time(log: &str, what: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let ts = line.split_whitespace().next()?.trim_end_matches('Z');
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + sec)
}

/// The running signer processes; dropping this stops every one still running.
struct Children(Vec<std::process::Child>);

impl Children {
    fn stop_all(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn custody_section(dir: &Path) -> String {
    format!(
        "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = {}\npassphrase_file = {}\n[custody.keystore.kdf]\ninsecure_test_kdf = true\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n",
        toml_path(&dir.join("keystore.json")),
        toml_path(&dir.join("passphrase")),
    )
}

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

fn config_text(
    custody: &str,
    dir: &Path,
    port: u16,
    bootstrap: &[(String, u16)],
    max_message_bytes: usize,
) -> String {
    let mut t = String::from(custody);
    t.push_str("[storage]\nurl = \"memory\"\n");
    t.push_str(&format!(
        "[peer]\nlisten = \"127.0.0.1:{port}\"\ncert_path = {}\nmax_message_bytes = {max_message_bytes}\n",
        toml_path(&dir.join("peer-cert.der"))
    ));
    for (identity, port) in bootstrap {
        t.push_str(&format!(
            "[[peer.bootstrap]]\nidentity = \"{identity}\"\nendpoint = \"127.0.0.1:{port}\"\n"
        ));
    }
    t
}

/// What the result files say, checked as the devnet checks them (one key, verified by all,
/// every demo signature valid under it).
struct Checked {
    coordinator: usize,
    coordinator_result: RunResult,
    slowest_connect_ms: u64,
    verified: usize,
    valid: usize,
}

fn check_results(work: &Path, n: usize, batch: usize) -> Result<Checked, String> {
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let path = work.join(format!("signer-{i}")).join("result.json");
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        results.push(serde_json::from_slice::<RunResult>(&text).map_err(|e| e.to_string())?);
    }
    let first = results.first().ok_or("no results")?;
    if results
        .iter()
        .any(|r| r.aggregate_key != first.aggregate_key)
    {
        return Err("the signers disagree on the aggregate key".into());
    }
    let verified = results
        .iter()
        .filter(|r| r.dkg_status == "verified")
        .count();
    let (coordinator, coordinator_result) = results
        .iter()
        .enumerate()
        .find(|(_, r)| r.signer_index == r.coordinator)
        .ok_or("no result from the coordinator")?;
    let key = hex::decode(&first.aggregate_key).map_err(|e| e.to_string())?;
    let key = secp256k1::PublicKey::from_slice(&key).map_err(|e| e.to_string())?;
    let expected = demo::demo_requests(DkgId(coordinator_result.dkg_id), &key, batch);
    let valid = coordinator_result
        .signatures
        .iter()
        .zip(&expected)
        .filter(|(s, r)| {
            hex::encode(r.sighash) == s.sighash && demo::verify_demo_signature(&key, s).is_ok()
        })
        .count();
    if verified != n || valid != batch {
        return Err(format!(
            "DKG verified by {verified}/{n}, signatures valid {valid}/{batch}"
        ));
    }
    Ok(Checked {
        coordinator,
        coordinator_result: coordinator_result.clone(),
        slowest_connect_ms: results.iter().map(|r| r.connect_ms).max().unwrap_or(0),
        verified,
        valid,
    })
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((field_kib(&s, "VmRSS:")?, field_kib(&s, "VmHWM:")?))
}

fn field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resets the peak RSS counter (Linux: writing 5 to clear_refs resets VmHWM).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_kib() -> u64 {
    self_kib("VmHWM:")
}

fn rss_kib() -> u64 {
    self_kib("VmRSS:")
}

fn self_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| field_kib(&s, field))
        .unwrap_or(0)
}
