//! Bad settings stop the server at start with a message naming the setting.

mod support;

use std::process::Command;

fn start_with(env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mpr"))
        .env_clear()
        .env("WS_PORT", "0")
        .env("APP_PORT", "0")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .envs(env.iter().copied())
        .output()
        .expect("mpr binary");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_values_are_refused_by_name() {
    let cases = [
        ("WS_PORT", "abc"),
        ("APP_PORT", "70000"),
        ("REDIS_TYPE", "sentinels"),
        ("VISIBILITY_TIMEOUT_MS", "0"),
        ("LIVENESS_TIMEOUT_MS", "-5"),
        ("MAX_TAKE_MESSAGES", "many"),
        ("REDIS_PREFIX", "a{b}"),
        ("LOG_FORMAT", "xml"),
        ("BIND_ADDRESS", "localhost:80"),
        ("WORKER_THREADS", "0"),
        ("THRESHOLD_TIMESTAMP", "10"),
        ("MESSAGE_TTL", "0"),
        ("MONGODB_TIMEOUT_MS", "forever"),
        ("MOVER_BATCH_SIZE", "0"),
        ("MOVER_MAX_RATE", "-1"),
        ("WS_PING_INTERVAL_MS", "0"),
        ("WS_PING_MISSES", "0"),
        ("WS_HANDSHAKE_TIMEOUT_MS", "soon"),
        ("HTTP_HEADER_READ_TIMEOUT_MS", "0"),
        ("MAX_SOCKETS", "0"),
        ("WS_WRITE_TIMEOUT_MS", "-1"),
        ("WS_OUTBOX_MAX_BYTES", "10"),
    ];
    for (name, value) in cases {
        let (code, stderr) = start_with(&[(name, value)]);
        assert_eq!(code, 2, "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}

#[test]
fn settings_that_cannot_run_are_refused_with_a_reason() {
    let (code, stderr) = start_with(&[("REDIS_TYPE", "cluster")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("REDIS_NODES"), "{stderr}");
    let (code, stderr) = start_with(&[("REDIS_TYPE", "sentinel")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("REDIS_SENTINELS"), "{stderr}");
    let sentinels = ("REDIS_SENTINELS", "127.0.0.1:26379,127.0.0.1:26380");
    let (code, stderr) = start_with(&[("REDIS_TYPE", "sentinel"), sentinels]);
    assert_eq!(code, 2);
    assert!(stderr.contains("REDIS_SENTINEL_MASTER"), "{stderr}");
    let bad = ("REDIS_SENTINELS", "http://127.0.0.1:26379");
    let (code, stderr) = start_with(&[
        ("REDIS_TYPE", "sentinel"),
        bad,
        ("REDIS_SENTINEL_MASTER", "m"),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("REDIS_SENTINELS entry \"http://127.0.0.1:26379\""),
        "{stderr}"
    );
    let (code, stderr) = start_with(&[("REDIS_NATMAP", "10.0.0.1:7000:redis-1")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("REDIS_NATMAP"), "{stderr}");
    let (code, stderr) = start_with(&[("REDIS_URL", "http://127.0.0.1:6379")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    let (code, stderr) = start_with(&[("MONGODB_URI", "postgres://127.0.0.1/x")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("MONGODB_URI"), "{stderr}");
    // 100 x 4 messages at 10/s is a 40 s wait, past half the 30 s lease.
    let (code, stderr) = start_with(&[("MOVER_MAX_RATE", "10")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("MOVER_MAX_RATE=10"), "{stderr}");
}

#[test]
fn flags_work_like_the_variables() {
    let output = Command::new(env!("CARGO_BIN_EXE_mpr"))
        .env_clear()
        .args(["--ws-port", "nope"])
        .output()
        .expect("mpr binary");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--ws-port"));
}

/// A Redis that answers like Redis 6.2 (no functions): every command gets `+OK`, INFO its
/// version. Redis 6 cannot be installed here; this speaks the protocol's framing for real.
fn old_redis() -> u16 {
    fake_redis("6.2.14", 0)
}

/// A Redis `version` whose clock (`TIME`) is `ahead_ms` ahead of ours; every other command gets
/// `+OK`, INFO its version.
fn fake_redis(version: &'static str, ahead_ms: i64) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let count: usize = line.trim_start_matches('*').trim().parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..count {
                        let (mut size, mut arg) = (String::new(), String::new());
                        reader.read_line(&mut size).unwrap();
                        reader.read_line(&mut arg).unwrap();
                        args.push(arg.trim_end().to_ascii_uppercase());
                    }
                    let reply = if args.first().map(String::as_str) == Some("INFO") {
                        let info = format!("# Server\r\nredis_version:{version}\r\n");
                        format!("${}\r\n{info}\r\n", info.len())
                    } else if args.first().map(String::as_str) == Some("TIME") {
                        let micros = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_micros() as i64
                            + ahead_ms * 1000;
                        let (seconds, micros) = (
                            (micros / 1_000_000).to_string(),
                            (micros % 1_000_000).to_string(),
                        );
                        format!(
                            "*2\r\n${}\r\n{seconds}\r\n${}\r\n{micros}\r\n",
                            seconds.len(),
                            micros.len()
                        )
                    } else {
                        "+OK\r\n".to_owned()
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

#[test]
fn a_redis_without_functions_is_refused_naming_its_version() {
    let url = format!("redis://127.0.0.1:{}", old_redis());
    // A server that accepted the old Redis would run on: it must exit by itself, and soon.
    let env = [("REDIS_URL".to_owned(), url)];
    let (code, said) = support::run_until_exit(&env, std::time::Duration::from_secs(20));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("Redis 6.2.14 cannot run mpr"), "{said}");
    assert!(said.contains("7.0 or later"), "{said}");
    // Not a terminal: no colour codes in the log.
    assert!(
        !said.contains('\x1b'),
        "escape sequences in a piped log: {said:?}"
    );
}

/// Fenced writes need the clocks close: a Redis whose clock is 10 s ahead is refused at start,
/// naming the offset and the bound.
#[test]
fn a_redis_whose_clock_is_far_off_is_refused() {
    let url = format!("redis://127.0.0.1:{}", fake_redis("7.2.4", 10_000));
    let env = [("REDIS_URL".to_owned(), url)];
    let (code, said) = support::run_until_exit(&env, std::time::Duration::from_secs(20));
    assert_eq!(code, Some(1), "{said}");
    let offset_ms: u64 = said
        .split("Redis's clock is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the offset named: {said}"));
    assert!((9_000..11_000).contains(&offset_ms), "{said}");
    assert!(said.contains("ahead of this server's"), "{said}");
    assert!(said.contains("within 100 ms"), "{said}");
}

/// On a terminal the log is coloured (`script` runs the server on a pseudo-terminal).
#[test]
fn logs_are_coloured_on_a_terminal_only() {
    let url = format!("redis://127.0.0.1:{}", old_redis());
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(env!("CARGO_BIN_EXE_mpr"))
        .arg("/dev/null")
        .env("REDIS_URL", url)
        .env("WS_PORT", "0")
        .env("APP_PORT", "0")
        .env("BIND_ADDRESS", "127.0.0.1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux)");
    let said = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("cannot run mpr"), "{said}");
    assert!(
        said.contains("\x1b["),
        "no colour codes on a terminal: {said:?}"
    );
}
