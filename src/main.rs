//! sbtc-hsm-signer: an sBTC signer node whose long-term keys live in an HSM or an encrypted keystore.

use std::process::ExitCode;

use clap::Parser;
use sbtc_hsm_signer::{commands, logging};

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    // SBTC_LOG (or RUST_LOG), with the targets that print secrets capped: see src/logging.rs.
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
