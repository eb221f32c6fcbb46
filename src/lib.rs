//! sbtc-hsm-signer: an sBTC signer node whose long-term keys live in an HSM or an encrypted
//! keystore. Everything here reaches keys only through `sbtc_custody::Custody`.

pub mod commands;
pub mod config;
pub mod custody;
pub mod keys;
pub mod node;
pub mod peer;
pub mod signing;
pub mod storage;
