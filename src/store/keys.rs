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
//! | `<p>:instances` | ZSET | instance id, scored by last heartbeat (ms) |
//! | `<p>:instance:{<i>}:events` | STREAM | live-session events for the sockets of instance `<i>` |
//! | `<p>:instance:{<i>}:reaper` | STRING | lock of the survivor taking over dead instance `<i>` |

/// The keys of one connection's queue, in the order the queue scripts expect them.
pub struct QueueKeys {
    pub keys: [String; 6],
    /// Prefix of the per-recipient-DID keys (`...:d:`), passed to scripts as ARGV[1].
    pub did_base: String,
}

impl QueueKeys {
    pub fn live(&self) -> &str {
        &self.keys[5]
    }
}

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
            ],
            did_base: key("d:"),
        }
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
}
