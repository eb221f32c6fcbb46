//! The Stacks node client against a small fake stacks-node on 127.0.0.1 that answers as
//! stacks-node's v2 API does (JSON shapes, status codes, a 400 rejection, 5xx), plus the
//! failures a real node or network produces: a 500 then success, a hang past the timeout, a
//! garbage body, an oversized body, a port nobody listens on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey};
use bitcoin::{Amount, OutPoint, Txid};
use sbtc_hsm_signer::chain::stacks::{
    address::{Principal, StacksNetwork},
    clarity::Value,
    client::{ErrorKind, StacksClient},
    rpc::{check_network, StacksRpc},
    transaction::{ContractCall, MultisigCondition, StacksTransaction},
};
use serde_json::{json, Value as Json};

const DEPLOYER: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";

/// What the fake node does with its next requests.
#[derive(Default)]
struct Script {
    /// Answer 500 to this many requests first.
    fail_first: usize,
    /// Sleep this long before answering /v2/info.
    info_delay: Option<Duration>,
    /// Answer /v2/info with this body instead.
    info_body: Option<Vec<u8>>,
    /// Refuse transactions with this reason.
    reject: Option<&'static str>,
    /// Accept transactions under this txid instead of theirs.
    wrong_txid: bool,
    /// No fee estimator.
    no_fee_estimates: bool,
    /// The registry before its first rotation.
    before_rotation: bool,
}

struct Fake {
    script: Mutex<Script>,
    requests: AtomicUsize,
    /// Transactions received, as bytes.
    submitted: Mutex<Vec<Vec<u8>>>,
    /// The last call-read and map_entry bodies.
    last_body: Mutex<Option<Json>>,
    aggregate: PublicKey,
    signers: Vec<PublicKey>,
    deposit: OutPoint,
}

fn key(n: u8) -> PublicKey {
    PublicKey::from_secret_key(&Secp256k1::new(), &SecretKey::from_slice(&[n; 32]).unwrap())
}

fn json_response(status: StatusCode, body: &Json) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl Fake {
    /// Counts the request; true when it must fail with a 500.
    fn fails(&self) -> bool {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut s = self.script.lock().unwrap();
        if s.fail_first > 0 {
            s.fail_first -= 1;
            return true;
        }
        false
    }
}

fn internal_error() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "database is locked").into_response()
}

async fn info(State(f): State<Arc<Fake>>) -> Response {
    if f.fails() {
        return internal_error();
    }
    let (delay, body) = {
        let s = f.script.lock().unwrap();
        (s.info_delay, s.info_body.clone())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if let Some(b) = body {
        return (StatusCode::OK, b).into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "peer_version": 4207599114u32,
            "pox_consensus": "daf212e6103309e3918de4b2bf39ae2399109d9a",
            "burn_block_height": 2083,
            "stable_burn_block_height": 2082,
            "server_version": "stacks-node 3.1.0.0.5 (fake)",
            "network_id": 2147483648u32,
            "parent_network_id": 3669344250u32,
            "stacks_tip_height": 9520,
            "stacks_tip": "ffd652ff665bb1b07b19e537a5a007d44ea1e8cd0ddfd8753d9f95f915aaee41",
            "stacks_tip_consensus_hash": "11fc12900b1f1369098f1099bcb2708ea78ea3b4",
            "unanchored_tip": null,
            "is_fully_synced": true,
            "node_public_key": "035379aa40c02890d253cfa577964116eb5295570ae9f7287cbae5f2585f5b2c7c"
        }),
    )
}

async fn account(State(f): State<Arc<Fake>>, Path(addr): Path<String>, uri: Uri) -> Response {
    if f.fails() {
        return internal_error();
    }
    if uri.query() != Some("proof=0") || addr != DEPLOYER {
        return (StatusCode::BAD_REQUEST, "unexpected request").into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({"balance": "0x0000000000000000000000174876e800", "locked": "0x00000000000000000000000000000064",
                "unlock_height": 0, "nonce": 17, "balance_proof": "", "nonce_proof": ""}),
    )
}

async fn call_read(
    State(f): State<Arc<Fake>>,
    Path((addr, contract, function)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if f.fails() {
        return internal_error();
    }
    let Ok(body) = serde_json::from_slice::<Json>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    *f.last_body.lock().unwrap() = Some(body.clone());
    let args: Vec<Value> = body["arguments"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().and_then(|s| Value::from_hex(s).ok()))
                .collect()
        })
        .unwrap_or_default();
    if addr != DEPLOYER {
        return json_response(
            StatusCode::OK,
            &json!({"okay": false, "cause": format!("Unchecked(NoSuchContract(\"{addr}.{contract}\"))")}),
        );
    }
    let before = f.script.lock().unwrap().before_rotation;
    let result = match (contract.as_str(), function.as_str()) {
        ("sbtc-registry", "get-current-aggregate-pubkey") if before => Value::Buffer(vec![0]),
        ("sbtc-registry", "get-current-aggregate-pubkey") => {
            Value::Buffer(f.aggregate.serialize().to_vec())
        }
        ("sbtc-registry", "get-current-signer-data") => Value::tuple([
            (
                "current-signer-set",
                Value::List(
                    f.signers
                        .iter()
                        .map(|k| Value::Buffer(k.serialize().to_vec()))
                        .collect(),
                ),
            ),
            (
                "current-aggregate-pubkey",
                Value::Buffer(f.aggregate.serialize().to_vec()),
            ),
            (
                "current-signer-principal",
                Value::Principal(Principal::from_address(DEPLOYER).unwrap()),
            ),
            ("current-signature-threshold", Value::UInt(2)),
        ]),
        ("sbtc-registry", "get-deposit-status") => {
            let wanted = [
                Value::Buffer(f.deposit.txid.to_byte_array().to_vec()),
                Value::UInt(f.deposit.vout.into()),
            ];
            if args == wanted {
                Value::some(Value::Bool(true))
            } else {
                Value::None
            }
        }
        ("sbtc-token", "get-total-supply") => Value::ok(Value::UInt(2_100_000)),
        ("sbtc-token", "get-balance") => match args.as_slice() {
            [Value::Principal(_)] => Value::ok(Value::UInt(4_200)),
            _ => {
                return json_response(
                    StatusCode::OK,
                    &json!({"okay": false, "cause": "Unchecked(IncorrectArgumentCount(1, 0))"}),
                )
            }
        },
        _ => {
            return json_response(
                StatusCode::OK,
                &json!({"okay": false, "cause": format!("Unchecked(UndefinedFunction(\"{function}\"))")}),
            )
        }
    };
    json_response(
        StatusCode::OK,
        &json!({"okay": true, "result": result.to_hex()}),
    )
}

async fn fees(State(f): State<Arc<Fake>>, body: Bytes) -> Response {
    if f.fails() {
        return internal_error();
    }
    if f.script.lock().unwrap().no_fee_estimates {
        return (
            StatusCode::BAD_REQUEST,
            "Fee estimation not supported on this node",
        )
            .into_response();
    }
    let Ok(body) = serde_json::from_slice::<Json>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    let payload_ok = body["transaction_payload"]
        .as_str()
        .is_some_and(|h| hex::decode(h).is_ok_and(|b| b.first() == Some(&0x02)));
    if !payload_ok || body["estimated_len"] != json!(350) {
        return (StatusCode::BAD_REQUEST, "bad payload").into_response();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "estimated_cost": {"read_count": 8, "read_length": 1000, "runtime": 4000, "write_count": 2, "write_length": 100},
            "estimated_cost_scalar": 14,
            "estimations": [
                {"fee_rate": 120.5, "fee": 9000},
                {"fee_rate": 10.0, "fee": 750},
                {"fee_rate": 60.0, "fee": 4000}
            ],
            "cost_scalar_change_by_byte": 0.00476
        }),
    )
}

async fn transactions(State(f): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    if f.fails() {
        return internal_error();
    }
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) != Some(b"application/octet-stream")
    {
        return (StatusCode::BAD_REQUEST, "not octet-stream").into_response();
    }
    let tx = match StacksTransaction::deserialize(&body) {
        Ok(tx) => tx,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "transaction rejected", "reason": "Deserialization", "reason_data": {"message": e.to_string()}}),
            )
        }
    };
    f.submitted.lock().unwrap().push(body.to_vec());
    let txid = hex::encode(tx.txid());
    let (reject, wrong) = {
        let s = f.script.lock().unwrap();
        (s.reject, s.wrong_txid)
    };
    if let Some(reason) = reject {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "transaction rejected", "reason": reason,
                    "reason_data": {"expected": 18, "actual": 17}, "txid": txid}),
        );
    }
    let answer = if wrong { "00".repeat(32) } else { txid };
    json_response(StatusCode::OK, &json!(answer))
}

async fn data_var(
    State(f): State<Arc<Fake>>,
    Path((addr, contract, var)): Path<(String, String, String)>,
    uri: Uri,
) -> Response {
    if f.fails() {
        return internal_error();
    }
    if addr != DEPLOYER || contract != "sbtc-registry" || uri.query() != Some("proof=0") {
        return (StatusCode::NOT_FOUND, "Data var not found").into_response();
    }
    match var.as_str() {
        "current-signature-threshold" => {
            json_response(StatusCode::OK, &json!({"data": Value::UInt(2).to_hex()}))
        }
        _ => (StatusCode::NOT_FOUND, "Data var not found").into_response(),
    }
}

async fn map_entry(
    State(f): State<Arc<Fake>>,
    Path((_addr, _contract, map)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if f.fails() {
        return internal_error();
    }
    let Ok(Json::String(key_hex)) = serde_json::from_slice::<Json>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not a JSON string").into_response();
    };
    *f.last_body.lock().unwrap() = Some(Json::String(key_hex.clone()));
    let key = Value::from_hex(&key_hex);
    let data = match (map.as_str(), key) {
        ("withdrawal-status", Ok(Value::UInt(7))) => Value::some(Value::Bool(true)),
        ("withdrawal-status", Ok(_)) => Value::None,
        _ => return (StatusCode::NOT_FOUND, "No such map").into_response(),
    };
    json_response(StatusCode::OK, &json!({"data": data.to_hex()}))
}

struct Node {
    fake: Arc<Fake>,
    url: String,
    _server: tokio::task::JoinHandle<()>,
}

async fn fake_node(script: Script) -> Node {
    let fake = Arc::new(Fake {
        script: Mutex::new(script),
        requests: AtomicUsize::new(0),
        submitted: Mutex::new(Vec::new()),
        last_body: Mutex::new(None),
        aggregate: key(9),
        signers: vec![key(1), key(2), key(3)],
        deposit: OutPoint::new(Txid::from_byte_array([0x42; 32]), 3),
    });
    let app = Router::new()
        .route("/v2/info", get(info))
        .route("/v2/accounts/{addr}", get(account))
        .route(
            "/v2/contracts/call-read/{addr}/{contract}/{function}",
            post(call_read),
        )
        .route("/v2/fees/transaction", post(fees))
        .route("/v2/transactions", post(transactions))
        .route("/v2/data_var/{addr}/{contract}/{var}", get(data_var))
        .route("/v2/map_entry/{addr}/{contract}/{map}", post(map_entry))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Node {
        fake,
        url,
        _server: server,
    }
}

fn client(node: &Node, retries: u32) -> StacksRpc {
    let mut c = StacksRpc::with_options(&node.url, Duration::from_secs(2), retries).unwrap();
    c.set_backoff(Duration::from_millis(10));
    c
}

fn deployer() -> Principal {
    Principal::from_address(DEPLOYER).unwrap()
}

fn transaction(nonce: u64) -> StacksTransaction {
    let d = deployer();
    StacksTransaction::multisig_call(
        StacksNetwork::Testnet,
        MultisigCondition {
            signer: [7; 20],
            nonce,
            fee: 1_000,
            fields: Vec::new(),
            signatures_required: 2,
        },
        ContractCall {
            address_version: d.version(),
            address_hash: *d.hash160(),
            contract_name: "sbtc-withdrawal".into(),
            function_name: "reject-withdrawal-request".into(),
            args: vec![Value::UInt(7), Value::UInt(0b111)],
        },
    )
}

#[tokio::test]
async fn info_account_and_network_read_as_the_node_reports_them() {
    let node = fake_node(Script::default()).await;
    let c = client(&node, 0);
    let info = c.get_info().await.unwrap();
    assert_eq!(
        (
            info.burn_block_height,
            info.stacks_tip_height,
            info.network_id
        ),
        (2083, 9520, 0x8000_0000)
    );
    assert_eq!(info.stacks_tip[0], 0xff);
    assert_eq!(info.is_fully_synced, Some(true));
    assert!(info.server_version.starts_with("stacks-node"));
    assert_eq!(
        check_network(&c, StacksNetwork::Testnet)
            .await
            .unwrap()
            .stacks_tip_height,
        9520
    );
    let err = check_network(&c, StacksNetwork::Mainnet).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::WrongNetwork);
    assert!(
        err.to_string().contains("Stacks testnet") && err.to_string().contains("node_url"),
        "{err}"
    );

    let account = c.get_account(&deployer()).await.unwrap();
    assert_eq!(account.balance, 100_000_000_000);
    assert_eq!((account.locked, account.nonce), (100, 17));
}

#[tokio::test]
async fn registry_and_token_reads_decode_the_clarity_answers() {
    let node = fake_node(Script::default()).await;
    let c = client(&node, 0);
    let d = deployer();
    assert_eq!(
        c.get_current_aggregate_pubkey(&d).await.unwrap(),
        Some(key(9))
    );
    let sent = node.fake.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(sent, json!({"sender": DEPLOYER, "arguments": []}));
    let data = c.get_current_signer_data(&d).await.unwrap();
    assert_eq!(data.signer_set, vec![key(1), key(2), key(3)]);
    assert_eq!(
        (data.aggregate_key, data.threshold),
        (Some(key(9)), Some(2))
    );
    assert_eq!(data.signer_principal, d);

    // The txid goes in as (buff 32) in internal byte order: the fake only knows it that way.
    let deposit = node.fake.deposit;
    assert!(c.get_deposit_status(&d, &deposit).await.unwrap());
    let sent = node.fake.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(
        sent["arguments"][0],
        json!(format!("0x0200000020{}", "42".repeat(32)))
    );
    assert!(!c
        .get_deposit_status(&d, &OutPoint::new(deposit.txid, 4))
        .await
        .unwrap());
    assert_eq!(
        c.get_total_supply(&d).await.unwrap(),
        Amount::from_sat(2_100_000)
    );
    assert_eq!(
        c.get_balance(&d, &d).await.unwrap(),
        Amount::from_sat(4_200)
    );

    // A call that fails in Clarity says why, with the node's cause.
    let err = c
        .call_read(&d, "sbtc-registry", "no-such-fn", &[], &d)
        .await
        .unwrap_err();
    match &err.kind {
        ErrorKind::CallFailed { cause } => assert!(cause.contains("UndefinedFunction")),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("sbtc-registry.no-such-fn"),
        "{err}"
    );

    assert_eq!(
        c.get_data_var(&d, "sbtc-registry", "current-signature-threshold")
            .await
            .unwrap(),
        Value::UInt(2)
    );
    let err = c
        .get_data_var(&d, "sbtc-registry", "no-such-var")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Status { code: 404 });
    assert!(err.to_string().contains("deployer"), "{err}");

    assert_eq!(
        c.get_map_entry(&d, "sbtc-registry", "withdrawal-status", &Value::UInt(7))
            .await
            .unwrap(),
        Some(Value::Bool(true))
    );
    assert_eq!(
        node.fake.last_body.lock().unwrap().clone().unwrap(),
        json!(Value::UInt(7).to_hex())
    );
    assert_eq!(
        c.get_map_entry(&d, "sbtc-registry", "withdrawal-status", &Value::UInt(8))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn before_the_first_rotation_there_is_no_aggregate_key() {
    let node = fake_node(Script {
        before_rotation: true,
        ..Script::default()
    })
    .await;
    let c = client(&node, 0);
    assert_eq!(
        c.get_current_aggregate_pubkey(&deployer()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn fees_are_sorted_and_a_node_without_estimates_is_a_kind_to_fall_back_on() {
    let node = fake_node(Script::default()).await;
    let c = client(&node, 0);
    let tx = transaction(17);
    let fees = c.estimate_fee(&tx.payload, 350).await.unwrap();
    assert_eq!(
        (fees.low.fee, fees.medium.fee, fees.high.fee),
        (750, 4000, 9000)
    );
    assert_eq!(fees.medium_capped(1_500_000), 4000);
    assert_eq!(fees.medium_capped(1_000), 1_000);

    let node = fake_node(Script {
        no_fee_estimates: true,
        ..Script::default()
    })
    .await;
    let err = client(&node, 3)
        .estimate_fee(&tx.payload, 350)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoFeeEstimate);
    assert!(err.to_string().contains("not supported"), "{err}");
    assert_eq!(
        node.fake.requests.load(Ordering::SeqCst),
        1,
        "a 400 is never retried"
    );
}

#[tokio::test]
async fn a_submitted_transaction_comes_back_as_its_txid_or_its_rejection() {
    let node = fake_node(Script::default()).await;
    let c = client(&node, 0);
    let tx = transaction(17);
    let txid = c.submit_transaction(&tx).await.unwrap();
    assert_eq!(txid.0, tx.txid());
    assert_eq!(node.fake.submitted.lock().unwrap()[0], tx.serialize());

    let node = fake_node(Script {
        reject: Some("BadNonce"),
        ..Script::default()
    })
    .await;
    let err = client(&node, 3).submit_transaction(&tx).await.unwrap_err();
    match &err.kind {
        ErrorKind::Rejected {
            reason,
            reason_data,
        } => {
            assert_eq!(reason, "BadNonce");
            assert_eq!(
                reason_data.as_ref().unwrap()["expected"],
                json!(18),
                "the node's reason data reaches the caller"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("BadNonce"), "{err}");
    assert_eq!(
        node.fake.requests.load(Ordering::SeqCst),
        1,
        "a rejection is final"
    );

    let node = fake_node(Script {
        wrong_txid: true,
        ..Script::default()
    })
    .await;
    let err = client(&node, 0).submit_transaction(&tx).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(err.to_string().contains("accepted txid"), "{err}");
}

#[tokio::test]
async fn a_5xx_is_retried_until_it_succeeds_or_retries_run_out() {
    let node = fake_node(Script {
        fail_first: 2,
        ..Script::default()
    })
    .await;
    let tx = transaction(17);
    // Two 500s, then the transaction is accepted: sent three times, the same bytes each time.
    let txid = client(&node, 3).submit_transaction(&tx).await.unwrap();
    assert_eq!(txid.0, tx.txid());
    assert_eq!(node.fake.requests.load(Ordering::SeqCst), 3);
    assert_eq!(node.fake.submitted.lock().unwrap().len(), 1);

    let node = fake_node(Script {
        fail_first: 10,
        ..Script::default()
    })
    .await;
    let err = client(&node, 2).get_info().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Status { code: 500 });
    assert!(
        err.to_string().contains("database is locked") && err.to_string().contains("3 attempts"),
        "{err}"
    );
    assert_eq!(node.fake.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_node_that_hangs_times_out_and_is_named() {
    let node = fake_node(Script {
        info_delay: Some(Duration::from_secs(5)),
        ..Script::default()
    })
    .await;
    let mut c = StacksRpc::with_options(&node.url, Duration::from_millis(300), 1).unwrap();
    c.set_backoff(Duration::from_millis(10));
    let started = Instant::now();
    let err = c.get_info().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by the timeout"
    );
    assert_eq!(err.kind, ErrorKind::Unreachable);
    assert!(
        err.to_string().contains("no answer within") && err.to_string().contains("timeout_secs"),
        "{err}"
    );
    assert_eq!(
        node.fake.requests.load(Ordering::SeqCst),
        2,
        "a timeout is retried"
    );
}

#[tokio::test]
async fn garbage_and_oversized_answers_are_bad_responses_not_panics() {
    let node = fake_node(Script {
        info_body: Some(b"<html><body>502 Bad Gateway</body></html>".to_vec()),
        ..Script::default()
    })
    .await;
    let err = client(&node, 3).get_info().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(
        err.to_string().contains("<html>") && err.to_string().contains("node_url"),
        "{err}"
    );
    assert_eq!(node.fake.requests.load(Ordering::SeqCst), 1);

    let node = fake_node(Script {
        info_body: Some(vec![b' '; 5 << 20]),
        ..Script::default()
    })
    .await;
    let err = client(&node, 0).get_info().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadResponse);
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[tokio::test]
async fn an_unreachable_node_is_retried_then_named() {
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let mut c = StacksRpc::with_options("http://127.0.0.1:9", Duration::from_secs(2), 2).unwrap();
    c.set_backoff(Duration::from_millis(10));
    let err = c.get_account(&deployer()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unreachable);
    let text = err.to_string();
    assert!(
        text.contains("GET /v2/accounts")
            && text.contains("node_url")
            && text.contains("3 attempts"),
        "{text}"
    );
}
