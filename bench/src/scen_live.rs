//! Live-delivery latency: a mediator-like socket on instance A registers live sessions for K
//! connection ids and acknowledges every push with removeMessages; a paced open-loop sender on
//! instance B calls addMessage for those ids at a fixed rate, with the send time in the payload.
//! Latency = push received on A - addMessage written on B, one process clock.
//!
//! Ceiling: the same Redis doing the same work without mpr: the server's add_message script for
//! a bound connection plus an XADD to an instance stream on one connection, an XREAD BLOCK reader
//! on another, and remove_messages acknowledgements on a third.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::Settings;
use crate::ceiling::{Ids, add_call, fcall, load_library, queue_key, record_tail};
use crate::client::{
    Client, Frame, IdlePool, add_message_params, clip, connect_ws, find_ts, ids_json, jwe_payload,
    now_ns, request,
};
use crate::procs::{CpuMeter, Mpr, Redis, fmt_cpu};
use crate::report::{self, Report, Table, max_ms, median, new_hist, pct_ms};
use crate::resp::Val;
use mpr::store::functions::REMOVE_MESSAGES;

/// The measurement window and what arrived in it; shared by sender and receiver.
pub(crate) struct Window {
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) hist: Mutex<Histogram<u64>>,
    /// addMessage reply latency on the sending side (mpr only).
    reply_hist: Mutex<Histogram<u64>>,
    pub(crate) errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Window {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(0),
            received: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
            reply_hist: Mutex::new(new_hist()),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    pub(crate) fn arm(&self, start_ns: u64, end_ns: u64) {
        self.received.store(0, Ordering::SeqCst);
        self.hist.lock().unwrap().reset();
        self.reply_hist.lock().unwrap().reset();
        self.start_ns.store(start_ns, Ordering::SeqCst);
        self.end_ns.store(end_ns, Ordering::SeqCst);
    }

    pub(crate) fn record(&self, sent_ns: u64, recv_ns: u64) {
        if sent_ns >= self.start_ns.load(Ordering::Relaxed)
            && sent_ns < self.end_ns.load(Ordering::Relaxed)
        {
            self.hist
                .lock()
                .unwrap()
                .record(recv_ns.saturating_sub(sent_ns).max(1))
                .ok();
            self.received.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a note to the report when calls failed in this window.
    pub(crate) fn note_errors(&self, report: &mut Report, label: &str) {
        let errors = self.errors.load(Ordering::Relaxed);
        if errors > 0 {
            let first = self.first_error.lock().unwrap().clone().unwrap_or_default();
            report.note(format!("{label}: {errors} errors; first: {first}"));
        }
    }

    pub(crate) fn in_window(&self, sent_ns: u64) -> bool {
        sent_ns >= self.start_ns.load(Ordering::Relaxed)
            && sent_ns < self.end_ns.load(Ordering::Relaxed)
    }

    pub(crate) fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(e);
    }
}

pub(crate) struct PhaseResult {
    pub reply_p50: f64,
    pub reply_p99: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub sent: u64,
    pub lost: u64,
    pub achieved: f64,
    pub max_lag_ms: f64,
}

/// Sends `rate`/s for warm-up + duration, open loop; `send(i, ts)` writes message i.
pub(crate) async fn pace<F>(
    window: &Window,
    rate: u64,
    warmup: Duration,
    duration: Duration,
    mut send: F,
) -> Result<PhaseResult>
where
    F: AsyncFnMut(u64, u64) -> Result<()>,
{
    let total = (rate as f64 * (warmup + duration).as_secs_f64()) as u64;
    let t0 = Instant::now();
    let base_ns = now_ns();
    let start_ns = base_ns + warmup.as_nanos() as u64;
    let end_ns = start_ns + duration.as_nanos() as u64;
    window.arm(start_ns, end_ns);
    let mut sent_in_window = 0u64;
    let mut max_lag = Duration::ZERO;
    let (mut first_ts, mut last_ts) = (0u64, 0u64);
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else {
            max_lag = max_lag.max(now - due);
        }
        let ts = now_ns();
        if ts >= end_ns {
            break;
        }
        if ts >= start_ns {
            sent_in_window += 1;
            if first_ts == 0 {
                first_ts = ts;
            }
            last_ts = ts;
        }
        send(i, ts).await?;
    }
    // Wait for the stragglers of the window (up to 3 s).
    let deadline = Instant::now() + Duration::from_secs(3);
    while window.received.load(Ordering::SeqCst) < sent_in_window && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received = window.received.load(Ordering::SeqCst);
    let hist = window.hist.lock().unwrap().clone();
    let replies = window.reply_hist.lock().unwrap().clone();
    window.arm(u64::MAX, 0);
    let span = (last_ts.saturating_sub(first_ts)) as f64 / 1e9;
    Ok(PhaseResult {
        reply_p50: pct_ms(&replies, 0.5),
        reply_p99: pct_ms(&replies, 0.99),
        p50: pct_ms(&hist, 0.5),
        p99: pct_ms(&hist, 0.99),
        max: max_ms(&hist),
        sent: sent_in_window,
        lost: sent_in_window.saturating_sub(received),
        achieved: if span > 0.0 {
            sent_in_window.saturating_sub(1) as f64 / span
        } else {
            f64::NAN
        },
        max_lag_ms: max_lag.as_secs_f64() * 1e3,
    })
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(rename = "connectionId")]
    connection_id: String,
    #[serde(borrow)]
    messages: Vec<PushedMessage<'a>>,
}

#[derive(Deserialize)]
struct PushedMessage<'a> {
    id: String,
    #[serde(borrow, rename = "encryptedMessage")]
    encrypted_message: &'a RawValue,
}

/// The mpr side: receiver on A, senders on B (A and B may be one instance).
pub(crate) struct MprLive {
    pub(crate) window: Arc<Window>,
    senders: Vec<futures_util::stream::SplitSink<crate::client::Ws, Message>>,
    /// Per sender socket: request id -> send time, for the reply latency.
    in_flight: Vec<Arc<Mutex<HashMap<u64, u64>>>>,
    next_id: Vec<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    params: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl MprLive {
    pub(crate) async fn setup(
        a: &Mpr,
        b: &Mpr,
        k: usize,
        senders: usize,
        ack: bool,
    ) -> Result<Self> {
        let window = Window::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut receiver = Client::connect(a.ws_port).await?;
        let on = receiver
            .call("rpc.on", Some(r#"["messagesReceived"]"#))
            .await;
        if let Err(e) = &on {
            window.error(format!("rpc.on: {e:#}"));
        }
        for i in 0..k {
            let r = receiver
                .call(
                    "addLiveSession",
                    Some(&format!(
                        r#"{{"connectionId":"live-{i}","sessionId":"session-{i}"}}"#
                    )),
                )
                .await?;
            if r != "true" {
                bail!("addLiveSession returned {r}");
            }
        }
        let mut tasks = Vec::new();
        let (mut sink, mut stream) = receiver.ws.split();
        {
            let window = window.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut id = 1_000_000u64;
                while let Some(msg) = stream.next().await {
                    let recv = now_ns();
                    let text = match msg {
                        Ok(Message::Text(t)) => t,
                        Ok(Message::Close(c)) => {
                            if !stop.load(Ordering::Relaxed) {
                                window.error(format!("receiver socket closed by server: {c:?}"));
                            }
                            return;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            if !stop.load(Ordering::Relaxed) {
                                window.error(format!("receiver socket: {e}"));
                            }
                            return;
                        }
                    };
                    let frame = match Frame::parse(text.as_str()) {
                        Ok(f) => f,
                        Err(e) => {
                            window.error(format!("{e:#}"));
                            continue;
                        }
                    };
                    if frame.is_push() {
                        if frame.method.as_deref() != Some("messagesReceived") {
                            window.error(format!("unexpected push: {}", clip(text.as_str())));
                            continue;
                        }
                        let push: Push = match frame.params.map(|p| serde_json::from_str(p.get())) {
                            Some(Ok(p)) => p,
                            _ => {
                                window.error(format!(
                                    "bad messagesReceived: {}",
                                    clip(text.as_str())
                                ));
                                continue;
                            }
                        };
                        let mut ids = Vec::with_capacity(push.messages.len());
                        for m in &push.messages {
                            match find_ts(m.encrypted_message.get()) {
                                Some(ts) => window.record(ts, recv),
                                None => window.error(format!(
                                    "push without bench_ts: {}",
                                    clip(m.encrypted_message.get())
                                )),
                            }
                            ids.push(m.id.clone());
                        }
                        if !ack {
                            continue;
                        }
                        id += 1;
                        let params = format!(
                            r#"{{"connectionId":"{}","messageIds":{}}}"#,
                            push.connection_id,
                            ids_json(&ids)
                        );
                        if sink
                            .send(Message::Text(
                                request("removeMessages", Some(&params), id).into(),
                            ))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    } else if let Some(e) = frame.error {
                        window.error(format!("receiver-side call failed: {}", e.get()));
                    }
                }
            }));
        }
        let mut sinks = Vec::new();
        let mut in_flight = Vec::new();
        for _ in 0..senders {
            let (sink, mut stream) = connect_ws(b.ws_port).await?.split();
            sinks.push(sink);
            let pending: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
            in_flight.push(pending.clone());
            let window = window.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    let recv = now_ns();
                    match msg {
                        Ok(Message::Text(t)) => {
                            if let Ok(f) = Frame::parse(t.as_str()) {
                                if let Some(e) = f.error {
                                    window.error(format!("addMessage on B failed: {}", e.get()));
                                }
                                let sent = f
                                    .id_num()
                                    .and_then(|id| pending.lock().unwrap().remove(&id));
                                if let Some(sent) = sent.filter(|&t| window.in_window(t)) {
                                    window
                                        .reply_hist
                                        .lock()
                                        .unwrap()
                                        .record(recv.saturating_sub(sent).max(1))
                                        .ok();
                                }
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => {
                            if !stop.load(Ordering::Relaxed) {
                                window.error("sender socket closed".into());
                            }
                            return;
                        }
                        _ => {}
                    }
                }
            }));
        }
        Ok(Self {
            window,
            next_id: vec![1; senders],
            senders: sinks,
            in_flight,
            tasks,
            params: (0..k).map(|i| format!("live-{i}")).collect(),
            stop,
        })
    }

    pub(crate) async fn phase(
        &mut self,
        rate: u64,
        warmup: Duration,
        duration: Duration,
    ) -> Result<PhaseResult> {
        let window = self.window.clone();
        let senders = &mut self.senders;
        let next_id = &mut self.next_id;
        let in_flight = &self.in_flight;
        let conns = &self.params;
        pace(&window, rate, warmup, duration, async |i: u64, ts: u64| {
            let s = (i as usize) % senders.len();
            let payload = jwe_payload(Some(ts));
            let params = add_message_params(&conns[(i as usize) % conns.len()], &payload);
            next_id[s] += 1;
            in_flight[s].lock().unwrap().insert(next_id[s], ts);
            senders[s]
                .send(Message::Text(
                    request("addMessage", Some(&params), next_id[s]).into(),
                ))
                .await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        for mut s in self.senders {
            let _ = s.close().await;
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The Redis-only floor of the same path.
struct CeilingLive {
    window: Arc<Window>,
    writer: crate::resp::RespWriter,
    stream: String,
    k: usize,
    ids: Ids,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CeilingLive {
    async fn setup(redis: &Redis, k: usize) -> Result<Self> {
        let window = Window::new();
        let mut admin = redis.conn().await?;
        load_library(&mut admin).await?;
        let stream = "ceil:instance:{ceilA}:events".to_owned();
        admin.clear("ceil:*").await?;
        for i in 0..k {
            let conn = queue_key("ceil", &format!("live-{i}"), "conn");
            admin
                .cmd(&[
                    "HSET",
                    &conn,
                    "kind",
                    "ws",
                    "peer",
                    "ceilA/1",
                    "session",
                    &format!("session-{i}"),
                ])
                .await?;
        }
        let mut tasks = Vec::new();
        let (mut sender_r, writer) = redis.conn().await?.split();
        {
            let window = window.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match sender_r.read().await {
                        Ok(Val::Err(e)) => window.error(format!("ceiling add/XADD: {e}")),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        let (mut ack_r, mut ack_w) = redis.conn().await?.split();
        {
            let window = window.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match ack_r.read().await {
                        Ok(Val::Err(e)) => window.error(format!("ceiling remove: {e}")),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        let mut reader = redis.conn().await?;
        {
            let window = window.clone();
            let stream = stream.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = "0-0".to_owned();
                loop {
                    let reply = match reader
                        .cmd(&[
                            "XREAD", "BLOCK", "200", "COUNT", "1000", "STREAMS", &stream, &last,
                        ])
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => {
                            window.error(format!("ceiling XREAD: {e:#}"));
                            return;
                        }
                    };
                    let recv = now_ns();
                    for s in reply.items() {
                        for entry in s.items().get(1).map(|e| e.items()).unwrap_or(&[]) {
                            let parts = entry.items();
                            if parts.len() < 2 {
                                continue;
                            }
                            last = parts[0].text();
                            let fields = parts[1].items();
                            let (mut conn, mut id, mut body) =
                                (String::new(), String::new(), String::new());
                            for kv in fields.chunks(2) {
                                if kv.len() == 2 {
                                    match kv[0].bytes() {
                                        b"c" => conn = kv[1].text(),
                                        b"i" => id = kv[1].text(),
                                        b"b" => body = kv[1].text(),
                                        _ => {}
                                    }
                                }
                            }
                            if let Some(ts) = find_ts(&body) {
                                window.record(ts, recv);
                            }
                            ack_w.push(&fcall(&REMOVE_MESSAGES, "ceil", &conn, &[], &[id]));
                        }
                    }
                    if ack_w.flush().await.is_err() {
                        return;
                    }
                }
            }));
        }
        Ok(Self {
            window,
            writer,
            stream,
            k,
            ids: Ids::new(0),
            tasks,
        })
    }

    async fn phase(
        &mut self,
        rate: u64,
        warmup: Duration,
        duration: Duration,
    ) -> Result<PhaseResult> {
        let window = self.window.clone();
        let writer = &mut self.writer;
        let ids = &mut self.ids;
        let (stream, k) = (&self.stream, self.k);
        pace(&window, rate, warmup, duration, async |i: u64, ts: u64| {
            let (id, received) = ids.next();
            let conn = format!("live-{}", (i as usize) % k);
            let payload = jwe_payload(Some(ts));
            writer.push(&add_call("ceil", &conn, (&id, received), &payload));
            let body = record_tail(&id, received, &payload);
            writer.push(&[
                "XADD",
                stream.as_str(),
                "MAXLEN",
                "~",
                "100000",
                "*",
                "c",
                &conn,
                "i",
                &id,
                "b",
                &body,
            ]);
            writer.flush().await
        })
        .await
    }

    fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

#[derive(Default)]
struct Series {
    reply_p50: Vec<f64>,
    reply_p99: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    achieved: Vec<f64>,
    lost: u64,
    sent: u64,
    lag: f64,
}

impl Series {
    fn push(&mut self, r: &PhaseResult) {
        self.reply_p50.push(r.reply_p50);
        self.reply_p99.push(r.reply_p99);
        self.p50.push(r.p50);
        self.p99.push(r.p99);
        self.max.push(r.max);
        self.achieved.push(r.achieved);
        self.lost += r.lost;
        self.sent += r.sent;
        self.lag = self.lag.max(r.max_lag_ms);
    }
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!(
        "== live: starting redis-server and two mpr instances (A delivers, B receives addMessage)"
    );
    let redis = Redis::start(&s.redis_server).await?;
    let a = Mpr::start(&s.mpr_bin, &redis.url(), "A", &[]).await?;
    let b = Mpr::start(&s.mpr_bin, &redis.url(), "B", &[]).await?;
    let mut server = MprLive::setup(&a, &b, s.live_connections, s.senders, !s.live_no_ack)
        .await
        .context("live setup on mpr")?;
    let mut ceiling = CeilingLive::setup(&redis, s.live_connections).await?;

    let mut table = Table::new(&[
        "idle sockets on A",
        "rate (achieved)",
        "mpr p50",
        "mpr p99",
        "mpr max",
        "lost",
        "addMessage reply on B p50 / p99",
        "ceiling p50 / p99 (Redis only)",
        "CPU cores used",
    ]);
    let idle_levels: Vec<usize> = if s.idle > 0 { vec![0, s.idle] } else { vec![0] };
    let mut idle_pool: Option<IdlePool> = None;
    for &idle in &idle_levels {
        if idle > 0 {
            eprintln!("   live: opening {idle} idle sockets on A");
            let pool = IdlePool::open(a.ws_port, idle, 200, false).await;
            pool.note_failures(report, "live (idle sockets)");
            tokio::time::sleep(Duration::from_secs(1)).await;
            idle_pool = Some(pool);
        }
        for &rate in &s.rates {
            let mut m = Series::default();
            let mut c = Series::default();
            let mut cpu = String::new();
            for run in 0..s.runs {
                eprintln!("   live: {idle} idle, {rate}/s, run {}/{}", run + 1, s.runs);
                s.settle(
                    &format!("live {rate}/s, {idle} idle, run {}", run + 1),
                    report,
                )
                .await;
                let meter = CpuMeter::start(&[
                    ("A", a.pid),
                    ("B", b.pid),
                    ("redis", redis.pid),
                    ("bench", std::process::id()),
                ]);
                let r = server.phase(rate, s.warmup, s.duration).await?;
                cpu = fmt_cpu(&meter.stop());
                eprintln!(
                    "      mpr p50 {:.3} ms p99 {:.3} ms max {:.3} ms, {} sent, {} lost, achieved {:.0}/s; B replies p50 {:.3} p99 {:.3} ms",
                    r.p50, r.p99, r.max, r.sent, r.lost, r.achieved, r.reply_p50, r.reply_p99
                );
                m.push(&r);
                let r = ceiling.phase(rate, s.warmup, s.duration).await?;
                eprintln!(
                    "      ceiling p50 {:.3} ms p99 {:.3} ms, {} lost",
                    r.p50, r.p99, r.lost
                );
                c.push(&r);
            }
            let dropped = idle_pool.as_ref().map(|p| p.dropped()).unwrap_or(0);
            table.row(vec![
                if idle > 0 {
                    format!(
                        "{} (open: {})",
                        idle,
                        idle_pool.as_ref().map(|p| p.open - dropped).unwrap_or(0)
                    )
                } else {
                    "0".into()
                },
                format!("{rate}/s ({})", report::rate(median(&m.achieved))),
                report::ms(median(&m.p50)),
                format!("**{}**", report::ms(median(&m.p99))),
                report::ms(report::max_of(&m.max)),
                format!("{} of {}", m.lost, m.sent),
                format!(
                    "{} / {}",
                    report::ms(median(&m.reply_p50)),
                    report::ms(median(&m.reply_p99))
                ),
                format!(
                    "{} / {}",
                    report::ms(median(&c.p50)),
                    report::ms(median(&c.p99))
                ),
                cpu,
            ]);
            if m.lag > 5.0 {
                report.note(format!("live {rate}/s, {idle} idle: the sender fell up to {:.1} ms behind its schedule", m.lag));
            }
            if m.lost > 0 {
                report.note(format!(
                    "live {rate}/s, {idle} idle: {} of {} pushes not received within 3 s of the window's end",
                    m.lost, m.sent
                ));
            }
            if rate == 3000 && idle == s.idle && idle > 0 {
                let p99 = median(&m.p99);
                report.target(
                    &format!("live p99 < 2 ms at 3000 msg/s with {idle} idle sockets"),
                    report::ms(p99),
                    p99 < 2.0 && m.lost == 0,
                );
            }
        }
    }
    for (label, window) in [
        ("live (mpr)", &server.window),
        ("live (ceiling)", &ceiling.window),
    ] {
        window.note_errors(report, label);
    }
    if let Some(pool) = idle_pool {
        if pool.dropped() > 0 {
            report.note(format!(
                "live: the server closed {} of the idle sockets during the run",
                pool.dropped()
            ));
        }
        pool.close().await;
    }
    server.close().await;
    ceiling.close();
    let mut text = format!(
        "## Live delivery latency (addMessage on B -> messagesReceived on A)\n\n\
         {} connection ids with a live session on one mediator-like socket on A (which acknowledges each push \
         with removeMessages); {} sender sockets on B, open loop at the given rate, {} s measured after {} ms warm-up \
         per run; latency from the addMessage frame written on B to the push read on A (one process clock). \
         Idle sockets are plain connected WebSockets on A. Ceiling: the same Redis doing the same path without mpr \
         (server's add_message script for a bound connection + XADD to an instance stream, pipelined on one \
         connection; XREAD BLOCK on a second; remove_messages acks on a third).\n\n{}",
        s.live_connections,
        s.senders,
        s.duration.as_secs_f64(),
        s.warmup.as_millis(),
        table.render()
    );
    for m in [&a, &b] {
        text.push_str(&m.log_note());
    }
    text.push('\n');
    report.section(text);
    Ok(())
}
