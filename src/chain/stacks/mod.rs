//! Stacks: principals and addresses ([`address`]); the node client, the transaction codec,
//! SIP-027 multisig, contract calls and the event observer to come (see ARCHITECTURE.md).

pub mod address;
pub mod clarity;
pub mod transaction;
