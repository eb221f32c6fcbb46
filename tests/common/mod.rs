//! Test helpers for the peer-link tests: custody backends with an identity and a TLS key, and
//! nodes wired into a full mesh over 127.0.0.1.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use sbtc_custody::{Custody, KeyKind, KeyLabel, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore, OpenOptions};
use sbtc_hsm_signer::peer::{
    cert::{self, CertRequest, PeerCertificate},
    Limits, Member, NodeParams, PeerNode, SignerSet,
};

pub fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

pub fn identity_label() -> KeyLabel {
    label("identity")
}

pub fn tls_label() -> KeyLabel {
    label("tls")
}

/// A fresh keystore (cheap KDF) with an identity and a TLS key.
pub async fn keystore(dir: &Path, name: &str) -> Arc<dyn Custody> {
    let ks = Keystore::create_with_passphrase(
        dir.join(format!("{name}.keystore")),
        &SecretString::new("peer test passphrase".into()),
        KdfParams::insecure_for_tests(),
    )
    .await
    .unwrap();
    let custody: Arc<dyn Custody> = Arc::new(ks);
    add_keys(&custody).await;
    custody
}

/// Reopens a keystore made by [`keystore`] (a restarted signer).
pub async fn reopen_keystore(dir: &Path, name: &str) -> Arc<dyn Custody> {
    Arc::new(
        Keystore::open_with_options(
            dir.join(format!("{name}.keystore")),
            &SecretString::new("peer test passphrase".into()),
            &OpenOptions::insecure_test(),
        )
        .await
        .unwrap(),
    )
}

/// A fresh SoftHSM2 token with an identity and a TLS key. Call before any other PKCS#11 use.
pub async fn softhsm() -> Arc<dyn Custody> {
    let token = pkcs11_tests::softhsm::token();
    let backend = tokio::task::spawn_blocking(move || token.open())
        .await
        .unwrap();
    let custody: Arc<dyn Custody> = Arc::new(backend);
    add_keys(&custody).await;
    custody
}

/// A YubiHSM2 (the yubihsm crate's MockHsm, a simulated device of its own) with an identity and
/// a TLS key.
pub async fn mockhsm() -> Arc<dyn Custody> {
    let backend = tokio::task::spawn_blocking(|| {
        sbtc_custody_yubihsm::YubiHsmBackend::with_connector(
            yubihsm::Connector::mockhsm(),
            1,
            SecretString::new("password".into()),
            sbtc_custody_yubihsm::Options::default(),
        )
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("open MockHsm: {e}"));
    let custody: Arc<dyn Custody> = Arc::new(backend);
    add_keys(&custody).await;
    custody
}

/// `n` signers' custody, the three backends in turn: a keystore, a SoftHSM2 token, a YubiHSM2
/// (MockHsm), a keystore, ... Each has an identity and a TLS key.
pub async fn mixed(dir: &Path, n: usize) -> Vec<Arc<dyn Custody>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match i % 3 {
            0 => keystore(dir, &format!("mixed-{i}")).await,
            1 => softhsm().await,
            _ => mockhsm().await,
        });
    }
    out
}

pub async fn add_keys(custody: &Arc<dyn Custody>) {
    custody
        .generate(&identity_label(), KeyKind::Secp256k1)
        .await
        .unwrap();
    custody.generate(&tls_label(), KeyKind::P256).await.unwrap();
}

pub async fn identity(custody: &Arc<dyn Custody>) -> secp256k1::PublicKey {
    cert::identity_key(custody, &identity_label())
        .await
        .unwrap()
}

pub async fn certificate(custody: &Arc<dyn Custody>) -> PeerCertificate {
    cert::generate(
        custody,
        &tls_label(),
        &identity_label(),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap()
}

/// A certificate for `custody`'s keys with the given validity window.
pub async fn certificate_between(
    custody: &Arc<dyn Custody>,
    not_before: SystemTime,
    not_after: SystemTime,
) -> PeerCertificate {
    cert::generate_with(CertRequest {
        tls: (custody, &tls_label()),
        binder: (custody, &identity_label()),
        identity: identity(custody).await,
        not_before,
        not_after,
    })
    .await
    .unwrap()
}

/// Limits for tests: quick reconnects.
pub fn test_limits() -> Limits {
    Limits {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Limits::default()
    }
}

pub async fn start(
    custody: &Arc<dyn Custody>,
    listen: SocketAddr,
    set: SignerSet,
    limits: Limits,
) -> PeerNode {
    PeerNode::start(NodeParams {
        custody: custody.clone(),
        identity_label: identity_label(),
        tls_label: tls_label(),
        certificate: certificate(custody).await,
        listen,
        set,
        limits,
    })
    .await
    .unwrap()
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The set of `nodes` with their listening addresses as endpoints.
pub fn mesh_set(nodes: &[&PeerNode]) -> SignerSet {
    nodes
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
        .collect()
}

/// Starts one node per custody and joins them in a full mesh.
pub async fn mesh(custodies: &[Arc<dyn Custody>], limits: Limits) -> Vec<PeerNode> {
    let mut nodes = Vec::new();
    for c in custodies {
        nodes.push(start(c, loopback(), SignerSet::default(), limits.clone()).await);
    }
    let set = mesh_set(&nodes.iter().collect::<Vec<_>>());
    for n in &nodes {
        n.set_signer_set(set.clone());
    }
    nodes
}

/// Waits (bounded) until `check` holds.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node has a link up to every other node.
pub async fn wait_full_mesh(nodes: &[PeerNode], timeout: Duration) {
    let n = nodes.len();
    eventually("a full mesh", timeout, || {
        nodes
            .iter()
            .all(|node| node.connected_peers().len() == n - 1)
    })
    .await;
}
