//! Bad settings stop the server at start with a message naming the setting.

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
        ("REDIS_TYPE", "sentinel"),
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
    assert!(stderr.contains("REDIS_TYPE=cluster"), "{stderr}");
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
