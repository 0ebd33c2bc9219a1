//! Calls from one socket on one connection take effect in the order they were sent, even when
//! the client does not wait for replies; calls on other connections still run concurrently.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, Incoming, Redis, Server, payload, texts, unique_id};

const DID: &str = "did:key:z6MkORDER";

/// Reads frames until every id in `ids` has had its reply.
async fn replies(client: &mut Client, ids: impl IntoIterator<Item = u64>) -> Vec<Value> {
    let mut waiting: HashSet<u64> = ids.into_iter().collect();
    let mut replies = Vec::new();
    while !waiting.is_empty() {
        match client.next_frame(Duration::from_secs(10)).await {
            Some(Incoming::Text(text)) => {
                let reply: Value = serde_json::from_str(&text).unwrap();
                assert!(waiting.remove(&reply["id"].as_u64().unwrap()), "{reply}");
                replies.push(reply);
            }
            other => panic!("replies missing for {waiting:?}: {other:?}"),
        }
    }
    replies
}

fn add_frame(id: u64, connection_id: &str, text: &str) -> String {
    json!({"jsonrpc": "2.0", "method": "addMessage", "id": id, "params":
        {"connectionId": connection_id, "recipientDids": [DID], "payload": payload(text)}})
    .to_string()
}

#[tokio::test]
async fn adds_sent_back_to_back_on_one_socket_are_queued_in_sent_order() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[]).await;
    let mut client = Client::connect(&server.url()).await;
    let mut id = 0;
    // Enough frames at once that the socket task runs out of its scheduler budget midway,
    // which reordered calls before; each round interleaves two connections.
    for round in 0..5 {
        let (a, b) = (unique_id("a"), unique_id("b"));
        let sent: Vec<String> = (0..300).map(|i| format!("r{round}-{i:03}")).collect();
        let first = id + 1;
        for text in &sent {
            for connection in [&a, &b] {
                id += 1;
                client.send_raw(add_frame(id, connection, text));
            }
        }
        for reply in replies(&mut client, first..=id).await {
            assert!(reply.get("result").is_some(), "{reply}");
        }
        for connection in [&a, &b] {
            let taken = texts(&client.take(json!({"connectionId": connection})).await);
            let first_wrong = taken.iter().zip(&sent).position(|(t, s)| t != s);
            assert!(
                taken.len() == sent.len() && first_wrong.is_none(),
                "round {round}: out of order from {first_wrong:?}: {:?}",
                taken
                    .iter()
                    .skip(first_wrong.unwrap_or(0))
                    .take(10)
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test]
async fn a_batch_waits_for_the_calls_before_it_on_its_connections() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    for i in 1..=20 {
        client.send_raw(add_frame(i, &connection, &format!("m{i:02}")));
    }
    // Sent right behind the adds: it must see all of them, and take them in order.
    let batch = json!([
        {"jsonrpc": "2.0", "method": "getAvailableMessageCount", "id": 21, "params": {"connectionId": connection}},
        {"jsonrpc": "2.0", "method": "takeFromQueue", "id": 22, "params": {"connectionId": connection, "deleteMessages": true}},
    ]);
    client.send_raw(batch.to_string());
    let mut batch_reply = None;
    for _ in 0..21 {
        let Some(Incoming::Text(text)) = client.next_frame(Duration::from_secs(10)).await else {
            panic!("replies missing");
        };
        let reply: Value = serde_json::from_str(&text).unwrap();
        if reply.is_array() {
            batch_reply = Some(reply);
        } else {
            assert!(reply.get("result").is_some(), "{reply}");
        }
    }
    let reply = batch_reply.expect("a batch reply");
    assert_eq!(reply[0]["result"], 20, "{reply}");
    let expected: Vec<String> = (1..=20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(texts(reply[1]["result"].as_array().unwrap()), expected);
}
