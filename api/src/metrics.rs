//! Prometheus metrics. The recorder is process-wide and installs once (tests build
//! many apps in one process); `/metrics` renders it after refreshing the gauges
//! read from the log.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use (`None` if another recorder
/// was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).as_ref()
}

/// Count every request and time it, by method, matched route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "path" => path.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "path" => path)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The text exposition, with the log's counters and the read models' lag brought
/// up to date.
pub fn render(log: &store::EventLog, projections: &projections::Projections) -> String {
    for status in projections.status() {
        metrics::gauge!("projection_lag_events", "projection" => status.name).set(status.lag as f64);
        metrics::gauge!("projection_checkpoint_position", "projection" => status.name).set(status.checkpoint as f64);
    }
    let stats = log.commit_stats();
    metrics::gauge!("log_head_position").set(log.head() as f64);
    metrics::gauge!("log_committed_appends").set(stats.appends as f64);
    metrics::gauge!("log_committed_events").set(stats.events as f64);
    metrics::gauge!("log_fsync_batches").set(stats.batches as f64);
    let mean_batch = if stats.batches == 0 { 0.0 } else { stats.appends as f64 / stats.batches as f64 };
    metrics::gauge!("log_fsync_batch_appends_mean").set(mean_batch);
    metrics::gauge!("log_checkpoints").set(stats.checkpoints as f64);
    metrics::gauge!("log_accepting_appends").set(if log.failure().is_none() { 1.0 } else { 0.0 });
    handle().map(PrometheusHandle::render).unwrap_or_default()
}
