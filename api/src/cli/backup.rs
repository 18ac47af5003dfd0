//! `shoplog backup` and `shoplog restore` (DESIGN §3, §7).
//!
//! A backup is written to a temporary file next to `--out`, fsynced, checked, and
//! only then given its name ([`write_then_rename`], which export uses too, links
//! it, so that a file made under that name meanwhile is never replaced), so a
//! backup that failed never leaves a file that looks whole; an existing `--out`
//! is never overwritten. A restore checks the whole
//! file (header, every record's hash chain, trailer, checksum) before it writes
//! anything, fills a staging directory next to `--data`, verifies the log there,
//! rebuilds the read models, and only then renames it into place: it never leaves
//! a half-restored directory and never writes over a non-empty one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use store::RestoreTo;

use super::open_offline_to_copy;
use super::progress::bar;

#[derive(Debug, clap::Args)]
// Both may be set (one in the environment, one on the line): see `choose_source`.
#[command(group = clap::ArgGroup::new("source").required(true).multiple(true).args(["data", "server"]))]
pub(super) struct BackupArgs {
    /// The file to write; it must not exist yet.
    #[arg(long, env = "SHOPLOG_OUT", value_parser = super::unquoted_path)]
    out: PathBuf,
    /// Back up the data dir of a stopped server.
    #[arg(long, env = "SHOPLOG_DATA", value_parser = super::unquoted_path)]
    pub(super) data: Option<PathBuf>,
    /// Back up a running server through `GET /admin/backup` (needs --token).
    #[arg(long, env = "SHOPLOG_SERVER", value_parser = super::unquoted)]
    pub(super) server: Option<String>,
    /// The server's admin token.
    #[arg(long, env = "SHOPLOG_TOKEN", value_parser = super::unquoted, hide_env_values = true)]
    token: Option<String>,
    /// With --server: give up when the server has sent nothing for this many
    /// seconds (or has not accepted the connection within them).
    #[arg(
        long,
        env = "SHOPLOG_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub(super) struct RestoreArgs {
    /// The backup file.
    #[arg(long = "in", env = "SHOPLOG_IN", value_parser = super::unquoted_path)]
    input: PathBuf,
    /// The data dir to create; it must not exist or be empty.
    #[arg(long, env = "SHOPLOG_DATA", value_parser = super::unquoted_path)]
    data: PathBuf,
    /// Restore only the events up to and including this position.
    #[arg(long, env = "SHOPLOG_TO_POSITION", conflicts_with = "to_time")]
    to_position: Option<u64>,
    /// Restore only the events recorded at or before this time (RFC 3339, e.g.
    /// 2026-11-22T10:00:00Z).
    #[arg(long, env = "SHOPLOG_TO_TIME", value_parser = parse_time)]
    to_time: Option<DateTime<Utc>>,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| format!("{error}; expected an RFC 3339 time like 2026-11-22T10:00:00Z"))
}

pub(super) fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    // A replica's copy holds none of the customers' keys, and a restore of it
    // would be a primary without them (nor would it be a replica's dir).
    if args.server.is_none()
        && let Some(data) = &args.data
    {
        super::not_a_replica(
            data,
            "back up the primary (its --data, or --server URL of the primary), and start a replica on an empty data dir",
        )?;
    }
    let summary = write_then_rename(&args.out, |partial| {
        match (&args.server, &args.data) {
            (Some(server), _) => {
                let token = args.token.as_deref().ok_or_else(|| anyhow::anyhow!("--server needs --token T"))?;
                backup_online(server, token, Duration::from_secs(args.timeout), partial)?
            }
            (None, Some(data)) => backup_offline(data, partial)?,
            (None, None) => anyhow::bail!("say which log to back up: --data DIR or --server URL"),
        }
        // Read back whole before it gets its name.
        let file = File::open(partial).with_context(|| format!("cannot read back {}", partial.display()))?;
        let checking = bar("checking the backup", 0, "events");
        let checked = store::check_backup(file, &mut |done| checking.set_position(done));
        checking.finish_and_clear();
        checked.context("the backup written is not sound")
    })?;
    say!(
        "backed up {} events up to position {} ({} keys, {} forgotten, {} bytes) to {}",
        summary.events,
        summary.last_position,
        summary.keys,
        summary.forgotten,
        summary.bytes,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Make the file `out`, which must not exist yet, through `write`, which fills
/// (and fsyncs) the temporary path it is given: only a whole file gets the name,
/// and a failed one leaves nothing behind.
pub(super) fn write_then_rename<T>(out: &Path, write: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    // First: a run that is refused must not leave an earlier run's partial file in place.
    super::interrupt::remove_left_behind(out, "partial");
    let exists = || anyhow::anyhow!("{} already exists; choose a new file name", out.display());
    anyhow::ensure!(!out.exists(), exists());
    // Named here, before the hidden file beside it would be.
    let directory = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    anyhow::ensure!(
        directory.is_dir(),
        "cannot create {}: the directory {} does not exist",
        out.display(),
        directory.display()
    );
    let partial = store::beside(out, "partial");
    let _writing = super::interrupt::Writing::new(&partial);
    let written = write(&partial).and_then(|value| {
        store::link_into_place(&partial, out).map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => exists(),
            _ => anyhow::Error::new(error).context(format!("cannot name the file {}", out.display())),
        })?;
        Ok(value)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

fn backup_offline(data: &Path, partial: &Path) -> anyhow::Result<()> {
    let log = open_offline_to_copy(data).map_err(|error| match error.downcast_ref::<super::InUse>() {
        Some(_) => anyhow::anyhow!(
            "data directory {} is in use by a running server: back it up through the server with \
             --server URL --token T, or stop it first",
            data.display()
        ),
        _ => error,
    })?;
    let file = store::create_private_file(partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let progress = bar("backing up", log.head(), "events");
    log.backup(&file, &mut |done| progress.set_position(done))?;
    progress.finish_and_clear();
    file.sync_all().context("cannot fsync the backup")?;
    Ok(())
}

fn backup_online(server: &str, token: &str, timeout: Duration, partial: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let url = super::server_url(server, "/admin/backup")?;
    // Said without a password the URL may hold.
    let shown = commands::relay::shown(url.as_str());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // The backup may be long: what bounds it is the silence between reads.
        let client = reqwest::Client::builder().connect_timeout(timeout).read_timeout(timeout).build()?;
        let mut response = client
            .get(url.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|error| anyhow::anyhow!("cannot reach {shown}: {}", root_cause(&error)))?;
        super::refused_by_server(&response)?;
        let response_status = response.status();
        if !response_status.is_success() {
            let detail = response.text().await.unwrap_or_default();
            anyhow::bail!("{shown} answered {response_status}: {}", super::problem_detail(&detail));
        }
        let mut file =
            store::create_private_file(partial).with_context(|| format!("cannot create {}", partial.display()))?;
        let progress = bar("downloading", 0, "bytes");
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| anyhow::anyhow!("the backup download broke off: {}", root_cause(&error)))?
        {
            file.write_all(&chunk).with_context(|| format!("cannot write {}", partial.display()))?;
            progress.inc(chunk.len() as u64);
        }
        progress.finish_and_clear();
        file.sync_all().context("cannot fsync the backup")?;
        Ok(())
    })
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

pub(super) fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    remove_left_behind_dir(&args.data);
    let open = || super::open_input(&args.input);
    store::ensure_new_or_empty(&args.data)?;
    let checking = bar("checking", 0, "events");
    let whole = store::check_backup(open()?, &mut |done| checking.set_position(done))
        .with_context(|| format!("refusing {}", args.input.display()))?;
    checking.finish_and_clear();
    let to = match (args.to_position, args.to_time) {
        (Some(position), _) => {
            anyhow::ensure!(
                (1..=whole.last_position).contains(&position),
                "position {position} is not in the backup, which holds {}",
                positions(whole.last_position)
            );
            RestoreTo::Position(position)
        }
        (None, Some(time)) => {
            if let Some(first) = whole.first_recorded_at {
                anyhow::ensure!(
                    time >= first,
                    "no event in the backup was recorded at or before {time} (the first was at {first})"
                );
            }
            RestoreTo::Time(time)
        }
        (None, None) => RestoreTo::End,
    };
    let (restored, completed) = install_dir(&args.data, |staging| {
        let progress = bar("restoring", whole.events, "events");
        let restored = store::restore_backup(open()?, staging, to, &mut |done| progress.set_position(done))?;
        progress.finish_and_clear();
        let completed = complete_lost_forgettings(staging)?;
        Ok((restored, completed))
    })?;
    let last = restored.last_recorded_at.map(|time| format!(", the last recorded at {}", time.to_rfc3339()));
    say!(
        "restored {} of {} events ({}{}) from {} into {}; read models rebuilt",
        restored.events,
        whole.events,
        positions(restored.last_position),
        last.unwrap_or_default(),
        args.input.display(),
        args.data.display()
    );
    if !completed.is_empty() {
        say!(
            "forgotten after that point, so forgotten here too (recorded, their unpaid orders cancelled): customer{} {}",
            if completed.len() == 1 { "" } else { "s" },
            completed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A restore to a position before a forget holds that customer forgotten (the
/// backup, made after it, holds no key) without the forgetting recorded or
/// their unpaid orders cancelled: both are completed in the staged log
/// ([`commands::CommandService::complete_lost_forgettings`]). The customers.
fn complete_lost_forgettings(staging: &Path) -> anyhow::Result<Vec<String>> {
    let log = store::EventLog::open_with(staging, commands::codec::log_options())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let completed = runtime.block_on(async {
        let service = commands::CommandService::new(log)?;
        let context = commands::CommandContext::new(format!("cli:restore {}", std::process::id()));
        service.complete_lost_forgettings(&context).await
    })?;
    Ok(completed.into_iter().map(|(customer_id, _)| customer_id.to_string()).collect())
}

/// The positions of a log whose last is `last`: "positions 1 to 7", "position
/// 1", or "no positions" for an empty one.
fn positions(last: u64) -> String {
    match last {
        0 => "no positions".to_owned(),
        1 => "position 1".to_owned(),
        last => format!("positions 1 to {last}"),
    }
}

/// Fill a staging directory next to `target` with `fill`, verify the log there,
/// rebuild its read models, and rename it into place; on any failure the staging
/// directory is removed and `target` is left as it was.
///
/// A `target` that is a symbolic link stays one: the directory it points to
/// (which may not exist yet) is the one filled, beside which the staging
/// directory is made (rename(2) would not put a directory over the link).
pub(super) fn install_dir<T>(target: &Path, fill: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    remove_left_behind_dir(target);
    let target = &through_links(target)?;
    store::ensure_new_or_empty(target)?;
    ensure_replaceable(target)?;
    let staging = store::beside(target, "incoming");
    let _writing = super::interrupt::Writing::new(&staging);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    let installed = fill(&staging).and_then(|filled| {
        settle(&staging)?;
        // An existing target is empty, as checked: rename(2) replaces an empty
        // directory in one step, and the data dir then takes its mode, as README
        // promises for a data dir that already exists.
        let existing = std::fs::metadata(target).ok().map(|metadata| metadata.permissions());
        std::fs::rename(&staging, target).with_context(|| format!("cannot move the data into {}", target.display()))?;
        if let Some(permissions) = existing {
            std::fs::set_permissions(target, permissions)
                .with_context(|| format!("cannot give {} its mode back", target.display()))?;
        }
        store::sync_parent(target).with_context(|| format!("cannot fsync the directory of {}", target.display()))?;
        Ok(filled)
    });
    if installed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    installed
}

/// Remove the staging dirs that killed runs left beside the data dir `target`
/// (it, or where its links lead). Called first by every command that fills one,
/// before anything can refuse the run: those dirs hold a shop's data and keys.
pub(super) fn remove_left_behind_dir(target: &Path) {
    super::interrupt::remove_left_behind(&through_links(target).unwrap_or_else(|_| target.to_path_buf()), "incoming");
}

/// Where `path` leads through symbolic links: the path itself when it is none.
fn through_links(path: &Path) -> anyhow::Result<PathBuf> {
    /// As many links as Linux follows in one path.
    const LINKS_MAX: usize = 40;
    let mut path = path.to_path_buf();
    for _ in 0..LINKS_MAX {
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.file_type().is_symlink());
        if !is_link {
            return Ok(path);
        }
        let link = std::fs::read_link(&path).with_context(|| format!("cannot read the link {}", path.display()))?;
        // A relative link is relative to the directory holding it.
        path = path.parent().map_or_else(|| link.clone(), |parent| parent.join(&link));
    }
    anyhow::bail!("{} goes through more than {LINKS_MAX} symbolic links", path.display())
}

/// An existing (empty) target is replaced by the staging dir, renamed over it:
/// refuse one that cannot be, before any work (the current directory, which the
/// staging dir's name would put inside itself; a mount point, which cannot be
/// removed and lies on another disk than the staging dir).
fn ensure_replaceable(target: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !target.exists() {
        return Ok(());
    }
    let canonical = std::fs::canonicalize(target).with_context(|| format!("cannot resolve {}", target.display()))?;
    let suggestion = canonical.join("data");
    let here = std::env::current_dir().and_then(std::fs::canonicalize).ok();
    anyhow::ensure!(
        here.as_deref() != Some(canonical.as_path()),
        "{} is the current directory: name a new directory to fill instead, e.g. {}",
        target.display(),
        suggestion.display()
    );
    if let Some(parent) = canonical.parent() {
        let dev = |path: &Path| std::fs::metadata(path).map(|metadata| metadata.dev()).ok();
        anyhow::ensure!(
            dev(parent) == dev(&canonical),
            "{} is a mount point: name a new directory on it to fill instead, e.g. {}",
            target.display(),
            suggestion.display()
        );
    }
    Ok(())
}

/// Verify the log just written and build its read models.
fn settle(dir: &Path) -> anyhow::Result<()> {
    let log = store::EventLog::open_with(dir, commands::codec::log_options())?;
    let verifying = bar("verifying", log.head(), "events");
    let verified = log.verify_with(&mut |done| verifying.set_position(done));
    verifying.finish_and_clear();
    verified.context("the restored log does not verify")?;
    let progress = bar("rebuilding read models", log.head(), "events");
    projections::replay(&log, None, None, &mut |done| progress.set_position(done))
        .context("cannot rebuild the read models")?;
    progress.finish_and_clear();
    Ok(())
}
