//! `ping` -> `"pong"`: a liveness check of the socket and this instance (not of Redis).

pub fn call() -> String {
    r#""pong""#.to_owned()
}
