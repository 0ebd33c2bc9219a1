//! A minimal JSON-RPC 2.0 client over a real WebSocket, speaking to mpr exactly as the
//! rpc-websockets client does: numeric ids from 1, replies matched by id, server pushes
//! (frames with a `method`) set aside.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub type Ws = WebSocketStream<TcpStream>;

/// The recipient DID every benchmark message is addressed to.
pub const DID: &str = "did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH";

/// Size of every payload (`encryptedMessage`), in bytes of JSON.
pub const PAYLOAD_BYTES: usize = 1024;

/// One process-wide clock: timestamps embedded in payloads are ns since this instant.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A DIDComm v1 JWE-shaped object of exactly `PAYLOAD_BYTES` bytes. With `ts`, an extra
/// member `bench_ts` (fixed width) carries a send timestamp; the size stays the same.
pub fn jwe_payload(ts: Option<u64>) -> String {
    // A typical base64url protected header of an authcrypt JWE with one recipient.
    const PROTECTED: &str = "eyJlbmMiOiJ4Y2hhY2hhMjBwb2x5MTMwNV9pZXRmIiwidHlwIjoiSldNLzEuMCIsImFsZyI6IkF1dGhjcnlwdCIsInJlY2lwaWVudHMiOlt7ImVuY3J5cHRlZF9rZXkiOiJ4SjBfQ1F5aW1pSkx3ZkNfSmhSd0dxUXdSaXhNVzM5";
    const IV: &str = "x8Vuc0fUjcMWbWq_e3Nk6zMjBQlrYbVh";
    const TAG: &str = "XUVVFM1M4D3kUYEdOAZmHQ";
    let head = match ts {
        Some(t) => format!(
            r#"{{"bench_ts":"{t:020}","protected":"{PROTECTED}","iv":"{IV}","ciphertext":""#
        ),
        None => format!(r#"{{"protected":"{PROTECTED}","iv":"{IV}","ciphertext":""#),
    };
    let tail = format!(r#"","tag":"{TAG}"}}"#);
    let fill = PAYLOAD_BYTES - head.len() - tail.len();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s = String::with_capacity(PAYLOAD_BYTES);
    s.push_str(&head);
    for i in 0..fill {
        s.push(alphabet[(i * 7 + 3) % 64] as char);
    }
    s.push_str(&tail);
    debug_assert_eq!(s.len(), PAYLOAD_BYTES);
    s
}

/// The timestamp embedded by `jwe_payload(Some(ts))`, found in any text containing it.
pub fn find_ts(text: &str) -> Option<u64> {
    let at = text.find(r#""bench_ts":""#)? + 12;
    text.get(at..at + 20)?.parse().ok()
}

pub fn add_message_params(connection_id: &str, payload: &str) -> String {
    format!(r#"{{"connectionId":"{connection_id}","recipientDids":["{DID}"],"payload":{payload}}}"#)
}

pub fn request(method: &str, params: Option<&str>, id: u64) -> String {
    match params {
        Some(p) => format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":{p},"id":{id}}}"#),
        None => format!(r#"{{"jsonrpc":"2.0","method":"{method}","id":{id}}}"#),
    }
}

/// One incoming frame, borrowed from its text.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Result<Self> {
        serde_json::from_str(text).with_context(|| format!("unparsable frame: {}", clip(text)))
    }

    /// The numeric id of a reply (rpc-websockets also accepts "3" for 3).
    pub fn id_num(&self) -> Option<u64> {
        let raw = self.id?.get();
        raw.trim_matches('"').parse().ok()
    }

    pub fn is_push(&self) -> bool {
        self.method.is_some() && self.id.is_none()
    }
}

pub fn clip(text: &str) -> String {
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &text[..end])
    } else {
        text.to_owned()
    }
}

pub async fn connect_ws(port: u16) -> Result<Ws> {
    connect_ws_at(port, "/").await
}

/// A WebSocket to `path` on 127.0.0.1:`port` (SocketDock serves its agents on `/ws`).
pub async fn connect_ws_at(port: u16, path: &str) -> Result<Ws> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://127.0.0.1:{port}{path}");
    // tungstenite allocates its read buffer up front (128 KiB by default): keep the tool's own
    // memory small when it holds 10 000 idle sockets.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = client_async_with_config(url, stream, Some(config))
        .await
        .context("WebSocket handshake")?;
    Ok(ws)
}

/// A closed-loop client: one call in flight at a time.
pub struct Client {
    pub ws: Ws,
    next_id: u64,
    /// Pushes that arrived while waiting for a reply: when each was read, and its frame text.
    pub pushes: VecDeque<(Instant, String)>,
    pub timeout: Duration,
}

impl Client {
    pub async fn connect(port: u16) -> Result<Self> {
        Ok(Self {
            ws: connect_ws(port).await?,
            next_id: 1,
            pushes: VecDeque::new(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Sends one request and waits for the reply with its id; returns the raw `result` JSON,
    /// or an error carrying the JSON-RPC error.
    pub async fn call(&mut self, method: &str, params: Option<&str>) -> Result<String> {
        let id = self.next_id;
        self.next_id += 1;
        self.ws
            .send(Message::Text(request(method, params, id).into()))
            .await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let (at, text) = self.next_text(deadline, self.timeout, method).await?;
            let frame = Frame::parse(text.as_str())?;
            if frame.is_push() {
                self.pushes.push_back((at, text.as_str().to_owned()));
                continue;
            }
            if frame.id_num() != Some(id) {
                bail!(
                    "{method}: reply with unexpected id: {}",
                    clip(text.as_str())
                );
            }
            if let Some(err) = frame.error {
                bail!("{method}: JSON-RPC error {}", err.get());
            }
            return Ok(frame.result.map(|r| r.get().to_owned()).unwrap_or_default());
        }
    }

    /// The next push, set aside by a call or read now, with the time it was read.
    pub async fn next_push(&mut self, within: Duration) -> Result<(Instant, String)> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(push);
        }
        let (at, text) = self
            .next_text(tokio::time::Instant::now() + within, within, "push")
            .await?;
        if !Frame::parse(text.as_str())?.is_push() {
            bail!("push: got another frame: {}", clip(text.as_str()));
        }
        Ok((at, text.as_str().to_owned()))
    }

    /// The next text frame and the time it was read; fails at `deadline` (`within` of the
    /// start of the wait) or when the socket closes.
    async fn next_text(
        &mut self,
        deadline: tokio::time::Instant,
        within: Duration,
        what: &str,
    ) -> Result<(Instant, Utf8Bytes)> {
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("{what}: nothing within {within:?}"))?
                .ok_or_else(|| anyhow!("{what}: socket closed"))??;
            match msg {
                Message::Text(t) => return Ok((Instant::now(), t)),
                Message::Close(c) => bail!("{what}: socket closed by server: {c:?}"),
                _ => {}
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// A QueuedMessage of a takeFromQueue result, without its payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Queued {
    pub id: String,
    #[serde(default)]
    pub received_at: String,
}

/// The messages of a takeFromQueue result, in the order returned.
pub fn queued_messages(result: &str) -> Result<Vec<Queued>> {
    serde_json::from_str(result).with_context(|| format!("takeFromQueue result: {}", clip(result)))
}

/// Ids of the messages in a takeFromQueue result.
pub fn message_ids(result: &str) -> Result<Vec<String>> {
    Ok(queued_messages(result)?.into_iter().map(|q| q.id).collect())
}

/// Ids of the messages in a `messagesReceived` push (its frame text).
pub fn pushed_ids(text: &str) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Params {
        messages: Vec<Queued>,
    }
    let params = Frame::parse(text)?
        .params
        .with_context(|| format!("push without params: {}", clip(text)))?;
    let params: Params = serde_json::from_str(params.get())
        .with_context(|| format!("messagesReceived params: {}", clip(text)))?;
    Ok(params.messages.into_iter().map(|q| q.id).collect())
}

pub fn ids_json(ids: &[String]) -> String {
    serde_json::to_string(ids).unwrap()
}

/// Fills one connection's queue with `count` messages through the server, pipelined over
/// `sockets` sockets with up to `window` calls in flight each.
pub async fn fill_queue(
    port: u16,
    connection_id: &str,
    count: usize,
    sockets: usize,
    window: usize,
) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let payload = jwe_payload(None);
    let params = add_message_params(connection_id, &payload);
    let per = count.div_ceil(sockets);
    let mut tasks = Vec::new();
    for s in 0..sockets {
        let n = per.min(count.saturating_sub(s * per));
        if n == 0 {
            break;
        }
        let params = params.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect_ws(port).await?;
            let mut sent = 0usize;
            let mut done = 0usize;
            while done < n {
                while sent < n && sent - done < window {
                    sent += 1;
                    ws.feed(Message::Text(
                        request("addMessage", Some(&params), sent as u64).into(),
                    ))
                    .await?;
                }
                ws.flush().await?;
                let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .context("fill: no reply in 10 s")?
                    .context("fill: socket closed")??;
                if let Message::Text(t) = msg {
                    let f = Frame::parse(t.as_str())?;
                    if let Some(e) = f.error {
                        bail!("fill: addMessage failed: {}", e.get());
                    }
                    if f.id.is_some() {
                        done += 1;
                    }
                }
            }
            let _ = ws.close(None).await;
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Sockets held open and otherwise idle (each read by its own task so pings are answered).
pub struct IdlePool {
    pub open: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    dropped: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl IdlePool {
    /// Adds a note to the report when some sockets failed to open.
    pub fn note_failures(&self, report: &mut crate::report::Report, label: &str) {
        if self.failed > 0 {
            let first = self.first_error.clone().unwrap_or_default();
            report.note(format!(
                "{label}: {} of {} sockets failed to open; first error: {first}",
                self.failed,
                self.open + self.failed
            ));
        }
    }

    /// Opens `n` sockets, at most `parallel` handshakes at a time; with `ping`, each socket
    /// makes one `ping` call before it goes idle.
    pub async fn open(port: u16, n: usize, parallel: usize, ping: bool) -> Self {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let dropped = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let gate = gate.clone();
            let ready = ready_tx.clone();
            let mut stop_rx = stop_rx.clone();
            let dropped = dropped.clone();
            tasks.push(tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let mut ws = match open_one(port, ping).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        let _ = ready.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                drop(permit);
                let _ = ready.send(Ok(()));
                loop {
                    tokio::select! {
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            _ => {}
                        },
                        _ = stop_rx.changed() => {
                            let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
                            return;
                        }
                    }
                }
            }));
        }
        drop(ready_tx);
        let (mut open, mut failed, mut first_error) = (0, 0, None);
        // Each task keeps its sender while it idles: count the n answers, not the channel's end.
        while open + failed < n {
            let Some(r) = ready_rx.recv().await else {
                break;
            };
            match r {
                Ok(()) => open += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        Self {
            open,
            failed,
            first_error,
            dropped,
            stop,
            tasks,
        }
    }

    /// Sockets the server closed (or that failed) since they opened.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Relaxed)
    }

    pub async fn close(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn open_one(port: u16, ping: bool) -> Result<Ws> {
    let mut ws = tokio::time::timeout(Duration::from_secs(20), connect_ws(port))
        .await
        .context("handshake timed out")??;
    if ping {
        ws.send(Message::Text(request("ping", None, 1).into()))
            .await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .context("no reply to ping")?
                .context("closed")??;
            if let Message::Text(t) = msg {
                let f = Frame::parse(t.as_str())?;
                if f.id_num() == Some(1) {
                    if let Some(e) = f.error {
                        bail!("ping failed: {}", e.get());
                    }
                    break;
                }
            }
        }
    }
    Ok(ws)
}
