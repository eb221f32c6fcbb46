//! The block observer: follows bitcoind's best chain by polling `getbestblockhash` (ZMQ went stale
//! in the field), and on each new tip walks headers back to a block it already stored, so a reorg
//! of any depth up to [`ObserverParams::max_reorg_depth`] is just more blocks to store. New
//! blocks are stored oldest first, each with the transactions that matter to the signers:
//! - deposits: outputs a wallet or a peer announced (`deposit_submissions`), validated again at
//!   confirmation and recorded as deposit requests confirmed in that block;
//! - sweeps: transactions whose first input spends an output of the signers' key-path script;
//! - donations: other transactions paying the signers' key-path script.
//!
//! A block's transactions are written before the block itself, and the canonical tip is marked
//! only after every new block is in, so a crash midway is resumed by the next poll. Nothing is
//! deleted: blocks of a losing fork stay, off the canonical chain, and every query is relative to
//! the canonical tip (`DbRead::in_canonical_chain`, `get_pending_deposit_requests`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::{Block, BlockHash, Network, OutPoint, ScriptBuf, Transaction, TxOut, Txid};

use super::client::{self, BitcoinClient};
use super::deposit::{self, DepositSubmission};
use crate::storage::{
    self, BitcoinBlock, DepositRequest, DepositSubmissionRecord, ObservedKind, ObservedTransaction,
    Storage,
};

/// How far the observer looks.
#[derive(Clone, Debug)]
pub struct ObserverParams {
    /// On an empty store, how many blocks below the node's tip to start from (the tip itself
    /// always counts). Deposits confirmed before that are not seen.
    pub backfill_blocks: u64,
    /// A reorg deeper than this is refused (an operator must look: a node on a wrong chain, or
    /// an attack), and the canonical tip does not move.
    pub max_reorg_depth: u64,
    pub network: Network,
}

impl ObserverParams {
    pub fn new(network: Network) -> ObserverParams {
        ObserverParams {
            backfill_blocks: 144,
            max_reorg_depth: 1_000,
            network,
        }
    }
}

/// What one poll changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TipChange {
    pub tip: BitcoinBlock,
    /// The blocks stored by this poll, oldest first.
    pub new_blocks: Vec<BlockHash>,
    /// The previous canonical tip, when the new tip does not descend from it (a reorg).
    pub reorged_from: Option<BlockHash>,
    pub deposits: usize,
    pub sweeps: usize,
    pub donations: usize,
    /// Announced deposits confirmed in these blocks that failed validation at confirmation.
    pub refused_deposits: Vec<(OutPoint, String)>,
}

/// Why a poll failed. The canonical tip did not move; the next poll tries again.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error("{0}")]
    Node(#[from] client::Error),
    #[error("{0}")]
    Storage(#[from] storage::Error),
    #[error(
        "the node's best chain forks more than {depth} blocks below its tip {tip} from what this \
         signer stored; refusing to follow it. Check that the node is on the right network and \
         chain, then raise the limit or re-sync deliberately"
    )]
    ReorgTooDeep { tip: BlockHash, depth: u64 },
    #[error("the node reported block {0} and then could not serve it; it may be pruned or reorging: retrying on the next poll")]
    Vanished(BlockHash),
}

/// The observer: one per signer.
pub struct BlockObserver {
    client: Arc<dyn BitcoinClient>,
    storage: Arc<dyn Storage>,
    params: ObserverParams,
}

impl BlockObserver {
    pub fn new(
        client: Arc<dyn BitcoinClient>,
        storage: Arc<dyn Storage>,
        params: ObserverParams,
    ) -> BlockObserver {
        BlockObserver {
            client,
            storage,
            params,
        }
    }

    /// Asks the node for its tip and stores whatever is new. None when the tip is unchanged.
    pub async fn poll(&self) -> Result<Option<TipChange>, ObserverError> {
        let best = self.client.get_best_block_hash().await?;
        let previous = self.storage.get_bitcoin_canonical_tip().await?;
        if previous.as_ref().map(|b| b.hash) == Some(best) {
            return Ok(None);
        }
        let headers = self.unknown_headers(best, previous.is_none()).await?;
        let (scripts, keys) = self.signer_keys().await?;
        let mut change = TipChange {
            tip: BitcoinBlock {
                hash: best,
                height: 0,
                parent_hash: best,
            },
            new_blocks: Vec::with_capacity(headers.len()),
            reorged_from: None,
            deposits: 0,
            sweeps: 0,
            donations: 0,
            refused_deposits: Vec::new(),
        };
        for header in headers.iter().rev() {
            let block = self
                .client
                .get_block(&header.hash)
                .await?
                .ok_or(ObserverError::Vanished(header.hash))?;
            self.store_block(&block, header, &scripts, &keys, &mut change)
                .await?;
            change.new_blocks.push(header.hash);
        }
        let tip = match self.storage.get_bitcoin_block(&best).await? {
            Some(b) => b,
            None => return Err(ObserverError::Vanished(best)),
        };
        if let Some(prev) = &previous {
            if !self.storage.in_canonical_chain(&best, &prev.hash).await? {
                change.reorged_from = Some(prev.hash);
            }
        }
        self.storage.set_bitcoin_canonical_tip(&best).await?;
        change.tip = tip;
        if let Some(from) = change.reorged_from {
            tracing::warn!(from = %from, to = %best, "bitcoin reorg");
        }
        tracing::info!(
            tip = %best,
            height = change.tip.height,
            new_blocks = change.new_blocks.len(),
            deposits = change.deposits,
            sweeps = change.sweeps,
            donations = change.donations,
            "bitcoin tip"
        );
        Ok(Some(change))
    }

    /// Polls every `interval` until `stop` resolves, sending each change to `changes`. Errors are
    /// logged and retried on the next tick: the observer never stops on a bad answer.
    pub async fn run(
        self,
        interval: Duration,
        changes: tokio::sync::mpsc::Sender<TipChange>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {}
            }
            match self.poll().await {
                Ok(Some(change)) => {
                    if changes.send(change).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "block observer: poll failed; retrying"),
            }
        }
    }

    /// Headers from `best` back to (not including) the first block the store knows, newest
    /// first. On an empty store, back to `backfill_blocks` below the tip.
    async fn unknown_headers(
        &self,
        best: BlockHash,
        empty_store: bool,
    ) -> Result<Vec<client::BlockHeaderInfo>, ObserverError> {
        let mut headers = Vec::new();
        let mut next = Some(best);
        let mut floor = None;
        while let Some(hash) = next {
            if self.storage.get_bitcoin_block(&hash).await?.is_some() {
                break;
            }
            let header = self
                .client
                .get_block_header(&hash)
                .await?
                .ok_or(ObserverError::Vanished(hash))?;
            let floor =
                *floor.get_or_insert(header.height.saturating_sub(self.params.backfill_blocks));
            if !empty_store && headers.len() as u64 >= self.params.max_reorg_depth {
                return Err(ObserverError::ReorgTooDeep {
                    tip: best,
                    depth: self.params.max_reorg_depth,
                });
            }
            next = header.previous;
            let at_floor = empty_store && header.height <= floor;
            headers.push(header);
            if at_floor {
                break;
            }
        }
        Ok(headers)
    }

    /// From one read of the DKG shares: the signers' key-path scripts (P2TR of every DKG key, any
    /// status: a donation to a key whose verification failed is still the signers' money), and
    /// each key as a deposit's script-path key (x-only) with the aggregate key it stands for.
    #[allow(clippy::type_complexity)]
    async fn signer_keys(
        &self,
    ) -> Result<
        (
            HashSet<ScriptBuf>,
            Vec<(
                bitcoin::secp256k1::XOnlyPublicKey,
                crate::keys::AggregateKey,
            )>,
        ),
        ObserverError,
    > {
        let shares = self.storage.get_all_dkg_shares().await?;
        let scripts = shares
            .iter()
            .map(|s| ScriptBuf::new_p2tr_tweaked(s.shares.aggregate_key.tap_tweaked(None)))
            .collect();
        let keys = shares
            .iter()
            .map(|s| (s.shares.aggregate_key.x_only(), s.shares.aggregate_key))
            .collect();
        Ok((scripts, keys))
    }

    async fn store_block(
        &self,
        block: &Block,
        header: &client::BlockHeaderInfo,
        scripts: &HashSet<ScriptBuf>,
        keys: &[(
            bitcoin::secp256k1::XOnlyPublicKey,
            crate::keys::AggregateKey,
        )],
        change: &mut TipChange,
    ) -> Result<(), ObserverError> {
        let hash = header.hash;
        let txids: Vec<Txid> = block.txdata.iter().map(Transaction::compute_txid).collect();

        // Outputs of the signers spent by first inputs: from stored transactions, and from
        // earlier transactions of this block.
        let first_inputs: Vec<Txid> = block
            .txdata
            .iter()
            .filter(|tx| !tx.is_coinbase())
            .filter_map(|tx| tx.input.first().map(|i| i.previous_output.txid))
            .collect();
        let mut ours: HashMap<Txid, Vec<TxOut>> = self
            .storage
            .get_observed_transactions(&first_inputs)
            .await?
            .into_iter()
            .map(|o| (o.txid(), o.tx.output))
            .collect();
        let submissions = self
            .storage
            .get_deposit_submissions_for_txids(&txids)
            .await?;
        let mut submissions_by_txid: HashMap<Txid, Vec<DepositSubmissionRecord>> = HashMap::new();
        for s in submissions {
            submissions_by_txid
                .entry(s.outpoint.txid)
                .or_default()
                .push(s);
        }

        for (tx, txid) in block.txdata.iter().zip(&txids) {
            let pays_us = tx.output.iter().any(|o| scripts.contains(&o.script_pubkey));
            let is_sweep = !tx.is_coinbase()
                && tx.input.first().is_some_and(|i| {
                    ours.get(&i.previous_output.txid)
                        .and_then(|outs| outs.get(i.previous_output.vout as usize))
                        .is_some_and(|o| scripts.contains(&o.script_pubkey))
                });
            let deposits = submissions_by_txid.remove(txid).unwrap_or_default();
            let mut accepted = 0;
            for s in &deposits {
                match self.deposit_request(s, keys) {
                    Ok(request) => {
                        self.storage.write_deposit_request(&request, &hash).await?;
                        accepted += 1;
                    }
                    Err(reason) => change.refused_deposits.push((s.outpoint, reason)),
                }
            }
            let kind = if is_sweep {
                ObservedKind::Sweep
            } else if pays_us {
                ObservedKind::Donation
            } else if accepted > 0 {
                ObservedKind::Deposit
            } else {
                continue;
            };
            match kind {
                ObservedKind::Sweep => change.sweeps += 1,
                ObservedKind::Donation => change.donations += 1,
                ObservedKind::Deposit => {}
            }
            change.deposits += accepted;
            let observed = ObservedTransaction {
                kind,
                tx: tx.clone(),
            };
            self.storage
                .write_observed_transaction(&observed, &hash)
                .await?;
            ours.insert(*txid, tx.output.clone());
        }

        self.storage
            .write_bitcoin_block(&BitcoinBlock {
                hash,
                height: header.height,
                parent_hash: block.header.prev_blockhash,
            })
            .await?;
        Ok(())
    }

    /// Validates an announced deposit again at confirmation (the no-node checks and the key),
    /// and makes the request to store.
    fn deposit_request(
        &self,
        s: &DepositSubmissionRecord,
        keys: &[(
            bitcoin::secp256k1::XOnlyPublicKey,
            crate::keys::AggregateKey,
        )],
    ) -> Result<DepositRequest, String> {
        let submission = DepositSubmission {
            outpoint: s.outpoint,
            deposit_script: s.deposit_script.clone(),
            reclaim_script: s.reclaim_script.clone(),
            transaction: s.transaction.clone(),
        };
        let valid = deposit::validate_without_node(&submission, self.params.network)
            .map_err(|e| format!("{}: {e}", e.rule()))?;
        let key = keys
            .iter()
            .find(|(x, _)| *x == valid.deposit.signers_key)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                format!(
                    "unknown_signers_key: the deposit is locked to {}, which is not one of this \
                     signer's DKG keys",
                    valid.deposit.signers_key
                )
            })?;
        Ok(DepositRequest {
            outpoint: valid.outpoint,
            amount: valid.amount,
            max_fee: valid.deposit.max_fee,
            recipient: valid.deposit.recipient.to_string(),
            deposit_script: valid.deposit_script,
            reclaim_script: valid.reclaim_script,
            signers_public_key: key,
        })
    }
}
