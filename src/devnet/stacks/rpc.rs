//! The stacks-node v2 RPC subset over HTTP/1.1, with stacks-node's paths and JSON shapes: node
//! info, accounts, read-only calls, fee estimates, transaction submission, data variables and
//! map entries. Bodies are bounded; bad input gets a 400 that says what was wrong.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::{lock, Shared};
use crate::chain::stacks::address::{Principal, StacksNetwork};
use crate::chain::stacks::clarity::Value;

/// What `/v2/info` reports as `server_version`.
pub const SERVER_VERSION: &str = "stacks-node 3.1.0.0.0 (sbtc-hsm-signer devnet)";
/// stacks-node's `peer_version` for mainnet and testnet.
const PEER_VERSION_MAINNET: u32 = 0x1800_0009;
const PEER_VERSION_TESTNET: u32 = 0xfacade09;

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    max_body_bytes: usize,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let app = Router::new()
        .route("/v2/info", get(info))
        .route("/v2/accounts/{principal}", get(account))
        .route(
            "/v2/contracts/call-read/{address}/{contract}/{function}",
            post(call_read),
        )
        .route("/v2/fees/transaction", post(fee_estimate))
        .route("/v2/transactions", post(submit))
        .route("/v2/data_var/{address}/{contract}/{var}", get(data_var))
        .route("/v2/map_entry/{address}/{contract}/{map}", post(map_entry))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = shutdown.await;
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "stacks node: RPC server stopped");
    }
}

fn json_response(status: StatusCode, body: &Json) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain")],
        message.into(),
    )
        .into_response()
}

fn not_found(message: impl Into<String>) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        message.into(),
    )
        .into_response()
}

fn contract_principal(address: &str, contract: &str) -> Result<Principal, Box<Response>> {
    Principal::from_address(&format!("{address}.{contract}")).map_err(|e| {
        Box::new(bad_request(format!(
            "bad contract identifier {address}.{contract}: {e}"
        )))
    })
}

async fn info(State(shared): State<Arc<Shared>>) -> Response {
    let s = lock(&shared.state);
    let tip = s.tip();
    let (burn_height, burn_hash, _) = s.burn_tip();
    let (network_id, peer_version): (u32, u32) = match s.network {
        StacksNetwork::Mainnet => (1, PEER_VERSION_MAINNET),
        StacksNetwork::Testnet => (0x8000_0000, PEER_VERSION_TESTNET),
    };
    let pox_consensus = hex::encode(tip.consensus_hash);
    let body = json!({
        "peer_version": peer_version,
        "pox_consensus": pox_consensus,
        "burn_block_height": burn_height,
        "burn_block_hash": format!("0x{burn_hash}"),
        "stable_pox_consensus": pox_consensus,
        "stable_burn_block_height": burn_height,
        "server_version": SERVER_VERSION,
        "network_id": network_id,
        "parent_network_id": match s.network {
            StacksNetwork::Mainnet => 0xd9b4_bef9u32,
            StacksNetwork::Testnet => 0x0709_110bu32,
        },
        "stacks_tip_height": tip.height,
        "stacks_tip": hex::encode(tip.block_hash),
        "stacks_tip_consensus_hash": hex::encode(tip.consensus_hash),
        "genesis_chainstate_hash": hex::encode(s.blocks[0].block_hash),
        "unanchored_tip": null,
        "unanchored_seq": null,
        "tenure_height": tip.burn_height,
        "exit_at_block_height": null,
        "is_fully_synced": true,
        "node_public_key": null,
        "node_public_key_hash": null,
        "stackerdbs": [],
    });
    json_response(StatusCode::OK, &body)
}

async fn account(State(shared): State<Arc<Shared>>, Path(principal): Path<String>) -> Response {
    let who = match Principal::from_address(&principal) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("bad principal {principal}: {e}")),
    };
    let a = lock(&shared.state).ledger().account(&who);
    json_response(
        StatusCode::OK,
        &json!({
            "balance": format!("0x{:032x}", a.balance),
            "locked": format!("0x{:032x}", 0u128),
            "unlock_height": 0,
            "nonce": a.nonce,
        }),
    )
}

#[derive(Deserialize)]
struct CallRead {
    sender: String,
    #[serde(default)]
    arguments: Vec<String>,
}

async fn call_read(
    State(shared): State<Arc<Shared>>,
    Path((address, contract, function)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let id = match contract_principal(&address, &contract) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let request: CallRead = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body is not {{\"sender\": \"<address>\", \"arguments\": [\"0x<clarity hex>\", ...]}}: {e}"
            ))
        }
    };
    let sender = match Principal::from_address(&request.sender) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("bad sender {}: {e}", request.sender)),
    };
    let mut args = Vec::with_capacity(request.arguments.len());
    for (i, a) in request.arguments.iter().enumerate() {
        match Value::from_hex(a) {
            Ok(v) => args.push(v),
            Err(e) => return bad_request(format!("argument {i} is not a hex Clarity value: {e}")),
        }
    }
    let answer = lock(&shared.state).call_read_only(&id, &function, &args, sender);
    let body = match answer {
        Ok(v) => json!({ "okay": true, "result": v.to_hex() }),
        Err(cause) => json!({ "okay": false, "cause": cause }),
    };
    json_response(StatusCode::OK, &body)
}

#[derive(Deserialize)]
struct FeeRequest {
    transaction_payload: String,
    estimated_len: Option<u64>,
}

async fn fee_estimate(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: FeeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body is not {{\"transaction_payload\": \"<hex>\", \"estimated_len\": n}}: {e}"
            ))
        }
    };
    let payload = request
        .transaction_payload
        .strip_prefix("0x")
        .unwrap_or(&request.transaction_payload);
    let payload = match hex::decode(payload) {
        Ok(p) if !p.is_empty() => p,
        _ => return bad_request("transaction_payload is not a hex-encoded transaction payload"),
    };
    let len = request.estimated_len.unwrap_or(0).max(payload.len() as u64);
    let min = lock(&shared.state).min_fee_per_byte;
    let estimations: Vec<Json> = shared
        .fee_rates
        .iter()
        .map(|rate| {
            let rate = (*rate).max(min);
            json!({ "fee_rate": rate as f64, "fee": rate.saturating_mul(len) })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "estimated_cost": {
                "write_length": 0,
                "write_count": 0,
                "read_length": 0,
                "read_count": 0,
                "runtime": len,
            },
            "estimated_cost_scalar": len,
            "cost_scalar_change_by_byte": 0.0,
            "estimations": estimations,
        }),
    )
}

#[derive(Deserialize)]
struct JsonTx {
    tx: String,
}

async fn submit(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let raw = if is_json {
        // @stacks/transactions sends `{"tx": "<hex>"}`.
        let parsed: Result<JsonTx, _> = serde_json::from_slice(&body);
        match parsed
            .ok()
            .and_then(|t| hex::decode(t.tx.strip_prefix("0x").unwrap_or(&t.tx)).ok())
        {
            Some(raw) => raw,
            None => return bad_request("the JSON body is not {\"tx\": \"<hex transaction>\"}"),
        }
    } else {
        body.to_vec()
    };
    let outcome = lock(&shared.state).submit(&raw);
    match outcome {
        Ok(txid) => {
            tracing::debug!(txid = %hex::encode(txid), "stacks node: transaction accepted");
            json_response(StatusCode::OK, &Json::String(hex::encode(txid)))
        }
        Err(rejection) => {
            tracing::debug!(reason = %rejection, "stacks node: transaction rejected");
            json_response(StatusCode::BAD_REQUEST, &rejection.to_json())
        }
    }
}

async fn data_var(
    State(shared): State<Arc<Shared>>,
    Path((address, contract, var)): Path<(String, String, String)>,
) -> Response {
    let id = match contract_principal(&address, &contract) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let s = lock(&shared.state);
    let sbtc = &s.ledger().sbtc;
    if id != sbtc.contract(&contract) {
        return not_found(format!("no data variable {var} in {id}"));
    }
    match sbtc.data_var(&contract, &var) {
        Some(v) => json_response(StatusCode::OK, &json!({ "data": v.to_hex() })),
        None => not_found(format!("no data variable {var} in {id}")),
    }
}

async fn map_entry(
    State(shared): State<Arc<Shared>>,
    Path((address, contract, map)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let id = match contract_principal(&address, &contract) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let key = match serde_json::from_slice::<String>(&body)
        .map_err(|e| e.to_string())
        .and_then(|h| Value::from_hex(&h).map_err(|e| e.to_string()))
    {
        Ok(k) => k,
        Err(e) => {
            return bad_request(format!(
                "the body must be a JSON string holding the key's Clarity hex: {e}"
            ))
        }
    };
    let s = lock(&shared.state);
    let sbtc = &s.ledger().sbtc;
    if id != sbtc.contract(&contract) {
        return not_found(format!("no map {map} in {id}"));
    }
    match sbtc.map_entry(&contract, &map, &key) {
        Ok(entry) => {
            let data = entry.map(Value::some).unwrap_or(Value::None);
            json_response(StatusCode::OK, &json!({ "data": data.to_hex() }))
        }
        Err(super::contracts::MapError::NoSuchMap) => not_found(format!("no map {map} in {id}")),
        Err(super::contracts::MapError::BadKey(want)) => {
            bad_request(format!("the key of {map} is a {want}, not {key}"))
        }
    }
}
