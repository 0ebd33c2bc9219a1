//! Bounds on what one peer can hold of the server: pings drop hung peers, handshakes and HTTP
//! headers have a deadline, the number of sockets and each socket's outbox are bounded, and an
//! oversized frame closes with 1009. Real sockets against a real server; every test also checks
//! that the other sockets were not affected.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Client, Redis, Server, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Completes a WebSocket upgrade by hand; returns the stream and the response's status code.
/// The stream then answers nothing (no pong), as a hung peer would.
async fn upgrade_by_hand(port: u16) -> (TcpStream, u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Byte by byte: nothing past the response's head is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        let read = stream.read(&mut byte).await.unwrap();
        assert_eq!(read, 1, "connection closed during the upgrade: {head:?}");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line");
    (stream, status)
}

/// Reads until the server closes the connection; false if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        // A reset is a close too.
        while let Ok(read) = stream.read(&mut buffer).await
            && read > 0
        {}
    })
    .await
    .is_ok()
}

/// Reads (tungstenite answers every ping with a pong as it reads) until `pings` pings came.
async fn answer_pings(socket: &mut WebSocket, pings: usize) {
    let mut seen = 0;
    while seen < pings {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("the server keeps pinging");
        match frame {
            Some(Ok(Message::Ping(_))) => seen += 1,
            Some(Ok(_)) => {}
            other => panic!("socket ended after {seen} pings: {other:?}"),
        }
    }
}

/// A `ping` call on a raw socket answers `"pong"`.
async fn assert_answers(socket: &mut WebSocket) {
    let call = json!({"jsonrpc": "2.0", "method": "ping", "id": 1});
    socket.send(Message::text(call.to_string())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a reply to ping");
        if let Some(Ok(Message::Text(text))) = frame {
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(reply["result"], "pong");
            return;
        }
        assert!(matches!(frame, Some(Ok(_))), "socket ended: {frame:?}");
    }
}

async fn dropped(server: &Server, reason: &str) -> f64 {
    server
        .metric("mpr_sockets_dropped_total", &format!("reason=\"{reason}\""))
        .await
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_dropped_and_one_that_does_stays_open() {
    let redis = Redis::start();
    let server = Server::start(
        &redis,
        &[("WS_PING_INTERVAL_MS", "200"), ("WS_PING_MISSES", "3")],
    )
    .await;
    let (mut answering, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let (mut silent, status) = upgrade_by_hand(server.ws_port).await;
    assert_eq!(status, 101);
    let started = Instant::now();

    // 20 pings: many times the 600 ms after which a silent peer is dropped.
    let keep_answering = async {
        answer_pings(&mut answering, 20).await;
        assert_answers(&mut answering).await;
    };
    // The silent peer reads nothing until the server has dropped it.
    let wait_for_drop = async {
        eventually(Duration::from_secs(10), async || {
            dropped(&server, "ping_timeout").await == 1.0
        })
        .await;
        println!("silent peer dropped after {:?}", started.elapsed());
        assert!(
            closed_within(&mut silent, Duration::from_secs(5)).await,
            "the silent peer's connection is closed"
        );
    };
    tokio::join!(keep_answering, wait_for_drop);
    assert_eq!(
        dropped(&server, "ping_timeout").await,
        1.0,
        "only the silent one"
    );
    assert_eq!(server.metric("mpr_open_sockets", "").await, 1.0);
    let mut other = Client::connect(&server.url()).await;
    assert_eq!(other.call("ping", Value::Null).await, "pong");
}

#[tokio::test]
async fn connections_that_never_finish_their_upgrade_or_headers_block_nothing_and_are_closed() {
    let redis = Redis::start();
    let server = Server::start(
        &redis,
        &[
            // Long enough that opening them all and checking on a loaded 2-core CI machine
            // (the other tests of this file run beside it) ends well before it.
            ("WS_HANDSHAKE_TIMEOUT_MS", "15000"),
            ("HTTP_HEADER_READ_TIMEOUT_MS", "15000"),
        ],
    )
    .await;
    // Half of them send nothing, the others a request cut short.
    let mut half_open = Vec::new();
    for (i, port) in (0..1100)
        .map(|_| server.ws_port)
        .chain((0..100).map(|_| server.app_port))
        .enumerate()
    {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        half_open.push(stream);
    }

    let mut client = Client::connect(&server.url()).await;
    assert_eq!(client.call("ping", Value::Null).await, "pong");
    assert_eq!(server.http_get("/health").await, (200, "ok".to_owned()));
    assert_eq!(
        dropped(&server, "handshake_timeout").await,
        0.0,
        "the half-open connections were still open"
    );

    let started = Instant::now();
    let closes = half_open
        .iter_mut()
        .map(|stream| closed_within(stream, Duration::from_secs(60)));
    let closed = futures_util::future::join_all(closes).await;
    println!(
        "1200 half-open connections closed after {:?}",
        started.elapsed()
    );
    assert!(
        closed.iter().all(|&closed| closed),
        "every half-open connection is closed"
    );
    // Counted just after the connection is closed.
    eventually(Duration::from_secs(10), async || {
        dropped(&server, "handshake_timeout").await == 1100.0
    })
    .await;
    assert_eq!(client.call("ping", Value::Null).await, "pong");
    assert_eq!(server.metric("mpr_open_sockets", "").await, 1.0);
}

/// Started with a hard limit of 1024 open files and held by 1100 half-open upgrades (which
/// would outlast the test: the handshake timeout is 10 minutes), the server sheds the oldest of
/// them for newcomers: a new client still upgrades and calls `ping`, and `/health` answers.
#[tokio::test]
async fn with_few_file_descriptors_the_oldest_half_open_upgrades_make_room() {
    let redis = Redis::start();
    let env = [("WS_HANDSHAKE_TIMEOUT_MS", "600000")];
    let limited = ["prlimit", "--nofile=1024:1024", "--"];
    let server = Server::start_under(&redis, &env, &limited).await;
    let mut half_open = Vec::new();
    for i in 0..1100 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.ws_port))
            .await
            .unwrap();
        if i % 2 == 0 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        half_open.push(stream);
    }

    let started = Instant::now();
    let mut client = Client::connect(&server.url()).await;
    assert_eq!(client.call("ping", Value::Null).await, "pong");
    println!(
        "upgrade and ping behind 1100 half-open upgrades, RLIMIT_NOFILE 1024: {:?}",
        started.elapsed()
    );
    assert_eq!(server.http_get("/health").await, (200, "ok".to_owned()));
    assert!(dropped(&server, "handshake_shed").await >= 1100.0 - 896.0);
    assert_eq!(dropped(&server, "handshake_timeout").await, 0.0);
}

#[tokio::test]
async fn an_upgrade_past_max_sockets_is_refused_with_503_and_the_open_sockets_keep_working() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[("MAX_SOCKETS", "3")]).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(&server.url()).await);
    }

    let (_, status) = upgrade_by_hand(server.ws_port).await;
    assert_eq!(status, 503);
    assert_eq!(server.metric("mpr_sockets_refused_total", "").await, 1.0);
    for client in &mut open {
        assert_eq!(client.call("ping", Value::Null).await, "pong");
    }
    assert_eq!(server.metric("mpr_open_sockets", "").await, 3.0);

    // A closed socket gives its place back.
    drop(open.pop());
    eventually(Duration::from_secs(10), async || {
        server.metric("mpr_open_sockets", "").await == 2.0
    })
    .await;
    let mut replacement = Client::connect(&server.url()).await;
    assert_eq!(replacement.call("ping", Value::Null).await, "pong");
    assert_eq!(server.metric("mpr_sockets_refused_total", "").await, 1.0);
}

/// VmRSS and VmHWM (peak) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A live session whose socket stops reading while 400 messages of 64 KiB are added for it:
/// the server drops the socket for `reason`, no message is lost, other sockets keep working.
async fn a_socket_that_stops_reading_is_dropped(env: &[(&str, &str)], reason: &str) {
    const MESSAGES: usize = 400;
    let redis = Redis::start();
    let mut env = env.to_vec();
    // Messages written to the stalled socket are in flight until this passes.
    env.extend([
        ("VISIBILITY_TIMEOUT_MS", "3000"),
        ("WS_PING_INTERVAL_MS", "600000"),
    ]);
    let server = Server::start(&redis, &env).await;
    let connection = support::unique_id("stalled");
    let (mut stalled, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let bind = json!({"jsonrpc": "2.0", "method": "addLiveSession", "id": 1,
        "params": {"connectionId": connection, "sessionId": "s"}});
    stalled.send(Message::text(bind.to_string())).await.unwrap();
    let reply = stalled.next().await.unwrap().unwrap();
    assert!(
        reply.to_text().unwrap().contains("\"result\":true"),
        "{reply}"
    );
    // From here on `stalled` is never read again.

    let mut bystander = Client::connect(&server.url()).await;
    let other_connection = support::unique_id("bystander");
    bystander.add_live_session(&other_connection, "b").await;
    let mut sender = Client::connect(&server.url()).await;
    let (rss_before, _) = memory_kib(server.pid());

    let body = "m".repeat(64 * 1024);
    let mut added = Vec::new();
    for _ in 0..MESSAGES {
        added.push(sender.add(&connection, "did:key:z6MkBounds", &body).await);
    }
    eventually(Duration::from_secs(30), async || {
        dropped(&server, reason).await == 1.0
    })
    .await;
    eventually(Duration::from_secs(10), async || {
        server.metric("mpr_open_sockets", "").await == 2.0
    })
    .await;
    let (rss_after, rss_peak) = memory_kib(server.pid());
    println!(
        "{reason}: server VmRSS {rss_before} KiB before, peak (VmHWM) {rss_peak} KiB, \
         {rss_after} KiB after the close ({MESSAGES} x 64 KiB added)"
    );
    assert!(rss_peak < 200 * 1024, "peak RSS {rss_peak} KiB");

    // None lost: the ones never written are pending at once, the ones written to the stalled
    // socket's buffers once their visibility timeout passes.
    eventually(Duration::from_secs(30), async || {
        sender.count(&connection).await == MESSAGES as u64
    })
    .await;
    let mut taken = Vec::new();
    while taken.len() < MESSAGES {
        let batch = sender
            .take(json!({"connectionId": connection, "limit": 50, "deleteMessages": true}))
            .await;
        assert!(!batch.is_empty(), "{} of {MESSAGES} taken", taken.len());
        taken.extend(support::ids(&batch));
    }
    taken.sort();
    added.sort();
    assert_eq!(taken, added);

    // The other sockets were not affected.
    assert_eq!(sender.call("ping", Value::Null).await, "pong");
    let id = sender
        .add(&other_connection, "did:key:z6MkBounds", "hi")
        .await;
    let push = bystander
        .next_push(Duration::from_secs(10))
        .await
        .expect("the bystander's live session still gets pushes");
    assert_eq!(push["messages"][0]["id"], id.as_str());
}

#[tokio::test]
async fn a_socket_whose_outbox_passes_its_byte_bound_is_closed_and_its_messages_kept() {
    a_socket_that_stops_reading_is_dropped(
        &[
            ("WS_OUTBOX_MAX_BYTES", "2097152"),
            ("WS_WRITE_TIMEOUT_MS", "600000"),
        ],
        "outbox_full",
    )
    .await;
}

#[tokio::test]
async fn a_socket_whose_write_stalls_past_the_write_timeout_is_closed_and_its_messages_kept() {
    a_socket_that_stops_reading_is_dropped(
        &[
            ("WS_OUTBOX_MAX_BYTES", "4294967296"),
            ("WS_WRITE_TIMEOUT_MS", "1000"),
        ],
        "write_timeout",
    )
    .await;
}

#[tokio::test]
async fn a_frame_far_over_the_limit_closes_with_1009_while_the_client_is_still_sending_it() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[("WS_MAX_MESSAGE_BYTES", "65536")]).await;
    let mut bystander = Client::connect(&server.url()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();

    // 8 MiB: most of it is still on its way when the server has read the frame's header.
    let huge = Message::binary(vec![b'x'; 8 << 20]);
    socket.send(huge).await.expect("the whole frame is sent");
    let close = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the server closes");
        match frame {
            Some(Ok(Message::Close(close))) => break close,
            Some(Ok(_)) => {}
            other => panic!("no close frame, the connection ended: {other:?}"),
        }
    };
    assert_eq!(close.map(|close| u16::from(close.code)), Some(1009));
    assert_eq!(dropped(&server, "message_too_big").await, 1.0);
    assert_eq!(bystander.call("ping", Value::Null).await, "pong");
}
