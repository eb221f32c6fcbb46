//! `devnet`: a local network of signers on 127.0.0.1 (see `crate::devnet`).

use std::path::PathBuf;

use clap::Args;

use crate::{
    commands::CommandResult,
    devnet::cluster::{self, ClusterOptions, DevnetBackend},
};

#[derive(Debug, Args)]
pub struct Devnet {
    /// Number of signers.
    #[arg(long, default_value_t = 5)]
    signers: u32,
    /// Signers needed to sign.
    #[arg(long, default_value_t = 4)]
    threshold: u32,
    /// Sighashes in the demo batch.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Deposits the built-in depositor makes once the key is registered, the way the `sbtc`
    /// wallet library does; the signers sweep them and mint sBTC. 0: stop after registering.
    #[arg(long, default_value_t = 0)]
    deposits: usize,
    /// Where to put keystores, configs, logs and results (must be empty or absent); default: a
    /// new directory under the system temp dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// How long to wait for the signers to finish, in seconds. Each signer also gets this long to
    /// link up with its peers and for each round phase (150 signers on 2 cores need ~900).
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Where the signers' keys live: an encrypted keystore file each, a SoftHSM2 token each (in
    /// its own token dir), or `mixed` (both, alternating, in one signer set).
    #[arg(long, value_enum, default_value_t = DevnetBackend::Keystore)]
    backend: DevnetBackend,
    /// A PostgreSQL URL (`postgresql://user@host:port/db`, a role allowed to create databases;
    /// password from PGPASSWORD or ~/.pgpass): each signer gets a new database of its own there,
    /// migrated at start. Default: in-memory storage.
    #[arg(long)]
    postgres: Option<String>,
    /// The SoftHSM2 PKCS#11 module (`--backend softhsm`).
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    pkcs11_module: PathBuf,
}

impl Devnet {
    pub async fn run(self) -> CommandResult {
        cluster::run(ClusterOptions {
            signers: self.signers,
            threshold: self.threshold,
            batch: self.batch,
            work_dir: self.work_dir,
            timeout: self.timeout,
            backend: self.backend,
            postgres: self.postgres,
            pkcs11_module: self.pkcs11_module,
            deposits: self.deposits,
        })
        .await
    }
}
