//! Connections to WS_PORT still in their upgrade (TCP accepted, TLS and WebSocket handshakes not
//! done), oldest first. Each holds a file descriptor; a client that opens many and completes
//! none could take every descriptor the process has. When there is no room for a new one, the
//! oldest is shed: a legitimate client completes its upgrade in milliseconds, so it is never the
//! oldest for long, while the connections of a client that holds them open are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::telemetry;

#[derive(Default)]
pub struct HalfOpen {
    /// By arrival: the token that ends each connection's upgrade.
    waiting: Mutex<BTreeMap<u64, CancellationToken>>,
    next: std::sync::atomic::AtomicU64,
}

/// One connection's place among the half-open ones, left when dropped (upgrade done or failed).
pub struct Upgrading {
    half_open: Arc<HalfOpen>,
    arrival: u64,
    /// Cancelled when the connection is shed.
    pub shed: CancellationToken,
}

impl HalfOpen {
    pub fn len(&self) -> usize {
        self.waiting.lock().expect("half-open lock").len()
    }

    /// Registers a new connection.
    pub fn enter(self: &Arc<Self>) -> Upgrading {
        let arrival = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shed = CancellationToken::new();
        self.waiting
            .lock()
            .expect("half-open lock")
            .insert(arrival, shed.clone());
        Upgrading {
            half_open: self.clone(),
            arrival,
            shed,
        }
    }

    /// Ends the upgrade of the oldest connection; false when there is none.
    pub fn shed_oldest(&self) -> bool {
        let oldest = self.waiting.lock().expect("half-open lock").pop_first();
        let Some((_, shed)) = oldest else {
            return false;
        };
        shed.cancel();
        metrics::counter!(telemetry::SOCKETS_DROPPED, "reason" => "handshake_shed").increment(1);
        true
    }
}

impl Drop for Upgrading {
    fn drop(&mut self) {
        self.half_open
            .waiting
            .lock()
            .expect("half-open lock")
            .remove(&self.arrival);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_shed_first_and_a_finished_upgrade_leaves() {
        let half_open = Arc::new(HalfOpen::default());
        let first = half_open.enter();
        let second = half_open.enter();
        let third = half_open.enter();
        drop(second);
        assert_eq!(half_open.len(), 2);
        assert!(half_open.shed_oldest());
        assert!(first.shed.is_cancelled());
        assert!(!third.shed.is_cancelled());
        assert!(half_open.shed_oldest());
        assert!(third.shed.is_cancelled());
        assert!(!half_open.shed_oldest());
    }
}
