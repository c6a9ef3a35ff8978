//! Logs and metrics: the tracing subscriber (text or JSON), the Prometheus recorder and the
//! names of every metric, so that dashboards have one place to look.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// Metric names. Seconds and totals follow Prometheus naming conventions.
pub mod metric {
    /// Rows admitted and not yet taken by a model thread (gauge).
    pub const QUEUE_ROWS: &str = "glassbox_queue_rows";
    /// Forward passes run (counter); compare with requests to see batching at work.
    pub const BATCHES: &str = "glassbox_batches_total";
    /// Rows per forward pass (histogram).
    pub const BATCH_ROWS: &str = "glassbox_batch_rows";
    /// Padded tokens (`rows x longest row`) per forward pass (histogram).
    pub const BATCH_TOKENS: &str = "glassbox_batch_tokens";
    /// Time a job spent not in the model: admission, queue, other jobs' batches (histogram).
    pub const QUEUE_SECONDS: &str = "glassbox_queue_seconds";
    /// Wall time of one forward pass (histogram).
    pub const INFERENCE_SECONDS: &str = "glassbox_inference_seconds";
    /// Rows answered from the row cache (counter).
    pub const CACHE_HITS: &str = "glassbox_cache_hits_total";
    /// Queued rows never run because their job was cancelled, timed out or failed (counter).
    pub const DROPPED_ROWS: &str = "glassbox_dropped_rows_total";
    /// Forward passes that failed or panicked (counter).
    pub const FAILED_BATCHES: &str = "glassbox_failed_batches_total";
    /// Jobs (`/jobs`) queued or running (gauge).
    pub const JOBS_LIVE: &str = "glassbox_jobs_live";
    /// Jobs finished, by final `state`: `done`, `failed` or `cancelled` (counter).
    pub const JOBS_FINISHED: &str = "glassbox_jobs_finished_total";
    /// Model-thread loops restarted after a panic outside any batch (counter; should stay 0).
    pub const WORKER_RESTARTS: &str = "glassbox_worker_restarts_total";
    /// HTTP requests by `route` and `status` (counter).
    pub const HTTP_REQUESTS: &str = "glassbox_http_requests_total";
    /// HTTP request latency by `route` and `status` (histogram).
    pub const HTTP_SECONDS: &str = "glassbox_http_request_duration_seconds";
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Parses a log filter (`info`, `glassbox=debug,tower_http=info`).
pub fn log_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("{e}"))
}

/// Installs the global tracing subscriber. Logs go to stderr so that stdout stays clean for
/// the output of commands (`glassbox openapi`, `glassbox predict`).
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    // Colour codes only for a terminal: in files and collectors they are noise.
    let ansi = std::io::stderr().is_terminal();
    init_logging_to(format, level, std::io::stderr, ansi)
}

/// [`init_logging`] with another destination: the privacy test captures the service's real
/// log lines this way.
pub fn init_logging_to<W>(
    format: LogFormat,
    level: &str,
    writer: W,
    ansi: bool,
) -> Result<(), String>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = log_filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// `metrics` allows one global recorder per process; tests build many apps in one process,
/// so every caller shares this one. If some other recorder was installed first, the handle
/// still renders (an empty page) rather than failing the start.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(install_recorder).clone()
}

fn install_recorder() -> PrometheusHandle {
    const SECONDS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    const ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    const TOKENS: &[f64] = &[
        16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(metric::BATCH_ROWS.into()), ROWS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(metric::BATCH_TOKENS.into()), TOKENS))
        .expect("bucket lists are constant and non-empty");
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("another metrics recorder is installed; /metrics will be empty");
    }
    describe_metrics();
    // Histograms are drained into their buckets on upkeep; without a scrape for a long time
    // they would grow, so a small thread keeps them tidy.
    let upkeep = handle.clone();
    let _ = std::thread::Builder::new()
        .name("glassbox-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        });
    handle
}

fn describe_metrics() {
    describe_gauge!(
        metric::QUEUE_ROWS,
        Unit::Count,
        "Rows admitted and waiting for a model thread"
    );
    describe_counter!(metric::BATCHES, Unit::Count, "Forward passes run");
    describe_histogram!(metric::BATCH_ROWS, Unit::Count, "Rows per forward pass");
    describe_histogram!(
        metric::BATCH_TOKENS,
        Unit::Count,
        "Padded tokens per forward pass"
    );
    describe_histogram!(
        metric::QUEUE_SECONDS,
        Unit::Seconds,
        "Time a job waited outside the model"
    );
    describe_histogram!(
        metric::INFERENCE_SECONDS,
        Unit::Seconds,
        "Wall time of one forward pass"
    );
    describe_counter!(
        metric::CACHE_HITS,
        Unit::Count,
        "Rows answered from the row cache"
    );
    describe_counter!(
        metric::DROPPED_ROWS,
        Unit::Count,
        "Queued rows dropped before running"
    );
    describe_counter!(
        metric::FAILED_BATCHES,
        Unit::Count,
        "Forward passes that failed or panicked"
    );
    describe_counter!(
        metric::WORKER_RESTARTS,
        Unit::Count,
        "Model-thread loops restarted after a panic outside any batch"
    );
    describe_counter!(
        metric::HTTP_REQUESTS,
        Unit::Count,
        "HTTP requests by route and status"
    );
    describe_histogram!(
        metric::HTTP_SECONDS,
        Unit::Seconds,
        "HTTP request latency by route and status"
    );
}
