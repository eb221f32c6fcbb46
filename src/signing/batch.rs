//! Batched threshold signing: any number of sighashes in ONE nonce exchange and ONE share
//! exchange.
//!
//! WSTS' own rounds sign one message per nonce round. Here the coordinator sends one
//! [`BatchNonceRequest`] with every sighash; each signer answers with one nonce per sighash it
//! approves (after durably recording the round in its [`NonceLedger`]); the coordinator sends one
//! [`BatchShareRequest`] with all nonce responses; each signer answers with one share per sighash.
//! The arithmetic is WSTS v2's (BIP-340 with the BIP-341 tweak for key spends), and the coordinator
//! checks every aggregate signature with libsecp256k1 before returning it. A signer whose share does
//! not verify is named, excluded, and the batch is retried without it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::Arc,
};

use async_trait::async_trait;
use bitcoin::{
    hashes::Hash as _,
    key::{TapTweak as _, UntweakedPublicKey},
    TapNodeHash,
};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use wsts::{
    common::{Nonce, PublicNonce, SignatureShare},
    compute,
    curve::{point::Point, scalar::Scalar},
    errors::AggregatorError,
};

use super::{
    dkg::{recv_until, SignerContext},
    nonce_ledger::{LedgerError, NonceLedger},
    secret::wipe_scalar,
    shares::{compressed, KeyShares, PublicShares, SealedShares},
    transport::{Envelope, RoundMessage, Transport},
    DkgId, Result, SignerIndex, SigningError,
};

/// Most sighashes one batch may carry (a sweep has at most a few thousand inputs).
pub const MAX_BATCH: usize = 10_000;
/// Rounds a signer keeps nonces for at once; older ones are dropped (and can no longer be signed).
const MAX_PENDING_ROUNDS: usize = 8;

/// A signing round, chosen at random by its coordinator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoundId(pub [u8; 32]);

impl RoundId {
    pub fn random() -> Self {
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        RoundId(id)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(RoundId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoundId({})", hex::encode(&self.0[..8]))
    }
}

/// How an input is spent, which decides the key its signature must verify under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SpendKind {
    /// Key path: BIP-341 tap-tweaked aggregate key (the peg UTXO; `merkle_root` None = no scripts).
    KeySpend { merkle_root: Option<[u8; 32]> },
    /// Script path: the untweaked x-only aggregate key in `<key> OP_CHECKSIG` (deposit leaves).
    ScriptPath,
}

/// One sighash to sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SighashRequest {
    pub sighash: [u8; 32],
    pub kind: SpendKind,
}

/// A verified BIP-340 signature for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedSighash {
    pub request: SighashRequest,
    pub signature: secp256k1::schnorr::Signature,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNonceRequest {
    pub dkg_id: DkgId,
    pub round: RoundId,
    pub sighashes: Vec<SighashRequest>,
}

/// One nonce per requested sighash; `None` where the signer does not approve it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNonceResponse {
    pub round: RoundId,
    pub signer: SignerIndex,
    pub nonces: Vec<Option<PublicNonce>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchShareRequest {
    pub dkg_id: DkgId,
    pub round: RoundId,
    pub sighashes: Vec<SighashRequest>,
    /// The nonce responses of the signers chosen for this round.
    pub nonce_responses: Vec<BatchNonceResponse>,
}

/// One share per requested sighash; `None` where the signer gave no nonce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchShareResponse {
    pub round: RoundId,
    pub signer: SignerIndex,
    pub shares: Vec<Option<Scalar>>,
}

/// The caller's policy: which sighashes this signer agrees to sign. The lead wires the
/// no-equivocation guard (and the re-derivation of every proposal) into this.
#[async_trait]
pub trait Approver: Send + Sync {
    /// One answer per sighash, in order. `coordinator` is the (link-authenticated) requester.
    async fn approve(
        &self,
        coordinator: SignerIndex,
        dkg_id: DkgId,
        sighashes: &[SighashRequest],
    ) -> Vec<bool>;
}

/// Approves everything (benchmarks, and tests where approval is not the subject).
#[derive(Debug, Default, Clone, Copy)]
pub struct ApproveAll;

#[async_trait]
impl Approver for ApproveAll {
    async fn approve(&self, _: SignerIndex, _: DkgId, sighashes: &[SighashRequest]) -> Vec<bool> {
        vec![true; sighashes.len()]
    }
}

/// Approves exactly the sighashes in a set.
#[derive(Debug, Default, Clone)]
pub struct ApproveListed(pub HashSet<[u8; 32]>);

#[async_trait]
impl Approver for ApproveListed {
    async fn approve(&self, _: SignerIndex, _: DkgId, sighashes: &[SighashRequest]) -> Vec<bool> {
        sighashes
            .iter()
            .map(|s| self.0.contains(&s.sighash))
            .collect()
    }
}

/// Nonces of one round, in memory only; wiped when the round ends or is dropped.
struct PendingRound {
    coordinator: SignerIndex,
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
}

impl BatchSigner {
    pub fn new(
        ctx: SignerContext,
        public: Arc<PublicShares>,
        sealed: SealedShares,
        ledger: Arc<dyn NonceLedger>,
        approver: Arc<dyn Approver>,
    ) -> Self {
        BatchSigner {
            ctx,
            public,
            sealed,
            ledger,
            approver,
            pending: HashMap::new(),
            seq: 0,
        }
    }

    pub fn me(&self) -> SignerIndex {
        self.ctx.me
    }

    pub fn public(&self) -> &Arc<PublicShares> {
        &self.public
    }

    /// Answers one message; `None` means no reply is due.
    pub async fn handle(&mut self, from: SignerIndex, msg: &RoundMessage) -> Option<RoundMessage> {
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
                coordinator: from,
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
        if pending.coordinator != from {
            return refuse(format!(
                "round belongs to coordinator {}, not {from}",
                pending.coordinator
            ));
        }
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
        let keys = match self
            .sealed
            .unseal(self.ctx.custody.as_ref(), &self.ctx.seal_label)
            .await
        {
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

/// The scalar tweak WSTS expects: BIP-341 TapTweak for key spends, zero (x-only key, no tweak)
/// for script-path spends.
fn tweak_for(aggregate_key: &Point, kind: SpendKind) -> Scalar {
    match kind {
        SpendKind::KeySpend { merkle_root } => compute::tweak(aggregate_key, merkle_root),
        SpendKind::ScriptPath => Scalar::from(0u32),
    }
}

/// One signer's share z = ±(d + rho * e) + sign * c * x, where x is the Lagrange-weighted key:
/// WSTS v2's `Party::sign_with_tweak` with the nonce math of [`message_nonces`].
#[allow(clippy::too_many_arguments)]
fn signature_share(
    nonce: &Nonce,
    x: Scalar,
    tweaked: Point,
    cx_sign: Scalar,
    my_pos: usize,
    msg: &[u8; 32],
    party_ids: &[u32],
    nonces: &[PublicNonce],
) -> Scalar {
    let (rhos, big_r) = message_nonces(msg, party_ids, nonces);
    let c = compute::challenge(&tweaked, &big_r, msg);
    let mut r = nonce.d + nonce.e * rhos[my_pos];
    if !big_r.has_even_y() {
        r = -r;
    }
    let z = r + cx_sign * (c * x);
    wipe_scalar(&mut r);
    z
}

/// Sum over this signer's keys of `private key * Lagrange coefficient` for one participant set.
/// Wiped on drop.
struct WeightedKey(Scalar);

impl WeightedKey {
    fn new(keys: &KeyShares, party_ids: &[u32]) -> Self {
        let key_ids: Vec<u32> = party_ids.iter().map(|p| p + 1).collect();
        let mut x = Scalar::from(0u32);
        for (key_id, sk) in keys.private_keys() {
            x += *sk * compute::lambda(*key_id, &key_ids);
        }
        WeightedKey(x)
    }
}

impl Drop for WeightedKey {
    fn drop(&mut self) {
        wipe_scalar(&mut self.0);
    }
}

/// The key each spend kind signs under, with WSTS' sign flip for the private key: BIP-340 uses
/// even-y keys, so the shares are negated when exactly one of internal and tweaked key is odd
/// (key spends), or when the untweaked key is odd (script paths). This is `v2::Party::
/// sign_with_tweak`'s rule.
struct TweakCache {
    group_key: Point,
    entries: Vec<(SpendKind, Point, Scalar)>,
}

impl TweakCache {
    fn new(group_key: Point) -> Self {
        TweakCache {
            group_key,
            entries: Vec::new(),
        }
    }

    fn get(&mut self, kind: SpendKind) -> (Point, Scalar) {
        if let Some((_, p, s)) = self.entries.iter().find(|(k, _, _)| *k == kind) {
            return (*p, *s);
        }
        let one = Scalar::from(1u32);
        let tweak = tweak_for(&self.group_key, kind);
        let (key, flip) = if tweak != Scalar::from(0u32) {
            let key = compute::tweaked_public_key_from_tweak(&self.group_key, tweak);
            (key, key.has_even_y() ^ self.group_key.has_even_y())
        } else {
            (self.group_key, !self.group_key.has_even_y())
        };
        let sign = if flip { -one } else { one };
        self.entries.push((kind, key, sign));
        (key, sign)
    }
}

/// The binding factors of every participant and the aggregate nonce R for one message, as WSTS
/// defines them (`compute::binding`, `compute::intermediate`), computed with each nonce compressed
/// once (WSTS recompresses all of them for every participant) and R = sum(D) + multiexp(rho, E).
#[allow(non_snake_case)]
fn message_nonces(msg: &[u8], party_ids: &[u32], nonces: &[PublicNonce]) -> (Vec<Scalar>, Point) {
    let compressed: Vec<_> = nonces
        .iter()
        .map(|n| (n.D.compress(), n.E.compress()))
        .collect();
    let rhos: Vec<Scalar> = party_ids
        .iter()
        .map(|&i| compute::binding_compressed(&compute::id(i), &compressed, msg))
        .collect();
    let sum_d: Point = nonces.iter().map(|n| n.D).sum();
    let es: Vec<Point> = nonces.iter().map(|n| n.E).collect();
    let R = match Point::multimult(rhos.clone(), es) {
        Ok(e) => sum_d + e,
        // Only fails on an empty input; the plain sum cannot fail.
        Err(_) => compute::intermediate(msg, party_ids, nonces).1,
    };
    (rhos, R)
}

/// The key a signature for `kind` must verify under.
pub fn signing_key(
    aggregate_key: &secp256k1::PublicKey,
    kind: SpendKind,
) -> secp256k1::XOnlyPublicKey {
    let (internal, _) = aggregate_key.x_only_public_key();
    match kind {
        SpendKind::ScriptPath => internal,
        SpendKind::KeySpend { merkle_root } => {
            let secp = secp256k1::Secp256k1::verification_only();
            let untweaked: UntweakedPublicKey = internal;
            let root = merkle_root.map(TapNodeHash::from_byte_array);
            untweaked.tap_tweak(&secp, root).0.to_x_only_public_key()
        }
    }
}

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
        for attempt in 1..=max_rounds {
            match self
                .attempt(own, transport, requests, needed, &excluded)
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
                Err(SigningError::Timeout { .. }) => break,
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
                Err(SigningError::Timeout { .. }) => break,
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

#[cfg(test)]
mod tests {
    use wsts::traits::Signer as _;

    use super::*;

    /// Our share arithmetic gives exactly WSTS v2's shares, for key spends and script paths.
    #[test]
    fn shares_equal_wsts_v2_party_shares() {
        let (n, t) = (4u32, 3u32);
        let mut rng = rand::rngs::OsRng;
        let mut parties: Vec<wsts::v2::Party> = (0..n)
            .map(|i| wsts::v2::Party::new(i, &[i + 1], n, n, t, &mut rng))
            .collect();
        wsts::traits::test_helpers::dkg(&mut parties, &mut rng).expect("dkg");
        let party_ids: Vec<u32> = (0..n).collect();
        let key_ids: Vec<u32> = (1..=n).collect();
        for kind in [
            SpendKind::KeySpend { merkle_root: None },
            SpendKind::KeySpend {
                merkle_root: Some([9u8; 32]),
            },
            SpendKind::ScriptPath,
        ] {
            let msg = [0x42u8; 32];
            let nonces: Vec<PublicNonce> = parties
                .iter_mut()
                .flat_map(|p| p.gen_nonces(&mut rng))
                .collect();
            for (i, p) in parties.iter().enumerate() {
                let expected = match kind {
                    SpendKind::KeySpend { merkle_root } => {
                        p.sign_taproot(&msg, &party_ids, &key_ids, &nonces, merkle_root)
                    }
                    SpendKind::ScriptPath => p.sign_schnorr(&msg, &party_ids, &key_ids, &nonces),
                };
                let state = p.save();
                let keys = KeyShares::new(
                    DkgId(1),
                    i as u32,
                    state.group_key,
                    state.parties[0].1.private_keys.clone(),
                );
                let nonce = state.parties[0].1.nonce.clone();
                let x = WeightedKey::new(&keys, &party_ids);
                let (tweaked, sign) = TweakCache::new(state.group_key).get(kind);
                let ours =
                    signature_share(&nonce, x.0, tweaked, sign, i, &msg, &party_ids, &nonces);
                assert_eq!(ours, expected[0].z_i, "party {i}, {kind:?}");
            }
        }
    }
}
