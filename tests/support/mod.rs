//! Test harness: a real redis-server on a free 127.0.0.1 port (with `MPR_TEST_REDIS=cluster` a
//! Redis Cluster of six instead; see [`single_node_only`]), `mpr` instances and SecantusDB as
//! child processes (started, awaited and stopped by `testkit`), and a small JSON-RPC WebSocket
//! client. Everything is killed on drop. `push_standins`: push services; `socketdock`: the real
//! SocketDock with agents, a mediator stand-in and a callback recorder; `held_replies`: a proxy
//! that holds Redis's replies back (a call's outcome made unknown to its caller).
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod certs;
pub mod held_replies;
pub mod live_failover;
pub mod push_standins;
pub mod reconcile;
pub mod socketdock;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub fn free_port() -> u16 {
    testkit::free_port().expect("a free port")
}

/// The Redis the tests run against: one redis-server, or with `MPR_TEST_REDIS=cluster` a Redis
/// Cluster of six (three primaries, three replicas).
pub struct Redis {
    /// The redis-server's port; in a cluster, the first node's.
    pub port: u16,
    backend: Backend,
}

enum Backend {
    Single(testkit::RedisServer),
    Cluster(testkit::RedisCluster),
    Sentinel(testkit::RedisSentinel),
}

/// Whether this run is against a Redis Cluster (`MPR_TEST_REDIS=cluster`; `single` or unset:
/// one redis-server).
pub fn cluster_mode() -> bool {
    match std::env::var("MPR_TEST_REDIS").as_deref() {
        Ok("cluster") => true,
        Ok("single" | "") | Err(_) => false,
        Ok(other) => panic!("MPR_TEST_REDIS={other}: use single or cluster"),
    }
}

/// For a test that needs one redis-server of its own (it kills, stops, restarts or freezes it,
/// starts it with persistence arguments, or reads node-local state): in a cluster run it says so
/// and answers true, and the test returns at once:
/// `if support::single_node_only() { return; }`.
#[must_use]
pub fn single_node_only() -> bool {
    if !cluster_mode() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    eprintln!("{test}: skipped, needs a single redis-server (MPR_TEST_REDIS=cluster)");
    true
}

impl Redis {
    /// One redis-server, or a cluster with `MPR_TEST_REDIS=cluster`.
    pub fn start() -> Self {
        if cluster_mode() {
            Self::start_cluster()
        } else {
            Self::start_single(&[])
        }
    }

    /// A Redis Cluster (3 primaries, 3 replicas) whatever MPR_TEST_REDIS says: for tests of
    /// what only a cluster does (failover).
    pub fn start_cluster() -> Self {
        let opts =
            testkit::RedisClusterOpts::new(&testkit::redis_server_bin()).expect("free ports");
        Self::start_cluster_with(opts)
    }

    /// A Redis Cluster started as `opts` says (e.g. its nodes announcing another host).
    pub fn start_cluster_with(opts: testkit::RedisClusterOpts) -> Self {
        let cluster = testkit::block_on(testkit::RedisCluster::start(opts))
            .expect("redis-server 7 is installed and the cluster forms");
        Self {
            port: cluster.live_ports()[0],
            backend: Backend::Cluster(cluster),
        }
    }

    /// A master with two replicas and three sentinels (`testkit::RedisSentinel`), whatever
    /// MPR_TEST_REDIS says: for tests of what only Sentinel does (failover).
    pub fn start_sentinel() -> Self {
        let opts =
            testkit::RedisSentinelOpts::new(&testkit::redis_server_bin()).expect("free ports");
        Self::start_sentinel_with(opts)
    }

    /// Sentinel started as `opts` says (e.g. with ACLs).
    pub fn start_sentinel_with(opts: testkit::RedisSentinelOpts) -> Self {
        let sentinel = testkit::block_on(testkit::RedisSentinel::start(opts))
            .expect("redis-server 7 is installed and the sentinels see the master and replicas");
        let port = testkit::block_on(sentinel.master_port()).expect("a master");
        Self {
            port,
            backend: Backend::Sentinel(sentinel),
        }
    }

    /// One redis-server with extra arguments (e.g. AOF on).
    pub fn start_with(args: &[&str]) -> Self {
        assert!(!cluster_mode(), "{}", Self::NOT_IN_A_CLUSTER);
        Self::start_single(args)
    }

    fn start_single(args: &[&str]) -> Self {
        let mut opts = testkit::RedisOpts::new(&testkit::redis_server_bin()).expect("a free port");
        opts.args = args.iter().map(|arg| arg.to_string()).collect();
        let server = testkit::block_on(testkit::RedisServer::start_on_free_port(opts))
            .expect("redis-server is installed and starts");
        Self {
            port: server.port(),
            backend: Backend::Single(server),
        }
    }

    /// The one redis-server; a cluster has none (see [`single_node_only`]).
    fn single(&self) -> &testkit::RedisServer {
        match &self.backend {
            Backend::Single(server) => server,
            _ => panic!("{}", Self::NOT_IN_A_CLUSTER),
        }
    }

    fn single_mut(&mut self) -> &mut testkit::RedisServer {
        match &mut self.backend {
            Backend::Single(server) => server,
            _ => panic!("{}", Self::NOT_IN_A_CLUSTER),
        }
    }

    const NOT_IN_A_CLUSTER: &str = "this needs a single redis-server, not a cluster \
        (MPR_TEST_REDIS=cluster): guard the test with `if support::single_node_only() { return; }`";

    /// The cluster when this is one.
    pub fn cluster(&self) -> Option<&testkit::RedisCluster> {
        match &self.backend {
            Backend::Cluster(cluster) => Some(cluster),
            _ => None,
        }
    }

    pub fn cluster_mut(&mut self) -> Option<&mut testkit::RedisCluster> {
        match &mut self.backend {
            Backend::Cluster(cluster) => Some(cluster),
            _ => None,
        }
    }

    /// The master, replicas and sentinels when this is Sentinel.
    pub fn sentinel_mut(&mut self) -> Option<&mut testkit::RedisSentinel> {
        match &mut self.backend {
            Backend::Sentinel(sentinel) => Some(sentinel),
            _ => None,
        }
    }

    /// For `REDIS_URL`; in a cluster the first node's, with Sentinel the first master's (the
    /// server takes only the scheme and credentials from it).
    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Single(server) => server.url(),
            Backend::Cluster(cluster) => cluster.url(),
            Backend::Sentinel(sentinel) => sentinel.url(),
        }
    }

    /// What an mpr process needs besides `REDIS_URL` to find this Redis: nothing for one
    /// redis-server, `REDIS_TYPE=cluster` and `REDIS_NODES` for a cluster, `REDIS_TYPE=sentinel`,
    /// `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` for Sentinel.
    pub fn topology_env(&self) -> Vec<(String, String)> {
        match &self.backend {
            Backend::Single(_) => Vec::new(),
            Backend::Cluster(cluster) => vec![
                ("REDIS_TYPE".into(), "cluster".into()),
                ("REDIS_NODES".into(), cluster.seed_nodes_env()),
            ],
            Backend::Sentinel(sentinel) => vec![
                ("REDIS_TYPE".into(), "sentinel".into()),
                ("REDIS_SENTINELS".into(), sentinel.sentinels_env()),
                (
                    "REDIS_SENTINEL_MASTER".into(),
                    sentinel.master_name().to_owned(),
                ),
            ],
        }
    }

    /// The same as command-line flags (`--redis-url …` and [`Self::topology_env`] as flags), for
    /// an instance built in process.
    pub fn mpr_flags(&self) -> Vec<String> {
        let mut flags = vec!["--redis-url".to_owned(), self.url()];
        for (name, value) in self.topology_env() {
            flags.push(format!("--{}", name.to_lowercase().replace('_', "-")));
            flags.push(value);
        }
        flags
    }

    /// kill -9 the node serving `key`: its cluster primary, or the master Sentinel names;
    /// returns its port.
    pub async fn kill_node_of(&mut self, key: &str) -> u16 {
        match &mut self.backend {
            Backend::Cluster(cluster) => {
                let victim = cluster
                    .primary_of_key(key)
                    .await
                    .expect("the key's primary");
                cluster
                    .kill_node(victim)
                    .await
                    .expect("kill -9 the primary");
                victim
            }
            Backend::Sentinel(sentinel) => {
                let victim = sentinel.master_port().await.expect("a master");
                sentinel.kill_node(victim).expect("kill -9 the master");
                victim
            }
            Backend::Single(_) => panic!("a single redis-server has no replica to fail over to"),
        }
    }

    /// Waits until a replica took over from the node killed on port `killed`; its port.
    pub async fn wait_failover(&self, killed: u16) -> u16 {
        let within = Duration::from_secs(60);
        match &self.backend {
            Backend::Cluster(cluster) => cluster.wait_failover(killed, within).await,
            Backend::Sentinel(sentinel) => sentinel.wait_failover(killed, within).await,
            Backend::Single(_) => panic!("a single redis-server has no replica to fail over to"),
        }
        .expect("a replica takes over")
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        testkit::block_on(self.single_mut().restart()).expect("redis-server restarts");
    }

    pub fn stop(&mut self) {
        self.single_mut().stop();
    }

    /// kill -9.
    pub fn kill(&mut self) {
        self.single_mut().kill();
    }

    pub fn pid(&self) -> u32 {
        self.single().pid().expect("redis-server runs")
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

    /// redis-cli with `args`; its stdout, trimmed. In a cluster `redis-cli -c` on a running node,
    /// which follows a key to its primary (`--scan` asks every primary).
    pub fn cli(&self, args: &[&str]) -> String {
        match &self.backend {
            Backend::Cluster(cluster) => {
                return cluster
                    .cli(args)
                    .expect("redis-cli is installed")
                    .trim()
                    .to_owned();
            }
            Backend::Sentinel(sentinel) => {
                return sentinel
                    .cli(args)
                    .expect("redis-cli is installed")
                    .trim()
                    .to_owned();
            }
            Backend::Single(_) => {}
        }
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
    /// Where it logs at info level (unless MPR_TEST_LOG sends its log to ours): printed when a
    /// test fails, so that a failure seen once carries the servers' side of it.
    log: Option<PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(path) = self.log.take() else { return };
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(SERVER_LOG_TAIL_LINES)..];
            eprintln!(
                "--- mpr (pid {}, ws {}) log, last {} of {} lines ---\n{}",
                self.pid(),
                self.ws_port,
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// How much of a server's log a failed test prints.
const SERVER_LOG_TAIL_LINES: usize = 200;

impl Server {
    /// An instance on `redis` (one redis-server or the cluster), with `env` on top.
    pub async fn start(redis: &Redis, env: &[(&str, &str)]) -> Self {
        let server = Self::spawn(redis, env);
        server.wait_ready().await;
        server
    }

    pub fn spawn(redis: &Redis, env: &[(&str, &str)]) -> Self {
        Self::spawn_under(redis, env, &[])
    }

    /// [`Server::start`] run by `wrapper` (a command that execs the server, e.g. prlimit).
    pub async fn start_under(redis: &Redis, env: &[(&str, &str)], wrapper: &[&str]) -> Self {
        let server = Self::spawn_under(redis, env, wrapper);
        server.wait_ready().await;
        server
    }

    fn spawn_under(redis: &Redis, env: &[(&str, &str)], wrapper: &[&str]) -> Self {
        let mut opts =
            testkit::MprOpts::new(env!("CARGO_BIN_EXE_mpr"), &redis.url()).expect("free ports");
        opts.wrapper = wrapper.iter().map(|part| part.to_string()).collect();
        opts.clear_env = true;
        opts.env = redis.topology_env();
        opts.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = match std::env::var("MPR_TEST_LOG") {
            Ok(level) => {
                opts.env.push(("LOG_LEVEL".into(), level));
                opts.spawn.log = testkit::Log::Inherit;
                None
            }
            Err(_) => {
                let dir = std::env::temp_dir().join("mpr-test-logs");
                std::fs::create_dir_all(&dir).expect("a directory for the servers' logs");
                let path = dir.join(format!("{}-{}.log", std::process::id(), opts.ws_port));
                let _ = std::fs::remove_file(&path);
                opts.env.push(("LOG_LEVEL".into(), "info".into()));
                opts.spawn.log = testkit::Log::File(path.clone());
                Some(path)
            }
        };
        let server = testkit::MprServer::spawn(opts).expect("mpr binary");
        Self {
            ws_port: server.ws_port,
            app_port: server.app_port,
            server,
            log,
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

    /// getQueueStatus of the connection, or of one recipient DID.
    pub async fn queue_status(&mut self, connection_id: &str, did: Option<&str>) -> Value {
        let params = match did {
            Some(did) => json!({"connectionId": connection_id, "recipientDid": did}),
            None => json!({"connectionId": connection_id}),
        };
        self.call("getQueueStatus", params).await
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
        Self::launch(storage, None)
    }

    /// A server of the test's own, in memory, speaking TLS only; its `url` trusts `tls.ca_file`.
    pub fn start_tls(tls: testkit::SecantusTls) -> Self {
        Self::launch(":memory:", Some(tls))
    }

    fn launch(storage: &str, tls: Option<testkit::SecantusTls>) -> Self {
        let program = std::env::var("MPR_SECANTUSD").unwrap_or_else(|_| "secantusd-py".into());
        let mut opts = testkit::SecantusOpts::new(&program, storage).expect("a free port");
        opts.log_level = Some("ERROR".into());
        opts.tls = tls;
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

/// Runs the mpr binary on free 127.0.0.1 ports with only `env`, expecting it to exit by
/// itself within `within` (it is killed and the test fails if not): its exit code and
/// everything it printed.
pub fn run_until_exit(env: &[(String, String)], within: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mpr"))
        .env_clear()
        .env("WS_PORT", "0")
        .env("APP_PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpr binary");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("child status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("child output");
            panic!(
                "mpr kept running for {within:?} with {env:?}:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("child output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), said)
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
