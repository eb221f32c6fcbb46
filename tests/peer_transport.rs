//! The signing rounds over real mTLS peer links in one process, over a signer set that mixes the
//! three custody backends (keystore, SoftHSM2, YubiHSM2 MockHsm): `PeerTransport` stamps the wire
//! envelope with the chain tip and round id, the receiver learns the sender from the handshake,
//! garbage payloads are dropped, and a whole DKG plus a batch runs over it.

mod common;

use bitcoin::hashes::Hash as _;
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use sbtc_custody::{Custody, KeyKind, KeyLabel};
use sbtc_hsm_signer::{
    coordination::PeerTransport,
    peer::{message, PeerNode},
    signing::{
        run_dkg, signing_key, ApproveAll, BatchCoordinator, BatchNonceRequest, BatchSigner, DkgId,
        InMemoryNonceLedger, Participation, RoundId, RoundMessage, SighashRequest, SignerContext,
        SignerSet, SpendKind, Transport,
    },
};

/// The chain tip the rounds are stamped with (it picks the coordinator).
fn tip() -> bitcoin::BlockHash {
    bitcoin::BlockHash::from_byte_array([7u8; 32])
}
const HEIGHT: u64 = 812;

fn seal() -> KeyLabel {
    KeyLabel::new("seal").unwrap()
}

async fn cluster(dir: &std::path::Path, n: usize) -> (Vec<Arc<dyn Custody>>, Vec<Arc<PeerNode>>) {
    // One set, every backend: keystores, SoftHSM2 tokens and YubiHSM2s (MockHsm).
    let custodies = common::mixed(dir, n).await;
    for c in &custodies {
        c.generate(&seal(), KeyKind::Seal).await.unwrap();
    }
    let nodes = common::mesh(&custodies, common::test_limits()).await;
    common::wait_full_mesh(&nodes, Duration::from_secs(20)).await;
    (custodies, nodes.into_iter().map(Arc::new).collect())
}

fn signing_set(nodes: &[Arc<PeerNode>], threshold: u32) -> Arc<SignerSet> {
    Arc::new(SignerSet::from_keys(nodes.iter().map(|n| n.identity()), threshold).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_carry_tip_and_round_and_the_sender_comes_from_the_link() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (_custodies, nodes) = cluster(dir.path(), 2).await;
        let set = signing_set(&nodes, 2);
        let a = PeerTransport::new(nodes[0].clone(), set.clone(), tip(), HEIGHT).unwrap();
        // The receiver reads the raw wire envelopes.
        let mut raw = nodes[1].take_inbox().unwrap();
        let round = RoundId([3u8; 32]);
        let to = set.index_of(&nodes[1].identity()).unwrap();
        a.send(
            to,
            Arc::new(RoundMessage::NonceRequest(BatchNonceRequest {
                dkg_id: DkgId(1),
                round,
                sighashes: vec![SighashRequest {
                    sighash: [1u8; 32],
                    kind: SpendKind::ScriptPath,
                }],
            })),
        )
        .await
        .unwrap();
        let inbound = raw.recv().await.unwrap();
        assert_eq!(inbound.from, nodes[0].identity());
        let stamped = inbound.envelope.chain_tip.unwrap();
        assert_eq!(stamped.height, HEIGHT);
        assert_eq!(stamped.block_hash.as_ref(), tip().as_byte_array());
        assert_eq!(inbound.envelope.round_id.as_ref(), &round.0);
        // A signer cannot send to itself through the links.
        assert!(matches!(
            a.send(a.me(), Arc::new(RoundMessage::Done)).await,
            Err(sbtc_hsm_signer::signing::TransportError::UnknownPeer(_))
        ));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_payloads_are_dropped_and_the_next_message_gets_through() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (_custodies, nodes) = cluster(dir.path(), 2).await;
        let set = signing_set(&nodes, 2);
        let a = PeerTransport::new(nodes[0].clone(), set.clone(), tip(), HEIGHT).unwrap();
        let mut b = PeerTransport::new(nodes[1].clone(), set.clone(), tip(), HEIGHT).unwrap();
        let tip = message::ChainTip {
            height: HEIGHT,
            block_hash: Bytes::copy_from_slice(tip().as_byte_array()),
        };
        // A well-formed envelope whose round body does not hold (a share list of 33 bytes), one
        // with an empty body, and a round body made of JSON (what release 1 sent).
        nodes[0]
            .broadcast(&message::opaque_round(
                tip.clone(),
                [0u8; 32],
                Bytes::from(vec![1u8; 33]),
            ))
            .unwrap();
        let empty = message::round(
            tip.clone(),
            [0u8; 32],
            message::rounds::RoundMessage::default(),
        );
        nodes[0].broadcast(&empty).unwrap();
        nodes[0]
            .broadcast_encoded(Bytes::from_static(b"{\"NonceRequest\":{}}"))
            .unwrap();
        a.broadcast(Arc::new(RoundMessage::Done)).await;
        let env = tokio::time::timeout(Duration::from_secs(10), b.recv())
            .await
            .expect("the valid message arrives")
            .unwrap();
        assert!(matches!(env.msg.as_ref(), RoundMessage::Done));
        assert_eq!(env.from, a.me());
        // The JSON frame is not even an envelope: the link counts it.
        assert_eq!(nodes[1].metrics().malformed, 1);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkg_and_a_batch_run_over_the_peer_links() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let (custodies, nodes) = cluster(dir.path(), 3).await;
        let set = signing_set(&nodes, 2);
        let coordinator = set.coordinator_for(&tip());
        let mut tasks = Vec::new();
        for (custody, node) in custodies.iter().zip(&nodes) {
            let mut transport =
                PeerTransport::new(node.clone(), set.clone(), tip(), HEIGHT).unwrap();
            let ctx = SignerContext {
                set: set.clone(),
                me: transport.me(),
                custody: custody.clone(),
                identity_label: common::identity_label(),
                seal_label: seal(),
                phase_timeout: Duration::from_secs(30),
            };
            tasks.push(tokio::spawn(async move {
                let outcome = run_dkg(&ctx, &mut transport, DkgId(1), coordinator)
                    .await
                    .unwrap();
                let public = Arc::new(outcome.public);
                let mut signer = BatchSigner::new(
                    ctx.clone(),
                    public.clone(),
                    outcome.sealed,
                    Arc::new(InMemoryNonceLedger::default()),
                    Arc::new(ApproveAll),
                    coordinator,
                );
                if ctx.me != coordinator {
                    signer.serve(&mut transport).await;
                    return (public.aggregate_public_key().unwrap(), Vec::new());
                }
                let coord = BatchCoordinator::new(ctx.clone(), public.clone()).unwrap();
                let requests: Vec<SighashRequest> = (0..4u8)
                    .map(|i| SighashRequest {
                        sighash: [i + 10; 32],
                        kind: if i % 2 == 0 {
                            SpendKind::KeySpend { merkle_root: None }
                        } else {
                            SpendKind::ScriptPath
                        },
                    })
                    .collect();
                let signed = coord
                    .sign(
                        &mut signer,
                        &mut transport,
                        &requests,
                        Participation::Threshold,
                    )
                    .await
                    .unwrap();
                coord.finish(&mut transport).await;
                (public.aggregate_public_key().unwrap(), signed.signatures)
            }));
        }
        let mut keys = Vec::new();
        let mut signatures = Vec::new();
        for t in tasks {
            let (key, sigs) = t.await.unwrap();
            keys.push(key);
            signatures.extend(sigs);
        }
        assert!(
            keys.windows(2).all(|w| w[0] == w[1]),
            "signers disagree on the key"
        );
        assert_eq!(signatures.len(), 4);
        let secp = secp256k1::Secp256k1::verification_only();
        for s in &signatures {
            secp.verify_schnorr(
                &s.signature,
                &secp256k1::Message::from_digest(s.request.sighash),
                &signing_key(&keys[0], s.request.kind),
            )
            .unwrap();
        }
    })
    .await
    .expect("test finished in time");
}
