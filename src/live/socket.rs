//! What the rest of the instance knows of one WebSocket: its id, the live sessions it bound,
//! and an outbox of pushes that its connection task writes out.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::store::Binding;

/// Pushes queued for one socket beyond this are refused (the messages go back to pending).
const OUTBOX_LIMIT: usize = 4096;

/// A `messagesReceived` frame and what is needed to put its messages back if it is never sent.
pub struct Push {
    pub connection_id: String,
    pub binding: Binding,
    /// Message ids and the visibility deadlines they were given.
    pub messages: Vec<(String, i64)>,
    pub frame: String,
}

pub struct SocketState {
    pub id: u64,
    subscribed: AtomicBool,
    /// connectionId -> sessionId of the live sessions bound to this socket.
    sessions: Mutex<HashMap<String, String>>,
    outbox: Mutex<Outbox>,
    wake: Notify,
}

#[derive(Default)]
struct Outbox {
    pushes: VecDeque<Push>,
    closed: bool,
}

impl SocketState {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            subscribed: AtomicBool::new(false),
            sessions: Mutex::default(),
            outbox: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// `rpc.on` / `rpc.off`; returns false when nothing changed.
    pub fn set_subscribed(&self, subscribed: bool) -> bool {
        self.subscribed.swap(subscribed, Ordering::Relaxed) != subscribed
    }

    /// Returns true when the connection was not bound to this socket before.
    pub fn add_session(&self, connection_id: &str, session_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(connection_id.to_owned(), session_id.to_owned())
            .is_none()
    }

    pub fn remove_session(&self, connection_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .remove(connection_id)
            .is_some()
    }

    pub fn sessions(&self) -> Vec<(String, String)> {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions
            .iter()
            .map(|(c, s)| (c.clone(), s.clone()))
            .collect()
    }

    /// Queues a push for the connection task; gives it back if the socket is closed or full.
    pub fn push(&self, push: Push) -> Result<(), Push> {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        if outbox.closed || outbox.pushes.len() >= OUTBOX_LIMIT {
            return Err(push);
        }
        outbox.pushes.push_back(push);
        drop(outbox);
        self.wake.notify_one();
        Ok(())
    }

    /// Resolves when pushes may be waiting.
    pub async fn pushes_waiting(&self) {
        self.wake.notified().await
    }

    pub fn take_pushes(&self) -> VecDeque<Push> {
        std::mem::take(&mut self.outbox.lock().expect("outbox lock").pushes)
    }

    /// Refuses further pushes and returns the ones never written.
    pub fn close(&self) -> VecDeque<Push> {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        outbox.closed = true;
        std::mem::take(&mut outbox.pushes)
    }
}
