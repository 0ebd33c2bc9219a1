//! Live sessions across instances. A session is bound (in Redis) to a peer: today a WebSocket
//! on one instance. An addMessage that hits a bound connection comes back from the store as a
//! [`LiveDelivery`]; [`router`] hands it to the peer: a socket of this instance directly, a
//! socket of another instance through that instance's event stream ([`events`]). Instances
//! heartbeat and take over the events of dead ones ([`membership`]); this instance's sockets
//! are in [`registry`]. Whatever cannot be delivered goes back to pending, is counted, and
//! wakes the phone.

mod events;
mod membership;
mod peer;
mod registry;
mod relay;
mod router;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use peer::{DeliveredMessage, Delivery, LocalSocket};
pub use relay::{Kick, Kicks};

use crate::config::LiveSettings;
use crate::push::Pushes;
use crate::store::{PeerAddress, Step, Store, StoreResult};
use crate::telemetry;
use membership::Membership;
use registry::Registry;

pub struct Live {
    instance: String,
    store: Store,
    membership: Membership,
    registry: Registry,
    /// Wakes the phone when a delivery finds no peer.
    pushes: Arc<Pushes>,
    /// Connections bound to a SocketDock socket that have work for its delivery loop.
    kicks: Kicks,
}

impl Live {
    pub fn new(store: Store, settings: &LiveSettings, pushes: Arc<Pushes>) -> Arc<Self> {
        let instance = format!("{:016x}", rand::random::<u64>());
        Arc::new(Self {
            membership: Membership::new(&instance, settings.liveness_timeout()),
            kicks: Kicks::new(instance.clone()),
            instance,
            store,
            registry: Registry::default(),
            pushes,
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Heartbeats, the event consumer and dead-instance takeover, until `shutdown`.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: &CancellationToken,
    ) {
        tracker.spawn(membership::heartbeat(self.clone(), shutdown.clone()));
        tracker.spawn(events::consume(self.clone(), shutdown.clone()));
    }

    pub fn kicks(&self) -> &Kicks {
        &self.kicks
    }

    pub fn new_socket(&self) -> Arc<LocalSocket> {
        self.registry.new_socket()
    }

    fn address_of(&self, socket: &LocalSocket) -> PeerAddress {
        PeerAddress::Socket {
            instance: self.instance.clone(),
            socket: socket.id,
        }
    }

    /// Binds the connection's live session to a socket of this instance. The step holds what
    /// was pushed under the binding it replaced, now in flight to this socket: the caller
    /// hands it over (`Messages::hand_over`).
    pub async fn bind(
        &self,
        socket: &Arc<LocalSocket>,
        connection_id: &str,
        session_id: &str,
    ) -> StoreResult<Step> {
        // Registered first: a delivery racing the bind finds the socket.
        self.registry.insert(socket);
        let step = self
            .store
            .bind(connection_id, &self.address_of(socket), session_id)
            .await?;
        if socket.add_session(connection_id, session_id) {
            self.registry.count_sessions(1);
        }
        Ok(step)
    }

    /// Binds the connection's live session to a SocketDock socket. The step names the socket:
    /// the caller's `wake_for` starts its delivery loop (the backlog goes first).
    pub async fn bind_relay(
        &self,
        connection_id: &str,
        socket_id: &str,
        session_id: &str,
    ) -> StoreResult<Step> {
        let peer = PeerAddress::Relay {
            socket: socket_id.to_owned(),
        };
        self.store.bind(connection_id, &peer, session_id).await
    }

    /// A SocketDock socket is gone: every connection still bound to it loses its binding, and
    /// the phones are woken for what waits. Returns how many bindings ended.
    /// `also` names a connection to end even if the socket's list lost it.
    pub async fn relay_gone(&self, socket_id: &str, also: Option<&str>) -> StoreResult<usize> {
        let bound = PeerAddress::Relay {
            socket: socket_id.to_owned(),
        }
        .bound();
        let mut connections = self.store.forget_socket(socket_id).await?;
        if let Some(also) = also
            && !connections.iter().any(|c| c == also)
        {
            connections.push(also.to_owned());
        }
        let mut ended = 0;
        for connection_id in connections {
            if let Some(step) = self.store.unbind(&connection_id, &bound).await? {
                ended += 1;
                self.wake_for(&connection_id, &step);
                // The relay's messages were pending, not in flight: the step woke nobody.
                if let Some(waiting) = self.store.oldest_pending(&connection_id).await? {
                    self.pushes.request(&connection_id, None, &waiting);
                }
            }
        }
        Ok(ended)
    }

    /// Ends the connection's binding to a SocketDock socket, if it is still that one.
    pub async fn unbind_relay(&self, connection_id: &str, socket_id: &str) -> StoreResult<()> {
        let bound = PeerAddress::Relay {
            socket: socket_id.to_owned(),
        }
        .bound();
        if let Some(step) = self.store.unbind(connection_id, &bound).await? {
            self.wake_for(connection_id, &step);
        }
        Ok(())
    }

    /// Ends the session if this socket holds it; returns whether it did. What was pushed to it
    /// is pending again, and the phone is woken for it.
    pub async fn unbind(&self, socket: &LocalSocket, connection_id: &str) -> StoreResult<bool> {
        let bound = self.address_of(socket).bound();
        let step = self.store.unbind(connection_id, &bound).await?;
        if socket.remove_session(connection_id) {
            self.registry.count_sessions(-1);
        }
        if let Some(step) = &step {
            self.wake_for(connection_id, step);
        }
        Ok(step.is_some())
    }

    /// Asks for a push when a step put messages back to pending with no live session; for a
    /// connection bound to a SocketDock socket, runs its delivery loop instead (also when
    /// nothing was put back: a step comes when its lease holder may have died).
    pub fn wake_for(&self, connection_id: &str, step: &Step) {
        if step.relay.is_some() {
            self.kicks.kick(connection_id);
        } else if let Some(message_id) = &step.last_released {
            metrics::counter!(telemetry::REDELIVERY_RELEASED).increment(step.released);
            self.pushes.request(connection_id, None, message_id);
        }
    }

    /// Whether the connection has a live session on a peer that is still there.
    pub async fn is_live(&self, connection_id: &str) -> StoreResult<bool> {
        let Some(bound) = self.store.binding(connection_id).await? else {
            return Ok(false);
        };
        // A kind this version does not know (a newer instance's) is taken at its word.
        let Some(peer) = bound.peer() else {
            return Ok(true);
        };
        if self.serves(&peer).await? {
            return Ok(true);
        }
        // A binding left by a dead instance or a vanished socket: clear it while here (what
        // was pushed to it is pending again).
        if let Some(step) = self.store.unbind(connection_id, &bound).await? {
            self.wake_for(connection_id, &step);
        }
        Ok(false)
    }

    /// Whether the peer is there: a socket of this instance still open, or an instance alive.
    async fn serves(&self, peer: &PeerAddress) -> StoreResult<bool> {
        match peer {
            PeerAddress::Socket { instance, socket } if *instance == self.instance => {
                Ok(self.registry.contains(*socket))
            }
            PeerAddress::Socket { instance, .. } => {
                self.membership.is_alive(&self.store, instance).await
            }
            PeerAddress::Relay { socket } => {
                Ok(self.store.socket_send_url(socket).await?.is_some())
            }
        }
    }

    /// A socket closed: its unsent deliveries go back to pending and its sessions end.
    pub async fn socket_closed(&self, socket: &LocalSocket) {
        self.release_unsent(socket.close()).await;
        self.registry.remove(socket.id);
        let bound = self.address_of(socket).bound();
        for (connection_id, _) in socket.sessions() {
            match self.store.unbind(&connection_id, &bound).await {
                Ok(Some(step)) => self.wake_for(&connection_id, &step),
                Ok(None) => {}
                // The binding names a socket that is gone: readers treat it as not live, and
                // the deadline index brings its messages back.
                Err(error) => {
                    tracing::warn!(%connection_id, %error, "could not end live session of closed socket")
                }
            }
            if socket.remove_session(&connection_id) {
                self.registry.count_sessions(-1);
            }
        }
    }

    /// Re-creates this instance's bindings that Redis lost (restart without persistence).
    async fn restore_bindings(&self) {
        for socket in self.registry.all() {
            let peer = self.address_of(&socket);
            for (connection_id, session_id) in socket.sessions() {
                if let Err(error) = self
                    .store
                    .restore_binding(&connection_id, &peer, &session_id)
                    .await
                {
                    tracing::warn!(%connection_id, %error, "could not restore live session");
                }
            }
        }
    }
}
