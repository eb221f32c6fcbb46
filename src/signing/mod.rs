//! Threshold signing with WSTS: DKG (FIRE coordinator, shares end-to-end encrypted to endorsed
//! per-DKG transport keys, sealed by custody), DKG verification through Bitcoin Core's script
//! verifier, and batched signing (one nonce exchange and one share exchange per batch).
//!
//! The round logic runs over the abstract [`Transport`]: the in-process network here for tests and
//! the benchmark floor, the peer links in the node.

mod batch;
mod dkg;
mod local;
mod nonce_ledger;
mod secret;
mod shares;
mod signer_set;
mod transport;
mod transport_key;
mod verification;

mod error;

pub use batch::{
    signing_key, ApproveAll, ApproveListed, Approver, BatchCoordinator, BatchNonceRequest,
    BatchNonceResponse, BatchShareRequest, BatchShareResponse, BatchSignatures, BatchSigner,
    Exclusion, Participation, RoundId, SighashRequest, SignedSighash, SpendKind, MAX_BATCH,
};
pub use dkg::{run_dkg, DkgOutcome, SignerContext};
pub use error::{Result, SigningError};
pub use local::{LocalCluster, LocalSigner};
pub use nonce_ledger::{FileNonceLedger, InMemoryNonceLedger, LedgerError, NonceLedger};
pub use shares::{shares_aad, KeyShares, PublicShares, SealedShares};
pub use signer_set::SignerSet;
pub use transport::{
    Envelope, InProcessNetwork, InProcessTransport, MessageCounts, RoundMessage, Transport,
    TransportError,
};
pub use transport_key::{endorsement_digest, TransportKey, TransportKeyEndorsement};
pub use verification::{verify_dkg, DkgVerification, MockKeySpend};

use serde::{Deserialize, Serialize};

/// A signer's position in the sorted [`SignerSet`] (its WSTS signer id; its key id is this + 1).
pub type SignerIndex = u32;

/// Identifies one DKG (WSTS' `dkg_id`; never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DkgId(pub u64);
