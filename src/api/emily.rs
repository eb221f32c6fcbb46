//! An optional client for an Emily-style deposit API, for operators who run one: every
//! `[api] emily_poll_secs` it reads `GET {emily_url}/deposit?status=pending` (following
//! `nextToken`, a bounded number of pages) and feeds each deposit it does not hold through the
//! same validation and storage as `POST /deposit`. Emily lists scripts, not transactions, so the
//! transaction comes from this signer's own node (`getrawtransaction`: the mempool, or any block
//! on a node with `txindex`); one the node cannot find is tried again at the next poll.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{OutPoint, ScriptBuf, Txid};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::intake::{Intake, Refusal};
use crate::chain::bitcoin::deposit::DepositSubmission;
use crate::storage::SubmissionSource;

/// Pages read per poll; the rest waits for the next poll.
const MAX_PAGES: usize = 20;
/// The largest page accepted.
const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// One page of `GET /deposit?status=...` (Emily's `GetDepositsResponse`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositsPage {
    #[serde(default)]
    pub next_token: Option<String>,
    pub deposits: Vec<DepositInfo>,
}

/// Emily's `DepositInfo`, the fields intake uses (others are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositInfo {
    pub bitcoin_txid: String,
    pub bitcoin_tx_output_index: u32,
    pub deposit_script: String,
    pub reclaim_script: String,
}

/// What the poller did.
#[derive(Debug, Default)]
pub struct EmilyStats {
    pub polls: AtomicU64,
    pub poll_failures: AtomicU64,
    pub listed: AtomicU64,
    pub stored: AtomicU64,
    pub already_held: AtomicU64,
    /// Listed, but this signer's node does not have the transaction (yet).
    pub transaction_unknown: AtomicU64,
    pub malformed: AtomicU64,
    pub refused: AtomicU64,
    /// The node or the store could not answer; tried again at the next poll.
    pub unavailable: AtomicU64,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum EmilyError {
    #[error("Emily at {url}: {detail}")]
    Http { url: String, detail: String },
}

/// The poller.
pub struct EmilyClient {
    base: String,
    http: reqwest::Client,
    stats: Arc<EmilyStats>,
}

impl EmilyClient {
    pub fn new(emily_url: &str) -> Result<EmilyClient, EmilyError> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| EmilyError::Http {
                url: emily_url.to_string(),
                detail: e.to_string(),
            })?;
        Ok(EmilyClient {
            base: emily_url.trim_end_matches('/').to_string(),
            http,
            stats: Arc::new(EmilyStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<EmilyStats> {
        self.stats.clone()
    }

    /// Polls every `interval` until `shutdown`.
    pub async fn run(self, intake: Arc<Intake>, interval: Duration, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.poll_once(&intake).await {
                self.stats.poll_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "Emily poll failed; trying again at the next poll");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One poll: every listed pending deposit not held yet goes through intake.
    pub async fn poll_once(&self, intake: &Intake) -> Result<(), EmilyError> {
        self.stats.polls.fetch_add(1, Ordering::Relaxed);
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.page(next.as_deref()).await?;
            for info in &page.deposits {
                self.stats.listed.fetch_add(1, Ordering::Relaxed);
                self.take(intake, info).await;
            }
            match page.next_token {
                Some(t) if !t.is_empty() && !page.deposits.is_empty() => next = Some(t),
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    async fn page(&self, next_token: Option<&str>) -> Result<DepositsPage, EmilyError> {
        let url = format!("{}/deposit", self.base);
        let err = |detail: String| EmilyError::Http {
            url: url.clone(),
            detail,
        };
        let mut query = vec![("status", "pending")];
        if let Some(t) = next_token {
            query.push(("nextToken", t));
        }
        let mut response = self
            .http
            .get(&url)
            .query(&query)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !response.status().is_success() {
            return Err(err(format!("answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| err(e.to_string()))? {
            if body.len() + chunk.len() > MAX_PAGE_BYTES {
                return Err(err(format!("page larger than {MAX_PAGE_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| err(format!("not a deposit list: {e}")))
    }

    async fn take(&self, intake: &Intake, info: &DepositInfo) {
        let s = &self.stats;
        let parsed = (|| {
            let txid = Txid::from_str(&info.bitcoin_txid).ok()?;
            let deposit_script = ScriptBuf::from_hex(&info.deposit_script).ok()?;
            let reclaim_script = ScriptBuf::from_hex(&info.reclaim_script).ok()?;
            Some((txid, deposit_script, reclaim_script))
        })();
        let Some((txid, deposit_script, reclaim_script)) = parsed else {
            s.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(txid = %info.bitcoin_txid, "Emily listed a malformed deposit");
            return;
        };
        let outpoint = OutPoint {
            txid,
            vout: info.bitcoin_tx_output_index,
        };
        if matches!(intake.held(&outpoint).await, Ok(Some(_))) {
            s.already_held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let transaction = match intake.client().get_raw_transaction(&txid, None).await {
            Ok(Some(info)) => info.tx,
            Ok(None) => {
                s.transaction_unknown.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::debug!(%outpoint, error = %e, "cannot fetch an Emily deposit's transaction");
                s.transaction_unknown.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let submission = DepositSubmission {
            outpoint,
            deposit_script,
            reclaim_script,
            transaction,
        };
        match intake.submit(submission, SubmissionSource::Wallet).await {
            Ok(a) if a.new => {
                s.stored.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                s.already_held.fetch_add(1, Ordering::Relaxed);
            }
            Err(Refusal::Rule { .. }) => {
                s.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                s.unavailable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
