//! `mpr` server processes.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Result;

use crate::{Log, Proc, Spawn, free_port, http_get};

/// How to start an mpr server.
#[derive(Clone, Debug)]
pub struct MprOpts {
    pub bin: PathBuf,
    /// A command that runs it (`bin` appended to it), e.g. `["prlimit", "--nofile=1024:1024",
    /// "--"]`; it must exec `bin`, so that the pid is the server's.
    pub wrapper: Vec<String>,
    /// Names it in messages ("mpr A did not become ready …").
    pub name: String,
    pub ws_port: u16,
    pub app_port: u16,
    pub redis_url: String,
    /// Set after WS_PORT, APP_PORT, BIND_ADDRESS=127.0.0.1, REDIS_URL and LOG_LEVEL=warn, so
    /// these win.
    pub env: Vec<(String, String)>,
    /// Nothing of our environment but those; otherwise ours without RUST_LOG.
    pub clear_env: bool,
    pub spawn: Spawn,
}

impl MprOpts {
    /// `bin` on two free ports, on the Redis at `redis_url`.
    pub fn new(bin: impl Into<PathBuf>, redis_url: &str) -> Result<Self> {
        let ws_port = free_port()?;
        let mut app_port = free_port()?;
        while app_port == ws_port {
            app_port = free_port()?;
        }
        Ok(Self {
            bin: bin.into(),
            wrapper: Vec::new(),
            name: "mpr".to_owned(),
            ws_port,
            app_port,
            redis_url: redis_url.to_owned(),
            env: Vec::new(),
            clear_env: false,
            spawn: Spawn::default(),
        })
    }
}

/// A running mpr server; stopped when dropped (see [`Spawn::stop_grace`]).
#[derive(Debug)]
pub struct MprServer {
    pub ws_port: u16,
    pub app_port: u16,
    log: Log,
    proc: Proc,
}

impl MprServer {
    /// Starts it and waits until it is ready.
    pub async fn start(opts: MprOpts) -> Result<Self> {
        let server = Self::spawn(opts)?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// Starts it without waiting.
    pub fn spawn(opts: MprOpts) -> Result<Self> {
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&opts.bin);
                cmd
            }
            None => Command::new(&opts.bin),
        };
        if opts.clear_env {
            cmd.env_clear();
        }
        cmd.env_remove("RUST_LOG")
            .env("WS_PORT", opts.ws_port.to_string())
            .env("APP_PORT", opts.app_port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("REDIS_URL", &opts.redis_url)
            .env("LOG_LEVEL", "warn")
            .envs(opts.env.iter().map(|(k, v)| (k, v)));
        let proc = Proc::spawn(cmd, &opts.name, &opts.spawn)?;
        Ok(Self {
            ws_port: opts.ws_port,
            app_port: opts.app_port,
            log: opts.spawn.log,
            proc,
        })
    }

    /// Waits (at most 20 s) until `GET /ready` answers 200; fails at once if it exits.
    pub async fn wait_ready(&self) -> Result<()> {
        let port = self.app_port;
        let what = format!(
            "{} not ready on http://127.0.0.1:{port}/ready",
            self.proc.name()
        );
        let (within, every) = (Duration::from_secs(20), Duration::from_millis(20));
        let answers = || async move { matches!(http_get(port, "/ready").await, Ok((200, _))) };
        self.proc
            .wait_ready(&self.log, &what, within, every, answers)
            .await
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// See [`http_get`]: on its HTTP port.
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.app_port, path).await
    }

    /// Waits for it to end by itself; None if it still runs after `within`.
    pub fn wait_exit(&self, within: Duration) -> Result<Option<ExitStatus>> {
        self.proc.wait_exit(within)
    }

    /// SIGKILL (a crash).
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// SIGTERM, and its exit status once it has ended.
    pub fn terminate(&self) -> Result<ExitStatus> {
        self.proc.terminate()
    }
}
