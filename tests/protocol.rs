//! JSON-RPC framing and bad input of every kind: precise errors, no panics, the socket stays up.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, Incoming, Redis, Server, unique_id};
use tokio_tungstenite::tungstenite::Message;

async fn setup(env: &[(&str, &str)]) -> (Redis, Server, Client) {
    let redis = Redis::start();
    let server = Server::start(&redis, env).await;
    let client = Client::connect(&server.url()).await;
    (redis, server, client)
}

async fn next_json(client: &mut Client) -> Value {
    match client.next_frame(Duration::from_secs(5)).await {
        Some(Incoming::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test]
async fn unparsable_frames_get_parse_error_with_null_id() {
    let (_redis, _server, mut client) = setup(&[]).await;
    for garbage in ["not json", "{\"jsonrpc\":\"2.0\",", "", "\u{0}\u{1}"] {
        client.send_raw(garbage);
        let reply = next_json(&mut client).await;
        assert_eq!(reply["error"]["code"], -32700, "{garbage:?}: {reply}");
        assert_eq!(reply["id"], Value::Null);
    }
    client.send_message(Message::binary(vec![0xff, 0xfe, 0x00]));
    assert_eq!(next_json(&mut client).await["error"]["code"], -32700);
    assert_eq!(
        client.call("ping", Value::Null).await,
        "pong",
        "the socket still works"
    );
}

#[tokio::test]
async fn invalid_requests_get_invalid_request() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let cases = [
        (json!(42), Value::Null),
        (json!("ping"), Value::Null),
        (json!({"method": "ping", "id": 1}), json!(1)),
        (
            json!({"jsonrpc": "1.0", "method": "ping", "id": 2}),
            json!(2),
        ),
        (json!({"jsonrpc": "2.0", "id": 3}), json!(3)),
        (json!({"jsonrpc": "2.0", "method": 7, "id": 4}), json!(4)),
        (
            json!({"jsonrpc": "2.0", "method": "ping", "id": {"x": 1}}),
            Value::Null,
        ),
        (json!([]), Value::Null),
        // Invalid requests are answered even without an id.
        (json!({}), Value::Null),
        (
            json!({"jsonrpc": "2.0", "method": 1, "params": "bar"}),
            Value::Null,
        ),
    ];
    for (request, id) in cases {
        client.send_raw(request.to_string());
        let reply = next_json(&mut client).await;
        assert_eq!(reply["error"]["code"], -32600, "{request}: {reply}");
        assert_eq!(reply["id"], id, "{request}: {reply}");
    }
}

#[tokio::test]
async fn unknown_methods_get_method_not_found() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let error = client.call_err("dropDatabase", json!({})).await;
    assert_eq!(error["code"], -32601);
    assert!(
        error["message"].as_str().unwrap().contains("dropDatabase"),
        "{error}"
    );
}

#[tokio::test]
async fn invalid_params_name_the_field() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let big_ids: Vec<String> = (0..10_001).map(|i| i.to_string()).collect();
    let cases = [
        ("takeFromQueue", json!({}), "connectionId"),
        ("takeFromQueue", json!({"connectionId": 5}), "connectionId"),
        ("takeFromQueue", json!({"connectionId": ""}), "connectionId"),
        (
            "takeFromQueue",
            json!({"connectionId": "a{b}"}),
            "connectionId",
        ),
        (
            "takeFromQueue",
            json!({"connectionId": "c", "limit": -1}),
            "limit",
        ),
        (
            "takeFromQueue",
            json!({"connectionId": "c", "limit": "10"}),
            "limit",
        ),
        (
            "takeFromQueue",
            json!({"connectionId": "c", "limitBytes": 1.5}),
            "limitBytes",
        ),
        (
            "takeFromQueue",
            json!({"connectionId": "c", "deleteMessages": "yes"}),
            "deleteMessages",
        ),
        (
            "takeFromQueue",
            json!({"connectionId": "c", "recipientDid": "did key"}),
            "recipientDid",
        ),
        ("takeFromQueue", json!(["c"]), "object"),
        (
            "addMessage",
            json!({"connectionId": "c", "payload": {}}),
            "recipientDids",
        ),
        (
            "addMessage",
            json!({"connectionId": "c", "recipientDids": "did:key:x", "payload": {}}),
            "recipientDids",
        ),
        (
            "addMessage",
            json!({"connectionId": "c", "recipientDids": [1], "payload": {}}),
            "recipientDids[0]",
        ),
        (
            "addMessage",
            json!({"connectionId": "c", "recipientDids": ["did:key:x"]}),
            "payload",
        ),
        (
            "addMessage",
            json!({"connectionId": "c", "recipientDids": ["did:key:x"], "payload": "jwe"}),
            "payload",
        ),
        (
            "addMessage",
            json!({"connectionId": "c", "recipientDids": ["did:key:x"], "payload": [1]}),
            "payload",
        ),
        ("removeMessages", json!({"connectionId": "c"}), "messageIds"),
        (
            "removeMessages",
            json!({"connectionId": "c", "messageIds": ["a", 2]}),
            "messageIds[1]",
        ),
        (
            "removeMessages",
            json!({"connectionId": "c", "messageIds": big_ids}),
            "messageIds",
        ),
        (
            "removeAllMessages",
            json!({"connectionId": null}),
            "connectionId",
        ),
        (
            "getAvailableMessageCount",
            json!({"connectionId": "c", "recipientDid": 3}),
            "recipientDid",
        ),
        ("addLiveSession", json!({"connectionId": "c"}), "sessionId"),
        ("getLiveSession", json!({}), "connectionId"),
        (
            "removeLiveSession",
            json!({"connectionId": ["c"]}),
            "connectionId",
        ),
        ("rpc.on", json!({"event": "messagesReceived"}), "array"),
    ];
    for (method, params, field) in cases {
        let error = client.call_err(method, params.clone()).await;
        assert_eq!(error["code"], -32602, "{method} {params}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{method} {params}: {message:?} does not name {field}"
        );
    }
    // Absent params report the missing field too.
    let error = client.call_err("takeFromQueue", Value::Null).await;
    assert!(
        error["message"].as_str().unwrap().contains("connectionId"),
        "{error}"
    );
    assert_eq!(
        client.call("ping", Value::Null).await,
        "pong",
        "the socket still works"
    );
}

#[tokio::test]
async fn notifications_run_but_get_no_reply() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    let add = json!({"jsonrpc": "2.0", "method": "addMessage",
        "params": {"connectionId": connection, "recipientDids": ["did:key:x"], "payload": support::payload("n")}});
    client.send_raw(add.to_string());
    client.send_raw(r#"{"jsonrpc":"2.0","method":"noSuchMethod"}"#);
    client.send_raw(r#"{"jsonrpc":"2.0","method":"ping","id":"after"}"#);
    let reply = next_json(&mut client).await;
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "result": "pong", "id": "after"})
    );
    assert!(
        client
            .next_frame(Duration::from_millis(300))
            .await
            .is_none(),
        "no other reply"
    );
    assert_eq!(client.count(&connection).await, 1, "the notification ran");
}

#[tokio::test]
async fn ids_are_echoed_exactly() {
    let (_redis, _server, mut client) = setup(&[]).await;
    for id in [
        json!(0),
        json!(-7),
        json!("3"),
        json!("a\"b"),
        Value::Null,
        json!(1.5),
    ] {
        client.send_raw(json!({"jsonrpc": "2.0", "method": "ping", "id": id}).to_string());
        let reply = next_json(&mut client).await;
        assert_eq!(reply["id"], id);
        assert_eq!(reply["result"], "pong");
    }
}

#[tokio::test]
async fn batches_get_an_array_of_replies() {
    let (_redis, _server, mut client) = setup(&[]).await;
    client.send_raw(
        r#"[{"jsonrpc":"2.0","method":"ping","id":1},{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"nope","id":2},5]"#,
    );
    let reply = next_json(&mut client).await;
    let replies = reply.as_array().expect("an array");
    assert_eq!(replies.len(), 3, "{reply}");
    assert_eq!(replies[0]["result"], "pong");
    assert_eq!(replies[1]["error"]["code"], -32601);
    assert_eq!(replies[2]["error"]["code"], -32600);
}

#[tokio::test]
async fn an_array_in_a_batch_is_not_a_request() {
    let (_redis, _server, mut client) = setup(&[]).await;
    // Read member by member, it would be a ping with id 7.
    client.send_raw(r#"[["2.0","ping",null,7]]"#);
    let reply = next_json(&mut client).await;
    assert_eq!(reply[0]["error"]["code"], -32600, "{reply}");
    assert_eq!(reply[0]["id"], Value::Null, "{reply}");
}

#[tokio::test]
async fn subscribe_and_unsubscribe_answer_as_rpc_websockets_does() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let on = client.call("rpc.on", json!(["messagesReceived"])).await;
    assert_eq!(on, json!({"messagesReceived": "ok"}));
    let again = client
        .call("rpc.on", json!(["messagesReceived", "other"]))
        .await;
    assert_eq!(
        again,
        json!({"messagesReceived": "socket has already been subscribed to event", "other": "provided event invalid"})
    );
    assert_eq!(
        client.call("rpc.off", json!(["messagesReceived"])).await,
        json!({"messagesReceived": "ok"})
    );
    assert_eq!(
        client.call("rpc.off", json!(["messagesReceived"])).await,
        json!({"messagesReceived": "not subscribed"})
    );
}

#[tokio::test]
async fn oversized_frames_close_the_socket_with_1009_and_others_are_unaffected() {
    let (_redis, server, mut client) = setup(&[("WS_MAX_MESSAGE_BYTES", "65536")]).await;
    let mut bystander = Client::connect(&server.url()).await;
    let big =
        json!({"jsonrpc": "2.0", "method": "ping", "id": 1, "params": {"x": "y".repeat(70_000)}});
    client.send_raw(big.to_string());
    let mut code = None;
    while let Some(frame) = client.next_frame(Duration::from_secs(5)).await {
        if let Incoming::Closed(c) = frame {
            code = c;
            break;
        }
    }
    assert_eq!(code, Some(1009));
    // Just under the limit is fine.
    let fits =
        json!({"jsonrpc": "2.0", "method": "ping", "id": 1, "params": {"x": "y".repeat(60_000)}});
    bystander.send_raw(fits.to_string());
    assert_eq!(next_json(&mut bystander).await["result"], "pong");
}

#[tokio::test]
async fn a_socket_sees_only_its_own_replies() {
    let (_redis, server, mut one) = setup(&[]).await;
    let mut two = Client::connect(&format!("{}/?socket_id=1", server.url())).await;
    one.send_raw(r#"{"jsonrpc":"2.0","method":"ping","id":77}"#);
    assert_eq!(next_json(&mut one).await["id"], 77);
    assert!(two.next_frame(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn http_endpoints_report_health_readiness_and_metrics() {
    let (_redis, server, mut client) = setup(&[]).await;
    client.call("ping", Value::Null).await;
    client.call_err("takeFromQueue", json!({})).await;
    assert_eq!(server.http_get("/health").await.0, 200);
    assert_eq!(server.http_get("/ready").await.0, 200);
    assert_eq!(server.metric("mpr_open_sockets", "").await, 1.0);
    assert_eq!(
        server
            .metric("mpr_calls_total", r#"method="ping",outcome="ok""#)
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric(
                "mpr_calls_total",
                r#"method="takeFromQueue",outcome="invalid""#
            )
            .await,
        1.0
    );
    assert!(
        server
            .metric("mpr_call_duration_seconds_count", r#"method="ping""#)
            .await
            >= 1.0
    );
}

fn batch_of(calls: &[(&str, Value)]) -> String {
    let calls: Vec<Value> = (calls.iter().enumerate())
        .map(|(i, (method, params))| json!({"jsonrpc": "2.0", "method": method, "params": params, "id": i + 1}))
        .collect();
    Value::Array(calls).to_string()
}

#[tokio::test]
async fn a_batch_over_batch_max_calls_runs_none_and_each_request_gets_an_error() {
    let (_redis, _server, mut client) = setup(&[("BATCH_MAX_CALLS", "5")]).await;
    let connection = unique_id("c");
    let add = json!({"connectionId": connection, "recipientDids": ["did:key:z6MkA"], "payload": support::payload("m")});
    let calls = vec![("addMessage", add.clone()); 6];
    client.send_raw(batch_of(&calls));
    let reply = next_json(&mut client).await;
    let replies = reply.as_array().expect("an array");
    assert_eq!(replies.len(), 6, "{reply}");
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply["id"], i + 1);
        assert_eq!(reply["error"]["code"], -32001, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("BATCH_MAX_CALLS") && message.contains('5'),
            "{message}"
        );
    }
    assert_eq!(
        client.count(&connection).await,
        0,
        "no call of the batch ran"
    );
    // At the bound it runs, and the socket kept working all along.
    client.send_raw(batch_of(&calls[..5]));
    let reply = next_json(&mut client).await;
    assert!(
        reply
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("result").is_some()),
        "{reply}"
    );
    assert_eq!(client.count(&connection).await, 5);
}

#[tokio::test]
async fn a_batch_of_takes_shares_batch_max_reply_bytes_and_then_stops_with_errors() {
    let text = "x".repeat(10_000);
    let size = support::payload(&text).to_string().len();
    let budget = 3 * size + 400;
    let (_redis, _server, mut client) =
        setup(&[("BATCH_MAX_REPLY_BYTES", &budget.to_string())]).await;
    let connection = unique_id("c");
    for _ in 0..10 {
        client.add(&connection, "did:key:z6MkA", &text).await;
    }
    let take = json!({"connectionId": connection, "limit": 2});
    client.send_raw(batch_of(&vec![("takeFromQueue", take); 8]));
    let Some(Incoming::Text(frame)) = client.next_frame(Duration::from_secs(10)).await else {
        panic!("no batch reply");
    };
    let reply: Value = serde_json::from_str(&frame).unwrap();
    let replies = reply.as_array().unwrap();
    assert_eq!(replies.len(), 8);
    // Within the budget but for the QueuedMessage envelopes of one take's messages.
    let results: usize = (replies.iter())
        .filter(|r| r.get("result").is_some())
        .map(|r| r.to_string().len() + 1)
        .sum();
    assert!(results < budget + 2 * 100, "{results} > {budget}");
    let taken: Vec<usize> = (replies.iter())
        .filter_map(|r| r["result"].as_array().map(Vec::len))
        .collect();
    // The first take has the whole budget; the second only what is left, room for one.
    assert_eq!(taken[..2], [2, 1], "{taken:?}");
    assert!(taken[2..].iter().all(|n| *n == 0), "{taken:?}");
    let refused = &replies[taken.len()..];
    assert!(!refused.is_empty(), "the budget was never spent: {taken:?}");
    for reply in refused {
        assert_eq!(reply["error"]["code"], -32001, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains("BATCH_MAX_REPLY_BYTES"), "{message}");
    }
    // Only the three messages returned went in flight; the socket works on.
    assert_eq!(client.count(&connection).await, 7);
}

#[tokio::test]
async fn add_message_refuses_payloads_the_cold_tier_cannot_store() {
    let (_redis, _server, mut client) = setup(&[("WS_MAX_MESSAGE_BYTES", "33554432")]).await;
    let connection = unique_id("c");
    let add = |payload: Value| json!({"connectionId": connection, "recipientDids": ["did:key:z6MkA"], "payload": payload});
    client
        .call("addMessage", add(support::nested_payload(64)))
        .await;
    for depth in [65, 300] {
        let error = client
            .call_err("addMessage", add(support::nested_payload(depth)))
            .await;
        assert_eq!(error["code"], -32602, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with("Invalid params: payload: ")
                && message.contains("MAX_PAYLOAD_DEPTH"),
            "{message}"
        );
    }
    // 3 MB of small numbers: some 25 MB of BSON, more than a MongoDB document holds.
    let numbers = json!({"protected": "p", "n": vec![0; 1_500_000]});
    let error = client.call_err("addMessage", add(numbers)).await;
    assert_eq!(error["code"], -32602, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("Invalid params: payload: ")
            && message.contains("MAX_PAYLOAD_BSON_BYTES"),
        "{message}"
    );
    // As much JSON in one string is stored.
    client
        .call("addMessage", add(support::payload(&"x".repeat(3_000_000))))
        .await;
    assert_eq!(
        client.count(&connection).await,
        2,
        "only the storable ones were queued"
    );
}
