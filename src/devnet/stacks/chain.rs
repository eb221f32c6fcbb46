//! The devnet Stacks chain: accounts (STX balance, nonce), deployed contracts, the sBTC
//! contracts' state, a mempool with stacks-node's admission checks and rejection names, and
//! blocks anchored to Bitcoin blocks, each keeping the state after it so a Bitcoin reorg can
//! rewind to the last surviving block and build a fork from there.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitcoin::hashes::Hash as _;
use bitcoin::BlockHash;
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256, Sha512_256};

use super::contracts::{self, Abort, CallContext, Print, Sbtc};
use crate::chain::stacks::address::{
    check_contract_name, Principal, StacksNetwork, VERSION_MAINNET_MULTISIG,
    VERSION_MAINNET_SINGLESIG, VERSION_TESTNET_MULTISIG, VERSION_TESTNET_SINGLESIG,
};
use crate::chain::stacks::clarity::Value;
use crate::chain::stacks::events::to_clarity_bytes;
use crate::chain::stacks::transaction::{
    Payload, SpendingCondition, StacksTransaction, MAX_TRANSACTION_BYTES,
};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// µSTX.
    pub balance: u128,
    pub nonce: u64,
}

/// A deployed contract: one of the five native sBTC contracts, or a stored deploy.
#[derive(Clone, Debug)]
pub struct Deployed {
    pub source: Option<String>,
    pub clarity_version: Option<u8>,
}

/// The consensus state after a block.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub accounts: HashMap<Principal, Account>,
    pub contracts: HashMap<Principal, Deployed>,
    pub sbtc: Sbtc,
}

impl Ledger {
    pub fn account(&self, who: &Principal) -> Account {
        self.accounts.get(who).cloned().unwrap_or_default()
    }

    fn is_native(&self, contract: &Principal) -> bool {
        contract.hash160() == self.sbtc.deployer.hash160()
            && contract.version() == self.sbtc.deployer.version()
            && contract
                .contract_name()
                .is_some_and(|n| contracts::CONTRACTS.contains(&n))
    }
}

/// How a mined transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Success,
    AbortByResponse,
}

impl TxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Success => "success",
            TxStatus::AbortByResponse => "abort_by_response",
        }
    }
}

/// A mined transaction's receipt.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub txid: [u8; 32],
    pub raw: Vec<u8>,
    pub status: TxStatus,
    pub result: Value,
    /// Print events, only when the call succeeded.
    pub events: Vec<Print>,
    pub vm_error: Option<String>,
}

/// A Stacks block anchored to a Bitcoin block, with the state after it.
#[derive(Clone, Debug)]
pub struct StacksBlock {
    pub height: u64,
    pub block_hash: [u8; 32],
    pub index_block_hash: [u8; 32],
    pub parent_block_hash: [u8; 32],
    pub parent_index_block_hash: [u8; 32],
    pub consensus_hash: [u8; 20],
    pub burn_hash: BlockHash,
    pub burn_height: u64,
    pub burn_time: u32,
    pub receipts: Vec<Receipt>,
    pub ledger: Ledger,
}

/// A transaction waiting in the mempool.
#[derive(Clone, Debug)]
pub struct Pending {
    pub tx: StacksTransaction,
    pub raw: Vec<u8>,
    pub txid: [u8; 32],
    pub origin: Principal,
    seq: u64,
}

/// Why `POST /v2/transactions` refused a transaction: stacks-node's `MemPoolRejection` name and
/// its `reason_data`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub reason: &'static str,
    pub reason_data: Option<Json>,
    pub txid: Option<[u8; 32]>,
}

impl Rejection {
    fn new(reason: &'static str, data: Option<Json>) -> Rejection {
        Rejection {
            reason,
            reason_data: data,
            txid: None,
        }
    }

    fn message(reason: &'static str, message: impl Into<String>) -> Rejection {
        Rejection::new(reason, Some(json!({ "message": message.into() })))
    }

    /// stacks-node's 400 body.
    pub fn to_json(&self) -> Json {
        let mut body = json!({
            "error": "transaction rejected",
            "reason": self.reason,
            "txid": self.txid.map(hex::encode).unwrap_or_default(),
        });
        if let Some(data) = &self.reason_data {
            body["reason_data"] = data.clone();
        }
        body
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(d) = &self.reason_data {
            write!(f, " {d}")?;
        }
        Ok(())
    }
}

/// The followed Bitcoin best chain: height → (hash, time).
pub type BurnChain = BTreeMap<u64, (BlockHash, u32)>;

/// The whole Stacks chain and mempool, behind the node's lock.
pub struct NodeState {
    pub network: StacksNetwork,
    /// The canonical chain: `blocks[h]` is at height h; `blocks[0]` is genesis.
    pub blocks: Vec<StacksBlock>,
    pub mempool: Vec<Pending>,
    pub burn: BurnChain,
    /// The minimum fee, in µSTX per byte of the transaction (stacks-node: 1).
    pub min_fee_per_byte: u64,
    seq: u64,
}

fn sha512_256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha512_256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn u128_hex(n: u128) -> String {
    format!("0x{n:032x}")
}

impl NodeState {
    /// The chain with its genesis block anchored to `burn_tip`.
    pub fn new(
        network: StacksNetwork,
        genesis: Ledger,
        burn: BurnChain,
        min_fee_per_byte: u64,
    ) -> NodeState {
        let (&burn_height, &(burn_hash, burn_time)) = burn
            .iter()
            .next_back()
            .unwrap_or((&0, &(BlockHash::all_zeros(), 0)));
        let consensus_hash = consensus_hash(&burn_hash);
        let block_hash = sha512_256(&[b"sbtc-devnet-stacks-genesis", &burn_hash.to_byte_array()]);
        let genesis = StacksBlock {
            height: 0,
            block_hash,
            index_block_hash: sha512_256(&[&block_hash, &consensus_hash]),
            parent_block_hash: [0; 32],
            parent_index_block_hash: [0; 32],
            consensus_hash,
            burn_hash,
            burn_height,
            burn_time,
            receipts: Vec::new(),
            ledger: genesis,
        };
        NodeState {
            network,
            blocks: vec![genesis],
            mempool: Vec::new(),
            burn,
            min_fee_per_byte,
            seq: 0,
        }
    }

    pub fn tip(&self) -> &StacksBlock {
        self.blocks.last().expect("genesis is never removed")
    }

    /// The state at the tip.
    pub fn ledger(&self) -> &Ledger {
        &self.tip().ledger
    }

    /// The Bitcoin tip the node follows.
    pub fn burn_tip(&self) -> (u64, BlockHash, u32) {
        match self.burn.iter().next_back() {
            Some((h, (hash, time))) => (*h, *hash, *time),
            None => (
                self.tip().burn_height,
                self.tip().burn_hash,
                self.tip().burn_time,
            ),
        }
    }

    /// The principal of a transaction's origin.
    pub fn origin(&self, tx: &StacksTransaction) -> Principal {
        let version = match (self.network, &tx.auth) {
            (StacksNetwork::Mainnet, SpendingCondition::Singlesig(_)) => VERSION_MAINNET_SINGLESIG,
            (StacksNetwork::Mainnet, SpendingCondition::Multisig(_)) => VERSION_MAINNET_MULTISIG,
            (StacksNetwork::Testnet, SpendingCondition::Singlesig(_)) => VERSION_TESTNET_SINGLESIG,
            (StacksNetwork::Testnet, SpendingCondition::Multisig(_)) => VERSION_TESTNET_MULTISIG,
        };
        Principal::Standard {
            version,
            hash160: tx.auth.signer(),
        }
    }

    /// A read-only call against the tip state (the node's `call-read`).
    pub fn call_read_only(
        &self,
        contract: &Principal,
        function: &str,
        args: &[Value],
        sender: Principal,
    ) -> Result<Value, String> {
        let ledger = self.ledger();
        if !ledger.is_native(contract) {
            return Err(if ledger.contracts.contains_key(contract) {
                format!(
                    "this devnet node runs no Clarity: only the sBTC contracts can be read, not {contract}"
                )
            } else {
                format!("Unchecked(NoSuchContract(\"{contract}\"))")
            });
        }
        let name = contract.contract_name().unwrap_or_default();
        let burn = &self.burn;
        let header = move |h: u64| burn.get(&h).map(|(hash, _)| to_clarity_bytes(hash));
        let ctx = CallContext {
            sender,
            burn_height: self.burn_tip().0,
            burn_header: &header,
        };
        ledger.sbtc.call_read_only(&ctx, name, function, args)
    }

    /// `POST /v2/transactions`: the checks a stacks-node makes before a transaction enters its
    /// mempool. Nonces must follow the account's nonce and the origin's pending transactions
    /// without a gap (a real node would hold a gapped one; here it would wait forever).
    pub fn submit(&mut self, raw: &[u8]) -> Result<[u8; 32], Rejection> {
        let tx = StacksTransaction::deserialize(raw)
            .map_err(|e| Rejection::message("Deserialization", e.to_string()))?;
        let txid = tx.txid();
        self.admit(tx, raw, txid).map_err(|mut r| {
            r.txid = Some(txid);
            r
        })?;
        Ok(txid)
    }

    fn admit(
        &mut self,
        tx: StacksTransaction,
        raw: &[u8],
        txid: [u8; 32],
    ) -> Result<(), Rejection> {
        if self.mempool.iter().any(|p| p.txid == txid) {
            return Ok(());
        }
        if tx.network != self.network {
            return Err(Rejection::new("BadTransactionVersion", None));
        }
        let origin_keys = tx
            .verify_origin()
            .map_err(|e| Rejection::message("SignatureValidation", e.to_string()))?;
        if let (Some(_), Some(call)) = (tx.multisig(), tx.contract_call()) {
            let contract = Principal::Contract {
                version: call.address_version,
                hash160: call.address_hash,
                name: call.contract_name.clone(),
            };
            if self.ledger().is_native(&contract)
                && contracts::is_signers_function(&call.contract_name, &call.function_name)
            {
                self.check_signer_set(&tx, &origin_keys.keys)?;
            }
        }
        let origin = self.origin(&tx);
        let ledger = self.ledger();
        let account = ledger.account(&origin);
        let pending: Vec<&Pending> = self.mempool.iter().filter(|p| p.origin == origin).collect();
        let nonce = tx.auth.nonce();
        let next = account.nonce + pending.len() as u64;
        if nonce < account.nonce || nonce > next {
            return Err(Rejection::new(
                "BadNonce",
                Some(json!({
                    "expected": if nonce < account.nonce { account.nonce } else { next },
                    "actual": nonce,
                    "is_origin": true,
                    "principal": origin.to_string(),
                })),
            ));
        }
        if nonce < next {
            return Err(Rejection::new("ConflictingNonceInMempool", None));
        }
        let fee = tx.auth.fee();
        let min_fee = self.min_fee_per_byte.saturating_mul(raw.len() as u64);
        if fee < min_fee {
            return Err(Rejection::new(
                "FeeTooLow",
                Some(json!({ "expected": min_fee, "actual": fee })),
            ));
        }
        let pending_fees: u128 = pending.iter().map(|p| p.tx.auth.fee() as u128).sum();
        let needed = pending_fees + fee as u128;
        if account.balance < needed {
            return Err(Rejection::new(
                "NotEnoughFunds",
                Some(json!({ "expected": u128_hex(needed), "actual": u128_hex(account.balance) })),
            ));
        }
        match &tx.payload {
            Payload::ContractCall(call) => {
                let contract = Principal::Contract {
                    version: call.address_version,
                    hash160: call.address_hash,
                    name: call.contract_name.clone(),
                };
                if !ledger.is_native(&contract) {
                    if ledger.contracts.contains_key(&contract) {
                        return Err(Rejection::message(
                            "ServerFailureOther",
                            format!(
                                "this devnet node runs no Clarity: {contract} is stored but cannot be called; only the sBTC contracts can"
                            ),
                        ));
                    }
                    return Err(Rejection::new("NoSuchContract", None));
                }
                let sig = contracts::public_signature(&call.contract_name, &call.function_name)
                    .ok_or_else(|| Rejection::new("NoSuchPublicFunction", None))?;
                contracts::check_args(&sig, &call.args)
                    .map_err(|e| Rejection::message("BadFunctionArgument", e))?;
            }
            Payload::SmartContract(sc) => {
                check_contract_name(&sc.name)
                    .map_err(|e| Rejection::message("Deserialization", e.to_string()))?;
                let id = Principal::Contract {
                    version: origin.version(),
                    hash160: *origin.hash160(),
                    name: sc.name.clone(),
                };
                let pending_deploy = self.mempool.iter().any(|p| {
                    matches!(&p.tx.payload, Payload::SmartContract(o) if o.name == sc.name)
                        && p.origin == origin
                });
                if ledger.contracts.contains_key(&id) || pending_deploy {
                    return Err(Rejection::new(
                        "ContractAlreadyExists",
                        Some(json!({ "contract_identifier": id.to_string() })),
                    ));
                }
            }
        }
        self.seq += 1;
        self.mempool.push(Pending {
            tx,
            raw: raw.to_vec(),
            txid,
            origin,
            seq: self.seq,
        });
        Ok(())
    }

    /// The signers' calls must come from the registry's current set with its threshold.
    fn check_signer_set(
        &self,
        tx: &StacksTransaction,
        keys: &[bitcoin::secp256k1::PublicKey],
    ) -> Result<(), Rejection> {
        let sbtc = &self.ledger().sbtc;
        let mut ours: Vec<Vec<u8>> = keys.iter().map(|k| k.serialize().to_vec()).collect();
        let mut registry = sbtc.signer_set.clone();
        ours.sort();
        registry.sort();
        if ours != registry {
            let outside = ours.iter().filter(|k| !registry.contains(k)).count();
            return Err(Rejection::message(
                "SignatureValidation",
                format!(
                    "the multisig's {} keys are not the registry's current signer set of {} ({outside} outside it)",
                    ours.len(),
                    registry.len()
                ),
            ));
        }
        let required = tx.multisig().map(|m| m.signatures_required).unwrap_or(0);
        if u128::from(required) != sbtc.threshold {
            return Err(Rejection::message(
                "SignatureValidation",
                format!(
                    "the multisig requires {required} signatures; the registry's current threshold is {}",
                    sbtc.threshold
                ),
            ));
        }
        Ok(())
    }

    /// Mines one block on the tip anchored to the Bitcoin block at `burn_height` (which must be
    /// in the followed chain), with every mempool transaction whose nonce is next.
    pub fn mine_at(&mut self, burn_height: u64) -> &StacksBlock {
        let (burn_hash, burn_time) = self
            .burn
            .get(&burn_height)
            .copied()
            .unwrap_or((self.tip().burn_hash, self.tip().burn_time));
        let mut ledger = self.ledger().clone();
        let mut queue = std::mem::take(&mut self.mempool);
        queue.sort_by_key(|p| p.seq);
        let burn = &self.burn;
        let header = move |h: u64| burn.get(&h).map(|(hash, _)| to_clarity_bytes(hash));
        let mut receipts = Vec::new();
        // Passes in arrival order; a transaction waits for its origin's earlier nonces.
        loop {
            let mut progressed = false;
            let mut rest = Vec::new();
            for p in queue {
                let account = ledger.account(&p.origin);
                if p.tx.auth.nonce() == account.nonce {
                    if account.balance < p.tx.auth.fee() as u128 {
                        tracing::warn!(txid = %hex::encode(p.txid), "stacks node: dropped a transaction whose origin cannot pay its fee any more");
                        continue;
                    }
                    receipts.push(apply(&mut ledger, &p, burn_height, &header));
                    progressed = true;
                } else if p.tx.auth.nonce() > account.nonce {
                    rest.push(p);
                } else {
                    tracing::debug!(txid = %hex::encode(p.txid), "stacks node: dropped a transaction whose nonce was used");
                }
            }
            queue = rest;
            if !progressed || queue.is_empty() {
                break;
            }
        }
        self.mempool = queue;
        self.seq += 1;
        let parent = self.tip();
        let height = parent.height + 1;
        let txids: Vec<u8> = receipts.iter().flat_map(|r| r.txid).collect();
        let consensus_hash = consensus_hash(&burn_hash);
        let block_hash = sha512_256(&[
            b"sbtc-devnet-stacks-block",
            &parent.block_hash,
            &height.to_be_bytes(),
            &burn_hash.to_byte_array(),
            &self.seq.to_be_bytes(),
            &txids,
        ]);
        let block = StacksBlock {
            height,
            block_hash,
            index_block_hash: sha512_256(&[&block_hash, &consensus_hash]),
            parent_block_hash: parent.block_hash,
            parent_index_block_hash: parent.index_block_hash,
            consensus_hash,
            burn_hash,
            burn_height,
            burn_time,
            receipts,
            ledger,
        };
        self.blocks.push(block);
        self.tip()
    }

    /// Abandons the blocks above `height` (their transactions go back to the mempool, ahead of
    /// the others) so the next block builds on the one at `height`. Returns how many went.
    pub fn rewind_to(&mut self, height: u64) -> usize {
        let keep = (height as usize + 1).min(self.blocks.len()).max(1);
        let abandoned: Vec<StacksBlock> = self.blocks.drain(keep..).collect();
        let mut back: Vec<Pending> = Vec::new();
        for block in &abandoned {
            for r in &block.receipts {
                if let Ok(tx) = StacksTransaction::deserialize(&r.raw) {
                    let origin = self.origin(&tx);
                    back.push(Pending {
                        tx,
                        raw: r.raw.clone(),
                        txid: r.txid,
                        origin,
                        seq: 0,
                    });
                }
            }
        }
        let known: HashSet<[u8; 32]> = back.iter().map(|p| p.txid).collect();
        let old = std::mem::take(&mut self.mempool);
        for p in back.iter_mut() {
            self.seq += 1;
            p.seq = self.seq;
        }
        self.mempool = back;
        for mut p in old.into_iter().filter(|p| !known.contains(&p.txid)) {
            self.seq += 1;
            p.seq = self.seq;
            self.mempool.push(p);
        }
        abandoned.len()
    }

    /// A block of the canonical chain by its hash (0x-less hex or bytes).
    pub fn block_by_hash(&self, hash: &[u8; 32]) -> Option<&StacksBlock> {
        self.blocks.iter().find(|b| &b.block_hash == hash)
    }

    /// Where a transaction is: mined (block height and receipt) or pending.
    pub fn find_tx(&self, txid: &[u8; 32]) -> Option<(Option<u64>, Option<&Receipt>)> {
        for b in &self.blocks {
            if let Some(r) = b.receipts.iter().find(|r| &r.txid == txid) {
                return Some((Some(b.height), Some(r)));
            }
        }
        self.mempool
            .iter()
            .any(|p| &p.txid == txid)
            .then_some((None, None))
    }
}

fn consensus_hash(burn_hash: &BlockHash) -> [u8; 20] {
    let d: [u8; 32] = Sha256::digest(burn_hash.to_byte_array()).into();
    let mut out = [0u8; 20];
    out.copy_from_slice(&d[..20]);
    out
}

/// Runs one transaction on `ledger`: the fee and nonce are always consumed; a call that errors
/// leaves the rest of the state as it was.
fn apply(
    ledger: &mut Ledger,
    p: &Pending,
    burn_height: u64,
    header: &dyn Fn(u64) -> Option<[u8; 32]>,
) -> Receipt {
    let account = ledger.accounts.entry(p.origin.clone()).or_default();
    account.balance -= p.tx.auth.fee() as u128;
    account.nonce += 1;
    let mut receipt = Receipt {
        txid: p.txid,
        raw: p.raw.clone(),
        status: TxStatus::Success,
        result: Value::ok(Value::Bool(true)),
        events: Vec::new(),
        vm_error: None,
    };
    match &p.tx.payload {
        Payload::SmartContract(sc) => {
            let id = Principal::Contract {
                version: p.origin.version(),
                hash160: *p.origin.hash160(),
                name: sc.name.clone(),
            };
            match ledger.contracts.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    receipt.status = TxStatus::AbortByResponse;
                    receipt.result = Value::err(Value::None);
                    receipt.vm_error = Some(format!("contract {} already exists", e.key()));
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Deployed {
                        source: Some(sc.code_body.clone()),
                        clarity_version: sc.clarity_version,
                    });
                }
            }
        }
        Payload::ContractCall(call) => {
            let ctx = CallContext {
                sender: p.origin.clone(),
                burn_height,
                burn_header: header,
            };
            let mut copy = ledger.sbtc.clone();
            let mut prints = Vec::new();
            match copy.call_public(
                &ctx,
                &call.contract_name,
                &call.function_name,
                &call.args,
                &mut prints,
            ) {
                Ok(v) => {
                    ledger.sbtc = copy;
                    receipt.result = Value::ok(v);
                    receipt.events = prints;
                }
                Err(Abort::Err(e)) => {
                    receipt.status = TxStatus::AbortByResponse;
                    receipt.result = Value::err(e);
                }
                Err(Abort::Runtime(why)) => {
                    receipt.status = TxStatus::AbortByResponse;
                    receipt.result = Value::err(Value::None);
                    receipt.vm_error = Some(why);
                }
            }
        }
    }
    receipt
}

/// The `/new_block` body stacks-node POSTs to its event observers for `block`.
pub fn new_block_json(block: &StacksBlock, parent: Option<&StacksBlock>) -> Json {
    let hex0x = |b: &[u8]| format!("0x{}", hex::encode(b));
    let mut events = Vec::new();
    let mut transactions = Vec::new();
    for (i, r) in block.receipts.iter().enumerate() {
        for (contract, value) in &r.events {
            events.push(json!({
                "txid": hex0x(&r.txid),
                "event_index": events.len(),
                "committed": true,
                "type": "contract_event",
                "contract_event": {
                    "contract_identifier": contract.to_string(),
                    "topic": "print",
                    "value": { "repr": value.to_string() },
                    "raw_value": value.to_hex(),
                },
            }));
        }
        transactions.push(json!({
            "txid": hex0x(&r.txid),
            "tx_index": i,
            "status": r.status.as_str(),
            "raw_result": r.result.to_hex(),
            "raw_tx": hex0x(&r.raw),
            "vm_error": r.vm_error,
        }));
    }
    let (parent_burn_hash, parent_burn_height, parent_burn_time) = match parent {
        Some(p) => (p.burn_hash, p.burn_height, p.burn_time),
        None => (block.burn_hash, block.burn_height, block.burn_time),
    };
    json!({
        "block_hash": hex0x(&block.block_hash),
        "block_height": block.height,
        "index_block_hash": hex0x(&block.index_block_hash),
        "parent_block_hash": hex0x(&block.parent_block_hash),
        "parent_index_block_hash": hex0x(&block.parent_index_block_hash),
        "parent_microblock": hex0x(&[0; 32]),
        "parent_microblock_sequence": 0,
        "consensus_hash": hex0x(&block.consensus_hash),
        "burn_block_hash": format!("0x{}", block.burn_hash),
        "burn_block_height": block.burn_height,
        "burn_block_time": block.burn_time,
        "parent_burn_block_hash": format!("0x{parent_burn_hash}"),
        "parent_burn_block_height": parent_burn_height,
        "parent_burn_block_timestamp": parent_burn_time,
        "miner_txid": hex0x(&[0; 32]),
        "matured_miner_rewards": [],
        "events": events,
        "transactions": transactions,
    })
}

/// The largest body `POST /v2/transactions` reads.
pub const MAX_TX_BODY: usize = MAX_TRANSACTION_BYTES;
