//! Instances: each heartbeats into one sorted set and learns from it which others are alive; a
//! survivor takes over a dead instance under a lock. The cost per heartbeat grows with the
//! number of instances, never with sockets or connections.

use std::time::Duration;

use super::functions::{HEARTBEAT, INSTANCE_ALIVE};
use super::{Store, StoreResult};

/// What one heartbeat learned.
pub struct Heartbeat {
    /// This instance was not registered: first beat, or Redis lost the registration.
    pub was_missing: bool,
    pub alive: Vec<String>,
    pub dead: Vec<String>,
}

impl Store {
    fn instances_call(&self, function: &super::functions::Function) -> redis::Cmd {
        self.function_call(
            function,
            vec![self.keys.instances(), self.keys.instance_timeouts()],
        )
    }

    /// Records a heartbeat of `instance`, which others take for dead after `dead_after` of
    /// silence; the others are judged by their own.
    pub async fn heartbeat(&self, instance: &str, dead_after: Duration) -> StoreResult<Heartbeat> {
        let mut call = self.instances_call(&HEARTBEAT);
        call.arg(instance).arg(dead_after.as_millis() as u64);
        let (added, alive, dead): (i64, Vec<String>, Vec<String>) = self.call(&call).await?;
        Ok(Heartbeat {
            was_missing: added == 1,
            alive,
            dead,
        })
    }

    pub async fn instance_alive(&self, instance: &str, dead_after: Duration) -> StoreResult<bool> {
        let mut call = self.instances_call(&INSTANCE_ALIVE);
        call.arg(instance).arg(dead_after.as_millis() as u64);
        self.call(&call).await
    }

    /// Takes the lock on taking over `dead` unless another survivor holds it.
    pub async fn lock_takeover(
        &self,
        dead: &str,
        by: &str,
        lock_for: Duration,
    ) -> StoreResult<bool> {
        self.claim(self.keys.reaper(dead), by, lock_for).await
    }

    /// After a takeover: the dead instance's stream, registration and lock go. (Keys in three
    /// slots: one command each; its timeout before its registration, so that a crash between
    /// them leaves a registration judged by the caller's timeout, taken over again.)
    pub async fn forget_instance(&self, dead: &str) -> StoreResult<()> {
        let _: () = self
            .query(redis::cmd("DEL").arg(self.keys.events(dead)))
            .await?;
        let _: () = self
            .query(
                redis::cmd("HDEL")
                    .arg(self.keys.instance_timeouts())
                    .arg(dead),
            )
            .await?;
        let _: () = self
            .query(redis::cmd("ZREM").arg(self.keys.instances()).arg(dead))
            .await?;
        self.query(redis::cmd("DEL").arg(self.keys.reaper(dead)))
            .await
    }
}
