//! HTTP on APP_PORT: `/health` (the process answers), `/ready` (Redis answers, and MongoDB when
//! configured), `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cold::Cold;
use crate::store::Store;

#[derive(Clone)]
struct Probes {
    store: Store,
    cold: Option<Arc<Cold>>,
    metrics: PrometheusHandle,
}

pub fn router(store: Store, cold: Option<Arc<Cold>>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Probes {
            store,
            cold,
            metrics,
        })
}

async fn ready(State(probes): State<Probes>) -> (StatusCode, String) {
    if let Err(error) = probes.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("redis: {error}"));
    }
    if let Some(cold) = &probes.cold
        && let Err(error) = cold.ping().await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, error.to_string());
    }
    (StatusCode::OK, "ready".to_owned())
}

async fn render_metrics(State(probes): State<Probes>) -> String {
    probes.metrics.render()
}
