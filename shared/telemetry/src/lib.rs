//! Observability wiring of a runtime: the two metric exporters and the log
//! subscriber. The metric names live in `crcr_core::metrics`; domain code
//! records through the `metrics` facade and never sees an exporter.
//!
//! One recorder is installed per process:
//!
//! - `crcr serve`: Prometheus text, served at `GET /metrics` by the relay's
//!   own router ([`init_prometheus`], `crcr_http::metrics::prometheus_router`;
//!   feature `prometheus`). metrics-exporter-prometheus is built without its
//!   HTTP listener and push gateway.
//! - Lambda: CloudWatch Embedded Metric Format (EMF) documents on stdout,
//!   flushed once per invocation ([`init_emf`], [`flush_emf`],
//!   `crcr_http::metrics::flush_emf_after_each_request`), through
//!   `metrics_cloudwatch_embedded` (see `crcr_core::metrics` for the
//!   dimensions the alarms read).

use std::sync::OnceLock;

use crcr_core::metrics::*;

/// Registers units and help texts with the installed recorder (Prometheus
/// `# HELP` lines; EMF `Unit`s, "MetricDatum", CloudWatch API reference).
fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(WEBHOOKS, Unit::Count, "Webhook deliveries answered by ingest, by event and outcome");
    metrics::describe_counter!(
        WEBHOOK_SECRET_MATCHES,
        Unit::Count,
        "Verified webhook deliveries by the index of the secret that signed them"
    );
    metrics::describe_histogram!(INGEST_LATENCY, Unit::Seconds, "Time to answer a webhook delivery");
    metrics::describe_counter!(DISPATCHES, Unit::Count, "Dispatch targets handled per receive, by outcome");
    metrics::describe_counter!(DISPATCH_RETRIES, Unit::Count, "repository_dispatch calls retried within a receive");
    metrics::describe_counter!(
        DISPATCH_BUDGET_WAITS,
        Unit::Count,
        "Dispatches that waited for GitHub's budget of their target installation"
    );
    metrics::describe_counter!(
        TARGET_BREAKERS_OPENED,
        Unit::Count,
        "Target breakers opened: a repository's dispatches failed for good and are paused"
    );
    metrics::describe_gauge!(
        TARGET_BREAKER_OPEN,
        Unit::Count,
        "1 while a target's breaker is open (its dispatches paused), by target"
    );
    metrics::describe_gauge!(
        GITHUB_RATE_LIMIT_REMAINING,
        Unit::Count,
        "Requests left in the primary rate-limit window of the identity nearest its limit"
    );
    metrics::describe_gauge!(
        GITHUB_RATE_LIMIT_LEFT,
        Unit::Count,
        "Requests left in an identity's primary rate-limit window, by identity"
    );
    metrics::describe_counter!(
        GITHUB_REQUESTS_DEFERRED,
        Unit::Count,
        "GitHub requests not sent: their identity's primary limit is kept for higher priorities, by priority"
    );
    metrics::describe_counter!(
        GITHUB_IN_FLIGHT_WAITS,
        Unit::Count,
        "GitHub requests that waited for an in-flight slot, by priority"
    );
    metrics::describe_counter!(DLQ_SENDS, Unit::Count, "Messages sent to a dead-letter queue, by queue");
    metrics::describe_counter!(CALLBACKS_ACCEPTED, Unit::Count, "Callbacks accepted, by status");
    metrics::describe_counter!(CALLBACK_REJECTIONS, Unit::Count, "Callbacks refused, by reason");
    metrics::describe_counter!(CALLBACKS_IGNORED, Unit::Count, "Callbacks of L1 or unlisted repositories ignored");
    metrics::describe_counter!(HUD_SYNC, Unit::Count, "HUD outbox items tried, by result");
    metrics::describe_gauge!(HUD_OUTBOX_BACKLOG, Unit::Count, "HUD outbox items pending");
    metrics::describe_gauge!(HUD_OUTBOX_LAG, Unit::Seconds, "Age of the oldest pending HUD outbox item");
    metrics::describe_gauge!(HUD_OUTBOX_FAILED, Unit::Count, "HUD outbox items parked as failed (crcr hud retry)");
    metrics::describe_gauge!(NEVER_STARTED_DISPATCHES, Unit::Count, "Dispatches with no callback after the deadline");
    metrics::describe_gauge!(ALLOWLIST_LOADED, Unit::Seconds, "When the allowlist version was loaded (epoch s)");
    metrics::describe_counter!(CHECK_RUN_SYNC, Unit::Count, "Upstream check-run items tried, by result");
    metrics::describe_counter!(UPSTREAM_EVENTS, Unit::Count, "Upstream events applied by the reconciler, by outcome");
    metrics::describe_counter!(RUN_REQUESTS, Unit::Count, "Downstream re-run / cancel requests, by kind and result");
    metrics::describe_counter!(
        ALLOWLIST_RENAMED_REPOS,
        Unit::Count,
        "Installation lookups of allowlisted repositories GitHub redirected (renamed or transferred)"
    );
}

/// Metric exporter set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another recorder was installed first in this process.
    #[error("a metrics recorder is already installed in this process: {0}")]
    AlreadyInstalled(String),
    /// A bad exporter setting.
    #[error("metrics exporter: {0}")]
    Exporter(String),
}

// ---------------------------------------------------------------- Prometheus (crcr serve)

#[cfg(feature = "prometheus")]
static PROMETHEUS: OnceLock<Result<metrics_exporter_prometheus::PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as this process's recorder, once; later
/// calls return the same handle. The handle's `render()` is the Prometheus
/// text exposition format. Histograms are drained into their buckets every
/// 5 s by a background thread (and at each render), so memory stays bounded
/// when nobody scrapes.
///
/// Errors: [`MetricsError::AlreadyInstalled`] when another recorder was
/// installed first (then metrics are not exported).
#[cfg(feature = "prometheus")]
pub fn init_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, MetricsError> {
    PROMETHEUS
        .get_or_init(|| {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(INGEST_LATENCY.to_owned()), INGEST_LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("crcr-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
        .map_err(MetricsError::AlreadyInstalled)
}

// ---------------------------------------------------------------- CloudWatch EMF (Lambda)

/// The CloudWatch namespace setting and its default (infra variable
/// `metrics_namespace`, default `crcr`).
pub const NAMESPACE_ENV: &str = "CRCR_METRICS_NAMESPACE";
pub const DEFAULT_NAMESPACE: &str = "crcr";

static EMF: OnceLock<&'static metrics_cloudwatch_embedded::Collector> = OnceLock::new();

/// Installs the EMF collector as this process's recorder with CloudWatch
/// namespace `namespace`, no default dimensions, and zero counter deltas
/// left out of each flush. Once per process: a second call returns the
/// collector of the first (with its namespace).
///
/// Errors: [`MetricsError::AlreadyInstalled`] when another recorder was
/// installed first; [`MetricsError::Exporter`] for an empty namespace.
pub fn init_emf(namespace: &str) -> Result<&'static metrics_cloudwatch_embedded::Collector, MetricsError> {
    if let Some(c) = EMF.get() {
        return Ok(c);
    }
    if namespace.trim().is_empty() {
        return Err(MetricsError::Exporter(format!("{NAMESPACE_ENV} must not be empty")));
    }
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(namespace.to_owned())
        .init()
        .map_err(|e| MetricsError::AlreadyInstalled(e.to_string()))?;
    let collector = *EMF.get_or_init(|| collector);
    describe();
    Ok(collector)
}

/// [`init_emf`] with the namespace from `CRCR_METRICS_NAMESPACE` (default
/// `crcr`); a failure is logged, not fatal (the function runs without
/// custom metrics). What each Lambda `main` calls once at start-up.
pub fn init_emf_from_env() {
    let namespace = std::env::var(NAMESPACE_ENV).unwrap_or_else(|_| DEFAULT_NAMESPACE.to_owned());
    if let Err(e) = init_emf(&namespace) {
        tracing::error!(error = %e, "CloudWatch EMF metrics disabled");
    }
}

/// Writes the metrics recorded since the last flush to `out` as EMF
/// documents, one JSON object per line (one per label set; counters as the
/// delta since the last flush, gauges as their last value, histograms as
/// the array of values recorded, at most 100 per flush, the EMF limit).
/// Does nothing before [`init_emf`].
pub fn flush_emf_to(out: impl std::io::Write) -> std::io::Result<()> {
    match EMF.get() {
        Some(c) => c.flush(out),
        None => Ok(()),
    }
}

/// [`flush_emf_to`] stdout, where Lambda sends lines to CloudWatch Logs,
/// which extracts the metrics. Call once at the end of each invocation
/// (before the answer: a frozen or timed-out function flushes nothing,
/// "Using the embedded metric format with Lambda"). A write error is logged.
pub fn flush_emf() {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    if let Err(e) = flush_emf_to(&mut lock).and_then(|()| std::io::Write::flush(&mut lock)) {
        tracing::error!(error = %e, "could not write EMF metrics to stdout");
    }
}

// ---------------------------------------------------------------- logs

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing-subscriber's default format).
    Text,
    /// One JSON object per line: the event's fields at the top level, plus
    /// `span` (the innermost span's fields) and `spans` (every enclosing
    /// span, outermost first), so a line of a delivery's processing carries
    /// its `delivery_id`, `event`, `repo` and `attempt` from its spans.
    Json,
}

impl LogFormat {
    /// `CRCR_LOG_FORMAT`: `json` → [`LogFormat::Json`], anything else (or
    /// unset) → [`LogFormat::Text`].
    pub fn from_env() -> Self {
        match std::env::var("CRCR_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Installs the process's log subscriber (`crcr` commands): filter from
/// `CRCR_LOG` (tracing `EnvFilter` syntax) or `default_filter`, lines in
/// `format` to `writer`. Returns `false` when a subscriber was already
/// installed (this one is then dropped). Secrets never reach the lines:
/// configuration types redact them in `Debug`, and tokens are never logged.
pub fn init_logs<W>(default_filter: &str, format: LogFormat, writer: W) -> bool
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRCR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init().is_ok()
        }
        LogFormat::Text => builder.try_init().is_ok(),
    }
}
