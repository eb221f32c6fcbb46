//! The signers' Stacks contract calls in a tenure: the coordinator builds the unsigned
//! transaction (nonce and fee from its own stacks-node), every signer checks it against its own
//! view (`contracts::check`) and signs it in custody, and the coordinator assembles a threshold
//! of signatures and submits it.
//!
//! The account is the one the sBTC registry names: its signer set and threshold are read from
//! the signer's own stacks-node at every call, so a rotation changes who signs.

use std::sync::Arc;

use bitcoin::secp256k1::PublicKey;

use crate::chain::stacks::{
    contracts::{self, CallView, SignerCall, SigningContext},
    multisig::{self, SignerAccount},
    transaction::StacksTransaction,
    StacksClient, StacksSettings,
};
use crate::keys::Keys;

/// How far ahead of the account's confirmed nonce a proposal may be: calls of one tenure follow
/// each other before the next Stacks block confirms them.
pub const MAX_NONCE_AHEAD: u64 = 8;

/// A signer's Stacks side: its own stacks-node and `[stacks]`.
#[derive(Clone)]
pub struct StacksSide {
    pub client: Arc<dyn StacksClient>,
    pub settings: StacksSettings,
}

impl StacksSide {
    /// The signers' account as the registry names it now: its signer set and threshold read
    /// from this signer's own stacks-node.
    pub async fn account(&self) -> Result<SignerAccount, String> {
        let data = self
            .client
            .get_current_signer_data(&self.settings.deployer)
            .await
            .map_err(|e| format!("cannot read the registry's signer set: {e}"))?;
        let threshold = data.threshold.ok_or_else(|| {
            "the registry names no signature threshold yet; the bootstrap set must be set up \
             on the sBTC contracts first"
                .to_string()
        })?;
        let account = SignerAccount::new(data.signer_set, threshold)
            .map_err(|e| format!("the registry's signer set is not a usable account: {e}"))?;
        let principal = account.principal(self.settings.network);
        if principal != data.signer_principal {
            return Err(format!(
                "the registry names the signers' principal {}, but its keys and threshold give \
                 {principal}; this signer will not sign for either",
                data.signer_principal
            ));
        }
        Ok(account)
    }

    /// The account's next nonce as this signer's stacks-node reports it.
    pub async fn confirmed_nonce(&self, account: &SignerAccount) -> Result<u64, String> {
        Ok(self
            .client
            .get_account(&account.principal(self.settings.network))
            .await
            .map_err(|e| format!("cannot read the signers' account nonce: {e}"))?
            .nonce)
    }

    fn context(&self, account: SignerAccount, nonce: u64) -> SigningContext {
        SigningContext {
            network: self.settings.network,
            deployer: self.settings.deployer.clone(),
            account,
            nonce,
            fee_cap: self.settings.fee_cap_ustx,
        }
    }

    /// The coordinator's build: the call from `account` at `nonce`, priced by this node's fee
    /// estimate, capped by `[stacks] fee_cap_ustx`.
    pub async fn build(
        &self,
        account: SignerAccount,
        nonce: u64,
        call: &SignerCall,
    ) -> Result<StacksTransaction, String> {
        let ctx = self.context(account, nonce);
        let unpriced = contracts::build(&ctx, call, 0);
        // The signatures are not in the unsigned length: one 65-byte field per signer.
        let len = unpriced.serialize().len() as u64 + 66 * u64::from(ctx.account.threshold());
        let fee = match self.client.estimate_fee(&unpriced.payload, len).await {
            Ok(estimate) => estimate.medium_capped(ctx.fee_cap),
            Err(e) => {
                tracing::warn!(error = %e, "no Stacks fee estimate; paying the fee cap");
                ctx.fee_cap
            }
        };
        Ok(contracts::build(&ctx, call, fee))
    }

    /// Every signer's part: checks `proposed` against its own view and its own node's nonce,
    /// then signs it in custody. Returns the call it agreed to and the signature.
    pub async fn check_and_sign(
        &self,
        keys: &Keys,
        identity: &PublicKey,
        view: &dyn CallView,
        proposed: &StacksTransaction,
    ) -> Result<(SignerCall, [u8; 65]), String> {
        let account = self.account().await?;
        let confirmed = self.confirmed_nonce(&account).await?;
        let nonce = proposed.auth.nonce();
        if nonce < confirmed || nonce > confirmed + MAX_NONCE_AHEAD {
            return Err(format!(
                "nonce {nonce} is not the account's next nonce {confirmed} (or at most \
                 {MAX_NONCE_AHEAD} above it) on this signer's stacks-node"
            ));
        }
        let ctx = self.context(account, nonce);
        let call = contracts::check(proposed, &ctx, view)
            .await
            .map_err(|e| e.to_string())?;
        let reason = format!("stacks {} of {}", call.function_name(), call.subject());
        let signature = multisig::sign(keys, identity, &ctx.account, proposed, &reason)
            .await
            .map_err(|e| e.to_string())?;
        Ok((call, signature))
    }
}
