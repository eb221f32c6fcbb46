//! Peer-link benchmark: round trips and messages/second between two nodes, and full-mesh
//! broadcast among 15 and 150 nodes in one process, over real loopback sockets with mTLS and the
//! TLS keys in keystores. Each figure is printed next to its floor measured in the same run (plain
//! TCP without TLS or gRPC, or an in-process channel), and custody operations are counted.
//!
//! `cargo bench --bench peer` (all), or `cargo bench --bench peer -- 15` to skip the 150-node mesh.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use sbtc_custody::{Custody, KeyKind, KeyLabel, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore};
use sbtc_hsm_signer::peer::{
    cert,
    message::{self, ChainTip},
    Limits, Member, NodeParams, PeerNode, SignerSet,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Every signature a backend makes, counted by the audit wrapper (with no log to write).
type Counting = sbtc_hsm_signer::keys::AuditedCustody;

fn signatures(c: &Counting, op: &str) -> u64 {
    c.counts()[op]
}

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).expect("label")
}

async fn custody(dir: &std::path::Path, i: usize) -> Arc<Counting> {
    let ks = Keystore::create_with_passphrase(
        dir.join(format!("n{i}.keystore")),
        &SecretString::new("bench".into()),
        KdfParams::insecure_for_tests(),
    )
    .await
    .expect("keystore");
    ks.generate(&label("identity"), KeyKind::Secp256k1)
        .await
        .expect("identity key");
    ks.generate(&label("tls"), KeyKind::P256)
        .await
        .expect("tls key");
    Arc::new(Counting::unrecorded(Arc::new(ks)))
}

fn limits() -> Limits {
    Limits {
        rate_per_sec: 10_000_000,
        burst: 10_000_000,
        queue_depth: 4096,
        handshake_timeout: Duration::from_secs(60),
        max_pending_handshakes: 256,
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        ..Limits::default()
    }
}

async fn start_nodes(custodies: &[Arc<Counting>]) -> Vec<PeerNode> {
    let mut nodes = Vec::new();
    for c in custodies {
        let dynamic: Arc<dyn Custody> = c.clone();
        let certificate = cert::generate(
            &dynamic,
            &label("tls"),
            &label("identity"),
            Duration::from_secs(86_400),
        )
        .await
        .expect("certificate");
        nodes.push(
            PeerNode::start(NodeParams {
                custody: dynamic,
                identity_label: label("identity"),
                tls_label: label("tls"),
                certificate,
                listen: "127.0.0.1:0".parse().expect("addr"),
                set: SignerSet::default(),
                limits: limits(),
            })
            .await
            .expect("start node"),
        );
    }
    let set: SignerSet = nodes
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
    nodes
}

async fn wait_mesh(nodes: &[PeerNode], limit: Duration) -> Duration {
    let start = Instant::now();
    let n = nodes.len();
    while !nodes.iter().all(|x| x.connected_peers().len() == n - 1) {
        assert!(
            start.elapsed() < limit,
            "mesh of {n} did not form in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn tip() -> ChainTip {
    ChainTip {
        height: 1,
        block_hash: Bytes::from_static(&[1; 32]),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Plain TCP echo round trips of `size`-byte messages: the floor under a ping.
async fn tcp_rtt_floor(rounds: usize, size: usize) -> Vec<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).ok();
        let mut buf = vec![0u8; size];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.set_nodelay(true).ok();
    let msg = vec![7u8; size];
    let mut buf = vec![0u8; size];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        c.write_all(&msg).await.expect("write");
        c.read_exact(&mut buf).await.expect("read");
        out.push(t.elapsed());
    }
    out
}

/// `count` length-prefixed messages over plain TCP: the floor under one link's throughput.
async fn tcp_throughput_floor(count: usize, size: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        let mut s = tokio::io::BufReader::new(s);
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            let len = s.read_u32().await.expect("len") as usize;
            s.read_exact(&mut buf[..len]).await.expect("body");
        }
    });
    let c = TcpStream::connect(addr).await.expect("connect");
    let mut w = tokio::io::BufWriter::new(c);
    let msg = vec![7u8; size];
    let start = Instant::now();
    for _ in 0..count {
        w.write_u32(size as u32).await.expect("len");
        w.write_all(&msg).await.expect("body");
    }
    w.flush().await.expect("flush");
    reader.await.expect("reader");
    start.elapsed()
}

async fn two_nodes(dir: &std::path::Path) {
    let custodies = vec![custody(dir, 0).await, custody(dir, 1).await];
    let nodes = start_nodes(&custodies).await;
    wait_mesh(&nodes, Duration::from_secs(60)).await;
    let b = nodes[1].identity();

    // Round trips.
    let rounds = 2000;
    for _ in 0..100 {
        nodes[0].ping(&b).await.expect("ping");
    }
    let mut rtt = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        rtt.push(nodes[0].ping(&b).await.expect("ping"));
    }
    rtt.sort();
    let mut floor = tcp_rtt_floor(rounds, 16).await;
    floor.sort();
    println!("## two nodes: round trip (ping, {rounds} sequential)");
    println!("| | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!(
        "| peer link (gRPC unary over mTLS) | {:.1} | {:.1} |",
        us(percentile(&rtt, 0.5)),
        us(percentile(&rtt, 0.99))
    );
    println!(
        "| floor: plain TCP echo | {:.1} | {:.1} |",
        us(percentile(&floor, 0.5)),
        us(percentile(&floor, 0.99))
    );
    println!(
        "| ratio | {:.1}x | {:.1}x |\n",
        us(percentile(&rtt, 0.5)) / us(percentile(&floor, 0.5)),
        us(percentile(&rtt, 0.99)) / us(percentile(&floor, 0.99))
    );

    // One-way throughput, A -> B, backpressured.
    let mut inbox = nodes[1].take_inbox().expect("inbox");
    for size in [256usize, 4096] {
        let count = 100_000;
        let env = message::opaque_round(tip(), [1; 32], Bytes::from(vec![7u8; size]));
        let bytes = message::encode(&env);
        let start = Instant::now();
        let receiver = async {
            for _ in 0..count {
                inbox.recv().await.expect("inbox open");
            }
        };
        let sender = async {
            for _ in 0..count {
                nodes[0]
                    .send_encoded(&b, bytes.clone())
                    .await
                    .expect("send");
            }
        };
        tokio::join!(receiver, sender);
        let took = start.elapsed();
        let floor = tcp_throughput_floor(count, bytes.len()).await;
        let ours = count as f64 / took.as_secs_f64();
        let base = count as f64 / floor.as_secs_f64();
        println!(
            "two nodes, {count} × {}-byte envelopes one way: {:.0} msg/s ({:.1} MB/s); floor (plain TCP, length-prefixed) {:.0} msg/s; ratio {:.1}x",
            bytes.len(),
            ours,
            ours * bytes.len() as f64 / 1e6,
            base,
            base / ours
        );
    }
    report_hsm(&custodies, &nodes, "two nodes");
    for n in nodes {
        n.shutdown().await;
    }
}

fn report_hsm(custodies: &[Arc<Counting>], nodes: &[PeerNode], what: &str) {
    let p256: u64 = custodies
        .iter()
        .map(|c| signatures(c, "sign_p256_prehash"))
        .sum();
    let k1: u64 = custodies
        .iter()
        .map(|c| signatures(c, "sign_secp256k1_prehash"))
        .sum();
    let metrics: Vec<_> = nodes.iter().map(PeerNode::metrics).collect();
    let handshake_sides: u64 = metrics
        .iter()
        .map(|m| m.handshakes_accepted + m.handshakes_dialed)
        .sum();
    let tls: u64 = metrics.iter().map(|m| m.tls_signatures).sum();
    let refused: u64 = metrics.iter().map(|m| m.handshakes_refused).sum();
    let connections = handshake_sides / 2;
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for m in &metrics {
        for (k, v) in &m.refusals {
            *reasons.entry(k.clone()).or_default() += v;
        }
    }
    println!("{what}: refused handshakes by reason: {reasons:?}");
    println!(
        "{what}: custody ops: P-256 {p256} (certificates {n}, handshakes {tls}), secp256k1 {k1} (certificate bindings); \
         {connections} connections, {handshake_sides} handshake sides, {refused} refused; \
         TLS signatures per connection {:.2}, per message 0\n",
        tls as f64 / connections.max(1) as f64,
        n = nodes.len(),
    );
}

async fn mesh(dir: &std::path::Path, n: usize, per_node: usize) {
    let mut custodies = Vec::new();
    for i in 0..n {
        custodies.push(custody(dir, 1000 * n + i).await);
    }
    let nodes = start_nodes(&custodies).await;
    let formed = wait_mesh(&nodes, Duration::from_secs(900)).await;
    println!(
        "## full mesh of {n}: {} links formed in {:.2} s",
        n * (n - 1),
        formed.as_secs_f64()
    );
    let expected = (n - 1) * per_node;
    let (done_tx, mut done_rx) = mpsc::channel(n);
    for node in &nodes {
        let mut inbox = node.take_inbox().expect("inbox");
        let done = done_tx.clone();
        tokio::spawn(async move {
            for _ in 0..expected {
                if inbox.recv().await.is_none() {
                    break;
                }
            }
            let _ = done.send(()).await;
        });
    }
    let env = message::opaque_round(tip(), [2; 32], Bytes::from(vec![7u8; 256]));
    let bytes = message::encode(&env);
    let start = Instant::now();
    for round in 0..per_node {
        for node in &nodes {
            let queued = node.broadcast_encoded(bytes.clone()).expect("broadcast");
            assert_eq!(queued, n - 1, "round {round}: queue full");
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(600), done_rx.recv())
            .await
            .expect("all broadcasts delivered");
    }
    let took = start.elapsed();
    let deliveries = n * (n - 1) * per_node;

    // Floor: the same fan-out through in-process channels, no network, no TLS.
    let mut txs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..n {
        let (tx, mut rx) = mpsc::channel::<Bytes>(expected.max(1));
        txs.push(tx);
        handles.push(tokio::spawn(async move {
            for _ in 0..expected {
                rx.recv().await;
            }
        }));
    }
    let fstart = Instant::now();
    for _ in 0..per_node {
        for i in 0..n {
            for (j, tx) in txs.iter().enumerate() {
                if i != j {
                    let _ = tx.try_send(bytes.clone());
                }
            }
        }
    }
    for h in handles {
        h.await.expect("floor reader");
    }
    let floor = fstart.elapsed();
    println!(
        "full mesh of {n}: each node broadcasts {per_node} × {}-byte envelopes: {deliveries} deliveries in {:.3} s = {:.0} deliveries/s; \
         floor (in-process channels) {:.0}/s; ratio {:.0}x",
        bytes.len(),
        took.as_secs_f64(),
        deliveries as f64 / took.as_secs_f64(),
        deliveries as f64 / floor.as_secs_f64(),
        took.as_secs_f64() / floor.as_secs_f64()
    );
    let dropped: u64 = nodes
        .iter()
        .map(|x| x.metrics().queue_full + x.metrics().inbox_full)
        .sum();
    println!("full mesh of {n}: dropped (queue or inbox full) {dropped}");
    report_hsm(&custodies, &nodes, &format!("full mesh of {n}"));
    for node in nodes {
        node.shutdown().await;
    }
}

/// 150 nodes in one process hold 22,350 connections, two descriptors each.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want: libc::rlim_t = 200_000;
        let mut raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not allowed above the hard limit without privileges: take what there is.
            raised.rlim_cur = lim.rlim_max;
            raised.rlim_max = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

async fn open_counting(dir: &std::path::Path, i: usize) -> Arc<Counting> {
    let ks = Keystore::open_with_options(
        dir.join(format!("n{i}.keystore")),
        &SecretString::new("bench".into()),
        &sbtc_custody_keystore::OpenOptions::insecure_test(),
    )
    .await
    .expect("open keystore");
    Arc::new(Counting::unrecorded(Arc::new(ks)))
}

/// One process's share of a mesh that spans processes (see `split_mesh`). Talks to the parent
/// over stdin/stdout, one line per step.
async fn mesh_child(
    dir: std::path::PathBuf,
    start: usize,
    count: usize,
    total: usize,
    per_node: usize,
) {
    let mut custodies = Vec::new();
    for i in start..start + count {
        custodies.push(open_counting(&dir, i).await);
    }
    let nodes = start_nodes(&custodies).await;
    for n in &nodes {
        println!(
            "node {} {}",
            hex::encode(n.identity().serialize()),
            n.local_addr()
        );
    }
    println!("ready");
    let (line_tx, mut lines) = mpsc::channel::<String>(1024);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut members = Vec::new();
    while let Some(line) = lines.recv().await {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("member"), Some(id), Some(addr)) => {
                let key = secp256k1::PublicKey::from_slice(&hex::decode(id).expect("hex"))
                    .expect("identity");
                members.push((
                    key,
                    Member {
                        endpoint: Some(addr.to_owned()),
                        spki_pin: None,
                    },
                ));
            }
            (Some("set-end"), _, _) => break,
            _ => panic!("unexpected line {line}"),
        }
    }
    let set: SignerSet = members.into_iter().collect();
    assert_eq!(set.len() as usize, total);
    for n in &nodes {
        n.set_signer_set(set.clone());
    }
    let formed = wait_mesh_of(&nodes, total, Duration::from_secs(1200)).await;
    println!("meshed {:.3}", formed.as_secs_f64());
    let go = lines.recv().await.expect("go");
    assert_eq!(go, "go");
    let expected = (total - 1) * per_node;
    let (done_tx, mut done_rx) = mpsc::channel(count);
    for node in &nodes {
        let mut inbox = node.take_inbox().expect("inbox");
        let done = done_tx.clone();
        tokio::spawn(async move {
            for _ in 0..expected {
                if inbox.recv().await.is_none() {
                    break;
                }
            }
            let _ = done.send(()).await;
        });
    }
    let env = message::opaque_round(tip(), [2; 32], Bytes::from(vec![7u8; 256]));
    let bytes = message::encode(&env);
    let started = Instant::now();
    for _ in 0..per_node {
        for node in &nodes {
            node.broadcast_encoded(bytes.clone()).expect("broadcast");
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..count {
        tokio::time::timeout(Duration::from_secs(600), done_rx.recv())
            .await
            .expect("all broadcasts delivered");
    }
    let metrics: Vec<_> = nodes.iter().map(PeerNode::metrics).collect();
    println!(
        "done {:.3} {} {} {} {} {} {}",
        started.elapsed().as_secs_f64(),
        custodies
            .iter()
            .map(|c| signatures(c, "sign_p256_prehash"))
            .sum::<u64>(),
        custodies
            .iter()
            .map(|c| signatures(c, "sign_secp256k1_prehash"))
            .sum::<u64>(),
        metrics
            .iter()
            .map(|m| m.handshakes_accepted + m.handshakes_dialed)
            .sum::<u64>(),
        metrics.iter().map(|m| m.tls_signatures).sum::<u64>(),
        metrics.iter().map(|m| m.handshakes_refused).sum::<u64>(),
        metrics
            .iter()
            .map(|m| m.queue_full + m.inbox_full)
            .sum::<u64>(),
    );
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    for m in &metrics {
        for (k, v) in &m.refusals {
            *reasons.entry(k.clone()).or_default() += v;
        }
    }
    eprintln!(
        "refused handshakes by reason (nodes {start}..{}): {reasons:?}",
        start + count
    );
    // Stay up until every process is done: the others may still be receiving from us.
    while lines.recv().await.is_some() {}
    for n in nodes {
        n.shutdown().await;
    }
}

/// A mesh of `total` nodes split over `parts` processes of this benchmark, because one process
/// may not hold 2 x total x (total - 1) descriptors.
async fn split_mesh(dir: &std::path::Path, total: usize, parts: usize, per_node: usize) {
    use std::io::{BufRead, Write};
    for i in 0..total {
        drop(custody(dir, 5000 + i).await);
    }
    let exe = std::env::current_exe().expect("exe");
    let mut children = Vec::new();
    let mut members = Vec::new();
    let chunk = total.div_ceil(parts);
    for p in 0..parts {
        let start = p * chunk;
        let count = chunk.min(total - start);
        let mut child = std::process::Command::new(&exe)
            .args(["--mesh-child", &dir.display().to_string()])
            .args([
                (5000 + start).to_string(),
                count.to_string(),
                total.to_string(),
                per_node.to_string(),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = stdout.lines();
        for line in lines.by_ref() {
            let line = line.expect("line");
            if line == "ready" {
                break;
            }
            if let Some(rest) = line.strip_prefix("node ") {
                members.push(rest.to_owned());
            }
        }
        children.push((child, lines));
    }
    assert_eq!(members.len(), total);
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().expect("stdin");
        for m in &members {
            writeln!(stdin, "member {m}").expect("write");
        }
        writeln!(stdin, "set-end").expect("write");
    }
    let mut formed = 0f64;
    for (_, lines) in &mut children {
        let line = lines.next().expect("meshed").expect("line");
        let secs: f64 = line
            .strip_prefix("meshed ")
            .expect("meshed")
            .parse()
            .expect("secs");
        formed = formed.max(secs);
    }
    println!(
        "## full mesh of {total} ({parts} processes of {chunk} nodes): {} links formed in {formed:.2} s",
        total * (total - 1)
    );
    let started = Instant::now();
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").expect("go");
        stdin.flush().expect("flush");
    }
    let mut sums = [0f64; 6];
    for (_, lines) in &mut children {
        let line = lines.next().expect("done").expect("line");
        let fields: Vec<f64> = line
            .strip_prefix("done ")
            .expect("done")
            .split_whitespace()
            .map(|f| f.parse().expect("number"))
            .collect();
        for (s, f) in sums.iter_mut().zip(&fields[1..]) {
            *s += f;
        }
    }
    let took = started.elapsed();
    for (mut child, _) in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let deliveries = total * (total - 1) * per_node;
    println!(
        "full mesh of {total}: each node broadcasts {per_node} × 336-byte envelopes: {deliveries} deliveries in {:.3} s = {:.0} deliveries/s; dropped {}",
        took.as_secs_f64(),
        deliveries as f64 / took.as_secs_f64(),
        sums[5]
    );
    let connections = sums[2] / 2.0;
    println!(
        "full mesh of {total}: custody ops: P-256 {} (certificates {total}, handshakes {}), secp256k1 {}; {connections} connections, {} refused; TLS signatures per connection {:.2}, per message 0\n",
        sums[0], sums[3], sums[1], sums[4], sums[3] / connections.max(1.0)
    );
}

async fn wait_mesh_of(nodes: &[PeerNode], total: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    while !nodes.iter().all(|x| x.connected_peers().len() == total - 1) {
        assert!(
            start.elapsed() < limit,
            "mesh of {total} did not form in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--mesh-child") {
        let num = |k: usize| args[i + k].parse::<usize>().expect("number");
        raise_fd_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(mesh_child(
            args[i + 1].clone().into(),
            num(2),
            num(3),
            num(4),
            num(5),
        ));
        return;
    }
    let only_small = std::env::args().any(|a| a == "15");
    let fds = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "# peer links benchmark ({} CPUs, open-file limit {fds})\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    runtime.block_on(async {
        two_nodes(dir.path()).await;
        mesh(dir.path(), 15, 100).await;
        if !only_small {
            if fds >= 50_000 {
                mesh(dir.path(), 150, 20).await;
            } else {
                // 150 nodes hold 22,350 connections: 44,700 descriptors in one process.
                println!(
                    "full mesh of 150 in one process: impossible here, open-file limit {fds} < 44,700 \
                     (2 descriptors per connection) and the hard limit cannot be raised; \
                     the largest single-process mesh and a 150-node mesh over 3 processes follow\n"
                );
                mesh(dir.path(), 96, 20).await;
                split_mesh(dir.path(), 150, 3, 20).await;
            }
        }
    });
}
