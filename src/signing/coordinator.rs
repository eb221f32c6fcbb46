//! The coordinator side of batched signing: any number of sighashes in ONE nonce exchange and
//! ONE share exchange. It checks every aggregate signature with libsecp256k1 before returning it;
//! a signer whose share does not verify is named, excluded, and the batch is retried without it.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use tokio::time::Instant;
use wsts::{
    common::{PublicNonce, SignatureShare},
    compute,
    curve::scalar::Scalar,
    errors::AggregatorError,
};

use super::{
    dkg::{recv_until, SignerContext},
    message::{
        BatchNonceRequest, BatchNonceResponse, BatchShareRequest, BatchShareResponse, RoundMessage,
    },
    round::{RoundId, SighashRequest, SignedSighash},
    share_math::{message_nonces, signing_key, tweak_for},
    shares::{compressed, PublicShares},
    signer::BatchSigner,
    transport::Transport,
    Result, SignerIndex, SigningError,
};

/// Who must take part in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Participation {
    /// At least the threshold (normal signing; the others may be down).
    Threshold,
    /// Every signer in the set (DKG verification).
    All,
}

/// A signer the coordinator stopped asking, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclusion {
    pub signer: SignerIndex,
    pub reason: String,
}

/// The signatures of a batch, in request order, each verified with libsecp256k1.
#[derive(Clone, Debug)]
pub struct BatchSignatures {
    pub signatures: Vec<SignedSighash>,
    /// Signers named and excluded along the way (bad shares, silence).
    pub excluded: Vec<Exclusion>,
    /// Nonce rounds used (1 unless someone had to be excluded).
    pub rounds: u32,
    /// Phases that ended because their timeout passed (someone stayed silent), over all rounds.
    pub phase_timeouts: u32,
}

/// The coordinator side of batched signing.
pub struct BatchCoordinator {
    ctx: SignerContext,
    public: Arc<PublicShares>,
    aggregate_key: secp256k1::PublicKey,
}

impl BatchCoordinator {
    pub fn new(ctx: SignerContext, public: Arc<PublicShares>) -> Result<Self> {
        let aggregate_key = public.aggregate_public_key()?;
        Ok(BatchCoordinator {
            ctx,
            public,
            aggregate_key,
        })
    }

    /// Signs every request in one nonce exchange and one share exchange (more only if a signer
    /// misbehaves or falls silent, in which case it is excluded and the batch retried).
    /// `own` is this node's own signer, answered in-process.
    pub async fn sign<T: Transport + ?Sized>(
        &self,
        own: &mut BatchSigner,
        transport: &mut T,
        requests: &[SighashRequest],
        participation: Participation,
    ) -> Result<BatchSignatures> {
        let n = self.ctx.set.len();
        let needed = match participation {
            Participation::Threshold => self.public.threshold,
            Participation::All => n,
        };
        let mut excluded: BTreeMap<SignerIndex, String> = BTreeMap::new();
        let max_rounds = n - self.public.threshold + 1;
        let mut phase_timeouts = 0;
        for attempt in 1..=max_rounds {
            match self
                .attempt(
                    own,
                    transport,
                    requests,
                    needed,
                    &excluded,
                    &mut phase_timeouts,
                )
                .await?
            {
                Attempt::Signed(signatures) => {
                    return Ok(BatchSignatures {
                        signatures,
                        excluded: excluded
                            .into_iter()
                            .map(|(signer, reason)| Exclusion { signer, reason })
                            .collect(),
                        rounds: attempt,
                        phase_timeouts,
                    })
                }
                Attempt::Exclude(bad) => {
                    for (signer, reason) in bad {
                        tracing::warn!(signer, %reason, "excluding signer from the batch");
                        excluded.insert(signer, reason);
                    }
                    if (n - excluded.len() as u32) < needed {
                        return Err(SigningError::InsufficientSigners(format!(
                            "{} of {n} signers excluded ({excluded:?}); {needed} needed",
                            excluded.len()
                        )));
                    }
                }
            }
        }
        Err(SigningError::InsufficientSigners(format!(
            "gave up after {max_rounds} rounds; excluded: {excluded:?}"
        )))
    }

    async fn attempt<T: Transport + ?Sized>(
        &self,
        own: &mut BatchSigner,
        transport: &mut T,
        requests: &[SighashRequest],
        needed: u32,
        excluded: &BTreeMap<SignerIndex, String>,
        phase_timeouts: &mut u32,
    ) -> Result<Attempt> {
        let n = self.ctx.set.len();
        let me = self.ctx.me;
        let m = requests.len();
        let round = RoundId::random();

        // Nonce exchange.
        let request = RoundMessage::NonceRequest(BatchNonceRequest {
            dkg_id: self.public.dkg_id,
            round,
            sighashes: requests.to_vec(),
        });
        let request = Arc::new(request);
        let down = transport.broadcast(request.clone()).await;
        let mut answered: HashSet<SignerIndex> = down.iter().copied().collect();
        answered.extend(excluded.keys().copied());
        let mut responses: BTreeMap<SignerIndex, BatchNonceResponse> = BTreeMap::new();
        let mut refusals: BTreeMap<SignerIndex, String> = BTreeMap::new();
        match own.handle(me, &request).await {
            Some(RoundMessage::NonceResponse(r)) if !excluded.contains_key(&me) => {
                responses.insert(me, r);
            }
            Some(RoundMessage::Refusal { reason, .. }) => {
                refusals.insert(me, reason);
            }
            _ => {}
        }
        answered.insert(me);
        let deadline = Instant::now() + self.ctx.phase_timeout;
        while (answered.len() as u32) < n {
            let env = match recv_until(transport, deadline, "nonce exchange", Vec::new).await {
                Ok(env) => env,
                Err(SigningError::Timeout { .. }) => {
                    *phase_timeouts += 1;
                    break;
                }
                Err(e) => return Err(e),
            };
            if excluded.contains_key(&env.from) {
                continue;
            }
            match env.msg.as_ref() {
                RoundMessage::NonceResponse(r) if r.round == round => {
                    if r.signer != env.from || r.nonces.len() != m {
                        return Ok(Attempt::Exclude(vec![(
                            env.from,
                            "sent a malformed nonce response".into(),
                        )]));
                    }
                    answered.insert(env.from);
                    responses.insert(env.from, r.clone());
                }
                RoundMessage::Refusal { round: r, reason } if *r == round.0 => {
                    answered.insert(env.from);
                    refusals.insert(env.from, reason.clone());
                }
                _ => {}
            }
        }
        for (j, _) in requests.iter().enumerate() {
            let have = responses.values().filter(|r| r.nonces[j].is_some()).count() as u32;
            if have < needed {
                return Err(SigningError::InsufficientSigners(format!(
                    "sighash {j} has nonces from {have} signers, {needed} needed; unreachable: \
                     {down:?}; refusals: {refusals:?}"
                )));
            }
        }

        // Share exchange.
        let chosen: Vec<SignerIndex> = responses.keys().copied().collect();
        let share_request = Arc::new(RoundMessage::ShareRequest(BatchShareRequest {
            dkg_id: self.public.dkg_id,
            round,
            sighashes: requests.to_vec(),
            nonce_responses: responses.values().cloned().collect(),
        }));
        transport.broadcast(share_request.clone()).await;
        let mut share_responses: BTreeMap<SignerIndex, BatchShareResponse> = BTreeMap::new();
        let mut bad: Vec<(SignerIndex, String)> = Vec::new();
        if chosen.contains(&me) {
            match own.handle(me, &share_request).await {
                Some(RoundMessage::ShareResponse(r)) => {
                    share_responses.insert(me, r);
                }
                other => {
                    return Err(SigningError::Internal(format!(
                        "this node's own signer did not sign: {other:?}"
                    )))
                }
            }
        }
        let deadline = Instant::now() + self.ctx.phase_timeout;
        while share_responses.len() + bad.len() < chosen.len() {
            let env = match recv_until(transport, deadline, "share exchange", Vec::new).await {
                Ok(env) => env,
                Err(SigningError::Timeout { .. }) => {
                    *phase_timeouts += 1;
                    break;
                }
                Err(e) => return Err(e),
            };
            if !chosen.contains(&env.from) || share_responses.contains_key(&env.from) {
                continue;
            }
            match env.msg.as_ref() {
                RoundMessage::ShareResponse(r) if r.round == round => {
                    if r.signer != env.from || r.shares.len() != m {
                        bad.push((env.from, "sent a malformed share response".into()));
                    } else {
                        share_responses.insert(env.from, r.clone());
                    }
                }
                RoundMessage::Refusal { round: r, reason } if *r == round.0 => {
                    bad.push((
                        env.from,
                        format!("gave nonces, then refused shares: {reason}"),
                    ));
                }
                _ => {}
            }
        }
        for s in &chosen {
            if !share_responses.contains_key(s) && !bad.iter().any(|(b, _)| b == s) {
                bad.push((*s, "gave nonces but sent no shares in time".into()));
            }
        }
        if !bad.is_empty() {
            return Ok(Attempt::Exclude(bad));
        }

        // Aggregate and check every signature.
        let mut aggregator = None;
        let mut signatures = Vec::with_capacity(m);
        let mut bad: BTreeMap<SignerIndex, String> = BTreeMap::new();
        for (j, request) in requests.iter().enumerate() {
            let mut party_ids = Vec::new();
            let mut nonces = Vec::new();
            let mut sig_shares = Vec::new();
            for (signer, r) in &responses {
                if let Some(nonce) = &r.nonces[j] {
                    let Some(z) = share_responses.get(signer).and_then(|s| s.shares[j]) else {
                        bad.entry(*signer).or_insert_with(|| {
                            format!("gave a nonce but no share for sighash {j}")
                        });
                        continue;
                    };
                    party_ids.push(*signer);
                    nonces.push(nonce.clone());
                    sig_shares.push(SignatureShare {
                        id: *signer,
                        z_i: z,
                        key_ids: vec![signer + 1],
                    });
                }
            }
            if !bad.is_empty() {
                continue;
            }
            match self.aggregate(request, &party_ids, &nonces, &sig_shares) {
                Some(signature) => signatures.push(SignedSighash {
                    request: *request,
                    signature,
                }),
                None => {
                    // Name the culprits with WSTS' share check.
                    let agg = match &mut aggregator {
                        Some(a) => a,
                        None => aggregator.insert(self.public.aggregator()?),
                    };
                    let key_ids: Vec<u32> = party_ids.iter().map(|p| p + 1).collect();
                    let tweak = tweak_for(&self.public.aggregate_key, request.kind);
                    match agg.check_signature_shares(
                        &request.sighash,
                        &nonces,
                        &sig_shares,
                        &key_ids,
                        Some(tweak),
                    ) {
                        AggregatorError::BadPartySigs(ids) | AggregatorError::BadPartyKeys(ids) => {
                            for id in ids {
                                bad.entry(id).or_insert_with(|| {
                                    format!("sent an invalid signature share for sighash {j}")
                                });
                            }
                        }
                        other => {
                            return Err(SigningError::Internal(format!(
                            "sighash {j}: aggregate signature invalid but no share is: {other:?}"
                        )))
                        }
                    }
                }
            }
        }
        if !bad.is_empty() {
            return Ok(Attempt::Exclude(bad.into_iter().collect()));
        }
        Ok(Attempt::Signed(signatures))
    }

    /// Sums the shares into a BIP-340 signature and checks it with libsecp256k1; `None` if it does
    /// not verify.
    #[allow(non_snake_case)]
    fn aggregate(
        &self,
        request: &SighashRequest,
        party_ids: &[u32],
        nonces: &[PublicNonce],
        shares: &[SignatureShare],
    ) -> Option<secp256k1::schnorr::Signature> {
        let group_key = self.public.aggregate_key;
        let tweak = tweak_for(&group_key, request.kind);
        let (_, R) = message_nonces(&request.sighash, party_ids, nonces);
        let mut z: Scalar = shares.iter().map(|s| s.z_i).sum();
        if tweak != Scalar::from(0u32) {
            let tweaked = compute::tweaked_public_key_from_tweak(&group_key, tweak);
            let c = compute::challenge(&tweaked, &R, &request.sighash);
            let cx_sign = if tweaked.has_even_y() {
                Scalar::from(1u32)
            } else {
                -Scalar::from(1u32)
            };
            z += cx_sign * c * tweak;
        }
        let mut raw = [0u8; 64];
        raw[..32].copy_from_slice(&compressed(&R)[1..]);
        raw[32..].copy_from_slice(&z.to_bytes());
        let signature = secp256k1::schnorr::Signature::from_slice(&raw).ok()?;
        let key = signing_key(&self.aggregate_key, request.kind);
        let msg = secp256k1::Message::from_digest(request.sighash);
        secp256k1::Secp256k1::verification_only()
            .verify_schnorr(&signature, &msg, &key)
            .ok()?;
        Some(signature)
    }

    /// Tells every serving signer to stop.
    pub async fn finish<T: Transport + ?Sized>(&self, transport: &mut T) {
        transport.broadcast(Arc::new(RoundMessage::Done)).await;
    }
}

enum Attempt {
    Signed(Vec<SignedSighash>),
    Exclude(Vec<(SignerIndex, String)>),
}
