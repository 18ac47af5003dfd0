//! `shoplog replay` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(super) struct ReplayArgs {}

pub(super) fn run(_args: ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("replay is not available yet")
}
