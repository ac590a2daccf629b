//! The relay's metric names. The exporters and the log subscriber are
//! installed by each runtime through `crcr_telemetry`.
//!
//! Domain code records through the [`metrics`] facade
//! (`metrics::counter!(metrics::WEBHOOKS, "event" => e, "outcome" => o)`),
//! never through an exporter. One recorder is installed per process:
//!
//! - `crcr serve`: Prometheus text, served at `GET /metrics` by the relay's
//!   own router (`crcr_telemetry::init_prometheus`, `crcr_http::metrics::prometheus_router`; feature
//!   `prometheus`). metrics-exporter-prometheus is built without its HTTP
//!   listener and push gateway.
//! - Lambda: CloudWatch Embedded Metric Format (EMF) documents on stdout,
//!   flushed once per invocation (`crcr_telemetry::init_emf`, `crcr_telemetry::flush_emf`,
//!   `crcr_http::metrics::flush_emf_after_each_request`), through `metrics_cloudwatch_embedded`.
//!   Namespace `crcr` unless `CRCR_METRICS_NAMESPACE` says otherwise. A
//!   metric's labels become its EMF dimensions (one EMF document per label
//!   set, "Specification: Embedded metric format", CloudWatch user guide);
//!   a metric without labels is emitted with an empty dimension set
//!   (`"Dimensions": [[]]`, which the specification allows), which is what
//!   the alarms of `infra/modules/crcr/alarms.tf` read for
//!   [`HUD_OUTBOX_BACKLOG`], [`HUD_OUTBOX_FAILED`], [`NEVER_STARTED_DISPATCHES`],
//!   [`REDELIVER_INCOMPLETE`], [`TARGET_BREAKERS_OPENED`] and [`GITHUB_RATE_LIMIT_REMAINING`] (`custom_metric_dimensions` = `{}`).
//!
//! Names are the same in both exporters (CloudWatch style, as the alarms
//! name them). Label values are always from small fixed sets (never a
//! repository, delivery id or anything a caller sends unverified), so the
//! number of series and of CloudWatch custom metrics stays bounded.

// ---------------------------------------------------------------- names

/// Counter: webhook deliveries answered by ingest (`POST /github/webhook`).
/// Labels: `event` (`X-GitHub-Event` of a verified delivery; `unknown` when
/// the delivery was refused before its headers could be trusted) and
/// `outcome`: `enqueued` (202), `ignored` (200: ping, other repository, event
/// not acted on), `bad_signature` (401), `bad_request` (400), `unavailable`
/// (503: queue or claim-check store down). Bodies over the size limit are
/// refused (413) before the handler runs and are not counted.
pub const WEBHOOKS: &str = "Webhooks";

/// Counter: verified webhook deliveries by which configured webhook secret
/// signed them. Label `secret`: the secret's index in the configured list
/// (`"0"` the first of `CRCR_WEBHOOK_SECRETS` / the only one, `"1"` the
/// second), never the secret. During a rotation (docs/RUNBOOK.md "Rotating
/// the webhook secret") `secret="0"` falling to zero while `secret="1"`
/// takes over says the old secret is no longer in use.
pub const WEBHOOK_SECRET_MATCHES: &str = "WebhookSecretMatches";

/// The [`WEBHOOK_SECRET_MATCHES`] label value of the secret at `index`:
/// `"0"`, `"1"`, `"2"`, `"3"`, or `"other"` past that (the configuration
/// accepts at most two, so label values stay a small fixed set).
pub fn secret_index_label(index: usize) -> &'static str {
    ["0", "1", "2", "3"].get(index).copied().unwrap_or("other")
}

/// Histogram, seconds: time from a webhook request reaching the ingest
/// handler to its answer (verification, classification, claim check and the
/// durable enqueue). Label `outcome` as in [`WEBHOOKS`]. Prometheus buckets:
/// [`INGEST_LATENCY_BUCKETS`].
pub const INGEST_LATENCY: &str = "IngestLatency";

/// Bucket bounds (seconds) of [`INGEST_LATENCY`] in Prometheus: 1 ms to 10 s
/// (GitHub gives up on a delivery after 10 s, "Troubleshooting webhooks").
pub const INGEST_LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counter: targets handled by the dispatcher, one per (target, receive of
/// the message). Label `outcome`: `dispatched` (GitHub answered 204),
/// `already_dispatched` / `already_failed` (an earlier attempt settled it;
/// nothing sent), `not_installed` (404 from the installation lookup),
/// `failed` (permanent: 404/422 from the dispatch, payload refused),
/// `retry` (still failing transiently at the end of the receive; the message
/// comes back).
pub const DISPATCHES: &str = "Dispatches";

/// Counter: `repository_dispatch` calls made again after a transient failure
/// (5xx, timeout, 401, 403/429 rate limit) within one receive, i.e. the
/// backoff waits of the dispatcher. No labels.
pub const DISPATCH_RETRIES: &str = "DispatchRetries";

/// Counter: waits of a dispatch for GitHub's budget of its target
/// installation within a receive ([`crate::budget`]); a dispatch that
/// could not wait long enough is counted in [`DISPATCHES`] as
/// `outcome="paced"` and its message postponed. No labels.
pub const DISPATCH_BUDGET_WAITS: &str = "DispatchBudgetWaits";

/// Counter: target breakers the relay opened ([`crate::breaker`]): a
/// repository's dispatches failed for good so often that they are paused
/// (alarm `<prefix>-target-breaker-opened`). No labels (the repository is
/// in the log line `metric=target_breaker_opened` and `crcr target list`).
pub const TARGET_BREAKERS_OPENED: &str = "TargetBreakersOpened";

/// Gauge: 1 while a target's breaker is open (its dispatches paused), 0
/// while closed, as the dispatcher last read it (at each dispatch to the
/// target, [`crate::breaker::Breakers::admit`]; cached up to 10 s). Label
/// `target`: the repository.
pub const TARGET_BREAKER_OPEN: &str = "TargetBreakerOpen";

/// Gauge: requests left in the primary rate-limit window of the identity
/// (the App, or one installation) nearest its limit, from GitHub's
/// `x-ratelimit-remaining` less what was sent since ("Rate limits for the
/// REST API", GitHub docs; [`crate::rate_limit`]). No labels (alarm
/// `github-rate-limit-low`).
pub const GITHUB_RATE_LIMIT_REMAINING: &str = "GitHubRateLimitRemaining";

/// Gauge: requests left in one identity's primary rate-limit window, as
/// [`GITHUB_RATE_LIMIT_REMAINING`]. Label `identity`: `app` or
/// `installation:<id>` (one series per installation the relay calls with).
pub const GITHUB_RATE_LIMIT_LEFT: &str = "GitHubRateLimitLeft";

/// Counter: GitHub requests not sent because their identity's primary
/// rate limit has no more left for their priority until its reset
/// ([`crate::rate_limit::RequestPriority::reserve_percent`]); the work is
/// postponed (dispatches), kept pending (check runs) or retried later.
/// Label `priority`: `dispatch`, `check_run`, `rerun`, `redelivery`.
pub const GITHUB_REQUESTS_DEFERRED: &str = "GitHubRequestsDeferred";

/// Counter: GitHub requests that waited for one of the process's in-flight
/// slots (`CRCR_GITHUB_MAX_IN_FLIGHT`; freed slots go to the highest
/// priority first). Label `priority`, as [`GITHUB_REQUESTS_DEFERRED`].
pub const GITHUB_IN_FLIGHT_WAITS: &str = "GitHubInFlightWaits";

/// Counter: messages the relay itself sent to a dead-letter queue (with a
/// reason). Label `queue`: `dispatch` or `reconcile`. Messages moved by SQS's
/// own redrive policy (a consumer that crashed on them) are not counted
/// here; see the `dlq-not-empty` alarms.
pub const DLQ_SENDS: &str = "DlqSends";

/// Counter: callbacks accepted (202) at `POST /github/callback` and enqueued
/// for the reconciler. Label `status`: `in_progress` or `completed`.
pub const CALLBACKS_ACCEPTED: &str = "CallbacksAccepted";

/// Counter: callbacks refused. Label `reason`: the refusal's stable code,
/// e.g. `expired`, `bad_signature`, `replay`, `wrong_audience` (401),
/// `identity_not_allowed`, `repository_id_mismatch` (403), `rate_limited`
/// (429), `bad_body` (400), `lifecycle` (409 at request time, or a lifecycle
/// violation found by the reconciler), `unknown_commit` (a nightly/periodic
/// callback for a commit the upstream does not have: 422 at request time, or
/// found by the reconciler when GitHub could not answer then), `queue_unavailable` /
/// `store_unavailable` / `allowlist_unavailable` (503).
pub const CALLBACK_REJECTIONS: &str = "CallbackRejections";

/// Counter: callbacks with a valid token answered 200 `{"ok": true,
/// "status": "ignored"}` and not enqueued, as the Python relay answers them
/// (`_verify_access` / `handle` in pytorch/test-infra
/// `aws/lambda/cross_repo_ci_relay/callback/callback_handler.py`), so the
/// downstream CI step stays green. Label `reason`: `not_allowlisted` (the
/// verified repository is not in the allowlist) or `level` (it is L1).
pub const CALLBACKS_IGNORED: &str = "CallbacksIgnored";

/// Counter: HUD outbox items sent to HUD by a sync pass, by `result`:
/// `sent` (2xx, final), `rejected` (4xx, final, kept with HUD's answer),
/// `failed` (5xx, timeout, no HUD configured: stays pending, tried again
/// after its backoff), `parked` (failed past the attempt or age limit:
/// parked as failed until `crcr hud retry`; see [`HUD_OUTBOX_FAILED`]).
pub const HUD_SYNC: &str = "HudSync";

/// Gauge: HUD outbox items parked as failed (HUD kept refusing them with
/// 5xx or gave no answer past `CRCR_HUD_MAX_ATTEMPTS` /
/// `CRCR_HUD_MAX_AGE_SECS`), after the last sync pass. No labels (alarm
/// `hud-outbox-failed`, threshold 0). `crcr hud retry` sends them again.
pub const HUD_OUTBOX_FAILED: &str = "HudOutboxFailed";

/// Gauge: HUD outbox items still pending after the last sync pass. No labels
/// (alarm `hud-outbox-backlog`).
pub const HUD_OUTBOX_BACKLOG: &str = "HudOutboxBacklog";

/// Gauge, seconds: age of the oldest pending HUD outbox item after the last
/// sync pass (0 when none is pending): how far behind HUD is.
pub const HUD_OUTBOX_LAG: &str = "HudOutboxLag";

/// Gauge: dispatched targets of L2+ repositories with no callback after the
/// deadline (default 1 h), as found by the last sweep. No labels (alarm
/// `never-started-dispatches`, which sums it over 15 minutes with threshold 0).
pub const NEVER_STARTED_DISPATCHES: &str = "NeverStartedDispatches";

/// Gauge, seconds since the Unix epoch: when this process loaded the
/// allowlist version named by label `version` (its content hash, as in the
/// `allowlist loaded version=...` log line and `crcr status`). The series
/// with the newest time is the version in use.
pub const ALLOWLIST_LOADED: &str = "AllowlistLoaded";

/// Counter: upstream check-run items sent to GitHub by a sync pass, by
/// `result`: `created`, `updated` (2xx), `rejected` (4xx, final, kept with
/// GitHub's answer), `failed` (5xx, rate limit: pending for the next pass),
/// `deferred` (not sent: GitHub's limits allow no more writes yet,
/// [`crate::checks::CheckRunPace`]).
pub const CHECK_RUN_SYNC: &str = "CheckRunSync";

/// Counter: upstream events applied by the reconciler (`crate::upstream`),
/// by `event` (`pull_request.labeled`, `pull_request.synchronize`,
/// `pull_request.closed`, `check_run.rerequested`, `check_suite.rerequested`)
/// and `outcome`: `applied`, `ignored` (nothing of the relay's concerned),
/// `retry` (store or GitHub unavailable: received again).
pub const UPSTREAM_EVENTS: &str = "UpstreamEvents";

/// Counter: downstream workflow-run requests (`crate::runs`), by `kind`
/// (`rerun-failed-jobs`, `rerun`, `cancel`) and `result`: `accepted`,
/// `already_running`, `already_completed`, `refused` (4xx, logged, not
/// retried), `failed` (5xx: the event is received again).
pub const RUN_REQUESTS: &str = "RunRequests";

/// Counter, no labels (one series, whatever the repository): installation
/// lookups of an allowlisted repository that GitHub answered with a
/// redirect because the repository was renamed or transferred; the relay
/// followed it and dispatches to the new name, and the allowlist should be
/// updated (the `allowlisted repository was renamed or transferred` warning
/// names the old and the new name). GitHub docs, "Best practices for using
/// the REST API" → "Follow redirects".
pub const ALLOWLIST_RENAMED_REPOS: &str = "AllowlistRenamedRepos";

/// Gauge, 0 or 1, no labels: whether the last missed-delivery recovery run
/// (`crate::redeliver`, scheduled: `crcr serve`, the reconciler's
/// `{"task":"redeliver"}`) could not finish: it stopped before reading the
/// delivery log down to its bound (page, time or pending limit, a GitHub
/// error) or left failed deliveries unasked (request limit, rate limit,
/// refused credentials). The next run goes on from there; alarm
/// `redeliver-incomplete` fires when no run finished for an hour, before
/// anything ages out of GitHub's 3-day window.
pub const REDELIVER_INCOMPLETE: &str = "RedeliverIncomplete";

/// Gauge, no labels: failed deliveries found by missed-delivery recovery
/// and not asked for yet, after its last run (they are asked for by
/// the next run).
pub const REDELIVER_PENDING: &str = "RedeliverPending";

/// Every metric name, for exporters and docs.
pub const ALL: &[&str] = &[
    WEBHOOKS,
    WEBHOOK_SECRET_MATCHES,
    INGEST_LATENCY,
    DISPATCHES,
    DISPATCH_RETRIES,
    DISPATCH_BUDGET_WAITS,
    TARGET_BREAKERS_OPENED,
    TARGET_BREAKER_OPEN,
    GITHUB_RATE_LIMIT_REMAINING,
    GITHUB_RATE_LIMIT_LEFT,
    GITHUB_REQUESTS_DEFERRED,
    GITHUB_IN_FLIGHT_WAITS,
    DLQ_SENDS,
    CALLBACKS_ACCEPTED,
    CALLBACK_REJECTIONS,
    CALLBACKS_IGNORED,
    HUD_SYNC,
    HUD_OUTBOX_BACKLOG,
    HUD_OUTBOX_LAG,
    HUD_OUTBOX_FAILED,
    NEVER_STARTED_DISPATCHES,
    ALLOWLIST_LOADED,
    CHECK_RUN_SYNC,
    UPSTREAM_EVENTS,
    RUN_REQUESTS,
    ALLOWLIST_RENAMED_REPOS,
    REDELIVER_INCOMPLETE,
    REDELIVER_PENDING,
];

/// Records that this process loaded allowlist `version` now (see
/// [`ALLOWLIST_LOADED`]).
pub fn allowlist_loaded(version: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    metrics::gauge!(ALLOWLIST_LOADED, "version" => version.to_owned()).set(now.as_secs_f64().floor());
}
