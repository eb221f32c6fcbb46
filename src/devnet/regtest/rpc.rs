//! bitcoind's JSON-RPC over HTTP/1.1: POST `/` (and `/wallet/<name>`), JSON-RPC 1.0 and 2.0
//! requests and batches, HTTP Basic auth against a user/password and/or the cookie, 401 with no
//! body on wrong credentials (after a short pause, as bitcoind), bounded bodies. Every method
//! answers with bitcoind's field names, error codes and messages.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use bitcoin::consensus::encode::{deserialize, serialize_hex};
use bitcoin::{Amount, Block, BlockHash, FeeRate, OutPoint, Transaction, Txid};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::json;
use super::mempool::{Accepted, MAX_DESCENDANTS};
use super::verify::Reject;
use super::wallet::AddressKind;
use super::{
    lock, parse_address, NodeState, DEFAULT_MAX_FEE_RATE, INCREMENTAL_RELAY_FEE, MIN_RELAY_FEE,
};
use crate::chain::bitcoin::client::{
    RPC_DESERIALIZATION_ERROR, RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER,
    RPC_METHOD_NOT_FOUND, RPC_MISC_ERROR, RPC_TYPE_ERROR, RPC_VERIFY_ERROR,
};

/// JSON-RPC's own error codes.
pub const RPC_INVALID_REQUEST: i64 = -32600;
pub const RPC_PARSE_ERROR: i64 = -32700;

/// The version `getnetworkinfo` reports: bitcoind v28.0.0.
pub const NODE_VERSION: u64 = 280_000;
pub const SUBVERSION: &str = "/Satoshi:28.0.0(sbtc-regtest)/";
/// The devnet-only method that sets what `estimatesmartfee` answers.
pub const SET_FEE_RATE_METHOD: &str = "devnetsetfeerate";

/// An RPC error as bitcoind sends it: `{"code": ..., "message": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl From<Reject> for RpcError {
    fn from(r: Reject) -> RpcError {
        let message = if r.reason == "max-fee-exceeded" {
            "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)".to_string()
        } else {
            r.message()
        };
        RpcError::new(r.code, message)
    }
}

struct Server {
    state: Arc<Mutex<NodeState>>,
    /// SHA-256 of each accepted `user:password`, compared in constant time.
    credentials: Vec<[u8; 32]>,
}

/// Serves RPC on `listener` until `shutdown` fires.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<NodeState>>,
    credentials: Vec<String>,
    max_body_bytes: usize,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let server = Arc::new(Server {
        state,
        credentials: credentials
            .iter()
            .map(|c| Sha256::digest(c.as_bytes()).into())
            .collect(),
    });
    let app = Router::new()
        .route("/", post(handle))
        .route("/wallet/{name}", post(handle))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(server);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = shutdown.await;
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "regtest node: RPC server stopped");
    }
}

impl Server {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&decoded).into();
        let mut ok = false;
        for c in &self.credentials {
            // Constant time over the digests.
            let diff = c
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            ok |= diff == 0;
        }
        ok
    }
}

async fn handle(State(server): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    if !server.authorized(&headers) {
        // bitcoind pauses 250 ms on a wrong password to slow down guessing.
        tokio::time::sleep(Duration::from_millis(250)).await;
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")],
        )
            .into_response();
    }
    let state = server.state.clone();
    let answer = tokio::task::spawn_blocking(move || process(&state, &body)).await;
    match answer {
        Ok((status, Some(value))) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            to_json_text(&value),
        )
            .into_response(),
        Ok((status, None)) => status.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "regtest node: RPC handler failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Writes amounts as bitcoind does: a number with 8 decimals (`0.00001000`, not `1e-5`); other
/// numbers (difficulty) in the shortest form.
struct BitcoindFormatter;

impl serde_json::ser::Formatter for BitcoindFormatter {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        let sats = (value * 1e8).round();
        if value.is_finite()
            && value.abs() < 1e15
            && (sats / 1e8 - value).abs() <= f64::EPSILON * value.abs()
        {
            write!(writer, "{value:.8}")
        } else {
            serde_json::ser::CompactFormatter.write_f64(writer, value)
        }
    }
}

fn to_json_text(value: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, BitcoindFormatter);
    if value.serialize(&mut ser).is_err() {
        return "null\n".to_string();
    }
    out.push(b'\n');
    String::from_utf8(out).unwrap_or_default()
}

/// One HTTP body: a request or a batch. Returns the HTTP status and the body (None: no body).
fn process(state: &Mutex<NodeState>, body: &[u8]) -> (StatusCode, Option<Value>) {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            let reply = json!({"result": null, "error": {"code": RPC_PARSE_ERROR, "message": "Parse error"}, "id": null});
            return (StatusCode::INTERNAL_SERVER_ERROR, Some(reply));
        }
    };
    match request {
        Value::Array(batch) => {
            let replies: Vec<Value> = batch.iter().filter_map(|r| single(state, r).1).collect();
            (StatusCode::OK, Some(Value::Array(replies)))
        }
        Value::Object(_) => {
            let (status, reply) = single(state, &request);
            match reply {
                Some(r) => (status, Some(r)),
                None => (StatusCode::NO_CONTENT, None),
            }
        }
        _ => {
            let reply = json!({"result": null, "error": {"code": RPC_PARSE_ERROR, "message": "Top-level object parse error"}, "id": null});
            (StatusCode::INTERNAL_SERVER_ERROR, Some(reply))
        }
    }
}

/// One JSON-RPC request. JSON-RPC 2.0: always HTTP 200, no reply to a notification (no id);
/// 1.0 (or no version): `result` and `error` both present, and errors with bitcoind's legacy
/// HTTP statuses (400 invalid request, 404 method not found, 500 otherwise).
fn single(state: &Mutex<NodeState>, request: &Value) -> (StatusCode, Option<Value>) {
    let Some(obj) = request.as_object() else {
        let e = RpcError::new(RPC_INVALID_REQUEST, "Invalid Request object");
        return (
            StatusCode::BAD_REQUEST,
            Some(legacy_reply(Value::Null, Err(e))),
        );
    };
    let id = obj.get("id").cloned();
    let v2 = match obj.get("jsonrpc") {
        None => false,
        Some(Value::String(s)) if s == "1.0" => false,
        Some(Value::String(s)) if s == "2.0" => true,
        Some(_) => {
            let e = RpcError::new(RPC_INVALID_REQUEST, "JSON-RPC version not supported");
            return (
                StatusCode::BAD_REQUEST,
                Some(legacy_reply(id.unwrap_or(Value::Null), Err(e))),
            );
        }
    };
    let result = match (obj.get("method"), obj.get("params")) {
        (
            Some(Value::String(method)),
            params @ (None | Some(Value::Null | Value::Array(_) | Value::Object(_))),
        ) => call(state, method, params.cloned().unwrap_or(Value::Null)),
        (Some(Value::String(_)), Some(_)) => Err(RpcError::new(
            RPC_INVALID_REQUEST,
            "Params must be an array or object",
        )),
        (None, _) => Err(RpcError::new(RPC_INVALID_REQUEST, "Missing method")),
        (Some(_), _) => Err(RpcError::new(
            RPC_INVALID_REQUEST,
            "Method must be a string",
        )),
    };
    if v2 {
        let Some(id) = id else {
            return (StatusCode::NO_CONTENT, None);
        };
        let reply = match result {
            Ok(r) => json!({"jsonrpc": "2.0", "result": r, "id": id}),
            Err(e) => {
                json!({"jsonrpc": "2.0", "error": {"code": e.code, "message": e.message}, "id": id})
            }
        };
        return (StatusCode::OK, Some(reply));
    }
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) if e.code == RPC_INVALID_REQUEST => StatusCode::BAD_REQUEST,
        Err(e) if e.code == RPC_METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        Some(legacy_reply(id.unwrap_or(Value::Null), result)),
    )
}

fn legacy_reply(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(r) => json!({"result": r, "error": null, "id": id}),
        Err(e) => {
            json!({"result": null, "error": {"code": e.code, "message": e.message}, "id": id})
        }
    }
}

/// Parameter names per method, so named parameters work as in bitcoind.
fn param_names(method: &str) -> Option<&'static [&'static str]> {
    Some(match method {
        "getbestblockhash" | "getblockcount" | "getblockchaininfo" | "getnetworkinfo"
        | "getmempoolinfo" => &[],
        "getblockhash" => &["height"],
        "getblockheader" => &["blockhash", "verbose"],
        "getblock" => &["blockhash", "verbosity"],
        "getrawtransaction" => &["txid", "verbose", "blockhash"],
        "gettxout" => &["txid", "n", "include_mempool"],
        "estimatesmartfee" => &["conf_target", "estimate_mode"],
        "gettxspendingprevout" => &["outputs"],
        "getmempoolentry" => &["txid"],
        "getmempooldescendants" | "getmempoolancestors" => &["txid", "verbose"],
        "getrawmempool" => &["verbose", "mempool_sequence"],
        "sendrawtransaction" => &["hexstring", "maxfeerate", "maxburnamount"],
        "testmempoolaccept" => &["rawtxs", "maxfeerate"],
        "generatetoaddress" => &["nblocks", "address", "maxtries"],
        "generateblock" => &["output", "transactions", "submit"],
        "submitblock" => &["hexdata", "dummy"],
        "invalidateblock" | "reconsiderblock" => &["blockhash"],
        "getnewaddress" => &["label", "address_type"],
        "sendtoaddress" => &[
            "address",
            "amount",
            "comment",
            "comment_to",
            "subtractfeefromamount",
            "replaceable",
            "conf_target",
            "estimate_mode",
            "avoid_reuse",
            "fee_rate",
            "verbose",
        ],
        "sendmany" => &[
            "dummy",
            "amounts",
            "minconf",
            "comment",
            "subtractfeefrom",
            "replaceable",
            "conf_target",
            "estimate_mode",
            "fee_rate",
            "verbose",
        ],
        "listunspent" => &[
            "minconf",
            "maxconf",
            "addresses",
            "include_unsafe",
            "query_options",
        ],
        "getbalance" => &["dummy", "minconf", "include_watchonly", "avoid_reuse"],
        SET_FEE_RATE_METHOD => &["feerate"],
        _ => return None,
    })
}

/// A request's parameters by position.
struct Params {
    method: String,
    values: Vec<Value>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(v: &Value, expected: &str) -> RpcError {
    RpcError::new(
        RPC_TYPE_ERROR,
        format!(
            "JSON value of type {} is not of expected type {expected}",
            type_name(v)
        ),
    )
}

impl Params {
    fn new(method: &str, names: &[&str], params: Value) -> Result<Params, RpcError> {
        let values = match params {
            Value::Null => vec![],
            Value::Array(a) => a,
            Value::Object(o) => {
                let mut values = vec![Value::Null; names.len()];
                for (k, v) in o {
                    let Some(i) = names.iter().position(|n| *n == k) else {
                        return Err(RpcError::new(
                            RPC_INVALID_PARAMETER,
                            format!("Unknown named parameter {k}"),
                        ));
                    };
                    values[i] = v;
                }
                while values.last() == Some(&Value::Null) {
                    values.pop();
                }
                values
            }
            _ => unreachable!("checked by the caller"),
        };
        if values.len() > names.len() {
            return Err(RpcError::new(
                RPC_MISC_ERROR,
                format!(
                    "{method}: too many parameters ({} > {})",
                    values.len(),
                    names.len()
                ),
            ));
        }
        Ok(Params {
            method: method.to_string(),
            values,
        })
    }

    fn get(&self, i: usize) -> Option<&Value> {
        self.values.get(i).filter(|v| !v.is_null())
    }

    fn required(&self, i: usize, name: &str) -> Result<&Value, RpcError> {
        self.get(i).ok_or_else(|| {
            RpcError::new(
                RPC_MISC_ERROR,
                format!("{}: missing required argument '{name}'", self.method),
            )
        })
    }

    fn str(&self, i: usize, name: &str) -> Result<&str, RpcError> {
        let v = self.required(i, name)?;
        v.as_str().ok_or_else(|| type_error(v, "string"))
    }

    fn opt_str(&self, i: usize) -> Result<Option<&str>, RpcError> {
        match self.get(i) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| type_error(v, "string")),
        }
    }

    fn int(&self, i: usize, name: &str) -> Result<i64, RpcError> {
        let v = self.required(i, name)?;
        v.as_i64().ok_or_else(|| type_error(v, "number"))
    }

    fn opt_int(&self, i: usize, default: i64) -> Result<i64, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| type_error(v, "number")),
        }
    }

    fn opt_bool(&self, i: usize, default: bool) -> Result<bool, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| type_error(v, "bool")),
        }
    }

    /// A verbosity given as a number or a bool (bitcoind accepts both).
    fn verbosity(&self, i: usize, default: i64) -> Result<i64, RpcError> {
        match self.get(i) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(i64::from(*b)),
            Some(v) => v.as_i64().ok_or_else(|| type_error(v, "number")),
        }
    }

    fn hash<T: FromStr>(&self, i: usize, name: &str) -> Result<T, RpcError> {
        let s = self.str(i, name)?;
        parse_hash(s, name)
    }
}

fn parse_hash<T: FromStr>(s: &str, name: &str) -> Result<T, RpcError> {
    if s.len() != 64 {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
        ));
    }
    s.parse::<T>().map_err(|_| {
        RpcError::new(
            RPC_INVALID_PARAMETER,
            format!("{name} must be hexadecimal string (not '{s}')"),
        )
    })
}

/// bitcoind's `AmountFromValue`: BTC as a number or a string, 8 decimals at most.
fn amount_from_value(v: &Value) -> Result<Amount, RpcError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(type_error(other, "number")),
    };
    if text.starts_with('-') {
        return Err(RpcError::new(RPC_TYPE_ERROR, "Amount out of range"));
    }
    let value: f64 = text
        .parse()
        .map_err(|_| RpcError::new(RPC_TYPE_ERROR, "Invalid amount"))?;
    Amount::from_btc(value).map_err(|_| RpcError::new(RPC_TYPE_ERROR, "Invalid amount"))
}

/// A fee rate given in BTC/kvB.
fn rate_from_value(v: &Value) -> Result<FeeRate, RpcError> {
    let sat_per_kvb = amount_from_value(v)?.to_sat();
    Ok(FeeRate::from_sat_per_kwu(sat_per_kvb / 4))
}

/// A fee rate as bitcoind reports it: BTC/kvB.
fn rate_btc_kvb(rate: FeeRate) -> Value {
    json!(Amount::from_sat(rate.to_sat_per_kwu() * 4).to_btc())
}

fn decode_tx(hex_str: &str) -> Option<Transaction> {
    let bytes = hex::decode(hex_str).ok()?;
    deserialize::<Transaction>(&bytes).ok()
}

fn block_not_found() -> RpcError {
    RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
}

fn not_in_mempool() -> RpcError {
    RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
}

/// `maxfeerate`: BTC/kvB, 0 for no limit, bitcoind's default 0.10.
fn max_fee_rate(p: &Params, i: usize) -> Result<Option<FeeRate>, RpcError> {
    match p.get(i) {
        None => Ok(Some(DEFAULT_MAX_FEE_RATE)),
        Some(v) => {
            let rate = rate_from_value(v)?;
            Ok((rate != FeeRate::ZERO).then_some(rate))
        }
    }
}

/// Runs one method.
pub fn call(state: &Mutex<NodeState>, method: &str, params: Value) -> Result<Value, RpcError> {
    let Some(names) = param_names(method) else {
        return Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found"));
    };
    let p = Params::new(method, names, params)?;
    let mut s = lock(state);
    let s = &mut *s;
    match method {
        "getbestblockhash" => Ok(json!(s.chain.tip_hash().to_string())),
        "getblockcount" => Ok(json!(s.chain.tip_height())),
        "getblockhash" => {
            let height = p.int(0, "height")?;
            let hash = u32::try_from(height)
                .ok()
                .and_then(|h| s.chain.hash_at(h))
                .ok_or_else(|| RpcError::new(RPC_INVALID_PARAMETER, "Block height out of range"))?;
            Ok(json!(hash.to_string()))
        }
        "getblockheader" => {
            let hash: BlockHash = p.hash(0, "hash")?;
            let verbose = p.opt_bool(1, true)?;
            let r = s.chain.record(&hash).ok_or_else(block_not_found)?;
            if verbose {
                Ok(Value::Object(json::header(&s.chain, r)))
            } else {
                Ok(json!(serialize_hex(&r.block.header)))
            }
        }
        "getblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            let verbosity = p.verbosity(1, 1)?;
            let r = s.chain.record(&hash).ok_or_else(block_not_found)?;
            match verbosity {
                0 => Ok(json!(serialize_hex(&r.block))),
                1..=3 => Ok(json::block(&s.chain, r, verbosity as u8)),
                _ => Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    "Verbosity must be in range 0..3",
                )),
            }
        }
        "getrawtransaction" => get_raw_transaction(s, &p),
        "gettxout" => {
            let txid: Txid = p.hash(0, "txid")?;
            let n = p.int(1, "n")?;
            let include_mempool = p.opt_bool(2, true)?;
            let Ok(vout) = u32::try_from(n) else {
                return Ok(Value::Null);
            };
            let op = OutPoint::new(txid, vout);
            let best = s.chain.tip_hash().to_string();
            let (output, confirmations, coinbase) = if include_mempool {
                if s.mempool.spender(&op).is_some() {
                    return Ok(Value::Null);
                }
                if let Some(out) = s.mempool.output(&op) {
                    (out.clone(), 0, false)
                } else if let Some(c) = s.chain.utxo(&op) {
                    (
                        c.output.clone(),
                        s.chain.tip_height() - c.height + 1,
                        c.coinbase,
                    )
                } else {
                    return Ok(Value::Null);
                }
            } else if let Some(c) = s.chain.utxo(&op) {
                (
                    c.output.clone(),
                    s.chain.tip_height() - c.height + 1,
                    c.coinbase,
                )
            } else {
                return Ok(Value::Null);
            };
            Ok(json!({
                "bestblock": best,
                "confirmations": confirmations,
                "value": json::btc(output.value),
                "scriptPubKey": json::script_pubkey(&output.script_pubkey),
                "coinbase": coinbase,
            }))
        }
        "estimatesmartfee" => {
            let target = p.int(0, "conf_target")?;
            if !(1..=1008).contains(&target) {
                return Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    "Invalid conf_target, must be between 1 and 1008",
                ));
            }
            if let Some(mode) = p.opt_str(1)? {
                if !["unset", "economical", "conservative"]
                    .contains(&mode.to_ascii_lowercase().as_str())
                {
                    return Err(RpcError::new(
                        RPC_INVALID_PARAMETER,
                        "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"",
                    ));
                }
            }
            match s.fee_rate {
                Some(rate) => Ok(
                    json!({"feerate": rate_btc_kvb(rate.max(MIN_RELAY_FEE)), "blocks": target.max(2)}),
                ),
                None => {
                    Ok(json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0}))
                }
            }
        }
        SET_FEE_RATE_METHOD => {
            s.fee_rate = match p.get(0) {
                None => None,
                Some(v) => Some(rate_from_value(v)?),
            };
            Ok(Value::Null)
        }
        "gettxspendingprevout" => {
            let outputs = p.required(0, "outputs")?;
            let outputs = outputs
                .as_array()
                .ok_or_else(|| type_error(outputs, "array"))?;
            if outputs.is_empty() {
                return Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    "Invalid parameter, outputs are missing",
                ));
            }
            let mut result = Vec::with_capacity(outputs.len());
            for o in outputs {
                let txid = o.get("txid").and_then(|t| t.as_str()).ok_or_else(|| {
                    RpcError::new(RPC_INVALID_PARAMETER, "Invalid parameter, missing txid key")
                })?;
                let txid: Txid = parse_hash(txid, "txid")?;
                let vout = o.get("vout").and_then(|v| v.as_i64()).ok_or_else(|| {
                    RpcError::new(RPC_INVALID_PARAMETER, "Invalid parameter, missing vout key")
                })?;
                let vout = u32::try_from(vout).map_err(|_| {
                    RpcError::new(
                        RPC_INVALID_PARAMETER,
                        "Invalid parameter, vout cannot be negative",
                    )
                })?;
                let mut entry = json!({"txid": txid.to_string(), "vout": vout});
                if let Some(spender) = s.mempool.spender(&OutPoint::new(txid, vout)) {
                    entry["spendingtxid"] = json!(spender.to_string());
                }
                result.push(entry);
            }
            Ok(Value::Array(result))
        }
        "getmempoolentry" => {
            let txid: Txid = p.hash(0, "txid")?;
            let e = s.mempool.get(&txid).ok_or_else(not_in_mempool)?;
            Ok(json::mempool_entry(&s.mempool, e))
        }
        "getmempooldescendants" | "getmempoolancestors" => {
            let txid: Txid = p.hash(0, "txid")?;
            let verbose = p.opt_bool(1, false)?;
            let e = s.mempool.get(&txid).ok_or_else(not_in_mempool)?;
            let set = if method == "getmempooldescendants" {
                s.mempool.descendants_of(&txid)
            } else {
                s.mempool.ancestors_of(&e.tx)
            };
            let mut txids: Vec<Txid> = set.into_iter().collect();
            txids.sort();
            if verbose {
                let mut m = Map::new();
                for t in txids {
                    m.insert(
                        t.to_string(),
                        json::mempool_entry(
                            &s.mempool,
                            s.mempool.get(&t).expect("a descendant is in the mempool"),
                        ),
                    );
                }
                Ok(Value::Object(m))
            } else {
                Ok(json!(txids
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()))
            }
        }
        "getrawmempool" => {
            let verbose = p.opt_bool(0, false)?;
            let entries = s.mempool.entries();
            if verbose {
                let mut m = Map::new();
                for e in entries {
                    m.insert(e.txid.to_string(), json::mempool_entry(&s.mempool, e));
                }
                Ok(Value::Object(m))
            } else {
                Ok(json!(entries
                    .iter()
                    .map(|e| e.txid.to_string())
                    .collect::<Vec<_>>()))
            }
        }
        "getmempoolinfo" => {
            let entries = s.mempool.entries();
            let bytes: u64 = entries.iter().map(|e| e.vsize).sum();
            let fees: Amount = entries.iter().map(|e| e.fee).sum();
            Ok(json!({
                "loaded": true,
                "size": entries.len(),
                "bytes": bytes,
                "usage": bytes * 4,
                "total_fee": json::btc(fees),
                "maxmempool": 300_000_000u64,
                "mempoolminfee": rate_btc_kvb(MIN_RELAY_FEE),
                "minrelaytxfee": rate_btc_kvb(MIN_RELAY_FEE),
                "incrementalrelayfee": rate_btc_kvb(INCREMENTAL_RELAY_FEE),
                "unbroadcastcount": 0,
                "fullrbf": s.full_rbf,
            }))
        }
        "sendrawtransaction" => {
            let hex_str = p.str(0, "hexstring")?;
            let tx = decode_tx(hex_str).ok_or_else(|| {
                RpcError::new(
                    RPC_DESERIALIZATION_ERROR,
                    "TX decode failed. Make sure the tx has at least one input.",
                )
            })?;
            let max_rate = max_fee_rate(&p, 1)?;
            let max_burn = match p.get(2) {
                None => Amount::ZERO,
                Some(v) => amount_from_value(v)?,
            };
            if tx
                .output
                .iter()
                .any(|o| o.script_pubkey.is_op_return() && o.value > max_burn)
            {
                return Err(RpcError::new(
                    RPC_VERIFY_ERROR,
                    "Unspendable output exceeds maximum configured by user (maxburnamount)",
                ));
            }
            let txid = s.submit(&tx, max_rate)?;
            Ok(json!(txid.to_string()))
        }
        "testmempoolaccept" => {
            let raw = p.required(0, "rawtxs")?;
            let raw = raw.as_array().ok_or_else(|| type_error(raw, "array"))?;
            if raw.is_empty() || raw.len() > MAX_DESCENDANTS {
                return Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    format!("Array must contain between 1 and {MAX_DESCENDANTS} transactions."),
                ));
            }
            let max_rate = max_fee_rate(&p, 1)?;
            let mut txs = Vec::with_capacity(raw.len());
            for r in raw {
                let hex_str = r.as_str().ok_or_else(|| type_error(r, "string"))?;
                let tx = decode_tx(hex_str).ok_or_else(|| {
                    RpcError::new(
                        RPC_DESERIALIZATION_ERROR,
                        format!(
                            "TX decode failed: {hex_str} Make sure the tx has at least one input."
                        ),
                    )
                })?;
                txs.push(tx);
            }
            let results = if txs.len() == 1 {
                vec![s.test_accept(&txs[0], max_rate)]
            } else {
                s.test_accept_package(&txs, max_rate)
            };
            Ok(Value::Array(
                txs.iter()
                    .zip(results)
                    .map(|(tx, r)| accept_json(tx, r))
                    .collect(),
            ))
        }
        "getblockchaininfo" => {
            let tip = s.chain.tip();
            Ok(json!({
                "chain": "regtest",
                "blocks": tip.height,
                "headers": tip.height,
                "bestblockhash": tip.hash.to_string(),
                "difficulty": tip.block.header.difficulty_float(),
                "time": tip.block.header.time,
                "mediantime": s.chain.mtp(tip.height),
                "verificationprogress": 1.0,
                "initialblockdownload": false,
                "chainwork": format!("{:064x}", 2 * (u128::from(tip.height) + 1)),
                "size_on_disk": 0,
                "pruned": false,
                "warnings": [],
            }))
        }
        "getnetworkinfo" => Ok(json!({
            "version": NODE_VERSION,
            "subversion": SUBVERSION,
            "protocolversion": 70016,
            "localservices": "0000000000000c09",
            "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
            "localrelay": true,
            "timeoffset": 0,
            "networkactive": true,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": rate_btc_kvb(MIN_RELAY_FEE),
            "incrementalfee": rate_btc_kvb(INCREMENTAL_RELAY_FEE),
            "localaddresses": [],
            "warnings": [],
        })),
        "generatetoaddress" => {
            let n = p.int(0, "nblocks")?;
            let address = p.str(1, "address")?;
            let address = parse_address(address).ok_or_else(|| {
                RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address")
            })?;
            let n = u32::try_from(n)
                .ok()
                .filter(|n| *n <= 100_000)
                .ok_or_else(|| {
                    RpcError::new(
                        RPC_INVALID_PARAMETER,
                        "nblocks must be between 0 and 100000",
                    )
                })?;
            let hashes = s.mine(n, &address.script_pubkey());
            Ok(json!(hashes
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()))
        }
        "generateblock" => {
            let output = p.str(0, "output")?;
            let address = parse_address(output).ok_or_else(|| {
                RpcError::new(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    "Error: Invalid address or descriptor",
                )
            })?;
            let list = p.required(1, "transactions")?;
            let list = list.as_array().ok_or_else(|| type_error(list, "array"))?;
            let submit = p.opt_bool(2, true)?;
            let mut txs = Vec::with_capacity(list.len());
            for item in list {
                let text = item.as_str().ok_or_else(|| type_error(item, "string"))?;
                if let Ok(txid) = Txid::from_str(text) {
                    let e = s.mempool.get(&txid).ok_or_else(|| {
                        RpcError::new(
                            RPC_INVALID_ADDRESS_OR_KEY,
                            format!("Transaction {txid} not in mempool."),
                        )
                    })?;
                    txs.push(e.tx.clone());
                } else {
                    let tx = decode_tx(text).ok_or_else(|| {
                        RpcError::new(
                            RPC_DESERIALIZATION_ERROR,
                            format!("Transaction decode failed for {text}"),
                        )
                    })?;
                    txs.push(tx);
                }
            }
            let script = address.script_pubkey();
            if !submit {
                let block: Block = s.build_block(&script, txs);
                return Ok(
                    json!({"hash": block.block_hash().to_string(), "hex": serialize_hex(&block)}),
                );
            }
            let hash = s.generate_block(&script, txs).map_err(|e| {
                RpcError::new(RPC_VERIFY_ERROR, format!("TestBlockValidity failed: {e}"))
            })?;
            Ok(json!({"hash": hash.to_string()}))
        }
        "submitblock" => {
            let hex_str = p.str(0, "hexdata")?;
            let block: Block = hex::decode(hex_str)
                .ok()
                .and_then(|b| deserialize(&b).ok())
                .ok_or_else(|| RpcError::new(RPC_DESERIALIZATION_ERROR, "Block decode failed"))?;
            match s.add_block(block) {
                Ok(_) => Ok(Value::Null),
                Err(e) => Ok(json!(e.0.split(',').next().unwrap_or(&e.0).to_string())),
            }
        }
        "invalidateblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            s.invalidate(&hash)?;
            Ok(Value::Null)
        }
        "reconsiderblock" => {
            let hash: BlockHash = p.hash(0, "blockhash")?;
            s.reconsider(&hash)?;
            Ok(Value::Null)
        }
        "getnewaddress" => {
            let _label = p.opt_str(0)?;
            let kind = match p.opt_str(1)? {
                None => AddressKind::P2wpkh,
                Some(name) => AddressKind::parse(name).ok_or_else(|| {
                    RpcError::new(
                        RPC_INVALID_ADDRESS_OR_KEY,
                        format!("Unknown address type '{name}' (this regtest wallet makes bech32 and bech32m)"),
                    )
                })?,
            };
            Ok(json!(s.wallet.new_address(kind).to_string()))
        }
        "sendtoaddress" => {
            let address = p.str(0, "address")?;
            let address = parse_address(address).ok_or_else(|| {
                RpcError::new(
                    RPC_INVALID_ADDRESS_OR_KEY,
                    format!("Invalid Bitcoin address: {address}"),
                )
            })?;
            let amount = amount_from_value(p.required(1, "amount")?)?;
            if amount == Amount::ZERO {
                return Err(RpcError::new(RPC_TYPE_ERROR, "Invalid amount for send"));
            }
            if p.opt_bool(4, false)? {
                return Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    "subtractfeefromamount is not supported by the regtest wallet",
                ));
            }
            let fee_rate = wallet_fee_rate(&p, 9)?;
            let txid = s.send_to_script(&address.script_pubkey(), amount, fee_rate)?;
            Ok(json!(txid.to_string()))
        }
        "sendmany" => {
            if p.opt_str(0)?.is_some_and(|d| !d.is_empty()) {
                return Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    "Dummy value must be set to \"\"",
                ));
            }
            let amounts = p.required(1, "amounts")?;
            let amounts = amounts
                .as_object()
                .ok_or_else(|| type_error(amounts, "object"))?;
            if p.get(4)
                .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
            {
                return Err(RpcError::new(
                    RPC_INVALID_PARAMETER,
                    "subtractfeefrom is not supported by the regtest wallet",
                ));
            }
            let mut payments = Vec::with_capacity(amounts.len());
            for (text, value) in amounts {
                let address = parse_address(text).ok_or_else(|| {
                    RpcError::new(
                        RPC_INVALID_ADDRESS_OR_KEY,
                        format!("Invalid Bitcoin address: {text}"),
                    )
                })?;
                let amount = amount_from_value(value)?;
                if amount == Amount::ZERO {
                    return Err(RpcError::new(RPC_TYPE_ERROR, "Invalid amount for send"));
                }
                let script = address.script_pubkey();
                if payments.iter().any(|(s, _)| *s == script) {
                    return Err(RpcError::new(
                        RPC_INVALID_PARAMETER,
                        format!("Invalid parameter, duplicated address: {text}"),
                    ));
                }
                payments.push((script, amount));
            }
            let fee_rate = wallet_fee_rate(&p, 8)?;
            let txid = s.send_outputs(&payments, fee_rate)?;
            Ok(json!(txid.to_string()))
        }
        "listunspent" => {
            let minconf = p.opt_int(0, 1)?.max(0) as u32;
            let maxconf = p.opt_int(1, 9_999_999)?.max(0) as u32;
            let filter: Option<Vec<bitcoin::ScriptBuf>> = match p.get(2) {
                None => None,
                Some(v) => {
                    let list = v.as_array().ok_or_else(|| type_error(v, "array"))?;
                    let mut scripts = Vec::new();
                    for a in list {
                        let text = a.as_str().ok_or_else(|| type_error(a, "string"))?;
                        let addr = parse_address(text).ok_or_else(|| {
                            RpcError::new(
                                RPC_INVALID_ADDRESS_OR_KEY,
                                format!("Invalid Bitcoin address: {text}"),
                            )
                        })?;
                        scripts.push(addr.script_pubkey());
                    }
                    Some(scripts)
                }
            };
            let coins = s.wallet_coins(minconf);
            let list: Vec<Value> = coins
                .into_iter()
                .filter(|c| c.confirmations <= maxconf)
                .filter(|c| {
                    filter
                        .as_ref()
                        .is_none_or(|f| f.contains(&c.coin.output.script_pubkey))
                })
                .map(|c| {
                    let spk = &c.coin.output.script_pubkey;
                    let mut m = json!({
                        "txid": c.outpoint.txid.to_string(),
                        "vout": c.outpoint.vout,
                        "scriptPubKey": hex::encode(spk.as_bytes()),
                        "amount": json::btc(c.coin.output.value),
                        "confirmations": c.confirmations,
                        "spendable": true,
                        "solvable": true,
                        "safe": c.safe,
                    });
                    if let Ok(a) = bitcoin::Address::from_script(spk, bitcoin::Network::Regtest) {
                        m["address"] = json!(a.to_string());
                        m["label"] = json!("");
                    }
                    m
                })
                .collect();
            Ok(Value::Array(list))
        }
        "getbalance" => {
            if let Some(d) = p.opt_str(0)? {
                if d != "*" {
                    return Err(RpcError::new(
                        RPC_MISC_ERROR,
                        "dummy first argument must be excluded or set to \"*\".",
                    ));
                }
            }
            let minconf = p.opt_int(1, 0)?.max(0) as u32;
            let total: Amount = s
                .wallet_coins(minconf)
                .iter()
                .filter(|c| c.safe)
                .map(|c| c.coin.output.value)
                .sum();
            Ok(json::btc(total))
        }
        _ => Err(RpcError::new(RPC_METHOD_NOT_FOUND, "Method not found")),
    }
}

/// A wallet call's `fee_rate`, in sat/vB as bitcoind's wallet takes it.
fn wallet_fee_rate(p: &Params, i: usize) -> Result<Option<FeeRate>, RpcError> {
    match p.get(i) {
        None => Ok(None),
        Some(v) => {
            let sat_per_vb = v.as_f64().ok_or_else(|| type_error(v, "number"))?;
            if !(0.0..=100_000.0).contains(&sat_per_vb) {
                return Err(RpcError::new(RPC_INVALID_PARAMETER, "Invalid fee_rate"));
            }
            Ok(Some(FeeRate::from_sat_per_kwu(
                (sat_per_vb * 250.0).round() as u64,
            )))
        }
    }
}

fn get_raw_transaction(s: &NodeState, p: &Params) -> Result<Value, RpcError> {
    let txid: Txid = p.hash(0, "parameter 1")?;
    let verbosity = p.verbosity(1, 0)?;
    if !(0..=2).contains(&verbosity) {
        return Err(RpcError::new(
            RPC_INVALID_PARAMETER,
            "Invalid verbosity value",
        ));
    }
    if let Some(block_hex) = p.opt_str(2)? {
        let hash: BlockHash = parse_hash(block_hex, "parameter 3")?;
        let r = s
            .chain
            .record(&hash)
            .ok_or_else(|| RpcError::new(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found"))?;
        let (index, tx) = s.chain.find_tx(&hash, &txid).ok_or_else(|| {
            RpcError::new(
                RPC_INVALID_ADDRESS_OR_KEY,
                "No such transaction found in the provided block. Use gettransaction for wallet transactions.",
            )
        })?;
        if verbosity == 0 {
            return Ok(json!(serialize_hex(tx)));
        }
        let undo = if verbosity == 2 && index > 0 {
            r.undo
                .as_ref()
                .and_then(|u| u.get(index - 1))
                .map(|c| c.as_slice())
        } else {
            None
        };
        let mut v = json::tx(tx, undo, true);
        let active = s.chain.is_active(&hash);
        v["in_active_chain"] = json!(active);
        v["blockhash"] = json!(hash.to_string());
        if active {
            v["confirmations"] = json!(s.chain.confirmations(&hash));
            v["time"] = json!(r.block.header.time);
            v["blocktime"] = json!(r.block.header.time);
        } else {
            v["confirmations"] = json!(0);
        }
        return Ok(v);
    }
    let e = s.mempool.get(&txid).ok_or_else(|| {
        RpcError::new(
            RPC_INVALID_ADDRESS_OR_KEY,
            "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction queries. Use gettransaction for wallet transactions.",
        )
    })?;
    if verbosity == 0 {
        return Ok(json!(serialize_hex(&e.tx)));
    }
    let coins: Option<Vec<_>> = (verbosity == 2).then(|| {
        e.tx.input
            .iter()
            .filter_map(|i| s.mempool.coin(&s.chain, &i.previous_output))
            .collect()
    });
    Ok(json::tx(&e.tx, coins.as_deref(), true))
}

/// One `testmempoolaccept` result.
fn accept_json(tx: &Transaction, result: Result<Accepted, Reject>) -> Value {
    let txid = tx.compute_txid().to_string();
    let wtxid = tx.compute_wtxid().to_string();
    match result {
        Ok(a) => {
            let rate = Amount::from_sat(a.fee.to_sat() * 1000 / a.vsize.max(1));
            json!({
                "txid": txid,
                "wtxid": wtxid,
                "allowed": true,
                "vsize": a.vsize,
                "fees": {
                    "base": json::btc(a.fee),
                    "effective-feerate": json::btc(rate),
                    "effective-includes": [wtxid],
                },
            })
        }
        Err(r) => {
            let mut v =
                json!({"txid": txid, "wtxid": wtxid, "allowed": false, "reject-reason": r.reason});
            if let Some(d) = r.debug {
                v["reject-details"] = json!(format!("{}, {d}", r.reason));
            }
            v
        }
    }
}
