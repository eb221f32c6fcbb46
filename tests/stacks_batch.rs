//! The batch calls on the devnet's Stacks node, the way a sweep's calls go: the requests split by
//! `batch_calls` (three deposits → one `complete-deposits-wrapper`; an accept and a reject → one
//! `complete-withdrawals`), every entry checked by each signer against its own view, one
//! multisig signature per signer in custody (keystores), submitted through the signer's Stacks
//! client. Balances, deposit status and the registry's print events read back; a batch with a
//! replayed entry is mined with the contract's per-index error code and changes nothing.

mod chain_support;
mod common;

use std::collections::HashMap;
use std::time::Duration;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, SecretKey};
use bitcoin::{BlockHash, OutPoint, Txid};
use sbtc_hsm_signer::chain::bitcoin::client::BitcoinClient;
use sbtc_hsm_signer::chain::stacks::{
    address::{Principal, StacksNetwork},
    clarity::Value,
    client::StacksClient,
    contracts::{
        self, batch_calls, AcceptWithdrawal, CallView, CompleteDeposit, Rebuilt, RejectWithdrawal,
        RotateKeys, SignerCall, SigningContext, WithdrawalOutcome, DEFAULT_FEE_CAP_USTX,
    },
    events::{RegistryEvent, WithdrawalRecipient},
    multisig::{self, SignerAccount},
    transaction::{
        singlesig_signer_hash, ContractCall, Payload, PostConditionMode, SinglesigCondition,
        SpendingCondition, StacksTransaction,
    },
    StacksRpc,
};
use sbtc_hsm_signer::devnet::stacks::{chain::TxStatus, StacksNode, StacksNodeOptions};
use sbtc_hsm_signer::keys::{KeyLabels, Keys};

/// What the signers know: the swept deposits and the withdrawal outcomes, by subject.
#[derive(Default)]
struct View {
    deposits: HashMap<OutPoint, CompleteDeposit>,
    accepts: HashMap<u64, AcceptWithdrawal>,
    rejects: HashMap<u64, RejectWithdrawal>,
}

#[async_trait::async_trait]
impl CallView for View {
    async fn complete_deposit(&self, o: &OutPoint) -> Result<Rebuilt<CompleteDeposit>, String> {
        Ok(match self.deposits.get(o) {
            Some(d) => Rebuilt::Ready(d.clone()),
            None => Rebuilt::Unknown("no sweep of it".into()),
        })
    }
    async fn accept_withdrawal(&self, id: u64) -> Result<Rebuilt<AcceptWithdrawal>, String> {
        Ok(match self.accepts.get(&id) {
            Some(a) => Rebuilt::Ready(a.clone()),
            None => Rebuilt::Unknown("no sweep pays it".into()),
        })
    }
    async fn reject_withdrawal(&self, id: u64) -> Result<Rebuilt<RejectWithdrawal>, String> {
        Ok(match self.rejects.get(&id) {
            Some(r) => Rebuilt::Ready(r.clone()),
            None => Rebuilt::Unknown("not to be rejected".into()),
        })
    }
    async fn rotate_keys(&self, _: &PublicKey) -> Result<Rebuilt<RotateKeys>, String> {
        Ok(Rebuilt::Unknown("no rotation here".into()))
    }
}

struct Signer {
    keys: Keys,
    identity: PublicKey,
}

struct Net {
    stx: StacksNode,
    client: StacksRpc,
    signers: Vec<Signer>,
    account: SignerAccount,
    deployer: Principal,
    _btc: chain_support::TestNode,
    _dir: tempfile::TempDir,
}

impl Net {
    fn ctx(&self, nonce: u64) -> SigningContext {
        SigningContext {
            network: StacksNetwork::Testnet,
            deployer: self.deployer.clone(),
            account: self.account.clone(),
            nonce,
            fee_cap: DEFAULT_FEE_CAP_USTX,
        }
    }

    /// The coordinator's proposal at the account's nonce, checked and signed by the first two
    /// signers (each once, in custody), assembled and submitted. Returns the signed transaction.
    async fn propose_sign_submit(&self, view: &View, call: &SignerCall) -> StacksTransaction {
        let principal = self.account.principal(StacksNetwork::Testnet);
        let nonce = self.client.get_account(&principal).await.unwrap().nonce;
        let ctx = self.ctx(nonce);
        let unpriced = contracts::build(&ctx, call, 0);
        let estimate = self
            .client
            .estimate_fee(&unpriced.payload, unpriced.serialize().len() as u64 + 150)
            .await
            .unwrap();
        let proposal = contracts::build(&ctx, call, estimate.medium_capped(ctx.fee_cap));
        let mut sigs = Vec::new();
        for s in &self.signers[..2] {
            let agreed = contracts::check(&proposal, &ctx, view)
                .await
                .unwrap_or_else(|e| panic!("a signer refused: {e}"));
            assert_eq!(&agreed, call);
            sigs.push(
                multisig::sign(&s.keys, &s.identity, &self.account, &proposal, "batch test")
                    .await
                    .unwrap(),
            );
        }
        let signed = self.account.assemble(&proposal, &sigs).unwrap();
        self.client.submit_transaction(&signed).await.unwrap();
        signed
    }

    /// A mined transaction's status, result and registry events.
    fn receipt(&self, tx: &StacksTransaction) -> (TxStatus, Value, Vec<RegistryEvent>) {
        self.stx.with_state(|s| {
            let (_, r) = s
                .find_tx(&tx.txid())
                .expect("the node knows the transaction");
            let r = r.expect("the transaction is mined");
            let events = r
                .events
                .iter()
                .map(|(_, v)| RegistryEvent::from_value(v).unwrap())
                .collect();
            (r.status, r.result.clone(), events)
        })
    }

    async fn balance(&self, who: &Principal) -> u64 {
        self.client
            .get_balance(&self.deployer, who)
            .await
            .unwrap()
            .to_sat()
    }
}

fn user_tx(key: &SecretKey, nonce: u64, call: ContractCall) -> StacksTransaction {
    let secp = Secp256k1::new();
    let mut tx = StacksTransaction {
        network: StacksNetwork::Testnet,
        auth: SpendingCondition::Singlesig(SinglesigCondition {
            signer: singlesig_signer_hash(&key.public_key(&secp)),
            nonce,
            fee: 10_000,
            signature: [0; 65],
        }),
        anchor_mode: 3,
        post_condition_mode: PostConditionMode::Allow,
        post_conditions: Vec::new(),
        payload: Payload::ContractCall(call),
    };
    let sig = secp.sign_ecdsa_recoverable(&Message::from_digest(tx.presign_sighash()), key);
    let (id, rs) = sig.serialize_compact();
    if let SpendingCondition::Singlesig(c) = &mut tx.auth {
        c.signature[0] = id.to_i32() as u8;
        c.signature[1..].copy_from_slice(&rs);
    }
    tx
}

async fn start(users: &[&Principal]) -> Net {
    let btc = chain_support::ours().await;
    btc.ours.as_ref().unwrap().mine(101);
    let dir = tempfile::tempdir().unwrap();
    let mut signers = Vec::new();
    for name in ["a", "b", "c"] {
        let keys = Keys::new(
            common::keystore(dir.path(), name).await,
            &KeyLabels::default(),
        );
        let identity = keys.identity_key().await.unwrap();
        signers.push(Signer { keys, identity });
    }
    let set: Vec<PublicKey> = signers.iter().map(|s| s.identity).collect();
    let account = SignerAccount::new(set.clone(), 2).unwrap();
    let deployer = account.principal(StacksNetwork::Testnet);
    let bitcoin: std::sync::Arc<dyn BitcoinClient> = btc.rpc.clone();
    let mut options = StacksNodeOptions::new(bitcoin, set, 2);
    options.balances = vec![(deployer.clone(), 10_000_000)];
    options
        .balances
        .extend(users.iter().map(|u| ((*u).clone(), 1_000_000)));
    options.poll_interval = Duration::from_secs(3600);
    let stx = StacksNode::start(options).await.unwrap();
    let client = StacksRpc::with_options(&stx.rpc_url(), Duration::from_secs(5), 1).unwrap();
    Net {
        stx,
        client,
        signers,
        account,
        deployer,
        _btc: btc,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_deposits_and_two_withdrawals_settle_in_two_calls_and_a_replayed_entry_fails_whole() {
    let secp = Secp256k1::new();
    let alice_key = SecretKey::from_slice(&[0x71; 32]).unwrap();
    let alice = Principal::Standard {
        version: 26,
        hash160: singlesig_signer_hash(&alice_key.public_key(&secp)),
    };
    let bob = Principal::Standard {
        version: 26,
        hash160: [0xb0; 20],
    };
    let net = start(&[&alice]).await;
    let burn_height = 100u64;
    let burn_hash: BlockHash = net
        ._btc
        .rpc
        .get_block_hash(burn_height)
        .await
        .unwrap()
        .unwrap();
    let sweep_txid = Txid::from_byte_array([0x5e; 32]);
    let deposit = |txid: u8, vout: u32, amount: u64, to: &Principal| CompleteDeposit {
        outpoint: OutPoint::new(Txid::from_byte_array([txid; 32]), vout),
        amount,
        recipient: to.clone(),
        burn_hash,
        burn_height,
        sweep_txid,
    };
    let deposits = vec![
        deposit(0x33, 0, 30_000, &alice),
        deposit(0x11, 2, 100_000, &alice),
        deposit(0x22, 1, 20_000, &bob),
    ];
    let mut view = View::default();
    for d in &deposits {
        view.deposits.insert(d.outpoint, d.clone());
    }

    // 1. Three deposits: one call, one signature per signer.
    let calls = batch_calls(deposits.clone(), vec![]);
    assert_eq!(calls.len(), 1);
    let SignerCall::CompleteDeposits(entries) = &calls[0] else {
        panic!("three deposits make one batch: {:?}", calls[0]);
    };
    let mut sorted = deposits.clone();
    sorted.sort_by_key(|d| d.outpoint);
    assert_eq!(entries, &sorted, "in outpoint order");
    let minted = net.propose_sign_submit(&view, &calls[0]).await;
    net.stx.mine();
    let (status, result, events) = net.receipt(&minted);
    assert_eq!(
        (status, result),
        (TxStatus::Success, Value::ok(Value::UInt(3)))
    );
    let expected: Vec<RegistryEvent> = sorted
        .iter()
        .map(|d| RegistryEvent::CompletedDeposit {
            outpoint: d.outpoint,
            amount: d.amount,
            burn_hash,
            burn_height,
            sweep_txid,
        })
        .collect();
    assert_eq!(
        events, expected,
        "one completed-deposit event per entry, in order"
    );
    assert_eq!(net.balance(&alice).await, 130_000);
    assert_eq!(net.balance(&bob).await, 20_000);
    for d in &deposits {
        assert!(
            net.client
                .get_deposit_status(&net.deployer, &d.outpoint)
                .await
                .unwrap(),
            "{} is recorded as completed",
            d.outpoint
        );
    }

    // 2. Alice asks for two withdrawals (request ids 1 and 2).
    let recipient = WithdrawalRecipient {
        version: 4,
        hashbytes: vec![0x44; 20],
    };
    for (nonce, (amount, max_fee)) in [(40_000u128, 3_000u128), (25_000, 2_000)]
        .into_iter()
        .enumerate()
    {
        let call = ContractCall {
            address_version: net.deployer.version(),
            address_hash: *net.deployer.hash160(),
            contract_name: "sbtc-withdrawal".into(),
            function_name: "initiate-withdrawal-request".into(),
            args: vec![
                Value::UInt(amount),
                recipient.to_value(),
                Value::UInt(max_fee),
            ],
        };
        net.client
            .submit_transaction(&user_tx(&alice_key, nonce as u64, call))
            .await
            .unwrap();
    }
    net.stx.mine();
    assert_eq!(net.balance(&alice).await, 130_000, "locked still counts");

    // 3. Accept 1 (paid by the sweep, fee 1 000 of 3 000), reject 2: one call.
    let accept = AcceptWithdrawal {
        request_id: 1,
        bitcoin_txid: sweep_txid,
        signer_bitmap: 0b100,
        output_index: 2,
        fee: 1_000,
        burn_hash,
        burn_height,
        sweep_txid,
    };
    let reject = RejectWithdrawal {
        request_id: 2,
        signer_bitmap: 0b001,
    };
    view.accepts.insert(1, accept.clone());
    view.rejects.insert(2, reject.clone());
    let calls = batch_calls(
        vec![],
        vec![
            WithdrawalOutcome::Reject(reject.clone()),
            WithdrawalOutcome::Accept(accept.clone()),
        ],
    );
    assert_eq!(
        calls,
        vec![SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(accept.clone()),
            WithdrawalOutcome::Reject(reject.clone()),
        ])]
    );
    let settled = net.propose_sign_submit(&view, &calls[0]).await;
    net.stx.mine();
    let (status, result, events) = net.receipt(&settled);
    assert_eq!(
        (status, result),
        (TxStatus::Success, Value::ok(Value::UInt(2)))
    );
    assert_eq!(
        events,
        vec![
            RegistryEvent::WithdrawalAccept {
                request_id: 1,
                bitcoin_txid: sweep_txid,
                signer_bitmap: 0b100,
                output_index: 2,
                fee: 1_000,
                burn_hash,
                burn_height,
                sweep_txid,
            },
            RegistryEvent::WithdrawalReject {
                request_id: 2,
                signer_bitmap: 0b001,
            },
        ]
    );
    // 40 000 + 1 000 burned; 2 000 of the max fee back; request 2 unlocked.
    assert_eq!(net.balance(&alice).await, 130_000 - 41_000);
    let supply = net
        .client
        .get_total_supply(&net.deployer)
        .await
        .unwrap()
        .to_sat();
    assert_eq!(supply, 150_000 - 41_000);

    // 4. A batch whose second entry replays a completed deposit (a signer view that lags the
    //    chain would build it): mined with u303 + u10 + 1, and the new deposit is not minted.
    let fresh = deposit(0x01, 0, 50_000, &bob);
    view.deposits.insert(fresh.outpoint, fresh.clone());
    let stale = SignerCall::CompleteDeposits(vec![fresh.clone(), sorted[0].clone()]);
    assert_eq!(
        batch_calls(vec![sorted[0].clone(), fresh.clone()], vec![]),
        vec![stale.clone()]
    );
    let replayed = net.propose_sign_submit(&view, &stale).await;
    net.stx.mine();
    let (status, result, events) = net.receipt(&replayed);
    assert_eq!(
        (status, result),
        (TxStatus::AbortByResponse, Value::err(Value::UInt(314)))
    );
    assert_eq!(stale.failed_entry(314), Some(1));
    assert!(events.is_empty(), "a failed batch prints nothing");
    assert_eq!(
        net.balance(&bob).await,
        20_000,
        "nothing of the batch was minted"
    );
    assert!(!net
        .client
        .get_deposit_status(&net.deployer, &fresh.outpoint)
        .await
        .unwrap());

    // The same for withdrawals: both requests are settled, entry 1 fails first (u507 + u10 + 0).
    let again = SignerCall::CompleteWithdrawals(vec![
        WithdrawalOutcome::Accept(accept),
        WithdrawalOutcome::Reject(reject),
    ]);
    let replayed = net.propose_sign_submit(&view, &again).await;
    net.stx.mine();
    let (status, result, _) = net.receipt(&replayed);
    assert_eq!(
        (status, result),
        (TxStatus::AbortByResponse, Value::err(Value::UInt(517)))
    );
    assert_eq!(again.failed_entry(517), Some(0));
    assert_eq!(net.balance(&alice).await, 130_000 - 41_000);

    net.stx.stop().await;
}
