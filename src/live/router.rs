//! Routing of deliveries: a message the store put in flight to a live session goes to the peer
//! its binding names, wherever it is; what no peer takes goes back to pending and asks for a
//! push.

use super::Live;
use super::peer::{DeliveredMessage, Delivery, Offer, Peer};
use crate::store::{Event, PeerAddress, Store, StoredEvent};
use crate::telemetry;

/// Another instance, reached through its event stream.
struct RemoteInstance<'a> {
    store: &'a Store,
    instance: &'a str,
}

impl Peer for RemoteInstance<'_> {
    async fn offer(&self, delivery: Delivery) -> Offer {
        for message in &delivery.messages {
            let event = Event {
                connection_id: &delivery.connection_id,
                bound: &delivery.bound,
                message_id: &message.id,
                deadline: message.deadline,
                body: &message.body,
            };
            if let Err(error) = self.store.publish_event(self.instance, &event).await {
                // The outcome is unknown (the event may be written): the message stays in
                // flight and is pending again after the visibility timeout.
                metrics::counter!(telemetry::EVENTS_PUBLISH_FAILED).increment(1);
                tracing::warn!(connection_id = %delivery.connection_id, %error, "could not publish live-session event");
            }
        }
        Offer::Accepted
    }
}

impl Live {
    /// Sends messages that the store put in flight to a live session to that session's peer.
    pub async fn deliver(&self, delivery: Delivery) {
        let peer = delivery.bound.peer();
        let offer = match &peer {
            None => Offer::Refused(delivery, "unknown_peer"),
            Some(PeerAddress::Socket { instance, socket }) if *instance == self.instance => {
                self.offer_here(*socket, delivery).await
            }
            // (If Redis cannot say whether the instance is alive, publishing is harmless: the
            // takeover or the visibility timeout releases an event nobody reads.)
            Some(peer @ PeerAddress::Socket { instance, .. }) => {
                if self.serves(peer).await.unwrap_or(true) {
                    let remote = RemoteInstance {
                        store: &self.store,
                        instance,
                    };
                    remote.offer(delivery).await
                } else {
                    Offer::Refused(delivery, "instance_gone")
                }
            }
            // Only a relay's own delivery loop puts messages in flight to it (the store keeps
            // them pending for it); anything addressed to one is given back to that loop.
            Some(PeerAddress::Relay { .. }) => {
                let messages = delivery.in_flight();
                if let Err(error) = self
                    .store
                    .release(&delivery.connection_id, None, &messages)
                    .await
                {
                    tracing::warn!(connection_id = %delivery.connection_id, %error, "relay delivery not released; back at its deadline");
                }
                self.kicks.kick(&delivery.connection_id);
                return;
            }
        };
        if let Offer::Refused(delivery, reason) = offer {
            self.undeliverable(delivery, reason).await;
        }
    }

    /// Events read from a stream: this instance's own go to its sockets; a dead instance's
    /// (taken over) are released.
    pub(super) async fn deliver_events(&self, owner: &str, events: Vec<StoredEvent>) {
        for event in events {
            let socket = match event.bound.peer() {
                Some(PeerAddress::Socket { instance, socket }) if instance == self.instance => {
                    Some(socket)
                }
                _ => None,
            };
            let delivery = Delivery {
                connection_id: event.connection_id,
                bound: event.bound,
                messages: vec![DeliveredMessage {
                    id: event.message_id,
                    deadline: event.deadline,
                    body: event.body,
                }],
            };
            let offer = match socket {
                Some(socket) if owner == self.instance => self.offer_here(socket, delivery).await,
                _ => Offer::Refused(delivery, "instance_gone"),
            };
            if let Offer::Refused(delivery, reason) = offer {
                self.undeliverable(delivery, reason).await;
            }
        }
    }

    async fn offer_here(&self, socket: u64, delivery: Delivery) -> Offer {
        match self.registry.get(socket) {
            Some(socket) => socket.offer(delivery).await,
            None => Offer::Refused(delivery, "socket_gone"),
        }
    }

    /// Deliveries that never reached their peer: their messages go back to pending.
    pub async fn release_unsent(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        for delivery in deliveries {
            self.undeliverable(delivery, "socket_closed").await;
        }
    }

    /// Puts the messages of a delivery no peer took back to pending, ends the binding (its peer
    /// is gone), counts it, and asks for a push to the connection's latest token (unless
    /// nothing was put back: the messages were taken or removed meanwhile). A binding of a kind
    /// this version does not know is left alone: a newer instance may serve it.
    async fn undeliverable(&self, delivery: Delivery, reason: &'static str) {
        let messages = delivery.in_flight();
        let connection_id = &delivery.connection_id;
        metrics::counter!(telemetry::EVENTS_UNDELIVERABLE, "reason" => reason)
            .increment(messages.len() as u64);
        let unbind = delivery.bound.peer().map(|_| &delivery.bound);
        let released = self.store.release(connection_id, unbind, &messages).await;
        match &released {
            Ok(released) => tracing::info!(
                %connection_id, peer = %delivery.bound.address, reason, released,
                "live-session delivery undeliverable; messages are pending again"
            ),
            Err(error) => tracing::warn!(
                %connection_id, reason, %error,
                "live-session delivery undeliverable; messages return to pending after the visibility timeout"
            ),
        }
        if !matches!(released, Ok(0))
            && let Some((message_id, _)) = messages.last()
        {
            self.pushes.request(connection_id, None, message_id);
        }
    }
}
