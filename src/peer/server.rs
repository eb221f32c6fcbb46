//! The listening side: our own rustls acceptor in front of tonic (`serve_with_incoming`), so the
//! TLS key stays in custody and each request knows which admitted identity sent it.

use std::{io, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    cert,
    limits::{tcp_keepalive, HTTP2_PING_INTERVAL, HTTP2_PING_TIMEOUT},
    message,
    metrics::Metrics,
    node::{Inbound, Shared},
    proto::{
        signer_peer_server::{SignerPeer, SignerPeerServer},
        Closed, Frame,
    },
    stream::{PeerConnInfo, PeerStream},
};

/// Bytes a Frame adds around its envelope (tag and length).
pub(crate) const FRAME_OVERHEAD: usize = 16;

pub(crate) type ServerStream = PeerStream<TlsStream<TcpStream>>;

/// Accepts TCP connections, runs the TLS handshake (bounded in number and time) and hands
/// admitted connections to tonic.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    admitted: mpsc::Sender<Result<ServerStream, io::Error>>,
) {
    let acceptor = TlsAcceptor::from(shared.server_tls.clone());
    let pending = Arc::new(Semaphore::new(shared.limits.max_pending_handshakes.max(1)));
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
        let permit = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            p = pending.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            tcp_keepalive(&tcp);
            let tls =
                match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Err(_) => {
                        shared.metrics.refuse("handshake_timeout");
                        tracing::warn!(%remote, "peer handshake timed out");
                        return;
                    }
                    Ok(Err(e)) => {
                        count_failed_handshake(&shared.metrics, &e, "inbound", Some(remote));
                        return;
                    }
                    Ok(Ok(tls)) => tls,
                };
            let Some(identity) = peer_identity(tls.get_ref().1.peer_certificates()) else {
                shared.metrics.refuse("bad_certificate");
                return;
            };
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

/// Counts and logs a handshake that failed for a reason the verifier did not already count.
pub(crate) fn count_failed_handshake(
    metrics: &Metrics,
    e: &io::Error,
    side: &'static str,
    remote: Option<std::net::SocketAddr>,
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
    tracing::warn!(side, ?remote, reason, error = %e, "peer handshake refused");
}

/// The identity key a verified peer certificate names.
pub(crate) fn peer_identity(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> Option<secp256k1::PublicKey> {
    let first = certs?.first()?;
    cert::parse(first.as_ref()).ok().map(|i| i.identity)
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
        if bytes.len() > self.limits.max_message_bytes {
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
        match self.inbox.try_send(Inbound {
            from: info.identity,
            envelope,
        }) {
            Ok(()) => Metrics::inc(&m.received),
            Err(_) => Metrics::inc(&m.inbox_full),
        }
    }
}
