//! REDIS_NATMAP: a Redis Cluster whose nodes announce to clients an address the server cannot
//! reach (`--cluster-announce-hostname 127.0.0.2` with `--cluster-preferred-endpoint-type
//! hostname`: CLUSTER SLOTS and MOVED name `127.0.0.2:<port>`, where nothing listens, while the
//! nodes gossip and replicate over 127.0.0.1), as nodes behind NAT or in containers do. An
//! announced *port* would not do: a replica replicates from its primary's announced address.
//! The seeds (REDIS_NODES) are reachable, but without a map the server cannot serve; with
//! `externalHost:externalPort:internalHost:internalPort` per node it connects to the real
//! address of every node the slot map names.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, Redis, Server, texts, unique_id};

const DID: &str = "did:example:natmap";

/// Where the nodes say they are: an address on the loopback that nothing listens on (every
/// process binds 127.0.0.1), so connecting there is refused at once.
const ANNOUNCED_HOST: &str = "127.0.0.2";

/// A cluster whose six nodes announce themselves to clients as [`ANNOUNCED_HOST`].
fn cluster_announcing_elsewhere() -> Redis {
    let mut opts = testkit::RedisClusterOpts::new("redis-server").expect("free ports");
    opts.announce_host = Some(ANNOUNCED_HOST.into());
    Redis::start_cluster_with(opts)
}

/// REDIS_NATMAP for the cluster: `127.0.0.1:<real>:<announced host>:<announced port>,…`.
fn natmap(redis: &Redis) -> String {
    let cluster = redis.cluster().expect("a cluster");
    let entries = cluster
        .announced_nodes()
        .into_iter()
        .map(|(announced, real)| {
            assert_ne!(announced, real, "the nodes announce other addresses");
            format!("{real}:{announced}")
        });
    entries.collect::<Vec<_>>().join(",")
}

/// One connection id per primary, its hash-tag slot served there (ids tried until each primary
/// got one).
async fn one_connection_per_primary(redis: &Redis) -> BTreeMap<u16, String> {
    let cluster = redis.cluster().expect("a cluster");
    let primaries = cluster.primaries().await.expect("primaries");
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut chosen = BTreeMap::new();
    for _ in 0..1000 {
        let connection = unique_id("c");
        let primary = cluster.primary_of_key(&connection).await.expect("KEYSLOT");
        chosen.entry(primary).or_insert(connection);
        if chosen.len() == primaries.len() {
            return chosen;
        }
    }
    panic!("no connection ids covering every primary: {chosen:?}");
}

#[tokio::test]
async fn a_cluster_announcing_unreachable_addresses_is_served_through_the_natmap() {
    let began = Instant::now();
    let redis = cluster_announcing_elsewhere();
    let formed = began.elapsed();
    let connections = one_connection_per_primary(&redis).await;

    // Without the map the seeds answer, but CLUSTER SLOTS names addresses where connecting is
    // refused: the server starts and listens (it takes an unreachable Redis for one that may
    // come back), is not ready, and every call on Redis fails; nothing is written.
    let mut unmapped = Server::spawn(&redis, &[]);
    let mut ready = (0, String::new());
    support::eventually(Duration::from_secs(20), async || {
        ready = unmapped.http_get("/ready").await;
        ready.0 != 0
    })
    .await;
    assert_eq!(ready.0, 503, "not ready without REDIS_NATMAP: {ready:?}");
    assert!(ready.1.starts_with("redis: "), "{ready:?}");
    let mut client = Client::connect(&unmapped.url()).await;
    for connection in connections.values() {
        let error = client
            .call_err(
                "addMessage",
                json!({"connectionId": connection, "recipientDids": [DID], "payload": support::payload("lost")}),
            )
            .await;
        assert_eq!(error["code"], -32000, "{error}");
        let message = error["message"].as_str().expect("a message");
        assert!(message.starts_with("Storage unavailable"), "{error}");
    }
    assert_eq!(unmapped.http_get("/ready").await.0, 503);
    assert!(
        unmapped.wait_exit(Duration::ZERO).is_none(),
        "it keeps running"
    );
    drop(client);
    drop(unmapped);
    let stored = redis.cli(&["--scan", "--pattern", "mpr:{*"]);
    assert_eq!(stored, "", "nothing was written without REDIS_NATMAP");
    let unmapped_done = began.elapsed();

    // With it, two instances.
    let natmap = natmap(&redis);
    let env = [("REDIS_NATMAP", natmap.as_str())];
    let a = Server::start(&redis, &env).await;
    let b = Server::start(&redis, &env).await;
    for server in [&a, &b] {
        assert_eq!(server.http_get("/ready").await, (200, "ready".into()));
    }
    let mut sender = Client::connect(&a.url()).await;
    let mut taker = Client::connect(&b.url()).await;
    for (primary, connection) in &connections {
        let first = sender.add(connection, DID, &format!("{primary}-1")).await;
        let second = sender.add(connection, DID, &format!("{primary}-2")).await;
        assert_eq!(taker.count(connection).await, 2, "on primary {primary}");
        let taken = taker
            .take(json!({"connectionId": connection, "deleteMessages": true}))
            .await;
        assert_eq!(
            texts(&taken),
            [format!("{primary}-1"), format!("{primary}-2")]
        );
        assert_eq!(support::ids(&taken), [first, second]);
        assert_eq!(sender.count(connection).await, 0, "deleted on {primary}");
        let again = sender.take(json!({"connectionId": connection})).await;
        assert!(again.is_empty(), "nothing left on {primary}: {again:?}");
    }

    // A live session on one instance gets what the other adds, for a connection on each primary.
    let mut mediator = Client::connect(&b.url()).await;
    mediator.call("rpc.on", json!(["messagesReceived"])).await;
    for connection in connections.values() {
        mediator.add_live_session(connection, &unique_id("s")).await;
    }
    for (primary, connection) in &connections {
        let text = format!("live-{primary}");
        let id = sender.add(connection, DID, &text).await;
        let push = mediator
            .next_push(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("a push for the connection on {primary}"));
        assert_eq!(push["connectionId"], connection.as_str());
        let messages = push["messages"].as_array().expect("messages");
        assert_eq!(texts(messages), [text]);
        assert_eq!(messages[0]["id"], id.as_str());
        mediator
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": [id]}),
            )
            .await;
    }
    for server in [&a, &b] {
        assert_eq!(server.http_get("/ready").await, (200, "ready".into()));
    }
    let written = redis.cli(&["--scan", "--pattern", "mpr:*"]);
    assert_ne!(written, "", "the scan above sees what the servers write");
    eprintln!(
        "cluster formed in {formed:?}; unmapped server done at {unmapped_done:?}; all at {:?}",
        began.elapsed()
    );
}
