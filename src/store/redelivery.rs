//! Re-delivery to live sessions. A message pushed to a live session stays in flight under the
//! binding's generation (`pushed`); when the binding is replaced or ends, or a visibility
//! deadline passes, one bounded step (`redeliver` in the library) puts such messages in flight
//! to the current binding again, or back to pending when there is none. Bind, unbind and
//! release take that step at once; the deadline index (connections by earliest in-flight
//! deadline, sharded) brings every connection back when its next deadline passes, or at once
//! when a step left work over. The index is a hint kept beside the queue: on Redis Cluster it
//! lives in other slots than the connection, so it is written after the function that moved
//! the deadline, and sweeps rewrite it only where nobody wrote it since their claim.

use std::time::Duration;

use super::functions::{CLAIM_DUE, Function, REDELIVER, RESCHEDULE};
use super::live::{Bound, RELAY_KIND};
use super::queue::TakenMessage;
use super::{Store, StoreResult};

/// Most connections kept for a deadline-index entry Redis refused after an unknown outcome.
const MOST_UNINDEXED: usize = 100_000;

/// Messages put in flight again to a connection's live session, oldest first.
pub struct Redelivery {
    pub bound: Bound,
    /// Their visibility deadline (Redis clock, ms).
    pub deadline: i64,
    /// A cold message has no body: it is in MongoDB.
    pub messages: Vec<TakenMessage>,
}

/// What one re-delivery step did.
pub struct Step {
    /// Messages in flight to the live session, when one is bound and there were any.
    pub redelivery: Option<Redelivery>,
    /// Messages put back to pending (no live session), and the last of them.
    pub released: u64,
    pub last_released: Option<String>,
    /// When the deadline index should look at the connection again (None: nothing in flight).
    due: Option<i64>,
    /// The SocketDock socket the connection is bound to, if that is its binding: its messages
    /// wait pending for the socket's delivery loop, which the caller starts.
    pub relay: Option<String>,
}

pub(super) type StepReply = (i64, String, String, i64, Vec<(String, String)>, u64, String);

impl Step {
    /// When the deadline index should look at the connection again (None: nothing in flight).
    pub fn due(&self) -> Option<i64> {
        self.due
    }

    pub(super) fn from_reply(reply: StepReply) -> Self {
        let (due, kind, address, deadline, pairs, released, last) = reply;
        let relay = (kind == RELAY_KIND).then(|| address.clone());
        let redelivery = (!pairs.is_empty()).then(|| Redelivery {
            bound: Bound { kind, address },
            deadline,
            messages: pairs
                .into_iter()
                .map(|(id, body)| TakenMessage {
                    id,
                    body: (!body.is_empty()).then_some(body),
                })
                .collect(),
        });
        Self {
            redelivery,
            released,
            last_released: (!last.is_empty()).then_some(last),
            due: (due >= 0).then_some(due),
            relay,
        }
    }
}

/// Connections of one deadline-index shard claimed by a sweep.
pub struct Claimed {
    shard: u64,
    claim: String,
    pub connections: Vec<String>,
}

impl Store {
    /// Enters the connection in the deadline index at `at_ms` (a hand-out moved its earliest
    /// deadline). A crash before this leaves the messages to the next take, or to the next
    /// hand-out once `DUE_LOST_MS` has passed: never lost, possibly late.
    pub(super) async fn index_due(&self, connection_id: &str, at_ms: i64) -> StoreResult<()> {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.deadlines_of(connection_id))
            .arg(at_ms)
            .arg(connection_id);
        self.query(&zadd).await
    }

    /// After a call whose outcome is unknown (its reply was lost): it may have put messages in
    /// flight, under a relay lease, without its caller entering the connection in the deadline
    /// index, and nothing else would come back to them. The sweep looks at the connection at
    /// once and reschedules it at what it finds in flight (an empty look costs one step). Redis
    /// is in trouble when this is needed: a write it refuses is left to the sweeps.
    pub(super) async fn index_after_unknown(&self, connection_id: &str) {
        if let Err(error) = self.index_due(connection_id, crate::model::now_ms()).await {
            tracing::warn!(%connection_id, %error, "connection not entered in the deadline index after a call's unknown outcome; retried by the next sweep");
            self.index_later(connection_id);
        }
    }

    /// [`Self::index_after_unknown`] left to the next sweep ([`Self::index_unindexed`]), for a
    /// caller that must not wait (or whose own write failed). Past [`MOST_UNINDEXED`]
    /// connections, one is back at its next hand-out only.
    pub(super) fn index_later(&self, connection_id: &str) {
        let mut unindexed = self.unindexed.lock().expect("unindexed lock");
        if unindexed.len() < MOST_UNINDEXED {
            unindexed.insert(connection_id.to_owned());
        } else {
            tracing::warn!(%connection_id, "too many connections wait for their deadline-index entry; this one is back at its next hand-out");
        }
    }

    /// Writes the deadline-index entries [`Self::index_later`] kept; those Redis refuses again
    /// wait for the next sweep.
    pub async fn index_unindexed(&self) {
        let connections: Vec<String> = self
            .unindexed
            .lock()
            .expect("unindexed lock")
            .drain()
            .collect();
        for (i, connection_id) in connections.iter().enumerate() {
            if let Err(error) = self.index_due(connection_id, crate::model::now_ms()).await {
                tracing::warn!(%error, left = connections.len() - i, "deadline-index entries after unknown outcomes still not written; retried by the next sweep");
                for connection_id in &connections[i..] {
                    self.index_later(connection_id);
                }
                return;
            }
        }
    }

    /// Indexes what a step left in flight; used after bind, unbind and release, which are not
    /// sweeps (a sweep reschedules its claim instead).
    pub(super) async fn index_step(&self, connection_id: &str, step: &Step) -> StoreResult<()> {
        match step.due {
            Some(due) => self.index_due(connection_id, due).await,
            None => Ok(()),
        }
    }

    fn deadlines_call(&self, function: &Function, shard: u64) -> redis::Cmd {
        self.function_call(function, vec![self.keys.deadlines(shard)])
    }

    /// Claims up to `most` connections of a shard whose deadline passed, for `hold`.
    pub async fn claim_due(&self, shard: u64, most: u64, hold: Duration) -> StoreResult<Claimed> {
        let mut call = self.deadlines_call(&CLAIM_DUE, shard);
        call.arg(most).arg(hold.as_millis() as u64);
        let (claim, connections): (String, Vec<String>) = self.call(&call).await?;
        Ok(Claimed {
            shard,
            claim,
            connections,
        })
    }

    /// One re-delivery step for a claimed connection.
    pub async fn redeliver(&self, connection_id: &str) -> StoreResult<Step> {
        let mut call = self.connection_call(&REDELIVER, connection_id, &[]);
        call.arg(self.visibility_ms);
        Ok(Step::from_reply(self.call(&call).await?))
    }

    /// Puts the claimed connections back in the index at their next due time, or out of it,
    /// unless another writer moved their entry since the claim. A claimed connection left out
    /// (its step failed) keeps the claim's time and comes again then.
    pub async fn reschedule(
        &self,
        claimed: &Claimed,
        next: &[(&str, Option<i64>)],
    ) -> StoreResult<()> {
        if next.is_empty() {
            return Ok(());
        }
        let mut call = self.deadlines_call(&RESCHEDULE, claimed.shard);
        call.arg(&claimed.claim);
        for (connection_id, due) in next {
            call.arg(connection_id).arg(due.unwrap_or(-1));
        }
        let _: i64 = self.call(&call).await?;
        Ok(())
    }
}
