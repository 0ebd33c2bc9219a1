//! Membership: each instance heartbeats into one sorted set, learns from it which others are
//! alive, and takes over the event streams of instances that stopped heartbeating.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Live;
use crate::store::{Store, StoreResult};
use crate::telemetry;

const TAKEOVER_BATCH: usize = 256;

pub struct Membership {
    /// Heartbeat period: a fifth of the liveness timeout.
    period: Duration,
    /// An instance silent this long is dead: the other four fifths.
    dead_after: Duration,
    /// Whether a heartbeat has registered this instance since start.
    registered: AtomicBool,
    /// Instances that heartbeated recently (refreshed by every heartbeat).
    alive: RwLock<HashSet<String>>,
}

impl Membership {
    pub fn new(instance: &str, liveness_timeout: Duration) -> Self {
        Self {
            period: liveness_timeout / 5,
            dead_after: liveness_timeout - liveness_timeout / 5,
            registered: AtomicBool::new(false),
            alive: RwLock::new(HashSet::from([instance.to_owned()])),
        }
    }

    /// Alive at the last heartbeat, or (it may have started since) alive now in Redis.
    pub async fn is_alive(&self, store: &Store, instance: &str) -> StoreResult<bool> {
        if self.alive.read().expect("alive lock").contains(instance) {
            return Ok(true);
        }
        let alive = store.instance_alive(instance, self.dead_after).await?;
        if alive {
            self.alive
                .write()
                .expect("alive lock")
                .insert(instance.to_owned());
        }
        Ok(alive)
    }
}

impl Live {
    /// Registers this instance, so others know it before any of its sessions exist.
    pub async fn register(&self) {
        if let Err(error) = self.beat().await {
            tracing::warn!(%error, "could not register this instance yet; the heartbeat will retry");
        }
    }

    /// One heartbeat: refreshes the set of live instances, restores this instance's bindings
    /// if Redis lost them, and takes over dead instances.
    async fn beat(&self) -> StoreResult<()> {
        let membership = &self.membership;
        let beat = self
            .store
            .heartbeat(&self.instance, membership.dead_after)
            .await?;
        *membership.alive.write().expect("alive lock") = beat.alive.into_iter().collect();
        let registered_before = membership.registered.swap(true, Ordering::Relaxed);
        if beat.was_missing && registered_before {
            tracing::warn!(
                "this instance's registration was lost (Redis restarted, or the instance was silent past its LIVENESS_TIMEOUT_MS and taken over); restoring its live sessions"
            );
            self.restore_bindings().await;
        }
        for instance in beat.dead.iter().filter(|dead| **dead != self.instance) {
            match self.take_over(instance, membership.dead_after).await {
                Ok(Some(events)) => {
                    metrics::counter!(telemetry::INSTANCES_REAPED).increment(1);
                    tracing::warn!(%instance, events, "took over a dead instance");
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%instance, %error, "could not take over dead instance")
                }
            }
        }
        Ok(())
    }

    /// Releases the events a dead instance never delivered, then forgets the instance. One
    /// survivor at a time holds the lock; if it dies too, the lock expires and another resumes.
    /// Returns how many events were taken over, or None when another survivor holds the lock.
    async fn take_over(&self, dead: &str, lock_for: Duration) -> StoreResult<Option<usize>> {
        if !self
            .store
            .lock_takeover(dead, &self.instance, lock_for)
            .await?
        {
            return Ok(None);
        }
        let mut taken = 0;
        loop {
            let batch = self
                .store
                .claim_events(dead, &self.instance, TAKEOVER_BATCH)
                .await?;
            if batch.is_empty() {
                break;
            }
            taken += batch.entry_ids.len();
            self.deliver_events(dead, batch.events).await;
            if let Err(error) = self.store.ack_events(dead, &batch.entry_ids).await {
                tracing::warn!(%error, "event stream: acknowledge failed");
            }
        }
        self.store.forget_instance(dead).await?;
        Ok(Some(taken))
    }

    /// At shutdown, after every socket closed: this instance's undelivered events go back to
    /// pending and it leaves the set of instances, so no one waits for it to time out.
    pub async fn deregister(&self) {
        match self
            .take_over(&self.instance, Duration::from_secs(30))
            .await
        {
            Ok(events) => tracing::info!(released = events.unwrap_or(0), "deregistered"),
            Err(error) => {
                tracing::warn!(%error, "deregistration incomplete; another instance will take over")
            }
        }
    }
}

/// Beats every fifth of the liveness timeout; an instance silent for the other four fifths is
/// dead, so every instance knows within the timeout.
pub async fn heartbeat(live: Arc<Live>, shutdown: CancellationToken) {
    let period = live.membership.period;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // `register` made the first beat
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match live.beat().await {
            Ok(()) if failing => {
                tracing::info!("heartbeat recovered");
                failing = false;
            }
            Ok(()) => {}
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "heartbeat failed; retrying every {period:?}");
                }
                failing = true;
            }
        }
    }
}
