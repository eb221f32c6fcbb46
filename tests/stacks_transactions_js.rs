//! The signers' multisig contract calls against `@stacks/transactions` 7 (installed by the test
//! command's `npm ci`): the library builds the same unsigned transaction byte for byte, with the
//! same txid, and decodes ours as an order-independent multisig (SIP-027, hash mode 5).

mod npm_support;

use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use sbtc_hsm_signer::chain::stacks::{
    address::{Principal, StacksNetwork},
    clarity::Value,
    transaction::{
        multisig_signer_hash, ContractCall, MultisigCondition, StacksTransaction,
        HASH_MODE_P2SH_NON_SEQUENTIAL,
    },
};

fn secrets(n: u8) -> Vec<SecretKey> {
    (1..=n)
        .map(|i| SecretKey::from_slice(&[i; 32]).unwrap())
        .collect()
}

fn keys(n: u8) -> Vec<PublicKey> {
    let secp = Secp256k1::new();
    secrets(n)
        .iter()
        .map(|s| PublicKey::from_secret_key(&secp, s))
        .collect()
}

/// The first `m` of the set sign `digest` (v || r || s, low-S), as custody returns it.
fn signatures(n: u8, m: u16, digest: [u8; 32]) -> Vec<(PublicKey, [u8; 65])> {
    let secp = Secp256k1::new();
    secrets(n)
        .iter()
        .take(m as usize)
        .map(|s| {
            let sig = secp.sign_ecdsa_recoverable(&Message::from_digest(digest), s);
            (
                PublicKey::from_secret_key(&secp, s),
                sbtc_custody::RecoverableSignature::from_secp256k1(&sig).to_vrs(),
            )
        })
        .collect()
}

#[test]
fn the_library_builds_our_unsigned_multisig_calls_byte_for_byte() {
    let deployer = "SN3R84XZYA63QS28932XQF3G1J8R9PC3W76P9CSQS";
    let Principal::Standard { version, hash160 } = Principal::from_address(deployer).unwrap()
    else {
        unreachable!()
    };
    let recipient = Principal::Standard {
        version: 26,
        hash160: [9; 20],
    };
    let calls = [
        (
            "sbtc-deposit",
            "complete-deposit-wrapper",
            vec![
                Value::Buffer(vec![0x11; 32]),
                Value::UInt(0),
                Value::UInt(99_000),
                Value::Principal(recipient.clone()),
                Value::Buffer(vec![0x22; 32]),
                Value::UInt(812),
                Value::Buffer(vec![0x33; 32]),
            ],
            5,
            3,
        ),
        (
            "sbtc-withdrawal",
            "reject-withdrawal-request",
            vec![Value::UInt(17), Value::UInt(0b1011)],
            15,
            11,
        ),
    ];
    let mut ours = Vec::new();
    let mut cases = Vec::new();
    for (i, (contract, function, args, n, m)) in calls.iter().enumerate() {
        let set = keys(*n);
        let tx = StacksTransaction::multisig_call(
            StacksNetwork::Testnet,
            MultisigCondition {
                signer: multisig_signer_hash(&set, *m),
                nonce: 40 + i as u64,
                fee: 2_500,
                fields: Vec::new(),
                signatures_required: *m,
            },
            ContractCall {
                address_version: version,
                address_hash: hash160,
                contract_name: contract.to_string(),
                function_name: function.to_string(),
                args: args.clone(),
            },
        );
        let bytes = tx.serialize();
        assert_eq!(StacksTransaction::deserialize(&bytes).unwrap(), tx);
        // Signed by the first m of the set over the presign sighash; in the first case the
        // last signer signs the wrong digest, which the library must refuse.
        let mut digest = tx.presign_sighash();
        let mut sigs = signatures(*n, *m - 1, digest);
        if i == 0 {
            digest[0] ^= 1;
        }
        sigs.extend(signatures(*n, *m, digest).pop());
        let mut signed = tx.clone();
        signed
            .multisig_mut()
            .unwrap()
            .set_fields(&set, |k| sigs.iter().find(|(s, _)| s == k).map(|(_, v)| *v));
        assert_eq!(
            StacksTransaction::deserialize(&signed.serialize()).unwrap(),
            signed
        );
        cases.push(serde_json::json!({
            "network": "testnet",
            "contractAddress": deployer,
            "contractName": contract,
            "functionName": function,
            "args": args.iter().map(|a| hex::encode(a.serialize())).collect::<Vec<_>>(),
            "numSignatures": m,
            "publicKeys": set.iter().map(|k| hex::encode(k.serialize())).collect::<Vec<_>>(),
            "fee": 2_500,
            "nonce": 40 + i,
            "ours": hex::encode(&bytes),
            "signed": hex::encode(signed.serialize()),
        }));
        ours.push(tx);
    }

    let answers = npm_support::run("stacks_tx.mjs", &serde_json::json!({ "cases": cases }));
    let answers = answers.as_array().unwrap();
    for (tx, a) in ours.iter().zip(answers) {
        let f = &tx.contract_call().unwrap().function_name;
        assert_eq!(
            a["hex"],
            hex::encode(tx.serialize()),
            "{f}: the library's bytes"
        );
        assert_eq!(a["txid"], hex::encode(tx.txid()), "{f}: txid");
        assert_eq!(
            a["ours_txid"],
            hex::encode(tx.txid()),
            "{f}: txid of ours as decoded"
        );
        assert_eq!(a["ours_function"], f.as_str());
        assert_eq!(a["ours_nonce"], tx.auth.nonce().to_string());
        assert_eq!(a["ours_hash_mode"], HASH_MODE_P2SH_NON_SEQUENTIAL);
        if f == "complete-deposit-wrapper" {
            assert_ne!(
                a["verified"], "ok",
                "a signature over the wrong digest was accepted"
            );
        } else {
            assert_eq!(
                a["verified"], "ok",
                "{f}: the library refused our signatures"
            );
        }
        // And the library's bytes decode here to the same transaction.
        let theirs = hex::decode(a["hex"].as_str().unwrap()).unwrap();
        assert_eq!(&StacksTransaction::deserialize(&theirs).unwrap(), tx);
    }
}
