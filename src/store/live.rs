//! Live-session bindings: which peer a connection's new messages go to. The binding lives in the
//! connection's hash (`kind`, `peer`, `session`); the newest binding wins, and a peer removes
//! only its own (compare and delete), so a late close never ends a newer session elsewhere.

use super::functions::{BIND, RESTORE_BINDING, UNBIND};
use super::redelivery::{Step, StepReply};
use super::{Store, StoreResult};

/// The binding kind of a SocketDock socket (the library's `RELAY_KIND`).
pub const RELAY_KIND: &str = "sd";

/// A peer that can hold live sessions, as a binding names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddress {
    /// A WebSocket on one instance of this server (kind `ws`, address `<instance>/<socket>`).
    Socket { instance: String, socket: u64 },
    /// A socket held by SocketDock (kind `sd`, address its id), which any instance reaches
    /// over HTTP; its messages are handed out by the holder of the connection's relay lease.
    Relay { socket: String },
}

impl PeerAddress {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Socket { .. } => "ws",
            Self::Relay { .. } => RELAY_KIND,
        }
    }

    pub fn address(&self) -> String {
        match self {
            Self::Socket { instance, socket } => format!("{instance}/{socket}"),
            Self::Relay { socket } => socket.clone(),
        }
    }

    /// None for a kind this version does not know (written by a newer one).
    pub fn parse(kind: &str, address: &str) -> Option<Self> {
        match kind {
            "ws" => {
                let (instance, socket) = address.split_once('/')?;
                Some(Self::Socket {
                    instance: instance.to_owned(),
                    socket: socket.parse().ok()?,
                })
            }
            RELAY_KIND => Some(Self::Relay {
                socket: address.to_owned(),
            }),
            _ => None,
        }
    }

    /// Kind and address, as stored.
    pub fn bound(&self) -> Bound {
        Bound {
            kind: self.kind().to_owned(),
            address: self.address(),
        }
    }
}

/// A binding's peer as stored: kind and address. It may be of a kind this version does not
/// know (written by a newer one); a release or unbind names it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub kind: String,
    pub address: String,
}

impl Bound {
    /// The peer, if this version knows its kind.
    pub fn peer(&self) -> Option<PeerAddress> {
        PeerAddress::parse(&self.kind, &self.address)
    }
}

impl Store {
    /// The connection's binding, if it has one.
    pub async fn binding(&self, connection_id: &str) -> StoreResult<Option<Bound>> {
        let conn = self.keys.connection(connection_id).key("conn");
        let (kind, address): (Option<String>, Option<String>) = self
            .query(redis::cmd("HMGET").arg(conn).arg("kind").arg("peer"))
            .await?;
        Ok(kind
            .zip(address)
            .map(|(kind, address)| Bound { kind, address }))
    }

    /// Binds the connection's live session to a peer; the newest binding wins. Messages pushed
    /// under the binding it replaces come back in the step, in flight to the new peer.
    pub async fn bind(
        &self,
        connection_id: &str,
        peer: &PeerAddress,
        session_id: &str,
    ) -> StoreResult<Step> {
        let mut call = self.connection_call(&BIND, connection_id, &[]);
        call.arg(peer.kind())
            .arg(peer.address())
            .arg(session_id)
            .arg(self.visibility_ms);
        let step = Step::from_reply(self.call(&call).await?);
        self.index_step(connection_id, &step).await?;
        Ok(step)
    }

    /// Binds only where no binding exists (after Redis lost this instance's bindings).
    pub async fn restore_binding(
        &self,
        connection_id: &str,
        peer: &PeerAddress,
        session_id: &str,
    ) -> StoreResult<bool> {
        let mut call = self.connection_call(&RESTORE_BINDING, connection_id, &[]);
        call.arg(peer.kind()).arg(peer.address()).arg(session_id);
        self.call(&call).await
    }

    /// Ends the session if it is still bound to `bound`; what was pushed to it is pending
    /// again. None when another binding holds the session (or none does).
    pub async fn unbind(&self, connection_id: &str, bound: &Bound) -> StoreResult<Option<Step>> {
        let mut call = self.connection_call(&UNBIND, connection_id, &[]);
        call.arg(&bound.kind).arg(&bound.address);
        let (removed, step): (u8, StepReply) = self.call(&call).await?;
        if removed == 0 {
            return Ok(None);
        }
        let step = Step::from_reply(step);
        self.index_step(connection_id, &step).await?;
        Ok(Some(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_address_round_trips() {
        let peer = PeerAddress::Socket {
            instance: "0123456789abcdef".into(),
            socket: 42,
        };
        assert_eq!(peer.bound().peer(), Some(peer));
        assert_eq!(PeerAddress::parse("relay", "x"), None);
        assert_eq!(PeerAddress::parse("ws", "no-socket"), None);
    }
}
