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

use axum::body::Bytes;
use reqwest::Url;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SocketDock;
use crate::live::Kick;
use crate::messages::ColdBody;
use crate::store::{HandOut, LoopStep, Outcome, RelayStep, Sent, TakenMessage};
use crate::telemetry;

/// Takes kicks and runs a delivery loop for each kicked connection (its first step takes the
/// connection's lease, unless another loop holds it).
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
        for kick in kicked {
            tracker.spawn(dock.clone().deliver(kick));
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
    /// The delivery loop of one connection: steps while it has work and holds the lease. A
    /// raw frame is POSTed while the next step settles the one before it and hands out the
    /// next, so a backlog flows at SocketDock's pace; a pickup delivery goes alone. A loop
    /// started by an add that handed its message out holds the lease already and sends that
    /// message alone: nothing else was waiting.
    async fn deliver(self: Arc<Self>, kick: Kick) {
        // A raw frame handed out beside the POST of the one before it, or by the add.
        let (connection_id, token, mut ahead, mut beside) = match kick {
            Kick::Connection(connection_id) => {
                (connection_id, self.live.kicks().lease_token(), None, true)
            }
            Kick::HandedOut {
                connection_id,
                token,
                hand_out,
            } => (connection_id, token, Some(hand_out), false),
        };
        // Known from the first hand-out on.
        let mut socket = String::new();
        let mut send_url: Option<Url> = None;
        // What the next step settles: the messages last sent, how their send ended, and how
        // many of them were left out of it.
        let mut outcome = Outcome::Wrapped;
        let mut handed_out: Vec<(String, i64)> = Vec::new();
        let mut left_out = 0;
        loop {
            let step = match ahead.take() {
                Some(hand_out) => Ok(RelayStep::Raw(hand_out)),
                None => {
                    let sent = Sent {
                        outcome,
                        handed_out: &handed_out,
                        left_out,
                    };
                    let step = self
                        .store
                        .relay_next(
                            &connection_id,
                            self.loop_step(&token, &socket, sent, false),
                            &self.policy,
                        )
                        .await;
                    handed_out.clear();
                    left_out = 0;
                    step
                }
            };
            let (hand_out, mode) = match step {
                Ok(RelayStep::Raw(hand_out)) => (hand_out, Mode::Raw),
                Ok(RelayStep::Wrap(hand_out)) => (hand_out, Mode::Pickup),
                Ok(RelayStep::Failed) => {
                    self.socket_gone(&socket, Some(&connection_id), "send_failed")
                        .await;
                    return;
                }
                // Bound elsewhere now: the new binding's own kick may have met this lease.
                // (At the first step: not bound to a socket at all.)
                Ok(RelayStep::Unbound) => {
                    if !socket.is_empty() {
                        self.live.kicks().kick(&connection_id);
                    }
                    return;
                }
                Ok(
                    RelayStep::Idle
                    | RelayStep::Nothing
                    | RelayStep::Busy
                    | RelayStep::Retry
                    | RelayStep::Fenced,
                ) => return,
                Err(error) => {
                    tracing::warn!(%connection_id, %error, "SocketDock delivery stopped; back at the lease's end");
                    return;
                }
            };
            if socket.is_empty() {
                socket.clone_from(&hand_out.socket);
            }
            let url = match &send_url {
                Some(url) => url.clone(),
                None => match self.send_url(&socket).await {
                    Ok(Some(url)) => send_url.insert(url).clone(),
                    // The socket was forgotten (gone, or silent past its TTL).
                    Ok(None) => {
                        outcome = Outcome::Failed;
                        handed_out.extend(hand_out.handed_out());
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%connection_id, %error, "SocketDock delivery stopped; back at the lease's end");
                        return;
                    }
                },
            };
            let HandOut {
                deadline,
                mut messages,
                ..
            } = hand_out;
            if !self
                .read_cold_bodies(&connection_id, &mut messages, deadline)
                .await
            {
                return;
            }
            // Those gone from MongoDB (and so from the queue) are settled with the others,
            // first: the messages a delivery leaves out are the last ones.
            let (gone, messages): (Vec<_>, Vec<_>) =
                messages.into_iter().partition(|m| m.body.is_none());
            let mut sent: Vec<(String, i64)> = gone.into_iter().map(|m| (m.id, deadline)).collect();
            let mut bodies = Vec::with_capacity(messages.len());
            for message in messages {
                sent.push((message.id, deadline));
                bodies.extend(message.body);
            }
            if bodies.is_empty() {
                // All gone from MongoDB, and so from the queue: on to the next.
                continue;
            }
            match mode {
                Mode::Pickup => {
                    (outcome, left_out) = self.send_wrapped(&connection_id, &url, &bodies).await;
                    handed_out = sent;
                }
                Mode::Raw if !beside => {
                    outcome = self.send_raw(&url, &bodies[0]).await;
                    handed_out = sent;
                    beside = true;
                }
                Mode::Raw => {
                    let before = std::mem::take(&mut handed_out);
                    let sent_before = Sent {
                        outcome,
                        handed_out: &before,
                        left_out: 0,
                    };
                    let (posted, next) = tokio::join!(
                        self.send_raw(&url, &bodies[0]),
                        self.store.relay_next(
                            &connection_id,
                            self.loop_step(&token, &socket, sent_before, true),
                            &self.policy,
                        )
                    );
                    (outcome, handed_out) = (posted, sent);
                    match next {
                        // Sent after this one: if this one failed, it goes back with it.
                        Ok(RelayStep::Raw(next)) if matches!(posted, Outcome::Failed) => {
                            handed_out.extend(next.handed_out());
                        }
                        Ok(RelayStep::Raw(next)) => ahead = Some(next),
                        Ok(RelayStep::Fenced) => return,
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%connection_id, %error, "SocketDock delivery stopped; back at the lease's end");
                            return;
                        }
                    }
                }
            }
            metrics::counter!(telemetry::SOCKETDOCK_DELIVERIES, "mode" => mode.label(), "outcome" => match (mode, outcome) {
                (Mode::Pickup, Outcome::Taken) => "sent_raw",
                (_, Outcome::Taken | Outcome::Wrapped) => "ok",
                (_, Outcome::Failed) => "failed",
                (_, Outcome::Unwrapped) => "unwrapped",
            })
            .increment(1);
        }
    }

    fn loop_step<'a>(
        &self,
        token: &'a str,
        socket: &'a str,
        sent: Sent<'a>,
        beside_post: bool,
    ) -> LoopStep<'a> {
        LoopStep {
            token,
            socket,
            sent,
            hot_only: !self.messages.cold_readable(),
            beside_post,
        }
    }

    /// The socket's send URL: remembered, or read from its record (None: forgotten, or not a
    /// URL, which no POST could reach either).
    async fn send_url(&self, socket_id: &str) -> crate::store::StoreResult<Option<Url>> {
        if let Some(url) = self.send_urls.get(socket_id) {
            return Ok(Some(url));
        }
        let recorded = self.store.socket_send_url(socket_id).await?;
        let url = recorded.and_then(|url| Url::parse(&url).ok());
        if let Some(url) = &url {
            self.send_urls.insert(socket_id, url.clone());
        }
        Ok(url)
    }

    /// Reads the QueuedMessage JSON of the cold messages handed out from MongoDB; those gone
    /// from MongoDB (and so from the queue) are left without a body. False when MongoDB cannot
    /// be read: the loop stops, and the messages come back at their deadline.
    async fn read_cold_bodies(
        &self,
        connection_id: &str,
        messages: &mut [TakenMessage],
        deadline: i64,
    ) -> bool {
        for message in messages.iter_mut().filter(|m| m.body.is_none()) {
            match self
                .messages
                .cold_body(connection_id, &message.id, deadline)
                .await
            {
                Ok(ColdBody::Found(body)) => message.body = Some(body),
                Ok(ColdBody::Gone) => {}
                Ok(ColdBody::Unreadable) => {
                    tracing::warn!(%connection_id, "cold message not read; delivery resumes at its deadline");
                    return false;
                }
                Err(error) => {
                    tracing::warn!(%connection_id, %error, "cold message not read; delivery resumes at its deadline");
                    return false;
                }
            }
        }
        true
    }

    /// Sends one message as a raw frame: its encryptedMessage.
    async fn send_raw(&self, url: &Url, body: &str) -> Outcome {
        let sent = match serde_json::from_str::<Queued<'_>>(body) {
            Ok(queued) => {
                self.post_to_socket(url.clone(), queued.encrypted_message.get().to_owned())
                    .await
            }
            Err(_) => Err("unreadable_record"),
        };
        settled(url.as_str(), sent, Outcome::Taken)
    }

    /// Has the mediator wrap the messages in a pickup delivery for the connection's recipient,
    /// then sends that. A delivery too large to send (SOCKETDOCK_MAX_BODY_BYTES) is asked for
    /// again with the first half of the messages, down to a lone one, which goes as a raw frame
    /// rather than never (retried, it would hold up every message behind it). Returns how the
    /// send ended and how many messages, the last ones, it left out.
    async fn send_wrapped(
        &self,
        connection_id: &str,
        url: &Url,
        bodies: &[String],
    ) -> (Outcome, usize) {
        let mut count = bodies.len();
        let envelope = loop {
            match self.wrap(connection_id, &bodies[..count]).await {
                Ok(envelope) => break envelope,
                Err("mediator_reply_too_large") if count > 1 => count /= 2,
                Err("mediator_reply_too_large") => {
                    tracing::info!(
                        connection_id,
                        "a message too large to wrap in a pickup delivery goes as a raw frame"
                    );
                    return (self.send_raw(url, &bodies[0]).await, bodies.len() - 1);
                }
                Err(failure) => {
                    tracing::warn!(
                        connection_id,
                        failure,
                        "mediator did not wrap a pickup delivery; tried again shortly"
                    );
                    return (Outcome::Unwrapped, 0);
                }
            }
        };
        let sent = self.post_to_socket(url.clone(), envelope).await;
        (
            settled(url.as_str(), sent, Outcome::Wrapped),
            bodies.len() - count,
        )
    }

    /// POSTs a text frame to a socket. Err names the failure: anything but 200 `OK` within
    /// SOCKETDOCK_SEND_TIMEOUT_MS. A request that failed without an answer is made once more
    /// within that time, on another connection: a pooled one that SocketDock closed as the
    /// request went out fails that way, and a failed send ends every binding of the socket.
    pub(super) async fn post_to_socket(
        &self,
        url: impl reqwest::IntoUrl + Clone,
        text: String,
    ) -> Result<(), &'static str> {
        let started = Instant::now();
        let text = Bytes::from(text);
        let mut retried = false;
        let response = loop {
            let left = self.send_timeout.saturating_sub(started.elapsed());
            let sent = self
                .http
                .post(url.clone())
                .header("content-type", "text/plain")
                .timeout(left)
                .body(text.clone())
                .send()
                .await;
            match sent {
                Ok(response) => break response,
                Err(error) if error.is_timeout() => return Err("timeout"),
                Err(error) if !retried => {
                    tracing::debug!(%error, "SocketDock send failed unanswered; once more");
                    retried = true;
                }
                Err(_) => return Err("unreachable"),
            }
        };
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
