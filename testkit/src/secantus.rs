//! A private SecantusDB (a MongoDB wire-protocol server, `secantusd-py`) on 127.0.0.1.
//!
//! It runs under a bash watchdog that stops it when this process ends (however it ends), so
//! an instance never outlives its run; both are in a process group of their own, so that a
//! stop reaches the server and not only the watchdog.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::net::TcpStream;

use crate::proc::signal;
use crate::{Log, Proc, Spawn, free_port};

/// How to start a SecantusDB.
#[derive(Clone, Debug)]
pub struct SecantusOpts {
    /// The program (run by bash, so it may carry arguments of its own).
    pub bin: String,
    pub port: u16,
    /// `:memory:`, or a directory that survives restarts.
    pub storage: String,
    /// Its `--log-level` (ERROR, INFO, …); None: its default.
    pub log_level: Option<String>,
    /// Runs it on these CPUs alone (a `taskset -c` list); None: wherever.
    pub cpus: Option<String>,
    /// Serves TLS only, with these files; None: cleartext.
    pub tls: Option<SecantusTls>,
    pub log: Log,
}

/// PEM files for a SecantusDB that speaks TLS.
#[derive(Clone, Debug)]
pub struct SecantusTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA that signed `cert_file`, for the clients its `uri` makes.
    pub ca_file: PathBuf,
}

impl SecantusOpts {
    /// `bin` on a free port with `storage`, at its default log level, unpinned.
    pub fn new(bin: &str, storage: &str) -> Result<Self> {
        Ok(Self {
            bin: bin.to_owned(),
            port: free_port()?,
            storage: storage.to_owned(),
            log_level: None,
            cpus: None,
            tls: None,
            log: Log::Quiet,
        })
    }
}

/// A running SecantusDB; stopped when dropped.
#[derive(Debug)]
pub struct Secantus {
    opts: SecantusOpts,
    proc: Option<Proc>,
    server_pid: Option<u32>,
}

impl Secantus {
    /// Starts it and waits until it accepts connections.
    pub async fn start(opts: SecantusOpts) -> Result<Self> {
        let mut mongo = Self {
            opts,
            proc: None,
            server_pid: None,
        };
        mongo.restart().await?;
        Ok(mongo)
    }

    pub fn port(&self) -> u16 {
        self.opts.port
    }

    /// The URI of database `db`, for a client or MONGODB_URI (trusting its CA when it speaks
    /// TLS).
    pub fn uri(&self, db: &str) -> String {
        let tls = match &self.opts.tls {
            Some(tls) => format!("&tls=true&tlsCAFile={}", tls.ca_file.display()),
            None => String::new(),
        };
        format!(
            "mongodb://127.0.0.1:{}/{db}?directConnection=true{tls}",
            self.opts.port
        )
    }

    /// The server's own pid (not its watchdog's) while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server_pid
    }

    fn pid_file(&self) -> PathBuf {
        std::env::temp_dir().join(format!(
            "testkit-secantusd-{}-{}.pid",
            std::process::id(),
            self.opts.port
        ))
    }

    /// Starts it (again) on the same port with the same storage; waits until it accepts
    /// connections.
    pub async fn restart(&mut self) -> Result<()> {
        let SecantusOpts {
            bin, port, storage, ..
        } = &self.opts;
        let port = *port;
        if self.proc.is_some() {
            bail!("SecantusDB on port {port} is running");
        }
        let pid_file = self.pid_file();
        let pin = match &self.opts.cpus {
            Some(cpus) => format!("taskset -c {cpus} "),
            None => String::new(),
        };
        let level = match &self.opts.log_level {
            Some(level) => format!(" --log-level {level}"),
            None => String::new(),
        };
        let tls = match &self.opts.tls {
            Some(tls) => format!(
                " --tls-cert-file '{}' --tls-key-file '{}'",
                tls.cert_file.display(),
                tls.key_file.display()
            ),
            None => String::new(),
        };
        // taskset execs the server, so `$!` is the server's pid either way.
        let script = format!(
            "{pin}{bin} --host 127.0.0.1 --port {port} --storage-path '{storage}'{level}{tls} & server=$!; \
             echo $server > '{}'; \
             trap 'kill $server 2>/dev/null; wait $server; exit' TERM; \
             while kill -0 {} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.5; done; \
             kill $server 2>/dev/null; wait $server",
            pid_file.display(),
            std::process::id()
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &script]);
        let how = Spawn {
            log: self.opts.log.clone(),
            die_with_parent: false, // the watchdog sees to that, and would die with it
            stop_grace: Duration::from_secs(5),
            own_group: true,
        };
        let proc = &*self
            .proc
            .insert(Proc::spawn(cmd, &format!("secantusd-{port}"), &how)?);
        let log = &self.opts.log;
        let what = format!("{bin} did not listen on port {port}");
        let (within, every) = (Duration::from_secs(60), Duration::from_millis(100));
        let accepts = || async move { TcpStream::connect(("127.0.0.1", port)).await.is_ok() };
        let ready = proc.wait_ready(log, &what, within, every, accepts).await;
        let server_pid = std::fs::read_to_string(&pid_file).ok();
        let _ = std::fs::remove_file(&pid_file);
        if ready.is_err() {
            let _ = self.stop();
            return ready;
        }
        self.server_pid = server_pid.and_then(|pid| pid.trim().parse().ok());
        Ok(())
    }

    /// Stops the server and waits until its port is closed and its process is gone: a server
    /// that closed its port but is still finishing with its storage would make a restart on
    /// the same storage fail. The server is asked first; one that is still up after a grace
    /// period (a graceful shutdown can wait on its clients' open connections) is killed, as an
    /// outage would. A no-op when it is not running.
    pub fn stop(&mut self) -> Result<()> {
        let Some(proc) = self.proc.take() else {
            return Ok(());
        };
        let server_pid = self.server_pid.take();
        let port = self.opts.port;
        let gone = || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
                && server_pid.is_none_or(|pid| !exists(pid))
        };
        for (sig, grace) in [(libc::SIGTERM, 5), (libc::SIGKILL, 20)] {
            signal(proc.pid(), true, sig);
            let deadline = Instant::now() + Duration::from_secs(grace);
            while Instant::now() < deadline {
                if gone() {
                    proc.wait().ok();
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        bail!("SecantusDB on port {port} did not stop")
    }
}

/// Whether a process `pid` exists (the server is the watchdog's child, not tracked here).
fn exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("{error}");
        }
    }
}
