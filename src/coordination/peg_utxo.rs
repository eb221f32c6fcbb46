//! Where the peg's Bitcoin is: the signers' UTXO on the canonical chain, found from what this
//! signer's own block observer stored (CHAIN.md section 2, "Peg UTXO detection"), never from a
//! coordinator's word.
//!
//! The newest confirmed sweep's vout[0] is the peg UTXO while nothing confirmed spends it. Before
//! the first sweep, the peg starts from a donation: the largest unspent output paying the
//! signers' key-path script of a key this signer holds shares of.

use std::collections::HashSet;

use bitcoin::{Amount, BlockHash, OutPoint, ScriptBuf, TxOut};

use crate::keys::AggregateKey;
use crate::storage::{self, BitcoinBlock, ObservedKind, Storage};

/// Blocks of the canonical chain searched for the signers' transactions: the whole stored chain
/// (the observer stores blocks since the node first started, plus its backfill).
pub const SEARCH_WINDOW: u32 = u32::MAX;

/// The signers' UTXO, and the key whose key-path script it pays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundPeg {
    pub outpoint: OutPoint,
    pub txout: TxOut,
    pub key: AggregateKey,
    /// The block that confirmed it.
    pub block: BitcoinBlock,
    /// Whether it is a sweep's vout[0] (else a donation).
    pub from_sweep: bool,
}

impl FoundPeg {
    pub fn amount(&self) -> Amount {
        self.txout.value
    }
}

/// The key-path script (BIP-341 tweak, no script tree) the signers' UTXO of `key` pays.
pub fn signers_script(key: &AggregateKey) -> ScriptBuf {
    ScriptBuf::new_p2tr_tweaked(key.tap_tweaked(None))
}

/// The peg UTXO on the chain ending at `tip`, among outputs paying one of `keys`' scripts; None
/// before any donation.
pub async fn find(
    storage: &dyn Storage,
    tip: &BlockHash,
    keys: &[AggregateKey],
) -> storage::Result<Option<FoundPeg>> {
    let txs = storage.get_signer_transactions(tip, SEARCH_WINDOW).await?;
    let scripts: Vec<(ScriptBuf, AggregateKey)> =
        keys.iter().map(|k| (signers_script(k), *k)).collect();
    let spent: HashSet<OutPoint> = txs
        .iter()
        .flat_map(|(o, _)| o.tx.input.iter().map(|i| i.previous_output))
        .collect();
    let ours = |out: &TxOut| {
        scripts
            .iter()
            .find(|(s, _)| *s == out.script_pubkey)
            .map(|(_, k)| *k)
    };
    // Newest sweep first: its vout[0], when unspent, is the peg.
    for (observed, block) in txs.iter().rev() {
        if observed.kind != ObservedKind::Sweep {
            continue;
        }
        let outpoint = OutPoint {
            txid: observed.txid(),
            vout: 0,
        };
        let Some(out) = observed.tx.output.first() else {
            continue;
        };
        if spent.contains(&outpoint) {
            continue;
        }
        if let Some(key) = ours(out) {
            return Ok(Some(FoundPeg {
                outpoint,
                txout: out.clone(),
                key,
                block: block.clone(),
                from_sweep: true,
            }));
        }
    }
    // No sweep yet: the largest unspent donation (ties: the oldest, then the lowest outpoint).
    let mut best: Option<FoundPeg> = None;
    for (observed, block) in &txs {
        let txid = observed.txid();
        for (vout, out) in observed.tx.output.iter().enumerate() {
            let outpoint = OutPoint {
                txid,
                vout: vout as u32,
            };
            let Some(key) = ours(out) else { continue };
            if spent.contains(&outpoint) {
                continue;
            }
            if best.as_ref().is_none_or(|b| out.value > b.txout.value) {
                best = Some(FoundPeg {
                    outpoint,
                    txout: out.clone(),
                    key,
                    block: block.clone(),
                    from_sweep: false,
                });
            }
        }
    }
    Ok(best)
}
