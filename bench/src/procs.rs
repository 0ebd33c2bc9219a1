//! Child processes: a private redis-server, one or two mpr instances (and SocketDock, SecantusDB
//! for their scenarios), all on 127.0.0.1 and free ports, started and awaited by `testkit`. Every
//! child is tracked there so it is killed by pid when its owner is dropped, when the tool fails,
//! and on Ctrl-C.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::{
    Log, MprOpts, MprServer, Proc, RedisCluster, RedisClusterOpts, RedisOpts, RedisServer,
    Secantus, SecantusOpts, SocketDock, SocketDockOpts, Spawn, die_with_parent,
};

use crate::resp::Resp;

// `kill(pid)` stops one tracked child (SIGTERM, then SIGKILL after its grace period) and reaps
// it; `kill_all` every one, each by its pid (used on error exit and Ctrl-C).
pub use testkit::{kill_all, stop as kill};

/// How the tool keeps a long-running child: its output in `log`, dead with the tool however
/// the tool ends (the signal is tied to the spawning thread: children are spawned from runtime
/// worker threads, which live as long as the tool, or from the blocking thread that also waits
/// for them), and SIGTERM then SIGKILL after 3 s when stopped.
fn tracked(log: PathBuf) -> Spawn {
    Spawn {
        log: Log::File(log),
        die_with_parent: true,
        stop_grace: Duration::from_secs(3),
        own_group: false,
    }
}

/// Runs a bounded command to completion (tracked, so Ctrl-C kills it too); returns stdout.
pub async fn run_tracked(mut cmd: Command, name: &str, stdin: Option<Vec<u8>>) -> Result<String> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || -> Result<String> {
        let out = tempfile_path(&format!("{name}.out"));
        let err = tempfile_path(&format!("{name}.err"));
        cmd.stdout(File::create(&out)?).stderr(File::create(&err)?);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        if let Some(data) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(&data)?;
            drop(pipe);
        }
        let proc = Proc::adopt(child, &name, Duration::from_secs(3), false);
        let status = loop {
            if let Some(status) = proc.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(proc);
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        if !status.success() {
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            bail!("{name} failed ({status}): {stderr}{stdout}");
        }
        Ok(stdout)
    })
    .await?
}

pub fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mpr-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

pub fn tempfile_path(name: &str) -> PathBuf {
    workdir().join(name)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return Ok(kib.parse()?);
        }
    }
    bail!("no VmRSS for pid {pid}")
}

/// Raises the soft limit on open files to `want` (capped at the hard limit); returns the result.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < want as libc::rlim_t {
            lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
        lim.rlim_cur
    }
}

pub struct Redis {
    pub pid: u32,
    pub port: u16,
    server: RedisServer,
}

impl Redis {
    pub async fn start(bin: &str) -> Result<Self> {
        let mut opts = RedisOpts::new(bin)?;
        opts.args = ["--maxclients", "19000", "--protected-mode", "yes"]
            .map(String::from)
            .to_vec();
        opts.spawn = tracked(tempfile_path(&format!("redis-{}.log", opts.port)));
        let server = RedisServer::start(opts).await?;
        Ok(Redis {
            pid: server.pid().context("redis-server is running")?,
            port: server.port(),
            server,
        })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn conn(&self) -> Result<Resp> {
        Resp::connect(self.port).await
    }

    pub async fn version(&self) -> Result<String> {
        let info = self.conn().await?.cmd(&["INFO", "server"]).await?.text();
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned())
    }
}

/// A private Redis Cluster (testkit's: six nodes, three primaries each with one replica, free
/// ports), persistence off as on the single [`Redis`], so the two differ only in being a cluster.
pub struct Cluster {
    pub server: RedisCluster,
    /// The primaries' ports, in slot order (`p1` serves the lowest slots).
    pub primaries: Vec<u16>,
    /// `replicas[i]` replicates `primaries[i]`.
    pub replicas: Vec<u16>,
}

impl Cluster {
    pub async fn start(bin: &str) -> Result<Self> {
        let mut opts = RedisClusterOpts::new(bin)?;
        // After testkit's AOF settings, so these win.
        opts.args = ["--appendonly", "no", "--save", "", "--maxclients", "19000"]
            .map(String::from)
            .to_vec();
        opts.spawn = tracked(tempfile_path("redis-cluster.log"));
        let server = RedisCluster::start(opts).await?;
        let mut primaries = Vec::new();
        for slot in [0, 8192, 16383] {
            let port = server.primary_of_slot(slot).await?;
            if !primaries.contains(&port) {
                primaries.push(port);
            }
        }
        let mut replicas = vec![0; primaries.len()];
        for port in server.replicas().await? {
            let info = Resp::connect(port)
                .await?
                .cmd(&["INFO", "replication"])
                .await?
                .text();
            let of: u16 = info
                .lines()
                .find_map(|l| l.strip_prefix("master_port:"))
                .context("a replica's master_port")?
                .trim()
                .parse()?;
            if let Some(i) = primaries.iter().position(|&p| p == of) {
                replicas[i] = port;
            }
        }
        if primaries.len() != 3 || replicas.contains(&0) {
            bail!("the cluster is not 3 primaries with a replica each: {primaries:?} {replicas:?}");
        }
        Ok(Self {
            server,
            primaries,
            replicas,
        })
    }

    /// `p1`.. and `r1`.. (the replica of `p1` ..) with their pids, for a [`CpuMeter`].
    pub fn pids(&self) -> Vec<(String, u32)> {
        let named = |prefix: &str, ports: &[u16]| -> Vec<(String, u32)> {
            ports
                .iter()
                .enumerate()
                .map(|(i, &port)| {
                    (
                        format!("{prefix}{}", i + 1),
                        self.server.pid_of(port).unwrap_or(0),
                    )
                })
                .collect()
        };
        let mut out = named("p", &self.primaries);
        out.extend(named("r", &self.replicas));
        out
    }
}

/// The machine's CPUs as a `taskset` list, leaving out `except`.
fn all_cpus(except: Option<usize>) -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n)
        .filter(|cpu| Some(*cpu) != except)
        .map(|cpu| cpu.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins every thread of this tool, and so every process it starts from now on, to the CPUs
/// other than `cpu`.
pub fn keep_off_cpu(cpu: usize) -> Result<()> {
    let others = all_cpus(Some(cpu));
    if others.is_empty() {
        bail!("--mongo-cpu {cpu}: no other CPU left for mpr, Redis and this tool");
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &others, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset -a -p -c {others} failed: {status}");
    }
    Ok(())
}

/// A private SecantusDB (a MongoDB wire-protocol server, in memory) for the cold tier.
pub struct Mongo {
    /// The server's own pid.
    pub pid: u32,
    server: Secantus,
}

impl Mongo {
    /// `<bin> --host 127.0.0.1 --port <free> --storage-path :memory:`, on CPU `cpu` alone if
    /// given; ready when it accepts connections.
    pub async fn start(bin: &str, cpu: Option<usize>) -> Result<Self> {
        let mut opts = SecantusOpts::new(bin, ":memory:")?;
        opts.cpus = Some(cpu.map_or_else(|| all_cpus(None), |cpu| cpu.to_string()));
        opts.log = Log::File(tempfile_path(&format!("secantusd-{}.log", opts.port)));
        let server = Secantus::start(opts).await?;
        Ok(Mongo {
            pid: server.pid().context("the pid of SecantusDB")?,
            server,
        })
    }

    /// The URI of database `db`, for MONGODB_URI.
    pub fn uri(&self, db: &str) -> String {
        self.server.uri(db)
    }
}

/// The real SocketDock (one Python process) on `port`, started through testkit's launcher.
pub struct Dock {
    /// SocketDock's own pid (the launcher `exec`s it).
    pub pid: u32,
    pub port: u16,
    _server: SocketDock,
}

impl Dock {
    /// SocketDock with its HTTP backend: every agent's frame is POSTed to `message_uri`, new and
    /// closed sockets to `connect_uri` and `disconnect_uri` when given.
    pub async fn start(
        port: u16,
        message_uri: &str,
        connect_uri: Option<&str>,
        disconnect_uri: Option<&str>,
    ) -> Result<Self> {
        let mut opts = SocketDockOpts::new(message_uri, "", "")?;
        opts.port = port;
        opts.connect_uri = connect_uri.map(str::to_owned);
        opts.disconnect_uri = disconnect_uri.map(str::to_owned);
        // Per-request INFO lines would cost the Python process time it spends on the sockets.
        opts.log_level = "WARNING".into();
        opts.spawn = Spawn {
            // As testkit's default: SIGKILL to the group, the launcher may still be in pip.
            own_group: true,
            ..tracked(tempfile_path(&format!("socketdock-{port}.log")))
        };
        let server = SocketDock::start(opts).await?;
        Ok(Dock {
            pid: server.pid(),
            port,
            _server: server,
        })
    }
}

/// This tool's `minimal-relay` (built beside it): the least a relay in mpr's place does, on
/// `redis_port`, listening on a free port.
pub struct MinimalRelay {
    pub pid: u32,
    pub port: u16,
    _proc: Proc,
}

impl MinimalRelay {
    pub async fn start(redis_port: u16) -> Result<Self> {
        let bin = std::env::current_exe()?.with_file_name("minimal-relay");
        let port = testkit::free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.arg(port.to_string()).arg(redis_port.to_string());
        let log = tempfile_path(&format!("minimal-relay-{port}.log"));
        let proc = Proc::spawn(cmd, "minimal-relay", &tracked(log))
            .with_context(|| format!("starting {} (built with mpr-bench)", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() >= deadline {
                bail!("minimal-relay did not listen on {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self {
            pid: proc.pid(),
            port,
            _proc: proc,
        })
    }
}

/// Serves `router` on 127.0.0.1 (a free port) on a thread and runtime of its own, so that
/// serving a stand-in does not slow this tool's load generator; returns its base URL.
pub fn serve_on_own_thread(router: axum::Router) -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            axum::serve(listener, router).await
        })
    });
    Ok(base_url)
}

pub struct Mpr {
    pub pid: u32,
    pub ws_port: u16,
    /// Where its probes and SocketDock callbacks are served.
    pub app_port: u16,
    pub name: String,
    pub log: PathBuf,
    _server: MprServer,
}

impl Mpr {
    pub async fn start(
        bin: &Path,
        redis_url: &str,
        name: &str,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        let mut opts = MprOpts::new(bin, redis_url)?;
        opts.name = format!("mpr {name}");
        opts.env = extra_env.to_vec();
        let log = tempfile_path(&format!("mpr-{name}-{}.log", opts.ws_port));
        opts.spawn = tracked(log.clone());
        let server = MprServer::spawn(opts).with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release`)",
                bin.display()
            )
        })?;
        server.wait_ready().await?;
        Ok(Mpr {
            pid: server.pid(),
            ws_port: server.ws_port,
            app_port: server.app_port,
            name: name.to_owned(),
            log,
            _server: server,
        })
    }

    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }

    /// A report line with the first lines of this server's log, or nothing when it is empty.
    pub fn log_note(&self) -> String {
        let log = self.log_excerpt(5);
        if log.is_empty() {
            return String::new();
        }
        format!(
            "\n- server {} log (first lines): `{}`",
            self.name,
            log.join(" / ")
        )
    }

    /// Lines of the server log at warn level or above (for the report).
    pub fn log_excerpt(&self, max_lines: usize) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(max_lines)
            .map(strip_ansi)
            .collect()
    }
}

/// A log line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Busy CPU time of the whole machine so far (all CPUs, everything but idle and iowait), in seconds.
pub fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let Some(line) = stat.lines().next() else {
        return f64::NAN;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return f64::NAN;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy: f64 = v.iter().take(8).sum::<f64>() - v[3] - v[4];
    // SAFETY: sysconf has no preconditions.
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Cores kept busy by everything on the machine over `window`.
pub async fn machine_load(window: Duration) -> f64 {
    let start = machine_busy_secs();
    let at = Instant::now();
    tokio::time::sleep(window).await;
    (machine_busy_secs() - start) / at.elapsed().as_secs_f64()
}

/// Waits (at most `max_wait`) until the machine is quiet: less than `threshold` cores busy over
/// half a second, this tool's own idle children included. Returns the load last seen and
/// whether it was quiet.
pub async fn wait_for_quiet(threshold: f64, max_wait: Duration) -> (f64, bool) {
    let deadline = Instant::now() + max_wait;
    loop {
        let load = machine_load(Duration::from_millis(500)).await;
        if load < threshold {
            return (load, true);
        }
        if Instant::now() >= deadline {
            return (load, false);
        }
        eprintln!("      (waiting for a quiet machine: {load:.2} cores busy)");
    }
}

/// CPU use of several processes over an interval, in cores, and of everything else ("other").
pub struct CpuMeter {
    pids: Vec<(String, u32)>,
    start: Vec<f64>,
    machine: f64,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pids: &[(&str, u32)]) -> Self {
        Self {
            pids: pids.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            start: pids.iter().map(|(_, p)| cpu_secs(*p)).collect(),
            machine: machine_busy_secs(),
            at: Instant::now(),
        }
    }

    /// Cores used since start by each process, then by everything else on the machine.
    pub fn stop(&self) -> Vec<(String, f64)> {
        self.stop_with_wall().0
    }

    /// [`Self::stop`], and the seconds since start (cores times these: CPU seconds).
    pub fn stop_with_wall(&self) -> (Vec<(String, f64)>, f64) {
        let wall = self.at.elapsed().as_secs_f64();
        let mut out: Vec<(String, f64)> = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|((n, p), s)| (n.clone(), (cpu_secs(*p) - s) / wall))
            .collect();
        let ours: f64 = out.iter().map(|x| x.1).sum();
        let all = (machine_busy_secs() - self.machine) / wall;
        out.push(("other".into(), (all - ours).max(0.0)));
        (out, wall)
    }
}

pub fn fmt_cpu(usage: &[(String, f64)]) -> String {
    usage
        .iter()
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts a long-running helper (killed by pid later with `kill`).
pub fn spawn_tracked(cmd: Command, name: &str) -> Result<u32> {
    let log = tempfile_path(&format!("{name}.log"));
    Ok(Proc::spawn(cmd, name, &tracked(log))?.detach())
}
