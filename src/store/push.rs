//! What pushes keep in Redis: each connection's latest device token (beside its queue, same
//! hash tag) and the dedup window of each device token. Single-key O(1) commands.

use std::time::Duration;

use super::{Store, StoreResult};

impl Store {
    /// Keeps the connection's latest push token (`<provider>\t<token>`) for `ttl`.
    pub async fn remember_push_token(
        &self,
        connection_id: &str,
        stored: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        let key = self.keys.connection(connection_id).key("push");
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(stored)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let _: redis::Value = self.query(&set).await?;
        Ok(())
    }

    pub async fn push_token(&self, connection_id: &str) -> StoreResult<Option<String>> {
        let key = self.keys.connection(connection_id).key("push");
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// Opens the dedup window of a device token (by its hash) for `window`, unless one is open:
    /// true when it was not.
    pub async fn open_push_window(&self, token_hash: &str, window: Duration) -> StoreResult<bool> {
        self.claim(self.keys.push_window(token_hash), "1", window)
            .await
    }
}
