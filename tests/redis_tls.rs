//! REDIS_URL=rediss://: the server talks to a redis-server that speaks TLS only, trusting the
//! test's CA (through SSL_CERT_FILE, as the system's roots would be), and serves calls.

mod support;

use std::process::{Child, Command};
use std::time::Duration;

use serde_json::json;
use support::Client;
use support::certs::test_ca_and_cert;
use support::push_standins::TempFile;

/// A redis-server on a TLS port only; killed on drop.
struct TlsRedis(Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_server_speaks_tls_to_redis() {
    let (ca, cert, key) = test_ca_and_cert();
    let (ca_file, cert_file, key_file) = (
        TempFile::new("ca.pem", &ca),
        TempFile::new("redis.pem", &cert),
        TempFile::new("redis.key", &key),
    );
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
    support::eventually(Duration::from_secs(20), async || {
        server
            .http_get("/ready")
            .await
            .is_ok_and(|(status, _)| status == 200)
    })
    .await;
    let mut client = Client::connect(&server.url()).await;
    let connection = support::unique_id("c");
    client.add(&connection, "did:key:z6MkTls", "over TLS").await;
    let taken = client
        .take(json!({"connectionId": connection, "deleteMessages": true}))
        .await;
    assert_eq!(support::texts(&taken), ["over TLS"]);
}
