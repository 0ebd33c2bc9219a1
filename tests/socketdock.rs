//! The SocketDock adapter against the real SocketDock: agents on its WebSockets, a mediator
//! stand-in behind the server, two server instances on one Redis. What the agent receives
//! (content, count, order, frame type) is what is asserted.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::held_replies::HeldReplies;
use support::push_standins::Google;
use support::socketdock::{Agent, Frame, MediatorStandIn, Received, Reply, TcpRelay, post};
use support::{Client, Redis, Server, eventually, free_port, unique_id};

const SECRET: &str = "s3cret-for-tests";
const DID: &str = "did:key:z6MkSocketDock";
const WAIT: Duration = Duration::from_secs(20);
/// After the last expected frame: anything more would be a duplicate.
const QUIET: Duration = Duration::from_millis(700);

struct Deployment {
    redis: Redis,
    mediator: MediatorStandIn,
    servers: Vec<Server>,
    docks: Vec<testkit::SocketDock>,
    /// In front of each dock's sends, when deployed with them.
    relays: Vec<TcpRelay>,
}

/// `servers` instances and `docks` SocketDock instances; dock i calls back server i mod n.
async fn deploy(servers: usize, docks: usize) -> Deployment {
    deploy_with(servers, docks, &[]).await
}

async fn deploy_with(servers: usize, docks: usize, extra: &[(&str, &str)]) -> Deployment {
    deploy_world(servers, docks, extra, false).await
}

/// With `relayed`, the servers send to each dock through a relay of the test's (`TcpRelay`).
async fn deploy_world(
    servers: usize,
    docks: usize,
    extra: &[(&str, &str)],
    relayed: bool,
) -> Deployment {
    let redis = Redis::start();
    let mediator = MediatorStandIn::start().await;
    let dock_ports: Vec<u16> = (0..docks).map(|_| free_port()).collect();
    let mut relays = Vec::new();
    if relayed {
        for port in &dock_ports {
            relays.push(TcpRelay::start(*port).await);
        }
    }
    let endpoints: Vec<String> = if relayed {
        relays.iter().map(TcpRelay::url).collect()
    } else {
        dock_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    };
    let mediator_url = mediator.uri("/didcomm");
    let endpoints = endpoints.join(",");
    let mut env = vec![
        ("MEDIATOR_URL", mediator_url.as_str()),
        ("SOCKETDOCK_SECRET", SECRET),
        ("SOCKETDOCK_ENDPOINTS", endpoints.as_str()),
        ("SOCKETDOCK_SEND_TIMEOUT_MS", "2000"),
        ("LIVENESS_TIMEOUT_MS", "2000"),
    ];
    env.extend_from_slice(extra);
    let mut started = Vec::new();
    for _ in 0..servers {
        started.push(Server::start(&redis, &env).await);
    }
    let mut running = Vec::new();
    for (i, port) in dock_ports.into_iter().enumerate() {
        let callback = |route: &str| {
            format!(
                "http://127.0.0.1:{}/socketdock/{route}?secret={SECRET}",
                started[i % servers].app_port
            )
        };
        let mut opts = testkit::SocketDockOpts::new(
            &callback("message"),
            &callback("connect"),
            &callback("disconnect"),
        )
        .expect("options");
        opts.port = port;
        opts.endpoint = relays.get(i).map(TcpRelay::url);
        running.push(
            testkit::SocketDock::start(opts)
                .await
                .expect("SocketDock starts"),
        );
    }
    Deployment {
        redis,
        mediator,
        servers: started,
        docks: running,
        relays,
    }
}

/// The mediator binds every connection named in a frame `bind <connectionId>` to the frame's
/// socket, answering `bound <connectionId>` (a return-route reply); other frames get 202.
fn bind_on_request(received: &Received) -> Reply {
    match received.body.strip_prefix("bind ") {
        Some(connection) => Reply::ok()
            .header("X-Mpr-Connection-Id", connection)
            .body(&format!("bound {connection}")),
        None => Reply::status(202),
    }
}

/// The ciphertexts of the messages an agent receives until `count` came, then during QUIET.
async fn delivered(agent: &mut Agent, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let within = if texts.len() < count {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            QUIET
        };
        match agent.next_frame(within).await {
            Some(Frame::Text(text)) => {
                let message: Value = serde_json::from_str(&text).expect("a JWE as JSON text");
                texts.push(
                    message["ciphertext"]
                        .as_str()
                        .expect("ciphertext")
                        .to_owned(),
                );
            }
            Some(other) => panic!("not a text frame: {other:?}"),
            None => return texts,
        }
    }
}

fn numbered(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag} {i}")).collect()
}

async fn add_all(client: &mut Client, connection: &str, texts: &[String]) {
    for text in texts {
        client.add(connection, DID, text).await;
    }
}

/// Connects an agent through `dock` and binds `connection` to its socket with a frame the
/// mediator answers; returns the agent once the return-route reply arrived.
async fn bind_agent(dock: &testkit::SocketDock, connection: &str) -> Agent {
    let mut agent = Agent::connect(&dock.ws_url()).await;
    agent.send_text(&format!("bind {connection}"));
    let reply = agent.next_text(WAIT).await;
    assert_eq!(
        reply.as_deref(),
        Some(format!("bound {connection}").as_str())
    );
    agent
}

#[tokio::test]
async fn an_agent_gets_its_backlog_in_order_then_live_messages_once() {
    let deployment = deploy(1, 1).await;
    deployment.mediator.reply_with(bind_on_request);
    let server = &deployment.servers[0];
    let mut sender = Client::connect(&server.url()).await;
    let connection = unique_id("c");
    let backlog = numbered("queued while away", 5);
    add_all(&mut sender, &connection, &backlog).await;

    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    // The frame reached the mediator as a DIDComm message, naming its socket.
    let frames = deployment.mediator.wait_requests(1, WAIT).await;
    assert_eq!(frames[0].path, "/didcomm");
    assert_eq!(frames[0].body, format!("bind {connection}"));
    assert_eq!(
        frames[0].header_values("content-type"),
        ["application/didcomm-envelope-enc"]
    );
    let socket = frames[0].header_values("x-mpr-socket-id");
    assert_eq!(socket.len(), 1, "{:?}", frames[0].headers);
    assert_eq!(delivered(&mut agent, 5).await, backlog);

    let live = numbered("while connected", 5);
    add_all(&mut sender, &connection, &live).await;
    assert_eq!(delivered(&mut agent, 5).await, live);
    let live_session = json!({"connectionId": connection});
    assert_eq!(sender.call("getLiveSession", live_session).await, true);
    // Delivered means gone from the queue.
    assert_eq!(sender.count(&connection).await, 0);
    assert_eq!(
        server
            .metric("mpr_socketdock_deliveries_total", "outcome=\"ok\"")
            .await,
        10.0
    );
}

#[tokio::test]
async fn a_binding_made_over_rpc_on_one_instance_delivers_what_another_receives() {
    let deployment = deploy(2, 1).await;
    let (a, b) = (&deployment.servers[0], &deployment.servers[1]);
    let mut agent = Agent::connect(&deployment.docks[0].ws_url()).await;
    agent.send_text("hello");
    let frames = deployment.mediator.wait_requests(1, WAIT).await;
    let socket = frames[0].header_values("x-mpr-socket-id").remove(0);
    let connection = unique_id("c");
    let mut mediator_rpc = Client::connect(&a.url()).await;
    mediator_rpc
        .add_live_session(&connection, &format!("socketdock:{socket}"))
        .await;
    // Senders on the other instance, several at once: one delivery loop keeps their order.
    let mut senders = Vec::new();
    for s in 0..3 {
        let url = b.url();
        let connection = connection.clone();
        senders.push(tokio::spawn(async move {
            let mut sender = Client::connect(&url).await;
            let texts = numbered(&format!("sender {s}"), 10);
            add_all(&mut sender, &connection, &texts).await;
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let got = delivered(&mut agent, 30).await;
    assert_eq!(got.len(), 30, "every message once: {got:?}");
    for s in 0..3 {
        let mine: Vec<String> = got
            .iter()
            .filter(|text| text.starts_with(&format!("sender {s} ")))
            .cloned()
            .collect();
        assert_eq!(
            mine,
            numbered(&format!("sender {s}"), 10),
            "each sender's order"
        );
    }
}

#[tokio::test]
async fn a_socket_closed_without_a_callback_fails_a_send_and_the_messages_wait_for_the_next() {
    let deployment = deploy(2, 2).await;
    deployment.mediator.reply_with(bind_on_request);
    let mut sender = Client::connect(&deployment.servers[1].url()).await;
    let connection = unique_id("c");
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    add_all(&mut sender, &connection, &numbered("first", 2)).await;
    assert_eq!(delivered(&mut agent, 2).await, numbered("first", 2));
    agent.close().await;

    // SocketDock mostly loses the disconnect callback of a clean close: the next send fails
    // instead, the binding ends, and the messages stay queued.
    let later = numbered("while gone", 4);
    add_all(&mut sender, &connection, &later).await;
    let live_session = json!({"connectionId": connection});
    support::eventually(WAIT, async || {
        sender.call("getLiveSession", live_session.clone()).await == false
    })
    .await;
    assert_eq!(sender.count(&connection).await, 4, "nothing lost");

    // Back through the other SocketDock instance: everything, once, in order.
    let mut back = bind_agent(&deployment.docks[1], &connection).await;
    assert_eq!(delivered(&mut back, 4).await, later);
    assert_eq!(sender.count(&connection).await, 0);
}

#[tokio::test]
async fn forged_callbacks_are_refused_and_nothing_is_sent_where_they_point() {
    let deployment = deploy_with(1, 1, &[("SOCKETDOCK_MAX_BODY_BYTES", "65536")]).await;
    let server = &deployment.servers[0];
    let elsewhere = MediatorStandIn::start().await;
    let id = "0123456789abcdef0123456789abcdef";
    let frame = |base: &str| {
        json!({"meta": {"connection_id": id, "send": format!("{base}/socket/{id}/send"),
                        "disconnect": format!("{base}/socket/{id}/disconnect")},
               "message": format!("bind c-forged")})
        .to_string()
    };
    let callback = |secret: &str| {
        format!(
            "http://127.0.0.1:{}/socketdock/message?secret={secret}",
            server.app_port
        )
    };
    let genuine_base = deployment.docks[0].endpoint();
    let (status, _) = post(
        &callback("wrong"),
        Some("application/json"),
        &frame(&genuine_base),
    )
    .await;
    assert_eq!(status, 401, "without the secret");
    let (status, _) = post(
        &callback(SECRET),
        Some("application/json"),
        &frame(&elsewhere.url()),
    )
    .await;
    assert_eq!(status, 403, "a send URL under no configured endpoint");
    let (status, _) = post(&callback(SECRET), Some("application/json"), "{not json").await;
    assert_eq!(status, 400, "garbage");
    let huge = "x".repeat(65_537);
    let (status, _) = post(&callback(SECRET), Some("application/json"), &huge).await;
    assert_eq!(status, 413, "a body over SOCKETDOCK_MAX_BODY_BYTES");
    assert!(
        deployment.mediator.requests().is_empty(),
        "nothing forwarded"
    );
    assert!(
        elsewhere.requests().is_empty(),
        "nothing sent to the forged URL"
    );
    assert_eq!(
        server
            .metric(
                "mpr_socketdock_callbacks_refused_total",
                "reason=\"foreign_url\""
            )
            .await,
        1.0
    );
    // A socket nobody connected cannot be bound.
    let mut client = Client::connect(&server.url()).await;
    let refused = client
        .call_err(
            "addLiveSession",
            json!({"connectionId": "c-forged", "sessionId": format!("socketdock:{id}")}),
        )
        .await;
    assert_eq!(refused["code"], -32602, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("sessionId"));
}

#[tokio::test]
async fn without_a_mediator_url_the_adapter_is_off() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[]).await;
    let url = format!(
        "http://127.0.0.1:{}/socketdock/message?secret=x",
        server.app_port
    );
    let (status, _) = post(&url, Some("application/json"), "{}").await;
    assert_eq!(status, 404);
    let _ = &redis;
}

#[tokio::test]
async fn the_instance_delivering_a_backlog_dies_and_another_finishes_it() {
    const BACKLOG: usize = 300;
    let mut deployment = deploy(2, 1).await;
    deployment.mediator.reply_with(bind_on_request);
    let mut sender = Client::connect(&deployment.servers[1].url()).await;
    let connection = unique_id("c");
    let backlog = numbered("backlog", BACKLOG);
    add_all(&mut sender, &connection, &backlog).await;
    // SocketDock calls back the first instance: it binds, and its delivery loop starts.
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    let mut got = Vec::new();
    while got.len() < 30 {
        match agent.next_frame(WAIT).await {
            Some(Frame::Text(text)) => got.push(text),
            other => panic!("expected the backlog, got {other:?}"),
        }
    }
    deployment.servers[0].kill();
    // The survivor takes over once the dead deliverer's lease ends (2 x the send timeout).
    let rest = delivered(&mut agent, BACKLOG - got.len()).await;
    let mut all: Vec<String> = got
        .iter()
        .map(|text| {
            serde_json::from_str::<Value>(text).unwrap()["ciphertext"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    all.extend(rest);
    // The message in flight at the kill may come twice (SocketDock took it, its removal died
    // with the instance), and so may the one before it (its removal goes beside the next POST);
    // nothing else may, and nothing may be missing or out of order.
    let mut first_seen = Vec::new();
    for text in &all {
        if !first_seen.contains(text) {
            first_seen.push(text.clone());
        }
    }
    assert_eq!(first_seen, backlog, "every message, in order");
    assert!(
        all.len() - first_seen.len() <= 2,
        "{} duplicates",
        all.len() - first_seen.len()
    );
    eprintln!(
        "delivered {} frames for {BACKLOG} messages across the kill",
        all.len()
    );
    support::eventually(WAIT, async || sender.count(&connection).await == 0).await;
}

#[tokio::test]
async fn a_socketdock_instance_killed_with_agents_bound_loses_nothing_and_wakes_the_phone() {
    let google = Google::start().await;
    let account = google.service_account_file();
    let extra = [
        ("FIREBASE_CFG_FILE", account.as_str()),
        ("FCM_BASE_URL", google.base_url.as_str()),
    ];
    let deployment = deploy_with(1, 2, &extra).await;
    deployment.mediator.reply_with(bind_on_request);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    let token = unique_id("fcm-token");
    let add = json!({"connectionId": connection, "recipientDids": [DID],
                     "payload": support::payload("before"),
                     "pushNotificationToken": {"type": "fcm", "token": token}});
    sender.call("addMessage", add).await;
    assert_eq!(delivered(&mut agent, 1).await, ["before"]);
    assert!(
        google.sends_to(&token).is_empty(),
        "no push while the socket takes messages"
    );

    deployment.docks[0].kill();
    let later = numbered("after the kill", 3);
    add_all(&mut sender, &connection, &later).await;
    // The send to the dead SocketDock fails: the binding ends, the phone is woken.
    support::eventually(WAIT, async || !google.sends_to(&token).is_empty()).await;
    let live_session = json!({"connectionId": connection});
    assert_eq!(sender.call("getLiveSession", live_session).await, false);
    assert_eq!(sender.count(&connection).await, 3, "nothing lost");
    let mut back = bind_agent(&deployment.docks[1], &connection).await;
    assert_eq!(delivered(&mut back, 3).await, later);
}

#[tokio::test]
async fn adds_while_the_backlog_flushes_come_after_it_once() {
    let deployment = deploy(2, 1).await;
    deployment.mediator.reply_with(bind_on_request);
    let mut sender = Client::connect(&deployment.servers[1].url()).await;
    let connection = unique_id("c");
    let backlog = numbered("backlog", 100);
    add_all(&mut sender, &connection, &backlog).await;
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    // Added on the other instance while the first one flushes.
    let during = numbered("during the flush", 20);
    add_all(&mut sender, &connection, &during).await;
    let mut expected = backlog;
    expected.extend(during);
    assert_eq!(delivered(&mut agent, 120).await, expected);
}

#[tokio::test]
async fn cold_messages_are_delivered_in_their_place() {
    let mongo = support::Mongo::shared();
    let database = unique_id("db");
    let mongo_url = mongo.url(&database);
    let env = [
        ("MONGODB_URI", mongo_url.as_str()),
        ("THRESHOLD_TIMESTAMP", "1000"),
        ("MOVER_INTERVAL_MS", "100"),
    ];
    let deployment = deploy_with(1, 1, &env).await;
    deployment.mediator.reply_with(bind_on_request);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let old = numbered("moved to MongoDB", 3);
    add_all(&mut sender, &connection, &old).await;
    let cold = format!("mpr:{{{connection}}}:cold");
    support::eventually(Duration::from_secs(30), async || {
        deployment.redis.cli(&["ZCARD", &cold]) == "3"
    })
    .await;
    add_all(&mut sender, &connection, &numbered("hot", 2)).await;
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    let mut expected = old;
    expected.extend(numbered("hot", 2));
    assert_eq!(delivered(&mut agent, 5).await, expected);
    support::eventually(WAIT, async || sender.count(&connection).await == 0).await;
}

// ---------------------------------------------------------------------------------------------
// Acknowledged delivery: a recipient in Pickup V2 live mode gets its messages in deliveries the
// mediator wraps; they stay in flight until the recipient's messages-received removes them.

/// As `bind_on_request`, plus `live <c>` (a live-delivery-change: binds c with
/// `X-Mpr-Live-Delivery: on`) and `unlive <c>` (off). A request to wrap messages (header
/// `X-Mpr-Deliver`) is answered with `{"delivery": [ids], "texts": [ciphertexts]}`, which the
/// stand-in makes instead of a packed pickup delivery.
fn mediator_with_pickup(received: &Received) -> Reply {
    if let [connection] = received.header_values("x-mpr-deliver").as_slice() {
        let request = received.json();
        assert_eq!(request["connectionId"], connection.as_str());
        let messages = request["messages"].as_array().expect("messages");
        let delivery = json!({
            "delivery": support::ids(messages),
            "texts": support::texts(messages),
        });
        return Reply::ok().body(&delivery.to_string());
    }
    let (live, connection) = match received.body.split_once(' ') {
        Some(("live", connection)) => ("on", connection),
        Some(("unlive", connection)) => ("off", connection),
        _ => return bind_on_request(received),
    };
    Reply::ok()
        .header("X-Mpr-Connection-Id", connection)
        .header("X-Mpr-Live-Delivery", live)
        .body(&received.body)
}

/// The next pickup delivery the agent gets: its message ids and ciphertexts.
async fn next_delivery(agent: &mut Agent, within: Duration) -> Option<(Vec<String>, Vec<String>)> {
    let text = agent.next_text(within).await?;
    let delivery: Value = serde_json::from_str(&text).expect("a delivery");
    let strings = |field: &str| -> Vec<String> {
        delivery[field]
            .as_array()
            .unwrap_or_else(|| panic!("not a delivery: {text}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    Some((strings("delivery"), strings("texts")))
}

/// Connects an agent through `dock` and sends `frame`, which the mediator answers with a
/// return-route reply; returns the agent once the reply arrived.
async fn agent_saying(dock: &testkit::SocketDock, frame: &str) -> Agent {
    let mut agent = Agent::connect(&dock.ws_url()).await;
    agent.send_text(frame);
    assert_eq!(agent.next_text(WAIT).await.as_deref(), Some(frame));
    agent
}

#[tokio::test]
async fn a_live_recipient_acknowledges_deliveries_and_what_it_did_not_comes_back_to_its_next_socket()
 {
    let deployment = deploy_with(2, 2, &[("VISIBILITY_TIMEOUT_MS", "3000")]).await;
    deployment.mediator.reply_with(mediator_with_pickup);
    let mut sender = Client::connect(&deployment.servers[1].url()).await;
    let connection = unique_id("c");
    let backlog = numbered("queued while away", 3);
    add_all(&mut sender, &connection, &backlog).await;

    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    let (ids, texts) = next_delivery(&mut agent, WAIT)
        .await
        .expect("the backlog, wrapped");
    assert_eq!(texts, backlog, "one delivery, oldest first");
    // The wrap request named the connection and carried QueuedMessages.
    let wraps: Vec<Received> = deployment
        .mediator
        .requests()
        .into_iter()
        .filter(|r| !r.header_values("x-mpr-deliver").is_empty())
        .collect();
    assert_eq!(wraps.len(), 1);
    assert_eq!(wraps[0].header_values("content-type"), ["application/json"]);
    let message = &wraps[0].json()["messages"][0];
    assert!(message["receivedAt"].is_string(), "{message}");
    assert_eq!(
        message["encryptedMessage"]["ciphertext"],
        backlog[0].as_str()
    );

    // Delivered is not removed: in flight, until the recipient acknowledges.
    assert_eq!(sender.count(&connection).await, 0);
    let live = numbered("while connected", 2);
    add_all(&mut sender, &connection, &live).await;
    let (mut live_ids, mut live_texts, mut deliveries) = (Vec::new(), Vec::new(), 1);
    while live_texts.len() < live.len() {
        let (more_ids, more) = next_delivery(&mut agent, WAIT).await.expect("live");
        live_ids.extend(more_ids);
        live_texts.extend(more);
        deliveries += 1;
    }
    assert_eq!(live_texts, live);
    // messages-received for all but the oldest of the backlog.
    let acknowledged: Vec<String> = ids[1..].iter().chain(&live_ids).cloned().collect();
    sender
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": acknowledged}),
        )
        .await;

    // The unacknowledged one comes back after the visibility timeout, to the socket bound
    // then: the recipient is back through the other SocketDock (a plain bind: live mode holds).
    agent.abort().await;
    let mut back = bind_agent(&deployment.docks[1], &connection).await;
    let (again, again_texts) = next_delivery(&mut back, WAIT).await.expect("redelivered");
    assert_eq!(again, ids[..1], "only the unacknowledged message, once");
    assert_eq!(again_texts, backlog[..1]);
    assert!(
        next_delivery(&mut back, QUIET).await.is_none(),
        "nothing else"
    );
    sender
        .call(
            "removeMessages",
            json!({"connectionId": connection, "messageIds": again}),
        )
        .await;
    // Live mode off: raw frames again, and this socket is no longer pushed to.
    back.send_text(&format!("unlive {connection}"));
    assert_eq!(
        back.next_text(WAIT).await,
        Some(format!("unlive {connection}"))
    );
    add_all(&mut sender, &connection, &numbered("after", 1)).await;
    assert!(back.next_text(QUIET).await.is_none(), "not pushed");
    let mut raw = bind_agent(&deployment.docks[0], &connection).await;
    assert_eq!(delivered(&mut raw, 1).await, numbered("after", 1));
    assert_eq!(
        deployment.servers[0]
            .metric(
                "mpr_socketdock_deliveries_total",
                "mode=\"pickup\",outcome=\"ok\""
            )
            .await
            + deployment.servers[1]
                .metric(
                    "mpr_socketdock_deliveries_total",
                    "mode=\"pickup\",outcome=\"ok\""
                )
                .await,
        f64::from(deliveries + 1)
    );
}

#[tokio::test]
async fn a_live_recipient_gets_no_more_than_its_window_until_it_acknowledges() {
    let deployment = deploy_with(
        1,
        1,
        &[
            ("SOCKETDOCK_DELIVERY_BATCH", "2"),
            ("SOCKETDOCK_DELIVERY_WINDOW", "4"),
        ],
    )
    .await;
    deployment.mediator.reply_with(mediator_with_pickup);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let messages = numbered("m", 7);
    add_all(&mut sender, &connection, &messages).await;
    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    let mut received = Vec::new();
    for _ in 0..2 {
        let (ids, texts) = next_delivery(&mut agent, WAIT).await.expect("a delivery");
        assert_eq!(ids.len(), 2, "batches of SOCKETDOCK_DELIVERY_BATCH");
        received.push((ids, texts));
    }
    assert!(
        next_delivery(&mut agent, QUIET).await.is_none(),
        "the window is full: nothing until an acknowledgement"
    );
    for (ids, _) in &received {
        sender
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": ids}),
            )
            .await;
    }
    let mut texts: Vec<String> = received.into_iter().flat_map(|(_, t)| t).collect();
    while texts.len() < messages.len() {
        let (ids, more) = next_delivery(&mut agent, WAIT).await.expect("the rest");
        sender
            .call(
                "removeMessages",
                json!({"connectionId": connection, "messageIds": ids}),
            )
            .await;
        texts.extend(more);
    }
    assert_eq!(texts, messages, "every message once, in order");
    assert_eq!(sender.count(&connection).await, 0);
}

#[tokio::test]
async fn messages_the_mediator_did_not_wrap_are_delivered_once_it_does() {
    let deployment = deploy(1, 1).await;
    deployment.mediator.reply_with(mediator_with_pickup);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    // The mediator fails the first wrap (down, or restarting).
    deployment.mediator.reply_next(Reply::status(503));
    add_all(&mut sender, &connection, &numbered("m", 1)).await;
    let (_, texts) = next_delivery(&mut agent, WAIT).await.expect("tried again");
    assert_eq!(texts, numbered("m", 1));
    assert!(next_delivery(&mut agent, QUIET).await.is_none(), "once");
    assert_eq!(
        deployment.servers[0]
            .metric(
                "mpr_socketdock_deliveries_total",
                "mode=\"pickup\",outcome=\"unwrapped\""
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_message_larger_than_a_deliverys_bytes_goes_alone() {
    // A delivery carries at most half of SOCKETDOCK_MAX_BODY_BYTES of messages.
    let deployment = deploy_with(1, 1, &[("SOCKETDOCK_MAX_BODY_BYTES", "8192")]).await;
    deployment.mediator.reply_with(mediator_with_pickup);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let large = "L".repeat(5000);
    let messages = vec!["before".to_owned(), large.clone(), "after".to_owned()];
    add_all(&mut sender, &connection, &messages).await;
    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    let mut texts = Vec::new();
    while texts.len() < messages.len() {
        let (_, more) = next_delivery(&mut agent, WAIT).await.expect("a delivery");
        assert!(
            more.len() == 1 || !more.contains(&large),
            "the large one alone"
        );
        texts.extend(more);
    }
    assert_eq!(texts, messages, "every message, in order");
}

#[tokio::test]
async fn a_frame_the_mediator_does_not_take_closes_the_agents_socket_and_ends_its_bindings() {
    let deployment = deploy(1, 1).await;
    deployment.mediator.reply_with(bind_on_request);
    let server = &deployment.servers[0];
    let connection = unique_id("c");
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    // The mediator fails the next frame (an instance dying under it, an error): the agent would
    // wait for its answer on an open socket forever; closed, it connects again and starts over.
    deployment.mediator.reply_next(Reply::status(500));
    agent.send_text("a pickup request");
    assert!(
        matches!(agent.next_frame(WAIT).await, Some(Frame::Closed(_))),
        "the socket is closed"
    );
    let mut client = Client::connect(&server.url()).await;
    let live_session = json!({"connectionId": connection});
    assert_eq!(client.call("getLiveSession", live_session).await, false);
    assert_eq!(
        server
            .metric(
                "mpr_socketdock_sockets_gone_total",
                "reason=\"frame_failed\""
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_instance_wrapping_a_delivery_dies_and_another_delivers_it_when_its_lease_ends() {
    // The lease after handing out a delivery (MEDIATOR_TIMEOUT_MS + 2 x the send timeout, 7 s)
    // outlasts the messages' visibility (1 s): the sweep finds them expired while the dead
    // holder's lease still keeps everyone out, and nothing else will come to wake them.
    let mut deployment = deploy_with(
        2,
        1,
        &[
            ("VISIBILITY_TIMEOUT_MS", "1000"),
            ("MEDIATOR_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    deployment.mediator.reply_with(mediator_with_pickup);
    let connection = unique_id("c");
    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    // The first wrap request stalls; its instance (the adder's: it is kicked there) dies under it.
    deployment
        .mediator
        .reply_next(Reply::status(500).after(Duration::from_secs(60)));
    let mut sender = Client::connect(&deployment.servers[1].url()).await;
    add_all(&mut sender, &connection, &numbered("m", 1)).await;
    let requests = deployment.mediator.wait_requests(2, WAIT).await;
    assert_eq!(
        requests[1].header_values("x-mpr-deliver"),
        std::slice::from_ref(&connection),
        "the wrap request"
    );
    deployment.servers[1].kill();
    let (_, texts) = next_delivery(&mut agent, WAIT)
        .await
        .expect("delivered by the survivor once the lease ended");
    assert_eq!(texts, numbered("m", 1));
    assert!(next_delivery(&mut agent, QUIET).await.is_none(), "once");
}

#[tokio::test]
async fn a_message_too_large_to_wrap_goes_as_a_raw_frame_in_its_place() {
    // The stand-in's delivery of a 9 000-byte message is larger than SOCKETDOCK_MAX_BODY_BYTES:
    // asked again and again, it would hold up every message behind it.
    let deployment = deploy_with(1, 1, &[("SOCKETDOCK_MAX_BODY_BYTES", "8192")]).await;
    deployment.mediator.reply_with(mediator_with_pickup);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let huge = "H".repeat(9000);
    add_all(
        &mut sender,
        &connection,
        &["before".to_owned(), huge.clone(), "after".to_owned()],
    )
    .await;
    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    let (_, first) = next_delivery(&mut agent, WAIT).await.expect("a delivery");
    assert_eq!(first, ["before"]);
    let raw = agent.next_text(WAIT).await.expect("the large one");
    let raw: Value = serde_json::from_str(&raw).expect("a JWE as JSON text");
    assert_eq!(
        raw["ciphertext"],
        huge.as_str(),
        "the message itself, unwrapped"
    );
    let (_, last) = next_delivery(&mut agent, WAIT).await.expect("a delivery");
    assert_eq!(last, ["after"], "then the rest, in order");
    assert_eq!(
        deployment.servers[0]
            .metric(
                "mpr_socketdock_deliveries_total",
                "mode=\"pickup\",outcome=\"sent_raw\""
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_instance_sending_a_message_its_add_handed_out_dies_and_another_sends_it_when_its_lease_ends()
 {
    // A lone message for an idle socket is handed out by its add, under the relay lease the add
    // takes: in flight, with nobody else to deliver it, from the moment the add answers.
    let mut deployment = deploy_world(2, 1, &[], true).await;
    deployment.mediator.reply_with(bind_on_request);
    let connection = unique_id("c");
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    let mut sender = Client::connect(&deployment.servers[1].url()).await;
    add_all(&mut sender, &connection, &numbered("before", 1)).await;
    assert_eq!(delivered(&mut agent, 1).await, numbered("before", 1));
    // Its POST to SocketDock stalls; the instance that added (and so sends) it dies under it,
    // and the POST never reaches SocketDock.
    deployment.relays[0].hold();
    add_all(&mut sender, &connection, &numbered("m", 1)).await;
    deployment.relays[0].wait_held(1, WAIT).await;
    deployment.servers[1].kill();
    deployment.relays[0].release();
    assert_eq!(
        delivered(&mut agent, 1).await,
        numbered("m", 1),
        "sent by the survivor once the lease ended, once"
    );
}

#[tokio::test]
async fn a_send_that_fails_unanswered_once_is_made_again_and_the_socket_stays_bound() {
    let deployment = deploy_world(1, 1, &[], true).await;
    deployment.mediator.reply_with(bind_on_request);
    let connection = unique_id("c");
    let mut agent = bind_agent(&deployment.docks[0], &connection).await;
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    // The POST's connection closes with no answer, as a pooled connection does when SocketDock
    // closes it (its keep-alive timeout) just as the POST goes out.
    deployment.relays[0].hold();
    add_all(&mut sender, &connection, &numbered("m", 1)).await;
    deployment.relays[0].wait_held(1, WAIT).await;
    deployment.relays[0].release();
    assert_eq!(
        delivered(&mut agent, 1).await,
        numbered("m", 1),
        "sent again on another connection, once"
    );
    // The socket was never taken for gone: still bound, and the next messages follow on it.
    let live_session = json!({"connectionId": connection});
    assert_eq!(sender.call("getLiveSession", live_session).await, true);
    add_all(&mut sender, &connection, &numbered("after", 3)).await;
    assert_eq!(delivered(&mut agent, 3).await, numbered("after", 3));
    support::eventually(WAIT, async || sender.count(&connection).await == 0).await;
}

/// A connection bound to an agent's idle socket, and a second instance (`adder`) whose Redis
/// replies the test can hold back (REDIS_TIMEOUT_MS 500), with a sender on it.
struct HeldAdder {
    deployment: Deployment,
    held: HeldReplies,
    _adder: Server,
    sender: Client,
    connection: String,
    agent: Agent,
}

impl HeldAdder {
    async fn start() -> Self {
        let deployment = deploy(1, 1).await;
        deployment.mediator.reply_with(bind_on_request);
        let connection = unique_id("c");
        let agent = bind_agent(&deployment.docks[0], &connection).await;
        let held = HeldReplies::start(deployment.redis.port).await;
        let endpoint = format!("http://127.0.0.1:{}", deployment.docks[0].port());
        let mediator_url = deployment.mediator.uri("/didcomm");
        let adder = Server::start(
            &deployment.redis,
            &[
                ("REDIS_URL", held.url().as_str()),
                ("REDIS_TIMEOUT_MS", "500"),
                ("MEDIATOR_URL", mediator_url.as_str()),
                ("SOCKETDOCK_SECRET", SECRET),
                ("SOCKETDOCK_ENDPOINTS", endpoint.as_str()),
                ("SOCKETDOCK_SEND_TIMEOUT_MS", "2000"),
                ("LIVENESS_TIMEOUT_MS", "2000"),
            ],
        )
        .await;
        let sender = Client::connect(&adder.url()).await;
        // The binding's first delivery step gives the lease up: the next add takes it.
        let lease = format!("mpr:{{{connection}}}:relay");
        eventually(WAIT, async || {
            deployment.redis.cli(&["EXISTS", &lease]) == "0"
        })
        .await;
        Self {
            deployment,
            held,
            _adder: adder,
            sender,
            connection,
            agent,
        }
    }

    /// The connection's first message (none before it left a deadline-index entry behind) was
    /// handed out by its add, under the lease the add took; then it must reach the agent once
    /// the lease ends, with no other add.
    async fn assert_sent_when_the_lease_ends(mut self) {
        let in_flight = format!("mpr:{{{}}}:inflight", self.connection);
        assert_eq!(
            self.deployment.redis.cli(&["ZCARD", &in_flight]),
            "1",
            "handed out by the add, under the lease it took"
        );
        assert_eq!(
            delivered(&mut self.agent, 1).await,
            numbered("m", 1),
            "sent once the lease ended, once"
        );
    }
}

#[tokio::test]
async fn a_message_its_add_handed_out_whose_reply_was_lost_is_sent_when_its_lease_ends() {
    // The add's reply is lost after Redis ran it (held past REDIS_TIMEOUT_MS), so the adding
    // instance never sends the message and only learns, settling the add, that it was stored.
    if support::single_node_only() {
        return;
    }
    let mut test = HeldAdder::start().await;
    let (held, sender, connection) = (&test.held, &mut test.sender, &test.connection);
    held.hold();
    // Answered with success: the add is settled as stored (`Client::add` asserts it).
    let add = sender.add(connection, DID, "m 0");
    let settle_seen = async {
        // The add timed out and its settle is on its way: Redis ran the add.
        held.wait_sent("settle_add", WAIT).await;
        held.release();
    };
    tokio::join!(add, settle_seen);
    test.assert_sent_when_the_lease_ends().await;
}

#[tokio::test]
async fn a_message_its_add_handed_out_whose_outcome_stayed_unknown_is_sent_when_its_lease_ends() {
    // Redis answers nothing until the adding instance gave up learning the add's outcome (the
    // sender gets an error saying so); the deadline-index entry the message needs is written
    // by a sweep once Redis answers again.
    if support::single_node_only() {
        return;
    }
    let mut test = HeldAdder::start().await;
    test.held.hold();
    let params = json!({"connectionId": test.connection, "recipientDids": [DID], "payload": support::payload("m 0")});
    let error = test.sender.call_err("addMessage", params).await;
    test.held.release();
    assert!(error.to_string().contains("unknown"), "{error}");
    test.assert_sent_when_the_lease_ends().await;
}

/// As `mediator_with_pickup`, with deliveries three times the size of their messages (as an
/// encrypting mediator's may be: base64 inside a JWE), so that a batch can outgrow a frame.
fn mediator_with_large_pickup(received: &Received) -> Reply {
    if !received.header_values("x-mpr-deliver").is_empty() {
        let request = received.json();
        let messages = request["messages"].as_array().expect("messages");
        let texts = support::texts(messages);
        let size: usize = texts.iter().map(String::len).sum();
        let delivery = json!({
            "delivery": support::ids(messages),
            "texts": texts,
            "padding": "P".repeat(2 * size),
        });
        return Reply::ok().body(&delivery.to_string());
    }
    mediator_with_pickup(received)
}

#[tokio::test]
async fn a_batch_too_large_to_wrap_goes_in_smaller_deliveries_in_order() {
    // Batches hold at most 4 096 bytes of messages; wrapped, five 700-byte messages would not
    // fit in SOCKETDOCK_MAX_BODY_BYTES.
    let deployment = deploy_with(1, 1, &[("SOCKETDOCK_MAX_BODY_BYTES", "8192")]).await;
    deployment.mediator.reply_with(mediator_with_large_pickup);
    let mut sender = Client::connect(&deployment.servers[0].url()).await;
    let connection = unique_id("c");
    let messages: Vec<String> = (0..8).map(|i| format!("{i}{}", "x".repeat(600))).collect();
    add_all(&mut sender, &connection, &messages).await;
    let mut agent = agent_saying(&deployment.docks[0], &format!("live {connection}")).await;
    let mut texts = Vec::new();
    let mut deliveries = 0;
    while texts.len() < messages.len() {
        let (_, more) = next_delivery(&mut agent, WAIT)
            .await
            .unwrap_or_else(|| panic!("after {texts:?}, a delivery"));
        assert!(!more.is_empty());
        texts.extend(more);
        deliveries += 1;
    }
    assert_eq!(texts, messages, "every message once, in order");
    assert!(
        next_delivery(&mut agent, QUIET).await.is_none(),
        "nothing more"
    );
    assert!(deliveries > 2, "in smaller deliveries: {deliveries}");
    let counted = |outcome: &'static str| {
        let server = &deployment.servers[0];
        async move {
            server
                .metric(
                    "mpr_socketdock_deliveries_total",
                    &format!("mode=\"pickup\",outcome=\"{outcome}\""),
                )
                .await
        }
    };
    assert_eq!(counted("ok").await, deliveries as f64);
    assert_eq!(counted("sent_raw").await, 0.0, "none went unwrapped");
}
