//! The block observer against a node behind the real RPC interface: the devnet's regtest node,
//! and a real bitcoind when BITCOIND_EXE is set. A deposit and a sweep are confirmed, removed by
//! a 3-block reorg, and confirmed again by a longer chain; the store keeps every fork and answers
//! relative to the canonical tip. Runs on the in-memory store and on PostgreSQL.

mod chain_support;
mod storage_support;

use std::sync::Arc;

use bitcoin::{hashes::Hash as _, Amount, OutPoint, Transaction, TxOut};
use chain_support::*;
use sbtc_custody::SealedBlob;
use sbtc_hsm_signer::{
    chain::bitcoin::{
        client::BitcoinClient,
        deposit,
        observer::{BlockObserver, ObserverParams},
    },
    chain::stacks::address::Principal,
    keys::AggregateKey,
    signing::DkgId,
    storage::{memory::MemoryStore, *},
};

/// The signers' key in these tests is a plain key the test holds, so it can sign sweeps.
async fn store_signers_key(store: &dyn Storage, key: &TestKey) -> AggregateKey {
    let aggregate_key = AggregateKey::new(key.keypair.public_key());
    store
        .write_dkg_shares(&DkgShares {
            aggregate_key,
            dkg_id: DkgId(1),
            signer_index: 0,
            sealed_private_shares: SealedBlob::from_bytes(vec![1, 2, 3]),
            public_shares: vec![0; 8],
            signer_set: vec![key.keypair.public_key()],
            threshold: 1,
            status: DkgSharesStatus::Verified,
            started_at_block_hash: bitcoin::BlockHash::all_zeros(),
            started_at_block_height: 0,
        })
        .await
        .unwrap();
    aggregate_key
}

/// A deposit of `amount` to the signers' key, funded by `funder`, announced to `store`.
async fn announce_deposit(
    node: &TestNode,
    store: &dyn Storage,
    funder: &TestKey,
    signers: &TestKey,
    amount: Amount,
) -> (OutPoint, Transaction) {
    let (op, spent) = fund(node, funder, amount + Amount::from_sat(2_000)).await;
    let recipient = Principal::Standard {
        version: 26,
        hash160: [7; 20],
    };
    let (signers_x, _) = signers.keypair.x_only_public_key();
    let (reclaim_x, _) = funder.keypair.x_only_public_key();
    let deposit_leaf = deposit::build_deposit_leaf(Amount::from_sat(1_000), &recipient, signers_x);
    let reclaim_leaf = deposit::build_reclaim_leaf(144, &deposit::standard_user_script(reclaim_x));
    let output = TxOut {
        value: amount,
        script_pubkey: deposit::deposit_output_script(&deposit_leaf, &reclaim_leaf),
    };
    let tx = spend(funder, op, &spent, vec![output], false);
    node.rpc.send_raw_transaction(&tx).await.unwrap();
    let outpoint = OutPoint {
        txid: tx.compute_txid(),
        vout: 0,
    };
    store
        .write_deposit_submission(&DepositSubmissionRecord {
            outpoint,
            deposit_script: deposit_leaf,
            reclaim_script: reclaim_leaf,
            transaction: tx.clone(),
            source: SubmissionSource::Wallet,
        })
        .await
        .unwrap();
    (outpoint, tx)
}

async fn reorg_removes_and_a_longer_chain_restores(node: &TestNode, store: Arc<dyn Storage>) {
    let n = node.name;
    let c = &node.rpc;
    let signers = TestKey::new(21);
    let funder = TestKey::new(22);
    store_signers_key(store.as_ref(), &signers).await;
    let observer = BlockObserver::new(
        node.rpc.clone(),
        store.clone(),
        ObserverParams::new(bitcoin::Network::Regtest),
    );
    mature_wallet(node).await;

    // A donation to the signers' key path makes the first peg UTXO.
    let (peg, peg_out) = fund(node, &signers, Amount::from_sat(500_000)).await;
    let first = observer.poll().await.unwrap().unwrap();
    assert_eq!(first.donations, 1, "{n}");

    // A deposit and a sweep of the peg UTXO, confirmed, then 2 more blocks.
    let (deposit_op, _) = announce_deposit(
        node,
        store.as_ref(),
        &funder,
        &signers,
        Amount::from_sat(80_000),
    )
    .await;
    let sweep = spend(
        &signers,
        peg,
        &peg_out,
        vec![TxOut {
            value: Amount::from_sat(498_000),
            script_pubkey: signers.script(),
        }],
        false,
    );
    c.send_raw_transaction(&sweep).await.unwrap();
    let miner = c.get_new_address().await.unwrap();
    let confirming = c.generate_to_address(3, &miner).await.unwrap();
    let change = observer.poll().await.unwrap().unwrap();
    assert_eq!(
        change.new_blocks.len(),
        4,
        "{n}: the funding block and 3 more"
    );
    assert_eq!((change.deposits, change.sweeps), (1, 1), "{n}: {change:?}");
    let tip = change.tip.hash;
    let pending = store.get_pending_deposit_requests(&tip, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|d| d.outpoint).collect::<Vec<_>>(),
        vec![deposit_op],
        "{n}"
    );
    assert_eq!(pending[0].amount, Amount::from_sat(80_000), "{n}");
    assert!(
        store
            .is_confirmed_on(&tip, &sweep.compute_txid())
            .await
            .unwrap(),
        "{n}"
    );

    // A 3-block reorg: the node drops the blocks that confirmed both, and mines 3 empty ones.
    c.invalidate_block(&confirming[0]).await.unwrap();
    c.generate_block(&miner, &[]).await.unwrap();
    c.generate_block(&miner, &[]).await.unwrap();
    let fork_tip = c.generate_block(&miner, &[]).await.unwrap();
    let change = observer.poll().await.unwrap().unwrap();
    assert_eq!(change.tip.hash, fork_tip, "{n}");
    assert_eq!(change.reorged_from, Some(tip), "{n}");
    assert_eq!(change.new_blocks.len(), 3, "{n}");
    assert!(
        store
            .get_pending_deposit_requests(&fork_tip, 10)
            .await
            .unwrap()
            .is_empty(),
        "{n}: the deposit is no longer confirmed"
    );
    assert!(
        !store
            .is_confirmed_on(&fork_tip, &sweep.compute_txid())
            .await
            .unwrap(),
        "{n}"
    );
    assert_eq!(
        store
            .get_bitcoin_canonical_tip()
            .await
            .unwrap()
            .unwrap()
            .hash,
        fork_tip,
        "{n}"
    );
    // Nothing was deleted: the old fork still answers relative to its own tip.
    assert!(
        store
            .is_confirmed_on(&tip, &sweep.compute_txid())
            .await
            .unwrap(),
        "{n}"
    );

    // The reorged transactions went back to the mempool; a longer chain confirms them again.
    let longer = c.generate_to_address(1, &miner).await.unwrap()[0];
    let change = observer.poll().await.unwrap().unwrap();
    assert_eq!(change.tip.hash, longer, "{n}");
    assert_eq!((change.deposits, change.sweeps), (1, 1), "{n}: {change:?}");
    assert_eq!(
        store
            .get_pending_deposit_requests(&longer, 10)
            .await
            .unwrap()
            .iter()
            .map(|d| d.outpoint)
            .collect::<Vec<_>>(),
        vec![deposit_op],
        "{n}"
    );
    assert!(
        store
            .is_confirmed_on(&longer, &sweep.compute_txid())
            .await
            .unwrap(),
        "{n}"
    );
    assert_eq!(
        observer.poll().await.unwrap(),
        None,
        "{n}: same tip, nothing new"
    );
}

#[tokio::test]
async fn memory_store_follows_a_reorg() {
    for node in all_nodes().await {
        reorg_removes_and_a_longer_chain_restores(&node, Arc::new(MemoryStore::new())).await;
    }
}

#[tokio::test]
async fn postgres_store_follows_a_reorg() {
    let Some(db) = storage_support::TestDb::create("observer_reorg").await else {
        return;
    };
    let node = ours().await;
    reorg_removes_and_a_longer_chain_restores(&node, Arc::new(db.store().await)).await;
}
