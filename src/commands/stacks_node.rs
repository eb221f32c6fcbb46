//! `stacks-node`: the devnet's Stacks node as a process of its own (see
//! `crate::devnet::stacks`), following a Bitcoin node (the regtest node or a bitcoind), so an
//! operator can point a signer's Stacks endpoint and event observer at it by hand. Runs until
//! Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::secp256k1::PublicKey;
use clap::Args;

use crate::chain::bitcoin::rpc::{BitcoindRpc, RpcAuth};
use crate::chain::stacks::address::{Principal, StacksNetwork};
use crate::commands::CommandResult;
use crate::devnet::stacks::{StacksNode, StacksNodeOptions};

#[derive(Debug, Args)]
pub struct StacksNodeCmd {
    /// Where the RPC server listens (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:20443")]
    rpc_bind: SocketAddr,
    /// The Bitcoin node whose blocks the Stacks blocks follow.
    #[arg(long, default_value = "http://127.0.0.1:18443")]
    bitcoin_rpc_url: String,
    /// The Bitcoin node's cookie file (`regtest-node --cookie-file`, or bitcoind's `.cookie`).
    #[arg(long)]
    bitcoin_cookie_file: PathBuf,
    /// `testnet` (devnet, regtest) or `mainnet`.
    #[arg(long, default_value = "testnet")]
    network: String,
    /// The sBTC contracts' deployer address (default: the bootstrap signers' multisig).
    #[arg(long)]
    deployer: Option<String>,
    /// A bootstrap signer's compressed public key, hex (repeat for each signer).
    #[arg(long = "signer", required = true)]
    signers: Vec<String>,
    /// Signatures the bootstrap multisig needs.
    #[arg(long)]
    threshold: u16,
    /// `<address>=<µSTX>`: STX at genesis (repeatable; fund the signers' multisig for fees).
    #[arg(long = "fund")]
    funds: Vec<String>,
    /// An event observer's base URL (repeatable); `/new_block` is POSTed to it.
    #[arg(long = "observer")]
    observers: Vec<String>,
    /// How often the Bitcoin node is polled for a new block.
    #[arg(long, default_value_t = 500)]
    poll_interval_ms: u64,
}

fn parse_network(text: &str) -> Result<StacksNetwork, String> {
    match text {
        "testnet" | "devnet" | "regtest" => Ok(StacksNetwork::Testnet),
        "mainnet" => Ok(StacksNetwork::Mainnet),
        other => Err(format!(
            "--network {other:?} is not a Stacks network; use testnet or mainnet"
        )),
    }
}

fn parse_signer(text: &str) -> Result<PublicKey, String> {
    let bytes = hex::decode(text.trim_start_matches("0x"))
        .map_err(|e| format!("--signer {text:?} is not hex: {e}"))?;
    if bytes.len() != 33 {
        return Err(format!(
            "--signer {text:?} has {} bytes; give a compressed secp256k1 public key (33 bytes, 66 hex digits)",
            bytes.len()
        ));
    }
    PublicKey::from_slice(&bytes)
        .map_err(|e| format!("--signer {text:?} is not a secp256k1 public key: {e}"))
}

fn parse_fund(text: &str) -> Result<(Principal, u128), String> {
    let (address, amount) = text
        .split_once('=')
        .ok_or_else(|| format!("--fund {text:?}: write <address>=<µSTX>, e.g. ST2…=100000000"))?;
    let who = Principal::from_address(address).map_err(|e| format!("--fund {text:?}: {e}"))?;
    let ustx = amount
        .parse::<u128>()
        .map_err(|e| format!("--fund {text:?}: the amount is not a whole number of µSTX: {e}"))?;
    Ok((who, ustx))
}

impl StacksNodeCmd {
    pub async fn run(self) -> CommandResult {
        let network = parse_network(&self.network)?;
        let signers = self
            .signers
            .iter()
            .map(|s| parse_signer(s))
            .collect::<Result<Vec<_>, _>>()?;
        if self.threshold == 0 || self.threshold as usize > signers.len() {
            return Err(format!(
                "--threshold {} must be between 1 and the number of --signer keys ({})",
                self.threshold,
                signers.len()
            )
            .into());
        }
        let deployer = self
            .deployer
            .as_deref()
            .map(|d| Principal::from_address(d).map_err(|e| format!("--deployer {d:?}: {e}")))
            .transpose()?;
        let balances = self
            .funds
            .iter()
            .map(|f| parse_fund(f))
            .collect::<Result<Vec<_>, _>>()?;
        if self.poll_interval_ms == 0 {
            return Err("--poll-interval-ms must be at least 1".into());
        }
        let bitcoin = BitcoindRpc::with_auth(
            &self.bitcoin_rpc_url,
            RpcAuth::Cookie(self.bitcoin_cookie_file.clone()),
            Duration::from_secs(10),
            2,
        )
        .map_err(|e| format!("--bitcoin-rpc-url: {e}"))?;
        let mut options = StacksNodeOptions::new(Arc::new(bitcoin), signers, self.threshold);
        options.rpc_bind = self.rpc_bind;
        options.network = network;
        options.deployer = deployer;
        options.balances = balances;
        options.observers = self.observers.clone();
        options.poll_interval = Duration::from_millis(self.poll_interval_ms);
        let mut shutdown = crate::node::Shutdown::register();
        let node = StacksNode::start(options).await?;
        let (height, _) = node.tip();
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "stacks node: rpc {} (deployer {}, stacks height {height})",
            node.rpc_url(),
            node.deployer()
        );
        let _ = out.flush();
        shutdown.wait().await;
        node.stop().await;
        let _ = writeln!(std::io::stdout(), "stacks node: stopped");
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_flags_say_what_to_write() {
        assert!(parse_network("regtest").is_ok());
        assert!(parse_network("signet")
            .unwrap_err()
            .contains("testnet or mainnet"));
        assert!(parse_signer("02ab").unwrap_err().contains("33 bytes"));
        assert!(parse_signer("zz").unwrap_err().contains("not hex"));
        assert!(parse_fund("ST000")
            .unwrap_err()
            .contains("<address>=<µSTX>"));
        let ok = parse_fund("ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG=5").unwrap();
        assert_eq!(ok.1, 5);
        assert!(parse_fund("ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG=-1").is_err());
    }
}
