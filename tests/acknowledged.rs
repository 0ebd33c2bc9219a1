//! An error reply means "not stored", on one redis-server: the reconcile of
//! `support::reconcile` under Redis frozen past the call timeout, its client connections
//! killed, Redis kill -9 (AOF `always`) and restarted, and an instance kill -9. All counts must
//! be 0. `MPR_RECONCILE_ROUNDS` repeats the Redis faults (docs/performance.md). The same on a
//! Redis Cluster, through a primary failover: `tests/failover.rs`.

mod support;

use std::time::Duration;

use support::reconcile::{FREEZE, VISIBILITY_TIMEOUT, reconcile};
use support::{Redis, unique_id};

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_is_delivered_once_and_no_refused_one_is() {
    // Single node: kills and restarts its redis-server (AOF on).
    if support::single_node_only() {
        return;
    }
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
    let visibility = VISIBILITY_TIMEOUT.as_millis().to_string();
    let env = [
        ("REDIS_TIMEOUT_MS", "300"),
        ("ADD_SETTLE_TIMEOUT_MS", "5000"),
        ("VISIBILITY_TIMEOUT_MS", visibility.as_str()),
    ];
    // One round in the suite; MPR_RECONCILE_ROUNDS=50 for a long run (docs/performance.md).
    let rounds: usize = std::env::var("MPR_RECONCILE_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(1);
    let counts = reconcile(&mut redis, &env, async |redis: &mut Redis| {
        let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
        for _ in 0..rounds {
            pause(800).await;
            // Frozen past the call timeout: the calls in flight time out, their outcome hidden.
            let pid = redis.pid();
            signal(pid, "-STOP");
            tokio::time::sleep(FREEZE).await;
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
    })
    .await;
    counts.assert_sound();
    assert_eq!(counts.lost, 0, "acknowledged messages lost");
    let _ = std::fs::remove_dir_all(&dir);
}

/// How many calls Redis refused for arriving past their fence (`INFO errorstats`).
fn fenced_calls(redis: &Redis) -> u64 {
    let stats = redis.cli(&["INFO", "errorstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("errorstat_DEADLINE:count="))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// Calls that reach a frozen Redis wait in its socket buffers; when it resumes past their
/// deadline, they do nothing. Every add here was answered with an error ("outcome unknown":
/// Redis never answered), and none of them is stored afterwards: without the fence, every one
/// would be.
#[tokio::test]
async fn adds_whose_caller_gave_up_never_take_effect_later() {
    // Single node: freezes its redis-server.
    if support::single_node_only() {
        return;
    }
    const ADDS: usize = 8;
    let redis = Redis::start();
    let env = [
        ("REDIS_TIMEOUT_MS", "300"),
        ("ADD_SETTLE_TIMEOUT_MS", "300"),
    ];
    let server = support::Server::start(&redis, &env).await;
    let mut client = support::Client::connect(&server.url()).await;
    let connection = unique_id("c");
    let before = fenced_calls(&redis);

    signal(redis.pid(), "-STOP");
    for id in 0..ADDS {
        let params = serde_json::json!({"connectionId": connection, "recipientDids": ["did:x"],
            "payload": support::payload(&format!("m{id}"))});
        let request = serde_json::json!({"jsonrpc": "2.0", "method": "addMessage", "id": id, "params": params});
        client.send_raw(request.to_string());
    }
    let mut replies = Vec::new();
    while replies.len() < ADDS {
        match client.next_frame(Duration::from_secs(60)).await {
            Some(support::Incoming::Text(text)) => replies.push(text),
            other => panic!("a reply to every add, got {} then {other:?}", replies.len()),
        }
    }
    signal(redis.pid(), "-CONT");
    for reply in &replies {
        assert!(reply.contains("\"error\""), "{reply}");
        assert!(reply.contains("outcome is unknown"), "{reply}");
    }

    // Redis runs what waited for it, in order: each add either stores its message or is
    // refused; wait for all of them to have run.
    let stored = || -> u64 {
        let records = redis.cli(&["HVALS", &format!("mpr:{{{connection}}}:msg")]);
        // A record is "<header>\n<body>" (a tombstone is empty); the header has tabs.
        records.lines().filter(|line| line.contains('\t')).count() as u64
    };
    support::eventually(Duration::from_secs(30), async || {
        stored() + fenced_calls(&redis) - before >= ADDS as u64
    })
    .await;
    assert_eq!(stored(), 0, "adds that took effect after their error reply");
    assert_eq!(client.count(&connection).await, 0);
}
