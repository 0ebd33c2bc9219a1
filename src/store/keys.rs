//! The Redis key layout. Every key of one connection carries the hash tag `{<connectionId>}`, so
//! one function can touch all of them, on a single node and on Redis Cluster alike.
//!
//! A tenant's connection keys are `<p>:t:<tenant>:{<c>}:...` instead of `<p>:{<c>}:...`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>:{<c>}:msg` | HASH | message id -> record (header + QueuedMessage JSON) |
//! | `<p>:{<c>}:pending` | ZSET | pending message ids held in Redis, scored by arrival sequence |
//! | `<p>:{<c>}:cold` | ZSET | pending message ids whose body is in MongoDB, scored by sequence |
//! | `<p>:{<c>}:inflight` | ZSET | in-flight message ids, scored by visibility deadline (ms) |
//! | `<p>:{<c>}:pushed` | ZSET | in-flight ids pushed to a live session, scored by the binding generation they went under |
//! | `<p>:{<c>}:seq` | STRING | arrival sequence counter |
//! | `<p>:{<c>}:conn` | HASH | live binding (`kind`, `peer`, `session`) and its generation `gen`, `visit` (when the connection is next due to re-enter the visit index), `due` (its time in the deadline index), `bytes` (of encryptedMessage it holds), `cleared` (when the whole queue was last removed), `d:<did>` per recipient DID with keys below |
//! | `<p>:{<c>}:d:<did>:pending` / `:cold` / `:inflight` | ZSET | the same three indexes for one recipient DID |
//! | `<p>:{<c>}:trash` | SET | ids whose MongoDB documents are still to be deleted |
//! | `<p>:{<c>}:mover` | STRING | lease of the instance moving the connection's messages |
//! | `<p>:{<c>}:imported` | SET | ids imported from the Node MPR (so a re-run skips them) |
//! | `<p>:{<c>}:moving` | SET | ids a mover has read to move and not yet settled (journal) |
//! | `<p>:{<c>}:push` | STRING | the connection's latest push token (30-day TTL) |
//! | `<p>:{<c>}:removed` | ZSET | ids of recently received messages removed in the last 2 minutes, scored by removal time (an add whose reply was lost is settled against it) |
//! | `<p>:{<c>}:relay` | STRING | lease of the instance delivering the connection's messages to its SocketDock socket |
//! | `<p>:sd:{<s>}` | HASH | SocketDock socket `<s>`: its `send` and `disconnect` URLs (TTL: SOCKETDOCK_SOCKET_TTL_MS) |
//! | `<p>:sd:{<s>}:bound` | SET | connection ids bound to socket `<s>` (bounded; same TTL) |
//! | `<p>:visits:{<n>}` | ZSET | connection id, scored by when the mover should look at it (16 shards) |
//! | `<p>:deadlines:{<n>}` | ZSET | connection id, scored by its earliest in-flight deadline (16 shards) |
//! | `<p>:instances` | ZSET | instance id, scored by last heartbeat (ms) |
//! | `<p>:{<p>:instances}:timeouts` | HASH | instance id -> how long it may stay silent before it is dead (ms; its own LIVENESS_TIMEOUT_MS's share) |
//! | `<p>:instance:{<i>}:events` | STREAM | live-session events for the peers served by instance `<i>` |
//! | `<p>:instance:{<i>}:reaper` | STRING | lock of the survivor taking over dead instance `<i>` |
//! | `<p>:push:{<h>}` | STRING | dedup window of device token hash `<h>` (TTL: the window) |

/// The names of a connection's keys (`<p>:{<c>}:<name>`), as the function table uses them;
/// per-DID keys are `<p>:{<c>}:d:<did>:<name>` with `pending`, `cold` or `inflight`.
pub const CONNECTION_KEYS: [&str; 13] = [
    "msg", "pending", "cold", "inflight", "pushed", "seq", "conn", "trash", "mover", "imported",
    "moving", "relay", "removed",
];

/// Shards of the visit index, and of the deadline index.
pub const VISIT_SHARDS: u64 = 16;
pub const DEADLINE_SHARDS: u64 = 16;

/// Sharded so that, on Redis Cluster, an index spreads over nodes; FNV-1a keeps the choice
/// stable across processes.
fn shard_of(connection_id: &str, shards: u64) -> u64 {
    let hash = connection_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    hash % shards
}

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one connection: `<p>:{<c>}:`.
pub struct ConnectionKeys {
    base: String,
}

impl ConnectionKeys {
    pub fn key(&self, name: &str) -> String {
        debug_assert!(CONNECTION_KEYS.contains(&name) || name == "push", "{name}");
        format!("{}{name}", self.base)
    }

    pub fn did_key(&self, did: &str, name: &str) -> String {
        format!("{}d:{did}:{name}", self.base)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// A tenant's connections live under `<p>:t:<tenant>:` (see `model::split_tenant`).
    pub fn connection(&self, connection_id: &str) -> ConnectionKeys {
        let base = match crate::model::split_tenant(connection_id) {
            (Some(tenant), id) => format!("{}:t:{tenant}:{{{id}}}:", self.prefix),
            (None, id) => format!("{}:{{{id}}}:", self.prefix),
        };
        ConnectionKeys { base }
    }

    /// The shard of the visit index holding a connection.
    pub fn visits_of(&self, connection_id: &str) -> String {
        self.visits(shard_of(connection_id, VISIT_SHARDS))
    }

    pub fn visits(&self, shard: u64) -> String {
        format!("{}:visits:{{{}}}", self.prefix, shard)
    }

    /// The shard of the deadline index holding a connection.
    pub fn deadlines_of(&self, connection_id: &str) -> String {
        self.deadlines(shard_of(connection_id, DEADLINE_SHARDS))
    }

    pub fn deadlines(&self, shard: u64) -> String {
        format!("{}:deadlines:{{{}}}", self.prefix, shard)
    }

    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// Each instance's own liveness timeout. Its hash tag is the whole name of `instances`
    /// (which has none), so both keys hash to one slot and one function reads both; it starts
    /// with the prefix like every key (ACLs grant `~<p>:*`).
    pub fn instance_timeouts(&self) -> String {
        format!("{}:{{{}}}:timeouts", self.prefix, self.instances())
    }

    pub fn events(&self, instance: &str) -> String {
        format!("{}:instance:{{{}}}:events", self.prefix, instance)
    }

    /// Lock held by the survivor that takes over a dead instance's events.
    pub fn reaper(&self, instance: &str) -> String {
        format!("{}:instance:{{{}}}:reaper", self.prefix, instance)
    }

    /// A SocketDock socket's record, and the connections bound to it (one hash tag).
    pub fn socket(&self, socket_id: &str) -> [String; 2] {
        let base = format!("{}:sd:{{{}}}", self.prefix, socket_id);
        let bound = format!("{base}:bound");
        [base, bound]
    }

    /// The dedup window of one device token, by a hash of the token.
    pub fn push_window(&self, token_hash: &str) -> String {
        format!("{}:push:{{{}}}", self.prefix, token_hash)
    }
}
