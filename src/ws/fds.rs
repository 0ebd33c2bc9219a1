//! The file-descriptor budget of WS_PORT. At start the soft open-file limit is raised to the hard
//! one; WebSockets, open or in their upgrade, may then use all of it but [`RESERVED_FDS`], kept
//! for everything else (Redis and MongoDB connections, APP_PORT, pushes, logs), so that `/health`
//! answers and calls reach Redis however many sockets come.

/// Descriptors kept for what is not a WebSocket.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft open-file limit to the hard one and returns what WebSockets may use.
pub fn socket_budget() -> Result<u64, String> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|error| format!("cannot read the open-file limit (RLIMIT_NOFILE): {error}"))?;
    if limit <= RESERVED_FDS * 2 {
        return Err(format!(
            "the open-file limit (RLIMIT_NOFILE) is {limit}: too few for WebSockets beside the \
             {RESERVED_FDS} kept for Redis, MongoDB and APP_PORT; raise it (ulimit -n)"
        ));
    }
    Ok(limit - RESERVED_FDS)
}

/// `configured`, or the budget when it does not fit, with a warning naming the setting and the
/// limit.
pub fn fit(setting: &str, configured: u64, budget: u64) -> u64 {
    if configured <= budget {
        return configured;
    }
    tracing::warn!(
        "{setting}={configured} does not fit the open-file limit (RLIMIT_NOFILE, {} with {RESERVED_FDS} \
         kept for other connections): using {budget}",
        budget + RESERVED_FDS
    );
    budget
}
