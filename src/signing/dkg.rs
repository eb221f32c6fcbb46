//! Distributed key generation with WSTS' FIRE coordinator, every signer taking part.
//!
//! Before the WSTS rounds, each signer generates a transport key in memory and endorses it with its
//! identity key (one custody signature). WSTS uses the transport keys as its "network keys": private
//! polynomial shares are encrypted to them (ECDH + AES-GCM), so they cross the links end-to-end
//! encrypted to their recipient. At the end, the key shares are sealed by the custody backend.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use hashbrown::{HashMap as HbMap, HashSet as HbSet};
use tokio::time::Instant;
use wsts::{
    curve::{ecdsa, point::Point},
    net::{DkgFailure, DkgStatus, Message, Packet},
    state_machine::{
        coordinator::{fire::Coordinator as FireCoordinator, Config, Coordinator as _},
        signer::Signer as WstsSigner,
        OperationResult, PublicKeys,
    },
    traits::Signer as _,
    v2,
};

use sbtc_custody::{Custody, KeyLabel};

use crate::keys::with_reason;

use super::{
    message::RoundMessage,
    secret::wipe_scalar,
    shares::{KeyShares, PublicShares, SealedShares},
    transport::{Envelope, Transport},
    transport_key::{TransportKey, TransportKeyEndorsement},
    DkgId, Result, SignerIndex, SignerSet, SigningError,
};

/// What one signer needs to take part in rounds: who the signers are, which one it is, and its
/// custody backend with the labels of its identity and seal keys.
#[derive(Clone)]
pub struct SignerContext {
    pub set: Arc<SignerSet>,
    pub me: SignerIndex,
    pub custody: Arc<dyn Custody>,
    pub identity_label: KeyLabel,
    pub seal_label: KeyLabel,
    /// How long one phase of a round may wait for peers.
    pub phase_timeout: Duration,
}

impl std::fmt::Debug for SignerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerContext")
            .field("me", &self.me)
            .field("signers", &self.set.len())
            .field("threshold", &self.set.threshold())
            .field("backend", &self.custody.backend())
            .finish()
    }
}

/// The result of a DKG for one signer: the public shares (same at every signer) and this signer's
/// sealed key shares, to be stored with status `unverified`.
#[derive(Clone, Debug)]
pub struct DkgOutcome {
    pub public: PublicShares,
    pub sealed: SealedShares,
    /// Messages dropped because they were duplicates, early beyond the per-peer bound, for
    /// another DKG, or from a member not allowed to send them; by sender.
    pub dropped: BTreeMap<SignerIndex, u32>,
    /// The most peer messages held at once for a phase that had not begun here (at most one
    /// public and one private share message per peer).
    pub held_peak: usize,
}

/// Runs one DKG as signer `ctx.me`; if `ctx.me == coordinator` this node also coordinates.
/// Every signer in the set must take part. Returns once this signer has its shares (and, for the
/// coordinator, once every signer reported success).
pub async fn run_dkg<T: Transport + ?Sized>(
    ctx: &SignerContext,
    transport: &mut T,
    dkg_id: DkgId,
    coordinator: SignerIndex,
) -> Result<DkgOutcome> {
    if dkg_id.0 == 0 {
        return Err(SigningError::Internal(
            "DKG id 0 is reserved by WSTS".into(),
        ));
    }
    let n = ctx.set.len();
    if coordinator >= n || ctx.me >= n {
        return Err(SigningError::SignerSet(format!(
            "coordinator {coordinator} or signer {} is outside the set of {n}",
            ctx.me
        )));
    }

    // 1. Transport keys, endorsed by identity keys.
    let transport_key = TransportKey::generate()?;
    let endorsement = with_reason(
        format!("dkg {dkg_id}: endorse this signer's transport key"),
        TransportKeyEndorsement::create(
            ctx.custody.as_ref(),
            &ctx.identity_label,
            dkg_id,
            ctx.me,
            &transport_key,
        ),
    )
    .await?;
    let mut keys: HashMap<SignerIndex, (ecdsa::PublicKey, Point)> = HashMap::new();
    keys.insert(ctx.me, endorsement.verify(&ctx.set, dkg_id, ctx.me)?);
    transport
        .broadcast(Arc::new(RoundMessage::TransportKey(endorsement)))
        .await;

    let mut early: VecDeque<Envelope> = VecDeque::new();
    let mut early_per_peer: HashMap<SignerIndex, usize> = HashMap::new();
    let mut dropped: BTreeMap<SignerIndex, u32> = BTreeMap::new();
    let deadline = Instant::now() + ctx.phase_timeout;
    while (keys.len() as u32) < n {
        let env = recv_until(transport, deadline, "DKG transport keys", || {
            (0..n).filter(|i| !keys.contains_key(i)).collect()
        })
        .await?;
        match env.msg.as_ref() {
            RoundMessage::TransportKey(e) if e.dkg_id == dkg_id => {
                if keys.contains_key(&env.from) {
                    *dropped.entry(env.from).or_default() += 1;
                    continue;
                }
                // A broken endorsement is named and refused; the signer may still send a good
                // one before the phase times out (naming it among the missing).
                match e.verify(&ctx.set, dkg_id, env.from) {
                    Ok(verified) => {
                        keys.insert(env.from, verified);
                    }
                    Err(err) => {
                        tracing::warn!(from = env.from, error = %err, "refusing a transport key endorsement");
                        *dropped.entry(env.from).or_default() += 1;
                    }
                }
            }
            RoundMessage::TransportKey(e) => {
                // Endorsements are bound to one DKG id: one for another DKG is never used here.
                tracing::warn!(
                    from = env.from,
                    endorsed_for = e.dkg_id.0,
                    dkg_id = dkg_id.0,
                    "refusing a transport key endorsed for another DKG"
                );
                *dropped.entry(env.from).or_default() += 1;
            }
            RoundMessage::Dkg(_) => {
                // A peer a phase ahead of us sends at most a few messages; more is a flood.
                let held = early_per_peer.entry(env.from).or_default();
                if *held < MAX_EARLY_PER_PEER {
                    *held += 1;
                    early.push_back(env);
                } else {
                    *dropped.entry(env.from).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    // 2. WSTS state machines keyed by the transport keys.
    let mut public_keys = PublicKeys::default();
    let mut signer_key_ids: HbMap<u32, HbSet<u32>> = HbMap::new();
    let mut signer_points: HbMap<u32, Point> = HbMap::new();
    for (idx, (ecdsa_key, point)) in &keys {
        public_keys.signers.insert(*idx, *ecdsa_key);
        public_keys.key_ids.insert(idx + 1, *ecdsa_key);
        signer_key_ids.insert(*idx, [idx + 1].into_iter().collect());
        signer_points.insert(*idx, *point);
    }
    public_keys.signer_key_ids = signer_key_ids.clone();
    let threshold = ctx.set.threshold();
    let mut network_key = transport_key.secret();
    let mut rng = rand::rngs::OsRng;
    let signer = WstsSigner::<v2::Party>::new(
        threshold,
        n,
        n,
        n,
        ctx.me,
        vec![ctx.me + 1],
        network_key,
        public_keys,
        &mut rng,
    );
    let mut signer = match signer {
        Ok(s) => s,
        Err(e) => {
            wipe_scalar(&mut network_key);
            return Err(SigningError::Dkg(format!("WSTS signer setup: {e:?}")));
        }
    };
    let mut coord = if ctx.me == coordinator {
        let config = Config::with_timeouts(
            n,
            n,
            threshold,
            n,
            network_key,
            None,
            None,
            None,
            None,
            None,
            signer_key_ids,
            signer_points,
        );
        let mut c = FireCoordinator::<v2::Aggregator>::new(config);
        c.current_dkg_id = dkg_id.0 - 1;
        Some(c)
    } else {
        None
    };
    wipe_scalar(&mut network_key);

    let mut round = DkgRound {
        ctx,
        dkg_id,
        coordinator,
        local: early,
        held: Vec::new(),
        released: VecDeque::new(),
        public_started: false,
        private_started: false,
        signer_status: None,
        coord_result: None,
        public_from: HashSet::new(),
        private_from: HashSet::new(),
        end_from: HashSet::new(),
        dropped,
        held_peak: 0,
    };
    if let Some(c) = coord.as_mut() {
        let packet = c
            .start_dkg_round()
            .map_err(|e| SigningError::Dkg(format!("coordinator start: {e:?}")))?;
        round.emit(transport, packet.msg).await;
    }

    // 3. Drive both state machines until this signer (and the coordinator, if it is us) is done.
    let deadline = Instant::now() + ctx.phase_timeout * 3;
    loop {
        let done_signer = round.signer_status.is_some();
        let done_coord = coord.is_none() || round.coord_result.is_some();
        if done_signer && done_coord {
            break;
        }
        // Held shares whose phase has begun: already judged and shown to the coordinator, now
        // for this signer's state machine only.
        if let Some(env) = round.released.pop_front() {
            if let RoundMessage::Dkg(msg) = env.msg.as_ref() {
                round
                    .feed_signer(transport, &mut signer, env.from, msg)
                    .await?;
            }
            continue;
        }
        let env = match round.local.pop_front() {
            Some(env) => env,
            None => {
                recv_until(transport, deadline, "DKG rounds", || {
                    (0..n).filter(|i| *i != ctx.me).collect()
                })
                .await?
            }
        };
        let RoundMessage::Dkg(msg) = env.msg.as_ref() else {
            continue;
        };
        match round.judge(msg, env.from) {
            Verdict::Accept => {}
            Verdict::Drop(detail) => {
                tracing::warn!(from = env.from, %detail, "dropping DKG message");
                *round.dropped.entry(env.from).or_default() += 1;
                continue;
            }
            Verdict::Culprit(detail) => {
                tracing::error!(from = env.from, %detail, "DKG abandoned: a member sent a malformed message");
                return Err(SigningError::Misbehaving {
                    signer: env.from,
                    detail: format!("DKG {dkg_id}: {detail}"),
                });
            }
        }
        if let Some(c) = coord.as_mut() {
            let packet = Packet {
                msg: msg.clone(),
                sig: Vec::new(),
            };
            let (out, result) = contain(env.from, "the WSTS coordinator", || {
                c.process_message(&packet)
                    .map_err(|e| SigningError::Dkg(format!("coordinator: {e:?}")))
            })??;
            if let Some(out) = out {
                round.emit(transport, out.msg).await;
            }
            match result {
                Some(OperationResult::Dkg(point)) => round.coord_result = Some(point),
                Some(OperationResult::DkgError(e)) => {
                    return Err(SigningError::Dkg(format!(
                        "coordinator reports {}",
                        describe_dkg_error(&e)
                    )))
                }
                _ => {}
            }
        }
        round
            .feed_signer(transport, &mut signer, env.from, msg)
            .await?;
    }

    // 4. Take the shares out of WSTS, seal them, and wipe what we can reach.
    if let Some(DkgStatus::Failure(f)) = &round.signer_status {
        return Err(SigningError::Dkg(format!(
            "this signer's DKG failed: {}",
            describe_failure(f)
        )));
    }
    #[cfg(any(test, feature = "testing"))]
    crate::logging::secret_tap::dkg_signer(&signer);
    let mut state = signer.signer.save();
    signer.signer.clear_polys();
    let aggregate_key = state.group_key;
    if let Some(coord_key) = round.coord_result {
        if coord_key != aggregate_key {
            return Err(SigningError::Dkg(
                "the coordinator's aggregate key differs from this signer's".into(),
            ));
        }
    }
    let mut private_keys = Vec::new();
    for (_, party) in state.parties.iter_mut() {
        party.polynomial = None;
        for (key_id, scalar) in party.private_keys.iter_mut() {
            private_keys.push((*key_id, *scalar));
            wipe_scalar(scalar);
        }
        wipe_scalar(&mut party.nonce.d);
        wipe_scalar(&mut party.nonce.e);
    }
    let commitments: BTreeMap<u32, _> = signer
        .commitments
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    wipe_scalar(&mut signer.network_private_key);
    drop(signer);
    if commitments.len() as u32 != n {
        return Err(SigningError::Dkg(format!(
            "expected commitments from {n} parties, have {}",
            commitments.len()
        )));
    }
    let shares = KeyShares::new(dkg_id, ctx.me, aggregate_key, private_keys);
    let sealed = with_reason(
        format!("dkg {dkg_id}: seal this signer's key shares"),
        shares.seal(ctx.custody.as_ref(), &ctx.seal_label),
    )
    .await?;
    drop(shares);
    Ok(DkgOutcome {
        public: PublicShares {
            dkg_id,
            threshold,
            aggregate_key,
            commitments,
        },
        sealed,
        dropped: round.dropped,
        held_peak: round.held_peak,
    })
}

struct DkgRound<'a> {
    ctx: &'a SignerContext,
    dkg_id: DkgId,
    coordinator: SignerIndex,
    /// Messages this node sent itself, and ones that arrived before their phase began.
    local: VecDeque<Envelope>,
    /// Peer shares that arrived before the coordinator opened their phase here; WSTS would drop
    /// them. At most one public and one private share message per sender (duplicates are
    /// dropped by `judge`), so at most 2 x the message size limit per peer.
    held: Vec<Envelope>,
    /// Held shares whose phase began, waiting to be fed to this signer's state machine.
    released: VecDeque<Envelope>,
    public_started: bool,
    private_started: bool,
    signer_status: Option<DkgStatus>,
    coord_result: Option<Point>,
    /// Senders whose public shares, private shares and DkgEnd were accepted (each at most once).
    public_from: HashSet<SignerIndex>,
    private_from: HashSet<SignerIndex>,
    end_from: HashSet<SignerIndex>,
    dropped: BTreeMap<SignerIndex, u32>,
    held_peak: usize,
}

/// Messages a peer may get ahead of us with (public shares, private shares, DkgEnd, the
/// coordinator's three begins); beyond that they are dropped, so a flood costs a bounded buffer.
const MAX_EARLY_PER_PEER: usize = 8;

/// What to do with a DKG message.
enum Verdict {
    Accept,
    /// Not for this DKG, a duplicate, or from a member not allowed to send it: ignored.
    Drop(String),
    /// Malformed content from a participant: the DKG fails naming it.
    Culprit(String),
}

/// A DKG failure in words, naming signers only: WSTS' own `Debug` of a bad-private-share
/// complaint carries the accuser's ECDH shared key, which has no place in an error or a log.
fn describe_failure(f: &DkgFailure) -> String {
    let ids = |s: &mut dyn Iterator<Item = u32>| {
        let mut v: Vec<u32> = s.collect();
        v.sort();
        format!("{v:?}")
    };
    match f {
        DkgFailure::Threshold => "threshold not met".into(),
        DkgFailure::BadState => "bad state".into(),
        DkgFailure::MissingPublicShares(s) => {
            format!("missing public shares from {}", ids(&mut s.iter().copied()))
        }
        DkgFailure::BadPublicShares(s) => {
            format!("bad public shares from {}", ids(&mut s.iter().copied()))
        }
        DkgFailure::MissingPrivateShares(s) => {
            format!(
                "missing private shares from {}",
                ids(&mut s.iter().copied())
            )
        }
        DkgFailure::BadPrivateShares(m) => {
            format!("bad private shares from {}", ids(&mut m.keys().copied()))
        }
    }
}

fn describe_dkg_error(e: &wsts::state_machine::DkgError) -> String {
    use wsts::state_machine::DkgError as E;
    match e {
        E::DkgEndFailure(failures) => {
            let mut parts: Vec<(u32, String)> = failures
                .iter()
                .map(|(signer, f)| (*signer, describe_failure(f)))
                .collect();
            parts.sort();
            let parts: Vec<String> = parts
                .into_iter()
                .map(|(signer, f)| format!("signer {signer}: {f}"))
                .collect();
            format!("DKG end failure ({})", parts.join("; "))
        }
        other => other.to_string(),
    }
}

/// Runs third-party round code, turning a panic into a named error: the second line of defence
/// behind [`DkgRound::judge`]. The panic's text is not kept (it could quote state).
fn contain<R>(from: SignerIndex, what: &str, f: impl FnOnce() -> R) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        tracing::error!(
            from,
            what,
            "round code panicked on a member's message; DKG abandoned"
        );
        SigningError::Misbehaving {
            signer: from,
            detail: format!("{what} panicked on its message; the DKG is abandoned"),
        }
    })
}

impl DkgRound<'_> {
    async fn emit<T: Transport + ?Sized>(&mut self, transport: &mut T, msg: Message) {
        let down = match &msg {
            Message::DkgPrivateShares(shares) => self.send_private_shares(transport, shares).await,
            _ => {
                transport
                    .broadcast(Arc::new(RoundMessage::Dkg(msg.clone())))
                    .await
            }
        };
        if !down.is_empty() {
            tracing::warn!(?down, "DKG peers unreachable");
        }
        self.local.push_back(Envelope {
            from: self.ctx.me,
            msg: Arc::new(RoundMessage::Dkg(msg)),
        });
    }

    /// Each signer gets only the shares encrypted to its own key (key id = signer index + 1, as
    /// the state machines are set up above); the coordinator gets them all, because WSTS' FIRE
    /// coordinator re-decrypts the accused shares when a signer complains of a bad one. At N=150
    /// a signer's private shares are then 148 messages of about 100 bytes and one of 10 KB,
    /// instead of 149 copies of 10 KB (224 MB across the mesh per DKG).
    async fn send_private_shares<T: Transport + ?Sized>(
        &self,
        transport: &mut T,
        shares: &wsts::net::DkgPrivateShares,
    ) -> Vec<SignerIndex> {
        let full = Arc::new(RoundMessage::Dkg(Message::DkgPrivateShares(shares.clone())));
        let mut down = Vec::new();
        for to in (0..self.ctx.set.len()).filter(|i| *i != self.ctx.me) {
            let msg = if to == self.coordinator {
                full.clone()
            } else {
                let key_id = to + 1;
                let only_theirs = shares
                    .shares
                    .iter()
                    .map(|(party, to_keys)| {
                        let theirs = to_keys
                            .get(&key_id)
                            .map(|c| (key_id, c.clone()))
                            .into_iter()
                            .collect();
                        (*party, theirs)
                    })
                    .collect();
                Arc::new(RoundMessage::Dkg(Message::DkgPrivateShares(
                    wsts::net::DkgPrivateShares {
                        dkg_id: shares.dkg_id,
                        signer_id: shares.signer_id,
                        shares: only_theirs,
                    },
                )))
            };
            if transport.send(to, msg).await.is_err() {
                down.push(to);
            }
        }
        down
    }

    /// Checks a DKG message before any state machine sees it. The link says who sent it; WSTS
    /// messages also name a sender, and they must agree. Only the coordinator may send the
    /// coordinator's messages. Every signer id, party id and key id a message names must be in
    /// the set, and the ones WSTS' FIRE coordinator later looks up (the accused of a DkgEnd)
    /// must be signers whose shares it holds: WSTS indexes its maps with them and panics on a
    /// missing entry.
    fn judge(&mut self, msg: &Message, from: SignerIndex) -> Verdict {
        let n = self.ctx.set.len();
        let me = self.ctx.me;
        let (dkg_id, claimed) = match msg {
            Message::DkgBegin(m) => (m.dkg_id, None),
            Message::DkgPrivateBegin(m) => (m.dkg_id, None),
            Message::DkgEndBegin(m) => (m.dkg_id, None),
            Message::DkgPublicShares(m) => (m.dkg_id, Some(m.signer_id)),
            Message::DkgPrivateShares(m) => (m.dkg_id, Some(m.signer_id)),
            Message::DkgEnd(m) => (m.dkg_id, Some(m.signer_id)),
            _ => return Verdict::Drop("signing messages have no place in a DKG".into()),
        };
        if dkg_id != self.dkg_id.0 {
            return Verdict::Drop(format!(
                "message for DKG {dkg_id} during DKG {}",
                self.dkg_id.0
            ));
        }
        let ids_in_set = |what: &str, ids: &mut dyn Iterator<Item = u32>| -> Option<String> {
            for id in ids {
                if id >= n {
                    return Some(format!("{what} names signer {id}, the set has {n}"));
                }
            }
            None
        };
        let key_ids_in_set = |what: &str, ids: &mut dyn Iterator<Item = u32>| -> Option<String> {
            for id in ids {
                if id == 0 || id > n {
                    return Some(format!(
                        "{what} names key id {id}, the set's key ids are 1 to {n}"
                    ));
                }
            }
            None
        };
        let claimed = match claimed {
            None if from != self.coordinator => {
                return Verdict::Drop(format!(
                    "coordinator message from signer {from}, the coordinator is {}",
                    self.coordinator
                ))
            }
            None => {
                let bad = match msg {
                    Message::DkgPrivateBegin(m) => {
                        ids_in_set("DkgPrivateBegin", &mut m.signer_ids.iter().copied()).or_else(
                            || key_ids_in_set("DkgPrivateBegin", &mut m.key_ids.iter().copied()),
                        )
                    }
                    Message::DkgEndBegin(m) => {
                        ids_in_set("DkgEndBegin", &mut m.signer_ids.iter().copied()).or_else(|| {
                            key_ids_in_set("DkgEndBegin", &mut m.key_ids.iter().copied())
                        })
                    }
                    _ => None,
                };
                return match bad {
                    Some(detail) => Verdict::Culprit(detail),
                    None => Verdict::Accept,
                };
            }
            Some(id) => id,
        };
        if claimed != from {
            return Verdict::Culprit(format!("signer {from} claims to be signer {claimed}"));
        }
        match msg {
            Message::DkgPublicShares(m) => {
                if self.public_from.contains(&from) {
                    return Verdict::Drop("second DkgPublicShares".into());
                }
                // One party per signer, with the signer's own id.
                if m.comms.len() != 1 || m.comms[0].0 != from {
                    let parties: Vec<u32> = m.comms.iter().map(|(p, _)| *p).collect();
                    return Verdict::Culprit(format!(
                        "DkgPublicShares must carry exactly party {from}, carries {parties:?}"
                    ));
                }
                self.public_from.insert(from);
            }
            Message::DkgPrivateShares(m) => {
                if self.private_from.contains(&from) {
                    return Verdict::Drop("second DkgPrivateShares".into());
                }
                if m.shares.len() != 1 || m.shares[0].0 != from {
                    let parties: Vec<u32> = m.shares.iter().map(|(p, _)| *p).collect();
                    return Verdict::Culprit(format!(
                        "DkgPrivateShares must carry exactly party {from}, carries {parties:?}"
                    ));
                }
                let to_keys = &m.shares[0].1;
                if let Some(detail) =
                    key_ids_in_set("DkgPrivateShares", &mut to_keys.keys().copied())
                {
                    return Verdict::Culprit(detail);
                }
                // The coordinator gets every recipient's share (it judges complaints with them);
                // a signer needs its own.
                let missing: Vec<u32> = if me == self.coordinator {
                    (1..=n).filter(|k| !to_keys.contains_key(k)).collect()
                } else {
                    [me + 1]
                        .into_iter()
                        .filter(|k| !to_keys.contains_key(k))
                        .collect()
                };
                if !missing.is_empty() {
                    return Verdict::Culprit(format!(
                        "DkgPrivateShares lacks the shares for key ids {missing:?}"
                    ));
                }
                self.private_from.insert(from);
            }
            Message::DkgEnd(m) => {
                if self.end_from.contains(&from) {
                    return Verdict::Drop("second DkgEnd".into());
                }
                if let DkgStatus::Failure(failure) = &m.status {
                    if let Some(detail) = self.judge_failure(failure) {
                        return Verdict::Culprit(format!("DkgEnd {detail}"));
                    }
                }
                self.end_from.insert(from);
            }
            _ => {}
        }
        Verdict::Accept
    }

    /// The signers a DkgEnd failure accuses must be in the set; the ones the coordinator will
    /// re-check (bad public or private shares) must have sent it those shares.
    fn judge_failure(&self, failure: &DkgFailure) -> Option<String> {
        let n = self.ctx.set.len();
        let coordinating = self.ctx.me == self.coordinator;
        let check = |what: &str,
                     ids: &mut dyn Iterator<Item = u32>,
                     need_public: bool,
                     need_private: bool| {
            for id in ids {
                if id >= n {
                    return Some(format!("{what} accuses signer {id}, the set has {n}"));
                }
                if coordinating && need_public && !self.public_from.contains(&id) {
                    return Some(format!(
                        "{what} accuses signer {id}, whose public shares the coordinator never received"
                    ));
                }
                if coordinating && need_private && !self.private_from.contains(&id) {
                    return Some(format!(
                        "{what} accuses signer {id}, whose private shares the coordinator never received"
                    ));
                }
            }
            None
        };
        match failure {
            DkgFailure::Threshold | DkgFailure::BadState => None,
            DkgFailure::MissingPublicShares(ids) => check(
                "MissingPublicShares",
                &mut ids.iter().copied(),
                false,
                false,
            ),
            DkgFailure::MissingPrivateShares(ids) => check(
                "MissingPrivateShares",
                &mut ids.iter().copied(),
                false,
                false,
            ),
            DkgFailure::BadPublicShares(ids) => {
                check("BadPublicShares", &mut ids.iter().copied(), true, false)
            }
            DkgFailure::BadPrivateShares(bad) => {
                check("BadPrivateShares", &mut bad.keys().copied(), true, true)
            }
        }
    }

    async fn feed_signer<T: Transport + ?Sized>(
        &mut self,
        transport: &mut T,
        signer: &mut WstsSigner<v2::Party>,
        from: SignerIndex,
        msg: &Message,
    ) -> Result<()> {
        match msg {
            Message::DkgPublicShares(_) if !self.public_started => {
                self.hold(from, msg);
                return Ok(());
            }
            Message::DkgPrivateShares(_) if !self.private_started => {
                self.hold(from, msg);
                return Ok(());
            }
            _ => {}
        }
        let mut rng = rand::rngs::OsRng;
        let outs = contain(from, "the WSTS signer", || signer.process(msg, &mut rng))?
            .map_err(|e| SigningError::Dkg(format!("signer: {e:?}")))?;
        let release = match msg {
            Message::DkgBegin(_) => {
                self.public_started = true;
                true
            }
            Message::DkgPrivateBegin(_) => {
                self.private_started = true;
                true
            }
            _ => false,
        };
        for out in outs {
            if let Message::DkgEnd(end) = &out {
                self.signer_status = Some(end.status.clone());
            }
            self.emit(transport, out).await;
        }
        if release {
            let held = std::mem::take(&mut self.held);
            self.released.extend(held);
        }
        Ok(())
    }

    fn hold(&mut self, from: SignerIndex, msg: &Message) {
        self.held.push(Envelope {
            from,
            msg: Arc::new(RoundMessage::Dkg(msg.clone())),
        });
        self.held_peak = self.held_peak.max(self.held.len());
    }
}

/// Receives the next message or fails with the signers still awaited once `deadline` passes.
pub(crate) async fn recv_until<T: Transport + ?Sized>(
    transport: &mut T,
    deadline: Instant,
    phase: &'static str,
    missing: impl FnOnce() -> Vec<SignerIndex>,
) -> Result<Envelope> {
    match tokio::time::timeout_at(deadline, transport.recv()).await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(SigningError::Transport(format!(
            "{phase}: every link is closed"
        ))),
        Err(_) => Err(SigningError::Timeout {
            phase,
            missing: missing(),
        }),
    }
}
