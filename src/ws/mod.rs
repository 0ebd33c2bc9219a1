//! The WebSocket endpoint: accepts sockets on WS_PORT (any path) and runs one connection task
//! per socket until shutdown.

mod connection;
mod fds;
mod half_open;

pub use fds::socket_budget;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Tokens;
use crate::rpc::Context;
use crate::tls::Tls;
use half_open::{HalfOpen, Upgrading};

/// Per-socket sizes: an idle socket must cost little memory, a busy one may grow its buffers.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_calls: usize,
    /// Upgrades past this many open sockets are refused with 503.
    pub max_sockets: usize,
    /// Most connections in their upgrade at once; past it the oldest is shed.
    pub max_handshakes: usize,
    /// File descriptors WebSockets may hold, open or in their upgrade (`fds`).
    pub socket_budget: usize,
    /// A connection that has not completed its upgrade by then is dropped.
    pub handshake_timeout: Duration,
    /// A ping goes out every `ping_interval`; a peer silent for `ping_misses` of them is dropped.
    pub ping_interval: Duration,
    pub ping_misses: u32,
    /// A write to the socket making no progress for this long drops it.
    pub write_timeout: Duration,
    /// Bytes of deliveries a socket may hold unwritten; past it, it is closed with 1013.
    pub outbox_max_bytes: usize,
}

impl Limits {
    /// MAX_SOCKETS and WS_MAX_HANDSHAKES as the open-file budget allows (a warning for each
    /// that does not fit).
    pub fn fit_to(mut self, budget: u64) -> Self {
        self.max_sockets = fds::fit("MAX_SOCKETS", self.max_sockets as u64, budget) as usize;
        self.max_handshakes =
            fds::fit("WS_MAX_HANDSHAKES", self.max_handshakes as u64, budget) as usize;
        self.socket_budget = budget as usize;
        self
    }

    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            // Allocated eagerly for every socket: keep it small (tungstenite's default is 128 KiB).
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_write_buffer_size(self.max_message_bytes.saturating_mul(4).max(1 << 20))
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
    }
}

/// The open sockets of this instance, counted against `Limits::max_sockets`.
struct SocketSlots {
    open: AtomicUsize,
    max: usize,
}

impl SocketSlots {
    /// A slot for one more socket, unless `max` are open.
    fn take(self: &Arc<Self>) -> Option<SocketSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()?;
        Some(SocketSlot(self.clone()))
    }
}

/// One open socket's place in the count, given back when dropped.
struct SocketSlot(Arc<SocketSlots>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts until `shutdown`; each connection task is tracked so shutdown can wait for it.
pub async fn accept(
    listener: TcpListener,
    context: Arc<Context>,
    limits: Limits,
    tokens: Arc<Tokens>,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    // Shared: every socket task would otherwise carry its own copy.
    let limits = Arc::new(limits);
    let slots = Arc::new(SocketSlots {
        open: AtomicUsize::new(0),
        max: limits.max_sockets,
    });
    let half_open = Arc::new(HalfOpen::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                // Room for this one: past the handshake cap or the descriptor budget, the
                // oldest upgrade in progress ends.
                while half_open.len() >= limits.max_handshakes
                    || slots.open.load(Ordering::Acquire) + half_open.len() >= limits.socket_budget
                {
                    if !half_open.shed_oldest() {
                        break;
                    }
                }
                let _ = stream.set_nodelay(true);
                let upgrading = half_open.enter();
                let (context, limits, slots) = (context.clone(), limits.clone(), slots.clone());
                let (tokens, shutdown) = (tokens.clone(), shutdown.clone());
                match &tls {
                    None => {
                        tracker.spawn(connection::run(
                            stream, context, limits, slots, tokens, shutdown, upgrading,
                        ));
                    }
                    // The TLS handshake counts against the upgrade's own time bound, and is
                    // part of the upgrade that may be shed.
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        tracker.spawn(async move {
                            let handshake = tokio::time::timeout(
                                limits.handshake_timeout,
                                acceptor.accept(stream),
                            );
                            let handshake = tokio::select! {
                                handshake = handshake => handshake,
                                () = upgrading.shed.cancelled() => return,
                            };
                            match handshake {
                                Ok(Ok(stream)) => {
                                    connection::run(
                                        stream, context, limits, slots, tokens, shutdown, upgrading,
                                    )
                                    .await
                                }
                                _ => {
                                    tracing::debug!("TLS handshake on WS_PORT failed or timed out")
                                }
                            }
                        });
                    }
                }
            }
            Err(error) => {
                // Out of file descriptors: the oldest upgrade in progress gives its back. With
                // none to shed, back off instead of spinning.
                if half_open.shed_oldest() {
                    tracing::debug!(%error, "accept failed; the oldest upgrade was shed");
                } else {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
