//! Threshold signing with WSTS: DKG (FIRE coordinator, shares end-to-end encrypted to endorsed
//! per-DKG transport keys, sealed by custody), DKG verification through Bitcoin Core's script
//! verifier, and batched signing (one nonce exchange and one share exchange per batch).
//!
//! The round logic runs over the abstract [`Transport`]: the in-process network for tests and
//! the benchmark floor (test builds only), the peer links in the node.

mod approver;
mod coordinator;
mod dkg;
mod dkg_id;
mod error;
mod message;
mod nonce_ledger;
mod round;
mod secret;
mod share_math;
mod shares;
mod signer;
mod transport;
mod transport_key;
mod verification;

#[cfg(any(test, feature = "testing"))]
mod in_process;
#[cfg(any(test, feature = "testing"))]
mod local;

pub use approver::Approver;
#[cfg(any(test, feature = "testing"))]
pub use approver::{ApproveAll, ApproveListed};
pub use coordinator::{BatchCoordinator, BatchSignatures, Exclusion, Participation};
pub use dkg::{run_dkg, DkgOutcome, SignerContext};
pub use dkg_id::DkgId;
pub use error::{Result, SigningError};
#[cfg(any(test, feature = "testing"))]
pub use in_process::{InProcessNetwork, InProcessTransport, MessageCounts};
#[cfg(any(test, feature = "testing"))]
pub use local::{LocalCluster, LocalSigner};
pub use message::{
    BatchNonceRequest, BatchNonceResponse, BatchShareRequest, BatchShareResponse, RoundMessage,
};
pub use nonce_ledger::{FileNonceLedger, InMemoryNonceLedger, LedgerError, NonceLedger};
pub use round::{RoundId, SighashRequest, SignedSighash, SpendKind, MAX_BATCH};
pub use share_math::signing_key;
pub use shares::{shares_aad, KeyShares, PublicShares, SealedShares};
pub use signer::BatchSigner;
pub use transport::{Envelope, Transport, TransportError};
pub use transport_key::{endorsement_digest, TransportKey, TransportKeyEndorsement};
pub use verification::{
    check_verification, verify_dkg, DkgVerification, MockKeySpend, VerificationOutcome,
};

pub use crate::keys::{SignerIndex, SignerSet};
