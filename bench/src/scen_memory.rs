//! Server RSS per idle socket: VmRSS of a fresh mpr before and after opening N WebSockets that
//! then stay idle (and again, on another fresh instance, with one `ping` call made on each
//! socket first, so per-socket buffers that a first frame allocates are counted). Beside it,
//! the same measure for redis-server with N idle clients (redis-benchmark -I).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::Settings;
use crate::client::IdlePool;
use crate::procs::{Mpr, Redis, kill, rss_kib, spawn_tracked};
use crate::report::{Report, Table, median};

async fn mpr_per_socket(
    s: &Settings,
    redis: &Redis,
    n: usize,
    ping: bool,
    report: &mut Report,
) -> Result<(f64, u64, u64)> {
    let mpr = Mpr::start(&s.mpr_bin, &redis.url(), "memory", &[]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mpr.rss_kib()?;
    let pool = IdlePool::open(mpr.ws_port, n, 200, ping).await;
    pool.note_failures(report, "memory");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mpr.rss_kib()?;
    let open = pool.open.saturating_sub(pool.dropped());
    if pool.dropped() > 0 {
        report.note(format!(
            "memory: the server closed {} idle sockets within 2 s",
            pool.dropped()
        ));
    }
    pool.close().await;
    drop(mpr);
    if open == 0 {
        bail!("no socket stayed open");
    }
    Ok((
        after.saturating_sub(before) as f64 * 1024.0 / open as f64,
        before,
        after,
    ))
}

async fn redis_per_client(s: &Settings, redis: &Redis, n: usize) -> Result<f64> {
    let mut conn = redis.conn().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(redis.pid)?;
    let mut cmd = Command::new(&s.redis_benchmark);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &redis.port.to_string(),
        "-I",
        "-c",
        &n.to_string(),
    ]);
    let pid = spawn_tracked(cmd, "redis-benchmark-idle")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let connected = loop {
        let info = conn.cmd(&["INFO", "clients"]).await?.text();
        let c: usize = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if c > n || Instant::now() > deadline {
            break c.saturating_sub(1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(redis.pid)?;
    kill(pid);
    if connected == 0 {
        bail!("redis-benchmark -I connected no client");
    }
    Ok(after.saturating_sub(before) as f64 * 1024.0 / connected as f64)
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!("== memory: {} idle sockets", s.idle);
    let redis = Redis::start(&s.redis_server).await?;
    let n = s.idle;
    let (mut bare, mut pinged, mut redis_per) = (vec![], vec![], vec![]);
    let mut detail = String::new();
    for run in 0..s.runs {
        eprintln!("   memory: run {}/{}", run + 1, s.runs);
        s.settle(&format!("memory, run {}", run + 1), report).await;
        let (per, before, after) = mpr_per_socket(s, &redis, n, false, report).await?;
        eprintln!("      mpr idle: {before} KiB -> {after} KiB: {per:.0} B/socket");
        if run == 0 {
            detail =
                format!("first run: VmRSS {before} KiB before, {after} KiB with {n} idle sockets");
        }
        bare.push(per);
        let (per, before, after) = mpr_per_socket(s, &redis, n, true, report).await?;
        eprintln!("      mpr after one ping each: {before} KiB -> {after} KiB: {per:.0} B/socket");
        pinged.push(per);
        let per = redis_per_client(s, &redis, n).await?;
        eprintln!("      redis-server: {per:.0} B/client");
        redis_per.push(per);
    }
    let kib = |b: f64| format!("{:.2} KiB", b / 1024.0);
    let mut t = Table::new(&["", "RSS per idle socket (median)", "runs (bytes)"]);
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.row(vec![
        "mpr, socket connected (handshake only)".into(),
        format!("**{}**", kib(median(&bare))),
        runs(&bare),
    ]);
    t.row(vec![
        "mpr, after one `ping` call per socket".into(),
        format!("**{}**", kib(median(&pinged))),
        runs(&pinged),
    ]);
    t.row(vec![
        "reference: redis-server per idle client (redis-benchmark -I)".into(),
        kib(median(&redis_per)),
        runs(&redis_per),
    ]);
    let worst = median(&bare).max(median(&pinged));
    report.target(
        "< 4 KiB server RSS per idle socket",
        kib(worst),
        worst < 4096.0,
    );
    report.section(format!(
        "## Server memory per idle socket\n\n\
         VmRSS of a fresh mpr instance (from /proc/<pid>/status) 1 s after start, then 2 s after {n} WebSockets \
         connected to it and went idle; per socket = delta / sockets still open. Kernel socket buffers are not \
         in RSS. A second fresh instance measures the same after each socket made one `ping` call.\n\n{}\n- {detail}\n",
        t.render()
    ));
    Ok(())
}
