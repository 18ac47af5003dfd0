//! Prometheus metrics. The gauges read from the log and the read models go
//! through the `metrics` crate's recorder, which is process-wide and installs
//! once (tests build many apps in one process); `/metrics` renders it after
//! refreshing them.
//!
//! The request series (`http_requests_total`, `http_request_duration_seconds`)
//! are counted here, with atomics, on every request. Through the `metrics`
//! macros each request built its label set, looked the series up by it in the
//! recorder's registry, and pushed its duration into a bucket that keeps every
//! sample until the next scrape: about 5 µs of a request's CPU
//! (docs/BENCHMARKS.md). Here a request takes a read lock, finds its route by
//! path and method, and adds to three atomics. The duration is a histogram
//! with fixed buckets ([`DURATION_BUCKETS`]), which Prometheus can aggregate
//! across servers, where the recorder's default was a summary. A command's
//! latency, from its request to its durable answer, is this histogram's series
//! of the command's route (`method="POST"`); the log's gauges give the appends,
//! the fsyncs and the mean appends per fsync.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The request series of the process (process-wide, like the recorder).
static REQUESTS: LazyLock<Requests> = LazyLock::new(Requests::default);

/// The process's recorder, installed on first use (`None` if another recorder
/// was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).as_ref()
}

/// What a request is counted under: its method and matched route.
pub(crate) struct RequestLabels {
    method: &'static str,
    path: Option<MatchedPath>,
}

impl RequestLabels {
    pub(crate) fn of(request: &Request) -> Self {
        RequestLabels {
            method: method_label(request.method()),
            path: request.extensions().get::<MatchedPath>().cloned(),
        }
    }

    /// Count the request, answered with `status` after `duration`.
    pub(crate) fn count(&self, status: StatusCode, duration: Duration) {
        let path = self.path.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        REQUESTS.record(self.method, path, status.as_u16(), duration);
    }
}

/// The text exposition, with the log's counters and the read models' lag brought
/// up to date.
pub fn render(
    log: &store::EventLog,
    projections: &projections::Projections,
    service: &commands::CommandService,
    relay: Option<commands::RelayStatus>,
    replica: Option<crate::replica::FeedStatus>,
) -> String {
    for status in projections.status() {
        metrics::gauge!("projection_lag_events", "projection" => status.name).set(status.lag as f64);
        metrics::gauge!("projection_checkpoint_position", "projection" => status.name).set(status.checkpoint as f64);
    }
    if let Some(relay) = relay {
        // Lag that grows while `relay_up` is 0: NATS is down or refusing.
        metrics::gauge!("relay_lag_events").set(relay.lag as f64);
        metrics::gauge!("relay_checkpoint_position").set(relay.checkpoint as f64);
        metrics::counter!("relay_published_total").absolute(relay.published);
        metrics::gauge!("relay_up").set(if relay.failure.is_none() { 1.0 } else { 0.0 });
    }
    if let Some(replica) = replica {
        // Lag that grows while `replica_up` is 0: NATS is down, or a gap waits
        // for the primary.
        metrics::gauge!("replica_lag_events").set(replica.lag as f64);
        metrics::gauge!("replica_position").set(replica.position as f64);
        metrics::counter!("replica_filled_total").absolute(replica.filled);
        metrics::gauge!("replica_up").set(if replica.failure.is_none() { 1.0 } else { 0.0 });
    }
    let stats = log.commit_stats();
    metrics::gauge!("log_head_position").set(log.head() as f64);
    // Counters since the process started: `rate(log_committed_appends_total[1m]) /
    // rate(log_fsync_batches_total[1m])` is the batch size per fsync now.
    metrics::counter!("log_committed_appends_total").absolute(stats.appends);
    metrics::counter!("log_committed_events_total").absolute(stats.events);
    metrics::counter!("log_fsync_batches_total").absolute(stats.batches);
    let mean_batch = if stats.batches == 0 { 0.0 } else { stats.appends as f64 / stats.batches as f64 };
    metrics::gauge!("log_fsync_batch_appends_mean").set(mean_batch);
    metrics::counter!("log_checkpoints_total").absolute(stats.checkpoints);
    metrics::gauge!("log_accepting_appends").set(if log.failure().is_none() { 1.0 } else { 0.0 });
    // Each is tens of milliseconds of a core: a jump is a sign-up or a
    // password-guessing flood.
    let passwords = service.password_stats();
    metrics::counter!("password_hashes_total").absolute(passwords.hashes);
    metrics::counter!("password_verifications_total").absolute(passwords.verifications);
    let mut text = handle().map(PrometheusHandle::render).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    REQUESTS.render_into(&mut text);
    text
}

/// The method label: one of HTTP's nine methods, or `OTHER` for an extension
/// method (any token is one, so a client could otherwise make a series a request).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    KNOWN.iter().find(|(known, _)| known == method).map_or("OTHER", |(_, label)| label)
}

/// The path label of a request no route matched (one label, however many paths).
const UNMATCHED: &str = "unmatched";

/// The upper bounds of the request duration histogram's buckets, in seconds
/// (a last bucket, `+Inf`, holds every request).
const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The lowest and highest status code counted by its own number (an HTTP status
/// is 100 to 999; one past 599 is counted as 599).
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;

/// The request series: by path, then by method label (a path has a few).
#[derive(Default)]
struct Requests {
    routes: RwLock<Routes>,
}

type Routes = HashMap<Box<str>, Vec<(&'static str, Arc<Route>)>>;

/// One route's (path and method's) counters.
struct Route {
    /// Requests by status code, from [`STATUS_MIN`].
    statuses: Box<[AtomicU64]>,
    /// Requests by the first bucket of [`DURATION_BUCKETS`] they fit in (the
    /// last: past every bound). Not cumulative: the exposition adds them up.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_nanos: AtomicU64,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            statuses: (STATUS_MIN..=STATUS_MAX).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            duration_nanos: AtomicU64::new(0),
        }
    }
}

impl Requests {
    fn record(&self, method: &'static str, path: &str, status: u16, duration: Duration) {
        let route = self.route(method, path);
        let status = status.clamp(STATUS_MIN, STATUS_MAX);
        route.statuses[usize::from(status - STATUS_MIN)].fetch_add(1, Ordering::Relaxed);
        let seconds = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(DURATION_BUCKETS.len());
        route.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        route.duration_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn route(&self, method: &'static str, path: &str) -> Arc<Route> {
        let find = |routes: &Routes| {
            let methods = routes.get(path)?;
            methods.iter().find(|(known, _)| *known == method).map(|(_, route)| Arc::clone(route))
        };
        if let Some(route) = find(&self.routes.read().unwrap_or_else(PoisonError::into_inner)) {
            return route;
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(route) = find(&routes) {
            return route;
        }
        let route = Arc::new(Route::default());
        routes.entry(path.into()).or_default().push((method, Arc::clone(&route)));
        route
    }

    /// Append the two series in Prometheus' text format, routes in order.
    fn render_into(&self, text: &mut String) {
        let mut routes: Vec<(String, String, Arc<Route>)> = {
            let all = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            all.iter()
                .flat_map(|(path, methods)| {
                    methods.iter().map(|(method, route)| (escape(path), (*method).to_owned(), Arc::clone(route)))
                })
                .collect()
        };
        routes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        if routes.is_empty() {
            return;
        }
        // `write!` to a String cannot fail.
        text.push_str("# TYPE http_requests_total counter\n");
        for (path, method, route) in &routes {
            for (status, count) in (STATUS_MIN..).zip(route.statuses.iter()) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        text,
                        "http_requests_total{{method=\"{method}\",path=\"{path}\",status=\"{status}\"}} {count}"
                    );
                }
            }
        }
        text.push_str("\n# TYPE http_request_duration_seconds histogram\n");
        for (path, method, route) in &routes {
            let labels = format!("method=\"{method}\",path=\"{path}\"");
            let mut cumulative = 0;
            for (index, count) in route.buckets.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                match DURATION_BUCKETS.get(index) {
                    Some(bound) => {
                        let _ = writeln!(
                            text,
                            "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                        );
                    }
                    None => {
                        let _ =
                            writeln!(text, "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                    }
                }
            }
            let seconds = route.duration_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(text, "http_request_duration_seconds_sum{{{labels}}} {seconds}");
            let _ = writeln!(text, "http_request_duration_seconds_count{{{labels}}} {cumulative}");
        }
        text.push('\n');
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status_and_timed_in_cumulative_buckets() {
        let requests = Requests::default();
        requests.record("POST", "/api/v1/products", 201, Duration::from_micros(300));
        requests.record("POST", "/api/v1/products", 201, Duration::from_millis(3));
        requests.record("POST", "/api/v1/products", 422, Duration::from_secs(20));
        requests.record("GET", "/api/v1/products", 200, Duration::from_millis(1));
        requests.record("GET", UNMATCHED, 404, Duration::from_micros(10));
        requests.record("GET", "/odd \"path\"", 1000, Duration::ZERO);

        let mut text = String::new();
        requests.render_into(&mut text);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            r#"http_requests_total{method="POST",path="/api/v1/products",status="201"} 2"#,
            r#"http_requests_total{method="POST",path="/api/v1/products",status="422"} 1"#,
            r#"http_requests_total{method="GET",path="/api/v1/products",status="200"} 1"#,
            r#"http_requests_total{method="GET",path="unmatched",status="404"} 1"#,
            r#"http_requests_total{method="GET",path="/odd \"path\"",status="599"} 1"#,
            // 300 µs in the first bucket; 3 ms from the 5 ms bucket on; 20 s only in +Inf.
            r#"http_request_duration_seconds_bucket{method="POST",path="/api/v1/products",le="0.0005"} 1"#,
            r#"http_request_duration_seconds_bucket{method="POST",path="/api/v1/products",le="0.0025"} 1"#,
            r#"http_request_duration_seconds_bucket{method="POST",path="/api/v1/products",le="0.005"} 2"#,
            r#"http_request_duration_seconds_bucket{method="POST",path="/api/v1/products",le="10"} 2"#,
            r#"http_request_duration_seconds_bucket{method="POST",path="/api/v1/products",le="+Inf"} 3"#,
            r#"http_request_duration_seconds_sum{method="POST",path="/api/v1/products"} 20.0033"#,
            r#"http_request_duration_seconds_count{method="POST",path="/api/v1/products"} 3"#,
            r#"http_request_duration_seconds_bucket{method="GET",path="/api/v1/products",le="0.001"} 1"#,
            r#"http_request_duration_seconds_count{method="GET",path="unmatched"} 1"#,
        ] {
            assert!(lines.contains(&expected), "missing {expected} in:\n{text}");
        }
        assert_eq!(lines.iter().filter(|line| line.starts_with("# TYPE")).count(), 2, "{text}");
        assert_eq!(lines.iter().filter(|line| line.starts_with("http_requests_total")).count(), 5, "{text}");
        let first_get = lines.iter().position(|line| line.contains(r#"method="GET",path="/api/v1/products""#));
        let first_post = lines.iter().position(|line| line.contains(r#"method="POST",path="/api/v1/products""#));
        assert!(first_get < first_post, "routes in order of path, then method:\n{text}");
    }

    #[test]
    fn an_extension_method_is_counted_as_other() {
        for method in ["GET", "POST", "DELETE", "PATCH", "OPTIONS"] {
            assert_eq!(method_label(&Method::from_bytes(method.as_bytes()).expect("a method")), method);
        }
        for method in ["FOO", "PROPFIND", "get"] {
            assert_eq!(method_label(&Method::from_bytes(method.as_bytes()).expect("a method token")), "OTHER");
        }
    }

    #[test]
    fn no_request_renders_nothing() {
        let mut text = String::new();
        Requests::default().render_into(&mut text);
        assert_eq!(text, "");
    }
}
