//! Re-delivery in live mode: what was pushed to a mediator socket that hung, closed or whose
//! instance died reaches the connection's current live session, once and in order; in-flight
//! messages whose visibility timeout passes are pushed to the live session; a mass expiry is
//! worked off in bounded steps.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, Redis, Server, eventually, texts, unique_id};

const DID: &str = "did:key:z6MkRedelivery";

/// The texts of the messages pushed to `client` until `count` arrived (or `within` passed),
/// then anything else pushed in `quiet` after: a duplicate would show there.
async fn pushed_texts(
    client: &mut Client,
    count: usize,
    within: Duration,
    quiet: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    while received.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(push) = client.next_push(left).await else {
            break;
        };
        received.extend(texts(push["messages"].as_array().unwrap()));
    }
    while let Some(push) = client.next_push(quiet).await {
        received.extend(texts(push["messages"].as_array().unwrap()));
    }
    received
}

fn numbered(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag} {i}")).collect()
}

#[tokio::test]
async fn a_new_session_receives_what_a_hung_mediator_was_pushed_in_order_and_once() {
    let redis = Redis::start();
    let a = Server::start(&redis, &[]).await;
    let b = Server::start(&redis, &[]).await;
    let connection = unique_id("c");
    let mut hung = Client::connect(&a.url()).await;
    hung.add_live_session(&connection, &unique_id("s")).await;
    let mut sender = Client::connect(&b.url()).await;
    let sent = numbered("pushed to the hung one", 5);
    for text in &sent {
        sender.add(&connection, DID, text).await;
    }
    // Pushed to the first mediator, which never acknowledges them (it hangs from here on).
    assert_eq!(
        pushed_texts(&mut hung, 5, Duration::from_secs(5), Duration::ZERO).await,
        sent
    );
    // The recipient comes back through a mediator on the other instance.
    let mut fresh = Client::connect(&b.url()).await;
    let started = Instant::now();
    fresh.add_live_session(&connection, &unique_id("s")).await;
    sender.add(&connection, DID, "after the rebind").await;
    let received = pushed_texts(
        &mut fresh,
        6,
        Duration::from_secs(5),
        Duration::from_millis(700),
    )
    .await;
    let mut expected = sent.clone();
    expected.push("after the rebind".into());
    assert_eq!(received, expected, "every message once, in queue order");
    eprintln!("re-delivered to the new session in {:?}", started.elapsed());
    drop(hung);
}

#[tokio::test]
async fn a_closed_mediator_socket_gives_back_what_was_pushed_to_it_at_once() {
    let redis = Redis::start();
    // Far longer than the test: only the close can bring the messages back.
    let server = Server::start(&redis, &[("VISIBILITY_TIMEOUT_MS", "600000")]).await;
    let connection = unique_id("c");
    let mut mediator = Client::connect(&server.url()).await;
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    let sent = numbered("pushed", 4);
    let mut sender = Client::connect(&server.url()).await;
    for text in &sent {
        sender.add(&connection, DID, text).await;
    }
    assert_eq!(
        pushed_texts(&mut mediator, 4, Duration::from_secs(5), Duration::ZERO).await,
        sent
    );
    drop(mediator);
    let took = eventually(Duration::from_secs(2), async || {
        sender.count(&connection).await == 4
    })
    .await;
    eprintln!("pending again {took:?} after the close");
    assert_eq!(
        texts(&sender.take(json!({"connectionId": connection})).await),
        sent,
        "back in their original place"
    );
}

#[tokio::test]
async fn what_a_killed_instance_pushed_reaches_the_session_bound_on_a_survivor() {
    let redis = Redis::start();
    let mut doomed = Server::start(&redis, &[]).await;
    let survivor = Server::start(&redis, &[]).await;
    let connection = unique_id("c");
    let mut mediator = Client::connect(&doomed.url()).await;
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    let mut sender = Client::connect(&survivor.url()).await;
    let sent = numbered("pushed through the doomed instance", 3);
    for text in &sent {
        sender.add(&connection, DID, text).await;
    }
    assert_eq!(
        pushed_texts(&mut mediator, 3, Duration::from_secs(5), Duration::ZERO).await,
        sent
    );
    doomed.kill();
    let mut fresh = Client::connect(&survivor.url()).await;
    fresh.add_live_session(&connection, &unique_id("s")).await;
    let received = pushed_texts(
        &mut fresh,
        3,
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(received, sent);
}

#[tokio::test]
async fn taken_messages_whose_timeout_passes_are_pushed_to_the_live_session() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[("VISIBILITY_TIMEOUT_MS", "1000")]).await;
    let connection = unique_id("c");
    let mut puller = Client::connect(&server.url()).await;
    let sent = numbered("taken, never removed", 3);
    for text in &sent {
        puller.add(&connection, DID, text).await;
    }
    assert_eq!(
        texts(&puller.take(json!({"connectionId": connection})).await),
        sent
    );
    let mut live = Client::connect(&server.url()).await;
    live.add_live_session(&connection, &unique_id("s")).await;
    // Within the timeout and about a second of sweep.
    let received = pushed_texts(
        &mut live,
        3,
        Duration::from_secs(4),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(received, sent);
    assert_eq!(
        puller.count(&connection).await,
        0,
        "in flight to the session"
    );
}

#[tokio::test]
async fn a_mass_expiry_never_holds_redis_for_long() {
    // Single node: CONFIG SET and SLOWLOG are node-local.
    if support::single_node_only() {
        return;
    }
    const MESSAGES: usize = 12_000;
    let redis = Redis::start();
    let server = Server::start(
        &redis,
        &[
            ("VISIBILITY_TIMEOUT_MS", "3000"),
            ("MAX_TAKE_MESSAGES", "12000"),
            ("BATCH_MAX_CALLS", "500"),
        ],
    )
    .await;
    let connection = unique_id("c");
    let mut client = Client::connect(&server.url()).await;
    // Queued in batches of calls (one frame each) to keep the test quick.
    let body = serde_json::to_string(&support::payload("expiring")).unwrap();
    for chunk in 0..MESSAGES / 500 {
        let batch: Vec<String> = (0..500)
            .map(|i| {
                format!(
                    r#"{{"jsonrpc":"2.0","method":"addMessage","params":{{"connectionId":"{connection}","recipientDids":["{DID}"],"payload":{body}}},"id":{}}}"#,
                    chunk * 500 + i
                )
            })
            .collect();
        client.send_raw(format!("[{}]", batch.join(",")));
        let reply = client.next_frame(Duration::from_secs(30)).await;
        let Some(support::Incoming::Text(reply)) = reply else {
            panic!("no reply to a batch: {reply:?}");
        };
        assert!(
            !reply.contains("error"),
            "{}",
            &reply[..reply.len().min(300)]
        );
    }
    assert_eq!(client.count(&connection).await, MESSAGES as u64);
    // One take: all of them go in flight with one deadline.
    client
        .take(json!({"connectionId": connection, "limit": MESSAGES}))
        .await;
    assert_eq!(client.count(&connection).await, 0);
    // Everything is in flight and expires at once. Without bounded steps one script moves all
    // 12 000 back (measured: 174 ms); a step of 100 takes 2-9 ms, up to ~36 ms with both cores
    // taken by other work: 80 ms tells them apart.
    redis.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "80000"]);
    redis.cli(&["SLOWLOG", "RESET"]);
    eventually(Duration::from_secs(20), async || {
        client.count(&connection).await == MESSAGES as u64
    })
    .await;
    let slow = redis.cli(&["SLOWLOG", "GET", "10"]);
    let slow_count = redis.cli(&["SLOWLOG", "LEN"]);
    assert_eq!(slow_count.trim(), "0", "commands slower than 80 ms: {slow}");
}
