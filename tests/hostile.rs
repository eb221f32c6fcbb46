//! A hostile member of the signer set, attacking over the real mTLS peer links: it runs the
//! honest round code with its outgoing messages rewritten (or with extra messages of its own),
//! and the honest members must contain it. Each test names the defence it checks.

mod common;

use bitcoin::hashes::Hash as _;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use sbtc_custody::{Custody, KeyKind, KeyLabel};
use sbtc_hsm_signer::{
    coordination::PeerTransport,
    peer::PeerNode,
    signing::{
        run_dkg, verify_dkg, ApproveAll, BatchCoordinator, BatchNonceRequest, BatchShareRequest,
        BatchSigner, DkgId, DkgOutcome, DkgVerification, Envelope, InMemoryNonceLedger,
        Participation, RoundId, RoundMessage, SighashRequest, SignerContext, SignerIndex,
        SignerSet, SigningError, SpendKind, Transport, TransportError,
    },
};
use wsts::net::{DkgFailure, DkgStatus, Message};

const N: usize = 4;
const THRESHOLD: u32 = 3;
const HEIGHT: u64 = 900;
const TEST_LIMIT: Duration = Duration::from_secs(150);

fn tip() -> bitcoin::BlockHash {
    bitcoin::BlockHash::from_byte_array([9u8; 32])
}

fn seal() -> KeyLabel {
    KeyLabel::new("seal").unwrap()
}

/// What a hostile member does to a message it is about to send to `to`: the messages that go
/// out instead (none drops it).
type Rewrite = Arc<dyn Fn(SignerIndex, &RoundMessage) -> Vec<RoundMessage> + Send + Sync>;

/// A member's transport with its outgoing messages rewritten.
struct Hostile {
    inner: PeerTransport,
    rewrite: Rewrite,
    n: u32,
}

#[async_trait]
impl Transport for Hostile {
    fn me(&self) -> SignerIndex {
        self.inner.me()
    }

    async fn send(&self, to: SignerIndex, msg: Arc<RoundMessage>) -> Result<(), TransportError> {
        for m in (self.rewrite)(to, &msg) {
            self.inner.send(to, Arc::new(m)).await?;
        }
        Ok(())
    }

    async fn broadcast(&self, msg: Arc<RoundMessage>) -> Vec<SignerIndex> {
        let mut down = Vec::new();
        for to in (0..self.n).filter(|i| *i != self.me()) {
            if self.send(to, msg.clone()).await.is_err() {
                down.push(to);
            }
        }
        down
    }

    async fn recv(&mut self) -> Option<Envelope> {
        self.inner.recv().await
    }
}

struct Cluster {
    custodies: Vec<Arc<dyn Custody>>,
    nodes: Vec<Arc<PeerNode>>,
    set: Arc<SignerSet>,
    coordinator: SignerIndex,
    /// A member that is not the coordinator: the attacker.
    hostile: SignerIndex,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let custodies = common::mixed(dir.path(), N).await;
        for c in &custodies {
            c.generate(&seal(), KeyKind::Seal).await.unwrap();
        }
        let nodes = common::mesh(&custodies, common::test_limits()).await;
        common::wait_full_mesh(&nodes, Duration::from_secs(30)).await;
        let nodes: Vec<Arc<PeerNode>> = nodes.into_iter().map(Arc::new).collect();
        let set =
            Arc::new(SignerSet::from_keys(nodes.iter().map(|n| n.identity()), THRESHOLD).unwrap());
        let coordinator = set.coordinator_for(&tip());
        Cluster {
            custodies,
            nodes,
            hostile: (coordinator + 1) % N as u32,
            coordinator,
            set,
            _dir: dir,
        }
    }

    /// Each member's transport and round context, by signer index.
    fn members(&self) -> Vec<(PeerTransport, SignerContext)> {
        let mut members: Vec<_> = self
            .custodies
            .iter()
            .zip(&self.nodes)
            .map(|(custody, node)| {
                let t = PeerTransport::new(node.clone(), self.set.clone(), tip(), HEIGHT).unwrap();
                let ctx = SignerContext {
                    set: self.set.clone(),
                    me: t.me(),
                    custody: custody.clone(),
                    identity_label: common::identity_label(),
                    seal_label: seal(),
                    phase_timeout: Duration::from_secs(10),
                };
                (t, ctx)
            })
            .collect();
        members.sort_by_key(|(t, _)| t.me());
        members
    }
}

/// Runs a DKG in which the hostile member's outgoing messages go through `rewrite`; returns each
/// member's result by signer index, and the members' transports and contexts for what follows.
async fn dkg_with(
    c: &Cluster,
    rewrite: Rewrite,
) -> Vec<(
    Result<DkgOutcome, SigningError>,
    Box<dyn Transport>,
    SignerContext,
)> {
    let mut tasks = Vec::new();
    for (transport, ctx) in c.members() {
        let coordinator = c.coordinator;
        let mut transport: Box<dyn Transport> = if ctx.me == c.hostile {
            Box::new(Hostile {
                inner: transport,
                rewrite: rewrite.clone(),
                n: N as u32,
            })
        } else {
            Box::new(transport)
        };
        tasks.push(tokio::spawn(async move {
            let r = run_dkg(&ctx, transport.as_mut(), DkgId(5), coordinator).await;
            (r, transport, ctx)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        // A panic in any member's round code fails here: no member may bring another down.
        out.push(t.await.expect("a member's DKG task panicked"));
    }
    out
}

type Results = [(
    Result<DkgOutcome, SigningError>,
    Box<dyn Transport>,
    SignerContext,
)];

/// The coordinator's DKG failed naming the hostile member; returns what it said.
fn named_by_coordinator(c: &Cluster, results: &Results) -> String {
    match &results[c.coordinator as usize].0 {
        Err(SigningError::Misbehaving { signer, detail }) => {
            assert_eq!(*signer, c.hostile, "{detail}");
            detail.clone()
        }
        other => panic!("the coordinator must name the hostile member: {other:?}"),
    }
}

fn unchanged() -> Rewrite {
    Arc::new(|_, m| vec![m.clone()])
}

fn requests(count: u8) -> Vec<SighashRequest> {
    (0..count)
        .map(|i| SighashRequest {
            sighash: [i + 100; 32],
            kind: if i % 2 == 0 {
                SpendKind::KeySpend { merkle_root: None }
            } else {
                SpendKind::ScriptPath
            },
        })
        .collect()
}

fn signer(ctx: &SignerContext, outcome: &DkgOutcome, coordinator: SignerIndex) -> BatchSigner {
    BatchSigner::new(
        ctx.clone(),
        Arc::new(outcome.public.clone()),
        outcome.sealed.clone(),
        Arc::new(InMemoryNonceLedger::default()),
        Arc::new(ApproveAll),
        coordinator,
    )
}

/// Item 2: a DkgEnd that accuses signers outside the set (WSTS' FIRE coordinator indexes its
/// maps with them and panics) fails the DKG with the sender named; no member's task panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dkg_end_accusing_unknown_signers_fails_the_dkg_naming_its_sender() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::new().await;
        let results = dkg_with(
            &c,
            Arc::new(move |_, m| match m {
                RoundMessage::Dkg(Message::DkgEnd(end)) => {
                    let mut end = end.clone();
                    end.status = DkgStatus::Failure(DkgFailure::BadPublicShares([77u32, 1].into()));
                    vec![RoundMessage::Dkg(Message::DkgEnd(end))]
                }
                other => vec![other.clone()],
            }),
        )
        .await;
        let detail = named_by_coordinator(&c, &results);
        assert!(detail.contains("77"), "{detail}");
        // Every process still runs: the peer nodes answer and keep their links.
        for node in &c.nodes {
            assert_eq!(node.connected_peers().len(), N - 1);
        }
    })
    .await
    .expect("test finished in time");
}

/// Item 7: a flood of copies of a member's private shares is dropped, holding at most one per
/// sender, and the DKG completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_private_shares_is_dropped_not_buffered() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::new().await;
        let hostile = c.hostile;

        // 200 copies of its private shares to every member: the DKG still completes, and the
        // copies are dropped (counted), not buffered.
        let results = dkg_with(
            &c,
            Arc::new(|_, m| match m {
                RoundMessage::Dkg(Message::DkgPrivateShares(_)) => vec![m.clone(); 200],
                other => vec![other.clone()],
            }),
        )
        .await;
        let mut keys = HashSet::new();
        let mut dropped = 0;
        for (i, (r, _, _)) in results.iter().enumerate() {
            let outcome = r.as_ref().unwrap_or_else(|e| panic!("signer {i}: {e}"));
            keys.insert(outcome.public.aggregate_key.compress().as_bytes().to_vec());
            if i as u32 != hostile {
                // Copies read before the DKG ended were dropped (the rest stay in the bounded
                // link queue); none was buffered beyond one per sender and phase.
                dropped += outcome.dropped.get(&hostile).copied().unwrap_or(0);
                assert!(
                    outcome.held_peak <= 2 * (N - 1),
                    "signer {i} held {} messages at once",
                    outcome.held_peak
                );
            }
        }
        assert!(dropped > 0, "no copy was dropped");
        assert_eq!(keys.len(), 1, "the members disagree on the key");
    })
    .await
    .expect("test finished in time");
}

/// Item 2: private shares that claim to come from another party fail the DKG naming the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_shares_for_another_party_name_the_sender() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::new().await;
        let results = dkg_with(
            &c,
            Arc::new(|_, m| match m {
                RoundMessage::Dkg(Message::DkgPrivateShares(p)) => {
                    let mut p = p.clone();
                    p.shares[0].0 += 1;
                    vec![RoundMessage::Dkg(Message::DkgPrivateShares(p))]
                }
                other => vec![other.clone()],
            }),
        )
        .await;
        named_by_coordinator(&c, &results);
    })
    .await
    .expect("test finished in time");
}

/// Item 3: only the round's coordinator may drive a round. The hostile member, seeing the
/// coordinator's nonce request, sends every honest member eight nonce requests of its own and a
/// share request for the live round before it answers. The honest members refuse them without
/// touching their pending rounds, keep their nonces, and the coordinator's batch, which needs
/// every member, completes in one round with nobody excluded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_coordinator_drives_rounds_and_fake_requests_evict_nothing() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::new().await;
        let results = dkg_with(&c, unchanged()).await;
        let coordinator = c.coordinator;
        let hostile = c.hostile;
        let mut tasks = Vec::new();
        let mut own = None;
        for (r, mut transport, ctx) in results {
            let outcome = r.unwrap();
            let mut s = signer(&ctx, &outcome, coordinator);
            if ctx.me == coordinator {
                own = Some((s, transport, ctx, outcome));
            } else if ctx.me == hostile {
                tasks.push(tokio::spawn(async move {
                    let mut attacked = false;
                    while let Some(env) = transport.recv().await {
                        if matches!(env.msg.as_ref(), RoundMessage::Done) {
                            break;
                        }
                        if let (RoundMessage::NonceRequest(req), false) =
                            (env.msg.as_ref(), attacked)
                        {
                            attacked = true;
                            for to in (0..N as u32).filter(|i| *i != coordinator && *i != hostile) {
                                for _ in 0..8 {
                                    let fake = RoundMessage::NonceRequest(BatchNonceRequest {
                                        round: RoundId::random(),
                                        ..req.clone()
                                    });
                                    transport.send(to, Arc::new(fake)).await.unwrap();
                                }
                                let burn = RoundMessage::ShareRequest(BatchShareRequest {
                                    dkg_id: req.dkg_id,
                                    round: req.round,
                                    sighashes: req.sighashes.clone(),
                                    nonce_responses: Vec::new(),
                                });
                                transport.send(to, Arc::new(burn)).await.unwrap();
                            }
                            // Let the fakes land before the coordinator can go on.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        if let Some(reply) = s.handle(env.from, &env.msg).await {
                            let _ = transport.send(env.from, Arc::new(reply)).await;
                        }
                    }
                    (ctx.me, 0)
                }));
            } else {
                tasks.push(tokio::spawn(async move {
                    s.serve(transport.as_mut()).await;
                    (ctx.me, s.refused_not_coordinator())
                }));
            }
        }
        let (mut s, mut transport, ctx, outcome) = own.unwrap();
        let coord = BatchCoordinator::new(ctx, Arc::new(outcome.public)).unwrap();
        let batch = requests(4);
        let signed = coord
            .sign(&mut s, transport.as_mut(), &batch, Participation::All)
            .await
            .expect("the coordinator's batch completes despite the fake requests");
        assert_eq!(signed.signatures.len(), batch.len());
        assert!(signed.excluded.is_empty(), "{:?}", signed.excluded);
        assert_eq!(signed.rounds, 1);
        coord.finish(transport.as_mut()).await;
        for t in tasks {
            let (me, refused) = t.await.unwrap();
            if me != hostile {
                assert_eq!(
                    refused, 9,
                    "signer {me} refused {refused} of the 9 fake requests"
                );
            }
        }
    })
    .await
    .expect("test finished in time");
}

/// Item 8: a member that sends a broken signature share during the DKG verification is named and
/// left out; the round is retried without it, the threshold remains, and the key is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_share_in_the_verification_is_named_and_the_key_still_verifies() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::new().await;
        let hostile = c.hostile;
        let corrupt = Arc::new(Mutex::new(false));
        let on = corrupt.clone();
        let results = dkg_with(
            &c,
            Arc::new(move |_, m| match m {
                RoundMessage::ShareResponse(r) if *on.lock().unwrap() => {
                    let mut r = r.clone();
                    for z in r.shares.iter_mut().flatten() {
                        *z += wsts::curve::scalar::Scalar::from(1u32);
                    }
                    vec![RoundMessage::ShareResponse(r)]
                }
                other => vec![other.clone()],
            }),
        )
        .await;
        *corrupt.lock().unwrap() = true;
        let coordinator = c.coordinator;
        let mut tasks = Vec::new();
        let mut own = None;
        for (r, mut transport, ctx) in results {
            let outcome = r.unwrap();
            let mut s = signer(&ctx, &outcome, coordinator);
            if ctx.me == coordinator {
                own = Some((s, transport, ctx, outcome));
            } else {
                tasks.push(tokio::spawn(async move {
                    s.serve(transport.as_mut()).await;
                }));
            }
        }
        let (mut s, mut transport, ctx, outcome) = own.unwrap();
        let coord = BatchCoordinator::new(ctx, Arc::new(outcome.public)).unwrap();
        let result = verify_dkg(&coord, &mut s, transport.as_mut())
            .await
            .unwrap();
        assert_eq!(result.verdict, DkgVerification::Verified, "{result:?}");
        assert!(result.signature.is_some());
        assert_eq!(result.excluded.len(), 1, "{:?}", result.excluded);
        assert_eq!(result.excluded[0].signer, hostile);
        assert!(
            result.excluded[0]
                .reason
                .contains("invalid signature share"),
            "{:?}",
            result.excluded
        );
        coord.finish(transport.as_mut()).await;
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("test finished in time");
}

/// Items 5 and 8: transport-key endorsements are bound to one DKG id. A member first sends its
/// endorsement relabelled for another DKG, then a broken one, then the real one: the first two
/// are refused and counted against it, and the DKG goes on with the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endorsements_for_another_dkg_or_broken_ones_are_refused() {
    tokio::time::timeout(TEST_LIMIT, async {
        let c = Cluster::new().await;
        let hostile = c.hostile;
        let results = dkg_with(
            &c,
            Arc::new(|_, m| match m {
                RoundMessage::TransportKey(e) => {
                    let mut other_dkg = e.clone();
                    other_dkg.dkg_id = DkgId(e.dkg_id.0 + 1);
                    let mut broken = e.clone();
                    broken.signature[10] ^= 1;
                    vec![
                        RoundMessage::TransportKey(other_dkg),
                        RoundMessage::TransportKey(broken),
                        m.clone(),
                    ]
                }
                other => vec![other.clone()],
            }),
        )
        .await;
        for (i, (r, _, _)) in results.iter().enumerate() {
            let outcome = r.as_ref().unwrap_or_else(|e| panic!("signer {i}: {e}"));
            if i as u32 != hostile {
                assert!(
                    outcome.dropped.get(&hostile).copied().unwrap_or(0) >= 2,
                    "signer {i} took an endorsement it should have refused: {:?}",
                    outcome.dropped
                );
            }
        }
    })
    .await
    .expect("test finished in time");
}
