//! Redis Sentinel failover under load: a master with two replicas and three sentinels
//! (`testkit::RedisSentinel`, down after 1 s); writers and consumers over three instances
//! (`support::reconcile`) while the master is killed -9 and a sentinel promotes a replica, then
//! an instance is killed -9. The instances ask the sentinels for the new master and go on.
//! With REDIS_WAIT_REPLICAS=1 no acknowledged message may be lost; nothing that got an error
//! is delivered, nothing comes twice after its removal, order holds.
//!
//! Two replicas, so that the promoted one has a replica of its own and writes waiting for one
//! (WAIT 1) are acknowledged again after the failover.

mod support;

use std::time::{Duration, Instant};

use support::reconcile::{VISIBILITY_TIMEOUT, reconcile};
use support::{Client, Redis, Server, unique_id};

/// Adds through `client` until one is acknowledged; how long that took.
async fn first_acknowledged_add(client: &mut Client, connection: &str) -> Duration {
    let start = Instant::now();
    for n in 0.. {
        let params = serde_json::json!({"connectionId": connection, "recipientDids": ["did:key:z6MkProbe"],
                                        "payload": support::payload(&format!("probe {n}"))});
        if let Some(reply) = client
            .try_request("addMessage", params, Duration::from_secs(30))
            .await
            && reply.get("result").is_some()
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_a_sentinel_failover_loses_nothing_acknowledged() {
    let mut redis = Redis::start_sentinel();
    let visibility = VISIBILITY_TIMEOUT.as_millis().to_string();
    // Calls fail until a sentinel has promoted a replica (down after 1 s); lost replies are
    // settled against the new master.
    let env = [
        ("REDIS_TIMEOUT_MS", "500"),
        ("ADD_SETTLE_TIMEOUT_MS", "8000"),
        ("VISIBILITY_TIMEOUT_MS", visibility.as_str()),
        ("REDIS_WAIT_REPLICAS", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "500"),
    ];
    // An instance of its own that probes when adds are acknowledged again.
    let probe = Server::start(&redis, &env).await;
    let mut prober = Client::connect(&probe.url()).await;
    let probed = unique_id("c");
    let counts = reconcile(&mut redis, &env, async |redis: &mut Redis| {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sentinel = redis.sentinel_mut().expect("sentinel");
        let master = sentinel.master_port().await.expect("a master");
        sentinel.kill_node(master).expect("kill -9 the master");
        let killed = Instant::now();
        let promoted = sentinel
            .wait_failover(master, Duration::from_secs(60))
            .await
            .expect("a sentinel promotes a replica");
        let promoted_after = killed.elapsed();
        let acknowledged_after =
            first_acknowledged_add(&mut prober, &probed).await + promoted_after;
        eprintln!(
            "master {master} killed; replica {promoted} promoted after {promoted_after:?}; \
             first acknowledged add after {acknowledged_after:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
    })
    .await;
    counts.assert_sound();
    assert_eq!(
        counts.lost, 0,
        "acknowledged messages lost with REDIS_WAIT_REPLICAS=1"
    );
}
