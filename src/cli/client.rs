//! Client subcommands: every provider operation and every admin key operation against a
//! running server, with `--output json`.

use clap::Args;

#[derive(Args)]
pub struct ProviderArgs {}

#[derive(Args)]
pub struct AdminArgs {}

pub async fn run_provider(_args: ProviderArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}

pub async fn run_admin(_args: AdminArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet implemented")
}
