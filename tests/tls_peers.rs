//! The server speaks TLS to its peers: to a redis-server that speaks TLS only (REDIS_URL=rediss://,
//! trusting the test's CA through SSL_CERT_FILE, as the system's roots would be), to a Redis
//! Cluster whose nodes speak TLS to clients and to each other, and to a MongoDB-wire server that
//! speaks TLS only (MONGODB_URI with `tls=true&tlsCAFile=`).

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use bson::doc;
use serde_json::json;
use support::certs::test_ca_and_cert;
use support::push_standins::TempFile;
use support::{Client, Mongo, Redis, Server};

/// A redis-server on a TLS port only; killed on drop.
struct TlsRedis(Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test CA and a server certificate for 127.0.0.1, in files: (CA, certificate, key).
fn certificate_files() -> (TempFile, TempFile, TempFile) {
    let (ca, cert, key) = test_ca_and_cert();
    (
        TempFile::new("ca.pem", &ca),
        TempFile::new("server.pem", &cert),
        TempFile::new("server.key", &key),
    )
}

#[tokio::test]
async fn the_server_speaks_tls_to_redis() {
    let (ca_file, cert_file, key_file) = certificate_files();
    let port = support::free_port();
    let _redis = TlsRedis(
        Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", cert_file.as_str()])
            .args(["--tls-key-file", key_file.as_str()])
            .args(["--tls-ca-cert-file", ca_file.as_str()])
            .args(["--tls-auth-clients", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    support::eventually(Duration::from_secs(20), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let mut opts = testkit::MprOpts::new(
        env!("CARGO_BIN_EXE_mpr"),
        &format!("rediss://127.0.0.1:{port}"),
    )
    .expect("free ports");
    opts.clear_env = true;
    opts.env = vec![("SSL_CERT_FILE".into(), ca_file.as_str().into())];
    let server = testkit::MprServer::spawn(opts).expect("mpr starts");
    server.wait_ready().await.expect("mpr ready over rediss://");
    let mut client = Client::connect(&server.url()).await;
    let connection = support::unique_id("c");
    client.add(&connection, "did:key:z6MkTls", "over TLS").await;
    let taken = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(support::texts(&taken), ["over TLS"]);
}

#[tokio::test]
async fn the_server_speaks_tls_to_a_redis_cluster() {
    let (ca_file, cert_file, key_file) = certificate_files();
    let mut opts =
        testkit::RedisClusterOpts::new(&testkit::redis_server_bin()).expect("free ports");
    opts.tls = Some(testkit::ClusterTls {
        cert_file: cert_file.path.clone(),
        key_file: key_file.path.clone(),
        ca_file: ca_file.path.clone(),
    });
    let redis = Redis::start_cluster_with(opts);
    // REDIS_URL=rediss://, REDIS_NODES on the nodes' TLS ports: the slot map the server reads
    // over TLS names TLS ports.
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());

    // Not trusting the CA, the server does not start on the cluster, and says why.
    let mut env: Vec<(String, String)> = redis.topology_env();
    env.push(("REDIS_URL".into(), redis.url()));
    let (code, said) = support::run_until_exit(&env, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("server stopped: REDIS_URL: "), "{said}");
    assert!(said.contains("UnknownIssuer"), "{said}");

    let env = [("SSL_CERT_FILE", ca_file.as_str())];
    let sender_side = Server::start(&redis, &env).await;
    let mediator_side = Server::start(&redis, &env).await;
    let mut sender = Client::connect(&sender_side.url()).await;
    let mut mediator = Client::connect(&mediator_side.url()).await;
    // Several connections: their slots fall on more than one primary.
    for round in 0..6 {
        let live = support::unique_id("tls");
        mediator.add_live_session(&live, "session").await;
        let id = sender
            .add(&live, "did:key:z6MkTlsCluster", &format!("live {round}"))
            .await;
        let push = mediator
            .next_push(Duration::from_secs(20))
            .await
            .expect("a push through the other instance");
        assert_eq!(push["messages"][0]["id"], id.as_str(), "{push}");
        let offline = support::unique_id("tls");
        sender
            .add(
                &offline,
                "did:key:z6MkTlsCluster",
                &format!("waiting {round}"),
            )
            .await;
        let taken = mediator
            .take(json!({"connectionId": offline, "deleteMessages": true}))
            .await;
        assert_eq!(support::texts(&taken), [format!("waiting {round}")]);
    }
}

#[tokio::test]
async fn the_server_moves_messages_to_a_mongodb_that_speaks_tls_and_reads_them_back() {
    let (ca_file, cert_file, key_file) = certificate_files();
    let mongo = Mongo::start_tls(testkit::SecantusTls {
        cert_file: cert_file.path.clone(),
        key_file: key_file.path.clone(),
        ca_file: ca_file.path.clone(),
    });
    let redis = Redis::start();
    let database = support::unique_id("db");
    let uri = mongo.url(&database);
    assert!(uri.contains("tls=true"), "{uri}");

    // Not trusting the CA, the server must not talk to it: /ready names MongoDB.
    let untrusting_uri = uri.split("&tlsCAFile=").next().unwrap().to_owned();
    let untrusting = Server::spawn(&redis, &[("MONGODB_URI", &untrusting_uri)]);
    support::eventually(Duration::from_secs(30), async || {
        let (status, body) = untrusting.http_get("/ready").await;
        status == 503 && body.starts_with("MongoDB")
    })
    .await;
    drop(untrusting);

    let env = [
        ("MONGODB_URI", uri.as_str()),
        ("THRESHOLD_TIMESTAMP", "1000"),
        ("MOVER_INTERVAL_MS", "100"),
    ];
    let server = Server::start(&redis, &env).await;
    let mut client = Client::connect(&server.url()).await;
    let connection = support::unique_id("c");
    let id = client
        .add(&connection, "did:key:z6MkMongoTls", "cold over TLS")
        .await;
    // The mover writes MongoDB first and commits the move in Redis after: once Redis says the
    // message is cold, its document is there.
    let cold_ids = format!("mpr:{{{connection}}}:cold");
    support::eventually(Duration::from_secs(30), async || {
        redis.cli(&["ZCARD", &cold_ids]) == "1"
    })
    .await;
    // The test's own client reaches the documents over TLS too.
    let messages = mongo.messages(&database).await;
    let documents = messages.count_documents(doc! {"messageId": &id}).await;
    assert_eq!(documents.unwrap(), 1, "the moved message's document");
    let taken = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(support::texts(&taken), ["cold over TLS"]);
    support::eventually(Duration::from_secs(30), async || {
        messages.count_documents(doc! {}).await.unwrap() == 0
    })
    .await;
}
