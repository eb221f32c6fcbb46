//! The listening side: our own rustls acceptor in front of tonic (`serve_with_incoming`), so the
//! TLS key stays in custody and each request knows which admitted identity sent it.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{server::TlsStream, LazyConfigAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    budget::NoToken,
    cert,
    limits::{tcp_keepalive, HTTP2_PING_INTERVAL, HTTP2_PING_TIMEOUT},
    message,
    metrics::Metrics,
    node::{Inbound, Shared},
    proto::{
        signer_peer_server::{SignerPeer, SignerPeerServer},
        Closed, Frame,
    },
    quota::PeerQuota,
    stream::{PeerConnInfo, PeerStream},
};

/// Bytes a Frame adds around its envelope (tag and length).
pub(crate) const FRAME_OVERHEAD: usize = 16;

pub(crate) type ServerStream = PeerStream<TlsStream<TcpStream>>;

/// Accepts TCP connections, runs the TLS handshake (bounded in number, per source address, in
/// time and in HSM signatures) and hands admitted connections to tonic.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    admitted: mpsc::Sender<Result<ServerStream, io::Error>>,
) {
    let pending = Arc::new(Semaphore::new(shared.limits.max_pending_handshakes.max(1)));
    let mut members = MemberAddresses::default();
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "peer listener cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before waiting for a pending-handshake slot: one address cannot take them all.
        let exempt = members.contains(&shared, remote.ip());
        let Some(slot) = shared.budget.begin_inbound(remote.ip(), exempt) else {
            shared.metrics.refuse("too_many_from_address");
            if let Some(left_out) = shared.stranger_log.allow() {
                tracing::warn!(%remote, left_out, "too many unauthenticated connections from one address: closed");
            }
            drop(tcp);
            continue;
        };
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let shared = shared.clone();
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            tcp_keepalive(&tcp);
            let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
            let handshake = async {
                let start =
                    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
                // The next step signs in custody: one token of the handshake budget first.
                if let Err(no) = shared.budget.inbound(remote.ip(), exempt, deadline).await {
                    return Err(Refused::Budget(no));
                }
                Ok(start.into_stream(shared.server_tls.clone()).await?)
            };
            let tls = match tokio::time::timeout_at(deadline, handshake).await {
                Err(_) => {
                    shared.metrics.refuse("handshake_timeout");
                    if let Some(left_out) = shared.stranger_log.allow() {
                        tracing::warn!(%remote, left_out, "peer handshake timed out");
                    }
                    return;
                }
                Ok(Err(Refused::Budget(no))) => {
                    shared.metrics.refuse(no.reason());
                    if let Some(left_out) = shared.stranger_log.allow() {
                        tracing::warn!(%remote, reason = no.reason(), left_out, "peer handshake refused: no handshake signature left in the budget");
                    }
                    return;
                }
                Ok(Err(Refused::Io(e))) => {
                    let log = shared.stranger_log.allow().is_some();
                    count_failed_handshake(&shared.metrics, &e, "inbound", Some(remote), log);
                    return;
                }
                Ok(Ok(tls)) => tls,
            };
            let Some(info) = peer_info(tls.get_ref().1.peer_certificates()) else {
                shared.metrics.refuse("bad_certificate");
                return;
            };
            let identity = info.identity;
            let Some(guard) = shared
                .connections
                .register(&identity, shared.limits.max_connections_per_peer)
            else {
                shared.metrics.refuse("too_many_connections");
                tracing::warn!(%remote, peer = %hex::encode(identity.serialize()), "peer has too many connections");
                return;
            };
            // The set may have changed during the handshake.
            if !shared.set.get().contains(&identity) {
                shared.metrics.refuse("not_in_set");
                return;
            }
            // Authenticated: no longer counted against its address.
            drop(slot);
            guard.close_at_expiry(info.not_after, shared.metrics.clone(), "inbound");
            Metrics::inc(&shared.metrics.handshakes_accepted);
            tracing::debug!(%remote, peer = %hex::encode(identity.serialize()), "peer admitted");
            let info = PeerConnInfo {
                identity,
                remote: Some(remote),
            };
            let _ = admitted.send(Ok(PeerStream::new(tls, info, guard))).await;
        });
    }
}

/// Why an inbound handshake did not finish.
enum Refused {
    Io(io::Error),
    Budget(NoToken),
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Io(e)
    }
}

/// The IP addresses that members' endpoints name literally (`192.0.2.7:4122`; DNS names are not
/// resolved), exempt from the per-address limits. Recomputed when the set changes.
#[derive(Default)]
struct MemberAddresses {
    set: Option<Arc<crate::peer::SignerSet>>,
    ips: std::collections::HashSet<IpAddr>,
}

impl MemberAddresses {
    fn contains(&mut self, shared: &Shared, ip: IpAddr) -> bool {
        let set = shared.set.get();
        if !self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, &set)) {
            self.ips = set
                .iter()
                .filter(|(k, _)| **k != shared.identity)
                .filter_map(|(_, m)| m.endpoint.as_deref()?.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
                .collect();
            self.set = Some(set);
        }
        self.ips.contains(&ip)
    }
}

/// Counts and logs (if `log`) a handshake that failed for a reason the verifier did not already
/// count.
pub(crate) fn count_failed_handshake(
    metrics: &Metrics,
    e: &io::Error,
    side: &'static str,
    remote: Option<std::net::SocketAddr>,
    log: bool,
) {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let reason = match tls {
        // Counted by the verifier, with its reason.
        Some(rustls::Error::InvalidCertificate(_)) => return,
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible_tls",
        Some(rustls::Error::AlertReceived(_)) => "peer_alert",
        Some(_) => "handshake_failed",
        None => "connection_lost",
    };
    metrics.refuse(reason);
    if log {
        tracing::warn!(side, ?remote, reason, error = %e, "peer handshake refused");
    }
}

/// What a verified peer certificate says.
pub(crate) fn peer_info(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Option<cert::CertInfo> {
    let first = certs?.first()?;
    cert::parse(first.as_ref()).ok()
}

/// Runs the gRPC service on the admitted connections until shutdown.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    admitted: mpsc::Receiver<Result<ServerStream, io::Error>>,
) {
    let max = shared.limits.max_message_bytes + FRAME_OVERHEAD;
    let service = SignerPeerServer::new(PeerService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let shutdown = shared.shutdown.clone();
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(16))
        .http2_keepalive_interval(Some(HTTP2_PING_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_PING_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(admitted), shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "peer gRPC server stopped");
    }
}

struct PeerService {
    shared: Arc<Shared>,
}

impl PeerService {
    fn sender<T>(request: &Request<T>) -> Result<PeerConnInfo, Status> {
        request
            .extensions()
            .get::<PeerConnInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("not an admitted peer connection"))
    }
}

#[tonic::async_trait]
impl SignerPeer for PeerService {
    async fn open(&self, request: Request<Streaming<Frame>>) -> Result<Response<Closed>, Status> {
        let info = Self::sender(&request)?;
        let mut frames = request.into_inner();
        let mut received = 0u64;
        loop {
            match frames.message().await {
                Ok(Some(frame)) => {
                    received += 1;
                    self.shared.receive(&info, frame.envelope);
                }
                Ok(None) => break,
                Err(status) => {
                    // A frame tonic could not decode (too large, not protobuf) ends this stream
                    // only; the connection stays, and the sender opens a new stream.
                    let counter = match status.code() {
                        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                            &self.shared.metrics.oversized
                        }
                        tonic::Code::Internal => &self.shared.metrics.malformed,
                        // The sender reset or closed the stream: nothing was received.
                        _ => return Err(status),
                    };
                    Metrics::inc(counter);
                    tracing::warn!(peer = %hex::encode(info.identity.serialize()), error = %status.message(), "dropped a peer frame");
                    return Err(status);
                }
            }
        }
        Ok(Response::new(Closed { received }))
    }

    async fn ping(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        let info = Self::sender(&request)?;
        if !self.shared.allow(&info.identity) {
            return Err(Status::resource_exhausted("rate limited"));
        }
        Ok(Response::new(request.into_inner()))
    }
}

impl Shared {
    /// The per-peer token bucket.
    pub(crate) fn allow(&self, identity: &secp256k1::PublicKey) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Only set members reach here, so the map is bounded by the set size.
        buckets
            .entry(identity.serialize())
            .or_insert_with(|| {
                super::limits::TokenBucket::new(self.limits.rate_per_sec, self.limits.burst)
            })
            .take()
    }

    /// One envelope from an admitted peer: rate limit, size, decode, signature, inbox. Anything
    /// refused is dropped and counted; nothing here can end the link.
    pub(crate) fn receive(&self, info: &PeerConnInfo, bytes: Bytes) {
        let m = &self.metrics;
        if !self.allow(&info.identity) {
            Metrics::inc(&m.rate_limited);
            return;
        }
        let len = bytes.len();
        if len > self.limits.max_message_bytes {
            Metrics::inc(&m.oversized);
            return;
        }
        let envelope = match message::decode(bytes, &info.identity) {
            Ok(env) => env,
            Err(message::Invalid::BadSignature) => {
                Metrics::inc(&m.bad_signature);
                return;
            }
            Err(message::Invalid::Malformed(why)) => {
                Metrics::inc(&m.malformed);
                tracing::debug!(peer = %hex::encode(info.identity.serialize()), why, "dropped a malformed envelope");
                return;
            }
        };
        // The sender's share of the inbox: a peer that floods it loses its own messages only.
        let quota = self.inbox_quota(&info.identity);
        let Some(charge) = quota.try_charge(len) else {
            Metrics::inc(&m.inbox_peer_full);
            if quota.set_full(true) {
                tracing::warn!(
                    peer = %hex::encode(info.identity.serialize()),
                    held_bytes = quota.held(),
                    limit_bytes = self.limits.inbox_bytes_per_peer,
                    limit_messages = self.limits.queue_depth.saturating_mul(4),
                    "peer fills its share of the inbox: its messages are dropped until the node reads them"
                );
            }
            return;
        };
        quota.set_full(false);
        match self
            .inbox
            .try_send(Inbound::held(info.identity, envelope, charge))
        {
            Ok(()) => Metrics::inc(&m.received),
            Err(_) => Metrics::inc(&m.inbox_full),
        }
    }

    /// `identity`'s share of the inbox. Only admitted members reach here, so the map is bounded
    /// by the set (and pruned when the set changes).
    pub(crate) fn inbox_quota(&self, identity: &secp256k1::PublicKey) -> Arc<PeerQuota> {
        let mut quotas = self.inbox_quotas.lock().unwrap_or_else(|p| p.into_inner());
        quotas
            .entry(identity.serialize())
            .or_insert_with(|| {
                PeerQuota::new(
                    self.limits.inbox_bytes_per_peer,
                    self.limits.queue_depth.saturating_mul(4),
                )
            })
            .clone()
    }
}
