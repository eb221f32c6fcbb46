//! The running node: its context (keys, storage, the peer mesh, the one signer set) and the task
//! runner. Until the chain layer lands, the node's one task is the devnet session
//! (`crate::devnet::session`): DKG over the peer links, verification, an optional demo batch.

mod shutdown;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

pub use shutdown::Shutdown;

use crate::{
    chain::bitcoin::{
        observer::{BlockObserver, ObserverParams},
        BitcoinClient, BitcoinConfig,
    },
    chain::stacks::{StacksClient, StacksSettings},
    devnet::{self, SessionParams},
    keys::{Keys, SignerSet},
    peer::{PeerConfig, PeerNode},
    storage::Storage,
};

/// What `run` was asked to do, beyond the config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Signers needed to sign; None: `[peer] threshold`, else more than 70% of the set.
    pub threshold: Option<u32>,
    pub demo_batch: usize,
    pub result_file: Option<PathBuf>,
    pub chain_tip: bitcoin::BlockHash,
    /// Run the session on the node's tip instead of `chain_tip` (when `[bitcoin]` is set and no
    /// tip was given).
    pub chain_tip_from_node: bool,
    pub connect_timeout: Duration,
    pub phase_timeout: Duration,
    pub nonce_ledger: Option<PathBuf>,
    /// Who must sign the demo batch.
    pub demo_participation: crate::signing::Participation,
    pub exit_when_done: bool,
    /// After the DKG session, run the peg (tenures, Stacks calls) until a signal; needs
    /// `[bitcoin]` and `[stacks]`.
    pub peg: bool,
}

/// The node's view of Bitcoin: its bitcoind client and `[bitcoin]`, and `[api]` (deposit
/// intake, which needs the node).
#[derive(Clone)]
pub struct BitcoinParts {
    pub client: Arc<dyn BitcoinClient>,
    pub config: BitcoinConfig,
    pub api: Option<crate::api::ApiConfig>,
    /// `[stacks]`: it needs `[bitcoin]`, so it lives here.
    pub stacks: Option<StacksParts>,
    /// `[sweep]`, resolved for the network.
    pub sweep: crate::coordination::sweep_config::SweepSettings,
    /// `[policy]`, validated.
    pub policy: crate::coordination::PolicyConfig,
}

/// The node's view of Stacks: its stacks-node client and `[stacks]` checked against
/// `[bitcoin]`. The event observer runs on `[api]`'s listener.
#[derive(Clone)]
pub struct StacksParts {
    pub client: Arc<dyn StacksClient>,
    pub settings: StacksSettings,
}

/// Reads the stacks-node's tip and the sBTC registry's signer data once and logs them. A node on
/// the wrong network stops the start; an unreachable one, or a registry that cannot be read, is a
/// warning (the observer still takes events, and calls retry).
async fn check_stacks(
    stacks: &StacksParts,
) -> Result<Option<crate::devnet::demo::StacksReading>, NodeError> {
    let info = match crate::chain::stacks::rpc::check_network(
        stacks.client.as_ref(),
        stacks.settings.network,
    )
    .await
    {
        Ok(info) => {
            eprintln!(
                "stacks: {} at height {}, tip {}, burn height {} ({})",
                stacks.settings.node_url,
                info.stacks_tip_height,
                info.stacks_tip_id(),
                info.burn_block_height,
                info.server_version
            );
            info
        }
        Err(e) if e.kind == crate::chain::stacks::ErrorKind::WrongNetwork => return Err(e.into()),
        Err(e) => {
            eprintln!(
                "warning: {e}; the signer starts anyway, check that the stacks-node is running and \
                 [stacks] node_url"
            );
            return Ok(None);
        }
    };
    match stacks
        .client
        .get_current_signer_data(&stacks.settings.deployer)
        .await
    {
        Ok(data) => {
            let aggregate = data.aggregate_key.map(|k| hex::encode(k.serialize()));
            eprintln!(
                "stacks registry: signer set of {} keys, threshold {}, aggregate key {}, signers' principal {}",
                data.signer_set.len(),
                data.threshold.map_or("-".into(), |t| t.to_string()),
                aggregate.as_deref().unwrap_or("none yet"),
                data.signer_principal
            );
            Ok(Some(crate::devnet::demo::StacksReading {
                tip_height: info.stacks_tip_height,
                signer_set: data
                    .signer_set
                    .iter()
                    .map(|k| hex::encode(k.serialize()))
                    .collect(),
                threshold: data.threshold,
                aggregate_key: aggregate,
                signer_principal: data.signer_principal.to_string(),
            }))
        }
        Err(e) => {
            eprintln!(
                "warning: cannot read the sBTC registry of {}: {e}; check [stacks] deployer",
                stacks.settings.deployer
            );
            Ok(None)
        }
    }
}

/// Checks the node's network, reads its tip, and starts the block observer. Returns the tip
/// (hash, height) the session runs on and the observer's task.
async fn start_bitcoin(
    bitcoin: &BitcoinParts,
    storage: Arc<dyn Storage>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<
    (
        (bitcoin::BlockHash, u64),
        tokio::sync::mpsc::Receiver<crate::chain::bitcoin::observer::TipChange>,
    ),
    NodeError,
> {
    let info =
        crate::chain::bitcoin::rpc::check_network(bitcoin.client.as_ref(), bitcoin.config.network)
            .await?;
    let observer = BlockObserver::new(
        bitcoin.client.clone(),
        storage,
        ObserverParams::new(bitcoin.config.network),
    );
    // The first poll runs before the session, so the node starts on a stored tip.
    match observer.poll().await {
        Ok(_) => {}
        Err(e) => eprintln!("warning: block observer: first poll failed: {e}; retrying"),
    }
    let (changes, seen) = tokio::sync::mpsc::channel(16);
    let interval = bitcoin.config.poll_interval();
    tokio::spawn(async move {
        observer
            .run(interval, changes, stop.cancelled_owned())
            .await
    });
    Ok(((info.best_block_hash, info.blocks), seen))
}

pub type NodeError = Box<dyn std::error::Error + Send + Sync>;

/// The signer set the node starts with: the bootstrap set of `[peer]`, with the threshold from
/// the command line if one was given.
pub fn bootstrap_set(peer: &PeerConfig, threshold: Option<u32>) -> Result<SignerSet, NodeError> {
    let set = peer.bootstrap_set()?;
    if set.is_empty() {
        return Err(
            "[peer] has no [[peer.bootstrap]] entries: list every signer of the set, this one \
             included (see `peer card --toml`)"
                .into(),
        );
    }
    Ok(match threshold {
        Some(t) => set.with_threshold(t)?,
        None => set,
    })
}

/// Runs the node until its session ends (with `exit_when_done`) or a signal arrives.
pub async fn run(
    keys: Keys,
    storage: Arc<dyn Storage>,
    peer: &PeerConfig,
    bitcoin: Option<BitcoinParts>,
    mut opts: RunOptions,
) -> Result<ExitCode, NodeError> {
    let mut shutdown = Shutdown::register();
    let stop_tasks = tokio_util::sync::CancellationToken::new();
    let _stop_on_exit = stop_tasks.clone().drop_guard();
    let mut chain_height = 0;
    let mut stacks_reading = None;
    let mut tips = None;
    if opts.peg && bitcoin.as_ref().and_then(|b| b.stacks.as_ref()).is_none() {
        return Err("run --peg needs [bitcoin] and [stacks] in the config".into());
    }
    if let Some(bitcoin) = &bitcoin {
        let ((tip, height), seen) =
            start_bitcoin(bitcoin, storage.clone(), stop_tasks.clone()).await?;
        tips = Some(seen);
        if opts.chain_tip_from_node {
            opts.chain_tip = tip;
            chain_height = height;
        }
        eprintln!(
            "bitcoin: {} at height {height}, tip {tip}",
            bitcoin.config.rpc_url
        );
        if let Some(stacks) = &bitcoin.stacks {
            stacks_reading = check_stacks(stacks).await?;
            if bitcoin.api.is_none() {
                eprintln!(
                    "warning: [stacks] is set but [api] is not, so there is no event observer \
                     (POST /new_block) and this signer sees no sBTC events; add [api]"
                );
            }
        }
    }
    let set = bootstrap_set(peer, opts.threshold)?;
    let node = Arc::new(PeerNode::from_peer_config(peer, &keys, set).await?);
    eprintln!(
        "signer {} listening on {}",
        hex::encode(node.identity().serialize()),
        node.local_addr()
    );
    let params = SessionParams {
        keys: keys.clone(),
        storage: storage.clone(),
        chain_tip: opts.chain_tip,
        chain_height,
        demo_batch: opts.demo_batch,
        connect_timeout: opts.connect_timeout,
        phase_timeout: opts.phase_timeout,
        nonce_ledger: opts.nonce_ledger.clone(),
        demo_participation: opts.demo_participation,
        exit_when_done: opts.exit_when_done,
        deposit_sink: None,
        stacks: stacks_reading,
        peg: opts.peg,
    };
    let mut params = params;
    let mut api = None;
    if let Some(bitcoin) = &bitcoin {
        if let Some(api_config) = &bitcoin.api {
            let running = crate::api::start_with_observer(
                api_config,
                bitcoin.client.clone(),
                bitcoin.config.network,
                storage.clone(),
                Some(node.clone()),
                bitcoin.stacks.as_ref().map(|s| &s.settings),
            )
            .await?;
            eprintln!(
                "deposit intake: POST http://{}/deposit",
                running.server.local_addr()
            );
            if bitcoin.stacks.is_some() {
                eprintln!(
                    "stacks event observer: POST http://{}/new_block",
                    running.server.local_addr()
                );
            }
            params.deposit_sink = Some(running.deposit_sink.clone());
            api = Some(running);
        }
    }
    let session = devnet::run_session(node.clone(), params);
    let outcome = tokio::select! {
        r = session => Some(r),
        _ = shutdown.wait() => None,
    };
    let mut coordinated = false;
    let mut finished = None;
    let mut peg_ran = false;
    let code = match outcome {
        None => {
            eprintln!("signal received; shutting down");
            if let Some(api) = api.take() {
                api.shutdown().await;
            }
            stop(node, &keys, "shutdown on a signal").await;
            return Ok(ExitCode::from(130));
        }
        Some(Err(e)) => {
            eprintln!("error: session failed: {e}");
            ExitCode::FAILURE
        }
        Some(Ok((mut result, state))) => {
            eprintln!(
                "session done: aggregate key {} ({}), {} demo signatures",
                result.aggregate_key,
                result.dkg_status,
                result.signatures.len()
            );
            coordinated = result.signer_index == result.coordinator;
            let batch_failed = coordinated && result.signatures_verified < opts.demo_batch;
            if batch_failed {
                eprintln!(
                    "error: demo batch: {} of {} signatures verified",
                    result.signatures_verified, opts.demo_batch
                );
            }
            let code = if result.dkg_status == "verified" && !batch_failed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
            let stacks = bitcoin.as_ref().and_then(|b| b.stacks.clone());
            match (opts.peg, code == ExitCode::SUCCESS, stacks, tips.take()) {
                (true, true, Some(stacks), Some(tips)) => {
                    let Some(bitcoin) = bitcoin.as_ref() else {
                        return Err("run --peg needs [bitcoin]".into());
                    };
                    result.peg = Some(
                        run_peg(
                            &keys,
                            &storage,
                            &node,
                            bitcoin,
                            stacks,
                            state,
                            tips,
                            &opts,
                            &mut shutdown,
                        )
                        .await,
                    );
                    peg_ran = true;
                }
                (true, false, ..) => {
                    eprintln!("error: the key is not verified; the peg does not start");
                }
                (_, _, _, rest) => tips = rest,
            }
            finished = Some(result);
            code
        }
    };
    if let Some(mut tips) = tips.take() {
        // Nobody follows the tips: keep the observer's queue from filling.
        tokio::spawn(async move { while tips.recv().await.is_some() {} });
    }
    if peg_ran {
        // The signal that stopped the peg stops the node.
    } else if !opts.exit_when_done {
        eprintln!("serving; stop with Ctrl-C or SIGTERM");
        shutdown.wait().await;
    } else if coordinated {
        // The others leave once they have the coordinator's `Done`: wait (bounded) for their
        // links to drop, so `Done` is not lost in a queue when this process exits.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !node.connected_peers().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Some(api) = api.take() {
        api.shutdown().await;
    }
    stop(node, &keys, "shutdown").await;
    // Written last, once no custody operation can follow, so the counts match the audit log.
    if let (Some(mut result), Some(path)) = (finished, &opts.result_file) {
        if let Some(audit) = keys.audit() {
            result.custody_calls = audit
                .counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        }
        write_atomically(path, &serde_json::to_vec_pretty(&result)?)?;
    }
    Ok(code)
}

/// Runs the peg on the session's links and shares until a signal.
#[allow(clippy::too_many_arguments)]
async fn run_peg(
    keys: &Keys,
    storage: &Arc<dyn Storage>,
    node: &Arc<PeerNode>,
    bitcoin: &BitcoinParts,
    stacks: StacksParts,
    state: devnet::SessionState,
    tips: tokio::sync::mpsc::Receiver<crate::chain::bitcoin::observer::TipChange>,
    opts: &RunOptions,
    shutdown: &mut Shutdown,
) -> crate::coordination::tenure::PegReport {
    use crate::coordination::{stacks_calls::StacksSide, tenure};
    let blocklist = match bitcoin.policy.blocklist() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: [policy] blocklist: {e}; the peg does not start");
            return tenure::PegReport::default();
        }
    };
    let decider = Arc::new(crate::coordination::Decider::new(
        storage.clone(),
        bitcoin.policy.clone(),
        blocklist,
        bitcoin.config.network,
        node.identity(),
    ));
    let peg = tenure::Peg::new(
        tenure::PegParams {
            keys: keys.clone(),
            storage: storage.clone(),
            node: node.clone(),
            stacks: StacksSide {
                client: stacks.client,
                settings: stacks.settings,
            },
            phase_timeout: opts.phase_timeout,
            sweeps: crate::coordination::sweeps::SweepSide {
                bitcoin: bitcoin.client.clone(),
                settings: bitcoin.sweep.clone(),
            },
            decider,
        },
        tenure::PegStart {
            transport: state.transport,
            signer: state.signer,
            ctx: state.ctx,
            public: state.public,
            aggregate_key: state.aggregate_key,
            coordinator: state.coordinator,
        },
    );
    eprintln!("peg: following the Bitcoin tip; stop with Ctrl-C or SIGTERM");
    let stop = tokio_util::sync::CancellationToken::new();
    let run = peg.run(tips, stop.clone());
    tokio::pin!(run);
    let report = tokio::select! {
        report = &mut run => report,
        _ = shutdown.wait() => {
            eprintln!("signal received; the peg finishes what it is doing and stops");
            stop.cancel();
            run.await
        }
    };
    eprintln!(
        "peg stopped: {} tips, {} tenures led, {} Stacks calls submitted, {} proposals signed, {} refused",
        report.tips_seen,
        report.tenures_led,
        report.stacks_submitted.len(),
        report.proposals_signed,
        report.refusal_count
    );
    report
}

/// Stops the peer mesh, then signs the audit log's head: the last custody operation of the run.
async fn stop(node: Arc<PeerNode>, keys: &Keys, reason: &str) {
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        // Someone still holds it (a task cut short by the signal): dropping stops it too.
        Err(node) => drop(node),
    }
    if let Err(e) = keys.sign_audit_head(reason).await {
        eprintln!("warning: the audit log's head was not signed at {reason}: {e}");
    }
}

/// Writes to a temporary file and renames it, so a reader never sees half a result.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
