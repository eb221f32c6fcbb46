//! The devnet's peg phase, after the registry names the signers' key: a donation starts the peg
//! UTXO, the built-in depositor makes deposits the way a wallet does, and the devnet mines as
//! miners would (a block whenever a mempool holds something) until every deposit is minted as
//! sBTC. Everything it reports it reads back from the chains, not from the signers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bitcoin::{Amount, OutPoint, Txid};

use super::depositor::{self, MadeDeposit};
use super::regtest::RegtestNode;
use super::stacks::StacksNode;
use crate::chain::stacks::clarity::Value;
use crate::keys::AggregateKey;

/// The donation that starts the peg UTXO (the official devnet makes one too).
pub const DONATION: Amount = Amount::from_sat(1_000_000);

/// A sweep the devnet saw in the mempool before it mined it.
#[derive(Clone, Debug)]
pub struct SeenSweep {
    pub txid: Txid,
    pub fee: Amount,
    pub vsize: u64,
    pub inputs: usize,
    /// The height of the block that confirmed it.
    pub height: u32,
}

/// One deposit from broadcast to mint.
#[derive(Clone, Debug)]
pub struct Minted {
    pub deposit: MadeDeposit,
    pub minted: u128,
    pub sweep_txid: Txid,
    /// The Bitcoin height when the devnet first read the mint.
    pub mint_height: u32,
    pub elapsed: Duration,
}

/// What the peg phase did.
#[derive(Clone, Debug, Default)]
pub struct PegSummary {
    pub donation: Option<Txid>,
    pub sweeps: Vec<SeenSweep>,
    pub minted: Vec<Minted>,
    pub pending: Vec<MadeDeposit>,
    pub blocks_mined: u32,
    pub elapsed: Duration,
}

/// Donates, deposits `count` times through `apis`, and mines until every deposit is minted or
/// `timeout` passes. `alive` says whether every signer still runs (else the error names it).
pub async fn run(
    regtest: &RegtestNode,
    stacks: &StacksNode,
    key: &AggregateKey,
    apis: &[String],
    count: usize,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), (Option<u32>, String)>,
) -> Result<PegSummary, (Option<u32>, String)> {
    let start = Instant::now();
    let mut summary = PegSummary::default();
    let script = crate::coordination::peg_utxo::signers_script(key);
    let donation = regtest
        .with_state(|s| s.send_to_script(&script, DONATION, None))
        .map_err(|e| {
            (
                None,
                format!("the regtest wallet cannot donate to the peg: {e:?}"),
            )
        })?;
    summary.donation = Some(donation);
    mine(regtest, stacks, &mut summary).await?;

    let recipients = depositor::recipients(3).map_err(|e| (None, e))?;
    let made = depositor::make_deposits(regtest, key.x_only(), &recipients, apis, count)
        .await
        .map_err(|e| (None, e))?;
    let mut pending: HashMap<OutPoint, MadeDeposit> =
        made.into_iter().map(|d| (d.outpoint, d)).collect();

    let deadline = start + timeout;
    while !pending.is_empty() {
        alive()?;
        let height = regtest.tip().0;
        let done: Vec<OutPoint> = pending
            .keys()
            .copied()
            .filter(|op| completed_deposit(stacks, op).is_some())
            .collect();
        for op in done {
            if let (Some(d), Some((minted, sweep_txid))) =
                (pending.remove(&op), completed_deposit(stacks, &op))
            {
                summary.minted.push(Minted {
                    elapsed: d.at.elapsed(),
                    deposit: d,
                    minted,
                    sweep_txid,
                    mint_height: height,
                });
            }
        }
        if pending.is_empty() {
            break;
        }
        let waiting = stacks.with_state(|s| !s.mempool.is_empty())
            || regtest.with_state(|s| !s.mempool.is_empty());
        if waiting {
            mine(regtest, stacks, &mut summary).await?;
        }
        if Instant::now() >= deadline {
            summary.pending = pending.into_values().collect();
            summary.pending.sort_by_key(|d| d.outpoint);
            summary.elapsed = start.elapsed();
            return Ok(summary);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    summary.minted.sort_by_key(|m| m.deposit.outpoint);
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// Mines one block, noting the sweeps it confirms, and lets the Stacks node follow it.
async fn mine(
    regtest: &RegtestNode,
    stacks: &StacksNode,
    summary: &mut PegSummary,
) -> Result<(), (Option<u32>, String)> {
    let sweeps: Vec<(Txid, Amount, u64, usize)> = regtest.with_state(|s| {
        s.mempool
            .entries()
            .into_iter()
            .filter(|e| e.tx.output.len() >= 2 && e.tx.output[1].script_pubkey.is_op_return())
            .map(|e| (e.txid, e.fee, e.vsize, e.tx.input.len()))
            .collect()
    });
    regtest.mine(1);
    summary.blocks_mined += 1;
    let height = regtest.tip().0;
    for (txid, fee, vsize, inputs) in sweeps {
        summary.sweeps.push(SeenSweep {
            txid,
            fee,
            vsize,
            inputs,
            height,
        });
    }
    stacks.sync().await.map(|_| ()).map_err(|e| {
        (
            None,
            format!("the Stacks node did not follow the block: {e}"),
        )
    })
}

/// `sbtc-registry.get-completed-deposit`: the amount minted and the sweep, once completed.
fn completed_deposit(stacks: &StacksNode, op: &OutPoint) -> Option<(u128, Txid)> {
    use bitcoin::hashes::Hash;
    let args = [
        Value::Buffer(op.txid.to_byte_array().to_vec()),
        Value::UInt(u128::from(op.vout)),
    ];
    let Ok(Value::Some(inner)) = stacks.read_only("sbtc-registry", "get-completed-deposit", &args)
    else {
        return None;
    };
    let Value::Tuple(fields) = *inner else {
        return None;
    };
    let amount = match fields.get("amount") {
        Some(Value::UInt(a)) => *a,
        _ => return None,
    };
    let sweep = match fields.get("sweep-txid") {
        Some(Value::Buffer(b)) => Txid::from_slice(b).ok()?,
        _ => return None,
    };
    Some((amount, sweep))
}

/// The sBTC balance of `who` (`sbtc-token.get-balance`).
pub fn balance(stacks: &StacksNode, who: &str) -> Option<u128> {
    let principal = who.parse().ok()?;
    match stacks.read_only("sbtc-token", "get-balance", &[Value::Principal(principal)]) {
        Ok(Value::ResponseOk(v)) => match *v {
            Value::UInt(b) => Some(b),
            _ => None,
        },
        _ => None,
    }
}
