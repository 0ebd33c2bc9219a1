//! Redis Cluster: addMessage throughput and live-delivery latency on testkit's 3-primary cluster
//! (each primary with one replica) with one and three mpr instances, and with
//! `REDIS_WAIT_REPLICAS=1`, beside one instance on a single redis-server, all on this machine.
//!
//! Every process stays up for the whole scenario and each run measures the four setups one
//! after another, so their ratios within one run see the same machine. The load is the add
//! scenario's (closed loop, clients spread over the instances) and the live scenario's
//! (receiver on the first instance, senders on the second where there are several); the CPU
//! time of every Redis node, every instance and this tool is read around each measurement.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::Settings;
use crate::client::jwe_payload;
use crate::procs::{Cluster, CpuMeter, Mpr, Redis};
use crate::report::{self, Report, Table, median};
use crate::resp::Resp;
use crate::scen_add::{add_templates, clear, measure_spread};
use crate::scen_live::MprLive;

/// The concurrency of the add measurement (the add scenario's largest).
const ADD_CLIENTS: usize = 32;

/// One setup measured: the instances it sends to and the Redis processes behind them.
struct Setup<'a> {
    label: &'static str,
    instances: Vec<&'a Mpr>,
    /// Ports of the Redis primaries (one for the single redis-server).
    primaries: Vec<u16>,
    /// Names and pids of its Redis processes, for the CPU meter.
    redis_pids: Vec<(String, u32)>,
    cluster: bool,
}

impl Setup<'_> {
    fn meter(&self) -> CpuMeter {
        let mut pids = self.redis_pids.clone();
        for (i, m) in self.instances.iter().enumerate() {
            pids.push((format!("mpr{}", i + 1), m.pid));
        }
        pids.push(("bench".into(), std::process::id()));
        let named: Vec<(&str, u32)> = pids.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        CpuMeter::start(&named)
    }

    /// Deletes what the add measurement wrote, on every primary.
    async fn clear(&self) -> Result<()> {
        for &port in &self.primaries {
            let mut r = Resp::connect(port).await?;
            if !self.cluster {
                clear(&mut r).await?;
                continue;
            }
            // One DEL per key: a cluster node refuses a DEL of keys in several slots.
            let keys = r.cmd(&["KEYS", "mpr:{bench-*"]).await?;
            let dels: Vec<Vec<String>> = keys
                .items()
                .iter()
                .map(|k| vec!["DEL".to_owned(), k.text()])
                .collect();
            for chunk in dels.chunks(1000) {
                r.pipeline(chunk).await?;
            }
        }
        Ok(())
    }

    async fn reset_stats(&self) -> Result<()> {
        for &port in &self.primaries {
            Resp::connect(port)
                .await?
                .cmd(&["CONFIG", "RESETSTAT"])
                .await?;
        }
        Ok(())
    }

    /// Calls of each command on each primary since [`Self::reset_stats`].
    async fn stats(&self) -> Result<Vec<Vec<(String, u64, f64)>>> {
        let mut out = Vec::new();
        for &port in &self.primaries {
            out.push(Resp::connect(port).await?.cmdstats().await?);
        }
        Ok(out)
    }
}

/// CPU cores of each process over the runs of one measurement: name -> one value per run.
#[derive(Default)]
struct CpuRuns {
    order: Vec<String>,
    cores: BTreeMap<String, Vec<f64>>,
    /// CPU microseconds per addMessage, by group (Redis primaries, replicas, mpr, bench).
    per_add: BTreeMap<&'static str, Vec<f64>>,
}

impl CpuRuns {
    fn push(&mut self, usage: &[(String, f64)], wall: f64, calls: Option<u64>) {
        for (name, c) in usage {
            if !self.cores.contains_key(name) {
                self.order.push(name.clone());
            }
            self.cores.entry(name.clone()).or_default().push(*c);
        }
        let Some(calls) = calls.filter(|&c| c > 0) else {
            return;
        };
        let mut groups: BTreeMap<&'static str, f64> = BTreeMap::new();
        for (name, c) in usage {
            let group = match name.as_str() {
                "redis" => "Redis primaries",
                n if n.starts_with('p') => "Redis primaries",
                n if n.starts_with('r') => "Redis replicas",
                n if n.starts_with("mpr") => "mpr",
                "bench" => "bench",
                _ => continue,
            };
            *groups.entry(group).or_default() += c * wall;
        }
        for (group, secs) in groups {
            self.per_add
                .entry(group)
                .or_default()
                .push(secs * 1e6 / calls as f64);
        }
    }

    /// `p1 0.31, p2 0.30, ...`: medians over the runs, in cores.
    fn cores(&self) -> String {
        self.order
            .iter()
            .map(|n| format!("{n} {:.2}", median(&self.cores[n])))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn total(&self) -> f64 {
        self.order
            .iter()
            .filter(|n| n.as_str() != "other")
            .map(|n| median(&self.cores[n]))
            .sum()
    }

    fn per_add(&self, group: &str) -> String {
        self.per_add
            .get(group)
            .map_or("–".into(), |v| format!("{:.0} µs", median(v)))
    }
}

#[derive(Default)]
struct Results {
    rates: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
    add_cpu: CpuRuns,
    /// FCALLs on each primary per addMessage, and their Redis µs, one entry per run.
    fcall_share: Vec<Vec<(f64, f64)>>,
    /// WAIT calls on the primaries per addMessage.
    waits: Vec<f64>,
    /// Per rate: p50s, p99s, reply p99s, lost, sent, CPU.
    live: BTreeMap<u64, LiveRuns>,
}

#[derive(Default)]
struct LiveRuns {
    p50: Vec<f64>,
    p99: Vec<f64>,
    reply_p50: Vec<f64>,
    reply_p99: Vec<f64>,
    achieved: Vec<f64>,
    lost: u64,
    sent: u64,
    cpu: CpuRuns,
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!(
        "== cluster: starting a redis-server with one mpr instance, a 3-primary Redis Cluster with \
         three instances, and three more with REDIS_WAIT_REPLICAS=1"
    );
    let started = std::time::Instant::now();
    let redis = Redis::start(&s.redis_server).await?;
    let single = Mpr::start(&s.mpr_bin, &redis.url(), "single", &[]).await?;
    let cluster = Cluster::start(&s.redis_server)
        .await
        .context("starting the Redis Cluster")?;
    let env = |wait: u64| {
        vec![
            ("REDIS_TYPE".to_owned(), "cluster".to_owned()),
            ("REDIS_NODES".to_owned(), cluster.server.seed_nodes_env()),
            ("REDIS_WAIT_REPLICAS".to_owned(), wait.to_string()),
        ]
    };
    let mut plain = Vec::new();
    let mut waiting = Vec::new();
    for i in 1..=3 {
        let url = cluster.server.url();
        plain.push(Mpr::start(&s.mpr_bin, &url, &format!("c{i}"), &env(0)).await?);
        waiting.push(Mpr::start(&s.mpr_bin, &url, &format!("w{i}"), &env(1)).await?);
    }
    let cluster_pids = cluster.pids();
    let setups = [
        Setup {
            label: "single redis-server, 1 instance",
            instances: vec![&single],
            primaries: vec![redis.port],
            redis_pids: vec![("redis".into(), redis.pid)],
            cluster: false,
        },
        Setup {
            label: "cluster, 1 instance",
            instances: vec![&plain[0]],
            primaries: cluster.primaries.clone(),
            redis_pids: cluster_pids.clone(),
            cluster: true,
        },
        Setup {
            label: "cluster, 3 instances",
            instances: plain.iter().collect(),
            primaries: cluster.primaries.clone(),
            redis_pids: cluster_pids.clone(),
            cluster: true,
        },
        Setup {
            label: "cluster, 3 instances, REDIS_WAIT_REPLICAS=1",
            instances: waiting.iter().collect(),
            primaries: cluster.primaries.clone(),
            redis_pids: cluster_pids.clone(),
            cluster: true,
        },
    ];
    let setup_secs = started.elapsed().as_secs_f64();
    let payload = jwe_payload(None);
    let params = add_templates(s.connections, &payload);
    let mut results: Vec<Results> = setups.iter().map(|_| Results::default()).collect();
    for run in 0..s.runs {
        for (setup, res) in setups.iter().zip(results.iter_mut()) {
            eprintln!(
                "   cluster: {}, run {}/{}: addMessage, {ADD_CLIENTS} clients",
                setup.label,
                run + 1,
                s.runs
            );
            setup.clear().await?;
            s.settle(
                &format!("cluster: {}, add, run {}", setup.label, run + 1),
                report,
            )
            .await;
            setup.reset_stats().await?;
            let ports: Vec<u16> = setup.instances.iter().map(|m| m.ws_port).collect();
            let meter = setup.meter();
            let m = measure_spread(
                &ports,
                ADD_CLIENTS,
                params.clone(),
                s.warmup,
                s.duration,
                None,
            )
            .await?;
            let (usage, wall) = meter.stop_with_wall();
            res.add_cpu.push(&usage, wall, Some(m.calls));
            let stats = setup.stats().await?;
            let calls = m.calls.max(1) as f64;
            let of = |st: &[(String, u64, f64)], cmd: &str| {
                st.iter()
                    .find(|x| x.0 == cmd)
                    .map_or((0.0, f64::NAN), |x| (x.1 as f64, x.2))
            };
            res.fcall_share.push(
                stats
                    .iter()
                    .map(|st| {
                        let (n, us) = of(st, "fcall");
                        (n / calls, us)
                    })
                    .collect(),
            );
            res.waits
                .push(stats.iter().map(|st| of(st, "wait").0).sum::<f64>() / calls);
            eprintln!(
                "      {:.0}/s (p50 {:.3} ms, p99 {:.3} ms, {} errors); CPU {}",
                m.rate,
                m.p50,
                m.p99,
                m.errors,
                crate::procs::fmt_cpu(&usage)
            );
            res.rates.push(m.rate);
            res.p50.push(m.p50);
            res.p99.push(m.p99);
            res.errors += m.errors;
            if res.first_error.is_none() {
                res.first_error = m.first_error;
            }
            setup.clear().await?;

            let a = setup.instances[0];
            let b = setup.instances.get(1).copied().unwrap_or(a);
            let mut live = MprLive::setup(a, b, s.live_connections, s.senders, !s.live_no_ack)
                .await
                .with_context(|| format!("live setup on {}", setup.label))?;
            for &rate in &s.rates {
                eprintln!(
                    "   cluster: {}, run {}/{}: live {rate}/s",
                    setup.label,
                    run + 1,
                    s.runs
                );
                s.settle(
                    &format!("cluster: {}, live {rate}/s, run {}", setup.label, run + 1),
                    report,
                )
                .await;
                let meter = setup.meter();
                let r = live.phase(rate, s.warmup, s.duration).await?;
                let (usage, wall) = meter.stop_with_wall();
                eprintln!(
                    "      p50 {:.3} ms p99 {:.3} ms, {} of {} lost; replies p99 {:.3} ms",
                    r.p50, r.p99, r.lost, r.sent, r.reply_p99
                );
                let l = res.live.entry(rate).or_default();
                l.p50.push(r.p50);
                l.p99.push(r.p99);
                l.reply_p50.push(r.reply_p50);
                l.reply_p99.push(r.reply_p99);
                l.achieved.push(r.achieved);
                l.lost += r.lost;
                l.sent += r.sent;
                l.cpu.push(&usage, wall, None);
            }
            live.window
                .note_errors(report, &format!("cluster live ({})", setup.label));
            live.close().await;
        }
    }

    let mut text = format!(
        "## Redis Cluster\n\n\
         testkit's Redis Cluster (6 redis-servers: 3 primaries `p1`-`p3`, each with one replica `r1`-`r3`; \
         `--appendonly no --save ''` like the single redis-server) beside one instance on a single redis-server, \
         all on this machine and all up for the whole scenario; each run measures the four setups one after another. \
         addMessage: {ADD_CLIENTS} clients in a closed loop (as `add`), spread round-robin over the setup's instances, \
         {} connection ids, {} s after {} ms warm-up. Live (as `live`): {} connection ids bound on the first instance, \
         {} sender sockets on the second (on the first when there is one), open loop. \
         Medians of {} runs; setup took {setup_secs:.0} s.\n\n",
        s.connections,
        s.duration.as_secs_f64(),
        s.warmup.as_millis(),
        s.live_connections,
        s.senders,
        s.runs,
    );
    let mut headers: Vec<String> = vec![
        "setup".into(),
        format!("addMessage/s, {ADD_CLIENTS} clients"),
        "add p50 / p99".into(),
    ];
    for rate in &s.rates {
        headers.push(format!("live {rate}/s p50 / p99"));
        headers.push(format!("live {rate}/s addMessage reply p50 / p99"));
    }
    headers.push("lost".into());
    let hs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(&hs);
    for (setup, res) in setups.iter().zip(&results) {
        let mut row = vec![
            setup.label.to_owned(),
            report::rate_of_runs(&res.rates),
            report::p50_p99(&res.p50, &res.p99),
        ];
        let (mut lost, mut sent) = (0, 0);
        for rate in &s.rates {
            let l = &res.live[rate];
            row.push(format!(
                "{} / **{}**",
                report::ms(median(&l.p50)),
                report::ms(median(&l.p99))
            ));
            row.push(report::p50_p99(&l.reply_p50, &l.reply_p99));
            lost += l.lost;
            sent += l.sent;
        }
        row.push(format!("{lost} of {sent}"));
        table.row(row);
    }
    text.push_str(&table.render());

    // Ratios within each run.
    let ratio = |a: usize, b: usize| -> Vec<f64> {
        results[a]
            .rates
            .iter()
            .zip(&results[b].rates)
            .map(|(x, y)| x / y)
            .collect()
    };
    let mut ratios = Table::new(&["ratio of addMessage/s (same run)", "median", "each run"]);
    for (name, a, b) in [
        ("cluster, 1 instance / single redis-server", 1, 0),
        ("cluster, 3 instances / cluster, 1 instance", 2, 1),
        ("cluster, 3 instances / single redis-server", 2, 0),
        ("REDIS_WAIT_REPLICAS=1 / 0 (3 instances)", 3, 2),
    ] {
        let v = ratio(a, b);
        ratios.row(vec![
            name.into(),
            format!("**{}**", report::ratio(median(&v))),
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    text.push_str(&format!("\n{}", ratios.render()));

    let mut cpu = Table::new(&[
        "setup",
        "CPU cores during addMessage (CPU-s per s)",
        "sum (without other)",
        "CPU per addMessage: Redis primaries",
        "replicas",
        "mpr",
        "bench",
    ]);
    for (setup, res) in setups.iter().zip(&results) {
        cpu.row(vec![
            setup.label.to_owned(),
            res.add_cpu.cores(),
            format!("{:.2}", res.add_cpu.total()),
            res.add_cpu.per_add("Redis primaries"),
            res.add_cpu.per_add("Redis replicas"),
            res.add_cpu.per_add("mpr"),
            res.add_cpu.per_add("bench"),
        ]);
    }
    text.push_str(&format!(
        "\nCPU of each process over the addMessage measurement (its whole window: socket setup, warm-up and the \
         measured seconds), medians over the runs; CPU per addMessage is that CPU time over every successful \
         call in the window:\n\n{}",
        cpu.render()
    ));
    if let Some(&rate) = s.rates.iter().max() {
        let mut live_cpu = Table::new(&["setup", &format!("CPU cores during live {rate}/s")]);
        for (setup, res) in setups.iter().zip(&results) {
            live_cpu.row(vec![setup.label.to_owned(), res.live[&rate].cpu.cores()]);
        }
        text.push_str(&format!("\n{}", live_cpu.render()));
    }

    let mut calls = Table::new(&[
        "setup",
        "FCALL per addMessage on each primary (Redis µs per FCALL)",
        "WAIT per addMessage",
    ]);
    for (setup, res) in setups.iter().zip(&results) {
        let n = setup.primaries.len();
        let cells: Vec<String> = (0..n)
            .map(|i| {
                let share: Vec<f64> = res.fcall_share.iter().map(|r| r[i].0).collect();
                let us: Vec<f64> = res.fcall_share.iter().map(|r| r[i].1).collect();
                format!(
                    "{}{:.2} ({:.1} µs)",
                    if setup.cluster {
                        format!("p{} ", i + 1)
                    } else {
                        String::new()
                    },
                    median(&share),
                    median(&us)
                )
            })
            .collect();
        calls.row(vec![
            setup.label.to_owned(),
            cells.join(", "),
            format!("{:.2}", median(&res.waits)),
        ]);
    }
    text.push_str(&format!(
        "\nRedis work behind the addMessage runs (INFO commandstats on each primary, reset before each run):\n\n{}",
        calls.render()
    ));
    for (setup, res) in setups.iter().zip(&results) {
        if res.errors > 0 {
            report.note(format!(
                "cluster, {}: {} failed addMessage calls; first: {}",
                setup.label,
                res.errors,
                res.first_error.clone().unwrap_or_default()
            ));
        }
        for (rate, l) in &res.live {
            if l.lost > 0 {
                report.note(format!(
                    "cluster, {}, live {rate}/s: {} of {} pushes not received within 3 s of the window's end",
                    setup.label, l.lost, l.sent
                ));
            }
            let achieved = median(&l.achieved);
            if achieved < 0.95 * *rate as f64 {
                report.note(format!(
                    "cluster, {}, live {rate}/s: the sender achieved only {}",
                    setup.label,
                    report::rate(achieved)
                ));
            }
        }
    }
    // Each instance's log, without the warnings every one of them gives at start.
    const AT_START: [&str; 3] = [
        "AUTH_TOKENS is not set",
        "push notifications disabled",
        "took over a dead instance",
    ];
    for m in std::iter::once(&single).chain(&plain).chain(&waiting) {
        let lines: Vec<String> = m
            .log_excerpt(200)
            .into_iter()
            .filter(|l| !AT_START.iter().any(|w| l.contains(w)))
            .take(5)
            .collect();
        if !lines.is_empty() {
            text.push_str(&format!(
                "\n- server {} log (first lines): `{}`",
                m.name,
                lines.join(" / ")
            ));
        }
    }
    text.push_str(&format!(
        "\n\nScenario time: {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    report.section(text);
    Ok(())
}
