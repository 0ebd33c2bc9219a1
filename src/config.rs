//! Settings, from CLI flags or environment variables. The Node MPR's variable names are kept
//! (`WS_PORT`, `APP_PORT`, `REDIS_URL`, `REDIS_TYPE`, ...); new settings sit beside them.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mpr",
    version,
    about = "Message Pickup Repository server for DIDComm mediators"
)]
pub struct Config {
    /// Port of the WebSocket JSON-RPC endpoint (any path).
    #[arg(long, env = "WS_PORT", default_value_t = 3100)]
    pub ws_port: u16,

    /// Port of the HTTP endpoint: /health, /ready, /metrics.
    #[arg(long, env = "APP_PORT", default_value_t = 3500)]
    pub app_port: u16,

    /// Address both ports listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// `single` (REDIS_URL) or `cluster` (REDIS_NODES).
    #[arg(long, env = "REDIS_TYPE", value_enum, default_value_t = RedisType::Single)]
    pub redis_type: RedisType,

    /// Redis URL in single mode.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every Redis key this server writes; deployments sharing a Redis need distinct ones.
    #[arg(long, env = "REDIS_PREFIX", default_value = "mpr", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// How long a Redis command may take before the call fails with an error, in ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redis_timeout_ms: u64,

    /// How long messages handed out without delete stay invisible to takeFromQueue, in ms.
    #[arg(long, env = "VISIBILITY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub visibility_timeout_ms: u64,

    /// Bound on how long the live sessions of a dead instance keep counting as live, in ms.
    #[arg(long, env = "LIVENESS_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub liveness_timeout_ms: u64,

    /// Most messages one takeFromQueue returns (also the count when no limit is given).
    #[arg(long, env = "MAX_TAKE_MESSAGES", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_take_messages: u64,

    /// Most bytes of encryptedMessage one takeFromQueue returns.
    #[arg(long, env = "MAX_TAKE_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_take_bytes: u64,

    /// Largest WebSocket message accepted; larger ones close the socket with code 1009.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub ws_max_message_bytes: u64,

    /// Calls one socket may have running at once; past it, the socket is not read until one ends.
    #[arg(long, env = "WS_MAX_CALLS_PER_SOCKET", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub ws_max_calls_per_socket: u64,

    /// Threads running sockets and calls (default: one per CPU). Where Redis shares a small
    /// machine, fewer threads than CPUs leave it room.
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub worker_threads: Option<u64>,

    /// Time allowed for a graceful shutdown, in ms.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Log filter (`info`, `debug`, `mpr=trace`, ...); RUST_LOG takes precedence when set.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisType {
    Single,
    Cluster,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_millis(self.visibility_timeout_ms)
    }

    pub fn liveness_timeout(&self) -> Duration {
        Duration::from_millis(self.liveness_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// Settings that parse but cannot run together.
    pub fn check(&self) -> Result<(), String> {
        if self.redis_type == RedisType::Cluster {
            return Err(
                "REDIS_TYPE=cluster is not supported by this version yet; use single".into(),
            );
        }
        if !self.redis_url.starts_with("redis://") && !self.redis_url.starts_with("rediss://") {
            return Err(format!(
                "REDIS_URL must start with redis:// or rediss://, got {:?}",
                self.redis_url
            ));
        }
        Ok(())
    }
}

/// Keys are `<prefix>:{...}`: braces would break the per-connection hash tag.
fn parse_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if value
        .chars()
        .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return Err("must not contain braces, whitespace or control characters".into());
    }
    Ok(value.to_owned())
}
