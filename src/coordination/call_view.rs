//! The store-backed [`CallView`]: what this signer's own storage and its own stacks-node say a
//! contract call must be. Every signer rebuilds a coordinator's call from here before it signs.

use async_trait::async_trait;
use bitcoin::{secp256k1::PublicKey, OutPoint};
use std::sync::Arc;

use crate::chain::stacks::{
    contracts::{
        AcceptWithdrawal, CallView, CompleteDeposit, Rebuilt, RejectWithdrawal, RotateKeys,
    },
    events::RegistryEvent,
    observer,
};
use crate::storage::{DkgSharesStatus, Storage};

use super::stacks_calls::StacksSide;
use super::sweeps;

/// This signer's view: its storage (DKG shares, sweeps, registry events) and its stacks-node.
pub struct StoreCallView {
    pub storage: Arc<dyn Storage>,
    pub stacks: StacksSide,
    /// The sweeps' OP_RETURN magic (`[sweep] magic`).
    pub magic: [u8; 2],
}

#[async_trait]
impl CallView for StoreCallView {
    async fn complete_deposit(
        &self,
        outpoint: &OutPoint,
    ) -> Result<Rebuilt<CompleteDeposit>, String> {
        if let Some(done) = observer::completed_deposit_event(self.storage.as_ref(), outpoint)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(Rebuilt::Done(format!(
                "completed in Stacks transaction {} (block {})",
                done.txid, done.block_height
            )));
        }
        let tip = self
            .storage
            .get_bitcoin_canonical_tip()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "this signer has no Bitcoin tip yet".to_string())?;
        let Some(sweep) = sweeps::sweep_spending(self.storage.as_ref(), &tip, outpoint).await?
        else {
            return Ok(Rebuilt::Unknown(
                "this signer has no confirmed sweep of it".into(),
            ));
        };
        let calls =
            sweeps::completions_of(self.storage.as_ref(), &sweep, self.magic, false).await?;
        Ok(match calls.into_iter().find(|c| c.outpoint == *outpoint) {
            Some(call) => Rebuilt::Ready(call),
            None => Rebuilt::Unknown(format!(
                "sweep {} spends it, and this signer holds no deposit request for it",
                sweep.txid
            )),
        })
    }

    async fn accept_withdrawal(
        &self,
        request_id: u64,
    ) -> Result<Rebuilt<AcceptWithdrawal>, String> {
        Ok(Rebuilt::Unknown(format!(
            "this signer has no confirmed sweep that pays withdrawal {request_id}"
        )))
    }

    async fn reject_withdrawal(
        &self,
        request_id: u64,
    ) -> Result<Rebuilt<RejectWithdrawal>, String> {
        Ok(Rebuilt::Unknown(format!(
            "withdrawal {request_id} is not one this signer would reject"
        )))
    }

    /// A rotation to a key this signer holds verified shares of, to that DKG's signer set and
    /// threshold; done once the registry names it.
    async fn rotate_keys(&self, aggregate_key: &PublicKey) -> Result<Rebuilt<RotateKeys>, String> {
        if let Some(latest) = observer::latest_key_rotation(self.storage.as_ref())
            .await
            .map_err(|e| e.to_string())?
        {
            if let RegistryEvent::KeyRotation {
                new_aggregate_pubkey,
                ..
            } = &latest.event
            {
                if new_aggregate_pubkey == aggregate_key {
                    return Ok(Rebuilt::Done(format!(
                        "rotated in Stacks transaction {}",
                        latest.txid
                    )));
                }
            }
        }
        match self
            .stacks
            .client
            .get_current_aggregate_pubkey(&self.stacks.settings.deployer)
            .await
        {
            Ok(Some(current)) if current == *aggregate_key => {
                return Ok(Rebuilt::Done(
                    "the registry already names this aggregate key".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("cannot read the registry's aggregate key: {e}")),
        }
        let shares = self
            .storage
            .get_all_dkg_shares()
            .await
            .map_err(|e| e.to_string())?;
        let Some(ours) = shares
            .iter()
            .find(|s| s.shares.aggregate_key.public_key() == *aggregate_key)
        else {
            return Ok(Rebuilt::Unknown(
                "no DKG of this signer produced this aggregate key".into(),
            ));
        };
        if ours.shares.status != DkgSharesStatus::Verified {
            return Ok(Rebuilt::Unknown(format!(
                "this signer's shares of that key are {}, not verified",
                ours.shares.status
            )));
        }
        Ok(Rebuilt::Ready(RotateKeys::new(
            ours.shares.signer_set.clone(),
            *aggregate_key,
            ours.shares.threshold,
        )))
    }
}
