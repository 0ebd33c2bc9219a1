//! Requests to run a connection's SocketDock delivery loop ("kicks"): made wherever a relay-bound
//! connection gets work (an add, a bind, a re-delivery step), served by the SocketDock adapter,
//! which tries the connection's relay lease. Pending kicks are kept once per connection, so a
//! burst of adds costs one lease attempt, and the set is bounded by the connections with work.
//! An add may also take the lease itself, with a claim made here, and hand its message out: its
//! kick then carries that message, which the loop sends first (one per lease held, so these
//! too are bounded by the connections).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{HandOut, LeaseClaim};

/// A delivery loop to run.
pub enum Kick {
    /// Its first step takes the connection's lease, unless another loop holds it.
    Connection(String),
    /// The connection's add handed a message out under a lease it took with `token`: the loop
    /// holds that lease and sends the message first.
    HandedOut {
        connection_id: String,
        token: String,
        hand_out: HandOut,
    },
}

pub struct Kicks {
    /// This instance, in the lease tokens.
    instance: String,
    /// Set once the adapter serves kicks (without MEDIATOR_URL nothing would): how long a raw
    /// frame may be in flight, the lease an add claims lasting as long.
    served: OnceLock<Duration>,
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    connections: HashSet<String>,
    handed_out: Vec<Kick>,
}

impl Kicks {
    pub fn new(instance: String) -> Self {
        Self {
            instance,
            served: OnceLock::new(),
            pending: Mutex::default(),
            wake: Notify::new(),
        }
    }

    pub fn kick(&self, connection_id: &str) {
        if self.served.get().is_none() {
            return;
        }
        let added = self
            .pending
            .lock()
            .expect("kicks lock")
            .connections
            .insert(connection_id.to_owned());
        if added {
            self.wake.notify_one();
        }
    }

    /// A lease for an add to take, when kicks are served.
    pub fn claim(&self) -> Option<LeaseClaim> {
        self.served.get().map(|&raw_window| LeaseClaim {
            token: self.lease_token(),
            raw_window,
        })
    }

    /// A lease token of this instance, unique to the loop that takes it.
    pub fn lease_token(&self) -> String {
        format!("{}:{:016x}", self.instance, rand::random::<u64>())
    }

    /// Runs a loop for a message an add handed out under `claim`.
    pub fn handed_out(&self, connection_id: &str, claim: LeaseClaim, hand_out: HandOut) {
        self.pending
            .lock()
            .expect("kicks lock")
            .handed_out
            .push(Kick::HandedOut {
                connection_id: connection_id.to_owned(),
                token: claim.token,
                hand_out,
            });
        self.wake.notify_one();
    }

    /// Serves kicks from now on; adds may claim leases for raw frames in flight `raw_window`.
    pub fn serve(&self, raw_window: Duration) {
        let _ = self.served.set(raw_window);
    }

    /// The loops to run since the last call, waiting for one if there is none.
    pub async fn next(&self) -> Vec<Kick> {
        loop {
            {
                let mut pending = self.pending.lock().expect("kicks lock");
                let mut kicks = std::mem::take(&mut pending.handed_out);
                kicks.extend(pending.connections.drain().map(Kick::Connection));
                if !kicks.is_empty() {
                    return kicks;
                }
            }
            self.wake.notified().await;
        }
    }
}
