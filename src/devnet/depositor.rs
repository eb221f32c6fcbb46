//! The devnet's built-in depositor: deposits made the way the `sbtc` wallet library makes them
//! (`buildSbtcDepositTx`: one transaction per deposit, a P2TR output of the NUMS key with the
//! deposit and reclaim leaves, change back to the wallet; then `notifySbtc`: a JSON `POST
//! /deposit` to a signer's API). Funds come from the regtest node's wallet.

use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Keypair, Secp256k1, XOnlyPublicKey};
use bitcoin::{Amount, OutPoint, ScriptBuf, Transaction};

use super::regtest::RegtestNode;
use crate::chain::bitcoin::deposit::{
    build_deposit_leaf, build_reclaim_leaf, deposit_output_script, standard_user_script,
};
use crate::chain::stacks::address::{Principal, VERSION_TESTNET_SINGLESIG};

/// The `sbtc` library's default reclaim lock time, in Bitcoin blocks.
pub const RECLAIM_LOCK_TIME: u16 = 950;
/// The max fee each devnet deposit allows (the library's default is 80,000 sats).
pub const MAX_FEE_SATS: u64 = 80_000;

/// One deposit the depositor made.
#[derive(Clone, Debug)]
pub struct MadeDeposit {
    pub outpoint: OutPoint,
    pub amount: Amount,
    pub max_fee: Amount,
    /// The Stacks address that receives the sBTC.
    pub recipient: String,
    /// The Bitcoin height when it was broadcast.
    pub height: u32,
    pub at: Instant,
}

/// Recipients of the devnet's deposits: `count` testnet standard principals.
pub fn recipients(count: usize) -> Result<Vec<Principal>, String> {
    let version = VERSION_TESTNET_SINGLESIG;
    (0..count)
        .map(|i| {
            let mut hash = [0u8; 20];
            hash[0] = 0xde;
            hash[1] = 0x90;
            hash[19] = i as u8 + 1;
            Principal::standard(version, hash).map_err(|e| e.to_string())
        })
        .collect()
}

/// Makes `count` deposits to `signers_key`, spread over `recipients`, each announced to one of
/// `apis` (base URLs, round robin) as a wallet does. Amounts differ so the summary can tell them
/// apart: 100,000 sats plus 1,000 per deposit.
pub async fn make_deposits(
    regtest: &RegtestNode,
    signers_key: XOnlyPublicKey,
    recipients: &[Principal],
    apis: &[String],
    count: usize,
) -> Result<Vec<MadeDeposit>, String> {
    if recipients.is_empty() || apis.is_empty() {
        return Err("the depositor needs a recipient and a signer API".into());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let secp = Secp256k1::new();
    let mut made = Vec::with_capacity(count);
    for i in 0..count {
        let recipient = &recipients[i % recipients.len()];
        let max_fee = Amount::from_sat(MAX_FEE_SATS);
        let amount = Amount::from_sat(100_000 + 1_000 * i as u64);
        // The depositor's reclaim key: a throwaway key per deposit, as a wallet would derive.
        let reclaim = Keypair::new(&secp, &mut rand::thread_rng());
        let deposit_script = build_deposit_leaf(max_fee, recipient, signers_key);
        let reclaim_script = build_reclaim_leaf(
            RECLAIM_LOCK_TIME,
            &standard_user_script(reclaim.x_only_public_key().0),
        );
        let output = deposit_output_script(&deposit_script, &reclaim_script);
        let (tx, height) = regtest.with_state(|s| -> Result<(Transaction, u32), String> {
            let txid = s
                .send_to_script(&output, amount, None)
                .map_err(|e| format!("the regtest wallet cannot fund deposit {i}: {e:?}"))?;
            let tx = s
                .mempool
                .get(&txid)
                .map(|e| e.tx.clone())
                .ok_or_else(|| format!("deposit {i}'s transaction is not in the mempool"))?;
            Ok((tx, s.chain.tip_height()))
        })?;
        let vout = tx
            .output
            .iter()
            .position(|o| o.script_pubkey == output)
            .ok_or_else(|| format!("deposit {i}'s transaction lacks its deposit output"))?;
        let outpoint = OutPoint::new(tx.compute_txid(), vout as u32);
        let api = &apis[i % apis.len()];
        notify(&http, api, &tx, vout, &deposit_script, &reclaim_script).await?;
        made.push(MadeDeposit {
            outpoint,
            amount,
            max_fee,
            recipient: recipient
                .to_address()
                .map_err(|e| format!("recipient {i}: {e}"))?,
            height,
            at: Instant::now(),
        });
    }
    Ok(made)
}

/// `notifySbtc`: the body the library POSTs to `<sbtcApiUrl>/deposit`.
async fn notify(
    http: &reqwest::Client,
    api: &str,
    tx: &Transaction,
    vout: usize,
    deposit_script: &ScriptBuf,
    reclaim_script: &ScriptBuf,
) -> Result<(), String> {
    let body = serde_json::json!({
        "bitcoinTxid": tx.compute_txid().to_string(),
        "bitcoinTxOutputIndex": vout,
        "depositScript": hex::encode(deposit_script.as_bytes()),
        "reclaimScript": hex::encode(reclaim_script.as_bytes()),
        "transactionHex": bitcoin::consensus::encode::serialize_hex(tx),
    });
    let url = format!("{}/deposit", api.trim_end_matches('/'));
    let response = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("POST {url} answered {status}: {text}"));
    }
    Ok(())
}
