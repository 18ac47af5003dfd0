//! `shoplog replay`: rebuild read models from the log of a stopped server, each
//! into a fresh generation that serves from the next start
//! (`projections::replay`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::progress;

/// Flags of `replay`.
#[derive(Debug, clap::Args)]
pub(super) struct ReplayArgs {
    /// The data directory of a stopped server.
    #[arg(long, env = "SHOPLOG_DATA", value_parser = super::unquoted_path, default_value = "./data")]
    data: PathBuf,
    /// Rebuild only this read model: catalog, carts, orders or dashboard [default: all]
    #[arg(long, value_name = "NAME", env = "SHOPLOG_PROJECTION")]
    projection: Option<String>,
    /// Apply events up to this position only, 1 or more [default: the head];
    /// the server applies the rest when it starts.
    #[arg(long, value_name = "P", env = "SHOPLOG_TO_POSITION", value_parser = clap::value_parser!(u64).range(1..))]
    to_position: Option<u64>,
}

pub(super) fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    // Refuse an unknown model before the data dir is even opened.
    if let Some(name) = &args.projection
        && !projections::MODELS.iter().any(|(known, _)| known == name)
    {
        let known: Vec<&str> = projections::MODELS.iter().map(|(known, _)| *known).collect();
        anyhow::bail!("no read model named {name} (there are {})", known.join(", "));
    }
    let log = super::open_offline(&args.data)?;
    let head = log.head();
    let total = args.to_position.unwrap_or(head).min(head);
    let bar = progress::bar("replaying", total, "events");
    let replayed = projections::replay(&log, args.projection.as_deref(), args.to_position, &mut |done| {
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = replayed.with_context(|| format!("cannot replay the log in {}", args.data.display()))?;
    let names: Vec<String> =
        report.models.iter().map(|model| format!("{} (generation {})", model.name, model.generation)).collect();
    let seconds = report.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { report.events as f64 / seconds } else { 0.0 };
    say!(
        "replayed {} events into {} up to position {} in {seconds:.2} s ({rate:.0} events/s)",
        report.events,
        names.join(", "),
        report.position
    );
    if report.position < report.head {
        say!(
            "the log's head is {}: the server applies positions {} to {} when it starts",
            report.head,
            report.position + 1,
            report.head
        );
    }
    Ok(ExitCode::SUCCESS)
}
