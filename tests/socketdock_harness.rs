//! The SocketDock harness against the real SocketDock, without the server: a recorder plays
//! the backend, so these tests pin down the wire contract the adapter's tests rely on
//! (`../shared/reference/socketdock.md`).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::socketdock::{
    Agent, Callback, CallbackRecorder, Frame, MediatorStandIn, Reply, post, post_for_response,
};

/// Generous: the machine is shared. (Starting SocketDock has a wait of its own.)
const WAIT: Duration = Duration::from_secs(20);

/// An agent on `dock`, and the `meta` of its connect callback (the recorder's `n`th).
async fn connect(
    dock: &testkit::SocketDock,
    backend: &CallbackRecorder,
    n: usize,
) -> (Agent, Value) {
    let agent = Agent::connect(&dock.ws_url()).await;
    let connects = backend.wait(Callback::Connect, n, WAIT).await;
    (agent, connects[n - 1]["meta"].clone())
}

#[tokio::test]
async fn frames_become_callbacks_and_sends_become_frames() {
    let backend = CallbackRecorder::start().await;
    let dock = backend.start_socketdock().await;
    let (mut agent, meta) = connect(&dock, &backend, 1).await;

    let id = meta["connection_id"].as_str().expect("a connection_id");
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    assert!(
        id.len() == 32 && id.chars().all(is_hex),
        "connection_id {id}"
    );
    let socket = format!("{}/socket/{id}", dock.endpoint());
    assert_eq!(meta["send"], format!("{socket}/send"));
    assert_eq!(meta["disconnect"], format!("{socket}/disconnect"));
    assert!(
        meta["headers"]["upgrade"].is_string(),
        "upgrade headers: {meta}"
    );

    agent.send_text("hello mediator");
    let messages = backend.wait(Callback::Message, 1, WAIT).await;
    assert_eq!(messages[0]["message"], "hello mediator");
    assert_eq!(messages[0]["meta"]["connection_id"], id);

    let send = format!("{socket}/send");
    let answer = post(&send, Some("text/plain"), "hello agent").await;
    assert_eq!(answer, (200, "OK".to_owned()));
    assert_eq!(agent.next_text(WAIT).await.as_deref(), Some("hello agent"));

    // Anything but exactly `text/plain` arrives as a binary frame.
    let answer = post(&send, Some("application/json"), "{}").await;
    assert_eq!(answer, (200, "OK".to_owned()));
    assert_eq!(
        agent.next_frame(WAIT).await,
        Some(Frame::Binary(b"{}".to_vec()))
    );
}

#[tokio::test]
async fn closed_sockets_refuse_sends() {
    let backend = CallbackRecorder::start().await;
    let dock = backend.start_socketdock().await;

    // The agent closes.
    let (mut agent, meta) = connect(&dock, &backend, 1).await;
    assert_eq!(agent.close().await, Some(1000));
    let send = meta["send"].as_str().unwrap();
    assert_eq!(
        post(send, Some("text/plain"), "late").await,
        (500, "FAIL".into())
    );

    // The backend disconnects it.
    let (mut agent, meta) = connect(&dock, &backend, 2).await;
    let disconnect = meta["disconnect"].as_str().unwrap();
    assert_eq!(post(disconnect, None, "").await, (200, "OK".into()));
    assert_eq!(
        agent.next_frame(WAIT).await,
        Some(Frame::Closed(Some(1000)))
    );
    assert_eq!(post(disconnect, None, "").await, (500, "FAIL".into()));

    // The agent's connection drops without a close frame.
    let (agent, meta) = connect(&dock, &backend, 3).await;
    agent.abort().await;
    let send = meta["send"].as_str().unwrap();
    support::eventually(WAIT, async || {
        post(send, Some("text/plain"), "lost").await == (500, "FAIL".into())
    })
    .await;
    assert_eq!(dock.stop().expect("SocketDock stops").code(), Some(0));
}

#[tokio::test]
async fn mediator_stand_in_answers_by_script() {
    let mediator = MediatorStandIn::start().await;
    mediator.reply_with(|request| Reply::status(202).body(&request.body.to_uppercase()));
    let bound = Reply::ok()
        .header("X-Mpr-Connection-Id", "conn-a")
        .header("X-Mpr-Connection-Id", "conn-b");
    mediator.reply_next(bound);

    let first = post_for_response(&mediator.uri("/didcomm"), Some("application/json"), "{}").await;
    assert_eq!(first.status(), 200);
    let ids: Vec<_> = first
        .headers()
        .get_all("x-mpr-connection-id")
        .iter()
        .collect();
    assert_eq!(ids, ["conn-a", "conn-b"]);
    let second = post(&mediator.uri("/didcomm"), None, "queued").await;
    assert_eq!(second, (202, "QUEUED".into()));

    let requests = mediator.wait_requests(2, WAIT).await;
    assert_eq!(requests[0].path, "/didcomm");
    assert_eq!(
        requests[0].header_values("content-type"),
        ["application/json"]
    );
    assert_eq!(requests[1].body, "queued");
}
