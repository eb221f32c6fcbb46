//! Coordination: what signers say to each other above the round arithmetic. Today the adapter
//! between the peer links and the rounds ([`peer_transport`]), the round messages' wire form
//! ([`wire`]) and the DKG decision statement; the request decider, coordinator tenures,
//! signer-side checks of proposals and rotation come with the chain layer.

pub mod decision;
pub mod peer_transport;
pub mod wire;

pub use decision::{DecisionVerdict, DkgDecision};
pub use peer_transport::{Incoming, PeerTransport, ReceivedStatement};
pub use wire::WireError;
