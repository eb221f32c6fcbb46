//! [`StacksRpc`]: the [`StacksClient`] over a stacks-node's v2 HTTP API (JSON, and raw bytes for
//! transactions). Every call has a timeout; an unreachable node and 5xx answers are retried with
//! doubling backoff, a 4xx never (the node has decided); answers are read up to a size limit.
//!
//! A submitted transaction may be sent again after a timeout or a 5xx: that is harmless, since
//! its txid is fixed by its bytes and a node that already holds it answers with the same txid
//! (or refuses it as a known or conflicting nonce, which the caller sees as [`ErrorKind::Rejected`]
//! and resolves by reading the account's nonce).

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::address::{Principal, StacksNetwork};
use super::clarity::Value;
use super::client::*;
use super::config::StacksSettings;
use super::transaction::{Payload, StacksTransaction};
use crate::chain::http::{self, error_chain};
use crate::storage::StacksTxid;

/// The longest answer read from the node: a read-only call's result is at most 1 MiB of
/// Clarity (2 MiB as hex), plus JSON.
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How much of an error body goes into an error message.
const MAX_ERROR_TEXT: usize = 300;

/// The stacks-node RPC client.
#[derive(Debug)]
pub struct StacksRpc {
    http: reqwest::Client,
    base: reqwest::Url,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl StacksRpc {
    /// A client for `[stacks]`.
    pub fn new(settings: &StacksSettings) -> Result<StacksRpc> {
        StacksRpc::with_options(&settings.node_url, settings.timeout, settings.retries)
    }

    /// A client with explicit limits (tests, the devnet).
    pub fn with_options(url: &str, timeout: Duration, retries: u32) -> Result<StacksRpc> {
        let base = parse_node_url(url).map_err(|why| {
            Error::new("config", ErrorKind::Unreachable, format!("[stacks] {why}"))
        })?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| Error::new("config", ErrorKind::Unreachable, e.to_string()))?;
        Ok(StacksRpc {
            http,
            base,
            timeout,
            retries,
            backoff: Duration::from_millis(250),
        })
    }

    /// The first wait between retries (doubled each time).
    pub fn set_backoff(&mut self, backoff: Duration) {
        self.backoff = backoff;
    }

    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// The node's URL with `segments` appended (each percent-encoded) and `query`.
    fn url_for(&self, segments: &[&str], query: Option<&str>) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url.set_query(query);
        url
    }

    /// Sends the request `build` makes, retrying while the node is unreachable or answers 5xx.
    /// Returns any other answer's status and body.
    async fn send(
        &self,
        endpoint: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>)> {
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            let failure = match build().send().await {
                Err(e) => Error::new(endpoint, ErrorKind::Unreachable, self.unreachable(&e)),
                Ok(response) => {
                    let status = response.status().as_u16();
                    match read_limited(response, endpoint).await {
                        Ok(body) if status >= 500 => Error::new(
                            endpoint,
                            ErrorKind::Status { code: status },
                            format!(
                                "the node answered {status}: {}; is it overloaded or still \
                                 starting?",
                                error_text(&body)
                            ),
                        ),
                        Ok(body) => return Ok((status, body)),
                        Err(e) => e,
                    }
                }
            };
            if !failure.is_transient() || attempt >= self.retries {
                let mut failure = failure;
                if attempt > 0 {
                    failure.detail = format!("{} (after {} attempts)", failure.detail, attempt + 1);
                }
                return Err(failure);
            }
            tracing::debug!(endpoint, error = %failure, retry_in = ?delay, "stacks-node call failed; retrying");
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> String {
        let why = if e.is_timeout() {
            format!(
                "no answer within {:?} ([stacks] timeout_secs)",
                self.timeout
            )
        } else {
            error_chain(e)
        };
        format!(
            "cannot reach the stacks-node at {}: {why}; is it running, and is [stacks] node_url \
             right?",
            self.base
        )
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        query: Option<&str>,
    ) -> Result<T> {
        let url = self.url_for(segments, query);
        let (status, body) = self.send(endpoint, || self.http.get(url.clone())).await?;
        expect_ok(endpoint, status, &body)?;
        parse_json(endpoint, &body)
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        segments: &[&str],
        query: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>, Option<T>)> {
        let url = self.url_for(segments, query);
        let text = body.to_string();
        let (status, answer) = self
            .send(endpoint, || {
                self.http
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(text.clone())
            })
            .await?;
        let parsed = if status == 200 {
            Some(parse_json(endpoint, &answer)?)
        } else {
            None
        };
        Ok((status, answer, parsed))
    }
}

/// Checks `[stacks] node_url`: an http:// or https:// URL.
pub fn parse_node_url(url: &str) -> std::result::Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!("node_url `{url}` is not a URL: {e}; write e.g. http://127.0.0.1:20443")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
        return Err(format!(
            "node_url `{url}` is not an http:// or https:// URL; write e.g. http://127.0.0.1:20443"
        ));
    }
    Ok(parsed)
}

async fn read_limited(response: reqwest::Response, endpoint: &'static str) -> Result<Vec<u8>> {
    http::read_limited(response, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| match e {
            http::BodyError::TooLarge => too_large(endpoint),
            http::BodyError::Broken(why) => Error::new(
                endpoint,
                ErrorKind::Unreachable,
                format!("the connection broke while reading the answer: {why}"),
            ),
        })
}

fn too_large(endpoint: &'static str) -> Error {
    Error::new(
        endpoint,
        ErrorKind::BadResponse,
        format!(
            "the answer is larger than {MAX_RESPONSE_BYTES} bytes, more than any answer of this \
             endpoint; is [stacks] node_url a stacks-node?"
        ),
    )
}

/// The start of an error body, printable, for a message.
fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(MAX_ERROR_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_ERROR_TEXT {
        out.push('…');
    }
    if out.trim().is_empty() {
        "(empty body)".into()
    } else {
        out
    }
}

fn expect_ok(endpoint: &'static str, status: u16, body: &[u8]) -> Result<()> {
    if status == 200 {
        return Ok(());
    }
    Err(status_error(endpoint, status, body))
}

/// An answer that is not 200, as an error with the node's words and a hint.
fn status_error(endpoint: &'static str, status: u16, body: &[u8]) -> Error {
    let hint = match status {
        404 => "; is the contract deployed and [stacks] deployer right?",
        401 | 403 => "; does the node (or a proxy before it) require credentials?",
        _ => "",
    };
    Error::new(
        endpoint,
        ErrorKind::Status { code: status },
        format!("the node answered {status}: {}{hint}", error_text(body)),
    )
}

fn parse_json<T: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        Error::new(
            endpoint,
            ErrorKind::BadResponse,
            format!(
                "the answer is not what a stacks-node sends: {e} (it starts with: {}); is [stacks] \
                 node_url a stacks-node?",
                error_text(body)
            ),
        )
    })
}

fn clarity(endpoint: &'static str, what: &str, hex: &str) -> Result<Value> {
    Value::from_hex(hex).map_err(|e| {
        Error::new(
            endpoint,
            ErrorKind::BadResponse,
            format!("{what} is not a Clarity value: {e}"),
        )
    })
}

fn hex_array<const N: usize>(endpoint: &'static str, what: &str, text: &str) -> Result<[u8; N]> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::new(
                endpoint,
                ErrorKind::BadResponse,
                format!("{what} `{text}` is not {N} bytes of hex"),
            )
        })
}

fn hex_u128(endpoint: &'static str, what: &str, text: &str) -> Result<u128> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u128::from_str_radix(digits, 16).map_err(|e| {
        Error::new(
            endpoint,
            ErrorKind::BadResponse,
            format!("{what} `{text}` is not a 0x-hex u128: {e}"),
        )
    })
}

fn address(endpoint: &'static str, p: &Principal) -> Result<String> {
    p.to_address().map_err(|e| {
        Error::new(
            endpoint,
            ErrorKind::BadResponse,
            format!("cannot write principal as an address: {e}"),
        )
    })
}

#[derive(Deserialize)]
struct InfoJson {
    burn_block_height: u64,
    stacks_tip_height: u64,
    stacks_tip: String,
    stacks_tip_consensus_hash: String,
    network_id: u32,
    #[serde(default)]
    server_version: String,
    #[serde(default)]
    is_fully_synced: Option<bool>,
}

#[derive(Deserialize)]
struct AccountJson {
    balance: String,
    locked: String,
    nonce: u64,
}

#[derive(Deserialize)]
struct CallReadJson {
    okay: bool,
    result: Option<String>,
    cause: Option<String>,
}

#[derive(Deserialize)]
struct FeeJson {
    fee_rate: f64,
    fee: u64,
}

#[derive(Deserialize)]
struct FeesJson {
    estimations: Vec<FeeJson>,
}

#[derive(Deserialize)]
struct DataJson {
    data: String,
}

#[derive(Deserialize)]
struct RejectionJson {
    #[serde(default)]
    error: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    reason_data: Option<serde_json::Value>,
}

#[async_trait]
impl StacksClient for StacksRpc {
    async fn get_info(&self) -> Result<NodeInfo> {
        const E: &str = "GET /v2/info";
        let info: InfoJson = self.get_json(E, &["v2", "info"], None).await?;
        Ok(NodeInfo {
            burn_block_height: info.burn_block_height,
            stacks_tip_height: info.stacks_tip_height,
            stacks_tip: hex_array(E, "stacks_tip", &info.stacks_tip)?,
            stacks_tip_consensus_hash: hex_array(
                E,
                "stacks_tip_consensus_hash",
                &info.stacks_tip_consensus_hash,
            )?,
            network_id: info.network_id,
            server_version: info.server_version,
            is_fully_synced: info.is_fully_synced,
        })
    }

    async fn get_account(&self, principal: &Principal) -> Result<AccountInfo> {
        const E: &str = "GET /v2/accounts";
        let addr = address(E, principal)?;
        let a: AccountJson = self
            .get_json(E, &["v2", "accounts", &addr], Some("proof=0"))
            .await?;
        Ok(AccountInfo {
            balance: hex_u128(E, "balance", &a.balance)?,
            locked: hex_u128(E, "locked", &a.locked)?,
            nonce: a.nonce,
        })
    }

    async fn call_read(
        &self,
        deployer: &Principal,
        contract: &str,
        function: &str,
        args: &[Value],
        sender: &Principal,
    ) -> Result<Value> {
        const E: &str = "POST /v2/contracts/call-read";
        let body = json!({
            "sender": address(E, sender)?,
            "arguments": args.iter().map(Value::to_hex).collect::<Vec<_>>(),
        });
        let addr = address(E, deployer)?;
        let (status, answer, parsed) = self
            .post_json::<CallReadJson>(
                E,
                &["v2", "contracts", "call-read", &addr, contract, function],
                None,
                &body,
            )
            .await?;
        let Some(r) = parsed else {
            return Err(status_error(E, status, &answer));
        };
        if !r.okay {
            return Err(Error::new(
                E,
                ErrorKind::CallFailed {
                    cause: r.cause.clone().unwrap_or_default(),
                },
                format!(
                    "{addr}.{contract}.{function} failed: {}",
                    r.cause.as_deref().unwrap_or("(no cause given)")
                ),
            ));
        }
        let result = r
            .result
            .ok_or_else(|| Error::new(E, ErrorKind::BadResponse, "okay: true but no `result`"))?;
        clarity(E, "result", &result)
    }

    async fn estimate_fee(&self, payload: &Payload, estimated_len: u64) -> Result<FeeEstimates> {
        const E: &str = "POST /v2/fees/transaction";
        let body = json!({
            "transaction_payload": hex::encode(payload.serialize()),
            "estimated_len": estimated_len,
        });
        let (status, answer, parsed) = self
            .post_json::<FeesJson>(E, &["v2", "fees", "transaction"], None, &body)
            .await?;
        let no_estimate = |why: String| {
            Error::new(
                E,
                ErrorKind::NoFeeEstimate,
                format!("the node has no fee estimate: {why}; use the configured fee"),
            )
        };
        let fees = match (status, parsed) {
            (200, Some(f)) => f,
            (400, _) => return Err(no_estimate(error_text(&answer))),
            _ => return Err(status_error(E, status, &answer)),
        };
        let mut all: Vec<FeeEstimate> = fees
            .estimations
            .into_iter()
            .map(|f| FeeEstimate {
                fee_rate: f.fee_rate,
                fee: f.fee,
            })
            .collect();
        if all.is_empty() {
            return Err(no_estimate("`estimations` is empty".into()));
        }
        all.sort_by_key(|f| f.fee);
        Ok(FeeEstimates {
            low: all[0],
            medium: all[all.len() / 2],
            high: all[all.len() - 1],
        })
    }

    async fn submit_transaction(&self, tx: &StacksTransaction) -> Result<StacksTxid> {
        const E: &str = "POST /v2/transactions";
        let bytes = tx.serialize();
        let ours = StacksTxid(tx.txid());
        let url = self.url_for(&["v2", "transactions"], None);
        let (status, answer) = self
            .send(E, || {
                self.http
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone())
            })
            .await?;
        match status {
            200 => {
                let text: String = parse_json(E, &answer)?;
                let theirs = StacksTxid(hex_array(E, "txid", &text)?);
                if theirs != ours {
                    return Err(Error::new(
                        E,
                        ErrorKind::BadResponse,
                        format!("the node accepted txid {theirs}, but the transaction's is {ours}"),
                    ));
                }
                Ok(ours)
            }
            400 => match serde_json::from_slice::<RejectionJson>(&answer) {
                Ok(RejectionJson {
                    error,
                    reason: Some(reason),
                    reason_data,
                }) => Err(Error::new(
                    E,
                    ErrorKind::Rejected {
                        reason: reason.clone(),
                        reason_data: reason_data.clone(),
                    },
                    format!(
                        "the node refused transaction {ours}: {reason}{}{}",
                        error.map(|e| format!(" ({e})")).unwrap_or_default(),
                        reason_data
                            .map(|d| format!(", {}", error_text(d.to_string().as_bytes())))
                            .unwrap_or_default()
                    ),
                )),
                _ => Err(Error::new(
                    E,
                    ErrorKind::Status { code: 400 },
                    format!(
                        "the node refused transaction {ours}: {}",
                        error_text(&answer)
                    ),
                )),
            },
            _ => return Err(status_error(E, status, &answer)),
        }
    }

    async fn get_data_var(&self, deployer: &Principal, contract: &str, var: &str) -> Result<Value> {
        const E: &str = "GET /v2/data_var";
        let addr = address(E, deployer)?;
        let d: DataJson = self
            .get_json(
                E,
                &["v2", "data_var", &addr, contract, var],
                Some("proof=0"),
            )
            .await?;
        clarity(E, "data", &d.data)
    }

    async fn get_map_entry(
        &self,
        deployer: &Principal,
        contract: &str,
        map: &str,
        key: &Value,
    ) -> Result<Option<Value>> {
        const E: &str = "POST /v2/map_entry";
        let addr = address(E, deployer)?;
        let (status, answer, parsed) = self
            .post_json::<DataJson>(
                E,
                &["v2", "map_entry", &addr, contract, map],
                Some("proof=0"),
                &json!(key.to_hex()),
            )
            .await?;
        let Some(d) = parsed else {
            return Err(status_error(E, status, &answer));
        };
        match clarity(E, "data", &d.data)? {
            Value::None => Ok(None),
            Value::Some(v) => Ok(Some(*v)),
            other => Err(Error::new(
                E,
                ErrorKind::BadResponse,
                format!("data {other} is not an optional"),
            )),
        }
    }
}

/// The network a node's chain id belongs to.
pub fn network_of_chain_id(id: u32) -> Option<StacksNetwork> {
    match id {
        0x0000_0001 => Some(StacksNetwork::Mainnet),
        0x8000_0000 => Some(StacksNetwork::Testnet),
        _ => None,
    }
}

/// Checks at start that the node is on `expected`, and says what to fix if not.
pub async fn check_network(client: &dyn StacksClient, expected: StacksNetwork) -> Result<NodeInfo> {
    let info = client.get_info().await?;
    let theirs = network_of_chain_id(info.network_id);
    if theirs != Some(expected) {
        let on = match theirs {
            Some(n) => n.to_string(),
            None => format!("an unknown chain (network_id {:#010x})", info.network_id),
        };
        return Err(Error::new(
            "GET /v2/info",
            ErrorKind::WrongNetwork,
            format!(
                "the node is on {on} but [bitcoin] network means {expected}; point [stacks] \
                 node_url at a {expected} node or fix the config"
            ),
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_cannot_work_are_refused_with_the_fix() {
        let err =
            StacksRpc::with_options("127.0.0.1:20443", Duration::from_secs(1), 0).unwrap_err();
        assert!(err.detail.contains("not a URL"), "{err}");
        let err =
            StacksRpc::with_options("ftp://node:20443", Duration::from_secs(1), 0).unwrap_err();
        assert!(err.detail.contains("http://"), "{err}");
        let c =
            StacksRpc::with_options("http://node:20443/base/", Duration::from_secs(1), 0).unwrap();
        assert_eq!(
            c.url_for(
                &["v2", "contracts", "call-read", "SP1", "c", "is-ok?"],
                None
            )
            .as_str(),
            "http://node:20443/base/v2/contracts/call-read/SP1/c/is-ok%3F"
        );
    }

    #[test]
    fn chain_ids_name_their_network() {
        assert_eq!(network_of_chain_id(1), Some(StacksNetwork::Mainnet));
        assert_eq!(
            network_of_chain_id(0x8000_0000),
            Some(StacksNetwork::Testnet)
        );
        assert_eq!(network_of_chain_id(7), None);
    }

    #[test]
    fn error_bodies_are_cut_and_cleaned() {
        let long = "x".repeat(1000);
        let text = error_text(long.as_bytes());
        assert_eq!(text.chars().count(), MAX_ERROR_TEXT + 1);
        assert_eq!(error_text(b"a\nb"), "a b");
        assert_eq!(error_text(b""), "(empty body)");
    }
}
