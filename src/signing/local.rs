//! A whole signer set in one process over the in-process network: tests, the benchmark floor and
//! the devnet use it. Each signer still has its own custody backend.

use std::{sync::Arc, time::Duration};

use sbtc_custody::{Custody, KeyLabel, PublicKey};

use super::{
    approver::Approver,
    dkg::{run_dkg, DkgOutcome, SignerContext},
    in_process::{InProcessNetwork, InProcessTransport, MessageCounts},
    nonce_ledger::NonceLedger,
    signer::BatchSigner,
    DkgId, Result, SignerIndex, SignerSet, SigningError,
};

/// One signer of a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalSigner {
    pub ctx: SignerContext,
}

/// N signers, each with its own custody backend, numbered by the sorted signer set.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    pub set: Arc<SignerSet>,
    /// Indexed by signer index.
    pub signers: Vec<LocalSigner>,
}

impl LocalCluster {
    /// `custodies` must each hold a secp256k1 key under `identity` and a seal key under `seal`.
    pub async fn new(
        custodies: Vec<Arc<dyn Custody>>,
        identity: &KeyLabel,
        seal: &KeyLabel,
        threshold: u32,
        phase_timeout: Duration,
    ) -> Result<Self> {
        let mut keyed = Vec::with_capacity(custodies.len());
        for c in custodies {
            match c.public_key(identity).await? {
                PublicKey::Secp256k1(k) => keyed.push((k, c)),
                PublicKey::P256(_) => {
                    return Err(SigningError::SignerSet(format!(
                        "key '{identity}' is a P-256 key; the identity key must be secp256k1"
                    )))
                }
            }
        }
        let set = Arc::new(SignerSet::from_keys(
            keyed.iter().map(|(k, _)| *k),
            threshold,
        )?);
        let mut signers: Vec<Option<LocalSigner>> = vec![None; keyed.len()];
        for (key, custody) in keyed {
            let me = set
                .index_of(&key)
                .ok_or_else(|| SigningError::Internal("identity key missing from set".into()))?;
            signers[me as usize] = Some(LocalSigner {
                ctx: SignerContext {
                    set: set.clone(),
                    me,
                    custody,
                    identity_label: identity.clone(),
                    seal_label: seal.clone(),
                    phase_timeout,
                },
            });
        }
        let signers = signers.into_iter().flatten().collect();
        Ok(LocalCluster { set, signers })
    }

    /// A fresh full-mesh in-process network for this cluster.
    pub fn network(&self) -> (Vec<InProcessTransport>, Arc<MessageCounts>) {
        InProcessNetwork::new(self.set.len())
    }

    /// Runs one DKG with every signer as a tokio task; outcomes by signer index.
    pub async fn run_dkg(
        &self,
        dkg_id: DkgId,
        coordinator: SignerIndex,
    ) -> Result<Vec<DkgOutcome>> {
        let (transports, _) = self.network();
        let mut tasks = Vec::with_capacity(transports.len());
        for (signer, mut transport) in self.signers.iter().zip(transports) {
            let ctx = signer.ctx.clone();
            tasks.push(tokio::spawn(async move {
                run_dkg(&ctx, &mut transport, dkg_id, coordinator).await
            }));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for t in tasks {
            outcomes.push(
                t.await
                    .map_err(|e| SigningError::Internal(format!("DKG task: {e}")))??,
            );
        }
        Ok(outcomes)
    }

    /// A batch signer for each DKG outcome (by signer index).
    pub fn batch_signers(
        &self,
        coordinator: SignerIndex,
        outcomes: &[DkgOutcome],
        ledgers: Vec<Arc<dyn NonceLedger>>,
        approvers: Vec<Arc<dyn Approver>>,
    ) -> Vec<BatchSigner> {
        self.signers
            .iter()
            .zip(outcomes)
            .zip(ledgers.into_iter().zip(approvers))
            .map(|((s, o), (ledger, approver))| {
                BatchSigner::new(
                    s.ctx.clone(),
                    Arc::new(o.public.clone()),
                    o.sealed.clone(),
                    ledger,
                    approver,
                    coordinator,
                )
            })
            .collect()
    }
}
