//! sbtc-hsm-signer: an sBTC signer node whose long-term keys live in an HSM or an encrypted keystore.

use std::process::ExitCode;

use clap::Parser;
use sbtc_hsm_signer::commands;

fn main() -> ExitCode {
    let cli = commands::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SBTC_LOG")
                // cryptoki logs an ERROR for every vendor mechanism it has no name for: noise.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,cryptoki::mechanism=off")
                }),
        )
        .init();
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
