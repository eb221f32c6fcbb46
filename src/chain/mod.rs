//! The chains the signer watches: Bitcoin ([`bitcoin`]) and Stacks ([`stacks`]).
//! Both arrive with the chain issues; until then the devnet signs on a fixed tip.

pub mod bitcoin;
mod http;
pub mod stacks;
