//! The devnet's Stacks node, driven as the signer and the `sbtc` library drive a stacks-node:
//! raw transactions and JSON over loopback HTTP, with the regtest node as its Bitcoin chain.
//! Test transactions are signed with plain secp256k1 keys (v || r || s over the presign
//! sighash), as custody would sign them.

mod chain_support;
mod npm_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::BlockHash;
use sbtc_hsm_signer::chain::bitcoin::client::BitcoinClient;
use sbtc_hsm_signer::chain::stacks::address::{Principal, StacksNetwork};
use sbtc_hsm_signer::chain::stacks::clarity::Value;
use sbtc_hsm_signer::chain::stacks::events::{
    to_clarity_bytes, RegistryEvent, WithdrawalRecipient,
};
use sbtc_hsm_signer::chain::stacks::transaction::{
    multisig_signer_hash, singlesig_signer_hash, ContractCall, MultisigCondition, Payload,
    PostConditionMode, SinglesigCondition, SmartContract, SpendingCondition, StacksTransaction,
};
use sbtc_hsm_signer::devnet::stacks::{StacksNode, StacksNodeOptions};
use serde_json::{json, Value as Json};

const FEE: u64 = 10_000;

struct Devnet {
    btc: chain_support::TestNode,
    stx: StacksNode,
    /// The bootstrap signers' secret keys, sorted by public key.
    signers: Vec<SecretKey>,
    user: SecretKey,
    http: reqwest::Client,
}

fn secret(i: u8) -> SecretKey {
    SecretKey::from_slice(&[i; 32]).unwrap()
}

fn public(k: &SecretKey) -> PublicKey {
    PublicKey::from_secret_key(&Secp256k1::new(), k)
}

fn sorted(mut keys: Vec<SecretKey>) -> Vec<SecretKey> {
    keys.sort_by_key(|k| public(k).serialize());
    keys
}

fn multisig_address(keys: &[SecretKey], m: u16) -> Principal {
    let pubs: Vec<PublicKey> = keys.iter().map(public).collect();
    Principal::Standard {
        version: 21,
        hash160: multisig_signer_hash(&pubs, m),
    }
}

fn user_address(k: &SecretKey) -> Principal {
    Principal::Standard {
        version: 26,
        hash160: singlesig_signer_hash(&public(k)),
    }
}

fn vrs(digest: [u8; 32], key: &SecretKey) -> [u8; 65] {
    let sig = Secp256k1::new().sign_ecdsa_recoverable(&Message::from_digest(digest), key);
    let (id, rs) = sig.serialize_compact();
    let mut out = [0u8; 65];
    out[0] = id.to_i32() as u8;
    out[1..].copy_from_slice(&rs);
    out
}

impl Devnet {
    async fn start(observers: Vec<String>) -> Devnet {
        let btc = chain_support::ours().await;
        btc.ours.as_ref().unwrap().mine(101);
        let signers = sorted(vec![secret(1), secret(2), secret(3)]);
        let user = secret(7);
        let pubs: Vec<PublicKey> = signers.iter().map(public).collect();
        let mut options = StacksNodeOptions::new(btc.rpc.clone(), pubs, 2);
        options.balances = vec![
            (multisig_address(&signers, 2), 50_000_000),
            (user_address(&user), 50_000_000),
        ];
        options.observers = observers;
        // The tests step the follower themselves with `sync()`.
        options.poll_interval = Duration::from_secs(3600);
        let stx = StacksNode::start(options)
            .await
            .expect("the stacks node starts");
        Devnet {
            btc,
            stx,
            signers,
            user,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.stx.rpc_url())
    }

    fn call(&self, contract: &str, function: &str, args: Vec<Value>) -> ContractCall {
        let d = self.stx.deployer();
        ContractCall {
            address_version: d.version(),
            address_hash: *d.hash160(),
            contract_name: contract.into(),
            function_name: function.into(),
            args,
        }
    }

    /// A call from the multisig of `keys` (needing `m`), signed by the first `sign` of them.
    fn multisig_tx(
        &self,
        keys: &[SecretKey],
        m: u16,
        sign: usize,
        nonce: u64,
        call: ContractCall,
    ) -> Vec<u8> {
        let pubs: Vec<PublicKey> = keys.iter().map(public).collect();
        let mut tx = StacksTransaction::multisig_call(
            StacksNetwork::Testnet,
            MultisigCondition {
                signer: multisig_signer_hash(&pubs, m),
                nonce,
                fee: FEE,
                fields: Vec::new(),
                signatures_required: m,
            },
            call,
        );
        let digest = tx.presign_sighash();
        let signing: Vec<(PublicKey, [u8; 65])> = keys[..sign]
            .iter()
            .map(|k| (public(k), vrs(digest, k)))
            .collect();
        tx.multisig_mut().unwrap().set_fields(&pubs, |k| {
            signing.iter().find(|(p, _)| p == k).map(|(_, s)| *s)
        });
        tx.serialize()
    }

    fn signers_tx(&self, nonce: u64, call: ContractCall) -> Vec<u8> {
        self.multisig_tx(&self.signers, 2, 2, nonce, call)
    }

    fn user_tx(&self, key: &SecretKey, nonce: u64, fee: u64, payload: Payload) -> Vec<u8> {
        let mut tx = StacksTransaction {
            network: StacksNetwork::Testnet,
            auth: SpendingCondition::Singlesig(SinglesigCondition {
                signer: singlesig_signer_hash(&public(key)),
                nonce,
                fee,
                signature: [0; 65],
            }),
            anchor_mode: 3,
            post_condition_mode: PostConditionMode::Allow,
            post_conditions: Vec::new(),
            payload,
        };
        let sig = vrs(tx.presign_sighash(), key);
        if let SpendingCondition::Singlesig(c) = &mut tx.auth {
            c.signature = sig;
        }
        tx.serialize()
    }

    async fn submit(&self, raw: Vec<u8>) -> (u16, Json) {
        let r = self
            .http
            .post(self.url("/v2/transactions"))
            .header("content-type", "application/octet-stream")
            .body(raw)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn accepted(&self, raw: Vec<u8>) -> String {
        let (status, body) = self.submit(raw).await;
        assert_eq!(status, 200, "refused: {body}");
        body.as_str().unwrap().to_string()
    }

    async fn refused(&self, raw: Vec<u8>) -> Json {
        let (status, body) = self.submit(raw).await;
        assert_eq!(status, 400, "accepted: {body}");
        assert_eq!(body["error"], "transaction rejected");
        body
    }

    /// Mines `n` Bitcoin blocks and lets the Stacks node follow.
    async fn bitcoin_blocks(&self, n: u32) -> usize {
        self.btc.ours.as_ref().unwrap().mine(n);
        self.stx.sync().await.unwrap()
    }

    /// The receipt of a mined transaction: (status, result).
    fn receipt(&self, txid: &str) -> (String, Value) {
        let id: [u8; 32] = hex::decode(txid).unwrap().try_into().unwrap();
        self.stx.with_state(|s| {
            let (_, r) = s.find_tx(&id).expect("the transaction is known");
            let r = r.expect("mined");
            (r.status.as_str().to_string(), r.result.clone())
        })
    }

    async fn read(&self, contract: &str, function: &str, args: Vec<Value>) -> Value {
        let d = self.stx.deployer().to_string();
        let body = json!({
            "sender": d,
            "arguments": args.iter().map(Value::to_hex).collect::<Vec<_>>(),
        });
        let r: Json = self
            .http
            .post(self.url(&format!(
                "/v2/contracts/call-read/{d}/{contract}/{function}"
            )))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["okay"], true, "{r}");
        Value::from_hex(r["result"].as_str().unwrap()).unwrap()
    }

    async fn balances(&self, who: &Principal) -> (u128, u128, u128) {
        let arg = vec![Value::Principal(who.clone())];
        let get = |v: Value| match v {
            Value::ResponseOk(b) => match *b {
                Value::UInt(n) => n,
                other => panic!("{other}"),
            },
            other => panic!("{other}"),
        };
        (
            get(self.read("sbtc-token", "get-balance", arg.clone()).await),
            get(self.read("sbtc-token", "get-balance-available", arg).await),
            get(self.read("sbtc-token", "get-total-supply", vec![]).await),
        )
    }

    fn bitcoin_tip(&self) -> (u32, BlockHash) {
        self.btc.ours.as_ref().unwrap().tip()
    }

    fn deposit_call(
        &self,
        txid: u8,
        amount: u128,
        to: &Principal,
        burn: (u32, BlockHash),
    ) -> ContractCall {
        self.call(
            "sbtc-deposit",
            "complete-deposit-wrapper",
            vec![
                Value::Buffer(vec![txid; 32]),
                Value::UInt(0),
                Value::UInt(amount),
                Value::Principal(to.clone()),
                Value::Buffer(to_clarity_bytes(&burn.1).to_vec()),
                Value::UInt(burn.0.into()),
                Value::Buffer(vec![0x5e; 32]),
            ],
        )
    }
}

fn err(code: u128) -> Value {
    Value::err(Value::UInt(code))
}

#[tokio::test]
async fn a_threshold_signed_deposit_mints_once_and_a_wrong_burn_hash_is_the_contracts_error() {
    let net = Devnet::start(vec![]).await;
    let alice = user_address(&net.user);
    let burn = net.bitcoin_tip();
    let first = net
        .accepted(net.signers_tx(0, net.deposit_call(1, 100_000, &alice, burn)))
        .await;
    let replay = net
        .accepted(net.signers_tx(1, net.deposit_call(1, 100_000, &alice, burn)))
        .await;
    let mut wrong = burn;
    wrong.1 = BlockHash::from_byte_array([0x42; 32]);
    let wrong_hash = net
        .accepted(net.signers_tx(2, net.deposit_call(2, 5_000, &alice, wrong)))
        .await;
    assert_eq!(
        net.balances(&alice).await,
        (0, 0, 0),
        "nothing before a block"
    );
    assert_eq!(net.bitcoin_blocks(1).await, 1);
    assert_eq!(
        net.receipt(&first),
        ("success".into(), Value::ok(Value::Bool(true)))
    );
    assert_eq!(net.receipt(&replay), ("abort_by_response".into(), err(301)));
    assert_eq!(
        net.receipt(&wrong_hash),
        ("abort_by_response".into(), err(305))
    );
    assert_eq!(net.balances(&alice).await, (100_000, 100_000, 100_000));
    let status = net
        .read(
            "sbtc-registry",
            "get-deposit-status",
            vec![Value::Buffer(vec![1; 32]), Value::UInt(0)],
        )
        .await;
    assert_eq!(status, Value::some(Value::Bool(true)));
    // A failed call still pays its fee and uses its nonce, as on a real node.
    let signers = net.stx.account(&multisig_address(&net.signers, 2));
    assert_eq!(signers.nonce, 3);
    assert_eq!(signers.balance, 50_000_000 - 3 * FEE as u128);
    // The user is not the signer principal: the contract's ERR_INVALID_CALLER.
    let by_user = net
        .accepted(net.user_tx(
            &net.user,
            0,
            FEE,
            Payload::ContractCall(net.deposit_call(3, 5_000, &alice, burn)),
        ))
        .await;
    net.stx.mine();
    assert_eq!(
        net.receipt(&by_user),
        ("abort_by_response".into(), err(304))
    );
}

#[tokio::test]
async fn the_mempool_refuses_with_stacks_nodes_reasons() {
    let net = Devnet::start(vec![]).await;
    let alice = user_address(&net.user);
    let burn = net.bitcoin_tip();
    let call = || net.deposit_call(1, 10_000, &alice, burn);

    let few = net
        .refused(net.multisig_tx(&net.signers, 2, 1, 0, call()))
        .await;
    assert_eq!(few["reason"], "SignatureValidation");
    assert!(few["reason_data"]["message"]
        .as_str()
        .unwrap()
        .contains("1 signatures, 2 required"));

    let outsiders = sorted(vec![secret(1), secret(2), secret(9)]);
    let out = net
        .refused(net.multisig_tx(&outsiders, 2, 2, 0, call()))
        .await;
    assert_eq!(out["reason"], "SignatureValidation");
    assert!(
        out["reason_data"]["message"]
            .as_str()
            .unwrap()
            .contains("not the registry's current signer set"),
        "{out}"
    );

    let three = net
        .refused(net.multisig_tx(&net.signers, 3, 3, 0, call()))
        .await;
    assert_eq!(three["reason"], "SignatureValidation");
    assert!(three["reason_data"]["message"]
        .as_str()
        .unwrap()
        .contains("threshold is 2"));

    let nonce = net.refused(net.signers_tx(5, call())).await;
    assert_eq!(nonce["reason"], "BadNonce");
    assert_eq!(nonce["reason_data"]["expected"], 0);
    assert_eq!(nonce["reason_data"]["actual"], 5);
    assert_eq!(
        nonce["reason_data"]["principal"],
        multisig_address(&net.signers, 2).to_string()
    );

    let low = net
        .refused(net.user_tx(&net.user, 0, 10, Payload::ContractCall(call())))
        .await;
    assert_eq!(low["reason"], "FeeTooLow");
    assert_eq!(low["reason_data"]["actual"], 10);
    assert!(low["reason_data"]["expected"].as_u64().unwrap() > 100);

    let poor = net
        .refused(net.user_tx(&secret(8), 0, FEE, Payload::ContractCall(call())))
        .await;
    assert_eq!(poor["reason"], "NotEnoughFunds");

    let mut nope = call();
    nope.function_name = "mint-for-free".into();
    assert_eq!(
        net.refused(net.signers_tx(0, nope)).await["reason"],
        "NoSuchPublicFunction"
    );
    let mut elsewhere = call();
    elsewhere.contract_name = "sbtc-vault".into();
    assert_eq!(
        net.refused(net.signers_tx(0, elsewhere)).await["reason"],
        "NoSuchContract"
    );
    let mut bad_arg = call();
    bad_arg.args[0] = Value::UInt(1);
    let bad = net.refused(net.signers_tx(0, bad_arg)).await;
    assert_eq!(bad["reason"], "BadFunctionArgument");
    assert!(bad["reason_data"]["message"]
        .as_str()
        .unwrap()
        .contains("argument 0"));

    let mut mainnet = StacksTransaction::deserialize(&net.signers_tx(0, call())).unwrap();
    mainnet.network = StacksNetwork::Mainnet;
    assert_eq!(
        net.refused(mainnet.serialize()).await["reason"],
        "BadTransactionVersion"
    );
    let garbage = net.refused(vec![0x80, 1, 2, 3]).await;
    assert_eq!(garbage["reason"], "Deserialization");

    net.accepted(net.signers_tx(0, call())).await;
    let again = net
        .refused(net.signers_tx(0, net.deposit_call(2, 10_000, &alice, burn)))
        .await;
    assert_eq!(again["reason"], "ConflictingNonceInMempool");

    let deploy = |nonce| {
        net.user_tx(
            &net.user,
            nonce,
            FEE,
            Payload::SmartContract(SmartContract {
                name: "hello".into(),
                code_body: "(define-read-only (hi) u1)".into(),
                clarity_version: Some(3),
            }),
        )
    };
    net.accepted(deploy(0)).await;
    net.stx.mine();
    let twice = net.refused(deploy(1)).await;
    assert_eq!(twice["reason"], "ContractAlreadyExists");
    assert_eq!(
        twice["reason_data"]["contract_identifier"],
        format!("{alice}.hello")
    );
}

#[tokio::test]
async fn withdrawals_lock_then_accept_and_reject_settle_as_the_contract_does() {
    let net = Devnet::start(vec![]).await;
    let alice = user_address(&net.user);
    net.accepted(net.signers_tx(0, net.deposit_call(1, 100_000, &alice, net.bitcoin_tip())))
        .await;
    net.bitcoin_blocks(1).await;
    assert_eq!(net.balances(&alice).await, (100_000, 100_000, 100_000));

    let recipient = WithdrawalRecipient {
        version: 4,
        hashbytes: vec![0x33; 20],
    };
    let request = |nonce, amount: u128, max_fee: u128| {
        net.user_tx(
            &net.user,
            nonce,
            FEE,
            Payload::ContractCall(net.call(
                "sbtc-withdrawal",
                "initiate-withdrawal-request",
                vec![
                    Value::UInt(amount),
                    recipient.to_value(),
                    Value::UInt(max_fee),
                ],
            )),
        )
    };
    let one = net.accepted(request(0, 20_000, 3_000)).await;
    let two = net.accepted(request(1, 30_000, 1_000)).await;
    let dust = net.accepted(request(2, 546, 1_000)).await;
    net.bitcoin_blocks(1).await;
    assert_eq!(net.receipt(&one).1, Value::ok(Value::UInt(1)));
    assert_eq!(net.receipt(&two).1, Value::ok(Value::UInt(2)));
    assert_eq!(net.receipt(&dust).1, err(502));
    // Locked amounts still count in get-balance, as in the contract.
    assert_eq!(net.balances(&alice).await, (100_000, 46_000, 100_000));

    let burn = net.bitcoin_tip();
    let accept = |nonce, id: u128, fee: u128| {
        net.signers_tx(
            nonce,
            net.call(
                "sbtc-withdrawal",
                "accept-withdrawal-request",
                vec![
                    Value::UInt(id),
                    Value::Buffer(vec![0xaa; 32]),
                    Value::UInt(0b11),
                    Value::UInt(1),
                    Value::UInt(fee),
                    Value::Buffer(to_clarity_bytes(&burn.1).to_vec()),
                    Value::UInt(burn.0.into()),
                    Value::Buffer(vec![0xaa; 32]),
                ],
            ),
        )
    };
    let reject = |nonce, id: u128| {
        net.signers_tx(
            nonce,
            net.call(
                "sbtc-withdrawal",
                "reject-withdrawal-request",
                vec![Value::UInt(id), Value::UInt(0b11)],
            ),
        )
    };
    let too_much = net.accepted(accept(1, 1, 3_001)).await;
    let accepted = net.accepted(accept(2, 1, 1_200)).await;
    let rejected = net.accepted(reject(3, 2)).await;
    let twice = net.accepted(reject(4, 1)).await;
    net.bitcoin_blocks(1).await;
    assert_eq!(net.receipt(&too_much).1, err(506));
    assert_eq!(net.receipt(&accepted).1, Value::ok(Value::Bool(true)));
    assert_eq!(net.receipt(&rejected).1, Value::ok(Value::Bool(true)));
    assert_eq!(net.receipt(&twice).1, err(505));
    // Request 1: 20 000 + 1 200 burned, 1 800 of the max fee back; request 2 unlocked.
    assert_eq!(net.balances(&alice).await, (78_800, 78_800, 78_800));
    let status = net
        .read(
            "sbtc-registry",
            "get-withdrawal-request",
            vec![Value::UInt(1)],
        )
        .await;
    let Value::Some(t) = status else {
        panic!("{status}")
    };
    let Value::Tuple(fields) = *t else { panic!() };
    assert_eq!(fields["status"], Value::some(Value::Bool(true)));
    assert_eq!(fields["sender"], Value::Principal(alice.clone()));
}

#[tokio::test]
async fn rotation_changes_the_aggregate_key_and_the_old_set_can_no_longer_call() {
    let net = Devnet::start(vec![]).await;
    let before = net
        .read("sbtc-registry", "get-current-aggregate-pubkey", vec![])
        .await;
    assert_eq!(before, Value::Buffer(vec![0]));
    let new_set = sorted(vec![secret(4), secret(5), secret(6)]);
    let aggregate = public(&secret(10)).serialize().to_vec();
    let rotate = net.call(
        "sbtc-bootstrap-signers",
        "rotate-keys-wrapper",
        vec![
            Value::List(
                new_set
                    .iter()
                    .map(|k| Value::Buffer(public(k).serialize().to_vec()))
                    .collect(),
            ),
            Value::Buffer(aggregate.clone()),
            Value::UInt(2),
        ],
    );
    let txid = net.accepted(net.signers_tx(0, rotate.clone())).await;
    net.bitcoin_blocks(1).await;
    assert_eq!(net.receipt(&txid).1, Value::ok(Value::Bool(true)));
    let after = net
        .read("sbtc-registry", "get-current-aggregate-pubkey", vec![])
        .await;
    assert_eq!(after, Value::Buffer(aggregate));
    let principal = net
        .read("sbtc-registry", "get-current-signer-principal", vec![])
        .await;
    assert_eq!(principal, Value::Principal(multisig_address(&new_set, 2)));

    let alice = user_address(&net.user);
    let call = net.deposit_call(1, 10_000, &alice, net.bitcoin_tip());
    let old = net.refused(net.signers_tx(1, call.clone())).await;
    assert_eq!(old["reason"], "SignatureValidation");
    // The new set is the caller now, but its multisig account has no STX for fees yet.
    let unfunded = net.refused(net.multisig_tx(&new_set, 2, 2, 0, call)).await;
    assert_eq!(unfunded["reason"], "NotEnoughFunds");
}

/// An observer on 127.0.0.1 that records `/new_block` bodies and fails its first `fail` POSTs.
async fn observer(fail: usize) -> (String, Arc<Mutex<Vec<Json>>>) {
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(fail));
    let (s, f) = (seen.clone(), failures.clone());
    let app = axum::Router::new().route(
        "/new_block",
        post(move |body: axum::body::Bytes| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                let mut left = f.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                s.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn wait_for(seen: &Mutex<Vec<Json>>, n: usize) -> Vec<Json> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = seen.lock().unwrap().clone();
    assert!(got.len() >= n, "observer got {} of {n} blocks", got.len());
    got
}

#[tokio::test]
async fn observers_get_blocks_and_events_in_order_and_a_bitcoin_reorg_is_a_stacks_fork() {
    let (url, seen) = observer(2).await;
    let net = Devnet::start(vec![url]).await;
    let alice = user_address(&net.user);
    let deposit = net
        .accepted(net.signers_tx(0, net.deposit_call(1, 40_000, &alice, net.bitcoin_tip())))
        .await;
    assert_eq!(net.bitcoin_blocks(3).await, 3);
    let blocks = wait_for(&seen, 3).await;
    let heights: Vec<u64> = blocks
        .iter()
        .map(|b| b["block_height"].as_u64().unwrap())
        .collect();
    assert_eq!(heights, vec![1, 2, 3], "in order, despite two failed POSTs");
    for pair in blocks.windows(2) {
        assert_eq!(pair[1]["parent_block_hash"], pair[0]["block_hash"]);
        assert_eq!(
            pair[1]["parent_index_block_hash"],
            pair[0]["index_block_hash"]
        );
    }
    let first = &blocks[0];
    assert_eq!(first["transactions"][0]["txid"], format!("0x{deposit}"));
    assert_eq!(first["transactions"][0]["status"], "success");
    let event = &first["events"][0];
    assert_eq!(event["committed"], true);
    assert_eq!(event["type"], "contract_event");
    assert_eq!(
        event["contract_event"]["contract_identifier"],
        format!("{}.sbtc-registry", net.stx.deployer())
    );
    assert_eq!(event["contract_event"]["topic"], "print");
    let value = Value::from_hex(event["contract_event"]["raw_value"].as_str().unwrap()).unwrap();
    match RegistryEvent::from_value(&value).unwrap() {
        RegistryEvent::CompletedDeposit { amount, .. } => assert_eq!(amount, 40_000),
        other => panic!("{other:?}"),
    }
    // Bitcoin block heights match the Bitcoin chain.
    let (btc_height, btc_tip) = net.bitcoin_tip();
    assert_eq!(blocks[2]["burn_block_height"], btc_height);
    assert_eq!(blocks[2]["burn_block_hash"], format!("0x{btc_tip}"));

    // Reorg the last two Bitcoin blocks away and grow a longer branch.
    let regtest = net.btc.ours.as_ref().unwrap();
    let gone = net
        .btc
        .rpc
        .get_block_hash(btc_height as u64 - 1)
        .await
        .unwrap()
        .unwrap();
    regtest.invalidate_block(&gone).unwrap();
    assert_eq!(net.bitcoin_blocks(3).await, 3);
    let blocks = wait_for(&seen, 6).await;
    let fork: Vec<&Json> = blocks[3..].iter().collect();
    assert_eq!(
        fork[0]["block_height"], 2,
        "the fork starts above the surviving block"
    );
    assert_eq!(fork[0]["parent_block_hash"], blocks[0]["block_hash"]);
    assert_ne!(fork[0]["block_hash"], blocks[1]["block_hash"]);
    assert_eq!(fork[2]["block_height"], 4);
    assert_eq!(net.stx.tip().0, 4);
    // The deposit was in the surviving block: still minted once.
    assert_eq!(net.balances(&alice).await.0, 40_000);
}

#[tokio::test]
async fn a_test_fork_puts_abandoned_transactions_back_and_rebuilds_the_state() {
    let net = Devnet::start(vec![]).await;
    let alice = user_address(&net.user);
    net.accepted(net.signers_tx(0, net.deposit_call(1, 40_000, &alice, net.bitcoin_tip())))
        .await;
    let mined = net.stx.mine();
    assert_eq!(net.balances(&alice).await.0, 40_000);
    assert_eq!(net.stx.fork_from(0), 1);
    assert_eq!(
        net.balances(&alice).await.0,
        0,
        "the state is genesis again"
    );
    let again = net.stx.mine();
    assert_eq!(again.height, 1);
    assert_ne!(again.block_hash, mined.block_hash);
    assert_eq!(
        again.receipts.len(),
        1,
        "the abandoned deposit is mined again"
    );
    assert_eq!(net.balances(&alice).await.0, 40_000);
}

#[tokio::test]
async fn the_http_interface_has_stacks_nodes_shapes_and_refuses_bad_input() {
    let net = Devnet::start(vec![]).await;
    let get = |path: String| {
        let http = net.http.clone();
        let url = net.url(&path);
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, info) = get("/v2/info".into()).await;
    assert_eq!(status, 200);
    let info: Json = serde_json::from_str(&info).unwrap();
    assert_eq!(info["network_id"], 0x8000_0000u32);
    assert_eq!(info["stacks_tip_height"], 0);
    assert_eq!(info["burn_block_height"], net.bitcoin_tip().0);
    assert!(info["server_version"]
        .as_str()
        .unwrap()
        .contains("stacks-node"));

    let alice = user_address(&net.user);
    let (_, account) = get(format!("/v2/accounts/{alice}?proof=0")).await;
    let account: Json = serde_json::from_str(&account).unwrap();
    assert_eq!(account["balance"], format!("0x{:032x}", 50_000_000u128));
    assert_eq!(account["nonce"], 0);
    let (status, _) = get("/v2/accounts/not-an-address".into()).await;
    assert_eq!(status, 400);

    let d = net.stx.deployer().to_string();
    let (status, var) = get(format!(
        "/v2/data_var/{d}/sbtc-registry/current-signature-threshold?proof=0"
    ))
    .await;
    assert_eq!(status, 200);
    let var: Json = serde_json::from_str(&var).unwrap();
    assert_eq!(
        Value::from_hex(var["data"].as_str().unwrap()).unwrap(),
        Value::UInt(2)
    );
    assert_eq!(
        get(format!("/v2/data_var/{d}/sbtc-registry/nope")).await.0,
        404
    );

    net.accepted(net.signers_tx(0, net.deposit_call(1, 40_000, &alice, net.bitcoin_tip())))
        .await;
    net.stx.mine();
    let key = Value::tuple([
        ("txid", Value::Buffer(vec![1; 32])),
        ("vout-index", Value::UInt(0)),
    ]);
    let entry: Json = net
        .http
        .post(net.url(&format!(
            "/v2/map_entry/{d}/sbtc-registry/deposit-status?proof=0"
        )))
        .json(&key.to_hex())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        Value::from_hex(entry["data"].as_str().unwrap()).unwrap(),
        Value::some(Value::Bool(true))
    );
    let bad_key = net
        .http
        .post(net.url(&format!("/v2/map_entry/{d}/sbtc-registry/deposit-status")))
        .json(&Value::UInt(1).to_hex())
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status().as_u16(), 400);

    let payload = net.deposit_call(1, 1, &alice, net.bitcoin_tip());
    let fee: Json = net
        .http
        .post(net.url("/v2/fees/transaction"))
        .json(&json!({
            "transaction_payload": hex::encode(Payload::ContractCall(payload).serialize()),
            "estimated_len": 400,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let estimations = fee["estimations"].as_array().unwrap();
    assert_eq!(estimations.len(), 3);
    assert!(
        estimations[0]["fee"].as_u64().unwrap() >= 400,
        "at least the minimum for 400 bytes"
    );
    assert!(estimations[2]["fee"].as_u64() > estimations[0]["fee"].as_u64());

    for (path, body) in [
        (
            format!("/v2/contracts/call-read/{d}/sbtc-token/get-balance"),
            "{".to_string(),
        ),
        (
            format!("/v2/contracts/call-read/{d}/sbtc-token/get-balance"),
            json!({"sender": d, "arguments": ["0xzz"]}).to_string(),
        ),
        (
            "/v2/fees/transaction".to_string(),
            json!({"transaction_payload": "xyz"}).to_string(),
        ),
    ] {
        let r = net
            .http
            .post(net.url(&path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        assert!(!r.text().await.unwrap().is_empty());
    }
    let read: Json = net
        .http
        .post(net.url(&format!(
            "/v2/contracts/call-read/{d}/sbtc-token/no-such-fn"
        )))
        .json(&json!({"sender": d, "arguments": []}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["okay"], false);
    assert!(read["cause"]
        .as_str()
        .unwrap()
        .contains("NoSuchPublicFunction"));
    let huge = net
        .http
        .post(net.url("/v2/transactions"))
        .body(vec![0u8; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status().as_u16(), 413);
}

#[tokio::test]
async fn the_sbtc_library_reads_the_aggregate_key_and_a_balance() {
    let net = Devnet::start(vec![]).await;
    let alice = user_address(&net.user);
    let aggregate = public(&secret(10)).serialize().to_vec();
    let rotate = net.call(
        "sbtc-bootstrap-signers",
        "rotate-keys-wrapper",
        vec![
            Value::List(
                net.signers
                    .iter()
                    .map(|k| Value::Buffer(public(k).serialize().to_vec()))
                    .collect(),
            ),
            Value::Buffer(aggregate.clone()),
            Value::UInt(2),
        ],
    );
    net.accepted(net.signers_tx(0, net.deposit_call(1, 123_456, &alice, net.bitcoin_tip())))
        .await;
    net.accepted(net.signers_tx(1, rotate)).await;
    net.stx.mine();
    let url = net.stx.rpc_url();
    let deployer = net.stx.deployer().to_string();
    let out = tokio::task::spawn_blocking(move || {
        npm_support::run(
            "sbtc_node.mjs",
            &json!({ "url": url, "deployer": deployer, "address": alice.to_string() }),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        out["aggregateKey"],
        hex::encode(&aggregate[1..]),
        "x-only, as the library returns it"
    );
    assert_eq!(out["balance"], "123456");
}
