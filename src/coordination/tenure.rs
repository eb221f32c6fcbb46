//! The peg: one tenure per Bitcoin block (CHAIN.md section 6). Every signer follows the
//! canonical tip its own block observer stores; the coordinator the tip picks proposes, every
//! other signer rebuilds each proposal from its own view and answers with its signature or a
//! named refusal. Nothing a coordinator says is trusted: a proposal only names what to do.
//!
//! One task per signer runs [`Peg::run`]: it owns the peer links' receiving end (rounds and
//! signed statements), this signer's shares of the current key, and its tenure state. A tenure
//! it coordinates runs inline; the messages that arrive meanwhile and are not for it wait in a
//! queue, so nothing is lost and no two tenures of one signer overlap.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bitcoin::{secp256k1::PublicKey, BlockHash};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call_view::StoreCallView;
use super::decider::{DecideContext, Decider};
use super::peg_utxo;
use super::proposal::{self, Answer, Proposal};
use super::stacks_calls::StacksSide;
use super::sweeps::{self, Named, SweepSide};
use super::votes::{self, BlockVotes};
use super::{Incoming, PeerTransport, ReceivedStatement};
use crate::chain::bitcoin::observer::TipChange;
use crate::chain::bitcoin::sweep::SweepPackage;
use crate::chain::stacks::contracts::batch_calls;
use crate::chain::stacks::{
    contracts::{RotateKeys, SignerCall},
    transaction::StacksTransaction,
};
use crate::keys::{AggregateKey, Keys};
use crate::peer::{message::StatementKind, PeerNode};
use crate::signing::{
    Approver, BatchCoordinator, BatchSigner, DkgId, Participation, PublicShares, RoundMessage,
    SighashRequest, SignerContext, SignerIndex, SignerSet, Transport,
};
use crate::storage::{self, BitcoinBlock, Storage};

/// What the signer agreed to sign in the current tenure: exactly the sighashes of the
/// proposals it rebuilt and accepted (and recorded in its no-equivocation guard). Cleared at
/// every new tip.
#[derive(Default)]
pub struct TenureApprover {
    allowed: Mutex<HashSet<SighashRequest>>,
}

impl TenureApprover {
    pub fn allow(&self, requests: impl IntoIterator<Item = SighashRequest>) {
        if let Ok(mut allowed) = self.allowed.lock() {
            allowed.extend(requests);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut allowed) = self.allowed.lock() {
            allowed.clear();
        }
    }
}

#[async_trait]
impl Approver for TenureApprover {
    async fn approve(&self, _: SignerIndex, _: DkgId, sighashes: &[SighashRequest]) -> Vec<bool> {
        match self.allowed.lock() {
            Ok(allowed) => sighashes.iter().map(|s| allowed.contains(s)).collect(),
            Err(_) => vec![false; sighashes.len()],
        }
    }
}

/// What the peg did, for the signer's result file and the devnet's summary.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PegReport {
    /// Tips this signer saw, and of those, the tenures it coordinated.
    pub tips_seen: u64,
    pub tenures_led: u64,
    /// Stacks transactions this signer submitted as coordinator: `(function, txid)`.
    pub stacks_submitted: Vec<(String, String)>,
    /// Proposals this signer answered with its signature.
    pub proposals_signed: u64,
    /// Sweeps this signer broadcast as coordinator: txids.
    pub sweeps_broadcast: Vec<String>,
    /// Sweeps this signer rebuilt and accepted (as coordinator or signer): txids.
    pub sweeps_accepted: u64,
    /// Vote statements this signer sent, and peers' ballots it stored.
    pub votes_sent: u64,
    pub peer_votes_stored: u64,
    /// Proposals this signer refused, with why (the first 100).
    pub refusals: Vec<String>,
    pub refusal_count: u64,
}

/// What a signer needs to run the peg.
pub struct PegParams {
    pub keys: Keys,
    pub storage: Arc<dyn Storage>,
    pub node: Arc<PeerNode>,
    pub stacks: StacksSide,
    /// How long a coordinator waits for answers, and a signer for a tip it has not seen yet.
    pub phase_timeout: Duration,
    pub sweeps: SweepSide,
    pub decider: Arc<Decider>,
}

/// What the peg takes over from the DKG session.
pub struct PegStart {
    pub transport: PeerTransport,
    pub signer: BatchSigner,
    pub ctx: SignerContext,
    pub public: Arc<PublicShares>,
    pub aggregate_key: AggregateKey,
    pub coordinator: SignerIndex,
}

/// One signer's peg task.
pub struct Peg {
    p: PegParams,
    transport: PeerTransport,
    signer: BatchSigner,
    batch: Option<BatchCoordinator>,
    approver: Arc<TenureApprover>,
    set: Arc<SignerSet>,
    me: SignerIndex,
    identity: PublicKey,
    aggregate_key: AggregateKey,
    tip: Option<BitcoinBlock>,
    coordinator: SignerIndex,
    /// Messages that arrived while a tenure waited for something else.
    queue: VecDeque<Incoming>,
    /// The Stacks nonce the next call of this tenure takes, once one was submitted.
    next_nonce: Option<(BlockHash, u64)>,
    /// Proposals answered since the tip last moved.
    answers_this_tenure: u32,
    /// Signers whose votes on the current tip arrived.
    votes_from: HashSet<SignerIndex>,
    report: PegReport,
}

/// How long a coordinator waits for its peers' votes on a new tip before it proposes.
pub const VOTES_WAIT: Duration = Duration::from_secs(3);

/// Most proposals one signer answers per tenure (a tenure makes a handful).
pub const MAX_ANSWERS_PER_TENURE: u32 = 32;

/// What woke the loop.
enum Event {
    Stop,
    Tip(Option<TipChange>),
    Message(Option<Incoming>),
}

async fn next_message(
    queue: &mut VecDeque<Incoming>,
    transport: &mut PeerTransport,
) -> Option<Incoming> {
    match queue.pop_front() {
        Some(m) => Some(m),
        None => transport.recv_any().await,
    }
}

impl Peg {
    /// Takes over from the DKG session: its links, this signer's shares of `aggregate_key`
    /// (verified), and the signer that answers rounds.
    pub fn new(p: PegParams, start: PegStart) -> Peg {
        let PegStart {
            transport,
            mut signer,
            ctx,
            public,
            aggregate_key,
            coordinator,
        } = start;
        let batch = match BatchCoordinator::new(ctx, public) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "this signer cannot coordinate signing rounds; it will not lead sweeps");
                None
            }
        };
        let approver = Arc::new(TenureApprover::default());
        signer.set_approver(approver.clone());
        let set = p.node.signer_set();
        let me = transport.me();
        let identity = p.node.identity();
        Peg {
            p,
            transport,
            signer,
            batch,
            approver,
            set,
            me,
            identity,
            aggregate_key,
            tip: None,
            coordinator,
            queue: VecDeque::new(),
            next_nonce: None,
            answers_this_tenure: 0,
            votes_from: HashSet::new(),
            report: PegReport::default(),
        }
    }

    /// Runs tenures until `stop`, or until the links or the observer stop.
    pub async fn run(
        mut self,
        mut tips: mpsc::Receiver<TipChange>,
        stop: CancellationToken,
    ) -> PegReport {
        // The first tenure is on the tip the signer stands on now.
        match self.p.storage.get_bitcoin_canonical_tip().await {
            Ok(Some(tip)) => self.on_tip(tip).await,
            Ok(None) => tracing::warn!("no stored Bitcoin tip yet; waiting for the observer"),
            Err(e) => tracing::error!(error = %e, "cannot read the stored Bitcoin tip"),
        }
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                change = tips.recv() => Event::Tip(change),
                msg = next_message(&mut self.queue, &mut self.transport) => Event::Message(msg),
            };
            match event {
                Event::Stop => break,
                Event::Tip(None) => {
                    tracing::warn!("the block observer stopped; the peg stops");
                    break;
                }
                Event::Tip(Some(mut change)) => {
                    // Tips that queued up during a tenure: only the newest matters.
                    while let Ok(newer) = tips.try_recv() {
                        change = newer;
                    }
                    self.on_tip(change.tip).await;
                }
                Event::Message(None) => {
                    tracing::warn!("the peer links stopped; the peg stops");
                    break;
                }
                Event::Message(Some(m)) => self.on_message(m).await,
            }
        }
        self.report
    }

    fn tip_hash(&self) -> Option<BlockHash> {
        self.tip.as_ref().map(|t| t.hash)
    }

    /// Takes `tip` as this signer's tenure: its coordinator drives rounds from now on, and
    /// nothing approved under the previous tip stays approved.
    fn enter_tip(&mut self, tip: BitcoinBlock) {
        self.report.tips_seen += 1;
        self.transport.set_tip(tip.hash, tip.height);
        self.coordinator = self.set.coordinator_for(&tip.hash);
        self.signer.set_coordinator(self.coordinator);
        self.approver.clear();
        self.answers_this_tenure = 0;
        self.votes_from.clear();
        tracing::info!(
            tip = %tip.hash,
            height = tip.height,
            coordinator = self.coordinator,
            "new tenure"
        );
        self.tip = Some(tip);
    }

    /// A new canonical tip: a new tenure, and its coordinator.
    async fn on_tip(&mut self, tip: BitcoinBlock) {
        if self.tip_hash() == Some(tip.hash) {
            return;
        }
        self.enter_tip(tip.clone());
        self.vote_on(&tip).await;
        if self.coordinator == self.me {
            self.report.tenures_led += 1;
            self.lead_tenure(&tip).await;
            sign_head(&self.p.keys, &format!("end of the tenure at {}", tip.hash)).await;
        }
    }

    /// This signer coordinates the tenure at `tip`.
    async fn lead_tenure(&mut self, tip: &BitcoinBlock) {
        self.wait_for_stacks_node(tip).await;
        if let Err(why) = self.register_key(tip).await {
            tracing::warn!(%why, "the aggregate key is not registered on Stacks yet");
            return;
        }
        if let Err(why) = self.complete_deposits(tip).await {
            tracing::warn!(%why, "the swept deposits were not completed in this tenure");
        }
        if let Err(why) = self.lead_sweep(tip).await {
            tracing::warn!(%why, "no sweep in this tenure");
        }
    }

    /// Every signer, at every tip: votes on each pending request and sends all its ballots in
    /// one signed statement (one custody operation, however many requests; none when there is
    /// nothing to vote on).
    async fn vote_on(&mut self, tip: &BitcoinBlock) {
        let verified_keys = match sweeps::verified_keys(self.p.storage.as_ref()).await {
            Ok(k) => k,
            Err(why) => {
                tracing::warn!(%why, "no votes on this tip");
                return;
            }
        };
        let peg_balance =
            match peg_utxo::find(self.p.storage.as_ref(), &tip.hash, &verified_keys).await {
                Ok(found) => found.map_or(bitcoin::Amount::ZERO, |f| f.amount()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the peg UTXO; no votes on this tip");
                    return;
                }
            };
        let ctx = DecideContext {
            tip: tip.clone(),
            peg_balance,
            verified_keys,
        };
        let votes = match self.p.decider.decide(&ctx).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "the request decider failed; no votes on this tip");
                return;
            }
        };
        if votes.ballots() == 0 {
            return;
        }
        let envelope =
            match votes::signed_statement(&self.p.node, self.transport.chain_tip(), &votes).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sign this tip's votes");
                    return;
                }
            };
        let down = self
            .transport
            .broadcast_envelope(crate::peer::message::encode(&envelope))
            .await;
        if !down.is_empty() {
            tracing::warn!(?down, "this tip's votes did not reach every signer");
        }
        self.report.votes_sent += 1;
        tracing::info!(
            tip = %tip.hash,
            deposits = votes.deposits.len(),
            withdrawals = votes.withdrawals.len(),
            "votes sent"
        );
    }

    /// A peer's votes: stored for the requests this signer knows.
    async fn on_votes(&mut self, s: ReceivedStatement) {
        let Some(key) = self.set.key(s.from).copied() else {
            return;
        };
        let votes = match BlockVotes::from_statement(&s) {
            Ok(v) => v,
            Err(reason) => {
                tracing::warn!(from = s.from, %reason, "unreadable votes dropped");
                self.count_refusal(format!("votes from signer {}: {reason}", s.from));
                return;
            }
        };
        if Some(votes.tip) == self.tip_hash() {
            self.votes_from.insert(s.from);
        }
        match self.p.decider.record_peer_votes(key, &votes).await {
            Ok(n) => self.report.peer_votes_stored += n as u64,
            Err(e) => tracing::warn!(from = s.from, error = %e, "a peer's votes were not stored"),
        }
    }

    /// Waits (bounded) until a threshold of the set voted on this tip, handling the votes that
    /// arrive and keeping every other message for later.
    async fn collect_votes(&mut self) {
        let needed = (self.set.threshold() as usize).saturating_sub(1);
        let deadline = Instant::now() + VOTES_WAIT.min(self.p.phase_timeout);
        let mut later = VecDeque::new();
        while self.votes_from.len() < needed {
            match tokio::time::timeout_at(
                deadline,
                next_message(&mut self.queue, &mut self.transport),
            )
            .await
            {
                Ok(Some(Incoming::Statement(s))) if s.kind == StatementKind::Votes => {
                    self.on_votes(s).await
                }
                Ok(Some(other)) => later.push_back(other),
                Ok(None) | Err(_) => break,
            }
        }
        self.queue.extend(later);
    }

    /// The coordinator's Stacks side of confirmed sweeps: every swept deposit without its
    /// completed-deposit event, in as few batch calls as fit.
    async fn complete_deposits(&mut self, tip: &BitcoinBlock) -> Result<(), String> {
        let completions =
            sweeps::pending_completions(self.p.storage.as_ref(), tip, self.p.sweeps.settings.magic)
                .await?;
        if completions.is_empty() {
            return Ok(());
        }
        tracing::info!(
            deposits = completions.len(),
            "completing swept deposits on Stacks"
        );
        for call in batch_calls(completions, Vec::new()) {
            self.propose_stacks_call(tip, call).await?;
        }
        Ok(())
    }

    /// The coordinator's sweep: the deposits a threshold voted to accept, on this signer's peg
    /// UTXO, at its own fee rate; proposed, rebuilt by every signer, signed in one batch,
    /// checked, broadcast.
    async fn lead_sweep(&mut self, tip: &BitcoinBlock) -> Result<(), String> {
        self.collect_votes().await;
        let threshold = self.set.threshold() as usize;
        let accepted = self
            .p
            .decider
            .accepted_deposits(tip, self.set.keys(), threshold)
            .await
            .map_err(|e| format!("cannot read the accepted deposits: {e}"))?;
        tracing::info!(
            accepted = accepted.len(),
            voters = self.votes_from.len() + 1,
            threshold,
            "deposits a threshold voted to accept"
        );
        if accepted.is_empty() {
            return Ok(());
        }
        let keys = sweeps::verified_keys(self.p.storage.as_ref()).await?;
        let peg = peg_utxo::find(self.p.storage.as_ref(), &tip.hash, &keys)
            .await
            .map_err(|e| format!("cannot read the peg UTXO: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{} deposits wait, and the signers have no UTXO yet: donate to the signers' key-path script {}",
                    accepted.len(),
                    peg_utxo::signers_script(&self.aggregate_key)
                )
            })?;
        if let Some(decision) = self
            .p
            .storage
            .get_spend_decision(&peg.outpoint)
            .await
            .map_err(|e| format!("cannot read the guard's record of {}: {e}", peg.outpoint))?
        {
            return Err(format!(
                "the peg UTXO {} is already spent by sweep {}, which has not confirmed",
                peg.outpoint, decision.txid
            ));
        }
        let rate = self.p.sweeps.own_fee_rate().await?;
        let deposits: Vec<storage::DepositRequest> = accepted.into_iter().map(|(d, _)| d).collect();
        let planned = self
            .p
            .sweeps
            .package(&peg, &deposits, &[], rate, &self.aggregate_key);
        for e in &planned.excluded {
            tracing::info!(request = ?e.request, reason = %e.reason, "left out of this sweep");
        }
        let mut named: Vec<String> = planned
            .txs
            .iter()
            .flat_map(|p| p.deposits.iter().map(|(d, _)| d.outpoint.to_string()))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        named.sort();
        let fee_rate_sat_per_kwu = rate.to_sat_per_kwu();
        let read = Named::read(&peg.outpoint.to_string(), &named, &[], fee_rate_sat_per_kwu)?;
        // The coordinator holds itself to what every signer checks.
        let package = self.accept_sweep(tip, &read).await?;
        let txids: Vec<String> = package.txs.iter().map(|p| p.txid().to_string()).collect();
        let payload = Proposal::Sweep {
            tip: tip.hash.to_string(),
            peg: peg.outpoint.to_string(),
            deposits: named,
            withdrawals: Vec::new(),
            fee_rate_sat_per_kwu,
        }
        .to_bytes();
        let round = proposal::round_id(&payload);
        self.broadcast_proposal(round, payload).await?;
        let accepted_by = self.collect_sweep_acks(round, &txids).await?;
        tracing::info!(
            signers = accepted_by + 1,
            txs = txids.len(),
            "the sweep package is accepted"
        );
        // A tenure stops when the tip moves.
        match self.p.storage.get_bitcoin_canonical_tip().await {
            Ok(Some(now)) if now.hash == tip.hash => {}
            Ok(now) => {
                return Err(format!(
                    "the tip moved to {} before signing; the tenure stops",
                    now.map_or_else(|| "none".to_string(), |b| b.hash.to_string())
                ))
            }
            Err(e) => return Err(format!("cannot read the tip: {e}")),
        }
        let requests: Vec<SighashRequest> =
            package.txs.iter().flat_map(|p| p.sighashes()).collect();
        let batch = self
            .batch
            .as_ref()
            .ok_or("this signer cannot coordinate signing rounds")?;
        let signed = batch
            .sign(
                &mut self.signer,
                &mut self.transport,
                &requests,
                Participation::Threshold,
            )
            .await
            .map_err(|e| format!("signing the sweep failed: {e}"))?;
        sign_head(&self.p.keys, "end of a sweep signing round").await;
        let by_sighash: std::collections::HashMap<[u8; 32], _> = signed
            .signatures
            .iter()
            .map(|s| (s.request.sighash, s.signature))
            .collect();
        for plan in &package.txs {
            let sigs = plan
                .sighashes()
                .iter()
                .map(|r| by_sighash.get(&r.sighash).copied())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("sweep {} lacks a signature", plan.txid()))?;
            let tx = plan
                .finalize(&sigs)
                .map_err(|e| format!("sweep {} does not finalize: {e}", plan.txid()))?;
            let txid = self
                .p
                .sweeps
                .bitcoin
                .send_raw_transaction(&tx)
                .await
                .map_err(|e| format!("bitcoind refused sweep {}: {e}", plan.txid()))?;
            tracing::info!(
                %txid,
                deposits = plan.deposits.len(),
                fee = plan.fee.to_sat(),
                vsize = plan.vsize,
                "sweep broadcast"
            );
            self.report.sweeps_broadcast.push(txid.to_string());
        }
        Ok(())
    }

    /// Rebuilds a sweep from this signer's own view, records it in the no-equivocation guard
    /// and the store, and allows its sighashes for this tenure.
    async fn accept_sweep(
        &mut self,
        tip: &BitcoinBlock,
        named: &Named,
    ) -> Result<SweepPackage, String> {
        let package = self
            .p
            .sweeps
            .rebuild(
                self.p.storage.as_ref(),
                &self.identity,
                tip,
                &self.aggregate_key,
                named,
                self.p.decider.policy().deposit_window_blocks,
            )
            .await?;
        for plan in &package.txs {
            let decision = self
                .p
                .storage
                .guard_spend(&plan.spend_intent())
                .await
                .map_err(|e| format!("the no-equivocation guard failed: {e}"))?;
            if let Some(refusal) = decision.refusal() {
                return Err(format!(
                    "the no-equivocation guard refuses sweep {}: {refusal}",
                    plan.txid()
                ));
            }
        }
        for plan in &package.txs {
            let record = storage::SweepTransaction {
                txid: plan.txid(),
                signers_prevout: plan.peg_in.outpoint,
                deposits: plan.deposits.iter().map(|(d, _)| d.outpoint).collect(),
                withdrawals: Vec::new(),
                fee: plan.fee,
                chain_tip: tip.hash,
            };
            self.p
                .storage
                .write_sweep_transaction(&record)
                .await
                .map_err(|e| format!("cannot store sweep {}: {e}", plan.txid()))?;
            self.approver.allow(plan.sighashes());
        }
        self.report.sweeps_accepted += 1;
        Ok(package)
    }

    async fn broadcast_proposal(
        &mut self,
        round: [u8; 32],
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let envelope = self
            .p
            .node
            .signed_statement(
                StatementKind::Proposal,
                self.transport.chain_tip(),
                round,
                payload.into(),
            )
            .await
            .map_err(|e| format!("cannot sign the proposal: {e}"))?;
        let down = self
            .transport
            .broadcast_envelope(crate::peer::message::encode(&envelope))
            .await;
        if !down.is_empty() {
            tracing::warn!(?down, "the proposal did not reach every signer");
        }
        Ok(())
    }

    /// Waits for threshold − 1 peers to accept the sweep with exactly `txids`.
    async fn collect_sweep_acks(
        &mut self,
        round: [u8; 32],
        txids: &[String],
    ) -> Result<usize, String> {
        let needed = (self.set.threshold() as usize).saturating_sub(1);
        let mut accepted: HashSet<SignerIndex> = HashSet::new();
        let deadline = Instant::now() + self.p.phase_timeout;
        let mut later = VecDeque::new();
        let result = loop {
            if accepted.len() >= needed {
                break Ok(accepted.len());
            }
            let received = tokio::time::timeout_at(
                deadline,
                next_message(&mut self.queue, &mut self.transport),
            )
            .await;
            let statement = match received {
                Err(_) => {
                    break Err(format!(
                        "{} of {needed} signers accepted the sweep after {} s",
                        accepted.len(),
                        self.p.phase_timeout.as_secs()
                    ))
                }
                Ok(None) => break Err("the peer links stopped".into()),
                Ok(Some(Incoming::Statement(s)))
                    if s.kind == StatementKind::Ack && s.round_id.as_slice() == round =>
                {
                    s
                }
                Ok(Some(Incoming::Statement(s))) if s.kind == StatementKind::Votes => {
                    self.on_votes(s).await;
                    continue;
                }
                Ok(Some(other)) => {
                    later.push_back(other);
                    continue;
                }
            };
            match Answer::from_bytes(&statement.payload) {
                Ok(Answer::SweepAccepted { txids: theirs }) if theirs == txids => {
                    accepted.insert(statement.from);
                }
                Ok(Answer::SweepAccepted { txids: theirs }) => tracing::warn!(
                    from = statement.from,
                    ?theirs,
                    "a signer built different sweep transactions"
                ),
                Ok(Answer::Refused { reason }) => {
                    tracing::warn!(from = statement.from, %reason, "a signer refused the sweep")
                }
                Ok(other) => tracing::warn!(
                    from = statement.from,
                    ?other,
                    "an answer of the wrong kind for a sweep"
                ),
                Err(e) => tracing::warn!(from = statement.from, error = %e, "an unreadable answer"),
            }
        };
        self.queue.extend(later);
        result
    }

    /// Stacks work reads the Stacks node's view of Bitcoin: wait (bounded) until it has
    /// processed `tip`, so the nonce and the registry it reports are this tenure's.
    async fn wait_for_stacks_node(&self, tip: &BitcoinBlock) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let node_ready = matches!(
                self.p.stacks.client.get_info().await,
                Ok(info) if info.burn_block_height >= tip.height
            );
            // And its events: the Stacks block on this Bitcoin block reached this signer's
            // event observer, so what is already done on Stacks reads as done.
            let events_ready = node_ready
                && matches!(
                    self.p.storage.get_stacks_canonical_tip().await,
                    Ok(Some(b)) if b.bitcoin_anchor_height >= tip.height
                );
            if events_ready {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    height = tip.height,
                    node_ready,
                    "the stacks-node or its events have not reached this Bitcoin block after 10 s; going on"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The bootstrap rotation: until the registry names this set's verified key, the
    /// coordinator proposes rotate-keys-wrapper to it.
    async fn register_key(&mut self, tip: &BitcoinBlock) -> Result<(), String> {
        let ours = self.aggregate_key.public_key();
        let current = self
            .p
            .stacks
            .client
            .get_current_aggregate_pubkey(&self.p.stacks.settings.deployer)
            .await
            .map_err(|e| e.to_string())?;
        if current == Some(ours) {
            return Ok(());
        }
        let threshold = u16::try_from(self.set.threshold())
            .map_err(|_| "the threshold does not fit in 16 bits".to_string())?;
        let call =
            SignerCall::RotateKeys(RotateKeys::new(self.set.keys().to_vec(), ours, threshold));
        self.propose_stacks_call(tip, call).await.map(|_| ())
    }

    /// The coordinator's Stacks call: build, sign its own part, collect a threshold of
    /// signatures, assemble, submit. Returns the submitted transaction's txid (hex).
    async fn propose_stacks_call(
        &mut self,
        tip: &BitcoinBlock,
        call: SignerCall,
    ) -> Result<String, String> {
        let stacks = self.p.stacks.clone();
        let account = stacks.account().await?;
        let mut nonce = stacks.confirmed_nonce(&account).await?;
        if let Some((at, next)) = self.next_nonce {
            if at == tip.hash {
                nonce = nonce.max(next);
            }
        }
        let tx = stacks.build(account.clone(), nonce, &call).await?;
        let view = self.call_view();
        let (_, own) = stacks
            .check_and_sign(&self.p.keys, &self.identity, &view, &tx)
            .await
            .map_err(|why| format!("this coordinator refuses its own call: {why}"))?;
        let payload = Proposal::StacksCall {
            tip: tip.hash.to_string(),
            tx: hex::encode(tx.serialize()),
        }
        .to_bytes();
        let round = proposal::round_id(&payload);
        let envelope = self
            .p
            .node
            .signed_statement(
                StatementKind::Proposal,
                self.transport.chain_tip(),
                round,
                payload.into(),
            )
            .await
            .map_err(|e| format!("cannot sign the proposal: {e}"))?;
        let down = self
            .transport
            .broadcast_envelope(crate::peer::message::encode(&envelope))
            .await;
        if !down.is_empty() {
            tracing::warn!(?down, "the Stacks call proposal did not reach every signer");
        }
        let threshold = usize::from(account.threshold());
        let mut signatures = vec![own];
        let mut signed_by: HashSet<SignerIndex> = HashSet::from([self.me]);
        let deadline = Instant::now() + self.p.phase_timeout;
        let mut later = VecDeque::new();
        let signed = loop {
            if signatures.len() >= threshold {
                match account.assemble(&tx, &signatures) {
                    Ok(signed) => break Ok(signed),
                    Err(e) => tracing::warn!(error = %e, "signatures do not assemble yet"),
                }
            }
            let received = tokio::time::timeout_at(
                deadline,
                next_message(&mut self.queue, &mut self.transport),
            )
            .await;
            let statement = match received {
                Err(_) => {
                    break Err(format!(
                        "{} of {threshold} signatures after {} s",
                        signatures.len(),
                        self.p.phase_timeout.as_secs()
                    ))
                }
                Ok(None) => break Err("the peer links stopped".into()),
                Ok(Some(Incoming::Statement(s)))
                    if s.kind == StatementKind::Ack && s.round_id == round =>
                {
                    s
                }
                Ok(Some(other)) => {
                    later.push_back(other);
                    continue;
                }
            };
            match Answer::from_bytes(&statement.payload) {
                Ok(Answer::StacksSignature { signature, .. }) => {
                    let sig = hex::decode(&signature)
                        .ok()
                        .and_then(|b| <[u8; 65]>::try_from(b).ok());
                    match sig {
                        Some(sig) if signed_by.insert(statement.from) => signatures.push(sig),
                        Some(_) => {}
                        None => tracing::warn!(
                            from = statement.from,
                            "an answer's signature is not 65 bytes of hex; ignored"
                        ),
                    }
                }
                Ok(Answer::Refused { reason }) => {
                    tracing::warn!(from = statement.from, %reason, "a signer refused the Stacks call")
                }
                Ok(other) => tracing::warn!(
                    from = statement.from,
                    ?other,
                    "an answer of the wrong kind for a Stacks call; ignored"
                ),
                Err(e) => tracing::warn!(from = statement.from, error = %e, "an unreadable answer"),
            }
        };
        self.queue.extend(later);
        let signed = signed?;
        let txid = self
            .p
            .stacks
            .client
            .submit_transaction(&signed)
            .await
            .map_err(|e| format!("the stacks-node refused the transaction: {e}"))?;
        let txid_hex = hex::encode(txid.0);
        tracing::info!(
            function = call.function_name(),
            subject = %call.subject(),
            txid = %txid_hex,
            nonce,
            fee = signed.auth.fee(),
            "Stacks call submitted"
        );
        self.next_nonce = Some((tip.hash, nonce + 1));
        if let Err(e) = self
            .p
            .storage
            .write_stacks_transaction(&storage::StacksTransaction {
                txid: storage::StacksTxid(txid.0),
                kind: call.function_name().to_string(),
                nonce,
                raw: signed.serialize(),
                bitcoin_chain_tip: tip.hash,
            })
            .await
        {
            tracing::warn!(error = %e, "the submitted Stacks transaction was not stored");
        }
        self.report
            .stacks_submitted
            .push((call.function_name().to_string(), txid_hex.clone()));
        Ok(txid_hex)
    }

    fn call_view(&self) -> StoreCallView {
        StoreCallView {
            storage: self.p.storage.clone(),
            stacks: self.p.stacks.clone(),
            magic: self.p.sweeps.settings.magic,
        }
    }

    async fn on_message(&mut self, m: Incoming) {
        match m {
            Incoming::Round(env) => {
                if matches!(env.msg.as_ref(), RoundMessage::Done) {
                    return;
                }
                if let Some(reply) = self.signer.handle(env.from, &env.msg).await {
                    let round_ended = matches!(reply, RoundMessage::ShareResponse(_));
                    if let Err(e) = self.transport.send(env.from, Arc::new(reply)).await {
                        tracing::warn!(error = %e, "reply not delivered");
                    }
                    if round_ended {
                        sign_head(&self.p.keys, "end of a signing round").await;
                    }
                }
            }
            Incoming::Statement(s) => match s.kind {
                StatementKind::Proposal => self.on_proposal(s).await,
                StatementKind::Ack => {
                    tracing::debug!(from = s.from, "a late answer to an earlier proposal")
                }
                StatementKind::Decision => {
                    tracing::debug!(from = s.from, "a DKG decision after the session; ignored")
                }
                StatementKind::Votes => self.on_votes(s).await,
            },
        }
    }

    /// A proposal: only the coordinator of this signer's tip may make one, on that tip.
    async fn on_proposal(&mut self, s: ReceivedStatement) {
        // Only the coordinator of the tip a proposal names gets an answer (a signed statement,
        // so a custody operation), and at most MAX_ANSWERS_PER_TENURE of them: a member cannot
        // make this signer sign for every message it sends.
        let (proposal, tip) = match self.may_answer(&s) {
            Ok(read) => read,
            Err(reason) => {
                tracing::warn!(from = s.from, %reason, "proposal dropped without an answer");
                self.count_refusal(reason);
                return;
            }
        };
        self.answers_this_tenure += 1;
        let answer = match self.judge_proposal(proposal, tip).await {
            Ok(answer) => answer,
            Err(reason) => {
                tracing::warn!(from = s.from, %reason, "refusing the coordinator's proposal");
                self.count_refusal(reason.clone());
                Answer::Refused { reason }
            }
        };
        if matches!(
            answer,
            Answer::StacksSignature { .. } | Answer::SweepAccepted { .. }
        ) {
            self.report.proposals_signed += 1;
        }
        let Ok(round) = <[u8; 32]>::try_from(s.round_id.as_slice()) else {
            return;
        };
        let envelope = match self
            .p
            .node
            .signed_statement(
                StatementKind::Ack,
                self.transport.chain_tip(),
                round,
                answer.to_bytes().into(),
            )
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the answer");
                return;
            }
        };
        let Some(key) = self.set.key(s.from) else {
            return;
        };
        if let Err(e) = self
            .p
            .node
            .send_encoded(key, crate::peer::message::encode(&envelope))
            .await
        {
            tracing::warn!(to = s.from, error = %e, "the answer was not delivered");
        }
    }

    fn count_refusal(&mut self, reason: String) {
        self.report.refusal_count += 1;
        if self.report.refusals.len() < 100 {
            self.report.refusals.push(reason);
        }
    }

    /// The checks before any answer: a payload that reads, its round id, and a sender that
    /// coordinates the tip it names. Returns the proposal and that tip.
    fn may_answer(&self, s: &ReceivedStatement) -> Result<(Proposal, BlockHash), String> {
        if self.answers_this_tenure >= MAX_ANSWERS_PER_TENURE {
            return Err(format!(
                "more than {MAX_ANSWERS_PER_TENURE} proposals in one tenure"
            ));
        }
        if s.round_id.as_slice() != proposal::round_id(&s.payload) {
            return Err("the proposal's round id is not the hash of its payload".into());
        }
        let proposal = Proposal::from_bytes(&s.payload).map_err(|e| e.to_string())?;
        let tip = proposal
            .tip()
            .ok_or_else(|| "the proposal names no readable tip".to_string())?;
        let coordinator = self.set.coordinator_for(&tip);
        if s.from != coordinator {
            return Err(format!(
                "signer {} proposed on tip {tip}, whose coordinator is signer {coordinator}",
                s.from
            ));
        }
        Ok((proposal, tip))
    }

    /// Rebuilds what a proposal from the coordinator of `tip` asks for, on that tip (the
    /// sender was checked by [`Peg::may_answer`]; `catch_up_to` makes `tip` this signer's).
    async fn judge_proposal(
        &mut self,
        proposal: Proposal,
        tip: BlockHash,
    ) -> Result<Answer, String> {
        self.catch_up_to(tip).await?;
        match proposal {
            Proposal::StacksCall { tx, .. } => {
                let bytes =
                    hex::decode(&tx).map_err(|_| "the transaction is not hex".to_string())?;
                let tx = StacksTransaction::deserialize(&bytes)
                    .map_err(|e| format!("the transaction does not decode: {e}"))?;
                let view = self.call_view();
                let (call, signature) = self
                    .p
                    .stacks
                    .check_and_sign(&self.p.keys, &self.identity, &view, &tx)
                    .await?;
                tracing::info!(
                    function = call.function_name(),
                    subject = %call.subject(),
                    "signed the coordinator's Stacks call"
                );
                Ok(Answer::StacksSignature {
                    txid: hex::encode(tx.txid()),
                    signature: hex::encode(signature),
                })
            }
            Proposal::Sweep {
                peg,
                deposits,
                withdrawals,
                fee_rate_sat_per_kwu,
                ..
            } => {
                let named = Named::read(&peg, &deposits, &withdrawals, fee_rate_sat_per_kwu)?;
                let tip = self
                    .tip
                    .clone()
                    .ok_or_else(|| "this signer has no tip".to_string())?;
                let package = self.accept_sweep(&tip, &named).await?;
                tracing::info!(
                    txs = package.txs.len(),
                    deposits = named.deposits.len(),
                    "accepted the coordinator's sweep"
                );
                Ok(Answer::SweepAccepted {
                    txids: package.txs.iter().map(|p| p.txid().to_string()).collect(),
                })
            }
        }
    }

    /// A proposal on a tip this signer has not processed yet: its observer may be a poll
    /// behind. Wait (bounded) for the tip to be stored and canonical, then take it.
    async fn catch_up_to(&mut self, tip: BlockHash) -> Result<(), String> {
        if self.tip_hash() == Some(tip) {
            return Ok(());
        }
        let deadline = Instant::now() + self.p.phase_timeout.min(Duration::from_secs(10));
        loop {
            match self.p.storage.get_bitcoin_canonical_tip().await {
                Ok(Some(stored)) if stored.hash == tip => {
                    if self.set.coordinator_for(&stored.hash) == self.me {
                        return Err(format!(
                            "this signer coordinates the tenure at {tip}, and did not propose this"
                        ));
                    }
                    // Someone else's tenure: take the tip without leading it.
                    self.enter_tip(stored.clone());
                    self.vote_on(&stored).await;
                    return Ok(());
                }
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Ok(_) => {
                    return Err(format!(
                        "the proposal is for tip {tip}, and this signer's canonical tip is {}",
                        self.tip_hash()
                            .map_or_else(|| "unknown".to_string(), |h| h.to_string())
                    ))
                }
                Err(e) => return Err(format!("cannot read this signer's tip: {e}")),
            }
        }
    }
}

/// Signs the audit log's head; a failure is logged (the next head signature covers it).
async fn sign_head(keys: &Keys, reason: &str) {
    if let Err(e) = keys.sign_audit_head(reason).await {
        tracing::warn!(error = %e, reason, "the audit log's head was not signed");
    }
}
