//! The cold tier: one mpr instance with MongoDB behind it (a private SecantusDB in memory),
//! THRESHOLD_TIMESTAMP 1 s, the mover every 100 ms, one worker thread. Each run starts fresh
//! processes and measures:
//!
//! (a) mover throughput: N stale messages (received an hour ago) on one connection and M on ten
//!     others, written directly with the server's add script and entered in the visit index,
//!     timed from the index write until every one is cold;
//! (b) addMessage latency under a steady paced load, with the mover moving only that load's own
//!     messages as they turn 1 s old, then while it also works through a fresh backlog;
//! (c) takeFromQueue(limit 10) then removeMessages of the ids taken, over WebSocket, on a queue
//!     of N cold messages, of 100 cold messages, and of N hot (Redis-only) messages. Each cycle
//!     refills the 10 (untimed) and, for a cold queue, waits until the mover has made them cold,
//!     so every take sees the same queue.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::Settings;
use crate::ceiling::{Ids, fill, load_library, queue_key, visits_key};
use crate::client::{Client, add_message_params, ids_json, jwe_payload, queued_messages};
use crate::fastws::Template;
use crate::procs::{self, CpuMeter, Mongo, Mpr, Redis, cpu_secs, fmt_cpu};
use crate::report::{self, Report, Table, median, new_hist, pct_ms};
use crate::resp::Resp;
use crate::scen_add::{Measured, measure};

/// The server's REDIS_PREFIX (its default).
const PREFIX: &str = "mpr";
const THRESHOLD_MS: u64 = 1000;
const MOVER_INTERVAL_MS: u64 = 100;
/// Age of the messages written directly: far past the threshold.
const STALE_MS: i64 = 3_600_000;
/// Connections sharing the M other messages of (a).
const OTHERS: usize = 10;
/// Connections sharing the backlog of (b).
const BACKLOG_CONNECTIONS: usize = 5;
/// The addMessage load of (b): calls per second, sockets (one call in flight each), connections.
const LOAD_RATE: f64 = 500.0;
const LOAD_SOCKETS: usize = 4;
const LOAD_CONNECTIONS: usize = 100;
/// The short cold queue of (c).
const SMALL: usize = 100;
const TAKE: usize = 10;
/// Untimed cycles before the timed ones (connection and script caches warm).
const WARMUP_CYCLES: usize = 10;
/// Moving counts as stalled when no message turns cold for this long.
const STALL: Duration = Duration::from_secs(60);

/// Message counts of one run.
struct Counts {
    /// On the one connection of (a) and (c).
    big: usize,
    /// Spread over `OTHERS` connections in (a).
    others: usize,
    /// The backlog of (b), over `BACKLOG_CONNECTIONS` connections.
    backlog: usize,
}

impl Counts {
    fn of(s: &Settings) -> Self {
        Self {
            big: s.cold_messages,
            others: if s.quick { 1000 } else { 10_000 },
            backlog: if s.quick { 2000 } else { 20_000 },
        }
    }
}

/// (a) for one run.
struct Moving {
    fill_secs: f64,
    /// Seconds from the visit index write until every message was cold (NaN: stalled).
    all_secs: f64,
    big_secs: f64,
    others_secs: f64,
    /// CPU seconds while moving: mpr, SecantusDB, Redis.
    cpu: [f64; 3],
}

/// (b) for one run: the load on the reference instance without a cold tier, on the cold-tier
/// instance with the mover idle, then while it moves the backlog.
struct Load {
    plain: Measured,
    idle: Measured,
    busy: Measured,
    /// Load messages moved during the idle measurement (warm-up included).
    idle_moved: u64,
    /// Backlog messages moved during the busy measurement (warm-up included), and the time the
    /// whole backlog took (NaN: stalled).
    busy_backlog_moved: u64,
    busy_load_moved: u64,
    backlog_secs: f64,
    plain_cpu: String,
    idle_cpu: String,
    busy_cpu: String,
}

/// (c) for one queue and run.
struct Takes {
    take: Histogram<u64>,
    remove: Histogram<u64>,
    takes: usize,
    /// Takes that did not return `TAKE` messages, or not in increasing receivedAt order.
    short: usize,
    disordered: usize,
    /// Longest wait for the mover to make a refill cold (untimed).
    refill_wait: Duration,
    /// The mover left a refill hot for `STALL`: the round stopped there.
    stalled: bool,
}

struct RunFigures {
    moving: Moving,
    load: Load,
    /// N cold, 100 cold, N hot.
    takes: [Takes; 3],
    mover_warnings: usize,
    log: Vec<String>,
}

fn connection_keys(conns: &[String], name: &str) -> Vec<String> {
    conns.iter().map(|c| queue_key(PREFIX, c, name)).collect()
}

/// ZCARD of each key, in one round trip.
async fn zcards(r: &mut Resp, keys: &[String]) -> Result<Vec<u64>> {
    const SCRIPT: &str = "local n = {}\n\
        for i, k in ipairs(KEYS) do n[i] = redis.call('ZCARD', k) end\n\
        return n";
    let mut cmd = vec!["EVAL".to_owned(), SCRIPT.to_owned(), keys.len().to_string()];
    cmd.extend(keys.iter().cloned());
    let reply = r.cmd(&cmd).await?;
    Ok(reply
        .items()
        .iter()
        .map(|v| v.int().unwrap_or(0) as u64)
        .collect())
}

/// Enters connections in the visit index, due at once (as the server does for a new message,
/// at its receive time + the threshold, which for these messages is long past).
async fn schedule_visits(r: &mut Resp, conns: &[String]) -> Result<()> {
    let cmds: Vec<Vec<String>> = conns
        .iter()
        .map(|c| vec!["ZADD".into(), visits_key(PREFIX, c), "0".into(), c.clone()])
        .collect();
    let (errors, first) = r.pipeline(&cmds).await?;
    if errors > 0 {
        bail!("visit index: {errors} errors, first: {first:?}");
    }
    Ok(())
}

/// Waits until each cold key holds its target count; returns per key the time since `since`
/// at which it did (None when moving stalled: nothing turned cold for `STALL`).
async fn wait_cold(
    r: &mut Resp,
    keys: &[String],
    targets: &[u64],
    since: Instant,
    poll: Duration,
) -> Result<Vec<Option<Duration>>> {
    let mut done: Vec<Option<Duration>> = vec![None; keys.len()];
    let (mut last_total, mut last_progress) = (0, Instant::now());
    loop {
        let counts = zcards(r, keys).await?;
        let now = Instant::now();
        for ((d, &c), &t) in done.iter_mut().zip(&counts).zip(targets) {
            if d.is_none() && c >= t {
                *d = Some(now - since);
            }
        }
        if done.iter().all(Option::is_some) {
            return Ok(done);
        }
        let total: u64 = counts.iter().sum();
        if total != last_total {
            (last_total, last_progress) = (total, now);
        } else if now - last_progress > STALL {
            return Ok(done);
        }
        tokio::time::sleep(poll).await;
    }
}

fn secs(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64())
}

/// Seconds until the last of `wait_cold`'s queues was done (NaN if one was not).
fn last_done(done: &[Option<Duration>]) -> f64 {
    if done.iter().all(Option::is_some) {
        secs(done.iter().flatten().max().copied())
    } else {
        f64::NAN
    }
}

/// (a): N on one connection, M on ten others, timed until all are cold.
async fn moving(
    s: &Settings,
    counts: &Counts,
    procs: &Procs,
    r: &mut Resp,
    stale: &mut Ids,
    report: &mut Report,
) -> Result<Moving> {
    let big = ["cold-big".to_owned()];
    let others: Vec<String> = (0..OTHERS).map(|i| format!("cold-{i}")).collect();
    let t = Instant::now();
    fill(r, PREFIX, &big[0], counts.big, stale).await?;
    let mut targets = vec![counts.big as u64];
    for (i, c) in others.iter().enumerate() {
        let n = counts.others / OTHERS + usize::from(i < counts.others % OTHERS);
        fill(r, PREFIX, c, n, stale).await?;
        targets.push(n as u64);
    }
    let fill_secs = t.elapsed().as_secs_f64();
    let all: Vec<String> = big.iter().chain(&others).cloned().collect();
    s.settle("cold: mover throughput", report).await;
    let cpu0 = procs.cpu();
    let since = Instant::now();
    schedule_visits(r, &all).await?;
    let done = wait_cold(
        r,
        &connection_keys(&all, "cold"),
        &targets,
        since,
        Duration::from_millis(50),
    )
    .await?;
    let cpu1 = procs.cpu();
    let (all_secs, others_secs) = (last_done(&done), last_done(&done[1..]));
    Ok(Moving {
        fill_secs,
        all_secs,
        big_secs: secs(done[0]),
        others_secs,
        cpu: [0, 1, 2].map(|i| cpu1[i] - cpu0[i]),
    })
}

/// (b): the paced addMessage load, mover idle, then while it moves a fresh backlog.
async fn load(
    s: &Settings,
    counts: &Counts,
    procs: &Procs,
    r: &mut Resp,
    stale: &mut Ids,
    report: &mut Report,
) -> Result<Load> {
    let payload = jwe_payload(None);
    let templates = |conns: &[String]| -> Arc<Vec<Template>> {
        Arc::new(
            conns
                .iter()
                .map(|c| Template::new("addMessage", &add_message_params(c, &payload)))
                .collect(),
        )
    };
    let load_conns: Vec<String> = (0..LOAD_CONNECTIONS).map(|i| format!("load-{i}")).collect();
    let params = templates(&load_conns);
    let load_cold = connection_keys(&load_conns, "cold");
    let sum = |v: Vec<u64>| v.iter().sum::<u64>();
    let port = procs.mpr.ws_port;

    s.settle("cold: addMessage, no cold tier", report).await;
    let plain_conns: Vec<String> = (0..LOAD_CONNECTIONS)
        .map(|i| format!("plain-load-{i}"))
        .collect();
    let meter = CpuMeter::start(&procs.pids());
    let plain = measure(
        procs.plain.ws_port,
        LOAD_SOCKETS,
        templates(&plain_conns),
        s.warmup,
        s.duration,
        Some(LOAD_RATE),
    )
    .await?;
    let plain_cpu = fmt_cpu(&meter.stop());

    s.settle("cold: addMessage, mover idle", report).await;
    let before = sum(zcards(r, &load_cold).await?);
    let meter = CpuMeter::start(&procs.pids());
    let idle = measure(
        port,
        LOAD_SOCKETS,
        params.clone(),
        s.warmup,
        s.duration,
        Some(LOAD_RATE),
    )
    .await?;
    let idle_cpu = fmt_cpu(&meter.stop());
    let idle_moved = sum(zcards(r, &load_cold).await?) - before;

    let backlog: Vec<String> = (0..BACKLOG_CONNECTIONS)
        .map(|i| format!("backlog-{i}"))
        .collect();
    let backlog_cold = connection_keys(&backlog, "cold");
    let mut targets = Vec::new();
    s.settle("cold: addMessage, mover moving a backlog", report)
        .await;
    for (i, c) in backlog.iter().enumerate() {
        let n = counts.backlog / BACKLOG_CONNECTIONS
            + usize::from(i < counts.backlog % BACKLOG_CONNECTIONS);
        fill(r, PREFIX, c, n, stale).await?;
        targets.push(n as u64);
    }
    let before = sum(zcards(r, &load_cold).await?);
    let since = Instant::now();
    schedule_visits(r, &backlog).await?;
    let meter = CpuMeter::start(&procs.pids());
    let busy = measure(
        port,
        LOAD_SOCKETS,
        params,
        s.warmup,
        s.duration,
        Some(LOAD_RATE),
    )
    .await?;
    let busy_cpu = fmt_cpu(&meter.stop());
    let busy_backlog_moved = sum(zcards(r, &backlog_cold).await?);
    let busy_load_moved = sum(zcards(r, &load_cold).await?) - before;
    let done = wait_cold(r, &backlog_cold, &targets, since, Duration::from_millis(50)).await?;
    let backlog_secs = last_done(&done);
    for (what, m) in [
        ("no cold tier", &plain),
        ("mover idle", &idle),
        ("mover moving", &busy),
    ] {
        if m.errors > 0 {
            report.note(format!(
                "cold, addMessage ({what}): {} failed calls; first: {}",
                m.errors,
                m.first_error.clone().unwrap_or_default()
            ));
        }
    }
    Ok(Load {
        plain,
        idle,
        busy,
        idle_moved,
        busy_backlog_moved,
        busy_load_moved,
        backlog_secs,
        plain_cpu,
        idle_cpu,
        busy_cpu,
    })
}

/// (c) on one queue of `n`: take 10, remove them, refill 10 (and, if `cold`, wait for the
/// mover to make them cold).
#[allow(clippy::too_many_arguments)]
async fn takes(
    port: u16,
    r: &mut Resp,
    conn: &str,
    n: usize,
    cold: bool,
    ids: &mut Ids,
    cycles: usize,
) -> Result<Takes> {
    let mut c = Client::connect(port).await?;
    let take_params = format!(r#"{{"connectionId":"{conn}","limit":{TAKE}}}"#);
    let cold_key = [queue_key(PREFIX, conn, "cold")];
    let conns = [conn.to_owned()];
    let mut out = Takes {
        take: new_hist(),
        remove: new_hist(),
        takes: 0,
        short: 0,
        disordered: 0,
        refill_wait: Duration::ZERO,
        stalled: false,
    };
    for cycle in 0..cycles + WARMUP_CYCLES {
        if cycle == WARMUP_CYCLES {
            out.take.reset();
            out.remove.reset();
        }
        let t = Instant::now();
        let result = c.call("takeFromQueue", Some(&take_params)).await?;
        out.take.record(t.elapsed().as_nanos() as u64).ok();
        let messages = queued_messages(&result)?;
        out.takes += 1;
        if messages.len() != TAKE.min(n) {
            out.short += 1;
        }
        if !messages
            .windows(2)
            .all(|w| w[0].received_at < w[1].received_at)
        {
            out.disordered += 1;
        }
        if messages.is_empty() {
            bail!("{conn}: takeFromQueue returned nothing from a queue of {n}");
        }
        let taken: Vec<String> = messages.into_iter().map(|m| m.id).collect();
        let params = format!(
            r#"{{"connectionId":"{conn}","messageIds":{}}}"#,
            ids_json(&taken)
        );
        let t = Instant::now();
        let removed = c.call("removeMessages", Some(&params)).await?;
        out.remove.record(t.elapsed().as_nanos() as u64).ok();
        if removed != "true" {
            bail!("removeMessages returned {removed}");
        }
        fill(r, PREFIX, conn, taken.len(), ids).await?;
        if cold {
            let since = Instant::now();
            schedule_visits(r, &conns).await?;
            let done =
                wait_cold(r, &cold_key, &[n as u64], since, Duration::from_millis(5)).await?;
            let Some(waited) = done[0] else {
                out.stalled = true;
                break;
            };
            out.refill_wait = out.refill_wait.max(waited);
        }
    }
    c.close().await;
    Ok(out)
}

/// The processes of one run: the cold-tier instance, and a reference instance on the same
/// Redis without MONGODB_URI (no mover), otherwise configured alike.
struct Procs {
    redis: Redis,
    mongo: Mongo,
    mpr: Mpr,
    plain: Mpr,
}

impl Procs {
    async fn start(s: &Settings) -> Result<Self> {
        let redis = Redis::start(&s.redis_server).await?;
        let mongo = Mongo::start(&s.secantusd, s.mongo_cpu).await?;
        let mut env = vec![
            ("MONGODB_URI", mongo.uri("bench")),
            ("THRESHOLD_TIMESTAMP", THRESHOLD_MS.to_string()),
            ("MOVER_INTERVAL_MS", MOVER_INTERVAL_MS.to_string()),
            ("MOVER_BATCH_SIZE", s.mover_batch.to_string()),
            ("WORKER_THREADS", "1".to_owned()),
        ];
        if let Some(rate) = s.mover_max_rate {
            env.push(("MOVER_MAX_RATE", rate.to_string()));
        }
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let mpr = Mpr::start(&s.mpr_bin, &redis.url(), "cold", &env).await?;
        let workers = [("WORKER_THREADS".to_owned(), "1".to_owned())];
        let plain = Mpr::start(&s.mpr_bin, &redis.url(), "plain", &workers).await?;
        Ok(Self {
            redis,
            mongo,
            mpr,
            plain,
        })
    }

    fn pids(&self) -> [(&'static str, u32); 4] {
        [
            ("mpr", self.mpr.pid),
            ("secantusd", self.mongo.pid),
            ("redis", self.redis.pid),
            ("mpr without cold tier", self.plain.pid),
        ]
    }

    /// CPU seconds so far of mpr, SecantusDB and Redis.
    fn cpu(&self) -> [f64; 3] {
        [self.mpr.pid, self.mongo.pid, self.redis.pid].map(cpu_secs)
    }
}

async fn one_run(s: &Settings, run: usize, report: &mut Report) -> Result<RunFigures> {
    let counts = Counts::of(s);
    eprintln!(
        "   cold: run {}/{}: starting redis-server, SecantusDB and two mpr instances (with and without cold tier)",
        run + 1,
        s.runs
    );
    let procs = Procs::start(s).await?;
    let mut r = procs.redis.conn().await?;
    load_library(&mut r).await?;
    let mut stale = Ids::new(STALE_MS);

    let moving = moving(s, &counts, &procs, &mut r, &mut stale, report).await?;
    eprintln!(
        "      moved {} in {:.1} s (the big connection in {:.1} s, the others in {:.1} s); fill {:.1} s",
        counts.big + counts.others,
        moving.all_secs,
        moving.big_secs,
        moving.others_secs,
        moving.fill_secs
    );
    let load = load(s, &counts, &procs, &mut r, &mut stale, report).await?;
    eprintln!(
        "      addMessage p99 {:.3} ms without cold tier, {:.3} ms mover idle, {:.3} ms while moving ({} backlog messages moved while measured; all in {:.1} s)",
        load.plain.p99, load.idle.p99, load.busy.p99, load.busy_backlog_moved, load.backlog_secs
    );

    // (c): the N cold queue is cold-big; a queue of 100 cold and one of N hot beside it.
    let small = "cold-small";
    fill(&mut r, PREFIX, small, SMALL, &mut stale).await?;
    let since = Instant::now();
    schedule_visits(&mut r, &[small.to_owned()]).await?;
    let small_key = [queue_key(PREFIX, small, "cold")];
    let done = wait_cold(
        &mut r,
        &small_key,
        &[SMALL as u64],
        since,
        Duration::from_millis(20),
    )
    .await?;
    if done[0].is_none() {
        report.note(format!(
            "cold, run {}: {small}: {SMALL} stale messages not all cold {} s after their visit was due",
            run + 1,
            STALL.as_secs()
        ));
    }
    // Fresh messages and no visit: the mover never looks at this queue.
    let mut fresh = Ids::new(0);
    fill(&mut r, PREFIX, "hot-big", counts.big, &mut fresh).await?;
    let port = procs.mpr.ws_port;
    let mut rounds = Vec::new();
    for (conn, n, cold) in [
        ("cold-big", counts.big, true),
        (small, SMALL, true),
        ("hot-big", counts.big, false),
    ] {
        s.settle(&format!("cold: takes on {conn}, run {}", run + 1), report)
            .await;
        let ids = if cold { &mut stale } else { &mut fresh };
        let t = takes(port, &mut r, conn, n, cold, ids, s.cycles).await?;
        eprintln!(
            "      {conn} ({n}): take p50 {:.3} ms p99 {:.3} ms, remove p50 {:.3} ms; longest refill wait {} ms",
            pct_ms(&t.take, 0.5),
            pct_ms(&t.take, 0.99),
            pct_ms(&t.remove, 0.5),
            t.refill_wait.as_millis()
        );
        if t.stalled {
            report.note(format!(
                "cold, run {}: {conn}: a refill of {TAKE} messages was not cold {} s after its visit was due; \
                 the round stopped after {} takes",
                run + 1,
                STALL.as_secs(),
                t.takes
            ));
        }
        rounds.push(t);
    }
    let log = std::fs::read_to_string(&procs.mpr.log).unwrap_or_default();
    let mover_warnings = log.lines().filter(|l| l.contains("mover paused")).count();
    Ok(RunFigures {
        moving,
        load,
        takes: rounds.try_into().map_err(|_| anyhow::anyhow!("3 rounds"))?,
        mover_warnings,
        log: procs.mpr.log_excerpt(5),
    })
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!("== cold: mover throughput, addMessage while moving, takes from the cold tier");
    if let Some(cpu) = s.mongo_cpu {
        procs::keep_off_cpu(cpu)?;
    }
    let counts = Counts::of(s);
    let mut runs = Vec::new();
    for run in 0..s.runs {
        runs.push(one_run(s, run, report).await?);
    }
    let med = |f: &dyn Fn(&RunFigures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let list = |f: &dyn Fn(&RunFigures) -> f64, decimals: usize| {
        runs.iter()
            .map(|x| format!("{:.decimals$}", f(x)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (n, m, n2) = (counts.big, counts.others, counts.backlog);

    // (a)
    let rate_all = |x: &RunFigures| (n + m) as f64 / x.moving.all_secs;
    let rate_big = |x: &RunFigures| n as f64 / x.moving.big_secs;
    let mut moving = Table::new(&[
        "moved",
        "batch (MOVER_BATCH_SIZE)",
        "time until all cold",
        "messages/s",
        "the N-message connection alone",
        "the 10 others done after",
        "CPU seconds while moving: mpr / SecantusDB / Redis",
        "direct fill (not the server)",
    ]);
    let cpu = |i: usize| med(&|x| x.moving.cpu[i]);
    moving.row(vec![
        format!("{} ({n} on 1 connection + {m} on {OTHERS})", n + m),
        s.mover_batch.to_string(),
        format!("{:.1} s", med(&|x| x.moving.all_secs)),
        format!(
            "**{}** (runs: {})",
            report::rate(med(&rate_all)),
            list(&rate_all, 0)
        ),
        format!(
            "{:.1} s, {} (runs: {} s)",
            med(&|x| x.moving.big_secs),
            report::rate(med(&rate_big)),
            list(&|x| x.moving.big_secs, 1)
        ),
        format!(
            "{:.1} s (runs: {} s)",
            med(&|x| x.moving.others_secs),
            list(&|x| x.moving.others_secs, 1)
        ),
        format!("{:.1} / {:.1} / {:.1}", cpu(0), cpu(1), cpu(2)),
        format!("{:.1} s", med(&|x| x.moving.fill_secs)),
    ]);

    // (b)
    let window = (s.warmup + s.duration).as_secs_f64();
    let mut adds = Table::new(&[
        "mover",
        "achieved",
        "addMessage p50",
        "p99",
        "max",
        "moved while measured (warm-up included)",
        "CPU cores used (last run)",
    ]);
    let last = runs.last().expect("at least one run");
    for (what, pick, moved, cpu) in [
        (
            "none: reference instance without MONGODB_URI (same Redis, same settings)",
            (|x: &RunFigures| &x.load.plain) as fn(&RunFigures) -> &Measured,
            "-".to_owned(),
            &last.load.plain_cpu,
        ),
        (
            "idle: moving only the load's own messages as they turn 1 s old",
            |x: &RunFigures| &x.load.idle,
            format!(
                "{:.0} of the load's",
                med(&|x: &RunFigures| x.load.idle_moved as f64)
            ),
            &last.load.idle_cpu,
        ),
        (
            "moving a backlog too",
            |x: &RunFigures| &x.load.busy,
            format!(
                "{:.0} of the {n2}-message backlog ({}) + {:.0} of the load's",
                med(&|x| x.load.busy_backlog_moved as f64),
                report::rate(med(&|x| x.load.busy_backlog_moved as f64) / window),
                med(&|x| x.load.busy_load_moved as f64)
            ),
            &last.load.busy_cpu,
        ),
    ] {
        adds.row(vec![
            what.to_owned(),
            report::rate(med(&|x| pick(x).rate)),
            report::ms(med(&|x| pick(x).p50)),
            format!(
                "**{}** (runs: {})",
                report::ms(med(&|x| pick(x).p99)),
                list(&|x| pick(x).p99, 2)
            ),
            report::ms(med(&|x| pick(x).max)),
            moved,
            cpu.clone(),
        ]);
    }
    let (idle_p99, busy_p99) = (med(&|x| x.load.idle.p99), med(&|x| x.load.busy.p99));
    let plain_p99 = med(&|x| x.load.plain.p99);
    let rise = busy_p99 - idle_p99;
    let backlog_left = runs
        .iter()
        .filter(|x| (x.load.busy_backlog_moved as usize) < n2)
        .count();

    // (c)
    let names = [
        format!("{n} cold"),
        format!("{SMALL} cold"),
        format!("{n} hot (Redis only)"),
    ];
    let take_p = |i: usize, q: f64| med(&|x| pct_ms(&x.takes[i].take, q));
    let remove_p = |i: usize, q: f64| med(&|x| pct_ms(&x.takes[i].remove, q));
    let mut take_table = Table::new(&[
        "queue",
        "takeFromQueue(10) p50 / p99",
        "removeMessages(10) p50 / p99",
        "takes checked: not 10 / not in receivedAt order",
        "longest wait for a refill to turn cold (untimed)",
    ]);
    for (i, name) in names.iter().enumerate() {
        let sum = |f: &dyn Fn(&Takes) -> usize| runs.iter().map(|x| f(&x.takes[i])).sum::<usize>();
        take_table.row(vec![
            name.clone(),
            format!(
                "**{}** / {}",
                report::ms(take_p(i, 0.5)),
                report::ms(take_p(i, 0.99))
            ),
            format!(
                "{} / {}",
                report::ms(remove_p(i, 0.5)),
                report::ms(remove_p(i, 0.99))
            ),
            format!(
                "{}: {} / {}",
                sum(&|t| t.takes),
                sum(&|t| t.short),
                sum(&|t| t.disordered)
            ),
            if i < 2 {
                format!(
                    "{} ms",
                    runs.iter()
                        .map(|x| x.takes[i].refill_wait.as_millis())
                        .max()
                        .unwrap_or(0)
                )
            } else {
                "-".into()
            },
        ]);
    }
    let mut ratios = Table::new(&["ratio (p50)", "value"]);
    ratios.row(vec![
        format!("takeFromQueue {n} cold / {SMALL} cold"),
        report::ratio(take_p(0, 0.5) / take_p(1, 0.5)),
    ]);
    ratios.row(vec![
        format!("takeFromQueue {n} cold / {n} hot"),
        report::ratio(take_p(0, 0.5) / take_p(2, 0.5)),
    ]);

    report.target(
        "moving a backlog raises addMessage p99 by at most 2 ms (vs the mover idle)",
        format!(
            "{} idle, {} while moving ({:+.2} ms)",
            report::ms(idle_p99),
            report::ms(busy_p99),
            rise
        ),
        rise <= 2.0,
    );
    report.target(
        "moving raises addMessage p99 by at most 2 ms (vs an instance without cold tier)",
        format!(
            "{} without, {} while moving ({:+.2} ms)",
            report::ms(plain_p99),
            report::ms(busy_p99),
            busy_p99 - plain_p99
        ),
        busy_p99 - plain_p99 <= 2.0,
    );
    let (p50, p99) = (take_p(0, 0.5), take_p(0, 0.99));
    report.target(
        &format!("takeFromQueue(10) with {n} cold messages < 10 ms (p50)"),
        format!("p50 {}, p99 {}", report::ms(p50), report::ms(p99)),
        p50 < 10.0,
    );
    let bad: usize = runs
        .iter()
        .flat_map(|x| &x.takes)
        .map(|t| t.short + t.disordered)
        .sum();
    if bad > 0 {
        report.note(format!(
            "cold: {bad} takes did not return {TAKE} messages in increasing receivedAt order (see the take table)"
        ));
    }
    if runs.iter().any(|x| x.moving.all_secs.is_nan()) {
        report.note(format!(
            "cold: moving stalled (nothing turned cold for {} s) in some run; see the server log below",
            STALL.as_secs()
        ));
    }

    let mut text = format!(
        "## Cold tier\n\n\
         One mpr instance (`WORKER_THREADS=1`, `THRESHOLD_TIMESTAMP={THRESHOLD_MS}`, `MOVER_INTERVAL_MS={MOVER_INTERVAL_MS}`, \
         `MOVER_BATCH_SIZE={}`, `MOVER_MAX_RATE={}`, other mover settings at their defaults) with `MONGODB_URI` on a private SecantusDB \
         (`secantusd-py --storage-path :memory:`, a Python MongoDB-wire server: a stand-in, much slower than MongoDB; {}), \
         fresh processes for each of {} runs, medians reported.\n\n\
         ### Mover throughput\n\n\
         {n} messages on one connection and {m} over {OTHERS} others, 1 KiB each, received an hour ago, written directly \
         with the server's add script (pipelined), then entered in the visit index; timed from that write until \
         every message is cold (`ZCARD <prefix>:{{<c>}}:cold`, polled every 50 ms). The mover visits up to 4 connections \
         at once (MOVER_CONCURRENCY), each in batches of MOVER_BATCH_SIZE.\n\n{}\n\
         ### addMessage while the mover works\n\n\
         {LOAD_RATE} addMessage/s paced over {LOAD_SOCKETS} sockets (one call in flight each) to {LOAD_CONNECTIONS} connections, \
         {} s measured after {} ms warm-up; latency counts from when each call was due. First on a reference instance \
         started beside the cold-tier one without MONGODB_URI (no mover), then on the cold-tier instance with nothing to move \
         but the load's own messages (with a 1 s threshold they turn stale during the measurement), then there right after \
         {n2} stale messages were written on {BACKLOG_CONNECTIONS} other connections and entered in the visit index.\n\n{}\n\
         p99 while moving a backlog minus p99 with the mover idle: **{rise:+.2} ms**; minus p99 without cold tier: \
         **{:+.2} ms** (mover idle minus without: {:+.2} ms). {}\n\n\
         ### takeFromQueue from the cold tier\n\n\
         Per queue and run, {} cycles (after {WARMUP_CYCLES} untimed) over one WebSocket: `takeFromQueue {{connectionId, limit: {TAKE}}}` \
         (no delete: bodies of cold messages are read from MongoDB, the messages stay in flight), then `removeMessages` of the \
         ids taken (for cold ones this also deletes their documents). Between cycles, untimed, {TAKE} stale messages are \
         written directly to refill the queue and, for a cold queue, the tool waits until the mover has made them cold, so \
         every take sees the same queue. The {n}-cold queue is the one of the throughput test; the hot queue holds fresh \
         messages the mover never visits. Each take is checked to return {TAKE} messages in increasing `receivedAt` order.\n\n{}\n{}",
        s.mover_batch,
        s.mover_max_rate
            .map_or_else(|| "its default".to_owned(), |rate| rate.to_string()),
        s.mongo_cpu.map_or_else(
            || "on the same CPUs as the rest".to_owned(),
            |cpu| format!("alone on CPU {cpu}, mpr, Redis and the load generator on the others")
        ),
        s.runs,
        moving.render(),
        s.duration.as_secs_f64(),
        s.warmup.as_millis(),
        adds.render(),
        busy_p99 - plain_p99,
        idle_p99 - plain_p99,
        if backlog_left > 0 {
            format!(
                "The backlog was still being moved when the measurement ended in {backlog_left} of {} runs; \
                 the whole backlog took {:.1} s (median) with the load running part of that time.",
                s.runs,
                med(&|x| x.load.backlog_secs)
            )
        } else {
            format!(
                "**The mover finished the backlog before the measurement ended** (all of it in {:.1} s, median): \
                 part of the window had nothing to move; use a larger backlog or a longer --duration-secs.",
                med(&|x| x.load.backlog_secs)
            )
        },
        s.cycles,
        take_table.render(),
        ratios.render(),
    );
    let warnings: usize = runs.iter().map(|x| x.mover_warnings).sum();
    text.push_str(&format!(
        "\n- server log: {warnings} \"mover paused\" warnings over all runs"
    ));
    for (i, x) in runs.iter().enumerate() {
        if !x.log.is_empty() {
            text.push_str(&format!(
                "\n- server log of run {} (first lines): `{}`",
                i + 1,
                x.log.join(" / ")
            ));
        }
    }
    text.push('\n');
    report.section(text);
    Ok(())
}
