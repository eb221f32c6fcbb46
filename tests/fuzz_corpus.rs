//! The fuzz corpus as regression tests: every input under `fuzz/corpus/<target>/` (what afl kept,
//! minimised, plus the seeds) and `fuzz/crashes-fixed/<target>/` (inputs that once crashed) goes
//! through the same function the afl binary calls (`sbtc_hsm_signer::fuzz_targets`), and none may
//! panic. Every seed (`seed-*`) must still be accepted, so a format change that leaves the corpus
//! stuck at the first check fails here instead of silently weakening the fuzzer.
//!
//! The seeds are real values: `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`
//! writes them again (keystores, a certificate and its binding from a keystore backend, the round
//! messages of an in-process DKG and signing batch, the example configs). See docs/fuzzing.md.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use sbtc_custody::{Custody, KeyKind, KeyLabel, RecoverableSignature, SecretString};
use sbtc_custody_keystore::{KdfParams, Keystore};
use sbtc_hsm_signer::{
    coordination::{wire, DkgDecision},
    fuzz_targets::{self, KEYSTORE_PASSPHRASE, SENDER_SECRET, TARGETS},
    peer::{
        cert,
        message::{self, Body, ChainTip, StatementKind},
    },
    signing::{
        run_dkg, verify_dkg, ApproveAll, Approver, BatchCoordinator, BatchSigner, DkgId,
        DkgVerification, Envelope, InMemoryNonceLedger, LocalCluster, NonceLedger, Participation,
        RoundMessage, SighashRequest, SignerIndex, SpendKind, Transport, TransportError,
    },
};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of one target's corpus and crash directories, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["corpus", "crashes-fixed"] {
        let Ok(dir) = std::fs::read_dir(fuzz_dir().join(sub).join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every saved input of `target`; panics name the input that panicked.
fn replay(target: &str) {
    let files = inputs(target);
    let seeds = files.iter().filter(|p| is_seed(p)).collect::<Vec<_>>();
    assert!(
        !seeds.is_empty(),
        "fuzz/corpus/{target}/ has no seed-* inputs; run write_seed_corpus"
    );
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| fuzz_targets::run(target, &data));
        let accepted = match outcome {
            Ok(Some(accepted)) => accepted,
            Ok(None) => panic!("{target} is not a fuzz target"),
            Err(_) => panic!("{target} panics on {}", path.display()),
        };
        if is_seed(path) {
            assert!(
                accepted,
                "the seed {} is no longer accepted by {target}: the format changed; run \
                 write_seed_corpus to make new seeds",
                path.display()
            );
        }
    }
}

fn is_seed(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("seed-"))
}

#[test]
fn every_target_has_a_corpus_and_a_binary() {
    for target in TARGETS {
        assert!(
            fuzz_dir().join("corpus").join(target).is_dir(),
            "fuzz/corpus/{target}/ is missing"
        );
        assert!(
            fuzz_dir()
                .join("src/bin")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz/src/bin/{target}.rs is missing"
        );
    }
}

#[test]
fn peer_envelope_corpus() {
    replay("peer_envelope");
}

#[test]
fn round_message_corpus() {
    replay("round_message");
}

#[test]
fn cert_binding_corpus() {
    replay("cert_binding");
}

#[test]
fn peer_certificate_corpus() {
    replay("peer_certificate");
}

#[test]
fn keystore_file_corpus() {
    replay("keystore_file");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn stacks_transaction_corpus() {
    replay("stacks_transaction");
}

// ---------------------------------------------------------------------------------------------
// Writing the seeds.

fn label(s: &str) -> KeyLabel {
    KeyLabel::new(s).unwrap()
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    // On a thread of its own: the keystore target runs a runtime, and this test is inside one.
    let accepted = std::thread::scope(|s| {
        s.spawn(|| fuzz_targets::run(target, bytes).unwrap())
            .join()
            .unwrap()
    });
    assert!(accepted, "{target} refuses its own seed {name}");
}

/// Keeps every message a signer sends.
struct Recording<T> {
    inner: T,
    log: Arc<Mutex<Vec<RoundMessage>>>,
}

#[async_trait]
impl<T: Transport + Sync> Transport for Recording<T> {
    fn me(&self) -> SignerIndex {
        self.inner.me()
    }

    async fn send(&self, to: SignerIndex, msg: Arc<RoundMessage>) -> Result<(), TransportError> {
        self.log.lock().unwrap().push((*msg).clone());
        self.inner.send(to, msg).await
    }

    async fn broadcast(&self, msg: Arc<RoundMessage>) -> Vec<SignerIndex> {
        self.log.lock().unwrap().push((*msg).clone());
        self.inner.broadcast(msg).await
    }

    async fn recv(&mut self) -> Option<Envelope> {
        self.inner.recv().await
    }
}

/// A short name for a round message: its kind, and the WSTS variant for DKG messages.
fn name_of(msg: &RoundMessage) -> String {
    match msg {
        RoundMessage::Dkg(m) => {
            let variant = format!("{m:?}");
            let variant = variant.split('(').next().unwrap_or("dkg").to_owned();
            format!("dkg-{}", variant.to_lowercase())
        }
        other => other.kind().replace('_', "-"),
    }
}

fn tip() -> ChainTip {
    ChainTip {
        height: 840_000,
        block_hash: Bytes::from_static(&[0x5a; 32]),
    }
}

/// A statement envelope signed with the fuzz sender's key, as `message::signed` makes them.
fn statement(kind: StatementKind, round_id: [u8; 32], payload: Bytes) -> Vec<u8> {
    let digest = message::statement_digest(kind, &tip(), &round_id, &payload);
    let sk = secp256k1::SecretKey::from_slice(&SENDER_SECRET).unwrap();
    let sig =
        secp256k1::SECP256K1.sign_ecdsa_recoverable(&secp256k1::Message::from_digest(digest), &sk);
    let statement = message::Statement {
        payload,
        signature: Bytes::copy_from_slice(&RecoverableSignature::from_secp256k1(&sig).to_rsv()),
    };
    let body = match kind {
        StatementKind::Proposal => Body::Proposal(statement),
        StatementKind::Ack => Body::Ack(statement),
        StatementKind::Decision => Body::Decision(statement),
        StatementKind::Votes => Body::Votes(statement),
    };
    message::encode(&message::Envelope {
        version: message::VERSION,
        chain_tip: Some(tip()),
        round_id: Bytes::copy_from_slice(&round_id),
        body: Some(body),
    })
    .to_vec()
}

async fn keystore(
    dir: &Path,
    name: &str,
    kinds: &[(&str, KeyKind)],
) -> (PathBuf, Arc<dyn Custody>) {
    let path = dir.join(format!("{name}.json"));
    let ks = Keystore::create_with_passphrase(
        &path,
        &SecretString::new(KEYSTORE_PASSPHRASE.to_owned()),
        KdfParams::insecure_for_tests(),
    )
    .await
    .unwrap();
    for (l, kind) in kinds {
        ks.generate(&label(l), *kind).await.unwrap();
    }
    (path, Arc::new(ks))
}

/// Writes the seed corpus of every target from real values. Run by hand after a format change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand after a format change"]
async fn write_seed_corpus() {
    let dir = tempfile::TempDir::new().unwrap();
    let roles = [
        ("identity", KeyKind::Secp256k1),
        ("tls", KeyKind::P256),
        ("seal", KeyKind::Seal),
    ];

    // Keystore files: an empty one and one with a key of each kind.
    let (empty, _) = keystore(dir.path(), "empty", &[]).await;
    write_seed(
        "keystore_file",
        "empty.json",
        &std::fs::read(&empty).unwrap(),
    );
    let mut custodies = Vec::new();
    for i in 0..3 {
        let (path, custody) = keystore(dir.path(), &format!("signer-{i}"), &roles).await;
        if i == 0 {
            write_seed(
                "keystore_file",
                "three-keys.json",
                &std::fs::read(&path).unwrap(),
            );
        }
        custodies.push(custody);
    }

    // A peer certificate from the first keystore, and its binding with what it signs.
    let peer = cert::generate(
        &custodies[0],
        &label("tls"),
        &label("identity"),
        Duration::from_secs(30 * 86_400),
    )
    .await
    .unwrap();
    let der = peer.der().as_ref().to_vec();
    write_seed("peer_certificate", "cert.der", &der);
    let info = peer.info();
    let mut ext = vec![0x04, 99, 1];
    ext.extend_from_slice(&info.identity.serialize());
    let at = der
        .windows(ext.len())
        .position(|w| w == ext.as_slice())
        .expect("the certificate carries its binding");
    let mut binding = der[at..at + 101].to_vec();
    binding.extend_from_slice(&info.spki_der);
    binding.extend_from_slice(&info.not_before.to_be_bytes());
    binding.extend_from_slice(&info.not_after.to_be_bytes());
    write_seed("cert_binding", "binding-spki-validity", &binding);

    // Round messages of a real DKG (N=3, threshold 2), its verification and a signing batch.
    let cluster = LocalCluster::new(
        custodies,
        &label("identity"),
        &label("seal"),
        2,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let record = |transports: Vec<_>| {
        transports
            .into_iter()
            .map(|inner| Recording {
                inner,
                log: log.clone(),
            })
            .collect::<Vec<_>>()
    };
    let coordinator = 0;
    let mut tasks = Vec::new();
    for (signer, mut transport) in cluster.signers.iter().zip(record(cluster.network().0)) {
        let ctx = signer.ctx.clone();
        tasks.push(tokio::spawn(async move {
            run_dkg(&ctx, &mut transport, DkgId(1), coordinator).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    let ledgers = (0..3)
        .map(|_| Arc::new(InMemoryNonceLedger::default()) as Arc<dyn NonceLedger>)
        .collect();
    let approvers = (0..3)
        .map(|_| Arc::new(ApproveAll) as Arc<dyn Approver>)
        .collect();
    let signers = cluster.batch_signers(coordinator, &outcomes, ledgers, approvers);
    let mut own: Option<(BatchSigner, _)> = None;
    let mut servers = Vec::new();
    for (mut signer, mut transport) in signers.into_iter().zip(record(cluster.network().0)) {
        if signer.me() == coordinator {
            own = Some((signer, transport));
        } else {
            servers.push(tokio::spawn(async move {
                signer.serve(&mut transport).await;
            }));
        }
    }
    let (mut own, mut transport) = own.unwrap();
    let coord =
        BatchCoordinator::new(cluster.signers[0].ctx.clone(), own.public().clone()).unwrap();
    assert_eq!(
        verify_dkg(&coord, &mut own, &mut transport)
            .await
            .unwrap()
            .verdict,
        DkgVerification::Verified
    );
    let requests = [
        SpendKind::KeySpend { merkle_root: None },
        SpendKind::KeySpend {
            merkle_root: Some([0xee; 32]),
        },
        SpendKind::ScriptPath,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, kind)| SighashRequest {
        sighash: [i as u8 + 1; 32],
        kind,
    })
    .collect::<Vec<_>>();
    coord
        .sign(
            &mut own,
            &mut transport,
            &requests,
            Participation::Threshold,
        )
        .await
        .unwrap();
    coord.finish(&mut transport).await;
    for s in servers {
        s.await.unwrap();
    }

    let mut seen = std::collections::HashMap::<String, usize>::new();
    let messages = log.lock().unwrap().clone();
    for msg in messages {
        let name = name_of(&msg);
        let n = seen.entry(name.clone()).or_default();
        *n += 1;
        if *n > 2 {
            continue;
        }
        let body = wire::encode_round(&msg).unwrap();
        write_seed(
            "round_message",
            &format!("{name}-{n}"),
            &wire::encode_round_bytes(&msg).unwrap(),
        );
        let env = message::round(tip(), [*n as u8; 32], body);
        write_seed(
            "peer_envelope",
            &format!("round-{name}-{n}"),
            &message::encode(&env),
        );
    }
    let refusal = RoundMessage::Refusal {
        round: [3; 32],
        reason: "not approved".into(),
    };
    write_seed(
        "round_message",
        "refusal",
        &wire::encode_round_bytes(&refusal).unwrap(),
    );

    // Decision statements, and a proposal and an ack.
    let aggregate = outcomes[0].public.aggregate_public_key().unwrap();
    let verified = DkgDecision {
        aggregate_key: hex::encode(aggregate.serialize()),
        verified: true,
        detail: None,
        // A seed needs the field's shape, not a signature that verifies.
        signature: Some(vec![0x5a; 64]),
    };
    let failed = DkgDecision {
        verified: false,
        detail: Some("signer 2 sent a bad share".into()),
        signature: None,
        ..verified.clone()
    };
    for (name, d) in [("verified", &verified), ("failed", &failed)] {
        let payload = d.to_bytes().unwrap();
        write_seed("round_message", &format!("decision-{name}"), &payload);
        write_seed(
            "peer_envelope",
            &format!("decision-{name}"),
            &statement(StatementKind::Decision, [9; 32], payload),
        );
    }
    write_seed(
        "peer_envelope",
        "proposal",
        &statement(
            StatementKind::Proposal,
            [10; 32],
            Bytes::from_static(b"proposal"),
        ),
    );
    write_seed(
        "peer_envelope",
        "ack",
        &statement(StatementKind::Ack, [10; 32], Bytes::from_static(b"ack")),
    );

    write_stacks_seeds();

    // The example configs.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(configs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            write_seed("config", &name, &std::fs::read(&path).unwrap());
        }
    }
}

/// Stacks transactions: the signers' calls, the two batch calls among them, from a 2-of-3 account
/// (one unsigned, the rest signed), a single-signature deploy and a call with a post condition.
#[test]
#[ignore]
fn write_stacks_seeds() {
    use bitcoin::hashes::Hash as _;
    use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
    use sbtc_hsm_signer::chain::stacks::{
        address::{Principal, StacksNetwork},
        contracts::{
            AcceptWithdrawal, CompleteDeposit, RejectWithdrawal, RotateKeys, SignerCall,
            WithdrawalOutcome,
        },
        multisig::SignerAccount,
        transaction::{
            singlesig_signer_hash, Payload, PostCondition, SinglesigCondition, SmartContract,
            SpendingCondition, StacksTransaction,
        },
    };
    let secp = Secp256k1::new();
    let secrets: Vec<SecretKey> = (1..=3u8)
        .map(|i| SecretKey::from_slice(&[i; 32]).unwrap())
        .collect();
    let keys: Vec<_> = secrets.iter().map(|s| s.public_key(&secp)).collect();
    let account = SignerAccount::new(keys.clone(), 2).unwrap();
    let deployer = account.principal(StacksNetwork::Testnet);
    let vrs = |digest: [u8; 32], s: &SecretKey| {
        RecoverableSignature::from_secp256k1(
            &secp.sign_ecdsa_recoverable(&Message::from_digest(digest), s),
        )
        .to_vrs()
    };
    let deposit = |vout: u32| CompleteDeposit {
        outpoint: bitcoin::OutPoint::new(bitcoin::Txid::from_byte_array([1; 32]), vout),
        amount: 99_000,
        recipient: Principal::Standard {
            version: 26,
            hash160: [5; 20],
        },
        burn_hash: bitcoin::BlockHash::from_byte_array([2; 32]),
        burn_height: 120,
        sweep_txid: bitcoin::Txid::from_byte_array([3; 32]),
    };
    let calls = [
        SignerCall::CompleteDeposit(deposit(0)),
        SignerCall::RejectWithdrawal(RejectWithdrawal {
            request_id: 4,
            signer_bitmap: 0b10,
        }),
        SignerCall::RotateKeys(RotateKeys::new(keys.clone(), keys[0], 2)),
        SignerCall::CompleteDeposits(vec![deposit(0), deposit(1)]),
        SignerCall::CompleteWithdrawals(vec![
            WithdrawalOutcome::Accept(AcceptWithdrawal {
                request_id: 3,
                bitcoin_txid: bitcoin::Txid::from_byte_array([3; 32]),
                signer_bitmap: 0b01,
                output_index: 2,
                fee: 700,
                burn_hash: bitcoin::BlockHash::from_byte_array([2; 32]),
                burn_height: 120,
                sweep_txid: bitcoin::Txid::from_byte_array([3; 32]),
            }),
            WithdrawalOutcome::Reject(RejectWithdrawal {
                request_id: 4,
                signer_bitmap: 0b10,
            }),
        ]),
    ];
    for (i, call) in calls.iter().enumerate() {
        let tx = account.unsigned_call(
            StacksNetwork::Testnet,
            i as u64,
            1_000,
            call.to_contract_call(&deployer),
        );
        let name = call.function_name();
        if i == 0 {
            write_seed(
                "stacks_transaction",
                &format!("{name}-unsigned"),
                &tx.serialize(),
            );
        }
        let d = tx.presign_sighash();
        let signed = account
            .assemble(&tx, &[vrs(d, &secrets[0]), vrs(d, &secrets[2])])
            .unwrap();
        write_seed("stacks_transaction", name, &signed.serialize());
    }
    let user = &secrets[1];
    let mut deploy = StacksTransaction {
        network: StacksNetwork::Testnet,
        auth: SpendingCondition::Singlesig(SinglesigCondition {
            signer: singlesig_signer_hash(&user.public_key(&secp)),
            nonce: 0,
            fee: 500,
            signature: [0; 65],
        }),
        anchor_mode: 3,
        post_condition_mode: sbtc_hsm_signer::chain::stacks::transaction::PostConditionMode::Deny,
        post_conditions: Vec::new(),
        payload: Payload::SmartContract(SmartContract {
            name: "hello".into(),
            code_body: "(define-read-only (hi) u1)".into(),
            clarity_version: Some(3),
        }),
    };
    let sig = vrs(deploy.presign_sighash(), user);
    if let SpendingCondition::Singlesig(c) = &mut deploy.auth {
        c.signature = sig;
    }
    write_seed("stacks_transaction", "deploy", &deploy.serialize());
    let mut pc = vec![0x01, 0x02, 26];
    pc.extend_from_slice(&[9; 20]);
    pc.push(26);
    pc.extend_from_slice(&[4; 20]);
    pc.push(10);
    pc.extend_from_slice(b"sbtc-token");
    pc.push(4);
    pc.extend_from_slice(b"sbtc");
    pc.push(0x05);
    pc.extend_from_slice(&5u64.to_be_bytes());
    let mut with_pc = account.unsigned_call(
        StacksNetwork::Testnet,
        9,
        1_000,
        calls[1].to_contract_call(&deployer),
    );
    with_pc.post_conditions = vec![PostCondition(pc)];
    write_seed("stacks_transaction", "post-condition", &with_pc.serialize());
}
