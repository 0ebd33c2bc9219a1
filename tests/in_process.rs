//! An instance run inside the test process (`Server::build` + `serve`) on ports chosen by the
//! system: the same server as the binary, without a child process.

mod support;

use clap::Parser;
use mpr::config::Config;
use mpr::server::Server;
use serde_json::json;
use support::{Client, Redis, texts, unique_id};

#[tokio::test]
async fn an_instance_built_in_process_on_port_0_serves_and_stops() {
    let redis = Redis::start();
    let mut args: Vec<String> = ["mpr", "--ws-port", "0", "--app-port", "0"]
        .into_iter()
        .chain(["--bind-address", "127.0.0.1"])
        .map(String::from)
        .collect();
    args.extend(redis.mpr_flags());
    let config = Config::parse_from(args);
    let server = Server::build(config).await.expect("an instance");
    let (ws, http) = (server.ws_address(), server.http_address());
    assert_ne!(ws.port(), 0);
    assert_ne!(http.port(), 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let mut client = Client::connect(&format!("ws://{ws}")).await;
    let connection = unique_id("c");
    client
        .add(&connection, "did:key:z6MkIn", "in process")
        .await;
    let taken = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(texts(&taken), ["in process"]);
    let (status, _) = testkit::http_get(http.port(), "/ready").await.unwrap();
    assert_eq!(status, 200);

    stop.send(()).unwrap();
    serving.await.unwrap().expect("a clean stop");
    assert_eq!(redis.cli(&["ZCARD", "mpr:instances"]), "0", "deregistered");
}
