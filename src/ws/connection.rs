//! One socket: reads frames, runs their calls concurrently (replies go out as they finish,
//! matched by id), writes the deliveries of its live sessions, and closes cleanly.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{Limits, SocketSlots};
use crate::live::LocalSocket;
use crate::rpc::{self, Caller, Context};
use crate::telemetry;

pub async fn run(
    stream: TcpStream,
    context: Arc<Context>,
    limits: Limits,
    slots: Arc<SocketSlots>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let config = limits.websocket_config();
    // Rare, large futures are boxed: the task of every idle socket is as large as its
    // largest await point.
    let mut slot = None;
    // Runs once the upgrade request is read: past MAX_SOCKETS it is answered 503. The large
    // error type is tungstenite's callback signature.
    #[allow(clippy::result_large_err)]
    let take_slot = |_: &Request, response: Response| match slots.take() {
        Some(taken) => {
            slot = Some(taken);
            Ok(response)
        }
        None => {
            metrics::counter!(telemetry::SOCKETS_REFUSED).increment(1);
            Err(too_many_sockets())
        }
    };
    let handshake = Box::pin(tokio::time::timeout(
        limits.handshake_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(stream, take_slot, Some(config)),
    ));
    let socket = match handshake.await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::debug!(%error, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("WebSocket handshake timed out");
            metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "handshake_timeout")
                .increment(1);
            return;
        }
    };
    let _slot = slot.expect("an accepted upgrade took a slot");
    let state = context.live.new_socket();
    metrics::gauge!(telemetry::OPEN_SOCKETS).increment(1);
    let (mut sink, mut frames) = socket.split();
    // Calls are boxed: FuturesUnordered allocates a stub task the size of its future type up
    // front, and a call's future (any method's state) is kilobytes: every idle socket paid it.
    let mut calls: FuturesUnordered<BoxFuture<'static, Option<String>>> = FuturesUnordered::new();
    let mut close: Option<CloseFrame> = None;
    let mut draining = false;
    // One timer per socket, in the task itself (no allocation); reset after every ping.
    let ping = tokio::time::sleep(limits.ping_interval);
    tokio::pin!(ping);
    // Ping intervals since the last frame of any kind came from the peer.
    let mut silent_intervals = 0;
    loop {
        tokio::select! {
            Some(reply) = calls.next(), if !calls.is_empty() => {
                let reply: Option<String> = reply;
                if let Some(reply) = reply
                    && sink.send(Message::text(reply)).await.is_err()
                {
                    break;
                }
            }
            () = state.deliveries_waiting() => {
                if !Box::pin(write_deliveries(&mut sink, &context, &state)).await {
                    break;
                }
            }
            () = &mut ping, if !draining => {
                silent_intervals += 1;
                if silent_intervals >= limits.ping_misses {
                    // A hung peer would not read a close frame either: just drop it.
                    tracing::info!(silent_intervals, "no frame from the peer; dropping socket");
                    metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "ping_timeout").increment(1);
                    break;
                }
                ping.as_mut().reset(tokio::time::Instant::now() + limits.ping_interval);
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            frame = frames.next(), if !draining && calls.len() < limits.max_calls => {
                silent_intervals = 0;
                match frame {
                    Some(Ok(Message::Text(text))) => calls.push(Box::pin(handle(context.clone(), state.clone(), text))),
                    // rpc-websockets servers parse binary frames as text too.
                    Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                        Ok(text) => calls.push(Box::pin(handle(context.clone(), state.clone(), text))),
                        Err(_) => {
                            if sink.send(Message::text(rpc::parse_error_reply())).await.is_err() {
                                break;
                            }
                        }
                    },
                    // Sends the pong tungstenite queued.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        if sink.flush().await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        tracing::info!(size, max_size, "message too big; closing socket");
                        close = Some(close_frame(CloseCode::Size, "message too big"));
                        draining = true;
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "socket read failed");
                        break;
                    }
                }
            }
            () = shutdown.cancelled(), if !draining => {
                close = Some(close_frame(CloseCode::Away, "server shutting down"));
                draining = true;
            }
        }
        if draining && calls.is_empty() {
            let _ = sink.send(Message::Close(close.take())).await;
            linger(&mut frames).await;
            break;
        }
    }
    Box::pin(context.live.socket_closed(&state)).await;
    metrics::gauge!(telemetry::OPEN_SOCKETS).decrement(1);
}

/// After our close frame, reads (and drops) what the peer still sends until it closes too, for
/// at most a second: closing with unread input would reset the connection and the peer would
/// never see the close code.
async fn linger<S>(frames: &mut S)
where
    S: futures_util::Stream<Item = Result<Message, Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, frames.next()).await {
        if matches!(
            frame,
            Ok(Message::Close(_))
                | Err(Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_))
        ) {
            break;
        }
    }
}

async fn handle(
    context: Arc<Context>,
    socket: Arc<LocalSocket>,
    frame: Utf8Bytes,
) -> Option<String> {
    let caller = Caller {
        context: &context,
        socket: &socket,
    };
    rpc::handle_frame(caller, frame.as_str()).await
}

/// Writes queued deliveries as `messagesReceived` frames; returns false when the socket is
/// broken. Deliveries that could not be written go back to pending.
async fn write_deliveries<S>(sink: &mut S, context: &Context, state: &LocalSocket) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut deliveries = state.take_deliveries().into_iter();
    while let Some(delivery) = deliveries.next() {
        let frame = rpc::notifications::messages_received(&delivery);
        if sink.feed(Message::text(frame)).await.is_err() {
            // This delivery and the rest never left: release them now.
            context
                .live
                .release_unsent(std::iter::once(delivery).chain(deliveries))
                .await;
            return false;
        }
        metrics::counter!(telemetry::EVENTS_PUSHED).increment(delivery.messages.len() as u64);
    }
    sink.flush().await.is_ok()
}

fn too_many_sockets() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some("too many sockets open on this instance".into()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
