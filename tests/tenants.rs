//! Tenants: a token written `token=tenant` puts its sockets in that tenant. Two mediators using
//! the same connectionId in two tenants share one server and one Redis and never meet: neither
//! counts, takes, removes nor binds the other's connection, and each tenant's keys are under its
//! own prefix. Calls are counted by tenant.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Redis, Server, texts};

const DID: &str = "did:key:z6MkTenant";

#[tokio::test]
async fn two_tenants_with_the_same_connection_id_never_meet() {
    let redis = Redis::start();
    let server = Server::start(
        &redis,
        &[("AUTH_TOKENS", "acme-token=acme,globex-token=globex")],
    )
    .await;
    let url = server.url();
    let mut acme = Client::connect(&format!("{url}/?token=acme-token")).await;
    let mut globex = Client::connect(&format!("{url}/?token=globex-token")).await;
    let connection = "c-shared";
    let mut acme_live = Client::connect(&format!("{url}/?token=acme-token")).await;
    acme_live.add_live_session(connection, "acme-session").await;

    acme.add(connection, DID, "acme's first").await;
    let pushed = acme_live
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push");
    // The push names the client's own id, not the server's.
    assert_eq!(pushed["connectionId"], connection);
    assert_eq!(
        texts(pushed["messages"].as_array().unwrap()),
        ["acme's first"]
    );

    // globex sees nothing of it, and what it does stays in globex.
    assert_eq!(globex.count(connection).await, 0);
    assert!(
        globex
            .take(json!({"connectionId": connection}))
            .await
            .is_empty()
    );
    let live = json!({"connectionId": connection});
    assert_eq!(globex.call("getLiveSession", live.clone()).await, false);
    globex
        .call("removeAllMessages", json!({"connectionId": connection}))
        .await;
    let mut globex_live = Client::connect(&format!("{url}/?token=globex-token")).await;
    globex_live
        .add_live_session(connection, "globex-session")
        .await;
    globex.add(connection, DID, "globex's own").await;
    let pushed = globex_live
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(
        texts(pushed["messages"].as_array().unwrap()),
        ["globex's own"]
    );

    // acme's session is still acme's: its next message goes there, not to globex.
    acme.add(connection, DID, "acme's second").await;
    let pushed = acme_live
        .next_push(Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(
        texts(pushed["messages"].as_array().unwrap()),
        ["acme's second"]
    );
    assert!(
        globex_live
            .next_push(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(acme.call("getLiveSession", live).await, true);

    // Each tenant's keys under its own prefix.
    let acme_keys = redis.cli(&["--scan", "--pattern", "mpr:t:acme:*"]);
    let globex_keys = redis.cli(&["--scan", "--pattern", "mpr:t:globex:*"]);
    assert!(
        acme_keys.contains("mpr:t:acme:{c-shared}:msg"),
        "{acme_keys}"
    );
    assert!(
        globex_keys.contains("mpr:t:globex:{c-shared}:msg"),
        "{globex_keys}"
    );
    let untenanted = redis.cli(&["--scan", "--pattern", "mpr:{c-shared}*"]);
    assert_eq!(untenanted, "", "nothing outside the tenants");

    // Calls are counted by tenant: acme added twice, globex once.
    let added = async |tenant: &str| {
        let labels = format!(r#"method="addMessage",outcome="ok",tenant="{tenant}""#);
        server.metric("mpr_calls_total", &labels).await
    };
    assert_eq!(added("acme").await, 2.0);
    assert_eq!(added("globex").await, 1.0);
}
