//! Push notifications against local stand-ins for Google (OAuth2 + FCM v1) and Apple (APNs,
//! HTTP/2): payloads, credentials, retries, dead tokens, dedup across instances, live sessions,
//! and an addMessage path that never waits for a push service.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::push_standins::{APNS_TOPIC, Apple, Google, Scripted, TempFile, black_hole};
use support::{Client, Redis, Server, eventually, payload, unique_id};

const DID: &str = "did:key:z6MkPush";
const WAIT: Duration = Duration::from_secs(5);

/// Settings of a server pushing to the stand-ins; the files must outlive the server.
struct PushEnv {
    files: Vec<TempFile>,
    vars: Vec<(&'static str, String)>,
}

impl PushEnv {
    fn new(google: Option<&Google>, apple: Option<&Apple>) -> Self {
        let mut env = Self {
            files: Vec::new(),
            vars: vec![("PUSH_RETRY_BASE_MS", "100".into())],
        };
        if let Some(google) = google {
            let account = google.service_account_file();
            env.vars
                .push(("FIREBASE_CFG_FILE", account.as_str().to_owned()));
            env.vars.push(("FCM_BASE_URL", google.base_url.clone()));
            env.files.push(account);
        }
        if let Some(apple) = apple {
            let (config, key) = apple.credentials();
            env.vars.push(("APNS_CFG_FILE", config.as_str().to_owned()));
            env.vars.push(("APNS_PATH_KEY", key.as_str().to_owned()));
            env.vars.push(("APNS_TOPIC", APNS_TOPIC.to_owned()));
            env.vars.push(("APNS_BASE_URL", apple.base_url.clone()));
            env.files.extend([config, key]);
        }
        env
    }

    fn with(mut self, name: &'static str, value: &str) -> Self {
        self.vars.push((name, value.to_owned()));
        self
    }

    async fn server(&self, redis: &Redis) -> Server {
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        Server::start(redis, &vars).await
    }
}

/// addMessage with a push token; returns the message id.
async fn add_with_token(client: &mut Client, connection: &str, kind: &str, token: &str) -> String {
    let result = client
        .call(
            "addMessage",
            json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("x"),
                   "pushNotificationToken": {"type": kind, "token": token}}),
        )
        .await;
    result["messageId"].as_str().unwrap().to_owned()
}

/// Waits until the server's metric reaches `value`.
async fn metric_reaches(server: &Server, name: &str, labels: &str, value: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = server.metric(name, labels).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{{labels}}} is {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FCM_TYPE: &str = "https://didcomm.org/push-notifications-fcm";

#[tokio::test]
async fn fcm_push_for_an_offline_connection_is_the_node_payload_with_a_valid_access_token() {
    let redis = Redis::start();
    let google = Google::start().await;
    let env = PushEnv::new(Some(&google), None).with("PUSH_TITLE", "Wallet");
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;

    let id = add_with_token(&mut client, &unique_id("c"), "fcm", "fcm-device-1").await;
    eventually(WAIT, async || google.sends().len() == 1).await;
    let send = &google.sends()[0];
    assert_eq!(send.status, 200);
    assert_eq!(send.headers["authorization"], "Bearer ya29.test-1");
    let expected = json!({"message": {
        "token": "fcm-device-1",
        "data": {"@type": FCM_TYPE, "message_id": id, "contentAvailable": "true"},
        "notification": {"title": "Wallet", "body": "You have new messages"},
        "android": {"collapse_key": "generic-new-messages", "priority": "high",
                    "notification": {"tag": "generic-new-messages"}},
        "apns": {"headers": {"apns-priority": "10", "apns-collapse-id": "0"},
                 "payload": {"aps": {"alert": {"title": "Wallet", "body": "You have new messages"},
                                     "content-available": 1},
                             "data": {"@type": FCM_TYPE, "message_id": id}}}
    }});
    assert_eq!(send.body, expected);

    // The access token is cached: a second push does not fetch another.
    add_with_token(&mut client, &unique_id("c"), "fcm", "fcm-device-2").await;
    eventually(WAIT, async || google.sends().len() == 2).await;
    assert_eq!(google.token_requests(), 1);
    assert_eq!(google.refusals(), Vec::<String>::new());
    metric_reaches(&server, "mpr_pushes_sent_total", "provider=\"fcm\"", 2.0).await;
    assert!(
        server
            .metric("mpr_push_duration_seconds_count", "provider=\"fcm\"")
            .await
            >= 2.0
    );
    // The message itself was queued as usual.
    assert_eq!(client.count(&unique_id("none")).await, 0);
}

#[tokio::test]
async fn fcm_401_renews_the_access_token_once_then_sends() {
    let redis = Redis::start();
    let google = Google::start().await;
    let env = PushEnv::new(Some(&google), None);
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;
    add_with_token(&mut client, &unique_id("c"), "fcm", "before").await;
    eventually(WAIT, async || google.sends().len() == 1).await;

    google.revoke_access_tokens();
    add_with_token(&mut client, &unique_id("c"), "fcm", "after").await;
    eventually(WAIT, async || google.sends_to("after").len() == 2).await;
    let sends = google.sends_to("after");
    assert_eq!(
        (sends[0].status, sends[0].headers["authorization"].as_str()),
        (401, "Bearer ya29.test-1")
    );
    assert_eq!(
        (sends[1].status, sends[1].headers["authorization"].as_str()),
        (200, "Bearer ya29.test-2")
    );
    assert_eq!(google.token_requests(), 2);
    metric_reaches(&server, "mpr_pushes_sent_total", "", 2.0).await;
    assert_eq!(server.metric("mpr_pushes_retried_total", "").await, 1.0);
    assert_eq!(server.metric("mpr_pushes_failed_total", "").await, 0.0);
}

#[tokio::test]
async fn fcm_429_waits_for_retry_after_and_503_backs_off() {
    let redis = Redis::start();
    let google = Google::start().await;
    let env = PushEnv::new(Some(&google), None);
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;

    let quota = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}});
    google.respond_next(Scripted {
        status: 429,
        body: quota,
        retry_after: Some("1"),
    });
    add_with_token(&mut client, &unique_id("c"), "fcm", "quota").await;
    eventually(WAIT, async || google.sends_to("quota").len() == 2).await;
    let sends = google.sends_to("quota");
    assert_eq!((sends[0].status, sends[1].status), (429, 200));
    let waited = sends[1].at - sends[0].at;
    assert!(
        waited >= Duration::from_millis(990),
        "retried after {waited:?}"
    );

    let unavailable = json!({"error": {"code": 503, "status": "UNAVAILABLE"}});
    for _ in 0..2 {
        google.respond_next(Scripted {
            status: 503,
            body: unavailable.clone(),
            retry_after: None,
        });
    }
    add_with_token(&mut client, &unique_id("c"), "fcm", "flaky").await;
    eventually(WAIT, async || google.sends_to("flaky").len() == 3).await;
    let sends = google.sends_to("flaky");
    let statuses: Vec<u16> = sends.iter().map(|send| send.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    // Backoff with base 100 ms: [50, 100] ms, then [100, 200] ms.
    assert!(sends[1].at - sends[0].at >= Duration::from_millis(50));
    assert!(sends[2].at - sends[1].at >= Duration::from_millis(100));
    metric_reaches(&server, "mpr_pushes_sent_total", "", 2.0).await;
    assert_eq!(server.metric("mpr_pushes_retried_total", "").await, 3.0);
    assert_eq!(google.token_requests(), 1);
}

#[tokio::test]
async fn fcm_unregistered_token_is_not_retried_and_is_counted() {
    let redis = Redis::start();
    let google = Google::start().await;
    let env = PushEnv::new(Some(&google), None);
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;
    google.respond_next(Scripted {
        status: 404,
        body: json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
        retry_after: None,
    });
    add_with_token(&mut client, &unique_id("c"), "fcm", "uninstalled").await;
    metric_reaches(
        &server,
        "mpr_pushes_failed_total",
        "reason=\"dead_token\"",
        1.0,
    )
    .await;
    // A later push goes through the same workers: by then any retry would have happened.
    add_with_token(&mut client, &unique_id("c"), "fcm", "marker").await;
    eventually(WAIT, async || google.sends_to("marker").len() == 1).await;
    assert_eq!(google.sends_to("uninstalled").len(), 1);
    assert_eq!(server.metric("mpr_pushes_retried_total", "").await, 0.0);
}

#[tokio::test]
async fn apns_push_over_http2_with_a_reused_es256_provider_token() {
    let redis = Redis::start();
    let apple = Apple::start().await;
    let env = PushEnv::new(None, Some(&apple)).with("PUSH_BODY", "New messages");
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;

    let id = add_with_token(&mut client, &unique_id("c"), "apns", "a1b2c3").await;
    // Any type other than "fcm" means APNs, as in the Node server.
    add_with_token(&mut client, &unique_id("c"), "ios", "d4e5f6").await;
    eventually(WAIT, async || apple.pushes().len() == 2).await;
    assert_eq!(apple.refusals(), Vec::<String>::new());
    let push = &apple.pushes_to("a1b2c3")[0];
    assert_eq!(push.status, 200);
    assert_eq!(push.headers["apns-topic"], APNS_TOPIC);
    assert_eq!(push.headers["apns-push-type"], "alert");
    assert_eq!(push.headers["apns-priority"], "10");
    assert_eq!(
        push.body,
        json!({"aps": {"alert": {"title": "Hologram", "body": "New messages"}},
               "message_id": id, "@type": "https://didcomm.org/push-notifications-apns"})
    );
    let other = &apple.pushes_to("d4e5f6")[0];
    assert_eq!(
        other.headers["authorization"], push.headers["authorization"],
        "one provider token for both"
    );
    metric_reaches(&server, "mpr_pushes_sent_total", "provider=\"apns\"", 2.0).await;
}

#[tokio::test]
async fn apns_dead_tokens_expired_provider_token_and_429() {
    let redis = Redis::start();
    let apple = Apple::start().await;
    let env = PushEnv::new(None, Some(&apple));
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;

    // 410 Unregistered and 400 BadDeviceToken: dead, not retried.
    apple.respond_next(Scripted {
        status: 410,
        body: json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}),
        retry_after: None,
    });
    add_with_token(&mut client, &unique_id("c"), "apns", "gone").await;
    eventually(WAIT, async || apple.pushes().len() == 1).await;
    apple.respond_next(Scripted {
        status: 400,
        body: json!({"reason": "BadDeviceToken"}),
        retry_after: None,
    });
    add_with_token(&mut client, &unique_id("c"), "apns", "bad").await;
    metric_reaches(
        &server,
        "mpr_pushes_failed_total",
        "reason=\"dead_token\"",
        2.0,
    )
    .await;

    // 403 ExpiredProviderToken: a new JWT, then success.
    apple.expire_provider_tokens();
    add_with_token(&mut client, &unique_id("c"), "apns", "renew").await;
    eventually(WAIT, async || apple.pushes_to("renew").len() == 2).await;
    let renew = apple.pushes_to("renew");
    assert_eq!((renew[0].status, renew[1].status), (403, 200));
    assert_ne!(
        renew[0].headers["authorization"],
        renew[1].headers["authorization"]
    );

    // 429 TooManyRequests: retried after backoff.
    apple.respond_next(Scripted {
        status: 429,
        body: json!({"reason": "TooManyRequests"}),
        retry_after: None,
    });
    add_with_token(&mut client, &unique_id("c"), "apns", "busy").await;
    eventually(WAIT, async || apple.pushes_to("busy").len() == 2).await;
    let busy = apple.pushes_to("busy");
    assert_eq!((busy[0].status, busy[1].status), (429, 200));

    metric_reaches(&server, "mpr_pushes_sent_total", "", 2.0).await;
    assert_eq!(apple.pushes_to("gone").len(), 1);
    assert_eq!(apple.pushes_to("bad").len(), 1);
    assert_eq!(server.metric("mpr_pushes_retried_total", "").await, 2.0);
    assert_eq!(apple.refusals(), Vec::<String>::new());
}

#[tokio::test]
async fn data_only_pushes_carry_no_alert() {
    let redis = Redis::start();
    let google = Google::start().await;
    let apple = Apple::start().await;
    let env = PushEnv::new(Some(&google), Some(&apple)).with("NOTIFICATION_DATA_ONLY", "true");
    let server = env.server(&redis).await;
    let mut client = Client::connect(&server.url()).await;
    let fcm_id = add_with_token(&mut client, &unique_id("c"), "fcm", "android").await;
    let apns_id = add_with_token(&mut client, &unique_id("c"), "apns", "iphone").await;
    eventually(WAIT, async || {
        google.sends().len() == 1 && apple.pushes().len() == 1
    })
    .await;
    let message = &google.sends()[0].body["message"];
    assert!(message.get("notification").is_none(), "{message}");
    assert!(message["android"].get("notification").is_none());
    assert_eq!(message["data"]["message_id"], fcm_id.as_str());
    assert_eq!(
        message["apns"]["payload"]["aps"],
        json!({"content-available": 1})
    );
    let push = &apple.pushes()[0];
    assert_eq!(push.status, 200);
    assert_eq!(push.headers["apns-push-type"], "background");
    assert_eq!(push.headers["apns-priority"], "5");
    assert_eq!(
        push.body,
        json!({"aps": {"content-available": 1}, "message_id": apns_id,
               "@type": "https://didcomm.org/push-notifications-apns"})
    );
}

#[tokio::test]
async fn one_push_per_token_per_window_across_instances() {
    let redis = Redis::start();
    let google = Google::start().await;
    let env = PushEnv::new(Some(&google), None).with("PUSH_DEDUP_WINDOW_MS", "3000");
    let a = env.server(&redis).await;
    let b = env.server(&redis).await;
    let mut on_a = Client::connect(&a.url()).await;
    let mut on_b = Client::connect(&b.url()).await;
    let started = Instant::now();
    for _ in 0..3 {
        add_with_token(&mut on_a, &unique_id("c"), "fcm", "shared").await;
        add_with_token(&mut on_b, &unique_id("c"), "fcm", "shared").await;
    }
    let deadline = Instant::now() + WAIT;
    while a.metric("mpr_pushes_deduplicated_total", "").await
        + b.metric("mpr_pushes_deduplicated_total", "").await
        < 5.0
    {
        assert!(Instant::now() < deadline, "dedup not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(WAIT, async || !google.sends_to("shared").is_empty()).await;
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "within one window"
    );
    assert_eq!(google.sends_to("shared").len(), 1);
    let deduplicated = a.metric("mpr_pushes_deduplicated_total", "").await
        + b.metric("mpr_pushes_deduplicated_total", "").await;
    assert_eq!(deduplicated, 5.0);
    // After the window (opened just before the first send), the token gets a push again.
    let first_send = google.sends_to("shared")[0].at;
    tokio::time::sleep_until((first_send + Duration::from_millis(3050)).into()).await;
    add_with_token(&mut on_b, &unique_id("c"), "fcm", "shared").await;
    eventually(WAIT, async || google.sends_to("shared").len() == 2).await;
}

#[tokio::test]
async fn no_push_while_a_live_session_exists_and_one_after_its_instance_is_killed() {
    let redis = Redis::start();
    let google = Google::start().await;
    let connection = unique_id("c");
    let env = undeduplicated(&google).with("LIVENESS_TIMEOUT_MS", "2000");
    let (mut a, b, mut mediator) =
        live_sessions_on_a(&redis, env, std::slice::from_ref(&connection)).await;
    let mut sender = Client::connect(&b.url()).await;

    // Live: delivered on the socket, no push.
    add_with_token(&mut sender, &connection, "fcm", "phone").await;
    mediator.next_push(WAIT).await.expect("a live delivery");
    add_with_token(&mut sender, &unique_id("c"), "fcm", "marker").await;
    eventually(WAIT, async || google.sends_to("marker").len() == 1).await;
    assert_eq!(google.sends_to("phone").len(), 0);

    // The instance holding the session dies: the event sent to it is released by the
    // survivor, which pushes to the token the connection last gave.
    tokio::time::sleep(Duration::from_millis(300)).await; // let B's heartbeat see A alive
    a.kill();
    let id = sender
        .call(
            "addMessage",
            json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("late")}),
        )
        .await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(8), async || {
        google.sends_to("phone").len() == 1
    })
    .await;
    assert_eq!(
        google.sends_to("phone")[0].body["message"]["data"]["message_id"],
        id.as_str()
    );
    // Pending: the late one, and the one pushed to the dead instance's socket and never removed.
    assert_eq!(sender.count(&connection).await, 2);
}

/// Pushes to `google` without dedup, so that a second push for a message would show, and a
/// long visibility timeout, so that only a release makes a message pending again.
fn undeduplicated(google: &Google) -> PushEnv {
    PushEnv::new(Some(google), None)
        .with("VISIBILITY_TIMEOUT_MS", "60000")
        .with("PUSH_DEDUP_WINDOW_MS", "0")
}

/// Instances A and B with `env`, and a mediator on A holding live sessions for `connections`.
async fn live_sessions_on_a(
    redis: &Redis,
    env: PushEnv,
    connections: &[String],
) -> (Server, Server, Client) {
    let a = env.server(redis).await;
    let b = env.server(redis).await;
    let mut mediator = Client::connect(&a.url()).await;
    for connection in connections {
        mediator.add_live_session(connection, "s").await;
    }
    (a, b, mediator)
}

#[tokio::test]
async fn a_message_racing_a_closing_socket_gets_exactly_one_push() {
    let redis = Redis::start();
    let google = Google::start().await;
    let connections: Vec<String> = (0..10).map(|_| unique_id("c")).collect();
    let (_a, b, mediator) = live_sessions_on_a(&redis, undeduplicated(&google), &connections).await;
    drop(mediator);
    // Each add finds the session still bound (the event then finds no socket and the message
    // is released and pushed by A) or already gone (pushed by B): one push either way.
    let mut sender = Client::connect(&b.url()).await;
    for (i, connection) in connections.iter().enumerate() {
        add_with_token(&mut sender, connection, "fcm", &format!("phone-{i}")).await;
    }
    for i in 0..connections.len() {
        eventually(WAIT, async || {
            google.sends_to(&format!("phone-{i}")).len() == 1
        })
        .await;
    }
    add_with_token(&mut sender, &unique_id("c"), "fcm", "marker").await;
    eventually(WAIT, async || google.sends_to("marker").len() == 1).await;
    for (i, connection) in connections.iter().enumerate() {
        assert_eq!(google.sends_to(&format!("phone-{i}")).len(), 1);
        assert_eq!(sender.count(connection).await, 1, "pending again");
    }
}

/// The socket-gone path, forced: the connection's binding names a socket of instance A that is
/// no longer there (as between a socket's close and its clean-up). The event A gets finds no
/// socket: the message goes back to pending, the stale binding is dropped, one push goes out.
#[tokio::test]
async fn an_event_for_a_vanished_socket_releases_the_message_and_pushes_once() {
    let redis = Redis::start();
    let google = Google::start().await;
    let connection = unique_id("c");
    let (a, b, mut mediator) = live_sessions_on_a(
        &redis,
        undeduplicated(&google),
        std::slice::from_ref(&connection),
    )
    .await;
    // The binding's peer is `<instance>/<socket>`: keep the instance, name a socket never opened.
    let conn = format!("mpr:{{{connection}}}:conn");
    let peer = redis.cli(&["HGET", &conn, "peer"]);
    let (instance, _) = peer.split_once('/').expect("a socket peer");
    let vanished = format!("{instance}/987654321");
    assert_eq!(redis.cli(&["HSET", &conn, "peer", &vanished]), "0");

    let mut sender = Client::connect(&b.url()).await;
    add_with_token(&mut sender, &connection, "fcm", "phone").await;
    metric_reaches(&a, "mpr_events_undeliverable_total", "socket_gone", 1.0).await;
    eventually(WAIT, async || google.sends_to("phone").len() == 1).await;
    assert_eq!(sender.count(&connection).await, 1, "pending again");
    assert_eq!(
        redis.cli(&["HEXISTS", &conn, "kind"]),
        "0",
        "stale binding dropped"
    );
    assert!(
        mediator
            .next_push(Duration::from_millis(200))
            .await
            .is_none(),
        "the mediator's real socket got nothing"
    );
    add_with_token(&mut sender, &unique_id("c"), "fcm", "marker").await;
    eventually(WAIT, async || google.sends_to("marker").len() == 1).await;
    assert_eq!(google.sends_to("phone").len(), 1, "exactly one push");
}

#[tokio::test]
async fn add_message_does_not_wait_for_push_services_that_hang() {
    let redis = Redis::start();
    let (hanging_url, _hole) = black_hole().await;
    let account = json!({
        "type": "service_account", "project_id": "p", "private_key_id": "k",
        "private_key": support::push_standins::FCM_PRIVATE_KEY,
        "client_email": "e@p.iam.gserviceaccount.com", "token_uri": format!("{hanging_url}/token"),
    });
    let account = TempFile::new("firebase.json", &account.to_string());
    let apple = Apple::start().await;
    let (apns_config, apns_key) = apple.credentials();
    let server = Server::start(
        &redis,
        &[
            ("FIREBASE_CFG_FILE", account.as_str()),
            ("FCM_BASE_URL", &hanging_url),
            ("APNS_CFG_FILE", apns_config.as_str()),
            ("APNS_PATH_KEY", apns_key.as_str()),
            ("APNS_TOPIC", APNS_TOPIC),
            ("APNS_BASE_URL", &hanging_url),
            ("PUSH_QUEUE_CAPACITY", "10"),
            ("PUSH_WORKERS", "2"),
            ("PUSH_TIMEOUT_MS", "30000"),
            ("SHUTDOWN_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    let mut timed = async |push: bool, i: usize| {
        let mut params =
            json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("x")});
        if push {
            let kind = if i.is_multiple_of(2) { "fcm" } else { "apns" };
            params["pushNotificationToken"] = json!({"type": kind, "token": format!("t{i}")});
        }
        let started = Instant::now();
        client.call("addMessage", params).await;
        started.elapsed()
    };
    const N: usize = 200;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for i in 0..N {
        without.push(timed(false, i).await);
        with.push(timed(true, i).await);
    }
    without.sort();
    with.sort();
    let p99 = |sorted: &[Duration]| sorted[sorted.len() * 99 / 100];
    eprintln!(
        "addMessage p50/p99 without pushes {:?}/{:?}, with hanging pushes {:?}/{:?}",
        without[N / 2],
        p99(&without),
        with[N / 2],
        p99(&with)
    );
    assert!(
        p99(&with) < p99(&without) + Duration::from_millis(20),
        "p99 with {:?}, without {:?}",
        p99(&with),
        p99(&without)
    );
    // Two workers hang on one push each and ten wait: the rest were dropped, oldest first.
    let dropped = server.metric("mpr_pushes_dropped_total", "").await as usize;
    assert!(
        (N - 12..=N - 10).contains(&dropped),
        "{dropped} dropped of {N}"
    );
    assert_eq!(client.count(&connection).await, 2 * N as u64);

    // Shutdown gives hanging pushes what is left of SHUTDOWN_TIMEOUT_MS, then drops them.
    drop(client);
    let mut server = server;
    let stopping = Instant::now();
    assert!(server.terminate().success());
    assert!(
        stopping.elapsed() < Duration::from_millis(2500),
        "stopped in {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn a_disabled_provider_is_counted_not_an_error_and_bad_tokens_are_invalid_params() {
    let redis = Redis::start();
    let broken = TempFile::new("firebase.json", r#"{"project_id": "p"}"#);
    let server = Server::start(&redis, &[("FIREBASE_CFG_FILE", broken.as_str())]).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    add_with_token(&mut client, &connection, "fcm", "android").await;
    add_with_token(&mut client, &connection, "apns", "iphone").await;
    metric_reaches(
        &server,
        "mpr_pushes_failed_total",
        "reason=\"disabled\"",
        2.0,
    )
    .await;
    // Without a token (absent, null, or without `token`) nothing is pushed.
    for token in [Value::Null, json!({"type": "fcm"})] {
        client
            .call(
                "addMessage",
                json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("x"),
                       "pushNotificationToken": token}),
            )
            .await;
    }
    assert_eq!(client.count(&connection).await, 4);
    assert_eq!(server.metric("mpr_pushes_failed_total", "").await, 2.0);

    for (token, field) in [
        (
            json!({"type": 1, "token": "t"}),
            "pushNotificationToken.type",
        ),
        (json!({"token": "t"}), "pushNotificationToken"),
        (
            json!({"type": "fcm", "token": 7}),
            "pushNotificationToken.token",
        ),
        (json!("fcm:t"), "pushNotificationToken"),
    ] {
        let error = client
            .call_err(
                "addMessage",
                json!({"connectionId": connection, "recipientDids": [DID], "payload": payload("x"),
                       "pushNotificationToken": token}),
            )
            .await;
        assert_eq!(error["code"], -32602);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("Invalid params: {field}")),
            "{message}"
        );
    }
    assert_eq!(client.count(&connection).await, 4);
}

#[test]
fn bad_push_settings_stop_the_server_naming_them() {
    for (name, value) in [
        ("FCM_BASE_URL", "fcm.googleapis.com"),
        ("APNS_BASE_URL", "ftp://apple"),
        ("NOTIFICATION_DATA_ONLY", "maybe"),
        ("PUSH_WORKERS", "0"),
        ("PUSH_QUEUE_CAPACITY", "-1"),
        ("PUSH_DEDUP_WINDOW_MS", "soon"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mpr"))
            .env_clear()
            .env(name, value)
            .output()
            .expect("mpr binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}
