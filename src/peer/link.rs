//! The dialling side: one link per peer in the set, kept up with jittered exponential backoff.
//! Each link owns a bounded queue; when it is full, new messages to that peer are dropped and
//! counted, so a slow peer costs at most `queue_depth` messages and `queue_bytes_per_peer` bytes
//! of memory.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    limits::{backoff, tcp_keepalive, HTTP2_PING_INTERVAL, HTTP2_PING_TIMEOUT},
    metrics::Metrics,
    node::Shared,
    proto::{signer_peer_client::SignerPeerClient, Frame},
    quota::{Charge, PeerQuota},
    server::{count_failed_handshake, peer_info, FRAME_OVERHEAD},
    stream::{PeerConnInfo, PeerStream},
    tls, PeerError,
};

pub type PeerClient = SignerPeerClient<Channel>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An envelope waiting in a link's queue, holding its share of the queue's bytes.
pub(crate) struct Queued {
    pub bytes: Bytes,
    pub charge: Charge,
}

/// One outbound link.
pub(crate) struct Link {
    pub endpoint: String,
    pub queue: mpsc::Sender<Queued>,
    /// Bytes and messages waiting in `queue`.
    pub bytes: Arc<PeerQuota>,
    pub client: Arc<Mutex<Option<PeerClient>>>,
    pub up: Arc<AtomicBool>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Link {
    pub(crate) fn spawn(shared: Arc<Shared>, peer: secp256k1::PublicKey, endpoint: String) -> Link {
        let (queue, rx) = mpsc::channel(shared.limits.queue_depth.max(1));
        let bytes = PeerQuota::new(
            shared.limits.queue_bytes_per_peer,
            shared.limits.queue_depth.max(1),
        );
        let client = Arc::new(Mutex::new(None));
        let up = Arc::new(AtomicBool::new(false));
        let cancel = shared.shutdown.child_token();
        let task = tokio::spawn(run(
            shared,
            peer,
            endpoint.clone(),
            rx,
            client.clone(),
            up.clone(),
            cancel.clone(),
        ));
        Link {
            endpoint,
            queue,
            bytes,
            client,
            up,
            cancel,
            task,
        }
    }

    pub(crate) fn client(&self) -> Option<PeerClient> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn run(
    shared: Arc<Shared>,
    peer: secp256k1::PublicKey,
    endpoint: String,
    mut queue: mpsc::Receiver<Queued>,
    client_slot: Arc<Mutex<Option<PeerClient>>>,
    up: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let peer_hex = hex::encode(peer.serialize());
    let mut attempt = 0u32;
    loop {
        let dialled = tokio::select! {
            _ = cancel.cancelled() => return,
            r = async {
                // Held for the TCP connect and the TLS handshake only; never closed.
                let _slot = shared.dial_slots.acquire().await;
                dial(shared.clone(), peer, endpoint.clone()).await
            } => r,
        };
        match dialled {
            Ok(mut client) => {
                attempt = 0;
                *client_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
                up.store(true, Ordering::Relaxed);
                tracing::debug!(peer = %peer_hex, %endpoint, "link up");
                let (frames, rx) = mpsc::channel::<Frame>(16);
                let call = client.open(ReceiverStream::new(rx));
                tokio::pin!(call);
                let ended = loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break true,
                        r = &mut call => {
                            tracing::debug!(peer = %peer_hex, result = ?r.map(|c| c.into_inner().received), "link stream ended");
                            break false;
                        }
                        next = queue.recv() => {
                            let Some(Queued { bytes: envelope, charge }) = next else { break true };
                            tokio::select! {
                                _ = cancel.cancelled() => break true,
                                _ = &mut call => break false,
                                sent = frames.send(Frame { envelope }) => if sent.is_err() { break false },
                            }
                            drop(charge);
                        }
                    }
                };
                up.store(false, Ordering::Relaxed);
                *client_slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if ended {
                    return;
                }
            }
            Err(e) => {
                Metrics::inc(&shared.metrics.dial_failures);
                tracing::debug!(peer = %peer_hex, %endpoint, error = %e, "dial failed");
            }
        }
        let wait = backoff(
            attempt,
            shared.limits.backoff_min,
            shared.limits.backoff_max,
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Dials `peer` at `endpoint`: TCP, our TLS 1.3 handshake, and a check that the admitted
/// certificate is `peer`'s. Returns a gRPC client on that connection.
pub(crate) async fn dial(
    shared: Arc<Shared>,
    peer: secp256k1::PublicKey,
    endpoint: String,
) -> Result<PeerClient, PeerError> {
    let max = shared.limits.max_message_bytes + FRAME_OVERHEAD;
    Ok(
        SignerPeerClient::new(dial_channel(shared, peer, endpoint).await?)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}

/// The HTTP/2 channel under [`dial`].
pub(crate) async fn dial_channel(
    shared: Arc<Shared>,
    peer: secp256k1::PublicKey,
    endpoint: String,
) -> Result<Channel, PeerError> {
    let connector = tower::service_fn(move |_: Uri| {
        let shared = shared.clone();
        let endpoint = endpoint.clone();
        async move { connect(&shared, &peer, &endpoint).await.map(TokioIo::new) }
    });
    // No tonic connect timeout: `connect` bounds TCP and the handshake itself, and an outer
    // timeout would abort handshakes that are merely slow under load (and waste their signature).
    let channel = Endpoint::from_static("http://sbtc-peer")
        .http2_keep_alive_interval(HTTP2_PING_INTERVAL)
        .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .map_err(|e| PeerError::Link {
            peer: hex::encode(peer.serialize()),
            reason: error_chain(&e),
        })?;
    Ok(channel)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn connect(
    shared: &Arc<Shared>,
    peer: &secp256k1::PublicKey,
    endpoint: &str,
) -> Result<PeerStream<TlsStream<TcpStream>>, PeerError> {
    let link_err = |reason: String| PeerError::Link {
        peer: hex::encode(peer.serialize()),
        reason,
    };
    if !shared.set.get().contains(peer) {
        return Err(link_err("not in the signer set".into()));
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
        .await
        .map_err(|_| {
            link_err(format!(
                "no TCP connection to {endpoint} in {CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| link_err(format!("cannot connect to {endpoint}: {e}")))?;
    let remote = tcp.peer_addr().ok();
    let _ = tcp.set_nodelay(true);
    tcp_keepalive(&tcp);
    let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
    // Our handshake signature, from the handshake budget (our dials come first).
    if !shared.budget.outbound(deadline).await {
        shared.metrics.refuse("handshake_budget");
        return Err(link_err(
            "no handshake signature left in the budget (handshake_signatures_per_sec) in time"
                .into(),
        ));
    }
    let connector = TlsConnector::from(shared.client_tls.clone());
    let tls =
        match tokio::time::timeout_at(deadline, connector.connect(tls::peer_server_name()?, tcp))
            .await
        {
            Err(_) => {
                shared.metrics.refuse("handshake_timeout");
                return Err(link_err("TLS handshake timed out".into()));
            }
            Ok(Err(e)) => {
                count_failed_handshake(&shared.metrics, &e, "outbound", remote, true);
                return Err(link_err(format!("TLS handshake failed: {e}")));
            }
            Ok(Ok(tls)) => tls,
        };
    let info = peer_info(tls.get_ref().1.peer_certificates())
        .ok_or_else(|| link_err("no usable certificate".into()))?;
    let identity = info.identity;
    if identity != *peer {
        shared.metrics.refuse("wrong_peer");
        return Err(link_err(format!(
            "{endpoint} answered as {}, a different signer",
            hex::encode(identity.serialize())
        )));
    }
    let guard = shared
        .connections
        .register(&identity, usize::MAX)
        .ok_or_else(|| link_err("cannot register the connection".into()))?;
    if !shared.set.get().contains(&identity) {
        return Err(link_err("left the signer set during the handshake".into()));
    }
    guard.close_at_expiry(info.not_after, shared.metrics.clone(), "outbound");
    Metrics::inc(&shared.metrics.handshakes_dialed);
    Ok(PeerStream::new(
        tls,
        PeerConnInfo { identity, remote },
        guard,
    ))
}
