//! One signer's session on a devnet: wait for the peer mesh, DKG over the peer links, store the
//! sealed shares, verify the key through Bitcoin Core's script verifier, sign a demo batch.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sbtc_custody::{Custody, KeyLabel, SealedBlob};

use super::demo::{self, DemoSignature, DevnetApprover, RunResult};
use crate::{
    coordination::{DkgDecision, Incoming, PeerTransport},
    peer::{message::StatementKind, PeerNode},
    signing::{
        run_dkg, verify_dkg, BatchCoordinator, BatchSigner, DkgId, DkgOutcome, DkgVerification,
        FileNonceLedger, InMemoryNonceLedger, MockKeySpend, NonceLedger, Participation,
        RoundMessage, SignerContext, SignerSet, Transport,
    },
    storage::{BitcoinBlockHash, DkgShares, DkgSharesStatus, PublicKeyBytes, Storage},
};

/// What a session needs besides the node.
pub struct SessionParams {
    pub custody: Arc<dyn Custody>,
    pub storage: Arc<dyn Storage>,
    pub identity_label: KeyLabel,
    pub seal_label: KeyLabel,
    pub chain_tip: [u8; 32],
    pub chain_height: u64,
    pub demo_batch: usize,
    pub connect_timeout: Duration,
    pub phase_timeout: Duration,
    /// Where the nonce ledger lives; None keeps it in memory (tests).
    pub nonce_ledger: Option<std::path::PathBuf>,
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

/// Runs the session; returns this signer's result.
pub async fn run_session(node: Arc<PeerNode>, p: SessionParams) -> Result<RunResult, SessionError> {
    let connect = wait_for_peers(&node, p.connect_timeout).await?;
    let me_key = node.identity();
    // The one signer set: the peer links admit exactly these keys, and the rounds number them.
    let set: Arc<SignerSet> = node.signer_set();
    let dkg_id = DkgId::derive(&p.chain_tip, &set, 0);
    let coordinator = set.coordinator_for(&p.chain_tip);
    let mut transport = PeerTransport::new(node.clone(), set.clone(), p.chain_tip, p.chain_height)?;
    let me = transport.me();
    tracing::info!(
        me,
        coordinator,
        signers = set.len(),
        threshold = set.threshold(),
        "peers connected; starting DKG"
    );
    let ctx = SignerContext {
        set: set.clone(),
        me,
        custody: p.custody.clone(),
        identity_label: p.identity_label.clone(),
        seal_label: p.seal_label.clone(),
        phase_timeout: p.phase_timeout,
    };

    let dkg_start = Instant::now();
    let DkgOutcome { public, sealed } = run_dkg(&ctx, &mut transport, dkg_id, coordinator).await?;
    let dkg_ms = ms(dkg_start.elapsed());
    let aggregate = public.aggregate_public_key()?;
    let aggregate_hex = hex::encode(aggregate.serialize());
    tracing::info!(aggregate_key = %aggregate_hex, dkg_ms, "DKG done; storing sealed shares as unverified");
    let key_bytes = PublicKeyBytes(aggregate.serialize());
    p.storage
        .write_dkg_shares(&DkgShares {
            aggregate_key: key_bytes,
            sealed_private_shares: SealedBlob::from_bytes(sealed.blob.clone()),
            public_shares: serde_json::to_vec(&public)?,
            signer_set: set
                .keys()
                .iter()
                .map(|k| PublicKeyBytes(k.serialize()))
                .collect(),
            threshold: u16::try_from(set.threshold())?,
            status: DkgSharesStatus::Unverified,
            started_at_block_hash: BitcoinBlockHash(p.chain_tip),
            started_at_block_height: p.chain_height,
        })
        .await?;

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
    let mut signer = BatchSigner::new(ctx.clone(), public.clone(), sealed, ledger, approver);

    let mut result = RunResult {
        signer_index: me,
        signers: set.len(),
        threshold: set.threshold(),
        coordinator,
        dkg_id: dkg_id.0,
        shares_from_storage: false,
        identity: hex::encode(me_key.serialize()),
        aggregate_key: aggregate_hex.clone(),
        dkg_status: DkgSharesStatus::Unverified.to_string(),
        dkg_failure: None,
        connect_ms: ms(connect),
        dkg_ms,
        verification_ms: None,
        batch_ms: None,
        signatures: Vec::new(),
        signatures_verified: 0,
    };

    if me == coordinator {
        let coord = BatchCoordinator::new(ctx.clone(), public.clone())?;
        let start = Instant::now();
        let verification = verify_dkg(&coord, &mut signer, &mut transport).await?;
        result.verification_ms = Some(ms(start.elapsed()));
        let (status, detail) = match &verification {
            DkgVerification::Verified => (DkgSharesStatus::Verified, None),
            DkgVerification::Failed(why) => (DkgSharesStatus::Failed, Some(why.clone())),
        };
        p.storage.set_dkg_shares_status(&key_bytes, status).await?;
        result.dkg_status = status.to_string();
        result.dkg_failure = detail.clone();
        tracing::info!(%status, "DKG verification done");
        let decision = DkgDecision {
            aggregate_key: aggregate_hex.clone(),
            verified: status == DkgSharesStatus::Verified,
            detail,
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
        if status == DkgSharesStatus::Verified && !demo_requests.is_empty() {
            let start = Instant::now();
            let signed = coord
                .sign(
                    &mut signer,
                    &mut transport,
                    &demo_requests,
                    Participation::Threshold,
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
        }
        coord.finish(&mut transport).await;
    } else {
        // Serve the coordinator's requests until it says the session is over; a coordinator
        // silent for several phase timeouts has failed, and waiting longer helps nobody.
        let idle = p.phase_timeout * 4;
        loop {
            let incoming = match tokio::time::timeout(idle, transport.recv_any()).await {
                Ok(Some(incoming)) => incoming,
                Ok(None) => return Err("the peer node stopped before the session ended".into()),
                Err(_) => {
                    return Err(format!(
                    "no message from the coordinator (signer {coordinator}) for {}s; see its log",
                    idle.as_secs()
                )
                    .into())
                }
            };
            match incoming {
                Incoming::Round(env) => {
                    if matches!(env.msg.as_ref(), RoundMessage::Done) {
                        if env.from == coordinator {
                            break;
                        }
                        continue;
                    }
                    if let Some(reply) = signer.handle(env.from, &env.msg).await {
                        if let Err(e) = transport.send(env.from, Arc::new(reply)).await {
                            tracing::warn!(error = %e, "reply not delivered");
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
                    let status = if decision.verified {
                        DkgSharesStatus::Verified
                    } else {
                        DkgSharesStatus::Failed
                    };
                    p.storage.set_dkg_shares_status(&key_bytes, status).await?;
                    result.dkg_status = status.to_string();
                    result.dkg_failure = decision.detail;
                    tracing::info!(%status, "coordinator's DKG decision recorded");
                }
            }
        }
    }
    Ok(result)
}

fn decision_round(dkg_id: DkgId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"sbtc-hsm-signer/dkg-decision/v1")
        .chain_update(dkg_id.0.to_be_bytes())
        .finalize()
        .into()
}
