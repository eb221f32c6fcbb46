//! Stacks: principals and addresses ([`address`]), Clarity values ([`clarity`]), the SIP-005
//! transaction codec and origin check ([`transaction`]), the signers' SIP-027 multisig account
//! and signing for it in custody ([`multisig`]), the signers' contract calls (single and batch)
//! and the checks before signing one ([`contracts`]), the sbtc-registry print events ([`events`]), the
//! stacks-node client ([`client`] trait, [`rpc`] over the node's v2 HTTP API), `[stacks]`
//! ([`config`]) and the event observer's chain side ([`observer`]: `/new_block` bodies in,
//! canonical-chain events out).

pub mod address;
pub mod clarity;
pub mod client;
pub mod config;
pub mod contracts;
pub mod events;
pub mod multisig;
pub mod observer;
pub mod rpc;
pub mod transaction;

pub use client::{Error, ErrorKind, StacksClient};
pub use config::{StacksConfig, StacksSettings};
pub use rpc::StacksRpc;
