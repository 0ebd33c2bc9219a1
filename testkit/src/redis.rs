//! A private redis-server on 127.0.0.1.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Proc, Spawn, free_port};

/// How to start a redis-server.
#[derive(Clone, Debug)]
pub struct RedisOpts {
    pub bin: String,
    pub port: u16,
    /// Passed after `--port <port> --bind 127.0.0.1 --save "" --appendonly no` (no persistence);
    /// later settings win, so `["--appendonly", "yes", "--dir", …]` turns AOF on.
    pub args: Vec<String>,
    pub spawn: Spawn,
}

impl RedisOpts {
    /// `bin` on a free port, no extra arguments.
    pub fn new(bin: &str) -> Result<Self> {
        Ok(Self {
            bin: bin.to_owned(),
            port: free_port()?,
            args: Vec::new(),
            spawn: Spawn::default(),
        })
    }
}

/// A running redis-server; stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    opts: RedisOpts,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts it and waits until it answers PING.
    pub async fn start(opts: RedisOpts) -> Result<Self> {
        let mut redis = Self { opts, proc: None };
        redis.restart().await?;
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.opts.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.opts.port)
    }

    /// The pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Starts it (again) on the same port, with the same arguments; waits until it answers PING.
    pub async fn restart(&mut self) -> Result<()> {
        let port = self.opts.port;
        if self.proc.is_some() {
            bail!("redis-server on port {port} is running");
        }
        let mut cmd = Command::new(&self.opts.bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.opts.args);
        let proc = &*self
            .proc
            .insert(Proc::spawn(cmd, "redis-server", &self.opts.spawn)?);
        let log = &self.opts.spawn.log;
        let what = format!("redis-server on port {port} did not answer PING");
        let (within, every) = (Duration::from_secs(10), Duration::from_millis(20));
        let ready = proc
            .wait_ready(log, &what, within, every, || pings(port))
            .await;
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    /// Stops it (see [`Spawn::stop_grace`]); a no-op when it is not running.
    pub fn stop(&mut self) {
        self.proc.take();
    }

    /// kill -9: no shutdown, nothing flushed beyond what its persistence settings wrote.
    pub fn kill(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill();
        }
    }
}

/// Whether a redis-server on `port` answers PING with PONG.
async fn pings(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        anyhow::Ok(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Ok(true))
    )
}
