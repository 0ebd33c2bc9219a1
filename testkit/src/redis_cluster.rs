//! A private Redis Cluster on 127.0.0.1: six redis-servers (three primaries, each with one
//! replica) made a cluster by `redis-cli --cluster create`, for killing a primary, waiting for
//! its replica to take over and bringing the old one back as a replica.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

use crate::redis::{command, poll_until, start_retrying};
use crate::{
    CLUSTER_BUS_OFFSET, CLUSTER_TLS_OFFSET, RedisOpts, RedisServer, Spawn, free_cluster_port,
    running,
};

/// Slots of a Redis Cluster: 0..16384.
const SLOTS: u32 = 16384;

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct RedisClusterOpts {
    pub bin: String,
    /// The redis-cli that creates the cluster and serves [`RedisCluster::cli`].
    pub cli: String,
    /// One node per port; half of them end up primaries, half replicas. A node that does not
    /// come up on its port (taken by someone else after it was picked: the port or its bus
    /// port, port + 10000) is started on a fresh one instead; [`RedisCluster::nodes`] tells.
    pub ports: Vec<u16>,
    /// Node configs, AOF directories and logs (`redis-<port>.log`); removed on drop.
    pub dir: PathBuf,
    /// Passed to every node after the cluster and persistence settings, so later ones win.
    pub args: Vec<String>,
    /// How each node is started and stopped; its log always goes to the file in `dir`.
    pub spawn: Spawn,
    /// Bound of every wait for the cluster to settle (creation, restart).
    pub settle_within: Duration,
    /// None (the default): the nodes announce their addresses to clients (CLUSTER SLOTS,
    /// MOVED) as `127.0.0.1`. Some: as this host instead (`--cluster-announce-hostname`,
    /// `--cluster-preferred-endpoint-type hostname`), each with its real port, as nodes behind
    /// NAT or in containers do. The nodes still gossip and replicate over their real addresses,
    /// and the harness talks to those (CLUSTER NODES); a client following the announced ones
    /// (a server without REDIS_NATMAP, `redis-cli -c` after a redirection) reaches nothing
    /// unless the host leads there.
    pub announce_host: Option<String>,
    /// None (the default): plain TCP only. Some: every node also listens with TLS, on the port
    /// above its own ([`CLUSTER_TLS_OFFSET`]), and the nodes gossip and replicate over TLS
    /// (`--tls-cluster`, `--tls-replication`). A client on a TLS port is told TLS ports
    /// (CLUSTER SLOTS, MOVED), one on a plain port plain ones: the harness keeps to plain
    /// ports, [`RedisCluster::seed_nodes_env`] and [`RedisCluster::url`] give the TLS ones.
    pub tls: Option<ClusterTls>,
}

/// A TLS cluster's files (PEM): every node's certificate and key, and the CA that signed them.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl RedisClusterOpts {
    /// Six nodes of `bin` on free ports (bus ports free too), in a fresh directory under the
    /// system's temp dir.
    pub fn new(bin: &str) -> Result<Self> {
        let ports = (0..6)
            .map(|_| free_cluster_port())
            .collect::<Result<Vec<_>>>()?;
        let dir = std::env::temp_dir().join(format!(
            "testkit-redis-cluster-{}-{}",
            std::process::id(),
            ports[0]
        ));
        Ok(Self {
            bin: bin.to_owned(),
            cli: "redis-cli".to_owned(),
            ports,
            dir,
            args: Vec::new(),
            spawn: Spawn::default(),
            // Generous: on a loaded machine with clusters starting in parallel, forming one
            // (a full sync per replica) can take many seconds.
            settle_within: Duration::from_secs(90),
            announce_host: None,
            tls: None,
        })
    }
}

/// A running cluster; every node is stopped and the directory removed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    opts: RedisClusterOpts,
    nodes: Vec<RedisServer>,
    /// The slots each killed primary served when it was killed, for [`Self::wait_failover`].
    slots_of_killed: Vec<(u16, Vec<SlotRange>)>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until it has settled (see
    /// [`Self::wait_settled`]).
    pub async fn start(opts: RedisClusterOpts) -> Result<Self> {
        ensure!(
            opts.ports.len() >= 6 && opts.ports.len().is_multiple_of(2),
            "a cluster with one replica per primary needs an even number (≥ 6) of nodes"
        );
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        let mut cluster = Self {
            opts,
            nodes: Vec::new(),
            slots_of_killed: Vec::new(),
        };
        for index in 0..cluster.opts.ports.len() {
            let picked = cluster.opts.ports[index];
            let node = start_retrying(picked, free_cluster_port, |port| cluster.node_opts(port));
            let node = node.await?;
            cluster.opts.ports[index] = node.port();
            cluster.nodes.push(node);
        }
        let mut create = Command::new(&cluster.opts.cli);
        create
            .arg("--cluster")
            .arg("create")
            .args(cluster.nodes())
            .args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = run(create).await?;
        ensure!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster
            .wait_settled("the new cluster did not settle", cluster.opts.settle_within)
            .await?;
        Ok(cluster)
    }

    fn node_opts(&self, port: u16) -> RedisOpts {
        let dir = &self.opts.dir;
        let path = |name: String| dir.join(name).display().to_string();
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            // A primary need not wait for more replicas before a full sync (default 5 s).
            "--repl-diskless-sync-delay",
            "0",
        ]
        .map(String::from)
        .into();
        // The nodes share `dir`; every file of theirs is named by port.
        args.extend(["--dir".into(), dir.display().to_string()]);
        args.extend([
            "--cluster-config-file".into(),
            path(format!("nodes-{port}.conf")),
        ]);
        args.extend(["--appenddirname".into(), format!("appendonly-{port}")]);
        args.extend(["--dbfilename".into(), format!("dump-{port}.rdb")]);
        if let Some(host) = &self.opts.announce_host {
            args.extend(["--cluster-announce-hostname".into(), host.clone()]);
            args.extend([
                "--cluster-preferred-endpoint-type".into(),
                "hostname".into(),
            ]);
        }
        if let Some(tls) = &self.opts.tls {
            let file = |path: &PathBuf| path.display().to_string();
            args.extend([
                "--tls-port".into(),
                (port + CLUSTER_TLS_OFFSET).to_string(),
                "--tls-cert-file".into(),
                file(&tls.cert_file),
                "--tls-key-file".into(),
                file(&tls.key_file),
                "--tls-ca-cert-file".into(),
                file(&tls.ca_file),
                "--tls-auth-clients".into(),
                "no".into(),
                "--tls-cluster".into(),
                "yes".into(),
                "--tls-replication".into(),
                "yes".into(),
                // Else the bus port would be counted from the TLS port.
                "--cluster-port".into(),
                (port + CLUSTER_BUS_OFFSET).to_string(),
            ]);
        }
        args.extend(self.opts.args.iter().cloned());
        let mut spawn = self.opts.spawn.clone();
        spawn.log = crate::Log::File(dir.join(format!("redis-{port}.log")));
        RedisOpts {
            bin: self.opts.bin.clone(),
            port,
            args,
            config_file: None,
            spawn,
        }
    }

    /// Every node, running or not, as `127.0.0.1:<port>`.
    pub fn nodes(&self) -> Vec<String> {
        self.opts
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// Every node as (the address it announces to clients, `127.0.0.1:<port>`); the same
    /// address twice unless [`RedisClusterOpts::announce_host`].
    pub fn announced_nodes(&self) -> Vec<(String, String)> {
        let host = self.opts.announce_host.as_deref().unwrap_or("127.0.0.1");
        let announced = |port| format!("{host}:{port}");
        let nodes = self.opts.ports.iter().zip(self.nodes());
        nodes.map(|(&port, real)| (announced(port), real)).collect()
    }

    /// The nodes as a server's `REDIS_NODES` wants them: `127.0.0.1:<port>,…` (in a TLS
    /// cluster their TLS ports).
    pub fn seed_nodes_env(&self) -> String {
        let ports = self.opts.ports.iter();
        let nodes: Vec<String> = ports
            .map(|&port| format!("127.0.0.1:{}", self.client_port(port)))
            .collect();
        nodes.join(",")
    }

    /// `redis://` on the first node (in a TLS cluster `rediss://` on its TLS port): the scheme
    /// (and, were there any, credentials) for a server's `REDIS_URL`.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let port = self.client_port(self.opts.ports[0]);
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// The port a client of the node on `port` uses: its TLS port in a TLS cluster.
    fn client_port(&self, port: u16) -> u16 {
        match self.opts.tls {
            Some(_) => port + CLUSTER_TLS_OFFSET,
            None => port,
        }
    }

    /// The directory holding the nodes' files and logs.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// The pid of the node on `port`, if it runs.
    pub fn pid_of(&self, port: u16) -> Option<u32> {
        let node = self.nodes.iter().find(|node| node.port() == port)?;
        node.pid().filter(|&pid| running(pid))
    }

    /// Ports of the nodes running now.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| node.pid().is_some_and(running))
            .map(RedisServer::port)
            .collect()
    }

    fn live_port(&self) -> Result<u16> {
        self.live_ports()
            .first()
            .copied()
            .ok_or_else(|| anyhow!("no node of the cluster runs"))
    }

    fn node_mut(&mut self, port: u16) -> Result<&mut RedisServer> {
        self.nodes
            .iter_mut()
            .find(|node| node.port() == port)
            .ok_or_else(|| anyhow!("port {port} is no node of this cluster"))
    }

    /// What a running node says the cluster is.
    async fn view(&self) -> Result<View> {
        View::of(self.live_port()?).await
    }

    /// Ports of the primaries serving slots now, as a running node sees them.
    pub async fn primaries(&self) -> Result<Vec<u16>> {
        let view = self.view().await?;
        let mut ports: Vec<u16> = view.slot_owners().iter().map(|range| range.port).collect();
        ports.sort();
        ports.dedup();
        Ok(ports)
    }

    /// Ports of the replicas that are up, as a running node sees them.
    pub async fn replicas(&self) -> Result<Vec<u16>> {
        let view = self.view().await?;
        let replicas = view
            .nodes
            .iter()
            .filter(|node| !node.primary && !node.failing);
        Ok(replicas.map(|node| node.port).collect())
    }

    /// The port of the primary serving `slot` now.
    pub async fn primary_of_slot(&self, slot: u16) -> Result<u16> {
        let view = self.view().await?;
        let owners = view.slot_owners();
        let owner = owners.iter().find(|range| range.contains(slot));
        owner
            .map(|range| range.port)
            .ok_or_else(|| anyhow!("no primary serves slot {slot}"))
    }

    /// The slot of `key` (CLUSTER KEYSLOT: its hash tag, if it has one).
    pub async fn slot_of_key(&self, key: &str) -> Result<u16> {
        let slot = command(self.live_port()?, &["CLUSTER", "KEYSLOT", key]).await?;
        Ok(slot.parse()?)
    }

    /// The port of the primary serving `key` now.
    pub async fn primary_of_key(&self, key: &str) -> Result<u16> {
        self.primary_of_slot(self.slot_of_key(key).await?).await
    }

    /// kill -9 of one node: no shutdown, nothing flushed beyond its AOF. A primary's slots are
    /// remembered for [`Self::wait_failover`].
    pub async fn kill_node(&mut self, port: u16) -> Result<()> {
        let served: Vec<SlotRange> = self
            .view()
            .await?
            .slot_owners()
            .into_iter()
            .filter(|range| range.port == port)
            .collect();
        self.node_mut(port)?.kill();
        self.slots_of_killed.retain(|(killed, _)| *killed != port);
        if !served.is_empty() {
            self.slots_of_killed.push((port, served));
        }
        Ok(())
    }

    /// Waits until another node (its replica) serves the slots the killed primary on
    /// `old_primary` served and the running nodes have settled; returns the new primary's port.
    pub async fn wait_failover(&self, old_primary: u16, within: Duration) -> Result<u16> {
        let (_, served) = self
            .slots_of_killed
            .iter()
            .find(|(killed, _)| *killed == old_primary)
            .ok_or_else(|| anyhow!("no primary on port {old_primary} was killed"))?;
        let what = format!("no replica took over from the primary on port {old_primary}");
        self.wait_settled(&what, within).await?;
        let promoted = self.primary_of_slot(served[0].start).await?;
        ensure!(promoted != old_primary, "{what}");
        Ok(promoted)
    }

    /// Starts a killed node again with its config and AOF; it rejoins (a replaced primary as a
    /// replica of its successor). Waits until the cluster has settled with it.
    pub async fn restart_node(&mut self, port: u16) -> Result<()> {
        self.node_mut(port)?.restart().await?;
        self.slots_of_killed.retain(|(killed, _)| *killed != port);
        let what = format!("the node on port {port} did not rejoin");
        self.wait_settled(&what, self.opts.settle_within).await
    }

    /// Waits, polling every running node, until each of them says `cluster_state:ok`, knows
    /// every other running node as up, maps all slots to running primaries and names the
    /// replicas exactly as the others do, and (when a replica) has its link to its primary up.
    pub async fn wait_settled(&self, what: &str, within: Duration) -> Result<()> {
        poll_until(what, within, &self.opts.dir, || self.unsettled()).await
    }

    /// Why the running nodes have not settled, or None when they have.
    async fn unsettled(&self) -> Result<Option<String>> {
        let live = self.live_ports();
        let mut agreed: Option<(Vec<SlotRange>, BTreeSet<u16>)> = None;
        for &port in &live {
            let info = command(port, &["CLUSTER", "INFO"]).await?;
            if !info.contains("cluster_state:ok") {
                return Ok(Some(format!("port {port}: cluster_state is not ok")));
            }
            let view = View::of(port).await?;
            for &other in &live {
                if !view
                    .nodes
                    .iter()
                    .any(|node| node.port == other && !node.failing)
                {
                    return Ok(Some(format!("port {port} does not see {other} up")));
                }
            }
            let owners = view.slot_owners();
            let covered: u32 = owners.iter().map(SlotRange::len).sum();
            if covered != SLOTS || owners.iter().any(|range| !live.contains(&range.port)) {
                return Ok(Some(format!("port {port} maps slots {owners:?}")));
            }
            let replicas = view.nodes.iter().filter(|node| !node.primary);
            let replicas: BTreeSet<u16> = replicas.map(|node| node.port).collect();
            let seen = (owners, replicas);
            if agreed.get_or_insert_with(|| seen.clone()) != &seen {
                return Ok(Some(format!(
                    "port {port} disagrees on slots or replicas: {seen:?}"
                )));
            }
            if !view.myself()?.primary {
                let replication = command(port, &["INFO", "replication"]).await?;
                if !replication.contains("master_link_status:up") {
                    return Ok(Some(format!("replica {port}: link to its primary is down")));
                }
            }
        }
        Ok(None)
    }

    /// Runs `redis-cli -c` (following redirections) with `args` against a running node; its
    /// stdout. `--scan` goes to every primary (each holds only its own slots' keys), their
    /// outputs one after another. Blocks while redis-cli runs. With
    /// [`RedisClusterOpts::announce_host`] a redirection leads to the announced address.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let targets = if args.contains(&"--scan") {
            crate::block_on(self.primaries())?
        } else {
            vec![self.live_port()?]
        };
        let mut outputs = Vec::new();
        for port in targets {
            let output = Command::new(&self.opts.cli)
                .args(["-c", "-p", &port.to_string()])
                .args(args)
                .output()
                .with_context(|| format!("running {}", self.opts.cli))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !stdout.trim().is_empty() {
                outputs.push(stdout.trim_end().to_owned());
            }
        }
        Ok(outputs.join("\n"))
    }

    /// Stops every node (see [`Spawn::stop_grace`]); the files stay until drop.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.opts.dir);
    }
}

/// Runs a short command to its end off the async threads.
async fn run(mut cmd: Command) -> Result<std::process::Output> {
    let program = cmd.get_program().display().to_string();
    tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .with_context(|| format!("running {program}"))
}

/// Slots `start..=end`, served by the primary on `port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SlotRange {
    start: u16,
    end: u16,
    port: u16,
}

impl SlotRange {
    fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }
}

/// One node as a line of CLUSTER NODES describes it.
#[derive(Clone, Debug)]
struct NodeLine {
    port: u16,
    myself: bool,
    primary: bool,
    /// Flagged `fail` or `fail?` (suspected), or not yet known (`handshake`, `noaddr`).
    failing: bool,
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    /// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>…`
    fn parse(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields.len() >= 8, "a CLUSTER NODES line: {line}");
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let (_, port) = address
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("an address in {line}"))?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let has = |flag: &str| flags.contains(&flag);
        let mut slots = Vec::new();
        // `[slot->-id]`, `[slot-<-id]`: a slot being migrated, still served here.
        for slot in fields[8..].iter().filter(|slot| !slot.starts_with('[')) {
            let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
            slots.push((start.parse()?, end.parse()?));
        }
        Ok(Self {
            port: port.parse()?,
            myself: has("myself"),
            primary: has("master"),
            failing: has("fail") || has("fail?") || has("handshake") || has("noaddr"),
            slots,
        })
    }
}

/// What one node says the cluster is (CLUSTER NODES).
#[derive(Clone, Debug)]
struct View {
    nodes: Vec<NodeLine>,
}

impl View {
    async fn of(port: u16) -> Result<Self> {
        let text = command(port, &["CLUSTER", "NODES"]).await?;
        let nodes = text.lines().map(NodeLine::parse).collect::<Result<_>>()?;
        Ok(Self { nodes })
    }

    fn myself(&self) -> Result<&NodeLine> {
        self.nodes
            .iter()
            .find(|node| node.myself)
            .ok_or_else(|| anyhow!("CLUSTER NODES without `myself`"))
    }

    /// The slot ranges of the primaries not taken for failing, in slot order.
    fn slot_owners(&self) -> Vec<SlotRange> {
        let serving = self
            .nodes
            .iter()
            .filter(|node| node.primary && !node.failing);
        let mut owners: Vec<SlotRange> = serving
            .flat_map(|node| {
                let port = node.port;
                node.slots
                    .iter()
                    .map(move |&(start, end)| SlotRange { start, end, port })
            })
            .collect();
        owners.sort();
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_nodes_line_is_read_with_its_flags_and_slots() {
        let line = "eefb 127.0.0.1:17001@27001,host myself,master - 0 1 1 connected 0-5460 \
                    5462 [5463->-d02a]";
        let node = NodeLine::parse(line).unwrap();
        assert_eq!(node.port, 17001);
        assert!(node.myself && node.primary && !node.failing);
        assert_eq!(node.slots, [(0, 5460), (5462, 5462)]);
        let failed =
            NodeLine::parse("6f76 127.0.0.1:17006@27006 master,fail - 0 1 3 disconnected").unwrap();
        assert!(failed.failing && failed.slots.is_empty());
    }
}
