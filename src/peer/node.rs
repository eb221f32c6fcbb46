//! A running peer node: the listener, the mesh of outbound links, the inbox and the counters.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use rustls::{ClientConfig, ServerConfig};
use sbtc_custody::{Custody, KeyLabel};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    budget::{HandshakeBudget, LogLimiter},
    cert::{self, PeerCertificate},
    limits::{Limits, TokenBucket},
    link::{self, Link, PeerClient, Queued},
    message::{self, ChainTip, Envelope, StatementKind},
    metrics::{Metrics, MetricsSnapshot},
    proto::Frame,
    quota::{Charge, PeerQuota},
    server,
    set::{SharedSet, SignerSet},
    stream::Connections,
    tls::{self, CertSlot, CustodyTlsKey, PeerVerifier},
    PeerError,
};

/// What a node needs to start.
pub struct NodeParams {
    pub custody: Arc<dyn Custody>,
    pub identity_label: KeyLabel,
    pub tls_label: KeyLabel,
    /// Made by [`cert::generate`] or [`cert::load_or_generate`] for these keys.
    pub certificate: PeerCertificate,
    pub listen: SocketAddr,
    pub set: SignerSet,
    pub limits: Limits,
}

/// One envelope from an admitted peer, checked.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub from: secp256k1::PublicKey,
    pub envelope: Envelope,
    /// This message's share of its sender's part of the inbox; given back when the last clone
    /// is dropped.
    _held: Option<Arc<Charge>>,
}

impl Inbound {
    /// An envelope that holds no share of any inbox (tests and in-process transports).
    pub fn new(from: secp256k1::PublicKey, envelope: Envelope) -> Inbound {
        Inbound {
            from,
            envelope,
            _held: None,
        }
    }

    pub(crate) fn held(from: secp256k1::PublicKey, envelope: Envelope, charge: Charge) -> Inbound {
        Inbound {
            from,
            envelope,
            _held: Some(Arc::new(charge)),
        }
    }
}

/// Inbox slots per 4 x [`Limits::queue_depth`]: each peer may hold 4 x `queue_depth` messages, so
/// this many peers fill the inbox's message count before any one of them reaches its own share.
/// (A bounded channel allocates its slots as they are used.)
const INBOX_PEERS: usize = 256;

/// What the listener, the links and the service share.
pub(crate) struct Shared {
    pub identity: secp256k1::PublicKey,
    pub set: Arc<SharedSet>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub inbox: mpsc::Sender<Inbound>,
    pub connections: Arc<Connections>,
    pub buckets: Mutex<HashMap<[u8; 33], TokenBucket>>,
    /// Each peer's share of the inbox (`inbox_bytes_per_peer`, 4 x `queue_depth` messages).
    pub inbox_quotas: Mutex<HashMap<[u8; 33], Arc<PeerQuota>>>,
    /// HSM signatures for handshakes, and unauthenticated connections per source address.
    pub budget: Arc<HandshakeBudget>,
    /// For log lines a stranger can cause at will.
    pub stranger_log: LogLimiter,
    pub server_tls: Arc<ServerConfig>,
    pub client_tls: Arc<ClientConfig>,
    pub shutdown: CancellationToken,
    /// Bounds the dials in progress (`Limits::max_concurrent_dials`).
    pub dial_slots: Arc<tokio::sync::Semaphore>,
}

type Links = Arc<Mutex<HashMap<[u8; 33], Link>>>;

/// A signer's end of the peer mesh. Dropping it stops everything it started.
pub struct PeerNode {
    shared: Arc<Shared>,
    links: Links,
    local_addr: SocketAddr,
    inbox: Mutex<Option<mpsc::Receiver<Inbound>>>,
    tasks: Vec<JoinHandle<()>>,
    custody: Arc<dyn Custody>,
    identity_label: KeyLabel,
    /// The certificate presented now (the renewal task replaces it).
    certificate: Arc<Mutex<PeerCertificate>>,
    /// Where renewed certificates are written, if anywhere.
    cert_path: Arc<Mutex<Option<PathBuf>>>,
    tls_key: CustodyTlsKey,
}

impl PeerNode {
    /// Binds the listener and starts dialling every member of the set that has an endpoint.
    pub async fn start(p: NodeParams) -> Result<PeerNode, PeerError> {
        let identity = cert::identity_key(&p.custody, &p.identity_label).await?;
        let tls_public = cert::tls_key(&p.custody, &p.tls_label).await?;
        let info = p.certificate.info();
        if info.identity != identity || info.tls_key != tls_public {
            return Err(PeerError::Certificate(
                "the certificate was made for other keys; delete [peer] cert_path to make a new one"
                    .into(),
            ));
        }
        // Peers would refuse it: say so now rather than be refused by everyone.
        info.check_lifetime(p.limits.max_cert_lifetime)
            .and_then(|()| info.check_time(cert::now_unix()))
            .map_err(|e| {
                PeerError::Certificate(format!(
                    "our own certificate: {e}; delete [peer] cert_path to make a new one"
                ))
            })?;
        let metrics = Arc::new(Metrics::default());
        let set = SharedSet::new(p.set);
        let verifier = PeerVerifier::with_max_lifetime(
            set.clone(),
            metrics.clone(),
            p.limits.max_cert_lifetime,
        );
        let tls_key = CustodyTlsKey::new(p.custody.clone(), p.tls_label.clone(), metrics.clone())?;
        let slot = CertSlot::new(&tls_key, &p.certificate);
        let server_tls = tls::server_config_with(slot.clone(), verifier.clone())?;
        let client_tls =
            tls::client_config_with(slot.clone(), verifier, &[&rustls::version::TLS13])?;
        let listener = TcpListener::bind(p.listen)
            .await
            .map_err(|source| PeerError::Listen {
                addr: p.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| PeerError::Listen {
            addr: p.listen,
            source,
        })?;
        let (inbox_tx, inbox_rx) = mpsc::channel(
            p.limits
                .queue_depth
                .saturating_mul(4 * INBOX_PEERS)
                .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
        );
        let budget = HandshakeBudget::new(
            p.limits.handshake_signatures_per_sec,
            p.limits.max_handshakes_per_address,
        );
        let dial_slots = Arc::new(tokio::sync::Semaphore::new(
            p.limits.max_concurrent_dials.max(1),
        ));
        let shared = Arc::new(Shared {
            identity,
            set,
            metrics,
            limits: p.limits,
            inbox: inbox_tx,
            connections: Arc::new(Connections::default()),
            buckets: Mutex::new(HashMap::new()),
            inbox_quotas: Mutex::new(HashMap::new()),
            budget,
            stranger_log: LogLimiter::default(),
            server_tls,
            client_tls,
            shutdown: CancellationToken::new(),
            dial_slots,
        });
        let links: Links = Arc::new(Mutex::new(HashMap::new()));
        let (admitted_tx, admitted_rx) = mpsc::channel(64);
        let certificate = Arc::new(Mutex::new(p.certificate));
        let cert_path = Arc::new(Mutex::new(None));
        let renewal = Renewal {
            shared: shared.clone(),
            custody: p.custody.clone(),
            tls_label: p.tls_label.clone(),
            identity_label: p.identity_label.clone(),
            slot,
            certificate: certificate.clone(),
            cert_path: cert_path.clone(),
        };
        let tasks = vec![
            tokio::spawn(server::accept_loop(shared.clone(), listener, admitted_tx)),
            tokio::spawn(server::serve(shared.clone(), admitted_rx)),
            tokio::spawn(manage_links(shared.clone(), links.clone())),
            tokio::spawn(renewal.run()),
        ];
        Ok(PeerNode {
            shared,
            links,
            local_addr,
            inbox: Mutex::new(Some(inbox_rx)),
            tasks,
            custody: p.custody,
            identity_label: p.identity_label,
            certificate,
            cert_path,
            tls_key,
        })
    }

    /// Starts the node that `[peer]` describes: `listen`, the certificate kept at `cert_path`
    /// (made through `keys` if needed), the limits, and `set` (the bootstrap set, or the one the
    /// chain names).
    pub async fn from_peer_config(
        peer: &super::PeerConfig,
        keys: &crate::keys::Keys,
        set: SignerSet,
    ) -> Result<PeerNode, PeerError> {
        let (certificate, _) = cert::load_or_generate(
            &peer.cert_path,
            &keys.custody,
            &keys.tls,
            &keys.identity,
            peer.validity()?,
        )
        .await?;
        let node = PeerNode::start(NodeParams {
            custody: keys.custody.clone(),
            identity_label: keys.identity.clone(),
            tls_label: keys.tls.clone(),
            certificate,
            listen: peer.listen,
            set,
            limits: peer.limits()?,
        })
        .await?;
        node.keep_certificate_at(peer.cert_path.clone());
        Ok(node)
    }

    /// Writes every renewed certificate to `path` (so `peer card` shows what peers see).
    pub fn keep_certificate_at(&self, path: PathBuf) {
        *self.cert_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    pub fn identity(&self) -> secp256k1::PublicKey {
        self.shared.identity
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate presented now; renewed while the node runs, when a quarter of its
    /// lifetime is left.
    pub fn certificate(&self) -> PeerCertificate {
        self.certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The received envelopes; the first caller gets the receiver.
    pub fn take_inbox(&self) -> Option<mpsc::Receiver<Inbound>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn signer_set(&self) -> Arc<SignerSet> {
        self.shared.set.get()
    }

    /// Replaces the signer set at run time: new handshakes see it at once, connections of
    /// identities that left are closed now, and links are added or dropped.
    pub fn set_signer_set(&self, set: SignerSet) {
        // Replace first: a handshake that finishes under the old set re-checks after it
        // registers, so nothing admitted under the old set outlives the sweep below.
        let keep: std::collections::HashSet<[u8; 33]> =
            set.iter().map(|(k, _)| k.serialize()).collect();
        self.shared.set.replace(set);
        self.shared
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| keep.contains(key));
        self.shared
            .inbox_quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| keep.contains(key));
        let closed = self
            .shared
            .connections
            .close_unless(|key| keep.contains(key));
        self.shared
            .metrics
            .removed_disconnects
            .fetch_add(closed as u64, Ordering::Relaxed);
    }

    /// Peers with an outbound link up now.
    pub fn connected_peers(&self) -> Vec<secp256k1::PublicKey> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let set = self.shared.set.get();
        set.iter()
            .filter(|(k, _)| {
                links
                    .get(&k.serialize())
                    .is_some_and(|l| l.up.load(Ordering::Relaxed))
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Bytes of `peer`'s messages waiting in the inbox now (encoded envelopes plus a fixed
    /// overhead each); at most `inbox_bytes_per_peer`.
    pub fn inbox_bytes_held(&self, peer: &secp256k1::PublicKey) -> usize {
        self.shared.inbox_quota(peer).held()
    }

    /// The most bytes `peer`'s messages ever held in the inbox at once.
    pub fn inbox_bytes_peak(&self, peer: &secp256k1::PublicKey) -> usize {
        self.shared.inbox_quota(peer).peak()
    }

    /// Bytes waiting in the queue toward `peer` now; at most `queue_bytes_per_peer`.
    pub fn queue_bytes_held(&self, peer: &secp256k1::PublicKey) -> usize {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(&peer.serialize()).map_or(0, |l| l.bytes.held())
    }

    /// Live admitted connections (inbound and outbound) with `peer`.
    pub fn connections_with(&self, peer: &secp256k1::PublicKey) -> usize {
        self.shared.connections.count(peer)
    }

    /// Queues an envelope to every linked peer; returns to how many. Full queues drop it (counted).
    pub fn broadcast(&self, envelope: &Envelope) -> Result<usize, PeerError> {
        self.broadcast_encoded(message::encode(envelope))
    }

    /// [`PeerNode::broadcast`] of an already encoded envelope.
    pub fn broadcast_encoded(&self, bytes: Bytes) -> Result<usize, PeerError> {
        self.check_size(&bytes)?;
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mut queued = 0;
        for link in links.values() {
            if self.enqueue(link, bytes.clone()) {
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Queues an envelope to one peer; false if it has no link or its queue is full.
    pub fn send_to(
        &self,
        peer: &secp256k1::PublicKey,
        envelope: &Envelope,
    ) -> Result<bool, PeerError> {
        let bytes = message::encode(envelope);
        self.check_size(&bytes)?;
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        Ok(links
            .get(&peer.serialize())
            .is_some_and(|l| self.enqueue(l, bytes)))
    }

    /// Sends an encoded envelope to one peer, waiting while its queue is full (backpressure for a
    /// producer that must not drop); false if there is no link to `peer`.
    pub async fn send_encoded(
        &self,
        peer: &secp256k1::PublicKey,
        bytes: Bytes,
    ) -> Result<bool, PeerError> {
        self.check_size(&bytes)?;
        let queue = {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links
                .get(&peer.serialize())
                .map(|l| (l.queue.clone(), l.bytes.clone()))
        };
        let Some((queue, quota)) = queue else {
            return Ok(false);
        };
        let Some(charge) = quota.charge(bytes.len()).await else {
            return Ok(false);
        };
        let sent = queue.send(Queued { bytes, charge }).await.is_ok();
        if sent {
            Metrics::inc(&self.shared.metrics.sent);
        }
        Ok(sent)
    }

    fn check_size(&self, bytes: &Bytes) -> Result<(), PeerError> {
        if bytes.len() > self.shared.limits.max_message_bytes {
            Metrics::inc(&self.shared.metrics.oversized);
            return Err(PeerError::Config(format!(
                "envelope of {} bytes exceeds max_message_bytes = {}",
                bytes.len(),
                self.shared.limits.max_message_bytes
            )));
        }
        Ok(())
    }

    fn enqueue(&self, link: &Link, bytes: Bytes) -> bool {
        let Some(charge) = link.bytes.try_charge(bytes.len()) else {
            Metrics::inc(&self.shared.metrics.queue_full);
            return false;
        };
        match link.queue.try_send(Queued { bytes, charge }) {
            Ok(()) => {
                Metrics::inc(&self.shared.metrics.sent);
                true
            }
            Err(_) => {
                Metrics::inc(&self.shared.metrics.queue_full);
                false
            }
        }
    }

    /// A proposal, ack or decision signed with this signer's identity key through custody.
    pub async fn signed_statement(
        &self,
        kind: StatementKind,
        tip: ChainTip,
        round_id: [u8; 32],
        payload: Bytes,
    ) -> Result<Envelope, PeerError> {
        Ok(message::signed(
            self.custody.as_ref(),
            &self.identity_label,
            kind,
            tip,
            round_id,
            payload,
        )
        .await?)
    }

    /// Round trip of a small frame over the link to `peer`.
    pub async fn ping(&self, peer: &secp256k1::PublicKey) -> Result<Duration, PeerError> {
        let client = {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links.get(&peer.serialize()).and_then(Link::client)
        };
        let mut client = client.ok_or_else(|| PeerError::Link {
            peer: hex::encode(peer.serialize()),
            reason: "no link up".into(),
        })?;
        let start = Instant::now();
        client
            .ping(Frame {
                envelope: Bytes::from_static(b"ping"),
            })
            .await
            .map_err(|s| PeerError::Link {
                peer: hex::encode(peer.serialize()),
                reason: s.to_string(),
            })?;
        Ok(start.elapsed())
    }

    /// A gRPC client on a fresh admitted connection to `peer` at `endpoint`, outside the mesh:
    /// for tools and tests that need to send raw frames.
    pub async fn dial(
        &self,
        peer: secp256k1::PublicKey,
        endpoint: &str,
    ) -> Result<PeerClient, PeerError> {
        link::dial(self.shared.clone(), peer, endpoint.to_owned()).await
    }

    /// The bare HTTP/2 channel of [`PeerNode::dial`], for sending bytes that are not even a
    /// `Frame` (tests of hostile peers).
    pub async fn dial_channel(
        &self,
        peer: secp256k1::PublicKey,
        endpoint: &str,
    ) -> Result<tonic::transport::Channel, PeerError> {
        link::dial_channel(self.shared.clone(), peer, endpoint.to_owned()).await
    }

    /// This node's TLS key and certificate, for building TLS configs by hand (tests).
    pub fn tls_key(&self) -> &CustodyTlsKey {
        &self.tls_key
    }

    /// A verifier that admits by this node's current set, counting into this node's metrics.
    pub fn verifier(&self) -> Arc<PeerVerifier> {
        PeerVerifier::with_max_lifetime(
            self.shared.set.clone(),
            self.shared.metrics.clone(),
            self.shared.limits.max_cert_lifetime,
        )
    }

    /// Stops the listener and every link, closes every connection, and waits (bounded) for the
    /// tasks to end.
    pub async fn shutdown(mut self) {
        self.stop();
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn stop(&self) {
        self.shared.shutdown.cancel();
        let links = std::mem::take(&mut *self.links.lock().unwrap_or_else(|p| p.into_inner()));
        for link in links.into_values() {
            link.cancel.cancel();
            link.task.abort();
        }
        self.shared.connections.close_unless(|_| false);
    }
}

impl Drop for PeerNode {
    fn drop(&mut self) {
        self.stop();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Renews this node's certificate while it runs: when a quarter of its lifetime is left, a new
/// one of the same lifetime (at most `max_cert_lifetime`) for the same keys; new handshakes present
/// it at once. Peers close the connections made with the old one when it expires and the links
/// redial with the new one.
struct Renewal {
    shared: Arc<Shared>,
    custody: Arc<dyn Custody>,
    tls_label: KeyLabel,
    identity_label: KeyLabel,
    slot: Arc<CertSlot>,
    certificate: Arc<Mutex<PeerCertificate>>,
    cert_path: Arc<Mutex<Option<PathBuf>>>,
}

impl Renewal {
    async fn run(self) {
        loop {
            let info = self
                .certificate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .info()
                .clone();
            let lifetime = u64::try_from(info.lifetime())
                .unwrap_or(1)
                .clamp(1, self.shared.limits.max_cert_lifetime.as_secs().max(1));
            let renew_at = info.not_after.saturating_sub(info.lifetime() / 4);
            let wait = u64::try_from(renew_at.saturating_sub(cert::now_unix())).unwrap_or(0);
            // At least a second between renewals, however short the lifetime.
            let wait = Duration::from_secs(wait.max(1));
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let validity = Duration::from_secs(lifetime);
            match cert::generate(
                &self.custody,
                &self.tls_label,
                &self.identity_label,
                validity,
            )
            .await
            {
                Ok(new) => {
                    let path = self
                        .cert_path
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    if let Some(path) = path {
                        if let Err(e) = cert::write_atomic(&path, new.der().as_ref()) {
                            tracing::warn!(error = %e, "renewed peer certificate not saved; it is used anyway");
                        }
                    }
                    self.slot.replace(&new);
                    Metrics::inc(&self.shared.metrics.certificate_renewals);
                    tracing::info!(
                        not_after = new.info().not_after,
                        cert_sha256 = %hex::encode(new.fingerprint()),
                        "peer certificate renewed"
                    );
                    *self.certificate.lock().unwrap_or_else(|p| p.into_inner()) = new;
                }
                Err(e) => {
                    tracing::error!(error = %e, not_after = info.not_after, "cannot renew the peer certificate; retrying");
                    let retry = Duration::from_secs((lifetime / 16).clamp(1, 60));
                    tokio::select! {
                        _ = self.shared.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }
}

/// Keeps one link per set member with an endpoint (other than us), following set changes.
async fn manage_links(shared: Arc<Shared>, links: Links) {
    let mut changes = shared.set.subscribe();
    loop {
        reconcile(&shared, &links);
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

fn reconcile(shared: &Arc<Shared>, links: &Links) {
    let set = shared.set.get();
    let mut links = links.lock().unwrap_or_else(|p| p.into_inner());
    if shared.shutdown.is_cancelled() {
        return;
    }
    let wanted: HashMap<[u8; 33], (secp256k1::PublicKey, String)> = set
        .iter()
        .filter(|(k, _)| **k != shared.identity)
        .filter_map(|(k, m)| m.endpoint.clone().map(|e| (k.serialize(), (*k, e))))
        .collect();
    links.retain(|key, link| {
        let keep = wanted.get(key).is_some_and(|(_, e)| *e == link.endpoint);
        if !keep {
            link.cancel.cancel();
            link.task.abort();
        }
        keep
    });
    for (key, (peer, endpoint)) in wanted {
        links
            .entry(key)
            .or_insert_with(|| Link::spawn(shared.clone(), peer, endpoint));
    }
}
