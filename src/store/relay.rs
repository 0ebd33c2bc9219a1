//! SocketDock sockets and the delivery to them. A socket is recorded (its `send` and
//! `disconnect` URLs) under its own hash tag, with the connections bound to it, so that its loss
//! ends those bindings. A connection bound to a socket keeps its messages pending; one instance
//! at a time (the holder of the connection's relay lease) hands them out one by one, oldest
//! first, and each leaves the queue only once SocketDock took it. The lease lasts as long as a
//! message may be in flight to the socket, so a holder that dies leaves its message back in its
//! place before another instance can take over (the deadline index brings one there).

use std::time::Duration;

use super::functions::{Function, RELAY_NEXT, SOCKET_ATTACH, SOCKET_FORGET, SOCKET_RECORD};
use super::queue::{TakenMessage, decode};
use super::{Store, StoreError, StoreResult, flag};

/// Why a connection could not be bound to a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachRefused {
    /// Not recorded, or forgotten (gone, or silent past its TTL).
    Unknown,
    /// It carries SOCKETDOCK_MAX_CONNECTIONS_PER_SOCKET connections already.
    Full,
}

/// How what a delivery loop last handed out ended.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// A raw frame SocketDock took (200 `OK`): it leaves the queue.
    Taken,
    /// A pickup delivery SocketDock took: its messages stay in flight until the recipient's
    /// messages-received removes them (or their visibility timeout passes).
    Wrapped,
    /// The socket is gone: back to their places.
    Failed,
    /// The mediator did not wrap them: in flight for the retry delay, then back.
    Unwrapped,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Taken => "ok",
            Self::Wrapped => "wrapped",
            Self::Failed => "failed",
            Self::Unwrapped => "retry",
        }
    }
}

/// What a delivery loop last handed out (each id with the deadline it was handed out with),
/// and how it ended; nothing the first time.
#[derive(Clone, Copy)]
pub struct Sent<'a> {
    pub outcome: Outcome,
    pub handed_out: &'a [(String, i64)],
    /// How many of `handed_out`, the last ones, were left out of what was sent (a pickup
    /// delivery of them all would not fit): back to their places whatever the outcome.
    pub left_out: usize,
}

/// A delivery loop's step, as it asks for it.
pub struct LoopStep<'a> {
    /// The loop's lease token.
    pub token: &'a str,
    /// The socket it delivers to; empty for its first step, which takes the lease if nobody
    /// holds it and delivers to the socket the connection is bound to.
    pub socket: &'a str,
    pub sent: Sent<'a>,
    /// Leave cold messages out (MongoDB cannot be read).
    pub hot_only: bool,
    /// A raw frame this loop handed out is still being POSTed: the lease is kept whatever the
    /// step finds, and only a raw frame is handed out.
    pub beside_post: bool,
}

/// How a delivery loop hands messages out.
#[derive(Clone, Copy, Debug)]
pub struct RelayPolicy {
    /// How long a raw frame may be in flight, and the lease last after handing one out.
    pub raw_window: Duration,
    /// How long the lease lasts after handing out a pickup delivery (wrap, then send).
    pub wrap_lease: Duration,
    /// How long a pickup delivery's messages stay in flight unacknowledged.
    pub visibility: Duration,
    /// How long messages the mediator did not wrap wait before they are tried again.
    pub retry: Duration,
    /// Most messages, and bytes of them, in one pickup delivery.
    pub batch: u64,
    pub batch_bytes: u64,
    /// Most messages in flight to a connection in pickup mode (the window a recipient acknowledges).
    pub most_in_flight: u64,
}

/// The relay lease an add may take for its connection, when its caller delivers to SocketDock:
/// a message for a socket that takes raw frames and has nothing else waiting is then handed
/// out by the add itself (`Added::HandedOut`), and the caller's delivery loop holds the lease.
pub struct LeaseClaim {
    pub token: String,
    /// How long the raw frame may be in flight, and the lease last (`RelayPolicy::raw_window`).
    pub raw_window: Duration,
}

/// Messages a delivery loop handed out, in flight until `deadline`, for `socket`.
pub struct HandOut {
    pub socket: String,
    pub deadline: i64,
    pub messages: Vec<TakenMessage>,
}

impl HandOut {
    /// Each message's id with the hand-out's deadline, as the next step settles them.
    pub fn handed_out(&self) -> impl Iterator<Item = (String, i64)> + '_ {
        self.messages.iter().map(|m| (m.id.clone(), self.deadline))
    }
}

/// What a delivery loop does next.
pub enum RelayStep {
    /// Send this message as it is (a raw frame).
    Raw(HandOut),
    /// Have the mediator wrap these in a pickup delivery, then send that.
    Wrap(HandOut),
    /// Nothing pending, or as many in flight as the window allows: the lease is given up.
    Idle,
    /// A step beside a POST found nothing to hand out now: the lease is kept.
    Nothing,
    /// Another holder has the lease: it delivers.
    Busy,
    /// The connection is bound elsewhere (or not at all) now: the lease is given up.
    Unbound,
    /// The socket failed: the messages are back in their places, the lease given up; the
    /// caller ends the socket's bindings.
    Failed,
    /// The mediator did not wrap: the lease is given up; the deadline sweep comes back.
    Retry,
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

    /// One step of the connection's delivery loop.
    pub async fn relay_next(
        &self,
        connection_id: &str,
        step: LoopStep<'_>,
        policy: &RelayPolicy,
    ) -> StoreResult<RelayStep> {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut call = self.connection_call(&RELAY_NEXT, connection_id, &[]);
        call.arg(step.token)
            .arg(step.socket)
            .arg(step.sent.outcome.label())
            .arg(ms(policy.raw_window))
            .arg(flag(step.hot_only))
            .arg(ms(policy.visibility))
            .arg(ms(policy.retry))
            .arg(policy.batch)
            .arg(policy.batch_bytes)
            .arg(policy.most_in_flight)
            .arg(ms(policy.wrap_lease))
            .arg(flag(step.beside_post))
            .arg(step.sent.left_out);
        for (id, deadline) in step.sent.handed_out {
            call.arg(id).arg(deadline);
        }
        let reply: Vec<redis::Value> = match self.call(&call).await {
            Ok(reply) => reply,
            Err(StoreError::Redis(error)) if error.code() == Some("FENCED") => {
                return Ok(RelayStep::Fenced);
            }
            Err(error) => {
                if error.outcome_unknown() {
                    self.index_after_unknown(connection_id).await;
                }
                return Err(error);
            }
        };
        let mut reply = reply.into_iter();
        let kind: String = decode(reply.next())?;
        match kind.as_str() {
            "raw" | "wrap" => {
                let socket = decode(reply.next())?;
                let deadline = decode(reply.next())?;
                if decode::<u8>(reply.next())? == 1 {
                    self.index_due(connection_id, deadline).await?;
                }
                let mut messages = Vec::new();
                while let Some(id) = reply.next() {
                    let body: String = decode(reply.next())?;
                    messages.push(TakenMessage {
                        id: decode(Some(id))?,
                        body: (!body.is_empty()).then_some(body),
                    });
                }
                let hand_out = HandOut {
                    socket,
                    deadline,
                    messages,
                };
                Ok(if kind == "raw" {
                    RelayStep::Raw(hand_out)
                } else {
                    RelayStep::Wrap(hand_out)
                })
            }
            "retry" | "busy" => {
                let at: i64 = decode(reply.next())?;
                if at >= 0 {
                    self.index_due(connection_id, at).await?;
                }
                Ok(if kind == "retry" {
                    RelayStep::Retry
                } else {
                    RelayStep::Busy
                })
            }
            "failed" => Ok(RelayStep::Failed),
            "unbound" => Ok(RelayStep::Unbound),
            "none" => Ok(RelayStep::Nothing),
            _ => Ok(RelayStep::Idle),
        }
    }

    /// Turns the connection's acknowledged (Pickup V2 live mode) delivery on or off: on, a
    /// socket it is bound to gets its messages wrapped in pickup deliveries by the mediator,
    /// which stay in flight until the recipient acknowledges them. It holds across bindings.
    pub async fn set_acknowledged(&self, connection_id: &str, on: bool) -> StoreResult<()> {
        let conn = self.keys.connection(connection_id).key("conn");
        let cmd = if on {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(conn).arg("ack").arg(1);
            cmd
        } else {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(conn).arg("ack");
            cmd
        };
        self.query::<u8>(&cmd).await.map(drop)
    }
}
