//! Every kind of Stacks transaction the signers emit, signed in custody by a signer set of a
//! keystore, a SoftHSM2 token and a YubiHSM2 (MockHsm), and checked by `@stacks/transactions` 7
//! (installed by the test command's `npm ci`): the library decodes each with our txid, its
//! `verifyOrigin` accepts the signatures, every signature recovers (over the presign sighash the
//! library computes itself) to a key of the set, and the library's own unsigned build from the
//! set's keys has the same bytes. The batch calls are built by the library a second time from
//! plain fields (`Cl.list` of `Cl.tuple`), which must give our argument bytes.

mod common;
mod npm_support;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::PublicKey;
use bitcoin::{BlockHash, OutPoint, Txid};
use sbtc_hsm_signer::chain::stacks::{
    address::{Principal, StacksNetwork},
    contracts::{
        batch_calls, AcceptWithdrawal, CompleteDeposit, RejectWithdrawal, RotateKeys, SignerCall,
        WithdrawalOutcome, SBTC_REGISTRY,
    },
    events::to_clarity_bytes,
    multisig::{self, SignerAccount},
    transaction::{Payload, SmartContract, SpendingCondition, StacksTransaction},
};
use sbtc_hsm_signer::keys::{KeyLabels, Keys};

const DEPLOYER: &str = "SN3R84XZYA63QS28932XQF3G1J8R9PC3W76P9CSQS";

fn calls(set: &[PublicKey]) -> Vec<SignerCall> {
    let recipient = Principal::from_address("ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG").unwrap();
    vec![
        SignerCall::CompleteDeposit(CompleteDeposit {
            outpoint: OutPoint::new(Txid::from_byte_array([0x11; 32]), 1),
            amount: 99_000,
            recipient,
            burn_hash: BlockHash::from_byte_array([0x22; 32]),
            burn_height: 812,
            sweep_txid: Txid::from_byte_array([0x33; 32]),
        }),
        SignerCall::AcceptWithdrawal(AcceptWithdrawal {
            request_id: 7,
            bitcoin_txid: Txid::from_byte_array([0x33; 32]),
            signer_bitmap: 0b001,
            output_index: 2,
            fee: 1_200,
            burn_hash: BlockHash::from_byte_array([0x22; 32]),
            burn_height: 812,
            sweep_txid: Txid::from_byte_array([0x33; 32]),
        }),
        SignerCall::RejectWithdrawal(RejectWithdrawal {
            request_id: 8,
            signer_bitmap: 0b110,
        }),
        SignerCall::RotateKeys(RotateKeys::new(set.to_vec(), set[0], 2)),
    ]
    .into_iter()
    .chain(batches())
    .collect()
}

/// A batch of three deposits (one to a contract) and one of an accept and a reject, as
/// `batch_calls` makes them.
fn batches() -> Vec<SignerCall> {
    let to = |a: &str| Principal::from_address(a).unwrap();
    let deposit = |t: u8, vout: u32, amount: u64, recipient: Principal| CompleteDeposit {
        outpoint: OutPoint::new(Txid::from_byte_array([t; 32]), vout),
        amount,
        recipient,
        burn_hash: BlockHash::from_byte_array([0x22; 32]),
        burn_height: 812,
        sweep_txid: Txid::from_byte_array([0x33; 32]),
    };
    let deposits = vec![
        deposit(
            0x12,
            0,
            50_000,
            to("ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG"),
        ),
        deposit(0x11, 3, 99_000, to(&format!("{DEPLOYER}.a-vault"))),
        deposit(
            0x11,
            1,
            1_000,
            to("ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG"),
        ),
    ];
    let outcomes = vec![
        WithdrawalOutcome::Reject(RejectWithdrawal {
            request_id: 9,
            signer_bitmap: u128::MAX - 1,
        }),
        WithdrawalOutcome::Accept(AcceptWithdrawal {
            request_id: 7,
            bitcoin_txid: Txid::from_byte_array([0x33; 32]),
            signer_bitmap: 0b001,
            output_index: 2,
            fee: 1_200,
            burn_hash: BlockHash::from_byte_array([0x22; 32]),
            burn_height: 812,
            sweep_txid: Txid::from_byte_array([0x33; 32]),
        }),
    ];
    let calls = batch_calls(deposits, outcomes);
    assert!(
        matches!(
            calls.as_slice(),
            [
                SignerCall::CompleteDeposits(_),
                SignerCall::CompleteWithdrawals(_)
            ]
        ),
        "{calls:?}"
    );
    calls
}

/// The plain fields `stacks_signed.mjs` builds a batch's argument from with the library.
fn build_spec(call: &SignerCall) -> Option<serde_json::Value> {
    let hex32 = |b: [u8; 32]| hex::encode(b);
    match call {
        SignerCall::CompleteDeposits(ds) => Some(serde_json::json!({
            "kind": "deposits",
            "entries": ds.iter().map(|d| serde_json::json!({
                "txid": hex32(to_clarity_bytes(&d.outpoint.txid)),
                "voutIndex": d.outpoint.vout,
                "amount": d.amount,
                "recipient": d.recipient.to_string(),
                "burnHash": hex32(to_clarity_bytes(&d.burn_hash)),
                "burnHeight": d.burn_height,
                "sweepTxid": hex32(to_clarity_bytes(&d.sweep_txid)),
            })).collect::<Vec<_>>(),
        })),
        SignerCall::CompleteWithdrawals(ws) => Some(serde_json::json!({
            "kind": "withdrawals",
            "entries": ws.iter().map(|w| match w {
                WithdrawalOutcome::Accept(a) => serde_json::json!({
                    "requestId": a.request_id,
                    "status": true,
                    "signerBitmap": a.signer_bitmap.to_string(),
                    "bitcoinTxid": hex32(to_clarity_bytes(&a.bitcoin_txid)),
                    "outputIndex": a.output_index,
                    "fee": a.fee,
                    "burnHash": hex32(to_clarity_bytes(&a.burn_hash)),
                    "burnHeight": a.burn_height,
                    "sweepTxid": hex32(to_clarity_bytes(&a.sweep_txid)),
                }),
                WithdrawalOutcome::Reject(r) => serde_json::json!({
                    "requestId": r.request_id,
                    "status": false,
                    "signerBitmap": r.signer_bitmap.to_string(),
                    "bitcoinTxid": null,
                    "outputIndex": null,
                    "fee": null,
                    "burnHash": hex32([0; 32]),
                    "burnHeight": 0,
                    "sweepTxid": null,
                }),
            }).collect::<Vec<_>>(),
        })),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keystore_a_softhsm2_and_a_mockhsm_signer_sign_every_call_the_library_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let custodies = common::mixed(dir.path(), 3).await;
    let labels = KeyLabels::default();
    let mut signers = Vec::new();
    for c in &custodies {
        let keys = Keys::new(c.clone(), &labels);
        let identity = keys.identity_key().await.unwrap();
        signers.push((keys, identity));
    }
    let set: Vec<PublicKey> = signers.iter().map(|(_, k)| *k).collect();
    let account = SignerAccount::new(set.clone(), 2).unwrap();
    let deployer = Principal::from_address(DEPLOYER).unwrap();

    let mut payloads: Vec<(Payload, Vec<String>, Option<serde_json::Value>)> = calls(&set)
        .iter()
        .map(|c| {
            let args = c.args().iter().map(|a| a.to_hex()).collect();
            (
                Payload::ContractCall(c.to_contract_call(&deployer)),
                args,
                build_spec(c),
            )
        })
        .collect();
    // A devnet whose deployer is the bootstrap signers' account deploys from it.
    payloads.push((
        Payload::SmartContract(SmartContract {
            name: SBTC_REGISTRY.into(),
            code_body: "(define-read-only (get-current-aggregate-pubkey) 0x00)".into(),
            clarity_version: Some(3),
        }),
        Vec::new(),
        None,
    ));

    let mut cases = Vec::new();
    let mut expected = Vec::new();
    for (i, (payload, args, build)) in payloads.into_iter().enumerate() {
        let tx = account.unsigned(StacksNetwork::Testnet, 30 + i as u64, 3_000, payload);
        // Each case is signed by another pair of backends, so each backend signs most of them.
        let pair = [i % 3, (i + 1) % 3];
        let mut sigs = Vec::new();
        for &s in &pair {
            let (keys, identity) = &signers[s];
            sigs.push(
                multisig::sign(keys, identity, &account, &tx, "stacks test")
                    .await
                    .unwrap_or_else(|e| panic!("signer {s}: {e}")),
            );
        }
        let signed = account.assemble(&tx, &sigs).unwrap();
        account.verify(&signed).unwrap();
        assert_eq!(
            StacksTransaction::deserialize(&signed.serialize()).unwrap(),
            signed
        );
        let mut case = serde_json::json!({
            "hex": hex::encode(signed.serialize()),
            "contractAddress": DEPLOYER,
            "args": args,
        });
        if let Some(build) = build {
            case["build"] = build;
        }
        cases.push(case);
        let mut who: Vec<String> = pair
            .iter()
            .map(|s| hex::encode(set[*s].serialize()))
            .collect();
        who.sort();
        expected.push((tx, signed, who, args));
    }
    // One more: the fee raised after signing, which the library must refuse.
    let (_, signed, _, _) = &expected[2];
    let mut raised = signed.clone();
    if let SpendingCondition::Multisig(m) = &mut raised.auth {
        m.fee += 1;
    }
    cases.push(serde_json::json!({
        "hex": hex::encode(raised.serialize()),
        "contractAddress": DEPLOYER,
        "args": calls(&set)[2].args().iter().map(|a| a.to_hex()).collect::<Vec<_>>(),
    }));

    let answers = npm_support::run(
        "stacks_signed.mjs",
        &serde_json::json!({
            "network": "testnet",
            "numSignatures": 2,
            "publicKeys": account.keys().iter().map(|k| hex::encode(k.serialize())).collect::<Vec<_>>(),
            "cases": cases,
        }),
    );
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), expected.len() + 1);
    let mut batches_built = 0;
    for ((tx, signed, who, args), a) in expected.iter().zip(answers) {
        let what = match &tx.payload {
            Payload::ContractCall(c) => c.function_name.clone(),
            Payload::SmartContract(_) => "deploy".into(),
        };
        assert_eq!(a["txid"], hex::encode(signed.txid()), "{what}: txid");
        assert_eq!(
            a["verified"], "ok",
            "{what}: the library refused the origin"
        );
        let mut recovered: Vec<String> = a["signers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        recovered.sort();
        assert_eq!(&recovered, who, "{what}: the keys that signed");
        assert_eq!(a["signer_hash_matches"], true, "{what}: signer hash");
        assert_eq!(
            a["unsigned_txid_of_library"],
            hex::encode(tx.txid()),
            "{what}: the library's unsigned build"
        );
        if let Some(theirs) = a["library_args"].as_array() {
            let theirs: Vec<String> = theirs
                .iter()
                .map(|h| format!("0x{}", h.as_str().unwrap().trim_start_matches("0x")))
                .collect();
            assert_eq!(&theirs, args, "{what}: the library's Cl.list of Cl.tuple");
            batches_built += 1;
        }
    }
    assert_eq!(
        batches_built, 2,
        "both batch calls were built by the library"
    );
    let last = answers.last().unwrap();
    assert_ne!(
        last["verified"], "ok",
        "a fee raised after signing was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_outside_the_set_and_a_signature_of_another_transaction_do_not_count() {
    let dir = tempfile::tempdir().unwrap();
    let custodies = [
        common::keystore(dir.path(), "a").await,
        common::keystore(dir.path(), "b").await,
        common::keystore(dir.path(), "c").await,
        common::keystore(dir.path(), "outsider").await,
    ];
    let labels = KeyLabels::default();
    let mut signers = Vec::new();
    for c in &custodies {
        let keys = Keys::new(c.clone(), &labels);
        let identity = keys.identity_key().await.unwrap();
        signers.push((keys, identity));
    }
    let set: Vec<PublicKey> = signers[..3].iter().map(|(_, k)| *k).collect();
    let account = SignerAccount::new(set.clone(), 2).unwrap();
    let deployer = Principal::from_address(DEPLOYER).unwrap();
    let call = calls(&set)[2].to_contract_call(&deployer);
    let tx = account.unsigned_call(StacksNetwork::Testnet, 5, 1_000, call.clone());
    let other = account.unsigned_call(StacksNetwork::Testnet, 6, 1_000, call);

    let (keys, id) = &signers[3];
    assert!(matches!(
        multisig::sign(keys, id, &account, &tx, "test").await,
        Err(multisig::SignError::NotASigner)
    ));
    let good = multisig::sign(&signers[0].0, &signers[0].1, &account, &tx, "test")
        .await
        .unwrap();
    let replayed = multisig::sign(&signers[1].0, &signers[1].1, &account, &other, "test")
        .await
        .unwrap();
    let err = account.assemble(&tx, &[good, replayed]).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 valid signatures of the 2 needed")
            && err
                .to_string()
                .contains("not in the signer set (or signed another digest)"),
        "{err}"
    );
}
