//! The Redis "ceiling": the same Redis, on the same machine, running the server's own function
//! library (`mpr::store::functions`: the same source, names and keys) with the same payload,
//! driven by redis-benchmark (throughput) or by this tool's RESP client (latency).

use std::process::Command;

use anyhow::{Context, Result, bail};
use mpr::store::Keys;
use mpr::store::functions::{ADD_MESSAGE, Function, LIBRARY};

use crate::client::{DID, jwe_payload};
use crate::procs::run_tracked;
use crate::resp::{Resp, Val};

/// Visibility timeout the ceiling passes to the functions (the server's default).
pub const VISIBILITY_MS: u64 = 30_000;

/// Loads the server's function library, as the server does at start.
pub async fn load_library(r: &mut Resp) -> Result<()> {
    r.cmd(&["FUNCTION", "LOAD", "REPLACE", &LIBRARY.source])
        .await?
        .ok()?;
    Ok(())
}

/// How far ahead the fence of a direct call is: commands are built once and replayed for a
/// whole run (redis-benchmark), so the fence must outlast it; Redis checks it all the same.
const FENCE_AHEAD_MS: i64 = 3_600_000;

/// One FCALL of a function on a connection's keys (and those of `dids`), fenced, then `args`.
pub fn fcall(
    function: &Function,
    prefix: &str,
    connection_id: &str,
    dids: &[&str],
    args: &[String],
) -> Vec<String> {
    let mut cmd = vec!["FCALL".to_owned()];
    let fence = (unix_ms() + FENCE_AHEAD_MS) as u64;
    cmd.extend(function.call_args(&Keys::new(prefix), connection_id, dids, fence));
    cmd.extend(args.iter().cloned());
    cmd
}

/// The plain three-command script of the target (RPUSH, ZADD, HGET). KEYS: list, zset, hash.
/// ARGV: 1 a random number (score and member), 2 the payload.
pub const PLAIN_SCRIPT: &str = "redis.call('RPUSH', KEYS[1], ARGV[2])\n\
     redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])\n\
     return redis.call('HGET', KEYS[3], ARGV[1])";

/// Messages remove_all_messages deletes one by one per call (the server's `REMOVE_BATCH`).
pub const REMOVE_BATCH: &str = "2000";

/// This host's clock, ms since the Unix epoch (what the server stamps `receivedAt` with).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `2026-11-22T04:16:15.123Z` for a time in ms since the epoch, as the server writes
/// `receivedAt` (JavaScript's `Date.toISOString()`).
pub fn iso_millis(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// The record tail the server passes to add_message:
/// `<size>\t<received ms>\t<did>\n<QueuedMessage JSON>`.
pub fn record_tail(id: &str, received_ms: i64, payload: &str) -> String {
    format!(
        "{}\t{received_ms}\t{DID}\n{{\"id\":\"{id}\",\"receivedAt\":\"{}\",\"encryptedMessage\":{payload}}}",
        payload.len(),
        iso_millis(received_ms)
    )
}

/// One key of a connection, by its name in the server's layout.
pub fn queue_key(prefix: &str, connection_id: &str, name: &str) -> String {
    Keys::new(prefix).connection(connection_id).key(name)
}

/// The shard of the visit index holding a connection.
pub fn visits_key(prefix: &str, connection_id: &str) -> String {
    Keys::new(prefix).visits_of(connection_id)
}

/// ARGV of an add_message call for one message, as a server without a mover or a quota makes
/// it (visit marker lifetime 0, no quotas): the record tail last.
fn add_argv(id: &str, tail: String) -> Vec<String> {
    vec![
        id.to_owned(),
        unix_ms().to_string(),
        VISIBILITY_MS.to_string(),
        "0".to_owned(),
        "0".to_owned(),
        "0".to_owned(),
        // No relay lease token, no raw window: the server's add without SocketDock.
        String::new(),
        "0".to_owned(),
        DID.to_owned(),
        tail,
    ]
}

/// An add_message call for one connection with a unique id.
pub fn add_call(
    prefix: &str,
    connection_id: &str,
    (id, received_ms): (&str, i64),
    payload: &str,
) -> Vec<String> {
    let tail = record_tail(id, received_ms, payload);
    fcall(
        &ADD_MESSAGE,
        prefix,
        connection_id,
        &[DID],
        &add_argv(id, tail),
    )
}

/// Ids and receive times of messages written directly with the server's add function: ids count
/// up (24 hex digits); receive times follow this host's clock set back by `age_ms`, and
/// strictly increase, so that arrival order and `receivedAt` order agree.
pub struct Ids {
    next: u64,
    last_ms: i64,
    age_ms: i64,
}

impl Ids {
    pub fn new(age_ms: i64) -> Self {
        Self {
            next: 0,
            last_ms: 0,
            age_ms,
        }
    }

    pub fn next(&mut self) -> (String, i64) {
        self.next += 1;
        self.last_ms = (unix_ms() - self.age_ms).max(self.last_ms + 1);
        (format!("{:024x}", self.next), self.last_ms)
    }
}

/// Fills a queue directly with the server's add function, pipelined.
pub async fn fill(
    redis: &mut Resp,
    prefix: &str,
    connection_id: &str,
    count: usize,
    ids: &mut Ids,
) -> Result<()> {
    let payload = jwe_payload(None);
    let mut left = count;
    while left > 0 {
        let batch = left.min(500);
        let cmds: Vec<Vec<String>> = (0..batch)
            .map(|_| {
                let (id, received) = ids.next();
                add_call(prefix, connection_id, (&id, received), &payload)
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

/// Message ids of take_from_queue's reply `{deadline, {id, body, id, body, ...}}`.
pub fn taken_ids(reply: &Val) -> Vec<String> {
    reply
        .items()
        .get(1)
        .map(Val::items)
        .unwrap_or_default()
        .iter()
        .step_by(2)
        .map(Val::text)
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

/// Command for the server's add function through redis-benchmark, the record tail read from
/// stdin (-x). redis-benchmark draws each `__rand_int__` on its own, so each key is of a
/// random connection among `-r` (the cost of a call does not depend on which) and the id is
/// four draws: unique enough over a run never to hit the duplicate-id error, which stops it.
pub fn add_args() -> Vec<String> {
    let random = "c__rand_int__";
    let id = "__rand_int__".repeat(4);
    let mut argv = add_argv(&id, String::new());
    argv.pop(); // the tail comes from stdin
    fcall(&ADD_MESSAGE, "ceil", random, &[DID], &argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_received_at_as_the_server_does() {
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_add_ceiling_calls_the_servers_function_with_its_keys() {
        let cmd = add_args();
        assert_eq!(cmd[0], "FCALL");
        assert_eq!(cmd[1], ADD_MESSAGE.fcall_name());
        assert!(cmd.iter().any(|part| part == "ceil:{c__rand_int__}:msg"));
        assert_eq!(cmd.last().map(String::as_str), Some(DID));
    }

    #[test]
    fn parses_csv_with_odd_title() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"EVALSHA a,\"b\" \n x\",\"51234.50\",\"0.600\",\"0.100\",\"0.583\",\"0.900\",\"1.200\",\"3.000\"\n";
        let r = parse_csv(out).unwrap();
        assert_eq!(r.rps, 51234.5);
        assert_eq!(r.p50_ms, 0.583);
        assert_eq!(r.p99_ms, 1.2);
    }
}
