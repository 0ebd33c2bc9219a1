//! Storage: every read and write of queues and live-session bindings, each one atomic script
//! (or single command) against Redis. Callers see plain Rust values and `redis::RedisError`.

mod keys;
mod message;

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

pub use keys::{Keys, QueueKeys, VISIT_SHARDS};
pub use message::{NewMessage, Record, iso_millis, queued_message_json, record_tail};
pub use tiering::{MoveOutcome, Visits, is_fenced};

macro_rules! queue_script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!($file)
            ))
        })
    };
}

// After the macro, which it uses.
mod tiering;

static ADD_MESSAGE: LazyLock<Script> = queue_script!("lua/add_message.lua");
static TAKE_FROM_QUEUE: LazyLock<Script> = queue_script!("lua/take_from_queue.lua");
static COUNT_PENDING: LazyLock<Script> = queue_script!("lua/count_pending.lua");
static REMOVE_MESSAGES: LazyLock<Script> = queue_script!("lua/remove_messages.lua");
static REMOVE_ALL_MESSAGES: LazyLock<Script> = queue_script!("lua/remove_all_messages.lua");
static RELEASE: LazyLock<Script> = queue_script!("lua/release.lua");
static SETTLE_COLD: LazyLock<Script> = queue_script!("lua/settle_cold.lua");
static UNBIND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/unbind.lua")));
static RESTORE_BINDING: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/restore_binding.lua")));
static HEARTBEAT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/heartbeat.lua")));
static INSTANCE_ALIVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/instance_alive.lua")));

/// Messages one script deletes one by one (~10 µs each in Redis) before yielding to other clients.
const REMOVE_BATCH: u64 = 2000;

/// Where a connection's live session is served: an instance and a socket on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub instance: String,
    pub socket: u64,
}

/// An added message that went straight in flight to a live session.
#[derive(Debug, Clone)]
pub struct LiveDelivery {
    pub binding: Binding,
    /// Visibility deadline the message got (Redis clock, ms); a release must name it.
    pub deadline: i64,
}

pub struct Take<'a> {
    pub recipient_did: Option<&'a str>,
    pub limit: u64,
    pub limit_bytes: u64,
    pub delete: bool,
    /// Leave cold messages out (MongoDB is unavailable): serve what Redis holds.
    pub hot_only: bool,
}

/// What a take handed out, oldest first.
pub struct Taken {
    /// The visibility deadline of the messages left in flight (Redis clock, ms).
    pub deadline: i64,
    pub messages: Vec<TakenMessage>,
}

pub struct TakenMessage {
    pub id: String,
    /// The QueuedMessage JSON, or `None` for a cold message: in flight until the caller has
    /// read it from MongoDB and settled it.
    pub body: Option<String>,
}

/// What removeAllMessages did.
pub struct RemovedAll {
    pub removed: u64,
    /// Cold messages deleted one by one: their documents are to be deleted.
    pub trashed: Vec<String>,
    /// When whole cold tiers went at once: the connection's documents received up to this
    /// time (Redis clock, ms) are to be deleted.
    pub cold_cutoff_ms: Option<i64>,
}

/// How a take's cold messages end.
#[derive(Clone, Copy)]
pub enum Settle {
    /// Delivered with deleteMessages, or gone from MongoDB: delete them.
    Delete,
    /// MongoDB could not be read: pending again.
    Release,
}

/// A cheap handle (clones share one multiplexed connection that reconnects by itself).
#[derive(Clone)]
pub struct Store {
    client: redis::Client,
    conn: ConnectionManager,
    keys: Keys,
    visibility_ms: u64,
    /// How soon after its first message a connection is visited by the mover (0: never).
    visit_after_ms: u64,
}

impl Store {
    /// Connects lazily: the server starts, and answers errors, while Redis is away.
    pub fn open(
        url: &str,
        prefix: &str,
        timeout: Duration,
        visibility: Duration,
        visit_after: Option<Duration>,
    ) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            conn: ConnectionManager::new_lazy_with_config(client.clone(), config)?,
            client,
            keys: Keys::new(prefix),
            visibility_ms: visibility.as_millis() as u64,
            visit_after_ms: visit_after.map_or(0, |after| after.as_millis().max(1) as u64),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection for commands outside the queue scripts (events, heartbeats).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, without response timeout, for blocking reads.
    pub async fn blocking_connection(&self) -> RedisResult<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING").query_async(&mut self.connection()).await
    }

    /// Queues a message; when the connection has a live session it is queued in flight to it.
    pub async fn add_message(
        &self,
        connection_id: &str,
        message: &NewMessage<'_>,
    ) -> RedisResult<Option<LiveDelivery>> {
        let queue = self.keys.queue(connection_id);
        let mut call = queue_call(&ADD_MESSAGE, &queue);
        call.arg(&message.id)
            .arg(self.visibility_ms)
            .arg(message.record_tail())
            .arg(self.visit_after_ms)
            .arg(message.dids);
        let mut reply: Vec<redis::Value> = call.invoke_async(&mut self.connection()).await?;
        let visit: u8 = redis::FromRedisValue::from_redis_value(reply.remove(0))?;
        if visit == 1 {
            // A crash before this leaves the message unvisited until the marker expires and
            // another message arrives: it stays served from Redis meanwhile, never lost.
            let at = message.received_ms + self.visit_after_ms as i64;
            self.schedule_visit(connection_id, at, true).await?;
        }
        if reply.is_empty() {
            return Ok(None);
        }
        let (instance, socket, deadline): (String, u64, i64) =
            redis::FromRedisValue::from_redis_value(redis::Value::Array(reply))?;
        Ok(Some(LiveDelivery {
            binding: Binding { instance, socket },
            deadline,
        }))
    }

    /// The oldest pending messages of both tiers; cold ones are left in flight for `settle_cold`.
    pub async fn take(&self, connection_id: &str, take: &Take<'_>) -> RedisResult<Taken> {
        let queue = self.keys.queue(connection_id);
        let mut call = queue_call(&TAKE_FROM_QUEUE, &queue);
        call.arg(take.recipient_did.unwrap_or(""))
            .arg(take.limit)
            .arg(take.limit_bytes)
            .arg(flag(take.delete))
            .arg(self.visibility_ms)
            .arg(flag(take.hot_only));
        let (deadline, pairs): (i64, Vec<(String, String)>) =
            call.invoke_async(&mut self.connection()).await?;
        let messages = pairs
            .into_iter()
            .map(|(id, body)| TakenMessage {
                id,
                body: (!body.is_empty()).then_some(body),
            })
            .collect();
        Ok(Taken { deadline, messages })
    }

    /// Deletes or releases cold messages a take left in flight with `deadline`. Returns the ids
    /// whose documents are to be deleted.
    pub async fn settle_cold(
        &self,
        connection_id: &str,
        deadline: i64,
        ids: &[&str],
        settle: Settle,
    ) -> RedisResult<Vec<String>> {
        let queue = self.keys.queue(connection_id);
        let mut call = queue_call(&SETTLE_COLD, &queue);
        call.arg(match settle {
            Settle::Delete => "delete",
            Settle::Release => "release",
        })
        .arg(deadline)
        .arg(ids);
        let (_, trashed): (u64, Vec<String>) = call.invoke_async(&mut self.connection()).await?;
        Ok(trashed)
    }

    /// Forgets trashed ids once their documents are deleted.
    pub async fn clear_trash(&self, connection_id: &str, ids: &[String]) -> RedisResult<()> {
        let queue = self.keys.queue(connection_id);
        redis::cmd("SREM")
            .arg(queue.trash())
            .arg(ids)
            .query_async(&mut self.connection())
            .await
    }

    pub async fn count_pending(
        &self,
        connection_id: &str,
        recipient_did: Option<&str>,
    ) -> RedisResult<u64> {
        let queue = self.keys.queue(connection_id);
        let mut call = queue_call(&COUNT_PENDING, &queue);
        call.arg(recipient_did.unwrap_or(""));
        call.invoke_async(&mut self.connection()).await
    }

    /// Returns the ids of removed cold messages, whose documents are to be deleted.
    pub async fn remove_messages(
        &self,
        connection_id: &str,
        ids: &[String],
    ) -> RedisResult<Vec<String>> {
        let queue = self.keys.queue(connection_id);
        let mut call = queue_call(&REMOVE_MESSAGES, &queue);
        call.arg(ids);
        let (_, trashed): (u64, Vec<String>) = call.invoke_async(&mut self.connection()).await?;
        Ok(trashed)
    }

    /// Removes every message of the connection, or of one recipient DID. The DID's messages
    /// are deleted in atomic batches when other DIDs share the queue, so a long queue never
    /// blocks Redis; a message added meanwhile may or may not be removed.
    pub async fn remove_all(
        &self,
        connection_id: &str,
        recipient_did: Option<&str>,
    ) -> RedisResult<RemovedAll> {
        let queue = self.keys.queue(connection_id);
        let mut all = RemovedAll {
            removed: 0,
            trashed: Vec::new(),
            cold_cutoff_ms: None,
        };
        loop {
            let mut call = queue_call(&REMOVE_ALL_MESSAGES, &queue);
            call.arg(recipient_did.unwrap_or("")).arg(REMOVE_BATCH);
            let (batch, more, cutoff, trashed): (u64, u8, i64, Vec<String>) =
                call.invoke_async(&mut self.connection()).await?;
            all.removed += batch;
            all.trashed.extend(trashed);
            if cutoff > 0 {
                all.cold_cutoff_ms = Some(cutoff);
            }
            if more == 0 {
                return Ok(all);
            }
        }
    }

    /// Makes messages of undeliverable events pending again (only those still in flight with
    /// the deadline their event set), and drops the binding if it still names that socket.
    pub async fn release(
        &self,
        connection_id: &str,
        binding: &Binding,
        messages: &[(String, i64)],
    ) -> RedisResult<u64> {
        let queue = self.keys.queue(connection_id);
        let mut call = queue_call(&RELEASE, &queue);
        call.arg(&binding.instance).arg(binding.socket);
        for (id, deadline) in messages {
            call.arg(id).arg(deadline);
        }
        call.invoke_async(&mut self.connection()).await
    }

    pub async fn binding(&self, connection_id: &str) -> RedisResult<Option<Binding>> {
        let queue = self.keys.queue(connection_id);
        let (instance, socket): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(queue.live())
            .arg("instance")
            .arg("socket")
            .query_async(&mut self.connection())
            .await?;
        Ok(instance
            .zip(socket)
            .map(|(instance, socket)| Binding { instance, socket }))
    }

    /// Binds the connection's live session to a socket; the newest binding wins.
    pub async fn bind(
        &self,
        connection_id: &str,
        binding: &Binding,
        session_id: &str,
    ) -> RedisResult<()> {
        let queue = self.keys.queue(connection_id);
        redis::cmd("HSET")
            .arg(queue.live())
            .arg("instance")
            .arg(&binding.instance)
            .arg("socket")
            .arg(binding.socket)
            .arg("session")
            .arg(session_id)
            .query_async(&mut self.connection())
            .await
    }

    /// Binds only where no binding exists (after Redis lost this instance's bindings).
    pub async fn restore_binding(
        &self,
        connection_id: &str,
        binding: &Binding,
        session_id: &str,
    ) -> RedisResult<bool> {
        let queue = self.keys.queue(connection_id);
        RESTORE_BINDING
            .key(queue.live())
            .arg(&binding.instance)
            .arg(binding.socket)
            .arg(session_id)
            .invoke_async(&mut self.connection())
            .await
    }

    /// Ends the session if it is still bound to this socket. Returns whether it was.
    pub async fn unbind(&self, connection_id: &str, binding: &Binding) -> RedisResult<bool> {
        let queue = self.keys.queue(connection_id);
        UNBIND
            .key(queue.live())
            .arg(&binding.instance)
            .arg(binding.socket)
            .invoke_async(&mut self.connection())
            .await
    }
}

/// What one heartbeat learned.
pub struct Heartbeat {
    /// This instance was not registered: first beat, or Redis lost the registration.
    pub was_missing: bool,
    pub alive: Vec<String>,
    pub dead: Vec<String>,
}

impl Store {
    /// Records a heartbeat of `instance`; instances silent for `dead_after` are dead.
    pub async fn heartbeat(&self, instance: &str, dead_after: Duration) -> RedisResult<Heartbeat> {
        let (added, alive, dead): (i64, Vec<String>, Vec<String>) = HEARTBEAT
            .key(self.keys.instances())
            .arg(instance)
            .arg(dead_after.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(Heartbeat {
            was_missing: added == 1,
            alive,
            dead,
        })
    }

    pub async fn instance_alive(&self, instance: &str, dead_after: Duration) -> RedisResult<bool> {
        INSTANCE_ALIVE
            .key(self.keys.instances())
            .arg(instance)
            .arg(dead_after.as_millis() as u64)
            .invoke_async(&mut self.connection())
            .await
    }
}

fn flag(value: bool) -> &'static str {
    if value { "1" } else { "0" }
}

fn queue_call<'a>(script: &'a Script, queue: &'a QueueKeys) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    for key in &queue.keys {
        call.key(key);
    }
    call.arg(&queue.did_base);
    call
}
