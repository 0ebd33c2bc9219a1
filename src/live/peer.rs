//! Peers: whatever a live session's messages are handed to. Today a WebSocket of this instance
//! (its outbox, written by its connection task) or another instance (its event stream); every
//! kind of peer takes the same [`Delivery`], and the frame a client sees is built where the
//! delivery is written out (the RPC layer builds `messagesReceived`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::store::Bound;

/// Messages put in flight to a live session.
pub struct Delivery {
    pub connection_id: String,
    /// The binding it was made under: what a release names.
    pub bound: Bound,
    pub messages: Vec<DeliveredMessage>,
}

pub struct DeliveredMessage {
    pub id: String,
    /// The visibility deadline the delivery set (Redis clock, ms).
    pub deadline: i64,
    /// The QueuedMessage JSON.
    pub body: String,
}

impl Delivery {
    /// What it holds of a socket's outbox: the bytes of its messages.
    pub fn bytes(&self) -> usize {
        self.messages
            .iter()
            .map(|message| message.id.len() + message.body.len())
            .sum()
    }

    /// Message ids with the deadlines they were given, as a release takes them.
    pub fn in_flight(&self) -> Vec<(String, i64)> {
        self.messages
            .iter()
            .map(|message| (message.id.clone(), message.deadline))
            .collect()
    }
}

/// What a peer did with a delivery.
pub enum Offer {
    Accepted,
    /// Not taken (closed, full): the messages go back to pending.
    Refused(Delivery, &'static str),
}

/// Something a live session's messages are handed to.
pub trait Peer {
    fn offer(&self, delivery: Delivery) -> impl Future<Output = Offer> + Send;
}

/// Deliveries queued for one socket beyond this are refused (the messages go back to pending).
const OUTBOX_LIMIT: usize = 4096;

/// What the rest of the instance knows of one WebSocket: its id, the live sessions it bound,
/// and the outbox its connection task writes out.
pub struct LocalSocket {
    pub id: u64,
    subscribed: AtomicBool,
    /// connectionId -> sessionId of the live sessions bound to this socket.
    sessions: Mutex<HashMap<String, String>>,
    outbox: Mutex<Outbox>,
    wake: Notify,
}

#[derive(Default)]
struct Outbox {
    deliveries: VecDeque<Delivery>,
    /// Bytes of the deliveries accepted and not yet written: queued here or being written.
    bytes: usize,
    max_bytes: usize,
    closed: bool,
    /// Closed because a delivery would have taken `bytes` past `max_bytes`: the socket does
    /// not keep up, its connection task closes it.
    overflowed: bool,
}

impl LocalSocket {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            subscribed: AtomicBool::new(false),
            sessions: Mutex::default(),
            outbox: Mutex::new(Outbox {
                max_bytes: usize::MAX,
                ..Outbox::default()
            }),
            wake: Notify::new(),
        }
    }

    /// Bounds the bytes the outbox may hold (set by the connection task before any binding).
    pub fn bound_outbox(&self, max_bytes: usize) {
        self.outbox.lock().expect("outbox lock").max_bytes = max_bytes;
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

    /// Resolves when deliveries may be waiting.
    pub async fn deliveries_waiting(&self) {
        self.wake.notified().await
    }

    /// The deliveries to write; each counts against the outbox's bound until `written`.
    pub fn take_deliveries(&self) -> VecDeque<Delivery> {
        std::mem::take(&mut self.outbox.lock().expect("outbox lock").deliveries)
    }

    pub fn written(&self, delivery: &Delivery) {
        self.outbox.lock().expect("outbox lock").bytes -= delivery.bytes();
    }

    pub fn overflowed(&self) -> bool {
        self.outbox.lock().expect("outbox lock").overflowed
    }

    /// Resolves when the outbox overflows. It takes the wake-ups of new deliveries meanwhile:
    /// whoever waits on it must look at the outbox again before waiting for deliveries.
    pub async fn outbox_overflow(&self) {
        while !self.overflowed() {
            self.wake.notified().await;
        }
    }

    /// Refuses further deliveries and returns the ones never written.
    pub fn close(&self) -> VecDeque<Delivery> {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        outbox.closed = true;
        std::mem::take(&mut outbox.deliveries)
    }
}

impl Peer for LocalSocket {
    async fn offer(&self, delivery: Delivery) -> Offer {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        if outbox.closed || outbox.deliveries.len() >= OUTBOX_LIMIT {
            return Offer::Refused(delivery, "socket_busy_or_closed");
        }
        let bytes = delivery.bytes();
        // An empty outbox takes any delivery: a message larger than the bound still reaches
        // a socket that keeps up.
        if outbox.bytes > 0 && outbox.bytes + bytes > outbox.max_bytes {
            outbox.closed = true;
            outbox.overflowed = true;
            drop(outbox);
            self.wake.notify_one();
            return Offer::Refused(delivery, "socket_outbox_full");
        }
        outbox.bytes += bytes;
        outbox.deliveries.push_back(delivery);
        drop(outbox);
        self.wake.notify_one();
        Offer::Accepted
    }
}
