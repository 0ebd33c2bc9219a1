//! Settings, from CLI flags or environment variables. The Node MPR's variable names are kept
//! (`WS_PORT`, `APP_PORT`, `REDIS_URL`, `REDIS_TYPE`, ...); new settings sit beside them.
//!
//! A leaf: settings are grouped by the component that reads them, and each component takes
//! only its own group, so nothing here knows the rest of the crate.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "mpr",
    version,
    about = "Message Pickup Repository server for DIDComm mediators"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub server: ServerSettings,

    #[command(flatten)]
    pub redis: RedisSettings,

    #[command(flatten)]
    pub queue: QueueSettings,

    #[command(flatten)]
    pub calls: CallSettings,

    #[command(flatten)]
    pub live: LiveSettings,

    #[command(flatten)]
    pub cold: ColdSettings,

    #[command(flatten)]
    pub mover: MoverSettings,

    #[command(flatten)]
    pub push: PushSettings,

    #[command(flatten)]
    pub socketdock: SocketDockSettings,

    #[command(flatten)]
    pub auth: AuthSettings,

    #[command(flatten)]
    pub tls: TlsSettings,

    #[command(flatten)]
    pub log: LogSettings,
}

/// Sockets and ports.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerSettings {
    /// Port of the WebSocket JSON-RPC endpoint (any path).
    #[arg(long, env = "WS_PORT", default_value_t = 3100)]
    pub ws_port: u16,

    /// Port of the HTTP endpoint: /health, /ready, /metrics.
    #[arg(long, env = "APP_PORT", default_value_t = 3500)]
    pub app_port: u16,

    /// Address both ports listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Largest WebSocket message accepted; larger ones close the socket with code 1009.
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub ws_max_message_bytes: u64,

    /// Calls one socket may have running at once; past it, the socket is not read until one ends.
    #[arg(long, env = "WS_MAX_CALLS_PER_SOCKET", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub ws_max_calls_per_socket: u64,

    /// Most WebSockets open at once on this instance; past it, upgrades are answered 503.
    #[arg(long, env = "MAX_SOCKETS", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_sockets: u64,

    /// Time a new WebSocket connection has to complete its upgrade, in ms; then it is dropped.
    #[arg(long, env = "WS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub ws_handshake_timeout_ms: u64,

    /// Most connections to WS_PORT in their upgrade at once; a new one past it ends the upgrade
    /// of the oldest.
    #[arg(long, env = "WS_MAX_HANDSHAKES", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub ws_max_handshakes: u64,

    /// Time an HTTP connection has to send a request's headers, in ms; then it is closed.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub http_header_read_timeout_ms: u64,

    /// Interval between the pings the server sends on every WebSocket, in ms.
    #[arg(long, env = "WS_PING_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub ws_ping_interval_ms: u64,

    /// Ping intervals in a row without any frame from the peer after which its socket is closed.
    #[arg(long, env = "WS_PING_MISSES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub ws_ping_misses: u32,

    /// Time a write to a WebSocket may make no progress, in ms; then the socket is dropped.
    #[arg(long, env = "WS_WRITE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub ws_write_timeout_ms: u64,

    /// Bytes of live-session messages one socket may hold unwritten; past it the socket is
    /// closed with 1013 and its sessions' messages go back to pending.
    #[arg(long, env = "WS_OUTBOX_MAX_BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub ws_outbox_max_bytes: u64,

    /// Threads running sockets and calls (default: one per CPU). Where Redis shares a small
    /// machine, fewer threads than CPUs leave it room.
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub worker_threads: Option<u64>,

    /// Time allowed for a graceful shutdown, in ms.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
}

/// Where the queues live.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisSettings {
    /// `single` (REDIS_URL), `cluster` (REDIS_NODES) or `sentinel` (REDIS_SENTINELS).
    #[arg(long, env = "REDIS_TYPE", value_enum, default_value_t = RedisType::Single)]
    pub redis_type: RedisType,

    /// Redis URL in single mode. With REDIS_TYPE=cluster its scheme (`rediss://` for TLS),
    /// user and password apply to every node of REDIS_NODES given as `host:port`; with
    /// REDIS_TYPE=sentinel they, and its database, apply to the master the sentinels name.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Cluster seed nodes (`host:port,...`, or full `redis://` URLs) with REDIS_TYPE=cluster.
    #[arg(long, env = "REDIS_NODES", value_delimiter = ',')]
    pub redis_nodes: Vec<String>,

    /// Sentinels (`host:port,...`, or full `redis://` URLs) with REDIS_TYPE=sentinel; `host:port`
    /// entries take REDIS_URL's scheme (`rediss://`: TLS), not its credentials.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The name under which the sentinels monitor the master, with REDIS_TYPE=sentinel.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// User for the sentinels (Redis ACL), when they require one.
    #[arg(long, env = "REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,

    /// Password for the sentinels (their `requirepass`), when they require one.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,

    /// Addresses to use for cluster nodes that announce ones this server cannot reach, in the
    /// Node MPR's format: `externalHost:externalPort:internalHost:internalPort,...`.
    #[arg(long, env = "REDIS_NATMAP", value_delimiter = ',')]
    pub redis_natmap: Vec<String>,

    /// Replicas that must acknowledge an addMessage or a removal before it is answered (WAIT);
    /// 0: answer once the primary has it.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
    pub redis_wait_replicas: u64,

    /// How long to wait for REDIS_WAIT_REPLICAS, in ms; fewer in time makes the call an error.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_wait_timeout_ms: u64,

    /// Connections per instance for writes that wait for replicas (each blocks in WAIT for a
    /// replication round trip, so this many waited writes overlap).
    #[arg(long, env = "REDIS_WAIT_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub redis_wait_connections: u64,

    /// Prefix of every Redis key this server writes; deployments sharing a Redis need distinct ones.
    #[arg(long, env = "REDIS_PREFIX", default_value = "mpr", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// How long a Redis command may take before the call fails with an error, in ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redis_timeout_ms: u64,

    /// How long an addMessage whose Redis reply was lost (timeout, broken connection) keeps
    /// asking Redis whether it was stored before answering "outcome unknown", in ms. Keep
    /// REDIS_TIMEOUT_MS plus this under the clients' call timeout (2 s for the MPR client).
    #[arg(long, env = "ADD_SETTLE_TIMEOUT_MS", default_value_t = 800, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub add_settle_timeout_ms: u64,
}

/// What one call may do to a queue.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Queues")]
pub struct QueueSettings {
    /// How long messages handed out without delete stay invisible to takeFromQueue, in ms.
    #[arg(long, env = "VISIBILITY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub visibility_timeout_ms: u64,

    /// Most messages one takeFromQueue returns (also the count when no limit is given).
    #[arg(long, env = "MAX_TAKE_MESSAGES", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_take_messages: u64,

    /// Most bytes of encryptedMessage one takeFromQueue returns.
    #[arg(long, env = "MAX_TAKE_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_take_bytes: u64,

    /// Most messages one connection may hold, pending and in flight (0: no quota); an
    /// addMessage beyond it is refused and the queue left as it is.
    #[arg(long, env = "QUEUE_MAX_MESSAGES", default_value_t = 0)]
    pub queue_max_messages: u64,

    /// Most bytes of encryptedMessage one connection may hold, pending and in flight, in Redis
    /// and in MongoDB (0: no quota); an addMessage that would pass it is refused and the queue
    /// left as it is.
    #[arg(long, env = "QUEUE_MAX_BYTES", default_value_t = 0)]
    pub queue_max_bytes: u64,

    /// How often each instance sweeps the deadline index: in-flight messages whose visibility
    /// timeout passed are pushed to their connection's live session at most this late.
    #[arg(long, env = "REDELIVERY_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redelivery_interval_ms: u64,
}

/// What one frame or one call may hold.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Calls")]
pub struct CallSettings {
    /// Most calls in one batch frame; a larger batch is refused, each request with an error.
    #[arg(long, env = "BATCH_MAX_CALLS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_max_calls: u64,

    /// Most bytes of one batch's reply: its takes share this budget, and once it is spent the
    /// remaining calls are not run and get an error.
    #[arg(long, env = "BATCH_MAX_REPLY_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub batch_max_reply_bytes: u64,

    /// Deepest nesting of arrays and objects in an addMessage payload (the payload itself is
    /// depth 1); MongoDB stores at most 100 levels in a document.
    #[arg(long, env = "MAX_PAYLOAD_DEPTH", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_payload_depth: u64,

    /// Largest addMessage payload in its MongoDB (BSON) form, bounded from its JSON. The default
    /// leaves room in MongoDB's 16 MiB document for the rest of a message's document; a larger
    /// value lets in messages the cold tier cannot store (they stay in Redis).
    #[arg(long, env = "MAX_PAYLOAD_BSON_BYTES", default_value_t = (16 << 20) - (128 << 10), value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub max_payload_bson_bytes: u64,
}

/// Live sessions across instances.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Live sessions")]
pub struct LiveSettings {
    /// Bound on how long the live sessions of a dead instance keep counting as live, in ms.
    #[arg(long, env = "LIVENESS_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub liveness_timeout_ms: u64,
}

/// TLS on both ports.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsSettings {
    /// PEM certificate chain: with TLS_KEY_FILE, both ports speak TLS (wss://, https://).
    /// Read again on SIGHUP.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
}

/// Who may connect.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Access")]
pub struct AuthSettings {
    /// Tokens a WebSocket upgrade must present (`Authorization: Bearer <token>` or
    /// `?token=<token>`), comma-separated; several at once for rotation. Unset (and no
    /// AUTH_TOKENS_FILE): anyone who reaches WS_PORT is let in.
    #[arg(
        long,
        env = "AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<String>,

    /// A file of tokens, one per line (`#` comments), read again on SIGHUP.
    #[arg(long, env = "AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,

    /// Ask the same tokens of GET /metrics (as `Authorization: Bearer`).
    #[arg(long, env = "AUTH_METRICS", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub auth_metrics: bool,
}

/// The SocketDock adapter: agents' WebSockets held by SocketDock, frames forwarded to the
/// mediator over HTTP, messages delivered to the sockets. Off without MEDIATOR_URL.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "SocketDock adapter")]
pub struct SocketDockSettings {
    /// The mediator's HTTP inbound endpoint: every frame an agent sends through SocketDock is
    /// POSTed there. Unset: the adapter is off and /socketdock/* answers 404.
    #[arg(long, env = "MEDIATOR_URL")]
    pub mediator_url: Option<String>,

    /// Shared secret SocketDock's callback URLs carry (`?secret=`); required with MEDIATOR_URL.
    #[arg(long, env = "SOCKETDOCK_SECRET", hide_env_values = true)]
    pub socketdock_secret: Option<String>,

    /// Base URLs of the SocketDock instances (their --endpoint), comma-separated; a socket's
    /// send and disconnect URLs must be under one of them. Required with MEDIATOR_URL.
    #[arg(long, env = "SOCKETDOCK_ENDPOINTS", value_delimiter = ',')]
    pub socketdock_endpoints: Vec<String>,

    /// How long a POST to SocketDock may take, in ms; a message is in flight to a socket for
    /// twice this at most (a dead deliverer's message is back in its place then).
    #[arg(long, env = "SOCKETDOCK_SEND_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub socketdock_send_timeout_ms: u64,

    /// How long the mediator may take to answer a forwarded frame, in ms.
    #[arg(long, env = "MEDIATOR_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub mediator_timeout_ms: u64,

    /// How long a socket is remembered without a frame or a delivery, in ms (its disconnect
    /// callback is often lost).
    #[arg(long, env = "SOCKETDOCK_SOCKET_TTL_MS", default_value_t = 86_400_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub socketdock_socket_ttl_ms: u64,

    /// Most DIDComm connections one socket may be bound to.
    #[arg(long, env = "SOCKETDOCK_MAX_CONNECTIONS_PER_SOCKET", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub socketdock_max_connections_per_socket: u64,

    /// Most bytes of a callback body, and of a mediator's reply.
    #[arg(long, env = "SOCKETDOCK_MAX_BODY_BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1024..=(256 << 20)))]
    pub socketdock_max_body_bytes: u64,

    /// Most messages the mediator wraps in one pickup delivery (acknowledged delivery, for
    /// recipients in Pickup V2 live mode).
    #[arg(long, env = "SOCKETDOCK_DELIVERY_BATCH", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub socketdock_delivery_batch: u64,

    /// Most messages in flight, unacknowledged, to a recipient in acknowledged delivery; the
    /// next delivery waits for its messages-received (or their visibility timeout).
    #[arg(long, env = "SOCKETDOCK_DELIVERY_WINDOW", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub socketdock_delivery_window: u64,
}

/// The cold tier (MongoDB) and retention.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cold tier and retention")]
pub struct ColdSettings {
    /// MongoDB for the cold tier (database from the URI path, else MessagePickupRepository).
    /// Unset: messages stay in Redis.
    #[arg(long, env = "MONGODB_URI")]
    pub mongodb_uri: Option<String>,

    /// Age (ms) after which a message's body moves from Redis to MongoDB.
    #[arg(long, env = "THRESHOLD_TIMESTAMP", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub threshold_timestamp: u64,

    /// Retention (seconds): messages older than this are deleted from both tiers. Unset: kept.
    #[arg(long, env = "MESSAGE_TTL", value_parser = clap::value_parser!(u64).range(1..))]
    pub message_ttl: Option<u64>,

    /// How long a MongoDB operation may take before it counts as failed, in ms.
    #[arg(long, env = "MONGODB_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub mongodb_timeout_ms: u64,
}

/// The mover, which moves old messages to MongoDB and applies retention.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Mover")]
pub struct MoverSettings {
    /// Messages per MongoDB write (and per Redis script) when moving or expiring.
    #[arg(long, env = "MOVER_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub mover_batch_size: u64,

    /// Pause between the mover's passes over the connections due for a visit, in ms.
    #[arg(long, env = "MOVER_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub mover_interval_ms: u64,

    /// Lease of one connection by one mover, in ms; a crashed mover's lease expires after it.
    #[arg(long, env = "MOVER_LEASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1000..=3_600_000))]
    pub mover_lease_ms: u64,

    /// Connections one instance's mover works on at once.
    #[arg(long, env = "MOVER_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub mover_concurrency: u64,

    /// Most messages one instance's mover moves per second (0: as fast as it can). Moving
    /// costs Redis and the server CPU; a cap keeps a large backlog from raising the latency of
    /// live calls, at the price of moving it more slowly.
    #[arg(long, env = "MOVER_MAX_RATE", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub mover_max_rate: u64,
}

/// Push notifications (FCM and APNs); a provider without valid credentials is disabled.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Push notifications")]
pub struct PushSettings {
    /// Firebase service-account JSON for FCM HTTP v1; unset, no FCM pushes.
    #[arg(long, env = "FIREBASE_CFG_FILE")]
    pub firebase_cfg_file: Option<PathBuf>,

    /// Base URL of the FCM send endpoint.
    #[arg(
        long,
        env = "FCM_BASE_URL",
        default_value = "https://fcm.googleapis.com"
    )]
    pub fcm_base_url: String,

    /// APNs JSON `{"keyId", "teamId", "production"}`; unset, no APNs pushes.
    #[arg(long, env = "APNS_CFG_FILE")]
    pub apns_cfg_file: Option<PathBuf>,

    /// The APNs `.p8` (EC P-256) signing key.
    #[arg(long, env = "APNS_PATH_KEY")]
    pub apns_path_key: Option<PathBuf>,

    /// The app's bundle id (`apns-topic`).
    #[arg(long, env = "APNS_TOPIC")]
    pub apns_topic: Option<String>,

    /// Base URL of APNs (default: Apple's production or sandbox host, by `production`).
    #[arg(long, env = "APNS_BASE_URL")]
    pub apns_base_url: Option<String>,

    /// Data-only pushes: no visible alert, the app is woken in the background.
    #[arg(long, env = "NOTIFICATION_DATA_ONLY", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub notification_data_only: bool,

    /// Title of the notification.
    #[arg(long, env = "PUSH_TITLE", default_value = "Hologram")]
    pub push_title: String,

    /// Body of the notification.
    #[arg(long, env = "PUSH_BODY", default_value = "You have new messages")]
    pub push_body: String,

    /// At most one push per device token in this window, across instances, in ms (0: no dedup).
    #[arg(long, env = "PUSH_DEDUP_WINDOW_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub push_dedup_window_ms: u64,

    /// Pushes waiting for a worker; past it the oldest is dropped.
    #[arg(long, env = "PUSH_QUEUE_CAPACITY", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub push_queue_capacity: u64,

    /// Pushes sent at once (worker tasks).
    #[arg(long, env = "PUSH_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub push_workers: u64,

    /// Time allowed for one request to FCM, APNs or the token endpoint, in ms.
    #[arg(long, env = "PUSH_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub push_timeout_ms: u64,

    /// Retries of a push after a 5xx, 429 or network error.
    #[arg(long, env = "PUSH_MAX_RETRIES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub push_max_retries: u32,

    /// First retry delay, doubled each retry (with jitter), in ms.
    #[arg(long, env = "PUSH_RETRY_BASE_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub push_retry_base_ms: u64,
}

/// Logs.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logs")]
pub struct LogSettings {
    /// Log filter (`info`, `debug`, `mpr=trace`, ...); RUST_LOG takes precedence when set.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Import the queued messages of a Node MPR (its Redis lists and MongoDB documents) into
    /// this server's layout; safe to run again, and to interrupt and re-run.
    MigrateFromNode(MigrateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Redis of the Node MPR, holding `connectionId:<id>:queuemessages` lists (default: REDIS_URL).
    #[arg(long, env = "NODE_REDIS_URL")]
    pub node_redis_url: Option<String>,

    /// Leave the Node MPR's MongoDB documents out (by default they are imported when MONGODB_URI is set).
    #[arg(long)]
    pub skip_mongodb: bool,

    /// Also index this server's own documents: recovery after Redis lost its data. A document
    /// whose removal was cut short by a crash comes back too.
    #[arg(long, conflicts_with = "skip_mongodb")]
    pub include_own_documents: bool,

    /// How often progress is logged when not on a terminal (on one, a bar shows it), in ms.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub progress_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisType {
    Single,
    Cluster,
    Sentinel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A list of nodes as URLs: entries that are URLs as they are, `host:port` ones made one by
/// `url_of`; blank entries dropped.
fn as_urls(entries: &[String], url_of: impl Fn(&str) -> String) -> Vec<String> {
    entries
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            if entry.contains("://") {
                entry.to_owned()
            } else {
                url_of(entry)
            }
        })
        .collect()
}

/// The URL of the node at `address` (`host:port`) with the scheme and credentials of the URL
/// `template` (`rediss://user:password@...`): how one URL reaches every node of a cluster.
pub fn redis_url_for(template: &str, address: &str) -> String {
    let (scheme, rest) = template.split_once("://").unwrap_or(("redis", template));
    let credentials = rest
        .split_once('@')
        .map(|(userinfo, _)| format!("{userinfo}@"))
        .unwrap_or_default();
    format!("{scheme}://{credentials}{address}")
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl ServerSettings {
    pub fn shutdown_timeout(&self) -> Duration {
        millis(self.shutdown_timeout_ms)
    }

    pub fn ws_handshake_timeout(&self) -> Duration {
        millis(self.ws_handshake_timeout_ms)
    }

    pub fn http_header_read_timeout(&self) -> Duration {
        millis(self.http_header_read_timeout_ms)
    }

    pub fn ws_write_timeout(&self) -> Duration {
        millis(self.ws_write_timeout_ms)
    }

    pub fn ws_ping_interval(&self) -> Duration {
        millis(self.ws_ping_interval_ms)
    }
}

/// A host and a port.
pub type HostPort = (String, u16);

impl RedisSettings {
    pub fn timeout(&self) -> Duration {
        millis(self.redis_timeout_ms)
    }

    pub fn add_settle_timeout(&self) -> Duration {
        millis(self.add_settle_timeout_ms)
    }

    pub fn wait_timeout(&self) -> Duration {
        millis(self.redis_wait_timeout_ms)
    }

    /// The cluster's seed nodes as URLs: `host:port` entries take REDIS_URL's scheme and
    /// credentials.
    pub fn cluster_urls(&self) -> Result<Vec<String>, String> {
        let template = &self.redis_url;
        if !template.contains("://") {
            return Err(format!("REDIS_URL {template:?} is not a URL"));
        }
        let nodes = as_urls(&self.redis_nodes, |node| redis_url_for(template, node));
        if nodes.is_empty() {
            return Err("REDIS_TYPE=cluster needs REDIS_NODES (host:port,...)".into());
        }
        Ok(nodes)
    }

    /// The sentinels as URLs: `host:port` entries take REDIS_URL's scheme, without its
    /// credentials (those are the master's; REDIS_SENTINEL_USERNAME/PASSWORD are the sentinels').
    pub fn sentinel_addresses(&self) -> Result<Vec<String>, String> {
        let scheme = self
            .redis_url
            .split_once("://")
            .map_or("redis", |(scheme, _)| scheme);
        let sentinels = as_urls(&self.redis_sentinels, |sentinel| {
            format!("{scheme}://{sentinel}")
        });
        if sentinels.is_empty() {
            return Err("REDIS_TYPE=sentinel needs REDIS_SENTINELS (host:port,...)".into());
        }
        if let Some(bad) = sentinels
            .iter()
            .find(|url| !url.starts_with("redis://") && !url.starts_with("rediss://"))
        {
            return Err(format!(
                "REDIS_SENTINELS entry {bad:?} must be host:port or a redis:// or rediss:// URL"
            ));
        }
        Ok(sentinels)
    }

    /// REDIS_SENTINEL_MASTER, required with REDIS_TYPE=sentinel.
    pub fn sentinel_master(&self) -> Result<&str, String> {
        match self.redis_sentinel_master.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => Ok(name),
            _ => Err("REDIS_TYPE=sentinel needs REDIS_SENTINEL_MASTER (the name the sentinels monitor the master under)".into()),
        }
    }

    /// REDIS_NATMAP as (announced, reachable) address pairs.
    pub fn natmap(&self) -> Result<Vec<(HostPort, HostPort)>, String> {
        self.redis_natmap
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let parts: Vec<&str> = entry.split(':').collect();
                let port = |text: &str| text.parse::<u16>().ok();
                match parts.as_slice() {
                    [ext_host, ext_port, int_host, int_port] => {
                        match (port(ext_port), port(int_port)) {
                            (Some(ext), Some(int)) if !ext_host.is_empty() && !int_host.is_empty() => {
                                Ok((((*int_host).to_owned(), int), ((*ext_host).to_owned(), ext)))
                            }
                            _ => Err(format!("REDIS_NATMAP entry {entry:?}: ports must be numbers")),
                        }
                    }
                    _ => Err(format!(
                        "REDIS_NATMAP entry {entry:?} is not externalHost:externalPort:internalHost:internalPort"
                    )),
                }
            })
            .collect()
    }
}

impl QueueSettings {
    pub fn redelivery_interval(&self) -> Duration {
        millis(self.redelivery_interval_ms)
    }

    pub fn visibility_timeout(&self) -> Duration {
        millis(self.visibility_timeout_ms)
    }
}

impl SocketDockSettings {
    pub fn send_timeout(&self) -> Duration {
        millis(self.socketdock_send_timeout_ms)
    }

    pub fn mediator_timeout(&self) -> Duration {
        millis(self.mediator_timeout_ms)
    }

    pub fn socket_ttl(&self) -> Duration {
        millis(self.socketdock_socket_ttl_ms)
    }

    fn check(&self) -> Result<(), String> {
        let Some(mediator) = &self.mediator_url else {
            return Ok(());
        };
        let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        if !http(mediator) {
            return Err(format!(
                "MEDIATOR_URL must be an http(s) URL, got {mediator:?}"
            ));
        }
        if self.socketdock_secret.as_deref().is_none_or(str::is_empty) {
            return Err("SOCKETDOCK_SECRET is required with MEDIATOR_URL: SocketDock's callbacks must carry it".into());
        }
        if self.socketdock_endpoints.is_empty() {
            return Err("SOCKETDOCK_ENDPOINTS is required with MEDIATOR_URL: the SocketDock base URLs deliveries may go to".into());
        }
        if let Some(bad) = self.socketdock_endpoints.iter().find(|url| !http(url)) {
            return Err(format!(
                "SOCKETDOCK_ENDPOINTS: {bad:?} is not an http(s) URL"
            ));
        }
        Ok(())
    }
}

impl LiveSettings {
    pub fn liveness_timeout(&self) -> Duration {
        millis(self.liveness_timeout_ms)
    }
}

impl ColdSettings {
    /// Age after which messages move to MongoDB (None: no cold tier).
    pub fn move_after(&self) -> Option<Duration> {
        self.mongodb_uri
            .as_ref()
            .map(|_| millis(self.threshold_timestamp))
    }

    /// Age after which messages are deleted (None: kept).
    pub fn retention(&self) -> Option<Duration> {
        self.message_ttl.map(Duration::from_secs)
    }

    pub fn timeout(&self) -> Duration {
        millis(self.mongodb_timeout_ms)
    }
}

impl MoverSettings {
    pub fn interval(&self) -> Duration {
        millis(self.mover_interval_ms)
    }

    pub fn lease(&self) -> Duration {
        millis(self.mover_lease_ms)
    }

    /// Most messages moved per second by one instance (None: no cap).
    pub fn max_rate(&self) -> Option<u64> {
        (self.mover_max_rate > 0).then_some(self.mover_max_rate)
    }
}

impl Config {
    /// Settings that parse but cannot run together.
    pub fn check(&self) -> Result<(), String> {
        self.socketdock.check()?;
        let redis = &self.redis;
        match redis.redis_type {
            RedisType::Single => {}
            RedisType::Cluster => {
                redis.cluster_urls()?;
            }
            RedisType::Sentinel => {
                redis.sentinel_addresses()?;
                redis.sentinel_master()?;
            }
        }
        redis.natmap()?;
        if !redis.redis_url.starts_with("redis://") && !redis.redis_url.starts_with("rediss://") {
            return Err(format!(
                "REDIS_URL must start with redis:// or rediss://, got {:?}",
                redis.redis_url
            ));
        }
        if let Some(uri) = &self.cold.mongodb_uri
            && !uri.starts_with("mongodb://")
            && !uri.starts_with("mongodb+srv://")
        {
            return Err(format!(
                "MONGODB_URI must start with mongodb:// or mongodb+srv://, got {uri:?}"
            ));
        }
        // A mover waits for its turn while it holds a connection's lease: the wait for the
        // batches of all its visits at once must be well inside the lease.
        let mover = &self.mover;
        let batches = mover.mover_batch_size * mover.mover_concurrency;
        if let Some(wait_ms) = (batches * 1000).checked_div(mover.mover_max_rate)
            && wait_ms * 2 > mover.mover_lease_ms
        {
            return Err(format!(
                "MOVER_MAX_RATE={} is too low for MOVER_BATCH_SIZE={} x MOVER_CONCURRENCY={}: \
                 a visit could wait {wait_ms} ms, more than half of MOVER_LEASE_MS={}",
                mover.mover_max_rate,
                mover.mover_batch_size,
                mover.mover_concurrency,
                mover.mover_lease_ms
            ));
        }
        let push_urls = [
            ("FCM_BASE_URL", Some(&self.push.fcm_base_url)),
            ("APNS_BASE_URL", self.push.apns_base_url.as_ref()),
        ];
        for (name, url) in push_urls {
            if let Some(url) = url
                && !url.starts_with("http://")
                && !url.starts_with("https://")
            {
                return Err(format!(
                    "{name} must start with http:// or https://, got {url:?}"
                ));
            }
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
