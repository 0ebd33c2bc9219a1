//! One socket: reads frames, runs their calls concurrently (replies go out as they finish,
//! matched by id), writes the deliveries of its live sessions, and closes cleanly.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::Limits;
use crate::live::LocalSocket;
use crate::rpc::{self, Caller, Context};
use crate::telemetry;

pub async fn run(
    stream: TcpStream,
    context: Arc<Context>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let config = limits.websocket_config();
    // Rare, large futures are boxed: the task of every idle socket is as large as its
    // largest await point.
    let handshake = Box::pin(tokio_tungstenite::accept_async_with_config(
        stream,
        Some(config),
    ));
    let socket = match handshake.await {
        Ok(socket) => socket,
        Err(error) => {
            tracing::debug!(%error, "WebSocket handshake failed");
            return;
        }
    };
    let state = context.live.new_socket();
    metrics::gauge!(telemetry::OPEN_SOCKETS).increment(1);
    let (mut sink, mut frames) = socket.split();
    // Calls are boxed: FuturesUnordered allocates a stub task the size of its future type up
    // front, and a call's future (any method's state) is kilobytes: every idle socket paid it.
    let mut calls: FuturesUnordered<BoxFuture<'static, Option<String>>> = FuturesUnordered::new();
    let mut close: Option<CloseFrame> = None;
    let mut draining = false;
    let order = rpc::order::Sequencer::default();
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
            frame = frames.next(), if !draining && calls.len() < limits.max_calls => {
                match frame {
                    Some(Ok(Message::Text(text))) => calls.push(Box::pin(handle(context.clone(), state.clone(), order.turn(&text), text))),
                    // rpc-websockets servers parse binary frames as text too.
                    Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                        Ok(text) => calls.push(Box::pin(handle(context.clone(), state.clone(), order.turn(&text), text))),
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
    mut turn: rpc::order::Turn,
    frame: Utf8Bytes,
) -> Option<String> {
    turn.ready().await;
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

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}
