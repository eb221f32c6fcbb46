//! sbtc-hsm-signer: an sBTC signer node whose long-term keys live in an HSM or an encrypted
//! keystore. Everything here reaches keys only through `sbtc_custody::Custody`.
//!
//! Floors, top down (a lower one never imports a higher one): `commands` → `node`, `devnet` →
//! `coordination` → `chain` → `peer`, `storage`, `signing` → `keys` → the custody backends.

pub mod api;
pub mod chain;
pub mod commands;
pub mod config;
pub mod coordination;
pub mod devnet;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod keys;
pub mod logging;
pub mod node;
pub mod peer;
pub mod signing;
pub mod storage;
