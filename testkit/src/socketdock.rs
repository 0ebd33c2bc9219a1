//! The real SocketDock (openwallet-foundation/didcomm-mediator-socketdock: holds agents'
//! WebSockets and turns them into HTTP calls to a backend) on 127.0.0.1, started through the
//! shared launcher `socketdock-run`. Its wire contract: `../shared/reference/socketdock.md`.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Result;

use crate::{Log, Proc, Spawn, free_port, http_get};

/// How to start a SocketDock with its HTTP backend (`--backend http`).
#[derive(Clone, Debug)]
pub struct SocketDockOpts {
    /// `socketdock-run`; see [`SocketDockOpts::default_launcher`].
    pub launcher: PathBuf,
    pub port: u16,
    /// Where SocketDock POSTs each frame an agent sends.
    pub message_uri: String,
    /// Where it POSTs each new socket; None: no connect calls.
    pub connect_uri: Option<String>,
    /// Where it POSTs a closed socket (not reliably, see the reference).
    pub disconnect_uri: Option<String>,
    /// Its `--endpoint`, the base of the send and disconnect URLs it hands out; None: its own
    /// address (a test may put a relay of its own in front of it).
    pub endpoint: Option<String>,
    /// Its `--log-level`.
    pub log_level: String,
    pub spawn: Spawn,
}

impl SocketDockOpts {
    /// The default launcher on a free port, calling back the three URLs; logs to a file of its
    /// own (shown when it fails to start).
    pub fn new(message_uri: &str, connect_uri: &str, disconnect_uri: &str) -> Result<Self> {
        let port = free_port()?;
        Ok(Self {
            launcher: Self::default_launcher(),
            port,
            message_uri: message_uri.to_owned(),
            connect_uri: Some(connect_uri.to_owned()),
            disconnect_uri: Some(disconnect_uri.to_owned()),
            endpoint: None,
            log_level: "INFO".to_owned(),
            spawn: Spawn {
                log: Log::File(default_log(port)),
                // SIGKILL to the group: the launcher may still be building the venv (pip).
                own_group: true,
                ..Spawn::default()
            },
        })
    }

    /// `$MPR_SOCKETDOCK_RUN`, else `../shared/tools/socketdock-run` beside the workspace.
    pub fn default_launcher() -> PathBuf {
        match std::env::var_os("MPR_SOCKETDOCK_RUN") {
            Some(path) => path.into(),
            None => {
                let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
                workspace.join("../shared/tools/socketdock-run")
            }
        }
    }
}

/// The log file [`SocketDockOpts::new`] picks: removed when its SocketDock is dropped.
fn default_log(port: u16) -> PathBuf {
    let name = format!("testkit-socketdock-{}-{port}.log", std::process::id());
    std::env::temp_dir().join(name)
}

/// A running SocketDock; killed when dropped, its log printed if the thread is panicking.
#[derive(Debug)]
pub struct SocketDock {
    port: u16,
    endpoint: String,
    log: Log,
    proc: Proc,
}

impl SocketDock {
    /// Starts it and waits until it answers HTTP (at most 180 s: a first call builds the
    /// launcher's virtualenv from PyPI).
    pub async fn start(opts: SocketDockOpts) -> Result<Self> {
        let port = opts.port;
        let endpoint =
            (opts.endpoint.clone()).unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        let mut cmd = Command::new(&opts.launcher);
        // `--endpoint` is the base of the send/disconnect URLs handed to the backend.
        cmd.args(["--bindip", "127.0.0.1", "--bindport", &port.to_string()])
            .args(["--backend", "http", "--endpoint", &endpoint])
            .args(["--message-uri", &opts.message_uri])
            .args(["--log-level", &opts.log_level]);
        if let Some(uri) = &opts.connect_uri {
            cmd.args(["--connect-uri", uri]);
        }
        if let Some(uri) = &opts.disconnect_uri {
            cmd.args(["--disconnect-uri", uri]);
        }
        let proc = Proc::spawn(cmd, &format!("socketdock-{port}"), &opts.spawn)?;
        let dock = Self {
            port,
            endpoint,
            log: opts.spawn.log,
            proc,
        };
        // It serves no `/`: any status (404) means it is up.
        let what = format!("SocketDock did not answer HTTP on port {port}");
        let (within, every) = (Duration::from_secs(180), Duration::from_millis(50));
        let answers = || async move { http_get(port, "/").await.is_ok() };
        dock.proc
            .wait_ready(&dock.log, &what, within, every, answers)
            .await?;
        Ok(dock)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where agents connect.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Its `--endpoint`: the base of every `send` and `disconnect` URL it hands out.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The launcher `exec`s SocketDock, so this is SocketDock's own pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What it has logged so far (JSON lines), for failure messages.
    pub fn log(&self) -> String {
        self.log.contents()
    }

    /// SIGTERM, and its exit status once it has ended (0).
    pub fn stop(&self) -> Result<ExitStatus> {
        self.proc.terminate()
    }

    /// SIGKILL now (a crash), and reaped.
    pub fn kill(&self) {
        self.proc.kill();
    }
}

impl Drop for SocketDock {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!("SocketDock on port {} logged:\n{}", self.port, self.log());
        }
        if let Log::File(path) = &self.log
            && *path == default_log(self.port)
        {
            let _ = std::fs::remove_file(path);
        }
    }
}
