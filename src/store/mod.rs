//! Storage: the only module that talks to Redis. Every multi-step update is one function of the
//! library in `functions/` (atomic, and on Redis Cluster within one slot); single-key commands
//! go out as they are. Callers see typed methods, plain Rust values and [`StoreError`]; which
//! kind of Redis runs behind (one node, a cluster, or a master named by Redis Sentinel) is known
//! only to `connection`.

mod clock;
mod connection;
mod events;
pub mod functions;
mod instances;
mod keys;
mod live;
mod node;
mod push;
mod queue;
mod record;
mod redelivery;
mod relay;
mod sentinel;
mod tiering;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::{Cmd, FromRedisValue, RedisError};

use crate::config::{QueueSettings, RedisSettings};
use connection::{RedisClient, RedisConnection};
use functions::{Function, LIBRARY};

pub use clock::{CLOCK_OFFSET_BOUND, ClockOffset, watch as watch_clock};
pub use events::{Event, EventBatch, EventReader, StoredEvent};
pub use instances::Heartbeat;
pub use keys::{CONNECTION_KEYS, ConnectionKeys, DEADLINE_SHARDS, Keys, VISIT_SHARDS};
pub use live::{Bound, PeerAddress, RELAY_KIND};
pub use node::NodeRedis;
pub use queue::{
    Added, LiveDelivery, QueueStatus, Removed, RemovedAll, Settle, Take, Taken, TakenMessage,
};
pub use record::{Record, record_tail};
pub use redelivery::{Claimed, Redelivery, Step};
pub use relay::{
    AttachRefused, HandOut, LeaseClaim, LoopStep, Outcome, RelayPolicy, RelayStep, Sent,
};
pub use tiering::{MoveOutcome, Visits};

/// The oldest Redis with functions (Valkey 7.2 reports a `redis_version` of 7.2 as well).
const MIN_REDIS: (u32, u32) = (7, 0);

#[derive(Debug)]
pub enum StoreError {
    Redis(RedisError),
    /// An addMessage failed in a way that hid whether it ran (its reply was lost), and was
    /// found not to have: it never will (see `settle_add`).
    NotStored(RedisError),
    /// Redis answered, but cannot run this server (too old).
    Unsupported(String),
    /// The message would take the connection past a quota: nothing was added.
    QueueFull(Quota),
    /// Written on the primary, but fewer replicas than REDIS_WAIT_REPLICAS confirmed it in
    /// time: a failover now may undo it.
    NotReplicated {
        acked: u64,
        wanted: u64,
    },
}

/// A per-connection quota and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// QUEUE_MAX_MESSAGES
    Messages(u64),
    /// QUEUE_MAX_BYTES
    Bytes(u64),
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Messages(limit) => write!(
                f,
                "the connection holds {limit} messages (QUEUE_MAX_MESSAGES)"
            ),
            Self::Bytes(limit) => write!(
                f,
                "the message would take the connection past {limit} bytes (QUEUE_MAX_BYTES)"
            ),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The command may or may not have run: its reply never came.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Redis(error) if error.is_timeout())
    }

    /// The command may have run although it failed: its reply was lost on the way (a
    /// timeout, a connection broken after sending). Redis refusing it, or refusing the
    /// connection, leaves nothing behind.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Redis(error) if error.is_io_error() && !error.is_connection_refusal())
    }

    /// The call reached Redis past its fence and did nothing (see `functions`).
    pub fn is_late(&self) -> bool {
        matches!(self, Self::Redis(error) if error.code() == Some("DEADLINE"))
    }

    /// A mover's lease passed to another mover (see `to_cold`).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Redis(error) if error.code() == Some("FENCED"))
    }

    /// Redis refused the credentials of REDIS_URL, or its user may not run what the server
    /// needs (ACL): a setting to fix, not an outage to wait out.
    pub fn is_access_refused(&self) -> bool {
        matches!(self, Self::Redis(error) if sentinel::access_refused(error))
    }

    /// The settings whose credentials Redis refused (see [`Self::is_access_refused`]): the
    /// sentinels' with REDIS_TYPE=sentinel when they refused them, else REDIS_URL's.
    pub fn refused_settings(&self) -> &'static str {
        match self {
            Self::Redis(error) if error.to_string().contains(sentinel::SENTINELS_REFUSED) => {
                "REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD"
            }
            _ => "REDIS_URL",
        }
    }

    fn is_missing_function(&self) -> bool {
        matches!(self, Self::Redis(error) if error.to_string().contains("Function not found"))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis(error) => error.fmt(f),
            Self::NotStored(error) => write!(f, "{error}; the message was not stored"),
            Self::Unsupported(why) => f.write_str(why),
            Self::QueueFull(quota) => quota.fmt(f),
            Self::NotReplicated { acked, wanted } => write!(
                f,
                "written on the primary, but confirmed by {acked} of the {wanted} replicas \
                 REDIS_WAIT_REPLICAS asks for in time: a failover now may undo it"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        Self::Redis(error)
    }
}

/// A cheap handle (clones share one multiplexed connection that reconnects by itself).
#[derive(Clone)]
pub struct Store {
    client: RedisClient,
    conn: RedisConnection,
    keys: Keys,
    visibility_ms: u64,
    /// Most messages, and bytes of them, one connection may hold (0: no quota).
    max_messages: u64,
    max_bytes: u64,
    /// How soon after its first message a connection is visited by the mover (0: never).
    visit_after_ms: u64,
    /// How long an add whose reply was lost tries to learn its outcome (`queue::settle_add`).
    settle_within: Duration,
    /// How long a call waits for its reply (REDIS_TIMEOUT_MS): its fence is that far ahead.
    fence_after: Duration,
    /// When writes wait for replicas (REDIS_WAIT_REPLICAS).
    waits: Option<Arc<Waits>>,
    /// Connections whose deadline-index entry after an unknown outcome is still to be written
    /// (`redelivery::index_later`), shared by the clones; bounded.
    unindexed: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Connections of their own for writes that wait for replicas: Redis runs nothing more from a
/// client blocked in WAIT, so on the shared connection every other call would queue behind
/// each replication round trip. Spread over several, waited writes overlap.
struct Waits {
    replicas: u64,
    timeout_ms: u64,
    conns: Vec<RedisConnection>,
    next: AtomicUsize,
}

impl Waits {
    async fn open(client: &RedisClient, settings: &RedisSettings) -> StoreResult<Self> {
        // A WAIT answers after up to its timeout, on top of the write's own time.
        let timeout = settings.timeout() + settings.wait_timeout();
        let mut conns = Vec::new();
        for _ in 0..settings.redis_wait_connections {
            conns.push(client.connect(Some(timeout)).await?);
        }
        Ok(Self {
            replicas: settings.redis_wait_replicas,
            timeout_ms: settings.wait_timeout().as_millis() as u64,
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn conn(&self) -> RedisConnection {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns[turn % self.conns.len()].clone()
    }
}

impl Store {
    /// A single node is connected lazily: the server starts, and answers errors, while Redis is
    /// away. Commands fail after `REDIS_TIMEOUT_MS`.
    pub async fn open(
        settings: &RedisSettings,
        queue: &QueueSettings,
        visits: Visits,
    ) -> StoreResult<Self> {
        let client = RedisClient::new(settings)?;
        let conn = client.connect(Some(settings.timeout())).await?;
        Ok(Self {
            keys: Keys::new(&settings.redis_prefix),
            visibility_ms: queue.visibility_timeout().as_millis() as u64,
            max_messages: queue.queue_max_messages,
            max_bytes: queue.queue_max_bytes,
            visit_after_ms: visits
                .first_after()
                .map_or(0, |after| after.as_millis().max(1) as u64),
            settle_within: settings.add_settle_timeout(),
            fence_after: settings.timeout(),
            waits: if settings.redis_wait_replicas > 0 {
                Some(Arc::new(Waits::open(&client, settings).await?))
            } else {
                None
            },
            unindexed: Default::default(),
            client,
            conn,
        })
    }

    /// Checks that Redis can run the library (Redis 7 or later) with this server (clocks within
    /// [`CLOCK_OFFSET_BOUND`]) and loads it. Called at start;
    /// when Redis is away then, the library is loaded by the first call that finds it missing.
    pub async fn prepare(&self) -> StoreResult<()> {
        let info: redis::Value = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn.clone())
            .await?;
        for version in redis_versions(&info) {
            if parse_version(&version).is_none_or(|v| v < MIN_REDIS) {
                return Err(StoreError::Unsupported(format!(
                    "Redis {version} cannot run mpr: it needs Redis {}.{} or later (or Valkey 7.2 or \
                     later) for Redis Functions",
                    MIN_REDIS.0, MIN_REDIS.1
                )));
            }
        }
        let offset = self.clock_offset().await?;
        if offset.beyond_bound() {
            return Err(StoreError::Unsupported(offset.to_string()));
        }
        self.load_library().await
    }

    async fn load_library(&self) -> StoreResult<()> {
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&LIBRARY.source)
            .exec_async(&mut self.conn.clone())
            .await?;
        tracing::info!(library = %format!("mpr_{}", LIBRARY.version), "Redis function library loaded");
        Ok(())
    }

    /// Readiness: Redis answers, takes these credentials and runs the library for this user
    /// (a PING would pass for a user that may run nothing else).
    pub async fn ping(&self) -> StoreResult<()> {
        self.instance_alive("", Duration::ZERO).await.map(drop)
    }

    /// Runs one command on the shared connection.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        Ok(cmd.query_async(&mut self.conn.clone()).await?)
    }

    /// `SET key value NX PX ttl`: claims a key for `ttl` unless it is held; true when claimed.
    async fn claim(&self, key: String, value: &str, ttl: Duration) -> StoreResult<bool> {
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let claimed: Option<String> = self.query(&set).await?;
        Ok(claimed.is_some())
    }

    /// The fence of a call made now: when this server stops waiting for its reply. Redis does
    /// nothing for it past that, by its own clock (see `functions`).
    fn deadline_ms(&self) -> u64 {
        crate::model::now_ms().max(0) as u64 + self.fence_after.as_millis() as u64
    }

    /// FCALL of a function on `keys`, fenced. Arguments follow with `.arg()` on the returned
    /// command.
    fn function_call(&self, function: &Function, keys: Vec<String>) -> Cmd {
        fcall(function.args(keys, self.deadline_ms()))
    }

    /// FCALL of a function on one connection's keys, fenced; `dids` are the recipient DIDs
    /// whose keys the call declares. Arguments follow with `.arg()` on the returned command.
    fn connection_call(&self, function: &Function, connection_id: &str, dids: &[&str]) -> Cmd {
        fcall(function.call_args(&self.keys, connection_id, dids, self.deadline_ms()))
    }

    /// Runs a function call, loading the library first if Redis lost it (a restart without
    /// persistence, a failover to a replica that never had it).
    async fn call<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        match self.query(cmd).await {
            Err(error) if error.is_missing_function() => {
                tracing::warn!("the Redis function library is missing; loading it again");
                self.load_library().await?;
                self.query(cmd).await
            }
            other => other,
        }
    }
}

impl Store {
    /// Runs a function call that writes to one connection's keys. With REDIS_WAIT_REPLICAS set
    /// it is followed, on the same connection to the same node (one of the waited writes'
    /// own), by a WAIT for that many replicas: fewer in time make it `NotReplicated` (the
    /// write stands on the primary).
    async fn write<T: FromRedisValue>(&self, cmd: &Cmd, connection_id: &str) -> StoreResult<T> {
        let Some(waits) = &self.waits else {
            return self.call(cmd).await;
        };
        let replicas = waits.replicas;
        let mut pipeline = redis::pipe();
        pipeline
            .add_command(cmd.clone())
            .cmd("WAIT")
            .arg(replicas)
            .arg(waits.timeout_ms);
        let slot_of = self.keys.connection(connection_id).key("msg");
        let conn = waits.conn();
        let mut replies = match replies(&conn, &pipeline, &slot_of).await {
            Err(error) if error.is_missing_function() => {
                tracing::warn!("the Redis function library is missing; loading it again");
                self.load_library().await?;
                replies(&conn, &pipeline, &slot_of).await?
            }
            other => other?,
        }
        .into_iter();
        let written = T::from_redis_value(reply_or_error(replies.next())?)
            .map_err(|error| StoreError::Redis(error.into()))?;
        let acked: u64 = u64::from_redis_value(reply_or_error(replies.next())?)
            .map_err(|error| StoreError::Redis(error.into()))?;
        if acked < replicas {
            return Err(StoreError::NotReplicated {
                acked,
                wanted: replicas,
            });
        }
        Ok(written)
    }
}

fn fcall(args: Vec<String>) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}

/// The replies of a pipeline sent on `conn` to the node of `key`; the first error reply is the
/// error.
async fn replies(
    conn: &RedisConnection,
    pipeline: &redis::Pipeline,
    key: &str,
) -> StoreResult<Vec<redis::Value>> {
    let replies = conn.clone().pipeline_at(pipeline, key).await?;
    if let Some(first) = replies.first() {
        first.clone().extract_error()?;
    }
    Ok(replies)
}

fn reply_or_error(reply: Option<redis::Value>) -> StoreResult<redis::Value> {
    Ok(reply.unwrap_or(redis::Value::Nil).extract_error()?)
}

/// Every `redis_version` an INFO reply names (one per node on a cluster).
fn redis_versions(info: &redis::Value) -> Vec<String> {
    let mut versions = Vec::new();
    let mut visit = |text: &str| {
        versions.extend(
            text.lines()
                .filter_map(|line| line.strip_prefix("redis_version:"))
                .map(|version| version.trim().to_owned()),
        );
    };
    match info {
        redis::Value::BulkString(bytes) => visit(&String::from_utf8_lossy(bytes)),
        redis::Value::VerbatimString { text, .. } => visit(text),
        redis::Value::Map(nodes) => {
            for (_, reply) in nodes {
                versions.extend(redis_versions(reply));
            }
        }
        _ => {}
    }
    versions
}

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_info() {
        let info = redis::Value::BulkString(
            b"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n".to_vec(),
        );
        assert_eq!(redis_versions(&info), ["7.0.15"]);
        assert_eq!(parse_version("7.0.15"), Some((7, 0)));
        assert!(parse_version("6.2.14").unwrap() < MIN_REDIS);
        assert!(parse_version("7.2.4").unwrap() >= MIN_REDIS);
        assert_eq!(parse_version("garbage"), None);
    }
}
