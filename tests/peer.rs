//! Peer links over real sockets on 127.0.0.1: a five-node mesh (one node's keys in SoftHSM2),
//! handshake refusals, hostile messages, restarts and removals.

mod common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use common::*;
use rustls::ClientConfig;
use sbtc_hsm_signer::peer::{
    cert::{self, CertRequest},
    message::{self, Body, ChainTip, StatementKind},
    tls::{self, CustodyTlsKey, PeerVerifier},
    Inbound, Limits, Member, Metrics, SharedSet, SignerSet,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(30);

fn tip() -> ChainTip {
    ChainTip {
        height: 840_000,
        block_hash: Bytes::from_static(&[0xab; 32]),
    }
}

async fn recv_n(inbox: &mut mpsc::Receiver<Inbound>, n: usize) -> Vec<Inbound> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, inbox.recv()).await {
            Ok(Some(m)) => out.push(m),
            Ok(None) => panic!("inbox closed"),
            Err(_) => panic!("only {} of {n} messages arrived", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_node_mesh_with_a_softhsm_node_delivers_round_and_signed_messages() {
    // SoftHSM2 first: the fixture must precede any other PKCS#11 use in this process.
    let hsm = softhsm().await;
    let dir = tempfile::tempdir().unwrap();
    let mut custodies = vec![hsm];
    for i in 1..5 {
        custodies.push(keystore(dir.path(), &format!("n{i}")).await);
    }
    let nodes = mesh(&custodies, test_limits()).await;
    wait_full_mesh(&nodes, WAIT).await;
    let mut inboxes: Vec<_> = nodes.iter().map(|n| n.take_inbox().unwrap()).collect();

    // Round traffic: each node broadcasts once; each receives one from every other node.
    for (i, node) in nodes.iter().enumerate() {
        let env = message::opaque_round(tip(), [i as u8; 32], Bytes::from(vec![i as u8; 100]));
        assert_eq!(node.broadcast(&env).unwrap(), 4);
    }
    for (i, inbox) in inboxes.iter_mut().enumerate() {
        let got = recv_n(inbox, 4).await;
        let mut senders: Vec<_> = got.iter().map(|m| m.from).collect();
        senders.sort_by_key(|k| k.serialize());
        let mut expected: Vec<_> = nodes
            .iter()
            .filter(|n| n.identity() != nodes[i].identity())
            .map(|n| n.identity())
            .collect();
        expected.sort_by_key(|k| k.serialize());
        assert_eq!(senders, expected, "node {i} hears every other node once");
        for m in &got {
            let env = &m.envelope;
            assert_eq!(env.version, message::VERSION);
            assert_eq!(env.chain_tip.as_ref().unwrap().height, 840_000);
            let payload = message::opaque_payload(env).expect("round message");
            assert_eq!(
                env.round_id[0], payload[0],
                "round id travels with the payload"
            );
        }
    }

    // A proposal signed in SoftHSM2 by node 0's identity key, verified on receipt.
    let proposal = nodes[0]
        .signed_statement(
            StatementKind::Proposal,
            tip(),
            [7; 32],
            Bytes::from_static(b"sweep"),
        )
        .await
        .unwrap();
    nodes[0].broadcast(&proposal).unwrap();
    for inbox in inboxes.iter_mut().skip(1) {
        let got = recv_n(inbox, 1).await;
        assert_eq!(got[0].from, nodes[0].identity());
        assert!(matches!(&got[0].envelope.body, Some(Body::Proposal(s)) if s.payload == "sweep"));
    }

    // Round trips work over every link of the HSM node.
    for other in &nodes[1..] {
        nodes[0].ping(&other.identity()).await.unwrap();
    }

    // HSM operations: exactly one TLS signature per handshake per side; none per message.
    for (i, node) in nodes.iter().enumerate() {
        let m = node.metrics();
        assert!(
            m.handshakes_accepted >= 4 && m.handshakes_dialed >= 4,
            "node {i}: {m:?}"
        );
        assert_eq!(
            m.tls_signatures,
            m.handshakes_accepted + m.handshakes_dialed,
            "node {i}: {m:?}"
        );
        assert_eq!(m.handshakes_refused, 0, "node {i}: {m:?}");
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// True if the server at `addr` admits a client with `config`: it answers the HTTP/2 preface.
async fn admitted(config: Arc<ClientConfig>, addr: SocketAddr) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok(Ok(mut tls)) = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(tls::peer_server_name().unwrap(), tcp),
    )
    .await
    else {
        return false;
    };
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    if tls.write_all(&preface).await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// A verifier for a hostile client that admits `server`.
fn trusting(server: secp256k1::PublicKey) -> Arc<PeerVerifier> {
    let set: SignerSet = [(server, Member::default())].into_iter().collect();
    PeerVerifier::new(SharedSet::new(set), Arc::new(Metrics::default()))
}

fn client(
    custody: &Arc<dyn sbtc_custody::Custody>,
    cert: &cert::PeerCertificate,
    server: secp256k1::PublicKey,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let key =
        CustodyTlsKey::new(custody.clone(), tls_label(), Arc::new(Metrics::default())).unwrap();
    tls::client_config(&key, cert, trusting(server), versions).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshakes_are_refused_for_outsiders_forged_bindings_expiry_no_cert_and_tls12() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let member = keystore(dir.path(), "member").await;
    let outsider = keystore(dir.path(), "outsider").await;
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&member).await, Member::default()),
    ]
    .into_iter()
    .collect();
    let node = start(&a, loopback(), set, test_limits()).await;
    let addr = node.local_addr();
    let a_id = node.identity();
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    // Control: the member with a good certificate is admitted (so the refusals below mean something).
    let good = certificate(&member).await;
    assert!(admitted(client(&member, &good, a_id, tls13), addr).await);

    // A valid certificate and binding, but the identity key is not in the set.
    let out_cert = certificate(&outsider).await;
    assert!(!admitted(client(&outsider, &out_cert, a_id, tls13), addr).await);

    // A binding that names the member's identity key but was signed by the outsider's key.
    let forged = cert::generate_with(CertRequest {
        tls: (&outsider, &tls_label()),
        binder: (&outsider, &identity_label()),
        identity: identity(&member).await,
        not_before: SystemTime::now() - Duration::from_secs(60),
        not_after: SystemTime::now() + Duration::from_secs(86_400),
    })
    .await
    .unwrap();
    assert!(
        cert::parse(forged.der()).is_err(),
        "our own parser refuses it too"
    );
    assert!(!admitted(client(&outsider, &forged, a_id, tls13), addr).await);

    // An expired certificate of a member.
    let now = SystemTime::now();
    let expired = certificate_between(
        &member,
        now - Duration::from_secs(10 * 86_400),
        now - Duration::from_secs(86_400),
    )
    .await;
    assert!(!admitted(client(&member, &expired, a_id, tls13), addr).await);

    // No client certificate at all.
    let no_cert = ClientConfig::builder_with_provider(Arc::new(tls::provider()))
        .with_protocol_versions(tls13)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(trusting(a_id))
        .with_no_client_auth();
    assert!(!admitted(Arc::new(no_cert), addr).await);

    // A TLS 1.2-only client, with the member's good certificate.
    assert!(
        !admitted(
            client(&member, &good, a_id, &[&rustls::version::TLS12]),
            addr
        )
        .await
    );

    eventually("refusals counted", WAIT, || {
        let m = node.metrics();
        m.refused("not_in_set") == 1
            && m.refused("bad_binding") == 1
            && m.refused("expired") == 1
            && m.refused("no_certificate") == 1
            && m.refused("incompatible_tls") == 1
    })
    .await;
    let m = node.metrics();
    assert_eq!(m.handshakes_accepted, 1, "{m:?}");
    assert_eq!(m.handshakes_refused, 5, "{m:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_to_dial_into_an_impostor() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let member = keystore(dir.path(), "member").await;
    let impostor = keystore(dir.path(), "impostor").await;
    let a_id = identity(&a).await;
    // The impostor admits A, so only A's check can stop the link.
    let impostor_set: SignerSet = [(a_id, Member::default())].into_iter().collect();
    let imp = start(&impostor, loopback(), impostor_set, test_limits()).await;
    // A believes `member` listens where the impostor does.
    let set: SignerSet = [
        (a_id, Member::default()),
        (
            identity(&member).await,
            Member {
                endpoint: Some(imp.local_addr().to_string()),
                spki_pin: None,
            },
        ),
    ]
    .into_iter()
    .collect();
    let node = start(&a, loopback(), set, test_limits()).await;
    eventually("outbound refusals", WAIT, || {
        node.metrics().refused("not_in_set") >= 2
    })
    .await;
    assert!(node.connected_peers().is_empty());
    assert_eq!(node.metrics().handshakes_dialed, 0);
    node.shutdown().await;
    imp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_oversized_messages_are_dropped_and_counted_and_the_link_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let b = keystore(dir.path(), "b").await;
    let limits = Limits {
        max_message_bytes: 4096,
        ..test_limits()
    };
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&b).await, Member::default()),
    ]
    .into_iter()
    .collect();
    let na = start(&a, loopback(), set.clone(), limits.clone()).await;
    let nb = start(&b, loopback(), set, limits).await;
    let mut inbox = na.take_inbox().unwrap();
    let mut client = nb
        .dial(na.identity(), &na.local_addr().to_string())
        .await
        .unwrap();
    let good = |i: u8| {
        message::encode(&message::opaque_round(
            tip(),
            [i; 32],
            Bytes::from_static(b"ok"),
        ))
    };
    let mut bad_sig = nb
        .signed_statement(
            StatementKind::Ack,
            tip(),
            [3; 32],
            Bytes::from_static(b"ack"),
        )
        .await
        .unwrap();
    if let Some(Body::Ack(s)) = &mut bad_sig.body {
        s.payload = Bytes::from_static(b"nak");
    }
    let frames = vec![
        good(1),
        Bytes::from_static(b"\x0a\xff\xff\xff\xff\x0f garbage"),
        Bytes::from(vec![0u8; 4100]), // over our 4096 limit, under tonic's frame limit
        message::encode(&bad_sig),
        good(2),
    ];
    let frames: Vec<_> = frames
        .into_iter()
        .map(|envelope| sbtc_hsm_signer::peer::proto::Frame { envelope })
        .collect();
    let closed = client
        .open(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.received, 5);
    let got = recv_n(&mut inbox, 2).await;
    assert_eq!(got[0].envelope.round_id[0], 1);
    assert_eq!(got[1].envelope.round_id[0], 2);

    // Far over the frame limit: tonic refuses the frame without buffering it; that stream ends.
    let huge = sbtc_hsm_signer::peer::proto::Frame {
        envelope: Bytes::from(vec![0u8; 64 * 1024]),
    };
    let mut unbounded = client.clone().max_encoding_message_size(1 << 20);
    let status = unbounded
        .open(tokio_stream::iter(vec![huge]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    // The same connection carries on.
    let frames = vec![sbtc_hsm_signer::peer::proto::Frame { envelope: good(3) }];
    client.open(tokio_stream::iter(frames)).await.unwrap();
    let got = recv_n(&mut inbox, 1).await;
    assert_eq!(got[0].envelope.round_id[0], 3);
    client
        .ping(sbtc_hsm_signer::peer::proto::Frame {
            envelope: Bytes::from_static(b"x"),
        })
        .await
        .unwrap();

    let m = na.metrics();
    assert_eq!(m.malformed, 1, "{m:?}");
    assert_eq!(m.oversized, 2, "{m:?}");
    assert_eq!(m.bad_signature, 1, "{m:?}");
    assert_eq!(m.received, 3, "{m:?}");
    assert_eq!(m.handshakes_accepted, 1, "one connection throughout: {m:?}");
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_peer_is_rate_limited_and_a_dead_peer_has_a_bounded_queue() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let b = keystore(dir.path(), "b").await;
    let dead = keystore(dir.path(), "dead").await;
    let limits = Limits {
        rate_per_sec: 10,
        burst: 10,
        queue_depth: 8,
        ..test_limits()
    };
    // A port with nobody listening.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&b).await, Member::default()),
        (
            identity(&dead).await,
            Member {
                endpoint: Some(closed_port.to_string()),
                spki_pin: None,
            },
        ),
    ]
    .into_iter()
    .collect();
    let na = start(&a, loopback(), set.clone(), limits.clone()).await;
    let nb = start(&b, loopback(), set, limits).await;
    let _inbox = na.take_inbox().unwrap();
    let mut client = nb
        .dial(na.identity(), &na.local_addr().to_string())
        .await
        .unwrap();
    let frames: Vec<_> = (0..200u8)
        .map(|i| sbtc_hsm_signer::peer::proto::Frame {
            envelope: message::encode(&message::opaque_round(tip(), [i; 32], Bytes::new())),
        })
        .collect();
    let started = std::time::Instant::now();
    client.open(tokio_stream::iter(frames)).await.unwrap();
    // Counted, not timed: the bucket holds 10 and refills 10 per second, so however long the
    // flood took, at most 10 + 10 per started second got through.
    let seconds = started.elapsed().as_secs() + 1;
    let m = na.metrics();
    assert_eq!(m.received + m.rate_limited, 200, "{m:?}");
    assert!(
        m.received <= 10 + 10 * seconds,
        "the bucket holds 10 and refills 10/s, {seconds} s: {m:?}"
    );
    assert!(m.rate_limited > 0, "{m:?}");

    // A's only link goes to a dead peer: its queue holds 8, the rest is dropped and counted.
    let env = message::opaque_round(tip(), [1; 32], Bytes::from_static(b"x"));
    let queued: usize = (0..100).map(|_| na.broadcast(&env).unwrap()).sum();
    assert!(queued <= 9, "queued {queued}");
    assert!(na.metrics().queue_full >= 91, "{:?}", na.metrics());
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_is_readmitted_and_a_removed_node_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let mut custodies = Vec::new();
    for i in 0..5 {
        custodies.push(keystore(dir.path(), &format!("n{i}")).await);
    }
    let mut nodes = mesh(&custodies, test_limits()).await;
    wait_full_mesh(&nodes, WAIT).await;
    let set = (*nodes[0].signer_set()).clone();

    // Restart node 4 from its keystore file, on the same port, with a fresh certificate.
    let old = nodes.pop().unwrap();
    let addr = old.local_addr();
    old.shutdown().await;
    let reopened = reopen_keystore(dir.path(), "n4").await;
    let restarted = start(&reopened, addr, set.clone(), test_limits()).await;
    nodes.push(restarted);
    wait_full_mesh(&nodes, WAIT).await;
    let mut inboxes: Vec<_> = nodes.iter().map(|n| n.take_inbox().unwrap()).collect();
    let env = message::opaque_round(tip(), [4; 32], Bytes::from_static(b"back"));
    assert_eq!(nodes[4].broadcast(&env).unwrap(), 4);
    for inbox in inboxes.iter_mut().take(4) {
        let got = recv_n(inbox, 1).await;
        assert_eq!(got[0].from, nodes[4].identity());
    }

    // Remove node 3 from everyone else's set.
    let removed = nodes[3].identity();
    let smaller = set.without(&removed);
    for (i, n) in nodes.iter().enumerate() {
        if i != 3 {
            n.set_signer_set(smaller.clone());
        }
    }
    eventually("node 3 disconnected", WAIT, || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .all(|(_, n)| n.connections_with(&removed) == 0 && n.connected_peers().len() == 3)
    })
    .await;
    assert!(nodes[0].metrics().removed_disconnects >= 1);
    // Node 3 keeps dialling and is refused at the handshake; what it sends arrives nowhere.
    eventually("node 3 refused", WAIT, || {
        nodes[0].metrics().refused("not_in_set") >= 1
    })
    .await;
    let env = message::opaque_round(tip(), [3; 32], Bytes::from_static(b"still here?"));
    nodes[3].broadcast(&env).unwrap();
    let marker = message::opaque_round(tip(), [9; 32], Bytes::from_static(b"marker"));
    nodes[1].broadcast(&marker).unwrap();
    let got = recv_n(&mut inboxes[0], 1).await;
    assert_eq!(
        got[0].envelope.round_id[0], 9,
        "node 3's message never arrives"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(inboxes[0].try_recv().is_err());
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn handshakes_work_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let custodies = vec![
        keystore(dir.path(), "a").await,
        keystore(dir.path(), "b").await,
    ];
    let nodes = mesh(&custodies, test_limits()).await;
    wait_full_mesh(&nodes, WAIT).await;
    nodes[0].ping(&nodes[1].identity()).await.unwrap();
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spki_pins_are_enforced_when_the_set_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let member = keystore(dir.path(), "member").await;
    let good = certificate(&member).await;
    let a_id = identity(&a).await;
    let set_with = |pin: [u8; 32]| -> SignerSet {
        [
            (a_id, Member::default()),
            (
                good.info().identity,
                Member {
                    endpoint: None,
                    spki_pin: Some(pin),
                },
            ),
        ]
        .into_iter()
        .collect()
    };
    let node = start(
        &a,
        loopback(),
        set_with(good.info().spki_sha256()),
        test_limits(),
    )
    .await;
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    // This client would resume sessions if the server let it: a resumed session skips the
    // certificate check, so the server must not.
    let mut resuming = (*client(&member, &good, a_id, tls13)).clone();
    resuming.resumption = rustls::client::Resumption::in_memory_sessions(32);
    let config = Arc::new(resuming);
    assert!(
        admitted(config.clone(), node.local_addr()).await,
        "matching pin"
    );
    // A renewed certificate for the same key keeps the pin.
    let renewed = certificate(&member).await;
    assert_ne!(renewed.fingerprint(), good.fingerprint());
    assert!(admitted(client(&member, &renewed, a_id, tls13), node.local_addr()).await);
    // The set changes at run time to a pin of another key: refused.
    node.set_signer_set(set_with([0x5a; 32]));
    assert!(!admitted(config, node.local_addr()).await, "wrong pin");
    eventually("pin refusal counted", WAIT, || {
        node.metrics().refused("pin_mismatch") == 1
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_started_from_config_mesh_with_the_bootstrap_set() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, "peer test passphrase\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut ids = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let c = keystore(dir.path(), &format!("c{i}")).await;
        ids.push(hex::encode(identity(&c).await.serialize()));
        // A free port: bound, read, released (loopback, so nobody else takes it meanwhile).
        ports.push(
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        );
    }
    let bootstrap: String = (0..3)
        .map(|i| {
            format!(
                "[[peer.bootstrap]]\nidentity = \"{}\"\nendpoint = \"127.0.0.1:{}\"\n",
                ids[i], ports[i]
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let text = format!(
            "[custody]\nbackend = \"keystore\"\n[custody.keystore]\npath = \"{}\"\npassphrase_file = \"{}\"\n\
             [custody.keystore.kdf]\ninsecure_test_kdf = true\n\
             [peer]\nlisten = \"127.0.0.1:{}\"\ncert_path = \"{}\"\n{bootstrap}",
            dir.path().join(format!("c{i}.keystore")).display(),
            pass.display(),
            ports[i],
            dir.path().join(format!("c{i}-cert.der")).display(),
        );
        let config = sbtc_hsm_signer::config::Config::parse(&text).unwrap();
        let custody = sbtc_hsm_signer::keys::open(config.custody.as_ref().unwrap())
            .await
            .unwrap();
        let keys = sbtc_hsm_signer::keys::Keys::new(custody, &config.keys);
        let peer = config.peer.as_ref().unwrap();
        let node = sbtc_hsm_signer::peer::PeerNode::from_peer_config(
            peer,
            &keys,
            peer.bootstrap_set().unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(hex::encode(node.identity().serialize()), ids[i]);
        nodes.push(node);
    }
    wait_full_mesh(&nodes, WAIT).await;
    let mut inbox = nodes[2].take_inbox().unwrap();
    nodes[0]
        .broadcast(&message::opaque_round(
            tip(),
            [1; 32],
            Bytes::from_static(b"from config"),
        ))
        .unwrap();
    assert_eq!(recv_n(&mut inbox, 1).await[0].from, nodes[0].identity());
    for n in nodes {
        n.shutdown().await;
    }
}

/// Sends raw bytes as gRPC messages, whatever they are.
#[derive(Clone, Copy)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_that_is_not_protobuf_is_dropped_and_counted_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let b = keystore(dir.path(), "b").await;
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&b).await, Member::default()),
    ]
    .into_iter()
    .collect();
    let na = start(&a, loopback(), set.clone(), test_limits()).await;
    let nb = start(&b, loopback(), set, test_limits()).await;
    let mut inbox = na.take_inbox().unwrap();
    let channel = nb
        .dial_channel(na.identity(), &na.local_addr().to_string())
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    // Field 1, length-delimited, with a length far past the end: not a Frame.
    let garbage = Bytes::from_static(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]);
    let result = raw
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(vec![garbage])),
            tonic::codegen::http::uri::PathAndQuery::from_static("/sbtc.peer.v1.SignerPeer/Open"),
            RawCodec,
        )
        .await;
    let status = result.unwrap_err();
    assert!(
        status
            .message()
            .contains("failed to decode Protobuf message"),
        "{status:?}"
    );
    eventually("malformed counted", WAIT, || na.metrics().malformed == 1).await;
    // The same connection still carries good frames.
    let mut client =
        sbtc_hsm_signer::peer::proto::signer_peer_client::SignerPeerClient::new(channel);
    let good = message::encode(&message::opaque_round(
        tip(),
        [8; 32],
        Bytes::from_static(b"ok"),
    ));
    client
        .open(tokio_stream::iter(vec![
            sbtc_hsm_signer::peer::proto::Frame { envelope: good },
        ]))
        .await
        .unwrap();
    assert_eq!(recv_n(&mut inbox, 1).await[0].envelope.round_id[0], 8);
    assert_eq!(na.metrics().handshakes_accepted, 1);
    na.shutdown().await;
    nb.shutdown().await;
}

/// Starts a node with a given certificate (and limits).
async fn start_with_cert(
    custody: &Arc<dyn sbtc_custody::Custody>,
    certificate: cert::PeerCertificate,
    set: SignerSet,
    limits: Limits,
) -> Result<sbtc_hsm_signer::peer::PeerNode, sbtc_hsm_signer::peer::PeerError> {
    sbtc_hsm_signer::peer::PeerNode::start(sbtc_hsm_signer::peer::NodeParams {
        custody: custody.clone(),
        identity_label: identity_label(),
        tls_label: tls_label(),
        certificate,
        listen: loopback(),
        set,
        limits,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_presenting_a_one_year_certificate_is_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let member = keystore(dir.path(), "member").await;
    let member_id = identity(&member).await;
    let now = SystemTime::now();
    let year = certificate_between(
        &member,
        now - Duration::from_secs(60),
        now + Duration::from_secs(365 * 86_400),
    )
    .await;

    // A member that admits long certificates presents it, on its dials and its listener.
    let lenient = Limits {
        max_cert_lifetime: Duration::from_secs(400 * 86_400),
        ..test_limits()
    };
    let m = start_with_cert(&member, year.clone(), SignerSet::default(), lenient)
        .await
        .unwrap();
    let node = start(&a, loopback(), SignerSet::default(), test_limits()).await;
    let set = mesh_set(&[&node, &m]);
    node.set_signer_set(set.clone());
    m.set_signer_set(set);
    eventually("both directions refused", WAIT, || {
        node.metrics().refused("lifetime_too_long") >= 2
    })
    .await;
    assert_eq!(node.connections_with(&member_id), 0);
    // (Only A's view is checked: in TLS 1.3 a client whose certificate the server refuses has
    // finished its side of the handshake, so M may see its link up until the first read fails.)
    assert!(node.connected_peers().is_empty());
    assert_eq!(node.metrics().handshakes_accepted, 0);

    // The refusal names the peer and the limits.
    let why = node
        .verifier()
        .admit(year.der(), cert::now_unix())
        .unwrap_err()
        .to_string();
    assert!(
        why.contains(&hex::encode(member_id.serialize())) && why.contains("365.0 days"),
        "{why}"
    );

    // Our own node will not start with it: every peer with the default maximum would refuse it.
    let err = start_with_cert(&member, year.clone(), SignerSet::default(), test_limits())
        .await
        .err()
        .expect("a node with a 1-year certificate must not start")
        .to_string();
    assert!(err.contains("longer than the 30 days"), "{err}");

    // Control: the same member with a 30-day certificate is admitted.
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let month = certificate_between(
        &member,
        now - Duration::from_secs(60),
        now - Duration::from_secs(60) + Duration::from_secs(30 * 86_400),
    )
    .await;
    assert!(
        admitted(
            client(&member, &month, node.identity(), tls13),
            node.local_addr()
        )
        .await
    );
    m.shutdown().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_is_closed_when_the_peer_certificate_expires() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let b = keystore(dir.path(), "b").await;
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&b).await, Member::default()),
    ]
    .into_iter()
    .collect();
    let node = start(&a, loopback(), set, test_limits()).await;
    let now = SystemTime::now();
    // B's certificate runs out in about 4 s (whole seconds).
    let short = certificate_between(
        &b,
        now - Duration::from_secs(60),
        now + Duration::from_secs(4),
    )
    .await;
    let expires = std::time::UNIX_EPOCH + Duration::from_secs(short.info().not_after as u64);
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let config = client(&b, &short, node.identity(), tls13);
    let tcp = TcpStream::connect(node.local_addr()).await.unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(tls::peer_server_name().unwrap(), tcp)
        .await
        .unwrap();
    // HTTP/2 preface, empty SETTINGS and an ACK of the server's: a quiet, live connection.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
    tls.write_all(&hello).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 1024];
    assert!(tls.read(&mut buf).await.unwrap() > 0, "admitted");
    assert_eq!(node.connections_with(&identity(&b).await), 1);

    // The node closes it when the certificate expires, not before (bounded wait).
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return SystemTime::now(),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the connection outlived its peer's certificate");
    assert!(
        closed + Duration::from_millis(100) >= expires,
        "closed {:?} before the expiry",
        expires.duration_since(closed).unwrap_or_default()
    );
    let m = node.metrics();
    assert_eq!(m.expired_disconnects, 1, "{m:?}");
    eventually("the connection unregistered", WAIT, || {
        node.connections_with(&identity_sync(&short)) == 0
    })
    .await;
    // Coming back with the same certificate is refused: a fresh one is needed.
    assert!(!admitted(config, node.local_addr()).await);
    assert_eq!(node.metrics().refused("expired"), 1);
    node.shutdown().await;
}

fn identity_sync(cert: &cert::PeerCertificate) -> secp256k1::PublicKey {
    cert.info().identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_node_renews_its_certificate_and_its_peers_readmit_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let b = keystore(dir.path(), "b").await;
    let b_id = identity(&b).await;
    // A 20 s lifetime: valid from 10 s ago to 10 s from now, renewed when 5 s are left.
    let first = cert::generate(&b, &tls_label(), &identity_label(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(first.info().lifetime(), 20);
    let nb = start_with_cert(&b, first.clone(), SignerSet::default(), test_limits())
        .await
        .unwrap();
    let saved = dir.path().join("b-cert.der");
    nb.keep_certificate_at(saved.clone());
    let na = start(&a, loopback(), SignerSet::default(), test_limits()).await;
    let set = mesh_set(&[&na, &nb]);
    na.set_signer_set(set.clone());
    nb.set_signer_set(set);
    eventually("links up", Duration::from_secs(4), || {
        na.connections_with(&b_id) == 2
    })
    .await;

    eventually("B renewed its certificate", WAIT, || {
        nb.metrics().certificate_renewals >= 1
    })
    .await;
    let renewed = nb.certificate();
    assert_ne!(renewed.fingerprint(), first.fingerprint());
    assert!(renewed.info().not_after > first.info().not_after);
    assert_eq!(renewed.info().lifetime(), 20);
    assert_eq!(renewed.info().spki_sha256(), first.info().spki_sha256());
    // Saved where it was told, so `peer card` shows what peers see.
    eventually("renewed certificate saved", WAIT, || {
        std::fs::read(&saved).is_ok_and(|d| cert::parse(&d).is_ok())
    })
    .await;

    // The connections made with the first certificate close when it expires, and the links
    // come back with the renewed one: no handshake is refused as expired.
    eventually(
        "connections with the old certificate closed and redialled",
        WAIT,
        || {
            let m = na.metrics();
            // The expired connections may still be counted for a moment after the timer fires:
            // wait for the new handshakes too.
            m.expired_disconnects >= 2
                && m.handshakes_accepted >= 2
                && m.handshakes_dialed >= 2
                && na.connections_with(&b_id) == 2
        },
    )
    .await;
    let m = na.metrics();
    assert_eq!(m.refused("expired"), 0, "{m:?}");
    assert!(
        m.handshakes_accepted >= 2 && m.handshakes_dialed >= 2,
        "{m:?}"
    );
    na.shutdown().await;
    nb.shutdown().await;
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr).await
}

/// The bytes of a TLS 1.3 ClientHello of `config`.
fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(config, tls::peer_server_name().unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_flooding_from_one_address_neither_starve_a_member_nor_exceed_the_signature_budget(
) {
    let dir = tempfile::tempdir().unwrap();
    let counted = Arc::new(sbtc_hsm_signer::keys::AuditedCustody::unrecorded(
        keystore(dir.path(), "a").await,
    ));
    let a: Arc<dyn sbtc_custody::Custody> = counted.clone();
    let member = keystore(dir.path(), "member").await;
    let stranger = keystore(dir.path(), "stranger").await;
    const RATE: u64 = 10;
    let limits = Limits {
        handshake_signatures_per_sec: RATE as u32,
        max_handshakes_per_address: 4,
        handshake_timeout: Duration::from_secs(2),
        ..test_limits()
    };
    // A does not know where the member dials from: no exemption for its address.
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&member).await, Member::default()),
    ]
    .into_iter()
    .collect();
    let node = start(&a, loopback(), set, limits).await;
    let addr = node.local_addr();
    let signatures = || counted.counts()["sign_p256_prehash"];
    let before = signatures();
    let started = std::time::Instant::now();

    // 64 idle sockets from 127.0.0.2.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(connect_from("127.0.0.2", addr).await.unwrap());
    }
    // A ClientHello flood from 127.0.0.2: each one that is processed makes A sign.
    let stranger_cert = certificate(&stranger).await;
    let hello = client_hello(client(
        &stranger,
        &stranger_cert,
        node.identity(),
        &[&rustls::version::TLS13],
    ));
    let flood_until = std::time::Instant::now() + Duration::from_secs(4);
    let mut flooders = Vec::new();
    for _ in 0..4 {
        let hello = hello.clone();
        flooders.push(tokio::spawn(async move {
            let mut sent = 0u32;
            while sent < 1000 && std::time::Instant::now() < flood_until {
                let Ok(mut tcp) = connect_from("127.0.0.2", addr).await else {
                    continue;
                };
                sent += 1;
                if tcp.write_all(&hello).await.is_ok() {
                    let mut buf = [0u8; 4096];
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        }));
    }

    // During the flood, the member dials from 127.0.0.1 with a 5 s handshake timeout: while the
    // idle sockets wait for their timeout (2 s), and after, while the ClientHellos get through.
    let good = certificate(&member).await;
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    for wait in [500, 2000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            TlsConnector::from(client(&member, &good, node.identity(), tls13))
                .connect(tls::peer_server_name().unwrap(), tcp),
        )
        .await;
        assert!(
            matches!(connected, Ok(Ok(_))),
            "the member connects within its timeout during the flood: {connected:?}"
        );
    }
    let mut sent = 0;
    for f in flooders {
        sent += f.await.unwrap();
    }
    drop(idle);
    let spent = signatures() - before;
    let seconds = started.elapsed().as_secs() + 1;
    let m = node.metrics();
    assert!(sent > 100, "the flood ran: {sent} connections");
    // Counted, not timed: the bucket holds RATE and refills RATE a second.
    assert!(
        spent <= RATE + RATE * seconds,
        "{spent} handshake signatures in {seconds} s exceed the budget of {RATE}/s: {m:?}"
    );
    assert!(m.refused("too_many_from_address") > 0, "{m:?}");
    assert!(
        m.refused("handshake_rate_from_address") > 0,
        "the address's share of the rate ran out: {m:?}"
    );
    assert!(m.handshakes_accepted >= 2, "{m:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_flooding_the_inbox_is_held_to_its_bytes_and_another_peer_still_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let a = keystore(dir.path(), "a").await;
    let flooder = keystore(dir.path(), "flooder").await;
    let honest = keystore(dir.path(), "honest").await;
    let dead = keystore(dir.path(), "dead").await;
    const LIMIT: usize = 1 << 20;
    let limits = Limits {
        max_message_bytes: 64 << 10,
        inbox_bytes_per_peer: LIMIT,
        queue_bytes_per_peer: LIMIT,
        rate_per_sec: 1_000_000,
        burst: 1_000_000,
        ..test_limits()
    };
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let set: SignerSet = [
        (identity(&a).await, Member::default()),
        (identity(&flooder).await, Member::default()),
        (identity(&honest).await, Member::default()),
        (
            identity(&dead).await,
            Member {
                endpoint: Some(closed_port.to_string()),
                spki_pin: None,
            },
        ),
    ]
    .into_iter()
    .collect();
    let na = start(&a, loopback(), set.clone(), limits.clone()).await;
    let nf = start(&flooder, loopback(), set.clone(), limits.clone()).await;
    let nh = start(&honest, loopback(), set, limits).await;
    let mut inbox = na.take_inbox().unwrap();
    let big = |i: u8| sbtc_hsm_signer::peer::proto::Frame {
        envelope: message::encode(&message::opaque_round(
            tip(),
            [i; 32],
            Bytes::from(vec![i; 60 << 10]),
        )),
    };
    // 100 messages of 60 KiB (6 MiB) while nobody reads the inbox.
    let mut fc = nf
        .dial(na.identity(), &na.local_addr().to_string())
        .await
        .unwrap();
    let closed = fc
        .open(tokio_stream::iter((0..100u8).map(big)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.received, 100);
    let m = na.metrics();
    let peak = na.inbox_bytes_peak(&nf.identity());
    assert!(peak <= LIMIT, "the flooder held {peak} bytes of the inbox");
    assert!(
        peak > LIMIT / 2,
        "the share was used (so the bound mattered): {peak}"
    );
    assert!(na.inbox_bytes_held(&nf.identity()) <= LIMIT);
    assert!(m.inbox_peer_full >= 80, "{m:?}");
    assert_eq!(m.received + m.inbox_peer_full, 100, "{m:?}");

    // The honest member's message still gets in while the flooder's share is full.
    let mut hc = nh
        .dial(na.identity(), &na.local_addr().to_string())
        .await
        .unwrap();
    hc.open(tokio_stream::iter(vec![big(200)])).await.unwrap();
    let mut from_honest = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), inbox.recv()).await {
        if msg.from == nh.identity() {
            assert_eq!(msg.envelope.round_id[0], 200);
            from_honest += 1;
        }
    }
    assert_eq!(from_honest, 1);
    assert_eq!(
        na.inbox_bytes_held(&nf.identity()),
        0,
        "read messages give their bytes back"
    );

    // Toward a dead peer: the queue holds at most LIMIT bytes; the rest is dropped and counted.
    let env = message::opaque_round(tip(), [1; 32], Bytes::from(vec![1; 60 << 10]));
    let before = na.metrics().queue_full;
    for _ in 0..40 {
        na.send_to(&dead_id(&na), &env).unwrap();
    }
    let held = na.queue_bytes_held(&dead_id(&na));
    assert!(held <= LIMIT && held > LIMIT / 2, "{held}");
    assert!(na.metrics().queue_full - before >= 20, "{:?}", na.metrics());
    na.shutdown().await;
    nf.shutdown().await;
    nh.shutdown().await;
}

/// The one member of `node`'s set with an endpoint (the dead one in the inbox test).
fn dead_id(node: &sbtc_hsm_signer::peer::PeerNode) -> secp256k1::PublicKey {
    node.signer_set()
        .iter()
        .find(|(_, m)| m.endpoint.is_some())
        .map(|(k, _)| *k)
        .unwrap()
}
