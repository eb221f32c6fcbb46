//! The block tree, the best chain and its UTXO set: blocks are checked as bitcoind checks them
//! (proof of work, merkle root, witness commitment, BIP-34 height, coinbase amount, and every
//! transaction's inputs, lock times and scripts) and connected with undo data, so
//! `invalidateblock` / `reconsiderblock` can move the tip to the best valid chain and back.

use std::collections::HashMap;

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::blockdata::opcodes::all::OP_RETURN;
use bitcoin::blockdata::script::Builder;
use bitcoin::hashes::Hash;
use bitcoin::pow::CompactTarget;
use bitcoin::{
    absolute, block, transaction, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence,
    Target, Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};

use super::verify::{self, Coin, Reject};

/// Regtest's proof-of-work limit (`powLimit`, nBits 0x207fffff): about every other nonce meets it.
pub const REGTEST_BITS: u32 = 0x207f_ffff;
/// Regtest halves the subsidy every 150 blocks.
pub const HALVING_INTERVAL: u32 = 150;
/// The consensus block weight limit.
pub const MAX_BLOCK_WEIGHT: u64 = 4_000_000;

/// The block subsidy at `height` on regtest.
pub fn subsidy(height: u32) -> Amount {
    let halvings = height / HALVING_INTERVAL;
    if halvings >= 64 {
        return Amount::ZERO;
    }
    Amount::from_sat((50 * 100_000_000u64) >> halvings)
}

/// A block the node knows, on the best chain or not.
#[derive(Clone, Debug)]
pub struct BlockRecord {
    pub block: Block,
    pub hash: BlockHash,
    pub height: u32,
    /// Marked by `invalidateblock`, or found invalid when it was connected.
    pub invalid: bool,
    /// The coins each non-coinbase transaction spent, in input order (bitcoind's undo data);
    /// present once the block has been connected.
    pub undo: Option<Vec<Vec<Coin>>>,
    /// Arrival order: the first block seen wins a tie in chain length.
    pub seq: u64,
}

/// What a change of the best chain did.
#[derive(Debug, Default)]
pub struct Reorg {
    /// Blocks taken off the best chain, the old tip first.
    pub disconnected: Vec<Block>,
    /// Blocks put on the best chain, oldest first.
    pub connected: Vec<Block>,
}

/// A refused block: bitcoind's reason (e.g. `bad-txns-inputs-missingorspent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockError(pub String);

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Reject> for BlockError {
    fn from(r: Reject) -> BlockError {
        BlockError(r.message())
    }
}

pub struct Chain {
    blocks: HashMap<BlockHash, BlockRecord>,
    /// The best chain: `active[h]` is the block at height h.
    active: Vec<BlockHash>,
    utxos: HashMap<OutPoint, Coin>,
    next_seq: u64,
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

impl Chain {
    /// A chain holding rust-bitcoin's regtest genesis block (whose output, as in bitcoind, is
    /// not spendable).
    pub fn new() -> Chain {
        let genesis = genesis_block(Network::Regtest);
        let hash = genesis.block_hash();
        let mut blocks = HashMap::new();
        blocks.insert(
            hash,
            BlockRecord {
                block: genesis,
                hash,
                height: 0,
                invalid: false,
                undo: Some(Vec::new()),
                seq: 0,
            },
        );
        Chain {
            blocks,
            active: vec![hash],
            utxos: HashMap::new(),
            next_seq: 1,
        }
    }

    pub fn tip_height(&self) -> u32 {
        (self.active.len() - 1) as u32
    }

    pub fn tip_hash(&self) -> BlockHash {
        *self.active.last().expect("the chain always holds genesis")
    }

    pub fn tip(&self) -> &BlockRecord {
        &self.blocks[&self.tip_hash()]
    }

    pub fn hash_at(&self, height: u32) -> Option<BlockHash> {
        self.active.get(height as usize).copied()
    }

    pub fn record(&self, hash: &BlockHash) -> Option<&BlockRecord> {
        self.blocks.get(hash)
    }

    /// Blocks known, on the best chain or not.
    pub fn block_count_known(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_active(&self, hash: &BlockHash) -> bool {
        self.blocks
            .get(hash)
            .is_some_and(|r| self.active.get(r.height as usize) == Some(hash))
    }

    /// Confirmations of a block on the best chain; -1 when it is not on it (as bitcoind says).
    pub fn confirmations(&self, hash: &BlockHash) -> i64 {
        match self.blocks.get(hash) {
            Some(r) if self.is_active(hash) => i64::from(self.tip_height() - r.height) + 1,
            _ => -1,
        }
    }

    /// The successor of an active block on the best chain.
    pub fn next_active(&self, hash: &BlockHash) -> Option<BlockHash> {
        let r = self.blocks.get(hash)?;
        if !self.is_active(hash) {
            return None;
        }
        self.hash_at(r.height + 1)
    }

    pub fn utxo(&self, outpoint: &OutPoint) -> Option<&Coin> {
        self.utxos.get(outpoint)
    }

    pub fn utxos(&self) -> impl Iterator<Item = (&OutPoint, &Coin)> {
        self.utxos.iter()
    }

    /// Median time past of the best chain's block at `height` (the median of it and up to ten
    /// blocks before it).
    pub fn mtp(&self, height: u32) -> u32 {
        let end = (height as usize).min(self.active.len() - 1);
        let start = end.saturating_sub(10);
        self.mtp_of(&self.active[start..=end])
    }

    fn mtp_of(&self, hashes: &[BlockHash]) -> u32 {
        let mut times: Vec<u32> = hashes
            .iter()
            .map(|h| self.blocks[h].block.header.time)
            .collect();
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Median time past of the block `hash` (which need not be on the best chain).
    pub fn mtp_of_block(&self, hash: &BlockHash) -> u32 {
        let mut hashes = Vec::with_capacity(11);
        let mut current = Some(*hash);
        while let Some(h) = current {
            if hashes.len() == 11 {
                break;
            }
            let r = &self.blocks[&h];
            hashes.push(h);
            current = (r.height > 0).then_some(r.block.header.prev_blockhash);
        }
        self.mtp_of(&hashes)
    }

    /// Finds a transaction in a known block.
    pub fn find_tx(&self, block: &BlockHash, txid: &Txid) -> Option<(usize, &Transaction)> {
        let r = self.blocks.get(block)?;
        r.block
            .txdata
            .iter()
            .enumerate()
            .find(|(_, tx)| tx.compute_txid() == *txid)
    }

    /// A new block on top of the best chain, with a BIP-34 coinbase paying `subsidy + fees` to
    /// `payout`, the witness commitment, the merkle root and a ground nonce. Not yet added.
    pub fn build_block(
        &self,
        payout: &ScriptBuf,
        txs: Vec<Transaction>,
        fees: Amount,
        now: u32,
    ) -> Block {
        let height = self.tip_height() + 1;
        let prev = self.tip();
        let time = now
            .max(prev.block.header.time + 1)
            .max(self.mtp(self.tip_height()) + 1);
        let mut coinbase = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig: Builder::new()
                    .push_int(i64::from(height))
                    .push_opcode(bitcoin::opcodes::OP_0)
                    .into_script(),
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[[0u8; 32]]),
            }],
            output: vec![TxOut {
                value: subsidy(height) + fees,
                script_pubkey: payout.clone(),
            }],
        };
        let mut txdata = Vec::with_capacity(txs.len() + 1);
        txdata.push(coinbase.clone());
        txdata.extend(txs);
        let mut block = Block {
            header: block::Header {
                version: block::Version::from_consensus(0x2000_0000),
                prev_blockhash: prev.hash,
                merkle_root: TxMerkleNode::all_zeros(),
                time,
                bits: CompactTarget::from_consensus(REGTEST_BITS),
                nonce: 0,
            },
            txdata,
        };
        let witness_root = block.witness_root().expect("a block has a coinbase");
        let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
        let mut script = vec![OP_RETURN.to_u8(), 0x24, 0xaa, 0x21, 0xa9, 0xed];
        script.extend_from_slice(commitment.as_byte_array());
        coinbase.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(script),
        });
        block.txdata[0] = coinbase;
        block.header.merkle_root = block.compute_merkle_root().expect("a block has a coinbase");
        let target = Target::from_compact(block.header.bits);
        loop {
            while block.header.validate_pow(target).is_err() {
                block.header.nonce = block.header.nonce.wrapping_add(1);
            }
            // Mined again in the same second on the same parent after an `invalidateblock`, the
            // block would be the invalidated one: a later time makes it a new block.
            if !self.blocks.contains_key(&block.block_hash()) {
                return block;
            }
            block.header.time += 1;
            block.header.nonce = 0;
        }
    }

    /// bitcoind's `CheckBlock` / `ContextualCheckBlock`: what can be checked without the UTXO set.
    fn check_block(&self, block: &Block) -> Result<(BlockHash, u32), BlockError> {
        let err = |s: &str| Err(BlockError(s.to_string()));
        let hash = block.block_hash();
        if self.blocks.contains_key(&hash) {
            return err("duplicate");
        }
        let Some(prev) = self.blocks.get(&block.header.prev_blockhash) else {
            return err("prev-blk-not-found");
        };
        if prev.invalid {
            return err("bad-prevblk");
        }
        if block.header.bits.to_consensus() != REGTEST_BITS {
            return err("bad-diffbits");
        }
        if block
            .header
            .validate_pow(Target::from_compact(block.header.bits))
            .is_err()
        {
            return err("high-hash");
        }
        if !block.check_merkle_root() {
            return err("bad-txnmrklroot");
        }
        if block.txdata.is_empty() || !block.txdata[0].is_coinbase() {
            return err("bad-cb-missing");
        }
        if block.txdata[1..].iter().any(|tx| tx.is_coinbase()) {
            return err("bad-cb-multiple");
        }
        for tx in &block.txdata {
            verify::check_transaction(tx)?;
        }
        if block.weight().to_wu() > MAX_BLOCK_WEIGHT {
            return err("bad-blk-weight");
        }
        let height = prev.height + 1;
        if block.header.time <= self.mtp_of_block(&prev.hash) {
            return err("time-too-old");
        }
        // BIP-34 as bitcoind checks it: the coinbase scriptSig starts with `CScript() << height`
        // (OP_1..OP_16 for small heights, which rust-bitcoin's bip34_block_height does not take).
        let expected = Builder::new().push_int(i64::from(height)).into_script();
        if !block.txdata[0].input[0]
            .script_sig
            .as_bytes()
            .starts_with(expected.as_bytes())
        {
            return err("bad-cb-height");
        }
        if !block.check_witness_commitment() {
            return err("bad-witness-merkle-match");
        }
        Ok((hash, height))
    }

    /// Adds a block and moves the best chain onto it if it makes the chain longer.
    pub fn add_block(&mut self, block: Block) -> Result<(BlockHash, Reorg), BlockError> {
        let (hash, height) = self.check_block(&block)?;
        let extends_tip = block.header.prev_blockhash == self.tip_hash();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.blocks.insert(
            hash,
            BlockRecord {
                block,
                hash,
                height,
                invalid: false,
                undo: None,
                seq,
            },
        );
        if extends_tip {
            // The common case: connect it directly, and forget it if it is invalid (bitcoind
            // keeps it marked failed; a refused generateblock is never stored there at all).
            if let Err(e) = self.connect(&hash) {
                self.blocks.remove(&hash);
                return Err(e);
            }
            let block = self.blocks[&hash].block.clone();
            return Ok((
                hash,
                Reorg {
                    disconnected: vec![],
                    connected: vec![block],
                },
            ));
        }
        let reorg = self.activate_best_chain();
        Ok((hash, reorg))
    }

    /// Connects `hash`, a child of the tip: checks every transaction against the UTXO set.
    fn connect(&mut self, hash: &BlockHash) -> Result<(), BlockError> {
        let record = &self.blocks[hash];
        let height = record.height;
        debug_assert_eq!(record.block.header.prev_blockhash, self.tip_hash());
        let prev_mtp = self.mtp(self.tip_height());
        let block = &record.block;
        // Outputs created and spent inside this block, over the UTXO set.
        let mut created: HashMap<OutPoint, Coin> = HashMap::new();
        let mut spent: std::collections::HashSet<OutPoint> = std::collections::HashSet::new();
        let mut undo = Vec::with_capacity(block.txdata.len().saturating_sub(1));
        let mut fees = Amount::ZERO;
        for tx in &block.txdata[1..] {
            if !verify::is_final(tx, height, prev_mtp) {
                return Err(BlockError("bad-txns-nonfinal".into()));
            }
            let mut coins = Vec::with_capacity(tx.input.len());
            for input in &tx.input {
                let op = input.previous_output;
                let coin = if spent.contains(&op) {
                    None
                } else {
                    created.get(&op).or_else(|| self.utxos.get(&op)).cloned()
                };
                match coin {
                    Some(c) => coins.push(c),
                    None => return Err(BlockError("bad-txns-inputs-missingorspent".into())),
                }
            }
            fees += verify::check_tx_inputs(tx, &coins, height)?;
            let mtp_before = |h: u32| self.mtp(h.saturating_sub(1));
            if !verify::sequence_locks_met(tx, &coins, height, prev_mtp, mtp_before) {
                return Err(BlockError("bad-txns-nonfinal".into()));
            }
            verify::verify_scripts(tx, &coins)
                .map_err(|r| BlockError(format!("block-validation-failed ({})", r.reason)))?;
            for input in &tx.input {
                spent.insert(input.previous_output);
            }
            add_outputs(&mut created, tx, height, false);
            undo.push(coins);
        }
        let coinbase = &block.txdata[0];
        let paid: Amount = coinbase.output.iter().map(|o| o.value).sum();
        if paid > subsidy(height) + fees {
            return Err(BlockError(format!(
                "bad-cb-amount, coinbase pays too much (actual={} vs limit={})",
                paid.to_sat(),
                (subsidy(height) + fees).to_sat()
            )));
        }
        add_outputs(&mut created, coinbase, height, true);
        for op in &spent {
            self.utxos.remove(op);
        }
        for (op, coin) in created {
            if !spent.contains(&op) {
                self.utxos.insert(op, coin);
            }
        }
        let record = self.blocks.get_mut(hash).expect("checked above");
        record.undo = Some(undo);
        self.active.push(*hash);
        Ok(())
    }

    /// Takes the tip off the best chain, restoring the coins it spent.
    fn disconnect_tip(&mut self) -> Block {
        let hash = self.active.pop().expect("never disconnects genesis");
        let record = &self.blocks[&hash];
        let block = record.block.clone();
        let undo = record.undo.clone().expect("an active block has undo data");
        for tx in block.txdata.iter().rev() {
            let txid = tx.compute_txid();
            for vout in 0..tx.output.len() {
                self.utxos.remove(&OutPoint::new(txid, vout as u32));
            }
        }
        for (tx, coins) in block.txdata[1..].iter().zip(undo) {
            for (input, coin) in tx.input.iter().zip(coins) {
                self.utxos.insert(input.previous_output, coin);
            }
        }
        block
    }

    /// Whether a block and all its ancestors are valid, for every known block.
    fn valid_chains(&self) -> HashMap<BlockHash, bool> {
        let mut records: Vec<&BlockRecord> = self.blocks.values().collect();
        records.sort_by_key(|r| r.height);
        let mut valid = HashMap::with_capacity(records.len());
        for r in records {
            let parent_ok = r.height == 0
                || valid
                    .get(&r.block.header.prev_blockhash)
                    .copied()
                    .unwrap_or(false);
            valid.insert(r.hash, parent_ok && !r.invalid);
        }
        valid
    }

    /// Moves the tip to the longest valid chain (first seen on a tie), as bitcoind's
    /// `ActivateBestChain` does; a block that fails to connect is marked invalid.
    pub fn activate_best_chain(&mut self) -> Reorg {
        let mut reorg = Reorg::default();
        loop {
            let valid = self.valid_chains();
            let best = self
                .blocks
                .values()
                .filter(|r| valid[&r.hash])
                .max_by(|a, b| a.height.cmp(&b.height).then(b.seq.cmp(&a.seq)))
                .map(|r| (r.hash, r.height))
                .expect("genesis is valid");
            if best.0 == self.tip_hash() || best.1 <= self.tip_height() {
                return reorg;
            }
            let mut path = Vec::new();
            let mut h = best.0;
            while !self.is_active(&h) {
                path.push(h);
                h = self.blocks[&h].block.header.prev_blockhash;
            }
            while self.tip_hash() != h {
                reorg.disconnected.push(self.disconnect_tip());
            }
            for hash in path.into_iter().rev() {
                match self.connect(&hash) {
                    Ok(()) => reorg.connected.push(self.blocks[&hash].block.clone()),
                    Err(e) => {
                        tracing::info!(block = %hash, reason = %e, "regtest: block failed to connect");
                        self.blocks.get_mut(&hash).expect("known").invalid = true;
                        break;
                    }
                }
            }
        }
    }

    /// `invalidateblock`: marks the block invalid, takes it and its descendants off the best
    /// chain and moves to the best valid chain.
    pub fn invalidate(&mut self, hash: &BlockHash) -> Result<Reorg, Reject> {
        let Some(record) = self.blocks.get_mut(hash) else {
            return Err(block_not_found());
        };
        if record.height == 0 {
            return Err(Reject {
                code: crate::chain::bitcoin::client::RPC_MISC_ERROR,
                reason: "cannot invalidate the genesis block".into(),
                debug: None,
            });
        }
        record.invalid = true;
        let height = record.height;
        let mut reorg = Reorg::default();
        if self.is_active(hash) {
            while self.tip_height() >= height {
                reorg.disconnected.push(self.disconnect_tip());
            }
        }
        let more = self.activate_best_chain();
        reorg.disconnected.extend(more.disconnected);
        reorg.connected.extend(more.connected);
        Ok(reorg)
    }

    /// `reconsiderblock`: clears the invalid mark of the block, its ancestors and descendants,
    /// and moves to the best valid chain.
    pub fn reconsider(&mut self, hash: &BlockHash) -> Result<Reorg, Reject> {
        if !self.blocks.contains_key(hash) {
            return Err(block_not_found());
        }
        // Ancestors.
        let mut current = Some(*hash);
        while let Some(h) = current {
            let r = self.blocks.get_mut(&h).expect("ancestors are known");
            r.invalid = false;
            current = (r.height > 0).then_some(r.block.header.prev_blockhash);
        }
        // Descendants: every block whose ancestry reaches `hash`.
        let target_height = self.blocks[hash].height;
        let hashes: Vec<BlockHash> = self
            .blocks
            .values()
            .filter(|r| r.height > target_height)
            .map(|r| r.hash)
            .collect();
        for h in hashes {
            if self.descends_from(&h, hash) {
                self.blocks.get_mut(&h).expect("known").invalid = false;
            }
        }
        Ok(self.activate_best_chain())
    }

    fn descends_from(&self, block: &BlockHash, ancestor: &BlockHash) -> bool {
        let target = self.blocks[ancestor].height;
        let mut h = *block;
        loop {
            let r = &self.blocks[&h];
            if r.height == target {
                return h == *ancestor;
            }
            if r.height < target {
                return false;
            }
            h = r.block.header.prev_blockhash;
        }
    }
}

fn add_outputs(map: &mut HashMap<OutPoint, Coin>, tx: &Transaction, height: u32, coinbase: bool) {
    let txid = tx.compute_txid();
    for (vout, output) in tx.output.iter().enumerate() {
        // Provably unspendable outputs never enter the UTXO set.
        if output.script_pubkey.is_op_return() {
            continue;
        }
        map.insert(
            OutPoint::new(txid, vout as u32),
            Coin {
                output: output.clone(),
                height,
                coinbase,
            },
        );
    }
}

fn block_not_found() -> Reject {
    Reject {
        code: crate::chain::bitcoin::client::RPC_INVALID_ADDRESS_OR_KEY,
        reason: "Block not found".into(),
        debug: None,
    }
}
