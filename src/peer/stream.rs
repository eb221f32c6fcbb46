//! An admitted TLS connection: knows which identity is on the other end, and can be closed from
//! outside when that identity leaves the signer set.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Who is on the other end of a connection; handlers find it in the request extensions.
#[derive(Clone, Debug)]
pub struct PeerConnInfo {
    pub identity: secp256k1::PublicKey,
    pub remote: Option<SocketAddr>,
}

/// Live connections of one identity: (connection id, its closer).
type Live = HashMap<[u8; 33], Vec<(u64, CancellationToken)>>;

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
        let token = CancellationToken::new();
        entry.push((id, token.clone()));
        Some(ConnGuard {
            connections: self.clone(),
            key,
            id,
            token,
        })
    }

    /// Closes every connection whose identity `keep` rejects; returns how many.
    pub(crate) fn close_unless(&self, keep: impl Fn(&[u8; 33]) -> bool) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for (key, conns) in live.iter() {
            if !keep(key) {
                for (_, token) in conns {
                    token.cancel();
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
    token: CancellationToken,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
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
    _guard: ConnGuard,
}

impl<S> PeerStream<S> {
    pub(crate) fn new(inner: S, info: PeerConnInfo, guard: ConnGuard) -> Self {
        let closed = Box::pin(guard.token.clone().cancelled_owned());
        PeerStream {
            inner,
            info,
            closed,
            _guard: guard,
        }
    }

    fn check_closed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "peer left the signer set",
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
