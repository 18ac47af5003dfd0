//! `shoplog export` and `shoplog import` (being written).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {}

#[derive(Debug, clap::Args)]
pub(super) struct ImportArgs {}

pub(super) fn export(_args: ExportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("export is not available yet")
}

pub(super) fn import(_args: ImportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("import is not available yet")
}
