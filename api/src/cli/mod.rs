//! The `shoplog` command line (DESIGN §7). Every failure is one line on stderr and
//! exit code 2; `verify` exits 1 when the log is damaged.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, Secret};

mod backup;
mod export;
mod forget;
mod interrupt;
mod progress;
mod replay;

#[derive(Debug, Parser)]
#[command(name = "shoplog", version, about = "An event-sourced shop backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole backend: the HTTP API over the event log in --data.
    Serve(ServeArgs),
    /// Run a read replica: copy a primary's log from NATS (--nats) into --data,
    /// build the read models and serve the read routes; --primary and --token
    /// fill what NATS lacks.
    Project(ProjectArgs),
    /// Walk the hash chain and the indexes of the log in --data (server stopped).
    Verify {
        #[arg(long, env = "SHOPLOG_DATA", value_parser = unquoted_path, default_value = "./data")]
        data: PathBuf,
    },
    /// Count what the log in --data holds: events, head, size on disk, per type and
    /// per stream category (server stopped).
    Stats {
        #[arg(long, env = "SHOPLOG_DATA", value_parser = unquoted_path, default_value = "./data")]
        data: PathBuf,
    },
    /// Back the log up into one file: offline from --data, or online from a running
    /// server with --server and --token.
    Backup(backup::BackupArgs),
    /// Make a new data dir from a backup, verified first, read models rebuilt;
    /// optionally only up to a position or a time.
    Restore(backup::RestoreArgs),
    /// Rebuild read models from the log in --data (server stopped).
    Replay(replay::ReplayArgs),
    /// Write the log as NDJSON of the JSON event form to stdout or --out.
    Export(export::ExportArgs),
    /// Fill an empty data dir from a full export (`export --with-secrets`).
    Import(export::ImportArgs),
    /// Crypto-shred one customer's personal data, offline or through a server.
    Forget(forget::ForgetArgs),
}

/// Refuses a read replica's data dir (`shoplog project`) for work that needs
/// the customers' data or writes the log, saying what to do instead.
fn not_a_replica(data: &std::path::Path, instead: &str) -> anyhow::Result<()> {
    if data.join(crate::server::REPLICA_MARK).exists() {
        anyhow::bail!(
            "{} is a read replica's copy (shoplog project): it holds none of the customers' data; {instead}",
            data.display()
        );
    }
    Ok(())
}

/// A path given by a flag or `SHOPLOG_*`, without one pair of double quotes
/// around it ([`crate::config::unquoted`]).
fn unquoted_path(text: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(crate::config::unquoted(text)))
}

/// Text given by a flag or `SHOPLOG_*`, without one pair of double quotes around it.
fn unquoted(text: &str) -> Result<String, std::convert::Infallible> {
    Ok(crate::config::unquoted(text).to_owned())
}

/// A token given by a flag or `SHOPLOG_*`, without one pair of double quotes around it.
fn unquoted_secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(crate::config::unquoted(text)))
}

/// Flags of `serve` and `project`; each also reads `SHOPLOG_<NAME>` and the config file.
#[derive(Debug, clap::Args, Serialize)]
struct Settings {
    /// A TOML file with any of the settings below.
    #[arg(long, env = "SHOPLOG_CONFIG", value_parser = unquoted_path)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The data directory [default: ./data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<PathBuf>,
    /// The address to listen on [default: 127.0.0.1:8080]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// The admin's bearer token [default: generated into <data>/admin-token]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token: Option<Secret>,
    /// The dashboards' read-only token [default: generated into <data>/viewer-token]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    viewer_token: Option<Secret>,
    /// The key that signs customer tokens [default: generated into the data dir]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    token_secret: Option<Secret>,
    /// sled's page cache in MiB: lower bounds memory, higher reads faster [default: 32]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_mib: Option<u64>,
}

/// Flags of `serve`.
#[derive(Debug, clap::Args, Serialize)]
struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    settings: Settings,
    /// Seed a small shop (products, customers, orders) into an empty data dir
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    demo: bool,
    /// Publish every event to NATS JetStream at this URL, such as nats://127.0.0.1:4222 [default: none]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats: Option<String>,
    /// The token read replicas give (`project --token`) to fill gaps from this log: it reads the records as stored, nothing else [default: none: only the admin token]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_token: Option<Secret>,
}

/// Flags of `project`. Customers' tokens from the primary's logins are taken
/// when `--token-secret` is the primary's.
#[derive(Debug, clap::Args, Serialize)]
struct ProjectArgs {
    #[command(flatten)]
    #[serde(flatten)]
    settings: Settings,
    /// The NATS server the primary relays to (`serve --nats`), such as nats://127.0.0.1:4222
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nats: Option<String>,
    /// The primary's URL, to fill positions NATS lacks, such as http://127.0.0.1:8080 (config key primary) [default: none: a gap stops the replica]
    #[arg(long, env = "SHOPLOG_PRIMARY", value_parser = unquoted)]
    #[serde(skip_serializing_if = "Option::is_none")]
    primary: Option<String>,
    /// The primary's replica token (its --replica-token) or admin token, with --primary (config key primary_token)
    #[arg(long, env = "SHOPLOG_TOKEN", value_parser = unquoted_secret, hide_env_values = true)]
    #[serde(rename = "primary_token", skip_serializing_if = "Option::is_none")]
    token: Option<Secret>,
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret::new(text))
    }
}

/// Stdout's reader went away (`shoplog export | head`): the command ends
/// there quietly with 141, as a Unix tool that SIGPIPE ends does (128 + 13).
/// Not success: a `verify | …` whose verdict could not be written must not
/// pass for a sound log.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// What a failed write to stdout becomes: [`StdoutClosed`] for a broken pipe,
/// else an error saying so.
pub fn stdout_error(error: std::io::Error) -> anyhow::Error {
    match error.kind() {
        std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
        _ => anyhow::anyhow!("cannot write to stdout: {error}"),
    }
}

/// Parse, run, and turn any error into one line and exit code 2.
pub fn main() -> ExitCode {
    let parsed = Cli::command().try_get_matches().and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `shoplog` alone: clap would print the help, whose first line says nothing is missing.
            eprintln!("shoplog: say which command to run, such as `shoplog serve` (see shoplog --help)");
            return ExitCode::from(2);
        }
        Err(error) if error.use_stderr() => {
            // clap's usage errors span several lines; the first one names the problem.
            // Its first paragraph (the problem and what it names) goes on one line.
            let rendered = error.to_string();
            let first: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|line| line.is_empty())
                .take_while(|line| !line.is_empty())
                .collect();
            let line = first.join(" ");
            eprintln!("shoplog: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(help_or_version) => {
            // `--help` and `--version` print to stdout and succeed.
            let _ = help_or_version.print();
            return ExitCode::SUCCESS;
        }
    };
    // Everything shoplog creates (the log's files, backups, exports, token
    // files, staging dirs) is its owner's only, whatever the umask it was
    // started with (the store and the writers of secrets set their own modes
    // too; this covers what sled creates as it goes).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let operating = !matches!(cli.command, Command::Serve(_) | Command::Project(_));
    if let Err(error) = init_tracing_for(operating) {
        eprintln!("shoplog: {error}");
        return ExitCode::from(2);
    }
    let given = matches.subcommand().map(|(_, matches)| matches);
    match run(cli, given) {
        Ok(code) => code,
        Err(_) if interrupt::interrupted() => interrupt::end_interrupted(),
        Err(error) if error.is::<StdoutClosed>() => ExitCode::from(141),
        Err(error) => {
            eprintln!("shoplog: {}", error_line(&error));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, `: ` between them, each said once: an
/// error whose message already holds its cause's (`reading the log: <cause>`)
/// is not followed by that cause again.
fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Which log a command with an offline and an online form works on, when both
/// `--data` and `--server` are set: the one given on the command line wins over
/// one from the environment (`SHOPLOG_DATA`, `SHOPLOG_SERVER`), so an exported
/// `SHOPLOG_SERVER` never turns `backup --data DIR` or `forget --data DIR` into
/// work on a server; both on the command line is refused; both from the
/// environment, the server wins (an offline command cannot open the data dir of
/// a running server anyway). Clears the one not taken.
fn choose_source<S>(
    given: Option<&ArgMatches>,
    data: &mut Option<PathBuf>,
    server: &mut Option<S>,
) -> anyhow::Result<()> {
    if data.is_none() || server.is_none() {
        return Ok(());
    }
    let on_line = |id: &str| given.and_then(|matches| matches.value_source(id)) == Some(ValueSource::CommandLine);
    match (on_line("data"), on_line("server")) {
        (true, true) => anyhow::bail!("give --data DIR or --server URL, not both"),
        (true, false) => *server = None,
        (false, true) => *data = None,
        // Neither said here: which one was meant is a guess, made by nobody.
        (false, false) => {
            anyhow::bail!("SHOPLOG_DATA and SHOPLOG_SERVER are both set: say which log with --data DIR or --server URL")
        }
    }
    Ok(())
}

fn run(cli: Cli, given: Option<&ArgMatches>) -> anyhow::Result<ExitCode> {
    if !matches!(cli.command, Command::Serve(_) | Command::Project(_)) {
        interrupt::watch();
    }
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(args.settings.config.as_deref(), &args)
                .map_err(|error| anyhow::anyhow!("bad setting: {error}"))?;
            anyhow::ensure!(
                config.primary.is_none() && config.primary_token.is_none(),
                "bad setting: primary: only a read replica (shoplog project) has a primary"
            );
            // A restore or import killed on its way into this dir left its
            // staging dir (a shop's data and keys) beside it: the server starts
            // on whatever the dir holds, so nothing else would remove it.
            backup::remove_left_behind_dir(&config.data);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(crate::server::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(args) => {
            let config = Config::load(args.settings.config.as_deref(), &args)
                .map_err(|error| anyhow::anyhow!("bad setting: {error}"))?;
            anyhow::ensure!(
                config.nats.is_some(),
                "bad setting: nats: a read replica needs --nats URL, the NATS its primary relays to"
            );
            anyhow::ensure!(!config.demo, "bad setting: demo: a read replica's log comes from its primary");
            let primary = config.primary();
            backup::remove_left_behind_dir(&config.data);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(crate::server::serve_as(config, crate::server::Role::Replica { primary }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { data } => {
            let log = match open_offline(&data) {
                Ok(log) => log,
                Err(error) => {
                    if let Some(sync_failed @ store::StoreError::SyncFailed { .. }) = error.downcast_ref() {
                        say!("{sync_failed}");
                        return Ok(ExitCode::from(1));
                    }
                    let Some(store::StoreError::Corrupt { position, reason }) = error.downcast_ref() else {
                        return Err(error);
                    };
                    // The open checks the tail (and writes a crash's batches
                    // again) first, so it stops at damage near the head; the
                    // chain, walked from the start, names the first bad record.
                    let walking = progress::bar("walking the hash chain", 0, "events");
                    let first = store::first_damaged_record(&data, &mut |done| walking.set_position(done));
                    walking.finish_and_clear();
                    let first = first?;
                    let (position, reason) = first.unwrap_or_else(|| (*position, reason.clone()));
                    say!("corrupt at position {position}: {reason}");
                    return Ok(ExitCode::from(1));
                }
            };
            let checking = progress::bar("verifying", log.head(), "events");
            let verified = log.verify_with(&mut |done| checking.set_position(done));
            checking.finish_and_clear();
            match verified {
                Ok(report) => {
                    // The log is sound; the read models' checkpoints must lie within it.
                    let checkpoints = projections::checkpoints(&log)?;
                    let damaged: Vec<_> = checkpoints
                        .iter()
                        .filter_map(|status| status.problem.as_ref().map(|problem| (status.name, problem)))
                        .collect();
                    if !damaged.is_empty() {
                        for (name, problem) in damaged {
                            say!("read model {name} is damaged: {problem} (the log itself is sound)");
                        }
                        return Ok(ExitCode::from(1));
                    }
                    say!(
                        "ok: {} events in {} streams, head {}, last hash {}",
                        report.events,
                        report.streams,
                        report.head,
                        hex::encode(report.last_hash)
                    );
                    let built: Vec<String> = checkpoints
                        .iter()
                        .filter_map(|status| {
                            let generation = status.generation?;
                            Some(format!("{} at {} (generation {generation})", status.name, status.checkpoint))
                        })
                        .collect();
                    if built.is_empty() {
                        say!("read models: none built yet");
                    } else {
                        say!("read models: {}", built.join(", "));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(store::StoreError::Corrupt { position, reason }) => {
                    say!("corrupt at position {position}: {reason}");
                    Ok(ExitCode::from(1))
                }
                Err(other) => Err(other.into()),
            }
        }
        Command::Stats { data } => {
            let log = open_offline(&data)?;
            let stats = stats(&log)?;
            say!("events: {}", stats.events);
            say!("head position: {}", log.head());
            let size = log.size_on_disk()?;
            say!("size on disk: {} ({size} bytes)", indicatif::HumanBytes(size));
            say!("by category:");
            for (category, count) in &stats.by_category {
                say!("  {category}: {count}");
            }
            say!("by type:");
            for (event_type, count) in &stats.by_type {
                say!("  {event_type}: {count}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(mut args) => {
            choose_source(given, &mut args.data, &mut args.server)?;
            backup::backup(args)
        }
        Command::Restore(args) => backup::restore(args),
        Command::Replay(args) => replay::run(args),
        Command::Export(args) => export::export(args),
        Command::Import(args) => export::import(args),
        Command::Forget(mut args) => {
            choose_source(given, &mut args.data, &mut args.server)?;
            forget::run(args)
        }
    }
}

/// Open the file an operator command reads (a backup, an export).
pub(crate) fn open_input(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    anyhow::ensure!(!path.is_dir(), "{} is a directory, not a file", path.display());
    anyhow::Context::with_context(std::fs::File::open(path), || format!("cannot open {}", path.display()))
}

/// Open the log of a stopped server; a running one holds its lock.
pub(crate) fn open_offline(data: &std::path::Path) -> anyhow::Result<store::EventLog> {
    open_offline_with(data, commands::codec::log_options())
}

/// [`open_offline`] to copy the log (`backup`): a log whose last run could
/// not sync sled's file opens too, read whole and left as it is
/// (`store::Options::salvage`).
pub(crate) fn open_offline_to_copy(data: &std::path::Path) -> anyhow::Result<store::EventLog> {
    open_offline_with(data, store::Options { salvage: true, ..commands::codec::log_options() })
}

fn open_offline_with(data: &std::path::Path, options: store::Options) -> anyhow::Result<store::EventLog> {
    anyhow::ensure!(!data.exists() || data.is_dir(), "data directory {} is a file, not a directory", data.display());
    anyhow::ensure!(data.is_dir(), "data directory {} does not exist", data.display());
    // Opening would create a log: an offline command never changes a dir that holds none.
    match std::fs::metadata(data.join("db")) {
        Ok(db) if db.is_file() => {}
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
            "data directory {} cannot be read: permission denied (run shoplog as the user that owns it)",
            data.display()
        ),
        // What is left of a log whose sled file is gone: damage, named as such.
        _ => match store::sled_file_lost(data) {
            Some(reason) => return Err(store::StoreError::Corrupt { position: 1, reason }.into()),
            None => anyhow::bail!("data directory {} holds no shoplog log", data.display()),
        },
    }
    store::EventLog::open_with(data, options).map_err(|error| match error {
        store::StoreError::Locked { path } => anyhow::Error::new(InUse(path)),
        other => anyhow::Error::new(other),
    })
}

/// A data dir held by a running server: a typed error, so that a command with an
/// online twin can say `--server` instead.
#[derive(Debug, thiserror::Error)]
#[error("data directory {} is in use by a running server; stop it first", .0.display())]
pub(crate) struct InUse(pub std::path::PathBuf);

/// The URL of `path` on the server `--server` names: plain HTTP only (the
/// binary has no TLS client; see ARCHITECTURE.md, Decisions).
pub(crate) fn server_url(server: &str, path: &str) -> anyhow::Result<reqwest::Url> {
    let shown = commands::relay::shown(server);
    let url = reqwest::Url::parse(&format!("{}{path}", server.trim_end_matches('/')))
        .map_err(|_| anyhow::anyhow!("--server {shown} is not a URL"))?;
    anyhow::ensure!(url.scheme() == "http", "--server {shown}: only http:// URLs are supported");
    Ok(url)
}

/// One line for a server that refused the CLI's token.
pub(crate) fn refused_by_server(response: &reqwest::Response) -> anyhow::Result<()> {
    match response.status() {
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
            anyhow::bail!("the server refused the token ({}): pass an admin token with --token", response.status())
        }
        _ => Ok(()),
    }
}

/// The `detail` (or `title`) of a problem+json body, else the body's first line.
pub(crate) fn problem_detail(body: &str) -> String {
    let problem: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| problem.as_ref().and_then(|problem| problem.get(name)?.as_str().map(str::to_owned));
    field("detail").or_else(|| field("title")).unwrap_or_else(|| body.lines().next().unwrap_or_default().to_owned())
}

/// What `shoplog stats` counts.
struct Stats {
    events: u64,
    by_type: std::collections::BTreeMap<String, u64>,
    /// Keyed by the stream's prefix before its first `-` (`product`, `order`, …).
    by_category: std::collections::BTreeMap<String, u64>,
}

/// Count the whole log, a page at a time (bounded memory: one page and the counts).
fn stats(log: &store::EventLog) -> anyhow::Result<Stats> {
    const PAGE_LEN: usize = 4096;
    let mut stats = Stats { events: 0, by_type: Default::default(), by_category: Default::default() };
    let mut next = 1;
    let counting = progress::bar("counting", log.head(), "events");
    loop {
        let page = log.read_all(next, PAGE_LEN)?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        counting.set_position(last.position);
        for event in &page {
            stats.events += 1;
            *stats.by_type.entry(event.event_type.clone()).or_default() += 1;
            let category = event.stream.split_once('-').map_or(event.stream.as_str(), |(category, _)| category);
            *stats.by_category.entry(category.to_owned()).or_default() += 1;
        }
    }
    counting.finish_and_clear();
    Ok(stats)
}

/// The one place the tracing subscriber is built: logs to stderr, `RUST_LOG`
/// filters (default `info`, `info,sled=off` for the operator commands: see
/// [`default_log_filter`]), `SHOPLOG_LOG_FORMAT=json` for JSON lines
/// (`text`, the default, for plain lines), colours only on a terminal. A bad
/// `RUST_LOG` or `SHOPLOG_LOG_FORMAT` is an error naming it.
///
/// Spans at `info` cost every request their formatting, logged or not: each
/// request has one (`request`: its id, method and path, which every log line in
/// it carries); a command's span (`command`: the stream, versions, attempts and
/// position) and an append's are at `debug` (`RUST_LOG=info,commands=debug,store=debug`
/// shows them). At `info` the three spans cost a command 13–18 µs of CPU
/// (docs/BENCHMARKS.md).
pub fn init_tracing() -> Result<(), String> {
    init_tracing_for(false)
}

/// The log filter when `RUST_LOG` is not set. An operator command does not
/// show sled's own log lines: what it met is in the command's one error line
/// (sled logs a damaged file as an `ERROR` line before its open fails), and
/// `RUST_LOG` can still ask for them.
fn default_log_filter(operating: bool) -> &'static str {
    if operating { "info,sled=off" } else { "info" }
}

fn init_tracing_for(operating: bool) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Err(std::env::VarError::NotPresent) => tracing_subscriber::EnvFilter::new(default_log_filter(operating)),
        Err(std::env::VarError::NotUnicode(_)) => return Err("RUST_LOG is not valid UTF-8".to_owned()),
        Ok(directives) => tracing_subscriber::EnvFilter::try_new(&directives)
            .map_err(|error| format!("RUST_LOG={directives} is not a log filter: {error}"))?,
    };
    let json = match std::env::var("SHOPLOG_LOG_FORMAT").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("text") => false,
        Ok("json") => true,
        Ok(other) => return Err(format!("SHOPLOG_LOG_FORMAT={other}: must be json or text")),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("SHOPLOG_LOG_FORMAT: must be json or text".to_owned());
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = if json { builder.json().try_init() } else { builder.try_init() };
    // A second call (tests) keeps the first subscriber.
    drop(installed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a replay of a damaged log said: the store's error twice, once in
    /// the read models' error that carries it and once as that error's cause.
    #[test]
    fn an_error_line_says_each_cause_once() {
        let store = store::StoreError::Corrupt { position: 30, reason: "hash does not match".to_owned() };
        let error = anyhow::Error::new(projections::ProjectionError::from(store)).context("cannot replay the log in d");
        assert_eq!(
            error_line(&error),
            "cannot replay the log in d: reading the log: log corrupt at position 30: hash does not match"
        );
        let chained = anyhow::anyhow!("no such file").context("cannot open x").context("cannot back up");
        assert_eq!(error_line(&chained), "cannot back up: cannot open x: no such file");
    }

    /// DESIGN §7: every setting also reads `SHOPLOG_<NAME>`. A flag without
    /// its variable was ignored in silence (`SHOPLOG_TO_POSITION` replayed the
    /// whole log).
    #[test]
    fn every_flag_reads_its_shoplog_variable() {
        let cli = Cli::command();
        let mut flags = 0;
        for command in cli.get_subcommands().filter(|command| command.get_name() != "help") {
            let in_config = ["serve", "project"].contains(&command.get_name());
            for arg in command.get_arguments().filter(|arg| !["help", "version"].contains(&arg.get_id().as_str())) {
                let long =
                    arg.get_long().unwrap_or_else(|| panic!("{}: {} has no --flag", command.get_name(), arg.get_id()));
                let variable = format!("SHOPLOG_{}", long.replace('-', "_").to_ascii_uppercase());
                let read = match arg.get_env() {
                    Some(env) => env.to_str() == Some(variable.as_str()),
                    None => in_config && crate::config::ENV_KEYS.contains(&long.replace('-', "_").as_str()),
                };
                assert!(read, "{} --{long} does not read {variable}", command.get_name());
                flags += 1;
            }
        }
        assert!(flags > 30, "only {flags} flags walked");
    }
}
