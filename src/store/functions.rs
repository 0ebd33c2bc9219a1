//! The Redis function library: every multi-step operation is one function, called with FCALL.
//! This table names each function and the keys it takes, in order; the Lua side gets them by
//! name (`Q.msg`, `Q.pending`, ...) from a wrapper generated from the same table, so the key
//! layout is written once. The library is loaded at start (`FUNCTION LOAD REPLACE`) and again
//! whenever Redis reports it missing (a restart without persistence, a failover, a new node).
//!
//! Its name carries a hash of its source (`mpr_<hash>`, functions `<name>_<hash>`), so instances
//! of two versions sharing one Redis during a rolling upgrade each call their own.
//!
//! Every call is fenced: its first argument is a deadline (ms since the epoch: the caller's
//! clock plus the time it waits for the reply), and the wrapper does nothing when Redis's clock
//! (`TIME`) has passed it, answering `DEADLINE`. A call whose reply the caller gave up on can
//! then only have taken effect before the deadline, never later (a frozen Redis resuming, a
//! retry of the cluster client). The bodies see ARGV without it.

use std::sync::{LazyLock, OnceLock};

use sha2::{Digest, Sha256};

use super::keys::Keys;

/// What a function's keys belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One connection: its keys share the hash tag `{<connectionId>}` (one cluster slot).
    Connection,
    /// The instances' heartbeat set and their liveness timeouts.
    Instances,
    /// One shard of the deadline index.
    Deadlines,
    /// One SocketDock socket: its keys share the hash tag `{<socket id>}`.
    Socket,
}

pub struct Function {
    pub name: &'static str,
    pub scope: Scope,
    /// The keys, by name, in the order of KEYS (see `keys.rs`).
    pub keys: &'static [&'static str],
    /// Per-recipient-DID keys, by name, declared after `keys` for each DID the call names.
    pub did_keys: &'static [&'static str],
    /// The body sees its keys as locals `k_<name>` (and their number as `fixed_keys`) instead of
    /// the table `Q` the shared helpers take: building the table costs about a microsecond,
    /// which the hot path does not pay.
    locals: bool,
    body: &'static str,
    /// `<name>_<library version>`, made once.
    fcall: OnceLock<String>,
}

const CONNECTION: Scope = Scope::Connection;

macro_rules! function {
    ($static:ident, $name:literal, $scope:expr, $keys:expr, $did_keys:expr) => {
        function!($static, $name, $scope, $keys, $did_keys, false);
    };
    ($static:ident, $name:literal, $scope:expr, $keys:expr, $did_keys:expr, $locals:expr) => {
        pub static $static: Function = Function {
            name: $name,
            scope: $scope,
            keys: $keys,
            did_keys: $did_keys,
            locals: $locals,
            body: include_str!(concat!("functions/", $name, ".lua")),
            fcall: OnceLock::new(),
        };
    };
}

/// The keys of every function that deletes messages (and may empty the queue).
const DELETING: &[&str] = &[
    "msg", "pending", "cold", "inflight", "trash", "seq", "conn", "pushed", "removed",
];
/// The keys of a SocketDock delivery loop's step: it deletes, and holds the relay lease.
const RELAYING: &[&str] = &[
    "msg", "pending", "cold", "inflight", "trash", "seq", "conn", "pushed", "removed", "relay",
];
/// The keys of every function that moves messages in or out of flight to a live session.
const REDELIVERING: &[&str] = &[
    "msg", "pending", "cold", "inflight", "conn", "pushed", "relay",
];

#[rustfmt::skip]
mod table {
    use super::*;
    function!(ADD_MESSAGE, "add_message", CONNECTION, &["msg", "seq", "conn", "pending", "inflight", "pushed", "cold", "relay"], &["pending", "inflight"], true);
    function!(SETTLE_ADD, "settle_add", CONNECTION, &["msg", "removed", "conn"], &[]);
    function!(TAKE_FROM_QUEUE, "take_from_queue", CONNECTION, DELETING, &["pending", "cold", "inflight"]);
    function!(COUNT_PENDING, "count_pending", CONNECTION, &["msg", "pending", "cold", "inflight", "pushed"], &["pending", "cold"]);
    function!(QUEUE_STATUS, "queue_status", CONNECTION, &["msg", "pending", "cold", "inflight", "pushed", "conn"], &["pending", "cold"]);
    function!(REMOVE_MESSAGES, "remove_messages", CONNECTION, DELETING, &[]);
    function!(REMOVE_ALL_MESSAGES, "remove_all_messages", CONNECTION, DELETING, &["pending", "cold", "inflight"]);
    function!(SETTLE_COLD, "settle_cold", CONNECTION, DELETING, &[]);
    function!(RELEASE, "release", CONNECTION, REDELIVERING, &[]);
    function!(BIND, "bind", CONNECTION, REDELIVERING, &[]);
    function!(UNBIND, "unbind", CONNECTION, REDELIVERING, &[]);
    function!(REDELIVER, "redeliver", CONNECTION, REDELIVERING, &[]);
    function!(RESTORE_BINDING, "restore_binding", CONNECTION, &["conn"], &[]);
    function!(STALE_HEAD, "stale_head", CONNECTION, &["msg", "pending", "cold", "inflight", "pushed", "moving"], &[]);
    function!(TO_COLD, "to_cold", CONNECTION, &["msg", "pending", "cold", "mover", "moving"], &[]);
    function!(EXPIRE, "expire", CONNECTION, DELETING, &[]);
    function!(NEXT_VISIT, "next_visit", CONNECTION, &["msg", "pending", "cold", "inflight", "trash", "conn"], &[]);
    function!(IMPORT, "import", CONNECTION, &["msg", "pending", "cold", "conn", "imported"], &[]);
    function!(RELEASE_LEASE, "release_lease", CONNECTION, &["mover"], &[]);
    function!(HEARTBEAT, "heartbeat", Scope::Instances, &["instances", "timeouts"], &[]);
    function!(INSTANCE_ALIVE, "instance_alive", Scope::Instances, &["instances", "timeouts"], &[]);
    function!(CLAIM_DUE, "claim_due", Scope::Deadlines, &["deadlines"], &[]);
    function!(RESCHEDULE, "reschedule", Scope::Deadlines, &["deadlines"], &[]);
    function!(RELAY_NEXT, "relay_next", CONNECTION, RELAYING, &[]);
    function!(SOCKET_RECORD, "socket_record", Scope::Socket, &["socket", "bound"], &[]);
    function!(SOCKET_ATTACH, "socket_attach", Scope::Socket, &["socket", "bound"], &[]);
    function!(SOCKET_FORGET, "socket_forget", Scope::Socket, &["socket", "bound"], &[]);
}
pub use table::*;

/// Every function of the library.
pub static FUNCTIONS: [&Function; 27] = [
    &ADD_MESSAGE,
    &SETTLE_ADD,
    &TAKE_FROM_QUEUE,
    &COUNT_PENDING,
    &QUEUE_STATUS,
    &REMOVE_MESSAGES,
    &REMOVE_ALL_MESSAGES,
    &SETTLE_COLD,
    &RELEASE,
    &BIND,
    &UNBIND,
    &REDELIVER,
    &RESTORE_BINDING,
    &STALE_HEAD,
    &TO_COLD,
    &EXPIRE,
    &NEXT_VISIT,
    &IMPORT,
    &RELEASE_LEASE,
    &HEARTBEAT,
    &INSTANCE_ALIVE,
    &CLAIM_DUE,
    &RESCHEDULE,
    &RELAY_NEXT,
    &SOCKET_RECORD,
    &SOCKET_ATTACH,
    &SOCKET_FORGET,
];

const HELPERS: &str = include_str!("functions/lib.lua");

/// The library's source and its version (a hash of what it is made of).
pub struct Library {
    pub version: String,
    pub source: String,
}

pub static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    hash.update(HELPERS);
    for function in FUNCTIONS {
        hash.update(function.name);
        hash.update(function.keys.join(","));
        hash.update(function.body);
    }
    let version: String = hash.finalize()[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let mut source = format!("#!lua name=mpr_{version}\n{HELPERS}\n");
    for function in FUNCTIONS {
        source.push_str(&function.wrapper(&version));
    }
    Library { version, source }
});

impl Function {
    /// The name FCALL takes.
    pub fn fcall_name(&self) -> &str {
        self.fcall
            .get_or_init(|| format!("{}_{}", self.name, LIBRARY.version))
    }

    /// What follows `FCALL`: the function's name, the number of keys, the keys, then the
    /// fence (`deadline_ms`, ms since the epoch); the function's own arguments follow.
    pub fn args(&self, keys: Vec<String>, deadline_ms: u64) -> Vec<String> {
        let mut args = Vec::with_capacity(keys.len() + 3);
        args.push(self.fcall_name().to_owned());
        args.push(keys.len().to_string());
        args.extend(keys);
        args.push(deadline_ms.to_string());
        args
    }

    /// [`Function::args`] of a call on one connection: its keys, then those of each recipient
    /// DID the call names.
    pub fn call_args(
        &self,
        keys: &Keys,
        connection_id: &str,
        dids: &[&str],
        deadline_ms: u64,
    ) -> Vec<String> {
        debug_assert_eq!(self.scope, Scope::Connection);
        let connection = keys.connection(connection_id);
        let mut all = Vec::with_capacity(self.keys.len() + dids.len() * self.did_keys.len());
        all.extend(self.keys.iter().map(|name| connection.key(name)));
        for did in dids {
            all.extend(
                self.did_keys
                    .iter()
                    .map(|name| connection.did_key(did, name)),
            );
        }
        self.args(all, deadline_ms)
    }

    /// `redis.register_function` of this function, its keys bound by name.
    fn wrapper(&self, version: &str) -> String {
        let bind = if self.locals {
            let names: Vec<String> = self.keys.iter().map(|key| format!("k_{key}")).collect();
            let values: Vec<String> = (1..=self.keys.len())
                .map(|i| format!("KEYS[{i}]"))
                .collect();
            format!(
                "  local {}, fixed_keys = {}, {}\n",
                names.join(", "),
                values.join(", "),
                self.keys.len()
            )
        } else {
            let fields: String = self
                .keys
                .iter()
                .enumerate()
                .map(|(i, key)| format!(", {key} = KEYS[{}]", i + 1))
                .collect();
            // The per-recipient keys share the connection's prefix: derived from the first key.
            let did_base = match self.scope {
                Scope::Connection => format!(
                    "  Q.did_base = string.sub(KEYS[1], 1, #KEYS[1] - {}) .. \"d:\"\n",
                    self.keys[0].len()
                ),
                Scope::Instances | Scope::Deadlines | Scope::Socket => String::new(),
            };
            format!("  local Q = {{trashed = {{}}{fields}}}\n{did_base}")
        };
        format!(
            "redis.register_function('{name}_{version}', function(KEYS, ARGV)\n  fence(ARGV)\n{bind}{body}end)\n",
            name = self.name,
            body = self.body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_a_function_takes_is_in_the_layout() {
        for function in FUNCTIONS {
            let known: &[&str] = match function.scope {
                Scope::Connection => &super::super::keys::CONNECTION_KEYS,
                Scope::Instances => &["instances", "timeouts"],
                Scope::Deadlines => &["deadlines"],
                Scope::Socket => &["socket", "bound"],
            };
            for key in function.keys.iter().chain(function.did_keys) {
                assert!(known.contains(key), "{}: unknown key {key}", function.name);
            }
            // Every key a body reads must be declared.
            let marker = if function.locals { "k_" } else { "Q." };
            for used in function.body.split(marker).skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    function.keys.contains(&name.as_str()) || name == "trashed",
                    "{}: uses {marker}{name} without declaring it",
                    function.name
                );
            }
        }
    }

    #[test]
    fn the_library_names_its_version() {
        assert!(LIBRARY.source.starts_with("#!lua name=mpr_"));
        assert_eq!(LIBRARY.version.len(), 12);
        assert!(ADD_MESSAGE.fcall_name().ends_with(&LIBRARY.version));
    }
}
