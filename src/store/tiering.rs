//! The Redis side of tiering: the visit index that tells the mover which connections to look at
//! and when, the per-connection mover lease, the functions that move messages to the cold tier
//! and expire old ones, and the import of the Node MPR's messages.

use std::time::Duration;

use super::functions::{EXPIRE, IMPORT, NEXT_VISIT, RELEASE_LEASE, STALE_HEAD, TO_COLD};
use super::{Record, Store, StoreResult};
use crate::config::ColdSettings;

/// What `to_cold` did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Now cold: its document is the only copy of its body.
    Moved,
    /// Was cold already (an earlier attempt moved it).
    AlreadyCold,
    /// Taken or removed meanwhile: the document just written for it is garbage.
    NotMovable,
}

/// The settings of the visit index: what makes a connection worth a visit.
#[derive(Debug, Clone, Copy)]
pub struct Visits {
    /// Move messages older than this to the cold tier (None: no cold tier).
    pub move_after: Option<Duration>,
    /// Delete messages older than this (None: keep them).
    pub retention: Option<Duration>,
}

impl From<&ColdSettings> for Visits {
    fn from(cold: &ColdSettings) -> Self {
        Self {
            move_after: cold.move_after(),
            retention: cold.retention(),
        }
    }
}

impl Visits {
    /// How soon after its first message a connection needs a visit (None: never).
    pub fn first_after(&self) -> Option<Duration> {
        self.move_after.into_iter().chain(self.retention).min()
    }
}

impl Store {
    /// Enters a connection in the visit index; `only_new` keeps an earlier, sooner visit.
    pub async fn schedule_visit(
        &self,
        connection_id: &str,
        at_ms: i64,
        only_new: bool,
    ) -> StoreResult<()> {
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.visits_of(connection_id));
        if only_new {
            zadd.arg("NX");
        }
        zadd.arg(at_ms).arg(connection_id);
        self.query(&zadd).await
    }

    /// Connections of one shard whose visit is due.
    pub async fn due_visits(&self, shard: u64, now_ms: i64, most: u64) -> StoreResult<Vec<String>> {
        let mut range = redis::cmd("ZRANGE");
        range
            .arg(self.keys.visits(shard))
            .arg("-inf")
            .arg(now_ms)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(most);
        self.query(&range).await
    }

    /// After a visit: out of the index first, then back in if the connection will need another
    /// visit. In this order an addMessage in between is never left out of the index.
    pub async fn reschedule_visit(&self, connection_id: &str, visits: Visits) -> StoreResult<()> {
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.keys.visits_of(connection_id))
            .arg(connection_id);
        let _: () = self.query(&zrem).await?;
        let mut call = self.connection_call(&NEXT_VISIT, connection_id, &[]);
        call.arg(millis(visits.move_after))
            .arg(millis(visits.retention));
        let next: i64 = self.call(&call).await?;
        if next >= 0 {
            self.schedule_visit(connection_id, next, false).await?;
        }
        Ok(())
    }

    /// Takes the connection's mover lease unless another instance holds it.
    pub async fn acquire_lease(
        &self,
        connection_id: &str,
        token: &str,
        lease: Duration,
    ) -> StoreResult<bool> {
        let lease_key = self.keys.connection(connection_id).key("mover");
        self.claim(lease_key, token, lease).await
    }

    pub async fn release_lease(&self, connection_id: &str, token: &str) -> StoreResult<()> {
        let mut call = self.connection_call(&RELEASE_LEASE, connection_id, &[]);
        call.arg(token);
        let _: u8 = self.call(&call).await?;
        Ok(())
    }

    /// The oldest pending messages held in Redis received at or before `cutoff_ms`, as
    /// (id, record) pairs: from the head, or after message `after` of an earlier read (none
    /// if that one is no longer pending).
    pub async fn stale_head(
        &self,
        connection_id: &str,
        cutoff_ms: i64,
        most: usize,
        after: Option<&str>,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut call = self.connection_call(&STALE_HEAD, connection_id, &[]);
        call.arg(cutoff_ms).arg(most).arg(after.unwrap_or(""));
        self.call(&call).await
    }

    /// Makes messages cold once their documents are written, and renews the lease; fails
    /// (see `StoreError::is_fenced`) if the lease `token` was lost meanwhile.
    pub async fn to_cold(
        &self,
        connection_id: &str,
        token: &str,
        lease: Duration,
        ids: &[&str],
    ) -> StoreResult<Vec<MoveOutcome>> {
        let mut call = self.connection_call(&TO_COLD, connection_id, &[]);
        call.arg(token).arg(lease.as_millis() as u64).arg(ids);
        let codes: Vec<u8> = self.call(&call).await?;
        Ok(codes
            .into_iter()
            .map(|code| match code {
                1 => MoveOutcome::Moved,
                2 => MoveOutcome::AlreadyCold,
                _ => MoveOutcome::NotMovable,
            })
            .collect())
    }

    /// Deletes up to `most` pending messages received at or before `cutoff_ms`; returns how
    /// many. The ids of cold ones go to the connection's trash.
    pub async fn expire(
        &self,
        connection_id: &str,
        cutoff_ms: i64,
        most: usize,
    ) -> StoreResult<u64> {
        let mut call = self.connection_call(&EXPIRE, connection_id, &[]);
        call.arg(cutoff_ms).arg(most);
        let (deleted, _trashed): (u64, Vec<String>) = self.call(&call).await?;
        Ok(deleted)
    }

    /// Some of the ids still waiting for their documents to be deleted.
    pub async fn trash(&self, connection_id: &str, most: usize) -> StoreResult<Vec<String>> {
        let trash = self.keys.connection(connection_id).key("trash");
        self.query(redis::cmd("SRANDMEMBER").arg(trash).arg(most))
            .await
    }

    /// Some ids of the move journal (read by a mover that has not settled them: it crashed,
    /// failed or lost its lease), each with whether it is cold now.
    pub async fn unsettled_moves(
        &self,
        connection_id: &str,
        most: usize,
    ) -> StoreResult<Vec<(String, bool)>> {
        let keys = self.keys.connection(connection_id);
        let ids: Vec<String> = self
            .query(redis::cmd("SRANDMEMBER").arg(keys.key("moving")).arg(most))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<Option<String>> = self
            .query(redis::cmd("HMGET").arg(keys.key("msg")).arg(&ids))
            .await?;
        let cold = records.iter().map(|record| {
            record
                .as_deref()
                .and_then(Record::parse)
                .is_some_and(|record| record.body.is_empty())
        });
        Ok(ids.into_iter().zip(cold).collect())
    }

    /// Takes ids out of the move journal.
    pub async fn settle_moves(&self, connection_id: &str, ids: &[String]) -> StoreResult<()> {
        let moving = self.keys.connection(connection_id).key("moving");
        self.query(redis::cmd("SREM").arg(moving).arg(ids)).await
    }

    /// Imports one message of the Node MPR unless it was imported before. `seq` places it in
    /// the queue; `tail` is the record after the sequence (an empty body: the document stays
    /// in MongoDB). Returns whether it was new.
    pub async fn import(
        &self,
        connection_id: &str,
        id: &str,
        seq: i64,
        tail: &str,
        remember: Duration,
    ) -> StoreResult<bool> {
        let mut call = self.connection_call(&IMPORT, connection_id, &[]);
        call.arg(id)
            .arg(seq)
            .arg(tail)
            .arg(remember.as_millis() as u64);
        let imported: u8 = self.call(&call).await?;
        Ok(imported == 1)
    }
}

fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |duration| duration.as_millis() as u64)
}
