//! A private redis-server on 127.0.0.1.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    /// A config file, named before every flag (redis-server wants it first): a sentinel needs
    /// one it can rewrite.
    pub config_file: Option<std::path::PathBuf>,
    pub spawn: Spawn,
}

impl RedisOpts {
    /// `bin` on a free port, no extra arguments.
    pub fn new(bin: &str) -> Result<Self> {
        Ok(Self {
            bin: bin.to_owned(),
            port: free_port()?,
            args: Vec::new(),
            config_file: None,
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
    /// Starts it on `opts.port` and waits until it answers.
    pub async fn start(opts: RedisOpts) -> Result<Self> {
        let mut redis = Self { opts, proc: None };
        redis.restart().await?;
        Ok(redis)
    }

    /// [`Self::start`], and when it does not come up on `opts.port` (someone took the port
    /// after it was picked) again on fresh free ports, a few times; [`Self::port`] says where.
    pub async fn start_on_free_port(opts: RedisOpts) -> Result<Self> {
        let first = opts.port;
        start_retrying(first, free_port, |port| RedisOpts {
            port,
            ..opts.clone()
        })
        .await
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

    /// Starts it (again) on the same port, with the same arguments; waits until it answers
    /// PING as itself (its pid in INFO: not another server that holds the port).
    pub async fn restart(&mut self) -> Result<()> {
        let port = self.opts.port;
        if self.proc.is_some() {
            bail!("redis-server on port {port} is running");
        }
        let mut cmd = Command::new(&self.opts.bin);
        cmd.args(&self.opts.config_file);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.opts.args);
        let proc = &*self
            .proc
            .insert(Proc::spawn(cmd, "redis-server", &self.opts.spawn)?);
        let log = &self.opts.spawn.log;
        let pid = proc.pid();
        let what = format!("redis-server on port {port} (pid {pid}) did not answer");
        // Generous: dozens of servers may be starting at once on a loaded machine. One that
        // cannot bind its ports exits at once, which ends the wait early.
        let (within, every) = (Duration::from_secs(30), Duration::from_millis(20));
        let ready = proc
            .wait_ready(log, &what, within, every, || answers_as(port, pid))
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

/// How many ports [`start_retrying`] tries.
const START_ATTEMPTS: usize = 4;

/// Starts a redis-server as `opts_on(port)` says, first on `port`, then, each time it does not
/// come up, on a port from `fresh`, up to [`START_ATTEMPTS`] ports.
pub(crate) async fn start_retrying(
    mut port: u16,
    fresh: fn() -> Result<u16>,
    opts_on: impl Fn(u16) -> RedisOpts,
) -> Result<RedisServer> {
    let mut failures = Vec::new();
    loop {
        match RedisServer::start(opts_on(port)).await {
            Ok(server) => return Ok(server),
            Err(error) => failures.push(format!("{error:#}")),
        }
        if failures.len() == START_ATTEMPTS {
            bail!(
                "redis-server did not start on {START_ATTEMPTS} ports:\n{}",
                failures.join("\n")
            );
        }
        // Said, so that a test's output shows a port race it got over.
        eprintln!("redis-server did not come up on port {port}; trying a fresh port");
        port = fresh()?;
    }
}

/// Polls `unready` (why what is awaited does not hold yet, or None once it does) every 100 ms
/// until it says None; fails after `within`, saying `what`, the last reason and where the
/// `logs` are. An error counts as a reason.
pub(crate) async fn poll_until<F>(
    what: &str,
    within: Duration,
    logs: &std::path::Path,
    mut unready: impl FnMut() -> F,
) -> Result<()>
where
    F: Future<Output = Result<Option<String>>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        let reason = match unready().await {
            Ok(None) => return Ok(()),
            Ok(Some(reason)) => reason,
            Err(error) => format!("{error:#}"),
        };
        if std::time::Instant::now() >= deadline {
            bail!(
                "{what} within {} s: {reason} (logs in {})",
                within.as_secs_f64(),
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the redis-server answering on `port` is the process `pid`.
async fn answers_as(port: u16, pid: u32) -> bool {
    let Ok(info) = command(port, &["INFO", "server"]).await else {
        return false;
    };
    let own = format!("process_id:{pid}");
    info.lines().any(|line| line.trim_end() == own)
}

/// How long one [`command`] may take, connecting included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// The reply to one command on the redis-server at `port`, on a connection of its own: a simple
/// or bulk string, or an integer as text. An error reply, a nil, an array (not read here) or no
/// reply within [`COMMAND_TIMEOUT`] is an error.
pub(crate) async fn command(port: u16, args: &[&str]) -> Result<String> {
    let exchange = async {
        let mut stream = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut head = String::new();
        stream.read_line(&mut head).await?;
        let head = head.trim_end();
        match head.split_at_checked(1) {
            Some(("+" | ":", value)) => Ok(value.to_owned()),
            Some(("$", length)) if !length.starts_with('-') => {
                let mut body = vec![0; length.parse::<usize>()? + 2];
                stream.read_exact(&mut body).await?;
                body.truncate(body.len() - 2);
                Ok(String::from_utf8(body)?)
            }
            _ => bail!("{head}"),
        }
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(reply) => reply.with_context(|| format!("{} on port {port}", args.join(" "))),
        Err(_) => bail!(
            "{} on port {port}: no reply within {COMMAND_TIMEOUT:?}",
            args.join(" ")
        ),
    }
}
