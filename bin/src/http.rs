//! The operator's HTTP endpoint: `/metrics` (Prometheus text format, from the `metrics`
//! registry the broker records into), `/healthz` (the process is alive) and `/readyz`
//! (recovery finished, listeners up, storage writable; 503 with the reason otherwise).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use promptmq_broker::Monitor;

/// Set once the broker has started (recovery done, listener bound).
pub type Ready = Arc<OnceLock<Monitor>>;

#[derive(Clone)]
struct AppState {
    prometheus: PrometheusHandle,
    monitor: Ready,
}

/// Latency buckets, seconds: 50 µs to 5 s.
const SECONDS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Group-commit batch sizes, records.
const RECORDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
/// Group-commit batch sizes, bytes.
const BYTES: &[f64] = &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0];

/// Installs the Prometheus recorder (once per process) and serves the endpoint on `addr`;
/// returns the bound address.
pub async fn start(addr: SocketAddr, monitor: Ready) -> Result<SocketAddr, String> {
    let bad = |e: metrics_exporter_prometheus::BuildError| format!("metrics: {e}");
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .map_err(bad)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_records".into()), RECORDS)
        .map_err(bad)?
        .set_buckets_for_metric(Matcher::Suffix("_batch_bytes".into()), BYTES)
        .map_err(bad)?
        .install_recorder()
        .map_err(bad)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics (metrics.listen): {e}"))?;
    let bound = listener.local_addr().map_err(|e| format!("metrics listener: {e}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { prometheus, monitor });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%bound, "metrics endpoint listening");
    Ok(bound)
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    if let Some(m) = s.monitor.get() {
        m.export();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.prometheus.render())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.monitor.get() {
        None => (StatusCode::SERVICE_UNAVAILABLE, "recovering the log\n".to_string()),
        Some(m) => match m.ready() {
            Ok(()) => (StatusCode::OK, "ready\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
    }
}
