//! The SocketDock adapter end to end: agents' WebSockets held by the real SocketDock (a single
//! Python process), one mpr instance behind it on Redis, and a mediator stand-in in this tool
//! that binds each agent's connection to its socket when the agent sends `bind <connectionId>`.
//! - latency: addMessage written on one sender socket to mpr (open loop, a fixed total rate
//!   spread over the agents, the send time in the payload) -> the agent reads the frame;
//! - flush: a backlog added while its agent is away; from the agent's bind frame to its last
//!   message (count, order and duplicates checked).
//!
//! Beside each, SocketDock alone on a second instance whose frames go straight to the stand-in
//! (no mpr, no Redis): this tool POSTs to the sockets' send URLs with the server's HTTP client,
//! one sender per socket as the server's delivery loop (latency at the same rates), and the
//! backlog's count sequentially to one socket (the flush's ceiling). And a relay's floor on the
//! same SocketDock: each of those senders writes the message to Redis before its POST and
//! deletes it after (one round trip each, no Lua), the least a relay that stores a message
//! before sending it does; the latency rows compare mpr with it. And a minimal relay in mpr's
//! place (`src/bin/minimal-relay.rs`, a process of its own): the same hops as mpr, a plain `SET`
//! and `DEL` instead of mpr's work.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::Settings;
use crate::client::{
    Client, Frame, Ws, add_message_params, clip, connect_ws, connect_ws_at, find_ts, jwe_payload,
    now_ns, request,
};
use crate::procs::{CpuMeter, Dock, MinimalRelay, Mpr, Redis, fmt_cpu, serve_on_own_thread};
use crate::report::{self, Report, Table, median, pct_ms};
use crate::resp::Resp;
use crate::scen_live::{PhaseResult, Window, pace};
use mpr::telemetry::SOCKETDOCK_SEND_SECONDS as SEND_SECONDS;

const SECRET: &str = "mpr-bench-socketdock";
/// How long a bind, or a gap between two messages of a flush, may take before it fails.
const WITHIN: Duration = Duration::from_secs(10);

/// Send URLs of the connections bound on the SocketDock that calls the stand-in directly.
#[derive(Default)]
struct DirectBinds(Mutex<HashMap<String, String>>);

/// The mediator: `/didcomm` takes frames forwarded by mpr, `/direct` frames straight from the
/// second SocketDock. On a thread of its own, like the other stand-ins.
fn mediator_stand_in(direct: Arc<DirectBinds>) -> Result<String> {
    let router = axum::Router::new()
        .route("/didcomm", axum::routing::post(bind_through_mpr))
        .route("/direct", axum::routing::post(bind_direct))
        .with_state(direct);
    serve_on_own_thread(router)
}

/// `bind <connectionId>` binds the connection to the frame's socket (the header) and answers
/// `bound <connectionId>` as a return-route reply: the agent reads it once it is bound.
async fn bind_through_mpr(body: String) -> Response {
    match body.strip_prefix("bind ") {
        Some(connection) => (
            [("x-mpr-connection-id", connection.to_owned())],
            format!("bound {connection}"),
        )
            .into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// `bind <connectionId>` from SocketDock itself: remember the socket's send URL.
async fn bind_direct(State(direct): State<Arc<DirectBinds>>, body: String) -> StatusCode {
    #[derive(Deserialize)]
    struct Meta {
        send: String,
    }
    #[derive(Deserialize)]
    struct Callback {
        meta: Meta,
        message: String,
    }
    let Ok(callback) = serde_json::from_str::<Callback>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if let Some(connection) = callback.message.strip_prefix("bind ") {
        let mut binds = direct.0.lock().unwrap();
        binds.insert(connection.to_owned(), callback.meta.send);
    }
    StatusCode::OK
}

impl DirectBinds {
    async fn send_url(&self, connection: &str) -> Result<String> {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(url) = self.0.lock().unwrap().get(connection) {
                return Ok(url.clone());
            }
            if Instant::now() >= deadline {
                bail!("SocketDock did not forward `bind {connection}` within {WITHIN:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What an agent read of the timestamped messages (the timestamp is each one's identity).
#[derive(Default)]
struct Received {
    seen: HashSet<u64>,
    count: u64,
    duplicates: u64,
    /// Messages older than one read before them.
    out_of_order: u64,
    newest_ts: u64,
    first_at_ns: u64,
    last_at_ns: u64,
}

/// An agent on SocketDock's `/ws`: its reader records every timestamped frame in `window` (once)
/// and passes the other frames (return-route replies) on.
struct Agent {
    sink: SplitSink<Ws, Message>,
    received: Arc<Mutex<Received>>,
    replies: mpsc::UnboundedReceiver<String>,
    reader: JoinHandle<()>,
}

impl Agent {
    async fn connect(dock_port: u16, window: Arc<Window>) -> Result<Self> {
        let (sink, mut stream) = connect_ws_at(dock_port, "/ws").await?.split();
        let received: Arc<Mutex<Received>> = Arc::default();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let log = received.clone();
        let reader = tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let at = now_ns();
                let text = match msg {
                    Ok(Message::Text(t)) => t,
                    Ok(Message::Close(c)) => {
                        window.error(format!("agent socket closed by SocketDock: {c:?}"));
                        return;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        window.error(format!("agent socket: {e}"));
                        return;
                    }
                };
                let Some(ts) = find_ts(text.as_str()) else {
                    let _ = reply_tx.send(text.as_str().to_owned());
                    continue;
                };
                let mut r = log.lock().unwrap();
                if !r.seen.insert(ts) {
                    r.duplicates += 1;
                    continue;
                }
                r.count += 1;
                if ts < r.newest_ts {
                    r.out_of_order += 1;
                }
                r.newest_ts = r.newest_ts.max(ts);
                if r.first_at_ns == 0 {
                    r.first_at_ns = at;
                }
                r.last_at_ns = at;
                drop(r);
                window.record(ts, at);
            }
        });
        Ok(Self {
            sink,
            received,
            replies,
            reader,
        })
    }

    async fn send_bind(&mut self, connection: &str) -> Result<()> {
        let frame = format!("bind {connection}");
        self.sink.send(Message::Text(frame.into())).await?;
        Ok(())
    }

    /// Binds through mpr: done when the stand-in's return-route reply arrives.
    async fn bind_through_mpr(&mut self, connection: &str) -> Result<()> {
        self.send_bind(connection).await?;
        let reply = tokio::time::timeout(WITHIN, self.replies.recv())
            .await
            .with_context(|| format!("no reply to `bind {connection}` within {WITHIN:?}"))?;
        match reply {
            Some(text) if text == format!("bound {connection}") => Ok(()),
            other => bail!("`bind {connection}` answered {other:?}"),
        }
    }

    /// (count, duplicates, out of order) so far.
    fn tally(&self) -> (u64, u64, u64) {
        let r = self.received.lock().unwrap();
        (r.count, r.duplicates, r.out_of_order)
    }

    /// Waits until `count` messages arrived, failing when none came for WITHIN.
    async fn wait_for(&self, count: u64) -> Result<()> {
        let mut progress = (self.tally().0, Instant::now());
        while self.tally().0 < count {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = self.tally().0;
            if now > progress.0 {
                progress = (now, Instant::now());
            } else if progress.1.elapsed() > WITHIN {
                bail!("{now} of {count} messages arrived, then none for {WITHIN:?}");
            }
        }
        Ok(())
    }

    async fn close(mut self) {
        self.reader.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }
}

/// Sums (count, duplicates, out of order) over agents.
fn tally(agents: &[Agent]) -> (u64, u64, u64) {
    agents
        .iter()
        .map(Agent::tally)
        .fold((0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2))
}

/// Time spent in send POSTs and their count: (seconds, POSTs).
type PostTotals = (f64, f64);

/// The mean of the POSTs between two totals, in ms.
fn mean_post_ms(before: PostTotals, after: PostTotals) -> f64 {
    (after.0 - before.0) * 1e3 / (after.1 - before.1)
}

/// The server's own account of its send POSTs (its `mpr_socketdock_send_seconds` summary).
async fn server_post_totals(mpr: &Mpr) -> Result<PostTotals> {
    let (status, text) = testkit::http_get(mpr.app_port, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok((
        value(&format!("{SEND_SECONDS}_sum")),
        value(&format!("{SEND_SECONDS}_count")),
    ))
}

/// POSTs a text frame to a SocketDock send URL, as the server's delivery does.
async fn post_frame(http: &reqwest::Client, url: &str, text: String) -> Result<()> {
    let response = http
        .post(url)
        .header("content-type", "text/plain")
        .body(text)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if status != reqwest::StatusCode::OK || body != "OK" {
        bail!("send answered {status} {}", clip(&body));
    }
    Ok(())
}

/// A sender's socket: its write half, and a task that notes in `window` each reply `failure`
/// names (None: the reply is a success).
fn sender_socket(
    ws: Ws,
    window: &Arc<Window>,
    failure: fn(&str) -> Option<String>,
) -> (SplitSink<Ws, Message>, JoinHandle<()>) {
    let (sender, mut stream) = ws.split();
    let errors = window.clone();
    let replies = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg
                && let Some(error) = failure(t.as_str())
            {
                errors.error(error);
            }
        }
    });
    (sender, replies)
}

/// The mpr path: agents bound through mpr, one sender socket writing addMessage open loop.
struct ThroughMpr {
    window: Arc<Window>,
    agents: Vec<Agent>,
    sender: SplitSink<Ws, Message>,
    next_id: u64,
    replies: JoinHandle<()>,
}

impl ThroughMpr {
    async fn setup(mpr: &Mpr, dock: &Dock, agents: usize) -> Result<Self> {
        let window = Window::new();
        let mut bound = Vec::with_capacity(agents);
        for k in 0..agents {
            let mut agent = Agent::connect(dock.port, window.clone()).await?;
            agent.bind_through_mpr(&format!("sd-{k}")).await?;
            bound.push(agent);
        }
        let (sender, replies) = sender_socket(connect_ws(mpr.ws_port).await?, &window, |reply| {
            let error = Frame::parse(reply).ok()?.error?;
            Some(format!("addMessage failed: {}", error.get()))
        });
        Ok(Self {
            window,
            agents: bound,
            sender,
            next_id: 0,
            replies,
        })
    }

    async fn phase(
        &mut self,
        mpr: &Mpr,
        rate: u64,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Phase> {
        let (before, posts_before) = (tally(&self.agents), server_post_totals(mpr).await?);
        let window = self.window.clone();
        let (sender, next_id, agents) = (&mut self.sender, &mut self.next_id, self.agents.len());
        let r = pace(&window, rate, warmup, duration, async |i: u64, ts: u64| {
            let connection = format!("sd-{}", i as usize % agents);
            let params = add_message_params(&connection, &jwe_payload(Some(ts)));
            *next_id += 1;
            let frame = request("addMessage", Some(&params), *next_id);
            sender.send(Message::Text(frame.into())).await?;
            Ok(())
        })
        .await?;
        let post_ms = mean_post_ms(posts_before, server_post_totals(mpr).await?);
        Ok(Phase::of(r, before, tally(&self.agents), post_ms))
    }

    async fn close(mut self) {
        let _ = self.sender.close().await;
        self.replies.abort();
        for agent in self.agents {
            agent.close().await;
        }
    }
}

/// The minimal relay: agents bound on the direct SocketDock, one sender socket writing each
/// message with its socket's send URL to `minimal-relay`, which stores, answers and sends it.
struct ThroughMinimalRelay {
    window: Arc<Window>,
    agents: Vec<Agent>,
    urls: Vec<String>,
    sender: SplitSink<Ws, Message>,
    replies: JoinHandle<()>,
}

impl ThroughMinimalRelay {
    async fn setup(
        relay: &MinimalRelay,
        dock: &Dock,
        binds: &DirectBinds,
        agents: usize,
    ) -> Result<Self> {
        let window = Window::new();
        let (mut bound, mut urls) = (Vec::new(), Vec::new());
        for k in 0..agents {
            let connection = format!("relayed-{k}");
            let mut agent = Agent::connect(dock.port, window.clone()).await?;
            agent.send_bind(&connection).await?;
            urls.push(binds.send_url(&connection).await?);
            bound.push(agent);
        }
        let (sender, replies) = sender_socket(connect_ws(relay.port).await?, &window, |reply| {
            (reply != "ok").then(|| format!("minimal-relay: {}", clip(reply)))
        });
        Ok(Self {
            window,
            agents: bound,
            urls,
            sender,
            replies,
        })
    }

    async fn phase(&mut self, rate: u64, warmup: Duration, duration: Duration) -> Result<Phase> {
        let before = tally(&self.agents);
        let window = self.window.clone();
        let (sender, urls) = (&mut self.sender, &self.urls);
        let r = pace(&window, rate, warmup, duration, async |i: u64, ts: u64| {
            let url = &urls[i as usize % urls.len()];
            let frame = format!("{url}\n{}", jwe_payload(Some(ts)));
            sender.send(Message::Text(frame.into())).await?;
            Ok(())
        })
        .await?;
        Ok(Phase::of(r, before, tally(&self.agents), f64::NAN))
    }

    async fn close(mut self) {
        let _ = self.sender.close().await;
        self.replies.abort();
        for agent in self.agents {
            agent.close().await;
        }
    }
}

/// SocketDock alone: agents bound on the direct SocketDock, one sequential POSTer per socket;
/// with `stored` (a Redis port), each POST between a write of the message and its deletion.
struct Direct {
    window: Arc<Window>,
    agents: Vec<Agent>,
    queues: Vec<mpsc::UnboundedSender<String>>,
    posters: Vec<JoinHandle<()>>,
    posts: Arc<Mutex<PostTotals>>,
}

impl Direct {
    async fn setup(
        dock: &Dock,
        binds: &DirectBinds,
        http: &reqwest::Client,
        agents: usize,
        stored: Option<u16>,
    ) -> Result<Self> {
        let window = Window::new();
        let posts: Arc<Mutex<PostTotals>> = Arc::default();
        let (mut bound, mut queues, mut posters) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..agents {
            let connection = match stored {
                Some(_) => format!("stored-{k}"),
                None => format!("direct-{k}"),
            };
            let mut agent = Agent::connect(dock.port, window.clone()).await?;
            agent.send_bind(&connection).await?;
            let url = binds.send_url(&connection).await?;
            bound.push(agent);
            let (queue, mut frames) = mpsc::unbounded_channel::<String>();
            queues.push(queue);
            let (http, errors, totals) = (http.clone(), window.clone(), posts.clone());
            let mut redis = match stored {
                Some(port) => Some(Resp::connect(port).await?),
                None => None,
            };
            let key = format!("bench:{{{connection}}}:message");
            posters.push(tokio::spawn(async move {
                while let Some(text) = frames.recv().await {
                    if let Some(redis) = redis.as_mut()
                        && let Err(e) = redis.cmd(&["SET", key.as_str(), text.as_str()]).await
                    {
                        errors.error(format!("{e:#}"));
                    }
                    let started = Instant::now();
                    if let Err(e) = post_frame(&http, &url, text).await {
                        errors.error(format!("{e:#}"));
                    }
                    if let Some(redis) = redis.as_mut()
                        && let Err(e) = redis.cmd(&["DEL", key.as_str()]).await
                    {
                        errors.error(format!("{e:#}"));
                    }
                    let mut totals = totals.lock().unwrap();
                    totals.0 += started.elapsed().as_secs_f64();
                    totals.1 += 1.0;
                }
            }));
        }
        Ok(Self {
            window,
            agents: bound,
            queues,
            posters,
            posts,
        })
    }

    async fn phase(&mut self, rate: u64, warmup: Duration, duration: Duration) -> Result<Phase> {
        let (before, posts_before) = (tally(&self.agents), *self.posts.lock().unwrap());
        let window = self.window.clone();
        let queues = &self.queues;
        let r = pace(&window, rate, warmup, duration, async |i: u64, ts: u64| {
            queues[i as usize % queues.len()]
                .send(jwe_payload(Some(ts)))
                .context("a poster ended")
        })
        .await?;
        let post_ms = mean_post_ms(posts_before, *self.posts.lock().unwrap());
        Ok(Phase::of(r, before, tally(&self.agents), post_ms))
    }

    async fn close(self) {
        for poster in self.posters {
            poster.abort();
        }
        for agent in self.agents {
            agent.close().await;
        }
    }
}

/// One paced phase, with the agents' duplicates and reordered messages during it, and the
/// mean time of a send POST (by the server's metric, or timed by this tool).
struct Phase {
    r: PhaseResult,
    duplicates: u64,
    out_of_order: u64,
    post_ms: f64,
}

impl Phase {
    fn of(r: PhaseResult, before: (u64, u64, u64), after: (u64, u64, u64), post_ms: f64) -> Self {
        Self {
            r,
            duplicates: after.1 - before.1,
            out_of_order: after.2 - before.2,
            post_ms,
        }
    }
}

/// Medians over runs of one latency row.
#[derive(Default)]
struct Series {
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    achieved: Vec<f64>,
    post_ms: Vec<f64>,
    sent: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    lag_ms: f64,
    cpu: String,
}

impl Series {
    /// Adds a run's phase, with the CPU its processes used, and prints it.
    fn record(&mut self, path: &str, p: &Phase, meter: CpuMeter) {
        self.push(p, fmt_cpu(&meter.stop()));
        eprintln!(
            "      {path} p50 {:.3} ms p99 {:.3} ms max {:.3} ms, {} sent, {} lost, achieved {:.0}/s",
            p.r.p50, p.r.p99, p.r.max, p.r.sent, p.r.lost, p.r.achieved
        );
    }

    fn push(&mut self, p: &Phase, cpu: String) {
        self.p50.push(p.r.p50);
        self.p99.push(p.r.p99);
        self.max.push(p.r.max);
        self.achieved.push(p.r.achieved);
        self.post_ms.push(p.post_ms);
        self.sent += p.r.sent;
        self.lost += p.r.lost;
        self.duplicates += p.duplicates;
        self.out_of_order += p.out_of_order;
        self.lag_ms = self.lag_ms.max(p.r.max_lag_ms);
        self.cpu = cpu;
    }

    fn row(&self, rate: u64, path: &str) -> Vec<String> {
        vec![
            format!("{rate}/s"),
            path.into(),
            report::rate(median(&self.achieved)),
            report::ms(median(&self.p50)),
            format!("**{}**", report::ms(median(&self.p99))),
            report::ms(report::max_of(&self.max)),
            report::ms(median(&self.post_ms)),
            format!(
                "{} of {} ({} lost, {} dup, {} out of order)",
                self.sent - self.lost,
                self.sent,
                self.lost,
                self.duplicates,
                self.out_of_order
            ),
            self.cpu.clone(),
        ]
    }
}

/// One flush (or its ceiling): from the first frame sent to the last message read.
struct Flushed {
    first_ms: f64,
    all_ms: f64,
    rate: f64,
    count: u64,
    duplicates: u64,
    out_of_order: u64,
    /// Send -> frame of each message (the ceiling only: sequential, so unloaded).
    p50: f64,
    p99: f64,
    /// Mean time of a send POST.
    post_ms: f64,
    cpu: String,
}

impl Flushed {
    fn of(agent: &Agent, start_ns: u64, window: &Window, cpu: String) -> Self {
        let r = agent.received.lock().unwrap();
        let all = r.last_at_ns.saturating_sub(start_ns) as f64 / 1e9;
        let hist = window.hist.lock().unwrap();
        Self {
            first_ms: r.first_at_ns.saturating_sub(start_ns) as f64 / 1e6,
            all_ms: all * 1e3,
            rate: r.count as f64 / all,
            count: r.count,
            duplicates: r.duplicates,
            out_of_order: r.out_of_order,
            p50: pct_ms(&hist, 0.5),
            p99: pct_ms(&hist, 0.99),
            post_ms: f64::NAN,
            cpu,
        }
    }
}

/// Adds `backlog` messages for an absent agent (sequential calls: the queue's order is the
/// timestamps'), then connects it and times its bind to its last message.
async fn flush(
    mpr: &Mpr,
    redis: &Redis,
    dock: &Dock,
    connection: &str,
    backlog: usize,
) -> Result<Flushed> {
    let mut client = Client::connect(mpr.ws_port).await?;
    for _ in 0..backlog {
        let params = add_message_params(connection, &jwe_payload(Some(now_ns())));
        client.call("addMessage", Some(&params)).await?;
    }
    client.close().await;
    let window = Window::new();
    let mut agent = Agent::connect(dock.port, window.clone()).await?;
    let meter = CpuMeter::start(&[
        ("mpr", mpr.pid),
        ("redis", redis.pid),
        ("socketdock", dock.pid),
        ("bench", std::process::id()),
    ]);
    let posts_before = server_post_totals(mpr).await?;
    let start = now_ns();
    agent.send_bind(connection).await?;
    agent.wait_for(backlog as u64).await?;
    let cpu = fmt_cpu(&meter.stop());
    // Anything more would be a duplicate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut flushed = Flushed::of(&agent, start, &window, cpu);
    flushed.post_ms = mean_post_ms(posts_before, server_post_totals(mpr).await?);
    agent.close().await;
    Ok(flushed)
}

/// The flush's ceiling: `count` POSTs one after another to one socket of the direct SocketDock.
async fn sequential_posts(
    dock: &Dock,
    binds: &DirectBinds,
    http: &reqwest::Client,
    connection: &str,
    count: usize,
) -> Result<Flushed> {
    let window = Window::new();
    let mut agent = Agent::connect(dock.port, window.clone()).await?;
    agent.send_bind(connection).await?;
    let url = binds.send_url(connection).await?;
    window.arm(0, u64::MAX);
    let meter = CpuMeter::start(&[("socketdock", dock.pid), ("bench", std::process::id())]);
    let start = now_ns();
    for _ in 0..count {
        post_frame(http, &url, jwe_payload(Some(now_ns()))).await?;
    }
    let posted_ns = now_ns() - start;
    agent.wait_for(count as u64).await?;
    let cpu = fmt_cpu(&meter.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut flushed = Flushed::of(&agent, start, &window, cpu);
    flushed.post_ms = posted_ns as f64 / 1e6 / count as f64;
    agent.close().await;
    Ok(flushed)
}

/// Medians over runs of one flush row.
#[derive(Default)]
struct FlushSeries {
    first_ms: Vec<f64>,
    all_ms: Vec<f64>,
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    post_ms: Vec<f64>,
    expected: u64,
    count: u64,
    duplicates: u64,
    out_of_order: u64,
    cpu: String,
}

impl FlushSeries {
    fn push(&mut self, f: Flushed, expected: usize) {
        self.first_ms.push(f.first_ms);
        self.all_ms.push(f.all_ms);
        self.rate.push(f.rate);
        self.p50.push(f.p50);
        self.p99.push(f.p99);
        self.post_ms.push(f.post_ms);
        self.expected += expected as u64;
        self.count += f.count;
        self.duplicates += f.duplicates;
        self.out_of_order += f.out_of_order;
        self.cpu = f.cpu;
    }

    fn row(&self, what: &str, timed: &str) -> Vec<String> {
        vec![
            what.into(),
            timed.into(),
            report::ms(median(&self.first_ms)),
            report::ms(median(&self.all_ms)),
            report::rate_of_runs(&self.rate),
            report::p50_p99(&self.p50, &self.p99),
            report::ms(median(&self.post_ms)),
            format!(
                "{} of {} ({} dup, {} out of order)",
                self.count, self.expected, self.duplicates, self.out_of_order
            ),
            self.cpu.clone(),
        ]
    }
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!(
        "== socketdock: starting redis-server, one mpr instance, a mediator stand-in and two SocketDocks (one behind mpr, one alone)"
    );
    let started = Instant::now();
    let redis = Redis::start(&s.redis_server).await?;
    let binds = Arc::new(DirectBinds::default());
    let mediator = mediator_stand_in(binds.clone())?;
    let dock_port = testkit::free_port()?;
    let env = [
        ("MEDIATOR_URL", format!("{mediator}/didcomm")),
        ("SOCKETDOCK_SECRET", SECRET.to_owned()),
        (
            "SOCKETDOCK_ENDPOINTS",
            format!("http://127.0.0.1:{dock_port}"),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let mpr = Mpr::start(&s.mpr_bin, &redis.url(), "socketdock", &env).await?;
    let callback = |route: &str| {
        format!(
            "http://127.0.0.1:{}/socketdock/{route}?secret={SECRET}",
            mpr.app_port
        )
    };
    let (connect, disconnect) = (callback("connect"), callback("disconnect"));
    let dock = Dock::start(
        dock_port,
        &callback("message"),
        Some(&connect),
        Some(&disconnect),
    )
    .await
    .context("SocketDock behind mpr")?;
    let alone = Dock::start(
        testkit::free_port()?,
        &format!("{mediator}/direct"),
        None,
        None,
    )
    .await
    .context("SocketDock alone")?;
    let http = mpr::http::outbound_client().build()?;

    let mut through = ThroughMpr::setup(&mpr, &dock, s.agents)
        .await
        .context("agents bound through mpr")?;
    let mut direct = Direct::setup(&alone, &binds, &http, s.agents, None)
        .await
        .context("agents on SocketDock alone")?;
    let mut stored = Direct::setup(&alone, &binds, &http, s.agents, Some(redis.port))
        .await
        .context("agents on SocketDock alone, messages stored in Redis")?;
    let relay = MinimalRelay::start(redis.port).await?;
    let mut relayed = ThroughMinimalRelay::setup(&relay, &alone, &binds, s.agents)
        .await
        .context("agents on SocketDock alone, messages through the minimal relay")?;
    let mut latency = Table::new(&[
        "rate",
        "path",
        "achieved",
        "p50",
        "p99",
        "max",
        "send POST, mean",
        "received of sent",
        "CPU cores used (last run)",
    ]);
    for &rate in &s.socketdock_rates {
        let (mut m, mut d, mut f, mut n) = (
            Series::default(),
            Series::default(),
            Series::default(),
            Series::default(),
        );
        for run in 0..s.runs {
            let label = format!("socketdock {rate}/s, run {}", run + 1);
            eprintln!("   {label}/{}: through mpr", s.runs);
            s.settle(&label, report).await;
            let meter = CpuMeter::start(&[
                ("mpr", mpr.pid),
                ("redis", redis.pid),
                ("socketdock", dock.pid),
                ("bench", std::process::id()),
            ]);
            let p = through.phase(&mpr, rate, s.warmup, s.duration).await?;
            m.record("mpr", &p, meter);
            eprintln!("   {label}/{}: SocketDock alone", s.runs);
            s.settle(&label, report).await;
            let meter =
                CpuMeter::start(&[("socketdock", alone.pid), ("bench", std::process::id())]);
            let p = direct.phase(rate, s.warmup, s.duration).await?;
            d.record("alone", &p, meter);
            eprintln!("   {label}/{}: SocketDock alone, stored in Redis", s.runs);
            s.settle(&label, report).await;
            let meter = CpuMeter::start(&[
                ("redis", redis.pid),
                ("socketdock", alone.pid),
                ("bench", std::process::id()),
            ]);
            let p = stored.phase(rate, s.warmup, s.duration).await?;
            f.record("stored", &p, meter);
            eprintln!("   {label}/{}: the minimal relay", s.runs);
            s.settle(&label, report).await;
            let meter = CpuMeter::start(&[
                ("relay", relay.pid),
                ("redis", redis.pid),
                ("socketdock", alone.pid),
                ("bench", std::process::id()),
            ]);
            let p = relayed.phase(rate, s.warmup, s.duration).await?;
            n.record("minimal relay", &p, meter);
        }
        for (series, path) in [
            (&m, "addMessage -> mpr -> SocketDock -> agent"),
            (
                &d,
                "POST send URL -> SocketDock -> agent (SocketDock alone)",
            ),
            (
                &f,
                "SET in Redis, POST send URL -> SocketDock -> agent, DEL (a relay's floor)",
            ),
            (
                &n,
                "frame -> minimal relay (SET, reply; POST -> SocketDock -> agent; DEL)",
            ),
        ] {
            latency.row(series.row(rate, path));
            if series.lost + series.duplicates + series.out_of_order > 0 {
                report.note(format!(
                    "socketdock {rate}/s, {path}: {} lost (not received within 3 s of the window's end), {} duplicates, {} out of order, of {} sent",
                    series.lost, series.duplicates, series.out_of_order, series.sent
                ));
            }
            if series.lag_ms > 5.0 {
                report.note(format!(
                    "socketdock {rate}/s, {path}: the sender fell up to {:.1} ms behind its schedule",
                    series.lag_ms
                ));
            }
        }
    }
    through
        .window
        .note_errors(report, "socketdock (through mpr)");
    direct.window.note_errors(report, "socketdock (alone)");
    stored
        .window
        .note_errors(report, "socketdock (alone, stored in Redis)");
    relayed
        .window
        .note_errors(report, "socketdock (minimal relay)");
    through.close().await;
    direct.close().await;
    stored.close().await;
    relayed.close().await;

    let (mut flushes, mut ceilings) = (FlushSeries::default(), FlushSeries::default());
    for run in 0..s.runs {
        let label = format!("socketdock flush of {}, run {}", s.backlog, run + 1);
        eprintln!("   {label}/{}", s.runs);
        s.settle(&label, report).await;
        let f = flush(&mpr, &redis, &dock, &format!("flush-{run}"), s.backlog).await?;
        eprintln!(
            "      through mpr: {} messages in {:.0} ms, {:.0}/s",
            f.count, f.all_ms, f.rate
        );
        flushes.push(f, s.backlog);
        s.settle(&label, report).await;
        let c = sequential_posts(&alone, &binds, &http, &format!("seq-{run}"), s.backlog).await?;
        eprintln!(
            "      SocketDock alone: {} messages in {:.0} ms, {:.0}/s",
            c.count, c.all_ms, c.rate
        );
        ceilings.push(c, s.backlog);
    }
    for (series, what) in [
        (&flushes, "flush through mpr"),
        (&ceilings, "SocketDock alone"),
    ] {
        if series.count != series.expected || series.duplicates + series.out_of_order > 0 {
            report.note(format!(
                "socketdock {what}: {} of {} received, {} duplicates, {} out of order",
                series.count, series.expected, series.duplicates, series.out_of_order
            ));
        }
    }
    let mut flush_table = Table::new(&[
        "backlog to one agent",
        "timed from",
        "to first message",
        "to last message",
        "messages/s (runs)",
        "send -> frame p50 / p99",
        "send POST, mean",
        "received (checks)",
        "CPU cores used (last run)",
    ]);
    flush_table.row(flushes.row(
        "flush through mpr (queued while away)",
        "agent's `bind` frame sent",
    ));
    flush_table.row(ceilings.row("SocketDock alone: sequential POSTs", "first POST sent"));

    let mut text = format!(
        "## SocketDock adapter\n\n\
         One mpr instance on Redis; the real SocketDock (one Python process, `--log-level WARNING`) in front of it, \
         calling back its APP_PORT; a mediator stand-in in this tool binds an agent's connection to its socket when the \
         agent sends `bind <connectionId>` (`X-Mpr-Connection-Id`). Latency: {} agents each bound to a connection of its \
         own; one sender socket writes addMessage open loop at the total rate, round robin over the agents, {} s measured \
         after {} ms warm-up per run; from the addMessage frame written to the agent reading the frame (one process clock; \
         each message's timestamp is its identity, so losses, duplicates and order are checked per agent). \
         Flush: {} messages added while the agent is away, then the agent connects and sends its `bind` frame; \
         order, count and duplicates checked. SocketDock alone: a second SocketDock whose frames go straight to the \
         stand-in (no mpr, no Redis); this tool POSTs the same payloads to the sockets' send URLs with the server's HTTP \
         client, one sender per socket as the server delivers (latency rows), and the backlog's count one POST after \
         another to one socket (the flush's ceiling). A relay's floor: on the same SocketDock, each of those senders \
         `SET`s the message in this tool's Redis before its POST and `DEL`s it after (one plain round trip each, no sender hop), \
         the least a relay that stores a message before sending it adds. The minimal relay: this tool's `minimal-relay`, a process of its own \
         on one runtime thread as mpr here, takes the same messages on one sender WebSocket (each with its socket's send URL), `SET`s each \
         in Redis, answers it, POSTs it to SocketDock alone (one sender per socket, in order) and `DEL`s it once taken: the same hops as \
         mpr (sender -> relay -> Redis -> relay -> SocketDock -> agent) without mpr's work. \"send POST, mean\": the time of one POST to a send URL, by the server's own \
         metric (`{SEND_SECONDS}` sum / count over the phase) through mpr, timed by this tool for SocketDock alone. Medians over runs of p50, p99 and rates; max of all runs; counts summed over runs.\n\n{}\n{}",
        s.agents,
        s.duration.as_secs_f64(),
        s.warmup.as_millis(),
        s.backlog,
        latency.render(),
        flush_table.render(),
    );
    text.push_str(&mpr.log_note());
    text.push_str(&format!(
        "\n- scenario runtime: {:.0} s\n",
        started.elapsed().as_secs_f64()
    ));
    report.section(text);
    Ok(())
}
