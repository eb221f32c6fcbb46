use std::process::ExitCode;

use clap::Args;

use crate::{commands::CommandResult, config::Config, keys};

#[derive(Debug, Args)]
pub struct Init {}

impl Init {
    pub async fn run(self, config: &Config) -> CommandResult {
        println!("{}", keys::init(config.needs_custody("keys init")?).await?);
        Ok(ExitCode::SUCCESS)
    }
}
