//! `regtest-node`: the devnet's regtest Bitcoin node as a process of its own (see
//! `crate::devnet::regtest`), so an operator can point a signer's `[bitcoin] rpc_url` at it by
//! hand. Runs until Ctrl-C or SIGTERM; the cookie file goes at exit.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bitcoin::FeeRate;
use clap::Args;

use crate::commands::CommandResult;
use crate::devnet::regtest::{RegtestNode, RegtestOptions, RpcAuth};

#[derive(Debug, Args)]
pub struct RegtestNodeCmd {
    /// Where the JSON-RPC server listens (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:18443")]
    rpc_bind: SocketAddr,
    /// Write bitcoind's `__cookie__:<hex>` credentials here (mode 0600; removed at exit).
    #[arg(long)]
    cookie_file: Option<PathBuf>,
    /// A fixed RPC user (with `--rpc-password-file`), as bitcoind's `-rpcuser`.
    #[arg(long, requires = "rpc_password_file")]
    rpc_user: Option<String>,
    /// A file holding the RPC password (first line).
    #[arg(long, requires = "rpc_user")]
    rpc_password_file: Option<PathBuf>,
    /// What `estimatesmartfee` answers, in sat/vB (0: no estimate, as a fresh bitcoind).
    #[arg(long, default_value_t = 1)]
    fee_rate: u64,
    /// Blocks to mine to the node's wallet at start (101 gives it one spendable coinbase).
    #[arg(long, default_value_t = 101)]
    initial_blocks: u32,
    /// Mine a block every this many seconds (0: only on `generatetoaddress`/`generateblock`).
    #[arg(long, default_value_t = 0)]
    block_interval: u64,
}

impl RegtestNodeCmd {
    pub async fn run(self) -> CommandResult {
        let user_password = match (&self.rpc_user, &self.rpc_password_file) {
            (Some(user), Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read --rpc-password-file {}: {e}", path.display())
                })?;
                let password = text.lines().next().unwrap_or("").to_string();
                if password.is_empty() {
                    return Err(format!("--rpc-password-file {} is empty", path.display()).into());
                }
                Some((user.clone(), password))
            }
            _ => None,
        };
        if user_password.is_none() && self.cookie_file.is_none() {
            return Err("no RPC credentials: pass --cookie-file PATH, or --rpc-user with --rpc-password-file".into());
        }
        let fee_rate = (self.fee_rate > 0)
            .then(|| FeeRate::from_sat_per_vb(self.fee_rate))
            .flatten();
        if self.fee_rate > 0 && fee_rate.is_none() {
            return Err(format!("--fee-rate {} sat/vB is out of range", self.fee_rate).into());
        }
        let mut shutdown = crate::node::Shutdown::register();
        let node = RegtestNode::start(RegtestOptions {
            rpc_bind: self.rpc_bind,
            auth: RpcAuth {
                user_password,
                cookie_file: self.cookie_file.clone(),
            },
            fee_rate,
            ..RegtestOptions::default()
        })
        .await?;
        node.mine(self.initial_blocks);
        let (height, tip) = node.tip();
        // Reports go to stdout when someone reads it; a closed pipe is no reason to fail.
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "regtest node: rpc {} (height {height}, tip {tip})",
            node.rpc_url()
        );
        if let Some(path) = node.cookie_file() {
            let _ = writeln!(out, "regtest node: cookie {}", path.display());
        }
        let _ = out.flush();
        if self.block_interval == 0 {
            shutdown.wait().await;
        } else {
            let mut ticker = tokio::time::interval(Duration::from_secs(self.block_interval));
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = ticker.tick() => {
                        node.mine(1);
                    }
                }
            }
        }
        node.stop().await;
        let _ = writeln!(std::io::stdout(), "regtest node: stopped");
        Ok(ExitCode::SUCCESS)
    }
}
