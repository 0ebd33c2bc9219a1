//! The cold tier against a real redis-server and a real MongoDB-wire server (SecantusDB):
//! moving, reads across both tiers, concurrent movers, crashes at each step of a move, MongoDB
//! outages under traffic, retention, and the migration of a Node MPR's data.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bson::{DateTime, doc};
use futures_util::TryStreamExt;
use serde_json::json;
use support::{Client, Mongo, Redis, Server, eventually, ids, payload, texts, unique_id};

const MOVE_WAIT: Duration = Duration::from_secs(30);

/// A server moving messages older than one second, looking every 100 ms.
async fn cold_server(redis: &Redis, mongo_url: &str, env: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("MONGODB_URI", mongo_url),
        ("THRESHOLD_TIMESTAMP", "1000"),
        ("MOVER_INTERVAL_MS", "100"),
    ];
    all.extend_from_slice(env);
    Server::start(redis, &all).await
}

fn cold_count(redis: &Redis, connection_id: &str) -> u64 {
    redis
        .cli(&["ZCARD", &format!("mpr:{{{connection_id}}}:cold")])
        .parse()
        .unwrap()
}

async fn documents(mongo: &Mongo, database: &str, connection_id: &str) -> Vec<bson::Document> {
    mongo
        .messages(database)
        .await
        .find(doc! {"connectionId": connection_id})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn add_all(
    client: &mut Client,
    connection_id: &str,
    did: &str,
    texts: &[String],
) -> Vec<String> {
    let mut added = Vec::new();
    for text in texts {
        added.push(client.add(connection_id, did, text).await);
    }
    added
}

/// Documents of removed messages are deleted in the background, right after the reply.
async fn documents_gone(mongo: &Mongo, database: &str, connection_id: &str) {
    eventually(MOVE_WAIT, async || {
        documents(mongo, database, connection_id).await.is_empty()
    })
    .await;
}

/// Waits until the connection has `count` documents (deletions run in the background).
async fn documents_settle(mongo: &Mongo, database: &str, connection_id: &str, count: usize) {
    eventually(MOVE_WAIT, async || {
        documents(mongo, database, connection_id).await.len() == count
    })
    .await;
}

fn numbered(tag: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{tag}-{i:03}")).collect()
}

#[tokio::test]
async fn old_messages_move_to_mongodb_in_the_node_format() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let env = [("VISIBILITY_TIMEOUT_MS", "1500")];
    let server = cold_server(&redis, &mongo.url(&database), &env).await;
    // Exported from start, before anything changed it.
    let (_, metrics) = server.http_get("/metrics").await;
    assert!(metrics.contains("\nmpr_cold_available 1\n"), "{metrics}");
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    let first = client.add(&connection, "did:key:z6MkA", "first").await;
    let hot = client
        .take(json!({"connectionId": connection, "limit": 1}))
        .await;
    let second = client.add(&connection, "did:key:z6MkA", "second").await;

    // The pending message moves; the one in flight stays in Redis for now.
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 1).await;
    let stored = documents(mongo, &database, &connection).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let document = &stored[0];
    assert_eq!(document.get_str("messageId").unwrap(), second);
    assert_eq!(document.get_str("state").unwrap(), "pending");
    let keys = document.get_array("recipientKeys").unwrap();
    assert_eq!(keys[0].as_str(), Some("did:key:z6MkA"));
    let encrypted = document.get_document("encryptedMessage").unwrap();
    assert_eq!(encrypted.get_str("ciphertext").unwrap(), "second");
    assert_eq!(
        document.get_i64("encryptedMessageByteCount").unwrap() as usize,
        payload("second").to_string().len()
    );
    assert!(document.get_datetime("createdAt").is_ok());
    assert!(document.get_datetime("updatedAt").is_ok());
    // Redis keeps the message's place and header, not its body.
    let record = redis.cli(&["HGET", &format!("mpr:{{{connection}}}:msg"), &second]);
    assert!(!record.contains("second"), "{record}");

    // Pending again after the visibility timeout, the first one moves too, and still comes
    // first: order is by arrival, whatever the tier.
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 2).await;
    let taken = client
        .take(json!({"connectionId": connection, "limit": 10, "deleteMessages": true}))
        .await;
    assert_eq!(ids(&taken), [first, second]);
    assert_eq!(
        taken[0], hot[0],
        "a cold message reads back exactly as it was"
    );
    documents_gone(mongo, &database, &connection).await;
    assert_eq!(client.count(&connection).await, 0);
}

#[tokio::test]
async fn both_tiers_read_as_one_queue() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let server = cold_server(
        &redis,
        &mongo.url(&database),
        &[("VISIBILITY_TIMEOUT_MS", "1500")],
    )
    .await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    let mut old = Vec::new();
    for (i, text) in numbered("old", 6).iter().enumerate() {
        let did = if i % 2 == 0 { "did:a" } else { "did:b" };
        old.push(client.add(&connection, did, text).await);
    }
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 6).await;
    let fresh = add_all(&mut client, &connection, "did:a", &numbered("new", 3)).await;
    assert_eq!(cold_count(&redis, &connection), 6, "new messages stay hot");
    assert_eq!(client.count(&connection).await, 9);
    let count_b = client
        .call(
            "getAvailableMessageCount",
            json!({"connectionId": connection, "recipientDid": "did:b"}),
        )
        .await;
    assert_eq!(count_b, json!(3));

    // A byte limit that ends in the hot tier: 4 cold + 1 hot... by recipient did:a.
    let size = payload("old-000").to_string().len();
    let taken = client
        .take(json!({"connectionId": connection, "recipientDid": "did:a", "limit": 10, "limitBytes": 4 * size}))
        .await;
    assert_eq!(texts(&taken), ["old-000", "old-002", "old-004", "new-000"]);
    // In flight across both tiers: hidden from takes and counts, then back in place.
    assert_eq!(client.count(&connection).await, 5);
    let rest = client
        .take(json!({"connectionId": connection, "limit": 10}))
        .await;
    assert_eq!(
        texts(&rest),
        ["old-001", "old-003", "old-005", "new-001", "new-002"]
    );
    assert_eq!(client.count(&connection).await, 0);
    eventually(Duration::from_secs(10), async || {
        client.count(&connection).await == 9
    })
    .await;
    let all = client
        .take(json!({"connectionId": connection, "limit": 3}))
        .await;
    assert_eq!(texts(&all), ["old-000", "old-001", "old-002"]);

    // Removal reaches MongoDB: by id, by take with delete, and all at once. (The new
    // messages have grown old enough to move meanwhile too.)
    client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": [old[0], old[1]]}),
        )
        .await;
    let deleted = client
        .take(json!({"connectionId": connection, "limit": 2, "deleteMessages": true}))
        .await;
    assert_eq!(
        texts(&deleted),
        ["old-003", "old-004"],
        "old-002 is still in flight"
    );
    let removed = [&old[0], &old[1], &old[3], &old[4]];
    eventually(MOVE_WAIT, async || {
        let stored = documents(mongo, &database, &connection).await;
        stored
            .iter()
            .all(|d| !removed.contains(&&d.get_str("messageId").unwrap().to_owned()))
    })
    .await;
    let stored: HashSet<String> = documents(mongo, &database, &connection)
        .await
        .iter()
        .map(|d| d.get_str("messageId").unwrap().to_owned())
        .collect();
    assert!(stored.is_superset(&HashSet::from([old[2].clone(), old[5].clone()])));
    for gone in [&old[0], &old[1], &old[3], &old[4]] {
        assert!(!stored.contains(gone), "document of removed {gone} left");
    }
    assert!(
        stored
            .iter()
            .all(|id| old.contains(id) || fresh.contains(id))
    );
    client
        .call("removeAllMessages", json!({"connectionId": connection}))
        .await;
    documents_gone(mongo, &database, &connection).await;
    assert_eq!(client.count(&connection).await, 0);
    assert!(
        client
            .take(json!({"connectionId": connection}))
            .await
            .is_empty()
    );
}

/// A Pickup 2.0 status counts what the cold tier holds as what Redis holds (docs/api.md).
#[tokio::test]
async fn queue_status_counts_cold_messages() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let server = cold_server(&redis, &mongo.url(&database), &[]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    let old = numbered("old", 3);
    add_all(&mut client, &connection, "did:a", &old[..2]).await;
    client.add(&connection, "did:b", &old[2]).await;
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 3).await;
    documents_settle(mongo, &database, &connection, 3).await;
    add_all(&mut client, &connection, "did:b", &numbered("new", 2)).await;
    assert_eq!(cold_count(&redis, &connection), 3, "new messages stay hot");
    let bytes: usize = ["old-000", "old-001", "old-002", "new-000", "new-001"]
        .iter()
        .map(|t| payload(t).to_string().len())
        .sum();
    let all = client.queue_status(&connection, None).await;
    let for_b = client.queue_status(&connection, Some("did:b")).await;

    // Taken in queue order across both tiers: the receivedAt the status reported.
    let taken = client
        .take(json!({"connectionId": connection, "limit": 5}))
        .await;
    assert_eq!(
        texts(&taken),
        ["old-000", "old-001", "old-002", "new-000", "new-001"]
    );
    assert_eq!(all["messageCount"], 5, "{all}");
    assert_eq!(all["totalBytes"], bytes, "{all}");
    assert_eq!(
        all["oldestReceivedAt"], taken[0]["receivedAt"],
        "the oldest is cold"
    );
    assert_eq!(all["newestReceivedAt"], taken[4]["receivedAt"]);
    assert_eq!(for_b["messageCount"], 3, "{for_b}");
    assert_eq!(
        for_b["oldestReceivedAt"], taken[2]["receivedAt"],
        "did:b's oldest is cold"
    );
    assert_eq!(for_b["newestReceivedAt"], taken[4]["receivedAt"]);
    // In flight: held (bytes) but not pending.
    assert_eq!(
        client.queue_status(&connection, None).await,
        json!({"messageCount": 0, "totalBytes": bytes, "oldestReceivedAt": null, "newestReceivedAt": null})
    );
    client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": ids(&taken[..2])}),
        )
        .await;
    documents_settle(mongo, &database, &connection, 1).await;
    let left: usize = ["old-002", "new-000", "new-001"]
        .iter()
        .map(|t| payload(t).to_string().len())
        .sum();
    assert_eq!(
        client.queue_status(&connection, None).await["totalBytes"],
        left,
        "removed cold messages leave the total"
    );
}

/// Three instances move one data set at once, small batches, while a client takes and removes:
/// every message ends in exactly one place, none is lost or handed out twice.
#[tokio::test]
async fn three_movers_at_once_move_each_message_exactly_once() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let url = mongo.url(&database);
    let env = [("MOVER_BATCH_SIZE", "7"), ("MOVER_INTERVAL_MS", "20")];
    let servers = [
        cold_server(&redis, &url, &env).await,
        cold_server(&redis, &url, &env).await,
        cold_server(&redis, &url, &env).await,
    ];
    let mut client = Client::connect(&servers[0].url()).await;
    let connections: Vec<String> = (0..4).map(|_| unique_id("conn")).collect();
    let mut expected = Vec::new();
    for connection in &connections {
        add_all(&mut client, connection, "did:x", &numbered(connection, 60)).await;
        expected.extend(numbered(connection, 60));
    }
    // While moving: remove the first five of each connection, and take-and-delete five more.
    let mut gone = HashSet::new();
    for connection in &connections {
        let head = client
            .take(json!({"connectionId": connection, "limit": 5}))
            .await;
        client
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": ids(&head)}),
            )
            .await;
        let next = client
            .take(json!({"connectionId": connection, "limit": 5, "deleteMessages": true}))
            .await;
        gone.extend(texts(&head));
        gone.extend(texts(&next));
    }
    assert_eq!(gone.len(), 40);
    for connection in &connections {
        eventually(MOVE_WAIT, async || cold_count(&redis, connection) == 50).await;
    }
    let mut seen = Vec::new();
    for connection in &connections {
        // Documents written for messages taken or removed meanwhile are deleted by their
        // mover: exactly one document per remaining message.
        eventually(MOVE_WAIT, async || {
            documents(mongo, &database, connection).await.len() == 50
        })
        .await;
        let stored = documents(mongo, &database, connection).await;
        let unique: HashSet<&str> = stored
            .iter()
            .map(|d| d.get_str("messageId").unwrap())
            .collect();
        assert_eq!(unique.len(), 50);
        let taken = client
            .take(json!({"connectionId": connection, "limit": 100, "deleteMessages": true}))
            .await;
        assert_eq!(taken.len(), 50);
        let expected_order: Vec<String> = numbered(connection, 60)
            .into_iter()
            .filter(|t| !gone.contains(t))
            .collect();
        assert_eq!(texts(&taken), expected_order, "order kept across movers");
        seen.extend(texts(&taken));
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a message was handed out twice");
    assert_eq!(
        seen.len() + gone.len(),
        expected.len(),
        "a message was lost"
    );
    // Each message moved at most once (some of the 40 gone ones may have moved before).
    let mut moved = 0.0;
    for server in &servers {
        moved += server.metric("mpr_cold_moved_total", "").await;
    }
    assert!((200.0..=240.0).contains(&moved), "moved {moved}");
}

/// kill -9 (abort) right after the documents are written, then right after Redis committed the
/// move: a restart loses nothing and no client ever sees a message twice.
#[tokio::test]
async fn a_crash_at_any_step_of_a_move_loses_nothing() {
    for point in ["mover_after_write", "mover_after_commit"] {
        let redis = Redis::start();
        let mongo = Mongo::shared();
        let database = unique_id("db");
        let url = mongo.url(&database);
        // This server does not move (its first pass is far off); what it adds is due for a
        // visit after cold_server's threshold.
        let quiet = [
            ("MONGODB_URI", url.as_str()),
            ("THRESHOLD_TIMESTAMP", "1000"),
            ("VISIBILITY_TIMEOUT_MS", "1000"),
            ("MOVER_INTERVAL_MS", "600000"),
        ];
        // All 12 must be in the mover's first batch, however slowly a loaded machine adds them
        // (a fsync per add): they are added before the mover starts, and it starts once the
        // last is past the threshold.
        let adder = Server::start(&redis, &quiet).await;
        let mut client = Client::connect(&adder.url()).await;
        let connection = unique_id("conn");
        let added = add_all(&mut client, &connection, "did:x", &numbered("m", 12)).await;
        drop((client, adder));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let crash = [("MPR_CRASH_AT", point), ("MOVER_LEASE_MS", "1000")];
        let mut doomed = cold_server(&redis, &url, &crash).await;
        // The mover aborts the process at that step of its first batch.
        let exit = doomed.wait_exit(Duration::from_secs(30));
        assert!(
            exit.is_some_and(|status| !status.success()),
            "{point}: no crash"
        );
        let written = documents(mongo, &database, &connection).await.len();
        assert_eq!(written, 12, "{point}: the batch's documents were written");
        let cold_after_crash = cold_count(&redis, &connection);
        assert_eq!(
            cold_after_crash,
            if point == "mover_after_write" { 0 } else { 12 }
        );

        // Before any recovery, clients see each message once, from Redis or MongoDB.
        let survivor = Server::start(&redis, &quiet).await;
        let mut client = Client::connect(&survivor.url()).await;
        let peek = client
            .take(json!({"connectionId": connection, "limit": 100}))
            .await;
        assert_eq!(ids(&peek), added, "{point}");
        // Four are delivered before any mover comes back: after the first crash their
        // documents are left over from the move, unseen, and must not stay.
        let (delivered, kept) = added.split_at(4);
        client
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": delivered}),
            )
            .await;
        drop(survivor);

        // A mover finishes the job once the dead one's lease expired.
        let mover = cold_server(&redis, &url, &[]).await;
        eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 8).await;
        documents_settle(mongo, &database, &connection, 8).await;
        let stored = documents(mongo, &database, &connection).await;
        let unique: HashSet<&str> = stored
            .iter()
            .map(|d| d.get_str("messageId").unwrap())
            .collect();
        assert_eq!(
            unique,
            kept.iter().map(String::as_str).collect(),
            "{point}: one document per message, none for the delivered ones"
        );
        let mut client = Client::connect(&mover.url()).await;
        let taken = client
            .take(json!({"connectionId": connection, "limit": 100, "deleteMessages": true}))
            .await;
        assert_eq!(ids(&taken), kept, "{point}: nothing lost, nothing twice");
        documents_gone(mongo, &database, &connection).await;
    }
}

/// Messages taken, and removed, between the mover's write to MongoDB and its commit in Redis
/// are not moved: the taken one stays in flight (not visible twice), the removed one stays
/// removed, and their documents are deleted.
#[tokio::test]
async fn messages_taken_or_removed_during_a_move_are_not_moved() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let env = [
        ("MPR_PAUSE_AT", "mover_after_write=3000"),
        ("VISIBILITY_TIMEOUT_MS", "60000"),
    ];
    let server = cold_server(&redis, &mongo.url(&database), &env).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    let added = add_all(&mut client, &connection, "did:x", &numbered("m", 3)).await;
    // The mover has written the three documents and waits before committing.
    eventually(MOVE_WAIT, async || {
        documents(mongo, &database, &connection).await.len() == 3
    })
    .await;
    let taken = client
        .take(json!({"connectionId": connection, "limit": 1}))
        .await;
    assert_eq!(ids(&taken), added[..1]);
    client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": [added[1]]}),
        )
        .await;
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 1).await;
    eventually(MOVE_WAIT, async || {
        documents(mongo, &database, &connection).await.len() == 1
    })
    .await;
    let stored = documents(mongo, &database, &connection).await;
    assert_eq!(stored[0].get_str("messageId").unwrap(), added[2]);
    assert_eq!(
        client.count(&connection).await,
        1,
        "the taken one is still in flight"
    );
    let rest = client
        .take(json!({"connectionId": connection, "limit": 10}))
        .await;
    assert_eq!(ids(&rest), added[2..], "nothing handed out twice");
}

/// A mover that stalls past its lease is fenced: another instance moves the messages, and the
/// stalled one's commit is refused instead of acting on a connection it no longer holds.
#[tokio::test]
async fn a_mover_that_lost_its_lease_is_fenced() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let url = mongo.url(&database);
    let slow_env = [
        ("MPR_PAUSE_AT", "mover_after_write=4000"),
        ("MOVER_LEASE_MS", "1000"),
    ];
    let slow = cold_server(&redis, &url, &slow_env).await;
    let mut client = Client::connect(&slow.url()).await;
    let connection = unique_id("conn");
    let added = add_all(&mut client, &connection, "did:x", &numbered("m", 5)).await;
    eventually(MOVE_WAIT, async || {
        documents(mongo, &database, &connection).await.len() == 5
    })
    .await;
    // The slow mover now holds documents and a lease that expires while it waits.
    let other = cold_server(&redis, &url, &[]).await;
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 5).await;
    eventually(MOVE_WAIT, async || {
        slow.metric("mpr_mover_fenced_total", "").await >= 1.0
    })
    .await;
    assert_eq!(other.metric("mpr_cold_moved_total", "").await, 5.0);
    assert_eq!(slow.metric("mpr_cold_moved_total", "").await, 0.0);
    let stored = documents(mongo, &database, &connection).await;
    assert_eq!(stored.len(), 5, "one document per message");
    let taken = client
        .take(json!({"connectionId": connection, "limit": 10, "deleteMessages": true}))
        .await;
    assert_eq!(ids(&taken), added);
}

/// MOVER_MAX_RATE paces the mover: never more than the rate allows (with a few batches of
/// slack), and everything still moves.
#[tokio::test]
async fn the_mover_keeps_to_its_rate_cap() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let env = [("MOVER_MAX_RATE", "20"), ("MOVER_BATCH_SIZE", "5")];
    let server = cold_server(&redis, &mongo.url(&unique_id("db")), &env).await;
    let mut client = Client::connect(&server.url()).await;
    let connections: Vec<String> = (0..3).map(|_| unique_id("conn")).collect();
    for connection in &connections {
        add_all(&mut client, connection, "did:x", &numbered("m", 20)).await;
    }
    let moved = || {
        connections
            .iter()
            .map(|c| cold_count(&redis, c))
            .sum::<u64>()
    };
    eventually(MOVE_WAIT, async || moved() > 0).await;
    // The first move was seen within one 50 ms poll: counting from 100 ms back is generous.
    let started = std::time::Instant::now() - Duration::from_millis(100);
    while moved() < 60 {
        let allowed = 20.0 * started.elapsed().as_secs_f64() + 4.0 * 5.0;
        assert!(
            moved() as f64 <= allowed,
            "{} moved after {:?}, the cap allows {allowed}",
            moved(),
            started.elapsed()
        );
        assert!(
            started.elapsed() < MOVE_WAIT,
            "moving stalled at {}",
            moved()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "60 messages at 20/s moved in {:?}",
        started.elapsed()
    );
}

/// MongoDB stops under traffic: addMessage never fails, reads serve Redis, nothing is lost,
/// and moving resumes when MongoDB is back.
#[tokio::test]
async fn a_mongodb_outage_under_traffic_loses_nothing() {
    let redis = Redis::start();
    let storage = std::env::temp_dir().join(unique_id("secantus"));
    let mut mongo = Mongo::start(storage.to_str().unwrap());
    let url = mongo.url("outage");
    let server = cold_server(&redis, &url, &[("MONGODB_TIMEOUT_MS", "300")]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    let mut added = add_all(&mut client, &connection, "did:x", &numbered("before", 10)).await;
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 10).await;

    mongo.stop();
    for text in numbered("during", 20) {
        let reply = client
            .request(
                "addMessage",
                json!({"connectionId": connection, "recipientDids": ["did:x"], "payload": payload(&text)}),
            )
            .await;
        assert!(
            reply.get("error").is_none(),
            "addMessage failed while MongoDB is down: {reply}"
        );
        added.push(reply["result"]["messageId"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.http_get("/ready").await.0, 503);
    assert_eq!(
        client.count(&connection).await,
        30,
        "counts come from Redis"
    );
    // A take serves what Redis holds: the hot messages; the cold ones stay queued.
    let served = client
        .take(json!({"connectionId": connection, "limit": 5}))
        .await;
    assert_eq!(texts(&served), numbered("during", 5));
    assert!(
        server
            .metric("mpr_cold_degraded_total", "takeFromQueue")
            .await
            >= 1.0
    );
    assert_eq!(server.metric("mpr_cold_available", "").await, 0.0);
    client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": ids(&served)}),
        )
        .await;

    mongo.restart();
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 25).await;
    assert_eq!(server.http_get("/ready").await.0, 200);
    let rest = client
        .take(json!({"connectionId": connection, "limit": 100, "deleteMessages": true}))
        .await;
    let mut expected = numbered("before", 10);
    expected.extend(numbered("during", 20).into_iter().skip(5));
    assert_eq!(texts(&rest), expected, "nothing lost, order kept");
    assert_eq!(rest.len() + served.len(), added.len());
    drop(mongo);
    std::fs::remove_dir_all(storage).ok();
}

/// A MongoDB that is down when the server starts does not stop it: it queues and serves from
/// Redis, and says it is not ready.
#[tokio::test]
async fn the_server_starts_and_queues_while_mongodb_is_down() {
    let redis = Redis::start();
    let nowhere = format!(
        "mongodb://127.0.0.1:{}/db?directConnection=true",
        support::free_port()
    );
    let env = [
        ("MONGODB_URI", nowhere.as_str()),
        ("MONGODB_TIMEOUT_MS", "200"),
    ];
    let server = Server::spawn(&redis, &env);
    eventually(Duration::from_secs(20), async || {
        server.http_get("/health").await.0 == 200
    })
    .await;
    let (_, metrics) = server.http_get("/metrics").await;
    assert!(metrics.contains("\nmpr_cold_available 0\n"), "{metrics}");
    let (status, reason) = server.http_get("/ready").await;
    assert_eq!(status, 503);
    assert!(reason.contains("MongoDB"), "{reason}");
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    let added = add_all(&mut client, &connection, "did:x", &numbered("m", 3)).await;
    assert_eq!(client.count(&connection).await, 3);
    let taken = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(ids(&taken), added);
}

#[tokio::test]
async fn retention_deletes_old_messages_from_both_tiers() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let server = cold_server(&redis, &mongo.url(&database), &[("MESSAGE_TTL", "3")]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("conn");
    add_all(&mut client, &connection, "did:x", &numbered("old", 5)).await;
    eventually(MOVE_WAIT, async || cold_count(&redis, &connection) == 5).await;
    assert_eq!(documents(mongo, &database, &connection).await.len(), 5);
    eventually(MOVE_WAIT, async || client.count(&connection).await == 0).await;
    eventually(MOVE_WAIT, async || {
        documents(mongo, &database, &connection).await.is_empty()
    })
    .await;
    assert_eq!(server.metric("mpr_messages_expired_total", "").await, 5.0);
    let indexes: Vec<mongodb::IndexModel> = mongo
        .messages(&database)
        .await
        .list_indexes()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ttl = indexes
        .iter()
        .filter_map(|index| index.options.as_ref())
        .find(|options| options.name.as_deref() == Some("mpr_retention"))
        .and_then(|options| options.expire_after);
    assert_eq!(ttl, Some(Duration::from_secs(3)), "TTL index in MongoDB");
}

/// Data exactly as the Node MPR leaves it: queue lists in Redis and documents in MongoDB.
#[tokio::test]
async fn node_mpr_data_is_migrated_once_and_served() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    let url = mongo.url(&database);
    let connection = unique_id("conn");
    let t0 = 1_700_000_000_000_i64;
    // MongoDB: the two oldest, written by the Node server (mongoose adds _id and __v).
    let node_documents: Vec<bson::Document> = (0..2)
        .map(|i| {
            doc! {
                "messageId": format!("65a0000000000000000000{i:02}"),
                "connectionId": &connection,
                "recipientKeys": ["did:key:node"],
                "encryptedMessage": {"protected": "p", "iv": "i", "ciphertext": format!("node-db-{i}"), "tag": "t"},
                "state": "pending",
                "createdAt": DateTime::from_millis(t0 + i),
                "updatedAt": DateTime::from_millis(t0 + i),
                "__v": 0,
            }
        })
        .collect();
    mongo
        .messages(&database)
        .await
        .insert_many(node_documents)
        .await
        .unwrap();
    // Redis: three newer ones in the Node server's list, oldest first.
    let list = format!("connectionId:{connection}:queuemessages");
    for i in 0..3 {
        let entry = json!({
            "messageId": format!("65b0000000000000000000{i:02}"),
            "connectionId": connection,
            "recipientDids": ["did:key:node"],
            "encryptedMessage": payload(&format!("node-redis-{i}")),
            "state": "pending",
            "encryptedMessageByteCount": 80,
            "receivedAt": format!("2023-11-14T22:14:0{i}.000Z"),
        });
        redis.cli(&["RPUSH", &list, &entry.to_string()]);
    }
    redis.cli(&["RPUSH", &list, "not json"]);

    let first = migrate(&redis, &url);
    assert!(first.contains("imported: 5"), "{first}");
    assert!(first.contains("unreadable: 1"), "{first}");
    let second = migrate(&redis, &url);
    assert!(
        second.contains("imported: 0, already_imported: 5"),
        "{second}"
    );

    let server = Server::start(&redis, &[("MONGODB_URI", &url)]).await;
    let mut client = Client::connect(&server.url()).await;
    let newer = client
        .add(&connection, "did:key:node", "after-switch")
        .await;
    assert_eq!(client.count(&connection).await, 6);
    let taken = client
        .take(json!({"connectionId": connection, "limit": 10}))
        .await;
    assert_eq!(
        texts(&taken),
        [
            "node-db-0",
            "node-db-1",
            "node-redis-0",
            "node-redis-1",
            "node-redis-2",
            "after-switch"
        ]
    );
    assert_eq!(taken[0]["id"], "65a000000000000000000000");
    assert_eq!(taken[0]["receivedAt"], "2023-11-14T22:13:20.000Z");
    assert_eq!(taken[2]["receivedAt"], "2023-11-14T22:14:00.000Z");
    let removed: Vec<String> = ids(&taken);
    client
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": removed}),
        )
        .await;
    // The Node documents go with their messages.
    documents_gone(mongo, &database, &connection).await;

    // A third run after delivery brings nothing back.
    let third = migrate(&redis, &url);
    assert!(third.contains("imported: 0,"), "{third}");
    assert_eq!(client.count(&connection).await, 0);
    assert!(
        client
            .take(json!({"connectionId": connection}))
            .await
            .is_empty()
    );
    assert_eq!(taken[5]["id"], json!(newer));
}

/// Runs `mpr migrate-from-node`; returns its report line. Not on a terminal, it logs its
/// progress in plain lines: lists, then documents, done out of those found.
fn migrate(redis: &Redis, mongo_url: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mpr"))
        .args(["migrate-from-node", "--progress-interval-ms", "10"])
        .env_clear()
        .env("REDIS_URL", redis.url())
        .envs(redis.topology_env())
        .env("MONGODB_URI", mongo_url)
        .env("LOG_LEVEL", "info")
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{logs}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let all = format!("{stdout}{logs}");
    for what in ["lists", "documents"] {
        let line = all
            .lines()
            .find(|line| line.contains(&format!("progress: {what} ")))
            .unwrap_or_else(|| panic!("no progress line for {what}: {all}"));
        assert!(line.contains("/s, ETA"), "{line}");
    }
    stdout
        .lines()
        .filter(|line| {
            !line.contains("progress:") && !line.contains(" INFO ") && !line.contains(" WARN ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Messages MongoDB cannot store (too large as BSON, too deep) stay in Redis, counted, while
/// the rest of their batch and other connections move; MongoDB is not taken for down.
#[tokio::test]
async fn messages_mongodb_cannot_store_stay_in_redis_and_the_rest_moves() {
    let redis = Redis::start();
    let mongo = Mongo::shared();
    let database = unique_id("db");
    // Limits far above the defaults let addMessage queue what the cold tier cannot store, as
    // an older version (or a server configured so) would have.
    let env = [
        ("MAX_PAYLOAD_DEPTH", "1000"),
        ("MAX_PAYLOAD_BSON_BYTES", "4294967296"),
        ("WS_MAX_MESSAGE_BYTES", "33554432"),
    ];
    let server = cold_server(&redis, &mongo.url(&database), &env).await;
    let mut client = Client::connect(&server.url()).await;
    let (a, b) = (unique_id("a"), unique_id("b"));
    let sent = [
        payload("a0"),
        // 3 MB of small numbers: some 25 MB of BSON, more than a MongoDB document holds.
        json!({"protected": "p", "n": vec![0; 1_500_000]}),
        payload("a1"),
        // Deeper than serde_json converts to BSON, and deeper than MongoDB nests.
        support::nested_payload(300),
        payload("a2"),
        support::nested_payload(110),
        payload("a3"),
    ];
    let mut added = Vec::new();
    for message in &sent {
        let reply = client
            .call(
                "addMessage",
                json!({"connectionId": a, "recipientDids": ["did:a"], "payload": message}),
            )
            .await;
        added.push(reply["messageId"].clone());
    }
    add_all(&mut client, &b, "did:b", &numbered("b", 5)).await;

    eventually(MOVE_WAIT, async || {
        cold_count(&redis, &a) == 4 && cold_count(&redis, &b) == 5
    })
    .await;
    eventually(MOVE_WAIT, async || {
        server.metric("mpr_cold_unmovable_total", "").await >= 3.0
    })
    .await;
    assert_eq!(documents(mongo, &database, &a).await.len(), 4);
    assert_eq!(server.http_get("/ready").await.0, 200);
    let (_, metrics) = server.http_get("/metrics").await;
    assert!(
        !metrics.contains("mpr_cold_available 0"),
        "MongoDB taken for down"
    );
    assert_eq!(server.metric("mpr_mover_failures_total", "").await, 0.0);
    // One queue still, in order: the unmovable ones are served from Redis (but for the 300
    // levels, more than this test's JSON parser reads).
    assert_eq!(client.count(&a).await, 7);
    let params = json!({"connectionId": a, "messageIds": [added[3]]});
    client.call("removeMessages", params).await;
    let taken = client
        .take(json!({"connectionId": a, "limit": 100, "deleteMessages": true}))
        .await;
    let payloads = taken.iter().map(|m| &m["encryptedMessage"]);
    let expected = sent.iter().enumerate().filter(|(i, _)| *i != 3);
    assert!(
        payloads.eq(expected.map(|(_, m)| m)),
        "order or payloads differ"
    );
    assert_eq!(server.metric("mpr_cold_degraded_total", "").await, 0.0);
    let taken = client
        .take(json!({"connectionId": b, "limit": 100, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&taken), numbered("b", 5));
}
