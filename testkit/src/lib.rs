//! Child processes for the mpr integration tests and the benchmark tool, written once: a
//! redis-server, a Redis Cluster of six, a master with replicas and three sentinels, a
//! SecantusDB (a MongoDB-wire server), a SocketDock and `mpr` instances, each on free
//! 127.0.0.1 ports, started, awaited until they answer, and stopped.
//!
//! Everything is fallible (`anyhow::Result`); the tests wrap it with `expect`. Waits are async;
//! [`block_on`] serves synchronous callers, even from inside a runtime.

mod mpr;
mod proc;
mod redis;
mod redis_cluster;
mod redis_sentinel;
mod secantus;
mod socketdock;

use std::hash::BuildHasher;
use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use mpr::{MprOpts, MprServer};
pub use proc::{Log, Proc, Spawn, die_with_parent, kill_all, running, stop};
pub use redis::{RedisOpts, RedisServer};
pub use redis_cluster::{ClusterTls, RedisCluster, RedisClusterOpts};
pub use redis_sentinel::{RedisSentinel, RedisSentinelOpts};
pub use secantus::{Secantus, SecantusOpts, SecantusTls};
pub use socketdock::{SocketDock, SocketDockOpts};

/// The server binary the tests start as "Redis": `MPR_TEST_REDIS_SERVER` when set (e.g. a
/// valkey-server, `scripts/ensure-valkey`), else `redis-server` from PATH.
pub fn redis_server_bin() -> String {
    std::env::var("MPR_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A 127.0.0.1 port nobody listens on right now (never 6379).
pub fn free_port() -> Result<u16> {
    pick_port(&[0])
}

/// How far above its port a Redis Cluster node binds its cluster bus port.
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// How far above its port a node of a TLS cluster listens with TLS.
pub const CLUSTER_TLS_OFFSET: u16 = 1;

/// A port for a Redis Cluster node: nobody listens on it, on its cluster bus port (port +
/// [`CLUSTER_BUS_OFFSET`], which the node binds too) nor on its TLS port (port +
/// [`CLUSTER_TLS_OFFSET`], bound in a TLS cluster) right now.
pub fn free_cluster_port() -> Result<u16> {
    pick_port(&[0, CLUSTER_TLS_OFFSET, CLUSTER_BUS_OFFSET])
}

/// A port `p` such that every `p + offset` is free now and was never handed out here before.
///
/// Ports are picked at random below the range the system hands out to bind(0) and to outgoing
/// connections (ip_local_port_range), bus ports included: an outgoing connection of any process
/// cannot take one between picking and binding it, nor while a test restarts a server on it.
/// Other processes picking the same way can still race for one: the starters retry on fresh
/// ports (see [`RedisServer::start_on_free_port`]).
fn pick_port(offsets: &[u16]) -> Result<u16> {
    // A port is handed out once per process (bus ports included), so two tests running at once
    // never get the same one.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let range = quiet_ports();
    let width = u64::from(range.end - range.start);
    for _ in 0..10_000 {
        let draw = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let random = std::hash::RandomState::new().hash_one(draw);
        let port = range.start + (random % width) as u16;
        let ports: Vec<u16> = offsets.iter().map(|offset| port + offset).collect();
        let mut handed_out = HANDED_OUT.lock().expect("ports lock");
        if ports.iter().any(|p| *p == 6379 || handed_out.contains(p)) {
            continue;
        }
        if ports
            .iter()
            .all(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            handed_out.extend(ports);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port in {range:?}")
}

/// Ports below the system's ephemeral range whose bus ports are below it too; when the system
/// leaves too few of those, every port a cluster node can have.
fn quiet_ports() -> std::ops::Range<u16> {
    const LOW: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let end = ephemeral_low.saturating_sub(CLUSTER_BUS_OFFSET);
    if end >= LOW + 2_000 {
        LOW..end
    } else {
        1024..u16::MAX - CLUSTER_BUS_OFFSET
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
