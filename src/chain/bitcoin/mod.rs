//! Bitcoin: the node client ([`client`] trait, [`rpc`] over bitcoind's JSON-RPC), the block
//! observer, deposit scripts, and (to come) sweeps and the peg UTXO. See CHAIN.md sections 1, 2, 5.

pub mod client;
pub mod config;
pub mod deposit;
pub mod idpack;
pub mod observer;
pub mod rpc;
pub mod sweep;

pub use client::{BitcoinClient, Error, ErrorKind};
pub use config::BitcoinConfig;
pub use rpc::BitcoindRpc;
