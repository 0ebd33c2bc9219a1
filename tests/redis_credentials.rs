//! A Redis that wants credentials, single node and cluster: REDIS_URL's user and password
//! (percent-encoded, as in any URL) reach every node, the cluster's included, and every
//! connection the server makes (calls, events between instances). Its ACL is what operators
//! set: the `default` user may run the commands that form a cluster and replicate, but touch
//! no data and run no functions; the server's own user may do everything. Wrong credentials
//! are a setting to fix: the server says so and exits, rather than running "ready" on a Redis
//! it cannot use.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, Redis, Server, unique_id};

const DID: &str = "did:example:credentials";
const USER: &str = "mpr";
/// With the characters a URL must encode.
const PASSWORD: &str = "p@ss:w/rd";
const PASSWORD_IN_URL: &str = "p%40ss%3Aw%2Frd";

/// Every node's ACL: `default` without a password, barred from data and functions; [`USER`]
/// with [`PASSWORD`], allowed every command on the keys under the server's prefix only (and
/// no pub/sub channels: the server needs none).
fn acl_args() -> Vec<String> {
    let default = ["default", "on", "nopass", "~*", "&*", "+@all"];
    let barred = ["-@read", "-@write", "-@scripting"];
    let password = format!(">{PASSWORD}");
    let own = [USER, "on", password.as_str(), "~mpr:*", "+@all"];
    let mut args = vec!["--user".to_owned()];
    args.extend(default.iter().chain(&barred).map(|arg| arg.to_string()));
    args.push("--user".to_owned());
    args.extend(own.iter().map(|arg| arg.to_string()));
    args
}

/// `redis.url()` with `userinfo@` after the scheme.
fn url_as(redis: &Redis, userinfo: &str) -> String {
    let url = redis.url();
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    format!("redis://{userinfo}@{rest}")
}

/// What a server on `url` said before exiting by itself; panics if it keeps running.
fn exit_message(redis: &Redis, url: &str) -> String {
    let mut env: Vec<(String, String)> = redis.topology_env();
    env.push(("REDIS_URL".into(), url.into()));
    let (code, said) = support::run_until_exit(&env, Duration::from_secs(30));
    assert_eq!(code, Some(1), "REDIS_URL={url}: {said}");
    said
}

async fn served_only_with_its_credentials(redis: &Redis) {
    // The default user can PING but run nothing of the server's; a wrong password is refused.
    let said = exit_message(redis, &redis.url());
    assert!(
        said.contains("REDIS_URL: Redis refused this user"),
        "{said}"
    );
    assert!(said.contains("NoPerm"), "{said}");
    let said = exit_message(redis, &url_as(redis, &format!("{USER}:wrong")));
    assert!(said.contains("server stopped: REDIS_URL: "), "{said}");
    assert!(said.contains("AuthenticationFailed"), "{said}");
    assert!(
        !said.contains("wrong"),
        "the password is not logged: {said}"
    );

    // With them, two instances: calls on one, the live session and its pushes on the other.
    let url = url_as(redis, &format!("{USER}:{PASSWORD_IN_URL}"));
    let env = [("REDIS_URL", url.as_str())];
    let a = Server::start(redis, &env).await;
    let b = Server::start(redis, &env).await;
    for server in [&a, &b] {
        assert_eq!(server.http_get("/ready").await, (200, "ready".into()));
    }
    let mut sender = Client::connect(&a.url()).await;
    let mut mediator = Client::connect(&b.url()).await;
    // Several connections: in a cluster, their slots fall on more than one primary.
    for round in 0..6 {
        let connection = unique_id("cred");
        mediator.add_live_session(&connection, "session").await;
        let id = sender
            .add(&connection, DID, &format!("message {round}"))
            .await;
        let push = mediator
            .next_push(Duration::from_secs(20))
            .await
            .expect("a push through the other instance");
        assert_eq!(push["connectionId"], connection, "{push}");
        assert_eq!(push["messages"][0]["id"], id.as_str(), "{push}");
        sender
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": [id]}),
            )
            .await;
        // And one that waits for pickup.
        let offline = unique_id("cred");
        let id = sender.add(&offline, DID, &format!("waiting {round}")).await;
        assert_eq!(mediator.count(&offline).await, 1);
        let taken = mediator
            .take(json!({"connectionId": offline, "deleteMessages": true}))
            .await;
        assert_eq!(support::ids(&taken), [id], "{taken:?}");
        assert_eq!(sender.count(&offline).await, 0);
    }
}

#[tokio::test]
async fn a_redis_with_an_acl_is_served_only_with_the_urls_credentials() {
    if support::single_node_only() {
        return;
    }
    let args = acl_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = Redis::start_with(&args);
    served_only_with_its_credentials(&redis).await;
}

#[tokio::test]
async fn a_cluster_with_an_acl_is_served_only_with_the_urls_credentials() {
    let mut opts = testkit::RedisClusterOpts::new("redis-server").expect("free ports");
    opts.args = acl_args();
    let redis = Redis::start_cluster_with(opts);
    served_only_with_its_credentials(&redis).await;
}
