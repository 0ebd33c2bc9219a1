//! Requests to run a connection's SocketDock delivery loop ("kicks"): made wherever a relay-bound
//! connection gets work (an add, a bind, a re-delivery step), served by the SocketDock adapter,
//! which tries the connection's relay lease. Pending kicks are kept once per connection, so a
//! burst of adds costs one lease attempt, and the set is bounded by the connections with work.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Kicks {
    /// Off until the adapter serves them (without MEDIATOR_URL nothing would).
    served: AtomicBool,
    pending: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Kicks {
    pub fn kick(&self, connection_id: &str) {
        if !self.served.load(Ordering::Relaxed) {
            return;
        }
        let added = self
            .pending
            .lock()
            .expect("kicks lock")
            .insert(connection_id.to_owned());
        if added {
            self.wake.notify_one();
        }
    }

    /// Serves kicks from now on.
    pub fn serve(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    /// The connections kicked since the last call, waiting for one if there is none.
    pub async fn next(&self) -> Vec<String> {
        loop {
            let kicked: Vec<String> = self.pending.lock().expect("kicks lock").drain().collect();
            if !kicked.is_empty() {
                return kicked;
            }
            self.wake.notified().await;
        }
    }
}
