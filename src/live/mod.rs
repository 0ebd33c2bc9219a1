//! Live sessions across instances. A session is bound (in Redis) to one socket on one instance.
//! An addMessage that hits a bound connection comes back from the store as a [`LiveDelivery`];
//! the message is then delivered to the socket directly when it is on this instance, or as an
//! event on the owning instance's stream ([`events`]). Instances heartbeat and take over the
//! events of dead ones ([`instances`]). Whatever cannot be delivered goes back to pending and
//! is counted.

mod events;
mod instances;
mod socket;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::RedisResult;
use tokio_util::sync::CancellationToken;

pub use socket::{Push, SocketState};

use crate::push::Pushes;
use crate::store::{Binding, LiveDelivery, Store};
use crate::telemetry;

pub struct Live {
    instance: String,
    store: Store,
    /// Heartbeat period: a fifth of the liveness timeout.
    heartbeat_period: Duration,
    /// An instance silent this long is dead: the other four fifths.
    dead_after: Duration,
    next_socket: AtomicU64,
    /// Live sessions bound to sockets of this instance.
    session_count: AtomicI64,
    /// Sockets of this instance that have bound at least one session.
    sockets: RwLock<HashMap<u64, Arc<SocketState>>>,
    /// Whether a heartbeat has registered this instance since start.
    registered: AtomicBool,
    /// Instances that heartbeated recently (refreshed by every heartbeat).
    alive: RwLock<HashSet<String>>,
    /// Wakes the phone when an event finds no socket.
    pushes: Arc<Pushes>,
}

impl Live {
    pub fn new(store: Store, liveness_timeout: Duration, pushes: Arc<Pushes>) -> Arc<Self> {
        let instance = format!("{:016x}", rand::random::<u64>());
        Arc::new(Self {
            alive: RwLock::new(HashSet::from([instance.clone()])),
            instance,
            store,
            heartbeat_period: liveness_timeout / 5,
            dead_after: liveness_timeout - liveness_timeout / 5,
            next_socket: AtomicU64::new(1),
            session_count: AtomicI64::new(0),
            registered: AtomicBool::new(false),
            sockets: RwLock::default(),
            pushes,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Registers this instance, so others know it before any of its sessions exist.
    pub async fn register(&self) {
        if let Err(error) = instances::beat(self).await {
            tracing::warn!(%error, "could not register this instance yet; the heartbeat will retry");
        }
    }

    /// Heartbeats, the event consumer and dead-instance takeover, until `shutdown`.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) {
        tracker.spawn(instances::heartbeat(self.clone(), shutdown.clone()));
        tracker.spawn(events::consume(self.clone(), shutdown.clone()));
    }

    /// Leaves the cluster of instances: unsent events go back to pending, the stream goes.
    pub async fn deregister(&self) {
        instances::deregister(self).await
    }

    pub fn new_socket(&self) -> Arc<SocketState> {
        Arc::new(SocketState::new(
            self.next_socket.fetch_add(1, Ordering::Relaxed),
        ))
    }

    fn binding_of(&self, socket: &SocketState) -> Binding {
        Binding {
            instance: self.instance.clone(),
            socket: socket.id,
        }
    }

    pub async fn bind(
        &self,
        socket: &Arc<SocketState>,
        connection_id: &str,
        session_id: &str,
    ) -> RedisResult<()> {
        self.store
            .bind(connection_id, &self.binding_of(socket), session_id)
            .await?;
        if socket.add_session(connection_id, session_id) {
            self.count_sessions(1);
        }
        self.sockets
            .write()
            .expect("sockets lock")
            .insert(socket.id, socket.clone());
        Ok(())
    }

    /// Ends the session if this socket holds it; returns whether it did.
    pub async fn unbind(&self, socket: &SocketState, connection_id: &str) -> RedisResult<bool> {
        let removed = self
            .store
            .unbind(connection_id, &self.binding_of(socket))
            .await?;
        if socket.remove_session(connection_id) {
            self.count_sessions(-1);
        }
        Ok(removed)
    }

    /// Whether the connection has a live session on a socket that is still there.
    pub async fn is_live(&self, connection_id: &str) -> RedisResult<bool> {
        let Some(binding) = self.store.binding(connection_id).await? else {
            return Ok(false);
        };
        if self.serves(&binding).await? {
            return Ok(true);
        }
        // A binding left by a dead instance or a vanished socket: clear it while here.
        self.store.unbind(connection_id, &binding).await?;
        Ok(false)
    }

    async fn serves(&self, binding: &Binding) -> RedisResult<bool> {
        if binding.instance == self.instance {
            let sockets = self.sockets.read().expect("sockets lock");
            return Ok(sockets.contains_key(&binding.socket));
        }
        if self
            .alive
            .read()
            .expect("alive lock")
            .contains(&binding.instance)
        {
            return Ok(true);
        }
        // Not alive at our last heartbeat; it may have started since. Ask before declaring it dead.
        let alive = self
            .store
            .instance_alive(&binding.instance, self.dead_after)
            .await?;
        if alive {
            self.alive
                .write()
                .expect("alive lock")
                .insert(binding.instance.clone());
        }
        Ok(alive)
    }

    /// Sends a message that the store put in flight to a live session to that session.
    pub async fn deliver(
        &self,
        connection_id: &str,
        delivery: LiveDelivery,
        message_id: String,
        body: &str,
    ) {
        let messages = vec![(message_id, delivery.deadline)];
        let binding = delivery.binding;
        if binding.instance == self.instance {
            self.deliver_here(connection_id, binding, messages, &[body])
                .await;
        } else if self.serves(&binding).await.unwrap_or(true) {
            // (If Redis cannot say, publishing is harmless: the take-over or the visibility
            // timeout releases an event nobody reads.)
            let event = events::Event {
                connection_id,
                socket: binding.socket,
                message_id: &messages[0].0,
                deadline: delivery.deadline,
                body,
            };
            if let Err(error) = events::publish(&self.store, &binding.instance, &event).await {
                // The message stays in flight and is pending again after the visibility timeout.
                metrics::counter!(telemetry::EVENTS_PUBLISH_FAILED).increment(1);
                tracing::warn!(%connection_id, %error, "could not publish live-session event");
            }
        } else {
            self.undeliverable(connection_id, &binding, &messages, "instance_gone")
                .await;
        }
    }

    /// Hands messages to a socket of this instance.
    async fn deliver_here(
        &self,
        connection_id: &str,
        binding: Binding,
        messages: Vec<(String, i64)>,
        bodies: &[&str],
    ) {
        let socket = self
            .sockets
            .read()
            .expect("sockets lock")
            .get(&binding.socket)
            .cloned();
        let push = Push {
            frame: messages_received_frame(connection_id, bodies),
            connection_id: connection_id.to_owned(),
            binding,
            messages,
        };
        let refused = match socket {
            Some(socket) => socket
                .push(push)
                .err()
                .map(|push| (push, "socket_busy_or_closed")),
            None => Some((push, "socket_gone")),
        };
        if let Some((push, reason)) = refused {
            self.undeliverable(&push.connection_id, &push.binding, &push.messages, reason)
                .await;
        }
    }

    /// Puts the messages of an event that found no socket back to pending, counts it, and
    /// asks for a push to the connection's latest token (unless nothing was put back: the
    /// messages were taken or removed meanwhile).
    async fn undeliverable(
        &self,
        connection_id: &str,
        binding: &Binding,
        messages: &[(String, i64)],
        reason: &'static str,
    ) {
        metrics::counter!(telemetry::EVENTS_UNDELIVERABLE, "reason" => reason)
            .increment(messages.len() as u64);
        let released = self.store.release(connection_id, binding, messages).await;
        match &released {
            Ok(released) => tracing::info!(
                %connection_id, instance = %binding.instance, socket = binding.socket, reason,
                released, "live-session event undeliverable; messages are pending again"
            ),
            Err(error) => tracing::warn!(
                %connection_id, reason, %error,
                "live-session event undeliverable; messages return to pending after the visibility timeout"
            ),
        }
        if !matches!(released, Ok(0))
            && let Some((message_id, _)) = messages.last()
        {
            self.pushes.request(connection_id, None, message_id);
        }
    }

    /// Pushes that never reached their socket: their messages go back to pending.
    pub async fn release_unsent(&self, pushes: impl IntoIterator<Item = Push>) {
        for push in pushes {
            self.undeliverable(
                &push.connection_id,
                &push.binding,
                &push.messages,
                "socket_closed",
            )
            .await;
        }
    }

    /// A socket closed: its unsent pushes go back to pending and its sessions end.
    pub async fn socket_closed(&self, socket: &SocketState) {
        self.release_unsent(socket.close()).await;
        self.sockets
            .write()
            .expect("sockets lock")
            .remove(&socket.id);
        let binding = self.binding_of(socket);
        for (connection_id, _) in socket.sessions() {
            if let Err(error) = self.store.unbind(&connection_id, &binding).await {
                // The binding names a socket that is gone: readers treat it as not live.
                tracing::warn!(%connection_id, %error, "could not end live session of closed socket");
            }
            if socket.remove_session(&connection_id) {
                self.count_sessions(-1);
            }
        }
    }

    fn count_sessions(&self, change: i64) {
        let now = self.session_count.fetch_add(change, Ordering::Relaxed) + change;
        metrics::gauge!(telemetry::LIVE_SESSIONS).set(now as f64);
    }

    /// Re-creates this instance's bindings that Redis lost (restart without persistence).
    async fn restore_bindings(&self) {
        let sockets: Vec<_> = self
            .sockets
            .read()
            .expect("sockets lock")
            .values()
            .cloned()
            .collect();
        for socket in sockets {
            let binding = self.binding_of(&socket);
            for (connection_id, session_id) in socket.sessions() {
                if let Err(error) = self
                    .store
                    .restore_binding(&connection_id, &binding, &session_id)
                    .await
                {
                    tracing::warn!(%connection_id, %error, "could not restore live session");
                }
            }
        }
    }
}

/// `{"jsonrpc":"2.0","method":"messagesReceived","params":{"connectionId":..,"messages":[..],"id":""}}`
fn messages_received_frame(connection_id: &str, bodies: &[&str]) -> String {
    let connection_id = serde_json::to_string(connection_id).expect("a string serializes");
    let size: usize = bodies.iter().map(|body| body.len() + 1).sum();
    let mut frame = String::with_capacity(size + connection_id.len() + 96);
    frame.push_str(r#"{"jsonrpc":"2.0","method":"messagesReceived","params":{"connectionId":"#);
    frame.push_str(&connection_id);
    frame.push_str(r#","messages":["#);
    for (i, body) in bodies.iter().enumerate() {
        if i > 0 {
            frame.push(',');
        }
        frame.push_str(body);
    }
    frame.push_str(r#"],"id":""}}"#);
    frame
}
