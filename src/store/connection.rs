//! One connection type over a single Redis node, a Redis Cluster and the master Redis
//! Sentinel names, so that nothing above `store` knows which it runs on. All reconnect by
//! themselves; the cluster one follows MOVED/ASK redirections and refreshes its view of the
//! slots, the sentinel one asks the sentinels for the master again after a failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster::NodeAddress;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, TlsMode, Value,
};

use super::sentinel::{SentinelConnection, Sentinels};
use crate::config::{RedisSettings, RedisType};

#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

/// Where to connect, and how to make more connections (blocking reads need their own).
#[derive(Clone)]
pub enum RedisClient {
    Single(redis::Client),
    Cluster {
        nodes: Vec<String>,
        /// Announced address -> the address to connect to (REDIS_NATMAP).
        natmap: HashMap<NodeAddress, NodeAddress>,
    },
    Sentinel(Sentinels),
}

impl RedisClient {
    pub fn new(settings: &RedisSettings) -> RedisResult<Self> {
        // For rediss:// (its roots: the system's, or SSL_CERT_FILE).
        crate::tls::install_crypto();
        let invalid =
            |why: String| RedisError::from((ErrorKind::InvalidClientConfig, "config", why));
        Ok(match settings.redis_type {
            RedisType::Single => Self::Single(redis::Client::open(
                settings
                    .redis_url
                    .as_str()
                    .into_connection_info()?
                    .set_tcp_settings(tcp_settings()),
            )?),
            RedisType::Cluster => Self::Cluster {
                nodes: settings.cluster_urls().map_err(invalid)?,
                natmap: settings
                    .natmap()
                    .map_err(invalid)?
                    .into_iter()
                    .map(|((host, port), (to_host, to_port))| {
                        (
                            NodeAddress::new(host, port),
                            NodeAddress::new(to_host, to_port),
                        )
                    })
                    .collect(),
            },
            RedisType::Sentinel => Self::Sentinel(Arc::new(tokio::sync::Mutex::new(
                sentinel_client(settings).map_err(invalid)?,
            ))),
        })
    }

    /// A connection whose commands fail after `timeout` (None: never, for blocking reads). A
    /// single-node connection is made lazily, so an instance starts while Redis is away.
    pub async fn connect(&self, timeout: Option<Duration>) -> RedisResult<RedisConnection> {
        match self {
            Self::Single(client) => {
                let connect_timeout = timeout.unwrap_or(Duration::from_secs(5));
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(timeout)
                    .set_connection_timeout(Some(connect_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok(RedisConnection::Single(manager))
            }
            Self::Cluster { nodes, natmap } => {
                // A blocking read waits at most its BLOCK time: a generous bound stands for none.
                let response = timeout.unwrap_or(Duration::from_secs(60));
                let mut builder = ClusterClient::builder(nodes.clone())
                    .response_timeout(response)
                    .connection_timeout(response.min(Duration::from_secs(5)))
                    .tcp_settings(tcp_settings());
                if !natmap.is_empty() {
                    builder = builder.node_address_map(natmap.clone());
                }
                let client = builder.build()?;
                Ok(RedisConnection::Cluster(
                    client.get_async_connection().await?,
                ))
            }
            Self::Sentinel(sentinels) => {
                // As on a cluster: a blocking read waits at most its BLOCK time, and a master
                // that froze while a sentinel promoted another must not hold a reader forever.
                let response = timeout.unwrap_or(Duration::from_secs(60));
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(response))
                    .set_connection_timeout(Some(response.min(Duration::from_secs(5))));
                Ok(RedisConnection::Sentinel(SentinelConnection::new(
                    sentinels.clone(),
                    config,
                )))
            }
        }
    }
}

/// Every connection to Redis sends its commands at once (TCP_NODELAY; the library's default
/// leaves Nagle on). Calls share a connection: with Nagle, a command written while the one
/// before it waits for its reply is held back until that reply's ACK, a round trip added to
/// the second call, as when a delivery's settle and an add meet.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// The sentinels of REDIS_SENTINELS, asked for REDIS_SENTINEL_MASTER's address; the master is
/// reached with REDIS_URL's scheme (TLS with rediss://), user, password and database.
fn sentinel_client(settings: &RedisSettings) -> Result<SentinelClient, String> {
    let sentinels = settings.sentinel_addresses()?;
    let master = settings.sentinel_master()?;
    let redis_url = settings
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|error| format!("REDIS_URL: {error}"))?;
    let mut node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(redis_url.redis_settings().clone())
        .set_tcp_settings(tcp_settings());
    if let ConnectionAddr::TcpTls { insecure, .. } = redis_url.addr() {
        node = node.set_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
    }
    let sentinels = sentinels
        .into_iter()
        .map(|url| {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|error| format!("REDIS_SENTINELS entry {url:?}: {error}"))?;
            let mut auth = info.redis_settings().clone();
            if let Some(username) = &settings.redis_sentinel_username {
                auth = auth.set_username(username);
            }
            if let Some(password) = &settings.redis_sentinel_password {
                auth = auth.set_password(password);
            }
            Ok(info.set_redis_settings(auth))
        })
        .collect::<Result<Vec<_>, String>>()?;
    SentinelClient::build(sentinels, master, Some(node), SentinelServerType::Master)
        .map_err(|error| format!("REDIS_SENTINELS: {error}"))
}

impl RedisConnection {
    /// Sends a pipeline to the node holding `key`'s slot, on that node's one connection (a
    /// WAIT in it then counts the writes before it), and returns each command's reply.
    pub async fn pipeline_at(&mut self, pipeline: &Pipeline, key: &str) -> RedisResult<Vec<Value>> {
        let count = pipeline.len();
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, 0, count).await,
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, 0, count).await,
            Self::Cluster(conn) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                conn.route_pipeline(
                    pipeline.clone(),
                    0,
                    count,
                    SingleNodeRoutingInfo::SpecificNode(route),
                )
                .await
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
        }
    }
}
