//! A live session through a failover of the node holding its instance's event stream (a
//! cluster primary, or the master Sentinel names): adds through another instance go on while
//! the node is killed -9 and replaced; everything acknowledged reaches the session.

use std::time::Duration;

use super::{Client, Redis, Server, payload, texts, unique_id};

/// The texts pushed to `client` until every one of `expected` came (or `within` passed).
async fn pushed_until(client: &mut Client, expected: &[String], within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    let mut received: Vec<String> = Vec::new();
    while !expected.iter().all(|text| received.contains(text)) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(push) = client.next_push(left).await else {
            break;
        };
        received.extend(texts(push["messages"].as_array().unwrap()));
    }
    received
}

/// Binds a live session on one instance, adds through another, kills -9 the node holding the
/// first instance's event stream meanwhile and waits for its replacement; asserts that every
/// acknowledged message was pushed.
pub async fn a_live_session_keeps_receiving(redis: &mut Redis) {
    let env = [
        ("REDIS_TIMEOUT_MS", "500"),
        ("ADD_SETTLE_TIMEOUT_MS", "8000"),
        ("VISIBILITY_TIMEOUT_MS", "1500"),
    ];
    let holder = Server::start(redis, &env).await;
    let sender_side = Server::start(redis, &env).await;
    let connection = unique_id("c");
    let mut live = Client::connect(&holder.url()).await;
    live.add_live_session(&connection, &unique_id("s")).await;
    // The binding names the holder's instance; its event stream is what the sender's instance
    // writes to for this session.
    let peer = redis
        .cli(&["HGET", &format!("mpr:{{{connection}}}:conn"), "peer"])
        .to_owned();
    let instance = peer.split('/').next().unwrap().to_owned();
    let stream = format!("mpr:instance:{{{instance}}}:events");

    let mut sender = Client::connect(&sender_side.url()).await;
    let mut acknowledged = Vec::new();
    let mut n = 0;
    let mut send = async |sender: &mut Client, acknowledged: &mut Vec<String>| {
        let text = format!("through the failover {n}");
        n += 1;
        let params = serde_json::json!({"connectionId": connection, "recipientDids": ["did:key:z6MkFailover"],
                                        "payload": payload(&text)});
        if let Some(reply) = sender
            .try_request("addMessage", params, Duration::from_secs(20))
            .await
            && reply.get("result").is_some()
        {
            acknowledged.push(text);
        }
    };
    for _ in 0..20 {
        send(&mut sender, &mut acknowledged).await;
    }
    let victim = redis.kill_node_of(&stream).await;
    let killed = std::time::Instant::now();
    // Adds go on while the stream's node is down and a replica takes over.
    while killed.elapsed() < Duration::from_secs(6) {
        send(&mut sender, &mut acknowledged).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.wait_failover(victim).await;
    for _ in 0..20 {
        send(&mut sender, &mut acknowledged).await;
    }
    // Events the dead node took but its replica never got come back as re-deliveries
    // (the visibility timeout, then the sweep); everything acknowledged reaches the session.
    let received = pushed_until(&mut live, &acknowledged, Duration::from_secs(30)).await;
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|text| !received.contains(text))
        .collect();
    eprintln!(
        "{} acknowledged, {} pushes received ({} again), {} missing",
        acknowledged.len(),
        received.len(),
        received.len().saturating_sub(acknowledged.len()),
        missing.len()
    );
    assert!(acknowledged.len() > 40, "the sender made progress");
    assert!(missing.is_empty(), "never pushed: {missing:?}");
}
