//! Instances: each heartbeats into one sorted set, learns from it which others are alive, and
//! takes over the event streams of instances that stopped heartbeating. The cost per heartbeat
//! grows with the number of instances, never with sockets or connections.

use std::sync::Arc;
use std::time::Duration;

use redis::RedisResult;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::{Live, events};
use crate::telemetry;
use std::sync::atomic::Ordering;

const TAKEOVER_BATCH: usize = 256;

/// Beats every fifth of the liveness timeout; an instance silent for the other four fifths is
/// dead, so every instance knows within the timeout.
pub async fn heartbeat(live: Arc<Live>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(live.heartbeat_period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // `register` made the first beat
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match beat(&live).await {
            Ok(()) if failing => {
                tracing::info!("heartbeat recovered");
                failing = false;
            }
            Ok(()) => {}
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "heartbeat failed; retrying every {:?}", live.heartbeat_period);
                }
                failing = true;
            }
        }
    }
}

/// One heartbeat: refreshes the set of live instances, restores this instance's bindings if
/// Redis lost them, and takes over dead instances.
pub async fn beat(live: &Live) -> RedisResult<()> {
    let beat = live
        .store
        .heartbeat(&live.instance, live.dead_after)
        .await?;
    *live.alive.write().expect("alive lock") = beat.alive.into_iter().collect();
    let registered_before = live.registered.swap(true, Ordering::Relaxed);
    if beat.was_missing && registered_before {
        tracing::warn!(
            "this instance's registration was lost (Redis restarted?); restoring its live sessions"
        );
        live.restore_bindings().await;
    }
    for instance in beat
        .dead
        .iter()
        .filter(|instance| **instance != live.instance)
    {
        match take_over(live, instance, live.dead_after).await {
            Ok(Some(events)) => {
                metrics::counter!(telemetry::INSTANCES_REAPED).increment(1);
                tracing::warn!(%instance, events, "took over a dead instance");
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%instance, %error, "could not take over dead instance"),
        }
    }
    Ok(())
}

/// Releases the events a dead instance never delivered, then forgets the instance. One
/// survivor at a time holds the lock; if it dies too, the lock expires and another resumes.
/// Returns how many events were taken over, or None when another survivor holds the lock.
async fn take_over(live: &Live, dead: &str, lock_for: Duration) -> RedisResult<Option<usize>> {
    let keys = live.store.keys();
    let mut conn = live.store.connection();
    let locked: Option<String> = redis::cmd("SET")
        .arg(keys.reaper(dead))
        .arg(&live.instance)
        .arg("NX")
        .arg("PX")
        .arg(lock_for.as_millis() as u64)
        .query_async(&mut conn)
        .await?;
    if locked.is_none() {
        return Ok(None);
    }
    let stream = keys.events(dead);
    let mut taken = 0;
    loop {
        // Entries the dead instance read but never acknowledged...
        let claimed: RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(events::GROUP)
            .arg(&live.instance)
            .arg(0)
            .arg("0-0")
            .arg("COUNT")
            .arg(TAKEOVER_BATCH)
            .query_async(&mut conn)
            .await;
        let mut entries = match claimed {
            Ok(reply) => reply.claimed,
            Err(error) if error.code() == Some("NOGROUP") => Vec::new(),
            Err(error) => return Err(error),
        };
        // ...and entries it never read.
        if entries.is_empty() {
            let unread: RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(events::GROUP)
                .arg(&live.instance)
                .arg("COUNT")
                .arg(TAKEOVER_BATCH)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut conn)
                .await;
            entries = match unread {
                Ok(reply) => reply
                    .into_iter()
                    .flat_map(|r| r.keys)
                    .flat_map(|k| k.ids)
                    .collect(),
                Err(error) if error.code() == Some("NOGROUP") => Vec::new(),
                Err(error) => return Err(error),
            };
        }
        if entries.is_empty() {
            break;
        }
        taken += entries.len();
        let delivered = events::deliver_batch(live, dead, entries).await;
        events::acknowledge(&live.store, dead, &delivered).await;
    }
    redis::pipe()
        .del(&stream)
        .zrem(keys.instances(), dead)
        .del(keys.reaper(dead))
        .exec_async(&mut conn)
        .await?;
    Ok(Some(taken))
}

/// At shutdown, after every socket closed: this instance's undelivered events go back to pending
/// and it leaves the set of instances, so no one waits for it to time out.
pub async fn deregister(live: &Live) {
    match take_over(live, &live.instance, Duration::from_secs(30)).await {
        Ok(events) => tracing::info!(released = events.unwrap_or(0), "deregistered"),
        Err(error) => {
            tracing::warn!(%error, "deregistration incomplete; another instance will take over")
        }
    }
}
