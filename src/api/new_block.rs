//! The Stacks event observer's HTTP side: `POST /new_block` and the other paths a stacks-node
//! posts to its observers, served on the `[api]` listener when `[stacks]` is configured.
//!
//! The stacks-node retries a delivery until it gets a 2xx, forever, and holds back the next
//! block meanwhile. So a body this signer cannot use gets 200 (with a warning saying what was
//! wrong): retrying would not change it. Only a failure of this signer's own storage gets 500,
//! so the node delivers the block again once the database is back. Bodies above
//! `[stacks] new_block_max_body_bytes` get 413. Only the addresses in
//! `[stacks] event_observer_allow` may post (403 for others): events decide what gets signed.
//! These paths skip the deposit API's per-client rate limit, which a busy node would exceed.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use super::server::ClientAddr;
use crate::chain::stacks::observer::parse_new_block;
use crate::chain::stacks::StacksSettings;
use crate::storage::Storage;

/// The other paths a stacks-node may post to an observer: answered 200, nothing stored.
pub const IGNORED_PATHS: &[&str] = &[
    "/new_burn_block",
    "/new_mempool_tx",
    "/drop_mempool_tx",
    "/new_microblocks",
    "/attachments/new",
    "/stackerdb_chunks",
    "/proposal_response",
    "/mined_block",
    "/mined_microblock",
    "/mined_nakamoto_block",
];

/// What the observer's handlers share.
pub struct ObserverState {
    store: Arc<dyn Storage>,
    registry: String,
    max_body_bytes: usize,
    allow: Vec<IpAddr>,
}

/// The observer's routes, each with its own body limit and source check.
pub fn router(settings: &StacksSettings, store: Arc<dyn Storage>) -> Router {
    let state = Arc::new(ObserverState {
        store,
        registry: settings.registry_identifier(),
        max_body_bytes: settings.new_block_max_body_bytes,
        allow: settings.event_observer_allow.clone(),
    });
    let mut r = Router::new().route("/new_block", post(new_block));
    for path in IGNORED_PATHS {
        r = r.route(path, post(ignored));
    }
    r.layer(DefaultBodyLimit::max(settings.new_block_max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), only_allowed))
        .with_state(state)
}

async fn only_allowed(
    State(state): State<Arc<ObserverState>>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    request: Request,
    next: Next,
) -> Response {
    let ip = client.0.ip();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if !state.allow.contains(&ip) {
        tracing::warn!(
            %ip,
            path = %request.uri().path(),
            "event observer: refused a post from an address not in [stacks] event_observer_allow"
        );
        return (
            StatusCode::FORBIDDEN,
            "this address may not post events to this signer ([stacks] event_observer_allow)",
        )
            .into_response();
    }
    next.run(request).await
}

async fn ignored(body: Result<Bytes, BytesRejection>) -> Response {
    match body {
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

/// `POST /new_block`.
async fn new_block(
    State(state): State<Arc<ObserverState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::warn!(
                limit = state.max_body_bytes,
                "event observer: a /new_block body is larger than [stacks] \
                 new_block_max_body_bytes; raise it, or the node will retry this block forever"
            );
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than this signer accepts ({} bytes, [stacks] \
                     new_block_max_body_bytes)",
                    state.max_body_bytes
                ),
            )
                .into_response();
        }
        Err(e) => {
            tracing::warn!(error = %e.body_text(), "event observer: could not read a /new_block body");
            return StatusCode::OK.into_response();
        }
    };
    let observed = match parse_new_block(&body, &state.registry) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(
                error = %e,
                bytes = body.len(),
                "event observer: ignored a /new_block body it cannot use (answered 200 so the \
                 node moves on); is the node a stacks-node of this network?"
            );
            return StatusCode::OK.into_response();
        }
    };
    for why in &observed.unreadable {
        tracing::warn!(
            block = %observed.block.hash,
            height = observed.block.height,
            "event observer: left out a registry print that does not read: {why}"
        );
    }
    match state
        .store
        .write_stacks_block_events(&observed.block, &observed.events)
        .await
    {
        Ok(()) => {
            tracing::info!(
                block = %observed.block.hash,
                height = observed.block.height,
                anchor = %observed.block.bitcoin_anchor,
                events = observed.events.len(),
                "event observer: stored a Stacks block"
            );
            StatusCode::OK.into_response()
        }
        Err(e) => {
            tracing::error!(
                block = %observed.block.hash,
                error = %e,
                "event observer: could not store a Stacks block; answered 500 so the node \
                 delivers it again"
            );
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "this signer could not store the block; deliver it again",
            )
                .into_response()
        }
    }
}
