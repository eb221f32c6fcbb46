//! The bitcoind client suite: every call of `BitcoinClient` (CHAIN.md section 5) through the
//! signer's own JSON-RPC client, against the devnet's regtest node and, when BITCOIND_EXE points
//! at one, a real `bitcoind -regtest`. Both must answer alike: that is what lets the devnet stand
//! in for bitcoind.

mod chain_support;

use std::time::Duration;

use bitcoin::{Amount, FeeRate, Network, OutPoint, TxOut};
use chain_support::*;
use sbtc_hsm_signer::chain::bitcoin::{
    client::{BitcoinClient, ErrorKind, RPC_VERIFY_ERROR, RPC_VERIFY_REJECTED},
    rpc::{check_network, BitcoindRpc, RpcAuth},
};

#[tokio::test]
async fn tip_headers_and_blocks() {
    for node in all_nodes().await {
        let n = node.name;
        let c = &node.rpc;
        let to = c.get_new_address().await.unwrap();
        let hashes = c.generate_to_address(20, &to).await.unwrap();
        assert_eq!(c.get_best_block_hash().await.unwrap(), hashes[19], "{n}");
        let header = c.get_block_header(&hashes[19]).await.unwrap().unwrap();
        assert_eq!(header.height, 20, "{n}");
        assert_eq!(header.previous, Some(hashes[18]), "{n}");
        assert_eq!(header.confirmations, 1, "{n}");
        let block = c.get_block(&hashes[17]).await.unwrap().unwrap();
        assert_eq!(block.block_hash(), hashes[17], "{n}");
        // Heights 1-16 are pushed as OP_1..OP_16, which rust-bitcoin does not read as BIP-34.
        assert_eq!(block.bip34_block_height().unwrap(), 18, "{n}");
        assert!(
            block.check_merkle_root() && block.check_witness_commitment(),
            "{n}"
        );
        assert_eq!(c.get_block_hash(18).await.unwrap(), Some(hashes[17]), "{n}");
        assert_eq!(
            c.get_block_hash(21).await.unwrap(),
            None,
            "{n}: above the tip"
        );
        let unknown = "00".repeat(32).parse().unwrap();
        assert_eq!(c.get_block_header(&unknown).await.unwrap(), None, "{n}");
        assert_eq!(c.get_block(&unknown).await.unwrap(), None, "{n}");
        let info = c.get_blockchain_info().await.unwrap();
        assert_eq!((info.network, info.blocks), (Network::Regtest, 20), "{n}");
        assert_eq!(info.best_block_hash, hashes[19], "{n}");
    }
}

#[tokio::test]
async fn transactions_outputs_and_the_mempool() {
    for node in all_nodes().await {
        let n = node.name;
        let c = &node.rpc;
        mature_wallet(&node).await;
        let key = TestKey::new(7);
        let txid = c
            .send_to_address(&key.address, Amount::from_sat(100_000))
            .await
            .unwrap();
        // In the mempool: found without a block hash, an output only with include_mempool.
        let info = c.get_raw_transaction(&txid, None).await.unwrap().unwrap();
        assert_eq!((info.block_hash, info.confirmations), (None, 0), "{n}");
        let vout = info
            .tx
            .output
            .iter()
            .position(|o| o.script_pubkey == key.script())
            .unwrap() as u32;
        let op = OutPoint { txid, vout };
        let out = c.get_tx_out(&op, true).await.unwrap().unwrap();
        assert_eq!(
            (out.confirmations, out.value),
            (0, Amount::from_sat(100_000)),
            "{n}"
        );
        assert!(!out.coinbase, "{n}");
        assert_eq!(c.get_tx_out(&op, false).await.unwrap(), None, "{n}");
        let entry = c.get_mempool_entry(&txid).await.unwrap().unwrap();
        assert!(
            entry.vsize > 100 && entry.fee > Amount::ZERO,
            "{n}: {entry:?}"
        );
        assert!(
            c.get_mempool_descendants(&txid).await.unwrap().is_empty(),
            "{n}"
        );
        let spent = info.tx.input[0].previous_output;
        assert_eq!(
            c.get_tx_spending_prevout(&spent).await.unwrap(),
            Some(txid),
            "{n}"
        );

        // Mined: no txindex, so only with its block hash.
        let miner = c.get_new_address().await.unwrap();
        let block = c.generate_to_address(1, &miner).await.unwrap()[0];
        assert_eq!(
            c.get_raw_transaction(&txid, None).await.unwrap(),
            None,
            "{n}"
        );
        let mined = c
            .get_raw_transaction(&txid, Some(&block))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (mined.block_hash, mined.confirmations),
            (Some(block), 1),
            "{n}"
        );
        let out = c.get_tx_out(&op, false).await.unwrap().unwrap();
        assert_eq!((out.confirmations, out.best_block), (1, block), "{n}");
        assert_eq!(c.get_mempool_entry(&txid).await.unwrap(), None, "{n}");
        assert_eq!(
            c.get_tx_spending_prevout(&spent).await.unwrap(),
            None,
            "{n}"
        );
    }
}

#[tokio::test]
async fn broadcasts_and_refusals_carry_bitcoinds_codes() {
    for node in all_nodes().await {
        let n = node.name;
        let c = &node.rpc;
        mature_wallet(&node).await;
        let key = TestKey::new(9);
        let (op, spent) = fund(&node, &key, Amount::from_sat(50_000)).await;
        let pay = |sats| {
            vec![TxOut {
                value: Amount::from_sat(sats),
                script_pubkey: key.script(),
            }]
        };

        // A signature that does not verify: the script verifier refuses it.
        let forged = spend(&key, op, &spent, pay(49_000), true);
        let verdict = c
            .test_mempool_accept(std::slice::from_ref(&forged))
            .await
            .unwrap();
        assert!(!verdict[0].allowed, "{n}");
        let reason = verdict[0].reject_reason.clone().unwrap();
        assert!(
            reason.contains("mandatory-script-verify-flag-failed"),
            "{n}: {reason}"
        );
        let err = c.send_raw_transaction(&forged).await.unwrap_err();
        assert_eq!(err.rpc_code(), Some(RPC_VERIFY_REJECTED), "{n}: {err}");

        // Paying more than it spends.
        let inflating = spend(&key, op, &spent, pay(60_000), false);
        let err = c.send_raw_transaction(&inflating).await.unwrap_err();
        assert!(
            err.to_string().contains("bad-txns-in-belowout"),
            "{n}: {err}"
        );

        // Below the min relay fee (1 sat/vB; a key-path spend is ~111 vB).
        let cheap = spend(&key, op, &spent, pay(49_950), false);
        let err = c.send_raw_transaction(&cheap).await.unwrap_err();
        assert!(
            err.to_string().contains("min relay fee not met"),
            "{n}: {err}"
        );

        // A good one, then a conflicting one paying too little to replace it.
        let good = spend(&key, op, &spent, pay(49_000), false);
        let verdict = c
            .test_mempool_accept(std::slice::from_ref(&good))
            .await
            .unwrap();
        assert!(verdict[0].allowed, "{n}: {verdict:?}");
        assert_eq!(verdict[0].fee, Some(Amount::from_sat(1_000)), "{n}");
        assert_eq!(
            c.send_raw_transaction(&good).await.unwrap(),
            good.compute_txid(),
            "{n}"
        );
        let weak = spend(&key, op, &spent, pay(48_990), false);
        let err = c.send_raw_transaction(&weak).await.unwrap_err();
        assert!(err.to_string().contains("insufficient fee"), "{n}: {err}");
        // Enough to replace (BIP-125: old fee + incremental rate x new vsize).
        let bump = spend(&key, op, &spent, pay(48_500), false);
        c.send_raw_transaction(&bump).await.unwrap();
        assert!(
            c.get_mempool_entry(&good.compute_txid())
                .await
                .unwrap()
                .is_none(),
            "{n}"
        );

        // Spending what does not exist.
        let missing = OutPoint {
            txid: bump.compute_txid(),
            vout: 7,
        };
        let ghost = spend(&key, missing, &spent, pay(1_000), false);
        let err = c.send_raw_transaction(&ghost).await.unwrap_err();
        assert_eq!(err.rpc_code(), Some(RPC_VERIFY_ERROR), "{n}: {err}");
        assert!(
            err.to_string().contains("bad-txns-inputs-missingorspent"),
            "{n}: {err}"
        );
    }
}

#[tokio::test]
async fn reorgs_through_invalidate_and_reconsider() {
    for node in all_nodes().await {
        let n = node.name;
        let c = &node.rpc;
        let to = c.get_new_address().await.unwrap();
        let a = c.generate_to_address(5, &to).await.unwrap();
        c.invalidate_block(&a[2]).await.unwrap();
        assert_eq!(c.get_best_block_hash().await.unwrap(), a[1], "{n}");
        let stale = c.get_block_header(&a[4]).await.unwrap().unwrap();
        assert_eq!(stale.confirmations, -1, "{n}: off the best chain");
        let b = c.generate_to_address(4, &to).await.unwrap();
        assert_eq!(
            c.get_block_header(&b[3]).await.unwrap().unwrap().height,
            6,
            "{n}"
        );
        c.reconsider_block(&a[2]).await.unwrap();
        // b is longer (6 > 5): it stays the best chain.
        assert_eq!(c.get_best_block_hash().await.unwrap(), b[3], "{n}");
        assert_eq!(c.get_block_hash(3).await.unwrap(), Some(b[0]), "{n}");
    }
}

#[tokio::test]
async fn network_fees_and_wrong_credentials() {
    for node in all_nodes().await {
        let n = node.name;
        let c = &node.rpc;
        let info = check_network(c.as_ref(), Network::Regtest).await.unwrap();
        assert_eq!(info.network, Network::Regtest, "{n}");
        let err = check_network(c.as_ref(), Network::Bitcoin)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::WrongNetwork, "{n}");
        assert!(
            err.to_string().contains("the node is on regtest"),
            "{n}: {err}"
        );
        let net = c.get_network_info().await.unwrap();
        assert_eq!(net.relay_fee, FeeRate::from_sat_per_vb(1).unwrap(), "{n}");
        assert!(net.version >= 250000, "{n}: {net:?}");

        let wrong = BitcoindRpc::with_auth(
            c.url(),
            RpcAuth::UserPassword {
                user: "nobody".into(),
                password: zeroize::Zeroizing::new("wrong".into()),
            },
            Duration::from_secs(5),
            0,
        )
        .unwrap();
        let err = wrong.get_best_block_hash().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unauthorized, "{n}: {err}");
        assert!(err.to_string().contains("rpc_password_file"), "{n}: {err}");

        let err = c.call_value("nosuchmethod", vec![]).await.unwrap_err();
        assert_eq!(err.rpc_code(), Some(-32601), "{n}: {err}");
    }
}

#[tokio::test]
async fn fee_estimates_follow_the_devnet_rate() {
    let node = ours().await;
    node.ours
        .as_ref()
        .unwrap()
        .set_fee_rate(Some(FeeRate::from_sat_per_vb(7).unwrap()));
    let rate = node.rpc.estimate_smart_fee(6).await.unwrap();
    assert_eq!(rate, Some(FeeRate::from_sat_per_vb(7).unwrap()));
    if let Some(real) = bitcoind().await {
        // A fresh regtest bitcoind has seen no fees: no estimate, not an error.
        assert_eq!(real.rpc.estimate_smart_fee(6).await.unwrap(), None);
    }
}
