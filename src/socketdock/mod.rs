//! The SocketDock adapter. Agents' WebSockets live in SocketDock, which calls back over HTTP
//! for each socket's connect, frame and disconnect ([`callbacks`]) and takes deliveries at a
//! per-socket `send` URL. The adapter forwards frames to the mediator, binds DIDComm connections
//! to sockets (live sessions whose peer is the socket: kind `sd` in the store), and delivers
//! each bound connection's messages to its socket, oldest first, one instance at a time per
//! connection ([`delivery`]). Everything it knows is in Redis: any instance serves any callback
//! and any delivery, and any of them may die.

mod callbacks;
mod delivery;
mod mediator;
mod send_urls;
mod urls;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{QueueSettings, SocketDockSettings};
use crate::live::Live;
use crate::messages::Messages;
use crate::store::{AttachRefused, RelayPolicy, Step, Store, StoreResult};
use crate::telemetry;

pub use callbacks::router;
pub use urls::Endpoints;

/// The header naming the socket a forwarded frame came from.
pub const SOCKET_HEADER: &str = "x-mpr-socket-id";
/// The header a mediator answers a frame with to bind a connection to that socket.
pub const CONNECTION_HEADER: &str = "x-mpr-connection-id";
/// The header a mediator answers a live-delivery-change frame with: `on` or `off`.
pub const LIVE_DELIVERY_HEADER: &str = "x-mpr-live-delivery";
/// The header naming the connection whose messages the mediator is asked to wrap.
pub const DELIVER_HEADER: &str = "x-mpr-deliver";
/// How long messages the mediator did not wrap wait before they are tried again.
const WRAP_RETRY: Duration = Duration::from_secs(1);
/// Pooled connections to SocketDock and the mediator idle this long are not used again: below
/// the keep-alive timeout of the servers behind them (5 s for SocketDock's Sanic and for Node's
/// http), since a request written on a connection the server is closing at that moment fails
/// unanswered, and a failed send ends the socket's bindings.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(4);
/// The sessionId prefix that makes addLiveSession bind a connection to a SocketDock socket.
pub const SESSION_PREFIX: &str = "socketdock:";

pub struct SocketDock {
    store: Store,
    live: Arc<Live>,
    messages: Arc<Messages>,
    http: reqwest::Client,
    mediator_url: String,
    secret: String,
    endpoints: Endpoints,
    send_timeout: Duration,
    mediator_timeout: Duration,
    /// How the delivery loops hand messages out.
    policy: RelayPolicy,
    socket_ttl: Duration,
    max_connections_per_socket: u64,
    max_body_bytes: usize,
    send_urls: send_urls::SendUrls,
}

impl SocketDock {
    /// The adapter, when MEDIATOR_URL is set.
    pub fn new(
        settings: &SocketDockSettings,
        queue: &QueueSettings,
        store: Store,
        live: Arc<Live>,
        messages: Arc<Messages>,
    ) -> Option<Arc<Self>> {
        let mediator_url = settings.mediator_url.clone()?;
        let http = crate::http::outbound_client()
            .connect_timeout(settings.send_timeout())
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .build()
            .expect("an HTTP client");
        Some(Arc::new(Self {
            store,
            live,
            messages,
            http,
            mediator_url,
            secret: settings.socketdock_secret.clone().unwrap_or_default(),
            endpoints: Endpoints::new(&settings.socketdock_endpoints),
            send_timeout: settings.send_timeout(),
            mediator_timeout: settings.mediator_timeout(),
            policy: RelayPolicy {
                raw_window: settings.send_timeout() * 2,
                wrap_lease: settings.mediator_timeout() + settings.send_timeout() * 2,
                visibility: queue.visibility_timeout(),
                retry: WRAP_RETRY,
                batch: settings.socketdock_delivery_batch,
                // Half the body bound: the wrapped delivery is larger than its messages.
                batch_bytes: settings.socketdock_max_body_bytes / 2,
                most_in_flight: settings.socketdock_delivery_window,
            },
            socket_ttl: settings.socket_ttl(),
            max_connections_per_socket: settings.socketdock_max_connections_per_socket,
            max_body_bytes: settings.socketdock_max_body_bytes as usize,
            send_urls: Default::default(),
        }))
    }

    /// Serves the delivery loops' kicks until `shutdown`.
    pub fn spawn_tasks(self: &Arc<Self>, tracker: &TaskTracker, shutdown: &CancellationToken) {
        self.live.kicks().serve(self.policy.raw_window);
        tracker.spawn(delivery::dispatch(
            self.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
    }

    /// Binds a connection to a recorded socket: the newest binding wins, and the socket's
    /// delivery loop starts with the connection's backlog.
    pub async fn bind(
        &self,
        connection_id: &str,
        socket_id: &str,
        session_id: &str,
    ) -> StoreResult<Result<(), AttachRefused>> {
        Ok(self
            .bind_quietly(connection_id, socket_id, session_id)
            .await?
            .map(|step| self.live.wake_for(connection_id, &step)))
    }

    /// Binds, leaving the start of the delivery loop to the caller (`wake_for` on the step):
    /// a return-route reply goes out before the backlog.
    async fn bind_quietly(
        &self,
        connection_id: &str,
        socket_id: &str,
        session_id: &str,
    ) -> StoreResult<Result<Step, AttachRefused>> {
        let attached = self
            .store
            .attach_socket(
                socket_id,
                connection_id,
                self.max_connections_per_socket,
                self.socket_ttl,
            )
            .await?;
        let send_url = match attached {
            Ok(send_url) => send_url,
            Err(refused) => {
                metrics::counter!(telemetry::SOCKETDOCK_BINDS, "outcome" => refused.label())
                    .increment(1);
                return Ok(Err(refused));
            }
        };
        if let Ok(url) = reqwest::Url::parse(&send_url) {
            self.send_urls.insert(socket_id, url);
        }
        let step = self
            .live
            .bind_relay(connection_id, socket_id, session_id)
            .await?;
        metrics::counter!(telemetry::SOCKETDOCK_BINDS, "outcome" => "bound").increment(1);
        Ok(Ok(step))
    }

    /// The connection's recipient turned Pickup V2 live mode on or off (a frame's answer said
    /// so). On: its messages go to whatever socket it is bound to as acknowledged pickup
    /// deliveries, from now on. Off: raw frames again, and its binding to this socket ends
    /// (it asked not to be pushed to); what was in flight to it is pending again.
    async fn set_live_delivery(
        &self,
        connection_id: &str,
        socket_id: &str,
        on: bool,
    ) -> StoreResult<()> {
        self.store.set_acknowledged(connection_id, on).await?;
        if !on {
            self.live.unbind_relay(connection_id, socket_id).await?;
        }
        Ok(())
    }

    /// Ends the socket's bindings, then has SocketDock close it (its `disconnect` URL, already
    /// checked against SOCKETDOCK_ENDPOINTS): in this order, an agent that sees its socket close
    /// and connects again never meets a binding of the old socket.
    async fn close_socket(&self, socket_id: &str, disconnect_url: &str) {
        self.socket_gone(socket_id, None, "frame_failed").await;
        let closed = self
            .http
            .post(disconnect_url)
            .timeout(self.send_timeout)
            .send()
            .await;
        if let Err(error) = closed {
            tracing::info!(socket = socket_id, %error, "SocketDock did not close the socket");
        }
    }

    /// A socket is gone (disconnect callback, or a send that failed): every connection bound to
    /// it (and `also`, which failed on it) loses its binding; what waits stays queued and the
    /// phones are woken.
    async fn socket_gone(&self, socket_id: &str, also: Option<&str>, reason: &'static str) {
        self.send_urls.remove(socket_id);
        metrics::counter!(telemetry::SOCKETDOCK_SOCKETS_GONE, "reason" => reason).increment(1);
        match self.live.relay_gone(socket_id, also).await {
            Ok(ended) => {
                tracing::info!(
                    socket = socket_id,
                    reason,
                    ended,
                    "SocketDock socket gone; its bindings ended"
                )
            }
            Err(error) => {
                tracing::warn!(socket = socket_id, reason, %error, "SocketDock socket gone; bindings not ended (a later send fails again)")
            }
        }
    }
}

impl AttachRefused {
    fn label(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown_socket",
            Self::Full => "socket_full",
        }
    }
}
