//! Pieces for tests against the real SocketDock (see `../shared/reference/socketdock.md`): an
//! agent on one of its WebSockets, an HTTP stand-in for a DIDComm mediator with scripted
//! answers, and a recorder playing the backend SocketDock calls back, plus a plain HTTP POST for
//! SocketDock's `send`/`disconnect` URLs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The real SocketDock calling back `message_uri`, `connect_uri` and `disconnect_uri`.
pub async fn start_socketdock(
    message_uri: &str,
    connect_uri: &str,
    disconnect_uri: &str,
) -> testkit::SocketDock {
    let opts = testkit::SocketDockOpts::new(message_uri, connect_uri, disconnect_uri)
        .expect("a free port");
    testkit::SocketDock::start(opts)
        .await
        .expect("SocketDock starts (python3 with venv; ../shared/tools/socketdock-run)")
}

/// What an agent received on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// The socket ended: the close code the peer sent, None without a close frame.
    Closed(Option<u16>),
}

enum Command {
    Send(Message),
    Close,
}

/// A mobile agent on a SocketDock WebSocket. Frames it receives are kept, in order, for
/// `next_frame`/`next_text`; dropping it drops the connection without a close frame.
pub struct Agent {
    commands: mpsc::UnboundedSender<Command>,
    frames: mpsc::UnboundedReceiver<Frame>,
    /// Read by `close` while it waited for the end, ahead of `frames`.
    read_early: std::collections::VecDeque<Frame>,
    socket: tokio::task::JoinHandle<()>,
}

impl Agent {
    pub async fn connect(ws_url: &str) -> Self {
        let (mut socket, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .unwrap_or_else(|error| panic!("WebSocket to {ws_url}: {error}"));
        let (commands, mut command) = mpsc::unbounded_channel();
        let (deliver, frames) = mpsc::unbounded_channel();
        // One task owns the socket, so that closing and aborting act on all of it at once.
        let socket = tokio::spawn(async move {
            let mut closing = false;
            let code = loop {
                tokio::select! {
                    next = command.recv(), if !closing => match next {
                        Some(Command::Send(message)) => {
                            if socket.send(message).await.is_err() {
                                break None;
                            }
                        }
                        // The peer's close frame (or the end) follows on the read side.
                        Some(Command::Close) | None => {
                            closing = true;
                            let normal = CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            };
                            let _ = socket.close(Some(normal)).await;
                        }
                    },
                    frame = socket.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            let _ = deliver.send(Frame::Text(text.to_string()));
                        }
                        Some(Ok(Message::Binary(bytes))) => {
                            let _ = deliver.send(Frame::Binary(bytes.to_vec()));
                        }
                        Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                        Some(Ok(_)) => {} // pings are answered by tungstenite
                        Some(Err(_)) | None => break None,
                    },
                }
            };
            let _ = deliver.send(Frame::Closed(code));
        });
        Self {
            commands,
            frames,
            read_early: Default::default(),
            socket,
        }
    }

    pub fn send_text(&self, text: &str) {
        self.send(Message::text(text));
    }

    pub fn send(&self, message: Message) {
        let open = self.commands.send(Command::Send(message)).is_ok();
        assert!(open, "the agent's socket is closed");
    }

    /// The next frame; None when none came within `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        if let Some(frame) = self.read_early.pop_front() {
            return Some(frame);
        }
        tokio::time::timeout(within, self.frames.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next frame, which must be a text frame; None when none came within `within` or the
    /// socket closed. A binary frame fails the test: SocketDock sends binary for any content
    /// type but exactly `text/plain`, a mistake a test should see.
    pub async fn next_text(&mut self, within: Duration) -> Option<String> {
        match self.next_frame(within).await? {
            Frame::Text(text) => Some(text),
            Frame::Binary(bytes) => panic!(
                "expected a text frame, got a binary one: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Frame::Closed(_) => None,
        }
    }

    /// A clean close: our close frame (1000), then SocketDock's answer (at most 10 s); returns
    /// the code it answered with. Frames that arrived before it stay readable.
    pub async fn close(&mut self) -> Option<u16> {
        let _ = self.commands.send(Command::Close);
        let until_closed = async {
            loop {
                match self.frames.recv().await {
                    Some(Frame::Closed(code)) => return code,
                    Some(frame) => self.read_early.push_back(frame),
                    None => return None, // it had ended, and that was read
                }
            }
        };
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, until_closed)
            .await
            .unwrap_or_else(|_| panic!("the close handshake did not finish within {within:?}"))
    }

    /// Drops the TCP connection without a close frame, as a killed app would; returns once
    /// the socket is gone.
    pub async fn abort(mut self) {
        self.socket.abort();
        let _ = (&mut self.socket).await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.socket.abort();
    }
}

/// One HTTP request a stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            panic!("{} body is not JSON ({error}): {}", self.path, self.body)
        })
    }

    /// Every value of header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let values = self.headers.get_all(name).iter();
        values
            .map(|value| value.to_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// An answer a stand-in gives.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Sent in order; a name may repeat (several `X-Mpr-Connection-Id`).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the stand-in takes before answering (a mediator that stalls).
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    /// 200, empty.
    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }

    /// Answers only after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str()).expect("a header name");
            headers.append(name, HeaderValue::try_from(value).expect("a header value"));
        }
        let status = StatusCode::from_u16(self.status).expect("an HTTP status");
        (status, headers, self.body).into_response()
    }
}

type Rule = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

struct Script {
    /// Given first, one per request.
    next: std::collections::VecDeque<Reply>,
    /// Once `next` is empty.
    rule: Rule,
}

struct Shared {
    received: watch::Sender<Vec<Received>>,
    script: Mutex<Script>,
}

/// An HTTP server standing in for a DIDComm mediator (or any backend) on a free 127.0.0.1
/// port: records every request and answers `reply_next` replies first, then by its rule
/// (200, empty, until `reply_with` sets one). Stopped when dropped.
pub struct MediatorStandIn {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MediatorStandIn {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            received: watch::Sender::new(Vec::new()),
            script: Mutex::new(Script {
                next: Default::default(),
                rule: Arc::new(|_| Reply::ok()),
            }),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        let router = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("stand-in serves");
        });
        Self { url, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The URL of `path` (starting with `/`) here.
    pub fn uri(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Answers every request (after the `reply_next` ones) by `rule`.
    pub fn reply_with(&self, rule: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
        self.shared.script.lock().unwrap().rule = Arc::new(rule);
    }

    /// Queues `reply` for a request to come; queued replies go out in order, before the rule.
    pub fn reply_next(&self, reply: Reply) {
        self.shared.script.lock().unwrap().next.push_back(reply);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared.received.borrow().clone()
    }

    /// Every request so far once there are at least `n`; fails the test after `within`.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait_matching(None, n, within).await
    }

    /// The requests to `path` so far once there are at least `n`; fails after `within`.
    pub async fn wait_requests_to_path(
        &self,
        path: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Received> {
        self.wait_matching(Some(path), n, within).await
    }

    async fn wait_matching(&self, path: Option<&str>, n: usize, within: Duration) -> Vec<Received> {
        let matching = |received: &[Received]| -> Vec<Received> {
            let wanted = |request: &&Received| path.is_none_or(|path| request.path == path);
            received.iter().filter(wanted).cloned().collect()
        };
        let mut updates = self.shared.received.subscribe();
        let enough = updates.wait_for(|received| matching(received).len() >= n);
        if let Ok(received) = tokio::time::timeout(within, enough).await {
            return matching(&received.expect("the stand-in runs"));
        }
        let seen: Vec<_> = self.requests().into_iter().map(|r| r.path).collect();
        panic!("{n} requests to {path:?} did not arrive within {within:?}; seen: {seen:?}");
    }
}

impl Drop for MediatorStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(shared): State<Arc<Shared>>, request: Request) -> Reply {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20).await.expect("a body");
    let received = Received {
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (queued, rule) = {
        let mut script = shared.script.lock().unwrap();
        (script.next.pop_front(), script.rule.clone())
    };
    // The rule runs unlocked: it may take its time, or set the next reply.
    let reply = queued.unwrap_or_else(|| rule(&received));
    shared.received.send_modify(|all| all.push(received));
    tokio::time::sleep(reply.delay).await;
    reply
}

/// SocketDock's three callbacks, by the path the recorder serves them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    Connect,
    Message,
    Disconnect,
}

impl Callback {
    fn path(self) -> &'static str {
        match self {
            Callback::Connect => "/connect",
            Callback::Message => "/message",
            Callback::Disconnect => "/disconnect",
        }
    }
}

/// Plays SocketDock's backend: records the JSON body of every connect, message and disconnect
/// call and answers 200, so that SocketDock can be tested without the server.
pub struct CallbackRecorder {
    server: MediatorStandIn,
}

impl CallbackRecorder {
    pub async fn start() -> Self {
        Self {
            server: MediatorStandIn::start().await,
        }
    }

    pub fn uri(&self, callback: Callback) -> String {
        self.server.uri(callback.path())
    }

    /// A SocketDock calling back here.
    pub async fn start_socketdock(&self) -> testkit::SocketDock {
        let uri = |callback| self.uri(callback);
        let (message, connect) = (uri(Callback::Message), uri(Callback::Connect));
        start_socketdock(&message, &connect, &uri(Callback::Disconnect)).await
    }

    /// The JSON bodies of the `callback` calls so far once there are at least `n`; fails the
    /// test after `within`.
    pub async fn wait(&self, callback: Callback, n: usize, within: Duration) -> Vec<Value> {
        let calls = self
            .server
            .wait_requests_to_path(callback.path(), n, within)
            .await;
        calls.iter().map(Received::json).collect()
    }

    /// The JSON bodies of the `callback` calls so far.
    pub fn calls(&self, callback: Callback) -> Vec<Value> {
        let requests = self.server.requests().into_iter();
        let calls = requests.filter(|request| request.path == callback.path());
        calls.map(|request| request.json()).collect()
    }
}

/// POSTs `body` to `url` with `content_type` (None: no Content-Type header); returns the
/// status and body of the answer.
pub async fn post(url: &str, content_type: Option<&str>, body: &str) -> (u16, String) {
    let response = post_for_response(url, content_type, body).await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// [`post`], answering the whole response (headers included).
pub async fn post_for_response(
    url: &str,
    content_type: Option<&str>,
    body: &str,
) -> reqwest::Response {
    // reqwest is built without a default TLS provider; plain HTTP still needs one set. A
    // client per call: pooled connections die with the runtime (the test) that opened them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut request = client.post(url).body(body.to_owned());
    if let Some(content_type) = content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type);
    }
    request
        .send()
        .await
        .unwrap_or_else(|error| panic!("POST {url}: {error}"))
}

/// A TCP relay in front of a SocketDock's HTTP port (its `--endpoint`, so the send URLs point
/// here) that can stall the sends: while holding, whatever a connection sends next (a POST, on a
/// new or a pooled connection) is kept from SocketDock, unanswered, as by a SocketDock that took
/// it and never answered; `release` closes those connections unread.
pub struct TcpRelay {
    pub port: u16,
    holding: watch::Sender<bool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a relay port");
        let port = listener.local_addr().expect("its address").port();
        let (holding, _) = watch::channel(false);
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (watching, counting) = (holding.clone(), held.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(relay(
                    inbound,
                    target,
                    watching.subscribe(),
                    counting.clone(),
                ));
            }
        });
        Self {
            port,
            holding,
            held,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What connections send is held from now on.
    pub fn hold(&self) {
        self.holding.send_replace(true);
    }

    /// Waits until `count` connections have been held.
    pub async fn wait_held(&self, count: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let held = self.held.load(std::sync::atomic::Ordering::SeqCst);
            if held >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{held} connections held of {count} awaited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the held connections without passing on what they sent, and relays again.
    pub fn release(&self) {
        self.holding.send_replace(false);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection through a `TcpRelay`.
async fn relay(
    mut inbound: tokio::net::TcpStream,
    target: u16,
    mut holding: watch::Receiver<bool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    let (mut from_client, mut to_client) = inbound.split();
    let (mut from_target, mut to_target) = outbound.split();
    let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
    loop {
        tokio::select! {
            read = from_client.read(&mut up) => {
                let Ok(n @ 1..) = read else { return };
                if *holding.borrow_and_update() {
                    held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = holding.wait_for(|holding| !holding).await;
                    return;
                }
                if to_target.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = from_target.read(&mut down) => {
                let Ok(n @ 1..) = read else { return };
                if to_client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
