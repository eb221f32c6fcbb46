//! `deposit inspect`: for operators and support, what a deposit says (amount, max fee,
//! recipient, lock time, signers' key) and this signer's verdict on it: accepted, or the first
//! rule that refuses it. With a bitcoind it runs every check; without one, every check that
//! needs no node, and it names the ones it skipped.
//!
//! Exit codes: 0 accepted, 1 refused, 2 the command could not decide (bad arguments, config,
//! storage or node): scripts can tell "this deposit is bad" from "this signer cannot tell".

use std::path::Path;
use std::process::ExitCode;

use bitcoin::consensus::encode::deserialize_hex;
use bitcoin::secp256k1::XOnlyPublicKey;
use bitcoin::{Amount, BlockHash, Network, OutPoint, ScriptBuf, Transaction, Txid};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::chain::bitcoin::client::BitcoinClient;
use crate::chain::bitcoin::config::parse_network;
use crate::chain::bitcoin::deposit::{
    self, Confirmation, DepositError, DepositLeaf, DepositSubmission, ReclaimLeaf, KEY_RULE,
    NODE_RULES,
};
use crate::chain::bitcoin::{BitcoinConfig, BitcoindRpc};
use crate::commands::CommandResult;
use crate::config::Config;

const COMMAND: &str = "deposit inspect";

#[derive(Debug, Subcommand)]
pub enum DepositCommand {
    /// Show what a deposit says and whether this signer accepts it (exit 0), refuses it (exit 1,
    /// with the rule), or cannot tell (exit 2).
    Inspect(Inspect),
}

impl DepositCommand {
    /// Runs with the config at `config` if one was given: this command works without one.
    pub async fn run(self, config: Option<&Path>) -> CommandResult {
        match self {
            DepositCommand::Inspect(c) => Ok(match c.run(config).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }),
        }
    }
}

#[derive(Debug, Args)]
pub struct Inspect {
    /// The deposit transaction as hex, or its txid (64 hex), which the configured bitcoind is
    /// asked for.
    #[arg(long, value_name = "HEX|TXID")]
    tx: String,
    /// The index of the deposit output in the transaction.
    #[arg(long, value_name = "N")]
    vout: u32,
    /// The deposit leaf, hex (the wallet's `depositScript`).
    #[arg(long, value_name = "HEX")]
    deposit_script: String,
    /// The reclaim leaf, hex (the wallet's `reclaimScript`).
    #[arg(long, value_name = "HEX")]
    reclaim_script: String,
    /// The Bitcoin network (mainnet, testnet, testnet4, signet, regtest); default: the config's
    /// `[bitcoin] network`.
    #[arg(long, value_name = "NETWORK", value_parser = parse_network)]
    network: Option<Network>,
    /// With a txid: the block that holds the transaction (bitcoind without txindex finds a
    /// transaction by txid only in its mempool or in a block it is told).
    #[arg(long, value_name = "HASH")]
    block: Option<BlockHash>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The verdict of an inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing refused it; `confirmation` is None when no node was asked.
    Accepted { confirmation: Option<Confirmation> },
    /// The first rule that refused it.
    Refused(DepositError),
}

/// What `deposit inspect` found: the deposit's fields as far as they parse, the verdict, and
/// the rules it could not check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    pub outpoint: OutPoint,
    pub amount: Option<Amount>,
    pub deposit: Option<DepositLeaf>,
    pub reclaim: Option<ReclaimLeaf>,
    pub verdict: Verdict,
    /// Rules not checked for want of a node or of the DKG keys.
    pub skipped: Vec<&'static str>,
}

/// Runs every check it can: the no-node checks, the signers' key when `known_keys` is given,
/// the node checks when `client` is. A node that fails or is on another network is an `Err`
/// (this signer cannot tell), not a refusal.
pub async fn inspect(
    client: Option<&dyn BitcoinClient>,
    submission: &DepositSubmission,
    network: Network,
    known_keys: Option<&[XOnlyPublicKey]>,
) -> Result<Inspection, DepositError> {
    let mut skipped = Vec::new();
    if known_keys.is_none() {
        skipped.push(KEY_RULE);
    }
    if client.is_none() {
        skipped.extend_from_slice(NODE_RULES);
    }
    let amount = usize::try_from(submission.outpoint.vout)
        .ok()
        .and_then(|i| submission.transaction.output.get(i))
        .map(|o| o.value);
    let mut inspection = Inspection {
        outpoint: submission.outpoint,
        amount,
        deposit: deposit::parse_deposit_leaf(&submission.deposit_script).ok(),
        reclaim: deposit::parse_reclaim_leaf(&submission.reclaim_script).ok(),
        verdict: Verdict::Accepted { confirmation: None },
        skipped,
    };
    let verdict = async {
        let valid = deposit::validate_without_node(submission, network)?;
        if let Some(keys) = known_keys {
            deposit::check_signers_key(&valid.deposit, keys)?;
        }
        let confirmation = match client {
            Some(c) => Some(deposit::check_on_node(c, &valid.outpoint, network).await?),
            None => None,
        };
        Ok::<_, DepositError>(confirmation)
    }
    .await;
    inspection.verdict = match verdict {
        Ok(confirmation) => Verdict::Accepted { confirmation },
        Err(e) if e.is_signer_side() => return Err(e),
        Err(e) => Verdict::Refused(e),
    };
    Ok(inspection)
}

/// The transaction with `txid` from the node: in `block` when given, else in its mempool.
pub async fn fetch_transaction(
    client: &dyn BitcoinClient,
    txid: &Txid,
    block: Option<&BlockHash>,
) -> Result<Transaction, String> {
    let found = client
        .get_raw_transaction(txid, block)
        .await
        .map_err(|e| DepositError::Node(e).to_string())?;
    match (found, block) {
        (Some(info), _) => Ok(info.tx),
        (None, Some(block)) => Err(format!(
            "bitcoind finds no transaction {txid} in block {block}: check the txid and the block \
             hash, or pass the transaction itself as hex with --tx"
        )),
        (None, None) => Err(format!(
            "bitcoind finds no transaction {txid} in its mempool; without txindex it finds a \
             confirmed transaction by txid only when told its block: pass --block HASH, or the \
             transaction itself as hex with --tx"
        )),
    }
}

fn script_arg(flag: &str, text: &str) -> Result<ScriptBuf, String> {
    hex::decode(text.trim())
        .map(ScriptBuf::from_bytes)
        .map_err(|e| format!("{flag} is not hex ({e}): pass the script as the wallet gave it"))
}

enum TxArg {
    Txid(Txid),
    Hex(Transaction),
}

fn tx_arg(text: &str) -> Result<TxArg, String> {
    let text = text.trim();
    // A transaction is at least 60 bytes, so 64 hex digits can only be a txid.
    if text.len() == 64 {
        return text
            .parse()
            .map(TxArg::Txid)
            .map_err(|e| format!("--tx {text} is not a txid: {e}"));
    }
    deserialize_hex::<Transaction>(text)
        .map(TxArg::Hex)
        .map_err(|e| {
            format!(
                "--tx is neither a txid (64 hex) nor a transaction in hex ({e}): pass the \
                 deposit transaction's hex or its txid"
            )
        })
}

/// The node client for `[bitcoin]`.
fn open_node(config: &BitcoinConfig) -> Result<BitcoindRpc, String> {
    BitcoindRpc::new(config).map_err(|e| format!("cannot use [bitcoin]: {e}"))
}

/// The x-only keys of every DKG in `[storage]`; None (the check is skipped) without a durable
/// store: an in-memory store holds keys only inside a running node.
async fn known_keys(config: Option<&Config>) -> Result<Option<Vec<XOnlyPublicKey>>, String> {
    let Some(storage) = config.and_then(|c| c.storage.as_ref()) else {
        return Ok(None);
    };
    if storage.url == "memory" {
        return Ok(None);
    }
    let store = crate::storage::open(storage, crate::storage::OnOpen::CheckSchema)
        .await
        .map_err(|e| format!("cannot read the DKG keys from [storage]: {e}"))?;
    let shares = store
        .get_all_dkg_shares()
        .await
        .map_err(|e| format!("cannot read the DKG keys from [storage]: {e}"))?;
    Ok(Some(
        shares
            .iter()
            .map(|s| s.shares.aggregate_key.x_only())
            .collect(),
    ))
}

impl Inspect {
    async fn run(self, config_path: Option<&Path>) -> Result<ExitCode, Box<dyn std::error::Error>> {
        let config = config_path.map(Config::load).transpose()?;
        let bitcoin = config.as_ref().and_then(|c| c.bitcoin.as_ref());
        let network = match (self.network, &config) {
            (Some(n), _) => n,
            (None, Some(c)) => c.needs_bitcoin(COMMAND)?.network,
            (None, None) => {
                return Err(
                    "no network: pass --network mainnet|testnet|regtest, or a config \
                            (--config FILE) with a [bitcoin] section"
                        .into(),
                )
            }
        };
        let deposit_script = script_arg("--deposit-script", &self.deposit_script)?;
        let reclaim_script = script_arg("--reclaim-script", &self.reclaim_script)?;
        let node = bitcoin.map(open_node).transpose()?;
        let transaction = match tx_arg(&self.tx)? {
            TxArg::Hex(tx) => tx,
            TxArg::Txid(txid) => {
                let Some(node) = &node else {
                    return Err(format!(
                        "--tx {txid} is a txid, and there is no [bitcoin] section to ask a node \
                         for it: pass the transaction as hex, or a config with [bitcoin]"
                    )
                    .into());
                };
                fetch_transaction(node, &txid, self.block.as_ref()).await?
            }
        };
        let submission = DepositSubmission {
            outpoint: OutPoint::new(transaction.compute_txid(), self.vout),
            deposit_script,
            reclaim_script,
            transaction,
        };
        let keys = known_keys(config.as_ref()).await?;
        let client = node.as_ref().map(|n| n as &dyn BitcoinClient);
        let inspection = inspect(client, &submission, network, keys.as_deref()).await?;
        if self.json {
            println!("{}", to_json(&inspection));
        } else {
            print!("{}", to_text(&inspection, network));
        }
        Ok(match inspection.verdict {
            Verdict::Accepted { .. } => ExitCode::SUCCESS,
            Verdict::Refused(_) => ExitCode::FAILURE,
        })
    }
}

/// The one JSON object `--json` prints.
pub fn to_json(i: &Inspection) -> serde_json::Value {
    let (verdict, rule, message) = match &i.verdict {
        Verdict::Accepted { .. } => ("accepted", None, None),
        Verdict::Refused(e) => ("refused", Some(e.rule()), Some(e.to_string())),
    };
    let confirmations = match &i.verdict {
        Verdict::Accepted {
            confirmation: Some(Confirmation::Confirmed { confirmations }),
        } => Some(*confirmations),
        Verdict::Accepted {
            confirmation: Some(Confirmation::Mempool),
        } => Some(0),
        _ => None,
    };
    json!({
        "txid": i.outpoint.txid.to_string(),
        "vout": i.outpoint.vout,
        "amount_sats": i.amount.map(Amount::to_sat),
        "max_fee_sats": i.deposit.as_ref().map(|d| d.max_fee.to_sat()),
        "recipient": i.deposit.as_ref().map(|d| d.recipient.to_string()),
        "lock_time_blocks": i.reclaim.as_ref().map(|r| r.lock_time),
        "signers_key": i.deposit.as_ref().map(|d| d.signers_key.to_string()),
        "confirmations": confirmations,
        "verdict": verdict,
        "rule": rule,
        "message": message,
        "skipped": i.skipped,
    })
}

/// The text the command prints without `--json`.
pub fn to_text(i: &Inspection, network: Network) -> String {
    let unreadable = "(does not parse)";
    let mut out = format!("deposit       {}\n", i.outpoint);
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("{label:<14}{value}\n"));
    };
    line(
        &mut out,
        "amount",
        i.amount
            .map(|a| format!("{} sats", a.to_sat()))
            .unwrap_or_else(|| "(no such output)".into()),
    );
    match &i.deposit {
        Some(d) => {
            line(&mut out, "max fee", format!("{} sats", d.max_fee.to_sat()));
            line(&mut out, "recipient", d.recipient.to_string());
            line(&mut out, "signers' key", d.signers_key.to_string());
        }
        None => {
            line(&mut out, "max fee", unreadable.into());
            line(&mut out, "recipient", unreadable.into());
            line(&mut out, "signers' key", unreadable.into());
        }
    }
    line(
        &mut out,
        "lock time",
        i.reclaim
            .as_ref()
            .map(|r| format!("{} blocks", r.lock_time))
            .unwrap_or_else(|| unreadable.into()),
    );
    line(&mut out, "network", format!("{network}"));
    match &i.verdict {
        Verdict::Accepted { confirmation } => {
            if let Some(c) = confirmation {
                line(
                    &mut out,
                    "on the node",
                    match c {
                        Confirmation::Mempool => "in the mempool, unconfirmed".into(),
                        Confirmation::Confirmed { confirmations } => {
                            format!("{confirmations} confirmations")
                        }
                    },
                );
            }
            line(&mut out, "verdict", "accepted".into());
        }
        Verdict::Refused(e) => {
            line(&mut out, "verdict", format!("refused by rule {}", e.rule()));
            line(&mut out, "", e.to_string());
        }
    }
    if !i.skipped.is_empty() {
        let mut why = Vec::new();
        if i.skipped.contains(&KEY_RULE) {
            why.push("no durable [storage] with this signer's DKG keys");
        }
        if i.skipped.iter().any(|r| NODE_RULES.contains(r)) {
            why.push("no [bitcoin] node configured");
        }
        line(
            &mut out,
            "skipped",
            format!("{} ({})", i.skipped.join(", "), why.join("; ")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::bitcoin::client::TransactionInfo;
    use crate::chain::bitcoin::client::{self, TxOutInfo};
    use crate::chain::bitcoin::deposit::testing::{wallet_submission, x_only_key, FakeNode};
    use crate::chain::stacks::address::Principal;
    use bitcoin::hashes::Hash;

    fn good(version: u8) -> DepositSubmission {
        wallet_submission(
            Amount::from_sat(250_000),
            Amount::from_sat(4_000),
            &Principal::standard(version, [0x44; 20]).unwrap(),
            x_only_key(1),
            300,
        )
    }

    fn unspent(s: &DepositSubmission, confirmations: u64) -> TxOutInfo {
        TxOutInfo {
            best_block: BlockHash::all_zeros(),
            confirmations,
            value: Amount::from_sat(250_000),
            script_pubkey: s.transaction.output[1].script_pubkey.clone(),
            coinbase: false,
        }
    }

    #[tokio::test]
    async fn without_node_or_keys_it_checks_what_it_can_and_names_the_rest() {
        let s = good(26);
        let i = inspect(None, &s, Network::Regtest, None).await.unwrap();
        assert_eq!(i.verdict, Verdict::Accepted { confirmation: None });
        assert_eq!(
            i.skipped,
            [
                "unknown_signers_key",
                "node_wrong_network",
                "output_missing_or_spent",
                "coinbase"
            ]
        );
        let json = to_json(&i);
        assert_eq!(json["amount_sats"], 250_000);
        assert_eq!(json["max_fee_sats"], 4_000);
        assert_eq!(json["lock_time_blocks"], 300);
        assert_eq!(json["verdict"], "accepted");
        assert_eq!(json["rule"], serde_json::Value::Null);
        assert_eq!(
            json["recipient"],
            Principal::standard(26, [0x44; 20]).unwrap().to_string()
        );
        assert_eq!(json["signers_key"], x_only_key(1).to_string());
        let text = to_text(&i, Network::Regtest);
        assert!(
            text.contains("skipped") && text.contains("no [bitcoin] node"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn with_node_and_keys_it_runs_every_check() {
        let s = good(26);
        let node = FakeNode::with(Some(unspent(&s, 2)));
        let keys = [x_only_key(1)];
        let i = inspect(Some(&node), &s, Network::Regtest, Some(&keys))
            .await
            .unwrap();
        assert!(i.skipped.is_empty());
        assert_eq!(
            i.verdict,
            Verdict::Accepted {
                confirmation: Some(Confirmation::Confirmed { confirmations: 2 })
            }
        );
        assert_eq!(to_json(&i)["confirmations"], 2);

        // Spent on the node: refused by the node rule, fields still shown.
        let spent = FakeNode::with(None);
        let i = inspect(Some(&spent), &s, Network::Regtest, Some(&keys))
            .await
            .unwrap();
        let json = to_json(&i);
        assert_eq!(json["verdict"], "refused");
        assert_eq!(json["rule"], "output_missing_or_spent");
        assert_eq!(json["amount_sats"], 250_000);

        // Locked to a key that is none of ours.
        let other = [x_only_key(2)];
        let i = inspect(Some(&node), &s, Network::Regtest, Some(&other))
            .await
            .unwrap();
        assert_eq!(to_json(&i)["rule"], "unknown_signers_key");
    }

    #[tokio::test]
    async fn the_first_rule_that_refuses_is_reported() {
        // A mainnet recipient on regtest.
        let s = good(22);
        let i = inspect(None, &s, Network::Regtest, None).await.unwrap();
        let Verdict::Refused(e) = &i.verdict else {
            panic!("accepted a mainnet recipient on regtest")
        };
        assert_eq!(e.rule(), "wrong_network");
        let text = to_text(&i, Network::Regtest);
        assert!(text.contains("refused by rule wrong_network"), "{text}");
        assert!(
            text.contains("ST"),
            "the message names the network to use: {text}"
        );
    }

    #[tokio::test]
    async fn a_failing_node_is_an_error_not_a_refusal() {
        let s = good(26);
        let mut node = FakeNode::with(Some(unspent(&s, 1)));
        node.fail = Some(client::Error::new(
            "getblockchaininfo",
            client::ErrorKind::Unreachable,
            "connection refused",
        ));
        let err = inspect(Some(&node), &s, Network::Regtest, None)
            .await
            .unwrap_err();
        assert_eq!(err.rule(), "node_error");
        let mut mainnet = FakeNode::with(Some(unspent(&s, 1)));
        mainnet.network = Network::Bitcoin;
        let err = inspect(Some(&mainnet), &s, Network::Regtest, None)
            .await
            .unwrap_err();
        assert_eq!(err.rule(), "node_wrong_network");
    }

    #[tokio::test]
    async fn a_txid_is_looked_up_in_the_mempool_or_the_given_block() {
        let s = good(26);
        let txid = s.transaction.compute_txid();
        let mut node = FakeNode::with(None);
        let err = fetch_transaction(&node, &txid, None).await.unwrap_err();
        assert!(err.contains("--block") && err.contains("txindex"), "{err}");
        let block = BlockHash::all_zeros();
        let err = fetch_transaction(&node, &txid, Some(&block))
            .await
            .unwrap_err();
        assert!(err.contains(&block.to_string()), "{err}");
        node.transaction = Some(TransactionInfo {
            tx: s.transaction.clone(),
            block_hash: None,
            confirmations: 0,
        });
        assert_eq!(
            fetch_transaction(&node, &txid, None).await.unwrap(),
            s.transaction
        );
    }

    #[test]
    fn tx_arguments() {
        assert!(matches!(tx_arg(&"ab".repeat(32)), Ok(TxArg::Txid(_))));
        let hex = bitcoin::consensus::encode::serialize_hex(&good(26).transaction);
        assert!(matches!(tx_arg(&hex), Ok(TxArg::Hex(_))));
        let err = tx_arg("zz").err().unwrap();
        assert!(err.contains("neither a txid"), "{err}");
    }
}
