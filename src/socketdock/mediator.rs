//! The two calls the adapter makes to the mediator (`MEDIATOR_URL`): a frame an agent sent,
//! whose answer may carry a return-route reply and bind connections to the socket; and the
//! messages of a connection in acknowledged delivery, which the mediator wraps in a Pickup V2
//! delivery for its recipient (only the mediator holds the keys).

use super::{CONNECTION_HEADER, DELIVER_HEADER, LIVE_DELIVERY_HEADER, SOCKET_HEADER, SocketDock};
use crate::model::ConnectionId;

/// What the mediator answered a frame with.
pub(super) struct Answer {
    /// A return-route reply for the agent ("" for none).
    pub reply: String,
    /// Connections to bind to the socket (`X-Mpr-Connection-Id`, repeated or comma-separated).
    pub connections: Vec<ConnectionId>,
    /// `X-Mpr-Live-Delivery`: the named connections turned Pickup V2 live mode on (Some(true))
    /// or off (Some(false)) with this frame.
    pub live_delivery: Option<bool>,
}

impl SocketDock {
    /// POSTs a frame to the mediator. Err names the failure (a metric label). A connection
    /// that fails without an answer (a mediator instance that died, a pooled connection to it)
    /// is tried once more, on a new one: SocketDock never sends a frame again, and an agent that
    /// lost a pickup request may wait for an answer that never comes. The mediator may then
    /// handle a frame twice (DIDComm receivers drop repeated messages by id).
    pub(super) async fn forward(
        &self,
        socket: &str,
        frame: String,
    ) -> Result<Answer, &'static str> {
        let post = || {
            self.http
                .post(&self.mediator_url)
                .header("content-type", "application/didcomm-envelope-enc")
                .header(SOCKET_HEADER, socket)
                .timeout(self.mediator_timeout)
                .body(frame.clone())
                .send()
        };
        let response = match post().await {
            Err(error) if !error.is_timeout() => {
                tracing::debug!(%error, "mediator unreachable; the frame is tried once more");
                post().await
            }
            sent => sent,
        }
        .map_err(failure)?;
        if !response.status().is_success() {
            return Err("mediator_status");
        }
        let headers = response.headers();
        let connections = headers
            .get_all(CONNECTION_HEADER)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|id| ConnectionId::parse(id.trim().to_owned()).ok())
            .collect();
        let live_delivery = match headers
            .get(LIVE_DELIVERY_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
        {
            Some(value) if value.eq_ignore_ascii_case("on") => Some(true),
            Some(value) if value.eq_ignore_ascii_case("off") => Some(false),
            _ => None,
        };
        let reply = read_bounded(response, self.max_body_bytes)
            .await
            .ok_or("mediator_reply_too_large")?;
        Ok(Answer {
            reply,
            connections,
            live_delivery,
        })
    }

    /// Has the mediator wrap a connection's messages (QueuedMessage JSON, oldest first) in a
    /// Pickup V2 delivery packed for its recipient; returns the packed message. Err names the
    /// failure.
    pub(super) async fn wrap(
        &self,
        connection_id: &str,
        messages: &[String],
    ) -> Result<String, &'static str> {
        // The bodies are the exact QueuedMessage JSON: joined, not re-encoded.
        let mut body = String::with_capacity(
            64 + connection_id.len() + messages.iter().map(|m| m.len() + 1).sum::<usize>(),
        );
        body.push_str("{\"connectionId\":");
        body.push_str(&serde_json::to_string(connection_id).expect("a string encodes"));
        body.push_str(",\"messages\":[");
        for (i, message) in messages.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(message);
        }
        body.push_str("]}");
        let response = self
            .http
            .post(&self.mediator_url)
            .header("content-type", "application/json")
            .header(DELIVER_HEADER, connection_id)
            .timeout(self.mediator_timeout)
            .body(body)
            .send()
            .await
            .map_err(failure)?;
        if !response.status().is_success() {
            return Err("mediator_status");
        }
        match read_bounded(response, self.max_body_bytes).await {
            Some(envelope) if !envelope.trim().is_empty() => Ok(envelope),
            Some(_) => Err("mediator_empty_reply"),
            None => Err("mediator_reply_too_large"),
        }
    }
}

fn failure(error: reqwest::Error) -> &'static str {
    tracing::debug!(%error, "mediator unreachable");
    if error.is_timeout() {
        "mediator_timeout"
    } else {
        "mediator_unreachable"
    }
}

/// The response body as text, None when over `limit` bytes (or unreadable).
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Option<String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if body.len() + chunk.len() > limit {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).ok()
}
