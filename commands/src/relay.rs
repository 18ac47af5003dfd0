//! The relay: every event of the log, published to NATS JetStream in position
//! order (DESIGN §4), for read replicas and other consumers on other machines.
//!
//! It follows the log like a read model does (a [`store::Subscription`] from its
//! checkpoint on), and publishes each record as stored: the payload is the
//! record's bytes (a sealed payload travels sealed, and the record's hash in the
//! chain travels with it), with the headers `Nats-Msg-Id` (the event id, which
//! JetStream deduplicates on within its window), `Shoplog-Position`,
//! `Shoplog-Event-Type` and `Shoplog-Stream`, on the subject
//! `shoplog.events.<category>.<id>` of the stream `SHOPLOG_EVENTS` (file storage,
//! made if missing). At most [`RelayOptions::acks_in_flight`] publishes wait for
//! their acks; the checkpoint (tree `relay`) moves only past acknowledged ones.
//!
//! NATS down or refusing: commands go on being accepted; the relay says why in
//! [`Relay::status`] (which `/admin/projections` and `/metrics` show, with its
//! lag), waits (100 ms, doubling up to [`RelayOptions::retry_max`]) and goes on
//! after the last record the stream holds, on the same connection. Each publish
//! names what it must follow: the message id of the record before it
//! (`Nats-Expected-Last-Msg-Id`), or, for the first of an attempt, the stream
//! sequence it read (`Nats-Expected-Last-Sequence`). So JetStream stores a
//! record only right after the one before it, whatever reaches it late (a
//! publish lost with a dropped connection, one an earlier attempt left queued):
//! the stream holds the log's records in position order with no hole.
//!
//! Where it starts, at each attempt: after the last message the stream holds,
//! when that is this log's record at its position, byte for byte (the bytes hold
//! the record's hash, which chains every record before it); after its own
//! checkpoint when the stream holds nothing (new, or purged by the operator). So a
//! checkpoint that a kill left behind (it is made durable with the log's next
//! checkpoint) does not send again what the stream holds, beyond JetStream's
//! deduplication window; a data directory restored from a backup (which holds no
//! relay checkpoint) goes on where the stream ends; and messages JetStream
//! acknowledged and then lost (a power cut before its own fsync, DESIGN §4) are
//! sent again, so that replicas find no gap. A stream whose last message is
//! another log's (or is past this log's head: a data directory restored to an
//! earlier point) is refused: mixing two histories would corrupt every replica.
//! The relay then publishes nothing and says so, until the operator purges the
//! stream or points `--nats` elsewhere. A record JetStream calls a duplicate of
//! a message it no longer holds (purged or deleted within its deduplication
//! window) is sent again until the window has passed, never counted as published.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, publish::PublishAck, stream::LastRawMessageErrorKind, stream::StorageType};
use store::{EventLog, StoreError, StoredEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The JetStream stream the relay publishes to (DESIGN §4).
pub const STREAM: &str = "SHOPLOG_EVENTS";

/// The subjects of [`STREAM`]: `shoplog.events.<category>.<id>`.
pub const SUBJECTS: &str = "shoplog.events.>";

/// The tree and key of the relay's checkpoint: the last position JetStream acknowledged.
const CHECKPOINT_TREE: &str = "relay";
const CHECKPOINT_KEY: &[u8] = b"nats.checkpoint";

/// How the relay reaches NATS and how much it keeps in flight.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The NATS server, such as `nats://127.0.0.1:4222`.
    pub url: String,
    /// Publishes waiting for their acks at most.
    pub acks_in_flight: usize,
    /// JetStream's deduplication window, when the relay makes the stream
    /// (DESIGN §4: at least 2 minutes).
    pub duplicate_window: Duration,
    /// How long a connection attempt, a request to JetStream or an ack may take.
    pub timeout: Duration,
    /// The longest wait between two attempts.
    pub retry_max: Duration,
}

impl RelayOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RelayOptions {
            url: url.into(),
            acks_in_flight: 256,
            duplicate_window: Duration::from_secs(120),
            timeout: Duration::from_secs(5),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Whether `url` can name a NATS server the relay can reach: `nats://host:port`,
/// `host:port` (port 4222 when left out) or `tls://host:port`, with
/// `user:password@` before the host if the server wants them; not a websocket's.
pub fn check_url(url: &str) -> Result<(), String> {
    let address = url.parse::<async_nats::ServerAddr>().map_err(|error| error.to_string())?;
    match address.into_inner().scheme() {
        "nats" | "tls" => Ok(()),
        scheme => Err(format!("{scheme}:// is not supported: use nats:// or tls://")),
    }
}

/// `url` without a `user:password@` part, for logs and errors.
pub fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url.rsplit_once('@').map_or_else(|| url.to_owned(), |(_, host)| host.to_owned()),
    }
}

/// Where the relay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    /// The last position JetStream acknowledged (or held at the start).
    pub checkpoint: u64,
    pub head: u64,
    /// `head - checkpoint`, in events.
    pub lag: u64,
    /// Events published and acknowledged since the start (JetStream's
    /// duplicates included).
    pub published: u64,
    /// Why it is waiting to try again, if it is.
    pub failure: Option<String>,
}

/// What stopped one attempt of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("JetStream stream {STREAM}: {reason}")]
    Stream { reason: String },
    #[error(
        "JetStream stream {STREAM} holds another log's events ({reason}) at stream sequence {sequence}: if \
         another publisher sent that message to the relay's subjects, delete it (nats stream rmm {STREAM} \
         {sequence}); if the stream is another shop's, purge it or point --nats at another server. The relay \
         goes on after this log's last record there"
    )]
    Foreign { reason: String, sequence: u64 },
    #[error("publishing position {position} to JetStream: {reason}")]
    Publish { position: u64, reason: String },
    #[error("reading the log: {0}")]
    Log(#[from] StoreError),
}

impl From<sled::Error> for RelayError {
    fn from(error: sled::Error) -> Self {
        RelayError::Log(StoreError::from(error))
    }
}

#[derive(Debug)]
struct Shared {
    log: EventLog,
    checkpoints: sled::Tree,
    checkpoint: AtomicU64,
    published: AtomicU64,
    /// Why the last attempt ended, until JetStream acknowledges a publish again
    /// (or there is nothing to publish).
    failure: Mutex<Option<String>>,
    /// Whether `failure` is set, read on every ack without the lock.
    failing: AtomicBool,
    /// The connection, once made: the status asks it whether it is up.
    client: Mutex<Option<async_nats::Client>>,
    /// Counts the connection's (re)connections: after one, the relay reads the
    /// stream again (it may have lost its tail, or be gone, while NATS was down).
    connections: watch::Sender<u64>,
    /// The server, as logs and errors show it.
    shown_url: String,
}

impl Shared {
    fn set_failure(&self, failure: Option<String>) {
        self.failing.store(failure.is_some(), Ordering::Release);
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }

    /// Why the relay is not publishing, if it is not: the last attempt's
    /// failure, or a connection that is not up (never made yet, or lost while
    /// there was nothing to publish: a quiet shop's outage shows at once).
    fn failure(&self) -> Option<String> {
        if let Some(failure) = self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Some(failure);
        }
        let url = &self.shown_url;
        match &*self.client.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Some(format!("not connected to NATS at {url} yet")),
            Some(client) => match client.connection_state() {
                async_nats::connection::State::Connected => None,
                _ => Some(format!("the connection to NATS at {url} is lost; reconnecting")),
            },
        }
    }

    /// Move the checkpoint to `position` in memory and in the tree (made durable
    /// with the log's next checkpoint, or at its close).
    fn save(&self, position: u64) -> Result<(), RelayError> {
        self.checkpoint.store(position, Ordering::Release);
        self.checkpoints.insert(CHECKPOINT_KEY, &position.to_be_bytes())?;
        Ok(())
    }
}

/// The running relay; [`Relay::stop`] ends it.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Start relaying on the current tokio runtime, from the stored checkpoint.
    /// It connects in the background: a NATS server that is down delays nothing.
    pub fn start(log: EventLog, options: RelayOptions) -> Result<Relay, RelayError> {
        let checkpoints = log.open_tree(CHECKPOINT_TREE)?;
        let checkpoint = match checkpoints.get(CHECKPOINT_KEY)? {
            Some(bytes) => <[u8; 8]>::try_from(&bytes[..]).map(u64::from_be_bytes).unwrap_or_else(|_| {
                // Only a hint: the relay goes on after the stream's last message.
                tracing::warn!("the relay's checkpoint is damaged; it starts from where the stream ends");
                0
            }),
            None => 0,
        };
        let shared = Arc::new(Shared {
            log,
            checkpoints,
            checkpoint: AtomicU64::new(checkpoint),
            published: AtomicU64::new(0),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
            client: Mutex::new(None),
            connections: watch::Sender::new(0),
            shown_url: shown(&options.url),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(Arc::clone(&shared), options, stopped));
        Ok(Relay { shared, stop, task })
    }

    pub fn status(&self) -> RelayStatus {
        let checkpoint = self.shared.checkpoint.load(Ordering::Acquire);
        let head = self.shared.log.head();
        RelayStatus {
            checkpoint,
            head,
            lag: head.saturating_sub(checkpoint),
            published: self.shared.published.load(Ordering::Relaxed),
            failure: self.shared.failure(),
        }
    }

    /// Stop: the acks in flight get a moment to arrive, the checkpoint is saved,
    /// and the relay lets go of the log.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            tracing::warn!("the relay did not stop in time");
            task.abort();
        }
    }
}

/// How long the relay waits, with nothing to publish, before it reads the stream
/// again: a JetStream that recovers after a restart may lose its tail after the
/// relay read it, and nothing else would show it on a quiet shop.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// How often the connection pings a server that sends nothing.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// How long a stop waits for the relay.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long a stop waits for the acks in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

async fn run(shared: Arc<Shared>, options: RelayOptions, mut stopped: watch::Receiver<bool>) {
    let first_wait = Duration::from_millis(100);
    let mut wait = first_wait;
    let mut client = None;
    loop {
        let before = shared.checkpoint.load(Ordering::Acquire);
        let error = match relay(&shared, &options, &mut stopped, &mut client).await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Reconnected) => continue,
            Err(error) => error,
        };
        if shared.checkpoint.load(Ordering::Acquire) > before {
            wait = first_wait;
        }
        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "the relay to NATS stopped; it will try again");
        shared.set_failure(Some(error.to_string()));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        wait = (wait * 2).min(options.retry_max);
    }
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, jetstream::context::PublishError>> + Send>>;

/// How an attempt ended without failing.
enum Ended {
    Stopped,
    /// The connection was made again, or the relay was idle for
    /// [`IDLE_CHECK`]: read the stream again.
    Reconnected,
}

/// A publish waiting for its ack.
struct InFlight {
    position: u64,
    ack: AckFuture,
}

/// What a publish names as the stream's last message, so that JetStream
/// stores it only right after the record before it (see [`Follows::headers`]).
struct Follows {
    /// The stream's last sequence it expects: where the attempt read the
    /// stream to end (its last record, or a purged or new stream's last
    /// sequence), one more for each publish sent since.
    sequence: u64,
    /// The message id (event id) of the record before it, once the attempt
    /// has sent one (not for its first publish, nor the one after a duplicate).
    message_id: Option<String>,
}

impl Follows {
    /// The first publish of an attempt (or after a duplicate): after the
    /// stream's last sequence, as read.
    fn sequence(sequence: u64) -> Self {
        Follows { sequence, message_id: None }
    }

    /// The headers that say it: the sequence always, and the message id of the
    /// record before where there is one. JetStream stores a publish only if
    /// both hold.
    ///
    /// Why both. The sequence is counted from where the attempt read the
    /// stream, one more per publish, and a publish refused or deduplicated
    /// stores nothing. Any message stored meanwhile that the count did not
    /// foresee (a publish an earlier attempt left queued on the connection, sent
    /// when it came back) shifts the count, and a later publish could then name
    /// the stream's last sequence by chance: the message id names the record
    /// before, whatever the count. The message id alone is not enough either:
    /// JetStream compares it with the id it stored last, which a delete or a
    /// purge does not forget, so after a duplicate of a deleted or purged
    /// message the publish naming it would be stored after a hole; the sequence
    /// is refused there, as nothing was stored. (JetStream keeps the last id in
    /// memory only, so the first publish of an attempt names the sequence alone.)
    fn headers(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        let sequence = (EXPECTED_LAST_SEQUENCE, self.sequence.to_string());
        let message_id = self.message_id.iter().map(|id| (EXPECTED_LAST_MESSAGE_ID, id.clone()));
        std::iter::once(sequence).chain(message_id)
    }

    /// The publish after `event_id`'s.
    fn after(&mut self, event_id: String) {
        self.sequence += 1;
        self.message_id = Some(event_id);
    }
}

/// A record to publish, copied out of the log.
struct Outgoing {
    position: u64,
    event_id: String,
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
}

/// Connect (once: the client reconnects by itself, and what it still held of an
/// attempt that failed goes out before anything of the next), make the stream
/// if missing, and set the checkpoint where the stream ends, if it holds this
/// log's records. Returns the stream's last sequence, which the next publish
/// expects (see `EXPECTED_LAST_SEQUENCE`).
async fn connect(
    shared: &Shared,
    options: &RelayOptions,
    client: &mut Option<async_nats::Client>,
) -> Result<(jetstream::Context, u64), RelayError> {
    let first = client.is_none();
    let client = match client {
        Some(client) => client.clone(),
        None => {
            let connections = shared.connections.clone();
            let connected = async_nats::ConnectOptions::new()
                .name("shoplog relay")
                // A server that hangs (not one that goes away: that is seen at
                // once) shows as a lost connection within two pings, not minutes.
                .ping_interval(PING_INTERVAL)
                .event_callback(move |event| {
                    if matches!(event, async_nats::Event::Connected) {
                        connections.send_modify(|count| *count += 1);
                    }
                    std::future::ready(())
                })
                .connection_timeout(options.timeout)
                .request_timeout(Some(options.timeout))
                .connect(options.url.as_str())
                .await
                .map_err(|error| RelayError::Connect { url: shown(&options.url), reason: error.to_string() })?;
            tracing::info!(url = %shared.shown_url, "the relay is connected to NATS");
            *shared.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(connected.clone());
            client.insert(connected).clone()
        }
    };
    let jetstream = jetstream::context::ContextBuilder::new()
        .timeout(options.timeout)
        .max_ack_inflight(options.acks_in_flight)
        .backpressure_on_inflight(true)
        .build(client);
    let stream_error = |error: &dyn std::fmt::Display| RelayError::Stream { reason: error.to_string() };
    let mut stream = jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECTS.to_owned()],
            storage: StorageType::File,
            duplicate_window: options.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|error| stream_error(&error))?;
    let info = stream.info().await.map_err(|error| stream_error(&error))?;
    // A stream made by someone else keeps its settings: one that does not take
    // the relay's subjects is refused (its publishes would go to another
    // stream, or to none); say what the others risk.
    if !info.config.subjects.iter().any(|subject| covers(subject, PUBLISHED_ON)) {
        return Err(RelayError::Stream {
            reason: format!(
                "it takes the subjects {:?}, not {SUBJECTS}: add {SUBJECTS} to them, or delete the stream and the \
                 relay makes it",
                info.config.subjects
            ),
        });
    }
    // One that keeps only what a consumer has yet to take (interest) or until
    // one acks it (a work queue) would not hold the log: replicas and every
    // consumer after the first would find holes.
    if info.config.retention != jetstream::stream::RetentionPolicy::Limits {
        return Err(RelayError::Stream {
            reason: format!(
                "its retention is {:?}: it keeps messages only for the consumers there are, not the log a replica or \
                 a later consumer reads from the start; make it with limits retention (delete it, and the relay \
                 makes it)",
                info.config.retention
            ),
        });
    }
    // Said once a connection, not at every look at the stream.
    if first && info.config.storage != StorageType::File {
        tracing::warn!("JetStream stream {STREAM} keeps its messages in memory: a NATS restart loses them all");
    }
    if first && info.config.duplicate_window < options.duplicate_window {
        tracing::warn!(
            window_ms = info.config.duplicate_window.as_millis() as u64,
            "JetStream stream {STREAM} drops repeats within a shorter window than the relay's: a publish sent again \
             after a lost ack may be stored twice (consumers skip positions they have)"
        );
    }
    let (messages, last_sequence) = (info.state.messages, info.state.last_sequence);
    if messages == 0 {
        // New, or purged: the relay goes on from its checkpoint (a purge is
        // the operator's; sending everything again would undo it).
        return Ok((jetstream, last_sequence));
    }
    // The newest message on the relay's subjects; else the one at the stream's
    // last sequence (a server that takes no wildcard there). None there: the
    // stream holds no record of any log (only others' messages, on subjects of
    // its own), as if empty.
    let last = match stream.get_last_raw_message_by_subject(SUBJECTS).await {
        Ok(last) => last,
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Ok((jetstream, last_sequence));
        }
        Err(_) => stream.get_raw_message(last_sequence).await.map_err(|error| stream_error(&error))?,
    };
    let held = held_position(&shared.log, last.sequence, &last.headers, &last.payload).await?;
    // The first publish follows this record: at its own sequence, unless the
    // stream holds others' messages after it. (Read after the stream's state,
    // it may be newer: a publish an earlier attempt left queued stored since.)
    let last_sequence = last_sequence.max(last.sequence);
    // Every publish expects the one before it to be the stream's last message, so
    // the stream holds this log's records from where the relay began, with no
    // hole: it goes on after its last one.
    let checkpoint = shared.checkpoint.load(Ordering::Acquire);
    if held < checkpoint {
        // Acknowledged, then lost: a power cut before JetStream's own fsync
        // (DESIGN §4), or messages deleted. They are not in the stream: no repeat.
        tracing::warn!(
            held,
            checkpoint,
            "JetStream lost messages it had acknowledged; the relay sends them again from position {}",
            held + 1
        );
    } else if held > checkpoint {
        // Stored, their acks lost (a failed attempt, a kill: the tree is made
        // durable with the log's next checkpoint), or none kept (a restored data dir).
        tracing::info!(position = held, "the relay goes on after the last message JetStream holds");
    }
    if held != checkpoint {
        shared.save(held)?;
    }
    Ok((jetstream, last_sequence))
}

/// The headers by which JetStream stores a message only right after the one it
/// names (the stream sequence, or the message id, of the record before), so that
/// a publish lost on a connection that dropped (the client sends what it still
/// queued on its next connection) makes JetStream refuse every later one, and
/// the relay's next attempt goes on after the last record stored. Without them,
/// the records after a lost one were stored and the lost one never sent again.
/// The relay must be the stream's only publisher.
const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";

/// See [`EXPECTED_LAST_SEQUENCE`] and [`Follows::headers`].
const EXPECTED_LAST_MESSAGE_ID: &str = "Nats-Expected-Last-Msg-Id";

/// One attempt: connect, find where to start, and publish until stopped or
/// reconnected (`Ok`), or until something fails.
async fn relay(
    shared: &Shared,
    options: &RelayOptions,
    stopped: &mut watch::Receiver<bool>,
    client: &mut Option<async_nats::Client>,
) -> Result<Ended, RelayError> {
    // Connections made before this attempt read the stream are not news.
    let mut connections = shared.connections.subscribe();
    // A server that does not answer holds no stop up.
    let (jetstream, mut stored) = tokio::select! {
        connected = connect(shared, options, client) => connected?,
        _ = stopped.wait_for(|stop| *stop) => return Ok(Ended::Stopped),
    };
    if shared.checkpoint.load(Ordering::Acquire) >= shared.log.head() {
        // Up, with nothing to publish; else up once JetStream acknowledges.
        shared.set_failure(None);
    }
    tracing::debug!(url = %shown(&options.url), from = shared.checkpoint.load(Ordering::Acquire) + 1, "relaying the log to NATS");

    let mut subscription = shared.log.subscribe(shared.checkpoint.load(Ordering::Acquire) + 1);
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut outgoing: Vec<Outgoing> = Vec::new();
    let mut saved = shared.checkpoint.load(Ordering::Acquire);
    // What the next publish follows; `stored` is where this attempt knows the
    // stream ends.
    let mut follows = Follows::sequence(stored);
    loop {
        enum Step {
            Stop,
            Reconnected,
            Acked(Result<PublishAck, jetstream::context::PublishError>),
            Read(Result<usize, StoreError>),
        }
        let room = options.acks_in_flight.saturating_sub(in_flight.len());
        // Idle (nothing in flight): look at the stream again now and then.
        let idle = in_flight.is_empty();
        let step = {
            let ack = async {
                match in_flight.front_mut() {
                    Some(sent) => (&mut sent.ack).await,
                    None => std::future::pending().await,
                }
            };
            let read = async {
                if room == 0 {
                    return std::future::pending().await;
                }
                subscription
                    .next_stored(room, |record| {
                        outgoing.push(Outgoing {
                            position: record.position,
                            event_id: record.event_id.to_string(),
                            subject: subject_of(record.stream),
                            headers: headers_of(&record),
                            payload: record.bytes.to_vec(),
                        });
                        Ok::<(), StoreError>(())
                    })
                    .await
            };
            tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => Step::Stop,
                _ = connections.changed() => Step::Reconnected,
                acked = ack => Step::Acked(acked),
                read = read => Step::Read(read),
                () = tokio::time::sleep(IDLE_CHECK), if idle => Step::Reconnected,
            }
        };
        match step {
            Step::Stop => {
                drain(shared, &mut in_flight).await;
                return Ok(Ended::Stopped);
            }
            Step::Reconnected => {
                tracing::debug!("the relay reads the stream again");
                return Ok(Ended::Reconnected);
            }
            Step::Acked(acked) => {
                let Some(sent) = in_flight.pop_front() else { continue };
                let position = sent.position;
                let ack = acked.map_err(|error| RelayError::Publish { position, reason: refusal(&error) })?;
                if ack.stream != STREAM {
                    // Another stream takes subjects of ours as well.
                    return Err(RelayError::Publish {
                        position,
                        reason: format!(
                            "stream {} took it, not {STREAM}: only {STREAM} may take {SUBJECTS}",
                            ack.stream
                        ),
                    });
                }
                if ack.duplicate {
                    // JetStream took this event once already (its id is in the
                    // deduplication window) and stored nothing, so the publishes
                    // sent after it, which follow its id, are refused. Where the
                    // stream still holds that message, it counts as published;
                    // the rest go again from the next position, following where
                    // the stream ends (should something have been stored since,
                    // that one is refused and the next attempt reads the
                    // stream). Purged or deleted since, it is in no stream: the
                    // relay tries again until the window has passed and
                    // JetStream stores it (a hole otherwise, which the relay's
                    // counters would not show and a replica would stop at).
                    held_still(&jetstream, position, ack.sequence).await?;
                    // The stream ends at that message at least (one an earlier
                    // attempt left queued may have been stored after the read).
                    stored = stored.max(ack.sequence);
                    follows = Follows::sequence(stored);
                    if !in_flight.is_empty() {
                        in_flight.clear();
                        subscription = shared.log.subscribe(position + 1);
                    }
                } else {
                    stored = ack.sequence;
                }
                if shared.failing.load(Ordering::Acquire) {
                    shared.set_failure(None);
                }
                shared.published.fetch_add(1, Ordering::Relaxed);
                shared.checkpoint.store(position, Ordering::Release);
                // The tree is written now and then, not for every ack.
                if in_flight.is_empty() || position >= saved + SAVE_EVERY {
                    shared.save(position)?;
                    saved = position;
                }
            }
            Step::Read(read) => {
                read?;
                for mut record in outgoing.drain(..) {
                    for (name, value) in follows.headers() {
                        record.headers.insert(name, value);
                    }
                    follows.after(record.event_id);
                    let ack = jetstream
                        .publish_with_headers(record.subject, record.headers, record.payload.into())
                        .await
                        .map_err(|error| RelayError::Publish {
                            position: record.position,
                            reason: error.to_string(),
                        })?;
                    in_flight.push_back(InFlight { position: record.position, ack: ack.into_future() });
                }
            }
        }
    }
}

/// The stream still holds the message at `sequence` that JetStream named as the
/// one it took `position`'s event id with: else an error (see the duplicate
/// acks in [`relay`]).
async fn held_still(jetstream: &jetstream::Context, position: u64, sequence: u64) -> Result<(), RelayError> {
    let stream =
        jetstream.get_stream_no_info(STREAM).await.map_err(|error| RelayError::Stream { reason: error.to_string() })?;
    match stream.get_raw_message(sequence).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Err(RelayError::Publish {
            position,
            reason: format!(
                "JetStream took this event before, at stream sequence {sequence}, which {STREAM} no longer holds \
                 (purged or deleted), and within its deduplication window it stores nothing under that event's id: \
                 the relay sends it again until the window has passed"
            ),
        }),
        Err(error) => Err(RelayError::Stream { reason: error.to_string() }),
    }
}

/// Why JetStream did not take a publish, in the relay's words where its own
/// are cryptic.
fn refusal(error: &jetstream::context::PublishError) -> String {
    match error.kind() {
        jetstream::context::PublishErrorKind::WrongLastSequence
        | jetstream::context::PublishErrorKind::WrongLastMessageId => format!(
            "JetStream refused it, as the stream no longer ends where it follows (a message before it was lost \
             with a connection, or another publisher wrote to {STREAM}); the relay goes on from where the stream \
             ends ({error})"
        ),
        _ => error.to_string(),
    }
}

/// How many acks may pass between two writes of the checkpoint to its tree.
const SAVE_EVERY: u64 = 256;

/// At a stop, wait a moment for the acks in flight and keep the checkpoint past
/// those that came.
async fn drain(shared: &Shared, in_flight: &mut VecDeque<InFlight>) {
    let acked = tokio::time::timeout(DRAIN_WAIT, async {
        while let Some(sent) = in_flight.front_mut() {
            let position = sent.position;
            // Only what JetStream stored counts: a duplicate may be of a message
            // since purged (see `held_still`), and the next start reads the
            // stream and goes on after the last record it holds anyway.
            match (&mut sent.ack).await {
                Ok(ack) if !ack.duplicate && ack.stream == STREAM => {}
                _ => break,
            }
            in_flight.pop_front();
            shared.published.fetch_add(1, Ordering::Relaxed);
            shared.checkpoint.store(position, Ordering::Release);
        }
    })
    .await;
    if acked.is_err() {
        tracing::warn!(in_flight = in_flight.len(), "the relay stopped before JetStream acknowledged every publish");
    }
    if let Err(error) = shared.save(shared.checkpoint.load(Ordering::Acquire)) {
        tracing::warn!(%error, "the relay could not save its checkpoint");
    }
}

/// The position of the stream's last message, if the log holds that very record
/// there; else the stream holds another log's events.
async fn held_position(log: &EventLog, sequence: u64, headers: &HeaderMap, payload: &[u8]) -> Result<u64, RelayError> {
    let foreign = |reason: String| RelayError::Foreign { reason, sequence };
    let position = headers
        .get(POSITION)
        .and_then(|value| value.as_str().parse::<u64>().ok())
        .filter(|position| *position > 0)
        .ok_or_else(|| foreign(format!("its last message has no {POSITION} header")))?;
    let head = log.head();
    if position > head {
        return Err(foreign(format!("its last message is position {position}, past this log's head {head}")));
    }
    let mut same = false;
    log.subscribe(position)
        .next_stored(1, |record| {
            same = record.position == position && record.bytes == payload;
            Ok::<(), StoreError>(())
        })
        .await?;
    if !same {
        return Err(foreign(format!("its message at position {position} is not this log's record there")));
    }
    Ok(position)
}

const POSITION: &str = "Shoplog-Position";

/// The headers of DESIGN §4, and the payload's schema version (which a consumer needs
/// before it decodes the payload; docs/CONSUMERS.md).
fn headers_of(record: &StoredEvent<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", record.event_id.to_string());
    headers.insert(POSITION, record.position.to_string());
    headers.insert("Shoplog-Event-Type", header_value(record.event_type));
    headers.insert("Shoplog-Schema-Version", record.schema_version.to_string());
    headers.insert("Shoplog-Stream", header_value(record.stream));
    headers
}

/// `text` as a header value can carry it: as it is, unless it holds a control
/// character (a stream name may hold any but NUL; an event type none) or a `%`;
/// then each of those is percent-encoded (its UTF-8 bytes as `%XX`), so no line
/// break ends the header and the value decodes back to the name exactly. A
/// shop's stream names hold neither.
fn header_value(text: &str) -> String {
    let escaped = |c: char| c.is_control() || c == '%';
    if !text.chars().any(escaped) {
        return text.to_owned();
    }
    let mut value = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                value.push_str(&format!("%{byte:02X}"));
            }
        } else {
            value.push(c);
        }
    }
    value
}

/// Whether every subject `wanted` (whose `*` tokens stand for any token)
/// matches `pattern`, a stream's subject filter with NATS's wildcards (`*` one
/// token, `>` one or more).
fn covers(pattern: &str, wanted: &str) -> bool {
    let mut wanted_tokens = wanted.split('.');
    for token in pattern.split('.') {
        match (token, wanted_tokens.next()) {
            (_, None) => return false,
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(other)) if token == other && other != "*" => {}
            _ => return false,
        }
    }
    wanted_tokens.next().is_none()
}

/// Every subject the relay publishes on: four tokens (see [`subject_of`]).
const PUBLISHED_ON: &str = "shoplog.events.*.*";

/// `shoplog.events.<category>.<id>`: the category is the stream's prefix before
/// its first `-` (`product`, `customer`, `email`, `cart`, `order`), the id the
/// rest. A character a subject token cannot hold (only `[A-Za-z0-9_-]` are
/// kept; a shop's stream names hold no other) is written `_`, as is an empty
/// part: the subject routes, the `Shoplog-Stream` header names the stream.
fn subject_of(stream: &str) -> String {
    let (category, id) = stream.split_once('-').unwrap_or((stream, ""));
    format!("shoplog.events.{}.{}", token(category), token(id))
}

fn token(part: &str) -> String {
    if part.is_empty() {
        return "_".to_owned();
    }
    part.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_the_category_and_the_id_in_tokens_nats_takes() {
        assert_eq!(subject_of("product-SKU-1"), "shoplog.events.product.SKU-1");
        assert_eq!(subject_of("order-0190a1b2-c3d4"), "shoplog.events.order.0190a1b2-c3d4");
        assert_eq!(subject_of("email-3f2a"), "shoplog.events.email.3f2a");
        assert_eq!(subject_of("plain"), "shoplog.events.plain._");
        assert_eq!(subject_of("a.b-c d*>"), "shoplog.events.a_b.c_d__");
        assert_eq!(subject_of("-x"), "shoplog.events._.x");
    }

    #[test]
    fn a_streams_subjects_must_take_every_subject_of_the_relay() {
        let every = ["shoplog.events.>", "shoplog.>", ">", "*.events.>", "shoplog.*.>", "shoplog.events.*.*"];
        for pattern in every.into_iter().chain(["shoplog.events.*.>", "*.*.*.*"]) {
            assert!(covers(pattern, PUBLISHED_ON), "{pattern}");
        }
        for pattern in ["foo.>", "shoplog.events.*", "shoplog.events.product.>", "shoplog.events", "shoplog.*"] {
            assert!(!covers(pattern, PUBLISHED_ON), "{pattern}");
        }
        for pattern in ["shoplog.events.*.*.*", "shoplog.events.product.*"] {
            assert!(!covers(pattern, PUBLISHED_ON), "{pattern}");
        }
        assert!(covers("shoplog.events.*.*", &subject_of("product-mug.1")), "{}", subject_of("product-mug.1"));
    }

    #[test]
    fn header_values_carry_no_line_break() {
        assert_eq!(header_value("product-1"), "product-1");
        assert_eq!(header_value("a\r\nb\tc"), "a%0D%0Ab%09c");
        assert_eq!(header_value("50%\\r"), "50%25\\r", "a literal backslash-r stays apart from a line break");
        assert_eq!(header_value("x\u{85}y"), "x%C2%85y");
    }

    #[test]
    fn a_nats_url_is_checked_before_the_relay_starts() {
        for good in ["nats://127.0.0.1:4222", "127.0.0.1:4222", "tls://nats.example:4222", "nats://u:p@host:1"] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        assert!(check_url("nats://[::1").is_err_and(|problem| problem.contains("invalid")));
        assert!(check_url("http://host:4222").is_err_and(|problem| problem.contains("scheme")));
        assert!(check_url("ws://host:4222").is_err_and(|problem| problem.contains("not supported")));
    }

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(shown("nats://relay:s3cret@host:4222"), "nats://host:4222");
        assert_eq!(shown("relay:s3cret@host:4222"), "host:4222");
        assert_eq!(shown("nats://host:4222"), "nats://host:4222");
    }
}
