//! Logs (tracing) and metrics (Prometheus text on /metrics). Metric names live here so that the
//! code that counts and the docs that describe them agree.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use std::io::IsTerminal;
use std::sync::OnceLock;

use crate::config::{LogFormat, LogSettings};

pub const OPEN_SOCKETS: &str = "mpr_open_sockets";
pub const SOCKETS_DROPPED: &str = "mpr_sockets_dropped_total";
pub const SOCKETS_REFUSED: &str = "mpr_sockets_refused_total";
pub const AUTH_REFUSED: &str = "mpr_auth_refused_total";
pub const CALLS: &str = "mpr_calls_total";
pub const CALL_DURATION: &str = "mpr_call_duration_seconds";
pub const LIVE_SESSIONS: &str = "mpr_live_sessions";
pub const EVENTS_PUSHED: &str = "mpr_events_pushed_total";
pub const EVENTS_UNDELIVERABLE: &str = "mpr_events_undeliverable_total";
pub const EVENTS_PUBLISH_FAILED: &str = "mpr_events_publish_failed_total";
pub const REDELIVERED: &str = "mpr_redelivered_total";
pub const QUEUE_FULL: &str = "mpr_queue_full_total";
pub const REDELIVERY_RELEASED: &str = "mpr_redelivery_released_total";
pub const REDELIVERY_FAILURES: &str = "mpr_redelivery_failures_total";
pub const INSTANCES_REAPED: &str = "mpr_instances_reaped_total";
pub const REDIS_CLOCK_OFFSET: &str = "mpr_redis_clock_offset_seconds";
pub const COLD_AVAILABLE: &str = "mpr_cold_available";
pub const COLD_MOVED: &str = "mpr_cold_moved_total";
pub const COLD_DEGRADED: &str = "mpr_cold_degraded_total";
pub const COLD_MISSING: &str = "mpr_cold_missing_total";
pub const COLD_UNMOVABLE: &str = "mpr_cold_unmovable_total";
pub const COLD_DELETE_DEFERRED: &str = "mpr_cold_delete_deferred_total";
pub const MOVER_FAILURES: &str = "mpr_mover_failures_total";
pub const MOVER_FENCED: &str = "mpr_mover_fenced_total";
pub const MESSAGES_EXPIRED: &str = "mpr_messages_expired_total";
pub const PUSHES_SENT: &str = "mpr_pushes_sent_total";
pub const PUSHES_FAILED: &str = "mpr_pushes_failed_total";
pub const PUSHES_RETRIED: &str = "mpr_pushes_retried_total";
pub const PUSHES_DEDUPLICATED: &str = "mpr_pushes_deduplicated_total";
pub const PUSHES_DROPPED: &str = "mpr_pushes_dropped_total";
pub const PUSH_DURATION: &str = "mpr_push_duration_seconds";
pub const SOCKETDOCK_FRAMES: &str = "mpr_socketdock_frames_total";
pub const SOCKETDOCK_DELIVERIES: &str = "mpr_socketdock_deliveries_total";
pub const SOCKETDOCK_SEND_SECONDS: &str = "mpr_socketdock_send_seconds";
pub const SOCKETDOCK_BINDS: &str = "mpr_socketdock_binds_total";
pub const SOCKETDOCK_SOCKETS_GONE: &str = "mpr_socketdock_sockets_gone_total";
pub const SOCKETDOCK_CALLBACKS_REFUSED: &str = "mpr_socketdock_callbacks_refused_total";

pub fn init_logging(config: &LogSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.log_level));
    // Colour codes only for a person at a terminal: in a file, `docker logs` or journald they
    // are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The process-wide recorder, installed by the first instance of the process; the handle
/// renders /metrics.
pub fn metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = install_metrics()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CALL_DURATION.to_owned()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(PUSH_DURATION.to_owned()),
            &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .install_recorder()?;
    metrics::describe_gauge!(OPEN_SOCKETS, "WebSocket connections open on this instance");
    metrics::describe_counter!(
        AUTH_REFUSED,
        "Upgrades and /metrics requests refused for want of a valid token (reason: missing, invalid)"
    );
    metrics::describe_counter!(
        SOCKETS_REFUSED,
        "WebSocket upgrades answered 503 because MAX_SOCKETS sockets were open"
    );
    metrics::describe_counter!(
        SOCKETS_DROPPED,
        "Connections the server ended by reason (handshake_timeout, ping_timeout, write_timeout, outbox_full, message_too_big)"
    );
    metrics::describe_counter!(
        CALLS,
        "JSON-RPC calls by method, outcome (ok, invalid, error) and tenant (empty: none)"
    );
    metrics::describe_histogram!(CALL_DURATION, "JSON-RPC call latency by method");
    metrics::describe_counter!(
        SOCKETDOCK_FRAMES,
        "Frames from SocketDock sockets, by outcome (forwarded, mediator_status, mediator_timeout, mediator_unreachable, mediator_reply_too_large)"
    );
    metrics::describe_counter!(
        SOCKETDOCK_DELIVERIES,
        "Frames POSTed to SocketDock sockets, by mode (raw: a message; pickup: a delivery the mediator wrapped) and outcome (ok, failed, unwrapped: the mediator did not wrap, sent_raw: too large to wrap, sent as a raw frame)"
    );
    metrics::describe_histogram!(
        SOCKETDOCK_SEND_SECONDS,
        "Latency of POSTs to SocketDock send URLs"
    );
    metrics::describe_counter!(
        SOCKETDOCK_BINDS,
        "Connections bound to SocketDock sockets, by outcome (bound, unknown_socket, socket_full)"
    );
    metrics::describe_counter!(
        SOCKETDOCK_SOCKETS_GONE,
        "SocketDock sockets ended, by reason (disconnect_callback, send_failed, frame_failed: the mediator did not take a frame, so the socket was closed)"
    );
    metrics::describe_counter!(
        SOCKETDOCK_CALLBACKS_REFUSED,
        "SocketDock callbacks refused, by route and reason (secret, body, foreign_url)"
    );
    metrics::describe_counter!(
        QUEUE_FULL,
        "addMessage calls refused by a per-connection quota (quota: messages, bytes)"
    );
    metrics::describe_counter!(
        REDELIVERED,
        "Messages pushed again to a live session: their peer went or their visibility timeout passed"
    );
    metrics::describe_counter!(
        REDELIVERY_RELEASED,
        "Messages pushed to a live session that ended, pending again"
    );
    metrics::describe_counter!(
        REDELIVERY_FAILURES,
        "Steps of the deadline index that failed (Redis errors); they are retried"
    );
    metrics::describe_gauge!(
        LIVE_SESSIONS,
        "Live sessions bound to sockets on this instance"
    );
    metrics::describe_counter!(
        EVENTS_PUSHED,
        "Messages pushed to live sessions as messagesReceived"
    );
    metrics::describe_counter!(
        EVENTS_UNDELIVERABLE,
        "Live-session events whose socket or instance was gone (messages returned to pending)"
    );
    metrics::describe_counter!(
        EVENTS_PUBLISH_FAILED,
        "Live-session events that could not be written to Redis (messages stay queued)"
    );
    metrics::describe_counter!(
        INSTANCES_REAPED,
        "Dead instances whose events this instance took over"
    );
    metrics::describe_gauge!(
        REDIS_CLOCK_OFFSET,
        "Redis's clock minus this server's, as last measured (fenced writes need it small)"
    );
    metrics::describe_gauge!(
        COLD_AVAILABLE,
        "1 while MongoDB answers, 0 while reads serve only what Redis holds"
    );
    metrics::describe_counter!(COLD_MOVED, "Messages moved from Redis to MongoDB");
    metrics::describe_counter!(
        COLD_DEGRADED,
        "Calls by method that served only what Redis holds because MongoDB was unavailable"
    );
    metrics::describe_counter!(
        COLD_UNMOVABLE,
        "Attempts to move a message MongoDB cannot store (too large, too deep); it stays in Redis"
    );
    metrics::describe_counter!(
        COLD_MISSING,
        "Cold messages whose MongoDB document was gone (deleted by the TTL index or by hand)"
    );
    metrics::describe_counter!(
        COLD_DELETE_DEFERRED,
        "Documents of removed messages left for the mover to delete (MongoDB failed)"
    );
    metrics::describe_counter!(
        MOVER_FENCED,
        "Mover batches refused because the connection's lease had passed to another mover"
    );
    metrics::describe_counter!(
        MOVER_FAILURES,
        "Mover passes that paused on a failure (MongoDB or Redis unavailable)"
    );
    metrics::describe_counter!(
        MESSAGES_EXPIRED,
        "Messages deleted by MESSAGE_TTL retention"
    );
    metrics::describe_counter!(
        PUSHES_SENT,
        "Push notifications accepted by FCM or APNs, by provider"
    );
    metrics::describe_counter!(
        PUSHES_FAILED,
        "Push notifications given up on, by provider and reason (dead_token, disabled, ...)"
    );
    metrics::describe_counter!(PUSHES_RETRIED, "Push requests retried, by provider");
    metrics::describe_counter!(
        PUSHES_DEDUPLICATED,
        "Pushes not sent because the token had one within the dedup window"
    );
    metrics::describe_counter!(
        PUSHES_DROPPED,
        "Pushes dropped from a full queue (their messages stay queued)"
    );
    metrics::describe_histogram!(
        PUSH_DURATION,
        "Latency of one request to FCM or APNs, by provider"
    );
    Ok(handle)
}
