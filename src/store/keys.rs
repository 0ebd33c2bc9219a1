//! The Redis key layout. Every key of one connection carries the hash tag `{<connectionId>}`, so
//! one script can touch all of them, on a single node and on Redis Cluster alike.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>:{<c>}:msg` | HASH | message id -> record (header + QueuedMessage JSON) |
//! | `<p>:{<c>}:pending` | ZSET | pending message ids, scored by arrival sequence |
//! | `<p>:{<c>}:inflight` | ZSET | in-flight message ids, scored by visibility deadline (ms) |
//! | `<p>:{<c>}:seq` | STRING | arrival sequence counter |
//! | `<p>:{<c>}:dids` | SET | recipient DIDs with keys below |
//! | `<p>:{<c>}:d:<did>:pending` / `:inflight` | ZSET | the same two indexes for one recipient DID |
//! | `<p>:{<c>}:live` | HASH | live session: instance, socket, session |
//! | `<p>:{<c>}:cold` | ZSET | pending message ids whose body is in MongoDB, scored by sequence |
//! | `<p>:{<c>}:d:<did>:cold` | ZSET | the same for one recipient DID |
//! | `<p>:{<c>}:trash` | SET | ids whose MongoDB documents are still to be deleted |
//! | `<p>:{<c>}:visit` | STRING | marker: the connection is in the visit index (expires) |
//! | `<p>:{<c>}:mover` | STRING | lease of the instance moving the connection's messages |
//! | `<p>:{<c>}:imported` | SET | ids imported from the Node MPR (so a re-run skips them) |
//! | `<p>:{<c>}:moving` | SET | ids a mover has read to move and not yet settled (journal) |
//! | `<p>:visits:{<n>}` | ZSET | connection id, scored by when the mover should look at it (16 shards) |
//! | `<p>:instances` | ZSET | instance id, scored by last heartbeat (ms) |
//! | `<p>:instance:{<i>}:events` | STREAM | live-session events for the sockets of instance `<i>` |
//! | `<p>:instance:{<i>}:reaper` | STRING | lock of the survivor taking over dead instance `<i>` |
//! | `<p>:{<c>}:push` | STRING | the connection's latest push token (30-day TTL) |
//! | `<p>:push:{<h>}` | STRING | dedup window of device token hash `<h>` (TTL: the window) |

/// The keys of one connection's queue, in the order the queue scripts expect them.
pub struct QueueKeys {
    pub keys: [String; 12],
    /// Prefix of the per-recipient-DID keys (`...:d:`), passed to scripts as ARGV[1].
    pub did_base: String,
}

impl QueueKeys {
    pub fn msg(&self) -> &str {
        &self.keys[0]
    }

    pub fn live(&self) -> &str {
        &self.keys[5]
    }

    pub fn trash(&self) -> &str {
        &self.keys[7]
    }

    pub fn mover(&self) -> &str {
        &self.keys[9]
    }

    pub fn moving(&self) -> &str {
        &self.keys[11]
    }
}

/// Shards of the visit index.
pub const VISIT_SHARDS: u64 = 16;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn queue(&self, connection_id: &str) -> QueueKeys {
        let base = format!("{}:{{{}}}:", self.prefix, connection_id);
        let key = |suffix: &str| format!("{base}{suffix}");
        QueueKeys {
            keys: [
                key("msg"),
                key("pending"),
                key("inflight"),
                key("seq"),
                key("dids"),
                key("live"),
                key("cold"),
                key("trash"),
                key("visit"),
                key("mover"),
                key("imported"),
                key("moving"),
            ],
            did_base: key("d:"),
        }
    }

    /// The shard of the visit index holding a connection. Sharded so that, on Redis Cluster,
    /// the index spreads over nodes; FNV-1a keeps the choice stable across processes.
    pub fn visits_of(&self, connection_id: &str) -> String {
        let hash = connection_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        self.visits(hash % VISIT_SHARDS)
    }

    pub fn visits(&self, shard: u64) -> String {
        format!("{}:visits:{{{}}}", self.prefix, shard)
    }

    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    pub fn events(&self, instance: &str) -> String {
        format!("{}:instance:{{{}}}:events", self.prefix, instance)
    }

    /// Lock held by the survivor that takes over a dead instance's events.
    pub fn reaper(&self, instance: &str) -> String {
        format!("{}:instance:{{{}}}:reaper", self.prefix, instance)
    }

    /// The connection's latest push token, beside its queue (same hash tag).
    pub fn push_token(&self, connection_id: &str) -> String {
        format!("{}:{{{}}}:push", self.prefix, connection_id)
    }

    /// The dedup window of one device token, by a hash of the token.
    pub fn push_window(&self, token_hash: &str) -> String {
        format!("{}:push:{{{}}}", self.prefix, token_hash)
    }
}
