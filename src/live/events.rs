//! Events between instances: one Redis stream per instance, read by that instance through a
//! consumer group. A dead instance's unread or unacknowledged events stay in its stream for a
//! survivor to take over (see `instances`); pub/sub would drop them.

use std::time::Duration;

use redis::streams::{StreamId, StreamReadReply};
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;

use super::Live;
use crate::store::{Binding, Store};

pub const GROUP: &str = "mpr";
/// Approximate cap on a stream, in case its instance hangs without dying.
const STREAM_CAP: usize = 100_000;
const READ_BATCH: usize = 512;
const BLOCK_MS: usize = 1000;

pub struct Event<'a> {
    pub connection_id: &'a str,
    pub socket: u64,
    pub message_id: &'a str,
    pub deadline: i64,
    pub body: &'a str,
}

/// An event as read back from a stream.
struct StoredEvent {
    pub connection_id: String,
    pub socket: u64,
    pub message_id: String,
    pub deadline: i64,
    pub body: String,
}

pub async fn publish(store: &Store, instance: &str, event: &Event<'_>) -> RedisResult<()> {
    redis::cmd("XADD")
        .arg(store.keys().events(instance))
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_CAP)
        .arg("*")
        .arg("c")
        .arg(event.connection_id)
        .arg("s")
        .arg(event.socket)
        .arg("i")
        .arg(event.message_id)
        .arg("d")
        .arg(event.deadline)
        .arg("m")
        .arg(event.body)
        .exec_async(&mut store.connection())
        .await
}

/// Reads this instance's stream and hands each event to its socket, until `shutdown`.
pub async fn consume(live: std::sync::Arc<Live>, shutdown: CancellationToken) {
    let key = live.store.keys().events(&live.instance);
    let mut conn = None;
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        let connection = match conn.as_mut() {
            Some(connection) => connection,
            None => match live.store.blocking_connection().await {
                Ok(connection) => conn.insert(connection),
                Err(error) => {
                    tracing::warn!(%error, "event stream: cannot connect to Redis; retrying");
                    wait(&shutdown, &mut backoff).await;
                    continue;
                }
            },
        };
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(&live.instance);
        read.arg("COUNT").arg(READ_BATCH).arg("BLOCK").arg(BLOCK_MS);
        read.arg("STREAMS").arg(&key).arg(">");
        let reply: RedisResult<Option<StreamReadReply>> = tokio::select! {
            reply = read.query_async(connection) => reply,
            () = shutdown.cancelled() => break,
        };
        match reply {
            Ok(reply) => {
                backoff = Duration::from_millis(50);
                let entries: Vec<StreamId> = reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .collect();
                if !entries.is_empty() {
                    let delivered = deliver_batch(&live, &live.instance, entries).await;
                    // Off the read path: the next read does not wait for this round trip.
                    let store = live.store.clone();
                    let owner = live.instance.clone();
                    tokio::spawn(async move { acknowledge(&store, &owner, &delivered).await });
                }
            }
            Err(error) if error.code() == Some("NOGROUP") => {
                if let Err(error) = create_group(&live.store, &key).await {
                    tracing::warn!(%error, "event stream: cannot create consumer group");
                    wait(&shutdown, &mut backoff).await;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "event stream: read failed; reconnecting");
                conn = None;
                wait(&shutdown, &mut backoff).await;
            }
        }
    }
}

/// Delivers events read from `owner`'s stream (this instance's own, or a dead one's being taken
/// over). Returns their entry ids, to acknowledge.
pub async fn deliver_batch(live: &Live, owner: &str, entries: Vec<StreamId>) -> Vec<String> {
    let mut entry_ids = Vec::with_capacity(entries.len());
    for entry in entries {
        entry_ids.push(entry.id.clone());
        let Some(event) = decode(&entry) else {
            tracing::warn!(entry = %entry.id, "event stream: malformed entry dropped");
            continue;
        };
        let binding = Binding {
            instance: owner.to_owned(),
            socket: event.socket,
        };
        let messages = vec![(event.message_id, event.deadline)];
        if owner == live.instance {
            live.deliver_here(&event.connection_id, binding, messages, &[&event.body])
                .await;
        } else {
            live.undeliverable(&event.connection_id, &binding, &messages, "instance_gone")
                .await;
        }
    }
    entry_ids
}

/// Acknowledges and deletes delivered entries. An entry left unacknowledged is re-read only by
/// a survivor taking over after this instance died; releases are idempotent, so that is safe.
pub async fn acknowledge(store: &Store, owner: &str, entry_ids: &[String]) {
    let key = store.keys().events(owner);
    let mut pipe = redis::pipe();
    pipe.cmd("XACK")
        .arg(&key)
        .arg(GROUP)
        .arg(entry_ids)
        .ignore();
    pipe.cmd("XDEL").arg(&key).arg(entry_ids).ignore();
    if let Err(error) = pipe.exec_async(&mut store.connection()).await {
        tracing::warn!(%error, "event stream: acknowledge failed");
    }
}

pub async fn create_group(store: &Store, key: &str) -> RedisResult<()> {
    // From id 0: events written before the group existed (after Redis lost it) are not skipped.
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .exec_async(&mut store.connection())
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

fn decode(entry: &StreamId) -> Option<StoredEvent> {
    let field = |name: &str| -> Option<String> {
        match entry.map.get(name)? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            _ => None,
        }
    };
    Some(StoredEvent {
        connection_id: field("c")?,
        socket: field("s")?.parse().ok()?,
        message_id: field("i")?,
        deadline: field("d")?.parse().ok()?,
        body: field("m")?,
    })
}

async fn wait(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}
