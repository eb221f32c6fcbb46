//! The running signer: the signing rounds over the peer links ([`transport`]), one devnet
//! session (DKG, verification, a demo batch) in [`session`], and the devnet's sample work in
//! [`demo`].

pub mod demo;
pub mod session;
pub mod transport;

pub use session::{run_session, wait_for_peers, SessionParams};
pub use transport::{Incoming, PeerTransport, ReceivedStatement};
