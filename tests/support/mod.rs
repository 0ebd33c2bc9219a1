//! Test harness: a real redis-server on a free 127.0.0.1 port, `mpr` instances and SecantusDB as
//! child processes (started, awaited and stopped by `testkit`), and a small JSON-RPC WebSocket
//! client. Everything is killed on drop. `push_standins`: push services; `socketdock`: the real
//! SocketDock with agents, a mediator stand-in and a callback recorder.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod push_standins;
pub mod socketdock;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub fn free_port() -> u16 {
    testkit::free_port().expect("a free port")
}

pub struct Redis {
    pub port: u16,
    server: testkit::RedisServer,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra redis-server arguments (e.g. AOF on).
    pub fn start_with(args: &[&str]) -> Self {
        let mut opts = testkit::RedisOpts::new("redis-server").expect("a free port");
        opts.args = args.iter().map(|arg| arg.to_string()).collect();
        let server = testkit::block_on(testkit::RedisServer::start(opts))
            .expect("redis-server is installed and starts");
        Self {
            port: server.port(),
            server,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        testkit::block_on(self.server.restart()).expect("redis-server restarts");
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn pid(&self) -> u32 {
        self.server.pid().expect("redis-server runs")
    }

    /// Freezes it (SIGSTOP) now and thaws it (SIGCONT) after `duration`, from a thread the
    /// caller joins.
    pub fn freeze(&self, duration: Duration) -> std::thread::JoinHandle<()> {
        let pid = self.pid().to_string();
        let signal = move |signal: &str| {
            let status = Command::new("kill")
                .args([signal, &pid])
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {signal}");
        };
        signal("-STOP");
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            signal("-CONT");
        })
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

pub struct Server {
    pub ws_port: u16,
    pub app_port: u16,
    server: testkit::MprServer,
}

impl Server {
    pub async fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        let server = Self::spawn(redis_url, env);
        server.wait_ready().await;
        server
    }

    pub fn spawn(redis_url: &str, env: &[(&str, &str)]) -> Self {
        let mut opts =
            testkit::MprOpts::new(env!("CARGO_BIN_EXE_mpr"), redis_url).expect("free ports");
        opts.clear_env = true;
        opts.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Ok(level) = std::env::var("MPR_TEST_LOG") {
            opts.env.push(("LOG_LEVEL".into(), level));
            opts.spawn.log = testkit::Log::Inherit;
        }
        let server = testkit::MprServer::spawn(opts).expect("mpr binary");
        Self {
            ws_port: server.ws_port,
            app_port: server.app_port,
            server,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    pub async fn wait_ready(&self) {
        self.server
            .wait_ready()
            .await
            .expect("mpr did not become ready");
    }

    /// (status, body) of a GET on the HTTP port; status 0 when nothing answers.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.server.http_get(path).await.unwrap_or_default()
    }

    /// The value of an unlabelled metric, or the sum of a labelled one's series matching `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .filter(|line| line.starts_with(name) && line.contains(labels))
            .filter(|line| line[name.len()..].starts_with([' ', '{']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits for the process to end by itself; None if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.server.wait_exit(within).expect("child status")
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.server.terminate().unwrap()
    }
}

/// A JSON-RPC client over one WebSocket: calls are matched to replies by id; frames that are
/// not replies (pushes) are kept for `next_push`.
pub struct Client {
    reader: tokio::task::JoinHandle<()>,
    outgoing: mpsc::UnboundedSender<Message>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    pending: Vec<Value>,
    next_id: u64,
}

#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Closed(Option<u16>),
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        Self::try_connect(url).await.expect("connect")
    }

    /// None when the server does not accept the socket.
    pub async fn try_connect(url: &str) -> Option<Self> {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Message>();
        let (deliver, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = to_send.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Message::Text(text)) => {
                        let _ = deliver.send(Incoming::Text(text.to_string()));
                    }
                    Ok(Message::Close(frame)) => {
                        let _ = deliver.send(Incoming::Closed(frame.map(|f| u16::from(f.code))));
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        eprintln!("client read error: {error}");
                        break;
                    }
                }
            }
            let _ = deliver.send(Incoming::Closed(None));
        });
        Some(Self {
            reader,
            outgoing,
            incoming,
            pending: Vec::new(),
            next_id: 0,
        })
    }

    pub fn send_raw(&self, frame: impl Into<String>) {
        self.outgoing
            .send(Message::text(frame.into()))
            .expect("socket open");
    }

    pub fn send_message(&self, message: Message) {
        self.outgoing.send(message).expect("socket open");
    }

    /// The next frame, whatever it is; None on timeout.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Incoming> {
        tokio::time::timeout(within, self.incoming.recv())
            .await
            .ok()
            .flatten()
    }

    /// The full reply (`result` or `error`) to a call.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let reply = self
            .try_request(method, params, Duration::from_secs(10))
            .await;
        reply.unwrap_or_else(|| panic!("no reply to {method}"))
    }

    /// The full reply to a call, or None when the socket closed or `within` passed first.
    pub async fn try_request(
        &mut self,
        method: &str,
        params: Value,
        within: Duration,
    ) -> Option<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if !params.is_null() {
            request["params"] = params;
        }
        self.outgoing
            .send(Message::text(request.to_string()))
            .ok()?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await? {
                Incoming::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).expect("server sends JSON");
                    if frame["id"] == json!(id) {
                        return Some(frame);
                    }
                    self.pending.push(frame);
                }
                Incoming::Closed(_) => return None,
            }
        }
    }

    /// The `result` of a call that must succeed.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let reply = self.request(method, params).await;
        assert!(reply.get("error").is_none(), "{method} failed: {reply}");
        reply["result"].clone()
    }

    /// The `error` of a call that must fail.
    pub async fn call_err(&mut self, method: &str, params: Value) -> Value {
        let reply = self.request(method, params).await;
        assert!(
            reply.get("result").is_none(),
            "{method} should fail: {reply}"
        );
        reply["error"].clone()
    }

    /// The params of the next `messagesReceived` push, or None within the timeout.
    pub async fn next_push(&mut self, within: Duration) -> Option<Value> {
        if let Some(i) = self
            .pending
            .iter()
            .position(|f| f["method"] == "messagesReceived")
        {
            return Some(self.pending.remove(i)["params"].clone());
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left).await? {
                Incoming::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["method"] == "messagesReceived" {
                        return Some(frame["params"].clone());
                    }
                    self.pending.push(frame);
                }
                Incoming::Closed(_) => return None,
            }
        }
    }

    pub async fn add(&mut self, connection_id: &str, did: &str, text: &str) -> String {
        let result = self
            .call(
                "addMessage",
                json!({"connectionId": connection_id, "recipientDids": [did], "payload": payload(text)}),
            )
            .await;
        result["messageId"].as_str().expect("messageId").to_owned()
    }

    pub async fn take(&mut self, params: Value) -> Vec<Value> {
        self.call("takeFromQueue", params)
            .await
            .as_array()
            .expect("array")
            .clone()
    }

    pub async fn count(&mut self, connection_id: &str) -> u64 {
        let result = self
            .call(
                "getAvailableMessageCount",
                json!({"connectionId": connection_id}),
            )
            .await;
        result.as_u64().expect("a count")
    }

    /// Binds a live session of `connection_id` to this socket.
    pub async fn add_live_session(&mut self, connection_id: &str, session_id: &str) {
        let bound = self
            .call(
                "addLiveSession",
                json!({"connectionId": connection_id, "sessionId": session_id}),
            )
            .await;
        assert_eq!(bound, true, "addLiveSession of {connection_id}");
    }
}

/// Dropping a client drops its socket without a close handshake, as a crashed peer would.
impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A DIDComm v1 JWE-shaped payload carrying `text` as its ciphertext.
pub fn payload(text: &str) -> Value {
    json!({"protected": "eyJlbmMiOiJ4Y2hhY2hhMjBwb2x5MTMwNV9pZXRmIn0", "iv": "aXY", "ciphertext": text, "tag": "dGFn"})
}

/// A payload nested `depth` levels deep (the payload itself is level 1).
pub fn nested_payload(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 1..depth {
        value = json!([value]);
    }
    json!({"protected": "p", "iv": "i", "ciphertext": "c", "tag": "t", "deep": value})
}

pub fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m["encryptedMessage"]["ciphertext"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

pub fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn unique_id(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::random::<u64>())
}

/// A MongoDB-wire server (SecantusDB, see shared/reference/test-services.md) on a free port.
/// It is started under a watchdog that stops it when the test process ends, so a shared
/// instance outlives no test run.
pub struct Mongo {
    pub port: u16,
    server: testkit::Secantus,
}

impl Mongo {
    /// One server per test binary; tests keep apart by database name (`url`).
    pub fn shared() -> &'static Mongo {
        static SHARED: std::sync::OnceLock<Mongo> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Mongo::start(":memory:"))
    }

    /// A server of the test's own; `storage` is `:memory:` or a directory that survives restarts.
    pub fn start(storage: &str) -> Self {
        let program = std::env::var("MPR_SECANTUSD").unwrap_or_else(|_| "secantusd-py".into());
        let mut opts = testkit::SecantusOpts::new(&program, storage).expect("a free port");
        opts.log_level = Some("ERROR".into());
        let server = testkit::block_on(testkit::Secantus::start(opts))
            .expect("SecantusDB did not start (pip install SecantusDB==0.7.0b3)");
        Self {
            port: server.port(),
            server,
        }
    }

    pub fn restart(&mut self) {
        testkit::block_on(self.server.restart())
            .expect("SecantusDB did not start (pip install SecantusDB==0.7.0b3)");
    }

    /// Stops the server and waits until its port is closed (asked first, killed after a grace
    /// period, as an outage would).
    pub fn stop(&mut self) {
        self.server.stop().expect("SecantusDB did not stop");
    }

    /// A URI for a database of the test's own.
    pub fn url(&self, database: &str) -> String {
        self.server.uri(database)
    }

    /// The collection the server writes, in `database`.
    pub async fn messages(&self, database: &str) -> mongodb::Collection<bson::Document> {
        let client = mongodb::Client::with_uri_str(self.url(database))
            .await
            .expect("MongoDB URI");
        client.database(database).collection("storequeuedmessages")
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until the condition holds; returns how long it took.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < within,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}
