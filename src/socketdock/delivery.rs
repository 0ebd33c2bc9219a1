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
use crate::store::{PeerAddress, RelayStep, Sent};
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
            .take_relay_lease(connection_id, &token, self.in_flight_window())
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
        let mut last: Option<(String, i64, bool)> = None;
        loop {
            let sent = match &last {
                None => Sent::Nothing,
                Some((id, deadline, true)) => Sent::Taken {
                    id,
                    deadline: *deadline,
                },
                Some((id, deadline, false)) => Sent::Failed {
                    id,
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
                    self.in_flight_window(),
                    hot_only,
                )
                .await;
            let (id, body, deadline) = match step {
                Ok(RelayStep::Next { id, body, deadline }) => (id, body, deadline),
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
                Ok(RelayStep::Idle | RelayStep::Fenced) => return,
                Err(error) => {
                    tracing::warn!(%connection_id, %error, "SocketDock delivery stopped; back at the lease's end");
                    return;
                }
            };
            let Some(url) = &send_url else {
                // The socket was forgotten (gone, or silent past its TTL).
                last = Some((id, deadline, false));
                continue;
            };
            let body = match body {
                Some(body) => Some(body),
                None => match self.messages.cold_body(&connection_id, &id, deadline).await {
                    Ok(ColdBody::Found(body)) => Some(body),
                    // Gone from MongoDB, and so from the queue: on to the next.
                    Ok(ColdBody::Gone) => None,
                    Ok(ColdBody::Unreadable) => {
                        tracing::warn!(%connection_id, "cold message not read; delivery resumes at the lease's end");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%connection_id, %error, "cold message not read; delivery resumes at the lease's end");
                        return;
                    }
                },
            };
            let Some(body) = body else {
                last = None;
                continue;
            };
            let delivered = match serde_json::from_str::<Queued<'_>>(&body) {
                Ok(queued) => {
                    self.post_to_socket(url, queued.encrypted_message.get().to_owned())
                        .await
                }
                Err(_) => Err("unreadable_record"),
            };
            let outcome = if delivered.is_ok() { "ok" } else { "failed" };
            metrics::counter!(telemetry::SOCKETDOCK_DELIVERIES, "outcome" => outcome).increment(1);
            if let Err(failure) = delivered {
                tracing::info!(%connection_id, socket, failure, "SocketDock send failed; the socket counts as gone");
            }
            last = Some((id, deadline, delivered.is_ok()));
        }
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
