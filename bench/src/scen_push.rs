//! addMessage throughput with push notifications on, beside the same without: one instance
//! with no push settings, one pushing to a local FCM stand-in (OAuth token endpoint and send
//! endpoint answering 200 at once), both on one Redis, measured alternately in each run so
//! that the ratio compares like with like. Every message carries its connection's token, so
//! each add also remembers the token and asks for a push (deduplicated per token per window).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;

use crate::Settings;
use crate::client::jwe_payload;
use crate::fastws::Template;
use crate::procs::{Mpr, Redis, cpu_secs, serve_on_own_thread, tempfile_path};
use crate::report::{self, Report, Table, median};
use crate::scen_add::{Measured, clear, measure};

/// A test-only key (the repository's test fixture): the stand-in does not check signatures.
const TEST_KEY: &str =
    include_str!("../../tests/fixtures/push/test-only-fcm-service-account.key.pem");

/// Answers the token endpoint and FCM sends at once, counting sends (on a thread of its own).
fn fcm_stand_in(sends: Arc<AtomicU64>) -> Result<String> {
    let router = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                r#"{"access_token":"bench","expires_in":3600,"token_type":"Bearer"}"#
            }),
        )
        .fallback(move || {
            sends.fetch_add(1, Ordering::Relaxed);
            async { r#"{"name":"projects/bench/messages/1"}"# }
        });
    serve_on_own_thread(router)
}

/// addMessage params per connection; with `tokens`, connection i carries token i % tokens.
fn params(connections: u64, payload: &str, tokens: Option<u64>) -> Arc<Vec<Template>> {
    let token = |i: u64| {
        if let Some(tokens) = tokens {
            let t = i % tokens;
            format!(r#","pushNotificationToken":{{"type":"fcm","token":"bench-token-{t}"}}"#)
        } else {
            String::new()
        }
    };
    Arc::new(
        (0..connections)
            .map(|i| {
                let params = format!(
                    r#"{{"connectionId":"bench-{i}","recipientDids":["{}"],"payload":{payload}{}}}"#,
                    crate::client::DID,
                    token(i)
                );
                Template::new("addMessage", &params)
            })
            .collect(),
    )
}

/// One closed-loop measurement, with the CPU time the instance and Redis spent per call (µs):
/// unlike throughput, barely moved by other work on the machine.
async fn measure_cpu(
    s: &Settings,
    mpr: &Mpr,
    redis: &Redis,
    clients: usize,
    params: Arc<Vec<Template>>,
) -> Result<(Measured, f64, f64)> {
    let (mpr_before, redis_before) = (cpu_secs(mpr.pid), cpu_secs(redis.pid));
    let m = measure(mpr.ws_port, clients, params, s.warmup, s.duration, None).await?;
    let per_call = |before: f64, pid: u32| (cpu_secs(pid) - before) * 1e6 / m.calls.max(1) as f64;
    let (mpr_us, redis_us) = (
        per_call(mpr_before, mpr.pid),
        per_call(redis_before, redis.pid),
    );
    Ok((m, mpr_us, redis_us))
}

pub async fn run(s: &Settings, report: &mut Report) -> Result<()> {
    eprintln!("== push: starting redis-server, an FCM stand-in and two mpr instances");
    let redis = Redis::start(&s.redis_server).await?;
    let sends = Arc::new(AtomicU64::new(0));
    let fcm_url = fcm_stand_in(sends.clone())?;
    let account = tempfile_path("firebase-bench.json");
    let account_json = serde_json::json!({
        "type": "service_account", "project_id": "bench", "private_key_id": "bench",
        "private_key": TEST_KEY, "client_email": "bench@bench.iam.gserviceaccount.com",
        "token_uri": format!("{fcm_url}/token"),
    });
    std::fs::write(&account, account_json.to_string())?;
    let plain = Mpr::start(&s.mpr_bin, &redis.url(), "push-off", &[]).await?;
    let push_env = [
        (
            "FIREBASE_CFG_FILE".to_owned(),
            account.display().to_string(),
        ),
        ("FCM_BASE_URL".to_owned(), fcm_url),
    ];
    let pushing = Mpr::start(&s.mpr_bin, &redis.url(), "push-on", &push_env).await?;
    let mut r = redis.conn().await?;
    let payload = jwe_payload(None);
    let without = params(s.connections, &payload, None);
    let with = params(s.connections, &payload, Some(s.push_tokens));

    let mut table = Table::new(&[
        "clients",
        "without pushes: addMessage/s",
        "p50 / p99",
        "with pushes: addMessage/s",
        "p50 / p99",
        "with / without",
        "mpr CPU per call, without → with",
        "Redis CPU per call, without → with",
        "pushes sent/s",
    ]);
    for &c in &s.clients {
        let (mut off, mut on, mut ratios, mut sent) = (vec![], vec![], vec![], vec![]);
        let (mut mpr_off, mut mpr_on, mut redis_off, mut redis_on) =
            (vec![], vec![], vec![], vec![]);
        for run in 0..s.runs {
            eprintln!("   push: {c} clients, run {}/{}", run + 1, s.runs);
            clear(&mut r).await?;
            r.clear("mpr:push:*").await?;
            s.settle(&format!("push, {c} clients, run {}", run + 1), report)
                .await;
            let (a, mpr_us, redis_us) = measure_cpu(s, &plain, &redis, c, without.clone()).await?;
            mpr_off.push(mpr_us);
            redis_off.push(redis_us);
            clear(&mut r).await?;
            r.clear("mpr:push:*").await?;
            s.settle(&format!("push, {c} clients, run {}", run + 1), report)
                .await;
            let before = sends.load(Ordering::Relaxed);
            let (b, mpr_us, redis_us) = measure_cpu(s, &pushing, &redis, c, with.clone()).await?;
            mpr_on.push(mpr_us);
            redis_on.push(redis_us);
            let pushed = sends.load(Ordering::Relaxed) - before;
            eprintln!(
                "      without {:.0}/s (p50 {:.3}, p99 {:.3} ms); with {:.0}/s (p50 {:.3}, p99 {:.3} ms); {pushed} pushes",
                a.rate, a.p50, a.p99, b.rate, b.p50, b.p99
            );
            if a.errors + b.errors > 0 {
                report.note(format!(
                    "push, {c} clients: failed calls; first: {}",
                    a.first_error
                        .as_ref()
                        .or(b.first_error.as_ref())
                        .cloned()
                        .unwrap_or_default()
                ));
            }
            ratios.push(b.rate / a.rate);
            sent.push(pushed as f64 / (s.duration + s.warmup).as_secs_f64());
            off.push(a);
            on.push(b);
        }
        let cpu = |off: &[f64], on: &[f64]| format!("{:.1} → {:.1} µs", median(off), median(on));
        let cell = |m: &[Measured]| {
            let rates: Vec<f64> = m.iter().map(|x| x.rate).collect();
            let p50: Vec<f64> = m.iter().map(|x| x.p50).collect();
            let p99: Vec<f64> = m.iter().map(|x| x.p99).collect();
            (report::rate_of_runs(&rates), report::p50_p99(&p50, &p99))
        };
        let (off_rate, off_lat) = cell(&off);
        let (on_rate, on_lat) = cell(&on);
        table.row(vec![
            c.to_string(),
            off_rate,
            off_lat,
            on_rate,
            on_lat,
            report::pct(median(&ratios)),
            cpu(&mpr_off, &mpr_on),
            cpu(&redis_off, &redis_on),
            format!("{:.0}", median(&sent)),
        ]);
    }
    clear(&mut r).await?;
    std::fs::remove_file(&account).ok();
    report.section(format!(
        "## addMessage with push notifications\n\n\
         Two instances on one Redis, measured one after the other in each run: one without push settings, \
         one with FCM configured against a local stand-in that answers at once. Every call to the second \
         carries its connection's `pushNotificationToken` ({} connections sharing {} tokens), so each add also \
         writes the token beside the queue and queues a push; workers send at most one push per token per \
         5 s window (`PUSH_DEDUP_WINDOW_MS`), the rest are counted as deduplicated. Closed loop as in \
         \"addMessage throughput\"; the ratio is the median of the per-run ratios. CPU per call is the \
         CPU time of that mpr instance (and of Redis) during the measurement divided by its calls.\n\n{}",
        s.connections,
        s.push_tokens,
        table.render()
    ));
    Ok(())
}
