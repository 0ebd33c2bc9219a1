//! A private Redis Sentinel setup on 127.0.0.1: a master, its replicas and three sentinels
//! watching it (quorum 2) with short timeouts, for killing the master -9 and waiting for a
//! sentinel to promote a replica.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::redis::{command, poll_until, start_retrying};
use crate::{RedisOpts, RedisServer, Spawn, free_port};

/// Sentinels watching the master; two of them must agree it is down.
const SENTINELS: usize = 3;
const QUORUM: usize = 2;

/// How to start the setup.
#[derive(Clone, Debug)]
pub struct RedisSentinelOpts {
    pub bin: String,
    /// Replicas of the master. Two leave the promoted one a replica of its own, so that writes
    /// waiting for one replica (WAIT 1) can succeed after a failover.
    pub replicas: usize,
    /// The name the sentinels monitor the master under (REDIS_SENTINEL_MASTER).
    pub master_name: String,
    /// How long the master must be unreachable for a sentinel to think it down
    /// (`down-after-milliseconds`).
    pub down_after: Duration,
    /// `failover-timeout`: bounds a failover's steps, and how soon a failed one is retried.
    pub failover_timeout: Duration,
    /// Passed to every data node after the replication settings (e.g. an ACL: the sentinels
    /// and the replicas use the `default` user).
    pub node_args: Vec<String>,
    /// Passed to every sentinel after `--sentinel` (e.g. a user for clients; the harness and
    /// the sentinels among themselves use the `default` user).
    pub sentinel_args: Vec<String>,
    /// Sentinel configs (each sentinel rewrites its own) and logs; removed on drop.
    pub dir: PathBuf,
    pub spawn: Spawn,
    /// Bound of the wait for the setup to form (replicas in sync, sentinels aware of each other).
    pub settle_within: Duration,
}

impl RedisSentinelOpts {
    /// A master with two replicas, down after 1 s, in a fresh directory under the temp dir.
    pub fn new(bin: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "testkit-redis-sentinel-{}-{}",
            std::process::id(),
            free_port()?
        ));
        Ok(Self {
            bin: bin.to_owned(),
            replicas: 2,
            master_name: "mpr-master".to_owned(),
            down_after: Duration::from_millis(1000),
            failover_timeout: Duration::from_millis(5000),
            node_args: Vec::new(),
            sentinel_args: Vec::new(),
            dir,
            spawn: Spawn::default(),
            settle_within: Duration::from_secs(60),
        })
    }
}

/// A running setup; every process is stopped and the directory removed when dropped.
#[derive(Debug)]
pub struct RedisSentinel {
    opts: RedisSentinelOpts,
    /// The data nodes; the first was the master at start.
    nodes: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    /// Starts the master, its replicas, then the sentinels; waits until the replicas are in
    /// sync and every sentinel knows the master, its replicas and the other sentinels.
    pub async fn start(opts: RedisSentinelOpts) -> Result<Self> {
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let mut setup = Self {
            opts,
            nodes: Vec::new(),
            sentinels: Vec::new(),
        };
        let master = start_retrying(free_port()?, free_port, |port| setup.node_opts(port, None));
        setup.nodes.push(master.await?);
        let master = setup.nodes[0].port();
        for _ in 0..setup.opts.replicas {
            let replica = start_retrying(free_port()?, free_port, |port| {
                setup.node_opts(port, Some(master))
            });
            setup.nodes.push(replica.await?);
        }
        for _ in 0..SENTINELS {
            let sentinel = start_retrying(free_port()?, free_port, |port| {
                setup.sentinel_opts(port, master)
            });
            setup.sentinels.push(sentinel.await?);
        }
        let formed = format!(
            "master {master}: {} replicas in sync, known to {SENTINELS} sentinels",
            setup.opts.replicas
        );
        let (within, logs) = (setup.opts.settle_within, &setup.opts.dir);
        poll_until(&formed, within, logs, || setup.formed(master)).await?;
        Ok(setup)
    }

    fn node_opts(&self, port: u16, master: Option<u16>) -> RedisOpts {
        // A master need not wait for more replicas before a full sync (default 5 s); a replica
        // writes the snapshot it syncs from in its own file in `dir`.
        let mut args: Vec<String> = ["--repl-diskless-sync-delay", "0"].map(String::from).into();
        args.extend(["--dir".into(), self.opts.dir.display().to_string()]);
        args.extend(["--dbfilename".into(), format!("dump-{port}.rdb")]);
        if let Some(master) = master {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        }
        args.extend(self.opts.node_args.iter().cloned());
        self.opts_with(port, "redis", args, None)
    }

    fn sentinel_opts(&self, port: u16, master: u16) -> RedisOpts {
        let name = &self.opts.master_name;
        let config = self.opts.dir.join(format!("sentinel-{port}.conf"));
        let text = format!(
            "sentinel monitor {name} 127.0.0.1 {master} {QUORUM}\n\
             sentinel down-after-milliseconds {name} {}\n\
             sentinel failover-timeout {name} {}\n",
            self.opts.down_after.as_millis(),
            self.opts.failover_timeout.as_millis()
        );
        // Written here, where the port is known; a failed write shows as a sentinel that exits.
        let _ = std::fs::write(&config, text);
        let mut args = vec!["--sentinel".to_owned()];
        args.extend(self.opts.sentinel_args.iter().cloned());
        self.opts_with(port, "sentinel", args, Some(config))
    }

    fn opts_with(
        &self,
        port: u16,
        kind: &str,
        args: Vec<String>,
        config_file: Option<PathBuf>,
    ) -> RedisOpts {
        let mut spawn = self.opts.spawn.clone();
        spawn.log = crate::Log::File(self.opts.dir.join(format!("{kind}-{port}.log")));
        RedisOpts {
            bin: self.opts.bin.clone(),
            port,
            args,
            config_file,
            spawn,
        }
    }

    /// Why the setup has not formed yet, or None when it has.
    async fn formed(&self, master: u16) -> Result<Option<String>> {
        let replication = command(master, &["INFO", "replication"]).await?;
        let in_sync = replication
            .lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .count();
        if in_sync < self.opts.replicas {
            return Ok(Some(format!("{in_sync} replicas in sync")));
        }
        let expected = format!(
            "address=127.0.0.1:{master},slaves={},sentinels={SENTINELS}",
            self.opts.replicas
        );
        for sentinel in &self.sentinels {
            let info = self.master_line(sentinel.port()).await?;
            if !info.contains("status=ok") || !info.contains(&expected) {
                return Ok(Some(format!("sentinel {}: {info}", sentinel.port())));
            }
        }
        Ok(None)
    }

    /// A sentinel's line about the master (`INFO sentinel`: `master0:name=…,status=…,
    /// address=…,slaves=…,sentinels=…`).
    async fn master_line(&self, sentinel: u16) -> Result<String> {
        let info = command(sentinel, &["INFO", "sentinel"]).await?;
        let name = format!("name={},", self.opts.master_name);
        info.lines()
            .find(|line| line.contains(&name))
            .map(|line| line.trim().to_owned())
            .ok_or_else(|| anyhow!("sentinel {sentinel} does not know {name}"))
    }

    /// REDIS_SENTINELS: every sentinel as `127.0.0.1:<port>`.
    pub fn sentinels_env(&self) -> String {
        let sentinels = self.sentinels.iter();
        let addresses: Vec<String> = sentinels
            .map(|sentinel| format!("127.0.0.1:{}", sentinel.port()))
            .collect();
        addresses.join(",")
    }

    /// REDIS_SENTINEL_MASTER.
    pub fn master_name(&self) -> &str {
        &self.opts.master_name
    }

    /// The first master's URL (for REDIS_URL: the server takes only its scheme and credentials).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// The master's port as the first running sentinel names it.
    pub async fn master_port(&self) -> Result<u16> {
        let sentinel = self
            .sentinels
            .iter()
            .find(|sentinel| sentinel.pid().is_some())
            .ok_or_else(|| anyhow!("no sentinel runs"))?;
        let line = self.master_line(sentinel.port()).await?;
        address_port(&line).ok_or_else(|| anyhow!("no master address in {line:?}"))
    }

    /// kill -9 the data node on `port`.
    pub fn kill_node(&mut self, port: u16) -> Result<()> {
        let node = self.nodes.iter_mut().find(|node| node.port() == port);
        node.ok_or_else(|| anyhow!("no data node on port {port}"))?
            .kill();
        Ok(())
    }

    /// Waits until every sentinel names another master than `old` and that node says it is
    /// the master; returns its port.
    pub async fn wait_failover(&self, old: u16, within: Duration) -> Result<u16> {
        let what = format!("no replica took over from the master on port {old}");
        poll_until(&what, within, &self.opts.dir, || self.failed_over(old)).await?;
        self.master_port().await
    }

    /// Why the sentinels have not all moved from the master `old` to one that says it is the
    /// master, or None when they have.
    async fn failed_over(&self, old: u16) -> Result<Option<String>> {
        for sentinel in &self.sentinels {
            let line = self.master_line(sentinel.port()).await?;
            if address_port(&line).is_none_or(|port| port == old) {
                return Ok(Some(format!("sentinel {}: {line}", sentinel.port())));
            }
        }
        let promoted = self.master_port().await?;
        let replication = command(promoted, &["INFO", "replication"]).await?;
        if !replication.contains("role:master") {
            return Ok(Some(format!("{promoted} is not a master yet")));
        }
        Ok(None)
    }

    /// Runs `redis-cli` with `args` against the current master; its stdout. Blocks while
    /// redis-cli runs.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let master = crate::block_on(self.master_port())?;
        let output = Command::new("redis-cli")
            .args(["-p", &master.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// The port of `address=127.0.0.1:<port>` in a sentinel's master line.
fn address_port(line: &str) -> Option<u16> {
    let address = line
        .split(',')
        .find_map(|part| part.strip_prefix("address="))?;
    address.rsplit(':').next()?.parse().ok()
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.sentinels.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.opts.dir);
    }
}
