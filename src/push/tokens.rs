//! Each connection's latest push token, kept in Redis beside its queue (same hash tag) so that
//! any instance can push to it later. Single-key O(1) commands. A connection sending the same
//! token again within `REWRITE_AFTER` of this instance writing it is not written again: the
//! key still holds it, and most addMessage calls then cost no extra command.

use std::time::{Duration, Instant};

use super::PushToken;
use super::recent::{Recent, fingerprint};
use crate::store::{Store, StoreResult};

/// A connection's token is forgotten after this long without an addMessage carrying it.
const TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Bound on how long a token key lost in Redis (a restart without persistence) stays missing
/// while this instance keeps seeing it.
const REWRITE_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Tokens {
    written_here: Recent,
}

impl Tokens {
    /// Keeps the connection's latest token, for pushes that another instance may have to send
    /// later (a live-session event that found no socket).
    pub async fn remember(
        &self,
        store: &Store,
        connection_id: &str,
        token: &PushToken,
    ) -> StoreResult<()> {
        let stored = token.stored();
        let print = fingerprint(&[connection_id, &stored]);
        if self.written_here.contains(&print) {
            return Ok(());
        }
        let written_at = Instant::now();
        store
            .remember_push_token(connection_id, &stored, TOKEN_TTL)
            .await?;
        self.written_here.insert(print, written_at + REWRITE_AFTER);
        Ok(())
    }

    pub async fn recall(store: &Store, connection_id: &str) -> StoreResult<Option<PushToken>> {
        let stored = store.push_token(connection_id).await?;
        Ok(stored.as_deref().and_then(PushToken::from_stored))
    }
}
