//! Child processes: a private redis-server and one or two mpr instances, all on 127.0.0.1 and
//! free ports. Every child is tracked in a registry so it is killed by pid when its owner is
//! dropped, when the tool fails, and on Ctrl-C.

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::resp::Resp;

static CHILDREN: Mutex<Option<HashMap<u32, (String, Child)>>> = Mutex::new(None);

/// Makes a child die with this process, however this process ends (even SIGKILL). The signal
/// is tied to the spawning thread: children are spawned from runtime worker threads, which live
/// as long as the tool, or from the blocking thread that also waits for them.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn register(name: &str, child: Child) -> u32 {
    let pid = child.id();
    CHILDREN
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(pid, (name.to_owned(), child));
    pid
}

/// Kills one tracked child (SIGTERM, then SIGKILL after a grace period) and reaps it.
pub fn kill(pid: u32) {
    let entry = CHILDREN
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|m| m.remove(&pid));
    if let Some((_, mut child)) = entry
        && let Ok(None) = child.try_wait()
    {
        // SAFETY: plain syscall on a pid we spawned and have not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills every tracked child, each by its pid (used on error exit and Ctrl-C).
pub fn kill_all() {
    let pids: Vec<u32> = CHILDREN
        .lock()
        .unwrap()
        .as_ref()
        .map(|m| m.keys().copied().collect())
        .unwrap_or_default();
    for pid in pids {
        kill(pid);
    }
}

/// Whether a tracked child is still running.
pub fn alive(pid: u32) -> bool {
    let mut guard = CHILDREN.lock().unwrap();
    match guard.as_mut().and_then(|m| m.get_mut(&pid)) {
        Some((_, child)) => matches!(child.try_wait(), Ok(None)),
        None => false,
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
        let pid = register(&name, child);
        let status = loop {
            let mut guard = CHILDREN.lock().unwrap();
            let Some((_, child)) = guard.as_mut().and_then(|m| m.get_mut(&pid)) else {
                bail!("{name} was killed");
            };
            if let Some(status) = child.try_wait()? {
                guard.as_mut().unwrap().remove(&pid);
                break status;
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(20));
        };
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

/// A port nobody listens on right now (never 6379).
pub fn free_port() -> Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
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
}

impl Redis {
    pub async fn start(bin: &str) -> Result<Self> {
        let port = free_port()?;
        let log = File::create(tempfile_path(&format!("redis-{port}.log")))?;
        let mut cmd = Command::new(bin);
        die_with_parent(&mut cmd);
        let child = cmd
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--maxclients", "19000", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let pid = register("redis-server", child);
        let redis = Redis { pid, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = Resp::connect(port).await
                && conn.cmd(&["PING"]).await.is_ok()
            {
                return Ok(redis);
            }
            if Instant::now() > deadline || !alive(pid) {
                bail!("redis-server on port {port} did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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

impl Drop for Redis {
    fn drop(&mut self) {
        kill(self.pid);
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
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

impl Mongo {
    /// `<bin> --host 127.0.0.1 --port <free> --storage-path :memory:`, on CPU `cpu` alone if
    /// given; ready when it accepts connections.
    pub async fn start(bin: &str, cpu: Option<usize>) -> Result<Self> {
        let port = free_port()?;
        let name = format!("secantusd-{port}");
        // taskset execs the server, so the pid stays the server's.
        let mut cmd = Command::new("taskset");
        let cpus = cpu.map_or_else(|| all_cpus(None), |cpu| cpu.to_string());
        cmd.args(["-c", &cpus, bin])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--storage-path", ":memory:"]);
        let pid = spawn_tracked(cmd, &name)?;
        let mongo = Mongo {
            pid,
            port,
            log: tempfile_path(&format!("{name}.log")),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(mongo);
            }
            if !alive(pid) {
                let log = std::fs::read_to_string(&mongo.log).unwrap_or_default();
                bail!("{bin} exited before it listened on port {port}; log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("{bin} not listening on port {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URI of database `db`, for MONGODB_URI.
    pub fn uri(&self, db: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{db}?directConnection=true",
            self.port
        )
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        kill(self.pid);
    }
}

pub struct Mpr {
    pub pid: u32,
    pub ws_port: u16,
    pub name: String,
    pub log: PathBuf,
}

impl Mpr {
    pub async fn start(
        bin: &Path,
        redis_url: &str,
        name: &str,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        let ws_port = free_port()?;
        let mut app_port = free_port()?;
        while app_port == ws_port {
            app_port = free_port()?;
        }
        let log_path = tempfile_path(&format!("mpr-{name}-{ws_port}.log"));
        let log = File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        die_with_parent(&mut cmd);
        cmd.env("WS_PORT", ws_port.to_string())
            .env("APP_PORT", app_port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("REDIS_URL", redis_url)
            .env("LOG_LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release`)",
                bin.display()
            )
        })?;
        let pid = register(&format!("mpr-{name}"), child);
        let mpr = Mpr {
            pid,
            ws_port,
            name: name.to_owned(),
            log: log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http_status(app_port, "/ready").await.ok() == Some(200) {
                return Ok(mpr);
            }
            if !alive(pid) {
                let log = std::fs::read_to_string(&mpr.log).unwrap_or_default();
                bail!("mpr {name} exited before it was ready; log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("mpr {name} not ready on http://127.0.0.1:{app_port}/ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
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

impl Drop for Mpr {
    fn drop(&mut self) {
        kill(self.pid);
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

/// Status code of a plain HTTP/1.1 GET on 127.0.0.1.
pub async fn http_status(port: u16, path: &str) -> Result<u16> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < 12 {
        let got =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf[n..])).await??;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let code = head.split_whitespace().nth(1).context("no HTTP status")?;
    Ok(code.parse()?)
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
        out
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
pub fn spawn_tracked(mut cmd: Command, name: &str) -> Result<u32> {
    die_with_parent(&mut cmd);
    let log = File::create(tempfile_path(&format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    Ok(register(name, child))
}
