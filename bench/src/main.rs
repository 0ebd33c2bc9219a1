//! mpr-bench: drives the mpr server over real WebSockets and measures it beside the ceiling of
//! the same Redis running the same scripts. It starts its own redis-server and mpr instances
//! on 127.0.0.1 (free ports) and kills them by pid when it ends.

mod ceiling;
mod client;
mod fastws;
mod procs;
mod report;
mod resp;
mod scen_add;
mod scen_cluster;
mod scen_cold;
mod scen_live;
mod scen_memory;
mod scen_push;
mod scen_queue;
mod scen_redelivery;
mod scen_socketdock;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// addMessage throughput at 1, 8, 32 concurrent clients.
    Add,
    /// Live delivery latency across two instances, with and without idle sockets.
    Live,
    /// takeFromQueue / removeMessages / removeAllMessages latency vs queue length.
    Queue,
    /// Server RSS per idle socket.
    Memory,
    /// Cold tier (MongoDB): mover throughput, addMessage latency while it moves, cold takes.
    Cold,
    /// addMessage throughput with push notifications (to a local FCM stand-in) vs without.
    Push,
    /// Live-mode re-delivery: after a rebind, a socket close, a visibility timeout.
    Redelivery,
    /// The SocketDock adapter: delivery latency and a backlog's flush through the real
    /// SocketDock, beside SocketDock alone.
    Socketdock,
    /// Redis Cluster (3 primaries, 3 replicas): addMessage throughput and live latency with 1
    /// and 3 instances and with REDIS_WAIT_REPLICAS=1, beside a single redis-server.
    Cluster,
    /// Everything above, in that order.
    All,
}

/// Benchmark of the mpr server (WebSocket JSON-RPC on Redis), with Redis ceilings beside.
#[derive(Debug, Parser)]
#[command(name = "mpr-bench", version)]
struct Cli {
    /// Which scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,

    /// The mpr binary to start (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/mpr")]
    mpr_bin: PathBuf,

    /// redis-server binary.
    #[arg(long, default_value = "redis-server")]
    redis_server: String,

    /// SecantusDB binary (MongoDB wire protocol) for the cold scenario.
    #[arg(long, default_value = "secantusd-py")]
    secantusd: String,

    /// redis-benchmark binary.
    #[arg(long, default_value = "redis-benchmark")]
    redis_benchmark: String,

    /// Small counts and short runs: a smoke test of the tool, not figures to quote.
    #[arg(long)]
    quick: bool,

    /// Repetitions of each measurement; the report gives medians [default: 3, quick: 1].
    #[arg(long)]
    runs: Option<usize>,

    /// Worker threads of this tool's runtime (the machine's cores are shared with the server).
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,

    /// add: concurrent clients (sockets with one call in flight each).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,

    /// add: connection ids the messages are spread over.
    #[arg(long, default_value_t = 1000)]
    connections: u64,

    /// push: distinct device tokens the connections share (default: one per connection).
    #[arg(long)]
    push_tokens: Option<u64>,

    /// add, live and socketdock: measured seconds per run [default: 5, quick: 1].
    #[arg(long)]
    duration_secs: Option<f64>,

    /// live: target rates, messages per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
    rates: Vec<u64>,

    /// live and memory: idle sockets to open [default: 10000, quick: 1000].
    #[arg(long)]
    idle: Option<usize>,

    /// live: connection ids with a live session.
    #[arg(long, default_value_t = 100)]
    live_connections: usize,

    /// live: sender sockets on instance B.
    #[arg(long, default_value_t = 4)]
    senders: usize,

    /// live: do not acknowledge pushes with removeMessages (a diagnostic; queues then grow).
    #[arg(long)]
    live_no_ack: bool,

    /// socketdock: total rates, messages per second, spread over the agents.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    socketdock_rates: Vec<u64>,

    /// socketdock: agents on SocketDock, each bound to a connection of its own.
    #[arg(long, default_value_t = 20)]
    agents: usize,

    /// socketdock: messages queued for an absent agent, then flushed [default: 10000, quick: 1000].
    #[arg(long)]
    backlog: Option<usize>,

    /// Before each measurement, wait up to this many seconds for the machine to be quiet
    /// (< 0.25 cores busy) so other work does not skew the figures; 0 disables.
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,

    /// queue: queue lengths [default: 100,10000,100000, quick: 100,1000,10000].
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,

    /// queue and cold: take/remove cycles per queue and run [default: 200, quick: 30].
    #[arg(long)]
    cycles: Option<usize>,

    /// redelivery: trials per part and run [default: 100, quick: 10].
    #[arg(long)]
    trials: Option<usize>,

    /// cold: messages moved to the cold tier on one connection [default: 100000, quick: 5000].
    #[arg(long)]
    cold_messages: Option<usize>,

    /// cold: the server's MOVER_BATCH_SIZE.
    #[arg(long, default_value_t = 100)]
    mover_batch: usize,

    /// cold: the server's MOVER_MAX_RATE (0: no cap) [default: the server's].
    #[arg(long)]
    mover_max_rate: Option<u64>,

    /// cold: run SecantusDB alone on this CPU, and this tool, Redis and mpr on the others. The
    /// Python stand-in needs about a core to take 2 000 documents/s; pinned apart, it does not
    /// compete with them for CPU, as a MongoDB on its own host would not.
    #[arg(long)]
    mongo_cpu: Option<usize>,
}

/// Resolved settings shared by the scenarios.
pub struct Settings {
    pub mpr_bin: PathBuf,
    pub redis_server: String,
    pub secantusd: String,
    pub redis_benchmark: String,
    pub quick: bool,
    pub runs: usize,
    pub clients: Vec<usize>,
    pub connections: u64,
    pub push_tokens: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub rates: Vec<u64>,
    pub idle: usize,
    pub live_connections: usize,
    pub senders: usize,
    pub live_no_ack: bool,
    pub quiet_wait: Duration,
    pub socketdock_rates: Vec<u64>,
    pub agents: usize,
    pub backlog: usize,
    pub sizes: Vec<usize>,
    pub cycles: usize,
    pub trials: usize,
    pub cold_messages: usize,
    pub mover_batch: usize,
    pub mover_max_rate: Option<u64>,
    pub mongo_cpu: Option<usize>,
}

impl Settings {
    fn from(cli: &Cli) -> Self {
        let q = cli.quick;
        Self {
            mpr_bin: cli.mpr_bin.clone(),
            redis_server: cli.redis_server.clone(),
            secantusd: cli.secantusd.clone(),
            redis_benchmark: cli.redis_benchmark.clone(),
            quick: q,
            runs: cli.runs.unwrap_or(if q { 1 } else { 3 }).max(1),
            clients: cli.clients.clone(),
            connections: cli.connections.max(1),
            push_tokens: cli.push_tokens.unwrap_or(cli.connections).max(1),
            duration: Duration::from_secs_f64(cli.duration_secs.unwrap_or(if q {
                1.0
            } else {
                5.0
            })),
            warmup: Duration::from_millis(if q { 200 } else { 500 }),
            rates: cli.rates.clone(),
            idle: cli.idle.unwrap_or(if q { 1000 } else { 10_000 }),
            live_connections: cli.live_connections.max(1),
            senders: cli.senders.max(1),
            live_no_ack: cli.live_no_ack,
            quiet_wait: Duration::from_secs(cli.quiet_wait_secs),
            socketdock_rates: cli.socketdock_rates.clone(),
            agents: cli.agents.max(1),
            backlog: cli.backlog.unwrap_or(if q { 1000 } else { 10_000 }).max(1),
            sizes: cli.sizes.clone().unwrap_or_else(|| {
                if q {
                    vec![100, 1000, 10_000]
                } else {
                    vec![100, 10_000, 100_000]
                }
            }),
            cycles: cli.cycles.unwrap_or(if q { 30 } else { 200 }).max(1),
            trials: cli.trials.unwrap_or(if q { 10 } else { 100 }).max(1),
            cold_messages: cli
                .cold_messages
                .unwrap_or(if q { 5000 } else { 100_000 })
                .max(10),
            mover_batch: cli.mover_batch.max(1),
            mover_max_rate: cli.mover_max_rate,
            mongo_cpu: cli.mongo_cpu,
        }
    }

    /// Waits for a quiet machine before a measurement (see --quiet-wait-secs); notes it if not.
    pub async fn settle(&self, what: &str, report: &mut Report) {
        if self.quiet_wait.is_zero() {
            return;
        }
        let (load, quiet) = procs::wait_for_quiet(0.25, self.quiet_wait).await;
        if !quiet {
            report.note(format!(
                "{what}: the machine stayed busy ({load:.2} cores of other work) for {} s before it; measured anyway",
                self.quiet_wait.as_secs()
            ));
        }
    }

    /// Requests per redis-benchmark run: about 3 s of work at the expected rate.
    pub fn bench_requests(&self, clients: usize) -> usize {
        let n = match clients {
            1 => 40_000,
            2..=8 => 150_000,
            _ => 200_000,
        };
        if self.quick { n / 10 } else { n }
    }
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB RAM, Linux {}",
        mem as f64 / 1048576.0,
        kernel.trim()
    )
}

/// `git rev-parse --short HEAD` of the working directory, with "+dirty" when src/ has changes.
fn server_revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--", "src", "Cargo.toml"])
                .is_some_and(|s| !s.is_empty());
            format!("{rev}{}", if dirty { "+dirty" } else { "" })
        }
        None => "unknown".into(),
    }
}

async fn run(cli: Cli) -> Result<Report> {
    let settings = Settings::from(&cli);
    let mut report = Report::default();
    let command: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let nofile = procs::raise_nofile(20_000);
    let load = procs::machine_load(Duration::from_secs(1)).await;
    if load > 0.25 {
        report.note(format!(
            "the machine was already busy before the run ({load:.2} cores of other work): figures may be low; \
             the CPU column's \"other\" shows it during each measurement"
        ));
    }
    let redis_version = {
        let redis = procs::Redis::start(&settings.redis_server).await?;
        redis.version().await?
    };
    report.section(format!(
        "# mpr-bench results\n\n\
         Command (run in `{cwd}`):\n\n```\n{}\n```\n\n\
         - machine: {}\n- redis-server {redis_version} (private instance, `--save '' --appendonly no`), mpr: `{}` (source revision {})\n\
         - runs per figure: {} (medians reported); tool runtime threads: {}; open-file limit: {nofile}\n\
         - other load on the machine just before the run: {load:.2} cores\n\
         - payload: {}-byte JWE-shaped `encryptedMessage`, one recipient DID{}\n",
        command.join(" "),
        machine(),
        settings.mpr_bin.display(),
        server_revision(),
        settings.runs,
        cli.threads,
        client::PAYLOAD_BYTES,
        if settings.quick { "\n- **--quick: smoke-test counts, not figures to quote**" } else { "" },
    ));
    let all = cli.scenario == Scenario::All;
    if all || cli.scenario == Scenario::Add {
        scen_add::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Live {
        scen_live::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Queue {
        scen_queue::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Memory {
        scen_memory::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Cold {
        scen_cold::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Push {
        scen_push::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Redelivery {
        scen_redelivery::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Socketdock {
        scen_socketdock::run(&settings, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Cluster {
        scen_cluster::run(&settings, &mut report).await?;
    }
    report.section(report.summary());
    Ok(report)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let out = cli.out.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    client::epoch();
    let result = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
            _ = hup.recv() => Err(anyhow::anyhow!("hung up")),
        }
    });
    procs::kill_all();
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(report) => {
            if let Some(path) = out {
                let text = report.sections.join("\n");
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("error: writing {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
