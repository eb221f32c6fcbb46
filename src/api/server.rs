//! The HTTP server (axum over hyper, HTTP/1.1): routes, and the limits every request meets
//! before a handler runs: at most `max_connections` connections at once, a token bucket per
//! client address, a body size cap and a whole-request timeout.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::ApiConfig;
use super::deposit;
use super::error::ApiError;
use super::intake::Intake;
use super::limits::{client_key, RateLimiter};

/// What the handlers share.
pub struct ApiState {
    pub intake: Arc<Intake>,
    pub max_body_bytes: usize,
    limiter: RateLimiter<std::net::IpAddr>,
    request_timeout: std::time::Duration,
}

/// The routes, with every limit but the connection cap (that one is the listener's), and the
/// Stacks event observer's routes (`api::new_block::router`) when there are any: those keep
/// their own body limit and source check, and skip the per-client rate limit.
pub fn router(config: &ApiConfig, intake: Arc<Intake>, observer: Option<Router>) -> Router {
    let state = Arc::new(ApiState {
        intake,
        max_body_bytes: config.max_body_bytes,
        limiter: RateLimiter::new(
            config.rate_per_minute,
            config.rate_burst,
            config.rate_clients,
        ),
        request_timeout: config.request_timeout(),
    });
    let deposits = Router::new()
        .route("/deposit", post(deposit::post_deposit))
        .route("/deposit/{txid}/{vout}", get(deposit::get_deposit))
        .route("/health", get(deposit::health))
        .fallback(deposit::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), limit_request))
        .with_state(state);
    match observer {
        Some(observer) => deposits.merge(observer),
        None => deposits,
    }
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method: POST /deposit, GET /deposit/{txid}/{vout}, GET /health",
    )
    .into_response()
}

/// Rate limit per client address, then the whole request under the timeout.
async fn limit_request(
    State(state): State<Arc<ApiState>>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(wait) = state.limiter.check(&client_key(client.0.ip())) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; wait and try again (see Retry-After)",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
        .into_response();
    }
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request took longer than this signer allows ([api] request_timeout_secs)",
        )
        .into_response(),
    }
}

/// The client's address, as the connection gives it (no proxy headers are trusted).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<IncomingStream<'_, LimitedListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// A TCP listener that holds at most `max` connections: the next accept waits for a slot.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max: usize) -> LimitedListener {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let permit = loop {
            if let Ok(p) = self.slots.clone().acquire_owned().await {
                break p;
            }
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    return (
                        LimitedStream {
                            inner: stream,
                            _slot: permit,
                        },
                        addr,
                    )
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "deposit API: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's slots until it closes.
pub struct LimitedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A running API server.
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("[api] is invalid: {0}")]
    Config(String),
    #[error(
        "cannot listen on [api] listen = {addr}: {source}; is another process using the port?"
    )]
    Bind { addr: SocketAddr, source: io::Error },
}

impl ApiServer {
    /// Binds `config.listen` and serves until [`ApiServer::shutdown`] or drop.
    pub async fn start(
        config: &ApiConfig,
        intake: Arc<Intake>,
        observer: Option<Router>,
    ) -> Result<ApiServer, ApiStartError> {
        config.check().map_err(ApiStartError::Config)?;
        let tcp = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ApiStartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| ApiStartError::Bind {
            addr: config.listen,
            source,
        })?;
        let listener = LimitedListener::new(tcp, config.max_connections);
        let app =
            router(config, intake, observer).into_make_service_with_connect_info::<ClientAddr>();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "deposit API stopped");
            }
        });
        tracing::info!(%local_addr, "deposit API listening");
        Ok(ApiServer {
            local_addr,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
