//! Child processes tracked by pid in one registry, so that each is stopped when its handle is
//! dropped and all of them by [`kill_all`] (on an error exit or a signal).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

struct Entry {
    child: Child,
    stop_grace: Duration,
    group: bool,
}

static CHILDREN: Mutex<BTreeMap<u32, Entry>> = Mutex::new(BTreeMap::new());

fn children() -> MutexGuard<'static, BTreeMap<u32, Entry>> {
    CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a child's output goes. Its stdin is always empty.
#[derive(Clone, Debug, Default)]
pub enum Log {
    /// stdout nowhere, stderr to ours.
    #[default]
    Quiet,
    /// stdout and stderr to ours.
    Inherit,
    /// stdout and stderr appended to this file.
    File(PathBuf),
}

impl Log {
    fn apply(&self, cmd: &mut Command) -> Result<()> {
        cmd.stdin(Stdio::null());
        match self {
            Log::Quiet => {
                cmd.stdout(Stdio::null());
            }
            Log::Inherit => {}
            Log::File(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                cmd.stdout(file.try_clone()?).stderr(file);
            }
        }
        Ok(())
    }

    /// "; log:\n<what the child wrote>" when it writes to a file, for error messages.
    pub fn excerpt(&self) -> String {
        match self {
            Log::File(_) => format!("; log:\n{}", self.contents()),
            _ => String::new(),
        }
    }

    /// What the child wrote so far when it writes to a file; empty otherwise.
    pub fn contents(&self) -> String {
        match self {
            Log::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            _ => String::new(),
        }
    }
}

/// How a child is started and stopped.
#[derive(Clone, Debug, Default)]
pub struct Spawn {
    pub log: Log,
    /// The child gets SIGKILL when the thread that started it ends (PR_SET_PDEATHSIG), so it
    /// dies with this process however this process ends.
    pub die_with_parent: bool,
    /// On drop and [`stop`]: SIGTERM, then SIGKILL after this long; zero: SIGKILL at once.
    pub stop_grace: Duration,
    /// The child leads a process group of its own, and signals go to the whole group.
    pub own_group: bool,
}

/// Makes a child get SIGKILL when the thread that spawns it ends.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub(crate) fn signal(pid: u32, group: bool, signal: libc::c_int) {
    let target = if group { -(pid as i32) } else { pid as i32 };
    // SAFETY: plain syscall on a pid (or group) we spawned and have not reaped yet.
    unsafe { libc::kill(target, signal) };
}

/// A tracked child: stopped (see [`Spawn::stop_grace`]) when dropped.
#[derive(Debug)]
pub struct Proc {
    pid: u32,
    name: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str, how: &Spawn) -> Result<Self> {
        how.log.apply(&mut cmd)?;
        if how.die_with_parent {
            die_with_parent(&mut cmd);
        }
        if how.own_group {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", cmd.get_program().display()))?;
        Ok(Self::adopt(child, name, how.stop_grace, how.own_group))
    }

    /// Tracks a child started elsewhere; `group`: it leads a process group of its own.
    pub fn adopt(child: Child, name: &str, stop_grace: Duration, group: bool) -> Self {
        let pid = child.id();
        let entry = Entry {
            child,
            stop_grace,
            group,
        };
        children().insert(pid, entry);
        Self {
            pid,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status if it has ended; an error once it is no longer tracked (stopped, killed).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut children = children();
        let entry = children
            .get_mut(&self.pid)
            .ok_or_else(|| anyhow!("{} was killed", self.name))?;
        Ok(entry.child.try_wait()?)
    }

    /// An error naming the exit status (and what `log` holds) if it has ended.
    fn check_running(&self, log: &Log) -> Result<()> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!(
                "{} exited ({status}) before it was ready{}",
                self.name,
                log.excerpt()
            )),
        }
    }

    /// Polls `ready` every `every` until it answers true; fails at once if the process ends
    /// (saying what `log` holds), and after `within` with "`what` within …".
    pub async fn wait_ready<F, Fut>(
        &self,
        log: &Log,
        what: &str,
        within: Duration,
        every: Duration,
        mut ready: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            self.check_running(log)?;
            if ready().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{what} within {} s", within.as_secs_f64());
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits for it to end by itself; None if it still runs after `within`.
    pub fn wait_exit(&self, within: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn untrack(&self) -> Result<Entry> {
        children()
            .remove(&self.pid)
            .ok_or_else(|| anyhow!("{} was killed", self.name))
    }

    /// Waits for it to end, however long that takes.
    pub fn wait(&self) -> Result<ExitStatus> {
        Ok(self.untrack()?.child.wait()?)
    }

    /// SIGTERM, and its exit status once it has ended.
    pub fn terminate(&self) -> Result<ExitStatus> {
        let mut entry = self.untrack()?;
        signal(self.pid, entry.group, libc::SIGTERM);
        Ok(entry.child.wait()?)
    }

    /// SIGKILL now (a crash), and reaped.
    pub fn kill(&self) {
        if let Ok(entry) = self.untrack() {
            finish(self.pid, entry, Duration::ZERO);
        }
    }

    /// Lets the handle go without stopping the child, which stays tracked: [`stop`] or
    /// [`kill_all`] end it. Returns its pid.
    pub fn detach(self) -> u32 {
        let pid = self.pid;
        std::mem::forget(self);
        pid
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop(self.pid);
    }
}

fn finish(pid: u32, mut entry: Entry, grace: Duration) {
    if !matches!(entry.child.try_wait(), Ok(None)) {
        return;
    }
    if !grace.is_zero() {
        signal(pid, entry.group, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = entry.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if entry.group {
        signal(pid, true, libc::SIGKILL);
    }
    let _ = entry.child.kill();
    let _ = entry.child.wait();
}

/// Whether the tracked child `pid` is still running.
pub fn running(pid: u32) -> bool {
    children()
        .get_mut(&pid)
        .is_some_and(|entry| matches!(entry.child.try_wait(), Ok(None)))
}

/// Stops the tracked child `pid` (SIGTERM, then SIGKILL after its grace period) and reaps it.
pub fn stop(pid: u32) {
    let entry = children().remove(&pid);
    if let Some(entry) = entry {
        let grace = entry.stop_grace;
        finish(pid, entry, grace);
    }
}

/// Stops every tracked child, each by its pid.
pub fn kill_all() {
    let pids: Vec<u32> = children().keys().copied().collect();
    for pid in pids {
        stop(pid);
    }
}
