//! Re-delivery in live mode: how soon a message pushed to a mediator socket that never removed
//! it reaches the recipient again. Every trial has a connection id of its own: socket A holds
//! its live session on instance 1, one message added through a sender socket on instance 2 is
//! pushed to A (and never removed), then
//! - rebind: a new socket B on instance 2 calls addLiveSession; timed from sending it to B
//!   reading the message re-pushed;
//! - close: A's TCP connection is closed without a WebSocket close handshake (a crashed
//!   mediator); timed from the close to a getAvailableMessageCount of the sender, polled every
//!   millisecond, counting the message pending again;
//! - expiry: on a second pair of instances with a short VISIBILITY_TIMEOUT_MS, A just waits;
//!   timed from A reading the push to A reading it again, less the visibility timeout: how late
//!   the sweep (every REDELIVERY_INTERVAL_MS) found the deadline.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::Settings;
use crate::client::{Client, add_message_params, jwe_payload, pushed_ids};
use crate::procs::{Mpr, Redis};
use crate::report::{self, Report, Table, max_ms, median, new_hist, pct_ms};

/// The expiry pair's VISIBILITY_TIMEOUT_MS.
const VISIBILITY: Duration = Duration::from_millis(500);
/// The expiry pair's REDELIVERY_INTERVAL_MS (the default), the bound on the sweep's lateness.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// The close part's polling interval.
const POLL: Duration = Duration::from_millis(1);
/// How long any one wait of a trial may take before the trial counts as failed.
const WITHIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
enum Part {
    Rebind,
    Close,
    Expiry,
}

impl Part {
    const ALL: [Part; 3] = [Part::Rebind, Part::Close, Part::Expiry];

    fn name(self) -> &'static str {
        match self {
            Part::Rebind => "rebind",
            Part::Close => "close",
            Part::Expiry => "expiry",
        }
    }

    fn timed(self) -> &'static str {
        match self {
            Part::Rebind => "B's addLiveSession sent -> message re-pushed to B",
            Part::Close => "A's TCP close -> message counted pending (polled every 1 ms)",
            Part::Expiry => "push read on A -> re-push read on A, less the visibility timeout",
        }
    }
}

/// Instance 1 holds A's session, instance 2 the sender (and B).
struct Pair {
    one: Mpr,
    two: Mpr,
    sender: Client,
}

impl Pair {
    async fn start(
        s: &Settings,
        redis: &Redis,
        name: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        let one = Mpr::start(&s.mpr_bin, &redis.url(), &format!("{name}-1"), env).await?;
        let two = Mpr::start(&s.mpr_bin, &redis.url(), &format!("{name}-2"), env).await?;
        let sender = Client::connect(two.ws_port).await?;
        Ok(Self { one, two, sender })
    }
}

/// A trial's start: A bound to `connection` on instance 1, one message pushed to it.
struct Pushed {
    a: Client,
    connection: String,
    id: String,
    at: Instant,
}

async fn bind(client: &mut Client, connection: &str) -> Result<()> {
    let params = format!(r#"{{"connectionId":"{connection}","sessionId":"s-{connection}"}}"#);
    let r = client.call("addLiveSession", Some(&params)).await?;
    if r != "true" {
        bail!("addLiveSession returned {r}");
    }
    Ok(())
}

/// Fails unless `push` carries exactly the message `id`.
fn expect_pushed(push: &str, id: &str) -> Result<()> {
    let ids = pushed_ids(push)?;
    if ids != [id] {
        bail!("pushed {ids:?}, expected [{id}]");
    }
    Ok(())
}

async fn push_one(pair: &mut Pair, connection: String) -> Result<Pushed> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Added {
        message_id: String,
    }
    let mut a = Client::connect(pair.one.ws_port).await?;
    bind(&mut a, &connection).await?;
    let params = add_message_params(&connection, &jwe_payload(None));
    let added: Added = serde_json::from_str(&pair.sender.call("addMessage", Some(&params)).await?)?;
    let (at, push) = a.next_push(WITHIN).await.context("first push to A")?;
    expect_pushed(&push, &added.message_id)?;
    Ok(Pushed {
        a,
        connection,
        id: added.message_id,
        at,
    })
}

/// Trial `i` of `part`; returns what it times. `polls` gets the close part's count round trips.
async fn trial(
    part: Part,
    i: usize,
    pair: &mut Pair,
    connection: String,
    polls: &mut Histogram<u64>,
) -> Result<Duration> {
    if let Part::Expiry = part {
        // A trial starting right after the previous re-push would start in step with the sweep
        // that made it: spread the starts over the sweep interval (golden-ratio steps).
        tokio::time::sleep(SWEEP_INTERVAL.mul_f64((i as f64 * 0.618_034).fract())).await;
    }
    let mut p = push_one(pair, connection).await?;
    match part {
        Part::Rebind => {
            let mut b = Client::connect(pair.two.ws_port).await?;
            let start = Instant::now();
            bind(&mut b, &p.connection).await?;
            let (at, push) = b.next_push(WITHIN).await?;
            expect_pushed(&push, &p.id)?;
            b.close().await;
            p.a.close().await;
            Ok(at - start)
        }
        Part::Close => {
            let params = format!(r#"{{"connectionId":"{}"}}"#, p.connection);
            // Dropping the stream closes the TCP connection: no close frame, as in a crash.
            drop(p.a);
            let start = Instant::now();
            let mut tick = tokio::time::interval(POLL);
            loop {
                tick.tick().await;
                let sent = Instant::now();
                let count = pair
                    .sender
                    .call("getAvailableMessageCount", Some(&params))
                    .await?;
                let at = Instant::now();
                polls.record((at - sent).as_nanos().max(1) as u64).ok();
                match count.as_str() {
                    "1" => return Ok(at - start),
                    "0" if at - start < WITHIN => {}
                    _ => bail!("count {count} {:?} after the close", at - start),
                }
            }
        }
        Part::Expiry => {
            let (at, push) = p.a.next_push(VISIBILITY + WITHIN).await?;
            expect_pushed(&push, &p.id)?;
            p.a.close().await;
            Ok((at - p.at).saturating_sub(VISIBILITY))
        }
    }
}

/// Medians over runs of each run's p50 and p99, the largest max, and the failed trials.
#[derive(Default)]
struct Series {
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    trials: usize,
    failed: usize,
    first_error: Option<String>,
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!(
        "== redelivery: starting redis-server and two pairs of mpr instances (the second with VISIBILITY_TIMEOUT_MS={})",
        VISIBILITY.as_millis()
    );
    let redis = Redis::start(&s.redis_server).await?;
    let mut live = Pair::start(s, &redis, "redeliver", &[]).await?;
    let short = [
        ("REDIS_PREFIX", "mprexpiry".to_owned()),
        ("VISIBILITY_TIMEOUT_MS", VISIBILITY.as_millis().to_string()),
        (
            "REDELIVERY_INTERVAL_MS",
            SWEEP_INTERVAL.as_millis().to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let mut expiring = Pair::start(s, &redis, "expiry", &short).await?;
    let mut series: Vec<Series> = Part::ALL.iter().map(|_| Series::default()).collect();
    let mut polls = new_hist();
    for run in 0..s.runs {
        for (part, out) in Part::ALL.into_iter().zip(&mut series) {
            let label = format!("redelivery {}, run {}", part.name(), run + 1);
            eprintln!("   {label}/{}: {} trials", s.runs, s.trials);
            s.settle(&label, report).await;
            let pair = match part {
                Part::Expiry => &mut expiring,
                _ => &mut live,
            };
            let mut hist = new_hist();
            for i in 0..s.trials {
                let connection = format!("redeliver-{}-{run}-{i}", part.name());
                out.trials += 1;
                match trial(part, i, pair, connection, &mut polls).await {
                    Ok(took) => {
                        hist.record(took.as_nanos().max(1) as u64).ok();
                    }
                    Err(e) => {
                        out.failed += 1;
                        out.first_error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            let (p50, p99, max) = (pct_ms(&hist, 0.5), pct_ms(&hist, 0.99), max_ms(&hist));
            eprintln!("      p50 {p50:.3} ms p99 {p99:.3} ms max {max:.3} ms");
            out.p50.push(p50);
            out.p99.push(p99);
            out.max.push(max);
        }
    }

    let mut table = Table::new(&["part", "timed", "trials (failed)", "p50", "p99", "max"]);
    for (part, out) in Part::ALL.into_iter().zip(&series) {
        table.row(vec![
            part.name().into(),
            part.timed().into(),
            format!("{} ({})", out.trials, out.failed),
            report::ms(median(&out.p50)),
            format!("**{}**", report::ms(median(&out.p99))),
            report::ms(report::max_of(&out.max)),
        ]);
        if let Some(e) = &out.first_error {
            report.note(format!(
                "redelivery {}: {} of {} trials failed; first: {e}",
                part.name(),
                out.failed,
                out.trials
            ));
        }
    }
    let expiry = &series[2];
    let late = report::max_of(&expiry.max);
    report.target(
        &format!(
            "expiry: re-pushed within REDELIVERY_INTERVAL_MS ({} ms) of the deadline",
            SWEEP_INTERVAL.as_millis()
        ),
        format!("max {}", report::ms(late)),
        expiry.failed == 0 && late <= SWEEP_INTERVAL.as_secs_f64() * 1e3,
    );
    let mut text = format!(
        "## Re-delivery in live mode\n\n\
         {} trials per part and run, each on a connection id of its own: socket A binds it on instance 1, \
         one message added through a sender socket on instance 2 is pushed to A and never removed. \
         rebind: a new socket B on instance 2 calls addLiveSession. close: A's TCP connection closes \
         without a WebSocket close handshake; the sender polls getAvailableMessageCount every {} ms \
         (a poll's round trip: p50 {}, p99 {}), so these figures are late by up to about a millisecond \
         and a round trip. expiry: a second pair of instances on the same Redis (own REDIS_PREFIX) with \
         VISIBILITY_TIMEOUT_MS={}; both sweep every REDELIVERY_INTERVAL_MS ({} ms, the default), and each \
         trial starts at another phase of that interval; the figure is the sweep's lateness (it reads slightly low: the deadline starts when the server \
         hands the message out, before A reads the push). Medians over runs of p50 and p99; max of all runs.\n\n{}",
        s.trials,
        POLL.as_millis(),
        report::ms(pct_ms(&polls, 0.5)),
        report::ms(pct_ms(&polls, 0.99)),
        VISIBILITY.as_millis(),
        SWEEP_INTERVAL.as_millis(),
        table.render()
    );
    for m in [&live.one, &live.two, &expiring.one, &expiring.two] {
        text.push_str(&m.log_note());
    }
    text.push('\n');
    report.section(text);
    Ok(())
}
