//! The WebSocket endpoint: accepts sockets on WS_PORT (any path) and runs one connection task
//! per socket until shutdown.

mod connection;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::rpc::Context;

/// Per-socket sizes: an idle socket must cost little memory, a busy one may grow its buffers.
#[derive(Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_calls: usize,
    /// A connection that has not completed its upgrade by then is dropped.
    pub handshake_timeout: Duration,
    /// A ping goes out every `ping_interval`; a peer silent for `ping_misses` of them is dropped.
    pub ping_interval: Duration,
    pub ping_misses: u32,
}

impl Limits {
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

/// Accepts until `shutdown`; each connection task is tracked so shutdown can wait for it.
pub async fn accept(
    listener: TcpListener,
    context: Arc<Context>,
    limits: Limits,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tracker.spawn(connection::run(
                    stream,
                    context.clone(),
                    limits,
                    shutdown.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
