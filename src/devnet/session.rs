//! One signer's session on a devnet: wait for the peer mesh, DKG over the peer links, store the
//! sealed shares, verify the key through Bitcoin Core's script verifier, sign a demo batch.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bitcoin::BlockHash;
use sbtc_custody::SealedBlob;

use super::demo::{self, DemoSignature, DevnetApprover, RunResult};
use crate::{
    coordination::{DecisionVerdict, DkgDecision, Incoming, PeerTransport},
    keys::{AggregateKey, Keys},
    peer::{message::StatementKind, PeerNode},
    signing::{
        run_dkg, verify_dkg, BatchCoordinator, BatchSigner, DkgId, DkgOutcome, DkgVerification,
        FileNonceLedger, InMemoryNonceLedger, MockKeySpend, NonceLedger, Participation,
        RoundMessage, SignerContext, SignerSet, Transport,
    },
    signing::{PublicShares, SealedShares},
    storage::{DkgShares, DkgSharesStatus, Storage},
};

/// What a session needs besides the node.
pub struct SessionParams {
    /// Custody (audited in a real node) and the key labels.
    pub keys: Keys,
    pub storage: Arc<dyn Storage>,
    pub chain_tip: BlockHash,
    pub chain_height: u64,
    pub demo_batch: usize,
    pub connect_timeout: Duration,
    pub phase_timeout: Duration,
    /// Where the nonce ledger lives; None keeps it in memory (tests).
    pub nonce_ledger: Option<std::path::PathBuf>,
    /// Who must sign the demo batch: the threshold (the others may be down) or every signer.
    pub demo_participation: Participation,
    /// End the session when the coordinator says so; else a signer keeps serving rounds until
    /// the node stops (a restarted coordinator can then sign with it again).
    pub exit_when_done: bool,
    /// Where peers' deposit announcements go (the node's intake), when `[api]` runs.
    pub deposit_sink: Option<crate::api::DepositSink>,
    /// What this signer read from the sBTC registry at start (`[stacks]`), for the result file.
    pub stacks: Option<super::demo::StacksReading>,
    /// The node runs the peg after this session: a signer leaves the session at the
    /// coordinator's `Done` and hands its links and shares on ([`SessionState`]).
    pub peg: bool,
}

/// What the peg takes over from the DKG session: the links, this signer's shares of the key and
/// the coordinator of the session's tip.
pub struct SessionState {
    pub transport: PeerTransport,
    pub signer: BatchSigner,
    pub ctx: SignerContext,
    pub public: Arc<crate::signing::PublicShares>,
    pub aggregate_key: AggregateKey,
    pub coordinator: u32,
}

/// This signer's part of the newest verified DKG of `set`, from storage: what lets a restarted
/// signer sign again without a new DKG. None if there is none for this set, or it is not ours.
async fn stored_shares(
    storage: &dyn Storage,
    set: &SignerSet,
    me: u32,
) -> Result<Option<(PublicShares, SealedShares)>, SessionError> {
    let Some(stored) = storage.get_latest_verified_dkg_shares().await? else {
        return Ok(None);
    };
    let row = &stored.shares;
    if row.signer_set.as_slice() != set.keys() || u32::from(row.threshold) != set.threshold() {
        tracing::info!(
            aggregate_key = %row.aggregate_key,
            "the newest verified key shares belong to another signer set; running a new DKG"
        );
        return Ok(None);
    }
    if row.signer_index != me {
        return Err(format!(
            "the stored key shares of {} are for signer index {}, but this signer is index {me} \
             of the same set: the database belongs to another signer",
            row.aggregate_key, row.signer_index
        )
        .into());
    }
    let public: PublicShares = serde_json::from_slice(&row.public_shares).map_err(|e| {
        format!(
            "the stored public shares of {} do not decode ({e}); restore the database from backup",
            row.aggregate_key
        )
    })?;
    if public.dkg_id != row.dkg_id
        || AggregateKey::from_point(&public.aggregate_key).ok() != Some(row.aggregate_key)
    {
        return Err(format!(
            "the stored public shares of {} belong to another DKG; restore the database from backup",
            row.aggregate_key
        )
        .into());
    }
    Ok(Some((public, row.sealed_shares())))
}

pub type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// Waits until an outbound link to every other member of the set is up, or fails naming those
/// still missing.
pub async fn wait_for_peers(node: &PeerNode, timeout: Duration) -> Result<Duration, SessionError> {
    let start = Instant::now();
    loop {
        let set = node.signer_set();
        let me = node.identity();
        let connected = node.connected_peers();
        let missing: Vec<String> = set
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| *k != me && !connected.contains(k))
            .map(|k| hex::encode(k.serialize()))
            .collect();
        if missing.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "after {}s no link to {} of {} peers: {}; check that they run and that [[peer.bootstrap]] endpoints are right",
                timeout.as_secs(),
                missing.len(),
                set.len().saturating_sub(1),
                missing.join(", ")
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs the session; returns this signer's result and what the peg takes over.
pub async fn run_session(
    node: Arc<PeerNode>,
    p: SessionParams,
) -> Result<(RunResult, SessionState), SessionError> {
    let connect = wait_for_peers(&node, p.connect_timeout).await?;
    let me_key = node.identity();
    // The one signer set: the peer links admit exactly these keys, and the rounds number them.
    let set: Arc<SignerSet> = node.signer_set();
    let dkg_id = DkgId::derive(&p.chain_tip, &set, 0);
    let coordinator = set.coordinator_for(&p.chain_tip);
    let mut transport = PeerTransport::new(node.clone(), set.clone(), p.chain_tip, p.chain_height)?;
    if let Some(sink) = p.deposit_sink.clone() {
        transport = transport.with_deposit_sink(sink);
    }
    let me = transport.me();
    tracing::info!(
        me,
        coordinator,
        signers = set.len(),
        threshold = set.threshold(),
        "peers connected"
    );
    let ctx = SignerContext {
        set: set.clone(),
        me,
        custody: p.keys.custody.clone(),
        identity_label: p.keys.identity.clone(),
        seal_label: p.keys.seal.clone(),
        phase_timeout: p.phase_timeout,
    };

    let dkg_start = Instant::now();
    let stored = stored_shares(p.storage.as_ref(), &set, me).await?;
    let from_storage = stored.is_some();
    let (public, sealed) = match stored {
        Some(found) => {
            tracing::info!(
                dkg_id = %found.0.dkg_id,
                "signing with the stored shares of this signer set's verified key (no new DKG)"
            );
            found
        }
        None => {
            tracing::info!(%dkg_id, "starting DKG");
            let DkgOutcome { public, sealed, .. } =
                run_dkg(&ctx, &mut transport, dkg_id, coordinator).await?;
            (public, sealed)
        }
    };
    let dkg_id = public.dkg_id;
    let dkg_ms = ms(dkg_start.elapsed());
    let aggregate = public.aggregate_public_key()?;
    let aggregate_hex = hex::encode(aggregate.serialize());
    let aggregate_key = AggregateKey::new(aggregate);
    if !from_storage {
        tracing::info!(aggregate_key = %aggregate_hex, dkg_ms, "DKG done; storing sealed shares as unverified");
        p.storage
            .write_dkg_shares(&DkgShares {
                aggregate_key,
                dkg_id: sealed.dkg_id,
                signer_index: sealed.signer,
                sealed_private_shares: SealedBlob::from_bytes(sealed.blob.clone()),
                public_shares: serde_json::to_vec(&public)?,
                signer_set: set.keys().to_vec(),
                threshold: u16::try_from(set.threshold())?,
                status: DkgSharesStatus::Unverified,
                started_at_block_hash: p.chain_tip,
                started_at_block_height: p.chain_height,
            })
            .await?;
        sign_head(&p.keys, &format!("end of dkg {dkg_id}")).await;
    }

    let verification_request = MockKeySpend::new(dkg_id, &aggregate).request()?;
    let demo_requests = demo::demo_requests(dkg_id, &aggregate, p.demo_batch);
    let approver = Arc::new(DevnetApprover::new(
        p.storage.clone(),
        verification_request,
        &demo_requests,
    ));
    let public = Arc::new(public);
    let ledger: Arc<dyn NonceLedger> = match &p.nonce_ledger {
        Some(path) => Arc::new(FileNonceLedger::open(path)?),
        None => Arc::new(InMemoryNonceLedger::default()),
    };
    let mut signer = BatchSigner::new(
        ctx.clone(),
        public.clone(),
        sealed,
        ledger,
        approver,
        coordinator,
    );

    let mut result = RunResult {
        signer_index: me,
        chain_tip: p.chain_tip.to_string(),
        chain_height: p.chain_height,
        signers: set.len(),
        threshold: set.threshold(),
        coordinator,
        dkg_id: dkg_id.0,
        shares_from_storage: from_storage,
        identity: hex::encode(me_key.serialize()),
        aggregate_key: aggregate_hex.clone(),
        dkg_status: if from_storage {
            DkgSharesStatus::Verified
        } else {
            DkgSharesStatus::Unverified
        }
        .to_string(),
        dkg_failure: None,
        connect_ms: ms(connect),
        dkg_ms,
        verification_ms: None,
        batch_ms: None,
        signatures: Vec::new(),
        signatures_verified: 0,
        custody_calls: Default::default(),
        stacks: p.stacks.clone(),
        peg: None,
    };

    if me == coordinator {
        let coord = BatchCoordinator::new(ctx.clone(), public.clone())?;
        let status = if from_storage {
            DkgSharesStatus::Verified
        } else {
            verify_and_announce(
                &p,
                &node,
                &coord,
                &mut signer,
                &mut transport,
                &mut result,
                dkg_id,
                &aggregate_key,
            )
            .await?
        };
        if status == DkgSharesStatus::Verified && !demo_requests.is_empty() {
            let start = Instant::now();
            let signed = coord
                .sign(
                    &mut signer,
                    &mut transport,
                    &demo_requests,
                    p.demo_participation,
                )
                .await;
            result.batch_ms = Some(ms(start.elapsed()));
            match signed {
                Ok(signed) => {
                    for s in &signed.signatures {
                        let sig = DemoSignature {
                            sighash: hex::encode(s.request.sighash),
                            kind: demo::kind_name(s.request.kind).into(),
                            signature: hex::encode(s.signature.serialize()),
                        };
                        if demo::verify_demo_signature(&aggregate, &sig).is_ok() {
                            result.signatures_verified += 1;
                        }
                        result.signatures.push(sig);
                    }
                    tracing::info!(
                        signed = signed.signatures.len(),
                        rounds = signed.rounds,
                        "demo batch signed"
                    );
                }
                Err(e) => tracing::error!(error = %e, "demo batch failed"),
            }
            sign_head(&p.keys, "end of the demo batch").await;
        }
        coord.finish(&mut transport).await;
    } else {
        serve(
            &p,
            &mut signer,
            &mut transport,
            &mut result,
            coordinator,
            &aggregate_hex,
            &aggregate_key,
        )
        .await?;
    }
    let state = SessionState {
        transport,
        signer,
        ctx,
        public,
        aggregate_key,
        coordinator,
    };
    Ok((result, state))
}

/// The coordinator's DKG verification: a taproot key spend signed by every signer and checked by
/// Bitcoin Core's script verifier; the verdict is stored and sent to every signer signed.
#[allow(clippy::too_many_arguments)]
async fn verify_and_announce(
    p: &SessionParams,
    node: &PeerNode,
    coord: &BatchCoordinator,
    signer: &mut BatchSigner,
    transport: &mut PeerTransport,
    result: &mut RunResult,
    dkg_id: DkgId,
    aggregate_key: &AggregateKey,
) -> Result<DkgSharesStatus, SessionError> {
    let aggregate_hex = aggregate_key.to_string();
    let start = Instant::now();
    let verification = verify_dkg(coord, signer, transport).await?;
    result.verification_ms = Some(ms(start.elapsed()));
    let left_out = (!verification.excluded.is_empty()).then(|| {
        let names: Vec<String> = verification
            .excluded
            .iter()
            .map(|e| format!("signer {}: {}", e.signer, e.reason))
            .collect();
        format!("verified without {}", names.join("; "))
    });
    let (status, detail) = match &verification.verdict {
        DkgVerification::Verified => (DkgSharesStatus::Verified, left_out),
        DkgVerification::Failed(why) => (DkgSharesStatus::Failed, Some(why.clone())),
    };
    p.storage
        .set_dkg_shares_status(aggregate_key, status)
        .await?;
    result.dkg_status = status.to_string();
    result.dkg_failure = detail.clone();
    tracing::info!(%status, "DKG verification done");
    sign_head(&p.keys, &format!("end of the verification of dkg {dkg_id}")).await;
    let verified = status == DkgSharesStatus::Verified;
    let decision = DkgDecision {
        aggregate_key: aggregate_hex.clone(),
        verified,
        detail,
        signature: verification
            .signature
            .filter(|_| verified)
            .map(|s| s.serialize().to_vec()),
    };
    let envelope = node
        .signed_statement(
            StatementKind::Decision,
            transport.chain_tip(),
            decision_round(dkg_id),
            decision.to_bytes()?,
        )
        .await?;
    let down = transport
        .broadcast_envelope(crate::peer::message::encode(&envelope))
        .await;
    if !down.is_empty() {
        tracing::warn!(?down, "the DKG decision did not reach every signer");
    }
    Ok(status)
}

/// A signer that does not coordinate: serves the coordinator's requests until it says the session
/// is over (with `exit_when_done`), or until the node stops.
async fn serve(
    p: &SessionParams,
    signer: &mut BatchSigner,
    transport: &mut PeerTransport,
    result: &mut RunResult,
    coordinator: u32,
    aggregate_hex: &str,
    aggregate_key: &AggregateKey,
) -> Result<(), SessionError> {
    // A coordinator silent for several phase timeouts has failed, and waiting longer helps
    // nobody; a signer that serves until the node stops waits as long as it takes.
    let idle = p.exit_when_done.then_some(p.phase_timeout * 4);
    loop {
        let received = match idle {
                Some(idle) => tokio::time::timeout(idle, transport.recv_any())
                    .await
                    .map_err(|_| {
                        format!(
                            "no message from the coordinator (signer {coordinator}) for {}s; see its log",
                            idle.as_secs()
                        )
                    })?,
                None => transport.recv_any().await,
            };
        let Some(incoming) = received else {
            return Err("the peer node stopped before the session ended".into());
        };
        match incoming {
            Incoming::Round(env) => {
                if matches!(env.msg.as_ref(), RoundMessage::Done) {
                    if env.from == coordinator {
                        if p.exit_when_done || p.peg {
                            break;
                        }
                        tracing::info!("the coordinator ended its session; serving rounds until the node stops");
                    }
                    continue;
                }
                if let Some(reply) = signer.handle(env.from, &env.msg).await {
                    let round_ended = match &reply {
                        RoundMessage::ShareResponse(r) => Some(r.round),
                        _ => None,
                    };
                    if let Err(e) = transport.send(env.from, Arc::new(reply)).await {
                        tracing::warn!(error = %e, "reply not delivered");
                    }
                    if let Some(round) = round_ended {
                        sign_head(&p.keys, &format!("end of round {round}")).await;
                    }
                }
            }
            Incoming::Statement(s) => {
                if s.from != coordinator || s.kind != StatementKind::Decision {
                    continue;
                }
                let Ok(decision) = DkgDecision::from_bytes(&s.payload) else {
                    tracing::warn!("undecodable DKG decision dropped");
                    continue;
                };
                if decision.aggregate_key != aggregate_hex {
                    tracing::warn!("DKG decision for another key dropped");
                    continue;
                }
                // Never trust the coordinator: "verified" is recorded only if this signer's own
                // run of Bitcoin Core's script verifier accepts the signature it was sent.
                let status = match decision.judge(
                    signer.public().dkg_id,
                    &signer.public().aggregate_public_key()?,
                ) {
                    DecisionVerdict::Verified => DkgSharesStatus::Verified,
                    DecisionVerdict::Failed(_) => DkgSharesStatus::Failed,
                    DecisionVerdict::Forged(why) => {
                        tracing::error!(
                            coordinator,
                            %why,
                            "the coordinator says the DKG is verified, but its signature does not pass the script verifier here; the key stays unverified"
                        );
                        result.dkg_failure =
                            Some(format!("forged verification from the coordinator: {why}"));
                        continue;
                    }
                };
                p.storage
                    .set_dkg_shares_status(aggregate_key, status)
                    .await?;
                result.dkg_status = status.to_string();
                result.dkg_failure = decision.detail;
                tracing::info!(%status, "coordinator's DKG decision recorded");
            }
        }
    }
    Ok(())
}

/// Signs the audit log's head (end of a round). A failure is logged, not fatal: the entries stay
/// under the hash chain and the next head signature covers them.
async fn sign_head(keys: &Keys, reason: &str) {
    if let Err(e) = keys.sign_audit_head(reason).await {
        tracing::warn!(error = %e, reason, "the audit log's head was not signed");
    }
}

fn decision_round(dkg_id: DkgId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"sbtc-hsm-signer/dkg-decision/v1")
        .chain_update(dkg_id.0.to_be_bytes())
        .finalize()
        .into()
}
