//! `shoplog export` and `shoplog import`: the log as NDJSON of the JSON event form
//! (DESIGN §6), for other tools and for migrations.
//!
//! The first line is a header, `{"shoplog_export": 1, "from": P, "head": H,
//! "with_secrets": bool, "secrets": {...}}`; every other line is one event. Without
//! `--with-secrets` password hashes read `[redacted]` and the header holds no
//! secrets: fine for reading, not enough to rebuild a shop. With it, the header
//! carries the log's named secrets (the key of the email index and the key that
//! signs customer tokens), so an import keeps every stream name, every password
//! and every customer token valid (the admin and viewer tokens are the server's
//! settings or files beside the log, not part of it). Such an export holds credentials: keep it like a backup.
//! Forgotten customers stay forgotten either way (their events carry `data: null`).
//!
//! `import` takes a full export with secrets (from position 1), checks every line as
//! it goes (positions and versions without gaps, each event's data decoding as its
//! type and version, the header's `email-key` secret hashing each registered
//! customer's email to the key of its claim), writes a fresh hash chain into a
//! staging directory, verifies it, rebuilds the read models and renames it into
//! place. The other secrets are taken as they are: a header without the
//! customer-token key (a shop that signs tokens with a configured secret has none)
//! gets a new one, and customers log in again.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::open_offline;
use super::progress::bar;
use crate::json::EventJson;

/// The export format this build writes and reads.
const EXPORT_VERSION: u32 = 1;

#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {
    /// The data dir of a stopped server.
    #[arg(long, env = "SHOPLOG_DATA", value_parser = super::unquoted_path, default_value = "./data")]
    data: PathBuf,
    /// The first position to export.
    #[arg(long, env = "SHOPLOG_FROM", default_value_t = 1)]
    from: u64,
    /// Include password hashes and the log's secrets (needed for `import`).
    #[arg(long, env = "SHOPLOG_WITH_SECRETS")]
    with_secrets: bool,
    /// Write to this file (it must not exist yet) instead of stdout.
    #[arg(long, env = "SHOPLOG_OUT", value_parser = super::unquoted_path)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(super) struct ImportArgs {
    /// The data dir to create; it must not exist or be empty.
    #[arg(long, env = "SHOPLOG_DATA", value_parser = super::unquoted_path)]
    data: PathBuf,
    /// The export to read (`-` or none: stdin).
    #[arg(long = "in", env = "SHOPLOG_IN", value_parser = super::unquoted_path)]
    input: Option<PathBuf>,
}

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    shoplog_export: u32,
    from: u64,
    head: u64,
    with_secrets: bool,
    /// Name → hex, only with secrets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, String>,
}

/// One event line as import reads it.
#[derive(Debug, Deserialize)]
struct EventLine {
    position: u64,
    stream: String,
    version: u64,
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u16,
    recorded_at: DateTime<Utc>,
    actor: String,
    correlation_id: Uuid,
    causation_id: Uuid,
    data: Option<serde_json::Value>,
    #[serde(default)]
    subject: Option<Uuid>,
}

pub(super) fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    // First: a run that is refused must not leave an earlier run's partial file
    // (the shop's personal data, and with --with-secrets its secrets) in place.
    if let Some(out) = &args.out {
        super::interrupt::remove_left_behind(out, "partial");
    }
    if args.with_secrets {
        // An import of it would be a primary whose every customer is forgotten.
        super::not_a_replica(&args.data, "export --with-secrets from the primary's data dir")?;
    }
    let log = open_offline(&args.data)?;
    let head = log.head();
    anyhow::ensure!(args.from >= 1, "--from starts at 1");
    anyhow::ensure!(args.from <= head.max(1), "position {} is past the head {head}", args.from);
    let secrets = match args.with_secrets {
        true => log.secrets()?.into_iter().map(|(name, value)| (name, hex::encode(value))).collect(),
        false => BTreeMap::new(),
    };
    let header =
        Header { shoplog_export: EXPORT_VERSION, from: args.from, head, with_secrets: args.with_secrets, secrets };
    let total = (head + 1).saturating_sub(args.from);
    match &args.out {
        None => {
            let progress = indicatif::ProgressBar::hidden();
            // Only stdout is written here: a broken pipe is its reader gone (`| head`).
            write_export(&log, &header, std::io::stdout().lock(), &progress).map_err(|error| {
                let closed = error.chain().any(|cause| {
                    cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                });
                if closed { anyhow::Error::new(super::StdoutClosed) } else { error }
            })?;
        }
        Some(out) => {
            super::backup::write_then_rename(out, |partial| {
                let file = store::create_private_file(partial)
                    .with_context(|| format!("cannot create {}", partial.display()))?;
                let progress = bar("exporting", total, "events");
                write_export(&log, &header, &file, &progress)?;
                progress.finish_and_clear();
                file.sync_all().context("cannot fsync the export")
            })?;
            eprintln!("exported {total} events to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_export(
    log: &store::EventLog,
    header: &Header,
    out: impl Write,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    const PAGE_LEN: usize = 4096;
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let broken = |error: std::io::Error| anyhow::Error::new(error).context("cannot write the export");
    serde_json::to_writer(&mut out, header)?;
    out.write_all(b"\n").map_err(broken)?;
    let mut next = header.from;
    while next <= header.head {
        let page = log.read_all(next, PAGE_LEN.min((header.head + 1 - next) as usize))?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        for event in page {
            let json = match header.with_secrets {
                true => EventJson::from_recorded_with_secrets(event),
                false => EventJson::from_recorded(event),
            }
            .map_err(|error| anyhow::anyhow!("cannot export an event: {error}"))?;
            serde_json::to_writer(&mut out, &json)?;
            out.write_all(b"\n").map_err(broken)?;
        }
        progress.set_position(next - header.from);
    }
    out.flush().map_err(broken)?;
    Ok(())
}

/// The longest line an import reads: far past any event's (a record is under
/// 128 KiB, and its JSON a few times that), far below what would exhaust memory.
const LINE_LEN_MAX: usize = 8 * 1024 * 1024;

/// The lines of `input`, each refused once it is longer than `len_max` bytes
/// without ending (`lines()` would read a file with no line break whole).
struct BoundedLines<R> {
    input: R,
    len_max: usize,
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    type Item = std::io::Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Read;
        let mut line = Vec::new();
        let read = (&mut self.input).take(self.len_max as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Err(error) => Some(Err(error)),
            Ok(0) => None,
            Ok(_) if line.len() > self.len_max && !line.ends_with(b"\n") => Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {} bytes", self.len_max),
            ))),
            Ok(_) => {
                if line.ends_with(b"\n") {
                    line.pop();
                    if line.ends_with(b"\r") {
                        line.pop();
                    }
                }
                Some(
                    String::from_utf8(line)
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "a line that is not UTF-8")),
                )
            }
        }
    }
}

pub(super) fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    super::backup::remove_left_behind_dir(&args.data);
    let mut input: Box<dyn BufRead> = match &args.input {
        Some(path) if path != Path::new("-") => Box::new(BufReader::with_capacity(1 << 20, super::open_input(path)?)),
        _ => Box::new(std::io::stdin().lock()),
    };
    // A backup given for an export: say which command takes it.
    if input.fill_buf().context("cannot read the export")?.starts_with(store::BACKUP_MAGIC) {
        anyhow::bail!(
            "this is a shoplog backup, not an export: restore it with `shoplog restore --in FILE --data DIR`"
        );
    }
    let mut lines = BoundedLines { input, len_max: LINE_LEN_MAX };
    let first = lines.next().transpose().context("cannot read the export")?.unwrap_or_default();
    let header: Header = serde_json::from_str(&first)
        .map_err(|_| anyhow::anyhow!("not a shoplog export: the first line is not its header"))?;
    anyhow::ensure!(
        header.shoplog_export == EXPORT_VERSION,
        "export format {} is not supported (this build reads {EXPORT_VERSION})",
        header.shoplog_export
    );
    anyhow::ensure!(
        header.with_secrets,
        "the export is redacted (made without --with-secrets): it lacks the password hashes and keys a log needs; \
         export again with --with-secrets"
    );
    anyhow::ensure!(header.from == 1, "not a full export: it starts at position {}, not 1", header.from);
    let summary = super::backup::install_dir(&args.data, |staging| {
        let mut importer = store::Importer::create(staging)?;
        let mut email_keys = EmailKeyCheck::default();
        for (name, value) in &header.secrets {
            let value = hex::decode(value)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| anyhow::anyhow!("the header's secret {name} is not 32 bytes of hex"))?;
            importer.put_secret(name, &value)?;
            if name == commands::EMAIL_KEY_SECRET {
                email_keys.secret = Some(value);
            }
        }
        let progress = bar("importing", header.head, "events");
        for (number, line) in lines.enumerate() {
            let line_number = number + 2;
            let line = line.with_context(|| format!("cannot read line {line_number}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let (event, data) = parse_line(&line).with_context(|| format!("line {line_number}"))?;
            if let Some(data) = &data {
                email_keys.check(data, event.position).with_context(|| format!("line {line_number}"))?;
            }
            anyhow::ensure!(
                event.position <= header.head,
                "line {line_number}: position {} is past the header's head {}",
                event.position,
                header.head
            );
            importer.push(event).with_context(|| format!("line {line_number}"))?;
            progress.set_position(importer.head());
        }
        progress.finish_and_clear();
        anyhow::ensure!(
            importer.head() == header.head,
            "the export is cut short: it ends at position {}, its header says {}",
            importer.head(),
            header.head
        );
        Ok(importer.finish()?.1)
    })?;
    say!(
        "imported {} events in {} streams ({} customers, {} forgotten) into {}; read models rebuilt",
        summary.events,
        summary.streams,
        summary.subjects,
        summary.forgotten,
        args.data.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks the header's `email-key` secret against the log's registrations. A
/// registration appends the customer's `CustomerRegistered` (which holds the email)
/// and the claim stream's `EmailClaimed` (which holds the key of the email under
/// that secret) in one append, so the two are next to each other. A header
/// without the secret, or with another log's, would make the imported shop hash
/// emails to other claim streams: duplicates would no longer be caught and no
/// registered customer could log in. Forgotten registrations hold no email and
/// are not checked.
#[derive(Default)]
struct EmailKeyCheck {
    secret: Option<[u8; 32]>,
    registered: Option<(domain::CustomerId, domain::Email)>,
    claimed: Option<(domain::CustomerId, domain::EmailKey)>,
}

impl EmailKeyCheck {
    fn check(&mut self, event: &domain::Event, position: u64) -> anyhow::Result<()> {
        match event {
            domain::Event::Customer(domain::CustomerEvent::Registered(registered)) => {
                anyhow::ensure!(
                    self.secret.is_some(),
                    "position {position}: a customer's registration, but the header has no secret {}; \
                     export again with --with-secrets and import that file unedited",
                    commands::EMAIL_KEY_SECRET
                );
                self.registered = Some((registered.customer_id, registered.email.clone()));
            }
            domain::Event::EmailClaim(domain::EmailClaimEvent::Claimed(claimed)) => {
                self.claimed = Some((claimed.customer_id, claimed.email_key.clone()));
            }
            _ => return Ok(()),
        }
        let (Some(secret), Some((registered, email)), Some((claimant, key))) =
            (&self.secret, &self.registered, &self.claimed)
        else {
            return Ok(());
        };
        if registered != claimant {
            return Ok(());
        }
        anyhow::ensure!(
            commands::email_key(secret, email) == *key
                || commands::email_keys_before_folding(secret, email).contains(key),
            "position {position}: customer {registered}'s email does not hash to the key of its claim under \
             the header's secret {}: the header's secrets are not this log's; export again with --with-secrets \
             and import that file unedited",
            commands::EMAIL_KEY_SECRET
        );
        self.registered = None;
        self.claimed = None;
        Ok(())
    }
}

/// One event line back into an event to import, with its decoded data (none for
/// a forgotten subject's): its data must decode as its type and version, name the
/// same subject, and not be redacted.
fn parse_line(line: &str) -> anyhow::Result<(store::ImportEvent, Option<domain::Event>)> {
    let line: EventLine = serde_json::from_str(line).map_err(|error| anyhow::anyhow!("not an event: {error}"))?;
    let mut decoded = None;
    let payload = match &line.data {
        None => store::Payload::Forgotten,
        Some(data) => {
            let seed = domain::EventSeed { event_type: &line.event_type, schema_version: line.schema_version };
            let event = serde::de::DeserializeSeed::deserialize(seed, data).map_err(|error| {
                anyhow::anyhow!("the data of {} v{} does not decode: {error}", line.event_type, line.schema_version)
            })?;
            let redacted = data.get("password_hash").and_then(|hash| hash.as_str()) == Some("[redacted]");
            anyhow::ensure!(
                !redacted,
                "position {}: a redacted password hash; import needs an export made with --with-secrets",
                line.position
            );
            anyhow::ensure!(
                event.subject() == line.subject,
                "position {}: the data belongs to subject {:?}, the line says {:?}",
                line.position,
                event.subject(),
                line.subject
            );
            let payload = store::Payload::Plain(store::codec::encode(&event)?);
            decoded = Some(event);
            payload
        }
    };
    let event = store::ImportEvent {
        position: line.position,
        stream: line.stream,
        version: line.version,
        event_id: line.event_id,
        event_type: line.event_type,
        schema_version: line.schema_version,
        recorded_at: line.recorded_at,
        actor: line.actor,
        correlation_id: line.correlation_id,
        causation_id: line.causation_id,
        subject: line.subject,
        payload,
    };
    Ok((event, decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8], len_max: usize) -> Vec<Result<String, String>> {
        BoundedLines { input: text, len_max }.map(|line| line.map_err(|error| error.to_string())).collect()
    }

    #[test]
    fn lines_end_at_a_line_break_and_none_runs_past_its_bound() {
        assert_eq!(
            lines(b"one\ntwo\r\nthree", 8),
            [Ok("one".to_owned()), Ok("two".to_owned()), Ok("three".to_owned())]
        );
        assert_eq!(lines(b"12345678\n", 8), [Ok("12345678".to_owned())], "a line of the bound's length is read");
        let too_long = lines(b"123456789\nnext\n", 8);
        assert_eq!(too_long.first(), Some(&Err("a line longer than 8 bytes".to_owned())));
        assert_eq!(lines(&[0xff, b'\n'], 8), [Err("a line that is not UTF-8".to_owned())]);
        assert!(lines(b"", 8).is_empty());
    }
}
