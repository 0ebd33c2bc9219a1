//! Events between instances: one Redis stream per instance, read by that instance through a
//! consumer group on a connection of its own (reads block). A dead instance's unread or
//! unacknowledged events stay in its stream for a survivor to take over; pub/sub would drop them.

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisResult, Value};

use super::connection::RedisConnection;
use super::live::Bound;
use super::{Store, StoreError, StoreResult};

const GROUP: &str = "mpr";
/// Approximate cap on a stream, in case its instance hangs without dying.
const STREAM_CAP: usize = 100_000;

/// A message put in flight to a peer served by another instance.
pub struct Event<'a> {
    pub connection_id: &'a str,
    /// The binding it went in flight under: a release must name it.
    pub bound: &'a Bound,
    pub message_id: &'a str,
    pub deadline: i64,
    pub body: &'a str,
}

/// Entries read from a stream: the events, and every entry's id to acknowledge.
#[derive(Default)]
pub struct EventBatch {
    pub events: Vec<StoredEvent>,
    pub entry_ids: Vec<String>,
}

impl EventBatch {
    pub fn is_empty(&self) -> bool {
        self.entry_ids.is_empty()
    }
}

/// An event as read back from a stream.
pub struct StoredEvent {
    pub connection_id: String,
    pub bound: Bound,
    pub message_id: String,
    pub deadline: i64,
    pub body: String,
}

/// Reads one instance's stream, blocking, on its own connection.
pub struct EventReader {
    conn: RedisConnection,
    key: String,
    consumer: String,
}

impl Store {
    pub async fn publish_event(&self, instance: &str, event: &Event<'_>) -> StoreResult<()> {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.events(instance))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_CAP)
            .arg("*")
            .arg("c")
            .arg(event.connection_id)
            .arg("k")
            .arg(&event.bound.kind)
            .arg("p")
            .arg(&event.bound.address)
            .arg("i")
            .arg(event.message_id)
            .arg("d")
            .arg(event.deadline)
            .arg("m")
            .arg(event.body);
        let _: Value = self.query(&xadd).await?;
        Ok(())
    }

    /// A reader of `instance`'s stream, as consumer `instance`, on a connection without response
    /// timeout.
    pub async fn event_reader(&self, instance: &str) -> StoreResult<EventReader> {
        Ok(EventReader {
            conn: self.client.connect(None).await?,
            key: self.keys.events(instance),
            consumer: instance.to_owned(),
        })
    }

    /// Acknowledges and deletes handled entries of `owner`'s stream. An entry left
    /// unacknowledged is re-read only by a survivor taking over after its instance died;
    /// releases are idempotent, so that is safe.
    pub async fn ack_events(&self, owner: &str, entry_ids: &[String]) -> StoreResult<()> {
        let key = self.keys.events(owner);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(entry_ids)
            .ignore();
        pipe.cmd("XDEL").arg(&key).arg(entry_ids).ignore();
        Ok(pipe.exec_async(&mut self.conn.clone()).await?)
    }

    /// Events of a dead instance's stream, as consumer `by`: first those it read but never
    /// acknowledged, then those it never read. Empty when none are left.
    pub async fn claim_events(&self, dead: &str, by: &str, most: usize) -> StoreResult<EventBatch> {
        let stream = self.keys.events(dead);
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim
            .arg(&stream)
            .arg(GROUP)
            .arg(by)
            .arg(0)
            .arg("0-0")
            .arg("COUNT")
            .arg(most);
        let claimed: RedisResult<StreamAutoClaimReply> =
            claim.query_async(&mut self.conn.clone()).await;
        let entries = match claimed {
            Ok(reply) => reply.claimed,
            Err(error) if error.code() == Some("NOGROUP") => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        if !entries.is_empty() {
            return Ok(decode_all(entries));
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(by);
        read.arg("COUNT")
            .arg(most)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        match read
            .query_async::<Option<StreamReadReply>>(&mut self.conn.clone())
            .await
        {
            Ok(reply) => Ok(decode_all(entries_of(reply))),
            Err(error) if error.code() == Some("NOGROUP") => Ok(EventBatch::default()),
            Err(error) => Err(error.into()),
        }
    }
}

impl EventReader {
    /// The next events, waiting up to `block_ms` for some. A stream or group that Redis lost
    /// (a restart) is re-created, from id 0 so that events written meanwhile are not skipped.
    pub async fn read(&mut self, most: usize, block_ms: usize) -> StoreResult<EventBatch> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg(GROUP).arg(&self.consumer);
        read.arg("COUNT").arg(most).arg("BLOCK").arg(block_ms);
        read.arg("STREAMS").arg(&self.key).arg(">");
        match read
            .query_async::<Option<StreamReadReply>>(&mut self.conn)
            .await
        {
            Ok(reply) => Ok(decode_all(entries_of(reply))),
            Err(error) if error.code() == Some("NOGROUP") => {
                self.create_group().await?;
                Ok(EventBatch::default())
            }
            Err(error) => Err(StoreError::Redis(error)),
        }
    }

    async fn create_group(&mut self) -> StoreResult<()> {
        let created: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut self.conn)
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }
}

fn entries_of(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect()
}

/// Malformed entries (never written by this version) are logged, and acknowledged with the rest.
fn decode_all(entries: Vec<StreamId>) -> EventBatch {
    let mut batch = EventBatch {
        entry_ids: Vec::with_capacity(entries.len()),
        events: Vec::with_capacity(entries.len()),
    };
    for entry in entries {
        match decode(&entry) {
            Some(event) => batch.events.push(event),
            None => tracing::warn!(entry = %entry.id, "event stream: malformed entry dropped"),
        }
        batch.entry_ids.push(entry.id);
    }
    batch
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
        bound: Bound {
            kind: field("k")?,
            address: field("p")?,
        },
        message_id: field("i")?,
        deadline: field("d")?.parse().ok()?,
        body: field("m")?,
    })
}
