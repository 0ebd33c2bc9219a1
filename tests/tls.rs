//! TLS on both ports from TLS_CERT_FILE / TLS_KEY_FILE: a client trusting the test CA gets a
//! socket (wss://) and /health (https://); plain ws:// gets none; a certificate replaced and
//! signalled with SIGHUP is the one new connections see.

mod support;

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::certs::test_ca_and_cert;
use support::push_standins::TempFile;
use support::{Redis, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).unwrap();
    let ca: CertificateDer<'static> = ca;
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A ping over wss:// to `port`, trusting `ca_pem`; None if the TLS handshake fails.
async fn wss_ping(port: u16, ca_pem: &str) -> Option<String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector(ca_pem).connect(name, tcp).await.ok()?;
    let (mut socket, _) = tokio_tungstenite::client_async(format!("wss://127.0.0.1:{port}/"), tls)
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    let ping = json!({"jsonrpc": "2.0", "method": "ping", "id": 1}).to_string();
    socket.send(Message::text(ping)).await.unwrap();
    let reply = socket.next().await?.ok()?;
    Some(reply.into_text().ok()?.to_string())
}

#[tokio::test]
async fn both_ports_speak_tls_and_a_renewed_certificate_is_used_after_sighup() {
    let (ca, cert, key) = test_ca_and_cert();
    let cert_file = TempFile::new("cert.pem", &cert);
    let key_file = TempFile::new("key.pem", &key);
    let redis = Redis::start();
    let server = Server::spawn(
        &redis,
        &[
            ("TLS_CERT_FILE", cert_file.as_str()),
            ("TLS_KEY_FILE", key_file.as_str()),
        ],
    );
    let https = format!("https://127.0.0.1:{}/health", server.app_port);
    let ca_cert = reqwest::Certificate::from_pem(ca.as_bytes()).unwrap();
    let client = mpr::http::outbound_client()
        .add_root_certificate(ca_cert)
        .build()
        .unwrap();
    support::eventually(std::time::Duration::from_secs(20), async || {
        client
            .get(&https)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let reply = wss_ping(server.ws_port, &ca).await.expect("a TLS socket");
    assert!(reply.contains("pong"), "{reply}");
    // Plain WebSocket on the TLS port: no socket.
    let plain =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", server.ws_port)).await;
    assert!(plain.is_err(), "a plain upgrade on the TLS port");

    // A certificate from another CA, then SIGHUP: new connections get it.
    let (new_ca, new_cert, new_key) = test_ca_and_cert();
    std::fs::write(&cert_file.path, new_cert).unwrap();
    std::fs::write(&key_file.path, new_key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    support::eventually(std::time::Duration::from_secs(10), async || {
        wss_ping(server.ws_port, &new_ca).await.is_some()
    })
    .await;
    assert!(
        wss_ping(server.ws_port, &ca).await.is_none(),
        "the old certificate is gone"
    );
}
