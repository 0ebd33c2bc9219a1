//! Failure paths: Redis going away and coming back, graceful shutdown, and many clients racing
//! on one queue across instances. Nothing acknowledged may be lost or duplicated.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Incoming, Redis, Server, texts, unique_id};

const DID: &str = "did:key:z6MkRes";

#[tokio::test]
async fn redis_stop_gives_errors_not_lies_and_service_resumes_when_it_returns() {
    // Single node: stops and restarts its redis-server.
    if support::single_node_only() {
        return;
    }
    let mut redis = Redis::start();
    let env = [("LIVENESS_TIMEOUT_MS", "1000"), ("REDIS_TIMEOUT_MS", "300")];
    let server = Server::start(&redis, &env).await;
    let mut mediator = Client::connect(&server.url()).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    mediator.add_live_session(&connection, "s1").await;

    redis.stop();
    let add = json!({"connectionId": connection, "recipientDids": [DID], "payload": support::payload("x")});
    for method in [
        "addMessage",
        "takeFromQueue",
        "getAvailableMessageCount",
        "getLiveSession",
    ] {
        let started = Instant::now();
        let error = client.call_err(method, add.clone()).await;
        assert_eq!(error["code"], -32000, "{method}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("Redis"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(1900),
            "{method} answered within the client's 2 s timeout"
        );
    }
    assert_eq!(server.http_get("/ready").await.0, 503);
    assert_eq!(server.http_get("/health").await.0, 200);
    assert_eq!(
        client.call("ping", Value::Null).await,
        "pong",
        "sockets stay open"
    );

    // Redis comes back empty (no persistence): calls work again by themselves, and the live
    // session this instance still serves is bound again.
    redis.restart();
    let started = Instant::now();
    loop {
        let reply = client
            .request("getLiveSession", json!({"connectionId": connection}))
            .await;
        if reply["result"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not recovered: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.http_get("/ready").await.0, 200);
    let id = client.add(&connection, DID, "after the restart").await;
    let push = mediator
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push after recovery");
    assert_eq!(push["messages"][0]["id"], id.as_str());
}

#[tokio::test]
async fn sigterm_finishes_calls_closes_sockets_with_1001_and_ends_sessions_at_once() {
    // Single node: freezes its redis-server.
    if support::single_node_only() {
        return;
    }
    let redis = Redis::start();
    // A long liveness timeout: only a clean deregistration can end the sessions quickly.
    let env = [("LIVENESS_TIMEOUT_MS", "60000")];
    let mut a = Server::start(&redis, &env).await;
    let b = Server::start(&redis, &env).await;
    let mut mediator = Client::connect(&a.url()).await;
    let mut other = Client::connect(&b.url()).await;
    let connection = unique_id("c");
    mediator.add_live_session(&connection, "s").await;
    let request = json!({"jsonrpc": "2.0", "method": "addMessage", "id": 1,
        "params": {"connectionId": unique_id("c2"), "recipientDids": [DID], "payload": support::payload("last")}});
    // Redis freezes, so the call is surely in progress when SIGTERM arrives.
    let thaw = redis.freeze(Duration::from_millis(600));
    mediator.send_raw(request.to_string());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let status = a.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut replied = false;
    let mut close_code = None;
    while let Some(frame) = mediator.next_frame(Duration::from_secs(2)).await {
        match frame {
            Incoming::Text(text) => {
                let reply: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(reply["id"], 1);
                assert!(reply["result"]["messageId"].is_string(), "{reply}");
                replied = true;
            }
            Incoming::Closed(code) => {
                close_code = code;
                break;
            }
        }
    }
    assert!(
        replied,
        "the call in progress was answered before the close"
    );
    thaw.join().unwrap();
    assert_eq!(close_code, Some(1001));
    let live = other
        .call("getLiveSession", json!({"connectionId": connection}))
        .await;
    assert_eq!(live, false);
    let instances = redis.cli(&["ZCARD", "mpr:instances"]);
    assert_eq!(instances, "1", "only B is registered");
}

#[tokio::test]
async fn concurrent_adds_and_takes_across_instances_lose_nothing_duplicate_nothing_keep_order() {
    let redis = Redis::start();
    let a = Server::start(&redis, &[]).await;
    let b = Server::start(&redis, &[]).await;
    let connection = unique_id("c");
    const PRODUCERS: usize = 8;
    const EACH: usize = 60;

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let url = if p % 2 == 0 { a.url() } else { b.url() };
        let connection = connection.clone();
        producers.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            for i in 0..EACH {
                client.add(&connection, DID, &format!("{p}:{i}")).await;
            }
        }));
    }
    // Takers race the producers: half delete on take, half take and then acknowledge.
    let mut takers = Vec::new();
    for t in 0..4 {
        let url = if t % 2 == 0 { a.url() } else { b.url() };
        let connection = connection.clone();
        takers.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            let mut got = Vec::new();
            let mut idle_since = Instant::now();
            while idle_since.elapsed() < Duration::from_millis(1500) {
                let delete = t % 2 == 0;
                let batch = client
                    .take(json!({"connectionId": connection, "limit": 7, "deleteMessages": delete}))
                    .await;
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle_since = Instant::now();
                if !delete {
                    let ids = support::ids(&batch);
                    client
                        .call(
                            "removeMessages",
                            json!({"connectionId": connection, "messageIds": ids}),
                        )
                        .await;
                }
                got.extend(texts(&batch));
            }
            got
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let mut seen = HashSet::new();
    for taker in takers {
        let got = taker.await.unwrap();
        // Each taker sees every producer's messages in the order they were added.
        let mut last: HashMap<usize, usize> = HashMap::new();
        for text in &got {
            let (p, i) = text.split_once(':').unwrap();
            let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
            if let Some(previous) = last.insert(p, i) {
                assert!(previous < i, "producer {p}: {previous} then {i}");
            }
            assert!(seen.insert(text.clone()), "{text} delivered twice");
        }
    }
    assert_eq!(
        seen.len(),
        PRODUCERS * EACH,
        "every message delivered exactly once"
    );
    let mut check = Client::connect(&a.url()).await;
    assert_eq!(check.count(&connection).await, 0);
}

#[tokio::test]
async fn the_function_library_is_loaded_again_when_redis_loses_it() {
    // Single node: FUNCTION FLUSH and FUNCTION LIST are node-local.
    if support::single_node_only() {
        return;
    }
    let redis = Redis::start();
    let server = Server::start(&redis, &[]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    client.add(&connection, DID, "before").await;
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains("mpr_"));

    // As after a restart without persistence, or a failover to a node that never had it.
    assert_eq!(redis.cli(&["FUNCTION", "FLUSH"]), "OK");
    assert_eq!(redis.cli(&["FUNCTION", "LIST"]), "");
    client.add(&connection, DID, "after").await;
    let taken = client.take(json!({"connectionId": connection})).await;
    assert_eq!(texts(&taken), ["before", "after"]);
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains("mpr_"));
}

#[tokio::test]
async fn sigterm_answers_every_call_already_received() {
    // Single node: freezes its redis-server.
    if support::single_node_only() {
        return;
    }
    const CALLS: u64 = 40;
    let redis = Redis::start();
    // Four calls at a time per socket: the rest wait unread in the socket when SIGTERM comes.
    let mut server = Server::start(&redis, &[("WS_MAX_CALLS_PER_SOCKET", "4")]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    // Redis freezes for half a second, so the calls pile up.
    let thaw = redis.freeze(Duration::from_millis(500));
    for id in 1..=CALLS {
        let request = json!({"jsonrpc": "2.0", "method": "addMessage", "id": id,
            "params": {"connectionId": connection, "recipientDids": [DID], "payload": support::payload("before SIGTERM")}});
        client.send_raw(request.to_string());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    thaw.join().unwrap();

    let mut answered = std::collections::BTreeSet::new();
    while let Some(Incoming::Text(text)) = client.next_frame(Duration::from_secs(2)).await {
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert!(reply["result"]["messageId"].is_string(), "{reply}");
        answered.insert(reply["id"].as_u64().unwrap());
    }
    assert_eq!(answered.len() as u64, CALLS, "answered: {answered:?}");
    let after = Server::start(&redis, &[]).await;
    let mut check = Client::connect(&after.url()).await;
    assert_eq!(check.count(&connection).await, CALLS);
}
