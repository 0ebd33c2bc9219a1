//! REDIS_WAIT_REPLICAS: writes wait for replicas; fewer in time make the call an error that
//! says exactly what is known.

mod support;

use serde_json::json;
use support::{Client, Redis, Server, payload, unique_id};

const DID: &str = "did:key:z6MkReplication";

#[tokio::test]
async fn writes_wait_for_replicas_and_say_so_when_too_few_confirm() {
    let primary = Redis::start();
    // Generous: on a loaded CI machine a replica's acknowledgement can take well over 200 ms.
    let env = [
        ("REDIS_WAIT_REPLICAS", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "2000"),
    ];
    let server = Server::start(&primary, &env).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    let add =
        json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("alone")});
    // No replica: the primary has it, nobody else does, and the reply says exactly that.
    let error = client.call_err("addMessage", add).await;
    assert_eq!(error["code"], -32000, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("written on the primary") && message.contains("REDIS_WAIT_REPLICAS"),
        "{error}"
    );

    // With a replica attached and in sync, the same calls succeed.
    let port = primary.port.to_string();
    // Loaded from the socket: a replica would otherwise write the primary's RDB into the cwd.
    let replica = Redis::start_with(&[
        "--replicaof",
        "127.0.0.1",
        &port,
        "--repl-diskless-load",
        "on-empty-db",
    ]);
    support::eventually(std::time::Duration::from_secs(20), async || {
        primary
            .cli(&["INFO", "replication"])
            .contains("connected_slaves:1")
            && replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
    })
    .await;
    let id = client.add(&connection, DID, "replicated").await;
    assert_eq!(
        replica.cli(&["HEXISTS", &format!("mpr:{{{connection}}}:msg"), &id]),
        "1",
        "on the replica when the add was answered"
    );
    let removed = json!({"connectionId": connection, "messageIds": [id]});
    client.call("removeMessages", removed).await;
    assert_eq!(
        replica.cli(&["HEXISTS", &format!("mpr:{{{connection}}}:msg"), &id]),
        "0",
        "gone from the replica when the removal was answered"
    );
}

/// A write blocked in WAIT holds its own connection only: other calls go on meanwhile.
#[tokio::test]
async fn a_write_waiting_for_replicas_holds_up_no_other_call() {
    let primary = Redis::start();
    let env = [
        ("REDIS_WAIT_REPLICAS", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "5000"),
        ("REDIS_TIMEOUT_MS", "2000"),
    ];
    let server = Server::start(&primary, &env).await;
    let mut writer = Client::connect(&server.url()).await;
    let mut reader = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    let add = json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("w")});
    // No replica ever confirms: the add waits the whole WAIT timeout.
    let waiting = tokio::spawn(async move { writer.call_err("addMessage", add).await });
    support::eventually(std::time::Duration::from_secs(10), async || {
        primary
            .cli(&["CLIENT", "LIST"])
            .lines()
            .any(|line| line.contains("cmd=wait"))
    })
    .await;
    let count = reader
        .call(
            "getAvailableMessageCount",
            json!({"connectionId": connection}),
        )
        .await;
    assert_eq!(count, 1, "the waiting add is on the primary and counted");
    assert!(
        !waiting.is_finished(),
        "the count was answered while the add still waited for a replica"
    );
    let error = waiting.await.unwrap();
    assert_eq!(error["code"], -32000, "{error}");
}
