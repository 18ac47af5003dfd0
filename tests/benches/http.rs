//! Durable commands per second through HTTP against a trivial axum JSON echo, under
//! the same `wrk` load (64 connections, 2 threads), in one run (DESIGN §8).
//!
//! `cargo bench -p tests --bench http` (needs `wrk`: `apt-get install -y wrk`;
//! `-- --seconds 20` for a longer run, `-- --baseline-seconds 1` to spend little
//! time on the two baselines when comparing shoplog builds). Both servers run in this process, each in
//! turn, on loopback; wrk runs as a separate process. The shoplog mix: half product
//! restocks by the admin over 100 products, half cart adds by 200 logged-in
//! customers over 50 products each; every 2xx is an fsynced append. Each phase
//! also reports the share of the machine's CPU the hypervisor stole meanwhile.
//!
//! A third server is DESIGN §8's bare ceiling, under the echo's load: the echo
//! handler, answering only once the body is appended to a file and covered by a
//! group `fdatasync` (one thread writes and syncs whatever is queued), with no
//! domain, no log format and no read models.
//!
//! `-- --nats` runs shoplog with the relay to a real `nats-server` (see
//! `tests::nats_server_program`) and reports the relay's lag behind the head,
//! sampled every 250 ms during the load, and how long it takes to reach the head
//! after it (DESIGN §8: the relay keeps up with the commit rate, its lag bounded),
//! with JetStream at NATS's default fsync (every 2 minutes), or with
//! `--nats-sync-always` at an fsync per message;
//! then how fast a read replica started empty (`shoplog project`) copies the
//! whole log from NATS and has its read models at the head.

/// The `shoplog` binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tests::thread_cpu::{add_cpu, cpu_by_thread, print_cpu};

const ADMIN: &str = "bench-admin-token-000001";
const PRODUCTS: usize = 100;
const CUSTOMERS: usize = 200;
const CART_SKUS: usize = 50;

#[derive(Debug, Default)]
struct WrkResult {
    requests_per_second: f64,
    p50: String,
    p99: String,
    non_2xx: u64,
    requests: u64,
    /// The machine's CPU time stolen by the hypervisor while wrk ran.
    stolen: Option<f64>,
}

fn wrk(url: &str, script: &std::path::Path, seconds: u64) -> WrkResult {
    let ticks = tests::cpu_ticks();
    let output = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut result = WrkResult { stolen: tests::stolen_percent(ticks, tests::cpu_ticks()), ..WrkResult::default() };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => result.requests_per_second = rate.parse().unwrap_or(0.0),
            ["50%", latency] => result.p50 = (*latency).to_owned(),
            ["99%", latency] => result.p99 = (*latency).to_owned(),
            ["Non-2xx", "or", "3xx", "responses:", count] => result.non_2xx = count.parse().unwrap_or(0),
            [count, "requests", "in", ..] => result.requests = count.parse().unwrap_or(0),
            _ => {}
        }
    }
    assert!(
        result.requests_per_second > 0.0,
        "wrk printed no rate:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    result
}

fn lua_string(text: &str) -> String {
    format!("{text:?}")
}

/// A wrk script that cycles through prepared requests, each thread from its own offset.
fn write_script(path: &std::path::Path, requests: &[(String, String, Option<String>)]) {
    let mut script = String::from("local requests = {}\n");
    for (path, body, token) in requests {
        let auth = token
            .as_ref()
            .map(|token| format!(", [\"Authorization\"] = {}", lua_string(&format!("Bearer {token}"))))
            .unwrap_or_default();
        let _ = writeln!(
            script,
            "requests[#requests + 1] = wrk.format(\"POST\", {}, {{[\"Content-Type\"] = \"application/json\"{auth}}}, {})",
            lua_string(path),
            lua_string(body)
        );
    }
    script.push_str(
        "local counter = 0\nlocal threads = 0\nfunction setup(thread) threads = threads + 1; thread:set(\"offset\", threads * 7919) end\n\
         function init(args) counter = offset or 0 end\n\
         function request() counter = counter + 1; return requests[(counter % #requests) + 1] end\n",
    );
    std::fs::write(path, script).expect("writes the script");
}

async fn echo(Json(body): Json<Value>) -> Json<Value> {
    Json(body)
}

/// A body and the answer to send once it is durable.
type ToSync = std::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>;

/// The echo, once the body is durable in the bare group commit.
async fn commit(State(to_sync): State<ToSync>, Json(body): Json<Value>) -> Json<Value> {
    let (done, synced) = tokio::sync::oneshot::channel();
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    to_sync.send((bytes, done)).expect("the committer runs");
    synced.await.expect("the committer answers");
    Json(body)
}

/// The bare group commit's thread: append whatever bodies are queued to the
/// file, `fdatasync` it once, answer them, count the fsync. It ends when the
/// server is gone (or with the process, should a connection outlive the load).
fn committer(
    file: std::fs::File,
    bodies: std::sync::mpsc::Receiver<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>,
    fsyncs: &std::sync::atomic::AtomicU64,
) {
    use std::io::Write;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    while let Ok(first) = bodies.recv() {
        let mut batch = vec![first];
        while let Ok(next) = bodies.try_recv() {
            batch.push(next);
        }
        for (bytes, _) in &batch {
            file.write_all(&(bytes.len() as u32).to_be_bytes()).expect("writes");
            file.write_all(bytes).expect("writes");
        }
        file.flush().expect("writes");
        file.get_ref().sync_data().expect("fdatasync");
        fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (_, done) in batch {
            let _ = done.send(());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<u64> {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .and_then(|value| value.parse().ok())
    };
    let seconds = flag("--seconds").unwrap_or(10);
    // `--baseline-seconds N`: run the echo and the bare handler for N seconds
    // only (their ratios are then rougher), for comparing shoplog builds.
    let baseline_seconds = flag("--baseline-seconds").unwrap_or(seconds);
    let with_nats = args.iter().any(|arg| arg == "--nats");
    // The binary's tracing subscriber (info, to stderr): each request's span is
    // part of what a request costs.
    api::cli::init_tracing().expect("RUST_LOG and SHOPLOG_LOG_FORMAT are sound");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let work = tempfile::tempdir().expect("temp dir");

    // The baseline: a trivial axum JSON echo.
    let echo_result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        let server =
            tokio::spawn(async move { axum::serve(listener, axum::Router::new().route("/echo", post(echo))).await });
        let script = work.path().join("echo.lua");
        write_script(&script, &[("/echo".to_owned(), "{\"sku\":\"mug-1\",\"quantity\":1}".to_owned(), None)]);
        let result = tokio::task::spawn_blocking(move || wrk(&format!("http://{address}"), &script, baseline_seconds))
            .await
            .expect("wrk ends");
        server.abort();
        result
    });

    // The bare ceiling: the echo with a group fdatasync.
    let bare_result = runtime.block_on(async {
        let (to_sync, bodies) = std::sync::mpsc::channel();
        let file = std::fs::File::create(work.path().join("bare.log")).expect("creates");
        let fsyncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&fsyncs);
        std::thread::spawn(move || committer(file, bodies, &counted));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("address");
        let router = axum::Router::new().route("/commit", post(commit)).with_state(to_sync);
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let script = work.path().join("bare.lua");
        write_script(&script, &[("/commit".to_owned(), "{\"sku\":\"mug-1\",\"quantity\":1}".to_owned(), None)]);
        let cpu_before = cpu_by_thread();
        let result = tokio::task::spawn_blocking(move || wrk(&format!("http://{address}"), &script, baseline_seconds))
            .await
            .expect("wrk ends");
        let mut cpu = std::collections::BTreeMap::new();
        add_cpu(&mut cpu, &cpu_before, &cpu_by_thread());
        server.abort();
        (result, fsyncs.load(std::sync::atomic::Ordering::Relaxed), cpu)
    });
    let (bare_result, bare_fsyncs, bare_cpu) = bare_result;

    // shoplog, with real fsyncs.
    // JetStream at NATS's default fsync (every 2 minutes), unless
    // `--nats-sync-always`: then it fsyncs each message before its ack, and its
    // own fsyncs bound what the relay can publish.
    let sync_interval = if args.iter().any(|arg| arg == "--nats-sync-always") { "always" } else { "2m" };
    let nats = with_nats.then(|| tests::NatsServer::start_syncing(&work.path().join("nats"), sync_interval));
    let (shop_result, stats, shop_cpu, relay_lags, replica_copy) = runtime.block_on(async {
        let config = api::Config {
            nats: nats.as_ref().map(tests::NatsServer::url),
            data: work.path().join("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: Some(api::config::Secret::new(ADMIN)),
            viewer_token: Some(api::config::Secret::new("bench-viewer-token-00001")),
            login_attempts_per_minute: 1_000_000,
            ..api::Config::default()
        };
        let running = api::server::start(&config).await.expect("starts");
        let base = format!("http://{}", running.address);
        let client = reqwest::Client::new();
        for product in 0..PRODUCTS {
            let reply = client
                .post(format!("{base}/api/v1/products"))
                .bearer_auth(ADMIN)
                .json(&json!({"sku": format!("p{product}"), "name": format!("Product {product}"), "price_cents": 100 + product, "initial_stock": 1000}))
                .send()
                .await
                .expect("seeds");
            assert_eq!(reply.status(), 201);
        }
        let mut tokens = Vec::new();
        for customer in 0..CUSTOMERS {
            let email = format!("bench{customer}@example.com");
            let registered = client
                .post(format!("{base}/api/v1/customers"))
                .json(&json!({"email": email, "name": "Bench", "password": "bench-password"}))
                .send()
                .await
                .expect("registers");
            assert_eq!(registered.status(), 201);
            let session: Value = client
                .post(format!("{base}/api/v1/sessions"))
                .json(&json!({"email": email, "password": "bench-password"}))
                .send()
                .await
                .expect("logs in")
                .json()
                .await
                .expect("json");
            tokens.push(session["token"].as_str().expect("token").to_owned());
        }
        let mut requests = Vec::new();
        for index in 0..(CUSTOMERS * CART_SKUS) {
            let customer = index % CUSTOMERS;
            let sku = (index / CUSTOMERS) % CART_SKUS;
            requests.push(("/api/v1/cart/items".to_owned(), format!("{{\"sku\":\"p{sku}\",\"quantity\":1}}"), Some(tokens[customer].clone())));
            requests.push((format!("/api/v1/products/p{}/restock", index % PRODUCTS), "{\"quantity\":1}".to_owned(), Some(ADMIN.to_owned())));
        }
        let script = work.path().join("shop.lua");
        write_script(&script, &requests);
        let before = running.state.log.commit_stats();
        let cache_before = running.state.service.cache_stats();
        let cpu_before = cpu_by_thread();
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (state, sampling) = (running.state.clone(), std::sync::Arc::clone(&sampling));
            tokio::spawn(async move {
                let mut lags = Vec::new();
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    if let Some(status) = state.relay_status() {
                        lags.push(status.lag);
                    }
                }
                lags
            })
        };
        let result = tokio::task::spawn_blocking(move || wrk(&base, &script, seconds)).await.expect("wrk ends");
        let mut cpu = std::collections::BTreeMap::new();
        add_cpu(&mut cpu, &cpu_before, &cpu_by_thread());
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let lags = sampler.await.expect("the sampler ends");
        // Then how long the relay takes to reach the head (bounded: 60 s).
        let load_over = std::time::Instant::now();
        let mut drained = None;
        while nats.is_some() && load_over.elapsed() < std::time::Duration::from_secs(60) {
            match running.state.relay_status() {
                Some(status) if status.lag == 0 => {
                    drained = Some(load_over.elapsed());
                    break;
                }
                Some(_) => {}
                None => break,
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Then a read replica started empty copies the whole log from NATS.
        let head = running.state.log.head();
        let mut replica_copy = None;
        if let Some(nats) = &nats {
            let config = api::Config {
                nats: Some(nats.url()),
                data: work.path().join("replica"),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin_token: Some(api::config::Secret::new(ADMIN)),
                viewer_token: Some(api::config::Secret::new("bench-viewer-token-00001")),
                ..api::Config::default()
            };
            let started = std::time::Instant::now();
            let replica = api::server::start_as(&config, api::server::Role::Replica { primary: None })
                .await
                .expect("the replica starts");
            while replica.state.log.head() < head && started.elapsed() < std::time::Duration::from_secs(120) {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let copied = started.elapsed();
            let applied = replica.state.projections.wait_for(head, std::time::Duration::from_secs(120)).await;
            let applied = applied.is_ok().then(|| started.elapsed());
            replica_copy = Some((replica.state.log.head(), copied, applied));
            replica.stop().await.expect("the replica stops");
        }
        let after = running.state.log.commit_stats();
        let cache_after = running.state.service.cache_stats();
        running.state.log.verify().expect("the log verifies after the load");
        running.stop().await.expect("stops");
        let loads = [
            cache_after.hits - cache_before.hits,
            cache_after.partial_hits - cache_before.partial_hits,
            cache_after.misses - cache_before.misses,
            cache_after.events_folded - cache_before.events_folded,
        ];
        let stats = (after.appends - before.appends, after.batches - before.batches, loads);
        (result, stats, cpu, (lags, drained), replica_copy)
    });

    println!("| server | requests/s | p50 | p99 | non-2xx | requests | CPU stolen |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, result) in [
        ("axum JSON echo", &echo_result),
        ("bare group commit: the echo + fdatasync", &bare_result),
        ("shoplog durable commands", &shop_result),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {} | {} |",
            result.requests_per_second,
            result.p50,
            result.p99,
            result.non_2xx,
            result.requests,
            tests::stolen_cell(result.stolen)
        );
    }
    println!();
    println!(
        "shoplog / echo: {:.0} % (target >= 50 %)",
        100.0 * shop_result.requests_per_second / echo_result.requests_per_second
    );
    println!(
        "bare group commit / echo: {:.0} % (DESIGN §8 measured 54 %), {:.1} requests per fsync; shoplog / bare: {:.0} %",
        100.0 * bare_result.requests_per_second / echo_result.requests_per_second,
        bare_result.requests as f64 / bare_fsyncs.max(1) as f64,
        100.0 * shop_result.requests_per_second / bare_result.requests_per_second
    );
    println!(
        "appends {} in {} fsyncs: mean batch {:.1} appends per fsync",
        stats.0,
        stats.1,
        stats.0 as f64 / stats.1.max(1) as f64
    );
    // A partial hit is a stream that changed since the service last saw it
    // (mostly a retry after a version conflict); a miss, one it did not hold.
    let [hits, partial_hits, misses, folded] = stats.2;
    println!(
        "stream loads: {hits} hits, {partial_hits} partial hits, {misses} misses, {folded} events read and folded"
    );
    if nats.is_some() {
        let (during, drained) = &relay_lags;
        let quarter = during.len() / 4;
        let mean = |lags: &[u64]| lags.iter().sum::<u64>() as f64 / lags.len().max(1) as f64;
        println!(
            "relay to NATS: lag behind the head during the load (every 250 ms): max {}, mean {:.0} in the first \
             quarter and {:.0} in the last (growing if the last is far above the first); at the head {} after \
             the load",
            during.iter().max().copied().unwrap_or(0),
            mean(&during[..quarter]),
            mean(&during[during.len() - quarter..]),
            drained.map_or_else(|| "never within 60 s".to_owned(), |drained| format!("{drained:.2?}")),
        );
    }
    if let Some((copied_events, copied, applied)) = replica_copy {
        println!(
            "read replica started empty: {copied_events} events copied from NATS in {copied:.2?} ({:.0} events/s), \
             its read models at the head {}",
            copied_events as f64 / copied.as_secs_f64(),
            applied.map_or_else(|| "never within 120 s".to_owned(), |applied| format!("after {applied:.2?}")),
        );
    }
    // Where this process's CPU went (wrk, a process of its own, shares the cores).
    for (name, result, cpu) in [("bare group commit", &bare_result, &bare_cpu), ("shoplog", &shop_result, &shop_cpu)] {
        println!();
        println!("CPU time of the {name} server, by thread, over {seconds} s of load:");
        print_cpu(cpu, result.requests, "request");
    }
}
