//! Peer links: signers talk over tonic gRPC on mutually authenticated TLS 1.3, and the TLS private
//! key never leaves the custody backend.
//!
//! - [`cert`]: each signer's self-signed certificate, made from its custody-held P-256 key and
//!   carrying a binding: the signer's secp256k1 identity key signs the certificate's public key and
//!   validity.
//! - [`tls`]: rustls signs handshakes through `Custody`; both sides admit a peer only if its binding
//!   verifies against an identity key in the current [`SignerSet`].
//! - [`node`]: the listener, the full mesh of outbound links with reconnect and jittered backoff,
//!   per-peer rate limits and bounded queues.
//! - [`message`]: the typed, versioned protobuf messages; proposals, acks and decisions are signed.
//!
//! The node needs a tokio runtime (either flavour): handshake signatures run on a dedicated
//! thread so that a synchronous rustls callback never waits on the runtime that drives it.
//! See docs/peer-links.md.

pub mod binding;
mod budget;
pub mod card;
pub mod cert;
pub mod config;
mod error;
mod limits;
mod link;
pub mod message;
mod metrics;
pub mod node;
mod quota;
mod server;
pub mod set;
mod stream;
pub mod tls;

pub use config::PeerConfig;
pub use error::PeerError;
pub use limits::{Limits, DEFAULT_MAX_CERT_LIFETIME};
pub use metrics::{Metrics, MetricsSnapshot};
pub use node::{Inbound, NodeParams, PeerNode};
pub use set::{Member, SharedSet, SignerSet};
pub use stream::PeerConnInfo;

/// Generated gRPC code for proto/peer.proto, and the round messages it carries.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("sbtc.peer.v1");

    /// proto/rounds.proto: the typed round messages of an envelope's `round` body. The links only
    /// carry them; `coordination::wire` converts and checks them.
    pub mod rounds {
        tonic::include_proto!("sbtc.rounds.v1");
    }
}
