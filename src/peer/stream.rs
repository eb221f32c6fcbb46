//! An admitted TLS connection: knows which identity is on the other end, and can be closed from
//! outside when that identity leaves the signer set or its certificate expires.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::metrics::Metrics;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Who is on the other end of a connection; handlers find it in the request extensions.
#[derive(Clone, Debug)]
pub struct PeerConnInfo {
    pub identity: secp256k1::PublicKey,
    pub remote: Option<SocketAddr>,
}

/// Closes one connection, remembering why (the first reason wins).
#[derive(Clone, Debug, Default)]
pub(crate) struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<&'static str>>,
}

impl Closer {
    pub(crate) fn close(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    fn reason(&self) -> &'static str {
        self.reason.get().copied().unwrap_or("connection closed")
    }
}

/// Live connections of one identity: (connection id, its closer).
type Live = HashMap<[u8; 33], Vec<(u64, Closer)>>;

/// Every live admitted connection, by identity, so that a removal from the set closes them.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    live: Mutex<Live>,
    next: AtomicU64,
}

impl Connections {
    /// Registers one connection of `identity`, unless it already has `max` live ones.
    pub(crate) fn register(
        self: &Arc<Self>,
        identity: &secp256k1::PublicKey,
        max: usize,
    ) -> Option<ConnGuard> {
        let key = identity.serialize();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = live.entry(key).or_default();
        if entry.len() >= max {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closer = Closer::default();
        entry.push((id, closer.clone()));
        Some(ConnGuard {
            connections: self.clone(),
            key,
            id,
            closer,
        })
    }

    /// Closes every connection whose identity `keep` rejects; returns how many.
    pub(crate) fn close_unless(&self, keep: impl Fn(&[u8; 33]) -> bool) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (key, conns) in live.iter() {
            if !keep(key) {
                for (_, closer) in conns {
                    closer.close("peer left the signer set");
                    n += 1;
                }
            }
        }
        n
    }

    pub(crate) fn count(&self, identity: &secp256k1::PublicKey) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&identity.serialize())
            .map_or(0, Vec::len)
    }
}

/// Unregisters its connection when the connection is dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    connections: Arc<Connections>,
    key: [u8; 33],
    id: u64,
    closer: Closer,
}

impl ConnGuard {
    /// Closes the connection when the peer's certificate expires (`not_after`, Unix seconds):
    /// the link then redials, and the peer must present a fresh certificate. Counted
    /// (`expired_disconnects`) and logged with the peer's identity.
    pub(crate) fn close_at_expiry(
        &self,
        not_after: i64,
        metrics: Arc<Metrics>,
        side: &'static str,
    ) {
        let closer = self.closer.clone();
        let peer = hex::encode(self.key);
        let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            tokio::select! {
                // Ended for another reason (or dropped): nothing to do.
                _ = closer.token.cancelled() => {}
                _ = tokio::time::sleep(wait) => {
                    Metrics::inc(&metrics.expired_disconnects);
                    tracing::warn!(%peer, side, not_after, "peer certificate expired: connection closed; the peer must present a fresh certificate");
                    closer.close("peer certificate expired");
                }
            }
        });
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        // Ends the expiry timer of this connection, if any.
        self.closer.token.cancel();
        let mut live = self
            .connections
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(conns) = live.get_mut(&self.key) {
            conns.retain(|(id, _)| *id != self.id);
            if conns.is_empty() {
                live.remove(&self.key);
            }
        }
    }
}

/// A TLS stream of an admitted peer. Reads and writes fail once the connection is closed from
/// outside, which makes hyper drop it.
pub struct PeerStream<S> {
    inner: S,
    info: PeerConnInfo,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    guard: ConnGuard,
}

impl<S> PeerStream<S> {
    pub(crate) fn new(inner: S, info: PeerConnInfo, guard: ConnGuard) -> Self {
        let closed = Box::pin(guard.closer.token.clone().cancelled_owned());
        PeerStream {
            inner,
            info,
            closed,
            guard,
        }
    }

    fn check_closed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                self.guard.closer.reason(),
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_closed(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_closed(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_closed(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S> tonic::transport::server::Connected for PeerStream<S> {
    type ConnectInfo = PeerConnInfo;

    fn connect_info(&self) -> PeerConnInfo {
        self.info.clone()
    }
}
