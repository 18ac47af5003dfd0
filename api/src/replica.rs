//! The feed of a read replica (`shoplog project`, DESIGN §4 and §7): it copies
//! the primary's log from NATS JetStream into a log of its own, record by record
//! as stored, and the replica's read models and query routes are those of
//! `serve`, over that copy.
//!
//! It reads `SHOPLOG_EVENTS` (which the primary's relay fills) with an ordered
//! consumer from the stream's record for its own head (see `start_sequence`),
//! and orders by `Shoplog-Position`, never by the stream's sequence. Each record
//! is appended with [`store::EventLog::append_stored`], which takes only the
//! log's next position chained to its last hash: so the copy verifies as the
//! primary does, another log's records are refused, and a crash loses nothing
//! acknowledged (the replica's checkpoint is its log's head, durable with each
//! append, and its read models keep their own checkpoints as on the primary). A
//! position at or below the head is one copied before: it is skipped once it is
//! found to be the very record copied, and otherwise the stream holds another
//! history and the replica applies nothing of it (`FeedError::Diverged`). A gap (JetStream lost or
//! dropped messages) is filled from the primary's `GET /api/v1/events` asked for
//! the stored records, when the replica was given `--primary URL --token T`;
//! without them the replica stops applying there, serves what it has, and says
//! which positions are missing in `/admin/projections` (entry `replica`) and in
//! the log; it looks again after a backoff, as the relay may send them again.
//! Anything that fails (NATS down, no stream yet, the primary unreachable) is
//! retried the same way, 100 ms doubling to 5 s.
//!
//! It lives in `api` rather than `projections` because filling a gap is an HTTP
//! client's work, and only `api` has one (reqwest).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use commands::relay::shown;
use futures_util::{FutureExt, StreamExt};
use store::EventLog;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Secret;
use crate::routes::RECORDS_MEDIA_TYPE;

/// The stream and subjects the primary's relay publishes to.
const STREAM: &str = commands::relay::STREAM;
const SUBJECTS: &str = commands::relay::SUBJECTS;

/// The header that names a message's log position.
const POSITION: &str = "Shoplog-Position";

/// How long the replica waits for a message before it looks at the stream.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// The most records appended at once: what NATS has delivered by then.
const BATCH_MAX: usize = 512;

/// The most records asked of the primary at once (its page limit).
const FILL_PAGE: u64 = 1000;

/// Where a replica gets its events.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// The NATS server, such as `nats://127.0.0.1:4222`.
    pub nats: String,
    /// The primary that fills gaps, if given.
    pub primary: Option<Primary>,
    /// How long a request to NATS or the primary may take.
    pub timeout: Duration,
    /// The longest wait between two attempts.
    pub retry_max: Duration,
}

impl ReplicaOptions {
    pub fn new(nats: impl Into<String>, primary: Option<Primary>) -> Self {
        ReplicaOptions {
            nats: nats.into(),
            primary,
            timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// The primary's base URL and an admin token for it.
#[derive(Debug, Clone)]
pub struct Primary {
    pub url: String,
    pub token: Secret,
}

/// "position 7", or "positions 7 to 9".
fn positions(from: u64, to: u64) -> String {
    match from == to {
        true => format!("position {from}"),
        false => format!("positions {from} to {to}"),
    }
}

/// Where the feed stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// The last position copied: the replica's log's head.
    pub position: u64,
    /// The newest position NATS or the primary has shown (at least `position`).
    pub newest: u64,
    /// `newest - position`, in events.
    pub lag: u64,
    /// Records filled from the primary since the start.
    pub filled: u64,
    /// Why it is not applying, if it is not.
    pub failure: Option<String>,
    /// Whether it has reached the newest position NATS (or, given one, the
    /// primary) showed since it started: until then its read models answer an
    /// older shop.
    pub caught_up: bool,
    /// Whether `failure` leaves the replica stuck where it is until an
    /// operator acts or the primary sends again (a gap, another history, a
    /// record refused), rather than only out of touch (NATS or the stream out
    /// of reach, which the feed rides out by itself).
    pub stuck: bool,
}

impl FeedStatus {
    /// Why the replica should get no reads (`/readyz` answers 503 with it):
    /// it has not caught up since it started, or it is stuck. A replica that
    /// caught up and then lost NATS stays ready: its answers carry their
    /// position, and the status says it is out of touch.
    pub fn unready(&self) -> Option<String> {
        if !self.caught_up {
            let at = format!("the replica is catching up: at position {} of {}", self.position, self.newest);
            return Some(match &self.failure {
                Some(failure) => format!("{at} ({failure})"),
                None => at,
            });
        }
        self.failure.clone().filter(|_| self.stuck)
    }
}

/// What stopped an attempt of the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream stream {STREAM}: {reason}")]
    Stream { reason: String },
    #[error(
        "{} missing from NATS (JetStream lost or dropped them): the replica stops applying at {from}; start it \
         with --primary URL --token T to fill them from the primary",
        positions(*from, *to) + if from == to { " is" } else { " are" }
    )]
    Gap { from: u64, to: u64 },
    #[error("filling {} from the primary failed: {reason}", positions(*from, *to))]
    Primary { from: u64, to: u64, reason: String },
    #[error("message at stream sequence {sequence}: {reason}")]
    Message { sequence: u64, reason: String },
    #[error("the replica's log refused a record: {0}")]
    Log(#[from] store::StoreError),
    #[error(
        "NATS holds another history than this replica's log at position {position} (another shop's stream, or \
         the primary's log restored to an earlier point and relayed again): the replica applies nothing from it; \
         start it on an empty data dir to copy that history"
    )]
    Diverged { position: u64 },
    /// Not a failure: the client connected again, so the attempt starts over.
    #[error("connected to NATS again")]
    Reconnected,
}

/// The feed, running on the runtime it was started on.
#[derive(Debug)]
pub struct Feed {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    log: EventLog,
    newest: AtomicU64,
    filled: AtomicU64,
    /// Why the last attempt failed, and whether that leaves the replica stuck
    /// (see [`FeedStatus::stuck`]), until the next one follows the stream.
    failure: Mutex<Option<(String, bool)>>,
    /// Set once the head reached `newest` and `primary_head` (see [`FeedStatus::caught_up`]).
    caught_up: AtomicBool,
    /// The primary's head, as it last answered (0 without a primary).
    primary_head: AtomicU64,
    /// A gap it cannot fill: its first position and what to say, until the
    /// head passes it (each attempt meets it again, after following the stream).
    gap: Mutex<Option<(u64, String)>>,
    /// Whether the client holds a connection to NATS (it reconnects by itself,
    /// and the consumer waits meanwhile without an error).
    connected: Arc<AtomicBool>,
    /// Counts the client's connections: each one ends the attempt under way,
    /// so the stream is read again from the head at once (an ordered consumer
    /// would notice a restarted server only after its heartbeats, seconds later).
    connections: Arc<watch::Sender<u64>>,
    http: reqwest::Client,
}

impl Shared {
    fn set_failure(&self, failure: Option<(String, bool)>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }

    /// Past whatever stopped the last attempt, and caught up once the head has
    /// reached the newest position NATS and the primary showed.
    fn progressed(&self) {
        self.set_failure(None);
        let newest = self.newest.load(Ordering::Acquire).max(self.primary_head.load(Ordering::Acquire));
        if self.log.head() >= newest {
            self.caught_up.store(true, Ordering::Release);
        }
    }
}

/// How long a stop waits for the feed.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Feed {
    /// Start copying into `log` (on the current tokio runtime); an error only if
    /// the HTTP client for the primary cannot be made.
    pub fn start(log: EventLog, options: ReplicaOptions) -> Result<Feed, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(options.timeout).build()?;
        let shared = Arc::new(Shared {
            newest: AtomicU64::new(log.head()),
            log,
            filled: AtomicU64::new(0),
            failure: Mutex::new(Some(("not connected to NATS yet".to_owned(), false))),
            caught_up: AtomicBool::new(false),
            primary_head: AtomicU64::new(0),
            gap: Mutex::new(None),
            connected: Arc::new(AtomicBool::new(false)),
            connections: Arc::new(watch::Sender::new(0)),
            http,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&shared), options, stopped));
        Ok(Feed { shared, stop, task })
    }

    pub fn status(&self) -> FeedStatus {
        let position = self.shared.log.head();
        let newest = self.shared.newest.load(Ordering::Acquire).max(self.shared.primary_head.load(Ordering::Acquire));
        let newest = newest.max(position);
        let gap = self.shared.gap.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let gap = gap.filter(|(from, _)| position < *from).map(|(_, says)| says);
        let mut failure = self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if failure.is_none() && !self.shared.connected.load(Ordering::Acquire) {
            failure = Some(("the connection to NATS is lost; the replica reconnects by itself".to_owned(), false));
        }
        let (failure, stuck) = match (gap, failure) {
            (Some(gap), _) => (Some(gap), true),
            (None, Some((failure, stuck))) => (Some(failure), stuck),
            (None, None) => (None, false),
        };
        FeedStatus {
            position,
            newest,
            lag: newest - position,
            filled: self.shared.filled.load(Ordering::Relaxed),
            failure,
            caught_up: self.shared.caught_up.load(Ordering::Acquire),
            stuck,
        }
    }

    /// Stop, waiting at most a few seconds (an append under way is durable or not
    /// there at all; the next start goes on from the head).
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn run(shared: Arc<Shared>, options: ReplicaOptions, mut stopped: watch::Receiver<bool>) {
    let first_wait = Duration::from_millis(100);
    let mut wait = first_wait;
    let mut client = None;
    loop {
        let before = shared.log.head();
        let error = tokio::select! {
            followed = follow(&shared, &options, &mut client) => match followed {
                Err(error) => error,
                Ok(never) => match never {},
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        if matches!(error, FeedError::Reconnected) {
            tracing::debug!("the replica reads the stream again after a reconnection");
            continue;
        }
        // Out of reach of NATS, or stopped by a message in the stream that is
        // no log's: the primary, if given, is the feed meanwhile; what stops
        // that copy (another history, a record refused) is what to say.
        let (error, at_primary_head) = match &error {
            FeedError::Connect { .. } | FeedError::Stream { .. } | FeedError::Message { .. } => {
                match from_primary(&shared, &options).await {
                    Err(copying) => {
                        tracing::warn!(error = %copying, "the replica could not copy from the primary either");
                        let error = match copying {
                            FeedError::Connect { .. } | FeedError::Stream { .. } => error,
                            copying => copying,
                        };
                        (error, false)
                    }
                    Ok(at_head) => (error, at_head),
                }
            }
            _ => (error, false),
        };
        if shared.log.head() > before {
            wait = first_wait;
        }
        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "the replica's feed stopped; it will try again");
        match error {
            // Said until the head passes the gap: the attempts in between read
            // the stream again and meet it again.
            FeedError::Gap { from, .. } | FeedError::Primary { from, .. } => {
                *shared.gap.lock().unwrap_or_else(PoisonError::into_inner) = Some((from, error.to_string()));
            }
            // Said until an attempt gets past it (see `follow`). Out of reach
            // of NATS or the stream, the replica is only out of touch; so is
            // one whose primary answered just now and copied it to its head
            // past a message that stopped the stream.
            error => {
                let kept_up = matches!(error, FeedError::Message { .. }) && at_primary_head;
                let stuck = !kept_up && !matches!(error, FeedError::Connect { .. } | FeedError::Stream { .. });
                shared.set_failure(Some((error.to_string(), stuck)));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        wait = (wait * 2).min(options.retry_max);
    }
}

/// One attempt: connect (once: the client reconnects by itself), find where
/// the head's next position is in the stream, and copy until something fails.
async fn follow(
    shared: &Shared,
    options: &ReplicaOptions,
    client: &mut Option<async_nats::Client>,
) -> Result<Infallible, FeedError> {
    // Connections made before this attempt read the stream are not news.
    let mut connections = shared.connections.subscribe();
    let client = match client {
        Some(client) => client.clone(),
        None => {
            let (connection, connections) = (Arc::clone(&shared.connected), Arc::clone(&shared.connections));
            let connected = async_nats::ConnectOptions::new()
                .name("shoplog replica")
                .event_callback(move |event| {
                    match event {
                        async_nats::Event::Connected => {
                            connection.store(true, Ordering::Release);
                            connections.send_modify(|count| *count += 1);
                        }
                        async_nats::Event::Disconnected => connection.store(false, Ordering::Release),
                        _ => {}
                    }
                    std::future::ready(())
                })
                .connection_timeout(options.timeout)
                .request_timeout(Some(options.timeout))
                .connect(options.nats.as_str())
                .await
                .map_err(|error| FeedError::Connect { url: shown(&options.nats), reason: error.to_string() })?;
            tracing::info!("the replica is connected to NATS");
            shared.connected.store(true, Ordering::Release);
            client.insert(connected).clone()
        }
    };
    let jetstream = jetstream::context::ContextBuilder::new().timeout(options.timeout).build(client);
    let stream_error = |error: &dyn std::fmt::Display| FeedError::Stream { reason: error.to_string() };
    let mut stream = jetstream.get_stream(STREAM).await.map_err(|error| FeedError::Stream {
        reason: format!("{error} (the primary's relay makes it: is the primary running with --nats?)"),
    })?;
    let created = stream.cached_info().created;
    // Until it has caught up, the primary's head counts too: NATS may lack what
    // the primary has (its relay down or behind), and the replica is not ready
    // before it has that as well (which `still_following` copies).
    if let Some(primary) = options.primary.as_ref().filter(|_| !shared.caught_up.load(Ordering::Acquire)) {
        match primary_head(shared, primary).await {
            Ok(there) => {
                shared.primary_head.fetch_max(there, Ordering::AcqRel);
            }
            Err(reason) => tracing::debug!(%reason, "the replica could not ask the primary for its head"),
        }
    }
    let start = start_sequence(shared, &mut stream).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: SUBJECTS.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await
        .map_err(|error| stream_error(&error))?;
    let mut messages = consumer.messages().await.map_err(|error| stream_error(&error))?;
    tracing::debug!(from_sequence = start, head = shared.log.head(), "the replica follows the stream");
    loop {
        // One message, then whatever else has come, up to a batch; with none
        // for a while, a look at the stream.
        let first = tokio::select! {
            first = messages.next() => first,
            _ = connections.changed() => return Err(FeedError::Reconnected),
            () = tokio::time::sleep(IDLE_CHECK) => {
                still_following(shared, options, &mut stream, created).await?;
                continue;
            }
        };
        let mut ready = vec![first];
        while ready.len() < BATCH_MAX {
            match messages.next().now_or_never() {
                Some(next) => ready.push(next),
                None => break,
            }
        }
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(ready.len());
        for next in ready {
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(stream_error(&error)),
                None => return Err(stream_error(&"the consumer's messages ended")),
            };
            let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
            let position = position_of(message.headers.as_ref(), sequence)?;
            let head = shared.log.head();
            let next_position = head + 1 + batch.len() as u64;
            if position < next_position {
                // Copied before (the stream read again from the head's own
                // record, or a repeat): it must be the very record copied.
                let copied = match position.checked_sub(head + 1) {
                    Some(in_batch) => batch.get(in_batch as usize).cloned(),
                    None => shared.log.read_stored(position, 1)?.pop(),
                };
                if copied.as_deref() != Some(&message.payload[..]) {
                    return Err(FeedError::Diverged { position });
                }
                continue;
            }
            shared.newest.fetch_max(position, Ordering::AcqRel);
            if position > next_position {
                append(shared, std::mem::take(&mut batch)).await?;
                fill(shared, options, next_position, position - 1).await?;
            }
            batch.push(message.payload.to_vec());
        }
        append(shared, batch).await?;
        shared.progressed();
    }
}

/// With nothing delivered for a while: the stream the attempt reads must still
/// be the one it began with (deleted and made again, its sequences start over,
/// and the consumer would wait for the old ones), and it must hold no record
/// past the head that the consumer has not delivered. Else the attempt ends and
/// the next one reads the stream again. Given the primary, the replica also
/// asks it for its head: what NATS has not got (the primary's relay is down or
/// behind) it copies from the primary, so a replica with `--primary` keeps up
/// whatever the relay does, and its lag counts from the primary's head.
async fn still_following(
    shared: &Shared,
    options: &ReplicaOptions,
    stream: &mut jetstream::stream::Stream,
    created: async_nats::datetime::DateTime,
) -> Result<(), FeedError> {
    let info = stream.info().await.map_err(|error| FeedError::Stream { reason: error.to_string() })?;
    if info.created != created {
        return Err(FeedError::Stream { reason: "it was deleted and made again".to_owned() });
    }
    if let Ok(newest) = stream.get_last_raw_message_by_subject(SUBJECTS).await {
        let position = position_of(Some(&newest.headers), newest.sequence)?;
        if position > shared.log.head() {
            shared.newest.fetch_max(position, Ordering::AcqRel);
            return Err(FeedError::Stream {
                reason: format!("it holds position {position}, which the consumer has not delivered"),
            });
        }
    }
    from_primary(shared, options).await.map(|_| ())
}

/// Given the primary: ask it for its head, and copy from it what the replica
/// lacks. Called when NATS has delivered nothing for a while, and when an
/// attempt failed on NATS's side (NATS down, the stream gone), so that a
/// replica with `--primary` keeps up whatever NATS and the relay do. Whether
/// the primary answered and the replica is at the head it named.
async fn from_primary(shared: &Shared, options: &ReplicaOptions) -> Result<bool, FeedError> {
    let Some(primary) = &options.primary else { return Ok(false) };
    // A primary that does not answer here is no failure: NATS is the feed.
    let head = shared.log.head();
    let (there, at_head) = match primary_head_and_record(shared, primary, head).await {
        Ok(answer) => answer,
        Err(reason) => {
            tracing::debug!(%reason, "the replica could not ask the primary for its head");
            return Ok(false);
        }
    };
    shared.newest.fetch_max(there, Ordering::AcqRel);
    shared.primary_head.fetch_max(there, Ordering::AcqRel);
    if head > 0 && there >= head {
        // The same history up to the head (a copy past it must chain to it anyway).
        if at_head.as_deref() != shared.log.read_stored(head, 1)?.first().map(Vec::as_slice) {
            return Err(FeedError::Diverged { position: head });
        }
    }
    if there > head {
        tracing::info!(head, primary_head = there, "NATS holds nothing past the head the primary has: copying from it");
        fill(shared, options, head + 1, there).await?;
    }
    let at_head = there >= head;
    if at_head {
        // At the primary's head: caught up, whatever NATS can say (it may be down).
        shared.progressed();
    }
    Ok(at_head)
}

/// The primary's head (`X-Head-Position` of its `GET /api/v1/events`).
async fn primary_head(shared: &Shared, primary: &Primary) -> Result<u64, String> {
    primary_head_and_record(shared, primary, 1).await.map(|(head, _)| head)
}

/// The primary's head, and its record at `position` as stored (none past its head).
async fn primary_head_and_record(
    shared: &Shared,
    primary: &Primary,
    position: u64,
) -> Result<(u64, Option<Vec<u8>>), String> {
    let url = format!("{}/api/v1/events?from={}&limit=1", primary.url.trim_end_matches('/'), position.max(1));
    let response = shared
        .http
        .get(url)
        .bearer_auth(primary.token.expose())
        .header(reqwest::header::ACCEPT, RECORDS_MEDIA_TYPE)
        .send()
        .await
        .map_err(|error| with_causes(&error))?;
    if !response.status().is_success() {
        return Err(format!("{} answered {}", shown(&primary.url), response.status()));
    }
    let head = response
        .headers()
        .get("x-head-position")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("{} named no head", shown(&primary.url)))?;
    let body = response.bytes().await.map_err(|error| with_causes(&error))?;
    let record = frames(&body)?.into_iter().next();
    Ok((head, record))
}

/// The log position a message's `Shoplog-Position` header names.
fn position_of(headers: Option<&async_nats::HeaderMap>, sequence: u64) -> Result<u64, FeedError> {
    headers
        .and_then(|headers| headers.get(POSITION))
        .and_then(|value| value.as_str().parse::<u64>().ok())
        .filter(|position| *position > 0)
        .ok_or_else(|| FeedError::Message {
            sequence,
            reason: format!("it has no {POSITION} header: {STREAM} holds messages that are no log's"),
        })
}

/// The stream sequence to read from: that of the replica's head's own record
/// (so the first message read is compared with the record copied, and a
/// stream that holds another history is found at once), else of the first
/// record after it. The relay's stream holds positions in sequence order, with
/// holes where messages were lost or deleted and others' messages between: the
/// sequence is estimated from the newest record back, then, if that missed,
/// found by a binary search of `MSG.GET` "next at or after" (a few dozen
/// requests for millions of messages, not a read of the stream).
async fn start_sequence(shared: &Shared, stream: &mut jetstream::stream::Stream) -> Result<u64, FeedError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream_error = |error: &dyn std::fmt::Display| FeedError::Stream { reason: error.to_string() };
    let info = stream.info().await.map_err(|error| stream_error(&error))?;
    let (first, last, messages) = (info.state.first_sequence.max(1), info.state.last_sequence, info.state.messages);
    let newest = match stream.get_last_raw_message_by_subject(SUBJECTS).await {
        Ok(newest) if messages > 0 => newest,
        // No record to compare or copy yet (a new or purged stream): what comes next.
        Err(error) if error.kind() != LastRawMessageErrorKind::NoMessageFound => return Err(stream_error(&error)),
        _ => {
            // A stream that took messages and holds none (purged) says nothing
            // of where the log is: a replica that has copied nothing is not
            // caught up until a record comes (a gap before it then shows) or
            // its primary says so.
            if messages == 0 && last > 0 && shared.log.head() == 0 {
                let waiting = format!(
                    "{STREAM} took {last} messages and holds none (purged): the replica waits for the next record \
                     to find where the log is (given --primary URL --token T, it copies from the primary)"
                );
                shared.set_failure(Some((waiting, false)));
            } else {
                shared.progressed();
            }
            return Ok(last + 1);
        }
    };
    let newest_position = position_of(Some(&newest.headers), newest.sequence)?;
    let head = shared.log.head();
    // The newest position NATS shows, from the stream's own newest record (a
    // stream that held another history earlier does not leave its length).
    shared.newest.store(newest_position.max(head), Ordering::Release);
    if newest_position <= head {
        // Nothing new: the newest record must be the one copied there.
        let copied = shared.log.read_stored(newest_position, 1)?.pop();
        if copied.as_deref() != Some(&newest.payload[..]) {
            return Err(FeedError::Diverged { position: newest_position });
        }
        // Up to date, and the same history.
        shared.progressed();
        return Ok(newest.sequence + 1);
    }
    let target = head.max(1);
    // The position of the first record at or after `sequence`.
    let stream = &*stream;
    let at_or_after = |sequence: u64| async move {
        let message = stream
            .raw_message_builder()
            .sequence(sequence)
            .next_by_subject(SUBJECTS.to_owned())
            .send()
            .await
            .map_err(|error| stream_error(&error))?;
        Ok::<_, FeedError>((message.sequence, position_of(Some(&message.headers), message.sequence)?))
    };
    let guess = newest.sequence.saturating_sub(newest_position - target).clamp(first, newest.sequence);
    let (found, position) = at_or_after(guess).await?;
    if position == target {
        return Ok(found);
    }
    // The first sequence whose next record is at or past the target.
    let (mut low, mut high) = (first, newest.sequence);
    while low < high {
        let middle = low + (high - low) / 2;
        if at_or_after(middle).await?.1 >= target {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

async fn append(shared: &Shared, batch: Vec<Vec<u8>>) -> Result<(), FeedError> {
    if !batch.is_empty() {
        shared.log.append_stored(batch).await?;
    }
    Ok(())
}

/// Copy positions `from` to `to` from the primary, or say they are missing.
async fn fill(shared: &Shared, options: &ReplicaOptions, from: u64, to: u64) -> Result<(), FeedError> {
    let Some(primary) = &options.primary else {
        return Err(FeedError::Gap { from, to });
    };
    tracing::info!(from, to, "the replica fills a gap from the primary");
    let url = format!("{}/api/v1/events", primary.url.trim_end_matches('/'));
    let mut next = from;
    // What is left of the gap when a page fails.
    let failed = |next: u64, reason: String| FeedError::Primary { from: next, to, reason };
    while next <= to {
        let limit = (to - next + 1).min(FILL_PAGE);
        let response = shared
            .http
            .get(format!("{url}?from={next}&limit={limit}"))
            .bearer_auth(primary.token.expose())
            .header(reqwest::header::ACCEPT, RECORDS_MEDIA_TYPE)
            .send()
            .await
            .map_err(|error| failed(next, format!("cannot reach {}: {}", shown(&primary.url), with_causes(&error))))?;
        let status = response.status();
        if !status.is_success() {
            let detail = crate::cli::problem_detail(&response.text().await.unwrap_or_default());
            return Err(failed(next, format!("{} answered {status}: {detail}", shown(&primary.url))));
        }
        let stored =
            response.headers().get(reqwest::header::CONTENT_TYPE).is_some_and(|value| value == RECORDS_MEDIA_TYPE);
        if !stored {
            return Err(failed(
                next,
                format!("{} did not answer with records as stored (is it a shoplog primary?)", shown(&primary.url)),
            ));
        }
        let body = response.bytes().await.map_err(|error| failed(next, error.to_string()))?;
        let records = frames(&body).map_err(|reason| failed(next, reason))?;
        if records.is_empty() {
            return Err(failed(next, format!("its log holds no position {next}")));
        }
        let count = records.len() as u64;
        shared.log.append_stored(records).await?;
        shared.filled.fetch_add(count, Ordering::Relaxed);
        next += count;
    }
    Ok(())
}

/// An error and its causes on one line (reqwest's own says "error sending
/// request" and leaves out why: connection refused, a timeout).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = inner.source();
    }
    line
}

/// The records of a body of [`RECORDS_MEDIA_TYPE`]: each a 4-byte big-endian
/// length and that many bytes.
fn frames(mut body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut records = Vec::new();
    while !body.is_empty() {
        let Some((len, rest)) = body.split_first_chunk::<4>() else {
            return Err(format!("a record's length is cut short ({} bytes left)", body.len()));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("a record of {len} bytes is cut short at {}", rest.len()));
        }
        let (record, rest) = rest.split_at(len);
        records.push(record.to_vec());
        body = rest;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_names_one_position_or_a_range() {
        let one = FeedError::Gap { from: 10, to: 10 }.to_string();
        assert!(one.starts_with("position 10 is missing from NATS"), "{one}");
        let range = FeedError::Gap { from: 8, to: 10 }.to_string();
        assert!(range.starts_with("positions 8 to 10 are missing from NATS"), "{range}");
        let fill = FeedError::Primary { from: 4, to: 4, reason: "refused".to_owned() }.to_string();
        assert_eq!(fill, "filling position 4 from the primary failed: refused");
    }

    #[test]
    fn records_as_stored_are_read_back_and_a_cut_body_is_an_error() {
        let mut body = Vec::new();
        for record in [&b"first"[..], b"", b"third record"] {
            body.extend_from_slice(&(record.len() as u32).to_be_bytes());
            body.extend_from_slice(record);
        }
        assert_eq!(frames(&body), Ok(vec![b"first".to_vec(), Vec::new(), b"third record".to_vec()]));
        assert_eq!(frames(&[]), Ok(Vec::new()));
        assert!(frames(&body[..body.len() - 1]).is_err());
        assert!(frames(&body[..2]).is_err());
    }
}
