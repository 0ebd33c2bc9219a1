//! This instance's event stream: other instances write the messages they put in flight to this
//! instance's sockets; one task reads them (one blocking read per instance, whatever the number
//! of sockets or connections) and hands them to the sockets.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Live;

const READ_BATCH: usize = 512;
const BLOCK_MS: usize = 1000;

/// Reads this instance's stream and delivers each event, until `shutdown`.
pub async fn consume(live: Arc<Live>, shutdown: CancellationToken) {
    let mut reader = None;
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        let events = match reader.as_mut() {
            Some(events) => events,
            None => match live.store.event_reader(&live.instance).await {
                Ok(events) => reader.insert(events),
                Err(error) => {
                    tracing::warn!(%error, "event stream: cannot connect to Redis; retrying");
                    wait(&shutdown, &mut backoff).await;
                    continue;
                }
            },
        };
        let batch = tokio::select! {
            batch = events.read(READ_BATCH, BLOCK_MS) => batch,
            () = shutdown.cancelled() => break,
        };
        match batch {
            Ok(batch) if batch.is_empty() => backoff = Duration::from_millis(50),
            Ok(batch) => {
                backoff = Duration::from_millis(50);
                live.deliver_events(&live.instance, batch.events).await;
                // Off the read path: the next read does not wait for this round trip.
                let (store, owner) = (live.store.clone(), live.instance.clone());
                tokio::spawn(async move {
                    if let Err(error) = store.ack_events(&owner, &batch.entry_ids).await {
                        tracing::warn!(%error, "event stream: acknowledge failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "event stream: read failed; reconnecting");
                reader = None;
                wait(&shutdown, &mut backoff).await;
            }
        }
    }
}

async fn wait(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}
