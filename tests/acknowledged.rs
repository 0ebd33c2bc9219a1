//! An error reply means "not stored". Writers add under faults — Redis frozen past the call
//! timeout, its client connections killed, Redis kill -9 (AOF `always`) and restarted, an
//! instance kill -9 — then every queue is drained and reconciled: every acknowledged message is
//! delivered exactly once, none that got an error is, and each writer's messages come out in
//! the order it sent them.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use support::{Client, Redis, Server, texts, unique_id};

const WRITERS: usize = 4;
const DID: &str = "did:key:z6MkAcknowledged";

#[derive(Default)]
struct Outcomes {
    acknowledged: Vec<u64>,
    /// "not stored", or Redis refused the call.
    errored: Vec<u64>,
    /// "the outcome is unknown": Redis stayed away longer than the settle timeout.
    unknown: Vec<u64>,
    /// Sent, but the socket died before any reply.
    unanswered: Vec<u64>,
}

/// Adds `<tag> <n>` for n = 0, 1, … one at a time until `stop`, through the first of `urls`
/// that accepts a socket, reconnecting when a socket dies.
async fn write(
    connection: String,
    tag: String,
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Outcomes {
    let mut outcomes = Outcomes::default();
    let mut client: Option<Client> = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            for url in &urls {
                if let Some(connected) = Client::try_connect(url).await {
                    client = Some(connected);
                    break;
                }
            }
        }
        let Some(socket) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let params = json!({"connectionId": connection, "recipientDids": [DID], "payload": support::payload(&format!("{tag} {n}"))});
        match socket
            .try_request("addMessage", params, Duration::from_secs(60))
            .await
        {
            Some(reply) if reply.get("result").is_some() => outcomes.acknowledged.push(n),
            Some(reply) => {
                assert_eq!(reply["error"]["code"], -32000, "{reply}");
                let message = reply["error"]["message"].as_str().unwrap();
                if message.contains("outcome is unknown") {
                    outcomes.unknown.push(n);
                } else {
                    outcomes.errored.push(n);
                }
            }
            None => {
                outcomes.unanswered.push(n);
                client = None;
            }
        }
        n += 1;
    }
    outcomes
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_delivered_once_and_no_refused_one_is() {
    let dir = std::env::temp_dir().join(unique_id("mpr-aof"));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_string_lossy().into_owned();
    let mut redis = Redis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &dir,
    ]);
    // The settle timeout outlasts the freeze: every lost reply is settled.
    let env = [
        ("REDIS_TIMEOUT_MS", "300"),
        ("ADD_SETTLE_TIMEOUT_MS", "5000"),
    ];
    let survivor = Server::start(&redis.url(), &env).await;
    let mut doomed = Server::start(&redis.url(), &env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Half of them start on the instance that will be killed, then move to the other.
        let mut urls = vec![survivor.url()];
        if w % 2 == 1 {
            urls.insert(0, doomed.url());
        }
        let connection = unique_id("c");
        let task = tokio::spawn(write(
            connection.clone(),
            format!("w{w}"),
            urls,
            stop.clone(),
        ));
        writers.push((connection, format!("w{w}"), task));
    }
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    // One round in the suite; MPR_RECONCILE_ROUNDS=50 for a long run (docs/performance.md).
    let rounds: usize = std::env::var("MPR_RECONCILE_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(1);
    for _ in 0..rounds {
        pause(800).await;
        // Frozen past the call timeout: the adds in flight time out, their outcome hidden.
        let pid = redis.pid();
        signal(pid, "-STOP");
        pause(1500).await;
        signal(pid, "-CONT");
        pause(800).await;
        // Connections broken under the calls.
        for _ in 0..3 {
            redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
            pause(150).await;
        }
        pause(600).await;
        // Redis dies; what it acknowledged is on disk.
        redis.kill();
        pause(500).await;
        redis.restart();
    }
    pause(800).await;
    doomed.kill();
    pause(1500).await;
    stop.store(true, Ordering::Relaxed);

    let mut drain = Client::connect(&survivor.url()).await;
    let (
        mut acknowledged,
        mut errored,
        mut unknown,
        mut unanswered,
        mut lost,
        mut duplicated,
        mut delivered_errored,
        mut reordered,
    ) = (0, 0, 0, 0, 0, 0, 0, 0);
    for (connection, tag, task) in writers {
        let outcomes = task.await.expect("writer");
        let mut delivered: Vec<u64> = Vec::new();
        loop {
            let taken = drain
                .take(json!({"connectionId": connection, "limit": 1000, "deleteMessages": true}))
                .await;
            if taken.is_empty() {
                break;
            }
            for text in texts(&taken) {
                let n = text
                    .strip_prefix(&format!("{tag} "))
                    .expect("this writer's")
                    .parse()
                    .unwrap();
                delivered.push(n);
            }
        }
        let seen: HashSet<u64> = delivered.iter().copied().collect();
        duplicated += delivered.len() - seen.len();
        reordered += delivered.windows(2).filter(|w| w[0] >= w[1]).count();
        lost += outcomes
            .acknowledged
            .iter()
            .filter(|n| !seen.contains(n))
            .count();
        delivered_errored += outcomes.errored.iter().filter(|n| seen.contains(n)).count();
        acknowledged += outcomes.acknowledged.len();
        errored += outcomes.errored.len();
        unknown += outcomes.unknown.len();
        unanswered += outcomes.unanswered.len();
    }
    eprintln!(
        "acknowledged {acknowledged}, errored {errored}, outcome unknown {unknown}, unanswered {unanswered}; \
         lost {lost}, duplicated {duplicated}, errored yet delivered {delivered_errored}, reordered {reordered}"
    );
    assert!(
        acknowledged > 100,
        "the writers made progress: {acknowledged}"
    );
    assert_eq!(lost, 0, "acknowledged messages lost");
    assert_eq!(duplicated, 0, "messages delivered twice");
    assert_eq!(
        delivered_errored, 0,
        "messages that got an error reply were stored"
    );
    assert_eq!(reordered, 0, "a writer's messages out of order");
    let _ = std::fs::remove_dir_all(&dir);
}
