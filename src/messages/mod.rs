//! The message service: what the queue methods mean, for any caller (the RPC methods, the
//! re-delivery sweep, a delivery loop next). It owns everything about a message's life that is
//! not one Redis function: the two tiers and reading bodies from MongoDB, serving what Redis
//! holds while MongoDB is away, settling and discarding cold messages, handing live-session
//! messages to their peer (and again when the peer went or the visibility timeout passed), and
//! asking for pushes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cold::Cold;
use crate::config::QueueSettings;
use crate::live::{DeliveredMessage, Delivery, Live, LocalSocket};
use crate::model::{ConnectionId, Did, MessageId, NewMessage};
use crate::push::{PushToken, Pushes};
use crate::store::{
    Added, HandOut, QueueStatus, Quota, Settle, Step, Store, StoreError, StoreResult, Take, Taken,
    TakenMessage,
};
use crate::telemetry;

mod redelivery;

pub struct Messages {
    store: Store,
    /// MongoDB, when MONGODB_URI is set.
    cold: Option<Arc<Cold>>,
    live: Arc<Live>,
    pushes: Arc<Pushes>,
    max_take_messages: u64,
    max_take_bytes: u64,
    redelivery_interval: std::time::Duration,
}

/// A cold message's body, as MongoDB gave it.
pub enum ColdBody {
    Found(String),
    /// No document: the message is removed.
    Gone,
    /// MongoDB cannot be read: the message stays in flight and comes back at its deadline.
    Unreadable,
}

/// What a take asks for; absent limits mean the server's maximum.
pub struct TakeRequest<'a> {
    pub recipient_did: Option<&'a Did>,
    pub limit: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub delete: bool,
}

impl Messages {
    pub fn new(
        store: Store,
        cold: Option<Arc<Cold>>,
        live: Arc<Live>,
        pushes: Arc<Pushes>,
        settings: &QueueSettings,
    ) -> Self {
        Self {
            store,
            cold,
            live,
            pushes,
            max_take_messages: settings.max_take_messages,
            max_take_bytes: settings.max_take_bytes,
            redelivery_interval: settings.redelivery_interval(),
        }
    }

    /// Queues a message once it is in Redis and returns its id. If the connection has a live
    /// session the message goes in flight to its peer; otherwise, with a push token, a push is
    /// requested (sent later by the push workers: this never waits for it).
    pub async fn add(
        &self,
        connection_id: &ConnectionId,
        message: NewMessage,
        push_token: Option<PushToken>,
    ) -> StoreResult<String> {
        // With SocketDock served here, the add may take its connection's relay lease.
        let claim = self.live.kicks().claim();
        // Both commands go out together on the multiplexed connection: one round trip.
        let (live, ()) = tokio::join!(
            self.store
                .add_message(connection_id, &message, claim.as_ref()),
            self.pushes
                .remember_token(connection_id, push_token.as_ref()),
        );
        let live = live.inspect_err(|error| {
            if let StoreError::QueueFull(quota) = error {
                let label = match quota {
                    Quota::Messages(_) => "messages",
                    Quota::Bytes(_) => "bytes",
                };
                metrics::counter!(telemetry::QUEUE_FULL, "quota" => label).increment(1);
            }
        })?;
        let NewMessage { id, body, .. } = message;
        match live {
            Added::Pushed(live) => {
                self.live
                    .deliver(Delivery {
                        connection_id: connection_id.to_string(),
                        bound: live.bound,
                        messages: vec![DeliveredMessage {
                            id: id.clone(),
                            deadline: live.deadline,
                            body,
                        }],
                    })
                    .await;
            }
            Added::Relayed { .. } => self.live.kicks().kick(connection_id),
            Added::HandedOut { socket, deadline } => {
                let claim = claim.expect("a hand-out is made under the add's claim");
                let hand_out = HandOut {
                    socket,
                    deadline,
                    messages: vec![TakenMessage {
                        id: id.clone(),
                        body: Some(body),
                    }],
                };
                self.live.kicks().handed_out(connection_id, claim, hand_out);
                // One turn of the scheduler before the reply: the delivery loop just kicked
                // writes its POST first, so the recipient's frame does not wait behind the
                // sender's reply (each write wakes another process on a shared machine).
                tokio::task::yield_now().await;
            }
            Added::Pending if push_token.is_some() => {
                self.pushes.request(connection_id, push_token.as_ref(), &id);
            }
            Added::Pending => {}
        }
        Ok(id)
    }

    /// The oldest pending messages (QueuedMessage JSON), across both tiers. Without delete they
    /// are in flight: hidden from further takes until the visibility timeout passes or they are
    /// removed. Cold ones come back in flight from Redis; their bodies are read from MongoDB,
    /// then they are deleted (with delete) or left in flight. If MongoDB cannot be read, they go
    /// back to pending and the reply holds what Redis holds.
    pub async fn take(
        &self,
        connection_id: &ConnectionId,
        request: TakeRequest<'_>,
    ) -> StoreResult<Vec<String>> {
        let cold = self.cold.as_ref();
        let take = Take {
            recipient_did: request.recipient_did.map(|did| &**did),
            limit: request
                .limit
                .unwrap_or(u64::MAX)
                .min(self.max_take_messages),
            limit_bytes: request
                .limit_bytes
                .unwrap_or(u64::MAX)
                .min(self.max_take_bytes),
            delete: request.delete,
            hot_only: cold.is_none_or(|cold| !cold.is_available()),
        };
        if take.limit == 0 {
            return Ok(Vec::new());
        }
        if take.hot_only && cold.is_some() {
            metrics::counter!(telemetry::COLD_DEGRADED, "method" => "takeFromQueue").increment(1);
        }
        let taken = self.store.take(connection_id, &take).await?;
        let cold_ids = cold_ids(&taken.messages);
        if cold_ids.is_empty() {
            return Ok(bodies(taken, HashMap::new()));
        }
        let Some(found) = self
            .cold_bodies(connection_id, taken.deadline, &cold_ids, take.delete)
            .await?
        else {
            metrics::counter!(telemetry::COLD_DEGRADED, "method" => "takeFromQueue").increment(1);
            self.store
                .settle_cold(connection_id, taken.deadline, &cold_ids, Settle::Release)
                .await?;
            return Ok(bodies(taken, HashMap::new()));
        };
        Ok(bodies(taken, found))
    }

    /// Reads the bodies of cold messages in flight with `deadline` from MongoDB. A document
    /// gone from MongoDB (its TTL index, or a hand) is a message gone: it is deleted, as are
    /// all of them with `delete`. None when MongoDB cannot be read (they stay in flight).
    async fn cold_bodies(
        &self,
        connection_id: &str,
        deadline: i64,
        ids: &[&str],
        delete: bool,
    ) -> StoreResult<Option<HashMap<String, String>>> {
        let read = match &self.cold {
            Some(cold) => cold.bodies(ids).await.map_err(|e| e.to_string()),
            None => Err("MONGODB_URI is not set".to_owned()),
        };
        let found = match read {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%connection_id, %error, "cold messages not read; serving what Redis holds");
                return Ok(None);
            }
        };
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !found.contains_key(*id))
            .collect();
        if !missing.is_empty() {
            metrics::counter!(telemetry::COLD_MISSING).increment(missing.len() as u64);
            tracing::warn!(%connection_id, ?missing, "cold messages without a document; removed");
        }
        let to_delete: &[&str] = if delete { ids } else { &missing };
        if !to_delete.is_empty() {
            let trashed = self
                .store
                .settle_cold(connection_id, deadline, to_delete, Settle::Delete)
                .await?;
            self.discard(connection_id, trashed);
        }
        Ok(Some(found))
    }

    /// Whether cold messages can be read now (MongoDB configured and available).
    pub fn cold_readable(&self) -> bool {
        self.cold.as_ref().is_some_and(|cold| cold.is_available())
    }

    /// The body of one cold message in flight with `deadline`, read from MongoDB.
    pub async fn cold_body(
        &self,
        connection_id: &str,
        id: &str,
        deadline: i64,
    ) -> StoreResult<ColdBody> {
        Ok(
            match self
                .cold_bodies(connection_id, deadline, &[id], false)
                .await?
            {
                Some(mut found) => found.remove(id).map_or(ColdBody::Gone, ColdBody::Found),
                None => ColdBody::Unreadable,
            },
        )
    }

    /// Binds the connection's live session to a socket; what was pushed under the binding it
    /// replaces (a mediator that hung or went) goes to this socket at once.
    pub async fn open_session(
        &self,
        socket: &Arc<LocalSocket>,
        connection_id: &ConnectionId,
        session_id: &str,
    ) -> StoreResult<()> {
        let step = self.live.bind(socket, connection_id, session_id).await?;
        self.hand_over(connection_id, step).await
    }

    /// Hands what a re-delivery step put in flight to the live session's peer, reading cold
    /// bodies from MongoDB (those it cannot read stay in flight and come back at their
    /// deadline), and wakes the phone for what it put back to pending.
    async fn hand_over(&self, connection_id: &str, step: Step) -> StoreResult<()> {
        self.live.wake_for(connection_id, &step);
        let Some(redelivery) = step.redelivery else {
            return Ok(());
        };
        let cold_ids = cold_ids(&redelivery.messages);
        let mut found = HashMap::new();
        if !cold_ids.is_empty()
            && let Some(bodies) = self
                .cold_bodies(connection_id, redelivery.deadline, &cold_ids, false)
                .await?
        {
            found = bodies;
        }
        let deadline = redelivery.deadline;
        let messages: Vec<DeliveredMessage> = redelivery
            .messages
            .into_iter()
            .filter_map(|message| {
                let body = message.body.or_else(|| found.remove(&message.id))?;
                Some(DeliveredMessage {
                    id: message.id,
                    deadline,
                    body,
                })
            })
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        metrics::counter!(telemetry::REDELIVERED).increment(messages.len() as u64);
        self.live
            .deliver(Delivery {
                connection_id: connection_id.to_owned(),
                bound: redelivery.bound,
                messages,
            })
            .await;
        Ok(())
    }

    /// Pending messages (in flight ones are not available), in both tiers; never reads MongoDB.
    pub async fn count(
        &self,
        connection_id: &ConnectionId,
        recipient_did: Option<&Did>,
    ) -> StoreResult<u64> {
        self.store
            .count_pending(connection_id, recipient_did.map(|did| &**did))
            .await
    }

    /// The pending count and its age, and the bytes the connection holds; never reads MongoDB
    /// (a cold message's header stays in Redis).
    pub async fn queue_status(
        &self,
        connection_id: &ConnectionId,
        recipient_did: Option<&Did>,
    ) -> StoreResult<QueueStatus> {
        self.store
            .queue_status(connection_id, recipient_did.map(|did| &**did))
            .await
    }

    /// Removes messages by id; ids that are not queued (any more) are not an error:
    /// acknowledgements may arrive twice. Removal from Redis is what counts (a message Redis
    /// no longer lists is never handed out); documents of removed cold messages are deleted in
    /// the background, or by the mover if MongoDB is away.
    pub async fn remove(
        &self,
        connection_id: &ConnectionId,
        message_ids: Vec<MessageId>,
    ) -> StoreResult<()> {
        if message_ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = message_ids.into_iter().map(String::from).collect();
        let removed = self.store.remove_messages(connection_id, &ids).await?;
        self.discard(connection_id, removed.trashed);
        if removed.resume_relay {
            self.live.kicks().kick(connection_id);
        }
        Ok(())
    }

    /// Removes every message of the connection, pending or in flight, in both tiers, or only
    /// those for one recipient DID.
    pub async fn remove_all(
        &self,
        connection_id: &ConnectionId,
        recipient_did: Option<&Did>,
    ) -> StoreResult<()> {
        let did = recipient_did.map(|did| &**did);
        let removed = self.store.remove_all(connection_id, did).await?;
        self.discard(connection_id, removed.trashed);
        if let (Some(cold), Some(cutoff)) = (&self.cold, removed.cold_cutoff_ms) {
            // Redis no longer lists them, so they are gone for clients either way; what fails
            // here is only disk space, left to MESSAGE_TTL or an operator.
            if let Err(error) = cold.delete_received_until(connection_id, did, cutoff).await {
                metrics::counter!(telemetry::COLD_DELETE_DEFERRED).increment(1);
                tracing::warn!(connection_id = &**connection_id, cutoff, %error,
                    "documents of removed messages not deleted: delete {{connectionId, createdAt <= cutoff}} by hand");
            }
        }
        Ok(())
    }

    /// Deletes the documents of removed cold messages, then forgets them in Redis, in the
    /// background: the caller need not wait, since Redis no longer lists the messages. If
    /// MongoDB fails (or this process dies first), the ids stay in the connection's trash and
    /// the mover deletes the documents at its next visit.
    fn discard(&self, connection_id: &str, trashed: Vec<String>) {
        let Some(cold) = &self.cold else { return };
        if trashed.is_empty() {
            return;
        }
        let (cold, store, connection_id) =
            (cold.clone(), self.store.clone(), connection_id.to_owned());
        tokio::spawn(async move {
            let outcome = match cold.delete(&trashed).await {
                Ok(_) => store
                    .clear_trash(&connection_id, &trashed)
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => {
                    let now = crate::model::now_ms();
                    let _ = store.schedule_visit(&connection_id, now, false).await;
                    Err(error.to_string())
                }
            };
            if let Err(error) = outcome {
                metrics::counter!(telemetry::COLD_DELETE_DEFERRED).increment(trashed.len() as u64);
                tracing::warn!(%connection_id, %error, count = trashed.len(),
                    "documents of removed messages not deleted yet; the mover retries");
            }
        });
    }
}

/// The ids of the messages whose body is in MongoDB.
fn cold_ids(messages: &[TakenMessage]) -> Vec<&str> {
    messages
        .iter()
        .filter(|message| message.body.is_none())
        .map(|message| message.id.as_str())
        .collect()
}

/// The bodies of the messages taken, in the order taken; a cold one without a document is
/// left out.
fn bodies(taken: Taken, mut cold_bodies: HashMap<String, String>) -> Vec<String> {
    taken
        .messages
        .into_iter()
        .filter_map(|message| message.body.or_else(|| cold_bodies.remove(&message.id)))
        .collect()
}
