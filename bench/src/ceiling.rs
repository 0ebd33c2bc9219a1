//! The Redis "ceiling": the same Redis, on the same machine, running the same scripts with the
//! same payload, driven by redis-benchmark (throughput) or by this tool's RESP client (latency).
//!
//! The server's queue scripts are read at run time from `--lua-dir` (prelude.lua + the
//! operation's file, exactly as the server concatenates them).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::client::{DID, jwe_payload};
use crate::procs::run_tracked;
use crate::resp::{Resp, Val};

/// Visibility timeout the ceiling passes to the scripts (the server's default).
pub const VISIBILITY_MS: u64 = 30_000;

pub struct Scripts {
    pub add: String,
    pub take: String,
    pub remove: String,
    pub remove_all: String,
}

impl Scripts {
    pub fn read(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let prelude = read("prelude.lua")?;
        Ok(Self {
            add: format!("{prelude}{}", read("add_message.lua")?),
            take: format!("{prelude}{}", read("take_from_queue.lua")?),
            remove: format!("{prelude}{}", read("remove_messages.lua")?),
            remove_all: format!("{prelude}{}", read("remove_all_messages.lua")?),
        })
    }

    /// The server's add_message script, behind a preamble that derives the 6 keys of one of
    /// `connections` connections and a unique 24-digit id from two random numbers
    /// (redis-benchmark substitutes each `__rand_int__` independently, so the keys of one
    /// connection cannot all be spelled on its command line; and one number alone repeats often
    /// enough over 10^5 calls to hit the script's duplicate-id error, which stops redis-benchmark).
    /// ARGV: 1 and 2 random numbers, 3 record tail. Local `KEYS`/`ARGV` shadow the globals for
    /// the server's code below.
    pub fn add_for_benchmark(&self, connections: u64) -> String {
        format!(
            "local r = tonumber(ARGV[1])\n\
             local c = 'ceil:{{c' .. (r % {connections}) .. '}}:'\n\
             local KEYS = {{c .. 'msg', c .. 'pending', c .. 'inflight', c .. 'seq', c .. 'dids', c .. 'live'}}\n\
             local ARGV = {{c .. 'd:', ARGV[1] .. ARGV[2], '{VISIBILITY_MS}', ARGV[3], '{DID}'}}\n\
             {}",
            self.add
        )
    }
}

/// The plain three-command script of the target (RPUSH, ZADD, HGET). KEYS: list, zset, hash.
/// ARGV: 1 a random number (score and member), 2 the payload.
pub const PLAIN_SCRIPT: &str = "redis.call('RPUSH', KEYS[1], ARGV[2])\n\
     redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])\n\
     return redis.call('HGET', KEYS[3], ARGV[1])";

/// The record tail the server passes to add_message: `<size>\t<did>\n<QueuedMessage JSON>`.
pub fn record_tail(id: &str, payload: &str) -> String {
    format!(
        "{}\t{DID}\n{{\"id\":\"{id}\",\"receivedAt\":\"2026-01-01T00:00:00.000Z\",\"encryptedMessage\":{payload}}}",
        payload.len()
    )
}

/// Keys and did_base of one connection's queue under a prefix (same layout as src/store/keys.rs).
pub fn queue_keys(prefix: &str, connection_id: &str) -> (Vec<String>, String) {
    let base = format!("{prefix}:{{{connection_id}}}:");
    let keys = ["msg", "pending", "inflight", "seq", "dids", "live"]
        .iter()
        .map(|s| format!("{base}{s}"))
        .collect();
    (keys, format!("{base}d:"))
}

/// One EVALSHA call of a queue script: sha, 6 keys, did_base, then `args`.
pub fn queue_call(sha: &str, prefix: &str, connection_id: &str, args: &[String]) -> Vec<String> {
    let (keys, did_base) = queue_keys(prefix, connection_id);
    let mut cmd = vec!["EVALSHA".to_owned(), sha.to_owned(), "6".to_owned()];
    cmd.extend(keys);
    cmd.push(did_base);
    cmd.extend(args.iter().cloned());
    cmd
}

/// An add_message call for one connection with a unique id, as the server makes it.
pub fn add_call(
    sha: &str,
    prefix: &str,
    connection_id: &str,
    id: &str,
    payload: &str,
) -> Vec<String> {
    queue_call(
        sha,
        prefix,
        connection_id,
        &[
            id.to_owned(),
            VISIBILITY_MS.to_string(),
            record_tail(id, payload),
            DID.to_owned(),
        ],
    )
}

pub fn ceiling_id(n: u64) -> String {
    format!("{n:024x}")
}

/// Fills a queue directly with the server's add script, pipelined.
pub async fn fill(
    redis: &mut Resp,
    sha: &str,
    prefix: &str,
    connection_id: &str,
    count: usize,
    next_id: &mut u64,
) -> Result<()> {
    let payload = jwe_payload(None);
    let mut left = count;
    while left > 0 {
        let batch = left.min(500);
        let cmds: Vec<Vec<String>> = (0..batch)
            .map(|_| {
                *next_id += 1;
                add_call(sha, prefix, connection_id, &ceiling_id(*next_id), &payload)
            })
            .collect();
        let (errors, first) = redis.pipeline(&cmds).await?;
        if errors > 0 {
            bail!("ceiling fill: {errors} errors, first: {first:?}");
        }
        left -= batch;
    }
    Ok(())
}

/// Message ids of take_from_queue's reply (bodies start with `{"id":"<id>"`).
pub fn ids_of_bodies(reply: &Val) -> Vec<String> {
    reply
        .items()
        .iter()
        .filter_map(|b| {
            let s = std::str::from_utf8(b.bytes()).ok()?;
            let rest = s.strip_prefix("{\"id\":\"")?;
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs redis-benchmark with a command whose last argument comes from stdin (-x).
pub async fn redis_benchmark(
    bin: &str,
    port: u16,
    clients: usize,
    requests: usize,
    keyspace: u64,
    args: &[String],
    last_arg: &str,
) -> Result<BenchResult> {
    let mut cmd = Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-r", &keyspace.to_string(), "--csv", "-x"])
        .args(args);
    let out = run_tracked(cmd, "redis-benchmark", Some(last_arg.as_bytes().to_vec())).await?;
    if out.contains("Error from server") || out.contains("ERR") {
        bail!(
            "redis-benchmark got an error reply: {}",
            crate::client::clip(&out)
        );
    }
    parse_csv(&out).with_context(|| format!("unexpected redis-benchmark output: {out}"))
}

/// The last record of redis-benchmark --csv: "title","rps","avg","min","p50","p95","p99","max".
/// The title may contain anything, so fields are taken from the end.
fn parse_csv(out: &str) -> Result<BenchResult> {
    let body = out.trim().trim_end_matches('"');
    let fields: Vec<&str> = body.rsplitn(8, "\",\"").collect();
    if fields.len() < 8 {
        bail!("too few fields");
    }
    // reversed: max, p99, p95, p50, min, avg, rps, title
    let num = |i: usize| -> Result<f64> { Ok(fields[i].trim().parse::<f64>()?) };
    Ok(BenchResult {
        rps: num(6)?,
        p50_ms: num(3)?,
        p99_ms: num(1)?,
    })
}

/// Command for the plain script through redis-benchmark: 3 random keys, a random number.
pub fn plain_args(sha: &str) -> Vec<String> {
    [
        "EVALSHA",
        sha,
        "3",
        "bq:{__rand_int__}:l",
        "bq:{__rand_int__}:z",
        "bq:{__rand_int__}:h",
        "__rand_int__",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub fn add_args(sha: &str) -> Vec<String> {
    ["EVALSHA", sha, "0", "__rand_int__", "__rand_int__"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_with_odd_title() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"EVALSHA a,\"b\" \n x\",\"51234.50\",\"0.600\",\"0.100\",\"0.583\",\"0.900\",\"1.200\",\"3.000\"\n";
        let r = parse_csv(out).unwrap();
        assert_eq!(r.rps, 51234.5);
        assert_eq!(r.p50_ms, 0.583);
        assert_eq!(r.p99_ms, 1.2);
    }
}
