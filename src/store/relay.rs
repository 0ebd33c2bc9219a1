//! SocketDock sockets and the delivery to them. A socket is recorded (its `send` and
//! `disconnect` URLs) under its own hash tag, with the connections bound to it, so that its loss
//! ends those bindings. A connection bound to a socket keeps its messages pending; one instance
//! at a time (the holder of the connection's relay lease) hands them out one by one, oldest
//! first, and each leaves the queue only once SocketDock took it. The lease lasts as long as a
//! message may be in flight to the socket, so a holder that dies leaves its message back in its
//! place before another instance can take over (the deadline index brings one there).

use std::time::Duration;

use super::functions::{
    Function, RELAY_LEASE, RELAY_NEXT, SOCKET_ATTACH, SOCKET_FORGET, SOCKET_RECORD,
};
use super::queue::decode;
use super::{Store, StoreError, StoreResult, flag};

/// Why a connection could not be bound to a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachRefused {
    /// Not recorded, or forgotten (gone, or silent past its TTL).
    Unknown,
    /// It carries SOCKETDOCK_MAX_CONNECTIONS_PER_SOCKET connections already.
    Full,
}

/// How the message a delivery loop last sent ended.
#[derive(Clone, Copy)]
pub enum Sent<'a> {
    /// Nothing sent yet.
    Nothing,
    /// SocketDock took it (200 `OK`): it leaves the queue.
    Taken { id: &'a str, deadline: i64 },
    /// The socket is gone: the message goes back to its place.
    Failed { id: &'a str, deadline: i64 },
}

/// What a delivery loop does next.
pub enum RelayStep {
    /// Send this message (no body: it is in MongoDB).
    Next {
        id: String,
        body: Option<String>,
        deadline: i64,
    },
    /// Nothing pending: the lease is given up.
    Idle,
    /// The connection is bound elsewhere (or not at all) now: the lease is given up.
    Unbound,
    /// The socket failed: the message is back in its place, the lease given up; the caller
    /// ends the socket's bindings.
    Failed,
    /// Another holder has the lease (this one outlived it): stop without touching anything.
    Fenced,
}

impl Store {
    fn socket_call(&self, function: &Function, socket_id: &str) -> redis::Cmd {
        self.function_call(function, self.keys.socket(socket_id).into())
    }

    /// Records (or refreshes) a socket and its URLs for `ttl`.
    pub async fn record_socket(
        &self,
        socket_id: &str,
        send: &str,
        disconnect: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut call = self.socket_call(&SOCKET_RECORD, socket_id);
        call.arg(send).arg(disconnect).arg(ttl.as_millis() as u64);
        self.call::<u8>(&call).await.map(drop)
    }

    /// Notes that the connection is bound to the socket; returns the socket's send URL.
    pub async fn attach_socket(
        &self,
        socket_id: &str,
        connection_id: &str,
        most: u64,
        ttl: Duration,
    ) -> StoreResult<Result<String, AttachRefused>> {
        let mut call = self.socket_call(&SOCKET_ATTACH, socket_id);
        call.arg(connection_id)
            .arg(most)
            .arg(ttl.as_millis() as u64);
        match self.call(&call).await {
            Ok(send) => Ok(Ok(send)),
            Err(StoreError::Redis(error)) if error.code() == Some("UNKNOWN") => {
                Ok(Err(AttachRefused::Unknown))
            }
            Err(StoreError::Redis(error)) if error.code() == Some("FULL") => {
                Ok(Err(AttachRefused::Full))
            }
            Err(error) => Err(error),
        }
    }

    /// Forgets a socket; returns the connections that were bound to it.
    pub async fn forget_socket(&self, socket_id: &str) -> StoreResult<Vec<String>> {
        self.call(&self.socket_call(&SOCKET_FORGET, socket_id))
            .await
    }

    /// The socket's send URL, if it is recorded.
    pub async fn socket_send_url(&self, socket_id: &str) -> StoreResult<Option<String>> {
        let [record, _] = self.keys.socket(socket_id);
        self.query(redis::cmd("HGET").arg(record).arg("send")).await
    }

    /// The id of the connection's oldest pending message in Redis or MongoDB, if any.
    pub async fn oldest_pending(&self, connection_id: &str) -> StoreResult<Option<String>> {
        let keys = self.keys.connection(connection_id);
        for tier in ["pending", "cold"] {
            let head: Vec<String> = self
                .query(redis::cmd("ZRANGE").arg(keys.key(tier)).arg(0).arg(0))
                .await?;
            if let Some(id) = head.into_iter().next() {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Takes the connection's relay lease if nobody holds it.
    pub async fn take_relay_lease(
        &self,
        connection_id: &str,
        token: &str,
        lease: Duration,
    ) -> StoreResult<bool> {
        let mut call = self.connection_call(&RELAY_LEASE, connection_id, &[]);
        call.arg(token).arg(lease.as_millis() as u64);
        let (taken, due): (u8, u8) = self.call(&call).await?;
        if due == 1 {
            let at = crate::model::now_ms() + lease.as_millis() as i64;
            self.index_due(connection_id, at).await?;
        }
        Ok(taken == 1)
    }

    /// One step of the connection's delivery loop (the caller holds the lease `token`).
    pub async fn relay_next(
        &self,
        connection_id: &str,
        token: &str,
        socket_id: &str,
        sent: Sent<'_>,
        window: Duration,
        hot_only: bool,
    ) -> StoreResult<RelayStep> {
        let (id, deadline, outcome) = match sent {
            Sent::Nothing => ("", 0, "ok"),
            Sent::Taken { id, deadline } => (id, deadline, "ok"),
            Sent::Failed { id, deadline } => (id, deadline, "failed"),
        };
        let mut call = self.connection_call(&RELAY_NEXT, connection_id, &[]);
        call.arg(token)
            .arg(socket_id)
            .arg(id)
            .arg(deadline)
            .arg(outcome)
            .arg(window.as_millis() as u64)
            .arg(flag(hot_only));
        let reply: Vec<redis::Value> = match self.call(&call).await {
            Ok(reply) => reply,
            Err(StoreError::Redis(error)) if error.code() == Some("FENCED") => {
                return Ok(RelayStep::Fenced);
            }
            Err(error) => return Err(error),
        };
        let mut reply = reply.into_iter();
        let kind: String = decode(reply.next())?;
        match kind.as_str() {
            "failed" => Ok(RelayStep::Failed),
            "next" => {
                let id = decode(reply.next())?;
                let body: String = decode(reply.next())?;
                let deadline = decode(reply.next())?;
                if decode::<u8>(reply.next())? == 1 {
                    self.index_due(connection_id, deadline).await?;
                }
                Ok(RelayStep::Next {
                    id,
                    body: (!body.is_empty()).then_some(body),
                    deadline,
                })
            }
            "unbound" => Ok(RelayStep::Unbound),
            _ => Ok(RelayStep::Idle),
        }
    }
}
