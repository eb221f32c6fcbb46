//! The Stacks event observer's chain side: reading a stacks-node's `POST /new_block` body into
//! the block and the sbtc-registry events the signer keeps (CHAIN.md section 4), and reading
//! them back, typed, from the canonical Stacks chain (storage decides which chain that is:
//! `DbRead::get_stacks_canonical_tip`). The HTTP side is `api::new_block`.
//!
//! Kept: events with `committed == true`, of type `contract_event`, from
//! `<deployer>.sbtc-registry`, topic `print`, whose `raw_value` reads as a
//! [`RegistryEvent`]. Registry prints of other topics are ignored; a registry print that does not
//! read is logged and left out (the contract wrote it, so it is a bug to report, not a reason to
//! drop the block).

use std::collections::HashSet;
use std::str::FromStr;

use bitcoin::BlockHash;
use serde::Deserialize;

use super::clarity::Value;
use super::events::{EventError, RegistryEvent};
use crate::storage::{
    self, DbRead, RegistryEventRecord, RegistryTopic, StacksBlock, StacksBlockHash, StacksTxid,
    StoredRegistryEvent,
};

/// Why a `/new_block` body cannot be used at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unusable /new_block body: {0}")]
pub struct NewBlockError(pub String);

/// What one `/new_block` body holds for the signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedBlock {
    pub block: StacksBlock,
    pub events: Vec<RegistryEventRecord>,
    /// Registry prints left out because they did not read, each with why.
    pub unreadable: Vec<String>,
}

#[derive(Deserialize)]
struct NewBlockJson {
    index_block_hash: String,
    parent_index_block_hash: String,
    block_height: u64,
    burn_block_hash: String,
    burn_block_height: u64,
    #[serde(default)]
    events: Vec<EventJson>,
}

#[derive(Deserialize)]
struct EventJson {
    txid: String,
    event_index: u32,
    committed: bool,
    #[serde(rename = "type")]
    kind: String,
    contract_event: Option<ContractEventJson>,
}

#[derive(Deserialize)]
struct ContractEventJson {
    contract_identifier: String,
    topic: String,
    raw_value: Option<String>,
}

fn hash32(what: &str, text: &str) -> Result<[u8; 32], String> {
    let hex_text = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(hex_text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("{what} `{text}` is not 32 bytes of hex"))
}

/// Reads a `/new_block` body; `registry` is `<deployer>.sbtc-registry`.
pub fn parse_new_block(body: &[u8], registry: &str) -> Result<ObservedBlock, NewBlockError> {
    let json: NewBlockJson =
        serde_json::from_slice(body).map_err(|e| NewBlockError(format!("{e}")))?;
    let bad = NewBlockError;
    let hash = StacksBlockHash(hash32("index_block_hash", &json.index_block_hash).map_err(bad)?);
    let parent_hash = StacksBlockHash(
        hash32("parent_index_block_hash", &json.parent_index_block_hash).map_err(bad)?,
    );
    // The node writes the burn block hash in bitcoind's (display) byte order.
    let burn = json
        .burn_block_hash
        .strip_prefix("0x")
        .unwrap_or(&json.burn_block_hash);
    let bitcoin_anchor = BlockHash::from_str(burn).map_err(|e| {
        NewBlockError(format!(
            "burn_block_hash `{}` is not a block hash: {e}",
            json.burn_block_hash
        ))
    })?;
    let block = StacksBlock {
        hash,
        height: json.block_height,
        parent_hash,
        bitcoin_anchor,
        bitcoin_anchor_height: json.burn_block_height,
    };
    let mut events = Vec::new();
    let mut unreadable = Vec::new();
    let mut seen = HashSet::new();
    for (position, e) in json.events.iter().enumerate() {
        let Some(c) = &e.contract_event else { continue };
        if !e.committed
            || e.kind != "contract_event"
            || c.contract_identifier != registry
            || c.topic != "print"
        {
            continue;
        }
        let place = format!("event {} of transaction {}", e.event_index, e.txid);
        let txid = match hash32("txid", &e.txid) {
            Ok(t) => StacksTxid(t),
            Err(why) => {
                unreadable.push(format!("{place}: {why}"));
                continue;
            }
        };
        let Some(raw) = &c.raw_value else {
            unreadable.push(format!("{place}: no raw_value"));
            continue;
        };
        let value = match Value::from_hex(raw) {
            Ok(v) => v,
            Err(why) => {
                unreadable.push(format!("{place}: raw_value is not Clarity: {why}"));
                continue;
            }
        };
        let event = match RegistryEvent::from_value(&value) {
            Ok(ev) => ev,
            Err(EventError::OtherTopic(_)) => continue,
            Err(why) => {
                unreadable.push(format!("{place}: {why}"));
                continue;
            }
        };
        if !seen.insert((txid, e.event_index)) {
            unreadable.push(format!("{place}: sent twice in one block"));
            continue;
        }
        events.push(record(
            &block,
            txid,
            e.event_index,
            position as u32,
            &event,
            value.serialize(),
        ));
    }
    Ok(ObservedBlock {
        block,
        events,
        unreadable,
    })
}

fn record(
    block: &StacksBlock,
    txid: StacksTxid,
    event_index: u32,
    position: u32,
    event: &RegistryEvent,
    raw_value: Vec<u8>,
) -> RegistryEventRecord {
    let (topic, request_id, deposit) = match event {
        RegistryEvent::CompletedDeposit { outpoint, .. } => {
            (RegistryTopic::CompletedDeposit, None, Some(*outpoint))
        }
        RegistryEvent::WithdrawalCreate { request_id, .. } => {
            (RegistryTopic::WithdrawalCreate, Some(*request_id), None)
        }
        RegistryEvent::WithdrawalAccept { request_id, .. } => {
            (RegistryTopic::WithdrawalAccept, Some(*request_id), None)
        }
        RegistryEvent::WithdrawalReject { request_id, .. } => {
            (RegistryTopic::WithdrawalReject, Some(*request_id), None)
        }
        RegistryEvent::KeyRotation { .. } => (RegistryTopic::KeyRotation, None, None),
    };
    RegistryEventRecord {
        block_hash: block.hash,
        txid,
        event_index,
        position,
        topic,
        request_id,
        deposit,
        raw_value,
    }
}

/// A registry event on the canonical Stacks chain, decoded, with where it was printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalEvent {
    pub event: RegistryEvent,
    pub txid: StacksTxid,
    pub block_hash: StacksBlockHash,
    pub block_height: u64,
}

/// What became of a withdrawal request on the canonical chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WithdrawalOutcome {
    Accepted(CanonicalEvent),
    Rejected(CanonicalEvent),
}

fn decode(stored: StoredRegistryEvent) -> storage::Result<CanonicalEvent> {
    let e = &stored.event;
    let event = Value::deserialize(&e.raw_value)
        .map_err(|why| why.to_string())
        .and_then(|v| RegistryEvent::from_value(&v).map_err(|why| why.to_string()))
        .map_err(|why| {
            storage::Error::new(
                storage::ErrorKind::Query,
                "read registry event",
                format!(
                    "stored event {}:{} of Stacks block {} does not read back: {why}; was the row \
                     edited by hand?",
                    e.txid, e.event_index, e.block_hash
                ),
            )
        })?;
    Ok(CanonicalEvent {
        event,
        txid: e.txid,
        block_hash: e.block_hash,
        block_height: stored.block_height,
    })
}

fn decode_all(stored: Vec<StoredRegistryEvent>) -> storage::Result<Vec<CanonicalEvent>> {
    stored.into_iter().map(decode).collect()
}

/// The completed-deposit event for `outpoint` on the canonical chain (the first, if the
/// contract ever printed two).
pub async fn completed_deposit_event(
    store: &dyn DbRead,
    outpoint: &bitcoin::OutPoint,
) -> storage::Result<Option<CanonicalEvent>> {
    Ok(decode_all(store.get_deposit_events(outpoint).await?)?
        .into_iter()
        .next())
}

/// The withdrawal-create event of request `request_id` on the canonical chain.
pub async fn withdrawal_create_event(
    store: &dyn DbRead,
    request_id: u64,
) -> storage::Result<Option<CanonicalEvent>> {
    Ok(decode_all(store.get_withdrawal_events(request_id).await?)?
        .into_iter()
        .find(|e| matches!(e.event, RegistryEvent::WithdrawalCreate { .. })))
}

/// Whether request `request_id` was accepted or rejected on the canonical chain (the first of
/// the two; the contract allows only one).
pub async fn withdrawal_outcome(
    store: &dyn DbRead,
    request_id: u64,
) -> storage::Result<Option<WithdrawalOutcome>> {
    Ok(decode_all(store.get_withdrawal_events(request_id).await?)?
        .into_iter()
        .find_map(|e| match e.event {
            RegistryEvent::WithdrawalAccept { .. } => Some(WithdrawalOutcome::Accepted(e)),
            RegistryEvent::WithdrawalReject { .. } => Some(WithdrawalOutcome::Rejected(e)),
            _ => None,
        }))
}

/// The newest key rotation on the canonical chain.
pub async fn latest_key_rotation(store: &dyn DbRead) -> storage::Result<Option<CanonicalEvent>> {
    store
        .get_latest_registry_event(RegistryTopic::KeyRotation)
        .await?
        .map(decode)
        .transpose()
}

/// Every registry event on the canonical chain in Stacks blocks at `height` or above, in chain
/// order.
pub async fn registry_events_since(
    store: &dyn DbRead,
    height: u64,
) -> storage::Result<Vec<CanonicalEvent>> {
    decode_all(store.get_registry_events_since(height).await?)
}

/// Withdrawal requests created on the canonical chain at Stacks height `height` or above and
/// neither accepted nor rejected on it: what the request decider considers, by request id.
pub async fn pending_withdrawals(
    store: &dyn DbRead,
    height: u64,
) -> storage::Result<Vec<CanonicalEvent>> {
    let events = registry_events_since(store, height).await?;
    // An accept or reject always follows its create in chain order, so it is in this range.
    let settled: HashSet<u64> = events
        .iter()
        .filter_map(|e| match e.event {
            RegistryEvent::WithdrawalAccept { request_id, .. }
            | RegistryEvent::WithdrawalReject { request_id, .. } => Some(request_id),
            _ => None,
        })
        .collect();
    let mut pending: Vec<CanonicalEvent> = events
        .into_iter()
        .filter(|e| match e.event {
            RegistryEvent::WithdrawalCreate { request_id, .. } => !settled.contains(&request_id),
            _ => false,
        })
        .collect();
    pending.sort_by_key(|e| match e.event {
        RegistryEvent::WithdrawalCreate { request_id, .. } => request_id,
        _ => 0,
    });
    Ok(pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REGISTRY: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc-registry";

    fn reject(id: u64) -> String {
        RegistryEvent::WithdrawalReject {
            request_id: id,
            signer_bitmap: 3,
        }
        .to_value()
        .to_hex()
    }

    fn event(n: u32, committed: bool, contract: &str, topic: &str, raw: &str) -> serde_json::Value {
        json!({"txid": format!("0x{}", "ab".repeat(32)), "event_index": n, "committed": committed,
               "type": "contract_event",
               "contract_event": {"contract_identifier": contract, "topic": topic, "raw_value": raw}})
    }

    fn body(events: Vec<serde_json::Value>) -> Vec<u8> {
        json!({
            "block_hash": format!("0x{}", "11".repeat(32)),
            "block_height": 227,
            "index_block_hash": format!("0x{}", "22".repeat(32)),
            "parent_index_block_hash": format!("0x{}", "33".repeat(32)),
            "parent_block_hash": format!("0x{}", "44".repeat(32)),
            "burn_block_hash": format!("0x00000000000000000001{}", "55".repeat(22)),
            "burn_block_height": 136,
            "burn_block_time": 1725050720,
            "events": events,
            "transactions": [],
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn only_committed_registry_prints_that_read_are_kept() {
        let update = Value::tuple([(
            "topic",
            Value::StringAscii("update-protocol-contract".into()),
        )])
        .to_hex();
        let b = parse_new_block(
            &body(vec![
                event(0, true, REGISTRY, "print", &reject(1)),
                event(1, false, REGISTRY, "print", &reject(2)),
                event(
                    2,
                    true,
                    "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM.sbtc-token",
                    "print",
                    &reject(3),
                ),
                event(3, true, REGISTRY, "other", &reject(4)),
                event(4, true, REGISTRY, "print", &update),
                event(5, true, REGISTRY, "print", "0x0c00"),
                event(6, true, REGISTRY, "print", &reject(7)),
            ]),
            REGISTRY,
        )
        .unwrap();
        assert_eq!(b.block.hash, StacksBlockHash([0x22; 32]));
        assert_eq!(b.block.parent_hash, StacksBlockHash([0x33; 32]));
        assert_eq!((b.block.height, b.block.bitcoin_anchor_height), (227, 136));
        assert!(b
            .block
            .bitcoin_anchor
            .to_string()
            .starts_with("00000000000000000001"));
        let ids: Vec<_> = b
            .events
            .iter()
            .map(|e| (e.request_id, e.position))
            .collect();
        assert_eq!(ids, vec![(Some(1), 0), (Some(7), 6)]);
        assert_eq!(b.unreadable.len(), 1, "{:?}", b.unreadable);
        assert!(b.unreadable[0].contains("event 5"), "{:?}", b.unreadable);
    }

    #[test]
    fn unusable_bodies_say_what_is_wrong() {
        let err = parse_new_block(b"{\"block_height\": 1}", REGISTRY).unwrap_err();
        assert!(err.to_string().contains("index_block_hash"), "{err}");
        let mut v: serde_json::Value = serde_json::from_slice(&body(vec![])).unwrap();
        v["index_block_hash"] = json!("0x1234");
        let err = parse_new_block(v.to_string().as_bytes(), REGISTRY).unwrap_err();
        assert!(err.to_string().contains("not 32 bytes"), "{err}");
        assert!(parse_new_block(b"not json", REGISTRY).is_err());
    }
}
