//! Serving: open the log, resolve the tokens, bind, and run the app with a
//! header-read timeout (slow-loris clients), per-request timeouts (in the app) and a
//! graceful shutdown on SIGTERM or Ctrl-C that gives up after a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::auth::Tokens;
use crate::config::{Config, Secret};
use crate::replica::{self, Primary};
use crate::{AppState, app, replica_app};

/// What a process serves: the whole backend (`serve`), or a read replica of one
/// (`shoplog project`) that copies its log from NATS (`Config::nats`) and fills
/// gaps from its primary, if given one.
#[derive(Debug, Clone)]
pub enum Role {
    Primary,
    Replica { primary: Option<Primary> },
}

/// A running server: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub address: SocketAddr,
    pub state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stop accepting, let requests in flight finish (bounded), and wait for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let served = self.task.await.context("the server task failed")?.context("the server failed");
        close(self.state).await;
        served
    }
}

/// Open everything `config` names and start serving in the background.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    start_as(config, Role::Primary).await
}

/// [`start`], in `role`.
pub async fn start_as(config: &Config, role: Role) -> anyhow::Result<Running> {
    // First: an address in use changes nothing in the data dir.
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let state = open_state(config, &role)?;
    seed_demo(config, &state).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = router_for(&role, state.clone(), config.request_timeout());
    let stopping = Arc::clone(&state.stopping);
    let task =
        tokio::spawn(run(listener, router, config.header_read_timeout(), config.shutdown_timeout(), async move {
            let _ = stopped.await;
            stopping.send_replace(true);
        }));
    Ok(Running { address, state, stop, task })
}

/// Serve until SIGTERM or Ctrl-C.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    serve_as(config, Role::Primary).await
}

/// [`serve`], in `role`.
pub async fn serve_as(config: Config, role: Role) -> anyhow::Result<()> {
    // First: an address in use changes nothing in the data dir (no dir, no token
    // files, no demo shop made before the refusal).
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let state = open_state(&config, &role)?;
    seed_demo(&config, &state).await?;
    let address = listener.local_addr()?;
    let signal = shutdown_signal();
    match (&role, &config.nats) {
        (Role::Replica { primary }, Some(nats)) => tell!(
            "shoplog read replica listening on http://{address} (data in {}, events from {}; {})",
            config.data.display(),
            commands::relay::shown(nats),
            match primary {
                Some(primary) => format!("gaps filled from {}", commands::relay::shown(&primary.url)),
                None => "no primary to fill gaps".to_owned(),
            }
        ),
        _ => tell!("shoplog listening on http://{address} (data in {})", config.data.display()),
    }
    let stopping = Arc::clone(&state.stopping);
    let router = router_for(&role, state.clone(), config.request_timeout());
    let shutdown = async move {
        signal.await;
        stopping.send_replace(true);
    };
    run(listener, router, config.header_read_timeout(), config.shutdown_timeout(), shutdown).await?;
    close(state).await;
    tell!("shoplog stopped");
    Ok(())
}

/// Stop the read models' workers and wait for them, so the log closes (and its
/// directory lock is free) once the last handle is gone.
async fn close(state: AppState) {
    // Its page ends within milliseconds; then it lets go of the log.
    let read_back = state.read_back.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(read_back) = read_back {
        read_back.stop();
    }
    let relay = state.relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(relay) = relay {
        relay.stop().await;
    }
    let feed = state.replica.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(feed) = feed {
        feed.stop().await;
    }
    match Arc::try_unwrap(state.projections) {
        Ok(projections) => projections.shutdown().await,
        // A connection past the shutdown deadline still holds the state: dropping
        // the last handle stops the workers anyway.
        Err(_) => tracing::warn!("read models still in use at shutdown"),
    }
}

/// With `demo` set, seed the demo shop into an empty log, and say what happened.
async fn seed_demo(config: &Config, state: &AppState) -> anyhow::Result<()> {
    if !config.demo {
        return Ok(());
    }
    match crate::demo::seed(&state.service).await? {
        Some(seeded) => tell!("{seeded}"),
        None => tell!(
            "demo: the log in {} already holds {} events; leaving the data as it is",
            config.data.display(),
            state.log.head()
        ),
    }
    Ok(())
}

/// The routes `role` serves.
fn router_for(role: &Role, state: AppState, request_timeout: Duration) -> Router {
    match role {
        Role::Primary => app(state, request_timeout),
        Role::Replica { .. } => replica_app(state, request_timeout),
    }
}

fn open_state(config: &Config, role: &Role) -> anyhow::Result<AppState> {
    holds_a_log_or_nothing(&config.data)?;
    // Refused before the open, which would recover a crashed copy into the dir first.
    if matches!(role, Role::Primary) && config.data.join(REPLICA_MARK).exists() {
        return Err(replica_dir_served(&config.data));
    }
    let log = store::EventLog::open_with(&config.data, config.log_options()).map_err(|error| match error {
        store::StoreError::Locked { path } => anyhow::anyhow!(
            "data directory {} is in use by another shoplog process; stop it or use another --data",
            path.display()
        ),
        other => anyhow::Error::new(other).context(format!("cannot open the log in {}", config.data.display())),
    })?;
    check_role(&config.data, role, &log)?;
    let admin = configured_or_generated(&config.admin_token, &config.data, "admin-token", "SHOPLOG_ADMIN_TOKEN")?;
    let viewer = configured_or_generated(&config.viewer_token, &config.data, "viewer-token", "SHOPLOG_VIEWER_TOKEN")?;
    // Config::check compares two configured tokens; one may come from its file.
    // The admin's would win: the viewer token would be an admin's.
    anyhow::ensure!(
        admin.expose() != viewer.expose(),
        "the viewer token must differ from the admin token (one of them is in {})",
        config.data.display()
    );
    anyhow::ensure!(
        config.replica_token.as_ref().is_none_or(|replica| ![&admin, &viewer].contains(&replica)),
        "the replica token must differ from the admin and viewer tokens (which are in {})",
        config.data.display()
    );
    let signing_key = match &config.token_secret {
        Some(secret) => secret.clone(),
        None => Secret::new(hex::encode(log.secret("customer-token")?)),
    };
    let service = commands::CommandService::with_options(log.clone(), config.command_options())
        .context("cannot start the command service")?;
    let runtime = ProjectionRuntime::new().context("cannot start the read models' runtime")?;
    let projections = runtime.start(log.clone()).context("cannot start the read models")?;
    // Beside the read models, off the serving threads.
    let (relay, feed) = match (role, &config.nats) {
        (Role::Primary, Some(url)) => (
            Some(
                runtime
                    .within(|| commands::Relay::start(log.clone(), commands::RelayOptions::new(url)))
                    .context("cannot start the relay to NATS")?,
            ),
            None,
        ),
        (Role::Primary, None) => (None, None),
        (Role::Replica { primary }, Some(url)) => {
            let options = replica::ReplicaOptions::new(url, primary.clone());
            let feed = runtime
                .within(|| replica::Feed::start(log.clone(), options))
                .context("cannot start the feed from NATS")?;
            (None, Some(feed))
        }
        (Role::Replica { .. }, None) => {
            anyhow::bail!("a read replica needs --nats URL: the NATS its primary relays to")
        }
    };
    let state = AppState::new(
        log,
        service,
        projections,
        runtime,
        Tokens::new(admin, viewer, signing_key).with_replica(config.replica_token.clone()),
        config.login_attempts_per_minute,
        &config.currency,
    )
    .with_trusted_proxies(config.trusted_proxies().map_err(anyhow::Error::msg)?);
    Ok(match (relay, feed) {
        (Some(relay), _) => state.with_relay(relay),
        (None, Some(feed)) => state.with_replica(feed),
        (None, None) => state,
    })
}

/// A data dir is one that holds a log, or an empty (or new) one, in which the
/// log is made: a directory holding other things (`--data /etc`, `--data ~` for
/// a typo) is refused before anything is written to it. shoplog's own files
/// (the token files, the replica's mark, and the log's files that a start
/// stopped before sled made `db` leaves), a file system's `lost+found` and
/// hidden entries (`.gitkeep`) do not count; what is left of a log whose sled
/// file is gone is for the open to name as damage.
fn holds_a_log_or_nothing(data: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(data) else { return Ok(()) };
    if data.join("db").exists() || store::sled_file_lost(data).is_some() {
        return Ok(());
    }
    let other = entries.flatten().map(|entry| entry.file_name()).find(|name| {
        let name = name.to_string_lossy();
        let ours = ["lost+found", "admin-token", "viewer-token", REPLICA_MARK].contains(&name.as_ref());
        !ours && !store::is_log_file(&name) && !name.starts_with('.')
    });
    match other {
        Some(name) => anyhow::bail!(
            "data directory {} holds no shoplog log and is not empty (it holds {}): give the data dir of a log, \
             or an empty or new directory to start one in",
            data.display(),
            name.to_string_lossy()
        ),
        None => Ok(()),
    }
}

/// Why `serve` refuses a read replica's data dir.
fn replica_dir_served(data: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "data directory {} is a read replica's copy of a primary's log (made by `shoplog project`): serving it would \
         fork the primary's history, and it holds none of the customers' data; run `shoplog project` on it, or \
         restore a backup of the primary to serve (remove {} to serve it anyway)",
        data.display(),
        data.join(REPLICA_MARK).display()
    )
}

/// The file that marks a read replica's data dir (`shoplog project`).
pub const REPLICA_MARK: &str = "replica";

/// A replica's data dir is a copy of its primary's log: `serve` on it would
/// fork that history (and its customers read as forgotten: it holds no key), so
/// it is refused; `project` takes a dir it made, or an empty one, which it marks.
fn check_role(data: &Path, role: &Role, log: &store::EventLog) -> anyhow::Result<()> {
    let mark = data.join(REPLICA_MARK);
    let marked = mark.exists();
    match role {
        Role::Primary if marked => Err(replica_dir_served(data)),
        Role::Replica { .. } if !marked && log.head() > 0 => anyhow::bail!(
            "data directory {} holds a log `shoplog project` did not copy (a primary's?): a read replica starts on \
             an empty data dir (a replica's dir made before replicas marked theirs: create the file {} in it)",
            data.display(),
            mark.display()
        ),
        Role::Replica { .. } if !marked => {
            write_private(&mark, "This data directory is a read replica's copy of a primary's log (shoplog project).\n")
                .with_context(|| format!("cannot write {}", mark.display()))
        }
        _ => Ok(()),
    }
}

/// The read models' workers run on a runtime of their own, one worker thread (and
/// its blocking pool for their batch commits), not on the threads that serve HTTP.
///
/// Measured with `cargo bench -p tests --bench http` (docs/BENCHMARKS.md, issue 4),
/// when each model still had a worker of its own: on the serving runtime the
/// workers' reads and decodes of every new event queued in front of requests, and
/// their commits (sled transactions, which take sled's process-wide lock
/// exclusively) stalled the two serving threads' own sled reads. Apart, durable
/// commands ran 8-22 % faster.
#[derive(Debug)]
pub struct ProjectionRuntime(Option<tokio::runtime::Runtime>);

impl ProjectionRuntime {
    /// One worker thread, named `shoplog-projections`.
    pub fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoplog-projections")
            .enable_all()
            .build()?;
        Ok(ProjectionRuntime(Some(runtime)))
    }

    /// Start the read models' workers on this runtime.
    pub fn start(&self, log: store::EventLog) -> Result<projections::Projections, projections::ProjectionError> {
        self.within(|| projections::Projections::start(log))
    }

    /// Run `work` (which may spawn workers, such as a rebuild) on this runtime.
    pub fn within<T>(&self, work: impl FnOnce() -> T) -> T {
        // Only `drop` takes the runtime out, so it is always there before.
        let _entered = self.0.as_ref().map(tokio::runtime::Runtime::enter);
        work()
    }
}

impl Drop for ProjectionRuntime {
    fn drop(&mut self) {
        // Dropped from async code at shutdown, where a runtime may not block; the
        // workers are stopped and joined by `close` before this.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A configured token, or the one generated into `<data>/<file>` on first start.
fn configured_or_generated(
    configured: &Option<Secret>,
    data: &Path,
    file: &str,
    variable: &str,
) -> anyhow::Result<Secret> {
    let path = data.join(file);
    if let Some(token) = configured {
        // A token generated by an earlier start, now unused: whoever reads it
        // (the README's `cat data/admin-token`) would get 401s without a word.
        if path.exists() {
            tell!("{file}: the token in {} is not in use (a configured one is): remove the file", path.display());
        }
        return Ok(token.clone());
    }
    let advice = format!("remove it (the next start makes a new one) or set {variable}");
    let token = match std::fs::read_to_string(&path) {
        Ok(token) => token.trim().to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            anyhow::bail!("{} does not hold a token (it is not text): {advice}", path.display())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            write_private(&path, &token).with_context(|| format!("cannot write {}", path.display()))?;
            token
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    if let Some(problem) = crate::config::token_problem(&token) {
        anyhow::bail!("the token in {} {problem}: {advice}", path.display());
    }
    tell!("{file}: in {} (set {variable} to choose your own)", path.display());
    Ok(Secret::new(token))
}

/// Write a new file readable by its owner only, whole or not at all: the
/// contents go to a temporary file first, which then takes the name (a link,
/// which fails if the name is taken), so a kill part way leaves no empty token
/// file that every later start would refuse.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let partial = store::beside(path, "partial");
    let written = store::create_private_file(&partial).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        store::link_into_place(&partial, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// Accept connections until `shutdown` completes, then drain them for at most `grace`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    // HTTP/1 only, and without the protocol sniffing of `serve_connection_with_upgrades`:
    // that waits for 24 bytes with no timer, so a client that sent fewer (or none)
    // held its connection for ever. Here the header-read timer runs from the start.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            request
        });
        let connection = builder
            .serve_connection(TokioIo::new(crate::refusals::ProblemIo::new(stream)), TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown deadline passed with requests still in flight"),
    }
    Ok(())
}

/// Ctrl-C or SIGTERM, listened for from the call on: the server tells that it
/// listens only after this, so a signal sent as soon as it says so shuts it
/// down rather than killing it (a handler installed on the future's first
/// poll left a moment in which SIGTERM's default disposition still held).
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for {name}: it stops the server without a graceful shutdown");
            None
        }
    };
    let (mut interrupt, mut terminate) =
        (listen(SignalKind::interrupt(), "Ctrl-C"), listen(SignalKind::terminate(), "SIGTERM"));
    async move {
        tokio::select! {
            () = received(interrupt.as_mut()) => {}
            () = received(terminate.as_mut()) => {}
        }
        tracing::info!("shutting down");
    }
}

/// The next `signal`; never, without one.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
