//! An instance: [`Server::build`] opens what it needs (Redis, MongoDB, pushes, live sessions)
//! and binds its ports (0: any free port); [`Server::serve`] runs it until shutdown, then stops
//! in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::cold::Cold;
use crate::config::{ColdSettings, Config};
use crate::live::Live;
use crate::messages::Messages;
use crate::push::Pushes;
use crate::rpc::Context;
use crate::socketdock::SocketDock;
use crate::store::{Store, StoreError, Visits};
use crate::tiering::Mover;
use crate::tls::Tls;
use crate::{http, telemetry, ws};

pub struct Server {
    config: Config,
    store: Store,
    cold: Option<Arc<Cold>>,
    live: Arc<Live>,
    pushes: Arc<Pushes>,
    context: Arc<Context>,
    socketdock: Option<Arc<SocketDock>>,
    tokens: Arc<Tokens>,
    tls: Option<Arc<Tls>>,
    metrics: PrometheusHandle,
    /// File descriptors WebSockets may hold (`ws::socket_budget`).
    socket_budget: u64,
    ws_listener: TcpListener,
    http_listener: TcpListener,
}

/// Runs an instance until `shutdown` resolves (see [`Server::serve`]).
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::build(config).await?.serve(shutdown).await
}

impl Server {
    /// Opens Redis (checking it can run the function library), MongoDB when configured,
    /// pushes and live sessions, binds both ports and registers the instance. Redis or MongoDB
    /// being down does not stop it: calls fail until Redis answers, moving waits for MongoDB.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = telemetry::metrics()?;
        let socket_budget = ws::socket_budget().map_err(anyhow::Error::msg)?;
        let tokens = Arc::new(Tokens::load(&config.auth).map_err(anyhow::Error::msg)?);
        let tls = Tls::load(&config.tls).map_err(anyhow::Error::msg)?;
        if !tokens.required() {
            tracing::warn!(
                "AUTH_TOKENS is not set: anyone who reaches WS_PORT can read, remove and take over every connection's messages"
            );
        }
        let visits = Visits::from(&config.cold);
        let store = Store::open(&config.redis, &config.queue, visits)
            .await
            .context("REDIS_URL")?;
        match store.prepare().await {
            Ok(()) => {}
            Err(error @ StoreError::Unsupported(_)) => return Err(error).context("REDIS_URL"),
            Err(error) if error.is_access_refused() => {
                let settings = error.refused_settings();
                return Err(error).context(format!(
                    "{settings}: Redis refused this user or its permissions"
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "Redis is not reachable yet; calls fail until it is")
            }
        }
        let cold = open_cold(&config.cold).await?;
        let pushes = Pushes::start(&config.push, store.clone());
        let live = Live::new(store.clone(), &config.live, pushes.clone());
        let messages = Messages::new(
            store.clone(),
            cold.clone(),
            live.clone(),
            pushes.clone(),
            &config.queue,
        );
        let messages = Arc::new(messages);
        let socketdock = SocketDock::new(
            &config.socketdock,
            &config.queue,
            store.clone(),
            live.clone(),
            messages.clone(),
        );
        let context = Arc::new(Context {
            messages,
            live: live.clone(),
            socketdock: socketdock.clone(),
            calls: config.calls.clone(),
        });
        let server = &config.server;
        let ws_address = SocketAddr::new(server.bind_address, server.ws_port);
        let http_address = SocketAddr::new(server.bind_address, server.app_port);
        let ws_listener = TcpListener::bind(ws_address)
            .await
            .with_context(|| format!("WS_PORT: cannot listen on {ws_address}"))?;
        let http_listener = TcpListener::bind(http_address)
            .await
            .with_context(|| format!("APP_PORT: cannot listen on {http_address}"))?;
        live.register().await;
        Ok(Self {
            config,
            store,
            cold,
            live,
            pushes,
            context,
            socketdock,
            tokens,
            tls,
            metrics,
            socket_budget,
            ws_listener,
            http_listener,
        })
    }

    /// The WebSocket JSON-RPC address (the port chosen, when built with port 0).
    pub fn ws_address(&self) -> SocketAddr {
        self.ws_listener.local_addr().expect("a bound listener")
    }

    /// The HTTP address (`/health`, `/ready`, `/metrics`).
    pub fn http_address(&self) -> SocketAddr {
        self.http_listener.local_addr().expect("a bound listener")
    }

    /// Serves until `shutdown` resolves, then: stops accepting, lets calls in progress finish
    /// and closes every socket (1001), ends this instance's live sessions, hands back
    /// undelivered events, sends the pushes they asked for, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(
            instance = self.live.instance(), ws = %self.ws_address(), http = %self.http_address(),
            redis_prefix = %self.config.redis.redis_prefix, "mpr listening"
        );
        let settings = &self.config.server;
        let sockets_stop = CancellationToken::new();
        let sockets = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let background = TaskTracker::new();
        let limits = ws::Limits {
            max_message_bytes: settings.ws_max_message_bytes as usize,
            max_calls: settings.ws_max_calls_per_socket as usize,
            max_sockets: settings.max_sockets as usize,
            max_handshakes: settings.ws_max_handshakes as usize,
            socket_budget: 0,
            handshake_timeout: settings.ws_handshake_timeout(),
            ping_interval: settings.ws_ping_interval(),
            ping_misses: settings.ws_ping_misses,
            write_timeout: settings.ws_write_timeout(),
            outbox_max_bytes: settings.ws_outbox_max_bytes as usize,
        }
        .fit_to(self.socket_budget);
        background.spawn(
            self.context
                .messages
                .clone()
                .sweep_deadlines(background_stop.clone()),
        );
        background.spawn(ws::accept(
            self.ws_listener,
            self.context,
            limits,
            self.tokens.clone(),
            self.tls.clone(),
            sockets_stop.clone(),
            sockets.clone(),
        ));
        background.spawn(crate::store::watch_clock(
            self.store.clone(),
            background_stop.clone(),
        ));
        background.spawn(reload_on_hangup(
            self.tokens.clone(),
            self.tls.clone(),
            background_stop.clone(),
        ));
        self.live.spawn_tasks(&background, &background_stop);
        if let Some(socketdock) = &self.socketdock {
            socketdock.spawn_tasks(&background, &background_stop);
        }
        let visits = Visits::from(&self.config.cold);
        if visits.first_after().is_some() {
            let mover = Mover::new(
                self.store.clone(),
                self.cold.clone(),
                visits,
                &self.config.mover,
            );
            background.spawn(mover.run(background_stop.clone()));
        }
        let http_stop = background_stop.clone();
        let metrics_tokens = self.config.auth.auth_metrics.then(|| self.tokens.clone());
        let router = http::router(self.store, self.cold, self.metrics, metrics_tokens)
            .merge(crate::socketdock::router(self.socketdock));
        let http = tokio::spawn(http::serve(
            self.http_listener,
            router,
            settings.http_header_read_timeout(),
            self.tls,
            http_stop,
        ));

        shutdown.await;
        tracing::info!("shutting down");
        let grace = settings.shutdown_timeout();
        let stop_by = tokio::time::Instant::now() + grace;
        sockets_stop.cancel();
        sockets.close();
        if tokio::time::timeout(grace, sockets.wait()).await.is_err() {
            tracing::warn!("sockets still busy after {grace:?}; closing anyway");
        }
        background_stop.cancel();
        background.close();
        background.wait().await;
        self.live.deregister().await;
        // Last: closing sockets and deregistering request pushes for what they could not deliver.
        self.pushes
            .stop(stop_by.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        http.await.context("HTTP task")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The cold tier, when MONGODB_URI is set, with its indexes. MongoDB being down does not stop
/// the server: the mover creates the indexes before its first move.
async fn open_cold(settings: &ColdSettings) -> anyhow::Result<Option<Arc<Cold>>> {
    let Some(uri) = &settings.mongodb_uri else {
        tracing::info!("MONGODB_URI is not set: Redis only, messages are not moved to MongoDB");
        return Ok(None);
    };
    let cold = Cold::open(uri, settings.timeout())
        .await
        .context("MONGODB_URI")?;
    if let Err(error) = cold.ensure_indexes(settings.retention()).await {
        tracing::warn!(%error, "MongoDB is not reachable yet; moving starts when it is");
    }
    cold.export_available();
    tracing::info!(
        namespace = %cold.namespace(), threshold_ms = settings.threshold_timestamp,
        "cold tier: messages older than the threshold move to MongoDB"
    );
    Ok(Some(Arc::new(cold)))
}

/// Reads AUTH_TOKENS_FILE and the TLS certificate and key again on every SIGHUP until `stop`
/// (what cannot be read keeps what is in use). Connections already open stay open.
async fn reload_on_hangup(tokens: Arc<Tokens>, tls: Option<Arc<Tls>>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("no SIGHUP handler: tokens and certificates are read at start only");
            return;
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                () = stop.cancelled() => return,
            }
            match tokens.reload() {
                Ok(count) => tracing::info!(count, "tokens read again"),
                Err(error) => {
                    tracing::warn!(%error, "tokens not read again; the previous ones stay")
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate read again"),
                    Err(error) => {
                        tracing::warn!(%error, "TLS certificate not read again; the previous one stays")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (tokens, tls, stop);
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
