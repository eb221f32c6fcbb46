//! The Stacks event observer end to end: stacks-node-shaped `POST /new_block` bodies sent over
//! HTTP to the signer's running API (127.0.0.1), then read back through the canonical-chain
//! queries the request decider uses. Unusable bodies get 200 and store nothing, oversized ones
//! 413, a failing store 500 (so the node retries), strangers 403; forks and Bitcoin reorgs change
//! what the queries return.

mod chain_support;
mod storage_support;

use std::sync::Arc;

use bitcoin::hashes::Hash as _;
use bitcoin::{BlockHash, OutPoint, Txid};
use sbtc_hsm_signer::api::{self, ApiConfig, RunningApi};
use sbtc_hsm_signer::chain::stacks::{
    address::Principal,
    clarity::Value,
    events::{RegistryEvent, WithdrawalRecipient},
    observer::{self, WithdrawalOutcome},
    StacksConfig, StacksSettings,
};
use sbtc_hsm_signer::storage::{memory::MemoryStore, *};
use serde_json::{json, Value as Json};

const DEPLOYER: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";

fn settings(edit: impl FnOnce(&mut StacksConfig)) -> StacksSettings {
    let mut c = StacksConfig::new("http://127.0.0.1:20443", Some(DEPLOYER.into()));
    edit(&mut c);
    c.resolve(bitcoin::Network::Regtest).unwrap()
}

struct Api {
    running: RunningApi,
    _node: chain_support::TestNode,
}

async fn start(store: Arc<dyn Storage>, stacks: &StacksSettings) -> Api {
    let node = chain_support::ours().await;
    let running = api::start_with_observer(
        &ApiConfig::new("127.0.0.1:0".parse().unwrap()),
        node.rpc.clone(),
        bitcoin::Network::Regtest,
        store,
        None,
        Some(stacks),
    )
    .await
    .unwrap();
    Api {
        running,
        _node: node,
    }
}

async fn post(api: &Api, path: &str, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}{path}", api.running.server.local_addr()))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn h(n: u8) -> String {
    format!("0x{}", hex::encode([n; 32]))
}

fn burn_hash(n: u8) -> BlockHash {
    BlockHash::from_byte_array([n; 32])
}

fn sender() -> Principal {
    Principal::from_address(DEPLOYER).unwrap()
}

fn create(id: u64) -> RegistryEvent {
    RegistryEvent::WithdrawalCreate {
        request_id: id,
        amount: 50_000,
        sender: sender(),
        recipient: WithdrawalRecipient {
            version: 4,
            hashbytes: vec![0x11; 20],
        },
        block_height: 130,
        max_fee: 3_000,
    }
}

fn accept(id: u64) -> RegistryEvent {
    RegistryEvent::WithdrawalAccept {
        request_id: id,
        bitcoin_txid: Txid::from_byte_array([0x77; 32]),
        signer_bitmap: 0b111,
        output_index: 2,
        fee: 900,
        burn_hash: burn_hash(0xb3),
        burn_height: 135,
        sweep_txid: Txid::from_byte_array([0x77; 32]),
    }
}

fn reject(id: u64) -> RegistryEvent {
    RegistryEvent::WithdrawalReject {
        request_id: id,
        signer_bitmap: 0b11,
    }
}

fn completed(outpoint: OutPoint) -> RegistryEvent {
    RegistryEvent::CompletedDeposit {
        outpoint,
        amount: 99_000,
        burn_hash: burn_hash(0xb3),
        burn_height: 135,
        sweep_txid: Txid::from_byte_array([0x78; 32]),
    }
}

/// A stacks-node event of `contract`'s print, as the node sends it.
fn print_event(txid: u8, index: u32, contract: &str, value: &Value) -> Json {
    json!({
        "txid": h(txid),
        "event_index": index,
        "committed": true,
        "type": "contract_event",
        "contract_event": {
            "contract_identifier": contract,
            "topic": "print",
            "value": {"Tuple": {"data_map": {}}},
            "raw_value": value.to_hex(),
        }
    })
}

fn registry_print(txid: u8, index: u32, event: &RegistryEvent) -> Json {
    print_event(
        txid,
        index,
        &format!("{DEPLOYER}.sbtc-registry"),
        &event.to_value(),
    )
}

/// A `/new_block` body as a stacks-node posts it: block `id` (its index block hash), child of
/// `parent`, anchored to Bitcoin block `burn` at `burn_height`.
fn new_block(
    id: u8,
    parent: u8,
    height: u64,
    burn: u8,
    burn_height: u64,
    events: Vec<Json>,
) -> Vec<u8> {
    json!({
        "block_hash": h(id.wrapping_add(100)),
        "block_height": height,
        "burn_block_time": 1725050720,
        "burn_block_hash": format!("0x{}", burn_hash(burn)),
        "burn_block_height": burn_height,
        "index_block_hash": h(id),
        "parent_block_hash": h(parent.wrapping_add(100)),
        "parent_index_block_hash": h(parent),
        "parent_burn_block_hash": format!("0x{}", burn_hash(burn)),
        "parent_burn_block_height": burn_height,
        "parent_burn_block_timestamp": 1725050720,
        "parent_microblock": h(0),
        "parent_microblock_sequence": 0,
        "miner_txid": h(0xee),
        "events": events,
        "transactions": [{
            "txid": h(0xa1), "tx_index": 0, "status": "success", "raw_result": "0x0703",
            "raw_tx": "0x00", "contract_abi": null, "execution_cost": {}, "microblock_sequence": null,
            "microblock_hash": null, "microblock_parent_hash": null, "burnchain_op": null
        }],
        "matured_miner_rewards": [],
        "anchored_cost": {"read_count": 28, "read_length": 42790, "runtime": 80123, "write_count": 3, "write_length": 139},
        "confirmed_microblocks_cost": {"read_count": 0, "read_length": 0, "runtime": 0, "write_count": 0, "write_length": 0},
        "pox_v1_unlock_height": 104,
        "pox_v2_unlock_height": 106,
        "pox_v3_unlock_height": 109,
        "signer_bitvec": "000800000001ff",
        "signer_signature": [],
        "cycle_number": null,
        "reward_set": null
    })
    .to_string()
    .into_bytes()
}

/// Bitcoin: a(1) <- b3(2), and a(1) <- b4(2) on the other branch.
async fn bitcoin_chain(store: &dyn Storage) {
    for (hash, height, parent) in [(0xa1, 1, 0xa0), (0xb3, 2, 0xa1), (0xb4, 2, 0xa1)] {
        store
            .write_bitcoin_block(&BitcoinBlock {
                hash: burn_hash(hash),
                height,
                parent_hash: burn_hash(parent),
            })
            .await
            .unwrap();
    }
    store
        .set_bitcoin_canonical_tip(&burn_hash(0xb3))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_posted_block_stores_its_registry_events_and_nothing_else() {
    let store = Arc::new(MemoryStore::new());
    bitcoin_chain(store.as_ref()).await;
    let api = start(store.clone(), &settings(|_| {})).await;
    let deposit = OutPoint::new(Txid::from_byte_array([0x42; 32]), 1);
    let body = new_block(
        1,
        0,
        10,
        0xb3,
        2,
        vec![
            registry_print(0xa1, 0, &create(5)),
            // Another contract printing the same tuple, and an uncommitted registry print.
            print_event(
                0xa2,
                0,
                &format!("{DEPLOYER}.not-the-registry"),
                &create(6).to_value(),
            ),
            {
                let mut e = registry_print(0xa3, 0, &create(7));
                e["committed"] = json!(false);
                e
            },
            json!({"txid": h(0xa4), "event_index": 0, "committed": true, "type": "stx_transfer_event",
                   "stx_transfer_event": {"sender": DEPLOYER, "recipient": DEPLOYER, "amount": "1"}}),
            registry_print(0xa5, 1, &completed(deposit)),
        ],
    );
    assert_eq!(post(&api, "/new_block", body.clone()).await, 200);
    // A repeat delivery is answered the same and stores nothing twice.
    assert_eq!(post(&api, "/new_block", body).await, 200);

    let tip = store.get_stacks_canonical_tip().await.unwrap().unwrap();
    assert_eq!(tip.hash, StacksBlockHash([1; 32]));
    assert_eq!(tip.parent_hash, StacksBlockHash([0; 32]));
    assert_eq!((tip.height, tip.bitcoin_anchor_height), (10, 2));
    assert_eq!(tip.bitcoin_anchor, burn_hash(0xb3));

    let w = observer::withdrawal_create_event(store.as_ref(), 5)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.event, create(5));
    assert_eq!((w.txid, w.block_height), (StacksTxid([0xa1; 32]), 10));
    for other in [6, 7] {
        assert_eq!(
            observer::withdrawal_create_event(store.as_ref(), other)
                .await
                .unwrap(),
            None,
            "request {other} was not a committed registry print"
        );
    }
    let d = observer::completed_deposit_event(store.as_ref(), &deposit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.event, completed(deposit));
    let all = observer::registry_events_since(store.as_ref(), 0)
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");

    // The other observer paths are answered and ignored.
    for path in api::new_block::IGNORED_PATHS {
        assert_eq!(post(&api, path, b"{}".to_vec()).await, 200, "{path}");
    }
    api.running.shutdown().await;
}

#[tokio::test]
async fn unusable_bodies_get_200_and_oversized_ones_413_and_nothing_is_stored() {
    let store = Arc::new(MemoryStore::new());
    bitcoin_chain(store.as_ref()).await;
    let api = start(
        store.clone(),
        &settings(|c| c.new_block_max_body_bytes = 4096),
    )
    .await;
    for body in [
        b"not json at all".to_vec(),
        b"{\"block_height\": 3}".to_vec(),
        {
            let mut v: Json =
                serde_json::from_slice(&new_block(1, 0, 10, 0xb3, 2, vec![])).unwrap();
            v["burn_block_hash"] = json!("0xnothex");
            v.to_string().into_bytes()
        },
    ] {
        assert_eq!(post(&api, "/new_block", body).await, 200);
    }
    let big = new_block(
        2,
        0,
        10,
        0xb3,
        2,
        (0..40)
            .map(|i| registry_print(i, 0, &create(u64::from(i))))
            .collect(),
    );
    assert!(big.len() > 4096);
    assert_eq!(post(&api, "/new_block", big).await, 413);
    assert_eq!(store.get_stacks_canonical_tip().await.unwrap(), None);
    assert!(store.get_registry_events_since(0).await.unwrap().is_empty());
    api.running.shutdown().await;
}

#[tokio::test]
async fn only_the_configured_node_may_post_events() {
    let store = Arc::new(MemoryStore::new());
    bitcoin_chain(store.as_ref()).await;
    let api = start(
        store.clone(),
        &settings(|c| c.event_observer_allow = vec!["10.1.2.3".parse().unwrap()]),
    )
    .await;
    let body = new_block(1, 0, 10, 0xb3, 2, vec![registry_print(0xa1, 0, &create(5))]);
    assert_eq!(post(&api, "/new_block", body).await, 403);
    assert_eq!(post(&api, "/new_burn_block", b"{}".to_vec()).await, 403);
    assert_eq!(store.get_stacks_canonical_tip().await.unwrap(), None);
    api.running.shutdown().await;
}

#[tokio::test]
async fn forks_and_bitcoin_reorgs_change_what_is_final() {
    let store = Arc::new(MemoryStore::new());
    bitcoin_chain(store.as_ref()).await;
    let api = start(store.clone(), &settings(|_| {})).await;
    let pending = |s: Arc<MemoryStore>| async move {
        observer::pending_withdrawals(s.as_ref(), 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| match e.event {
                RegistryEvent::WithdrawalCreate { request_id, .. } => request_id,
                _ => unreachable!(),
            })
            .collect::<Vec<_>>()
    };
    // s1 <- s2 (accepts 5) and s1 <- s3 (rejects 5) at the same height; s2's id is lower.
    let blocks = [
        new_block(
            1,
            0,
            10,
            0xb3,
            2,
            vec![
                registry_print(0xa1, 0, &create(5)),
                registry_print(0xa1, 1, &create(6)),
            ],
        ),
        new_block(2, 1, 11, 0xb3, 2, vec![registry_print(0xa2, 0, &accept(5))]),
        new_block(3, 1, 11, 0xb3, 2, vec![registry_print(0xa3, 0, &reject(5))]),
    ];
    for b in blocks {
        assert_eq!(post(&api, "/new_block", b).await, 200);
    }
    assert!(matches!(
        observer::withdrawal_outcome(store.as_ref(), 5)
            .await
            .unwrap(),
        Some(WithdrawalOutcome::Accepted(_))
    ));
    assert_eq!(pending(store.clone()).await, vec![6]);

    // s3's branch grows: the accept is off the chain, the reject is final.
    assert_eq!(
        post(&api, "/new_block", new_block(4, 3, 12, 0xb3, 2, vec![])).await,
        200
    );
    match observer::withdrawal_outcome(store.as_ref(), 5)
        .await
        .unwrap()
    {
        Some(WithdrawalOutcome::Rejected(e)) => {
            assert_eq!(e.event, reject(5));
            assert_eq!(e.block_hash, StacksBlockHash([3; 32]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pending(store.clone()).await, vec![6]);

    // Bitcoin reorgs from b3 to b4: every Stacks block anchored to b3 is gone with its events,
    // until the node posts the blocks of the new anchor.
    store
        .set_bitcoin_canonical_tip(&burn_hash(0xb4))
        .await
        .unwrap();
    assert_eq!(store.get_stacks_canonical_tip().await.unwrap(), None);
    assert_eq!(
        observer::withdrawal_create_event(store.as_ref(), 5)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        post(
            &api,
            "/new_block",
            new_block(5, 0, 10, 0xb4, 2, vec![registry_print(0xa5, 0, &create(5))])
        )
        .await,
        200
    );
    assert_eq!(
        observer::withdrawal_outcome(store.as_ref(), 5)
            .await
            .unwrap(),
        None
    );
    assert_eq!(pending(store.clone()).await, vec![5]);
    api.running.shutdown().await;
}

/// PostgreSQL (when SBTC_TEST_PG_URL is set): a store that fails gets 500, so the node delivers
/// the block again; once the store works, the same delivery is stored.
#[tokio::test]
async fn a_failing_store_gets_500_so_the_node_retries() {
    let Some(db) =
        storage_support::TestDb::create("a_failing_store_gets_500_so_the_node_retries").await
    else {
        return;
    };
    let store: Arc<dyn Storage> = Arc::new(db.store().await);
    bitcoin_chain(store.as_ref()).await;
    let api = start(store.clone(), &settings(|_| {})).await;
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE sbtc_signer.stacks_registry_events RENAME TO stacks_registry_events_away",
        )
        .await
        .unwrap();
    let body = new_block(1, 0, 10, 0xb3, 2, vec![registry_print(0xa1, 0, &create(5))]);
    assert_eq!(post(&api, "/new_block", body.clone()).await, 500);
    assert_eq!(
        store
            .get_stacks_block(&StacksBlockHash([1; 32]))
            .await
            .unwrap(),
        None,
        "the block and its events are written together or not at all"
    );
    client
        .batch_execute(
            "ALTER TABLE sbtc_signer.stacks_registry_events_away RENAME TO stacks_registry_events",
        )
        .await
        .unwrap();
    assert_eq!(post(&api, "/new_block", body).await, 200);
    assert_eq!(
        observer::withdrawal_create_event(store.as_ref(), 5)
            .await
            .unwrap()
            .unwrap()
            .event,
        create(5)
    );
    api.running.shutdown().await;
}
