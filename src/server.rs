//! Starting and stopping an instance: listeners, background tasks, and an orderly shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cold::Cold;
use crate::cold::mover::Mover;
use crate::config::Config;
use crate::live::Live;
use crate::push::Pushes;
use crate::rpc::Context;
use crate::store::Store;
use crate::{http, telemetry, ws};

/// Runs until `shutdown` resolves, then: stops accepting, lets calls in progress finish and
/// closes every socket (1001), ends this instance's live sessions, hands back undelivered
/// events, sends the pushes they asked for, and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let visits = config.visits();
    let store = Store::open(
        &config.redis_url,
        &config.redis_prefix,
        std::time::Duration::from_millis(config.redis_timeout_ms),
        config.visibility_timeout(),
        visits.first_after(),
    )
    .context("REDIS_URL")?;
    let cold = open_cold(&config).await?;
    let pushes = Pushes::start(&config, store.clone());
    let live = Live::new(store.clone(), config.liveness_timeout(), pushes.clone());
    let context = Arc::new(Context {
        store: store.clone(),
        cold: cold.clone(),
        live: live.clone(),
        max_take_messages: config.max_take_messages,
        max_take_bytes: config.max_take_bytes,
        pushes: pushes.clone(),
    });

    let ws_address = SocketAddr::new(config.bind_address, config.ws_port);
    let http_address = SocketAddr::new(config.bind_address, config.app_port);
    let ws_listener = TcpListener::bind(ws_address)
        .await
        .with_context(|| format!("WS_PORT: cannot listen on {ws_address}"))?;
    let http_listener = TcpListener::bind(http_address)
        .await
        .with_context(|| format!("APP_PORT: cannot listen on {http_address}"))?;
    if let Err(error) = store.ping().await {
        tracing::warn!(%error, "Redis is not reachable yet; calls fail until it is");
    }
    live.register().await;
    tracing::info!(
        instance = live.instance(), ws = %ws_address, http = %http_address, redis_prefix = %config.redis_prefix,
        "mpr listening"
    );

    let sockets_stop = CancellationToken::new();
    let sockets = TaskTracker::new();
    let background_stop = CancellationToken::new();
    let background = TaskTracker::new();
    let limits = ws::Limits {
        max_message_bytes: config.ws_max_message_bytes as usize,
        max_calls: config.ws_max_calls_per_socket as usize,
    };
    background.spawn(ws::accept(
        ws_listener,
        context,
        limits,
        sockets_stop.clone(),
        sockets.clone(),
    ));
    live.spawn_tasks(&background, &background_stop);
    if visits.move_after.is_some() || visits.retention.is_some() {
        let mover = Mover::new(store.clone(), cold.clone(), visits, config.mover());
        background.spawn(mover.run(background_stop.clone()));
    }
    let http_stop = background_stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(http_listener, http::router(store, cold, metrics))
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await
    });

    shutdown.await;
    tracing::info!("shutting down");
    let stop_by = tokio::time::Instant::now() + config.shutdown_timeout();
    sockets_stop.cancel();
    sockets.close();
    if tokio::time::timeout(config.shutdown_timeout(), sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "sockets still busy after {:?}; closing anyway",
            config.shutdown_timeout()
        );
    }
    background_stop.cancel();
    background.close();
    background.wait().await;
    live.deregister().await;
    // Last: closing sockets and deregistering request pushes for what they could not deliver.
    pushes
        .stop(stop_by.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    http.await.context("HTTP task")?.context("HTTP server")?;
    tracing::info!("stopped");
    Ok(())
}

/// The cold tier, when MONGODB_URI is set, with its indexes. MongoDB being down does not stop
/// the server: the mover creates the indexes before its first move.
async fn open_cold(config: &Config) -> anyhow::Result<Option<Arc<Cold>>> {
    let Some(uri) = &config.mongodb_uri else {
        tracing::info!("MONGODB_URI is not set: Redis only, messages are not moved to MongoDB");
        return Ok(None);
    };
    let timeout = std::time::Duration::from_millis(config.mongodb_timeout_ms);
    let cold = Cold::open(uri, timeout).await.context("MONGODB_URI")?;
    let retention = config.visits().retention;
    if let Err(error) = cold.ensure_indexes(retention).await {
        tracing::warn!(%error, "MongoDB is not reachable yet; moving starts when it is");
    }
    tracing::info!(
        namespace = %cold.namespace(), threshold_ms = config.threshold_timestamp,
        "cold tier: messages older than the threshold move to MongoDB"
    );
    Ok(Some(Arc::new(cold)))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_on_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
