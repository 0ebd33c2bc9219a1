//! One socket: reads frames, runs their calls concurrently (replies go out as they finish,
//! matched by id), writes the deliveries of its live sessions, and closes cleanly.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::{Limits, SocketSlots, Upgrading};
use crate::auth::{self, Tokens};
use crate::live::LocalSocket;
use crate::rpc::{self, Caller, Context};
use crate::telemetry;

pub async fn run<S>(
    stream: S,
    context: Arc<Context>,
    limits: Arc<Limits>,
    slots: Arc<SocketSlots>,
    tokens: Arc<Tokens>,
    shutdown: CancellationToken,
    upgrading: Upgrading,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = limits.websocket_config();
    let mut slot = None;
    // The tenant the upgrade's token names: every call of the socket acts within it.
    let mut tenant: Option<Arc<str>> = None;
    // Runs once the upgrade request is read: without a valid token it is answered 401, past
    // MAX_SOCKETS 503. The large error type is tungstenite's callback signature.
    #[allow(clippy::result_large_err)]
    let take_slot = |request: &Request, response: Response| {
        let authorization = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let token = auth::presented(authorization, request.uri().query());
        match tokens.admit(token) {
            Ok(admitted) => tenant = admitted,
            Err(refusal) => {
                metrics::counter!(telemetry::AUTH_REFUSED, "reason" => refusal.label())
                    .increment(1);
                return Err(unauthorized());
            }
        }
        match slots.take() {
            Some(taken) => {
                slot = Some(taken);
                Ok(response)
            }
            None => {
                metrics::counter!(telemetry::SOCKETS_REFUSED).increment(1);
                Err(too_many_sockets())
            }
        }
    };
    // Rare, large futures are boxed: the task of every idle socket is as large as its
    // largest await point.
    let handshake = Box::pin(async {
        let upgrade = tokio::time::timeout(
            limits.handshake_timeout,
            tokio_tungstenite::accept_hdr_async_with_config(stream, take_slot, Some(config)),
        );
        tokio::select! {
            upgraded = upgrade => Some(upgraded),
            // Shed for a newer connection (see `half_open`).
            () = upgrading.shed.cancelled() => None,
        }
    });
    let Some(handshake) = handshake.await else {
        return;
    };
    drop(upgrading);
    let socket = match handshake {
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
    state.bound_outbox(limits.outbox_max_bytes);
    metrics::gauge!(telemetry::OPEN_SOCKETS).increment(1);
    let (mut sink, mut frames) = socket.split();
    let write_timeout = limits.write_timeout;
    // Calls are boxed: FuturesUnordered allocates a stub task the size of its future type up
    // front, and a call's future (any method's state) is kilobytes: every idle socket paid it.
    let mut calls: FuturesUnordered<BoxFuture<'static, Option<String>>> = FuturesUnordered::new();
    let mut close: Option<CloseFrame> = None;
    let mut draining = false;
    let order = rpc::order::Sequencer::default();
    // A message over the size limit was announced: its rest is unread input.
    let mut too_big = false;
    // One timer per socket, in the task itself (no allocation); reset after every ping.
    let ping = tokio::time::sleep(limits.ping_interval);
    tokio::pin!(ping);
    // Ping intervals since the last frame of any kind came from the peer.
    let mut silent_intervals = 0;
    // Set at shutdown: until then, frames already received are still read and answered.
    let mut stop_by: Option<Instant> = None;
    // Writes are boxed as well: each carries the timer of its timeout, and the task would be
    // as large as that for as long as the socket lives.
    let ended: Result<(), Stop> = async {
        loop {
            tokio::select! {
                Some(reply) = calls.next(), if !calls.is_empty() => {
                    let reply: Option<String> = reply;
                    if let Some(reply) = reply {
                        Box::pin(within(write_timeout, sink.send(Message::text(reply)))).await?;
                    }
                }
                () = state.deliveries_waiting() => {
                    Box::pin(write_deliveries(&mut sink, &context, &state, write_timeout)).await?;
                }
                () = &mut ping, if !draining => {
                    // While shutting down the timer measures quiet: no call in progress, and no
                    // frame for DRAIN_QUIET, means everything received has been read.
                    if let Some(by) = stop_by {
                        if calls.is_empty() || Instant::now() >= by {
                            draining = true;
                        } else {
                            ping.as_mut().reset(drain_quiet_until(by));
                        }
                    } else {
                        silent_intervals += 1;
                        if silent_intervals >= limits.ping_misses {
                            return Err(Stop::Silent);
                        }
                        ping.as_mut().reset(Instant::now() + limits.ping_interval);
                        Box::pin(within(write_timeout, sink.send(Message::Ping(Default::default())))).await?;
                    }
                }
                frame = frames.next(), if !draining && calls.len() < limits.max_calls => {
                    silent_intervals = 0;
                    if let Some(stop_by) = stop_by {
                        ping.as_mut().reset(drain_quiet_until(stop_by));
                    }
                    match frame {
                        Some(Ok(Message::Text(text))) => calls.push(Box::pin(handle(context.clone(), state.clone(), tenant.clone(), order.turn(&text), text))),
                        // rpc-websockets servers parse binary frames as text too.
                        Some(Ok(Message::Binary(bytes))) => match Utf8Bytes::try_from(bytes) {
                            Ok(text) => calls.push(Box::pin(handle(context.clone(), state.clone(), tenant.clone(), order.turn(&text), text))),
                            Err(_) => {
                                Box::pin(within(write_timeout, sink.send(Message::text(rpc::parse_error_reply())))).await?;
                            }
                        },
                        // Sends the pong tungstenite queued.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                            Box::pin(within(write_timeout, sink.flush())).await?;
                        }
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Err(Error::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                            tracing::info!(size, max_size, "message too big; closing socket");
                            too_big = true;
                            draining = true;
                        }
                        Some(Err(error)) => {
                            tracing::debug!(%error, "socket read failed");
                            return Ok(());
                        }
                    }
                }
                () = shutdown.cancelled(), if !draining && stop_by.is_none() => {
                    close = Some(close_frame(CloseCode::Away, "server shutting down"));
                    let by = Instant::now() + DRAIN_MAX;
                    stop_by = Some(by);
                    ping.as_mut().reset(drain_quiet_until(by));
                }
            }
            if draining && calls.is_empty() {
                if too_big {
                    return Err(Stop::TooBig);
                }
                Box::pin(close_gracefully(&mut sink, &mut frames, close.take())).await;
                return Ok(());
            }
        }
    }
    .await;
    match ended {
        Ok(()) | Err(Stop::Broken) => {}
        Err(Stop::Silent) => {
            // A hung peer would not read a close frame either: just drop it.
            tracing::info!(silent_intervals, "no frame from the peer; dropping socket");
            metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "ping_timeout").increment(1);
        }
        Err(Stop::Stalled) => {
            tracing::info!(?write_timeout, "write stalled; dropping socket");
            metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "write_timeout").increment(1);
        }
        Err(Stop::TooBig) => {
            metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "message_too_big")
                .increment(1);
            let socket = sink.reunite(frames).expect("the halves of one socket");
            Box::pin(close_under_unread_input(socket)).await;
        }
        Err(Stop::OutboxFull) => {
            // The peer reads, too slowly: it may still see why it is closed.
            tracing::info!(
                max_bytes = limits.outbox_max_bytes,
                "outbox full; closing socket"
            );
            metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "outbox_full").increment(1);
            let reason = close_frame(CloseCode::Again, "outbox full: socket reads too slowly");
            Box::pin(close_gracefully(&mut sink, &mut frames, Some(reason))).await;
        }
    }
    Box::pin(context.live.socket_closed(&state)).await;
    metrics::gauge!(telemetry::OPEN_SOCKETS).decrement(1);
}

/// At shutdown a socket keeps reading until no call is in progress and its peer has sent
/// nothing for `DRAIN_QUIET`, for at most `DRAIN_MAX`: every call already received (read, or
/// waiting in the socket behind WS_MAX_CALLS_PER_SOCKET) is answered before the close frame,
/// after which nothing may be sent. SHUTDOWN_TIMEOUT_MS bounds it all.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
const DRAIN_MAX: Duration = Duration::from_secs(5);

fn drain_quiet_until(stop_by: Instant) -> Instant {
    (Instant::now() + DRAIN_QUIET).min(stop_by)
}

/// Why a socket's task stopped before the peer or the server closed it.
enum Stop {
    /// A write failed: the connection is gone.
    Broken,
    /// A write made no progress within the write timeout.
    Stalled,
    /// Deliveries came faster than the socket took them (see `LocalSocket::outbox_overflow`).
    OutboxFull,
    /// No frame came from the peer for `ping_misses` ping intervals.
    Silent,
    /// The peer sent a message over the size limit; the calls before it have finished.
    TooBig,
}

/// Awaits a write to the socket, for at most `timeout`.
async fn within(
    timeout: Duration,
    write: impl Future<Output = Result<(), Error>>,
) -> Result<(), Stop> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Broken),
        Err(_) => Err(Stop::Stalled),
    }
}

/// Sends our close frame, then reads (and drops) what the peer still sends until it closes
/// too, all within a second (the peer may not be reading at all): closing with unread input
/// would reset the connection and the peer would never see the close code.
async fn close_gracefully<W, R>(sink: &mut W, frames: &mut R, frame: Option<CloseFrame>)
where
    W: futures_util::Sink<Message, Error = Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let sent = tokio::time::timeout_at(deadline, sink.send(Message::Close(frame))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
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

/// Closes with 1009 while the rest of a message too big to read may still be coming: it cannot
/// be read as frames, so after our close frame the raw input is read and dropped until the
/// peer closes or goes quiet (it has sent everything, read our close and answered it), for at
/// most 5 s. Closing with unread input would reset the connection, and a peer still sending
/// would see the reset instead of 1009.
async fn close_under_unread_input<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: WebSocketStream<S>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let close = Message::Close(Some(close_frame(CloseCode::Size, "message too big")));
    if !matches!(
        tokio::time::timeout_at(deadline, socket.send(close)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let stream = socket.get_mut();
    let mut input = vec![0u8; 16 * 1024];
    loop {
        let quiet = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
        match tokio::time::timeout_at(quiet, stream.read(&mut input)).await {
            Ok(Ok(read)) if read > 0 => {}
            _ => return,
        }
    }
}

async fn handle(
    context: Arc<Context>,
    socket: Arc<LocalSocket>,
    tenant: Option<Arc<str>>,
    mut turn: rpc::order::Turn,
    frame: Utf8Bytes,
) -> Option<String> {
    turn.ready().await;
    let caller = Caller {
        context: &context,
        socket: &socket,
        tenant: tenant.as_deref(),
    };
    rpc::handle_frame(caller, frame.as_str()).await
}

/// Writes the outbox as `messagesReceived` frames until it is empty (`outbox_overflow` takes
/// the wake-ups of deliveries that come meanwhile). A write waiting for a stalled peer is given
/// up on when the outbox overflows. Deliveries that could not be written go back to pending.
async fn write_deliveries<S>(
    sink: &mut S,
    context: &Context,
    state: &LocalSocket,
    write_timeout: Duration,
) -> Result<(), Stop>
where
    S: futures_util::Sink<Message, Error = Error> + Unpin,
{
    loop {
        if state.overflowed() {
            return Err(Stop::OutboxFull);
        }
        let mut deliveries = state.take_deliveries().into_iter();
        if deliveries.len() == 0 {
            return unless_overflow(state, within(write_timeout, sink.flush())).await;
        }
        while let Some(delivery) = deliveries.next() {
            let frame = Message::text(rpc::notifications::messages_received(&delivery));
            let written = unless_overflow(state, within(write_timeout, sink.feed(frame))).await;
            if let Err(stop) = written {
                // This delivery and the rest never left: release them now.
                context
                    .live
                    .release_unsent(std::iter::once(delivery).chain(deliveries))
                    .await;
                return Err(stop);
            }
            state.written(&delivery);
            metrics::counter!(telemetry::EVENTS_PUSHED).increment(delivery.messages.len() as u64);
        }
    }
}

/// A write, given up on when the outbox overflows meanwhile.
async fn unless_overflow(
    state: &LocalSocket,
    write: impl Future<Output = Result<(), Stop>>,
) -> Result<(), Stop> {
    tokio::select! {
        written = write => written,
        () = state.outbox_overflow() => Err(Stop::OutboxFull),
    }
}

fn unauthorized() -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(
        "a valid token is required (Authorization: Bearer <token>, or ?token=<token>)".into(),
    ));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
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
