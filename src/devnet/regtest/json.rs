//! bitcoind's JSON shapes (`TxToUniv`, `blockheaderToJSON`, `blockToJSON`, `ScriptToUniv`,
//! mempool entries): field names, amounts in BTC, hex in RPC byte order.

use bitcoin::blockdata::script::Instruction;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Address, Amount, Network, Script, Transaction, Txid};
use serde_json::{json, Map, Value};

use super::chain::{BlockRecord, Chain};
use super::mempool::{Entry, Mempool};
use super::verify::Coin;

/// An amount as bitcoind writes it: BTC as a JSON number.
pub fn btc(amount: Amount) -> Value {
    json!(amount.to_btc())
}

/// bitcoind's script type names (`GetTxnOutputType`).
pub fn script_type(script: &Script) -> &'static str {
    if script.is_p2pkh() {
        "pubkeyhash"
    } else if script.is_p2sh() {
        "scripthash"
    } else if script.is_p2wpkh() {
        "witness_v0_keyhash"
    } else if script.is_p2wsh() {
        "witness_v0_scripthash"
    } else if script.is_p2tr() {
        "witness_v1_taproot"
    } else if script.as_bytes() == [0x51, 0x02, 0x4e, 0x73] {
        "anchor"
    } else if script.is_witness_program() {
        "witness_unknown"
    } else if script.is_op_return() {
        "nulldata"
    } else if script.is_p2pk() {
        "pubkey"
    } else if script.is_multisig() {
        "multisig"
    } else {
        "nonstandard"
    }
}

/// A script in bitcoind's `asm` form: small pushes as numbers, larger ones as hex, opcodes by
/// their Bitcoin Core names.
pub fn asm(script: &Script) -> String {
    let mut parts = Vec::new();
    for ins in script.instructions() {
        match ins {
            Ok(Instruction::PushBytes(bytes)) => {
                let b = bytes.as_bytes();
                if b.len() <= 4 {
                    parts.push(script_num(b).to_string());
                } else {
                    parts.push(hex::encode(b));
                }
            }
            Ok(Instruction::Op(op)) => {
                let code = op.to_u8();
                let name = match code {
                    0x4f => "-1".to_string(),
                    0x51..=0x60 => (code - 0x50).to_string(),
                    0xb1 => "OP_CHECKLOCKTIMEVERIFY".to_string(),
                    0xb2 => "OP_CHECKSEQUENCEVERIFY".to_string(),
                    _ => format!("{op}"),
                };
                parts.push(name);
            }
            Err(_) => {
                parts.push("[error]".to_string());
                break;
            }
        }
    }
    parts.join(" ")
}

fn script_num(b: &[u8]) -> i64 {
    if b.is_empty() {
        return 0;
    }
    let mut v: i64 = 0;
    for (i, byte) in b.iter().enumerate() {
        v |= i64::from(*byte) << (8 * i);
    }
    let last = b[b.len() - 1];
    if last & 0x80 != 0 {
        -(v & !(0x80i64 << (8 * (b.len() - 1))))
    } else {
        v
    }
}

/// `scriptPubKey`: asm, hex, address (when it has one), type.
pub fn script_pubkey(script: &Script) -> Value {
    let mut m = Map::new();
    m.insert("asm".into(), json!(asm(script)));
    m.insert("hex".into(), json!(hex::encode(script.as_bytes())));
    if let Ok(address) = Address::from_script(script, Network::Regtest) {
        m.insert("address".into(), json!(address.to_string()));
    }
    m.insert("type".into(), json!(script_type(script)));
    Value::Object(m)
}

/// `TxToUniv`: with `prevouts` (verbosity 2/3), each input gets its `prevout` and the tx its fee.
pub fn tx(tx: &Transaction, prevouts: Option<&[Coin]>, include_hex: bool) -> Value {
    let mut vin = Vec::with_capacity(tx.input.len());
    for (i, input) in tx.input.iter().enumerate() {
        let mut m = Map::new();
        if tx.is_coinbase() {
            m.insert(
                "coinbase".into(),
                json!(hex::encode(input.script_sig.as_bytes())),
            );
        } else {
            m.insert("txid".into(), json!(input.previous_output.txid.to_string()));
            m.insert("vout".into(), json!(input.previous_output.vout));
            m.insert(
                "scriptSig".into(),
                json!({"asm": asm(&input.script_sig), "hex": hex::encode(input.script_sig.as_bytes())}),
            );
        }
        if !input.witness.is_empty() {
            let items: Vec<Value> = input
                .witness
                .iter()
                .map(|w| json!(hex::encode(w)))
                .collect();
            m.insert("txinwitness".into(), Value::Array(items));
        }
        if let (Some(coins), false) = (prevouts, tx.is_coinbase()) {
            if let Some(c) = coins.get(i) {
                m.insert(
                    "prevout".into(),
                    json!({
                        "generated": c.coinbase,
                        "height": c.height,
                        "value": btc(c.output.value),
                        "scriptPubKey": script_pubkey(&c.output.script_pubkey),
                    }),
                );
            }
        }
        m.insert("sequence".into(), json!(input.sequence.0));
        vin.push(Value::Object(m));
    }
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, o)| json!({"value": btc(o.value), "n": n, "scriptPubKey": script_pubkey(&o.script_pubkey)}))
        .collect();
    let mut m = Map::new();
    m.insert("txid".into(), json!(tx.compute_txid().to_string()));
    m.insert("hash".into(), json!(tx.compute_wtxid().to_string()));
    m.insert("version".into(), json!(tx.version.0));
    m.insert("size".into(), json!(tx.total_size()));
    m.insert("vsize".into(), json!(tx.vsize()));
    m.insert("weight".into(), json!(tx.weight().to_wu()));
    m.insert("locktime".into(), json!(tx.lock_time.to_consensus_u32()));
    m.insert("vin".into(), Value::Array(vin));
    m.insert("vout".into(), Value::Array(vout));
    if let (Some(coins), false) = (prevouts, tx.is_coinbase()) {
        let value_in: u64 = coins.iter().map(|c| c.output.value.to_sat()).sum();
        let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        m.insert(
            "fee".into(),
            btc(Amount::from_sat(value_in.saturating_sub(value_out))),
        );
    }
    if include_hex {
        m.insert("hex".into(), json!(serialize_hex(tx)));
    }
    Value::Object(m)
}

/// `blockheaderToJSON`.
pub fn header(chain: &Chain, r: &BlockRecord) -> Map<String, Value> {
    let h = &r.block.header;
    let mut m = Map::new();
    m.insert("hash".into(), json!(r.hash.to_string()));
    m.insert("confirmations".into(), json!(chain.confirmations(&r.hash)));
    m.insert("height".into(), json!(r.height));
    m.insert("version".into(), json!(h.version.to_consensus()));
    m.insert(
        "versionHex".into(),
        json!(format!("{:08x}", h.version.to_consensus())),
    );
    m.insert("merkleroot".into(), json!(h.merkle_root.to_string()));
    m.insert("time".into(), json!(h.time));
    m.insert("mediantime".into(), json!(chain.mtp_of_block(&r.hash)));
    m.insert("nonce".into(), json!(h.nonce));
    m.insert(
        "bits".into(),
        json!(format!("{:08x}", h.bits.to_consensus())),
    );
    m.insert("difficulty".into(), json!(h.difficulty_float()));
    // Every regtest block at 0x207fffff carries 2 units of work.
    m.insert(
        "chainwork".into(),
        json!(format!("{:064x}", 2 * (u128::from(r.height) + 1))),
    );
    m.insert("nTx".into(), json!(r.block.txdata.len()));
    if r.height > 0 {
        m.insert(
            "previousblockhash".into(),
            json!(h.prev_blockhash.to_string()),
        );
    }
    if let Some(next) = chain.next_active(&r.hash) {
        m.insert("nextblockhash".into(), json!(next.to_string()));
    }
    m
}

/// `blockToJSON` for verbosity 1 (txids), 2 (transactions with fees) and 3 (with prevouts).
pub fn block(chain: &Chain, r: &BlockRecord, verbosity: u8) -> Value {
    let mut m = header(chain, r);
    let stripped = bitcoin::consensus::encode::serialize(&r.block.header).len()
        + r.block.txdata.iter().map(|t| t.base_size()).sum::<usize>()
        + bitcoin::VarInt(r.block.txdata.len() as u64).size();
    m.insert("strippedsize".into(), json!(stripped));
    m.insert("size".into(), json!(r.block.total_size()));
    m.insert("weight".into(), json!(r.block.weight().to_wu()));
    let txs: Vec<Value> = r
        .block
        .txdata
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if verbosity <= 1 {
                return json!(t.compute_txid().to_string());
            }
            let undo = if i == 0 {
                None
            } else {
                r.undo
                    .as_ref()
                    .and_then(|u| u.get(i - 1))
                    .map(|c| c.as_slice())
            };
            let mut v = tx(t, undo, true);
            if verbosity < 3 {
                if let Some(vin) = v.get_mut("vin").and_then(|x| x.as_array_mut()) {
                    for input in vin {
                        if let Some(o) = input.as_object_mut() {
                            o.remove("prevout");
                        }
                    }
                }
            }
            v
        })
        .collect();
    m.insert("tx".into(), Value::Array(txs));
    Value::Object(m)
}

/// A mempool entry (`getmempoolentry`, `getrawmempool true`).
pub fn mempool_entry(mempool: &Mempool, e: &Entry) -> Value {
    let (acount, afee, asize) = mempool.ancestor_totals(&e.txid);
    let (dcount, dfee, dsize) = mempool.descendant_totals(&e.txid);
    let mut depends: Vec<String> =
        e.tx.input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| mempool.contains(t))
            .map(|t| t.to_string())
            .collect();
    depends.sort();
    depends.dedup();
    let mut spentby: Vec<String> = (0..e.tx.output.len() as u32)
        .filter_map(|v| mempool.spender(&bitcoin::OutPoint::new(e.txid, v)))
        .map(|t: Txid| t.to_string())
        .collect();
    spentby.sort();
    spentby.dedup();
    let replaceable = e.tx.is_explicitly_rbf()
        || mempool
            .ancestors_of(&e.tx)
            .iter()
            .any(|a| mempool.get(a).is_some_and(|x| x.tx.is_explicitly_rbf()));
    json!({
        "vsize": e.vsize,
        "weight": e.weight,
        "time": e.time,
        "height": e.height,
        "descendantcount": dcount,
        "descendantsize": dsize,
        "ancestorcount": acount,
        "ancestorsize": asize,
        "wtxid": e.wtxid.to_string(),
        "fees": {
            "base": btc(e.fee),
            "modified": btc(e.fee),
            "ancestor": btc(afee),
            "descendant": btc(dfee),
        },
        "depends": depends,
        "spentby": spentby,
        "bip125-replaceable": replaceable,
        "unbroadcast": false,
    })
}
