//! [`BitcoindRpc`]: the [`BitcoinClient`] over bitcoind's JSON-RPC (HTTP POST, Basic auth with a
//! user and password file or the node's cookie file). Calls time out, transient failures
//! (unreachable, warming up) are retried with doubling backoff, and every failure becomes an
//! [`Error`] naming the method. Error −5 ("not found") is `Ok(None)` where the trait says so.
//!
//! Blocks and transactions are fetched as raw hex and decoded with rust-bitcoin, so the signer
//! does not depend on the JSON layout of verbose answers, which changes between releases.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bitcoin::consensus::encode;
use bitcoin::{Address, Amount, Block, BlockHash, FeeRate, OutPoint, ScriptBuf, Transaction, Txid};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::client::*;
use super::config::{parse_network, BitcoinConfig};
use crate::chain::http::{self, error_chain};

/// How the client proves itself to bitcoind.
#[derive(Clone)]
pub enum RpcAuth {
    /// `rpcuser` / `rpcpassword` (or an `rpcauth` entry).
    UserPassword {
        user: String,
        password: Zeroizing<String>,
    },
    /// bitcoind's `.cookie` file, read on each 401 (bitcoind writes a new one on every start).
    Cookie(PathBuf),
    /// No credentials (a node behind an authenticating proxy).
    None,
}

impl std::fmt::Debug for RpcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            RpcAuth::Cookie(path) => write!(f, "Cookie({})", path.display()),
            RpcAuth::None => f.write_str("None"),
        }
    }
}

/// The bitcoind JSON-RPC client.
pub struct BitcoindRpc {
    http: reqwest::Client,
    url: String,
    auth: RpcAuth,
    /// The cookie's `user:password`, cached until a 401.
    cookie: std::sync::Mutex<Option<Zeroizing<String>>>,
    retries: u32,
    backoff: Duration,
    next_id: AtomicU64,
}

impl std::fmt::Debug for BitcoindRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoindRpc")
            .field("url", &self.url)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// One JSON-RPC answer, 1.0 or 2.0 style.
#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    result: Value,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct RpcError {
    code: i64,
    message: String,
}

/// The longest body the client reads from the node: a 4 MB block in hex is 8 MB.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

impl BitcoindRpc {
    /// A client for `[bitcoin]`: reads the password file now (so a missing file fails at start),
    /// the cookie file on first use.
    pub fn new(config: &BitcoinConfig) -> Result<BitcoindRpc> {
        let auth =
            match (
                &config.rpc_user,
                &config.rpc_password_file,
                &config.rpc_cookie_file,
            ) {
                (Some(user), Some(file), None) => {
                    let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                        Error::new(
                            "config",
                            ErrorKind::Unauthorized,
                            format!(
                                "cannot read [bitcoin] rpc_password_file {}: {e}",
                                file.display()
                            ),
                        )
                    })?);
                    RpcAuth::UserPassword {
                        user: user.clone(),
                        password: Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned()),
                    }
                }
                (None, None, Some(cookie)) => RpcAuth::Cookie(cookie.clone()),
                (None, None, None) => RpcAuth::None,
                _ => return Err(Error::new(
                    "config",
                    ErrorKind::Unauthorized,
                    "[bitcoin] takes either rpc_user with rpc_password_file, or rpc_cookie_file, \
                     not a mix",
                )),
            };
        BitcoindRpc::with_auth(
            &config.rpc_url,
            auth,
            config.rpc_timeout(),
            config.rpc_retries,
        )
    }

    /// A client with explicit credentials (tests, the devnet).
    pub fn with_auth(
        url: &str,
        auth: RpcAuth,
        timeout: Duration,
        retries: u32,
    ) -> Result<BitcoindRpc> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            Error::new(
                "config",
                ErrorKind::Unreachable,
                format!(
                    "[bitcoin] rpc_url `{url}` is not a URL: {e}; write e.g. http://127.0.0.1:8332"
                ),
            )
        })?;
        if parsed.scheme() != "http" {
            return Err(Error::new(
                "config",
                ErrorKind::Unreachable,
                format!(
                    "[bitcoin] rpc_url `{url}`: only http:// is supported (bitcoind serves plain \
                     HTTP; keep it on loopback or tunnel it)"
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| Error::new("config", ErrorKind::Unreachable, e.to_string()))?;
        Ok(BitcoindRpc {
            http,
            url: url.to_owned(),
            auth,
            cookie: std::sync::Mutex::new(None),
            retries,
            backoff: Duration::from_millis(250),
            next_id: AtomicU64::new(1),
        })
    }

    /// The first wait between retries (doubled each time).
    pub fn set_backoff(&mut self, backoff: Duration) {
        self.backoff = backoff;
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn credentials(
        &self,
        method: &'static str,
        reread: bool,
    ) -> Result<Option<(String, Zeroizing<String>)>> {
        match &self.auth {
            RpcAuth::None => Ok(None),
            RpcAuth::UserPassword { user, password } => Ok(Some((user.clone(), password.clone()))),
            RpcAuth::Cookie(path) => {
                let mut cached = self.cookie.lock().unwrap_or_else(|p| p.into_inner());
                if reread || cached.is_none() {
                    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                        Error::new(
                            method,
                            ErrorKind::Unauthorized,
                            format!(
                                "cannot read bitcoind's cookie file {}: {e}; is bitcoind running \
                                 with this datadir, and may this user read it?",
                                path.display()
                            ),
                        )
                    })?);
                    *cached = Some(Zeroizing::new(text.trim().to_owned()));
                }
                let cookie = cached.as_ref().expect("just set");
                let (user, password) = cookie.split_once(':').ok_or_else(|| {
                    Error::new(
                        method,
                        ErrorKind::Unauthorized,
                        format!("cookie file {} is not `user:password`", path.display()),
                    )
                })?;
                Ok(Some((user.to_owned(), Zeroizing::new(password.to_owned()))))
            }
        }
    }

    /// One call with retries: returns the `result` field, or the node's RPC error.
    pub async fn call_value(&self, method: &'static str, params: Vec<Value>) -> Result<Value> {
        let mut attempt = 0;
        let mut reread_cookie = false;
        loop {
            match self.call_once(method, &params, reread_cookie).await {
                Err(e)
                    if matches!(e.kind, ErrorKind::Unauthorized)
                        && matches!(self.auth, RpcAuth::Cookie(_))
                        && !reread_cookie =>
                {
                    // bitcoind restarted and wrote a new cookie: read it once more.
                    reread_cookie = true;
                }
                Err(e) if e.is_transient() && attempt < self.retries => {
                    let wait = self.backoff * 2u32.saturating_pow(attempt);
                    tracing::debug!(method, attempt, error = %e, "bitcoind call failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One call, decoded as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Vec<Value>,
    ) -> Result<T> {
        let value = self.call_value(method, params).await?;
        serde_json::from_value(value).map_err(|e| {
            Error::new(
                method,
                ErrorKind::BadResponse,
                format!("unexpected answer: {e}"),
            )
        })
    }

    /// Like [`call`](Self::call), with error −5 (and the given "not found" codes) as None.
    async fn call_opt<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Vec<Value>,
        not_found: &[i64],
    ) -> Result<Option<T>> {
        match self.call(method, params).await {
            Ok(v) => Ok(Some(v)),
            Err(e)
                if e.rpc_code() == Some(RPC_INVALID_ADDRESS_OR_KEY)
                    || e.rpc_code().is_some_and(|c| not_found.contains(&c)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn call_once(
        &self,
        method: &'static str,
        params: &[Value],
        reread: bool,
    ) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        let mut request = self.http.post(&self.url).json(&body);
        if let Some((user, password)) = self.credentials(method, reread)? {
            request = request.basic_auth(user, Some(password.as_str()));
        }
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "cannot reach the node"
            };
            Error::new(
                method,
                ErrorKind::Unreachable,
                format!(
                    "{what} at {}: {}; is bitcoind running, and is [bitcoin] rpc_url right?",
                    self.url,
                    error_chain(&e)
                ),
            )
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Error::new(
                method,
                ErrorKind::Unauthorized,
                format!(
                    "the node refused our credentials (HTTP {}); check [bitcoin] rpc_user and \
                     rpc_password_file, or rpc_cookie_file",
                    status.as_u16()
                ),
            ));
        }
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Err(Error::new(
                method,
                ErrorKind::Unreachable,
                "the node is busy (HTTP 503: its RPC work queue is full)",
            ));
        }
        let bytes = read_limited(response, method).await?;
        let parsed: Response = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                method,
                ErrorKind::BadResponse,
                format!(
                    "HTTP {} with a body that is not JSON-RPC ({e}); is rpc_url a bitcoind?",
                    status.as_u16()
                ),
            )
        })?;
        if let Some(err) = parsed.error {
            return Err(Error::new(
                method,
                ErrorKind::Rpc {
                    code: err.code,
                    message: err.message.clone(),
                },
                format!("error {}: {}", err.code, err.message),
            ));
        }
        if !status.is_success() {
            return Err(Error::new(
                method,
                ErrorKind::BadResponse,
                format!("HTTP {} without an RPC error", status.as_u16()),
            ));
        }
        Ok(parsed.result)
    }

    // Regtest and wallet calls: the devnet and the client tests use them, against the devnet's
    // regtest node or a real `bitcoind -regtest`.

    pub async fn generate_to_address(
        &self,
        blocks: u64,
        address: &Address,
    ) -> Result<Vec<BlockHash>> {
        let hashes: Vec<String> = self
            .call(
                "generatetoaddress",
                vec![json!(blocks), json!(address.to_string())],
            )
            .await?;
        hashes
            .iter()
            .map(|h| parse_hash("generatetoaddress", h))
            .collect()
    }

    /// `generateblock`: a block paying `address` with exactly `txs` (raw hex or mempool txids).
    pub async fn generate_block(&self, address: &Address, txs: &[String]) -> Result<BlockHash> {
        #[derive(Deserialize)]
        struct Generated {
            hash: String,
        }
        let out: Generated = self
            .call(
                "generateblock",
                vec![json!(address.to_string()), json!(txs)],
            )
            .await?;
        parse_hash("generateblock", &out.hash)
    }

    pub async fn invalidate_block(&self, hash: &BlockHash) -> Result<()> {
        self.call_value("invalidateblock", vec![json!(hash.to_string())])
            .await?;
        Ok(())
    }

    pub async fn reconsider_block(&self, hash: &BlockHash) -> Result<()> {
        self.call_value("reconsiderblock", vec![json!(hash.to_string())])
            .await?;
        Ok(())
    }

    pub async fn get_new_address(&self) -> Result<Address> {
        let text: String = self.call("getnewaddress", vec![]).await?;
        Address::from_str(&text)
            .map(|a| a.assume_checked())
            .map_err(|e| Error::new("getnewaddress", ErrorKind::BadResponse, e.to_string()))
    }

    pub async fn send_to_address(&self, address: &Address, amount: Amount) -> Result<Txid> {
        let txid: String = self
            .call(
                "sendtoaddress",
                vec![json!(address.to_string()), json!(amount.to_btc())],
            )
            .await?;
        parse_hash("sendtoaddress", &txid)
    }
}

async fn read_limited(response: reqwest::Response, method: &'static str) -> Result<Vec<u8>> {
    http::read_limited(response, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| match e {
            http::BodyError::TooLarge => Error::new(
                method,
                ErrorKind::BadResponse,
                format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
            ),
            http::BodyError::Broken(why) => Error::new(
                method,
                ErrorKind::Unreachable,
                format!("connection lost while reading the answer: {why}"),
            ),
        })
}

fn parse_hash<T: FromStr>(method: &'static str, text: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    T::from_str(text).map_err(|e| {
        Error::new(
            method,
            ErrorKind::BadResponse,
            format!("bad hash `{text}`: {e}"),
        )
    })
}

fn decode_hex<T: encode::Decodable>(method: &'static str, text: &str) -> Result<T> {
    encode::deserialize_hex(text).map_err(|e| {
        Error::new(
            method,
            ErrorKind::BadResponse,
            format!("cannot decode: {e}"),
        )
    })
}

fn btc(method: &'static str, value: f64) -> Result<Amount> {
    Amount::from_btc(value).map_err(|e| {
        Error::new(
            method,
            ErrorKind::BadResponse,
            format!("bad amount {value}: {e}"),
        )
    })
}

/// A fee rate in BTC/kvB, as bitcoind reports it, rounded up to whole sat/kwu.
fn btc_per_kvb(method: &'static str, value: f64) -> Result<FeeRate> {
    let sat_per_kvb = btc(method, value)?.to_sat();
    Ok(FeeRate::from_sat_per_kwu(sat_per_kvb.div_ceil(4)))
}

#[derive(Deserialize)]
struct HeaderJson {
    hash: String,
    height: u64,
    previousblockhash: Option<String>,
    confirmations: i64,
    time: u32,
}

#[derive(Deserialize)]
struct RawTxJson {
    hex: String,
    blockhash: Option<String>,
    #[serde(default)]
    confirmations: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScriptPubKeyJson {
    hex: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TxOutJson {
    bestblock: String,
    confirmations: u64,
    value: f64,
    script_pub_key: ScriptPubKeyJson,
    coinbase: bool,
}

#[derive(Deserialize)]
struct FeeEstimateJson {
    feerate: Option<f64>,
}

#[derive(Deserialize)]
struct SpendingJson {
    spendingtxid: Option<String>,
}

#[derive(Deserialize)]
struct MempoolFeesJson {
    base: f64,
    ancestor: f64,
    descendant: f64,
}

#[derive(Deserialize)]
struct MempoolEntryJson {
    vsize: u64,
    fees: MempoolFeesJson,
    ancestorsize: u64,
    descendantsize: u64,
    height: u64,
    #[serde(rename = "bip125-replaceable", default)]
    bip125_replaceable: bool,
}

#[derive(Deserialize)]
struct AcceptFeesJson {
    base: f64,
}

#[derive(Deserialize)]
struct AcceptJson {
    txid: String,
    allowed: Option<bool>,
    #[serde(rename = "reject-reason")]
    reject_reason: Option<String>,
    vsize: Option<u64>,
    fees: Option<AcceptFeesJson>,
}

#[derive(Deserialize)]
struct ChainInfoJson {
    chain: String,
    blocks: u64,
    bestblockhash: String,
    #[serde(default)]
    initialblockdownload: bool,
    #[serde(default)]
    pruned: bool,
}

#[derive(Deserialize)]
struct NetworkInfoJson {
    version: u64,
    subversion: String,
    relayfee: f64,
    incrementalfee: f64,
}

#[async_trait]
impl BitcoinClient for BitcoindRpc {
    async fn get_best_block_hash(&self) -> Result<BlockHash> {
        let text: String = self.call("getbestblockhash", vec![]).await?;
        parse_hash("getbestblockhash", &text)
    }

    async fn get_block_header(&self, hash: &BlockHash) -> Result<Option<BlockHeaderInfo>> {
        const M: &str = "getblockheader";
        let Some(h): Option<HeaderJson> = self
            .call_opt(M, vec![json!(hash.to_string()), json!(true)], &[])
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(BlockHeaderInfo {
            hash: parse_hash(M, &h.hash)?,
            height: h.height,
            previous: h
                .previousblockhash
                .as_deref()
                .map(|p| parse_hash(M, p))
                .transpose()?,
            confirmations: h.confirmations,
            time: h.time,
        }))
    }

    async fn get_block(&self, hash: &BlockHash) -> Result<Option<Block>> {
        const M: &str = "getblock";
        let Some(hex): Option<String> = self
            .call_opt(M, vec![json!(hash.to_string()), json!(0)], &[])
            .await?
        else {
            return Ok(None);
        };
        let block: Block = decode_hex(M, &hex)?;
        if block.block_hash() != *hash {
            return Err(Error::new(
                M,
                ErrorKind::BadResponse,
                format!("asked for block {hash}, got {}", block.block_hash()),
            ));
        }
        Ok(Some(block))
    }

    async fn get_block_hash(&self, height: u64) -> Result<Option<BlockHash>> {
        const M: &str = "getblockhash";
        let text: Option<String> = self
            .call_opt(M, vec![json!(height)], &[RPC_INVALID_PARAMETER])
            .await?;
        text.map(|t| parse_hash(M, &t)).transpose()
    }

    async fn get_raw_transaction(
        &self,
        txid: &Txid,
        block: Option<&BlockHash>,
    ) -> Result<Option<TransactionInfo>> {
        const M: &str = "getrawtransaction";
        let mut params = vec![json!(txid.to_string()), json!(true)];
        if let Some(b) = block {
            params.push(json!(b.to_string()));
        }
        let Some(raw): Option<RawTxJson> = self.call_opt(M, params, &[]).await? else {
            return Ok(None);
        };
        let tx: Transaction = decode_hex(M, &raw.hex)?;
        if tx.compute_txid() != *txid {
            return Err(Error::new(
                M,
                ErrorKind::BadResponse,
                format!("asked for {txid}, got {}", tx.compute_txid()),
            ));
        }
        Ok(Some(TransactionInfo {
            tx,
            block_hash: raw
                .blockhash
                .as_deref()
                .map(|b| parse_hash(M, b))
                .transpose()?,
            confirmations: raw.confirmations,
        }))
    }

    async fn get_tx_out(
        &self,
        outpoint: &OutPoint,
        include_mempool: bool,
    ) -> Result<Option<TxOutInfo>> {
        const M: &str = "gettxout";
        let value: Value = self
            .call_value(
                M,
                vec![
                    json!(outpoint.txid.to_string()),
                    json!(outpoint.vout),
                    json!(include_mempool),
                ],
            )
            .await?;
        if value.is_null() {
            return Ok(None);
        }
        let out: TxOutJson = serde_json::from_value(value).map_err(|e| {
            Error::new(M, ErrorKind::BadResponse, format!("unexpected answer: {e}"))
        })?;
        Ok(Some(TxOutInfo {
            best_block: parse_hash(M, &out.bestblock)?,
            confirmations: out.confirmations,
            value: btc(M, out.value)?,
            script_pubkey: ScriptBuf::from_hex(&out.script_pub_key.hex)
                .map_err(|e| Error::new(M, ErrorKind::BadResponse, e.to_string()))?,
            coinbase: out.coinbase,
        }))
    }

    async fn estimate_smart_fee(&self, conf_target: u16) -> Result<Option<FeeRate>> {
        const M: &str = "estimatesmartfee";
        let est: FeeEstimateJson = self.call(M, vec![json!(conf_target)]).await?;
        est.feerate.map(|r| btc_per_kvb(M, r)).transpose()
    }

    async fn get_tx_spending_prevout(&self, outpoint: &OutPoint) -> Result<Option<Txid>> {
        const M: &str = "gettxspendingprevout";
        let answers: Vec<SpendingJson> = self
            .call(
                M,
                vec![json!([{"txid": outpoint.txid.to_string(), "vout": outpoint.vout}])],
            )
            .await?;
        match answers.into_iter().next() {
            Some(SpendingJson {
                spendingtxid: Some(t),
            }) => parse_hash(M, &t).map(Some),
            Some(_) => Ok(None),
            None => Err(Error::new(M, ErrorKind::BadResponse, "empty answer")),
        }
    }

    async fn get_mempool_entry(&self, txid: &Txid) -> Result<Option<MempoolEntry>> {
        const M: &str = "getmempoolentry";
        let Some(e): Option<MempoolEntryJson> =
            self.call_opt(M, vec![json!(txid.to_string())], &[]).await?
        else {
            return Ok(None);
        };
        Ok(Some(MempoolEntry {
            vsize: e.vsize,
            fee: btc(M, e.fees.base)?,
            ancestor_fee: btc(M, e.fees.ancestor)?,
            ancestor_vsize: e.ancestorsize,
            descendant_fee: btc(M, e.fees.descendant)?,
            descendant_vsize: e.descendantsize,
            height: e.height,
            bip125_replaceable: e.bip125_replaceable,
        }))
    }

    async fn get_mempool_descendants(&self, txid: &Txid) -> Result<Vec<Txid>> {
        const M: &str = "getmempooldescendants";
        let txids: Option<Vec<String>> =
            self.call_opt(M, vec![json!(txid.to_string())], &[]).await?;
        txids
            .unwrap_or_default()
            .iter()
            .map(|t| parse_hash(M, t))
            .collect()
    }

    async fn send_raw_transaction(&self, tx: &Transaction) -> Result<Txid> {
        const M: &str = "sendrawtransaction";
        let txid: String = self.call(M, vec![json!(encode::serialize_hex(tx))]).await?;
        parse_hash(M, &txid)
    }

    async fn test_mempool_accept(&self, txs: &[Transaction]) -> Result<Vec<MempoolAcceptance>> {
        const M: &str = "testmempoolaccept";
        let hexes: Vec<String> = txs.iter().map(encode::serialize_hex).collect();
        let answers: Vec<AcceptJson> = self.call(M, vec![json!(hexes)]).await?;
        answers
            .into_iter()
            .map(|a| {
                Ok(MempoolAcceptance {
                    txid: parse_hash(M, &a.txid)?,
                    allowed: a.allowed.unwrap_or(false),
                    reject_reason: a.reject_reason,
                    vsize: a.vsize,
                    fee: a.fees.map(|f| btc(M, f.base)).transpose()?,
                })
            })
            .collect()
    }

    async fn get_blockchain_info(&self) -> Result<BlockchainInfo> {
        const M: &str = "getblockchaininfo";
        let info: ChainInfoJson = self.call(M, vec![]).await?;
        let network =
            parse_network(&info.chain).map_err(|e| Error::new(M, ErrorKind::BadResponse, e))?;
        Ok(BlockchainInfo {
            network,
            blocks: info.blocks,
            best_block_hash: parse_hash(M, &info.bestblockhash)?,
            initial_block_download: info.initialblockdownload,
            pruned: info.pruned,
        })
    }

    async fn get_network_info(&self) -> Result<NetworkInfo> {
        const M: &str = "getnetworkinfo";
        let info: NetworkInfoJson = self.call(M, vec![]).await?;
        Ok(NetworkInfo {
            version: info.version,
            subversion: info.subversion,
            relay_fee: btc_per_kvb(M, info.relayfee)?,
            incremental_fee: btc_per_kvb(M, info.incrementalfee)?,
        })
    }
}

/// Checks at start that the node is on the configured network, and says what to fix if not.
pub async fn check_network(
    client: &dyn BitcoinClient,
    expected: bitcoin::Network,
) -> Result<BlockchainInfo> {
    let info = client.get_blockchain_info().await?;
    if info.network != expected {
        return Err(Error::new(
            "getblockchaininfo",
            ErrorKind::WrongNetwork,
            format!(
                "the node is on {} but [bitcoin] network is {}; point rpc_url at a {} node or fix \
                 the config",
                super::config::bitcoind_chain_name(info.network),
                super::config::bitcoind_chain_name(expected),
                super::config::bitcoind_chain_name(expected),
            ),
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_rates_round_up_and_passwords_stay_out_of_debug() {
        // 1 sat/vB = 0.00001 BTC/kvB = 250 sat/kwu.
        assert_eq!(
            btc_per_kvb("t", 0.00001).unwrap(),
            FeeRate::from_sat_per_kwu(250)
        );
        // 1.001 sat/vB rounds up, never down.
        assert_eq!(
            btc_per_kvb("t", 0.00001001).unwrap(),
            FeeRate::from_sat_per_kwu(251)
        );
        let auth = RpcAuth::UserPassword {
            user: "alice".into(),
            password: Zeroizing::new("hunter2-secret".into()),
        };
        let client =
            BitcoindRpc::with_auth("http://127.0.0.1:1", auth, Duration::from_secs(1), 0).unwrap();
        let text = format!("{client:?}");
        assert!(
            text.contains("alice") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn urls_that_cannot_work_are_refused_with_the_fix() {
        let err =
            BitcoindRpc::with_auth("127.0.0.1:8332", RpcAuth::None, Duration::from_secs(1), 0)
                .unwrap_err();
        assert!(err.detail.contains("not a URL"), "{err}");
        let err = BitcoindRpc::with_auth(
            "https://node:8332",
            RpcAuth::None,
            Duration::from_secs(1),
            0,
        )
        .unwrap_err();
        assert!(err.detail.contains("only http://"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_node_is_retried_then_named() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let mut client = BitcoindRpc::with_auth(
            "http://127.0.0.1:9",
            RpcAuth::None,
            Duration::from_secs(2),
            2,
        )
        .unwrap();
        client.set_backoff(Duration::from_millis(10));
        let err = client.get_best_block_hash().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unreachable);
        assert!(
            err.to_string().contains("getbestblockhash") && err.to_string().contains("rpc_url"),
            "{err}"
        );
    }
}
