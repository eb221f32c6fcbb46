use std::process::ExitCode;

use clap::Args;

use crate::{commands::CommandResult, config::Config, custody};

#[derive(Debug, Args)]
pub struct Init {}

impl Init {
    pub async fn run(self, config: &Config) -> CommandResult {
        println!("{}", custody::init(&config.custody).await?);
        Ok(ExitCode::SUCCESS)
    }
}
