//! The sweep of the deadline index: every instance, every `REDELIVERY_INTERVAL_MS`, claims the
//! connections whose earliest in-flight deadline passed and takes one re-delivery step for
//! each (`store::redelivery`): expired messages go in flight to the connection's live session
//! again, wherever it is, or back to pending when there is none. Claims make concurrent sweeps
//! of several instances harmless, and a sweep that dies leaves its claims to come back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Messages;
use crate::store::{DEADLINE_SHARDS, StoreResult};
use crate::telemetry;

/// Connections one claim takes from a shard; a full claim is followed by another at once.
const CLAIM_MOST: u64 = 100;
/// How long a claim holds: a sweep that dies leaves its connections to come back then.
const CLAIM_HOLD: Duration = Duration::from_secs(10);

impl Messages {
    /// Sweeps the deadline index until `shutdown`.
    pub async fn sweep_deadlines(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.redelivery_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Instances start at different shards, so their claims rarely meet.
        let first = rand::random::<u64>() % DEADLINE_SHARDS;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            self.store.index_unindexed().await;
            for i in 0..DEADLINE_SHARDS {
                let shard = (first + i) % DEADLINE_SHARDS;
                loop {
                    match self.sweep_shard(shard).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(error) => {
                            metrics::counter!(telemetry::REDELIVERY_FAILURES).increment(1);
                            tracing::warn!(shard, %error, "deadline index sweep failed; retried next tick");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One claim of one shard; true when it was full (more may be due).
    async fn sweep_shard(&self, shard: u64) -> StoreResult<bool> {
        let claimed = self.store.claim_due(shard, CLAIM_MOST, CLAIM_HOLD).await?;
        let mut next = Vec::with_capacity(claimed.connections.len());
        for connection_id in &claimed.connections {
            // A connection whose step fails keeps the claim's time and comes back then.
            let step = match self.store.redeliver(connection_id).await {
                Ok(step) => step,
                Err(error) => {
                    metrics::counter!(telemetry::REDELIVERY_FAILURES).increment(1);
                    tracing::warn!(%connection_id, %error, "re-delivery step failed");
                    continue;
                }
            };
            next.push((connection_id.as_str(), step.due()));
            if let Err(error) = self.hand_over(connection_id, step).await {
                tracing::warn!(%connection_id, %error, "re-delivered messages not handed over; they come back at their deadline");
            }
        }
        self.store.reschedule(&claimed, &next).await?;
        Ok(claimed.connections.len() as u64 == CLAIM_MOST)
    }
}
