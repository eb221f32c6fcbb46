//! Threshold signing end to end, in one process: N=5 signers with threshold 4 over the in-process
//! transport, each with custody of its own from a mixed set (keystores, SoftHSM2 tokens and
//! YubiHSM2 MockHsms).

mod common;

use bitcoin::hashes::Hash as _;
use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use sbtc_custody::{Custody, ErrorKind, KeyKind, KeyLabel};
use sbtc_hsm_signer::signing::{
    signing_key, ApproveAll, ApproveListed, Approver, BatchCoordinator, BatchNonceRequest,
    BatchShareRequest, BatchSigner, DkgId, DkgOutcome, DkgVerification, FileNonceLedger,
    InMemoryNonceLedger, InProcessTransport, LocalCluster, MockKeySpend, NonceLedger,
    Participation, RoundId, RoundMessage, SighashRequest, SignerSet, SigningError, SpendKind,
    Transport, TransportKey, TransportKeyEndorsement,
};
use sbtc_hsm_signer::{coordination::wire, keys::AuditedCustody};
use tempfile::TempDir;

const N: usize = 5;
const T: u32 = 4;
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn identity() -> KeyLabel {
    KeyLabel::new("identity").unwrap()
}
fn seal() -> KeyLabel {
    KeyLabel::new("seal").unwrap()
}

struct Fixture {
    _dir: TempDir,
    cluster: LocalCluster,
    outcomes: Vec<DkgOutcome>,
    coordinator: u32,
}

/// The signers' custody: the three backends in turn, each with an identity and a seal key.
async fn mixed_custodies(dir: &TempDir, n: usize) -> Vec<Arc<dyn Custody>> {
    let custodies = common::mixed(dir.path(), n).await;
    for c in &custodies {
        c.generate(&seal(), KeyKind::Seal).await.unwrap();
    }
    custodies
}

async fn fixture() -> Fixture {
    let dir = TempDir::new().unwrap();
    let custodies = mixed_custodies(&dir, N).await;
    let cluster = LocalCluster::new(custodies, &identity(), &seal(), T, Duration::from_secs(10))
        .await
        .unwrap();
    let coordinator = cluster
        .set
        .coordinator_for(&bitcoin::BlockHash::from_byte_array([7u8; 32]));
    let outcomes = cluster.run_dkg(DkgId(1), coordinator).await.unwrap();
    Fixture {
        _dir: dir,
        cluster,
        outcomes,
        coordinator,
    }
}

fn memory_ledgers(n: usize) -> Vec<Arc<dyn NonceLedger>> {
    (0..n)
        .map(|_| Arc::new(InMemoryNonceLedger::default()) as Arc<dyn NonceLedger>)
        .collect()
}

fn approve_all(n: usize) -> Vec<Arc<dyn Approver>> {
    (0..n)
        .map(|_| Arc::new(ApproveAll) as Arc<dyn Approver>)
        .collect()
}

fn mixed_requests(count: usize) -> Vec<SighashRequest> {
    (0..count)
        .map(|i| {
            let mut sighash = [0u8; 32];
            sighash[..8].copy_from_slice(&(i as u64).to_be_bytes());
            sighash[31] = 0xa5;
            SighashRequest {
                sighash,
                kind: if i % 2 == 0 {
                    SpendKind::KeySpend { merkle_root: None }
                } else {
                    SpendKind::ScriptPath
                },
            }
        })
        .collect()
}

type Server = tokio::task::JoinHandle<(BatchSigner, InProcessTransport)>;

/// Starts every signer except the coordinator (and except `skip`) serving requests.
fn serve_all(
    signers: Vec<BatchSigner>,
    transports: Vec<InProcessTransport>,
    coordinator: u32,
    skip: &[u32],
) -> (Option<(BatchSigner, InProcessTransport)>, Vec<Server>) {
    let mut own = None;
    let mut servers = Vec::new();
    for (mut signer, mut transport) in signers.into_iter().zip(transports) {
        let me = signer.me();
        if me == coordinator {
            own = Some((signer, transport));
        } else if skip.contains(&me) {
            drop((signer, transport)); // down: its inbox is gone
        } else {
            servers.push(tokio::spawn(async move {
                signer.serve(&mut transport).await;
                (signer, transport)
            }));
        }
    }
    (own, servers)
}

fn check_signatures(
    aggregate: &secp256k1::PublicKey,
    requests: &[SighashRequest],
    got: &sbtc_hsm_signer::signing::BatchSignatures,
) {
    use bitcoin::key::TapTweak;
    let secp = secp256k1::Secp256k1::new();
    assert_eq!(got.signatures.len(), requests.len());
    let internal = aggregate.x_only_public_key().0;
    let tweaked = internal.tap_tweak(&secp, None).0.to_x_only_public_key();
    for (req, signed) in requests.iter().zip(&got.signatures) {
        assert_eq!(&signed.request, req);
        // Independent of our code: the x-only key for script paths, rust-bitcoin's BIP-341
        // tweak for key spends.
        let key = match req.kind {
            SpendKind::ScriptPath => internal,
            SpendKind::KeySpend { .. } => tweaked,
        };
        assert_eq!(key, signing_key(aggregate, req.kind));
        secp.verify_schnorr(
            &signed.signature,
            &secp256k1::Message::from_digest(req.sighash),
            &key,
        )
        .expect("signature verifies under the expected key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkg_gives_every_signer_the_same_key_and_verification_passes_bitcoinconsensus() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let first = &f.outcomes[0].public;
        for (i, o) in f.outcomes.iter().enumerate() {
            assert_eq!(
                o.public, *first,
                "signer {i} disagrees on the public shares"
            );
            assert_eq!(o.sealed.signer, i as u32);
            assert_eq!(o.sealed.aggregate_key, f.outcomes[0].sealed.aggregate_key);
        }
        assert_eq!(first.commitments.len(), N);
        let aggregate = first.aggregate_public_key().unwrap();

        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[]);
        let (mut own, mut transport) = own.unwrap();
        let coord = BatchCoordinator::new(
            f.cluster.signers[f.coordinator as usize].ctx.clone(),
            own.public().clone(),
        )
        .unwrap();
        let result = sbtc_hsm_signer::signing::verify_dkg(&coord, &mut own, &mut transport)
            .await
            .unwrap();
        assert_eq!(result.verdict, DkgVerification::Verified);
        assert!(result.excluded.is_empty(), "{:?}", result.excluded);
        // What every other signer runs on the decision it is sent: its own script-verifier check.
        let key = own.public().aggregate_public_key().unwrap();
        let sig = result.signature.unwrap().serialize();
        assert_eq!(
            sbtc_hsm_signer::signing::check_verification(DkgId(1), &key, Some(&sig)),
            DkgVerification::Verified
        );
        let mut forged = sig;
        forged[40] ^= 1;
        assert!(matches!(
            sbtc_hsm_signer::signing::check_verification(DkgId(1), &key, Some(&forged)),
            DkgVerification::Failed(_)
        ));
        assert!(matches!(
            sbtc_hsm_signer::signing::check_verification(DkgId(1), &key, None),
            DkgVerification::Failed(_)
        ));
        // The decision a follower gets: "verified" counts only with a signature that passes its
        // own script-verifier run; a forged one (none, altered, or another DKG's) is not taken.
        use sbtc_hsm_signer::coordination::{DecisionVerdict, DkgDecision};
        let decision = |verified: bool, signature: Option<Vec<u8>>| DkgDecision {
            aggregate_key: hex::encode(key.serialize()),
            verified,
            detail: None,
            signature,
        };
        assert_eq!(
            decision(true, Some(sig.to_vec())).judge(DkgId(1), &key),
            DecisionVerdict::Verified
        );
        for forged in [None, Some(forged.to_vec())] {
            assert!(matches!(
                decision(true, forged).judge(DkgId(1), &key),
                DecisionVerdict::Forged(_)
            ));
        }
        assert!(matches!(
            decision(true, Some(sig.to_vec())).judge(DkgId(2), &key),
            DecisionVerdict::Forged(_)
        ));
        assert_eq!(
            decision(false, None).judge(DkgId(1), &key),
            DecisionVerdict::Failed(None)
        );
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }

        // The verifier is real: a signature over another message is rejected.
        let spend = MockKeySpend::new(DkgId(1), &aggregate);
        let secp = secp256k1::Secp256k1::new();
        let stranger = secp256k1::Keypair::new(&secp, &mut rand::thread_rng());
        let wrong = secp.sign_schnorr(
            &secp256k1::Message::from_digest(spend.request().unwrap().sighash),
            &stranger,
        );
        assert!(matches!(spend.check(&wrong), DkgVerification::Failed(_)));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_passes_with_a_threshold_when_a_signer_is_down_and_fails_below_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let down = (f.coordinator + 1) % N as u32;
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[down]);
        let (mut own, mut transport) = own.unwrap();
        let coord = BatchCoordinator::new(
            f.cluster.signers[f.coordinator as usize].ctx.clone(),
            own.public().clone(),
        )
        .unwrap();
        let result = sbtc_hsm_signer::signing::verify_dkg(&coord, &mut own, &mut transport)
            .await
            .unwrap();
        // One signer down does not fail a good key: 4 of 5 is the threshold.
        assert_eq!(result.verdict, DkgVerification::Verified, "{result:?}");
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }

        // Two down: below the threshold, the key is not verified.
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let also_down = (f.coordinator + 2) % N as u32;
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[down, also_down]);
        let (mut own, mut transport) = own.unwrap();
        let result = sbtc_hsm_signer::signing::verify_dkg(&coord, &mut own, &mut transport)
            .await
            .unwrap();
        assert!(
            matches!(result.verdict, DkgVerification::Failed(_)),
            "{result:?}"
        );
        assert!(result.signature.is_none());
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mixed_sighashes_take_one_nonce_and_one_share_exchange() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let aggregate = f.outcomes[0].public.aggregate_public_key().unwrap();
        let (transports, counts) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[]);
        let (mut own, mut transport) = own.unwrap();
        let coord = BatchCoordinator::new(
            f.cluster.signers[f.coordinator as usize].ctx.clone(),
            own.public().clone(),
        )
        .unwrap();
        let requests = mixed_requests(50);
        let got = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap();
        check_signatures(&aggregate, &requests, &got);
        assert_eq!(got.rounds, 1);
        assert!(got.excluded.is_empty());
        // One nonce exchange and one share exchange for all 50: one request each way, one
        // answer from each of the other four signers.
        assert_eq!(counts.broadcast("nonce_request"), 1);
        assert_eq!(counts.broadcast("share_request"), 1);
        assert_eq!(counts.sent("nonce_response"), (N - 1) as u64);
        assert_eq!(counts.sent("share_response"), (N - 1) as u64);
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_succeeds_with_one_signer_down_and_fails_below_threshold() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let aggregate = f.outcomes[0].public.aggregate_public_key().unwrap();
        let requests = mixed_requests(6);
        let others: Vec<u32> = (0..N as u32).filter(|i| *i != f.coordinator).collect();

        // One down: 4 of 5 is the threshold.
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let (own, servers) = serve_all(signers, transports, f.coordinator, &others[..1]);
        let (mut own, mut transport) = own.unwrap();
        let ctx = f.cluster.signers[f.coordinator as usize].ctx.clone();
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        let got = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap();
        check_signatures(&aggregate, &requests, &got);
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }

        // Two down: 3 < 4, no signature.
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let (own, servers) = serve_all(signers, transports, f.coordinator, &others[..2]);
        let (mut own, mut transport) = own.unwrap();
        let err = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, SigningError::InsufficientSigners(_)), "{err}");
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_sending_a_bad_share_is_named_excluded_and_the_batch_retried() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let aggregate = f.outcomes[0].public.aggregate_public_key().unwrap();
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let liar = (f.coordinator + 2) % N as u32;
        let mut own = None;
        let mut servers = Vec::new();
        for (mut signer, mut transport) in signers.into_iter().zip(transports) {
            let me = signer.me();
            if me == f.coordinator {
                own = Some((signer, transport));
            } else if me == liar {
                servers.push(tokio::spawn(async move {
                    while let Some(env) = transport.recv().await {
                        if matches!(env.msg.as_ref(), RoundMessage::Done) {
                            break;
                        }
                        if let Some(mut reply) = signer.handle(env.from, &env.msg).await {
                            if let RoundMessage::ShareResponse(r) = &mut reply {
                                for z in r.shares.iter_mut().flatten() {
                                    *z += wsts::curve::scalar::Scalar::from(1u32);
                                }
                            }
                            let _ = transport.send(env.from, Arc::new(reply)).await;
                        }
                    }
                    (signer, transport)
                }));
            } else {
                servers.push(tokio::spawn(async move {
                    signer.serve(&mut transport).await;
                    (signer, transport)
                }));
            }
        }
        let (mut own, mut transport) = own.unwrap();
        let ctx = f.cluster.signers[f.coordinator as usize].ctx.clone();
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        let requests = mixed_requests(10);
        let got = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap();
        check_signatures(&aggregate, &requests, &got);
        assert_eq!(got.rounds, 2, "one retry after excluding the liar");
        assert_eq!(got.excluded.len(), 1);
        assert_eq!(got.excluded[0].signer, liar);
        assert!(got.excluded[0].reason.contains("invalid signature share"));
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

/// An approval is for the sighash under one spend kind and tweak: the same sighash asked for
/// as a script-path spend, or as a key spend under another merkle root, would give a signature
/// under a key the signer never agreed to, so it gets no nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_sighash_under_another_spend_kind_or_tweak_is_refused() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let approved = SighashRequest {
            sighash: [42u8; 32],
            kind: SpendKind::KeySpend { merkle_root: None },
        };
        let picky = (f.coordinator + 1) % N as u32;
        let mut approvers = approve_all(N);
        approvers[picky as usize] = Arc::new(ApproveListed([approved].into()));
        let mut signers =
            f.cluster
                .batch_signers(f.coordinator, &f.outcomes, memory_ledgers(N), approvers);
        let signer = &mut signers[picky as usize];
        let variants = [
            SighashRequest {
                kind: SpendKind::ScriptPath,
                ..approved
            },
            SighashRequest {
                kind: SpendKind::KeySpend {
                    merkle_root: Some([7u8; 32]),
                },
                ..approved
            },
        ];
        for other in variants {
            let reply = signer
                .handle(
                    f.coordinator,
                    &RoundMessage::NonceRequest(BatchNonceRequest {
                        dkg_id: DkgId(1),
                        round: RoundId::random(),
                        sighashes: vec![other],
                    }),
                )
                .await;
            assert!(
                matches!(&reply, Some(RoundMessage::Refusal { reason, .. }) if reason.contains("approves none")),
                "{other:?} must be refused: {reply:?}"
            );
        }
        // The approved request itself still gets a nonce.
        let reply = signer
            .handle(
                f.coordinator,
                &RoundMessage::NonceRequest(BatchNonceRequest {
                    dkg_id: DkgId(1),
                    round: RoundId::random(),
                    sighashes: vec![approved],
                }),
            )
            .await;
        assert!(
            matches!(&reply, Some(RoundMessage::NonceResponse(r)) if r.nonces[0].is_some()),
            "{reply:?}"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_contributes_only_to_sighashes_it_approved() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let requests = mixed_requests(3);
        let approved: HashSet<SighashRequest> = [requests[0], requests[2]].into();
        let picky = (f.coordinator + 1) % N as u32;
        let mut approvers = approve_all(N);
        approvers[picky as usize] = Arc::new(ApproveListed(approved.clone()));

        // Directly: no nonce for the unapproved sighash, and a refusal when none is approved.
        let mut signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approvers.clone(),
        );
        let signer = &mut signers[picky as usize];
        let reply = signer
            .handle(
                f.coordinator,
                &RoundMessage::NonceRequest(BatchNonceRequest {
                    dkg_id: DkgId(1),
                    round: RoundId::random(),
                    sighashes: requests.clone(),
                }),
            )
            .await;
        let Some(RoundMessage::NonceResponse(r)) = reply else {
            panic!("expected nonces, got {reply:?}");
        };
        assert!(r.nonces[0].is_some() && r.nonces[1].is_none() && r.nonces[2].is_some());
        let reply = signer
            .handle(
                f.coordinator,
                &RoundMessage::NonceRequest(BatchNonceRequest {
                    dkg_id: DkgId(1),
                    round: RoundId::random(),
                    sighashes: vec![requests[1]],
                }),
            )
            .await;
        assert!(
            matches!(reply, Some(RoundMessage::Refusal { .. })),
            "{reply:?}"
        );

        // In a batch: the others still reach the threshold for the unapproved sighash...
        let aggregate = f.outcomes[0].public.aggregate_public_key().unwrap();
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approvers.clone(),
        );
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[]);
        let (mut own, mut transport) = own.unwrap();
        let ctx = f.cluster.signers[f.coordinator as usize].ctx.clone();
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        let got = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap();
        check_signatures(&aggregate, &requests, &got);
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }

        // ...but with two signers refusing it, it cannot be signed.
        let second = (f.coordinator + 2) % N as u32;
        approvers[second as usize] = Arc::new(ApproveListed(approved));
        let (transports, _) = f.cluster.network();
        let signers =
            f.cluster
                .batch_signers(f.coordinator, &f.outcomes, memory_ledgers(N), approvers);
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[]);
        let (mut own, mut transport) = own.unwrap();
        let err = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("sighash 1"), "{err}");
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_restarted_between_nonces_and_shares_never_reuses_its_nonces() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let dir = TempDir::new().unwrap();
        let victim = (f.coordinator + 1) % N as u32;
        let ledger_path = dir.path().join("nonces.ledger");
        let mut ledgers = memory_ledgers(N);
        ledgers[victim as usize] = Arc::new(FileNonceLedger::open(&ledger_path).unwrap());
        let mut signers = f
            .cluster
            .batch_signers(f.coordinator, &f.outcomes, ledgers, approve_all(N));
        let requests = mixed_requests(4);
        let round = RoundId::random();
        let nonce_request = RoundMessage::NonceRequest(BatchNonceRequest {
            dkg_id: DkgId(1),
            round,
            sighashes: requests.clone(),
        });

        // Nonce phase: every signer answers; the victim's ledger is on disk before its nonces
        // are returned.
        let mut responses = Vec::new();
        for s in signers.iter_mut() {
            match s.handle(f.coordinator, &nonce_request).await {
                Some(RoundMessage::NonceResponse(r)) => responses.push(r),
                other => panic!("expected nonces, got {other:?}"),
            }
        }
        let on_disk = FileNonceLedger::open(&ledger_path).unwrap();
        assert!(on_disk.contains(&round).await.unwrap());

        // The victim is killed and restarted: same sealed shares, same ledger file, no memory.
        let old = signers.remove(victim as usize);
        drop(old);
        let outcome = &f.outcomes[victim as usize];
        let mut restarted = BatchSigner::new(
            f.cluster.signers[victim as usize].ctx.clone(),
            Arc::new(outcome.public.clone()),
            outcome.sealed.clone(),
            Arc::new(FileNonceLedger::open(&ledger_path).unwrap()),
            Arc::new(ApproveAll),
            f.coordinator,
        );
        let share_request = RoundMessage::ShareRequest(BatchShareRequest {
            dkg_id: DkgId(1),
            round,
            sighashes: requests.clone(),
            nonce_responses: responses,
        });
        let reply = restarted.handle(f.coordinator, &share_request).await;
        assert!(
            matches!(&reply, Some(RoundMessage::Refusal { reason, .. }) if reason.contains("fresh nonce round")),
            "restarted signer must not sign the old round: {reply:?}"
        );
        // Asking it for nonces for the same round again is refused too.
        let reply = restarted.handle(f.coordinator, &nonce_request).await;
        assert!(
            matches!(&reply, Some(RoundMessage::Refusal { reason, .. }) if reason.contains("issued before")),
            "{reply:?}"
        );
        // A fresh round works: the coordinator signs the batch with the restarted signer in it.
        signers.insert(victim as usize, restarted);
        let (transports, _) = f.cluster.network();
        let (own, servers) = serve_all(signers, transports, f.coordinator, &[]);
        let (mut own, mut transport) = own.unwrap();
        let ctx = f.cluster.signers[f.coordinator as usize].ctx.clone();
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        let got = coord
            .sign(&mut own, &mut transport, &requests, Participation::All)
            .await
            .unwrap();
        let aggregate = f.outcomes[0].public.aggregate_public_key().unwrap();
        check_signatures(&aggregate, &requests, &got);
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_shares_round_trip_through_custody_and_hide_the_plaintext() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        for (i, o) in f.outcomes.iter().enumerate() {
            let ctx = &f.cluster.signers[i].ctx;
            let shares = o
                .sealed
                .unseal(ctx.custody.as_ref(), &ctx.seal_label)
                .await
                .unwrap();
            assert_eq!(shares.signer(), i as u32);
            assert_eq!(shares.aggregate_key(), o.public.aggregate_key);
            let plaintext = shares.expose_secret_bytes();
            // The secret scalar is the last 32 bytes of the plaintext; neither it nor any
            // 12-byte piece of it appears in the sealed form.
            let secret = &plaintext[plaintext.len() - 32..];
            assert!(secret.iter().any(|b| *b != 0));
            for w in secret.windows(12) {
                assert!(!o.sealed.blob.windows(12).any(|x| x == w));
            }
            assert!(format!("{shares:?}").contains("redacted"));
            // Bound to its DKG: the same blob under another DKG id does not unseal.
            let mut moved = o.sealed.clone();
            moved.dkg_id = DkgId(2);
            match moved.unseal(ctx.custody.as_ref(), &ctx.seal_label).await {
                Err(SigningError::Custody(e)) => assert_eq!(e.kind(), ErrorKind::Tampered),
                other => panic!("expected Tampered, got {other:?}"),
            }
            // And only its own custody can open it.
            let other = &f.cluster.signers[(i + 1) % N].ctx;
            match o
                .sealed
                .unseal(other.custody.as_ref(), &other.seal_label)
                .await
            {
                Err(SigningError::Custody(e)) => assert_eq!(e.kind(), ErrorKind::Tampered),
                other => panic!("expected Tampered from another signer's seal key, got {other:?}"),
            }
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dkg_with_a_signer_down_times_out_naming_it() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new().unwrap();
        let custodies = mixed_custodies(&dir, N).await;
        let cluster = LocalCluster::new(
            custodies,
            &identity(),
            &seal(),
            T,
            Duration::from_millis(800),
        )
        .await
        .unwrap();
        let coordinator = cluster
            .set
            .coordinator_for(&bitcoin::BlockHash::from_byte_array([3u8; 32]));
        let down = (coordinator + 1) % N as u32;
        let (transports, _) = cluster.network();
        let mut tasks = Vec::new();
        for (signer, mut transport) in cluster.signers.iter().zip(transports) {
            if signer.ctx.me == down {
                continue; // never starts; its inbox is dropped
            }
            let ctx = signer.ctx.clone();
            tasks.push(tokio::spawn(async move {
                sbtc_hsm_signer::signing::run_dkg(&ctx, &mut transport, DkgId(5), coordinator).await
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Err(SigningError::Timeout { missing, .. }) => assert!(missing.contains(&down)),
                other => panic!("expected a timeout naming signer {down}, got {other:?}"),
            }
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custody_calls_are_constant_per_dkg_and_per_batch_not_per_sighash() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new().unwrap();
        // The audit wrapper counts every private-key operation (no log needed to count).
        let counters: Vec<AuditedCustody> = mixed_custodies(&dir, N)
            .await
            .into_iter()
            .map(AuditedCustody::unrecorded)
            .collect();
        let custodies: Vec<Arc<dyn Custody>> = counters
            .iter()
            .map(|c| Arc::new(c.clone()) as Arc<dyn Custody>)
            .collect();
        let count = |c: &AuditedCustody, op: &str| c.counts()[op];
        let cluster =
            LocalCluster::new(custodies, &identity(), &seal(), T, Duration::from_secs(10))
                .await
                .unwrap();
        let coordinator = cluster
            .set
            .coordinator_for(&bitcoin::BlockHash::from_byte_array([4u8; 32]));
        let outcomes = cluster.run_dkg(DkgId(3), coordinator).await.unwrap();
        for c in &counters {
            assert_eq!(
                count(c, "sign_secp256k1_prehash"),
                1,
                "one endorsement per DKG"
            );
            assert_eq!(count(c, "seal"), 1, "one seal per DKG");
            assert_eq!(count(c, "unseal"), 0);
        }

        let (transports, _) = cluster.network();
        let signers =
            cluster.batch_signers(coordinator, &outcomes, memory_ledgers(N), approve_all(N));
        let (own, servers) = serve_all(signers, transports, coordinator, &[]);
        let (mut own, mut transport) = own.unwrap();
        let ctx = cluster.signers[coordinator as usize].ctx.clone();
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        let requests = mixed_requests(50);
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
        for c in &counters {
            assert_eq!(
                count(c, "sign_secp256k1_prehash"),
                1,
                "no signature per sighash"
            );
            assert_eq!(count(c, "unseal"), 1, "one unseal per batch");
        }
    })
    .await
    .expect("test finished in time");
}

/// One recorded message: its recipient (`None`: a broadcast), the message, and its wire bytes.
type Recorded = (Option<u32>, RoundMessage, Bytes);

/// Records every message a signer sends, as the peer links put it on the wire.
struct Recording {
    inner: InProcessTransport,
    wire: Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl Recording {
    fn record(&self, to: Option<u32>, msg: &RoundMessage) {
        let bytes = wire::encode_round_bytes(msg).expect("every round message encodes");
        self.wire.lock().unwrap().push((to, msg.clone(), bytes));
    }
}

#[async_trait::async_trait]
impl Transport for Recording {
    fn me(&self) -> u32 {
        self.inner.me()
    }
    async fn send(
        &self,
        to: u32,
        msg: Arc<RoundMessage>,
    ) -> Result<(), sbtc_hsm_signer::signing::TransportError> {
        self.record(Some(to), &msg);
        self.inner.send(to, msg).await
    }
    async fn broadcast(&self, msg: Arc<RoundMessage>) -> Vec<u32> {
        self.record(None, &msg);
        self.inner.broadcast(msg).await
    }
    async fn recv(&mut self) -> Option<sbtc_hsm_signer::signing::Envelope> {
        self.inner.recv().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_messages_survive_the_wire_and_private_shares_travel_encrypted() {
    tokio::time::timeout(TEST_LIMIT, async {
        let dir = TempDir::new().unwrap();
        let custodies = mixed_custodies(&dir, N).await;
        let cluster =
            LocalCluster::new(custodies, &identity(), &seal(), T, Duration::from_secs(10))
                .await
                .unwrap();
        let coordinator = cluster
            .set
            .coordinator_for(&bitcoin::BlockHash::from_byte_array([5u8; 32]));
        let wire = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (transports, _) = cluster.network();
        let mut tasks = Vec::new();
        for (signer, inner) in cluster.signers.iter().zip(transports) {
            let ctx = signer.ctx.clone();
            let mut transport = Recording {
                inner,
                wire: wire.clone(),
            };
            tasks.push(tokio::spawn(async move {
                sbtc_hsm_signer::signing::run_dkg(&ctx, &mut transport, DkgId(4), coordinator).await
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap().unwrap());
        }

        // A signing batch over the same recording links.
        let (transports, _) = cluster.network();
        let signers =
            cluster.batch_signers(coordinator, &outcomes, memory_ledgers(N), approve_all(N));
        let mut own = None;
        let mut servers = Vec::new();
        for (mut signer, inner) in signers.into_iter().zip(transports) {
            let mut transport = Recording {
                inner,
                wire: wire.clone(),
            };
            if signer.me() == coordinator {
                own = Some((signer, transport));
            } else {
                servers.push(tokio::spawn(async move {
                    signer.serve(&mut transport).await;
                }));
            }
        }
        let (mut own, mut transport) = own.unwrap();
        let ctx = cluster.signers[coordinator as usize].ctx.clone();
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        coord
            .sign(
                &mut own,
                &mut transport,
                &mixed_requests(4),
                Participation::Threshold,
            )
            .await
            .unwrap();
        coord.finish(&mut transport).await;
        for s in servers {
            s.await.unwrap();
        }

        let wire = wire.lock().unwrap().clone();
        let mut kinds = HashSet::new();
        let mut private_share_messages = 0;
        for (to, sent, bytes) in &wire {
            let msg = wire::decode_round_bytes(bytes.clone(), N).expect("decodes");
            kinds.insert(msg.kind());
            assert_eq!(&msg, sent, "round trip");
            if let RoundMessage::Dkg(wsts::net::Message::DkgPrivateShares(shares)) = msg {
                private_share_messages += 1;
                let to = to.expect("private shares go to one signer at a time");
                for (_, to_keys) in &shares.shares {
                    if to == coordinator {
                        // The coordinator judges complaints, so it sees every ciphertext.
                        assert_eq!(to_keys.len(), N, "a share for every key");
                    } else {
                        // Anyone else sees only the share encrypted to its own key.
                        let keys: Vec<u32> = to_keys.keys().copied().collect();
                        assert_eq!(keys, vec![to + 1], "only the recipient's share");
                    }
                    for ciphertext in to_keys.values() {
                        // AES-GCM: 12-byte nonce, 32-byte share, 16-byte tag.
                        assert_eq!(ciphertext.len(), 12 + 32 + 16);
                    }
                }
            }
        }
        assert_eq!(private_share_messages, N * (N - 1));
        for kind in [
            "transport_key",
            "dkg",
            "nonce_request",
            "nonce_response",
            "share_request",
            "share_response",
            "done",
        ] {
            assert!(kinds.contains(kind), "no {kind} message was checked");
        }

        // No signer's final secret appears anywhere on the wire.
        for (i, o) in outcomes.iter().enumerate() {
            let ctx = &cluster.signers[i].ctx;
            let shares = o
                .sealed
                .unseal(ctx.custody.as_ref(), &ctx.seal_label)
                .await
                .unwrap();
            let plain = shares.expose_secret_bytes();
            let secret = &plain[plain.len() - 32..];
            assert!(wire
                .iter()
                .all(|(_, _, bytes)| !bytes.windows(32).any(|w| w == secret)));
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_that_dies_after_sending_nonces_is_excluded_and_the_batch_retried() {
    tokio::time::timeout(TEST_LIMIT, async {
        let f = fixture().await;
        let aggregate = f.outcomes[0].public.aggregate_public_key().unwrap();
        let (transports, _) = f.cluster.network();
        let signers = f.cluster.batch_signers(
            f.coordinator,
            &f.outcomes,
            memory_ledgers(N),
            approve_all(N),
        );
        let dying = (f.coordinator + 3) % N as u32;
        let mut own = None;
        let mut servers = Vec::new();
        for (mut signer, mut transport) in signers.into_iter().zip(transports) {
            let me = signer.me();
            if me == f.coordinator {
                own = Some((signer, transport));
            } else if me == dying {
                // Answers the first nonce request, then hangs (link up, process gone).
                servers.push(tokio::spawn(async move {
                    while let Some(env) = transport.recv().await {
                        if let RoundMessage::NonceRequest(_) = env.msg.as_ref() {
                            if let Some(reply) = signer.handle(env.from, &env.msg).await {
                                let _ = transport.send(env.from, Arc::new(reply)).await;
                            }
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }));
            } else {
                servers.push(tokio::spawn(async move {
                    signer.serve(&mut transport).await;
                }));
            }
        }
        let (mut own, mut transport) = own.unwrap();
        let mut ctx = f.cluster.signers[f.coordinator as usize].ctx.clone();
        ctx.phase_timeout = Duration::from_millis(700);
        let coord = BatchCoordinator::new(ctx, own.public().clone()).unwrap();
        let requests = mixed_requests(8);
        let got = coord
            .sign(
                &mut own,
                &mut transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .unwrap();
        check_signatures(&aggregate, &requests, &got);
        assert_eq!(got.rounds, 2);
        assert_eq!(got.excluded.len(), 1);
        assert_eq!(got.excluded[0].signer, dying);
        assert!(
            got.excluded[0].reason.contains("no shares"),
            "{:?}",
            got.excluded
        );
        // One share-phase timeout, then the retry; the retry does not wait for the excluded
        // signer, so no phase of it times out.
        assert_eq!(got.phase_timeouts, 1, "{got:?}");
        coord.finish(&mut transport).await;
        for s in servers {
            s.abort();
        }
    })
    .await
    .expect("test finished in time");
}

#[test]
fn the_coordinator_is_a_pure_function_of_the_tip_and_the_set() {
    let secp = secp256k1::Secp256k1::new();
    let keys: Vec<secp256k1::PublicKey> = (0..7)
        .map(|_| secp256k1::Keypair::new(&secp, &mut rand::thread_rng()).public_key())
        .collect();
    let a = SignerSet::from_keys(keys.clone(), 5).unwrap();
    let mut reversed = keys.clone();
    reversed.reverse();
    let b = SignerSet::from_keys(reversed, 5).unwrap();
    let mut chosen = HashSet::new();
    for tip in 0u8..=200 {
        let tip = bitcoin::BlockHash::from_byte_array([tip; 32]);
        assert_eq!(a.coordinator_for(&tip), b.coordinator_for(&tip));
        assert_eq!(
            a.key(a.coordinator_for(&tip)),
            b.key(b.coordinator_for(&tip))
        );
        chosen.insert(a.coordinator_for(&tip));
    }
    assert_eq!(chosen.len(), 7, "every signer coordinates for some tip");
    let twice = SignerSet::from_keys(vec![keys[0], keys[0]], 1).unwrap_err();
    assert!(twice.to_string().contains("appears twice"), "{twice}");
    let over = SignerSet::from_keys(keys.clone(), 8).unwrap_err();
    assert!(
        over.to_string().contains("threshold 8 is outside"),
        "{over}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_key_endorsements_bind_signer_and_dkg() {
    let dir = TempDir::new().unwrap();
    let custodies = mixed_custodies(&dir, 2).await;
    let cluster = LocalCluster::new(custodies, &identity(), &seal(), 2, Duration::from_secs(5))
        .await
        .unwrap();
    let s0 = &cluster.signers[0].ctx;
    let key = TransportKey::generate().unwrap();
    let e = TransportKeyEndorsement::create(s0.custody.as_ref(), &identity(), DkgId(9), 0, &key)
        .await
        .unwrap();
    assert!(e.verify(&cluster.set, DkgId(9), 0).is_ok());
    // Relayed by another signer, replayed into another DKG, or claimed for another index: rejected,
    // naming the sender and what was wrong.
    let refused = |r: sbtc_hsm_signer::signing::Result<_>, who: u32, what: &str| match r {
        Err(SigningError::Misbehaving { signer, detail }) => {
            assert_eq!(signer, who, "{detail}");
            assert!(detail.contains(what), "{detail}");
        }
        other => panic!("expected signer {who} named for `{what}`, got {other:?}"),
    };
    refused(
        e.verify(&cluster.set, DkgId(9), 1),
        1,
        "for signer 0 over its own link",
    );
    refused(e.verify(&cluster.set, DkgId(10), 0), 0, "during DKG 10");
    let mut claimed = e.clone();
    claimed.signer = 1;
    refused(
        claimed.verify(&cluster.set, DkgId(9), 1),
        1,
        "does not verify",
    );
    let mut swapped = e.clone();
    swapped.transport_key = TransportKey::generate().unwrap().public().to_vec();
    refused(
        swapped.verify(&cluster.set, DkgId(9), 0),
        0,
        "does not verify",
    );
}

#[allow(dead_code)]
fn _transport_is_object_safe(_: &mut dyn Transport) {}
