//! The Node MPR's Redis, as `mpr migrate-from-node` reads it: its queue lists
//! (`connectionId:<id>:queuemessages`), found with SCAN (a one-off command, never the server),
//! on every primary when that Redis is a cluster.

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

    /// The node at `url`, or, when it is part of a Redis Cluster, every primary of that cluster
    /// (each SCANs only the keys it holds), reached with `url`'s scheme and credentials.
    pub async fn open_all(url: &str) -> StoreResult<Vec<Self>> {
        let mut first = Self::open(url).await?;
        let nodes: Result<String, _> = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut first.conn)
            .await;
        let Ok(nodes) = nodes else {
            return Ok(vec![first]); // not a cluster
        };
        let mut primaries = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|flag| flag == "master") || flags.contains("fail") {
                continue;
            }
            // `ip:port@cport[,hostname]`
            let address = address.split('@').next().unwrap_or(address);
            primaries.push(Self::open(&crate::config::redis_url_for(url, address)).await?);
        }
        Ok(primaries)
    }

    /// How many queue lists the node holds (a SCAN pass: a one-off command's count).
    pub async fn count_queues(&mut self) -> StoreResult<u64> {
        let (mut cursor, mut count) = (0, 0);
        loop {
            let (next, keys) = self.scan_queues(cursor).await?;
            count += keys.len() as u64;
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
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
