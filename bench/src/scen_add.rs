//! addMessage throughput: N sockets, each with one call in flight (closed loop), messages spread
//! over `connections` connection ids; beside it redis-benchmark at the same concurrency running
//! (a) the plain three-command script and (b) the server's own add_message script.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::Settings;
use crate::ceiling::{self, BenchResult, PLAIN_SCRIPT, record_tail, unix_ms};
use crate::client::{add_message_params, jwe_payload};
use crate::fastws::{RawWs, Template};
use crate::procs::{CpuMeter, Mpr, Redis, fmt_cpu};
use crate::report::{self, Report, Table, max_ms, median, new_hist, pct_ms};

pub struct Measured {
    pub rate: f64,
    /// Every successful call, warm-up included.
    pub calls: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// `clients` sockets calling `params` in turn, one call in flight each: closed loop (each call
/// right after the previous reply), or paced at `rate` calls/s in all, spread evenly over the
/// sockets. Paced, a call's latency counts from when it was due, so a stall also counts for
/// the calls it holds back.
pub async fn measure(
    port: u16,
    clients: usize,
    params: Arc<Vec<Template>>,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Measured> {
    measure_spread(&[port], clients, params, warmup, duration, rate).await
}

/// [`measure`] with the sockets spread over several instances: socket i on `ports[i % n]`.
pub async fn measure_spread(
    ports: &[u16],
    clients: usize,
    params: Arc<Vec<Template>>,
    warmup: Duration,
    duration: Duration,
    rate: Option<f64>,
) -> Result<Measured> {
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        conns.push(RawWs::connect(ports[i % ports.len()]).await?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let warm_end = start + warmup;
    let end = warm_end + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
    let mut tasks = Vec::new();
    for (task, mut client) in conns.into_iter().enumerate() {
        let params = params.clone();
        let mut due = start + interval.map_or(Duration::ZERO, |i| i * task as u32 / clients as u32);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let mut hist = new_hist();
            let mut count = 0u64;
            let mut calls = 0u64;
            let mut errors = 0u64;
            let mut first_error = None;
            let mut j = task;
            loop {
                let t0 = match interval {
                    Some(interval) => {
                        tokio::time::sleep_until(due).await;
                        due += interval;
                        due - interval
                    }
                    None => Instant::now(),
                };
                if t0 >= end {
                    break;
                }
                let result = match client.call(&params[j % params.len()]).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(reply)) => Err(format!(
                        "addMessage failed: {}",
                        crate::client::clip(&reply)
                    )),
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        errors += 1;
                        break;
                    }
                };
                j += clients;
                if result.is_ok() {
                    calls += 1;
                }
                match result {
                    Ok(_) if t0 >= warm_end => {
                        count += 1;
                        hist.record(t0.elapsed().as_nanos() as u64).ok();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        if errors > 100 {
                            break;
                        }
                    }
                }
            }
            (count, calls, hist, errors, first_error)
        }));
    }
    let mut total = 0;
    let mut all_calls = 0;
    let mut hist = new_hist();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (c, a, h, e, f) = t.await?;
        total += c;
        all_calls += a;
        hist.add(&h).ok();
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    Ok(Measured {
        rate: total as f64 / duration.as_secs_f64(),
        calls: all_calls,
        p50: pct_ms(&hist, 0.5),
        p99: pct_ms(&hist, 0.99),
        max: max_ms(&hist),
        errors,
        first_error,
    })
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!("== add: starting redis-server and one mpr instance");
    let redis = Redis::start(&s.redis_server).await?;
    let mpr = Mpr::start(&s.mpr_bin, &redis.url(), "add", &[]).await?;
    let mut r = redis.conn().await?;
    ceiling::load_library(&mut r).await?;
    let plain_sha = r.load(PLAIN_SCRIPT).await?;
    let payload = jwe_payload(None);
    let tail = record_tail(&"0".repeat(24), unix_ms(), &payload);
    let params = add_templates(s.connections, &payload);

    let mut table = Table::new(&[
        "clients",
        "mpr addMessage/s",
        "p50 / p99",
        "ceiling: plain RPUSH+ZADD+HGET script",
        "mpr / plain",
        "ceiling: server's add_message function",
        "mpr / add function",
        "FCALL per addMessage (Redis µs per call)",
        "CPU cores used",
    ]);
    let mut runs_detail = Vec::new();
    let mut us_table = Table::new(&[
        "clients",
        "plain script (EVALSHA), under redis-benchmark",
        "server's add_message function (FCALL), under redis-benchmark",
        "server's add_message function (FCALL), under mpr",
    ]);
    for &c in &s.clients {
        let (mut rates, mut p50s, mut p99s, mut plain, mut real) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut plain_lat, mut real_lat) = (vec![], vec![]);
        let (mut plain_us, mut real_us, mut mpr_us) = (vec![], vec![], vec![]);
        let mut cmds_per_add = String::new();
        let mut cpu = String::new();
        let mut errors = 0;
        let mut first_error = None;
        for run in 0..s.runs {
            eprintln!("   add: {c} clients, run {}/{}", run + 1, s.runs);
            clear(&mut r).await?;
            s.settle(&format!("add, {c} clients, run {}", run + 1), report)
                .await;
            r.cmd(&["CONFIG", "RESETSTAT"]).await?;
            let meter = CpuMeter::start(&[
                ("mpr", mpr.pid),
                ("redis", redis.pid),
                ("bench", std::process::id()),
            ]);
            let m = measure(mpr.ws_port, c, params.clone(), s.warmup, s.duration, None).await?;
            cpu = fmt_cpu(&meter.stop());
            let stats = r.cmdstats().await?;
            let fcall = stats.iter().find(|x| x.0 == "fcall");
            mpr_us.push(fcall.map(|e| e.2).unwrap_or(f64::NAN));
            cmds_per_add = format!(
                "{:.2} ({})",
                fcall.map(|e| e.1).unwrap_or(0) as f64 / m.calls.max(1) as f64,
                fcall
                    .map(|e| format!("{:.1} µs", e.2))
                    .unwrap_or_else(|| "n/a".into())
            );
            if run == 0 {
                let top: Vec<String> = stats
                    .iter()
                    .take(6)
                    .map(|(n, c, u)| format!("{n}={c} ({u:.1} µs)"))
                    .collect();
                runs_detail.push(format!(
                    "{c} clients, Redis commands during the mpr run (calls inside scripts included): {}",
                    top.join(", ")
                ));
            }
            rates.push(m.rate);
            p50s.push(m.p50);
            p99s.push(m.p99);
            errors += m.errors;
            if first_error.is_none() {
                first_error = m.first_error;
            }
            clear(&mut r).await?;
            r.cmd(&["CONFIG", "RESETSTAT"]).await?;
            let n = s.bench_requests(c);
            let p: BenchResult = ceiling::redis_benchmark(
                &s.redis_benchmark,
                redis.port,
                c,
                n,
                s.connections,
                &ceiling::plain_args(&plain_sha),
                &payload,
            )
            .await?;
            plain_us.push(usec_per_call(&mut r, "evalsha").await?);
            plain.push(p.rps);
            plain_lat.push((p.p50_ms, p.p99_ms));
            clear(&mut r).await?;
            r.cmd(&["CONFIG", "RESETSTAT"]).await?;
            let a = ceiling::redis_benchmark(
                &s.redis_benchmark,
                redis.port,
                c,
                n,
                s.connections,
                &ceiling::add_args(),
                &tail,
            )
            .await?;
            real_us.push(usec_per_call(&mut r, "fcall").await?);
            real.push(a.rps);
            real_lat.push((a.p50_ms, a.p99_ms));
            eprintln!(
                "      mpr {:.0}/s (p50 {:.3} ms, p99 {:.3} ms, {} errors); plain script {:.0}/s; add script {:.0}/s",
                m.rate, m.p50, m.p99, m.errors, p.rps, a.rps
            );
        }
        let (rate, pl, re) = (median(&rates), median(&plain), median(&real));
        us_table.row(vec![
            c.to_string(),
            format!("{:.1} µs", median(&plain_us)),
            format!("{:.1} µs", median(&real_us)),
            format!("{:.1} µs", median(&mpr_us)),
        ]);
        table.row(vec![
            c.to_string(),
            report::rate_of_runs(&rates),
            report::p50_p99(&p50s, &p99s),
            format!("{} ({})", report::rate(pl), lat(&plain_lat)),
            report::pct(rate / pl),
            format!("{} ({})", report::rate(re), lat(&real_lat)),
            report::pct(rate / re),
            cmds_per_add.clone(),
            cpu.clone(),
        ]);
        if errors > 0 {
            report.note(format!(
                "add, {c} clients: {errors} failed calls; first: {}",
                first_error.unwrap_or_default()
            ));
        }
        if c == 32 {
            report.target(
                "addMessage at 32 clients >= 45 000/s",
                report::rate(rate),
                rate >= 45_000.0,
            );
            report.target(
                "addMessage at 32 clients >= half the plain-script ceiling at 32",
                format!(
                    "{} of {} ({})",
                    report::rate(rate),
                    report::rate(pl),
                    report::pct(rate / pl)
                ),
                rate >= 0.5 * pl,
            );
        }
    }
    clear(&mut r).await?;
    let log = mpr.log_excerpt(5);
    let mut text = format!(
        "## addMessage throughput\n\n\
         Closed loop: each client is one WebSocket with one `addMessage` in flight, {} connection ids, \
         {} s measured after {} ms warm-up per run; the ceilings are `redis-benchmark -c <clients> -n <N> -r ... -x` \
         running the plain script (EVALSHA) and the server's add function (FCALL) on the same Redis, same payload, same concurrency, run right after each mpr run.\n\n{}",
        s.connections,
        s.duration.as_secs_f64(),
        s.warmup.as_millis(),
        table.render()
    );
    text.push_str(&format!(
        "\nRedis CPU time per call (INFO commandstats `usec_per_call` of EVALSHA or FCALL; Redis is single-threaded, so \
         1 s / this figure bounds the rate of that call on this Redis):\n\n{}",
        us_table.render()
    ));
    for d in runs_detail {
        text.push_str(&format!("\n- {d}"));
    }
    if !log.is_empty() {
        text.push_str(&format!(
            "\n- server log (first lines): `{}`",
            log.join(" / ")
        ));
    }
    text.push('\n');
    report.section(text);
    Ok(())
}

/// One addMessage call per connection id `bench-0` .. `bench-<connections - 1>`, for [`measure`].
pub fn add_templates(connections: u64, payload: &str) -> Arc<Vec<Template>> {
    Arc::new(
        (0..connections)
            .map(|i| {
                Template::new(
                    "addMessage",
                    &add_message_params(&format!("bench-{i}"), payload),
                )
            })
            .collect(),
    )
}

/// Deletes what the benchmark wrote (the server's own keys, such as its heartbeat, stay).
pub async fn clear(r: &mut crate::resp::Resp) -> Result<()> {
    r.clear("mpr:{bench-*").await?;
    r.clear("ceil:*").await?;
    r.clear("bq:*").await?;
    Ok(())
}

/// `p50 0.31 / p99 0.95 ms` from redis-benchmark's runs (medians).
fn lat(v: &[(f64, f64)]) -> String {
    let p50: Vec<f64> = v.iter().map(|x| x.0).collect();
    let p99: Vec<f64> = v.iter().map(|x| x.1).collect();
    format!(
        "{} / {}",
        report::ms(median(&p50)),
        report::ms(median(&p99))
    )
}

async fn usec_per_call(r: &mut crate::resp::Resp, command: &str) -> Result<f64> {
    let stats = r.cmdstats().await?;
    Ok(stats
        .iter()
        .find(|x| x.0 == command)
        .map(|e| e.2)
        .unwrap_or(f64::NAN))
}
