//! The wallet's interface, as the official `sbtc` library (`SbtcApiClient`) speaks it:
//! `POST /deposit` with `{bitcoinTxid, bitcoinTxOutputIndex, depositScript, reclaimScript,
//! transactionHex}` answered with the deposit as Emily describes it (201 when new, 200 when it was
//! already held), and `GET /deposit/{txid}/{vout}`.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bitcoin::{OutPoint, ScriptBuf, Transaction, Txid};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::intake::{Held, Progress, Refusal};
use super::server::ApiState;
use crate::chain::bitcoin::deposit::DepositSubmission;
use crate::storage::SubmissionSource;

/// `POST /deposit`.
pub async fn post_deposit(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match post(&state, &headers, body).await {
        Ok((status, held)) => json_response(status, &view(&held)),
        Err(e) => e.into_response(),
    }
}

async fn post(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Held), ApiError> {
    if !is_json(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "send the deposit as JSON with Content-Type: application/json",
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than this signer accepts ({} bytes, [api] max_body_bytes)",
                    state.max_body_bytes
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", e.body_text())
        }
    })?;
    let submission = parse_submission(&body)?;
    match state
        .intake
        .submit(submission, SubmissionSource::Wallet)
        .await
    {
        Ok(a) if a.new => Ok((StatusCode::CREATED, a.held)),
        Ok(a) => Ok((StatusCode::OK, a.held)),
        Err(r) => Err(refusal_error(&r)),
    }
}

/// The HTTP answer to a refusal: 422 for a deposit rule, 503 when nothing could be decided.
pub fn refusal_error(r: &Refusal) -> ApiError {
    match r {
        Refusal::Rule { rule, message } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, rule, message.clone())
        }
        Refusal::NodeUnavailable { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            r.rule(),
            "this signer could not check the deposit against its Bitcoin node; try again later",
        )
        .retry_after(30),
        Refusal::Storage { message } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.rule(), message.clone())
                .retry_after(30)
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Decodes the wallet's JSON, saying which field is wrong.
pub fn parse_submission(body: &[u8]) -> Result<DepositSubmission, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON ({e})"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body must be a JSON object with bitcoinTxid, bitcoinTxOutputIndex, depositScript, reclaimScript and transactionHex",
        ));
    };
    let txid = string(&obj, "bitcoinTxid")?;
    let txid = Txid::from_str(txid).map_err(|_| {
        ApiError::field(
            "bitcoinTxid",
            "bitcoinTxid must be the deposit transaction's id: 64 hex digits",
        )
    })?;
    let vout = match obj.get("bitcoinTxOutputIndex") {
        None | Some(Value::Null) => return Err(missing("bitcoinTxOutputIndex")),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::field(
                    "bitcoinTxOutputIndex",
                    "bitcoinTxOutputIndex must be the deposit output's index: a whole number from 0 to 4294967295",
                )
            })?,
    };
    let deposit_script = script(&obj, "depositScript")?;
    let reclaim_script = script(&obj, "reclaimScript")?;
    let tx_hex = string(&obj, "transactionHex")?;
    let tx_bytes = hex::decode(tx_hex)
        .map_err(|_| ApiError::field("transactionHex", "transactionHex must be hex"))?;
    let transaction: Transaction = bitcoin::consensus::deserialize(&tx_bytes).map_err(|e| {
        ApiError::field(
            "transactionHex",
            format!("transactionHex is not a Bitcoin transaction ({e})"),
        )
    })?;
    if transaction.compute_txid() != txid {
        return Err(ApiError::field(
            "bitcoinTxid",
            format!(
                "bitcoinTxid {txid} is not the id of transactionHex (which is {})",
                transaction.compute_txid()
            ),
        ));
    }
    Ok(DepositSubmission {
        outpoint: OutPoint { txid, vout },
        deposit_script,
        reclaim_script,
        transaction,
    })
}

fn missing(field: &'static str) -> ApiError {
    ApiError {
        rule: "missing_field",
        ..ApiError::field(field, format!("{field} is missing"))
    }
}

fn string<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::field(field, format!("{field} must be a string"))),
    }
}

fn script(obj: &Map<String, Value>, field: &'static str) -> Result<ScriptBuf, ApiError> {
    let s = string(obj, field)?;
    ScriptBuf::from_hex(s).map_err(|_| ApiError::field(field, format!("{field} must be hex")))
}

/// `GET /deposit/{txid}/{vout}`.
pub async fn get_deposit(
    State(state): State<Arc<ApiState>>,
    Path((txid, vout)): Path<(String, String)>,
) -> Response {
    let Ok(txid) = Txid::from_str(&txid) else {
        return ApiError::field("txid", "the txid in the path must be 64 hex digits")
            .into_response();
    };
    let Ok(vout) = vout.parse::<u32>() else {
        return ApiError::field(
            "vout",
            "the output index in the path must be a whole number",
        )
        .into_response();
    };
    let outpoint = OutPoint { txid, vout };
    match state.intake.held(&outpoint).await {
        Ok(Some(held)) => json_response(StatusCode::OK, &view(&held)),
        Ok(None) => match state.intake.recent_refusal(&outpoint) {
            Some(r) => json_response(StatusCode::OK, &refused_view(&outpoint, &r)),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_deposit",
                format!("this signer holds no deposit {txid}:{vout}; POST it to /deposit first"),
            )
            .into_response(),
        },
        Err(r) => refusal_error(&r).into_response(),
    }
}

/// `GET /health`.
pub async fn health(State(state): State<Arc<ApiState>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "status": "ok", "network": state.intake.network().to_string() }),
    )
}

/// Anything else.
pub async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: this API serves POST /deposit, GET /deposit/{txid}/{vout} and GET /health",
    )
    .into_response()
}

/// The deposit as Emily answers it (what `SbtcApiClient.notifySbtc` and `fetchDeposit` return
/// to the wallet). Stacks heights and hashes are Emily's to know; a signer reports 0 and "".
pub fn view(held: &Held) -> Value {
    let r = &held.record;
    let (status_message, recipient, amount, max_fee, lock_time) = match &held.details {
        Some(d) => (
            match held.progress {
                Progress::Mempool => "validated by this signer; in the mempool, waiting to confirm",
                Progress::Confirmed => {
                    "validated by this signer; confirmed, waiting for the signers"
                }
            },
            d.deposit.recipient.to_string(),
            d.amount.to_sat(),
            d.deposit.max_fee.to_sat(),
            u32::from(d.reclaim.lock_time),
        ),
        None => ("held by this signer", String::new(), 0, 0, 0),
    };
    json!({
        "bitcoinTxid": r.outpoint.txid.to_string(),
        "bitcoinTxOutputIndex": r.outpoint.vout,
        "recipient": recipient,
        "amount": amount,
        "lastUpdateHeight": 0,
        "lastUpdateBlockHash": "",
        "status": "pending",
        "statusMessage": status_message,
        "parameters": { "maxFee": max_fee, "lockTime": lock_time },
        "reclaimScript": r.reclaim_script.to_hex_string(),
        "depositScript": r.deposit_script.to_hex_string(),
    })
}

fn refused_view(outpoint: &OutPoint, r: &Refusal) -> Value {
    json!({
        "bitcoinTxid": outpoint.txid.to_string(),
        "bitcoinTxOutputIndex": outpoint.vout,
        "status": "failed",
        "statusMessage": format!("refused by this signer: {}", r.message()),
        "reason": { "rule": r.rule(), "message": r.message() },
    })
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
