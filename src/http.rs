//! HTTP on APP_PORT: `/health` (the process answers), `/ready` (Redis answers), `/metrics`
//! (Prometheus text).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;

#[derive(Clone)]
struct Probes {
    store: Store,
    metrics: PrometheusHandle,
}

pub fn router(store: Store, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Probes { store, metrics })
}

async fn ready(State(probes): State<Probes>) -> (StatusCode, String) {
    match probes.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {error}")),
    }
}

async fn render_metrics(State(probes): State<Probes>) -> String {
    probes.metrics.render()
}
