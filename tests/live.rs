//! Live sessions across instances: pushes, ownership, socket close, instance death.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, Redis, Server, eventually, texts, unique_id};

const DID: &str = "did:key:z6MkLive";

async fn is_live(client: &mut Client, connection: &str) -> bool {
    let live = client
        .call("getLiveSession", json!({"connectionId": connection}))
        .await;
    live.as_bool().expect("a boolean")
}

#[tokio::test]
async fn a_message_added_on_one_instance_is_pushed_to_the_session_on_another() {
    let redis = Redis::start();
    let a = Server::start(&redis, &[]).await;
    let b = Server::start(&redis, &[]).await;
    let mut mediator = Client::connect(&a.url()).await;
    let mut sender = Client::connect(&b.url()).await;
    let connection = unique_id("c");
    mediator.call("rpc.on", json!(["messagesReceived"])).await;
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    assert!(
        is_live(&mut sender, &connection).await,
        "visible from the other instance"
    );

    let id = sender.add(&connection, DID, "hello").await;
    let push = mediator
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(push["connectionId"], connection.as_str());
    assert_eq!(push["id"], "");
    let messages = push["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["id"], id.as_str());
    assert_eq!(texts(messages), ["hello"]);
    // Pushed means in flight: not available to takes until acknowledged or timed out.
    assert_eq!(sender.count(&connection).await, 0);
    assert!(
        sender
            .take(json!({"connectionId": connection}))
            .await
            .is_empty()
    );
    mediator
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": [id]}),
        )
        .await;
    assert_eq!(b.metric("mpr_events_undeliverable_total", "").await, 0.0);
    assert_eq!(a.metric("mpr_events_pushed_total", "").await, 1.0);
    assert_eq!(a.metric("mpr_live_sessions", "").await, 1.0);
}

#[tokio::test]
async fn pushes_keep_order_and_reach_a_session_on_the_same_instance() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[]).await;
    let mut mediator = Client::connect(&server.url()).await;
    let mut sender = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    for i in 0..20 {
        sender.add(&connection, DID, &format!("{i}")).await;
    }
    let mut received = Vec::new();
    while received.len() < 20 {
        let push = mediator
            .next_push(Duration::from_secs(5))
            .await
            .expect("a push");
        received.extend(texts(push["messages"].as_array().unwrap()));
    }
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn unacknowledged_pushes_are_pushed_again_after_the_visibility_timeout() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[("VISIBILITY_TIMEOUT_MS", "500")]).await;
    let mut mediator = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    mediator.add(&connection, DID, "lost on the way").await;
    let first = mediator
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(mediator.count(&connection).await, 0);
    // Not removed: once its deadline passes it is pushed again, to the session still bound.
    let again = mediator
        .next_push(Duration::from_secs(5))
        .await
        .expect("pushed again after the visibility timeout");
    assert_eq!(
        texts(again["messages"].as_array().unwrap()),
        ["lost on the way"]
    );
    assert_eq!(again["messages"][0]["id"], first["messages"][0]["id"]);
    // Without a session it becomes pending instead.
    mediator
        .call("removeLiveSession", json!({"connectionId": connection}))
        .await;
    assert_eq!(
        texts(&mediator.take(json!({"connectionId": connection})).await),
        ["lost on the way"]
    );
}

#[tokio::test]
async fn the_newest_binding_wins_and_the_old_socket_cannot_remove_it() {
    let redis = Redis::start();
    let a = Server::start(&redis, &[]).await;
    let b = Server::start(&redis, &[]).await;
    let mut old = Client::connect(&a.url()).await;
    let mut new = Client::connect(&b.url()).await;
    let connection = unique_id("c");
    old.add_live_session(&connection, &unique_id("s")).await;
    new.add_live_session(&connection, &unique_id("s")).await;
    let removed = old
        .call("removeLiveSession", json!({"connectionId": connection}))
        .await;
    assert_eq!(removed, false);
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        is_live(&mut new, &connection).await,
        "closing the old socket leaves the new binding"
    );
    new.add(&connection, DID, "to the new one").await;
    let push = new.next_push(Duration::from_secs(5)).await.expect("a push");
    assert_eq!(
        texts(push["messages"].as_array().unwrap()),
        ["to the new one"]
    );
    let removed = new
        .call("removeLiveSession", json!({"connectionId": connection}))
        .await;
    assert_eq!(removed, true);
    assert!(!is_live(&mut new, &connection).await);
    new.add(&connection, DID, "queued").await;
    assert!(new.next_push(Duration::from_millis(300)).await.is_none());
    // The push the session never acknowledged came back to pending when it ended.
    assert_eq!(
        texts(&new.take(json!({"connectionId": connection})).await),
        ["to the new one", "queued"]
    );
}

#[tokio::test]
async fn a_closed_socket_ends_its_sessions_and_nothing_sent_to_it_is_lost() {
    let redis = Redis::start();
    let a = Server::start(&redis, &[("VISIBILITY_TIMEOUT_MS", "60000")]).await;
    let b = Server::start(&redis, &[]).await;
    let mut sender = Client::connect(&b.url()).await;
    let connections: Vec<String> = (0..20).map(|_| unique_id("c")).collect();
    let mut mediator = Client::connect(&a.url()).await;
    for connection in &connections {
        mediator.add_live_session(connection, &unique_id("s")).await;
    }
    drop(mediator);
    // Race the close: every message must end up pending (not stuck in flight for 60 s).
    for connection in &connections {
        sender.add(connection, DID, "after close").await;
    }
    for connection in &connections {
        eventually(Duration::from_secs(5), async || {
            !is_live(&mut sender, connection).await
        })
        .await;
        eventually(Duration::from_secs(5), async || {
            sender.count(connection).await == 1
        })
        .await;
    }
    assert_eq!(a.metric("mpr_live_sessions", "").await, 0.0);
}

#[tokio::test]
async fn sessions_of_a_killed_instance_stop_being_live_within_the_bound_and_its_events_are_released()
 {
    let redis = Redis::start();
    let liveness = [
        ("LIVENESS_TIMEOUT_MS", "2000"),
        ("VISIBILITY_TIMEOUT_MS", "60000"),
    ];
    let mut a = Server::start(&redis, &liveness).await;
    let b = Server::start(&redis, &liveness).await;
    let mut mediator = Client::connect(&a.url()).await;
    let mut sender = Client::connect(&b.url()).await;
    let connection = unique_id("c");
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    // Let B see A alive, then kill A without warning and at once add a message for its session.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill();
    let killed = Instant::now();
    let id = sender.add(&connection, DID, "for a dead instance").await;
    // The bound is the 2 s liveness timeout; the slack is for a loaded machine (in a cluster run
    // eight tests each start six redis-servers on two cores). Anything near the 60 s visibility
    // timeout, the alternative, fails.
    eventually(Duration::from_secs(10), async || {
        !is_live(&mut sender, &connection).await
    })
    .await;
    let detected = killed.elapsed();
    assert!(
        detected <= Duration::from_millis(2000 + 5000),
        "took {detected:?}"
    );
    // The event sent to the dead instance is taken over and its message released well before the
    // 60 s visibility timeout; it is delivered exactly once.
    eventually(Duration::from_secs(10), async || {
        sender.count(&connection).await == 1
    })
    .await;
    let taken = sender
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(support::ids(&taken), [id]);
    assert!(
        sender
            .take(json!({"connectionId": connection}))
            .await
            .is_empty()
    );
    assert!(b.metric("mpr_events_undeliverable_total", "").await >= 1.0);
    // The reaper takes the dead instance's registration at its own next heartbeat, which may
    // come after the event was released.
    eventually(Duration::from_secs(10), async || {
        b.metric("mpr_instances_reaped_total", "").await == 1.0
    })
    .await;
    // New messages now queue as pending, with no push to anyone.
    sender.add(&connection, DID, "later").await;
    assert_eq!(sender.count(&connection).await, 1);
}

#[tokio::test]
async fn instances_with_different_liveness_timeouts_never_take_each_other_for_dead() {
    // Each instance is judged by the limit it declares. A (1 s: a beat every 200 ms, dead after
    // 800 ms of silence) beside B (10 s: a beat every 2 s, dead after 8 s): judged by A's own
    // limit, B would be dead between any two of its beats, taken over at each.
    let redis = Redis::start();
    let a = Server::start(&redis, &[("LIVENESS_TIMEOUT_MS", "1000")]).await;
    let mut b = Server::start(&redis, &[("LIVENESS_TIMEOUT_MS", "10000")]).await;
    let limits = redis.cli(&["HGETALL", "mpr:{mpr:instances}:timeouts"]);
    let limits: Vec<&str> = limits.lines().collect();
    let b_id = limits
        .chunks(2)
        .find(|pair| pair[1] == "8000")
        .map(|pair| pair[0].to_owned())
        .unwrap_or_else(|| panic!("B wrote its own limit: {limits:?}"));
    let mut mediator = Client::connect(&b.url()).await;
    let mut sender = Client::connect(&a.url()).await;
    let connection = unique_id("c");
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    // Three of B's beats, each 2 s after the last: A had time to judge B dead at each.
    let mut beats = Vec::new();
    eventually(Duration::from_secs(30), async || {
        let beat = redis.cli(&["ZSCORE", "mpr:instances", &b_id]);
        if beats.last() != Some(&beat) {
            beats.push(beat);
        }
        beats.len() > 3
    })
    .await;
    assert_eq!(a.metric("mpr_instances_reaped_total", "").await, 0.0);
    assert_eq!(b.metric("mpr_instances_reaped_total", "").await, 0.0);
    // A still sends to B's session: it takes B for alive.
    sender.add(&connection, DID, "to B's session").await;
    let push = mediator
        .next_push(Duration::from_secs(10))
        .await
        .expect("a push");
    assert_eq!(
        texts(push["messages"].as_array().unwrap()),
        ["to B's session"]
    );
    assert_eq!(a.metric("mpr_events_undeliverable_total", "").await, 0.0);
    // Dead B is still found dead, by its own limit.
    b.kill();
    eventually(Duration::from_secs(40), async || {
        a.metric("mpr_instances_reaped_total", "").await == 1.0
    })
    .await;
    assert_eq!(
        redis.cli(&["HEXISTS", "mpr:{mpr:instances}:timeouts", &b_id]),
        "0",
        "its limit forgotten with it"
    );
}

#[tokio::test]
async fn an_instance_started_after_the_last_heartbeat_is_not_mistaken_for_dead() {
    let redis = Redis::start();
    // Heartbeats every 12 s: B cannot have heard of C through them during this test.
    let env = [("LIVENESS_TIMEOUT_MS", "60000")];
    let b = Server::start(&redis, &env).await;
    let c = Server::start(&redis, &env).await;
    let mut mediator = Client::connect(&c.url()).await;
    let mut sender = Client::connect(&b.url()).await;
    let connection = unique_id("c");
    mediator
        .add_live_session(&connection, &unique_id("s"))
        .await;
    assert!(is_live(&mut sender, &connection).await);
    sender.add(&connection, DID, "to the new instance").await;
    let push = mediator
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(
        texts(push["messages"].as_array().unwrap()),
        ["to the new instance"]
    );
    assert_eq!(b.metric("mpr_events_undeliverable_total", "").await, 0.0);
}

/// A binding of a kind this version does not know (as a newer instance would write it) is
/// taken at its word: the connection counts as live and this version never drops the binding.
/// What the add put in flight to it goes back to pending at once, and is counted.
#[tokio::test]
async fn a_binding_of_an_unknown_kind_is_left_alone_and_its_messages_stay_queued() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    let conn = format!("mpr:{{{connection}}}:conn");
    let bind = [
        "HSET", &conn, "kind", "relay", "peer", "sock-1", "session", "s",
    ];
    assert_eq!(redis.cli(&bind), "3");
    assert!(is_live(&mut client, &connection).await);

    client.add(&connection, DID, "for a newer peer").await;
    assert_eq!(client.count(&connection).await, 1, "pending again at once");
    let undeliverable = server
        .metric("mpr_events_undeliverable_total", "unknown_peer")
        .await;
    assert_eq!(undeliverable, 1.0);
    assert_eq!(redis.cli(&["HGET", &conn, "kind"]), "relay", "binding left");
    assert!(is_live(&mut client, &connection).await);
    let taken = client.take(json!({"connectionId": connection})).await;
    assert_eq!(texts(&taken), ["for a newer peer"]);
}
