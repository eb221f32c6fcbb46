//! The signer side of batched signing: one nonce per approved sighash after the round is
//! durably recorded in the nonce ledger, then one share per sighash, with the key shares unsealed
//! only for the length of the share computation.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use wsts::common::{Nonce, PublicNonce};

use super::{
    approver::Approver,
    dkg::SignerContext,
    message::{
        BatchNonceRequest, BatchNonceResponse, BatchShareRequest, BatchShareResponse, RoundMessage,
    },
    nonce_ledger::{LedgerError, NonceLedger},
    round::{RoundId, SighashRequest, MAX_BATCH},
    secret::wipe_scalar,
    share_math::{signature_share, TweakCache, WeightedKey},
    shares::{PublicShares, SealedShares},
    transport::{Envelope, Transport},
    SignerIndex,
};

/// Rounds a signer keeps nonces for at once; older ones are dropped (and can no longer be signed).
/// Only the coordinator can open rounds, so only it can push a live round out.
const MAX_PENDING_ROUNDS: usize = 8;

/// Nonces of one round, in memory only; wiped when the round ends or is dropped.
struct PendingRound {
    sighashes: Vec<SighashRequest>,
    nonces: Vec<Option<Nonce>>,
    public: Vec<Option<PublicNonce>>,
    seq: u64,
}

impl Drop for PendingRound {
    fn drop(&mut self) {
        for n in self.nonces.iter_mut().flatten() {
            wipe_scalar(&mut n.d);
            wipe_scalar(&mut n.e);
        }
    }
}

/// The signer side of batched signing for one DKG's key.
pub struct BatchSigner {
    ctx: SignerContext,
    public: Arc<PublicShares>,
    sealed: SealedShares,
    ledger: Arc<dyn NonceLedger>,
    approver: Arc<dyn Approver>,
    pending: HashMap<RoundId, PendingRound>,
    seq: u64,
    /// The one signer allowed to drive rounds (the coordinator the chain tip picked). Requests
    /// from any other member are refused before they touch `pending`, the ledger or the approver.
    coordinator: SignerIndex,
    /// Requests refused because they did not come from the coordinator.
    refused_not_coordinator: u64,
}

impl BatchSigner {
    pub fn new(
        ctx: SignerContext,
        public: Arc<PublicShares>,
        sealed: SealedShares,
        ledger: Arc<dyn NonceLedger>,
        approver: Arc<dyn Approver>,
        coordinator: SignerIndex,
    ) -> Self {
        BatchSigner {
            ctx,
            public,
            sealed,
            ledger,
            approver,
            pending: HashMap::new(),
            seq: 0,
            coordinator,
            refused_not_coordinator: 0,
        }
    }

    /// How many requests were refused because they came from a member that is not the
    /// coordinator.
    pub fn refused_not_coordinator(&self) -> u64 {
        self.refused_not_coordinator
    }

    pub fn me(&self) -> SignerIndex {
        self.ctx.me
    }

    /// A new tenure: `coordinator` (picked by the new chain tip) drives rounds from now on.
    /// Rounds the previous coordinator opened are dropped: their nonces never get a share.
    pub fn set_coordinator(&mut self, coordinator: SignerIndex) {
        if coordinator != self.coordinator {
            self.pending.clear();
            self.coordinator = coordinator;
        }
    }

    pub fn coordinator(&self) -> SignerIndex {
        self.coordinator
    }

    /// Replaces the policy that decides which sighashes this signer signs (the node's tenure
    /// approver after the DKG session).
    pub fn set_approver(&mut self, approver: Arc<dyn Approver>) {
        self.approver = approver;
    }

    pub fn public(&self) -> &Arc<PublicShares> {
        &self.public
    }

    /// Answers one message; `None` means no reply is due.
    pub async fn handle(&mut self, from: SignerIndex, msg: &RoundMessage) -> Option<RoundMessage> {
        let round = match msg {
            RoundMessage::NonceRequest(r) => r.round,
            RoundMessage::ShareRequest(r) => r.round,
            _ => return None,
        };
        if from != self.coordinator {
            // Before anything else: a member that is not the coordinator must not open rounds
            // (which would push the live one out) nor close them (which would burn its nonces).
            self.refused_not_coordinator += 1;
            tracing::warn!(
                from,
                coordinator = self.coordinator,
                kind = msg.kind(),
                "refusing a round request from a member that is not the coordinator"
            );
            return Some(RoundMessage::Refusal {
                round: round.0,
                reason: format!(
                    "only the coordinator (signer {}) may drive rounds; signer {from} is not it",
                    self.coordinator
                ),
            });
        }
        match msg {
            RoundMessage::NonceRequest(req) => Some(self.nonce_request(from, req).await),
            RoundMessage::ShareRequest(req) => self.share_request(from, req).await,
            _ => None,
        }
    }

    async fn nonce_request(&mut self, from: SignerIndex, req: &BatchNonceRequest) -> RoundMessage {
        let refuse = |reason: String| RoundMessage::Refusal {
            round: req.round.0,
            reason,
        };
        if req.dkg_id != self.public.dkg_id {
            return refuse(format!(
                "asked to sign with DKG {} but this signer holds DKG {}",
                req.dkg_id.0, self.public.dkg_id.0
            ));
        }
        if req.sighashes.is_empty() || req.sighashes.len() > MAX_BATCH {
            return refuse(format!(
                "a batch carries 1 to {MAX_BATCH} sighashes, this one {}",
                req.sighashes.len()
            ));
        }
        let approvals = self
            .approver
            .approve(from, req.dkg_id, &req.sighashes)
            .await;
        if approvals.len() != req.sighashes.len() || !approvals.iter().any(|a| *a) {
            return refuse("this signer approves none of the sighashes".into());
        }
        // Durable before any nonce leaves: after a crash this round can never be answered again.
        match self.ledger.record(&req.round).await {
            Ok(()) => {}
            Err(e @ LedgerError::AlreadyUsed(_)) => return refuse(e.to_string()),
            Err(e) => {
                tracing::error!(error = %e, "nonce ledger unavailable; not sending nonces");
                return refuse("nonce ledger unavailable".into());
            }
        }
        let mut rng = rand::rngs::OsRng;
        let nonces: Vec<Option<Nonce>> = approvals
            .iter()
            .map(|ok| ok.then(|| Nonce::random(&mut rng)))
            .collect();
        #[cfg(any(test, feature = "testing"))]
        crate::logging::secret_tap::nonces(nonces.iter().flatten());
        let public: Vec<Option<PublicNonce>> = nonces
            .iter()
            .map(|n| n.as_ref().map(PublicNonce::from))
            .collect();
        if self.pending.len() >= MAX_PENDING_ROUNDS {
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.seq)
                .map(|(r, _)| *r)
            {
                self.pending.remove(&oldest);
            }
        }
        self.seq += 1;
        self.pending.insert(
            req.round,
            PendingRound {
                sighashes: req.sighashes.clone(),
                nonces,
                public: public.clone(),
                seq: self.seq,
            },
        );
        RoundMessage::NonceResponse(BatchNonceResponse {
            round: req.round,
            signer: self.ctx.me,
            nonces: public,
        })
    }

    async fn share_request(
        &mut self,
        from: SignerIndex,
        req: &BatchShareRequest,
    ) -> Option<RoundMessage> {
        let refuse = |reason: String| {
            Some(RoundMessage::Refusal {
                round: req.round.0,
                reason,
            })
        };
        // Taking the round out of `pending` consumes its nonces whatever happens next.
        let Some(pending) = self.pending.remove(&req.round) else {
            return refuse(
                "no nonces for this round in memory (never issued, already used, or issued before \
                 a restart); start a fresh nonce round"
                    .into(),
            );
        };
        if req.dkg_id != self.public.dkg_id || req.sighashes != pending.sighashes {
            return refuse("share request does not match the nonce request".into());
        }
        let Some(mine) = req.nonce_responses.iter().find(|r| r.signer == self.ctx.me) else {
            // Not chosen for this round: the nonces are dropped unused.
            return None;
        };
        if mine.nonces != pending.public {
            return refuse("the request carries nonces this signer did not send".into());
        }
        let m = req.sighashes.len();
        let n = self.ctx.set.len();
        let mut seen = HashSet::new();
        for r in &req.nonce_responses {
            if r.round != req.round
                || r.signer >= n
                || !seen.insert(r.signer)
                || r.nonces.len() != m
            {
                return refuse(format!(
                    "malformed nonce response for signer {} in the share request",
                    r.signer
                ));
            }
        }
        let mut responses: Vec<&BatchNonceResponse> = req.nonce_responses.iter().collect();
        responses.sort_by_key(|r| r.signer);

        // The shares are unsealed only now and wiped when `keys` drops at the end of this call.
        let reason = format!(
            "round {}: unseal key shares to sign {m} sighashes for coordinator {from}",
            req.round
        );
        let unsealed = self
            .sealed
            .unseal(self.ctx.custody.as_ref(), &self.ctx.seal_label);
        let keys = match crate::keys::with_reason(reason, unsealed).await {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot unseal key shares");
                return refuse("this signer cannot unseal its key shares".into());
            }
        };
        let threshold = self.public.threshold as usize;
        let mut shares = Vec::with_capacity(m);
        let mut party_ids = Vec::with_capacity(responses.len());
        let mut nonces = Vec::with_capacity(responses.len());
        // Sighashes of a batch mostly share one participant set and a few spend kinds, so the
        // Lagrange-weighted key and the tweaked keys are computed once, not per sighash.
        let mut weighted: Option<(Vec<u32>, WeightedKey)> = None;
        let mut tweaks = TweakCache::new(keys.aggregate_key());
        for (j, request) in req.sighashes.iter().enumerate() {
            let Some(nonce) = pending.nonces[j].as_ref() else {
                shares.push(None);
                continue;
            };
            party_ids.clear();
            nonces.clear();
            for r in &responses {
                if let Some(pn) = &r.nonces[j] {
                    party_ids.push(r.signer);
                    nonces.push(pn.clone());
                }
            }
            let Some(my_pos) = party_ids.iter().position(|p| *p == self.ctx.me) else {
                shares.push(None);
                continue;
            };
            if party_ids.len() < threshold {
                shares.push(None);
                continue;
            }
            let x = match &weighted {
                Some((ids, w)) if *ids == party_ids => w.0,
                _ => {
                    let w = WeightedKey::new(&keys, &party_ids);
                    let x = w.0;
                    weighted = Some((party_ids.clone(), w));
                    x
                }
            };
            let (tweaked, cx_sign) = tweaks.get(request.kind);
            shares.push(Some(signature_share(
                nonce,
                x,
                tweaked,
                cx_sign,
                my_pos,
                &request.sighash,
                &party_ids,
                &nonces,
            )));
        }
        drop(keys);
        drop(pending);
        Some(RoundMessage::ShareResponse(BatchShareResponse {
            round: req.round,
            signer: self.ctx.me,
            shares,
        }))
    }

    /// Serves requests from the link until a `Done` message or until every link closes.
    pub async fn serve<T: Transport + ?Sized>(&mut self, transport: &mut T) {
        while let Some(Envelope { from, msg }) = transport.recv().await {
            if matches!(msg.as_ref(), RoundMessage::Done) {
                break;
            }
            if let Some(reply) = self.handle(from, &msg).await {
                if let Err(e) = transport.send(from, Arc::new(reply)).await {
                    tracing::warn!(error = %e, "reply not delivered");
                }
            }
        }
    }
}
