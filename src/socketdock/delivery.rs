//! Delivery to SocketDock sockets. A connection bound to a socket keeps its messages pending;
//! whenever it gets work (an add, a bind, a re-delivery step) it is kicked, and the instance
//! that takes its relay lease runs its delivery loop: one message at a time, oldest first, each
//! POSTed to the socket's `send` URL and removed only once SocketDock answered 200 `OK`. A
//! failed send means the socket is gone: the message goes back to its place, every binding of
//! the socket ends, and the phone is woken. The lease serializes deliverers across instances;
//! a deliverer that dies leaves its message back in its place when the lease ends, and the
//! deadline index then kicks the connection on some instance.

use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SocketDock;
use crate::messages::ColdBody;
use crate::store::{HandOut, Outcome, PeerAddress, RelayStep, Sent, TakenMessage};
use crate::telemetry;

/// Takes kicks and starts a delivery loop for each connection whose lease this instance gets.
pub(super) async fn dispatch(
    dock: Arc<SocketDock>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let kicked = tokio::select! {
            kicked = dock.live.kicks().next() => kicked,
            () = shutdown.cancelled() => return,
        };
        // Each kick in a task of its own: one connection's lease attempt never waits behind
        // another's (there is at most one pending kick per connection).
        for connection_id in kicked {
            let dock = dock.clone();
            tracker.spawn(async move {
                match dock.start_loop(&connection_id).await {
                    Ok(Some((socket, token))) => dock.deliver(connection_id, socket, token).await,
                    Ok(None) => {}
                    // The deadline index comes back to it (or the next add kicks it again).
                    Err(error) => {
                        tracing::warn!(%connection_id, %error, "SocketDock delivery not started")
                    }
                }
            });
        }
    }
}

/// How a delivery reaches the agent.
#[derive(Clone, Copy)]
enum Mode {
    /// The message's encryptedMessage as it is: gone from the queue once SocketDock took it.
    Raw,
    /// A Pickup V2 delivery the mediator wraps: in flight until the recipient acknowledges it.
    Pickup,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Pickup => "pickup",
        }
    }
}

/// The encryptedMessage of a QueuedMessage, as JSON text.
#[derive(Deserialize)]
struct Queued<'a> {
    #[serde(borrow, rename = "encryptedMessage")]
    encrypted_message: &'a RawValue,
}

impl SocketDock {
    /// The socket the connection is bound to and a lease token, if it is bound to a socket and
    /// nobody else delivers to it.
    async fn start_loop(
        &self,
        connection_id: &str,
    ) -> crate::store::StoreResult<Option<(String, String)>> {
        let Some(PeerAddress::Relay { socket }) = self
            .store
            .binding(connection_id)
            .await?
            .and_then(|bound| bound.peer())
        else {
            return Ok(None);
        };
        let token = format!("{}:{:016x}", self.instance, rand::random::<u64>());
        let taken = self
            .store
            .take_relay_lease(connection_id, &token, self.policy.raw_window)
            .await?;
        Ok(taken.then_some((socket, token)))
    }

    /// The delivery loop of one connection, while this instance holds its lease.
    async fn deliver(self: Arc<Self>, connection_id: String, socket: String, token: String) {
        let send_url = match self.store.socket_send_url(&socket).await {
            Ok(url) => url,
            Err(error) => {
                tracing::warn!(%connection_id, %error, "SocketDock delivery stopped; back at the lease's end");
                return;
            }
        };
        let mut last: Option<(Outcome, Vec<String>, i64)> = None;
        loop {
            let sent = match &last {
                None => Sent::NOTHING,
                Some((outcome, ids, deadline)) => Sent {
                    outcome: *outcome,
                    ids,
                    deadline: *deadline,
                },
            };
            let hot_only = !self.messages.cold_readable();
            let step = self
                .store
                .relay_next(
                    &connection_id,
                    &token,
                    &socket,
                    sent,
                    &self.policy,
                    hot_only,
                )
                .await;
            let (hand_out, mode) = match step {
                Ok(RelayStep::Raw(hand_out)) => (hand_out, Mode::Raw),
                Ok(RelayStep::Wrap(hand_out)) => (hand_out, Mode::Pickup),
                Ok(RelayStep::Failed) => {
                    self.socket_gone(&socket, Some(&connection_id), "send_failed")
                        .await;
                    return;
                }
                // Bound elsewhere now: the new binding's own kick may have met this lease.
                Ok(RelayStep::Unbound) => {
                    self.live.kicks().kick(&connection_id);
                    return;
                }
                Ok(RelayStep::Idle | RelayStep::Retry | RelayStep::Fenced) => return,
                Err(error) => {
                    tracing::warn!(%connection_id, %error, "SocketDock delivery stopped; back at the lease's end");
                    return;
                }
            };
            let HandOut { deadline, messages } = hand_out;
            let ids = messages.iter().map(|m| m.id.clone()).collect();
            let Some(url) = &send_url else {
                // The socket was forgotten (gone, or silent past its TTL).
                last = Some((Outcome::Failed, ids, deadline));
                continue;
            };
            let Some(bodies) = self.bodies(&connection_id, messages, deadline).await else {
                return;
            };
            if bodies.is_empty() {
                // Gone from MongoDB, and so from the queue: on to the next.
                last = None;
                continue;
            }
            let outcome = match mode {
                Mode::Raw => self.send_raw(url, &bodies[0]).await,
                Mode::Pickup => self.send_wrapped(&connection_id, url, &bodies).await,
            };
            metrics::counter!(telemetry::SOCKETDOCK_DELIVERIES, "mode" => mode.label(), "outcome" => match outcome {
                Outcome::Taken | Outcome::Wrapped => "ok",
                Outcome::Failed => "failed",
                Outcome::Unwrapped => "unwrapped",
            })
            .increment(1);
            last = Some((outcome, ids, deadline));
        }
    }

    /// The QueuedMessage JSON of each message handed out, cold ones read from MongoDB; those
    /// gone from MongoDB (and so from the queue) are left out. None when MongoDB cannot be
    /// read: the loop stops, and the messages come back at their deadline.
    async fn bodies(
        &self,
        connection_id: &str,
        messages: Vec<TakenMessage>,
        deadline: i64,
    ) -> Option<Vec<String>> {
        let mut bodies = Vec::with_capacity(messages.len());
        for message in messages {
            let body = match message.body {
                Some(body) => body,
                None => match self
                    .messages
                    .cold_body(connection_id, &message.id, deadline)
                    .await
                {
                    Ok(ColdBody::Found(body)) => body,
                    Ok(ColdBody::Gone) => continue,
                    Ok(ColdBody::Unreadable) => {
                        tracing::warn!(%connection_id, "cold message not read; delivery resumes at its deadline");
                        return None;
                    }
                    Err(error) => {
                        tracing::warn!(%connection_id, %error, "cold message not read; delivery resumes at its deadline");
                        return None;
                    }
                },
            };
            bodies.push(body);
        }
        Some(bodies)
    }

    /// Sends one message as a raw frame: its encryptedMessage.
    async fn send_raw(&self, url: &str, body: &str) -> Outcome {
        let sent = match serde_json::from_str::<Queued<'_>>(body) {
            Ok(queued) => {
                self.post_to_socket(url, queued.encrypted_message.get().to_owned())
                    .await
            }
            Err(_) => Err("unreadable_record"),
        };
        settled(url, sent, Outcome::Taken)
    }

    /// Has the mediator wrap the messages in a pickup delivery for the connection's recipient,
    /// then sends that.
    async fn send_wrapped(&self, connection_id: &str, url: &str, bodies: &[String]) -> Outcome {
        let envelope = match self.wrap(connection_id, bodies).await {
            Ok(envelope) => envelope,
            Err(failure) => {
                tracing::warn!(
                    connection_id,
                    failure,
                    "mediator did not wrap a pickup delivery; tried again shortly"
                );
                return Outcome::Unwrapped;
            }
        };
        settled(
            url,
            self.post_to_socket(url, envelope).await,
            Outcome::Wrapped,
        )
    }

    /// POSTs a text frame to a socket. Err names the failure: anything but 200 `OK` in time.
    pub(super) async fn post_to_socket(&self, url: &str, text: String) -> Result<(), &'static str> {
        let started = Instant::now();
        let response = self
            .http
            .post(url)
            .header("content-type", "text/plain")
            .timeout(self.send_timeout)
            .body(text)
            .send()
            .await
            .map_err(|error| {
                if error.is_timeout() {
                    "timeout"
                } else {
                    "unreachable"
                }
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        metrics::histogram!(telemetry::SOCKETDOCK_SEND_SECONDS)
            .record(started.elapsed().as_secs_f64());
        if status == reqwest::StatusCode::OK && body == "OK" {
            Ok(())
        } else {
            Err("refused")
        }
    }
}

/// How a send ended: `taken` when SocketDock took it; a failure means the socket is gone.
fn settled(url: &str, sent: Result<(), &'static str>, taken: Outcome) -> Outcome {
    match sent {
        Ok(()) => taken,
        Err(failure) => {
            tracing::info!(
                url,
                failure,
                "SocketDock send failed; the socket counts as gone"
            );
            Outcome::Failed
        }
    }
}
