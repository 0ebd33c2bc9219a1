//! HTTP on APP_PORT: `/health` (the process answers), `/ready` (Redis answers, and MongoDB when
//! configured), `/metrics` (Prometheus text); and the client builder for calls out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Tokens};
use crate::cold::Cold;
use crate::store::Store;
use crate::telemetry;
use crate::tls::Tls;

#[derive(Clone)]
struct Probes {
    store: Store,
    cold: Option<Arc<Cold>>,
    metrics: PrometheusHandle,
    /// Asked of /metrics when AUTH_METRICS is set.
    metrics_tokens: Option<Arc<Tokens>>,
}

pub fn router(
    store: Store,
    cold: Option<Arc<Cold>>,
    metrics: PrometheusHandle,
    metrics_tokens: Option<Arc<Tokens>>,
) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(Probes {
            store,
            cold,
            metrics,
            metrics_tokens,
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

async fn render_metrics(State(probes): State<Probes>, headers: HeaderMap) -> (StatusCode, String) {
    if let Some(tokens) = &probes.metrics_tokens {
        let authorization = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        if let Err(refusal) = tokens.admit(auth::presented(authorization, None)) {
            metrics::counter!(telemetry::AUTH_REFUSED, "reason" => refusal.label()).increment(1);
            return (
                StatusCode::UNAUTHORIZED,
                "a valid token is required\n".to_owned(),
            );
        }
    }
    (StatusCode::OK, probes.metrics.render())
}

/// A builder for the clients the server calls out with (pushes, SocketDock, the mediator).
pub fn outbound_client() -> reqwest::ClientBuilder {
    crate::tls::install_crypto();
    reqwest::Client::builder()
}

/// Serves the probes until `stop`, then waits for the requests in progress. A connection that
/// has not sent a request's headers within `header_read_timeout` is closed (axum::serve has no
/// such bound: idle half-open connections would hold their task and buffers forever).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        match &tls {
            None => {
                let connection =
                    connections.watch(http1.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                });
            }
            // The TLS handshake is bounded like the request headers it precedes.
            Some(tls) => {
                let (acceptor, http1, watcher) =
                    (tls.acceptor(), http1.clone(), connections.watcher());
                tokio::spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await
                    else {
                        tracing::debug!("TLS handshake on APP_PORT failed or timed out");
                        return;
                    };
                    let connection =
                        watcher.watch(http1.serve_connection(TokioIo::new(stream), service));
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                });
            }
        }
    }
    connections.shutdown().await;
}
