//! `shoplog backup` and `shoplog restore` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(super) struct BackupArgs {}

#[derive(Debug, clap::Args)]
pub(super) struct RestoreArgs {}

pub(super) fn backup(_args: BackupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("backup is not available yet")
}

pub(super) fn restore(_args: RestoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("restore is not available yet")
}
