//! A connection's queue: add, take, count, remove, and the settling of cold and undelivered
//! messages. One function call each (`removeAllMessages` of one DID among several: a bounded
//! batch per call, repeated).

use super::functions::{
    ADD_MESSAGE, COUNT_PENDING, QUEUE_STATUS, RELEASE, REMOVE_ALL_MESSAGES, REMOVE_MESSAGES,
    SETTLE_ADD, SETTLE_COLD, TAKE_FROM_QUEUE,
};
use super::live::{Bound, RELAY_KIND};
use super::record::record_tail;
use super::redelivery::{Step, StepReply};
use super::relay::LeaseClaim;
use super::{Quota, Store, StoreError, StoreResult, flag};
use crate::model::NewMessage;

/// Messages one call deletes one by one (~10 µs each in Redis) before yielding to other clients.
const REMOVE_BATCH: u64 = 2000;

/// How often an add whose reply was lost asks Redis for its outcome.
const SETTLE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Where an added message went.
#[derive(Debug, Clone)]
pub enum Added {
    /// Pending: no live session.
    Pending,
    /// Pending, for the delivery loop of the SocketDock socket the connection is bound to.
    Relayed { socket: String },
    /// Handed out as a raw frame for the socket, in flight until `deadline`, under the relay
    /// lease the add took with the caller's claim: the caller's delivery loop sends it.
    HandedOut { socket: String, deadline: i64 },
    /// In flight to a live session's peer.
    Pushed(LiveDelivery),
}

/// An added message that went straight in flight to a live session.
#[derive(Debug, Clone)]
pub struct LiveDelivery {
    /// The binding it went in flight under.
    pub bound: Bound,
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

/// What removeMessages did.
pub struct Removed {
    /// Ids of cold messages whose documents are the caller's to delete.
    pub trashed: Vec<String>,
    /// The connection's SocketDock delivery loop has room again (acknowledged delivery): kick it.
    pub resume_relay: bool,
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

pub(super) fn decode<T: redis::FromRedisValue>(value: Option<redis::Value>) -> StoreResult<T> {
    T::from_redis_value(value.unwrap_or(redis::Value::Nil))
        .map_err(|error| StoreError::Redis(error.into()))
}

fn did_list(did: Option<&str>) -> Vec<&str> {
    did.into_iter().collect()
}

impl Store {
    /// Queues a message; when the connection has a live session it is queued in flight to it.
    /// With a lease claim, a message for a SocketDock socket with nothing else to deliver is
    /// handed out at once under the claimed lease.
    pub async fn add_message(
        &self,
        connection_id: &str,
        message: &NewMessage,
        claim: Option<&LeaseClaim>,
    ) -> StoreResult<Added> {
        let dids: Vec<&str> = message.dids.iter().map(String::as_str).collect();
        let sent = tokio::time::Instant::now();
        let mut call = self.connection_call(&ADD_MESSAGE, connection_id, &dids);
        call.arg(&message.id)
            .arg(crate::model::now_ms())
            .arg(self.visibility_ms)
            .arg(self.visit_after_ms)
            .arg(self.max_messages)
            .arg(self.max_bytes)
            .arg(claim.map_or("", |claim| claim.token.as_str()))
            .arg(claim.map_or(0, |claim| claim.raw_window.as_millis() as u64))
            .arg(&dids)
            .arg(record_tail(
                message.size,
                message.received_ms,
                &message.dids,
                &message.body,
            ));
        let reply: Vec<redis::Value> = match self.write(&call, connection_id).await {
            Ok(reply) => reply,
            Err(error) if error.outcome_unknown() => {
                return self
                    .settle_add(connection_id, &message.id, sent, error)
                    .await;
            }
            Err(StoreError::Redis(error)) if error.code() == Some("DEADLINE") => {
                return Err(StoreError::NotStored(error));
            }
            Err(StoreError::Redis(error)) if error.code() == Some("QUOTA") => {
                let quota = if error
                    .detail()
                    .is_some_and(|detail| detail.starts_with("bytes"))
                {
                    Quota::Bytes(self.max_bytes)
                } else {
                    Quota::Messages(self.max_messages)
                };
                return Err(StoreError::QueueFull(quota));
            }
            Err(error) => return Err(error),
        };
        let mut reply = reply.into_iter();
        let visit: u8 = decode(reply.next())?;
        if visit == 1 {
            // A crash before this leaves the message unvisited until the marker's time passes
            // and another message arrives: it stays served from Redis meanwhile, never lost.
            let at = message.received_ms + self.visit_after_ms as i64;
            self.schedule_visit(connection_id, at, true).await?;
        }
        if reply.len() == 0 {
            return Ok(Added::Pending);
        }
        let bound = Bound {
            kind: decode(reply.next())?,
            address: decode(reply.next())?,
        };
        if reply.len() == 0 {
            return Ok(Added::Relayed {
                socket: bound.address,
            });
        }
        let deadline = decode(reply.next())?;
        let due: u8 = decode(reply.next())?;
        if due == 1 {
            self.index_due(connection_id, deadline).await?;
        }
        if bound.kind == RELAY_KIND {
            return Ok(Added::HandedOut {
                socket: bound.address,
                deadline,
            });
        }
        Ok(Added::Pushed(LiveDelivery { bound, deadline }))
    }

    /// Learns whether an add whose reply was lost ran, so that its caller is answered the
    /// truth: stored (Ok; if it went in flight to a live session, the deadline sweep pushes it
    /// then), or not stored and never to be (`NotStored`). Asked again until Redis answers, for
    /// ADD_SETTLE_TIMEOUT_MS and at least until the add's fence has passed; after that the
    /// original error stands, outcome unknown: stored before its fence, or never.
    /// (On the shared connection, commands run in the order sent: the settle runs after the
    /// add, if the add runs at all.)
    async fn settle_add(
        &self,
        connection_id: &str,
        message_id: &str,
        sent: tokio::time::Instant,
        error: StoreError,
    ) -> StoreResult<Added> {
        // Asked at least until the add's fence has passed by Redis's clock too (it was made
        // when the add was sent; the clocks are within the bound), so that "unknown" is said
        // only when the add can no longer take effect.
        let fenced = sent + self.fence_after + super::CLOCK_OFFSET_BOUND;
        let give_up = fenced.max(tokio::time::Instant::now() + self.settle_within);
        loop {
            let mut call = self.connection_call(&SETTLE_ADD, connection_id, &[]);
            call.arg(message_id);
            match self.call::<u8>(&call).await {
                Ok(1) => {
                    tracing::info!(%connection_id, %message_id, %error, "add settled: stored");
                    // Stored, and perhaps in flight already (to a live session, or handed out
                    // under the relay lease): the deadline sweep takes it from there.
                    self.index_after_unknown(connection_id).await;
                    return Ok(Added::Pending);
                }
                Ok(2) => {
                    tracing::warn!(%connection_id, %message_id, %error, "add not settled: the queue was removed meanwhile; its outcome is unknown");
                    return Err(error);
                }
                Ok(_) => {
                    tracing::info!(%connection_id, %message_id, %error, "add settled: not stored");
                    let StoreError::Redis(error) = error else {
                        unreachable!("only a Redis error has an unknown outcome")
                    };
                    return Err(StoreError::NotStored(error));
                }
                Err(_) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(SETTLE_RETRY).await;
                }
                Err(_) => {
                    tracing::warn!(%connection_id, %message_id, %error, "add not settled; its outcome is unknown");
                    // Perhaps stored and in flight (as above); the sweep writes the entry, so
                    // that the reply does not wait for Redis again.
                    self.index_later(connection_id);
                    return Err(error);
                }
            }
        }
    }

    /// The oldest pending messages of both tiers; cold ones are left in flight for `settle_cold`.
    pub async fn take(&self, connection_id: &str, take: &Take<'_>) -> StoreResult<Taken> {
        let dids = did_list(take.recipient_did);
        let mut call = self.connection_call(&TAKE_FROM_QUEUE, connection_id, &dids);
        call.arg(take.recipient_did.unwrap_or(""))
            .arg(take.limit)
            .arg(take.limit_bytes)
            .arg(flag(take.delete))
            .arg(self.visibility_ms)
            .arg(flag(take.hot_only));
        // A take that deletes is a removal: it waits for replicas like one.
        let (deadline, pairs, due): (i64, Vec<(String, String)>, u8) = if take.delete {
            self.write(&call, connection_id).await?
        } else {
            self.call(&call).await?
        };
        if due == 1 {
            self.index_due(connection_id, deadline).await?;
        }
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
    ) -> StoreResult<Vec<String>> {
        let mut call = self.connection_call(&SETTLE_COLD, connection_id, &[]);
        call.arg(match settle {
            Settle::Delete => "delete",
            Settle::Release => "release",
        })
        .arg(deadline)
        .arg(ids);
        let (_, trashed): (u64, Vec<String>) = self.write(&call, connection_id).await?;
        Ok(trashed)
    }

    /// Forgets trashed ids once their documents are deleted.
    pub async fn clear_trash(&self, connection_id: &str, ids: &[String]) -> StoreResult<()> {
        let trash = self.keys.connection(connection_id).key("trash");
        self.query(redis::cmd("SREM").arg(trash).arg(ids)).await
    }

    pub async fn count_pending(
        &self,
        connection_id: &str,
        recipient_did: Option<&str>,
    ) -> StoreResult<u64> {
        let dids = did_list(recipient_did);
        let mut call = self.connection_call(&COUNT_PENDING, connection_id, &dids);
        call.arg(recipient_did.unwrap_or(""));
        self.call(&call).await
    }

    /// Pending count, bytes the connection holds (None with a DID: not kept per DID), and the
    /// oldest and newest pending received ms, over both tiers, without a scan.
    pub async fn queue_status(
        &self,
        connection_id: &str,
        recipient_did: Option<&str>,
    ) -> StoreResult<QueueStatus> {
        let dids = did_list(recipient_did);
        let mut call = self.connection_call(&QUEUE_STATUS, connection_id, &dids);
        call.arg(recipient_did.unwrap_or(""));
        let (count, bytes, oldest, newest): (u64, i64, i64, i64) = self.call(&call).await?;
        let known = |v: i64| (v >= 0).then_some(v);
        Ok(QueueStatus {
            message_count: count,
            total_bytes: known(bytes).map(|b| b as u64),
            oldest_received_ms: known(oldest),
            newest_received_ms: known(newest),
        })
    }

    /// Returns the ids of removed cold messages, whose documents are to be deleted.
    pub async fn remove_messages(
        &self,
        connection_id: &str,
        ids: &[String],
    ) -> StoreResult<Removed> {
        let mut call = self.connection_call(&REMOVE_MESSAGES, connection_id, &[]);
        call.arg(ids);
        let (_, trashed, resume): (u64, Vec<String>, u8) = self.write(&call, connection_id).await?;
        Ok(Removed {
            trashed,
            resume_relay: resume == 1,
        })
    }

    /// Removes every message of the connection, or of one recipient DID. The DID's messages
    /// are deleted in atomic batches when other DIDs share the queue, so a long queue never
    /// blocks Redis; a message added meanwhile may or may not be removed.
    pub async fn remove_all(
        &self,
        connection_id: &str,
        recipient_did: Option<&str>,
    ) -> StoreResult<RemovedAll> {
        let dids = did_list(recipient_did);
        let mut all = RemovedAll {
            removed: 0,
            trashed: Vec::new(),
            cold_cutoff_ms: None,
        };
        loop {
            let mut call = self.connection_call(&REMOVE_ALL_MESSAGES, connection_id, &dids);
            call.arg(recipient_did.unwrap_or("")).arg(REMOVE_BATCH);
            let (batch, more, cutoff, trashed): (u64, u8, i64, Vec<String>) =
                self.write(&call, connection_id).await?;
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

    /// Makes messages that could not be delivered pending again (only those still in flight
    /// with the deadline their delivery set), and drops the binding if it still names
    /// `unbind` (None: the binding stays), with everything else pushed under it. Returns how
    /// many messages are pending again.
    pub async fn release(
        &self,
        connection_id: &str,
        unbind: Option<&Bound>,
        messages: &[(String, i64)],
    ) -> StoreResult<u64> {
        let mut call = self.connection_call(&RELEASE, connection_id, &[]);
        let (kind, address) = unbind.map_or(("", ""), |b| (b.kind.as_str(), b.address.as_str()));
        call.arg(kind).arg(address);
        for (id, deadline) in messages {
            call.arg(id).arg(deadline);
        }
        let (released, step): (u64, StepReply) = self.call(&call).await?;
        let step = Step::from_reply(step);
        self.index_step(connection_id, &step).await?;
        Ok(released + step.released)
    }
}

/// What `queue_status` reads: see `getQueueStatus` in docs/api.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub message_count: u64,
    pub total_bytes: Option<u64>,
    pub oldest_received_ms: Option<i64>,
    pub newest_received_ms: Option<i64>,
}
