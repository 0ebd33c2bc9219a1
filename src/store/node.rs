//! The Node MPR's Redis, as `mpr migrate-from-node` reads it: its queue lists
//! (`connectionId:<id>:queuemessages`), found with SCAN (a one-off command, never the server).

use super::{StoreError, StoreResult};

pub struct NodeRedis {
    conn: redis::aio::MultiplexedConnection,
}

impl NodeRedis {
    pub async fn open(url: &str) -> StoreResult<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    /// One SCAN step over the queue lists: the next cursor (0: done) and the keys found.
    pub async fn scan_queues(&mut self, cursor: u64) -> StoreResult<(u64, Vec<String>)> {
        redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("connectionId:*:queuemessages")
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("list")
            .query_async(&mut self.conn)
            .await
            .map_err(StoreError::Redis)
    }

    /// Entries `start..=stop` of a list.
    pub async fn list_range(
        &mut self,
        key: &str,
        start: isize,
        stop: isize,
    ) -> StoreResult<Vec<String>> {
        redis::cmd("LRANGE")
            .arg(key)
            .arg(start)
            .arg(stop)
            .query_async(&mut self.conn)
            .await
            .map_err(StoreError::Redis)
    }
}
