//! SocketDock's callbacks, on APP_PORT: `POST /socketdock/connect`, `/message`, `/disconnect`,
//! each with `?secret=<SOCKETDOCK_SECRET>` in the URL SocketDock is given (it cannot add
//! headers). A frame goes to the mediator; the mediator's answer may carry a return-route reply
//! (sent to the agent as a text frame) and bind connections to the socket.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{SESSION_PREFIX, SocketDock};
use crate::telemetry;

type Reply = (StatusCode, &'static str);

/// The callback routes; none without the adapter (they answer 404 then).
pub fn router(dock: Option<Arc<SocketDock>>) -> Router {
    let Some(dock) = dock else {
        return Router::new();
    };
    Router::new()
        .route("/socketdock/connect", post(connect))
        .route("/socketdock/message", post(message))
        .route("/socketdock/disconnect", post(disconnect))
        .layer(DefaultBodyLimit::max(dock.max_body_bytes))
        .with_state(dock)
}

#[derive(Deserialize)]
struct Secret {
    secret: Option<String>,
}

/// What SocketDock tells of a socket in connect and message callbacks.
#[derive(Deserialize)]
struct Meta {
    connection_id: String,
    send: String,
    disconnect: String,
}

#[derive(Deserialize)]
struct Connected {
    meta: Meta,
}

#[derive(Deserialize)]
struct Frame {
    meta: Meta,
    message: String,
}

#[derive(Deserialize)]
struct Disconnected {
    connection_id: String,
}

/// Refuses a callback (counted, by reason) unless it carries the secret and a body of the
/// expected shape whose URLs are the socket's own under a configured endpoint.
fn admit<T: serde::de::DeserializeOwned>(
    dock: &SocketDock,
    route: &'static str,
    secret: &Secret,
    body: &[u8],
) -> Result<T, Reply> {
    let given = secret.secret.as_deref().unwrap_or("").as_bytes();
    if !bool::from(given.ct_eq(dock.secret.as_bytes())) {
        return Err(refuse(route, "secret", StatusCode::UNAUTHORIZED, "FAIL"));
    }
    serde_json::from_slice(body).map_err(|_| refuse(route, "body", StatusCode::BAD_REQUEST, "FAIL"))
}

fn refuse(
    route: &'static str,
    reason: &'static str,
    status: StatusCode,
    body: &'static str,
) -> Reply {
    metrics::counter!(telemetry::SOCKETDOCK_CALLBACKS_REFUSED, "route" => route, "reason" => reason)
        .increment(1);
    tracing::warn!(route, reason, "SocketDock callback refused");
    (status, body)
}

/// Records the socket named by `meta`, if its URLs are allowed.
async fn record(dock: &SocketDock, route: &'static str, meta: &Meta) -> Result<(), Reply> {
    if !dock
        .endpoints
        .allows(&meta.connection_id, &meta.send, &meta.disconnect)
    {
        return Err(refuse(route, "foreign_url", StatusCode::FORBIDDEN, "FAIL"));
    }
    dock.store
        .record_socket(
            &meta.connection_id,
            &meta.send,
            &meta.disconnect,
            dock.socket_ttl,
        )
        .await
        .map_err(|error| {
            tracing::warn!(socket = %meta.connection_id, %error, "SocketDock socket not recorded");
            (StatusCode::SERVICE_UNAVAILABLE, "FAIL")
        })
}

async fn connect(
    State(dock): State<Arc<SocketDock>>,
    Query(secret): Query<Secret>,
    body: Bytes,
) -> Reply {
    let connected: Connected = match admit(&dock, "connect", &secret, &body) {
        Ok(connected) => connected,
        Err(reply) => return reply,
    };
    match record(&dock, "connect", &connected.meta).await {
        Ok(()) => (StatusCode::OK, "OK"),
        Err(reply) => reply,
    }
}

/// A frame from an agent: to the mediator, and its reply back.
async fn message(
    State(dock): State<Arc<SocketDock>>,
    Query(secret): Query<Secret>,
    body: Bytes,
) -> Reply {
    let frame: Frame = match admit(&dock, "message", &secret, &body) {
        Ok(frame) => frame,
        Err(reply) => return reply,
    };
    if let Err(reply) = record(&dock, "message", &frame.meta).await {
        return reply;
    }
    let socket = &frame.meta.connection_id;
    let answer = match dock.forward(socket, frame.message).await {
        Ok(answer) => answer,
        Err(outcome) => {
            metrics::counter!(telemetry::SOCKETDOCK_FRAMES, "outcome" => outcome).increment(1);
            tracing::warn!(
                socket,
                outcome,
                "frame not taken by the mediator; the agent's socket is closed"
            );
            // SocketDock never sends a frame again, and an agent waiting for its answer (a
            // pickup request) would wait on an open socket forever: closed, it connects again
            // and starts over, as it does when SocketDock cannot reach this server at all.
            dock.close_socket(socket, &frame.meta.disconnect).await;
            return (StatusCode::BAD_GATEWAY, "FAIL");
        }
    };
    metrics::counter!(telemetry::SOCKETDOCK_FRAMES, "outcome" => "forwarded").increment(1);
    // Bound before the reply goes out (the agent may act on it at once), delivered after it
    // (the reply answers the frame; the backlog follows).
    let session = format!("{SESSION_PREFIX}{socket}");
    let mut bound = Vec::new();
    for connection_id in answer.connections {
        if let Some(on) = answer.live_delivery
            && let Err(error) = dock.set_live_delivery(&connection_id, socket, on).await
        {
            tracing::warn!(socket, connection_id = &*connection_id, %error, "live delivery not changed");
            continue;
        }
        if answer.live_delivery == Some(false) {
            continue;
        }
        match dock.bind_quietly(&connection_id, socket, &session).await {
            Ok(Ok(step)) => bound.push((connection_id, step)),
            Ok(Err(refused)) => {
                tracing::warn!(
                    socket,
                    connection_id = &*connection_id,
                    ?refused,
                    "connection not bound to the socket"
                )
            }
            Err(error) => {
                tracing::warn!(socket, connection_id = &*connection_id, %error, "connection not bound to the socket")
            }
        }
    }
    if !answer.reply.is_empty()
        && let Err(failure) = dock.post_to_socket(&frame.meta.send, answer.reply).await
    {
        tracing::info!(socket, failure, "return-route reply not delivered");
        dock.socket_gone(socket, None, "send_failed").await;
        return (StatusCode::OK, "OK");
    }
    for (connection_id, step) in bound {
        dock.live.wake_for(&connection_id, &step);
    }
    (StatusCode::OK, "OK")
}

async fn disconnect(
    State(dock): State<Arc<SocketDock>>,
    Query(secret): Query<Secret>,
    body: Bytes,
) -> Reply {
    let gone: Disconnected = match admit(&dock, "disconnect", &secret, &body) {
        Ok(gone) => gone,
        Err(reply) => return reply,
    };
    if !super::urls::is_socket_id(&gone.connection_id) {
        return refuse("disconnect", "body", StatusCode::BAD_REQUEST, "FAIL");
    }
    dock.socket_gone(&gone.connection_id, None, "disconnect_callback")
        .await;
    (StatusCode::OK, "OK")
}
