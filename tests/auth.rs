//! AUTH_TOKENS and AUTH_TOKENS_FILE: an upgrade without a valid token gets 401, with one
//! (header or query) it is a socket like any other; a token rotated out by SIGHUP stops
//! working, sockets already open stay; /metrics asks for a token when AUTH_METRICS is set.

mod support;

use std::time::Duration;

use serde_json::json;
use support::push_standins::TempFile;
use support::{Client, Redis, Server};
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The HTTP status of an upgrade to `url` with `authorization` (101 when it became a socket).
async fn upgrade_status(url: &str, authorization: Option<&str>) -> u16 {
    let mut request = url.into_client_request().unwrap();
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("upgrade to {url}: {other}"),
    }
}

#[tokio::test]
async fn only_a_valid_token_opens_a_socket() {
    let redis = Redis::start();
    let server = Server::start(&redis, &[("AUTH_TOKENS", "first-token,second-token")]).await;
    let url = server.url();
    assert_eq!(upgrade_status(&url, None).await, 401, "without a token");
    assert_eq!(
        upgrade_status(&url, Some("Bearer wrong")).await,
        401,
        "a wrong token"
    );
    assert_eq!(
        upgrade_status(&url, Some("Basic Zmlyc3QtdG9rZW4=")).await,
        401
    );
    assert_eq!(upgrade_status(&url, Some("Bearer first-token")).await, 101);
    assert_eq!(upgrade_status(&url, Some("Bearer second-token")).await, 101);
    assert_eq!(
        upgrade_status(&format!("{url}/?token=wrong"), None).await,
        401
    );
    // In the URL, as an unmodified MPR client can carry it: a socket like any other.
    let mut client = Client::connect(&format!("{url}/?token=second-token")).await;
    assert_eq!(client.call("ping", json!({})).await, "pong");
    assert_eq!(
        server
            .metric("mpr_auth_refused_total", "reason=\"invalid\"")
            .await,
        2.0
    );
    assert_eq!(
        server
            .metric("mpr_auth_refused_total", "reason=\"missing\"")
            .await,
        2.0,
        "none, and a Basic header"
    );
}

#[tokio::test]
async fn a_token_rotated_out_on_sighup_stops_opening_sockets() {
    let redis = Redis::start();
    let file = TempFile::new("tokens", "# tokens\nold-token\n");
    let server = Server::start(&redis, &[("AUTH_TOKENS_FILE", file.as_str())]).await;
    let url = server.url();
    let mut open = Client::connect(&format!("{url}/?token=old-token")).await;
    std::fs::write(&file.path, "new-token\n").unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    support::eventually(Duration::from_secs(10), async || {
        upgrade_status(&url, Some("Bearer new-token")).await == 101
    })
    .await;
    assert_eq!(upgrade_status(&url, Some("Bearer old-token")).await, 401);
    // A socket opened with it stays open.
    assert_eq!(open.call("ping", json!({})).await, "pong");
}

#[tokio::test]
async fn metrics_ask_for_a_token_when_configured() {
    let redis = Redis::start();
    let server = Server::start(
        &redis,
        &[("AUTH_TOKENS", "scrape-token"), ("AUTH_METRICS", "true")],
    )
    .await;
    let (status, _) = server.http_get("/metrics").await;
    assert_eq!(status, 401);
    let url = format!("http://127.0.0.1:{}/metrics", server.app_port);
    let client = mpr::http::outbound_client().build().unwrap();
    let response = client
        .get(&url)
        .bearer_auth("scrape-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("mpr_auth_refused_total"), "{body}");
    // The probes stay open: orchestrators call them without credentials.
    assert_eq!(server.http_get("/health").await.0, 200);
}
