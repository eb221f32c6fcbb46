//! Transaction checks shared by blocks and the mempool: bitcoind's context-free checks
//! (`CheckTransaction`), input amounts and coinbase maturity (`CheckTxInputs`), absolute and
//! relative lock times (BIP-65/68/112/113), and every input's script through Bitcoin Core's own
//! verifier (`bitcoinconsensus`, taproot on).

use std::collections::HashSet;

use bitcoin::consensus::encode::serialize;
use bitcoin::{Amount, Transaction, TxOut};

use crate::chain::bitcoin::client::{
    RPC_VERIFY_ALREADY_IN_CHAIN, RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED,
};

/// Coinbase outputs need this many confirmations before they can be spent.
pub const COINBASE_MATURITY: u32 = 100;
/// Largest amount that can exist, as in bitcoind's `MoneyRange`.
pub const MAX_MONEY: u64 = 21_000_000 * 100_000_000;
/// Lock times below this are block heights, at or above it UNIX times.
pub const LOCKTIME_THRESHOLD: u32 = 500_000_000;
/// Script flags every input is checked with: consensus rules up to and including taproot.
pub const SCRIPT_FLAGS: u32 =
    bitcoinconsensus::VERIFY_ALL_PRE_TAPROOT | bitcoinconsensus::VERIFY_TAPROOT;

const SEQUENCE_DISABLE_FLAG: u32 = 1 << 31;
const SEQUENCE_TYPE_FLAG: u32 = 1 << 22;
const SEQUENCE_MASK: u32 = 0x0000_ffff;
const SEQUENCE_GRANULARITY: u32 = 9;

/// An unspent output and where it was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coin {
    pub output: TxOut,
    /// Height of the block that created it; the next block's height for a mempool output.
    pub height: u32,
    pub coinbase: bool,
}

/// Why a transaction (or a block holding it) was refused, in bitcoind's words: `reason` is the
/// short reject reason `testmempoolaccept` shows, `debug` the detail `sendrawtransaction` appends,
/// `code` the RPC error code `sendrawtransaction` answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: i64,
    pub reason: String,
    pub debug: Option<String>,
}

impl Reject {
    /// A policy or consensus refusal (-26, RPC_VERIFY_REJECTED).
    pub fn rejected(reason: &str, debug: Option<String>) -> Reject {
        Reject {
            code: RPC_VERIFY_REJECTED,
            reason: reason.to_string(),
            debug,
        }
    }

    /// Missing or spent inputs (-25, RPC_VERIFY_ERROR).
    pub fn missing_inputs() -> Reject {
        Reject {
            code: RPC_VERIFY_ERROR,
            reason: "bad-txns-inputs-missingorspent".to_string(),
            debug: None,
        }
    }

    /// The transaction is already confirmed (-27).
    pub fn already_in_chain() -> Reject {
        Reject {
            code: RPC_VERIFY_ALREADY_IN_CHAIN,
            reason: "txn-already-known".to_string(),
            debug: None,
        }
    }

    /// The message bitcoind's `sendrawtransaction` gives: `reason, debug` (`TxValidationState::ToString`).
    pub fn message(&self) -> String {
        if self.code == RPC_VERIFY_ALREADY_IN_CHAIN {
            return "Transaction already in block chain".to_string();
        }
        match &self.debug {
            Some(debug) => format!("{}, {}", self.reason, debug),
            None => self.reason.clone(),
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

fn consensus(reason: &str) -> Reject {
    Reject::rejected(reason, None)
}

/// bitcoind's `CheckTransaction`: the checks that need no chain state.
pub fn check_transaction(tx: &Transaction) -> Result<(), Reject> {
    if tx.input.is_empty() {
        return Err(consensus("bad-txns-vin-empty"));
    }
    if tx.output.is_empty() {
        return Err(consensus("bad-txns-vout-empty"));
    }
    // Size without witness, times the witness scale factor, within the block weight limit.
    if tx.base_size() * 4 > 4_000_000 {
        return Err(consensus("bad-txns-oversize"));
    }
    let mut total: u64 = 0;
    for out in &tx.output {
        let value = out.value.to_sat();
        if value > MAX_MONEY {
            return Err(consensus("bad-txns-vout-toolarge"));
        }
        total += value;
        if total > MAX_MONEY {
            return Err(consensus("bad-txns-txouttotal-toolarge"));
        }
    }
    let mut seen = HashSet::with_capacity(tx.input.len());
    for input in &tx.input {
        if !seen.insert(input.previous_output) {
            return Err(consensus("bad-txns-inputs-duplicate"));
        }
    }
    if tx.is_coinbase() {
        let len = tx.input[0].script_sig.len();
        if !(2..=100).contains(&len) {
            return Err(consensus("bad-cb-length"));
        }
    } else if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err(consensus("bad-txns-prevout-null"));
    }
    Ok(())
}

/// bitcoind's `CheckTxInputs`: coinbase maturity, amounts in range, inputs cover outputs.
/// `coins[i]` is what `tx.input[i]` spends; `spend_height` the height of the block that would
/// hold the transaction. Returns the fee.
pub fn check_tx_inputs(
    tx: &Transaction,
    coins: &[Coin],
    spend_height: u32,
) -> Result<Amount, Reject> {
    let mut value_in: u64 = 0;
    for coin in coins {
        if coin.coinbase && spend_height.saturating_sub(coin.height) < COINBASE_MATURITY {
            return Err(Reject::rejected(
                "bad-txns-premature-spend-of-coinbase",
                Some(format!(
                    "tried to spend coinbase at depth {}",
                    spend_height.saturating_sub(coin.height)
                )),
            ));
        }
        value_in += coin.output.value.to_sat();
        if coin.output.value.to_sat() > MAX_MONEY || value_in > MAX_MONEY {
            return Err(consensus("bad-txns-inputvalues-outofrange"));
        }
    }
    let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
    if value_in < value_out {
        return Err(Reject::rejected(
            "bad-txns-in-belowout",
            Some(format!(
                "value in ({}) < value out ({})",
                format_money(value_in),
                format_money(value_out)
            )),
        ));
    }
    Ok(Amount::from_sat(value_in - value_out))
}

/// bitcoind's `IsFinalTx`: the absolute lock time is met at `height` and median time past `mtp`.
pub fn is_final(tx: &Transaction, height: u32, mtp: u32) -> bool {
    let lock = tx.lock_time.to_consensus_u32();
    if lock == 0 {
        return true;
    }
    let limit = if lock < LOCKTIME_THRESHOLD {
        height
    } else {
        mtp
    };
    if lock < limit {
        return true;
    }
    tx.input.iter().all(|i| i.sequence.0 == u32::MAX)
}

/// BIP-68 (bitcoind's `CalculateSequenceLocks` + `EvaluateSequenceLocks`): every input's relative
/// lock time is met in a block at `height` whose parent has median time past `prev_mtp`.
/// `mtp_before(h)` is the median time past of the block at height `h - 1` (of the best chain).
pub fn sequence_locks_met(
    tx: &Transaction,
    coins: &[Coin],
    height: u32,
    prev_mtp: u32,
    mtp_before: impl Fn(u32) -> u32,
) -> bool {
    if tx.version.0 < 2 {
        return true;
    }
    let mut min_height: i64 = -1;
    let mut min_time: i64 = -1;
    for (input, coin) in tx.input.iter().zip(coins) {
        let seq = input.sequence.0;
        if seq & SEQUENCE_DISABLE_FLAG != 0 {
            continue;
        }
        if seq & SEQUENCE_TYPE_FLAG != 0 {
            let base = i64::from(mtp_before(coin.height));
            let t = base + (i64::from(seq & SEQUENCE_MASK) << SEQUENCE_GRANULARITY) - 1;
            min_time = min_time.max(t);
        } else {
            let h = i64::from(coin.height) + i64::from(seq & SEQUENCE_MASK) - 1;
            min_height = min_height.max(h);
        }
    }
    min_height < i64::from(height) && min_time < i64::from(prev_mtp)
}

/// Every input's script through Bitcoin Core's verifier with all prevouts (taproot needs them).
pub fn verify_scripts(tx: &Transaction, coins: &[Coin]) -> Result<(), Reject> {
    let bytes = serialize(tx);
    let utxos: Vec<bitcoinconsensus::Utxo> = coins
        .iter()
        .map(|c| bitcoinconsensus::Utxo {
            script_pubkey: c.output.script_pubkey.as_bytes().as_ptr(),
            script_pubkey_len: c.output.script_pubkey.len() as u32,
            value: c.output.value.to_sat() as i64,
        })
        .collect();
    for (index, coin) in coins.iter().enumerate() {
        let result = bitcoinconsensus::verify_with_flags(
            coin.output.script_pubkey.as_bytes(),
            coin.output.value.to_sat(),
            &bytes,
            Some(&utxos),
            index,
            SCRIPT_FLAGS,
        );
        if let Err(error) = result {
            // libbitcoinconsensus reports only that the script failed, not which rule
            // (bitcoind names it, e.g. "Invalid Schnorr signature"): we name the input instead.
            let detail = match error {
                bitcoinconsensus::Error::ERR_SCRIPT => {
                    format!("Script evaluation failed on input {index}")
                }
                other => format!("{other} on input {index}"),
            };
            return Err(Reject::rejected(
                &format!("mandatory-script-verify-flag-failed ({detail})"),
                None,
            ));
        }
    }
    Ok(())
}

/// Sats as bitcoind's `FormatMoney` shows them: `0.00001000`.
pub fn format_money(sats: u64) -> String {
    format!("{}.{:08}", sats / 100_000_000, sats % 100_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::{absolute, transaction, OutPoint, ScriptBuf, Sequence, TxIn, Witness};

    fn spend(seq: u32, version: i32) -> Transaction {
        Transaction {
            version: transaction::Version(version),
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: ScriptBuf::new(),
                sequence: Sequence(seq),
                witness: Witness::new(),
            }],
            output: vec![],
        }
    }

    fn coin(height: u32) -> Coin {
        Coin {
            output: TxOut {
                value: Amount::from_sat(1000),
                script_pubkey: ScriptBuf::new(),
            },
            height,
            coinbase: false,
        }
    }

    #[test]
    fn relative_height_lock() {
        // Confirmed at 10 with a 5-block lock: first valid in block 15.
        let tx = spend(5, 2);
        assert!(!sequence_locks_met(&tx, &[coin(10)], 14, 0, |_| 0));
        assert!(sequence_locks_met(&tx, &[coin(10)], 15, 0, |_| 0));
        // Version 1 and the disable flag turn BIP-68 off.
        assert!(sequence_locks_met(&spend(5, 1), &[coin(10)], 11, 0, |_| 0));
        assert!(sequence_locks_met(
            &spend(5 | SEQUENCE_DISABLE_FLAG, 2),
            &[coin(10)],
            11,
            0,
            |_| 0
        ));
    }

    #[test]
    fn money_format() {
        assert_eq!(format_money(1000), "0.00001000");
        assert_eq!(format_money(5_000_000_000), "50.00000000");
    }
}
