//! The sockets of this instance that hold live sessions, by id, and how many sessions they hold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::peer::LocalSocket;
use crate::telemetry;

#[derive(Default)]
pub struct Registry {
    next_socket: AtomicU64,
    /// Sockets that have bound at least one session (others are not listed: an idle socket
    /// costs no entry).
    sockets: RwLock<HashMap<u64, Arc<LocalSocket>>>,
    session_count: AtomicI64,
}

impl Registry {
    pub fn new_socket(&self) -> Arc<LocalSocket> {
        Arc::new(LocalSocket::new(
            self.next_socket.fetch_add(1, Ordering::Relaxed) + 1,
        ))
    }

    pub fn insert(&self, socket: &Arc<LocalSocket>) {
        self.sockets
            .write()
            .expect("sockets lock")
            .insert(socket.id, socket.clone());
    }

    pub fn remove(&self, socket: u64) {
        self.sockets.write().expect("sockets lock").remove(&socket);
    }

    pub fn get(&self, socket: u64) -> Option<Arc<LocalSocket>> {
        self.sockets
            .read()
            .expect("sockets lock")
            .get(&socket)
            .cloned()
    }

    pub fn contains(&self, socket: u64) -> bool {
        self.sockets
            .read()
            .expect("sockets lock")
            .contains_key(&socket)
    }

    pub fn all(&self) -> Vec<Arc<LocalSocket>> {
        let sockets = self.sockets.read().expect("sockets lock");
        sockets.values().cloned().collect()
    }

    pub fn count_sessions(&self, change: i64) {
        let now = self.session_count.fetch_add(change, Ordering::Relaxed) + change;
        metrics::gauge!(telemetry::LIVE_SESSIONS).set(now as f64);
    }
}
