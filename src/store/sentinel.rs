//! A connection to the master Redis Sentinel names: resolved when first used, and again after
//! an error that says this node may no longer be the master — the connection broke, was
//! refused or timed out (the master died or froze and a sentinel may have promoted a replica),
//! or the node answered READONLY (it was demoted to a replica). The call that met the error
//! fails as it would on a single node (an add whose reply was lost is settled above, against
//! the master named then); the next call goes to the master the sentinels name by then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, Value,
};

/// The sentinels, asked for the master's address; shared by an instance's connections.
pub type Sentinels = Arc<tokio::sync::Mutex<SentinelClient>>;

/// Clones share one connection to the current master.
#[derive(Clone)]
pub struct SentinelConnection {
    inner: Arc<Inner>,
}

struct Inner {
    sentinels: Sentinels,
    config: AsyncConnectionConfig,
    /// The connection to the master last named, if it has not failed since.
    current: Mutex<Option<Resolved>>,
    /// Held while asking the sentinels, so that calls failing together resolve the master once.
    resolving: tokio::sync::Mutex<()>,
    /// Numbers the connections made, so that an error met on an old one does not drop a newer.
    made: AtomicU64,
}

#[derive(Clone)]
struct Resolved {
    number: u64,
    conn: MultiplexedConnection,
}

impl SentinelConnection {
    /// A connection made lazily, by the first call (the instance starts while Redis is away).
    pub fn new(sentinels: Sentinels, config: AsyncConnectionConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                sentinels,
                config,
                current: Mutex::new(None),
                resolving: tokio::sync::Mutex::new(()),
                made: AtomicU64::new(0),
            }),
        }
    }

    fn current(&self) -> Option<Resolved> {
        self.inner.current.lock().expect("sentinel lock").clone()
    }

    /// The connection to the master, asking the sentinels for it when there is none.
    async fn resolved(&self) -> RedisResult<Resolved> {
        if let Some(resolved) = self.current() {
            return Ok(resolved);
        }
        let _resolving = self.inner.resolving.lock().await;
        if let Some(resolved) = self.current() {
            return Ok(resolved);
        }
        let client = self.ask_sentinels().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await?;
        let resolved = Resolved {
            number: self.inner.made.fetch_add(1, Ordering::Relaxed),
            conn,
        };
        tracing::info!(
            master = %client.get_connection_info().addr(),
            "connected to the master Redis Sentinel names"
        );
        *self.inner.current.lock().expect("sentinel lock") = Some(resolved.clone());
        Ok(resolved)
    }

    /// A client of the master the sentinels name: they name one only after checking that it
    /// says it is the master (ROLE, with REDIS_URL's credentials). Credentials refused are
    /// traced to the sentinels' or the master's, so that the error names the setting to fix.
    async fn ask_sentinels(&self) -> RedisResult<redis::Client> {
        let mut sentinels = self.inner.sentinels.lock().await;
        let error = match sentinels.async_get_client().await {
            Err(error) if access_refused(&error) => error,
            other => return other,
        };
        match sentinels.async_get_sentinel_client().await {
            Err(refused) if access_refused(&refused) => Err(RedisError::from((
                ErrorKind::AuthenticationFailed,
                SENTINELS_REFUSED,
                refused.to_string(),
            ))),
            _ => Err(error),
        }
    }

    /// Drops connection `number` if it is still the current one: the next call resolves the
    /// master again.
    fn forget(&self, number: u64, error: &str) {
        let mut current = self.inner.current.lock().expect("sentinel lock");
        if current.as_ref().is_some_and(|held| held.number == number) {
            tracing::warn!(%error, "Redis master unreachable or demoted; asking the sentinels again");
            *current = None;
        }
    }

    /// Forgets connection `number` when the outcome of a request on it says the master may
    /// have moved.
    fn check<T>(
        &self,
        number: u64,
        outcome: &RedisResult<T>,
        moved: impl Fn(&T) -> Option<String>,
    ) {
        match outcome {
            Err(error) if master_may_have_moved(error) => self.forget(number, &error.to_string()),
            Ok(reply) => {
                if let Some(error) = moved(reply) {
                    self.forget(number, &error);
                }
            }
            Err(_) => {}
        }
    }
}

/// How an error says that the sentinels refused REDIS_SENTINEL_USERNAME/PASSWORD.
pub const SENTINELS_REFUSED: &str = "the sentinels refused them";

/// Whether Redis refused the credentials, or the user may not run the command.
pub fn access_refused(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOPERM" | "NOAUTH" | "WRONGPASS"))
}

/// Whether an error means the node may no longer be the master: it cannot be reached or did
/// not answer in time, or it says it is a replica.
fn master_may_have_moved(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// A READONLY among a pipeline's replies (its commands' errors come back as replies).
fn read_only_reply(replies: &[Value]) -> Option<String> {
    replies.iter().find_map(|reply| match reply {
        Value::ServerError(error) if error.kind() == Some(ServerErrorKind::ReadOnly) => {
            Some(format!("{error:?}"))
        }
        _ => None,
    })
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let Resolved { number, mut conn } = self.resolved().await?;
            let outcome = conn.req_packed_command(cmd).await;
            self.check(number, &outcome, |_| None);
            outcome
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let Resolved { number, mut conn } = self.resolved().await?;
            let outcome = conn.req_packed_commands(pipeline, offset, count).await;
            self.check(number, &outcome, |replies| read_only_reply(replies));
            outcome
        })
    }

    fn get_db(&self) -> i64 {
        self.current().map_or(0, |resolved| resolved.conn.get_db())
    }
}
