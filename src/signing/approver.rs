//! The signer's policy hook: which sighashes it agrees to sign. The node wires the
//! no-equivocation guard and the re-derivation of every proposal into it.

#[cfg(any(test, feature = "testing"))]
use std::collections::HashSet;

use async_trait::async_trait;

use super::{round::SighashRequest, DkgId, SignerIndex};

/// The caller's policy: which sighashes this signer agrees to sign. The node wires the
/// no-equivocation guard (and the re-derivation of every proposal) into this.
///
/// An approval is for a whole [`SighashRequest`]: the sighash AND the spend kind with its
/// taproot tweak (merkle root), which decide the key the share is computed under. An
/// implementation must compare all of it: a coordinator that asks for an approved sighash under
/// another tweak would otherwise get a signature valid under a key the signer never agreed to.
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

/// Approves everything (benchmarks, and tests where approval is not the subject). Never in a
/// release build: a signer that signs anything is not a signer.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default, Clone, Copy)]
pub struct ApproveAll;

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl Approver for ApproveAll {
    async fn approve(&self, _: SignerIndex, _: DkgId, sighashes: &[SighashRequest]) -> Vec<bool> {
        vec![true; sighashes.len()]
    }
}

/// Approves exactly the requests in a set (tests): the sighash together with its spend kind and
/// taproot tweak, so an approved sighash asked for under another key is refused.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default, Clone)]
pub struct ApproveListed(pub HashSet<SighashRequest>);

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl Approver for ApproveListed {
    async fn approve(&self, _: SignerIndex, _: DkgId, sighashes: &[SighashRequest]) -> Vec<bool> {
        sighashes.iter().map(|s| self.0.contains(s)).collect()
    }
}
