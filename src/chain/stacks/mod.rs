//! Stacks: principals and addresses ([`address`]), Clarity values ([`clarity`]), and the SIP-005
//! codec of the signers' SIP-027 multisig contract calls ([`transaction`]); the presign sighash
//! and signing in custody, the node client, contract-call checks and the event observer to come
//! (see ARCHITECTURE.md).

pub mod address;
pub mod clarity;
pub mod events;
pub mod transaction;
