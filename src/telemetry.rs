//! Logs (tracing) and metrics (Prometheus text on /metrics). Metric names live here so that the
//! code that counts and the docs that describe them agree.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub const OPEN_SOCKETS: &str = "mpr_open_sockets";
pub const CALLS: &str = "mpr_calls_total";
pub const CALL_DURATION: &str = "mpr_call_duration_seconds";
pub const LIVE_SESSIONS: &str = "mpr_live_sessions";
pub const EVENTS_PUSHED: &str = "mpr_events_pushed_total";
pub const EVENTS_UNDELIVERABLE: &str = "mpr_events_undeliverable_total";
pub const EVENTS_PUBLISH_FAILED: &str = "mpr_events_publish_failed_total";
pub const INSTANCES_REAPED: &str = "mpr_instances_reaped_total";

pub fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the process-wide recorder; the handle renders /metrics.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CALL_DURATION.to_owned()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        )?
        .install_recorder()?;
    metrics::describe_gauge!(OPEN_SOCKETS, "WebSocket connections open on this instance");
    metrics::describe_counter!(
        CALLS,
        "JSON-RPC calls by method and outcome (ok, invalid, error)"
    );
    metrics::describe_histogram!(CALL_DURATION, "JSON-RPC call latency by method");
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
    Ok(handle)
}
