//! The relay's metrics over HTTP: `GET /metrics` for `crcr serve`, and the
//! EMF flush after each request of the ingest Lambda.

/// `GET /metrics`: the metrics of this process in the Prometheus text
/// format (`text/plain; version=0.0.4`, "Exposition formats", Prometheus
/// docs), or 503 with the reason when no Prometheus recorder could be
/// installed (`crcr_telemetry::init_prometheus`).
#[cfg(feature = "prometheus")]
pub fn prometheus_router() -> axum::Router {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let handle = crcr_telemetry::init_prometheus().map_err(|e| e.to_string());
    if let Err(e) = &handle {
        tracing::warn!(error = %e, "GET /metrics will answer 503");
    }
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                match handle {
                    Ok(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
                }
            }
        }),
    )
}

/// Without the `prometheus` feature (the Lambda binaries) the embedded
/// router has no `/metrics` route.
#[cfg(not(feature = "prometheus"))]
pub fn prometheus_router() -> axum::Router {
    axum::Router::new()
}

/// `router` with `crcr_telemetry::flush_emf` after each request: for the ingest Lambda,
/// where `lambda_http` turns each invocation into one request (a Lambda
/// instance runs one invocation at a time).
pub fn flush_emf_after_each_request(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::map_response(|res: axum::response::Response| async move {
        crcr_telemetry::flush_emf();
        res
    }))
}
