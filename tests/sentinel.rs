//! Redis Sentinel failover under load: a master with two replicas and three sentinels
//! (`testkit::RedisSentinel`, down after 1 s); writers and consumers over three instances
//! (`support::reconcile`) while the master is killed -9 and a sentinel promotes a replica, then
//! an instance is killed -9. The instances ask the sentinels for the new master and go on.
//! With REDIS_WAIT_REPLICAS=1 no acknowledged message may be lost; nothing that got an error
//! is delivered, nothing comes twice after its removal, order holds.
//!
//! A live session whose instance's event stream is on the master keeps receiving through the
//! failover (`support::live_failover`, as on a cluster).
//!
//! Two replicas, so that the promoted one has a replica of its own and writes waiting for one
//! (WAIT 1) are acknowledged again after the failover.
//!
//! Credentials: the sentinels' (REDIS_SENTINEL_USERNAME/PASSWORD) and the master's (REDIS_URL)
//! are each sent where they belong, and each, when wrong, stops the server naming its settings.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_keeps_receiving_when_the_master_fails_over() {
    let mut redis = Redis::start_sentinel();
    support::live_failover::a_live_session_keeps_receiving(&mut redis).await;
}

const SENTINEL_USER: &str = "watcher";
const SENTINEL_PASSWORD: &str = "sentinel-secret";
const MASTER_USER: &str = "mpr";
const MASTER_PASSWORD: &str = "master-secret";

/// The sentinels want [`SENTINEL_USER`]'s password, the master [`MASTER_USER`]'s (its `default`
/// user may replicate and answer the sentinels, but touch no data); each is refused by name
/// when wrong, and with both right two instances serve.
#[tokio::test]
async fn the_sentinels_and_the_master_take_their_own_credentials() {
    let mut opts =
        testkit::RedisSentinelOpts::new(&testkit::redis_server_bin()).expect("free ports");
    opts.replicas = 1;
    let own = |user: &str, password: &str| {
        ["--user", user, "on", &format!(">{password}"), "~*", "+@all"].map(String::from)
    };
    opts.sentinel_args = own(SENTINEL_USER, SENTINEL_PASSWORD).into();
    let default = [
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-@read",
        "-@write",
        "-@scripting",
    ];
    opts.node_args = default.map(String::from).into();
    opts.node_args.extend(own(MASTER_USER, MASTER_PASSWORD));
    let redis = Redis::start_sentinel_with(opts);
    let master_url = |password: &str| {
        let url = redis.url();
        let rest = url.strip_prefix("redis://").unwrap();
        format!("redis://{MASTER_USER}:{password}@{rest}")
    };
    let exit_message = |url: String, sentinel_password: &str| {
        let mut env: Vec<(String, String)> = redis.topology_env();
        env.push(("REDIS_URL".into(), url));
        env.push(("REDIS_SENTINEL_USERNAME".into(), SENTINEL_USER.into()));
        env.push(("REDIS_SENTINEL_PASSWORD".into(), sentinel_password.into()));
        let (code, said) = support::run_until_exit(&env, Duration::from_secs(30));
        assert_eq!(code, Some(1), "{said}");
        said
    };
    let said = exit_message(master_url(MASTER_PASSWORD), "wrong");
    assert!(
        said.contains(
            "server stopped: REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD: Redis refused"
        ),
        "{said}"
    );
    assert!(
        !said.contains("wrong"),
        "the password is not logged: {said}"
    );
    let said = exit_message(master_url("wrong"), SENTINEL_PASSWORD);
    assert!(
        said.contains("server stopped: REDIS_URL: Redis refused this user"),
        "{said}"
    );
    assert!(
        !said.contains("wrong"),
        "the password is not logged: {said}"
    );

    let url = master_url(MASTER_PASSWORD);
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_SENTINEL_USERNAME", SENTINEL_USER),
        ("REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD),
    ];
    let a = Server::start(&redis, &env).await;
    let b = Server::start(&redis, &env).await;
    let mut sender = Client::connect(&a.url()).await;
    let mut mediator = Client::connect(&b.url()).await;
    let live = unique_id("c");
    mediator.add_live_session(&live, "session").await;
    let id = sender.add(&live, "did:key:z6MkSentinel", "live").await;
    let push = mediator
        .next_push(Duration::from_secs(20))
        .await
        .expect("a push through the other instance");
    assert_eq!(push["messages"][0]["id"], id.as_str(), "{push}");
    let offline = unique_id("c");
    sender
        .add(&offline, "did:key:z6MkSentinel", "waiting")
        .await;
    let taken = mediator
        .take(serde_json::json!({"connectionId": offline, "deleteMessages": true}))
        .await;
    assert_eq!(support::texts(&taken), ["waiting"]);
}
