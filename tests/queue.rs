//! Every queue method against a real Redis: shapes, FIFO, filters, limits, delete, visibility.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Redis, Server, ids, payload, texts, unique_id};

const DID_A: &str = "did:key:z6MkAAAA";
const DID_B: &str = "did:key:z6MkBBBB";

async fn setup(env: &[(&str, &str)]) -> (Redis, Server, Client) {
    let redis = Redis::start();
    let server = Server::start(&redis, env).await;
    let client = Client::connect(&server.url()).await;
    (redis, server, client)
}

#[tokio::test]
async fn add_then_take_returns_the_messages_in_order_with_the_payload_verbatim() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    let mut added = Vec::new();
    for i in 0..5 {
        let id = client.add(&connection, DID_A, &format!("m{i}")).await;
        assert_eq!(id.len(), 24, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        added.push(id);
    }
    let odd = json!({"protected": "p", "iv": "i", "ciphertext": "c", "tag": "t", "extra": {"nested": [1, 2.5, null, "é\u{1F600}"]}});
    let reply = client
        .call(
            "addMessage",
            json!({"connectionId": connection, "recipientDids": [DID_A], "payload": odd}),
        )
        .await;
    added.push(reply["messageId"].as_str().unwrap().to_owned());

    let messages = client.take(json!({"connectionId": connection})).await;
    assert_eq!(ids(&messages), added);
    assert_eq!(texts(&messages[..5]), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(messages[5]["encryptedMessage"], odd);
    assert_eq!(messages[0]["encryptedMessage"], payload("m0"));
    let received_at = messages[0]["receivedAt"].as_str().unwrap();
    assert!(
        received_at.ends_with('Z') && received_at.len() == 24,
        "{received_at}"
    );
    assert_eq!(messages[0].as_object().unwrap().len(), 3, "{}", messages[0]);
}

#[tokio::test]
async fn ids_are_unique_across_instances() {
    let redis = Redis::start();
    let a = Server::start(&redis, &[]).await;
    let b = Server::start(&redis, &[]).await;
    let mut ca = Client::connect(&a.url()).await;
    let mut cb = Client::connect(&b.url()).await;
    let connection = unique_id("c");
    let mut all = std::collections::HashSet::new();
    for i in 0..50 {
        assert!(all.insert(ca.add(&connection, DID_A, &format!("a{i}")).await));
        assert!(all.insert(cb.add(&connection, DID_A, &format!("b{i}")).await));
    }
    assert_eq!(ca.count(&connection).await, 100);
}

#[tokio::test]
async fn limit_and_limit_bytes_bound_what_is_returned() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    for i in 0..10 {
        client
            .add(&connection, DID_A, &format!("message-{i}"))
            .await;
    }
    let three = client
        .take(json!({"connectionId": connection, "limit": 3}))
        .await;
    assert_eq!(texts(&three), ["message-0", "message-1", "message-2"]);

    let size = serde_json::to_string(&payload("message-3")).unwrap().len();
    let two = client
        .take(json!({"connectionId": connection, "limitBytes": 2 * size + size / 2}))
        .await;
    assert_eq!(texts(&two), ["message-3", "message-4"]);
    let exact = client
        .take(json!({"connectionId": connection, "limitBytes": size}))
        .await;
    assert_eq!(texts(&exact), ["message-5"]);
    let too_small = client
        .take(json!({"connectionId": connection, "limitBytes": size - 1}))
        .await;
    assert!(
        too_small.is_empty(),
        "a message larger than limitBytes is not returned"
    );
    let zero = client
        .take(json!({"connectionId": connection, "limit": 0}))
        .await;
    assert!(zero.is_empty());
    assert_eq!(client.count(&connection).await, 4);
}

#[tokio::test]
async fn no_limit_means_all_up_to_the_configured_ceiling() {
    let (_redis, _server, mut client) = setup(&[("MAX_TAKE_MESSAGES", "7")]).await;
    let connection = unique_id("c");
    for i in 0..10 {
        client.add(&connection, DID_A, &format!("{i}")).await;
    }
    assert_eq!(
        client.take(json!({"connectionId": connection})).await.len(),
        7
    );
    assert_eq!(
        client
            .take(json!({"connectionId": connection, "limit": 100}))
            .await
            .len(),
        3
    );
}

#[tokio::test]
async fn recipient_did_filters_take_count_and_remove_all() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    for i in 0..6 {
        let did = if i % 2 == 0 { DID_A } else { DID_B };
        client.add(&connection, did, &format!("{i}")).await;
    }
    let count_b = client
        .call(
            "getAvailableMessageCount",
            json!({"connectionId": connection, "recipientDid": DID_B}),
        )
        .await;
    assert_eq!(count_b, 3);
    let only_a = client
        .take(json!({"connectionId": connection, "recipientDid": DID_A, "limit": 2}))
        .await;
    assert_eq!(texts(&only_a), ["0", "2"]);
    // The two taken are in flight: not pending for A, nor for the connection.
    let count_a = client
        .call(
            "getAvailableMessageCount",
            json!({"connectionId": connection, "recipientDid": DID_A}),
        )
        .await;
    assert_eq!(count_a, 1);
    assert_eq!(client.count(&connection).await, 4);

    // removeAll for A removes A's pending and in-flight messages, and nothing of B.
    let removed = client
        .call(
            "removeAllMessages",
            json!({"connectionId": connection, "recipientDid": DID_A}),
        )
        .await;
    assert_eq!(removed, true);
    let rest = client.take(json!({"connectionId": connection})).await;
    assert_eq!(texts(&rest), ["1", "3", "5"]);
    let unknown = client
        .take(json!({"connectionId": connection, "recipientDid": "did:key:nobody"}))
        .await;
    assert!(unknown.is_empty());
}

#[tokio::test]
async fn a_message_for_two_recipients_is_one_message_in_both_lanes() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    client
        .call(
            "addMessage",
            json!({"connectionId": connection, "recipientDids": [DID_A, DID_B], "payload": payload("both")}),
        )
        .await;
    let count = |did: &str| json!({"connectionId": connection, "recipientDid": did});
    assert_eq!(
        client.call("getAvailableMessageCount", count(DID_A)).await,
        1
    );
    assert_eq!(
        client.call("getAvailableMessageCount", count(DID_B)).await,
        1
    );
    let taken = client
        .take(json!({"connectionId": connection, "recipientDid": DID_B, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&taken), ["both"]);
    assert_eq!(
        client.call("getAvailableMessageCount", count(DID_A)).await,
        0
    );
    assert_eq!(client.count(&connection).await, 0);
}

#[tokio::test]
async fn delete_messages_removes_what_it_returns_and_leaves_no_keys() {
    let (redis, _server, mut client) = setup(&[("REDIS_PREFIX", "t")]).await;
    let connection = unique_id("c");
    for i in 0..4 {
        client.add(&connection, DID_A, &format!("{i}")).await;
    }
    let first = client
        .take(json!({"connectionId": connection, "limit": 3, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&first), ["0", "1", "2"]);
    assert_eq!(client.count(&connection).await, 1);
    let last = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&last), ["3"]);
    assert!(
        client
            .take(json!({"connectionId": connection}))
            .await
            .is_empty()
    );
    // An emptied queue leaves nothing behind (SCAN is fine in a test) but the ids it removed,
    // remembered for two minutes (an add whose reply was lost is settled against them).
    let keys = redis.cli(&["--scan", "--pattern", &format!("t:{{{connection}}}*")]);
    let removed = format!("t:{{{connection}}}:removed");
    assert_eq!(keys, removed, "keys left: {keys}");
    let ttl: i64 = redis.cli(&["PTTL", &removed]).parse().unwrap();
    assert!((1..=120_000).contains(&ttl), "it expires by itself: {ttl}");
}

#[tokio::test]
async fn taken_messages_are_invisible_until_the_visibility_timeout_then_pending_in_order() {
    let (_redis, _server, mut client) = setup(&[("VISIBILITY_TIMEOUT_MS", "700")]).await;
    let connection = unique_id("c");
    for i in 0..5 {
        client.add(&connection, DID_A, &format!("{i}")).await;
    }
    let first = client
        .take(json!({"connectionId": connection, "limit": 2}))
        .await;
    assert_eq!(texts(&first), ["0", "1"]);
    assert_eq!(client.count(&connection).await, 3);
    let second = client
        .take(json!({"connectionId": connection, "limit": 2}))
        .await;
    assert_eq!(texts(&second), ["2", "3"]);
    // Acknowledge one of the first batch; the other must come back, in its original place.
    assert_eq!(
        client
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": [ids(&first)[0]]})
            )
            .await,
        true
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(client.count(&connection).await, 4);
    let again = client.take(json!({"connectionId": connection})).await;
    assert_eq!(texts(&again), ["1", "2", "3", "4"]);
}

#[tokio::test]
async fn remove_messages_removes_ids_anywhere_in_the_queue_and_ignores_unknown_ones() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    let mut added = Vec::new();
    for i in 0..200 {
        added.push(client.add(&connection, DID_A, &format!("{i}")).await);
    }
    // Deep in the queue, in flight and pending, plus ids that do not exist.
    let taken = client
        .take(json!({"connectionId": connection, "limit": 10}))
        .await;
    let doomed = vec![
        added[3].clone(),
        added[150].clone(),
        added[199].clone(),
        ids(&taken)[5].clone(),
        "000000000000000000000000".to_owned(),
    ];
    let removed = client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": doomed}),
        )
        .await;
    assert_eq!(removed, true);
    let all = client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": []}),
        )
        .await;
    assert_eq!(all, true);
    assert_eq!(client.count(&connection).await, 190 - 2);
    let rest = client.take(json!({"connectionId": connection})).await;
    let rest = ids(&rest);
    assert!(!rest.contains(&added[150]) && !rest.contains(&added[199]));
    assert_eq!(rest.len(), 188);
}

#[tokio::test]
async fn remove_all_messages_empties_pending_and_in_flight() {
    let (_redis, _server, mut client) = setup(&[("VISIBILITY_TIMEOUT_MS", "300")]).await;
    let connection = unique_id("c");
    for i in 0..20 {
        client.add(&connection, DID_A, &format!("{i}")).await;
    }
    client
        .take(json!({"connectionId": connection, "limit": 5}))
        .await;
    assert_eq!(
        client
            .call("removeAllMessages", json!({"connectionId": connection}))
            .await,
        true
    );
    assert_eq!(client.count(&connection).await, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        client
            .take(json!({"connectionId": connection}))
            .await
            .is_empty(),
        "in-flight ones too"
    );
    // The queue works again afterwards, from a clean start.
    client.add(&connection, DID_A, "after").await;
    assert_eq!(
        texts(&client.take(json!({"connectionId": connection})).await),
        ["after"]
    );
}

#[tokio::test]
async fn connections_are_isolated() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let (one, two) = (unique_id("c"), unique_id("c"));
    client.add(&one, DID_A, "for one").await;
    client.add(&two, DID_A, "for two").await;
    client
        .call("removeAllMessages", json!({"connectionId": one}))
        .await;
    assert_eq!(
        texts(&client.take(json!({"connectionId": two})).await),
        ["for two"]
    );
}

#[tokio::test]
async fn ping_answers_pong() {
    let (_redis, _server, mut client) = setup(&[]).await;
    assert_eq!(client.call("ping", serde_json::Value::Null).await, "pong");
}

#[tokio::test]
async fn remove_all_for_the_only_did_keeps_messages_without_that_did() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    client.add(&connection, DID_A, "a1").await;
    client
        .call(
            "addMessage",
            json!({"connectionId": connection, "recipientDids": [], "payload": payload("nobody")}),
        )
        .await;
    client.add(&connection, DID_A, "a2").await;
    client
        .call(
            "removeAllMessages",
            json!({"connectionId": connection, "recipientDid": DID_A}),
        )
        .await;
    assert_eq!(
        texts(&client.take(json!({"connectionId": connection})).await),
        ["nobody"]
    );

    // With every message for that one DID, everything goes (and the queue starts clean).
    let other = unique_id("c");
    for i in 0..3 {
        client.add(&other, DID_B, &format!("{i}")).await;
    }
    client
        .take(json!({"connectionId": other, "limit": 1}))
        .await;
    client
        .call(
            "removeAllMessages",
            json!({"connectionId": other, "recipientDid": DID_B}),
        )
        .await;
    assert_eq!(client.count(&other).await, 0);
    assert!(client.take(json!({"connectionId": other})).await.is_empty());
    client.add(&other, DID_B, "again").await;
    assert_eq!(
        texts(
            &client
                .take(json!({"connectionId": other, "recipientDid": DID_B}))
                .await
        ),
        ["again"]
    );
}

#[tokio::test]
async fn remove_all_for_one_of_several_dids_works_in_batches_and_spares_the_others() {
    let (_redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    // More than one script's batch (2000) for A, interleaved with B's.
    for i in 0..2500 {
        client.add(&connection, DID_A, "a").await;
        if i % 500 == 0 {
            client.add(&connection, DID_B, &format!("b{i}")).await;
        }
    }
    // Some of A's are in flight: those go too.
    client
        .take(json!({"connectionId": connection, "recipientDid": DID_A, "limit": 3}))
        .await;
    let removed = client
        .call(
            "removeAllMessages",
            json!({"connectionId": connection, "recipientDid": DID_A}),
        )
        .await;
    assert_eq!(removed, true);
    let count_a = json!({"connectionId": connection, "recipientDid": DID_A});
    assert_eq!(client.call("getAvailableMessageCount", count_a).await, 0);
    let rest = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&rest), ["b0", "b500", "b1000", "b1500", "b2000"]);
}

#[tokio::test]
async fn a_connection_at_its_quota_is_refused_and_left_as_it_is() {
    let (_redis, server, mut client) = setup(&[("QUEUE_MAX_MESSAGES", "3")]).await;
    let (full, other) = (unique_id("c"), unique_id("c"));
    for i in 0..3 {
        client.add(&full, DID_A, &format!("{i}")).await;
    }
    let refused = client
        .call_err(
            "addMessage",
            json!({"connectionId": full, "recipientDids": [DID_A], "payload": payload("over")}),
        )
        .await;
    assert_eq!(refused["code"], -32002, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("QUEUE_MAX_MESSAGES"),
        "{refused}"
    );
    assert_eq!(client.count(&full).await, 3, "nothing added");
    assert_eq!(server.metric("mpr_queue_full_total", "").await, 1.0);
    // Other connections are not affected, and room made is room to add.
    client.add(&other, DID_A, "elsewhere").await;
    let taken = client
        .take(json!({"connectionId": full, "limit": 1, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&taken), ["0"]);
    client.add(&full, DID_A, "after").await;
    let rest = client.take(json!({"connectionId": full})).await;
    assert_eq!(texts(&rest), ["1", "2", "after"]);
}

#[tokio::test]
async fn a_connection_at_its_byte_quota_is_refused_until_room_is_made() {
    // Every message below is the same size: two fit under the quota, a third does not.
    let size = serde_json::to_string(&payload("m0")).unwrap().len();
    let quota = (size * 5 / 2).to_string();
    let (_redis, server, mut client) = setup(&[("QUEUE_MAX_BYTES", &quota)]).await;
    let connection = unique_id("c");
    let refused = async |client: &mut Client, text: &str| {
        let error = client
            .call_err(
                "addMessage",
                json!({"connectionId": connection, "recipientDids": [DID_A], "payload": payload(text)}),
            )
            .await;
        assert_eq!(error["code"], -32002, "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("QUEUE_MAX_BYTES"), "{error}");
    };
    client.add(&connection, DID_A, "m0").await;
    client.add(&connection, DID_A, "m1").await;
    refused(&mut client, "m2").await;
    assert_eq!(client.count(&connection).await, 2, "nothing added");
    // One too big for the quota on its own is refused on any queue.
    refused(&mut client, &"x".repeat(size * 3)).await;
    assert_eq!(
        server
            .metric("mpr_queue_full_total", "quota=\"bytes\"")
            .await,
        2.0
    );

    // Each way of removing a message gives its bytes back: removeMessages after a take...
    let taken = client
        .take(json!({"connectionId": connection, "limit": 1}))
        .await;
    let id = taken[0]["id"].clone();
    let removed = json!({"connectionId": connection, "messageIds": [id]});
    client.call("removeMessages", removed).await;
    client.add(&connection, DID_A, "m2").await;
    refused(&mut client, "m3").await;
    // ...a take that deletes...
    let taken = client
        .take(json!({"connectionId": connection, "limit": 1, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&taken), ["m1"]);
    client.add(&connection, DID_A, "m3").await;
    refused(&mut client, "m4").await;
    // ...and removeAllMessages.
    let all = json!({"connectionId": connection});
    client.call("removeAllMessages", all).await;
    client.add(&connection, DID_A, "m4").await;
    client.add(&connection, DID_A, "m5").await;
    refused(&mut client, "m6").await;
    let rest = client.take(json!({"connectionId": connection})).await;
    assert_eq!(texts(&rest), ["m4", "m5"]);
}

/// What `settle_add` (run when an add's reply was lost) answers for a message id.
fn settle(redis: &Redis, connection: &str, id: &str) -> String {
    let keys = mpr::store::Keys::new("mpr");
    let fence = (mpr::model::now_ms() + 60_000) as u64;
    let mut args = mpr::store::functions::SETTLE_ADD.call_args(&keys, connection, &[], fence);
    args.insert(0, "FCALL".into());
    args.push(id.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    redis.cli(&args)
}

#[tokio::test]
async fn an_add_whose_reply_was_lost_is_known_stored_even_once_removed() {
    let (redis, _server, mut client) = setup(&[]).await;
    let connection = unique_id("c");
    let kept = client.add(&connection, DID_A, "kept").await;
    let removed = client.add(&connection, DID_A, "removed").await;
    let remove = json!({"connectionId": connection, "messageIds": [removed]});
    client.call("removeMessages", remove).await;
    // A client may remove a message before the settle of its add runs: it was stored.
    assert_eq!(settle(&redis, &connection, &kept), "1");
    assert_eq!(settle(&redis, &connection, &removed), "1");
    // Never added: not stored, and never to be (a late add fails as a duplicate).
    assert_eq!(settle(&redis, &connection, "0123456789abcdef01234567"), "0");
    // After the whole queue went at once, nobody can tell.
    client
        .call("removeAllMessages", json!({"connectionId": connection}))
        .await;
    assert_eq!(settle(&redis, &connection, "76543210fedcba9876543210"), "2");
}

#[tokio::test]
async fn queue_status_reads_count_bytes_and_the_pending_ends_for_the_connection_or_one_did() {
    let (_redis, _server, mut client) = setup(&[("VISIBILITY_TIMEOUT_MS", "300")]).await;
    let connection = unique_id("c");
    for (did, text) in [(DID_A, "m0"), (DID_B, "m1-longer"), (DID_A, "m2")] {
        client.add(&connection, did, text).await;
    }
    let bytes: usize = ["m0", "m1-longer", "m2"]
        .iter()
        .map(|t| payload(t).to_string().len())
        .sum();
    let all = client.queue_status(&connection, None).await;
    let for_b = client.queue_status(&connection, Some(DID_B)).await;

    // Taken without delete: in flight, so not pending, but still held.
    let taken = client.take(json!({"connectionId": connection})).await;
    assert_eq!(all["messageCount"], 3);
    assert_eq!(all["totalBytes"], bytes);
    assert_eq!(all["oldestReceivedAt"], taken[0]["receivedAt"]);
    assert_eq!(all["newestReceivedAt"], taken[2]["receivedAt"]);
    assert_eq!(for_b["messageCount"], 1);
    assert_eq!(
        for_b["totalBytes"],
        serde_json::Value::Null,
        "not kept per DID"
    );
    assert_eq!(for_b["oldestReceivedAt"], taken[1]["receivedAt"]);
    assert_eq!(for_b["newestReceivedAt"], taken[1]["receivedAt"]);
    let in_flight = client.queue_status(&connection, None).await;
    assert_eq!(
        in_flight,
        json!({"messageCount": 0, "totalBytes": bytes, "oldestReceivedAt": null, "newestReceivedAt": null})
    );

    // Past the visibility timeout they are pending again, in their places.
    let mut again = in_flight;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        again = client.queue_status(&connection, None).await;
        if again["messageCount"] == 3 {
            break;
        }
    }
    assert_eq!(again, all, "the same figures once they are pending again");

    client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": ids(&taken)}),
        )
        .await;
    assert_eq!(
        client.queue_status(&connection, None).await,
        json!({"messageCount": 0, "totalBytes": 0, "oldestReceivedAt": null, "newestReceivedAt": null})
    );
    let error = client
        .call_err("getQueueStatus", json!({"recipientDid": DID_A}))
        .await;
    assert_eq!(error["code"], -32602);
    assert!(
        error["message"].as_str().unwrap().contains("connectionId"),
        "{error}"
    );
}
