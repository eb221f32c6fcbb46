//! Stacks: principals and addresses ([`address`]), Clarity values ([`clarity`]), the SIP-005
//! transaction codec and origin check ([`transaction`]), the signers' SIP-027 multisig account
//! and signing for it in custody ([`multisig`]), the four signers' contract calls and the checks
//! before signing one ([`contracts`]), and the sbtc-registry print events ([`events`]).

pub mod address;
pub mod clarity;
pub mod contracts;
pub mod events;
pub mod multisig;
pub mod transaction;
