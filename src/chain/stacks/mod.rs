//! Stacks: principals and addresses ([`address`]), Clarity values ([`clarity`]), the SIP-005
//! codec of the signers' SIP-027 multisig contract calls ([`transaction`]), the sbtc-registry's
//! print events ([`events`]), the stacks-node client ([`client`] trait, [`rpc`] over the node's
//! v2 HTTP API), `[stacks]` ([`config`]) and the event observer's chain side ([`observer`]:
//! `/new_block` bodies in, canonical-chain events out). Contract-call checks to come (see ARCHITECTURE.md).

pub mod address;
pub mod clarity;
pub mod client;
pub mod config;
pub mod events;
pub mod observer;
pub mod rpc;
pub mod transaction;

pub use client::{Error, ErrorKind, StacksClient};
pub use config::{StacksConfig, StacksSettings};
pub use rpc::StacksRpc;
