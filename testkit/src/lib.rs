//! Child processes for the mpr integration tests and the benchmark tool, written once: a
//! redis-server or a Redis Cluster of six, a SecantusDB (a MongoDB-wire server), a SocketDock
//! and `mpr` instances, each on free 127.0.0.1 ports, started, awaited until they answer, and
//! stopped.
//!
//! Everything is fallible (`anyhow::Result`); the tests wrap it with `expect`. Waits are async;
//! [`block_on`] serves synchronous callers, even from inside a runtime.

mod mpr;
mod proc;
mod redis;
mod redis_cluster;
mod secantus;
mod socketdock;

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use mpr::{MprOpts, MprServer};
pub use proc::{Log, Proc, Spawn, die_with_parent, kill_all, running, stop};
pub use redis::{RedisOpts, RedisServer};
pub use redis_cluster::{RedisCluster, RedisClusterOpts};
pub use secantus::{Secantus, SecantusOpts};
pub use socketdock::{SocketDock, SocketDockOpts};

/// A 127.0.0.1 port nobody listens on right now (never 6379).
pub fn free_port() -> Result<u16> {
    // The system may give the port a caller just released to the next bind(0): two tests
    // running at once would then start servers on one port. A port is handed out once per
    // process.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port != 6379 && HANDED_OUT.lock().expect("ports lock").insert(port) {
            return Ok(port);
        }
    }
}

/// How long one [`http_get`] may take, connecting and reading included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Status and body of a plain `GET path` on 127.0.0.1:`port` (HTTP/1.0, so never chunked).
/// Fails when nothing answers or the answer has no status line.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A reset after the answer still leaves the answer.
        let _ = stream.read_to_end(&mut response).await;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!("GET {path} on port {port}: no answer within {HTTP_TIMEOUT:?}")
        })??;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {path} on port {port}: no HTTP status"))?;
    Ok((status, body.to_owned()))
}

/// Runs `future` to completion on a thread of its own with a runtime of its own, so that
/// synchronous code can wait for it, inside a runtime or not. A panic in it is passed on.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(future)
        });
        waiter
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
