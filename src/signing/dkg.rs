//! Distributed key generation with WSTS' FIRE coordinator, every signer taking part.
//!
//! Before the WSTS rounds, each signer generates a transport key in memory and endorses it with its
//! identity key (one custody signature). WSTS uses the transport keys as its "network keys": private
//! polynomial shares are encrypted to them (ECDH + AES-GCM), so they cross the links end-to-end
//! encrypted to their recipient. At the end, the key shares are sealed by the custody backend.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use hashbrown::{HashMap as HbMap, HashSet as HbSet};
use tokio::time::Instant;
use wsts::{
    curve::{ecdsa, point::Point},
    net::{DkgStatus, Message, Packet},
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
    let deadline = Instant::now() + ctx.phase_timeout;
    while (keys.len() as u32) < n {
        let env = recv_until(transport, deadline, "DKG transport keys", || {
            (0..n).filter(|i| !keys.contains_key(i)).collect()
        })
        .await?;
        match env.msg.as_ref() {
            RoundMessage::TransportKey(e) if e.dkg_id == dkg_id => {
                let verified = e.verify(&ctx.set, dkg_id, env.from)?;
                keys.entry(env.from).or_insert(verified);
            }
            RoundMessage::Dkg(_) => early.push_back(env),
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
        public_started: false,
        private_started: false,
        signer_status: None,
        coord_result: None,
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
        if let Err(detail) = round.check_sender(msg, env.from) {
            tracing::warn!(from = env.from, %detail, "dropping DKG message");
            continue;
        }
        if let Some(c) = coord.as_mut() {
            let packet = Packet {
                msg: msg.clone(),
                sig: Vec::new(),
            };
            let (out, result) = c
                .process_message(&packet)
                .map_err(|e| SigningError::Dkg(format!("coordinator: {e:?}")))?;
            if let Some(out) = out {
                round.emit(transport, out.msg).await;
            }
            match result {
                Some(OperationResult::Dkg(point)) => round.coord_result = Some(point),
                Some(OperationResult::DkgError(e)) => {
                    return Err(SigningError::Dkg(format!("coordinator reports {e:?}")))
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
            "this signer's DKG failed: {f:?}"
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
    })
}

struct DkgRound<'a> {
    ctx: &'a SignerContext,
    dkg_id: DkgId,
    coordinator: SignerIndex,
    /// Messages this node sent itself, and ones that arrived before their phase began.
    local: VecDeque<Envelope>,
    /// Peer shares that arrived before the coordinator opened their phase here; WSTS would drop them.
    held: Vec<Envelope>,
    public_started: bool,
    private_started: bool,
    signer_status: Option<DkgStatus>,
    coord_result: Option<Point>,
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

    /// The link says who sent a message; WSTS messages also name a sender. They must agree, and
    /// only the coordinator may send coordinator messages.
    fn check_sender(&self, msg: &Message, from: SignerIndex) -> std::result::Result<(), String> {
        let (dkg_id, claimed) = match msg {
            Message::DkgBegin(m) => (m.dkg_id, None),
            Message::DkgPrivateBegin(m) => (m.dkg_id, None),
            Message::DkgEndBegin(m) => (m.dkg_id, None),
            Message::DkgPublicShares(m) => (m.dkg_id, Some(m.signer_id)),
            Message::DkgPrivateShares(m) => (m.dkg_id, Some(m.signer_id)),
            Message::DkgEnd(m) => (m.dkg_id, Some(m.signer_id)),
            _ => return Err("signing messages have no place in a DKG".into()),
        };
        if dkg_id != self.dkg_id.0 {
            return Err(format!(
                "message for DKG {dkg_id} during DKG {}",
                self.dkg_id.0
            ));
        }
        match claimed {
            None if from != self.coordinator => Err(format!(
                "coordinator message from signer {from}, the coordinator is {}",
                self.coordinator
            )),
            Some(id) if id != from => Err(format!("claims to be signer {id}")),
            _ => Ok(()),
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
        let outs = signer
            .process(msg, &mut rng)
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
            self.local.extend(held);
        }
        Ok(())
    }

    fn hold(&mut self, from: SignerIndex, msg: &Message) {
        self.held.push(Envelope {
            from,
            msg: Arc::new(RoundMessage::Dkg(msg.clone())),
        });
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
