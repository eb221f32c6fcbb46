//! The devnet: a cluster of signer processes on 127.0.0.1 ([`cluster`]), the session each of them
//! runs until the chain layer exists (DKG, verification, a demo batch: [`session`]), and the
//! devnet's sample work ([`demo`]).

pub mod cluster;
pub mod demo;
pub mod depositor;
pub mod peg_run;
pub mod regtest;
pub mod session;
pub mod stacks;

pub use session::{run_session, wait_for_peers, SessionParams, SessionState};
