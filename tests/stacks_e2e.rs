//! The Stacks side end to end, every part real except the chains (the devnet's regtest node and
//! Stacks node behind their real interfaces): a keystore, a SoftHSM2 and a MockHsm signer form the
//! bootstrap set; each checks the proposed call against its own view and signs it in custody; the
//! transaction goes through the signer's Stacks client to the node, which verifies the multisig
//! against the registry's signer set and mines it; the node posts the block to the signer's
//! `/new_block`, and the registry events land in the signer's storage on the canonical chain.

mod chain_support;
mod common;

use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::Hash as _;
use bitcoin::secp256k1::{PublicKey, SecretKey, SECP256K1};
use bitcoin::{BlockHash, OutPoint, Txid};
use sbtc_hsm_signer::api::{self, ApiConfig};
use sbtc_hsm_signer::chain::bitcoin::client::BitcoinClient;
use sbtc_hsm_signer::chain::bitcoin::observer::{BlockObserver, ObserverParams};
use sbtc_hsm_signer::chain::stacks::{
    address::{Principal, StacksNetwork},
    client::StacksClient,
    contracts::{
        self, AcceptWithdrawal, CallView, CompleteDeposit, Rebuilt, RejectWithdrawal, RotateKeys,
        SignerCall, SigningContext, DEFAULT_FEE_CAP_USTX,
    },
    events::RegistryEvent,
    multisig::{self, SignerAccount},
    observer,
    transaction::StacksTransaction,
    ErrorKind, StacksConfig, StacksRpc,
};
use sbtc_hsm_signer::devnet::stacks::{StacksNode, StacksNodeOptions};
use sbtc_hsm_signer::keys::{KeyLabels, Keys};
use sbtc_hsm_signer::storage::{memory::MemoryStore, Storage};

/// What every signer "knows" here: the deposit it swept and the rotation its DKG produced.
struct View {
    deposit: CompleteDeposit,
    rotation: RotateKeys,
}

#[async_trait::async_trait]
impl CallView for View {
    async fn complete_deposit(&self, o: &OutPoint) -> Result<Rebuilt<CompleteDeposit>, String> {
        Ok(if *o == self.deposit.outpoint {
            Rebuilt::Ready(self.deposit.clone())
        } else {
            Rebuilt::Unknown("no sweep of it".into())
        })
    }
    async fn accept_withdrawal(&self, _: u64) -> Result<Rebuilt<AcceptWithdrawal>, String> {
        Ok(Rebuilt::Unknown("no withdrawals here".into()))
    }
    async fn reject_withdrawal(&self, _: u64) -> Result<Rebuilt<RejectWithdrawal>, String> {
        Ok(Rebuilt::Unknown("no withdrawals here".into()))
    }
    async fn rotate_keys(&self, k: &PublicKey) -> Result<Rebuilt<RotateKeys>, String> {
        Ok(if *k == self.rotation.new_aggregate_key {
            Rebuilt::Ready(self.rotation.clone())
        } else {
            Rebuilt::Unknown("not the key of our DKG".into())
        })
    }
}

struct Signer {
    keys: Keys,
    identity: PublicKey,
}

/// The coordinator's part: nonce and fee from its node, the proposal; then each signer's part:
/// check against its own view, sign in custody; then assembly and submission.
async fn propose_sign_submit(
    client: &StacksRpc,
    signers: &[&Signer],
    ctx_of: impl Fn(u64) -> SigningContext,
    view: &View,
    call: &SignerCall,
) -> Result<StacksTransaction, sbtc_hsm_signer::chain::stacks::Error> {
    let account = ctx_of(0).account;
    let principal = account.principal(StacksNetwork::Testnet);
    let nonce = client.get_account(&principal).await?.nonce;
    let ctx = ctx_of(nonce);
    let unpriced = contracts::build(&ctx, call, 0);
    let estimate = client
        .estimate_fee(&unpriced.payload, unpriced.serialize().len() as u64 + 150)
        .await?;
    let proposal = contracts::build(&ctx, call, estimate.medium_capped(ctx.fee_cap));
    let mut sigs = Vec::new();
    for s in signers {
        let agreed = contracts::check(&proposal, &ctx, view)
            .await
            .unwrap_or_else(|e| panic!("a signer refused: {e}"));
        assert_eq!(&agreed, call);
        sigs.push(
            multisig::sign(&s.keys, &s.identity, &account, &proposal, "e2e")
                .await
                .unwrap(),
        );
    }
    let signed = account.assemble(&proposal, &sigs).unwrap();
    client.submit_transaction(&signed).await?;
    Ok(signed)
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_backends_rotate_then_mint_through_the_node_and_the_observer_keeps_the_events() {
    let btc = chain_support::ours().await;
    let regtest = btc.ours.as_ref().unwrap();
    regtest.mine(101);

    let dir = tempfile::tempdir().unwrap();
    let mut signers = Vec::new();
    for c in common::mixed(dir.path(), 3).await {
        let keys = Keys::new(c, &KeyLabels::default());
        let identity = keys.identity_key().await.unwrap();
        signers.push(Signer { keys, identity });
    }
    let set: Vec<PublicKey> = signers.iter().map(|s| s.identity).collect();
    let bootstrap = SignerAccount::new(set.clone(), 2).unwrap();
    let all_three = SignerAccount::new(set.clone(), 3).unwrap();
    // As in the official devnet, the deployer is the bootstrap signers' account.
    let deployer = bootstrap.principal(StacksNetwork::Testnet);

    // The signer's storage and API, with the event observer.
    let store: Arc<dyn Storage> = Arc::new(MemoryStore::new());
    let settings = StacksConfig::new(
        "http://127.0.0.1:20443",
        Some(deployer.to_address().unwrap()),
    )
    .resolve(bitcoin::Network::Regtest)
    .unwrap();
    let bitcoin: Arc<dyn BitcoinClient> = btc.rpc.clone();
    let api = api::start_with_observer(
        &ApiConfig::new("127.0.0.1:0".parse().unwrap()),
        bitcoin.clone(),
        bitcoin::Network::Regtest,
        store.clone(),
        None,
        Some(&settings),
    )
    .await
    .unwrap();
    let bitcoin_observer = BlockObserver::new(
        bitcoin.clone(),
        store.clone(),
        ObserverParams::new(bitcoin::Network::Regtest),
    );
    bitcoin_observer.poll().await.unwrap();

    let mut options = StacksNodeOptions::new(bitcoin.clone(), set.clone(), 2);
    options.balances = vec![
        (bootstrap.principal(StacksNetwork::Testnet), 10_000_000),
        (all_three.principal(StacksNetwork::Testnet), 10_000_000),
    ];
    options.observers = vec![format!("http://{}", api.server.local_addr())];
    options.poll_interval = Duration::from_secs(3600);
    let stx = StacksNode::start(options).await.unwrap();
    let client = StacksRpc::with_options(&stx.rpc_url(), Duration::from_secs(5), 1).unwrap();

    // The signers read the registry from the node: the bootstrap set, no aggregate key yet.
    let data = client.get_current_signer_data(&deployer).await.unwrap();
    assert_eq!(data.signer_set, bootstrap.keys());
    assert_eq!(data.aggregate_key, None);

    // The burn block the deposit's sweep "confirmed" in: a real regtest block.
    let burn_height = 100u64;
    let burn_hash: BlockHash = btc.rpc.get_block_hash(burn_height).await.unwrap().unwrap();
    let recipient = Principal::Standard {
        version: 26,
        hash160: [0x5a; 20],
    };
    let aggregate = SecretKey::from_slice(&[0x77; 32])
        .unwrap()
        .public_key(SECP256K1);
    let view = View {
        deposit: CompleteDeposit {
            outpoint: OutPoint::new(Txid::from_byte_array([0x42; 32]), 1),
            amount: 250_000,
            recipient: recipient.clone(),
            burn_hash,
            burn_height,
            sweep_txid: Txid::from_byte_array([0x43; 32]),
        },
        rotation: RotateKeys::new(set.clone(), aggregate, 3),
    };
    let ctx = |account: &SignerAccount| {
        let account = account.clone();
        let deployer = deployer.clone();
        move |nonce| SigningContext {
            network: StacksNetwork::Testnet,
            deployer: deployer.clone(),
            account: account.clone(),
            nonce,
            fee_cap: DEFAULT_FEE_CAP_USTX,
        }
    };

    // 1. The bootstrap 2-of-3 (keystore and SoftHSM2) rotates to the 3-of-3 and its key.
    let rotate = SignerCall::RotateKeys(view.rotation.clone());
    propose_sign_submit(
        &client,
        &[&signers[0], &signers[1]],
        ctx(&bootstrap),
        &view,
        &rotate,
    )
    .await
    .unwrap();
    stx.mine();
    assert_eq!(
        client
            .get_current_aggregate_pubkey(&deployer)
            .await
            .unwrap(),
        Some(aggregate)
    );
    let rotation = wait_for("the key-rotation event", async || {
        observer::latest_key_rotation(store.as_ref()).await.unwrap()
    })
    .await;
    assert!(
        matches!(&rotation.event, RegistryEvent::KeyRotation { new_aggregate_pubkey, new_signature_threshold: 3, .. } if *new_aggregate_pubkey == aggregate),
        "{:?}",
        rotation.event
    );

    // 2. The old 2-of-3 can no longer call; the node says why.
    let deposit = SignerCall::CompleteDeposit(view.deposit.clone());
    let refused = propose_sign_submit(
        &client,
        &[&signers[0], &signers[1]],
        ctx(&bootstrap),
        &view,
        &deposit,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused.kind, ErrorKind::Rejected { reason, .. } if reason == "SignatureValidation"),
        "{refused}"
    );

    // 3. The new 3-of-3, every backend signing, mints the deposit.
    propose_sign_submit(
        &client,
        &signers.iter().collect::<Vec<_>>(),
        ctx(&all_three),
        &view,
        &deposit,
    )
    .await
    .unwrap();
    stx.mine();
    assert_eq!(
        client
            .get_balance(&deployer, &recipient)
            .await
            .unwrap()
            .to_sat(),
        250_000
    );
    assert!(client
        .get_deposit_status(&deployer, &view.deposit.outpoint)
        .await
        .unwrap());
    let completed = wait_for("the completed-deposit event", async || {
        observer::completed_deposit_event(store.as_ref(), &view.deposit.outpoint)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        completed.event,
        RegistryEvent::CompletedDeposit {
            outpoint: view.deposit.outpoint,
            amount: 250_000,
            burn_hash,
            burn_height,
            sweep_txid: view.deposit.sweep_txid,
        }
    );

    // 4. The signers' own check now refuses a replay: their view says done (here: the event).
    struct DoneView<'a>(&'a dyn Storage);
    #[async_trait::async_trait]
    impl CallView for DoneView<'_> {
        async fn complete_deposit(&self, o: &OutPoint) -> Result<Rebuilt<CompleteDeposit>, String> {
            match observer::completed_deposit_event(self.0, o).await {
                Ok(Some(e)) => Ok(Rebuilt::Done(format!(
                    "completed-deposit in Stacks block {}",
                    e.block_height
                ))),
                Ok(None) => Ok(Rebuilt::Unknown("no sweep".into())),
                Err(e) => Err(e.to_string()),
            }
        }
        async fn accept_withdrawal(&self, _: u64) -> Result<Rebuilt<AcceptWithdrawal>, String> {
            Ok(Rebuilt::Unknown(String::new()))
        }
        async fn reject_withdrawal(&self, _: u64) -> Result<Rebuilt<RejectWithdrawal>, String> {
            Ok(Rebuilt::Unknown(String::new()))
        }
        async fn rotate_keys(&self, _: &PublicKey) -> Result<Rebuilt<RotateKeys>, String> {
            Ok(Rebuilt::Unknown(String::new()))
        }
    }
    let nonce = client
        .get_account(&all_three.principal(StacksNetwork::Testnet))
        .await
        .unwrap()
        .nonce;
    let replay = contracts::build(&ctx(&all_three)(nonce), &deposit, 1_000);
    let refusal = contracts::check(&replay, &ctx(&all_three)(nonce), &DoneView(store.as_ref()))
        .await
        .unwrap_err();
    assert!(
        matches!(refusal, contracts::CallRefusal::AlreadyDone { .. }),
        "{refusal}"
    );

    stx.stop().await;
    api.shutdown().await;
}
