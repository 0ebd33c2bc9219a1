//! Queue operations against long queues: takeFromQueue(limit 10), removeMessages(10 ids) and
//! removeAllMessages with N messages queued on one connection. Each cycle takes 10 (without
//! delete, so they go in flight), removes those 10 by id, and adds 10 back (not timed), so the
//! queue stays at N. Ceiling: the server's own scripts called directly on the same Redis, same
//! arguments, same queue length.

use std::time::Duration;

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::Settings;
use crate::ceiling::{Ids, REMOVE_BATCH, fcall, fill, load_library, taken_ids};
use crate::client::{
    Client, DID, add_message_params, fill_queue, ids_json, jwe_payload, message_ids,
};
use crate::procs::{Mpr, Redis};
use crate::report::{self, Report, Table, median, new_hist, pct_ms};
use crate::resp::Resp;
use mpr::store::functions::{REMOVE_ALL_MESSAGES, REMOVE_MESSAGES, TAKE_FROM_QUEUE};

const MAX_BYTES: &str = "16777216";
/// Untimed cycles before the timed ones (connection and script caches warm).
const WARMUP_CYCLES: usize = 10;

#[derive(Default)]
struct Figures {
    take_p50: Vec<f64>,
    take_p99: Vec<f64>,
    remove_p50: Vec<f64>,
    remove_p99: Vec<f64>,
    remove_all_did: Vec<f64>,
    remove_all_plain: Vec<f64>,
}

impl Figures {
    fn add(
        &mut self,
        take: &Histogram<u64>,
        remove: &Histogram<u64>,
        all_did: f64,
        all_plain: f64,
    ) {
        self.take_p50.push(pct_ms(take, 0.5));
        self.take_p99.push(pct_ms(take, 0.99));
        self.remove_p50.push(pct_ms(remove, 0.5));
        self.remove_p99.push(pct_ms(remove, 0.99));
        self.remove_all_did.push(all_did);
        self.remove_all_plain.push(all_plain);
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// One size through mpr; returns (take hist, remove hist, removeAll with DID ms, removeAll without ms).
async fn server_round(
    port: u16,
    conn: &str,
    n: usize,
    cycles: usize,
    report: &mut Report,
) -> Result<(Histogram<u64>, Histogram<u64>, f64, f64)> {
    fill_queue(port, conn, n, 4, 64).await?;
    let mut c = Client::connect(port).await?;
    let payload = jwe_payload(None);
    let add = add_message_params(conn, &payload);
    let take_params = format!(r#"{{"connectionId":"{conn}","limit":10}}"#);
    let (mut take_h, mut remove_h) = (new_hist(), new_hist());
    for cycle in 0..cycles + WARMUP_CYCLES {
        if cycle == WARMUP_CYCLES {
            take_h.reset();
            remove_h.reset();
        }
        let t = Instant::now();
        let result = c.call("takeFromQueue", Some(&take_params)).await?;
        take_h.record(t.elapsed().as_nanos() as u64).ok();
        let ids = message_ids(&result)?;
        if ids.len() != 10.min(n) && cycle == 0 {
            report.note(format!(
                "queue {n}: takeFromQueue(limit 10) returned {} messages",
                ids.len()
            ));
        }
        let params = format!(
            r#"{{"connectionId":"{conn}","messageIds":{}}}"#,
            ids_json(&ids)
        );
        let t = Instant::now();
        let removed = c.call("removeMessages", Some(&params)).await?;
        remove_h.record(t.elapsed().as_nanos() as u64).ok();
        if removed != "true" {
            bail!("removeMessages returned {removed}");
        }
        for _ in 0..ids.len() {
            c.call("addMessage", Some(&add)).await?;
        }
    }
    let with_did = format!(r#"{{"connectionId":"{conn}","recipientDid":"{DID}"}}"#);
    let all_did = remove_all(&mut c, conn, n, &with_did, "with recipientDid", report).await?;
    fill_queue(port, conn, n, 4, 64).await?;
    let without = format!(r#"{{"connectionId":"{conn}"}}"#);
    let all_plain = remove_all(&mut c, conn, n, &without, "without recipientDid", report).await?;
    c.close().await;
    Ok((take_h, remove_h, all_did, all_plain))
}

/// Times one removeAllMessages; a failed call is reported (and NaN returned), then the queue is
/// checked to be empty once Redis is free again.
async fn remove_all(
    c: &mut Client,
    conn: &str,
    n: usize,
    params: &str,
    what: &str,
    report: &mut Report,
) -> Result<f64> {
    let t = Instant::now();
    let r = c.call("removeAllMessages", Some(params)).await;
    let took = ms_since(t);
    let value = match r {
        Ok(r) if r == "true" => took,
        Ok(r) => {
            report.note(format!(
                "queue {n}: removeAllMessages {what} returned {r} after {took:.0} ms"
            ));
            took
        }
        Err(e) => {
            report.note(format!(
                "queue {n}: removeAllMessages {what} failed after {took:.0} ms: {e:#}"
            ));
            f64::NAN
        }
    };
    // A script may still be running in Redis after the server gave up on it: wait, then check.
    let count = format!(r#"{{"connectionId":"{conn}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = match c.call("getAvailableMessageCount", Some(&count)).await {
            Ok(left) if left == "0" => break,
            Ok(left) => left,
            Err(e) => format!("unknown ({e:#})"),
        };
        if Instant::now() > deadline {
            report.note(format!(
                "queue {n}: {left} messages left 30 s after removeAllMessages {what} (expected 0)"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(value)
}

/// The same round against Redis directly with the server's functions.
async fn ceiling_round(
    r: &mut Resp,
    conn: &str,
    n: usize,
    cycles: usize,
    ids: &mut Ids,
) -> Result<(Histogram<u64>, Histogram<u64>, f64, f64)> {
    fill(r, "ceil", conn, n, ids).await?;
    let take_args: Vec<String> = ["", "10", MAX_BYTES, "0", "30000", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (mut take_h, mut remove_h) = (new_hist(), new_hist());
    for cycle in 0..cycles + WARMUP_CYCLES {
        if cycle == WARMUP_CYCLES {
            take_h.reset();
            remove_h.reset();
        }
        let t = Instant::now();
        let reply = r
            .cmd(&fcall(&TAKE_FROM_QUEUE, "ceil", conn, &[], &take_args))
            .await?;
        take_h.record(t.elapsed().as_nanos() as u64).ok();
        let taken = taken_ids(&reply);
        let t = Instant::now();
        r.cmd(&fcall(&REMOVE_MESSAGES, "ceil", conn, &[], &taken))
            .await?;
        remove_h.record(t.elapsed().as_nanos() as u64).ok();
        fill(r, "ceil", conn, taken.len(), ids).await?;
    }
    let t = Instant::now();
    r.cmd(&fcall(
        &REMOVE_ALL_MESSAGES,
        "ceil",
        conn,
        &[DID],
        &[DID.to_owned(), REMOVE_BATCH.to_owned()],
    ))
    .await?;
    let all_did = ms_since(t);
    fill(r, "ceil", conn, n, ids).await?;
    let t = Instant::now();
    r.cmd(&fcall(
        &REMOVE_ALL_MESSAGES,
        "ceil",
        conn,
        &[],
        &[String::new(), REMOVE_BATCH.to_owned()],
    ))
    .await?;
    let all_plain = ms_since(t);
    Ok((take_h, remove_h, all_did, all_plain))
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!("== queue: starting redis-server and one mpr instance");
    let redis = Redis::start(&s.redis_server).await?;
    let mpr = Mpr::start(&s.mpr_bin, &redis.url(), "queue", &[]).await?;
    let mut r = redis.conn().await?;
    load_library(&mut r).await?;
    let mut ids = Ids::new(0);
    let mut server: Vec<Figures> = s.sizes.iter().map(|_| Figures::default()).collect();
    let mut ceil: Vec<Figures> = s.sizes.iter().map(|_| Figures::default()).collect();
    for run in 0..s.runs {
        for (i, &n) in s.sizes.iter().enumerate() {
            eprintln!("   queue: {n} queued, run {}/{}", run + 1, s.runs);
            s.settle(&format!("queue {n}, run {}", run + 1), report)
                .await;
            let t = Instant::now();
            let (take, remove, all_did, all_plain) =
                server_round(mpr.ws_port, &format!("q{n}-r{run}"), n, s.cycles, report).await?;
            eprintln!(
                "      mpr take p50 {:.3} ms, remove p50 {:.3} ms, removeAll {:.2} / {:.2} ms ({:.1} s)",
                pct_ms(&take, 0.5),
                pct_ms(&remove, 0.5),
                all_did,
                all_plain,
                t.elapsed().as_secs_f64()
            );
            server[i].add(&take, &remove, all_did, all_plain);
            let (take, remove, all_did, all_plain) =
                ceiling_round(&mut r, &format!("q{n}-r{run}"), n, s.cycles, &mut ids).await?;
            eprintln!(
                "      ceiling take p50 {:.3} ms, remove p50 {:.3} ms, removeAll {:.2} / {:.2} ms",
                pct_ms(&take, 0.5),
                pct_ms(&remove, 0.5),
                all_did,
                all_plain
            );
            ceil[i].add(&take, &remove, all_did, all_plain);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut table = Table::new(&[
        "queued",
        "takeFromQueue(10) p50 / p99",
        "ceiling",
        "removeMessages(10) p50 / p99",
        "ceiling",
        "removeAllMessages (recipientDid)",
        "ceiling",
        "removeAllMessages (no recipientDid)",
        "ceiling",
    ]);
    for (i, &n) in s.sizes.iter().enumerate() {
        let (m, c) = (&server[i], &ceil[i]);
        table.row(vec![
            n.to_string(),
            p50_p99(&m.take_p50, &m.take_p99, true),
            p50_p99(&c.take_p50, &c.take_p99, false),
            p50_p99(&m.remove_p50, &m.remove_p99, true),
            p50_p99(&c.remove_p50, &c.remove_p99, false),
            format!("**{}**", report::ms(median(&m.remove_all_did))),
            report::ms(median(&c.remove_all_did)),
            report::ms(median(&m.remove_all_plain)),
            report::ms(median(&c.remove_all_plain)),
        ]);
    }
    let (lo, hi) = (0, s.sizes.len() - 1);
    let (small, large) = (s.sizes[lo], s.sizes[hi]);
    let mut ratios = Table::new(&[
        "ratio at the longest / shortest queue",
        "mpr (p50)",
        "ceiling (p50)",
    ]);
    for (name, pick) in [
        (
            "takeFromQueue",
            (|f: &Figures| median(&f.take_p50)) as fn(&Figures) -> f64,
        ),
        ("removeMessages", |f: &Figures| median(&f.remove_p50)),
    ] {
        let ratio = pick(&server[hi]) / pick(&server[lo]);
        let cratio = pick(&ceil[hi]) / pick(&ceil[lo]);
        ratios.row(vec![
            format!("{name} {large} / {small}"),
            report::ratio(ratio),
            report::ratio(cratio),
        ]);
        report.target(
            &format!("{name} at {large} queued within 1.5x of {small}"),
            format!(
                "{} vs {} ({})",
                report::ms(pick(&server[hi])),
                report::ms(pick(&server[lo])),
                report::ratio(ratio)
            ),
            ratio <= 1.5,
        );
    }
    if let Some(i) = s.sizes.iter().position(|&n| n == 10_000) {
        let v = median(&server[i].remove_all_did);
        report.target(
            "removeAllMessages of 10 000 (with recipientDid, as Credo sends it) < 50 ms",
            report::ms(v),
            v < 50.0,
        );
        let v = median(&server[i].remove_all_plain);
        if !v.is_nan() {
            report.target(
                "removeAllMessages of 10 000 (no recipientDid) < 50 ms",
                report::ms(v),
                v < 50.0,
            );
        }
    }
    let mut text = format!(
        "## Queue operations vs queue length\n\n\
         One connection holds N messages (1 KiB each, one recipient DID). {} cycles per size and run: \
         `takeFromQueue {{connectionId, limit: 10}}` (no delete: the 10 go in flight), `removeMessages` of those 10 ids, \
         then 10 `addMessage` to refill (not timed); {WARMUP_CYCLES} untimed cycles first. Then `removeAllMessages` once with the recipientDid the messages \
         were addressed to, the queue is refilled, and once without. One socket, sequential calls. Ceiling: the \
         server's scripts (prelude.lua + operation) called directly with the same arguments on a queue of the same \
         length, from this tool over one Redis connection.\n\n{}\n{}",
        s.cycles,
        table.render(),
        ratios.render()
    );
    let log = mpr.log_excerpt(5);
    if !log.is_empty() {
        text.push_str(&format!(
            "\n- server log (first lines): `{}`\n",
            log.join(" / ")
        ));
    }
    report.section(text);
    Ok(())
}

/// "p50 / p99" of the medians of runs, the mpr figure in bold.
fn p50_p99(p50: &[f64], p99: &[f64], bold: bool) -> String {
    let p50 = report::ms(median(p50));
    let p50 = if bold { format!("**{p50}**") } else { p50 };
    format!("{p50} / {}", report::ms(median(p99)))
}
