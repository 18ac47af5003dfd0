//! `shoplog forget` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(super) struct ForgetArgs {}

pub(super) fn run(_args: ForgetArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("forget is not available yet")
}
