//! The mover: visits connections whose visit is due in the visit index (no scan of keys or
//! queues), and under a per-connection lease deletes what retention says is too old, moves
//! messages older than the threshold to MongoDB, and retries deferred document deletions.
//!
//! A move is crash-safe at every step: (1) read the oldest stale messages; (2) write their
//! documents (idempotent on the unique messageId); (3) one Redis function makes each one cold in
//! Redis only if it is still pending there and the lease is still ours; (4) delete the
//! documents of those that were taken or removed meanwhile. A crash before (3) leaves only
//! unreferenced documents; Redis decides, atomically, whether a message's body is in Redis or
//! in MongoDB, so a message is never visible twice and never lost.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::StreamExt;
use rand::seq::SliceRandom;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cold::{Cold, ColdError, document};
use crate::config::MoverSettings;
use crate::model::now_ms;
use crate::store::{MoveOutcome, Record, Store, StoreError, VISIT_SHARDS, Visits};
use crate::telemetry;

/// The mover's settings, as it uses them.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Messages per MongoDB write and per Redis function call.
    batch: usize,
    /// Pause between passes over the visit index.
    interval: Duration,
    /// How long a connection's lease lasts (a crashed mover's lease expires after it).
    lease: Duration,
    /// Connections visited at once by this instance.
    concurrency: usize,
    /// Most messages moved per second by this instance (None: no cap).
    max_rate: Option<u64>,
}

/// Connections read from one shard of the visit index per pass.
const DUE_PER_SHARD: u64 = 64;
/// Batches one visit moves before the connection goes back in line, so one long queue does not
/// hold up the others (it is due again at once, and visited again in the next pass).
const BATCHES_PER_VISIT: usize = 10;
/// Messages per Redis function call of a move. A call holds Redis for about 15 µs per message, and
/// every other client waits meanwhile: a batch is read and committed in steps this long so that
/// moving adds at most a few hundred µs to anyone's call.
const SCRIPT_STEP: usize = 20;
/// Longest pause after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Mover {
    store: Store,
    cold: Option<Arc<Cold>>,
    visits: Visits,
    settings: Settings,
    /// The unique messageId index makes moving idempotent: nothing moves before it exists.
    indexes: tokio::sync::OnceCell<()>,
    /// When the next batch may be written, under `max_rate`; shared by the concurrent visits.
    next_batch: std::sync::Mutex<Instant>,
}

#[derive(Debug)]
enum VisitError {
    Redis(StoreError),
    Cold(ColdError),
}

impl std::fmt::Display for VisitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis(error) => write!(f, "Redis: {error}"),
            Self::Cold(error) => error.fmt(f),
        }
    }
}

impl From<StoreError> for VisitError {
    fn from(error: StoreError) -> Self {
        Self::Redis(error)
    }
}

impl From<ColdError> for VisitError {
    fn from(error: ColdError) -> Self {
        Self::Cold(error)
    }
}

impl Mover {
    pub fn new(
        store: Store,
        cold: Option<Arc<Cold>>,
        visits: Visits,
        settings: &MoverSettings,
    ) -> Self {
        Self {
            store,
            cold,
            visits,
            settings: Settings {
                batch: settings.mover_batch_size as usize,
                interval: settings.interval(),
                lease: settings.lease(),
                concurrency: settings.mover_concurrency as usize,
                max_rate: settings.max_rate(),
            },
            indexes: tokio::sync::OnceCell::new(),
            next_batch: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Passes over the visit index until `stop`; after a failure (MongoDB or Redis away) it
    /// pauses with exponential backoff and resumes where the index says.
    pub async fn run(self, stop: CancellationToken) {
        let mut pause = self.settings.interval;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            match self.pass(&stop).await {
                Ok(()) => pause = self.settings.interval,
                Err(error) => {
                    metrics::counter!(telemetry::MOVER_FAILURES).increment(1);
                    pause = (pause * 2).clamp(self.settings.interval, MAX_BACKOFF);
                    tracing::warn!(%error, retry_in = ?pause, "mover paused");
                }
            }
        }
    }

    /// One pass: the due connections of every shard (in random order so instances spread
    /// out), visited `concurrency` at a time. A failure pauses the mover after the pass.
    async fn pass(&self, stop: &CancellationToken) -> Result<(), VisitError> {
        if let Some(cold) = &self.cold {
            if !cold.is_available() {
                cold.ping().await?; // marks it available again
            }
            self.indexes
                .get_or_try_init(|| cold.ensure_indexes(self.visits.retention))
                .await?;
        }
        let mut shards: Vec<u64> = (0..VISIT_SHARDS).collect();
        shards.shuffle(&mut rand::rng());
        let mut due = Vec::new();
        for shard in shards {
            due.extend(
                self.store
                    .due_visits(shard, now_ms(), DUE_PER_SHARD)
                    .await?,
            );
        }
        let failures: Vec<VisitError> = futures_util::stream::iter(due)
            .take_while(|_| std::future::ready(!stop.is_cancelled()))
            .map(|connection_id| async move { self.visit(&connection_id).await.err() })
            .buffer_unordered(self.settings.concurrency)
            .filter_map(std::future::ready)
            .collect()
            .await;
        failures.into_iter().next().map_or(Ok(()), Err)
    }

    async fn visit(&self, connection_id: &str) -> Result<(), VisitError> {
        let token = format!("{:032x}", rand::random::<u128>());
        if !self
            .store
            .acquire_lease(connection_id, &token, self.settings.lease)
            .await?
        {
            return Ok(()); // another instance is on it
        }
        let outcome = match self.visit_leased(connection_id, &token).await {
            // Another mover holds the connection now: it carries on, nothing to undo here.
            Err(VisitError::Redis(error)) if error.is_fenced() => {
                metrics::counter!(telemetry::MOVER_FENCED).increment(1);
                tracing::info!(%connection_id, "lease lost to another mover; batch left to it");
                return Ok(());
            }
            outcome => outcome,
        };
        if let Err(error) = self.store.release_lease(connection_id, &token).await {
            tracing::debug!(%connection_id, %error, "lease not released; it expires");
        }
        outcome
    }

    async fn visit_leased(&self, connection_id: &str, token: &str) -> Result<(), VisitError> {
        if let Some(retention) = self.visits.retention {
            self.expire(connection_id, retention).await?;
        }
        self.empty_trash(connection_id).await?;
        if let (Some(cold), Some(after)) = (&self.cold, self.visits.move_after) {
            self.settle_unfinished_moves(cold, connection_id).await?;
            self.move_stale(cold, connection_id, token, after).await?;
        }
        self.store
            .reschedule_visit(connection_id, self.visits)
            .await?;
        Ok(())
    }

    /// Documents of removed cold messages: expired just now, or whose deletion failed earlier.
    async fn empty_trash(&self, connection_id: &str) -> Result<(), VisitError> {
        loop {
            let trash = self.store.trash(connection_id, self.settings.batch).await?;
            if trash.is_empty() {
                return Ok(());
            }
            if let Some(cold) = &self.cold {
                cold.delete(&trash).await?;
            }
            self.store.clear_trash(connection_id, &trash).await?;
        }
    }

    /// Moves cut short (a crash, a MongoDB error, a lost lease) leave documents of messages
    /// that never became cold, found through the move journal: they are deleted, whichever
    /// mover wrote them. This visit holds the lease, so no message becomes cold meanwhile; one
    /// still pending is simply moved again.
    async fn settle_unfinished_moves(
        &self,
        cold: &Cold,
        connection_id: &str,
    ) -> Result<(), VisitError> {
        loop {
            let unsettled = self
                .store
                .unsettled_moves(connection_id, self.settings.batch)
                .await?;
            if unsettled.is_empty() {
                return Ok(());
            }
            let orphans: Vec<String> = unsettled
                .iter()
                .filter(|(_, is_cold)| !is_cold)
                .map(|(id, _)| id.clone())
                .collect();
            if !orphans.is_empty() {
                let deleted = cold.delete(&orphans).await?;
                if deleted > 0 {
                    tracing::info!(%connection_id, deleted, "documents of an unfinished move deleted");
                }
            }
            let ids: Vec<String> = unsettled.into_iter().map(|(id, _)| id).collect();
            self.store.settle_moves(connection_id, &ids).await?;
        }
    }

    async fn expire(&self, connection_id: &str, retention: Duration) -> Result<(), VisitError> {
        let cutoff = now_ms() - retention.as_millis() as i64;
        loop {
            // Expired cold messages land in the trash, which `empty_trash` clears next.
            let deleted = self
                .store
                .expire(connection_id, cutoff, self.settings.batch)
                .await?;
            metrics::counter!(telemetry::MESSAGES_EXPIRED).increment(deleted);
            if (deleted as usize) < self.settings.batch {
                return Ok(());
            }
        }
    }

    async fn move_stale(
        &self,
        cold: &Cold,
        connection_id: &str,
        token: &str,
        after: Duration,
    ) -> Result<(), VisitError> {
        let cutoff = now_ms() - after.as_millis() as i64;
        for _ in 0..BATCHES_PER_VISIT {
            let head = self.stale_head(connection_id, cutoff).await?;
            let read = head.len();
            if read == 0 {
                return Ok(());
            }
            self.wait_turn(read).await;
            // Decoding a batch's bodies takes ~1 ms of CPU: off the threads serving sockets.
            let (connection, mover) = (connection_id.to_owned(), token.to_owned());
            let (ids, documents) =
                tokio::task::spawn_blocking(move || documents(&connection, head, &mover))
                    .await
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
            if ids.is_empty() {
                return Ok(());
            }
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let written = cold.write_moved(documents, &ids, token).await?;
            if !written.adopted {
                return Ok(()); // raced with another attempt's clean-up: retried next visit
            }
            for (index, why) in &written.refused {
                unmovable(
                    connection_id,
                    ids[*index],
                    &format!("MongoDB refused it: {why}"),
                );
            }
            let ids: Vec<&str> = (ids.iter().enumerate())
                .filter(|(i, _)| written.refused.iter().all(|(refused, _)| refused != i))
                .map(|(_, id)| *id)
                .collect();
            fault_point("mover_after_write").await;
            let mut outcomes = Vec::with_capacity(ids.len());
            for step in ids.chunks(SCRIPT_STEP) {
                let lease = self.settings.lease;
                let step = self
                    .store
                    .to_cold(connection_id, token, lease, step)
                    .await?;
                outcomes.extend(step);
            }
            fault_point("mover_after_commit").await;
            let moved = outcomes
                .iter()
                .filter(|o| **o == MoveOutcome::Moved)
                .count();
            metrics::counter!(telemetry::COLD_MOVED).increment(moved as u64);
            let unmoved: Vec<&str> = ids
                .iter()
                .zip(&outcomes)
                .filter(|(_, outcome)| **outcome == MoveOutcome::NotMovable)
                .map(|(id, _)| *id)
                .collect();
            if !unmoved.is_empty() {
                cold.delete_unmoved(&unmoved, token).await?;
            }
            if read < self.settings.batch {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Under `max_rate`, waits for this batch's turn and books the time its `messages` take
    /// at that rate, so the next batch (of any visit) starts that much later. The work of a
    /// batch overlaps its booked time: a batch slower than its share is not paused on top.
    async fn wait_turn(&self, messages: usize) {
        let Some(rate) = self.settings.max_rate else {
            return;
        };
        let turn = {
            let mut next = self.next_batch.lock().expect("mover pace lock");
            let turn = (*next).max(Instant::now());
            *next = turn + Duration::from_secs_f64(messages as f64 / rate as f64);
            turn
        };
        tokio::time::sleep_until(turn).await;
    }

    /// The oldest stale messages held in Redis, a batch of them, read `SCRIPT_STEP` at a time.
    async fn stale_head(
        &self,
        connection_id: &str,
        cutoff: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut head: Vec<(String, String)> = Vec::with_capacity(self.settings.batch);
        while head.len() < self.settings.batch {
            let most = SCRIPT_STEP.min(self.settings.batch - head.len());
            let after = head.last().map(|(id, _)| id.as_str());
            let step = self
                .store
                .stale_head(connection_id, cutoff, most, after)
                .await?;
            let short = step.len() < most;
            head.extend(step);
            if short {
                break;
            }
        }
        Ok(head)
    }
}

/// The MongoDB documents of a batch read by `stale_head`, and their ids. A message whose record
/// cannot be made into one MongoDB stores is left in Redis, served from there.
fn documents(
    connection_id: &str,
    head: Vec<(String, String)>,
    mover: &str,
) -> (Vec<String>, Vec<bson::RawDocumentBuf>) {
    let mut ids = Vec::with_capacity(head.len());
    let mut documents = Vec::with_capacity(head.len());
    for (id, record) in head {
        let built = Record::parse(&record)
            .ok_or_else(|| "unreadable record".to_owned())
            .and_then(|record| document::moved(connection_id, &id, &record, mover))
            .and_then(|document| document::storable(&document));
        match built {
            Ok(document) => {
                documents.push(document);
                ids.push(id);
            }
            Err(error) => unmovable(connection_id, &id, &error),
        }
    }
    (ids, documents)
}

/// A message MongoDB cannot store stays in Redis (and is tried again at later visits): counted
/// and logged, while the rest of its batch moves.
fn unmovable(connection_id: &str, id: &str, why: &str) {
    metrics::counter!(telemetry::COLD_UNMOVABLE).increment(1);
    tracing::warn!(%connection_id, %id, why, "message not movable; it stays in Redis");
}

/// Fault injection for the crash and race tests, unset in production (one comparison per
/// batch): `MPR_CRASH_AT=<point>` aborts the process there, as a kill -9 would;
/// `MPR_PAUSE_AT=<point>=<ms>` holds the mover there, so a test can act in between.
async fn fault_point(point: &str) {
    static CRASH_AT: LazyLock<Option<String>> =
        LazyLock::new(|| std::env::var("MPR_CRASH_AT").ok());
    static PAUSE_AT: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
        let setting = std::env::var("MPR_PAUSE_AT").ok()?;
        let (point, ms) = setting.split_once('=')?;
        Some((point.to_owned(), ms.parse().ok()?))
    });
    if CRASH_AT.as_deref() == Some(point) {
        tracing::error!(point, "MPR_CRASH_AT: aborting");
        std::process::abort();
    }
    if let Some((at, ms)) = PAUSE_AT.as_ref()
        && at == point
    {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
}
